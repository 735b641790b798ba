#!/usr/bin/env bash
# netns.sh — end-to-end proof of arcd's WireGuard data plane with real clients, entirely inside
# private network namespaces (run as root; scripts/test.sh runs it in CI).
#
#   ┌──────────────────── netns <p>rv (rendezvous) ───────────────────────┐
#   │ arcd serve: API https://10.99.0.1:8443, UDP 0.0.0.0:11010           │
#   │   TUN arc0 (100.127.100.127 ..., route 10.64.0.0/16): platform      │
#   │   services (metadata, Harvest, Beam, unified, DNS) on its addresses │
#   │   UAPI /var/run/wireguard/arc-apne1.sock (`wg show`)                │
#   │ iperf3 -s; Beam sink (beam-sink.py) on 10.99.0.1:18080              │
#   │ lo: 10.99.0.1/32 = arcServerEndpoint address                        │
#   │ v-d1 10.99.1.1/30       v-d2 10.99.2.1/30       v-d3 10.99.3.1/30   │
#   └──────┬───────────────────────┬───────────────────────┬──────────────┘
#      veth│                   veth│                   veth│
#   ┌──────┴── netns <p>d1 ─┐ ┌────┴──── netns <p>d2 ─┐ ┌───┴───── netns <p>d3 ─┐
#   │ v-rv 10.99.1.2/30     │ │ v-rv 10.99.2.2/30     │ │ v-rv 10.99.3.2/30     │
#   │ wireguard-go wgd1     │ │ wireguard-go wgd2     │ │ wireguard-go wgd3     │
#   │ virtual SIM           │ │ virtual SIM           │ │ virtual subscriber of │
#   │                       │ │                       │ │ an IoT SIM (plan-D)   │
#   │ 10.64.x.y/32 from API │ │ 10.64.x.y/32 from API │ │ 10.64.x.y/32 from API │
#   └───────────────────────┘ └───────────────────────┘ └───────────────────────┘
#   <p> = arce2e-<pid>-  (unique per run: runs never collide)
#
# No namespace has a default route or a link to the host: no packet leaves them. WireGuard
# control sockets (/var/run/wireguard, not separated by network namespaces) sit on a private
# tmpfs in a mount namespace of this run, so an arcd or wireguard-go on the host cannot clash.
#
# The hosts are set up by the same provisioning scripts as the VMs of the Vagrantfile, run inside
# the namespaces (`ip netns exec NS scripts/provision/X.sh ...`), so a broken provisioning script
# fails this test: scripts/provision/build-arcd.sh (the binary), rendezvous.sh (arcd's config,
# arcd started in the background with its PID in a file, readiness) and device.sh (a SIM through
# the API, wireguard-go + wg configured from it). The checks below are this script's own.
#
# Stages: build arcd (build-arcd.sh) → namespaces + veths → arcd in rv (rendezvous.sh) + iperf3
# server → one virtual SIM per device through the API, each device configured with Debian's
# wireguard-go + wg from a wg-quick style config rendered from the API answer (device.sh, which
# calls render-wg-conf.sh) → asserts:
#   ping 100.127.100.127 (both devices) · iperf3 from d1 (>= 50 MB received) · getSim live stats
#   (arcdSessionStats) · `wg show` on arcd's control socket lists both peers with handshakes ·
#   devices outside a VPG cannot reach each other · egress NAT (egress.masquerade): d1 reaches a
#   host in netns <p>net that has no route back to the client pool (only arcd's masquerade lets
#   the replies return), nftables table `ip arcd` and ip_forward set by arcd
# → platform services (stage 6), used from the devices with only what a device has (curl, nc,
#   dig, ping); d3 is a virtual subscriber added to an imported plan-D IoT SIM (device.sh
#   --add-subscription), d1 a standalone virtual SIM, both in one group with metadata, Harvest
#   and Beam on (to a sink in rv that verifies X-Soracom-Signature itself); d2 stays outside:
#   pong · metadata: the caller's own record (d3: the IoT SIM's IMSI, not its virtual one), 403
#   outside the group and once switched off · Beam: X-Soracom-IMSI/-SIM-ID/-Timestamp and a
#   signature the sink accepts, the device's own X-Soracom-IMSI claim replaced · unified endpoint
#   · Harvest: HTTP POST, TCP and UDP 8514 ("201") · bad input: 64 KiB + 1 (413), random bytes
#   on TCP/UDP 8514 and HTTP 80/8888, d1 sending with d3's address (dropped by the data plane:
#   nothing reaches arc0, no answer) · Harvest read back through the official data API (GET
#   /v1/subscribers/{imsi}/data, /v1/data/Subscriber/{imsi}, /v1/sims/{id}/data agree): every
#   entry exactly once, under the right primary IMSI; nothing under the virtual IMSI, d2 or any
#   other resource (/v1/data/resources) · DNS: harvest.soracom.io over UDP and TCP, still
#   answering after malformed queries
# → session lifecycle (stage 7): delete_session → traffic resumes without touching the device
#   (time printed) · renew credentials → old session and old key fail, new key works · terminate
#   d2 → traffic stops and no handshake any more, d1 unaffected
# → rendezvous points and VPGs (stage 8, scripts/e2e/lib/vpg-stage.sh): arcd restarted with
#   Oregon and Frankfurt added (d1's session untouched) · global-coverage SIMs d4, d5 on
#   Frankfurt · joined to a VPG in Oregon + delete_session → Oregon's port, a VPG-subnet address,
#   the platform reachable · d4 <-> d5 only after device-to-device is turned on · d1 outside
#   cannot reach them · internet gateway off: d4 reaches 100.127.x but not a host beyond arcd
#   (d1, without PersistentKeepalive, pings again within 2 s of the restart: arcd starts the
#   handshake toward its saved endpoint; time printed)
# → graceful stop (stage 9): SIGTERM → exit 0, and no arc0, nft table, route or control socket left
# → cleanup (trap): processes by recorded PID (checked against /proc), namespaces, temp files.
#
# Every assert prints "PASS name" or "FAIL name: why"; the first FAIL ends the run (exit 1, after
# printing the tail of arcd's log and cleaning up). A table of the measured figures is printed at
# the end either way.
#
# Environment:
#   ARCD_BIN=PATH     use this arcd binary instead of `cargo build --release --locked`
#                     (read and then removed from the environment: arcd itself reads ARCD_*)
#   E2E_API_TLS=no    plain-HTTP API instead of HTTPS with arcd's generated certificate (trusted
#                     by the clients through curl --cacert)
#   E2E_KEEP_WORK=1   keep the temp directory (config, logs, JSON) instead of deleting it
#   E2E_LOG_LEVEL=F   arcd log filter (default "info")
#   E2E_IPERF_BYTES=N iperf3 -n amount (default 64M; at least 50,000,000 bytes must arrive)
#   E2E_RUN_AS=USER   run arcd as USER with CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only, as the Debian
#                     package's systemd unit does (rendezvous.sh --run-as); the private
#                     /var/run/wireguard gets the package's tmpfiles.d rule first. Stage 3 then
#                     also checks arcd's user, capabilities and control socket owner.
#   E2E_TMPFILES=FILE the tmpfiles.d file applied with E2E_RUN_AS (default packaging/arcd.tmpfiles)
#   E2E_STOP_AFTER=5  stop (passing) after stage 5: data plane, wg show and egress NAT only
#                     (scripts/e2e/package.sh uses it with the packaged binary)
# Needs: root, /dev/net/tun, iproute2, wireguard-go, wireguard-tools (wg), iperf3, jq, curl, ping,
# dig (bind9-dnsutils), nc (netcat-openbsd), python3.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
RENDER=$SCRIPT_DIR/render-wg-conf.sh
PROV=$REPO_DIR/scripts/provision   # the provisioning scripts the Vagrant VMs run too
# shellcheck source=scripts/lib/procs.sh
source "$REPO_DIR/scripts/lib/procs.sh" # proc_is_ours, stop_pids
# shellcheck source=scripts/lib/links.sh
source "$REPO_DIR/scripts/lib/links.sh" # wait_for, device_link, private_wireguard_dir

# ---------------------------------------------------------------- constants --
RUN_ID=$$
NS_PREFIX="arce2e-${RUN_ID}-"
NS_RV=${NS_PREFIX}rv
NS_D1=${NS_PREFIX}d1
NS_D2=${NS_PREFIX}d2
NS_D3=${NS_PREFIX}d3
NS_D4=${NS_PREFIX}d4
NS_D5=${NS_PREFIX}d5
NS_NET=${NS_PREFIX}net   # "another network" behind rv, for the egress NAT stage (5f)
IF_D1=wgd1
IF_D2=wgd2
IF_D3=wgd3
IF_D4=wgd4
IF_D5=wgd5
# WireGuard control sockets (arcd's and wireguard-go's) live in /var/run/wireguard, which network
# namespaces do not separate. Everything here runs in a mount namespace of our own (held by a
# `sleep` process) with a private tmpfs on that directory: no clash with an arcd or WireGuard
# interface on the host or in a concurrent run, and nothing left behind.
UAPI_DIR=/var/run/wireguard
MNT_HOLDER=""

RV_ADDR=10.99.0.1            # on rv's loopback: API address and arcServerEndpoint host
RV_D1=10.99.1.1 D1_RV=10.99.1.2
RV_D2=10.99.2.1 D2_RV=10.99.2.2
RV_D3=10.99.3.1 D3_RV=10.99.3.2
RV_D4=10.99.4.1 D4_RV=10.99.4.2 # d4, d5: global-coverage devices of the VPG stage (8)
RV_D5=10.99.5.1 D5_RV=10.99.5.2
RV_NET=10.99.8.1 NET_RV=10.99.8.2 # rv <-> net; net routes nothing but 10.99.0.1 back
API_PORT=8443
WG_PORT=11010
METRICS_URL=http://127.0.0.1:9469/metrics # arcd's Prometheus listener, on rv's own loopback
API_TLS=${E2E_API_TLS:-yes}
[[ $API_TLS == no ]] && API_SCHEME=http || API_SCHEME=https
API_URL="${API_SCHEME}://${RV_ADDR}:${API_PORT}"
RP_ID=ap-northeast-1
ARCD_UAPI_NAME=arc-apne1     # control socket name arcd derives from the id ap-northeast-1
POOL=10.64.0.0/16
PLATFORM_ADDR=100.127.100.127
# Platform services (src/services): metadata shares the pong address.
METADATA_URL=http://100.127.100.127
HARVEST_ADDR=100.127.111.111
HARVEST_RAW_PORT=8514
BEAM_URL=http://100.127.127.100:8888
UNIFIED_URL=http://100.127.69.42
DNS_ADDR=100.127.0.53
# The Beam destination: scripts/e2e/beam-sink.py in rv, on rv's loopback address.
SINK_PORT=18080
SINK_URL="http://${RV_ADDR}:${SINK_PORT}"
BEAM_PSK="e2e-psk-$RUN_ID-$RANDOM"
# The imported IoT SIM (plan-D) whose virtual subscriber device d3 runs.
IOT_ICCID=8981100000000000058
IOT_IMSI=440101234567892
# Every Harvest entry and Beam body of this run carries "e2e-<run>-<who>-<what>".
MARK="e2e-$RUN_ID"
MTU=1420
IPERF_PORT=5201
# iperf3 -n stops counting at the receiver when the sender's "test end" arrives on the control
# connection, so data still in socket buffers and in flight is not counted (esnet/iperf#382; up
# to ~10 MB with Linux's default TCP buffer limits). Sending 64 MiB makes sure >= 50 MB are
# counted as received.
IPERF_BYTES=${E2E_IPERF_BYTES:-64M}
IPERF_MIN_BYTES=50000000

T_START=$(date +%s)
WORK=""
PIDS=()      # "pid:comm" of every background process we started
PIDFILES=()  # "file:comm": PID files of the processes the provisioning scripts started for us
FIG_KEYS=()  # measured figures, in order
declare -A FIG=()
CURRENT_STAGE="start"

# ------------------------------------------------------------------ output --
log() { printf '[netns.sh] %s\n' "$*"; }
stage() {
    CURRENT_STAGE=$*
    printf '\n---- %s ----\n' "$*"
}
figure() { # figure NAME VALUE
    [[ -v "FIG[$1]" ]] || FIG_KEYS+=("$1")
    FIG[$1]=$2
}
pass() { printf 'PASS  %s%s\n' "$1" "${2:+  ($2)}"; }
fail() {
    printf 'FAIL  %s: %s\n' "$1" "${2:-}"
    show_logs
    exit 1
}
die() { fail "$CURRENT_STAGE" "$*"; }

show_logs() {
    [[ -n $WORK && -d $WORK ]] || return 0
    if [[ -s $WORK/arcd.log ]]; then
        echo "==== tail of arcd's log ($WORK/arcd.log) ===="
        tail -n 60 "$WORK/arcd.log" | sed 's/\x1b\[[0-9;]*m//g' || true
    fi
    local f
    for f in "$WORK"/wireguard-go-*.log "$WORK"/iperf3-server.log "$WORK"/beam-sink.log; do
        [[ -s $f ]] || continue
        echo "==== tail of ${f##*/} ===="
        tail -n 15 "$f" || true
    done
    echo "==== end of logs ===="
}

now_ms() {
    local t=${EPOCHREALTIME/[.,]/}
    echo $((10#$t / 1000))
}

# ----------------------------------------------------------------- cleanup --
# Kills only the processes this run started (by recorded PID, and only while /proc/PID/comm still
# names the program we started or the process is still our own child), then deletes our
# namespaces (which removes the veths and TUN devices inside) and temp files.
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # A signal trap can run inside a command whose output is redirected to a file (run_ping):
    # back to the script's own stdout/stderr, saved at start as fds 3 and 4.
    exec 1>&3 2>&4
    stop_recorded
    wait 2>/dev/null
    local ns left pid
    for ns in "$NS_D1" "$NS_D2" "$NS_D3" "$NS_D4" "$NS_D5" "$NS_NET" "$NS_RV"; do
        if [[ -e /run/netns/$ns ]]; then
            left=""
            for pid in $(ip netns pids "$ns" 2>/dev/null); do
                [[ -r /proc/$pid/comm ]] && left+="$pid($(cat "/proc/$pid/comm" 2>/dev/null)) "
            done
            [[ -n $left ]] && log "warning: processes not started by this script still in namespace $ns: $left"
            ip netns del "$ns" 2>/dev/null || log "warning: could not delete namespace $ns"
        fi
    done
    # The control sockets lived on the tmpfs of our mount namespace, gone with its last process.
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${E2E_KEEP_WORK:-0} == 1 ]]; then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    print_summary "$rc"
    exit "$rc"
}

print_summary() {
    local rc=$1 k
    echo
    echo "==== netns.sh summary ===="
    if ((${#FIG_KEYS[@]})); then
        printf '%-44s %s\n' "figure" "value"
        printf '%-44s %s\n' "--------------------------------------------" "--------------------"
        for k in "${FIG_KEYS[@]}"; do
            printf '%-44s %s\n' "$k" "${FIG[$k]}"
        done
    fi
    printf '%-44s %s\n' "total runtime" "$(($(date +%s) - T_START)) s"
    if ((rc == 0)); then
        echo "RESULT: all checks passed"
    elif ((rc == 130 || rc == 143)); then
        echo "RESULT: INTERRUPTED (exit $rc) in stage: $CURRENT_STAGE"
    else
        echo "RESULT: FAILED (exit $rc) in stage: $CURRENT_STAGE"
    fi
}

# ---------------------------------------------------------------- helpers --
# spawn NS LOGFILE COMM cmd args...: start a long-running program in a namespace and record its
# PID with COMM (the name /proc/PID/comm shows once it runs). The background subshell exec()s
# nsenter, which exec()s `ip netns exec`, which exec()s the program (through `env` for some): $! ends
# up being the program itself. (A function run with & would stay a bash process in between.)
spawn() {
    local ns=$1 logf=$2 comm=$3
    shift 3
    (exec nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$ns" "$@" >"$logf" 2>&1 </dev/null 3>&- 4>&-) &
    SPAWNED_PID=$!
    PIDS+=("$SPAWNED_PID:${comm:0:15}")
}


alive() { kill -0 "$1" 2>/dev/null; }

# in_mnt cmd...: run cmd in our mount namespace (host network namespace).
in_mnt() { nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" "$@"; }

# nsx NS cmd...: run cmd in network namespace NS, inside our mount namespace (private
# /var/run/wireguard). Both nsenter (no PID namespace: no fork) and `ip netns exec` exec().
nsx() {
    local ns=$1
    shift
    nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$ns" "$@"
}

# api METHOD PATH [BODY]: the API from inside rv; body on stdout; status 1 on a non-2xx answer.
# API_HOST=NAME sends that Host header (arcd picks a request's coverage by it).
API_KEY="" API_TOKEN="" API_HOST=""
api() {
    local method=$1 path=$2 body=${3-} out code
    out=$(mktemp -p "$WORK" api.XXXXXX)
    local args=(-sS -m 10 -X "$method" -o "$out" -w '%{http_code}' -H 'Accept: application/json')
    [[ $API_SCHEME == https ]] && args+=(--cacert "$CACERT")
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
    [[ -n $API_KEY ]] && args+=(-H "X-Soracom-API-Key: $API_KEY" -H "X-Soracom-Token: $API_TOKEN")
    [[ -n $API_HOST ]] && args+=(-H "Host: $API_HOST")
    code=$(nsx "$NS_RV" timeout 15 curl "${args[@]}" "$API_URL$path" 2>"$out.err") || code=${code:-000}
    if [[ $code != 2?? ]]; then
        echo "API $method $path -> HTTP $code: $(head -c 400 "$out") $(head -c 200 "$out.err")" >&2
        rm -f "$out" "$out.err"
        return 1
    fi
    cat "$out"
    rm -f "$out" "$out.err"
}

# run_ping NS DST COUNT INTERVAL DEADLINE [extra ping args]: sets PING_TX PING_RX PING_AVG
# (ms, "" when no reply) and PING_OUT (file with ping's output). Never fails.
run_ping() {
    local ns=$1 dst=$2 count=$3 interval=$4 deadline=$5
    shift 5
    PING_OUT=$WORK/ping-$ns.out
    nsx "$ns" timeout $((deadline + 5)) \
        ping -n -c "$count" -i "$interval" -W 1 -w "$deadline" "$@" "$dst" >"$PING_OUT" 2>&1 || true
    PING_TX=$(sed -n 's/^\([0-9][0-9]*\) packets transmitted.*/\1/p' "$PING_OUT")
    PING_RX=$(sed -n 's/.* transmitted, \([0-9][0-9]*\) received.*/\1/p' "$PING_OUT")
    PING_AVG=$(sed -n 's#^rtt [^=]*= [0-9.]*/\([0-9.]*\)/.*#\1#p' "$PING_OUT")
    PING_TX=${PING_TX:-0}
    PING_RX=${PING_RX:-0}
}

# UNIX ms of the first echo reply in PING_OUT (ping -D); now when there is none.
first_reply_ms() {
    local sec usec
    read -r sec usec < <(sed -n 's/^\[\([0-9]*\)\.\([0-9]*\)\] .*bytes from.*/\1 \2/p' "$PING_OUT" | head -n 1) || true
    if [[ -n ${sec:-} && -n ${usec:-} ]]; then
        echo $((10#$sec * 1000 + 10#$usec / 1000)) # -D prints microseconds
    else
        now_ms
    fi
}

dev_ns() {
    case $1 in
        d1) echo "$NS_D1" ;;
        d2) echo "$NS_D2" ;;
        d3) echo "$NS_D3" ;;
        d4) echo "$NS_D4" ;;
        d5) echo "$NS_D5" ;;
        *) die "dev_ns: no device $1" ;;
    esac
}
dev_if() {
    case $1 in
        d1) echo "$IF_D1" ;;
        d2) echo "$IF_D2" ;;
        d3) echo "$IF_D3" ;;
        d4) echo "$IF_D4" ;;
        d5) echo "$IF_D5" ;;
        *) die "dev_if: no device $1" ;;
    esac
}

# Latest handshake (UNIX seconds, 0 = never) of the device's peer with the server key.
dev_handshake() { # dev_handshake DEV
    local ns if_ srv
    ns=$(dev_ns "$1")
    if_=$(dev_if "$1")
    srv=$(jq -r '.arcSessionStatus.arcServerPeerPublicKey' "$WORK/$1/sim.json")
    nsx "$ns" timeout 5 wg show "$if_" latest-handshakes 2>/dev/null |
        awk -v k="$srv" '$1 == k { print $2; found = 1 } END { if (!found) print 0 }'
}

# Bytes the device sent to the server peer (its wg transfer counter).
dev_tx_bytes() { # dev_tx_bytes DEV
    local srv
    srv=$(jq -r '.arcSessionStatus.arcServerPeerPublicKey' "$WORK/$1/sim.json")
    nsx "$(dev_ns "$1")" timeout 5 wg show "$(dev_if "$1")" transfer 2>/dev/null |
        awk -v k="$srv" '$1 == k { print $3; found = 1 } END { if (!found) print 0 }'
}

# Counter from /proc/net/snmp of a namespace, e.g. snmp NS Icmp InEchos.
snmp() {
    # shellcheck disable=SC2016 # an awk program
    nsx "$1" awk -v p="$2:" -v f="$3" '$1 == p { if (!h) { for (i = 2; i <= NF; i++) c[$i] = i; h = 1 } else { print $c[f]; exit } }' /proc/net/snmp
}

# --------------------------------------------------------- device handling --
# A device's state directory (written by scripts/provision/device.sh): sim.json, private.key,
# public.key, address, wg.conf, up.sh and the times created-at-ms, configured-at-ms and
# first-reply-at-ms.
dev_state() { echo "$WORK/$1"; }

# provision_device DEV [device.sh options...]: run scripts/provision/device.sh for DEV in its
# namespace (inside our mount namespace) with its interface and state directory; its wireguard-go
# PID file is registered for the cleanup before it runs.
provision_device() {
    local dev=$1 ns if_
    shift
    ns=$(dev_ns "$dev")
    if_=$(dev_if "$dev")
    local entry="$WORK/$dev.wireguard-go.pid:wireguard-go"
    [[ " ${PIDFILES[*]} " == *" $entry "* ]] || PIDFILES+=("$entry")
    nsx "$ns" "$PROV/device.sh" --interface "$if_" --mtu "$MTU" --wg-log-level verbose \
        --pid-file "$WORK/$dev.wireguard-go.pid" --log-file "$WORK/wireguard-go-$dev.log" \
        "$@" "$(dev_state "$dev")" 2>&1 | sed 's/^/    /'
    return "${PIPESTATUS[0]}"
}

# Drop the device's peer and add it again with the same config: forces a new handshake with the
# key the device holds, without changing anything on the server side.
force_rehandshake() { # force_rehandshake DEV
    local dev=$1 ns if_ srv
    ns=$(dev_ns "$dev")
    if_=$(dev_if "$dev")
    srv=$(jq -r '.arcSessionStatus.arcServerPeerPublicKey' "$WORK/$dev/sim.json")
    nsx "$ns" timeout 10 wg set "$if_" peer "$srv" remove
    nsx "$ns" timeout 10 wg setconf "$if_" "$WORK/$dev/wg.conf"
}

sim_field() { jq -r "$2" "$WORK/$1/sim.json"; }

# expect_cut_off DEV STOPPED_CHECK REFUSED_CHECK: after a renewal or termination, the session the
# device still runs gets no reply at once, and a fresh handshake with the key it holds fails.
expect_cut_off() {
    local dev=$1 stopped=$2 refused=$3 ns hs
    ns=$(dev_ns "$dev")
    run_ping "$ns" "$PLATFORM_ADDR" 10 0.2 3
    ((PING_RX == 0)) || fail "$stopped" "$PING_RX/$PING_TX replies on the old session"
    pass "$stopped" "0/$PING_TX replies"
    force_rehandshake "$dev"
    run_ping "$ns" "$PLATFORM_ADDR" 6 1 6
    hs=$(dev_handshake "$dev")
    ((PING_RX == 0)) || fail "$refused" "$PING_RX/$PING_TX replies with the old key"
    ((hs == 0)) || fail "$refused" "$dev completed a handshake with the old key (latest handshake $hs)"
    pass "$refused" "0/$PING_TX replies in 6 s, no handshake"
}

# Routes NET into DEV's tunnel and accepts it from the server, besides arcAllowedIPs (what a
# user adds to the Arc client's AllowedIPs to reach VPG devices, as on SORACOM).
dev_route_also() { # dev_route_also DEV NET...
    local dev=$1 ns if_ allowed
    shift
    ns=$(dev_ns "$dev")
    if_=$(dev_if "$dev")
    allowed=$(sim_field "$dev" '.arcSessionStatus.arcAllowedIPs | join(",")')
    nsx "$ns" timeout 10 wg set "$if_" peer "$(sim_field "$dev" .arcSessionStatus.arcServerPeerPublicKey)" \
        allowed-ips "$allowed,$(IFS=,; echo "$*")"
    local net
    for net in "$@"; do
        ip -n "$ns" route replace "$net" dev "$if_" src "$(cat "$WORK/$dev/address")"
    done
}

# expect_unreachable NAME SRC ADDR DST: 10 probes from device SRC to ADDR must go into SRC's
# tunnel (else the check proves nothing) and DST must see none of them, nor SRC a reply.
expect_unreachable() {
    local name=$1 src=$2 addr=$3 dst=$4 sent_before echos_before sent echos
    echos_before=$(snmp "$(dev_ns "$dst")" Icmp InEchos)
    sent_before=$(dev_tx_bytes "$src")
    run_ping "$(dev_ns "$src")" "$addr" 10 0.2 3
    sent=$(($(dev_tx_bytes "$src") - sent_before))
    echos=$(($(snmp "$(dev_ns "$dst")" Icmp InEchos) - echos_before))
    if ((PING_TX == 0)); then
        fail "$name" "ping did not send anything: $(tail -n 2 "$PING_OUT" | tr '\n' ' ')"
    elif ((sent < PING_TX * 84)); then
        fail "$name" "only $sent bytes went into $src's tunnel for $PING_TX probes: the check proves nothing"
    elif ((PING_RX != 0)); then
        fail "$name" "$PING_RX/$PING_TX echo replies from $dst ($addr)"
    elif ((echos != 0)); then
        fail "$name" "$dst received $echos echo requests from $src (arcd forwarded them)"
    fi
    pass "$name" "$PING_TX probes sent into the tunnel, 0 replies, $dst received 0 echo requests"
}

# ---------------------------------------------------- platform services --
# What a device has: curl, nc, dig and ping, run inside its namespace through its tunnel.

# dev_http DEV OUT [curl args...]: an HTTP request from device DEV; the answer's body lands in
# OUT, curl's complaints in OUT.err; prints the status ("000": no answer). Never fails.
dev_http() {
    local dev=$1 out=$2 code
    shift 2
    code=$(nsx "$(dev_ns "$dev")" timeout 20 curl -sS -m 10 -o "$out" -w '%{http_code}' "$@" 2>"$out.err") || true
    [[ $code =~ ^[0-9]{3}$ ]] || code=000
    echo "$code"
}

# dev_nc DEV OUT [nc args...] <INPUT: netcat from device DEV (numeric addresses only); what
# comes back lands in OUT. Never fails.
dev_nc() {
    local dev=$1 out=$2
    shift 2
    nsx "$(dev_ns "$dev")" timeout 15 nc -n "$@" >"$out" 2>"$out.err" || true
}

# Harvest raw messages: TCP ends the message at the newline (nc -N half-closes after it), UDP
# waits for the one answer datagram (-W 1).
harvest_tcp() { dev_nc "$1" "$2" -N -w 5 "$HARVEST_ADDR" "$HARVEST_RAW_PORT"; }
harvest_udp() { dev_nc "$1" "$2" -u -W 1 -w 3 "$HARVEST_ADDR" "$HARVEST_RAW_PORT"; }

# One line: the file's bytes, printable and cut (for FAIL messages).
peek() { head -c "${2:-300}" "$1" 2>/dev/null | tr -c '[:print:]' '.'; }

# The Harvest entries every device should have stored, checked through the data API at the end:
# EXPECT_N[DEV] entries in all; each expect_entry line exactly once.
declare -A EXPECT_N=()
expect_entry() { # expect_entry DEV CONTENT_TYPE CONTENT [TIME]
    jq -nc --arg t "$2" --arg c "$3" --arg time "${4:-}" \
        '{contentType: $t, content: $c} + (if $time == "" then {} else {time: ($time | tonumber)} end)' \
        >>"$WORK/harvest-expect-$1.jsonl"
    EXPECT_N[$1]=$((${EXPECT_N[$1]:-0} + 1))
}
# count_201 FILE: the "201" answers in a raw reply (each is one stored entry).
count_201() { grep -c '^201$' "$1" 2>/dev/null || true; }

# Lines of the Beam sink's record whose body carries MARKER.
sink_records() { # sink_records MARKER
    jq -c --arg m "$1" 'select(.body != null and (.body | contains($m)))' "$SINK_LOG" 2>/dev/null || true
}
sink_count() { if [[ -s $SINK_LOG ]]; then wc -l <"$SINK_LOG"; else echo 0; fi; }

# arc0's receive counter in rv: packets arcd wrote into the kernel (device traffic it accepted).
arc0_rx_packets() { nsx "$NS_RV" cat /sys/class/net/arc0/statistics/rx_packets; }

# dig_a DEV NAME [dig options...]: the A answers of the in-tunnel DNS, one per line.
dig_a() {
    local dev=$1 name=$2
    shift 2
    nsx "$(dev_ns "$dev")" timeout 10 dig @"$DNS_ADDR" "$name" A +short +time=2 +tries=2 "$@" 2>&1 || true
}

# ==================================================================== main ==
[[ $EUID -eq 0 ]] || {
    echo "netns.sh: needs root (network namespaces, TUN devices, WireGuard)" >&2
    exit 1
}
for tool in ip wg wireguard-go iperf3 jq curl ping timeout awk unshare nsenter ss dig nc python3 base64 promtool; do
    command -v "$tool" >/dev/null || {
        echo "netns.sh: missing $tool (apt-get install --no-install-recommends iproute2 wireguard-tools wireguard-go iperf3 jq curl iputils-ping bind9-dnsutils netcat-openbsd python3 prometheus)" >&2
        exit 1
    }
done
[[ -c /dev/net/tun ]] || {
    echo "netns.sh: /dev/net/tun is missing" >&2
    exit 1
}

exec 3>&1 4>&2
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A relative ARCD_BIN is relative to the caller's directory; arcd must not see ARCD_BIN.
ARCD=${ARCD_BIN:-}
[[ -z $ARCD ]] || ARCD=$(realpath -m -- "$ARCD")
unset ARCD_BIN
RUN_AS=${E2E_RUN_AS:-}
TMPFILES=$(realpath -m -- "${E2E_TMPFILES:-$REPO_DIR/packaging/arcd.tmpfiles}")
STOP_AFTER=${E2E_STOP_AFTER:-}
[[ -z $STOP_AFTER || $STOP_AFTER == 5 ]] || { echo "netns.sh: E2E_STOP_AFTER: only 5 is supported" >&2; exit 2; }
# How arcd is started (rendezvous.sh, and the restart of stage 8): directly as root, or as
# rendezvous.sh --run-as does.
ARCD_LAUNCH=()
if [[ -n $RUN_AS ]]; then
    RUN_UID=$(id -u -- "$RUN_AS" 2>/dev/null) || { echo "netns.sh: E2E_RUN_AS: no user $RUN_AS" >&2; exit 2; }
    RUN_GID=$(id -g -- "$RUN_AS")
    ARCD_LAUNCH=(setpriv "--reuid=$RUN_UID" "--regid=$RUN_GID" --init-groups
        --inh-caps=-all,+net_admin,+net_bind_service --ambient-caps=-all,+net_admin,+net_bind_service
        --bounding-set=-all,+net_admin,+net_bind_service
        --no-new-privs --)
    [[ -r $TMPFILES ]] || { echo "netns.sh: E2E_TMPFILES: cannot read $TMPFILES" >&2; exit 2; }
fi

WORK=$(mktemp -d /tmp/arce2e.XXXXXX)
chmod 700 "$WORK"
# arcd running as RUN_AS must reach its config and data directory in here (nothing listable).
[[ -z $RUN_AS ]] || chmod 711 "$WORK"
cd "$REPO_DIR"

# --------------------------------------------------------------- 1. build --
stage "1. arcd binary (scripts/provision/build-arcd.sh)"
if [[ -z $ARCD ]]; then
    log "build-arcd.sh: cargo build --release --locked"
    ARCD=$(timeout 1800 "$PROV/build-arcd.sh" --src "$REPO_DIR") || die "build-arcd.sh (cargo build --release --locked) failed"
else
    ARCD=$("$PROV/build-arcd.sh" --prebuilt "$ARCD") || die "build-arcd.sh --prebuilt $ARCD failed"
fi
[[ -x $ARCD ]] || die "no executable arcd at $ARCD"
log "arcd: $ARCD"
# arcd reads every ARCD_* variable as configuration: start it with none of ours.
ARCD_ENV_UNSET=()
while read -r v; do
    ARCD_ENV_UNSET+=(-u "$v")
done < <(compgen -e | grep '^ARCD_' || true)

# -------------------------------------------------------- 2. namespaces ----
stage "2. namespaces and links"
for ns in "$NS_RV" "$NS_D1" "$NS_D2" "$NS_D3" "$NS_D4" "$NS_D5" "$NS_NET"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
private_wireguard_dir arce2e-wireguard || die "no private mount namespace with a tmpfs on $UAPI_DIR"
if [[ -n $RUN_AS ]]; then
    # What the package does at install, boot and before every start of the unit.
    in_mnt systemd-tmpfiles --create "$TMPFILES" || die "systemd-tmpfiles --create $TMPFILES failed"
    in_mnt getfacl -cp "$UAPI_DIR" 2>/dev/null | grep -qx "user:$RUN_AS:rwx" ||
        die "$TMPFILES gave $RUN_AS no rwx ACL on $UAPI_DIR: $(in_mnt getfacl -cp "$UAPI_DIR" 2>&1 | tr '\n' ' ')"
    # Debian's udev makes /dev/net/tun 0666 (opening it is harmless; creating a device needs
    # CAP_NET_ADMIN). Where it is not (containers often have 0600), our mount namespace gets a
    # 0666 node of the same device over it, for arcd only; the host's node stays as it is.
    if [[ $(stat -c %a /dev/net/tun) != 666 ]]; then
        log "/dev/net/tun is mode $(stat -c %a /dev/net/tun) here: a 0666 node over it in this run's mount namespace"
        in_mnt sh -c 'mkdir -p "$1" && mount -t tmpfs -o mode=0755,size=64k arce2e-dev "$1" &&
            mknod -m 0666 "$1/tun" c 10 200 && mount --bind "$1/tun" /dev/net/tun' sh "$WORK/dev" ||
            die "cannot give $RUN_AS a usable /dev/net/tun in the mount namespace"
    fi
fi
ip -n "$NS_RV" addr add "$RV_ADDR/32" dev lo
for link in "d1 $RV_D1 $D1_RV" "d2 $RV_D2 $D2_RV" "d3 $RV_D3 $D3_RV" "d4 $RV_D4 $D4_RV" "d5 $RV_D5 $D5_RV"; do
    read -r dev rv_side dev_side <<<"$link"
    device_link "$NS_RV" "v-$dev" "$rv_side" "$(dev_ns "$dev")" "$dev_side" "$RV_ADDR"
done
for dev in d1 d2 d3 d4 d5; do
    ns=$(dev_ns "$dev")
    nsx "$ns" timeout 5 ping -n -c 1 -W 2 "$RV_ADDR" >/dev/null ||
        fail "underlay $dev -> rv" "no reply from $RV_ADDR over the veth"
done
# net: one veth to rv, a route back to rv's address only (not to the client pool).
device_link "$NS_RV" v-net "$RV_NET" "$NS_NET" "$NET_RV" "$RV_ADDR"
pass "namespaces $NS_RV, $NS_D1 ... $NS_D5, $NS_NET with veth links"

# ------------------------------------------------------------- 3. arcd ------
stage "3. arcd and iperf3 server in $NS_RV"
# scripts/provision/rendezvous.sh writes the config and starts arcd in the background (the PID
# file is registered for the cleanup before it runs), then waits until arcd is ready. The checks
# after it are this script's own.
CACERT=$WORK/data/tls-cert.pem
PIDFILES+=("$WORK/arcd.pid:$(basename "$ARCD")")
t0=$(now_ms)
if ! nsx "$NS_RV" env "${ARCD_ENV_UNSET[@]}" "$PROV/rendezvous.sh" --arcd "$ARCD" \
    --config "$WORK/arcd.toml" --data-dir "$WORK/data" \
    --api-listen "$RV_ADDR:$API_PORT" --api-tls "$API_TLS" --api-hostname "$RV_ADDR" \
    --rp-id "$RP_ID" --rp-listen "0.0.0.0:$WG_PORT" --rp-endpoint "$RV_ADDR:$WG_PORT" \
    --pool "$POOL" --allowed-ips 100.127.0.0/16 --tun-name arc0 --mtu "$MTU" \
    --log-level "${E2E_LOG_LEVEL:-info}" --metrics-listen 127.0.0.1:9469 \
    --pid-file "$WORK/arcd.pid" --log-file "$WORK/arcd.log" \
    --egress-masquerade yes ${RUN_AS:+--run-as "$RUN_AS"} \
    2>&1 | sed 's/^/    /'; then
    fail "arcd starts (rendezvous.sh)" "scripts/provision/rendezvous.sh failed (output above)"
fi
ARCD_PID=$(cat "$WORK/arcd.pid" 2>/dev/null) || fail "arcd starts" "rendezvous.sh wrote no PID file"
[[ $ARCD_PID =~ ^[0-9]+$ ]] || fail "arcd starts" "bad PID file $WORK/arcd.pid: '$ARCD_PID'"
[[ $(cat "/proc/$ARCD_PID/comm" 2>/dev/null) == "$(basename "$ARCD" | cut -c1-15)" ]] ||
    fail "arcd starts" "PID $ARCD_PID from rendezvous.sh is not a running $(basename "$ARCD")"
[[ $(readlink "/proc/$ARCD_PID/ns/net") != "$(readlink /proc/$$/ns/net)" ]] ||
    fail "arcd starts" "arcd runs in the host's network namespace, not in $NS_RV"
grep -qx "tls = $([[ $API_TLS == no ]] && echo false || echo true)" "$WORK/arcd.toml" ||
    fail "arcd config" "$WORK/arcd.toml does not set tls as asked"
arcd_up() {
    alive "$ARCD_PID" || return 2
    [[ -s $WORK/data/root-credentials.json ]] || return 1
    local tls=()
    [[ $API_SCHEME == https ]] && tls=(--cacert "$CACERT")
    nsx "$NS_RV" timeout 3 curl -fs "${tls[@]}" -o /dev/null -m 2 "$API_URL/openapi.yaml" || return 1
}
ready=0
for ((i = 0; i < 300; i++)); do
    if arcd_up; then
        ready=1
        break
    elif ! alive "$ARCD_PID"; then
        fail "arcd starts" "arcd exited during start"
    fi
    sleep 0.1
done
((ready)) || fail "arcd starts" "no API on $API_URL and/or no root-credentials.json after 30 s"
wait_for 10 ip -n "$NS_RV" link show arc0 || fail "arcd starts" "no TUN device arc0 in $NS_RV"
wait_for 10 in_mnt test -S "$UAPI_DIR/$ARCD_UAPI_NAME.sock" ||
    fail "arcd starts" "no control socket $UAPI_DIR/$ARCD_UAPI_NAME.sock"
nsx "$NS_RV" timeout 5 ss -Hlun "sport = :$WG_PORT" | grep -q . ||
    fail "arcd starts" "nothing listens on UDP port $WG_PORT in $NS_RV"
figure "arcd start (API, TUN, UDP ready)" "$(($(now_ms) - t0)) ms"
# The baseline of stage 6i: the data-plane counters start at zero.
nsx "$NS_RV" timeout 5 curl -fsS -m 3 -o "$WORK/metrics-start.txt" "$METRICS_URL" ||
    fail "arcd starts" "no metrics at $METRICS_URL in $NS_RV ([metrics] enabled by rendezvous.sh)"
ip -n "$NS_RV" -br addr show dev arc0 | sed 's/^/    /'
pass "arcd serve with [tun] enabled (rendezvous.sh)" "pid $ARCD_PID, API $API_URL"
if [[ -n $RUN_AS ]]; then
    # As the unit runs it: the user's ids, CAP_NET_ADMIN (bit 12) and CAP_NET_BIND_SERVICE (bit
    # 10) and nothing else, no new privileges.
    status=$(cat "/proc/$ARCD_PID/status")
    want_caps=0000000000001400
    for line in "Uid:	$RUN_UID	$RUN_UID	$RUN_UID	$RUN_UID" "Gid:	$RUN_GID	$RUN_GID	$RUN_GID	$RUN_GID" \
        "CapEff:	$want_caps" "CapPrm:	$want_caps" "CapBnd:	$want_caps" "CapAmb:	$want_caps" "NoNewPrivs:	1"; do
        grep -qxF "$line" <<<"$status" ||
            fail "arcd runs as $RUN_AS with CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only" "/proc/$ARCD_PID/status has no line '$line': $(grep -E '^(Uid|Gid|Cap|NoNewPrivs)' <<<"$status" | tr '\t\n' '  ')"
    done
    owner=$(in_mnt stat -c %U "$UAPI_DIR/$ARCD_UAPI_NAME.sock")
    [[ $owner == "$RUN_AS" ]] || fail "control socket made by $RUN_AS" "$UAPI_DIR/$ARCD_UAPI_NAME.sock is owned by $owner"
    [[ $(stat -c %U "$WORK/data/arcd.sqlite") == "$RUN_AS" ]] ||
        fail "database made by $RUN_AS" "$WORK/data/arcd.sqlite is owned by $(stat -c %U "$WORK/data/arcd.sqlite")"
    pass "arcd runs as $RUN_AS (uid $RUN_UID) with CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only, no new privileges" "TUN arc0, UDP $WG_PORT, control socket and database made without root"
fi

spawn "$NS_RV" "$WORK/iperf3-server.log" iperf3 iperf3 -s -B 0.0.0.0 -p "$IPERF_PORT"
IPERF_PID=$SPAWNED_PID
iperf_listening() { nsx "$NS_RV" timeout 5 ss -Hltn "sport = :$IPERF_PORT" | grep -q LISTEN; }
wait_for 5 iperf_listening ||
    fail "iperf3 server starts" "nothing listens on TCP $IPERF_PORT"

# ---------------------------------------------------------- 4. API, SIMs ----
stage "4. API: auth and one virtual SIM per device"
creds=$WORK/data/root-credentials.json
auth_body=$(jq -c '{authKeyId, authKey}' "$creds") || die "unreadable $creds"
auth=$(api POST /v1/auth "$auth_body") || fail "POST /v1/auth" "see above"
API_KEY=$(jq -r '.apiKey // empty' <<<"$auth")
API_TOKEN=$(jq -r '.token // empty' <<<"$auth")
[[ -n $API_KEY && -n $API_TOKEN ]] || fail "POST /v1/auth" "no apiKey/token in the answer"
pass "POST /v1/auth with the root credentials"

# Each device is provisioned by scripts/provision/device.sh in its own namespace, as on a device
# VM: wireguard-go started (PID file registered for the cleanup), createSim through the API over
# the underlay with the root credentials, config rendered (render-wg-conf.sh) and applied, then a
# ping through the tunnel until the first reply (its time stamps are the figures below). What it
# did is checked here, from the state it left and from the live interface.
DEV_CA=()
[[ $API_SCHEME == https ]] && DEV_CA=(--cacert "$CACERT")
declare -A SIM_ID=() DEV_ADDR=() DEV_PUB=() IMSI=()
for dev in d1 d2; do
    ns=$(dev_ns "$dev")
    if_=$(dev_if "$dev")
    st=$(dev_state "$dev")
    provision_device "$dev" --api "$API_URL" --auth "$creds" "${DEV_CA[@]}" \
        --check-ping "$PLATFORM_ADDR" --check-timeout 10 ||
        fail "$dev: device.sh" "scripts/provision/device.sh failed (output above)"

    wg_pid=$(cat "$WORK/$dev.wireguard-go.pid" 2>/dev/null) || fail "$dev: wireguard-go" "device.sh wrote no PID file"
    [[ $wg_pid =~ ^[0-9]+$ && $(cat "/proc/$wg_pid/comm" 2>/dev/null) == wireguard-go ]] ||
        fail "$dev: wireguard-go" "PID '$wg_pid' from device.sh is not a running wireguard-go"
    [[ $(stat -L -c %i "/proc/$wg_pid/ns/net" 2>/dev/null) == "$(stat -c %i "/run/netns/$ns")" ]] ||
        fail "$dev: wireguard-go" "wireguard-go (PID $wg_pid) is not in namespace $ns"
    in_mnt test -S "$UAPI_DIR/$if_.sock" || fail "$dev: wireguard-go" "no control socket $UAPI_DIR/$if_.sock"
    ip -n "$ns" link show "$if_" >/dev/null 2>&1 || fail "$dev: wireguard-go" "interface $if_ is not in $ns"
    pass "$dev: wireguard-go $if_ in $ns" "pid $wg_pid"

    SIM_ID[$dev]=$(cat "$st/sim-id" 2>/dev/null) || true
    [[ -n ${SIM_ID[$dev]} ]] || fail "$dev: createSim" "device.sh left no sim-id"
    [[ -s $st/private.key ]] || fail "$dev: createSim" "device.sh left no private.key (profiles[simId].arcClientPeerPrivateKey of the 201 answer)"
    [[ $(stat -c %a "$st/private.key") == 600 ]] || fail "$dev: createSim" "private.key is not mode 0600"
    jq -e '[.. | objects | select(has("arcClientPeerPrivateKey"))] | length == 0' "$st/sim.json" >/dev/null ||
        fail "$dev: createSim" "sim.json still holds a private key"
    for f in arcServerEndpoint arcServerPeerPublicKey arcClientPeerIpAddress arcAllowedIPs; do
        jq -e --arg f "$f" '.arcSessionStatus[$f] | . != null and . != "" and . != []' "$st/sim.json" >/dev/null ||
            fail "$dev: createSim" "arcSessionStatus.$f missing"
    done
    DEV_ADDR[$dev]=$("$RENDER" --print-address "$st/sim.json" "$st/private.key")
    DEV_PUB[$dev]=$(wg pubkey <"$st/private.key")
    api_pub=$(sim_field "$dev" '.arcSessionStatus.arcClientPeerPublicKey // empty')
    [[ -z $api_pub || $api_pub == "${DEV_PUB[$dev]}" ]] ||
        fail "$dev: createSim" "arcClientPeerPublicKey $api_pub does not match the private key's public key ${DEV_PUB[$dev]}"
    api GET "/v1/sims/${SIM_ID[$dev]}" >"$WORK/$dev.get.json" || fail "$dev: getSim" "see above"
    [[ $(jq -r .simId "$WORK/$dev.get.json") == "${SIM_ID[$dev]}" ]] || fail "$dev: getSim" "wrong simId in the answer"
    pass "$dev: createSim" "simId ${SIM_ID[$dev]}, client ${DEV_ADDR[$dev]}, endpoint $(sim_field "$dev" .arcSessionStatus.arcServerEndpoint)"

    # The interface as device.sh left it: key, peer, address, MTU, a route per arcAllowedIPs.
    [[ $(nsx "$ns" timeout 5 wg show "$if_" public-key) == "${DEV_PUB[$dev]}" ]] ||
        fail "$dev: configured from the Sim" "wg show $if_ public-key is not the SIM's key"
    nsx "$ns" timeout 5 wg show "$if_" peers | grep -qxF "$(sim_field "$dev" .arcSessionStatus.arcServerPeerPublicKey)" ||
        fail "$dev: configured from the Sim" "the server key is not a peer of $if_"
    ip -n "$ns" -4 -o addr show dev "$if_" | grep -qF " ${DEV_ADDR[$dev]}/32 " ||
        fail "$dev: configured from the Sim" "${DEV_ADDR[$dev]}/32 is not on $if_"
    ip -n "$ns" -o link show dev "$if_" | grep -q " mtu $MTU " ||
        fail "$dev: configured from the Sim" "MTU of $if_ is not $MTU"
    while read -r cidr; do
        ip -n "$ns" route show "$cidr" | grep -q "dev $if_" ||
            fail "$dev: configured from the Sim" "no route $cidr dev $if_"
    done < <(sim_field "$dev" '.arcSessionStatus.arcAllowedIPs[]')
    pass "$dev: $if_ configured from the Sim" "key, peer $(sim_field "$dev" .arcSessionStatus.arcServerEndpoint), ${DEV_ADDR[$dev]}/32, MTU $MTU, routes $(sim_field "$dev" '.arcSessionStatus.arcAllowedIPs | join(",")')"
    if [[ $dev == d1 ]]; then
        echo "    $st/wg.conf (wg setconf; address ${DEV_ADDR[d1]}/32 and routes set with ip by up.sh):"
        sed -e 's/^\(PrivateKey = \).*/\1(hidden)/' -e 's/^/      /' "$st/wg.conf"
    fi

    # device.sh pinged until the first reply (keepalive and probes start the handshake; ping -D
    # stamps the reply): its time stamps give the figures. Then a probe of our own.
    created_at=$(cat "$st/created-at-ms" 2>/dev/null) || fail "$dev: time stamps" "no created-at-ms"
    configured_at=$(cat "$st/configured-at-ms" 2>/dev/null) || fail "$dev: time stamps" "no configured-at-ms"
    reply_at=$(cat "$st/first-reply-at-ms" 2>/dev/null) || fail "$dev: time stamps" "no first-reply-at-ms"
    ((created_at <= configured_at && configured_at <= reply_at)) ||
        fail "$dev: time stamps" "created $created_at, configured $configured_at, first reply $reply_at: out of order"
    run_ping "$ns" "$PLATFORM_ADDR" 1 0.05 5
    ((PING_RX >= 1)) || fail "$dev: first reply through the tunnel" "no reply from $PLATFORM_ADDR: $(tail -n 3 "$PING_OUT" | tr '\n' ' ')"
    pass "$dev: first reply through the tunnel" "$((reply_at - configured_at)) ms after wg setconf"
    figure "$dev: device configured -> first reply" "$((reply_at - configured_at)) ms (handshake + 1 RTT; $((reply_at - created_at)) ms after the createSim 201, script work included)"
done

# ------------------------------------------------------------ 5. asserts ----
stage "5a. ping $PLATFORM_ADDR"
for dev in d1 d2; do
    run_ping "$(dev_ns "$dev")" "$PLATFORM_ADDR" 3 0.5 10
    if ((PING_RX == 3)); then
        pass "$dev: ping -c 3 $PLATFORM_ADDR" "3/3 replies, avg rtt ${PING_AVG} ms"
        figure "$dev: ping rtt avg through the tunnel" "${PING_AVG} ms"
    else
        fail "$dev: ping -c 3 $PLATFORM_ADDR" "$PING_RX/$PING_TX replies: $(tail -n 2 "$PING_OUT" | tr '\n' ' ')"
    fi
done

stage "5b. iperf3: >= 50 MB from d1 to $PLATFORM_ADDR (iperf3 -n $IPERF_BYTES)"
iperf_json=$WORK/iperf3-d1.json
nsx "$NS_D1" timeout 90 iperf3 -c "$PLATFORM_ADDR" -p "$IPERF_PORT" -n "$IPERF_BYTES" -J \
    --connect-timeout 5000 >"$iperf_json" 2>"$iperf_json.err" || true
if ! jq -e '.end.sum_received.bytes' "$iperf_json" >/dev/null 2>&1; then
    alive "$IPERF_PID" || log "the iperf3 server (pid $IPERF_PID) is gone"
    fail "iperf3 transfer" "$(jq -r '.error // empty' "$iperf_json" 2>/dev/null) $(head -c 300 "$iperf_json.err")"
fi
rx_bytes=$(jq -r '.end.sum_received.bytes' "$iperf_json")
tx_bytes=$(jq -r '.end.sum_sent.bytes // 0' "$iperf_json")
gbps=$(jq -r '.end.sum_received.bits_per_second / 1e9 * 1000 | round / 1000' "$iperf_json")
retr=$(jq -r '.end.sum_sent.retransmits // "-"' "$iperf_json")
secs=$(jq -r '.end.sum_received.seconds * 100 | round / 100' "$iperf_json")
if ((rx_bytes >= IPERF_MIN_BYTES)); then
    pass "iperf3 transfer d1 -> $PLATFORM_ADDR" "$rx_bytes bytes received (>= $IPERF_MIN_BYTES) of $tx_bytes sent, in $secs s: $gbps Gbit/s, $retr retransmits"
    figure "iperf3 TCP d1 -> rv (receiver rate)" "$gbps Gbit/s ($rx_bytes bytes in $secs s, $retr retransmits)"
else
    fail "iperf3 transfer" "only $rx_bytes bytes received (need >= $IPERF_MIN_BYTES)"
fi

stage "5c. getSim live session stats (arcdSessionStats)"
api GET "/v1/sims/${SIM_ID[d1]}" >"$WORK/d1.get.json" || fail "getSim d1" "see above"
d1_port=$(nsx "$NS_D1" timeout 5 wg show "$IF_D1" listen-port)
jq '.arcdSessionStats' "$WORK/d1.get.json" | sed 's/^/    /'
online=$(jq -r '.arcdSessionStats.deviceOnline // empty' "$WORK/d1.get.json")
lha=$(jq -r '.arcdSessionStats.lastHandshakeAt // empty' "$WORK/d1.get.json")
ep=$(jq -r '.arcdSessionStats.deviceEndpoint // empty' "$WORK/d1.get.json")
srx=$(jq -r '.arcdSessionStats.rxBytes // 0' "$WORK/d1.get.json")
stx=$(jq -r '.arcdSessionStats.txBytes // 0' "$WORK/d1.get.json")
[[ $online == true ]] || fail "getSim d1: deviceOnline" "arcdSessionStats.deviceOnline is '${online}', want true"
[[ $lha =~ ^[0-9]+$ ]] || fail "getSim d1: lastHandshakeAt" "arcdSessionStats.lastHandshakeAt is '${lha}'"
age=$(($(now_ms) - lha))
((age >= -2000 && age < 300000)) || fail "getSim d1: lastHandshakeAt" "$lha is ${age} ms from now: not a recent UNIX-ms time"
[[ $ep == "$D1_RV:$d1_port" ]] || fail "getSim d1: deviceEndpoint" "'$ep', want $D1_RV:$d1_port (d1's veth address and wireguard-go port)"
((srx >= IPERF_MIN_BYTES || stx >= IPERF_MIN_BYTES)) ||
    fail "getSim d1: rx/tx bytes" "rxBytes $srx, txBytes $stx: neither counts the $IPERF_BYTES iperf3 transfer"
pass "getSim d1: arcdSessionStats" "deviceOnline true, lastHandshakeAt ${age} ms ago, deviceEndpoint $ep, rxBytes $srx, txBytes $stx"
figure "d1 server-side counters after iperf3" "rxBytes $srx, txBytes $stx"

stage "5d. wg show on arcd's control socket"
wgshow=$WORK/wg-show.txt
nsx "$NS_RV" timeout 10 wg show "$ARCD_UAPI_NAME" >"$wgshow" 2>&1 ||
    fail "wg show $ARCD_UAPI_NAME" "$(head -c 300 "$wgshow")"
sed 's/^/    /' "$wgshow"
nsx "$NS_RV" timeout 10 wg show interfaces | grep -qw "$ARCD_UAPI_NAME" ||
    fail "wg show interfaces" "$ARCD_UAPI_NAME not listed"
nsx "$NS_RV" timeout 10 wg show "$ARCD_UAPI_NAME" latest-handshakes >"$WORK/wg-hs.txt" 2>&1 ||
    fail "wg show $ARCD_UAPI_NAME latest-handshakes" "$(head -c 300 "$WORK/wg-hs.txt")"
for dev in d1 d2; do
    awk -v k="${DEV_PUB[$dev]}" '/^peer: / { in_peer = ($2 == k) } in_peer && /latest handshake:/ { found = 1 } END { exit !found }' "$wgshow" ||
        fail "wg show lists $dev with a handshake" "no 'peer: ${DEV_PUB[$dev]}' block with a 'latest handshake:' line"
    hs=$(awk -v k="${DEV_PUB[$dev]}" '$1 == k { print $2 }' "$WORK/wg-hs.txt")
    if ! [[ ${hs:-0} =~ ^[0-9]+$ ]] || ((${hs:-0} == 0)); then
        fail "wg show lists $dev with a handshake" "latest-handshakes for ${DEV_PUB[$dev]} is '${hs}'"
    fi
done
pass "wg show $ARCD_UAPI_NAME lists both device peers with latest handshakes"

stage "5e. devices outside a VPG cannot reach each other"
# Both devices route the other's address into the tunnel and accept it from the server, so only
# arcd's policy stands between them.
dev_route_also d1 "${DEV_ADDR[d2]}/32"
dev_route_also d2 "${DEV_ADDR[d1]}/32"
for pair in "d1 d2" "d2 d1"; do
    read -r src dst <<<"$pair"
    expect_unreachable "$src -> $dst (${DEV_ADDR[$dst]}) isolated" "$src" "${DEV_ADDR[$dst]}" "$dst"
done
for dev in d1 d2; do
    run_ping "$(dev_ns "$dev")" "$PLATFORM_ADDR" 2 0.2 5
    ((PING_RX >= 1)) || fail "$dev still reaches $PLATFORM_ADDR" "$PING_RX/$PING_TX replies"
done
pass "both devices still reach $PLATFORM_ADDR"
# Back to the configuration from the API.
ip -n "$NS_D1" route del "${DEV_ADDR[d2]}/32" dev "$IF_D1"
ip -n "$NS_D2" route del "${DEV_ADDR[d1]}/32" dev "$IF_D2"
nsx "$NS_D1" timeout 10 wg set "$IF_D1" peer "$(sim_field d1 .arcSessionStatus.arcServerPeerPublicKey)" \
    allowed-ips "$(sim_field d1 '.arcSessionStatus.arcAllowedIPs | join(",")')"
nsx "$NS_D2" timeout 10 wg set "$IF_D2" peer "$(sim_field d2 .arcSessionStatus.arcServerPeerPublicKey)" \
    allowed-ips "$(sim_field d2 '.arcSessionStatus.arcAllowedIPs | join(",")')"

stage "5f. egress NAT: d1 reaches $NET_RV in $NS_NET through arcd"
# net has no route to the client pool: a reply only comes back when arcd's masquerade gave the
# probes rv's address ($RV_NET) as their source.
nft_rules=$(nsx "$NS_RV" timeout 5 nft list table ip arcd 2>&1) ||
    fail "nftables table ip arcd" "$nft_rules"
grep -q masquerade <<<"$nft_rules" || fail "nftables table ip arcd" "no masquerade rule: $(tr '\n' ' ' <<<"$nft_rules")"
[[ $(nsx "$NS_RV" cat /proc/sys/net/ipv4/ip_forward) == 1 ]] || fail "ip_forward in $NS_RV" "arcd did not set net.ipv4.ip_forward = 1"
ip -n "$NS_NET" route get "${DEV_ADDR[d1]}" >/dev/null 2>&1 &&
    fail "egress NAT" "$NS_NET has a route to ${DEV_ADDR[d1]}: the check would prove nothing"
dev_route_also d1 "$NET_RV/32"
echos_before=$(snmp "$NS_NET" Icmp InEchos)
run_ping "$NS_D1" "$NET_RV" 3 0.2 5
echos=$(($(snmp "$NS_NET" Icmp InEchos) - echos_before))
((PING_RX == 3)) || fail "d1 -> $NET_RV through egress NAT" "$PING_RX/$PING_TX replies ($NS_NET saw $echos echo requests): $(tail -n 2 "$PING_OUT" | tr '\n' ' ')"
pass "d1 -> $NET_RV in $NS_NET, masqueraded by arcd" "3/3 replies, avg ${PING_AVG} ms; table ip arcd, ip_forward 1"
ip -n "$NS_D1" route del "$NET_RV/32" dev "$IF_D1"
nsx "$NS_D1" timeout 10 wg set "$IF_D1" peer "$(sim_field d1 .arcSessionStatus.arcServerPeerPublicKey)" \
    allowed-ips "$(sim_field d1 '.arcSessionStatus.arcAllowedIPs | join(",")')"

# The last checks, after stage 5 (E2E_STOP_AFTER=5) or after stage 8.
final_checks() {
    stage "done"
    alive "$ARCD_PID" || fail "arcd still running" "arcd exited during the test"
    if grep -q 'panicked' "$WORK/arcd.log"; then
        fail "arcd log clean" "a panic in arcd's log: $(grep -m1 'panicked' "$WORK/arcd.log")"
    fi
    pass "arcd still running, no panic in its log"
}
if [[ $STOP_AFTER == 5 ]]; then
    log "E2E_STOP_AFTER=5: stages 6 to 8 not run"
    final_checks
    exit 0
fi

# ------------------------------------------------- 6. platform services ----
stage "6a. services setup: Beam sink, an IoT SIM's virtual subscriber (d3), one group"
t_services=$(now_ms)
# The Beam destination: scripts/e2e/beam-sink.py in rv, where arcd forwards to. It records every
# request (JSON lines) and checks X-Soracom-Signature itself with the PSK: 200 when valid, else
# 401. Run with the interpreter python3 names (its real path, so /proc/PID/comm is known).
SINK_LOG=$WORK/beam-sink.jsonl
: >"$SINK_LOG"
PY=$(python3 -c 'import sys; print(sys.executable)') || die "python3 does not run"
spawn "$NS_RV" "$WORK/beam-sink.log" "$(basename "$PY")" "$PY" "$SCRIPT_DIR/beam-sink.py" \
    --listen "$RV_ADDR:$SINK_PORT" --psk "$BEAM_PSK" --log "$SINK_LOG"
SINK_PID=$SPAWNED_PID
sink_listening() { nsx "$NS_RV" timeout 5 ss -Hltn "sport = :$SINK_PORT" | grep -q LISTEN; }
wait_for 10 sink_listening || fail "Beam sink starts" "nothing listens on $SINK_URL: $(peek "$WORK/beam-sink.log")"
# The sink really checks: a request with a wrong signature is refused.
code=$(nsx "$NS_RV" timeout 10 curl -sS -m 5 -o "$WORK/sink-selftest.out" -w '%{http_code}' \
    -H 'X-Soracom-IMSI: 001010000000000' -H "X-Soracom-Timestamp: $(now_ms)" \
    -H "X-Soracom-Signature: $(printf 'wrong' | sha256sum | cut -d' ' -f1)" \
    -H 'X-Soracom-Signature-Version: 20151001' --data "$MARK-sink-selftest" "$SINK_URL/in") || true
[[ $code == 401 ]] || fail "Beam sink verifies signatures" "a wrong signature got HTTP $code, want 401"
pass "Beam sink in $NS_RV" "pid $SINK_PID, $SINK_URL, refuses a wrong signature (401)"

for dev in d1 d2; do
    IMSI[$dev]=$(sim_field "$dev" '.profiles[.simId].primaryImsi // empty')
    [[ ${IMSI[$dev]} =~ ^[0-9]{15}$ ]] || fail "$dev: IMSI" "no profiles[simId].primaryImsi in its Sim: '${IMSI[$dev]}'"
done

# An IoT SIM (plan-D) imported, then device.sh adds a virtual subscriber to it
# (addSubscription) and runs that subscriber's session: the platform must see the IoT SIM's IMSI.
import=$(jq -nc --arg iccid "$IOT_ICCID" --arg imsi "$IOT_IMSI" '[{iccid: $iccid, imsi: $imsi, subscription: "plan-D"}]')
api POST /v1/arcd/iot_sims "$import" >"$WORK/iot-import.json" || fail "import the IoT SIM" "see above"
jq -e --arg id "$IOT_ICCID" '.[0].simId == $id' "$WORK/iot-import.json" >/dev/null ||
    fail "import the IoT SIM" "answer: $(peek "$WORK/iot-import.json")"
provision_device d3 --api "$API_URL" --auth "$creds" "${DEV_CA[@]}" --add-subscription "$IOT_ICCID" \
    --check-ping "$PLATFORM_ADDR" --check-timeout 10 ||
    fail "d3: device.sh --add-subscription" "scripts/provision/device.sh failed (output above)"
SIM_ID[d3]=$(cat "$WORK/d3/sim-id" 2>/dev/null) || true
[[ ${SIM_ID[d3]} == "$IOT_ICCID" ]] || fail "d3: virtual subscriber" "sim-id is '${SIM_ID[d3]}', want the IoT SIM $IOT_ICCID"
DEV_ADDR[d3]=$(cat "$WORK/d3/address")
DEV_PUB[d3]=$(wg pubkey <"$WORK/d3/private.key")
IMSI[d3]=$(sim_field d3 '.profiles[.simId].primaryImsi // empty')
# shellcheck disable=SC2016 # a jq program
VIRTUAL_IMSI=$(sim_field d3 '.profiles[.simId] | .primaryImsi as $p | [.subscribers | keys[] | select(. != $p)] | if length == 1 then .[0] else empty end')
[[ ${IMSI[d3]} == "$IOT_IMSI" ]] || fail "d3: virtual subscriber" "primaryImsi of the SIM is '${IMSI[d3]}', want the IoT SIM's $IOT_IMSI"
[[ $VIRTUAL_IMSI =~ ^[0-9]{15}$ && $VIRTUAL_IMSI != "$IOT_IMSI" ]] ||
    fail "d3: virtual subscriber" "want exactly one subscriber besides $IOT_IMSI: $(sim_field d3 '.profiles[.simId].subscribers | keys | join(",")')"
# shellcheck disable=SC2016 # a jq program
[[ $(sim_field d3 '.profiles[.simId].subscribers as $s | $s[.profiles[.simId].primaryImsi].subscription == "plan-D"
    and ([$s[] | select(.subscription == "planArc01")] | length == 1)') == true ]] ||
    fail "d3: virtual subscriber" "want the plan-D IMSI and one planArc01 subscriber: $(jq -c '.profiles[.simId].subscribers | map_values(.subscription)' "$WORK/d3/sim.json")"
[[ $(sim_field d3 '.sessionStatus.imsi // empty') == "$IOT_IMSI" ]] ||
    fail "d3: virtual subscriber" "sessionStatus.imsi is '$(sim_field d3 '.sessionStatus.imsi')', want $IOT_IMSI"
[[ $(nsx "$NS_D3" timeout 5 wg show "$IF_D3" public-key) == "${DEV_PUB[d3]}" ]] ||
    fail "d3: virtual subscriber" "$IF_D3 does not hold the subscriber's key"
pass "d3: virtual subscriber $VIRTUAL_IMSI of the IoT SIM $IOT_ICCID (IMSI $IOT_IMSI, plan-D)" "client ${DEV_ADDR[d3]}, first reply $(($(cat "$WORK/d3/first-reply-at-ms") - $(cat "$WORK/d3/configured-at-ms"))) ms after wg setconf"

# One group with every service on, for d1 (a standalone virtual SIM) and d3; d2 stays outside.
group_body=$(jq -nc --arg dest "$SINK_URL/in" --arg psk "$BEAM_PSK" '{
    tags: {name: "e2e-services"},
    configuration: {
        SoracomAir: {metadata: {enabled: true}},
        SoracomHarvest: {enabled: true},
        SoracomBeam: {"http://beam.soracom.io:8888/": {enabled: true, destination: $dest, psk: $psk}}
    }}')
api POST /v1/groups "$group_body" >"$WORK/group.json" || fail "POST /v1/groups" "see above"
GROUP_ID=$(jq -r '.groupId // empty' "$WORK/group.json")
[[ -n $GROUP_ID ]] || fail "POST /v1/groups" "no groupId: $(peek "$WORK/group.json")"
for dev in d1 d3; do
    api POST "/v1/sims/${SIM_ID[$dev]}/set_group" "{\"groupId\":\"$GROUP_ID\"}" >"$WORK/$dev.set_group.json" ||
        fail "set_group $dev" "see above"
    [[ $(jq -r '.groupId // empty' "$WORK/$dev.set_group.json") == "$GROUP_ID" ]] ||
        fail "set_group $dev" "groupId in the answer is not $GROUP_ID"
done
pass "group $GROUP_ID (metadata, Harvest, Beam -> $SINK_URL/in with a PSK) for d1 and d3" "d2 in no group"

stage "6b. pong"
for dev in d1 d3; do
    run_ping "$(dev_ns "$dev")" "$PLATFORM_ADDR" 3 0.2 5
    ((PING_RX == 3)) || fail "$dev: pong" "$PING_RX/$PING_TX replies from $PLATFORM_ADDR: $(tail -n 2 "$PING_OUT" | tr '\n' ' ')"
    pass "$dev: pong (ping -c 3 $PLATFORM_ADDR)" "3/3 replies, avg rtt $PING_AVG ms"
done

stage "6c. metadata ($METADATA_URL)"
for dev in d1 d3; do
    out=$WORK/$dev.metadata.json
    code=$(dev_http "$dev" "$out" "$METADATA_URL/v1/subscriber")
    [[ $code == 200 ]] || fail "$dev: metadata /v1/subscriber" "HTTP $code: $(peek "$out") $(peek "$out.err")"
    jq -e --arg imsi "${IMSI[$dev]}" --arg sim "${SIM_ID[$dev]}" --arg ip "${DEV_ADDR[$dev]}" --arg g "$GROUP_ID" \
        '.imsi == $imsi and .simId == $sim and .ipAddress == $ip and .groupId == $g and .sessionStatus.online == true' \
        "$out" >/dev/null ||
        fail "$dev: metadata /v1/subscriber" "not its own record (want imsi ${IMSI[$dev]}, simId ${SIM_ID[$dev]}, ipAddress ${DEV_ADDR[$dev]}, groupId $GROUP_ID): $(jq -c '{imsi, simId, ipAddress, groupId, online: .sessionStatus.online}' "$out" 2>/dev/null || peek "$out")"
    code=$(dev_http "$dev" "$out.imsi" "$METADATA_URL/v1/subscriber.imsi")
    [[ $code == 200 && $(cat "$out.imsi") == "${IMSI[$dev]}" ]] ||
        fail "$dev: metadata /v1/subscriber.imsi" "HTTP $code '$(peek "$out.imsi")', want ${IMSI[$dev]}"
    pass "$dev: metadata returns its own record" "imsi ${IMSI[$dev]}, simId ${SIM_ID[$dev]}, ipAddress ${DEV_ADDR[$dev]}"
done
[[ ${IMSI[d3]} != "$VIRTUAL_IMSI" ]] || fail "d3: metadata imsi" "the virtual IMSI"
pass "d3: metadata imsi is the IoT SIM's $IOT_IMSI" "not the virtual subscriber's $VIRTUAL_IMSI"
forbidden="You are not allowed to access Metadata Server."
code=$(dev_http d2 "$WORK/d2.metadata.out" "$METADATA_URL/v1/subscriber")
[[ $code == 403 && $(cat "$WORK/d2.metadata.out") == "$forbidden" ]] ||
    fail "d2 (no group): metadata 403" "HTTP $code '$(peek "$WORK/d2.metadata.out")'"
pass "d2 (no group): metadata 403" "$forbidden"
api PUT "/v1/groups/$GROUP_ID/configuration/SoracomAir" '[{"key":"metadata","value":{"enabled":false}}]' >/dev/null ||
    fail "switch metadata off" "see above"
code=$(dev_http d1 "$WORK/d1.metadata.off" "$METADATA_URL/v1/subscriber.imsi")
[[ $code == 403 && $(cat "$WORK/d1.metadata.off") == "$forbidden" ]] ||
    fail "d1: metadata 403 once switched off" "HTTP $code '$(peek "$WORK/d1.metadata.off")'"
api PUT "/v1/groups/$GROUP_ID/configuration/SoracomAir" '[{"key":"metadata","value":{"enabled":true}}]' >/dev/null ||
    fail "switch metadata on" "see above"
code=$(dev_http d1 "$WORK/d1.metadata.on" "$METADATA_URL/v1/subscriber.imsi")
[[ $code == 200 && $(cat "$WORK/d1.metadata.on") == "${IMSI[d1]}" ]] ||
    fail "d1: metadata back on" "HTTP $code '$(peek "$WORK/d1.metadata.on")'"
pass "d1: metadata 403 once the group switches it off, 200 again when on" "no session reset"

stage "6d. Beam ($BEAM_URL -> $SINK_URL/in) and the unified endpoint"
for dev in d1 d3; do
    out=$WORK/$dev.beam.json
    marker="$MARK-$dev-beam"
    before=$(now_ms)
    # The device's own X-Soracom-IMSI claim must be replaced by the platform's.
    code=$(dev_http "$dev" "$out" -X POST -H 'Content-Type: application/json' \
        -H 'X-Soracom-IMSI: 001010000000000' -H 'X-E2E-Header: kept' \
        --data "{\"marker\":\"$marker\",\"t\":20}" "$BEAM_URL/sensors/$dev?unit=c&n=1")
    after=$(now_ms)
    [[ $code == 200 ]] || fail "$dev: Beam to the sink" "HTTP $code: $(peek "$out") $(peek "$out.err") (401 = the sink refused the signature)"
    jq -e --arg imsi "${IMSI[$dev]}" '.verified == true and .imsi == $imsi' "$out" >/dev/null ||
        fail "$dev: Beam to the sink" "the sink's answer: $(peek "$out")"
    mapfile -t recs < <(sink_records "$marker")
    ((${#recs[@]} == 1)) || fail "$dev: Beam to the sink" "${#recs[@]} requests with $marker in the sink's record, want 1"
    rec=${recs[0]}
    ts=$(jq -r '.headers["x-soracom-timestamp"] // empty' <<<"$rec")
    problems=$(jq -r --arg imsi "${IMSI[$dev]}" --arg sim "${SIM_ID[$dev]}" --arg path "/in/sensors/$dev?unit=c&n=1" \
        --arg body "{\"marker\":\"$marker\",\"t\":20}" '
        [ (if .method != "POST" then "method \(.method)" else empty end),
          (if .path != $path then "path \(.path), want \($path)" else empty end),
          (if .body != $body then "body \(.body)" else empty end),
          (if .headers["x-soracom-imsi"] != $imsi then "X-Soracom-IMSI \(.headers["x-soracom-imsi"]), want \($imsi)" else empty end),
          (if .headers["x-soracom-sim-id"] != $sim then "X-Soracom-SIM-ID \(.headers["x-soracom-sim-id"]), want \($sim)" else empty end),
          (if .headers["x-soracom-signature-version"] != "20151001" then "X-Soracom-Signature-Version \(.headers["x-soracom-signature-version"])" else empty end),
          (if .headers["x-e2e-header"] != "kept" then "the device header X-E2E-Header was not passed on" else empty end),
          (if .headers["content-type"] != "application/json" then "Content-Type \(.headers["content-type"])" else empty end),
          (if .signature.valid != true then "the sink found the signature invalid" else empty end)
        ] | join("; ")' <<<"$rec")
    [[ -z $problems ]] || fail "$dev: Beam request at the sink" "$problems"
    if ! [[ $ts =~ ^[0-9]+$ ]] || ((ts < before || ts > after)); then
        fail "$dev: Beam request at the sink" "X-Soracom-Timestamp '$ts' not within the call ($before..$after)"
    fi
    pass "$dev: Beam -> sink" "X-Soracom-IMSI ${IMSI[$dev]}, X-Soracom-SIM-ID ${SIM_ID[$dev]}, timestamp, signature verified by the sink, path /in/sensors/$dev?unit=c&n=1, $((after - before)) ms"
    figure "$dev: Beam device -> sink -> device" "$((after - before)) ms (curl in the device namespace)"
done
[[ $(jq -r '.headers["x-soracom-imsi"]' <<<"$(sink_records "$MARK-d3-beam")") == "$IOT_IMSI" ]] ||
    fail "d3: Beam X-Soracom-IMSI" "not the IoT SIM's IMSI"
pass "d3: Beam X-Soracom-IMSI is the IoT SIM's $IOT_IMSI" "not the virtual subscriber's $VIRTUAL_IMSI"
n_before=$(sink_count)
code=$(dev_http d2 "$WORK/d2.beam.out" -X POST --data "$MARK-d2-beam" "$BEAM_URL/x")
[[ $code == 400 ]] || fail "d2 (no group): Beam refused" "HTTP $code: $(peek "$WORK/d2.beam.out")"
(($(sink_count) == n_before)) || fail "d2 (no group): Beam refused" "the sink got a request"
pass "d2 (no group): Beam refused" "HTTP 400, nothing forwarded"
# The unified endpoint with both Harvest and Beam on: one POST, both services.
out=$WORK/d1.unified.json
body="{\"marker\":\"$MARK-d1-unified\"}"
code=$(dev_http d1 "$out" -X POST -H 'Content-Type: application/json' --data "$body" "$UNIFIED_URL/")
[[ $code == 200 ]] || fail "d1: unified endpoint" "HTTP $code: $(peek "$out")"
jq -e '.statusCode == 200 and .body.result == "ok" and .body.detail.harvest.statusCode == 201
    and .body.detail.beam.statusCode == 200 and .body.detail.beam.body.verified == true' "$out" >/dev/null ||
    fail "d1: unified endpoint" "answer: $(peek "$out" 600)"
[[ $(sink_records "$MARK-d1-unified" | jq -r '.headers["x-soracom-imsi"]') == "${IMSI[d1]}" ]] ||
    fail "d1: unified endpoint" "the sink did not get it once with X-Soracom-IMSI ${IMSI[d1]}"
expect_entry d1 application/json "$body"
pass "d1: unified endpoint -> Harvest (201) and Beam (200, signature verified)"

stage "6e. Harvest Data ($HARVEST_ADDR: HTTP 80, TCP and UDP $HARVEST_RAW_PORT)"
for dev in d1 d3; do
    out=$WORK/$dev.harvest
    body="{\"marker\":\"$MARK-$dev-http\",\"temperature\":21.5}"
    code=$(dev_http "$dev" "$out.http" -X POST -H 'Content-Type: application/json' --data "$body" "http://$HARVEST_ADDR/")
    [[ $code == 201 ]] || fail "$dev: Harvest HTTP POST" "HTTP $code: $(peek "$out.http") $(peek "$out.http.err")"
    expect_entry "$dev" application/json "$body"
    printf '%s\n' "$MARK-$dev-tcp" | harvest_tcp "$dev" "$out.tcp"
    [[ $(cat "$out.tcp") == 201 ]] || fail "$dev: Harvest TCP $HARVEST_RAW_PORT" "answer '$(peek "$out.tcp")', want 201 $(peek "$out.tcp.err")"
    expect_entry "$dev" text/plain "$MARK-$dev-tcp"
    printf '%s' "$MARK-$dev-udp" | harvest_udp "$dev" "$out.udp"
    [[ $(cat "$out.udp") == 201 ]] || fail "$dev: Harvest UDP $HARVEST_RAW_PORT" "answer '$(peek "$out.udp")', want 201 $(peek "$out.udp.err")"
    expect_entry "$dev" text/plain "$MARK-$dev-udp"
    pass "$dev: Harvest HTTP POST, TCP and UDP message" "201, \"201\", \"201\""
done
# The device's own time stamp is honoured on harvest.soracom.io.
code=$(dev_http d1 "$WORK/d1.harvest.timed" -X POST -H 'Content-Type: text/plain' \
    -H 'X-Soracom-Timestamp: 1700000000123' --data "$MARK-d1-timed" "http://$HARVEST_ADDR/")
[[ $code == 201 ]] || fail "d1: Harvest POST with X-Soracom-Timestamp" "HTTP $code"
expect_entry d1 text/plain "$MARK-d1-timed" 1700000000123
pass "d1: Harvest POST with X-Soracom-Timestamp" "201"
code=$(dev_http d2 "$WORK/d2.harvest.http" -X POST --data "$MARK-d2-http" "http://$HARVEST_ADDR/")
[[ $code == 400 ]] || fail "d2 (no group): Harvest refused" "HTTP $code: $(peek "$WORK/d2.harvest.http")"
printf '%s\n' "$MARK-d2-tcp" | harvest_tcp d2 "$WORK/d2.harvest.tcp"
[[ $(cat "$WORK/d2.harvest.tcp") == 400 ]] || fail "d2 (no group): Harvest refused" "TCP answer '$(peek "$WORK/d2.harvest.tcp")', want 400"
pass "d2 (no group): Harvest refused" "HTTP 400, TCP \"400\""

stage "6f. bad input: oversize, garbage, a spoofed source address"
# Exactly 64 KiB + 1 byte: refused whole (the TCP server has read every byte when it answers).
oversize=$WORK/oversize.bin
{ printf '%s ' "$MARK-d1-oversize"; head -c $((65536 + 1 - ${#MARK} - 13)) /dev/zero | tr '\0' 'x'; } >"$oversize"
(($(stat -c %s "$oversize") == 65537)) || die "oversize.bin is $(stat -c %s "$oversize") bytes"
code=$(dev_http d1 "$WORK/d1.oversize.http" -X POST -H 'Content-Type: text/plain' --data-binary "@$oversize" "http://$HARVEST_ADDR/")
[[ $code == 413 ]] || fail "d1: Harvest POST of 64 KiB + 1" "HTTP $code, want 413"
harvest_tcp d1 "$WORK/d1.oversize.tcp" <"$oversize"
EXPECT_N[d1]=$((EXPECT_N[d1] + $(count_201 "$WORK/d1.oversize.tcp")))
[[ $(tail -n 1 "$WORK/d1.oversize.tcp") == 413 ]] || fail "d1: Harvest TCP message of 64 KiB + 1" "answer '$(peek "$WORK/d1.oversize.tcp")', want 413"
pass "d1: 64 KiB + 1 byte refused" "HTTP 413, TCP \"413\""
# Random bytes: over UDP one datagram is one entry (binary: {"payload": base64}); over TCP every
# newline ends a message and each stored one is answered "201". Then HTTP 80 gets garbage too.
garbage=$WORK/garbage.bin
{ head -c 299 /dev/urandom; printf '\377'; } >"$garbage" # 0xff: never UTF-8, kept as base64
harvest_udp d1 "$WORK/d1.garbage.udp" <"$garbage"
[[ $(cat "$WORK/d1.garbage.udp") == 201 ]] || fail "d1: random bytes to UDP $HARVEST_RAW_PORT" "answer '$(peek "$WORK/d1.garbage.udp")', want 201"
expect_entry d1 application/json "$(jq -nc --arg p "$(base64 -w0 <"$garbage")" '{payload: $p}')"
head -c 300 /dev/urandom | harvest_tcp d1 "$WORK/d1.garbage.tcp"
grep -qvE '^(201|400)$' "$WORK/d1.garbage.tcp" && fail "d1: random bytes to TCP $HARVEST_RAW_PORT" "unexpected answer: $(peek "$WORK/d1.garbage.tcp")"
EXPECT_N[d1]=$((EXPECT_N[d1] + $(count_201 "$WORK/d1.garbage.tcp")))
head -c 300 /dev/urandom | dev_nc d1 "$WORK/d1.garbage.http" -N -w 3 100.127.100.127 80
head -c 300 /dev/urandom | dev_nc d1 "$WORK/d1.garbage.beam" -N -w 3 100.127.127.100 8888
alive "$ARCD_PID" || fail "arcd survives garbage" "arcd exited"
code=$(dev_http d1 "$WORK/d1.metadata.after" "$METADATA_URL/v1/subscriber.imsi")
[[ $code == 200 && $(cat "$WORK/d1.metadata.after") == "${IMSI[d1]}" ]] ||
    fail "services answer after garbage" "metadata: HTTP $code '$(peek "$WORK/d1.metadata.after")'"
printf '%s\n' "$MARK-d1-after-garbage" | harvest_tcp d1 "$WORK/d1.after.tcp"
[[ $(cat "$WORK/d1.after.tcp") == 201 ]] || fail "services answer after garbage" "Harvest TCP: '$(peek "$WORK/d1.after.tcp")'"
expect_entry d1 text/plain "$MARK-d1-after-garbage"
pass "random bytes to UDP/TCP $HARVEST_RAW_PORT, HTTP 80 and 8888: arcd alive, services answer" "UDP \"201\" (kept as base64), TCP answers: $(sort "$WORK/d1.garbage.tcp" | uniq -c | awk '{ printf "%s%sx\"%s\"", sep, $1, $2; sep = ", " }')"
# d1 sends with d3's tunnel address: wireguard-go encrypts it to arcd like any packet, arcd's data
# plane must drop it (the source is not d1's address) before the kernel or a service sees it.
ip -n "$NS_D1" addr add "${DEV_ADDR[d3]}/32" dev "$IF_D1"
rx_before=$(arc0_rx_packets)
tx_before=$(dev_tx_bytes d1)
# Three probes at once (each waits for an answer that must not come): Harvest HTTP and UDP, metadata.
dev_http d1 "$WORK/spoof.http" --interface "${DEV_ADDR[d3]}" -m 3 -X POST -H 'Content-Type: text/plain' \
    --data "$MARK-spoofed-http" "http://$HARVEST_ADDR/" >"$WORK/spoof.http.code" &
probes=($!)
printf '%s' "$MARK-spoofed-udp" | dev_nc d1 "$WORK/spoof.udp" -u -s "${DEV_ADDR[d3]}" -W 1 -w 3 "$HARVEST_ADDR" "$HARVEST_RAW_PORT" &
probes+=($!)
dev_http d1 "$WORK/spoof.metadata" --interface "${DEV_ADDR[d3]}" -m 3 "$METADATA_URL/v1/subscriber.imsi" >"$WORK/spoof.metadata.code" &
probes+=($!)
wait "${probes[@]}"
code=$(cat "$WORK/spoof.http.code")
mcode=$(cat "$WORK/spoof.metadata.code")
tx_spoof=$(($(dev_tx_bytes d1) - tx_before))
rx_spoof=$(($(arc0_rx_packets) - rx_before))
ip -n "$NS_D1" addr del "${DEV_ADDR[d3]}/32" dev "$IF_D1"
((tx_spoof >= 3 * 60)) || fail "spoofed source dropped" "only $tx_spoof bytes went into d1's tunnel: the check proves nothing"
[[ $code == 000 && $mcode == 000 && ! -s $WORK/spoof.udp ]] ||
    fail "spoofed source dropped" "an answer came back: Harvest HTTP $code, metadata HTTP $mcode, UDP '$(peek "$WORK/spoof.udp")'"
((rx_spoof == 0)) || fail "spoofed source dropped" "$rx_spoof packets reached arc0 in rv during the spoofing"
spoof_log="dropped a device packet whose source is not its own address"
grep -a "$spoof_log" "$WORK/arcd.log" | grep -q "claimed_source=${DEV_ADDR[d3]}" ||
    fail "spoofed source dropped" "arcd's log has no warning naming ${DEV_ADDR[d3]} as the claimed source"
pass "d1 sending as d3 (${DEV_ADDR[d3]}): dropped by the data plane" "$tx_spoof bytes into d1's tunnel, 0 packets onto arc0, no answer, one warning in arcd's log"
code=$(dev_http d1 "$WORK/d1.metadata.after2" "$METADATA_URL/v1/subscriber.imsi")
[[ $code == 200 ]] || fail "d1 works after spoofing" "metadata HTTP $code"

stage "6g. Harvest read back through the official data API"
# GET /v1/subscribers/{imsi}/data, GET /v1/data/Subscriber/{imsi} and GET /v1/sims/{simId}/data
# (newest first by default, up to 1000 a page) must agree, hold every entry sent exactly once,
# under the primary IMSI, and nothing else.
harvest_read() { # harvest_read WHO IMSI [SIM_ID]: the entries in $WORK/data-WHO.json
    local who=$1 imsi=$2 sim=${3:-} f=$WORK/data-$1
    api GET "/v1/subscribers/$imsi/data?limit=1000" >"$f.subscribers.json" ||
        fail "$who: GET /v1/subscribers/$imsi/data" "see above"
    api GET "/v1/data/Subscriber/$imsi?limit=1000" >"$f.data.json" ||
        fail "$who: GET /v1/data/Subscriber/$imsi" "see above"
    jq -e 'type == "array"' "$f.subscribers.json" >/dev/null || fail "$who: GET /v1/subscribers/$imsi/data" "not a list: $(peek "$f.subscribers.json")"
    cmp -s <(jq -S . "$f.subscribers.json") <(jq -S . "$f.data.json") ||
        fail "$who: data API" "/v1/subscribers/$imsi/data and /v1/data/Subscriber/$imsi differ"
    if [[ -n $sim ]]; then
        api GET "/v1/sims/$sim/data?limit=1000" >"$f.sims.json" || fail "$who: GET /v1/sims/$sim/data" "see above"
        cmp -s <(jq -S . "$f.subscribers.json") <(jq -S . "$f.sims.json") ||
            fail "$who: data API" "/v1/sims/$sim/data and /v1/subscribers/$imsi/data differ"
    fi
    cp "$f.subscribers.json" "$WORK/data-$who.json"
}
for dev in d1 d3; do
    harvest_read "$dev" "${IMSI[$dev]}" "${SIM_ID[$dev]}"
    data=$WORK/data-$dev.json
    n=$(jq length "$data")
    ((n == EXPECT_N[$dev])) ||
        fail "$dev: Harvest entries under ${IMSI[$dev]}" "$n entries, want ${EXPECT_N[$dev]}: $(jq -c '[.[] | .content[0:60]]' "$data" | head -c 1500)"
    jq -e --arg imsi "${IMSI[$dev]}" 'all(.[]; .resourceType == "Subscriber" and .resourceId == $imsi)' "$data" >/dev/null ||
        fail "$dev: Harvest entries under ${IMSI[$dev]}" "an entry with another resourceType/resourceId: $(jq -c '[.[] | {resourceType, resourceId}] | unique' "$data")"
    jq -e '[.[].time] as $t | $t == ($t | sort | reverse)' "$data" >/dev/null ||
        fail "$dev: data API order" "not newest first: $(jq -c '[.[].time]' "$data")"
    while read -r want; do
        found=$(jq --argjson w "$want" '[.[] | select(.content == $w.content and .contentType == $w.contentType
            and (($w | has("time") | not) or .time == $w.time))] | length' "$data")
        ((found == 1)) || fail "$dev: Harvest entry" "$found entries match $want, want 1"
    done <"$WORK/harvest-expect-$dev.jsonl"
    strays=$(jq -r --arg m "$MARK-" --arg mine "$MARK-$dev-" \
        '[.[].content | select(contains($m)) | select(contains($mine) | not)] | join(" | ")' "$data")
    [[ -z $strays ]] || fail "$dev: Harvest entries under ${IMSI[$dev]}" "entries of another sender: $strays"
    pass "$dev: Harvest entries through the data API" "$n entries under ${IMSI[$dev]} (HTTP, TCP, UDP, garbage kept, none oversize or spoofed), the three read paths agree, newest first"
done
harvest_read virtual "$VIRTUAL_IMSI"
[[ $(jq length "$WORK/data-virtual.json") == 0 ]] || fail "nothing under the virtual IMSI $VIRTUAL_IMSI" "$(peek "$WORK/data-virtual.json")"
harvest_read d2 "${IMSI[d2]}" "${SIM_ID[d2]}"
[[ $(jq length "$WORK/data-d2.json") == 0 ]] || fail "nothing under d2's IMSI (no group)" "$(peek "$WORK/data-d2.json")"
api GET "/v1/data/resources?limit=1000" >"$WORK/data-resources.json" || fail "GET /v1/data/resources" "see above"
got=$(jq -r '[.[] | "\(.resourceType)/\(.resourceId)"] | sort | join(" ")' "$WORK/data-resources.json")
want=$(printf '%s\n' "Subscriber/${IMSI[d1]}" "Subscriber/${IMSI[d3]}" | sort | paste -sd' ')
[[ $got == "$want" ]] || fail "GET /v1/data/resources" "resources '$got', want exactly '$want'"
pass "nothing stored under the virtual IMSI, d2 or anyone else" "GET /v1/data/resources: $got"

stage "6h. DNS ($DNS_ADDR)"
for proto in udp tcp; do
    opts=()
    [[ $proto == tcp ]] && opts=(+tcp)
    answer=$(dig_a d1 harvest.soracom.io "${opts[@]}")
    [[ $answer == "$HARVEST_ADDR" ]] || fail "DNS over $proto: harvest.soracom.io" "answer '$(tr '\n' ' ' <<<"$answer")', want $HARVEST_ADDR"
done
pass "d1: dig @$DNS_ADDR harvest.soracom.io (UDP and TCP)" "$HARVEST_ADDR"
# Malformed queries: random bytes, a header announcing a question that is not there, a label
# running past the end, a compression pointer to itself; over TCP a length prefix promising more
# than comes, and random bytes.
header='\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00'
probes=()
for name in random no-question long-label pointer-loop; do
    case $name in
        random) head -c 300 /dev/urandom ;;
        no-question) printf '%b' "$header" ;;
        long-label) printf '%b' "$header" '\x3fabc' ;;
        pointer-loop) printf '%b' "$header" '\xc0\x0c\x00\x01\x00\x01' ;;
    esac >"$WORK/dns-$name.bin"
    # All at once: each waits a second for an answer that may not come.
    dev_nc d1 "$WORK/dns-$name.out" -u -W 1 -w 1 "$DNS_ADDR" 53 <"$WORK/dns-$name.bin" &
    probes+=($!)
done
{ printf '\377\377'; head -c 10 /dev/urandom; } | dev_nc d1 "$WORK/dns-tcp-short.out" -N -w 2 "$DNS_ADDR" 53 &
probes+=($!)
head -c 300 /dev/urandom | dev_nc d1 "$WORK/dns-tcp-random.out" -N -w 2 "$DNS_ADDR" 53 &
probes+=($!)
wait "${probes[@]}"
alive "$ARCD_PID" || fail "arcd survives malformed DNS" "arcd exited"
for proto in udp tcp; do
    opts=()
    [[ $proto == tcp ]] && opts=(+tcp)
    answer=$(dig_a d3 harvest.soracom.io "${opts[@]}")
    [[ $answer == "$HARVEST_ADDR" ]] || fail "DNS after malformed queries ($proto)" "answer '$(tr '\n' ' ' <<<"$answer")'"
done
pass "malformed DNS queries (UDP and TCP): arcd alive, DNS still answers" "d3: harvest.soracom.io -> $HARVEST_ADDR"
figure "services stage (6a-6h)" "$(($(now_ms) - t_services)) ms (d3 provisioning included)"

stage "6i. Prometheus metrics ($METRICS_URL in $NS_RV)"
# After real tunnel traffic from stock clients: promtool accepts the scrape and the counters
# moved. `metric FILE SAMPLE` prints one sample's value (0 when absent).
metric() { awk -v key="$2" '$1 == key { print $2; found = 1 } END { if (!found) print 0 }' "$1"; }
nsx "$NS_RV" timeout 5 curl -fsS -m 3 -o "$WORK/metrics.txt" "$METRICS_URL" ||
    fail "metrics scrape" "GET $METRICS_URL failed"
promtool check metrics <"$WORK/metrics.txt" >"$WORK/promtool.out" 2>&1 ||
    fail "promtool check metrics" "$(head -n 5 "$WORK/promtool.out" | tr '\n' ' ')"
pass "promtool check metrics on a scrape" "$(grep -c '^arcd_' "$WORK/metrics.txt") samples"
rp_label="rendezvous_point=\"$RP_ID\""
for sample in "arcd_handshakes_total{$rp_label,result=\"completed\"}" \
    "arcd_packets_total{$rp_label,direction=\"rx\"}" "arcd_packets_total{$rp_label,direction=\"tx\"}" \
    "arcd_bytes_total{$rp_label,direction=\"rx\"}" "arcd_bytes_total{$rp_label,direction=\"tx\"}" \
    "arcd_api_requests_total{operation=\"createSim\",status=\"201\"}" \
    'arcd_harvest_entries_total{result="written"}' 'arcd_beam_requests_total{result="forwarded"}' \
    'arcd_dns_replies_total{rcode="NOERROR"}' 'arcd_metadata_requests_total{result="ok"}' \
    "arcd_dropped_packets_total{$rp_label,reason=\"spoofed_source\"}" \
    'arcd_store_write_duration_seconds_count'; do
    start=$(metric "$WORK/metrics-start.txt" "$sample")
    now=$(metric "$WORK/metrics.txt" "$sample")
    awk -v a="$start" -v b="$now" 'BEGIN { exit !(b > a) }' ||
        fail "metrics moved" "$sample: $start at start, $now after the traffic"
done
# iperf3 alone got at least IPERF_MIN_BYTES from d1 through the tunnel (stage 5b).
rx_bytes=$(metric "$WORK/metrics.txt" "arcd_bytes_total{$rp_label,direction=\"rx\"}")
awk -v b="$rx_bytes" -v min="$IPERF_MIN_BYTES" 'BEGIN { exit !(b >= min) }' ||
    fail "metrics: bytes from devices" "$rx_bytes < $IPERF_MIN_BYTES (iperf3 alone got that much through)"
sessions=$(metric "$WORK/metrics.txt" "arcd_sessions{$rp_label}")
online=$(metric "$WORK/metrics.txt" "arcd_devices_online{$rp_label}")
((sessions >= 3 && online >= 3 && online <= sessions)) ||
    fail "metrics: sessions and devices online" "sessions $sessions, online $online (d1-d3 are up)"
pass "metrics moved with the traffic" "rx $rx_bytes bytes, $sessions sessions, $online online"

stage "7a. delete_session: traffic resumes without touching the device"
# wg reports handshake times in whole seconds: make sure a new one is distinguishable.
hs_before=$(dev_handshake d1)
while (($(date +%s) <= hs_before)); do sleep 0.2; done
api GET "/v1/sims/${SIM_ID[d1]}" >"$WORK/d1.get.json" || fail "getSim d1" "see above"
srv_lha_before=$(jq -r '.arcdSessionStats.lastHandshakeAt // 0' "$WORK/d1.get.json")
t_req=$(now_ms)
api POST "/v1/sims/${SIM_ID[d1]}/delete_session" >"$WORK/d1.delete_session.json" || fail "delete_session d1" "see above"
t_reset=$(now_ms)
# One probe every 200 ms until the first reply (at most 30 s); -D stamps each reply.
run_ping "$NS_D1" "$PLATFORM_ADDR" 1 0.2 30 -D
if ((PING_RX < 1)); then
    fail "delete_session: traffic resumes" "no reply within 30 s after delete_session ($PING_TX probes)"
fi
reply_ms=$(first_reply_ms)
resume=$((reply_ms - t_reset))
((resume < 0)) && resume=0
lost=$((PING_TX - PING_RX))
echo "delete_session: traffic resumed after ${resume} ms (API call took $((t_reset - t_req)) ms; $lost probe(s) of 200 ms lost)"
hs_after=$(dev_handshake d1)
((hs_after > hs_before)) ||
    fail "delete_session: new handshake" "d1's latest handshake did not advance ($hs_before -> $hs_after): the session was not reset"
api GET "/v1/sims/${SIM_ID[d1]}" >"$WORK/d1.get.json" || fail "getSim d1" "see above"
srv_lha_after=$(jq -r '.arcdSessionStats.lastHandshakeAt // 0' "$WORK/d1.get.json")
((srv_lha_after > srv_lha_before)) ||
    fail "delete_session: new handshake" "getSim lastHandshakeAt did not advance ($srv_lha_before -> $srv_lha_after)"
pass "delete_session: traffic resumed by itself" "${resume} ms, new handshake at device and server"
figure "delete_session -> first reply" "${resume} ms ($lost probe(s) lost, API call $((t_reset - t_req)) ms)"

stage "7b. renew credentials: the old key fails at once, the new one works"
old_pub=${DEV_PUB[d1]}
(umask 077 && api PUT "/v1/sims/${SIM_ID[d1]}/credentials/arc" '{}' >"$WORK/d1.renew.json") ||
    fail "PUT credentials/arc d1" "see above"
new_pub=$(jq -r '.arcClientPeerPublicKey // empty' "$WORK/d1.renew.json")
(umask 077 && jq -r '.arcClientPeerPrivateKey // empty' "$WORK/d1.renew.json" >"$WORK/d1.newkey")
[[ -s $WORK/d1.newkey && -n $new_pub ]] || fail "PUT credentials/arc d1" "no arcClientPeerPublicKey/arcClientPeerPrivateKey in the answer"
[[ $(wg pubkey <"$WORK/d1.newkey") == "$new_pub" ]] || fail "PUT credentials/arc d1" "returned public key does not match the returned private key"
[[ $new_pub != "$old_pub" ]] || fail "PUT credentials/arc d1" "the new key equals the old one"
pass "PUT credentials/arc d1" "new key pair from the server"
# (1) The device still runs the old session: it must stop at once. (2) A new handshake with the
# old key must fail.
expect_cut_off d1 "renew: old session stops at once" "renew: old key gets no handshake"
# (3) The device takes the new key (session fields from getSim) and works again.
api GET "/v1/sims/${SIM_ID[d1]}" >"$WORK/d1.renewed.sim.json" || fail "getSim d1 after renewal" "see above"
sim_pub=$(jq -r '.arcSessionStatus.arcClientPeerPublicKey // empty' "$WORK/d1.renewed.sim.json")
[[ -z $sim_pub || $sim_pub == "$new_pub" ]] ||
    fail "getSim d1 after renewal" "arcClientPeerPublicKey is $sim_pub, want the new $new_pub"
# device.sh --configure-only: the running wireguard-go gets the new key and the Sim's fields.
provision_device d1 --configure-only --sim-json "$WORK/d1.renewed.sim.json" --key "$WORK/d1.newkey" ||
    fail "renew: device.sh --configure-only" "scripts/provision/device.sh failed (output above)"
[[ $(nsx "$NS_D1" timeout 5 wg show "$IF_D1" public-key) == "$new_pub" ]] ||
    fail "renew: device.sh --configure-only" "$IF_D1 does not hold the new key"
DEV_PUB[d1]=$new_pub
DEV_ADDR[d1]=$(cat "$WORK/d1/address")
t0=$(cat "$WORK/d1/configured-at-ms")
run_ping "$NS_D1" "$PLATFORM_ADDR" 1 0.05 10 -D
((PING_RX >= 1)) || fail "renew: new key works" "no reply with the new key in 10 s: $(tail -n 2 "$PING_OUT" | tr '\n' ' ')"
first=$(($(first_reply_ms) - t0))
run_ping "$NS_D1" "$PLATFORM_ADDR" 3 0.2 5
((PING_RX == 3)) || fail "renew: new key works" "$PING_RX/$PING_TX replies with the new key: $(tail -n 2 "$PING_OUT" | tr '\n' ' ')"
pass "renew: new key works" "first reply $first ms after the new config, then 3/3 replies, client ${DEV_ADDR[d1]}"
figure "renew: new key configured -> first reply" "$first ms"

stage "7c. terminate d2: no handshake any more"
run_ping "$NS_D2" "$PLATFORM_ADDR" 2 0.2 5
((PING_RX >= 1)) || fail "d2 works before terminate" "$PING_RX/$PING_TX replies"
api POST "/v1/sims/${SIM_ID[d2]}/enable_termination" >/dev/null || fail "enable_termination d2" "see above"
api POST "/v1/sims/${SIM_ID[d2]}/terminate" >"$WORK/d2.terminated.json" || fail "terminate d2" "see above"
status=$(jq -r '.status // empty' "$WORK/d2.terminated.json")
if [[ $status != terminated ]]; then
    api GET "/v1/sims/${SIM_ID[d2]}" >"$WORK/d2.get.json" || fail "getSim d2" "see above"
    status=$(jq -r '.status // empty' "$WORK/d2.get.json")
fi
[[ $status == terminated ]] || fail "terminate d2" "status is '$status', want terminated"
pass "terminate d2" "status terminated"
expect_cut_off d2 "terminate: d2 traffic stops at once" "terminate: no handshake afterwards"
run_ping "$NS_D1" "$PLATFORM_ADDR" 3 0.2 5
((PING_RX == 3)) || fail "d1 unaffected by d2's termination" "$PING_RX/$PING_TX replies"
pass "d1 unaffected by d2's termination" "$PING_RX/$PING_TX replies"
if ! nsx "$NS_RV" timeout 10 wg show "$ARCD_UAPI_NAME" peers | grep -qxF "${DEV_PUB[d1]}"; then
    fail "wg show after terminate" "d1's new key is not listed"
fi
if nsx "$NS_RV" timeout 10 wg show "$ARCD_UAPI_NAME" peers | grep -qxF "${DEV_PUB[d2]}"; then
    fail "wg show after terminate" "terminated d2's key is still a peer"
fi
pass "wg show after terminate" "d1 (new key) listed, d2 gone"

# ------------------------------------------------------------- 8. VPGs ------
# shellcheck source=scripts/e2e/lib/vpg-stage.sh
source "$SCRIPT_DIR/lib/vpg-stage.sh"

stage "9. graceful stop: SIGTERM leaves nothing behind in $NS_RV"
alive "$ARCD_PID" || fail "arcd still running" "arcd exited during the test"
if grep -q 'panicked' "$WORK/arcd.log"; then
    fail "arcd log clean" "a panic in arcd's log: $(grep -m1 'panicked' "$WORK/arcd.log")"
fi
pass "arcd still running, no panic in its log"
nsx "$NS_RV" nft list table ip arcd >/dev/null 2>&1 ||
    fail "egress NAT on before the stop" "no nft table ip arcd in $NS_RV: the check below would prove nothing"
ip -n "$NS_RV" route show "$VPG_SUBNET" | grep -q . ||
    fail "VPG route before the stop" "no route for $VPG_SUBNET: the check below would prove nothing"
t_stop=$(now_ms)
kill -TERM "$ARCD_PID"
arcd_rc=0
wait "$ARCD_PID" || arcd_rc=$?
stop_ms=$(($(now_ms) - t_stop))
figure "SIGTERM -> arcd exited" "${stop_ms} ms (exit $arcd_rc)"
((arcd_rc == 0)) || fail "arcd exits 0 on SIGTERM" "exit status $arcd_rc"
grep -q 'arcd stopped' "$WORK/arcd.log" || fail "arcd stops cleanly" "no 'arcd stopped' line in its log"
! ip -n "$NS_RV" link show "arc0" >/dev/null 2>&1 || fail "TUN removed" "arc0 still in $NS_RV"
! nsx "$NS_RV" nft list table ip arcd >/dev/null 2>&1 || fail "egress NAT removed" "nft table ip arcd left in $NS_RV"
left_routes=$(ip -n "$NS_RV" -4 route show table all | grep -E "arc0|${VPG_SUBNET%/*}|10\.6[4-6]\." || true)
[[ -z $left_routes ]] || fail "routes removed" "left in $NS_RV: $left_routes"
for sock in arc-apne1 arc-usw2 arc-euc1; do
    ! in_mnt test -e "$UAPI_DIR/$sock.sock" || fail "control sockets removed" "$UAPI_DIR/$sock.sock left"
done
pass "SIGTERM: exit 0, no arc0, no nft table, no routes, no control sockets left" "${stop_ms} ms"

stage "done"
