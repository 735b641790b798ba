# lib.sh — shared helpers of the provisioning scripts (scripts/provision/*.sh). Sourced, not run.
#
# The provisioning scripts set up one host of the arcd lab: the rendezvous host (arcd) and the
# device hosts (wireguard-go + wg). The same scripts run
#   - on the Vagrant VMs (Vagrantfile): packages installed with --install, daemons as systemd units;
#   - inside the network namespaces of scripts/e2e/netns.sh: nothing installed, daemons started in
#     the background with their PID written to a file the caller kills at the end (--pid-file).
#
# Environment understood by every provisioning script:
#   PROVISION_INSTALL=1        same as --install: apt-get install the Debian packages that are
#                              missing (otherwise a missing tool is an error naming the package)
#   PROVISION_VALIDATE_ONLY=1  parse and check the arguments, print what would be done, exit 0
#                              without touching the system (scripts/e2e/vagrantfile.sh runs every
#                              provisioner command of the Vagrantfile this way in CI)
# shellcheck shell=bash

PROG=${PROG:-${0##*/}}
PROVISION_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
REPO_DIR=$(cd "$PROVISION_DIR/../.." && pwd)
PROVISION_INSTALL=${PROVISION_INSTALL:-0}
PROVISION_VALIDATE_ONLY=${PROVISION_VALIDATE_ONLY:-0}

# Stop at once on Ctrl-C or SIGTERM (a daemon already started stays for the caller to stop: its
# PID file is written before any wait).
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '[%s] %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
# usage_error MESSAGE: bad arguments (exit status 2).
usage_error() {
    printf '%s: %s (see %s --help)\n' "$PROG" "$*" "$PROG" >&2
    exit 2
}
# print_usage FILE: the comment block at the top of FILE, up to the first non-comment line.
print_usage() {
    sed -n '2,/^[^#]/p' "$1" | sed '$d' | sed 's/^# \{0,1\}//'
}

now_ms() {
    local t=${EPOCHREALTIME/[.,]/}
    echo $((10#$t / 1000))
}

# wait_for SECONDS cmd... (shared with the test and bench scripts).
# shellcheck source=scripts/lib/links.sh
source "$PROVISION_DIR/../lib/links.sh"

# Value checks for arguments. Values end up in TOML and shell files, so nothing with quotes,
# backslashes, spaces or newlines gets through.
is_plain() { [[ $1 =~ ^[A-Za-z0-9._:/@+=,-]+$ ]]; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_ipv4() {
    local IFS=. a
    [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || return 1
    for a in $1; do ((10#$a <= 255)) || return 1; done
}
is_host_port() { # host:port, host a name or an IPv4 address
    [[ $1 =~ ^([A-Za-z0-9.-]+):([0-9]+)$ ]] && ((BASH_REMATCH[2] > 0 && BASH_REMATCH[2] < 65536))
}
is_cidr() { [[ $1 =~ ^([0-9.]+)/([0-9]+)$ ]] && is_ipv4 "${BASH_REMATCH[1]}" && ((BASH_REMATCH[2] <= 32)); }
is_ifname() { [[ $1 =~ ^[A-Za-z0-9_.-]{1,15}$ ]]; }
# check_arg NAME VALUE TEST: usage error unless TEST VALUE succeeds.
check_arg() {
    "$3" "$2" || usage_error "$1: bad value '$2'"
}

# validate_only_exit SUMMARY...: in validate-only mode, print the plan and stop here.
validate_only_exit() {
    if [[ $PROVISION_VALIDATE_ONLY == 1 ]]; then
        printf '%s: arguments OK (validate only, nothing done): %s\n' "$PROG" "$*"
        exit 0
    fi
}

# need_tools CMD:PACKAGE...: every CMD on PATH; the missing ones installed from Debian with
# apt-get when PROVISION_INSTALL=1, otherwise an error that names the packages.
APT_UPDATED=0
need_tools() {
    local spec cmd pkg missing=() pkgs=()
    for spec in "$@"; do
        cmd=${spec%%:*}
        pkg=${spec#*:}
        command -v "$cmd" >/dev/null 2>&1 && continue
        missing+=("$cmd")
        [[ " ${pkgs[*]} " == *" $pkg "* ]] || pkgs+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    if [[ $PROVISION_INSTALL != 1 ]]; then
        die "missing ${missing[*]}: apt-get install --no-install-recommends ${pkgs[*]} (or pass --install)"
    fi
    apt_install "${pkgs[@]}"
    for cmd in "${missing[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing ${pkgs[*]}"
    done
}

# apt_install PACKAGE...: apt-get install, once with a fresh package list.
apt_install() {
    command -v apt-get >/dev/null || die "no apt-get: install $* by hand"
    export DEBIAN_FRONTEND=noninteractive
    if ((APT_UPDATED == 0)); then
        log "apt-get update"
        apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
}

# install_packages PKG...: extra Debian packages (--package): with PROVISION_INSTALL=1 the ones
# not installed yet are installed; otherwise only a note.
is_package_name() { [[ $1 =~ ^[a-z0-9][a-z0-9+.-]+$ ]]; }
install_packages() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    if [[ $PROVISION_INSTALL != 1 ]]; then
        log "note: not installed (no --install): ${missing[*]}"
        return 0
    fi
    apt_install "${missing[@]}"
}

# have_systemd: this host runs systemd (a VM), as opposed to a bare network namespace.
have_systemd() { [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; }

# comm_of PID: the process name (/proc/PID/comm), empty when it is gone.
comm_of() { cat "/proc/$1/comm" 2>/dev/null || true; }

# proc_alive PID: the process exists and is not a zombie (kill -0 succeeds on a zombie).
proc_alive() {
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [[ ${st:0:1} != Z ]]
}

# pid_file_alive FILE COMM: FILE names a live process called COMM.
pid_file_alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    is_uint "$pid" && proc_alive "$pid" && [[ $(comm_of "$pid") == "${2:0:15}" ]]
}

# start_background PID_FILE LOG_FILE cmd...: start a long-running program detached from our
# standard streams (so a caller reading our output is not held open), its PID written to
# PID_FILE at once (before any wait, so the caller can always kill it). The program is exec()ed
# by the forked shell: the PID is the program's own.
start_background() {
    local pidf=$1 logf=$2 pid
    shift 2
    "$@" </dev/null >>"$logf" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$pidf.tmp.$$"
    mv -f "$pidf.tmp.$$" "$pidf"
    # shellcheck disable=SC2034 # read by the caller
    BACKGROUND_PID=$pid
}

# arcd_env_unset: `env` arguments removing every ARCD_* variable (arcd reads them as configuration).
arcd_env_unset() {
    local v
    ARCD_ENV_UNSET=()
    while read -r v; do
        [[ -n $v ]] && ARCD_ENV_UNSET+=(-u "$v")
    done < <(compgen -e | grep '^ARCD_' || true)
}
