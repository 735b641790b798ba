#!/usr/bin/env bash
# vagrantfile.sh — CI check of the Vagrantfile (the VM lab), which cannot boot VMs here:
#
#   1. `ruby -c Vagrantfile`: the file is valid Ruby.
#   2. The Vagrantfile is evaluated with a stand-in for Vagrant's configuration objects that
#      records what it defines (no VM, no Vagrant needed), twice: as is, and with LAB_ARCD_BIN
#      set (the prebuilt-binary branch). Checked: a `rendezvous` VM and two device VMs on one
#      private /24; every shell provisioner is a single call of a script in scripts/provision/,
#      and each such command runs here, with its exact arguments, in the scripts'
#      validate-only mode (PROVISION_VALIDATE_ONLY=1: arguments parsed and checked, nothing
#      done); the rendezvous VM runs rendezvous.sh with its own address as the endpoint, the
#      devices run device.sh against that address; every provisioning script the Vagrantfile
#      uses is also run by scripts/e2e/netns.sh or by multinode.sh / pg-failover.sh (through
#      scripts/e2e/lib/cluster*.sh), which run them for real in CI. Twice more with
#      LAB_TOPOLOGY=multinode: a postgres VM running postgres.sh; api, tokyo and frankfurt running
#      build-arcd.sh and rendezvous.sh with the postgres VM in --store-url, the same
#      --rendezvous-point list (each endpoint the VM serving it) and their [node] roles; devices
#      on api's API, one of them asking for global coverage.
#   3. `vagrant validate` when Vagrant is installed.
#
#   scripts/e2e/vagrantfile.sh              # check ./Vagrantfile of this repository
#   VAGRANTFILE=PATH scripts/e2e/vagrantfile.sh   # check another file (the scripts stay these)
#
# Needs ruby (Debian package `ruby`). Exit status 1 when a check fails. No root needed; run by
# scripts/test.sh in its end-to-end stage.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VAGRANTFILE=$(realpath -m -- "${VAGRANTFILE:-$REPO_DIR/Vagrantfile}")
log() { printf '[vagrantfile.sh] %s\n' "$*"; }
fail() {
    printf 'FAIL  %s\n' "$*"
    echo "RESULT: FAILED"
    exit 1
}

command -v ruby >/dev/null || fail "ruby is missing (apt-get install --no-install-recommends ruby)"
[[ -f $VAGRANTFILE ]] || fail "no Vagrantfile at $VAGRANTFILE"

# ------------------------------------------------------------ 1. ruby -c --
log "ruby -c $VAGRANTFILE"
out=$(ruby -c "$VAGRANTFILE" 2>&1) || fail "ruby -c $VAGRANTFILE: $out"
[[ $out == *"Syntax OK"* ]] || fail "ruby -c $VAGRANTFILE: unexpected output: $out"
echo "PASS  ruby -c: Syntax OK"

# ------------------------------------------- 2. what the Vagrantfile defines --
check_model() { # check_model LABEL [VAR=VALUE...]: evaluate and check, with these variables set
    local label=$1
    shift
    log "evaluating the Vagrantfile ($label)"
    env -u LAB_ARCD_BIN -u LAB_NET -u LAB_BOX -u LAB_TOPOLOGY "$@" \
        ruby - "$VAGRANTFILE" "$REPO_DIR" <<'RUBY' || fail "the Vagrantfile's definitions ($label): see above"
require "shellwords"

vagrantfile, repo = ARGV
$errors = []
def check(ok, what)
  if ok
    puts "PASS  #{what}"
  else
    puts "FAIL  #{what}"
    $errors << what
  end
end

# Records attribute assignments, calls (with their block's recorder) and nested objects
# (config.vm, rv.trigger, ...). Trigger `ruby` blocks are host code for a real VM: not run.
class Rec < BasicObject
  def initialize
    @attrs = {}
    @calls = []
    @children = {}
  end

  def __attrs = @attrs
  def __calls = @calls
  def __child(name) = @children[name]

  def method_missing(name, *args, **kw, &blk)
    n = name.to_s
    return @attrs[n.chomp("=")] = args.first if n.end_with?("=")
    return (@children[n] ||= ::Rec.new) if args.empty? && kw.empty? && blk.nil?

    child = ::Rec.new
    @calls << [n, args, kw, child]
    blk.call(child) if blk && n != "ruby"
    child
  end

  def respond_to_missing?(*) = true
end

module Vagrant
  ROOT = Rec.new
  def self.require_version(*); end

  def self.configure(version, &blk)
    ::Kernel.raise "Vagrant.configure(#{version.inspect}): want \"2\"" unless version == "2"
    blk.call(ROOT)
  end
end

begin
  load vagrantfile
rescue Exception => e # rubocop:disable Lint/RescueException
  puts "FAIL  evaluating #{vagrantfile}: #{e.class}: #{e.message}"
  puts e.backtrace.first(5)
  exit 1
end

root_vm = Vagrant::ROOT.__child("vm")
check(!nil.equal?(root_vm), "config.vm is used")
exit 1 unless root_vm
check(!root_vm.__attrs["box"].to_s.empty?, "a box is set (#{root_vm.__attrs["box"]})")

machines = root_vm.__calls.select { |c| c[0] == "define" }.to_h { |c| [c[1][0].to_s, c[3]] }
multi = ENV["LAB_TOPOLOGY"] == "multinode"
servers = multi ? %w[postgres api tokyo frankfurt] : ["rendezvous"]
devices = machines.keys - servers
servers.each { |s| check(machines.key?(s), "a VM named #{s}") }
check(devices.size >= 2, "at least two device VMs (#{devices.join(", ")})")

# Provisioner: [name, type, inline] from `provision NAME, type: T, inline: ...` or a block.
def provisioners(vm)
  return [] unless vm

  vm.__calls.select { |c| c[0] == "provision" }.map do |_, args, kw, child|
    type = (kw[:type] || args[0]).to_s
    inline = kw[:inline] || child.__attrs["inline"]
    [args[0].to_s, type, inline, kw]
  end
end

def ip_of(machine)
  net = machine.__child("vm")&.__calls&.find { |c| c[0] == "network" && c[1][0].to_s == "private_network" }
  net && net[2][:ip]
end

ips = machines.transform_values { |m| ip_of(m) }
ips.each { |name, ip| check(ip.to_s.match?(/\A\d+\.\d+\.\d+\.\d+\z/), "#{name} has a private_network address (#{ip})") }
check(ips.values.uniq.size == ips.size, "the VMs' addresses differ")
check(ips.values.map { |ip| ip.to_s.split(".")[0, 3] }.uniq.size == 1, "the VMs share one /24")

guest_repo = "/vagrant"
map = lambda do |word|
  word == guest_repo || word.start_with?("#{guest_repo}/") ? repo + word[guest_repo.size..] : word
end

used_scripts = {}
commands = Hash.new { |h, k| h[k] = [] }
global = provisioners(root_vm)
machines.each do |name, m|
  (global + provisioners(m.__child("vm"))).each do |pname, type, inline, kw|
    next unless type == "shell"

    check(inline.is_a?(::String) && !kw.key?(:path), "#{name}/#{pname}: an inline shell provisioner")
    next unless inline.is_a?(::String)

    words = Shellwords.split(inline)
    script = words.first.to_s
    ok = script.match?(%r{\A#{guest_repo}/scripts/provision/[\w.-]+\.sh\z})
    check(ok, "#{name}/#{pname}: calls a script of scripts/provision/ (#{script})")
    next unless ok

    local = map.call(script)
    check(File.executable?(local), "#{name}/#{pname}: #{local.delete_prefix(repo + "/")} exists and is executable")
    next unless File.executable?(local)

    used_scripts[File.basename(script)] = true
    argv = words.drop(1).map { |w| map.call(w) }
    commands[name] << [File.basename(script), words.drop(1)]
    env = { "PROVISION_VALIDATE_ONLY" => "1" }
    (kw[:env] || {}).each { |k, v| env[k.to_s] = v.to_s }
    output = IO.popen(env, [local, *argv], err: [:child, :out], &:read)
    puts output.gsub(/^/, "      ")
    check($?.success?, "#{name}/#{pname}: `#{File.basename(script)} #{words.drop(1).join(" ")}` accepted in validate-only mode")
  end
end

def arg(words, opt)
  i = words.index(opt)
  i && words[i + 1]
end

def args_of(words, opt)
  words.each_index.select { |i| words[i] == opt }.map { |i| words[i + 1] }
end

if multi
  # The multi-node lab: one database VM, three arcd nodes sharing it, devices through the API VM.
  check(commands["postgres"].any? { |s, _| s == "postgres.sh" }, "postgres runs postgres.sh")
  want_serves = { "api" => "none", "tokyo" => "ap-northeast-1", "frankfurt" => "eu-central-1" }
  lists = {}
  want_serves.each do |node, serves|
    check(commands[node].any? { |s, _| s == "build-arcd.sh" }, "#{node} runs build-arcd.sh (the arcd binary)")
    cmd = commands[node].find { |s, _| s == "rendezvous.sh" }
    check(!cmd.nil?, "#{node} runs rendezvous.sh")
    next unless cmd

    url = arg(cmd[1], "--store-url").to_s
    check(url.match?(%r{\Apostgres://[^@]+@#{Regexp.escape(ips["postgres"].to_s)}:5432/}), "#{node}: [store] url names the postgres VM (#{url})")
    check(arg(cmd[1], "--node-api") == (node == "api" ? "yes" : "no"), "#{node}: [node] api = #{node == "api"}")
    check(arg(cmd[1], "--node-rendezvous-points") == serves, "#{node}: [node] rendezvous_points = #{serves}")
    lists[node] = args_of(cmd[1], "--rendezvous-point")
  end
  check(lists.values.uniq.size == 1 && lists.values.first.to_a.size == 2, "every arcd VM gets the same two [[rendezvous_points]]")
  (lists.values.first || []).each do |rp|
    id, _listen, endpoint, = rp.split(",")
    node = want_serves.key(id)
    check(!node.nil? && endpoint.to_s.split(":").first == ips[node], "#{id}'s endpoint is the VM that serves it (#{endpoint})")
  end
else
  rv_ip = ips["rendezvous"]
  rv_cmd = commands["rendezvous"].find { |s, _| s == "rendezvous.sh" }
  check(!rv_cmd.nil?, "rendezvous runs rendezvous.sh")
  if rv_cmd
    check(arg(rv_cmd[1], "--rp-endpoint").to_s.split(":").first == rv_ip,
          "rendezvous.sh tells devices to connect to the rendezvous VM (#{arg(rv_cmd[1], "--rp-endpoint")})")
  end
  check(commands["rendezvous"].any? { |s, _| s == "build-arcd.sh" }, "rendezvous runs build-arcd.sh (the arcd binary)")
end
rv_ip = ips[multi ? "api" : "rendezvous"]
devices.each do |d|
  dev_cmd = commands[d].find { |s, _| s == "device.sh" }
  check(!dev_cmd.nil?, "#{d} runs device.sh")
  next unless dev_cmd

  api = arg(dev_cmd[1], "--api").to_s
  check(api.match?(%r{\Ahttps?://#{Regexp.escape(rv_ip.to_s)}:\d+\z}), "#{d}: device.sh uses the API VM's API (#{api})")
end
if multi
  check(devices.any? { |d| arg(commands[d].find { |s, _| s == "device.sh" }.to_a[1].to_a, "--host-header").to_s.start_with?("g.api.") },
        "a device asks for global coverage (--host-header g.api.*: its SIM lands on frankfurt)")
end

# The namespace tests that run the same scripts for real: netns.sh (single box) and
# multinode.sh / pg-failover.sh (their helpers in scripts/e2e/lib/cluster*.sh).
ci_files = ["scripts/e2e/netns.sh", *Dir[File.join(repo, "scripts/e2e/lib/cluster*.sh")].map { |f| f.delete_prefix(repo + "/") }]
ci = ci_files.map { |f| File.read(File.join(repo, f)) }.join("\n")
used_scripts.each_key do |s|
  check(ci.include?("$PROV/#{s}"), "#{ci_files.join(" or ")} runs #{s} too (the same setup in CI)")
end

exit($errors.empty? ? 0 : 1)
RUBY
}

check_model "as is"
# The other branch of the rendezvous VM: a prebuilt binary (any existing file will do here).
check_model "LAB_ARCD_BIN set" LAB_ARCD_BIN="$VAGRANTFILE"
# The multi-node lab (LAB_TOPOLOGY=multinode), both branches of the arcd VMs too.
check_model "LAB_TOPOLOGY=multinode" LAB_TOPOLOGY=multinode
check_model "LAB_TOPOLOGY=multinode, LAB_ARCD_BIN set" LAB_TOPOLOGY=multinode LAB_ARCD_BIN="$VAGRANTFILE"

# ------------------------------------------------------ 3. vagrant validate --
if command -v vagrant >/dev/null 2>&1; then
    args=(validate)
    vagrant validate --help 2>/dev/null | grep -q -- '--ignore-provider' && args+=(--ignore-provider)
    log "vagrant ${args[*]}"
    (cd "$(dirname "$VAGRANTFILE")" && VAGRANT_VAGRANTFILE=$(basename "$VAGRANTFILE") vagrant "${args[@]}") ||
        fail "vagrant ${args[*]}"
    echo "PASS  vagrant ${args[*]}"
else
    log "vagrant is not installed: \`vagrant validate\` skipped (ruby -c and the checks above ran)"
fi
echo "RESULT: all checks passed"
