#!/usr/bin/env bash
# dataplane.sh — data-plane throughput of arcd against two other userspace WireGuard servers, on
# the same two-namespace path as the baseline in docs/BENCHMARKS.md (run as root).
#
#   dataplane.sh [-r ROUNDS] [-t SECONDS] [-T TESTS] [-P PROFILE_TESTS] [-s SERVERS] [-c CLIENT] [-o DIR] [-L LOAD]
#   dataplane.sh summary DIR [MAX_OTHERS]  print the markdown summary of a results directory again;
#                                  with MAX_OTHERS, only runs with "others" <= MAX_OTHERS % of a core
#   dataplane.sh cleanup           remove namespaces left by a run that was killed with SIGKILL
#
# For every server implementation S in SERVERS (default: arcd,arcd-1core,wireguard-go,gotatun):
#
#   ┌──── netns arcdp-<pid>-<S>-srv ────┐   one veth   ┌──── netns arcdp-<pid>-<S>-cli ────┐
#   │ server S on UDP 51820, TUN        │──────────────│ CLIENT (the device; wireguard-go)  │
#   │   10.64.0.1/16, MTU 1420          │ 10.215.n.1/30│   10.64.0.x/32, MTU 1420           │
#   │ iperf3 -s                         │ 10.215.n.2/30│ iperf3 -c 10.64.0.1, ping          │
#   └───────────────────────────────────┘              └────────────────────────────────────┘
#
#   (a) arcd: `arcd serve` with [api] on the server's veth address (plain HTTP), [tun] enabled,
#       one rendezvous point ap-northeast-1 on 0.0.0.0:51820 with pool 10.64.0.0/16 (arcd's TUN
#       carries 10.64.0.1/16, the pool's first host); one virtual SIM made through the API
#       (POST /v1/auth with root-credentials.json, POST /v1/sims) gives the device its private key,
#       the server key, the endpoint and its address. `dataplane.workers` is left at its default
#       (one packet worker per core).
#   (a1) arcd-1core: the same, with `dataplane.workers = 1` and pinned to one CPU (`taskset -c 0`):
#       arcd as it ran before workers, on one core, so arcd's rows against arcd-1core's show how
#       it scales with the cores of the machine the script runs on.
#   (a2) arcd-w1 (not in the default list): `dataplane.workers = 1` on all CPUs, which separates
#       the workers' effect from the threads tokio runs anyway.
#   (a0) arcd-base (not in the default list): arcd exactly as (a), but another binary
#       (DP_ARCD_BASE_BIN), so an older build and a newer one are measured interleaved in one run.
#   (b) wireguard-go (Debian package): configured with `wg set`, as in the baseline.
#   (c) gotatun (crate gotatun-cli 0.10.2): configured with `wg set`. Installed with
#       `cargo install gotatun-cli --version 0.10.2 --locked --root $DP_CARGO_ROOT` when missing.
#
# The three pairs are built once, side by side (each pair alone is exactly the baseline's path: no
# other link, no default route: nothing leaves it), and measured interleaved:
#   for each round: for each test: for each server (server order rotated every round).
# Tests (`iperf3 -c 10.64.0.1 -t SECONDS -J` from the client namespace):
#   tcp1-up, tcp1-down (-R), tcp4-up (-P 4), tcp4-down (-P 4 -R),
#   udp-up, udp-down (-u -b 0 -l 1392, -R): received goodput and loss,
#   ping: 200 x 10 ms over the veth (underlay) and then through the tunnel; added RTT = the difference.
# The client (-c) is Debian's wireguard-go, or gotatun (faster per core, so less often the
# bottleneck when the server scales: on a small machine client and server share the cores).
# Per test: server CPU (utime+stime of the server process from /proc/PID/stat, all threads), client
# CPU, machine busy (/proc/stat) and "others" (machine minus server, client and both iperf3 ends:
# CPU used by anything else on the box, e.g. someone compiling), server CPU seconds per GB received
# by iperf3, server CPU µs per packet crossing the server's TUN (rx+tx), UDP receive-buffer and TUN
# queue drops in both namespaces.
#
# Profiling pass (after the rounds, never during them; skipped with -P none), for each server and
# each test in PROFILE_TESTS (default: the four TCP tests), two extra runs:
#   A: `perf stat -e raw_syscalls:sys_enter,context-switches,task-clock` + `perf record -e cpu-clock`
#      on the server PID: syscalls, context switches and CPU per tunnel packet, symbol profile;
#   B: `perf trace -s` on the server PID: each syscall name's share of the calls (the summary
#      multiplies the shares by A's exact syscalls/packet; perf trace itself misses calls while it
#      attaches and roughly halves throughput).
# Both sample a window of SECONDS-3 s starting 1 s into the transfer; per-packet figures divide the
# event rate by the server TUN's packet rate (rx+tx) over the same span. The profiled runs'
# throughput is not part of the medians.
#
# Output directory (-o, default /tmp/arcd-dataplane-YYYYmmdd-HHMMSS): results.tsv (one row per run),
# profile.tsv, profile/<server>-<test>.{txt,trace.txt} (perf reports), logs/, summary.md.
#
# Options:
#   -r N      rounds (default 3)          -t S   seconds per iperf3 run (default 10)
#   -T LIST   tests (default tcp1-up,tcp1-down,tcp4-up,tcp4-down,udp-up,udp-down,ping)
#   -P LIST   tests of the profiling pass (default the four TCP tests; "none" to skip)
#   -s LIST   servers (default arcd,arcd-1core,wireguard-go,gotatun; also arcd-w1, arcd-base)
#   -c NAME   client device: wireguard-go (default) or gotatun
#   -o DIR    results directory
#   -L LOAD   before starting, wait (up to 15 min) until the 1-minute load average is below LOAD
# Environment (deliberately not ARCD_*, which arcd reads as configuration):
#   DP_ARCD_BIN=PATH   use this arcd binary instead of `cargo build --release` in the repository
#   DP_ARCD_BASE_BIN=PATH  the arcd binary of the arcd-base server (required when it is listed)
#   DP_GOTATUN=PATH    gotatun binary (default: `gotatun` on PATH, else $DP_CARGO_ROOT/bin/gotatun)
#   DP_CARGO_ROOT=DIR  where to cargo-install gotatun-cli when missing (default /opt/wgbench/cargo)
#   DP_KEEP=1          keep the scratch directory (configs, keys, arcd data dir)
#
# WireGuard control sockets (/var/run/wireguard/*.sock, not separated by network namespaces) live
# on a private tmpfs in a mount namespace of this run (unshare -m), so an arcd or wireguard-go
# elsewhere on the machine (e.g. scripts/e2e/netns.sh) cannot clash. Everything this script
# starts is recorded by PID and stopped by PID (checked against /proc/PID/comm) on exit, INT and
# TERM; namespaces and scratch files are removed.
#
# Needs: root, /dev/net/tun, iproute2, wireguard-tools (wg), wireguard-go, iperf3, jq, curl, ping,
# perf (linux-perf) for the profiling pass, cargo. Debian:
#   apt-get install -y --no-install-recommends iproute2 wireguard-tools wireguard-go iperf3 jq curl \
#       iputils-ping linux-perf
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source=scripts/lib/procs.sh
source "$REPO_DIR/scripts/lib/procs.sh" # proc_is_ours, stop_pids
# shellcheck source=scripts/lib/links.sh
source "$REPO_DIR/scripts/lib/links.sh" # wait_for, private_wireguard_dir

# ---------------------------------------------------------------- settings --
RUN_ID=$$
NS_PREFIX="arcdp-${RUN_ID}-"
ROUNDS=3
DURATION=10
TESTS=tcp1-up,tcp1-down,tcp4-up,tcp4-down,udp-up,udp-down,ping
PROFILE_TESTS=tcp1-up,tcp1-down,tcp4-up,tcp4-down
SERVERS=arcd,arcd-1core,wireguard-go,gotatun
CLIENT=wireguard-go
OUT=""
MAX_LOAD=""
CARGO_ROOT=${DP_CARGO_ROOT:-/opt/wgbench/cargo}
GOTATUN_VERSION=0.10.2

WG_PORT=51820
API_PORT=8443
IPERF_PORT=5201
MTU=1420
POOL=10.64.0.0/16
TUN_SRV_IP=10.64.0.1        # arcd: first host of the pool; the others use the same address
TUN_PREFIX=16
WG_CLI_IP=10.64.0.2         # client address for wireguard-go/gotatun (arcd's comes from the API)
ALLOWED=10.64.0.0/16,100.127.0.0/16
UDP_LEN=1392
UDP_RATE=0
UAPI_DIR=/var/run/wireguard

CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)

WORK=""
MNT_HOLDER=""
PIDS=()                     # "pid:comm" of every long-running process started
declare -A NS_S NS_C IF_S IF_C VETH_S_IP VETH_C_IP SRV_PID CLI_PID IPERF_PID DST

log() { printf '[dataplane.sh %(%T)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ----------------------------------------------------------------- cleanup --
cleanup() {
    local rc=$?
    set +eu
    trap - EXIT INT TERM
    stop_pids "${PIDS[@]}"
    wait 2>/dev/null
    local ns pid left
    for ns in "${NS_S[@]}" "${NS_C[@]}"; do
        [[ -e /run/netns/$ns ]] || continue
        left=""
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            left+="$pid($(cat "/proc/$pid/comm" 2>/dev/null)) "
        done
        [[ -n $left ]] && log "warning: processes not started by this script in $ns: $left"
        ip netns del "$ns" 2>/dev/null || log "warning: could not delete namespace $ns"
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${DP_KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    ((rc == 0)) || log "exit status $rc"
    exit "$rc"
}

# ----------------------------------------------------------------- helpers --
in_mnt() { nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" "$@"; }
nsx() { local ns=$1; shift; nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$ns" "$@"; }

# spawn NS LOGFILE COMM cmd...: a long-running program in namespace NS (and our mount namespace).
# nsenter and `ip netns exec` exec() the program, so $! is the program itself.
spawn() {
    local ns=$1 logf=$2 comm=$3
    shift 3
    (exec nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$ns" "$@" >"$logf" 2>&1 </dev/null) &
    SPAWNED_PID=$!
    PIDS+=("$SPAWNED_PID:${comm:0:15}")
}

# bg COMM cmd...: a helper (perf) in the host namespaces, recorded like the others.
bg() {
    local comm=$1
    shift
    "$@" </dev/null &
    BG_PID=$!
    PIDS+=("$BG_PID:${comm:0:15}")
}


wait_comm() { # wait_comm PID COMM: until the spawned process has exec()ed into COMM
    local i
    for ((i = 0; i < 50; i++)); do
        [[ $(cat "/proc/$1/comm" 2>/dev/null) == "${2:0:15}" ]] && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

proc_ticks() { # utime+stime (clock ticks) of a process, all threads, dead ones included
    local stat
    [[ ${1:-0} -gt 0 ]] || { echo 0; return; }
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    stat=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$stat"
}
sys_ticks() { awk '/^cpu /{ print $2+$3+$4+$7+$8, $7+$8, $2+$3+$4+$5+$6+$7+$8+$9; exit }' /proc/stat; }
# CPU seconds (user+sys) of this shell's reaped children, from the `times` builtin; it must run in
# this shell (a $(...) subshell has children of its own), so it sets CHILD_CPU.
child_cpu() {
    times >"$WORK/times"
    CHILD_CPU=$(awk 'END { n = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub(/s$/, "", a[2]); n += a[1] * 60 + a[2] } print n }' "$WORK/times")
}

tun_counters() { # tun_counters IMPL -> "packets bytes" (rx+tx) of the server's TUN
    ip -n "${NS_S[$1]}" -s -j link show dev "${IF_S[$1]}" 2>/dev/null |
        jq -r '.[0].stats64 | "\(.rx.packets + .tx.packets) \(.rx.bytes + .tx.bytes)"' 2>/dev/null || echo "0 0"
}
rcvbuf_errors() { # rcvbuf_errors NS: UDP RcvbufErrors of a namespace
    ip netns exec "$1" awk '/^Udp:/{ if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else { print $c["RcvbufErrors"]; exit } }' /proc/net/snmp 2>/dev/null || echo 0
}
tun_tx_dropped() { # tun_tx_dropped NS IF: packets the kernel could not queue to the process
    ip -n "$1" -s -j link show dev "$2" 2>/dev/null | jq -r '.[0].stats64.tx.dropped // 0' 2>/dev/null || echo 0
}
drop_counters() { # IMPL -> "srv_rcvbuf cli_rcvbuf srv_tunq cli_tunq"
    echo "$(rcvbuf_errors "${NS_S[$1]}") $(rcvbuf_errors "${NS_C[$1]}") $(tun_tx_dropped "${NS_S[$1]}" "${IF_S[$1]}") $(tun_tx_dropped "${NS_C[$1]}" "${IF_C[$1]}")"
}

loadavg1() { cut -d' ' -f1 /proc/loadavg; }

# ----------------------------------------------------------- stale cleanup --
cleanup_stale() {
    local ns pid owner
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^arcdp-[0-9]*-' || true); do
        owner=${ns#arcdp-}
        owner=${owner%%-*}
        if [[ $(cat "/proc/$owner/comm" 2>/dev/null) == dataplane.sh ]]; then
            log "$ns belongs to the running dataplane.sh $owner; left alone"
            continue
        fi
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            case $(cat "/proc/$pid/comm" 2>/dev/null) in
                arcd | wireguard-go | gotatun | iperf3) log "killing $pid ($(cat "/proc/$pid/comm")) in $ns"; kill -TERM "$pid" ;;
            esac
        done
        sleep 0.5
        ip netns del "$ns" && log "deleted $ns"
    done
}

# ------------------------------------------------------------------ setup --
impl_tag() { case $1 in arcd) echo a ;; arcd-1core) echo o ;; arcd-w1) echo x ;; arcd-base) echo b ;; wireguard-go) echo w ;; gotatun) echo g ;; esac; }

setup_namespaces() { # one server + one client namespace per implementation, one veth between
    local impl n=0 tag
    for impl in "${IMPLS[@]}"; do
        n=$((n + 1))
        tag=$(impl_tag "$impl")
        NS_S[$impl]=${NS_PREFIX}${impl}-srv
        NS_C[$impl]=${NS_PREFIX}${impl}-cli
        IF_S[$impl]=dp${RUN_ID}s${tag}
        IF_C[$impl]=dp${RUN_ID}c${tag}
        VETH_S_IP[$impl]=10.215.$n.1
        VETH_C_IP[$impl]=10.215.$n.2
        DST[$impl]=$TUN_SRV_IP
        ip netns add "${NS_S[$impl]}"
        ip netns add "${NS_C[$impl]}"
        ip -n "${NS_S[$impl]}" link set lo up
        ip -n "${NS_C[$impl]}" link set lo up
        ip -n "${NS_S[$impl]}" link add "dpv${tag}s" type veth peer name "dpv${tag}c" netns "${NS_C[$impl]}"
        ip -n "${NS_S[$impl]}" addr add "${VETH_S_IP[$impl]}/30" dev "dpv${tag}s"
        ip -n "${NS_C[$impl]}" addr add "${VETH_C_IP[$impl]}/30" dev "dpv${tag}c"
        ip -n "${NS_S[$impl]}" link set "dpv${tag}s" up
        ip -n "${NS_C[$impl]}" link set "dpv${tag}c" up
    done
}

start_device() { # start_device IMPL: the client (CLIENT) of a pair
    local impl=$1 ifc=${IF_C[$1]} comm
    case $CLIENT in
        wireguard-go)
            comm=wireguard-go
            spawn "${NS_C[$impl]}" "$WORK/logs/client-$impl.log" "$comm" env LOG_LEVEL=error wireguard-go -f "$ifc" ;;
        gotatun)
            comm=$(basename "$GOTATUN")
            spawn "${NS_C[$impl]}" "$WORK/logs/client-$impl.log" "$comm" "$GOTATUN" -f -v error --disable-drop-privileges "$ifc" ;;
    esac
    CLI_PID[$impl]=$SPAWNED_PID
    wait_comm "${CLI_PID[$impl]}" "$comm" || die "$impl client: $CLIENT did not start"
    wait_for 10 in_mnt test -S "$UAPI_DIR/$ifc.sock" || die "$impl client: no socket $UAPI_DIR/$ifc.sock"
    wait_for 5 ip -n "${NS_C[$impl]}" link show "$ifc" || die "$impl client: no interface $ifc"
}

configure_device() { # configure_device IMPL KEYFILE SERVER_PUBKEY CLIENT_IP
    local impl=$1 key=$2 srv_pub=$3 addr=$4 ns=${NS_C[$1]} ifc=${IF_C[$1]}
    nsx "$ns" wg set "$ifc" private-key "$key" \
        peer "$srv_pub" endpoint "${VETH_S_IP[$impl]}:$WG_PORT" allowed-ips "$ALLOWED"
    ip -n "$ns" addr add "$addr/32" dev "$ifc"
    ip -n "$ns" link set "$ifc" mtu "$MTU" up
    local cidr
    for cidr in ${ALLOWED//,/ }; do
        ip -n "$ns" route replace "$cidr" dev "$ifc" src "$addr"
    done
}

API_URL=""
API_IMPL=arcd
API_KEY=""
API_TOKEN=""
api() { # api METHOD PATH [BODY]: arcd's API from the server namespace; body on stdout
    local method=$1 path=$2 body=${3-} out code
    out=$WORK/api.out
    local args=(-sS -m 10 -X "$method" -o "$out" -w '%{http_code}' -H 'Accept: application/json')
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
    [[ -n $API_KEY ]] && args+=(-H "X-Soracom-API-Key: $API_KEY" -H "X-Soracom-Token: $API_TOKEN")
    code=$(nsx "${NS_S[$API_IMPL]}" timeout 15 curl "${args[@]}" "$API_URL$path" 2>"$out.err") || code=${code:-000}
    [[ $code == 2?? ]] || { log "API $method $path -> HTTP $code: $(head -c 400 "$out") $(head -c 200 "$out.err")"; return 1; }
    cat "$out"
}

setup_arcd() { # setup_arcd IMPL: arcd, arcd-1core, arcd-w1 or arcd-base
    local impl=$1 ns=${NS_S[$1]} ifs=${IF_S[$1]} data=$WORK/$1-data workers="" pin=() bin=$ARCD
    [[ $impl == arcd-base ]] && bin=$ARCD_BASE
    case $impl in
        arcd-1core) workers="workers = 1"; pin=(taskset -c 0) ;;
        arcd-w1) workers="workers = 1" ;;
    esac
    mkdir -p "$data"
    API_IMPL=$impl
    API_KEY=""
    API_TOKEN=""
    API_URL="http://${VETH_S_IP[$impl]}:$API_PORT"
    cat >"$WORK/$impl.toml" <<EOF
data_dir = "$data"

[api]
listen = "${VETH_S_IP[$impl]}:$API_PORT"
tls = false

[tun]
enabled = true
name = "$ifs"
mtu = $MTU

[dataplane]
$workers

[[rendezvous_points]]
id = "ap-northeast-1"
listen = "0.0.0.0:$WG_PORT"
endpoint = "${VETH_S_IP[$impl]}:$WG_PORT"
pool = "$POOL"
allowed_ips = ["10.64.0.0/16", "100.127.0.0/16"]

[log]
level = "warn"
EOF
    local unset_env=() v
    while read -r v; do unset_env+=(-u "$v"); done < <(compgen -e | grep '^ARCD_' || true)
    spawn "$ns" "$WORK/logs/server-$impl.log" arcd "${pin[@]}" env "${unset_env[@]}" "$bin" --config "$WORK/$impl.toml" serve
    SRV_PID[$impl]=$SPAWNED_PID
    local i up=0
    for ((i = 0; i < 300; i++)); do
        kill -0 "${SRV_PID[$impl]}" 2>/dev/null || die "$impl exited at start: $(tail -5 "$WORK/logs/server-$impl.log")"
        if [[ -s $data/root-credentials.json ]] &&
            nsx "$ns" timeout 3 curl -s -o /dev/null -m 2 "$API_URL/openapi.yaml"; then
            up=1
            break
        fi
        sleep 0.1
    done
    ((up)) || die "$impl: no API at $API_URL after 30 s: $(tail -5 "$WORK/logs/server-$impl.log")"
    wait_comm "${SRV_PID[$impl]}" arcd || die "$impl: /proc/${SRV_PID[$impl]}/comm is not arcd"
    wait_for 10 ip -n "$ns" link show "$ifs" || die "$impl: no TUN $ifs"
    # The control socket dir is shared by this run's namespaces: the first arcd holds
    # arc-apne1.sock, the others log that `wg show` will not list them (nothing here needs it).
    wait_for 10 in_mnt test -S "$UAPI_DIR/arc-apne1.sock" || die "$impl: no control socket arc-apne1.sock"

    local auth sim sim_id key srv_pub addr
    auth=$(api POST /v1/auth "$(jq -c '{authKeyId, authKey}' "$data/root-credentials.json")") || die "POST /v1/auth failed"
    API_KEY=$(jq -r '.apiKey // empty' <<<"$auth")
    API_TOKEN=$(jq -r '.token // empty' <<<"$auth")
    [[ -n $API_KEY && -n $API_TOKEN ]] || die "POST /v1/auth: no apiKey/token"
    start_device "$impl"
    sim=$( (umask 077 && api POST /v1/sims '{"type":"virtual","subscription":"planArc01"}' | tee "$WORK/sim.json")) ||
        die "POST /v1/sims failed"
    sim_id=$(jq -r '.simId // empty' <<<"$sim")
    (umask 077 && jq -r --arg id "$sim_id" '.profiles[$id].arcClientPeerPrivateKey // empty' <<<"$sim" >"$WORK/$impl-cli.key")
    srv_pub=$(jq -r '.arcSessionStatus.arcServerPeerPublicKey // empty' <<<"$sim")
    addr=$(jq -r '.arcSessionStatus.arcClientPeerIpAddress // empty' <<<"$sim")
    addr=${addr%%/*}
    [[ -s $WORK/$impl-cli.key && -n $srv_pub && -n $addr ]] || die "createSim answer lacks key/server key/address: $(head -c 300 <<<"$sim")"
    log "$impl: SIM $sim_id, client $addr, endpoint $(jq -r '.arcSessionStatus.arcServerEndpoint' <<<"$sim")"
    configure_device "$impl" "$WORK/$impl-cli.key" "$srv_pub" "$addr"
}

setup_wg_server() { # wireguard-go or gotatun, configured with wg set (as in the baseline)
    local impl=$1 ns=${NS_S[$1]} ifs=${IF_S[$1]} comm
    case $impl in
        wireguard-go)
            comm=wireguard-go
            spawn "$ns" "$WORK/logs/server-$impl.log" "$comm" env LOG_LEVEL=error wireguard-go -f "$ifs" ;;
        gotatun)
            comm=$(basename "$GOTATUN")
            spawn "$ns" "$WORK/logs/server-$impl.log" "$comm" "$GOTATUN" -f -v error --disable-drop-privileges "$ifs" ;;
    esac
    SRV_PID[$impl]=$SPAWNED_PID
    wait_comm "${SRV_PID[$impl]}" "$comm" || die "$impl did not start: $(tail -5 "$WORK/logs/server-$impl.log")"
    wait_for 10 in_mnt test -S "$UAPI_DIR/$ifs.sock" || die "$impl: no socket $UAPI_DIR/$ifs.sock"
    wait_for 5 ip -n "$ns" link show "$ifs" || die "$impl: no interface $ifs"
    (
        umask 077
        wg genkey >"$WORK/$impl-srv.key"
        wg genkey >"$WORK/$impl-cli.key"
    )
    local srv_pub cli_pub
    srv_pub=$(wg pubkey <"$WORK/$impl-srv.key")
    cli_pub=$(wg pubkey <"$WORK/$impl-cli.key")
    nsx "$ns" wg set "$ifs" listen-port "$WG_PORT" private-key "$WORK/$impl-srv.key" \
        peer "$cli_pub" allowed-ips "$WG_CLI_IP/32"
    ip -n "$ns" addr add "$TUN_SRV_IP/$TUN_PREFIX" dev "$ifs"
    ip -n "$ns" link set "$ifs" mtu "$MTU" up
    start_device "$impl"
    configure_device "$impl" "$WORK/$impl-cli.key" "$srv_pub" "$WG_CLI_IP"
}

setup_pair() {
    local impl=$1
    case $impl in
        arcd | arcd-*) setup_arcd "$impl" ;;
        *) setup_wg_server "$impl" ;;
    esac
    wait_for 10 nsx "${NS_C[$impl]}" ping -n -c 1 -W 1 "${DST[$impl]}" ||
        die "$impl: no ping through the tunnel to ${DST[$impl]}; logs in $WORK/logs"
    spawn "${NS_S[$impl]}" "$WORK/logs/iperf3-$impl.log" iperf3 iperf3 -s -p "$IPERF_PORT"
    IPERF_PID[$impl]=$SPAWNED_PID
    wait_for 5 sh -c "ip netns exec '${NS_S[$impl]}' ss -Hltn 'sport = :$IPERF_PORT' | grep -q LISTEN" ||
        die "$impl: iperf3 server did not start"
    # The server's UDP socket as the kernel sees it (receive buffer actually granted).
    {
        echo "## $impl server UDP socket(s) (ss -uamn)"
        ip netns exec "${NS_S[$impl]}" ss -uamnp "sport = :$WG_PORT" 2>/dev/null || true
    } >>"$OUT/sockets.txt"
    log "$impl: ready (server pid ${SRV_PID[$impl]}, client pid ${CLI_PID[$impl]}, ${NS_S[$impl]} <-> ${NS_C[$impl]})"
}

# ---------------------------------------------------------------- profiling --
PROF_PIDS=()
start_profile() { # start_profile IMPL TEST MODE(A|B)
    local impl=$1 test=$2 mode=$3 pid=${SRV_PID[$1]} win=$((DURATION > 4 ? DURATION - 3 : 1))
    local pfx=$WORK/prof-$impl-$test-$mode
    PROF_PIDS=()
    (
        sleep 1
        echo "$(tun_counters "$impl") $EPOCHREALTIME" >"$pfx.pkts0"
        if [[ $mode == A ]]; then
            perf record -q -e cpu-clock -F 999 -p "$pid" -o "$pfx.data" -- sleep "$win" >/dev/null 2>&1 &
            perf stat -e raw_syscalls:sys_enter,context-switches,task-clock -x, -o "$pfx.stat" \
                -p "$pid" -- sleep "$win" >/dev/null 2>&1
            wait
        else
            timeout -s INT "$win" perf trace -s -m 2048 -p "$pid" -o "$pfx.trace" >/dev/null 2>"$pfx.trace.err" || true
        fi
        echo "$(tun_counters "$impl") $EPOCHREALTIME $win" >"$pfx.pkts1"
    ) &
    PROF_PIDS+=("$!")
    PIDS+=("$!:bash")
}

# finish_profile IMPL TEST MODE GBPS: writes profile/<impl>-<test>.txt / .trace.txt and a row of
# profile.tsv. The TUN packet counters bracket the perf process (its start-up included), so
# per-packet figures are rates over rates: (events / window) / (packets / bracketing time).
# perf trace's own count is not used: it misses calls while it attaches; its table gives each
# syscall's share, which the summary multiplies by run A's exact syscalls/packet.
finish_profile() {
    local impl=$1 test=$2 mode=$3 gbps=$4 p
    local pfx=$WORK/prof-$impl-$test-$mode
    for p in "${PROF_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    local a b ta tb win rate
    read -r a _ ta <"$pfx.pkts0"
    read -r b _ tb win <"$pfx.pkts1"
    rate=$(awk -v a="$a" -v b="$b" -v ta="$ta" -v tb="$tb" 'BEGIN { r = (b - a) / (tb - ta); printf "%.0f", (r > 0) ? r : 1 }')
    mkdir -p "$OUT/profile"
    if [[ $mode == A ]]; then
        local sc cs tc rep=$OUT/profile/$impl-$test.txt
        sc=$(awk -F, '$3 ~ /raw_syscalls/ {print $1}' "$pfx.stat" 2>/dev/null)
        cs=$(awk -F, '$3 ~ /context-switches/ {print $1}' "$pfx.stat" 2>/dev/null)
        tc=$(awk -F, '$3 ~ /task-clock/ {print $1}' "$pfx.stat" 2>/dev/null)
        {
            echo "server=$impl test=$test window=${win}s pid=${SRV_PID[$impl]} run Gbit/s=$gbps"
            awk -v sc="${sc:-0}" -v cs="${cs:-0}" -v tc="${tc:-0}" -v r="$rate" -v w="$win" 'BEGIN{
                printf "server TUN packets (rx+tx): %.0f pkt/s\n", r
                printf "syscalls: %d in %ss => %.2f per packet\n", sc, w, sc / w / r
                printf "context switches: %d => %.3f per packet\n", cs, cs / w / r
                printf "cpu (task-clock): %.0f ms => %.0f%% of one core, %.2f us per packet\n", tc, tc / w / 10, tc * 1000 / w / r }'
            echo
            echo "cpu-clock samples by binary (perf report --sort dso):"
            perf report -i "$pfx.data" --stdio --no-children --sort dso 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
            echo
            echo "top 40 symbols (perf report --sort dso,sym):"
            perf report -i "$pfx.data" --stdio --no-children --sort dso,sym 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
        } >"$rep"
        printf '%s\t%s\tA\t%s\t%s\t%s\t%s\t%s\t%s\t-\n' "$impl" "$test" "$gbps" "$win" "$rate" "${sc:-0}" "${cs:-0}" "${tc:-0}" >>"$OUT/profile.tsv"
        awk -v sc="${sc:-0}" -v r="$rate" -v w="$win" 'BEGIN{ printf "%.2f syscalls/pkt", sc / w / r }'
    else
        cp "$pfx.trace" "$OUT/profile/$impl-$test.trace.txt" 2>/dev/null || true
        grep -i lost "$pfx.trace.err" "$pfx.trace" 2>/dev/null | head -3 >&2 || true
        # Sum every thread's table: "syscall calls errors total(ms) min avg max stddev".
        # Sum every thread's table ("syscall calls errors total(ms) min avg max stddev"): shares.
        local per
        per=$(awk '
            $1 ~ /^[a-z_0-9]+$/ && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ && NF >= 8 { n[$1] += $2; tot += $2 }
            END { if (tot > 0) for (k in n) printf "%s=%.4f\n", k, n[k] / tot }' "$pfx.trace" 2>/dev/null | sort -t= -k2 -gr | tr '\n' ' ')
        printf '%s\t%s\tB\t%s\t%s\t%s\t-\t-\t-\t%s\n' "$impl" "$test" "$gbps" "$win" "$rate" "$per" >>"$OUT/profile.tsv"
        echo "perf trace shares: $(cut -d' ' -f1-4 <<<"$per")"
    fi
}

# -------------------------------------------------------------------- tests --
# run_test IMPL ROUND TEST MODE: one measurement, one row of results.tsv (MODE main) or profile.tsv
run_test() {
    local impl=$1 round=$2 test=$3 mode=$4
    local args=() kind=tcp dst=${DST[$1]} ns=${NS_C[$1]}
    case $test in
        tcp1-up) ;;
        tcp1-down) args=(-R) ;;
        tcp4-up) args=(-P 4) ;;
        tcp4-down) args=(-P 4 -R) ;;
        udp-up) args=(-u -b "$UDP_RATE" -l "$UDP_LEN"); kind=udp ;;
        udp-down) args=(-u -b "$UDP_RATE" -l "$UDP_LEN" -R); kind=udp ;;
        ping) kind=ping ;;
        *) die "unknown test $test" ;;
    esac
    local json=$WORK/$impl-$test.json under="-" load
    load=$(loadavg1)
    if [[ $kind == ping ]]; then   # the underlay first, outside the measured window
        nsx "$ns" ping -n -q -c 200 -i 0.01 -W 1 "${VETH_S_IP[$impl]}" >"$json.under" 2>&1 || true
        under=$(sed -n 's#^rtt [^=]*= [0-9.]*/\([0-9.]*\)/.*#\1#p' "$json.under")
        under=${under:--}
    fi
    [[ $mode == main || $kind == ping ]] || start_profile "$impl" "$test" "$mode"
    local d0 d1 s0 s1 c0 c1 i0 i1 k0 k1 sy0 sy1 t0 t1 p0 p1
    d0=$(drop_counters "$impl")
    p0=$(tun_counters "$impl")
    s0=$(proc_ticks "${SRV_PID[$impl]}"); c0=$(proc_ticks "${CLI_PID[$impl]}"); i0=$(proc_ticks "${IPERF_PID[$impl]}")
    child_cpu; k0=$CHILD_CPU; sy0=$(sys_ticks); t0=$EPOCHREALTIME
    if [[ $kind == ping ]]; then
        nsx "$ns" ping -n -q -c 200 -i 0.01 -W 1 "$dst" >"$json" 2>&1 || true
    else
        # In the background and waited for: a TERM/INT trap then runs at once, not after the test.
        timeout $((DURATION + 30)) nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$ns" \
            iperf3 -c "$dst" -p "$IPERF_PORT" -t "$DURATION" -J --connect-timeout 5000 "${args[@]}" \
            >"$json" 2>"$json.err" </dev/null &
        local client=$!
        PIDS+=("$client:timeout")
        wait "$client" || true
        unset 'PIDS[${#PIDS[@]}-1]'
    fi
    t1=$EPOCHREALTIME; sy1=$(sys_ticks); child_cpu; k1=$CHILD_CPU
    s1=$(proc_ticks "${SRV_PID[$impl]}"); c1=$(proc_ticks "${CLI_PID[$impl]}"); i1=$(proc_ticks "${IPERF_PID[$impl]}")
    p1=$(tun_counters "$impl")
    d1=$(drop_counters "$impl")

    local value extra bytes
    case $kind in
        tcp)
            value=$(jq -r 'if .error then "ERR" else (.end.sum_received.bits_per_second/1e9*1000|round/1000) end' "$json" 2>/dev/null || echo ERR)
            extra=$(jq -r '.end.sum_sent.retransmits // "-"' "$json" 2>/dev/null || echo -)
            bytes=$(jq -r '.end.sum_received.bytes // 0' "$json" 2>/dev/null || echo 0)
            ;;
        udp)
            # Received goodput and the receiver's loss (iperf3 >= 3.12 reports sum_received for UDP).
            value=$(jq -r 'if .error then "ERR" else (.end.sum_received.bits_per_second/1e9*1000|round/1000) end' "$json" 2>/dev/null || echo ERR)
            extra=$(jq -r '(.end.sum_received.lost_percent*10|round/10|tostring)+"%"' "$json" 2>/dev/null || echo -)
            bytes=$(jq -r '.end.sum_received.bytes // 0' "$json" 2>/dev/null || echo 0)
            ;;
        ping)
            value=$(sed -n 's#^rtt [^=]*= [0-9.]*/\([0-9.]*\)/.*#\1#p' "$json")
            extra=$(grep -o '[0-9.]*% packet loss' "$json" | cut -d' ' -f1)
            value=${value:-ERR}; extra=${extra:--}
            bytes=0
            ;;
    esac
    [[ $value == ERR ]] && log "$impl $test failed: $(head -c 300 "$json") $(head -c 200 "$json.err" 2>/dev/null)"

    local row
    row=$(awk -v s0="$s0" -v s1="$s1" -v c0="$c0" -v c1="$c1" -v i0="$i0" -v i1="$i1" -v k0="$k0" -v k1="$k1" \
        -v a="$sy0" -v b="$sy1" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" -v n="$NCPU" -v bytes="$bytes" \
        -v p0="$p0" -v p1="$p1" -v d0="$d0" -v d1="$d1" 'BEGIN{
            split(a, x, " "); split(b, y, " "); split(p0, q0, " "); split(p1, q1, " ")
            split(d0, e0, " "); split(d1, e1, " ")
            dt = t1 - t0; tot = y[3] - x[3]; if (tot <= 0) tot = 1
            srv = (s1 - s0) / hz; cli = (c1 - c0) / hz; ip = (i1 - i0) / hz + (k1 - k0)
            mach = (y[1] - x[1]) / tot * n * dt            # machine busy CPU-seconds
            other = mach - srv - cli - ip; if (other < 0) other = 0
            pk = q1[1] - q0[1]
            printf "%.2f\t%.2f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%d\t%s\t%s\t%d/%d/%d/%d",
                srv, dt, srv / dt * 100, cli / dt * 100, ip / dt * 100, mach / dt * 100, other / dt * 100, pk,
                (pk > 0) ? sprintf("%.2f", srv * 1e6 / pk) : "-",
                (bytes > 0) ? sprintf("%.2f", srv / (bytes / 1e9)) : "-",
                e1[1] - e0[1], e1[2] - e0[2], e1[3] - e0[3], e1[4] - e0[4] }')
    local spp=""
    if [[ $mode == main ]]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date +%FT%T)" "$impl" "$round" "$test" \
            "$value" "$extra" "$bytes" "$row" "$under" "$load" >>"$OUT/results.tsv"
    elif [[ $kind != ping ]]; then
        spp=$(finish_profile "$impl" "$test" "$mode" "$value")
    fi
    local f
    IFS=$'\t' read -r -a f <<<"$row"
    printf '%-12s r%-2s %-4s %-9s %8s %-6s retr/loss=%-7s srv=%3s%% cli=%3s%% iperf=%3s%% mach=%3s%% other=%3s%% srv_us/pkt=%-5s srv_s/GB=%-5s drops(srcv/crcv/stunq/ctunq)=%s%s%s\n' \
        "$impl" "$round" "$mode" "$test" "$value" "$([[ $kind == ping ]] && echo ms || echo Gbit/s)" "$extra" \
        "${f[2]}" "${f[3]}" "${f[4]}" "${f[5]}" "${f[6]}" "${f[8]}" "${f[9]}" "${f[10]}" \
        "$([[ $under != - ]] && echo " underlay=${under}ms")" "${spp:+  $spp}" >&2
    [[ $kind == ping ]] || sleep 2   # let queues and TIME_WAIT settle
}

# ------------------------------------------------------------------ summary --
# summary DIR [MAX_OTHERS]: markdown on stdout. With MAX_OTHERS, only runs during which everything
# else on the machine used at most MAX_OTHERS % of a core enter the medians (a "quiet runs" view).
summary() {
    local dir=$1 max_others=${2:-}
    [[ -s $dir/results.tsv ]] || die "no results in $dir/results.tsv"
    grep '^#' "$dir/results.tsv" | sed 's/^# /    /' || true
    echo
    [[ -z $max_others ]] || echo "**Only runs with others ≤ $max_others % of a core** (the count of runs per cell is given as n)."
    grep -v '^#' "$dir/results.tsv" | jq -Rrs --argjson ncpu "$NCPU" --arg maxo "$max_others" '
      def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
                         else (.[length / 2 - 1] + .[length / 2]) / 2 end;
      def num: if . == null or . == "-" or . == "ERR" or . == "" then null else (rtrimstr("%") | tonumber) end;
      def r(n): if . == null then null else (. * pow(10; n) | round) / pow(10; n) end;
      def s: if . == null then "–" else tostring end;
      def order: ["tcp1-up","tcp1-down","tcp4-up","tcp4-down","udp-up","udp-down","ping"];
      def servers: ["wireguard-go","arcd-base","arcd","arcd-1core","arcd-w1","gotatun"];
      def lbl: {"arcd":"(a) arcd","arcd-1core":"(a1) arcd 1 worker, 1 CPU","arcd-w1":"(a2) arcd 1 worker",
                "arcd-base":"(a0) arcd-base",
                "wireguard-go":"(b) wireguard-go","gotatun":"(c) gotatun"}[.];
      [split("\n")[] | select(length > 0) | split("\t") | select(.[0] != "time")
        | {impl: .[1], round: .[2], test: .[3], v: (.[4] | num), x: .[5], bytes: (.[6] | num),
           srv_pct: (.[9] | num), cli_pct: (.[10] | num), mach_pct: (.[12] | num), other_pct: (.[13] | num),
           us_pkt: (.[15] | num), s_gb: (.[16] | num), drops: .[17], under: (.[18] | num), load: (.[19] | num)}
        | select($maxo == "" or .test == "ping" or (.other_pct != null and .other_pct <= ($maxo | tonumber)))] as $rows
      | ($rows | group_by(.impl + " " + .test) | map({key: (.[0].impl + " " + .[0].test), value: {
            n: length, v: (map(.v | select(. != null)) | median), x: (map(.x | num | select(. != null)) | median),
            added: (map(select(.v != null and .under != null) | .v - .under) | median),
            under: (map(.under | select(. != null)) | median),
            srv: (map(.srv_pct | select(. != null)) | median), cli: (map(.cli_pct | select(. != null)) | median),
            mach: (map(.mach_pct | select(. != null)) | median), other: (map(.other_pct | select(. != null)) | median),
            us: (map(.us_pkt | select(. != null)) | median), sgb: (map(.s_gb | select(. != null)) | median),
            drops: ([range(4) as $i | map(.drops | split("/") | .[$i] | tonumber? // empty) | median | round? // "?" | tostring] | join("/"))}}) | from_entries) as $m
      | [servers[] as $s | select([$rows[] | select(.impl == $s)] | length > 0) | $s] as $S
      | [order[] as $t | select([$rows[] | select(.test == $t)] | length > 0) | $t] as $T
      | def cell($s; $t): $m[$s + " " + $t];
        def ref($t): $m["wireguard-go " + $t];
        def ratio($s; $t): if $s == "wireguard-go" or ref($t) == null or cell($s; $t) == null then null
            elif $t == "ping" then (if cell($s; $t).added > 0 then (ref($t).added / cell($s; $t).added) else null end)
            else (if ref($t).v > 0 then cell($s; $t).v / ref($t).v else null end) end;
        "### Medians (\($rows | map(.round) | unique | length) rounds; ratio = against (b) wireguard-go, > 1 is better)",
        "",
        "Gbit/s is iperf3 receiver goodput (UDP: received goodput and loss). Ping: average RTT through the tunnel, and in brackets the added RTT (tunnel minus veth underlay, measured just before).",
        "",
        "| test | " + ($S | map(lbl) | join(" | ")) + " |",
        "| --- |" + ($S | map(" ---: |") | join("")),
        ($T[] as $t | "| " + $t + " | " + ([$S[] as $s | cell($s; $t) as $c |
            if $c == null then "–"
            elif $t == "ping" then "\($c.v | r(3) | s) ms (+\($c.added | r(3) | s))" + (ratio($s; $t) | if . == null then "" else " · **\(r(2))×**" end)
            else "**\($c.v | r(3) | s)**" + (ratio($s; $t) | if . == null then "" else " (\(r(2))×)" end)
                 + (if $maxo != "" then " · n \($c.n)" else "" end)
                 + (if ($t | startswith("udp")) then " · loss \($c.x | r(1) | s) %" else " · retr \($c.x | r(0) | s)" end) end] | join(" | ")) + " |"),
        "",
        "### Server CPU (medians): CPU seconds per GB received, µs per TUN packet, % of one core",
        "",
        "| test | " + ($S | map(lbl) | join(" | ")) + " |",
        "| --- |" + ($S | map(" ---: |") | join("")),
        ($T[] | select(. != "ping") as $t | "| " + $t + " | " + ([$S[] as $s | cell($s; $t) as $c |
            if $c == null then "–" else "**\($c.sgb | r(2) | s) s/GB** · \($c.us | r(1) | s) µs/pkt · srv \($c.srv | r(0) | s) % · cli \($c.cli | r(0) | s) %" end] | join(" | ")) + " |"),
        "",
        "Machine busy / others (CPU % over \($ncpu) cores; \"others\" = everything but the server, the client and iperf3; high values mean outside load) and drops in a run (medians; server UDP rcvbuf / client UDP rcvbuf / server TUN queue / client TUN queue):",
        "",
        "| test | " + ($S | map(lbl) | join(" | ")) + " |",
        "| --- |" + ($S | map(" --- |") | join("")),
        ($T[] as $t | "| " + $t + " | " + ([$S[] as $s | cell($s; $t) as $c |
            if $c == null then "–" else "\($c.mach | r(0) | s) / \($c.other | r(0) | s) · \($c.drops)" end] | join(" | ")) + " |"),
        "",
        (if cell("arcd-1core"; "tcp4-up") != null or cell("arcd-w1"; "tcp4-up") != null then
          "### Scaling: (a) arcd on all \($ncpu) CPUs with its default workers against one worker",
          "",
          "| test | (a) arcd | (a1) 1 worker, 1 CPU | (a) / (a1) | (a2) 1 worker | (a) / (a2) |",
          "| --- | ---: | ---: | ---: | ---: | ---: |",
          ($T[] | select(. != "ping") as $t | cell("arcd"; $t) as $a | cell("arcd-1core"; $t) as $o | cell("arcd-w1"; $t) as $w
            | select($a != null)
            | "| \($t) | \($a.v | r(3) | s) | \($o.v | r(3) | s) | "
              + (if $o != null and $o.v > 0 then "**\($a.v / $o.v | r(2))×**" else "–" end)
              + " | \($w.v | r(3) | s) | " + (if $w != null and $w.v > 0 then "**\($a.v / $w.v | r(2))×**" else "–" end) + " |"),
          ""
        else empty end),
        "### Targets: (a) arcd against (c) gotatun and (b) wireguard-go",
        "",
        "| target | row | arcd | reference | result |",
        "| --- | --- | ---: | ---: | --- |",
        ($T[] | select(startswith("tcp")) as $t | cell("arcd"; $t) as $a | cell("gotatun"; $t) as $g
            | select($a != null and $g != null)
            | "| TCP throughput ≥ gotatun | \($t) | \($a.v | r(3)) Gbit/s | \($g.v | r(3)) Gbit/s | " + (if $a.v >= $g.v then "PASS" else "**FAIL** (\($a.v / $g.v * 100 | round) %)" end) + " |"),
        ($T[] | select(. != "ping") as $t | cell("arcd"; $t) as $a | cell("gotatun"; $t) as $g
            | select($a != null and $g != null and $a.sgb != null and $g.sgb != null)
            | "| server CPU/GB ≤ gotatun | \($t) | \($a.sgb | r(2)) s/GB | \($g.sgb | r(2)) s/GB | " + (if $a.sgb <= $g.sgb then "PASS" else "**FAIL** (\($a.sgb / $g.sgb * 100 | round) %)" end) + " |"),
        (cell("arcd"; "ping") as $a | ref("ping") as $w | select($a != null and $w != null and $a.added != null and $w.added != null)
            | "| added RTT ≤ wireguard-go | ping | \($a.added | r(3)) ms | \($w.added | r(3)) ms | " + (if $a.added <= $w.added then "PASS" else "**FAIL**" end) + " |")
    '
    if [[ -s $dir/profile.tsv ]]; then
        echo
        echo "### Profiling pass (one run per test and server, perf attached: throughput lower than above)"
        echo
        echo "| server | test | Gbit/s (perf stat run) | TUN pkt/s | syscalls/pkt | ctx-sw/pkt | server CPU µs/pkt | Gbit/s (perf trace run) | syscalls per packet by name (perf trace -s shares × syscalls/pkt) |"
        echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        awk -F'\t' '
            $3 == "A" { k = $1 SUBSEP $2; if (!(k in seen)) { seen[k] = 1; keys[++n] = k }
                        ga[k] = $4; pps[k] = $6; sc[k] = $7 / $5 / $6; cs[k] = $8 / $5 / $6; us[k] = $9 * 1000 / $5 / $6 }
            $3 == "B" { k = $1 SUBSEP $2; if (!(k in seen)) { seen[k] = 1; keys[++n] = k }
                        gb[k] = $4; sh[k] = $10 }
            END { for (i = 1; i <= n; i++) { split(keys[i], p, SUBSEP); k = keys[i]; s = "–"
                if (k in sh) { m = split(sh[k], a, " "); s = ""
                    for (j = 1; j <= m && j <= 6; j++) { split(a[j], kv, "=")
                        s = s (j > 1 ? ", " : "") kv[1] " " ((k in sc) ? sprintf("%.2f", kv[2] * sc[k]) : sprintf("%.0f%%", kv[2] * 100)) } }
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p[1], p[2],
                    (k in ga) ? ga[k] : "–", (k in pps) ? pps[k] : "–",
                    (k in sc) ? sprintf("%.2f", sc[k]) : "–", (k in cs) ? sprintf("%.3f", cs[k]) : "–",
                    (k in us) ? sprintf("%.1f", us[k]) : "–", (k in gb) ? gb[k] : "–", s } }' \
            "$dir/profile.tsv"
    fi
}

# ------------------------------------------------------------------- main --
ORIG_ARGS="$*"
case ${1:-} in
    summary) summary "${2:?usage: dataplane.sh summary DIR [MAX_OTHERS_PCT]}" "${3:-}"; exit 0 ;;
    cleanup) [[ $EUID -eq 0 ]] || die "needs root"; cleanup_stale; exit 0 ;;
esac

while getopts "r:t:T:P:s:c:o:L:h" opt; do
    case $opt in
        r) ROUNDS=$OPTARG ;;
        t) DURATION=$OPTARG ;;
        T) TESTS=$OPTARG ;;
        P) PROFILE_TESTS=$OPTARG ;;
        s) SERVERS=$OPTARG ;;
        c) CLIENT=$OPTARG ;;
        o) OUT=$OPTARG ;;
        L) MAX_LOAD=$OPTARG ;;
        h | *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    esac
done
shift $((OPTIND - 1))
(($# == 0)) || die "unexpected argument $1 (see -h)"
[[ $PROFILE_TESTS == none ]] && PROFILE_TESTS=""
IFS=, read -r -a IMPLS <<<"$SERVERS"
for impl in "${IMPLS[@]}"; do
    [[ -n $(impl_tag "$impl") ]] || die "unknown server '$impl' (arcd, arcd-1core, arcd-w1, arcd-base, wireguard-go, gotatun)"
done
[[ $CLIENT == wireguard-go || $CLIENT == gotatun ]] || die "unknown client '$CLIENT' (wireguard-go, gotatun)"

[[ $EUID -eq 0 ]] || die "needs root (network namespaces, TUN devices)"
[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing"
for tool in ip wg wireguard-go iperf3 jq curl ping ss unshare nsenter timeout awk taskset; do
    command -v "$tool" >/dev/null || die "missing $tool (apt-get install -y --no-install-recommends iproute2 wireguard-tools wireguard-go iperf3 jq curl iputils-ping)"
done
[[ -z $PROFILE_TESTS ]] || command -v perf >/dev/null || die "the profiling pass needs perf (apt-get install linux-perf), or -P none"

OUT=${OUT:-/tmp/arcd-dataplane-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/logs"
OUT=$(realpath "$OUT")

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d /tmp/arcdp.XXXXXX)
chmod 700 "$WORK"
ln -sfn "$OUT/logs" "$WORK/logs"

# arcd: a copy of the release binary, so a rebuild by someone else cannot swap it mid-run.
ARCD=""
ARCD_REV=""
if [[ " ${IMPLS[*]} " == *" arcd"* ]]; then
    src=${DP_ARCD_BIN:-}
    if [[ -z $src ]]; then
        log "cargo build --release (in $REPO_DIR)"
        (cd "$REPO_DIR" && timeout 1800 cargo build --release) || die "cargo build --release failed (tree mid-edit? retry)"
        src=$REPO_DIR/target/release/arcd
    fi
    [[ -x $src ]] || die "no executable arcd at $src"
    cp "$src" "$WORK/arcd"
    ARCD=$WORK/arcd
    ARCD_REV="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo ?)"
    dirty=$(git -C "$REPO_DIR" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)
    ((dirty == 0)) || ARCD_REV+=" + $dirty modified file(s) in src/Cargo.*"
fi
ARCD_BASE=""
if [[ " ${IMPLS[*]} " == *" arcd-base "* ]]; then
    [[ -x ${DP_ARCD_BASE_BIN:-} ]] || die "arcd-base needs DP_ARCD_BASE_BIN=PATH to an arcd binary"
    # Named arcd too: the process is checked by its name (/proc/PID/comm) before it is stopped.
    mkdir "$WORK/base"
    cp "$DP_ARCD_BASE_BIN" "$WORK/base/arcd"
    ARCD_BASE=$WORK/base/arcd
    ARCD_REV+="; arcd-base: $DP_ARCD_BASE_BIN (sha256 $(sha256sum "$ARCD_BASE" | cut -c1-12))"
fi
# gotatun: on PATH, in DP_CARGO_ROOT, or installed there now (several minutes).
GOTATUN=""
if [[ " ${IMPLS[*]} " == *" gotatun "* || $CLIENT == gotatun ]]; then
    GOTATUN=${DP_GOTATUN:-$(command -v gotatun || true)}
    [[ -n $GOTATUN ]] || GOTATUN=$CARGO_ROOT/bin/gotatun
    if [[ ! -x $GOTATUN ]]; then
        log "gotatun missing: cargo install gotatun-cli --version $GOTATUN_VERSION --locked --root $CARGO_ROOT (several minutes)"
        mkdir -p "$CARGO_ROOT"
        (cd / && CARGO_TARGET_DIR=$CARGO_ROOT/../target cargo install gotatun-cli --version "$GOTATUN_VERSION" \
            --locked --root "$CARGO_ROOT") >"$OUT/logs/cargo-install-gotatun.log" 2>&1 ||
            die "cargo install gotatun-cli failed; see $OUT/logs/cargo-install-gotatun.log"
        GOTATUN=$CARGO_ROOT/bin/gotatun
    fi
fi

if [[ -n $MAX_LOAD ]]; then
    for ((i = 0; i < 90; i++)); do
        awk -v l="$(loadavg1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l < m) }' && break
        ((i % 6 == 0)) && log "waiting for the 1-min load average ($(loadavg1)) to fall below $MAX_LOAD"
        sleep 10
    done
fi

{
    echo "# $(date -Is) host=$(hostname) kernel=$(uname -r) cpus=$NCPU rounds=$ROUNDS duration=${DURATION}s tests=$TESTS servers=$SERVERS client=$CLIENT"
    echo "# command: $0 $ORIG_ARGS"
    echo "# uptime at start: $(uptime)"
    echo "# cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "# arcd: ${ARCD_REV:-not run}"
    echo "# wireguard-go: $(wireguard-go --version 2>&1 | head -1)"
    command -v taskset >/dev/null && echo "# arcd-1core: taskset -c 0, dataplane.workers = 1; arcd: workers = default (cores)"
    [[ -n $GOTATUN ]] && echo "# gotatun: $("$GOTATUN" --version 2>&1 | head -1) ($GOTATUN)"
    echo "# iperf3: $(iperf3 --version | head -1)"
    echo "# net.core.rmem_max=$(sysctl -n net.core.rmem_max) wmem_max=$(sysctl -n net.core.wmem_max) rmem_default=$(sysctl -n net.core.rmem_default)"
    printf 'time\timpl\tround\ttest\tgbps_or_rtt_ms\tretr_or_loss\trx_bytes\tsrv_cpu_s\tdt_s\tsrv_pct\tcli_pct\tiperf_pct\tmachine_pct\tothers_pct\tsrv_tun_pkts\tsrv_us_per_pkt\tsrv_s_per_GB\tdrops_srcv/crcv/stunq/ctunq\tunderlay_rtt_ms\tload1\n'
} >"$OUT/results.tsv"
: >"$OUT/profile.tsv"
grep '^#' "$OUT/results.tsv" >&2

log "setting up ${IMPLS[*]} (namespaces ${NS_PREFIX}*)"
setup_namespaces
private_wireguard_dir arcdp-wireguard || die "no private mount namespace with a tmpfs on $UAPI_DIR"
for impl in "${IMPLS[@]}"; do setup_pair "$impl"; done

IFS=, read -r -a TEST_LIST <<<"$TESTS"
for ((round = 1; round <= ROUNDS; round++)); do
    # rotate the server order each round, so no server always runs right after the same one
    order=("${IMPLS[@]:$(((round - 1) % ${#IMPLS[@]}))}" "${IMPLS[@]:0:$(((round - 1) % ${#IMPLS[@]}))}")
    log "round $round/$ROUNDS (order: ${order[*]}; load $(loadavg1))"
    for test in "${TEST_LIST[@]}"; do
        for impl in "${order[@]}"; do
            run_test "$impl" "$round" "$test" main
        done
    done
done

if [[ -n $PROFILE_TESTS ]]; then
    log "profiling pass: $PROFILE_TESTS (perf stat + perf record, then perf trace -s)"
    IFS=, read -r -a PLIST <<<"$PROFILE_TESTS"
    for test in "${PLIST[@]}"; do
        for impl in "${IMPLS[@]}"; do
            run_test "$impl" 0 "$test" A
            run_test "$impl" 0 "$test" B
        done
    done
fi

echo "# uptime at end: $(uptime)" >>"$OUT/results.tsv"
summary "$OUT" | tee "$OUT/summary.md"
log "results in $OUT"
