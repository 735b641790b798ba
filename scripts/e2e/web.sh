#!/usr/bin/env bash
# web.sh — end-to-end test of the management page in a real browser (run as root; scripts/test.sh
# runs it in CI): Playwright (npm playwright-core, tests/web/) drives Debian's chromium, headless,
# against a real arcd, and a real WireGuard device is configured from what the page shows.
#
#   ┌──────────── netns <p>rv ──────────────────────┐      ┌──── netns <p>d1 ───────────┐
#   │ arcd: API+page https://10.98.0.1:8443, UDP     │ veth │ v-rv 10.98.1.2/30          │
#   │ 11010, TUN arc0 (platform services)            ├──────┤ wireguard-go wgweb         │
#   │ node + chromium (tests/web/ui.test.mjs)        │      │ configured from the page's │
#   │ lo 10.98.0.1/32, v-d1 10.98.1.1/30             │      │ wg-quick text              │
#   └────────────────────────────────────────────────┘      └────────────────────────────┘
#   <p> = arcweb-<pid>-. No namespace has a route out: the browser can reach nothing but arcd.
#
# The flow (tests/web/ui.test.mjs; scripts/e2e/lib/web-device.sh is the device's side): sign-in
# (a wrong secret shows an error) → create a virtual SIM → read the wg-quick config from the page
# → wireguard-go + wg setconf in d1 → the SIM row turns online with "N s ago" (live refresh, no
# reload) → group with Harvest on, made on the page (its list row shows it) → SIM renamed, tagged
# and put in the group → the device POSTs JSON to Harvest → the SIM page's Harvest table and
# chart show it → RP view shows the device online → VPG created (internet gateway off),
# device-to-device on, terminated → reset session (a new session event) → renew credentials (a
# new key pair shown) → terminate with typed confirmation → a virtual subscriber added to an
# imported IoT SIM on the page, found by an IMSI search, suspended and activated, its virtual
# subscriber terminated → expired token and
# sign-out go back to sign-in. Along the way (issue 15): sign-in shows no navigation and Tab skips
# it, the IoT SIM field shows only when chosen, groups show by name (id on hover), the list's total
# and column sorting, IMSI and creation time, last seen (lastSeenAt) and a live throughput while
# the device sends pings, the enabled switch (disabled with its reason for a virtual SIM; it
# deactivates and activates the IoT SIM), the Harvest range picker and per-series axes with dated
# ticks, VPG form labels, a terminated SIM's events reloaded and actions disabled, and every view
# no wider than a 390-px viewport. Screenshots of each main view (and phone-*.png) land in
# target/screenshots/ (CI artifacts, not committed). Any request to another origin fails the test.
#
# Environment:
#   ARCD_BIN=PATH   use this arcd binary instead of `cargo build --release --locked`
#   E2E_KEEP_WORK=1 keep the temp directory
# Needs: root, /dev/net/tun, iproute2, wireguard-go, wireguard-tools, curl, jq, node + npm
# (Debian nodejs npm), chromium (Debian chromium). A missing tool is a failure, never a skip.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
PROV=$REPO_DIR/scripts/provision
WEB_TEST_DIR=$REPO_DIR/tests/web
SCREENSHOTS=$REPO_DIR/target/screenshots
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

RUN_ID=$$
NS_RV="arcweb-${RUN_ID}-rv"
NS_D1="arcweb-${RUN_ID}-d1"
DEVICE_IF=wgweb
RV_ADDR=10.98.0.1
RV_D1=10.98.1.1
D1_RV=10.98.1.2
API_PORT=8443
WG_PORT=11010
API_URL="https://${RV_ADDR}:${API_PORT}"
UAPI_DIR=/var/run/wireguard
MNT_HOLDER=""
WORK=""
PIDS=()     # "pid:comm" of the background processes we started
PIDFILES=() # "file:comm" of processes started for us by helpers

log() { printf '[web.sh] %s\n' "$*"; }
fail() {
    printf 'FAIL  %s\n' "$*"
    if [[ -n $WORK && -s $WORK/arcd.log ]]; then
        echo "==== tail of arcd's log ===="
        tail -n 40 "$WORK/arcd.log" | sed 's/\x1b\[[0-9;]*m//g' || true
    fi
    exit 1
}

# Only processes this run started are stopped: by recorded PID (proc_is_ours, stop_pids).
# shellcheck source=scripts/lib/procs.sh
source "$REPO_DIR/scripts/lib/procs.sh"
# shellcheck source=scripts/lib/links.sh
source "$REPO_DIR/scripts/lib/links.sh" # wait_for, device_link, private_wireguard_dir

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pid ns
    stop_recorded
    wait 2>/dev/null
    for ns in "$NS_D1" "$NS_RV"; do
        if [[ -e /run/netns/$ns ]]; then
            # The browser (started by node, in our own namespace) if node could not close it.
            for pid in $(ip netns pids "$ns" 2>/dev/null); do
                case $(cat "/proc/$pid/comm" 2>/dev/null) in
                    chromium | chrome | chrome_crashpad | node) kill -KILL "$pid" 2>/dev/null ;;
                    *) log "warning: process $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) still in $ns" ;;
                esac
            done
            ip netns del "$ns" 2>/dev/null || log "warning: could not delete namespace $ns"
        fi
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${E2E_KEEP_WORK:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    if ((rc == 0)); then echo "RESULT: web.sh: all checks passed"; else echo "RESULT: web.sh FAILED (exit $rc)"; fi
    exit "$rc"
}

nsx() { # nsx NS cmd...: in network namespace NS inside our mount namespace
    local ns=$1
    shift
    nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$ns" "$@"
}

# ==================================================================== main ==
[[ $EUID -eq 0 ]] || { echo "web.sh: needs root (network namespaces, TUN, WireGuard)" >&2; exit 1; }
for tool in ip wg wireguard-go curl jq node npm nsenter unshare; do
    command -v "$tool" >/dev/null ||
        fail "missing $tool (apt-get install --no-install-recommends iproute2 wireguard-tools wireguard-go curl jq nodejs npm util-linux)"
done
[[ -x $CHROMIUM ]] || fail "no chromium at $CHROMIUM (apt-get install --no-install-recommends chromium): the browser test cannot run"
[[ -c /dev/net/tun ]] || fail "/dev/net/tun is missing"

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ARCD=${ARCD_BIN:-}
[[ -z $ARCD ]] || ARCD=$(realpath -m -- "$ARCD")
unset ARCD_BIN
WORK=$(mktemp -d /tmp/arcweb.XXXXXX)
chmod 700 "$WORK"
cd "$REPO_DIR"

log "1. arcd binary and the browser test's npm packages"
if [[ -z $ARCD ]]; then
    ARCD=$(timeout 1800 "$PROV/build-arcd.sh" --src "$REPO_DIR") || fail "build-arcd.sh failed"
else
    ARCD=$("$PROV/build-arcd.sh" --prebuilt "$ARCD") || fail "build-arcd.sh --prebuilt $ARCD failed"
fi
# playwright-core only (pinned in package-lock.json); it must never download a browser.
(cd "$WEB_TEST_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) ||
    fail "npm ci in tests/web failed"
ARCD_ENV_UNSET=()
while read -r v; do ARCD_ENV_UNSET+=(-u "$v"); done < <(compgen -e | grep '^ARCD_' || true)

log "2. namespaces $NS_RV, $NS_D1"
for ns in "$NS_RV" "$NS_D1"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # No IPv6: a link-local address appearing after DAD is a network change to chromium, which
    # then aborts a navigation with ERR_NETWORK_CHANGED.
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
private_wireguard_dir arcweb-wireguard || fail "no private mount namespace with a tmpfs on $UAPI_DIR"
ip -n "$NS_RV" addr add "$RV_ADDR/32" dev lo
device_link "$NS_RV" v-d1 "$RV_D1" "$NS_D1" "$D1_RV" "$RV_ADDR"

log "3. arcd in $NS_RV (scripts/provision/rendezvous.sh)"
PIDFILES+=("$WORK/arcd.pid:$(basename "$ARCD" | cut -c1-15)")
nsx "$NS_RV" env "${ARCD_ENV_UNSET[@]}" "$PROV/rendezvous.sh" --arcd "$ARCD" \
    --config "$WORK/arcd.toml" --data-dir "$WORK/data" \
    --api-listen "$RV_ADDR:$API_PORT" --api-tls yes --api-hostname "$RV_ADDR" \
    --rp-id ap-northeast-1 --rp-listen "0.0.0.0:$WG_PORT" --rp-endpoint "$RV_ADDR:$WG_PORT" \
    --pool 10.64.0.0/16 --allowed-ips 100.127.0.0/16 --tun-name arc0 --mtu 1420 \
    --log-level info --pid-file "$WORK/arcd.pid" --log-file "$WORK/arcd.log" 2>&1 | sed 's/^/    /' ||
    fail "arcd did not start (rendezvous.sh output above)"
nsx "$NS_RV" curl -fsS --cacert "$WORK/data/tls-cert.pem" -o /dev/null "$API_URL/" ||
    fail "the page is not served at $API_URL/"

log "4. browser test (tests/web/ui.test.mjs) in $NS_RV"
mkdir -p "$SCREENSHOTS"
PIDFILES+=("$WORK/wireguard-go.pid:wireguard-go")
set +e
nsx "$NS_RV" env "${ARCD_ENV_UNSET[@]}" HOME="$WORK" \
    WEB_URL="$API_URL" WEB_CREDENTIALS="$WORK/data/root-credentials.json" \
    WEB_CHROMIUM="$CHROMIUM" WEB_SCREENSHOTS="$SCREENSHOTS" WEB_WORK="$WORK" \
    WEB_HOOK="$SCRIPT_DIR/lib/web-device.sh" WEB_DEVICE_NS="$NS_D1" WEB_DEVICE_IF="$DEVICE_IF" \
    timeout 600 node "$WEB_TEST_DIR/ui.test.mjs"
rc=$?
set -e
((rc == 0)) || fail "browser test failed (exit $rc)"
log "screenshots: $(find "$SCREENSHOTS" -name '*.png' | wc -l) in $SCREENSHOTS"
