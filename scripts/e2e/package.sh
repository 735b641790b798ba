#!/usr/bin/env bash
# package.sh — the Debian package (`cargo deb`, [package.metadata.deb] in Cargo.toml) and its
# systemd unit (packaging/arcd.service), end to end (run as root; scripts/test.sh runs it in CI):
#
#   1. cargo build --release --locked (a no-op after netns.sh built it), then `cargo deb
#      --no-build` with cargo-deb $CARGO_DEB_VERSION, installed once into target/tools/cargo-deb
#   2. the .deb's metadata and contents (dpkg-deb -I/-c): binary, unit, /etc/arcd/arcd.toml as
#      the only conffile, sysusers.d and tmpfiles.d entries, a postinst that creates the user and
#      enables (does not start) the unit
#   3. unpacked (dpkg-deb -x into a temp root, nothing installed): `systemd-analyze verify` of the
#      packaged unit against that tree; the packaged binary reads the packaged configuration
#   4. the system user `arcd` from the package's sysusers.d file (systemd-sysusers), unless it
#      exists already; removed again at the end when this script created it
#   5. scripts/e2e/netns.sh stages 1-5 with the packaged binary run as the unit runs it: user arcd,
#      CAP_NET_ADMIN and CAP_NET_BIND_SERVICE as the only (ambient) capabilities, no new
#      privileges, /var/run/wireguard
#      prepared by the package's tmpfiles.d rule: TUN device, routes, UDP listener, data plane,
#      `wg show` on arcd's control socket and nftables egress NAT, all without root
#
# Environment: E2E_KEEP_WORK=1 keeps the temp directory. Needs: root, cargo, dpkg-deb,
# systemd-analyze + systemd-sysusers + systemd-tmpfiles (Debian: systemd), setpriv (util-linux),
# getfacl (acl), and what netns.sh needs.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
CARGO_DEB_VERSION=3.8.0
CARGO_DEB_ROOT=${REPO_DIR}/target/tools/cargo-deb
T_START=$(date +%s)
WORK=""
CREATED_USER=0

log() { printf '[package.sh] %s\n' "$*"; }
pass() { printf 'PASS  %s%s\n' "$1" "${2:+  ($2)}"; }
fail() {
    printf 'FAIL  %s: %s\n' "$1" "${2:-}"
    exit 1
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if ((CREATED_USER)); then
        userdel arcd 2>/dev/null || log "warning: could not remove the user arcd"
        getent group arcd >/dev/null && { groupdel arcd 2>/dev/null || log "warning: could not remove the group arcd"; }
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${E2E_KEEP_WORK:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    log "total runtime $(($(date +%s) - T_START)) s"
    if ((rc == 0)); then echo "RESULT: all checks passed"; else echo "RESULT: FAILED (exit $rc)"; fi
    exit "$rc"
}

[[ $EUID -eq 0 ]] || { echo "package.sh: needs root (system user, network namespaces, TUN)" >&2; exit 1; }
for tool in cargo dpkg-deb systemd-analyze systemd-sysusers systemd-tmpfiles setpriv getfacl; do
    command -v "$tool" >/dev/null || {
        echo "package.sh: missing $tool (apt-get install --no-install-recommends systemd util-linux acl dpkg)" >&2
        exit 1
    }
done
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cd "$REPO_DIR"
WORK=$(mktemp -d /tmp/arcd-package.XXXXXX)

printf '\n---- 1. cargo deb ----\n'
cargo_deb=$CARGO_DEB_ROOT/bin/cargo-deb
if [[ ! -x $cargo_deb || $("$cargo_deb" --version 2>/dev/null) != *" $CARGO_DEB_VERSION"* ]]; then
    t0=$(date +%s)
    log "installing cargo-deb $CARGO_DEB_VERSION into $CARGO_DEB_ROOT (once; kept in target/)"
    cargo install --locked --quiet --version "$CARGO_DEB_VERSION" --root "$CARGO_DEB_ROOT" cargo-deb ||
        fail "cargo install cargo-deb $CARGO_DEB_VERSION"
    log "cargo-deb installed in $(($(date +%s) - t0)) s"
fi
cargo build --release --locked --quiet || fail "cargo build --release --locked"
"$cargo_deb" --no-build --output "$WORK/" >"$WORK/cargo-deb.log" 2>&1 ||
    fail "cargo deb" "$(tail -n 20 "$WORK/cargo-deb.log")"
shopt -s nullglob
debs=("$WORK"/arcd_*.deb)
shopt -u nullglob
((${#debs[@]} == 1)) || fail "cargo deb" "want one arcd_*.deb in $WORK, found ${#debs[@]}"
deb=${debs[0]}
pass "cargo deb" "${deb##*/}, $(stat -c %s "$deb") bytes"

printf '\n---- 2. package metadata and contents ----\n'
dpkg-deb -I "$deb" >"$WORK/info.txt" || fail "dpkg-deb -I" "unreadable package"
dpkg-deb -c "$deb" >"$WORK/contents.txt" || fail "dpkg-deb -c" "unreadable package"
sed 's/^/    /' "$WORK/info.txt"
field() { dpkg-deb -f "$deb" "$1"; }
[[ $(field Package) == arcd ]] || fail "Package" "$(field Package)"
[[ $(field Version) == "$(cargo metadata --no-deps --format-version 1 --locked | jq -r '.packages[] | select(.name == "arcd") | .version')"* ]] ||
    fail "Version" "$(field Version) is not the crate's version"
[[ $(field Architecture) == "$(dpkg --print-architecture)" ]] || fail "Architecture" "$(field Architecture)"
depends=$(field Depends)
[[ $depends == *libc6* && $depends == *systemd* ]] || fail "Depends" "'$depends' lacks libc6 or systemd"
pass "control fields" "Package arcd, Version $(field Version), Depends: $depends"
# path mode owner/group: the files that make the service.
while read -r want_path want_mode; do
    line=$(awk -v p="./$want_path" '$6 == p' "$WORK/contents.txt")
    [[ -n $line ]] || fail "package contents" "no ./$want_path in: $(awk '{print $6}' "$WORK/contents.txt" | tr '\n' ' ')"
    read -r mode owner _ <<<"$line"
    [[ $mode == "$want_mode" && ($owner == 0/0 || $owner == root/root) ]] ||
        fail "package contents" "./$want_path is $mode $owner, want $want_mode owned by root (0/0)"
done <<'EOF_FILES'
usr/bin/arcd -rwxr-xr-x
etc/arcd/arcd.toml -rw-r--r--
usr/lib/systemd/system/arcd.service -rw-r--r--
usr/lib/sysusers.d/arcd.conf -rw-r--r--
usr/lib/tmpfiles.d/arcd.conf -rw-r--r--
usr/share/doc/arcd/arcd.toml.example -rw-r--r--
usr/share/doc/arcd/copyright -rw-r--r--
EOF_FILES
mkdir -p "$WORK/control"
dpkg-deb -e "$deb" "$WORK/control"
[[ $(cat "$WORK/control/conffiles") == /etc/arcd/arcd.toml ]] ||
    fail "conffiles" "want exactly /etc/arcd/arcd.toml, got: $(tr '\n' ' ' <"$WORK/control/conffiles")"
postinst=$WORK/control/postinst
[[ -x $postinst ]] || fail "postinst" "missing or not executable"
grep -q 'systemd-sysusers .*arcd.conf' "$postinst" || fail "postinst" "does not create the user (systemd-sysusers arcd.conf)"
grep -q 'systemd-tmpfiles --create arcd.conf' "$postinst" || fail "postinst" "does not apply tmpfiles.d/arcd.conf"
grep -q 'deb-systemd-helper enable arcd.service' "$postinst" || fail "postinst" "does not enable arcd.service"
! grep -Eq 'deb-systemd-invoke (start|"?\$_dh_action)|_dh_action=start' "$postinst" || fail "postinst" "starts arcd.service at install (it must wait for the endpoint to be configured)"
sh -n "$postinst" || fail "postinst" "sh -n: syntax error"
pass "files, modes, conffile, postinst" "$(wc -l <"$WORK/contents.txt") entries; /etc/arcd/arcd.toml the conffile; postinst: user, tmpfiles, unit enabled not started"

printf '\n---- 3. unpacked: the unit and the configuration ----\n'
root=$WORK/root
dpkg-deb -x "$deb" "$root"
chmod 755 "$WORK" "$root" # the binary is run as arcd in stage 5
unit=$root/usr/lib/systemd/system/arcd.service
cmp -s "$unit" packaging/arcd.service || fail "packaged unit" "differs from packaging/arcd.service"
# systemd-analyze verify wants ExecStart's binary at /usr/bin/arcd: in a private mount namespace
# the packaged /usr/bin is laid over the host's (read-only overlay), nothing is installed. It
# exits 0 even for a bad setting (it only logs "ignoring"), so any output is a failure.
verify_out=$(unshare --mount --propagation private sh -c \
    'mount -t overlay arcd-verify -o "lowerdir=$1:/usr/bin" /usr/bin && systemd-analyze verify "$2"' \
    sh "$root/usr/bin" "$unit" 2>&1) || fail "systemd-analyze verify" "$verify_out"
[[ -z $verify_out ]] || fail "systemd-analyze verify" "$verify_out"
exposure=$(unshare --mount --propagation private sh -c \
    'mount -t overlay arcd-verify -o "lowerdir=$1:/usr/bin" /usr/bin && systemd-analyze security --offline=yes "$2"' \
    sh "$root/usr/bin" "$unit" 2>&1 | sed -n 's/.*Overall exposure level for arcd.service: *//p' | sed 's/\x1b\[[0-9;]*m//g')
pass "systemd-analyze verify usr/lib/systemd/system/arcd.service" "no complaint; systemd-analyze security: ${exposure:-n/a}"
arcd=$root/usr/bin/arcd
"$arcd" version | grep -qx "arcd $(field Version | sed 's/-.*//')" || fail "packaged binary" "arcd version: $("$arcd" version 2>&1)"
# The packaged configuration is valid: an administrative command reads it (data_dir redirected).
env -i PATH=/usr/bin:/bin ARCD_DATA_DIR="$WORK/cfg-data" "$arcd" --config "$root/etc/arcd/arcd.toml" operator create \
    >"$WORK/operator.json" 2>"$WORK/operator.err" ||
    fail "packaged configuration" "arcd --config etc/arcd/arcd.toml operator create: $(cat "$WORK/operator.err")"
jq -e '.operatorId | startswith("OP")' "$WORK/operator.json" >/dev/null || fail "packaged configuration" "operator create printed $(cat "$WORK/operator.json")"
grep -qx 'data_dir = "/var/lib/arcd"' "$root/etc/arcd/arcd.toml" || fail "packaged configuration" "data_dir is not the unit's StateDirectory /var/lib/arcd"
pass "packaged arcd reads the packaged /etc/arcd/arcd.toml" "data_dir /var/lib/arcd = StateDirectory"

printf '\n---- 4. the system user arcd (usr/lib/sysusers.d/arcd.conf) ----\n'
if getent passwd arcd >/dev/null; then
    log "user arcd exists already: used as it is, not removed at the end"
else
    CREATED_USER=1
    systemd-sysusers "$root/usr/lib/sysusers.d/arcd.conf" || fail "systemd-sysusers" "the package's sysusers.d file"
fi
entry=$(getent passwd arcd) || fail "user arcd" "not created"
IFS=: read -r _ _ uid gid _ home shell <<<"$entry"
((uid > 0 && uid < 1000)) || fail "user arcd" "uid $uid is not a system uid"
[[ $home == /var/lib/arcd && $shell == */nologin ]] || fail "user arcd" "home $home, shell $shell"
pass "user arcd" "uid $uid, gid $gid, home $home, shell $shell"

printf '\n---- 5. netns.sh stages 1-5, packaged arcd run as the unit runs it ----\n'
ARCD_BIN=$arcd E2E_RUN_AS=arcd E2E_TMPFILES=$root/usr/lib/tmpfiles.d/arcd.conf E2E_STOP_AFTER=5 \
    "$SCRIPT_DIR/netns.sh" || fail "netns.sh with the packaged arcd as user arcd" "see its output above"
pass "packaged arcd as user arcd with CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only" "TUN, services, data plane, wg show, egress NAT"
