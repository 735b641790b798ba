#!/usr/bin/env bash
# storm.sh — a fleet reconnecting at once (issue 16): N WireGuard devices emulated by the storm
# generator (examples/storm) all initiate at the same instant against arcd and, with the same N
# peers set by `wg setconf`, against Debian's wireguard-go and gotatun, interleaved (run as root).
#
#   storm.sh [-n DEVICES] [-r ROUNDS] [-s SERVERS] [-d DEADLINE] [-p PER_ADDRESS] [-o DIR] [-L LOAD]
#   storm.sh summary DIR     print the markdown summary of a results directory again
#   storm.sh cleanup         remove namespaces left by a run that was killed with SIGKILL
#
#   ┌──── netns arcst-<pid>-srv ─────────┐   one veth   ┌──── netns arcst-<pid>-cli ─────────┐
#   │ one server at a time on UDP 51820, │──────────────│ storm run: N devices, one UDP      │
#   │ TUN 10.64.0.1/14 (answers ICMP     │ 10.216.0.1/30│ socket each, from 10.220.0.0/14    │
#   │ echo: the devices' data packet);   │ 10.216.0.2/30│ (a local route: any address of it  │
#   │ route 10.220.0.0/14 via 10.216.0.2 │              │ can be bound), -p devices per      │
#   └────────────────────────────────────┘              │ address (default 1), own ports     │
#                                                       └────────────────────────────────────┘
# One device per source address by default: a fleet after an outage comes from distinct public
# addresses, and wireguard-go limits handshakes per source address under load (20/s, burst 5),
# so packing many devices behind one address would measure that limiter instead.
#
# Devices:
#   arcd: N virtual SIMs created through the API (`storm provision`: POST /v1/auth with
#         root-credentials.json, then POST /v1/sims, 16 in flight), once, into a data directory
#         with a 10.64.0.0/14 pool (a /16 holds 65,533 SIMs); each answer is one device.
#   wireguard-go, gotatun: N key pairs (`storm keys`), addresses 10.64.0.2 on, and one server
#         configuration with N [Peer] sections, applied with `wg setconf`.
# Each round, for each server (order rotated every round), the server is started afresh (an
# outage or restart: arcd loads its sessions from its store; the others get `wg setconf`), the
# storm runs (`storm run --server-pid PID`), and the server is stopped. Only one server runs at a
# time. Neighbour entries on both ends of the veth are permanent, so no ARP resolution queue
# drops the first answers.
#
# Per storm (results.tsv, one row): seconds until 50/90/99/100 % of the devices had a session
# (handshake response received) and had their ICMP echo answered, the storm rate (devices / time to
# 100 % answered), initiations sent, cookie replies received (and by how many devices), the server's
# CPU seconds over the storm (/proc/PID/stat, all threads), the generator's CPU seconds, UDP
# receive-buffer drops in the server's namespace, machine busy % and the 1-minute load average.
#
# Options:
#   -n N      devices (default 10000)      -p N   devices per source address (default 1)
#   -r N      rounds (default 3)          -s LIST  servers (default arcd,wireguard-go,gotatun)
#   -d S      seconds a device keeps trying (default 90, a WireGuard client's REKEY_ATTEMPT_TIME)
#   -o DIR    results directory (default /tmp/arcd-storm-YYYYmmdd-HHMMSS)
#   -L LOAD   before starting, wait (up to 15 min) until the 1-minute load average is below LOAD
# Environment (deliberately not ARCD_*, which arcd reads as configuration):
#   DP_ARCD_BIN=PATH   arcd binary (default: cargo build --release in the repository)
#   DP_STORM_BIN=PATH  storm generator (default: cargo build --release --example storm)
#   DP_GOTATUN=PATH    gotatun binary (default: `gotatun` on PATH, else $DP_CARGO_ROOT/bin/gotatun,
#                      installed there with cargo install gotatun-cli 0.10.2 when missing)
#   DP_CARGO_ROOT=DIR  (default /opt/wgbench/cargo)    DP_KEEP=1  keep the scratch directory
#   DP_PER_PROC=N      devices per generator process (default: the open-file limit less 256)
#
# Everything this script starts is recorded by PID and stopped by PID on exit, INT and TERM;
# namespaces and scratch files (which hold the devices' private keys, mode 0600) are removed.
# Control sockets live on a private tmpfs in a mount namespace of this run (as dataplane.sh).
#
# Needs: root, /dev/net/tun, iproute2, wireguard-tools (wg), wireguard-go, jq, curl, cargo.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source=scripts/lib/procs.sh
source "$REPO_DIR/scripts/lib/procs.sh" # proc_is_ours, stop_pids
# shellcheck source=scripts/lib/links.sh
source "$REPO_DIR/scripts/lib/links.sh" # wait_for, private_wireguard_dir

# ---------------------------------------------------------------- settings --
BENCH_NAME=storm.sh
NS_TAG=arcst
# shellcheck source=scripts/bench/storm-common.sh
source "$SCRIPT_DIR/storm-common.sh" # namespaces, arcd, spawn, cleanup, counters
DEVICES=10000
ROUNDS=3
SERVERS=arcd,wireguard-go,gotatun
DEADLINE=90
OUT=""
MAX_LOAD=""
CARGO_ROOT=${DP_CARGO_ROOT:-/opt/wgbench/cargo}
GOTATUN_VERSION=0.10.2
PER_SOURCE=1
GEN_THREADS=2

# ------------------------------------------------------------------ arcd --
ARCD_DATA=""
setup_arcd() {
    ARCD_DATA=$WORK/arcd-data
    mkdir -p "$ARCD_DATA"
    write_arcd_config "$WORK/arcd.toml"
    start_arcd "$WORK/arcd.toml"
    provision_sims "$DEVICES" "$WORK/arcd-devices"
    stop_server
}

# ---------------------------------------------------- wireguard-go, gotatun --
setup_wg_keys() {
    (umask 077 && wg genkey >"$WORK/wg-srv.key")
    "$STORM" keys --count "$DEVICES" --network "$POOL" --server-key "$WORK/wg-srv.key" \
        --listen-port "$WG_PORT" --devices "$WORK/wg-devices" --wg-conf "$WORK/wg.conf"
}

start_wg_server() { # start_wg_server IMPL
    local impl=$1 ifs comm t0
    case $impl in
        wireguard-go)
            ifs=stw comm=wireguard-go
            spawn "$NS_S" "$WORK/logs/server-$impl.log" "$comm" env LOG_LEVEL=error wireguard-go -f "$ifs" ;;
        gotatun)
            ifs=stg comm=$(basename "$GOTATUN")
            spawn "$NS_S" "$WORK/logs/server-$impl.log" "$comm" "$GOTATUN" -f -v error --disable-drop-privileges "$ifs" ;;
    esac
    SRV_PID=$SPAWNED_PID
    wait_comm "$SRV_PID" "$comm" || die "$impl did not start: $(tail -5 "$WORK/logs/server-$impl.log")"
    wait_for 10 in_mnt test -S "$UAPI_DIR/$ifs.sock" || die "$impl: no socket $UAPI_DIR/$ifs.sock"
    t0=$EPOCHREALTIME
    nsx "$NS_S" wg setconf "$ifs" "$WORK/wg.conf" || die "$impl: wg setconf failed"
    log "$impl: wg setconf of $DEVICES peers took $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
    ip -n "$NS_S" addr add "$TUN_IP/14" dev "$ifs"
    ip -n "$NS_S" link set "$ifs" mtu "$MTU" up
}

start_server() {
    case $1 in
        arcd) start_arcd "$WORK/arcd.toml" ;;
        *) start_wg_server "$1" ;;
    esac
}

# ------------------------------------------------------------------ storm --
storm() { # storm IMPL ROUND
    local impl=$1 round=$2 devices rlog drops0 drops1 line load s0 s1 busy key
    devices=$WORK/wg-devices
    [[ $impl == arcd ]] && devices=$WORK/arcd-devices
    start_server "$impl"
    sleep 1 # the server's start-up work is done before the fleet comes
    rlog=$OUT/logs/storm-$impl-$round.log
    drops0=$(rcvbuf_errors)
    load=$(loadavg1)
    # The fleet in PROCS processes of at most PER_PROC devices (the open-file limit), each
    # preparing its share and then waiting for the common start time in $WORK/go.
    local p first n gen_pids=() outcome_files=() waited
    rm -f "$WORK/go" "$WORK"/outcomes-*
    for ((p = 0; p < PROCS; p++)); do
        first=$((p * PER_PROC))
        n=$((DEVICES - first < PER_PROC ? DEVICES - first : PER_PROC))
        spawn "$NS_C" "$OUT/logs/storm-$impl-$round-p$p.log" storm "$STORM" run --devices "$devices" \
            --skip "$first" --count "$n" --threads "$GEN_THREADS" --endpoint "$SRV_IP:$WG_PORT" \
            --sources "$SOURCE_NET" --ports-per-source "$PER_SOURCE" --target "$TUN_IP" \
            --server-pid "$SRV_PID" --deadline "$DEADLINE" --wait-for "$WORK/go" \
            --outcomes "$WORK/outcomes-$p"
        gen_pids+=("$SPAWNED_PID")
        outcome_files+=("$WORK/outcomes-$p")
    done
    for ((waited = 0; waited < 6000; waited++)); do
        n=0
        for ((p = 0; p < PROCS; p++)); do
            grep -q '^ready$' "$OUT/logs/storm-$impl-$round-p$p.log" 2>/dev/null && n=$((n + 1))
            kill -0 "${gen_pids[p]}" 2>/dev/null || die "storm run $p exited early: $(tail -3 "$OUT/logs/storm-$impl-$round-p$p.log")"
        done
        ((n == PROCS)) && break
        sleep 0.1
    done
    ((n == PROCS)) || die "the generator processes were not ready after 600 s"
    s0=$(sys_ticks)
    echo $(($(date +%s%3N) + 1000)) >"$WORK/go.tmp" # written whole, then renamed: read whole
    mv "$WORK/go.tmp" "$WORK/go"
    for p in "${gen_pids[@]}"; do
        wait "$p" || log "warning: a storm run against $impl exited with $?"
    done
    "$STORM" merge "${outcome_files[@]}" >"$rlog" || die "storm merge failed"
    s1=$(sys_ticks)
    drops1=$(rcvbuf_errors)
    stop_server
    line=$(grep '^STORM_RESULT ' "$rlog" | tail -1) || die "no STORM_RESULT in $rlog: $(tail -3 "$rlog")"
    busy=$(awk -v a="$s0" -v b="$s1" 'BEGIN { split(a, x, " "); split(b, y, " ");
        t = y[2] - x[2]; printf "%.0f", (t > 0 ? 100 * (y[1] - x[1]) / t : 0) }')
    {
        printf '%s\t%s\t%s' "$(date +%T)" "$impl" "$round"
        for key in devices sessions answered s50 s90 s99 s100 a50 a90 a99 a100 rate initiations cookies cookie_devices server_cpu_s generator_cpu_s; do
            printf '\t%s' "$(sed -nE "s/.* $key=([^ ]+).*/\1/p" <<<" ${line#STORM_RESULT}")"
        done
        printf '\t%s\t%s\t%s\n' "$((drops1 - drops0))" "$busy" "$load"
    } >>"$OUT/results.tsv"
    log "$impl round $round: $(tail -1 "$OUT/results.tsv" | cut -f4-)"
}

# ---------------------------------------------------------------- summary --
summary() {
    local dir=$1
    grep '^#' "$dir/results.tsv"
    echo
    echo "Medians over the rounds (seconds since the start of the storm; rate = devices / time to 100 % answered):"
    echo
    echo "| server | rounds | devices | 50 % session | 99 % session | 100 % session | 50 % answered | 99 % answered | 100 % answered | devices/s | cookie replies | initiations | server CPU s | generator CPU s | server rcvbuf drops | machine busy % | load1 |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk -F'\t' '
        function median(list,   a, n, i, j, t) { n = split(list, a, " ")
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
            return n ? (n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2) : "-" }
        function add(k, c, v) { if (v == "-" || v == "") { miss[k, c] = 1; return } vals[k, c] = vals[k, c] " " v }
        function cell(k, c) { return ((k, c) in miss) ? "-" : median(vals[k, c]) }
        # a rate in every round (a round where not every device was answered has none)
        function rated(k) { return ((k, "rate") in vals) && !((k, "rate") in miss) }
        !/^#/ && $2 != "impl" { k = $2; if (!(k in seen)) { seen[k] = 1; order[++n] = k } rounds[k]++; dev[k] = $4
            add(k, "s50", $7); add(k, "s99", $9); add(k, "s100", $10); add(k, "a50", $11); add(k, "a99", $13)
            add(k, "a100", $14); add(k, "rate", $15); add(k, "cookies", $17); add(k, "init", $16)
            add(k, "scpu", $19); add(k, "gcpu", $20); add(k, "drops", $21); add(k, "busy", $22); add(k, "load", $23) }
        END { for (i = 1; i <= n; i++) { k = order[i]
            printf "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", k, rounds[k], dev[k],
                cell(k, "s50"), cell(k, "s99"), cell(k, "s100"), cell(k, "a50"), cell(k, "a99"), cell(k, "a100"),
                cell(k, "rate"), cell(k, "cookies"), cell(k, "init"), cell(k, "scpu"), cell(k, "gcpu"), cell(k, "drops"),
                cell(k, "busy"), cell(k, "load") }
            print ""
            if (rated("arcd") && rated("wireguard-go")) {
                r = cell("arcd", "rate") / cell("wireguard-go", "rate")
                printf "arcd / wireguard-go storm rate: %.2f (target >= 1.5: %s)\n", r, (r >= 1.5 ? "met" : "**not met**") }
            if (rated("arcd") && rated("gotatun"))
                printf "arcd / gotatun storm rate: %.2f\n", cell("arcd", "rate") / cell("gotatun", "rate")
            if (("arcd", "a100") in vals) { t = cell("arcd", "a100")
                printf "arcd: all %s devices answered after %s s (target for 100,000: < 15 s)\n", dev["arcd"], t } }
    ' "$dir/results.tsv"
}

# ------------------------------------------------------------------- main --
ORIG_ARGS="$*"
case ${1:-} in
    summary) summary "${2:?usage: storm.sh summary DIR}"; exit 0 ;;
    cleanup) [[ $EUID -eq 0 ]] || die "needs root"; cleanup_stale; exit 0 ;;
esac
while getopts "n:r:s:d:p:o:L:h" opt; do
    case $opt in
        n) DEVICES=$OPTARG ;;
        r) ROUNDS=$OPTARG ;;
        s) SERVERS=$OPTARG ;;
        d) DEADLINE=$OPTARG ;;
        p) PER_SOURCE=$OPTARG ;;
        o) OUT=$OPTARG ;;
        L) MAX_LOAD=$OPTARG ;;
        h | *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    esac
done
shift $((OPTIND - 1))
(($# == 0)) || die "unexpected argument $1 (see -h)"
if ! [[ $DEVICES =~ ^[0-9]+$ ]] || ((DEVICES < 1 || DEVICES > 250000)); then
    die "-n: 1 to 250,000 devices (a /14 pool)"
fi
IFS=, read -r -a IMPLS <<<"$SERVERS"
for impl in "${IMPLS[@]}"; do
    case $impl in arcd | wireguard-go | gotatun) ;; *) die "unknown server '$impl' (arcd, wireguard-go, gotatun)" ;; esac
done
# wireguard-go refuses a peer beyond MaxPeers (1 << 16): "failed to create new peer: too many peers".
if [[ " ${IMPLS[*]} " == *" wireguard-go "* ]] && ((DEVICES > 65536)); then
    die "wireguard-go holds at most 65,536 peers; leave it out (-s arcd,gotatun) for $DEVICES devices"
fi
[[ $EUID -eq 0 ]] || die "needs root (network namespaces, TUN devices)"
[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing"
for tool in ip wg jq curl unshare nsenter timeout awk; do
    command -v "$tool" >/dev/null || die "missing $tool"
done
# One socket per device. The soft open-file limit goes up to the hard one (raising the hard one
# needs CAP_SYS_RESOURCE, which a container may lack); a fleet larger than that is split over
# processes that start at the same moment (storm run --skip/--count/--wait-for, storm merge).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PER_PROC=${DP_PER_PROC:-$(($(ulimit -n) - 256))}
((PER_PROC > 0)) || die "open-file limit $(ulimit -n) is too low"
((PER_PROC < DEVICES)) || PER_PROC=$DEVICES
PROCS=$(((DEVICES + PER_PROC - 1) / PER_PROC))
((PROCS == 1)) || GEN_THREADS=1

OUT=${OUT:-/tmp/arcd-storm-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/logs"
OUT=$(realpath "$OUT")
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK=$(mktemp -d /tmp/arcst.XXXXXX)
chmod 700 "$WORK"
ln -sfn "$OUT/logs" "$WORK/logs"

# Copies of the binaries, so a rebuild by someone else cannot swap them mid-run.
if [[ -z ${DP_ARCD_BIN:-} || -z ${DP_STORM_BIN:-} ]]; then
    log "cargo build --release --bin arcd --example storm (in $REPO_DIR)"
    (cd "$REPO_DIR" && timeout 1800 cargo build --release --bin arcd --example storm) || die "cargo build --release failed"
fi
cp "${DP_STORM_BIN:-$REPO_DIR/target/release/examples/storm}" "$WORK/storm"
STORM=$WORK/storm
ARCD=""
ARCD_REV=""
if [[ " ${IMPLS[*]} " == *" arcd "* ]]; then
    cp "${DP_ARCD_BIN:-$REPO_DIR/target/release/arcd}" "$WORK/arcd"
    ARCD=$WORK/arcd
    ARCD_REV="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo ?)"
    dirty=$(git -C "$REPO_DIR" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)
    ((dirty == 0)) || ARCD_REV+=" + $dirty modified file(s) in src/Cargo.*"
fi
GOTATUN=""
if [[ " ${IMPLS[*]} " == *" gotatun "* ]]; then
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
if [[ " ${IMPLS[*]} " == *" wireguard-go "* ]]; then
    command -v wireguard-go >/dev/null || die "missing wireguard-go (apt-get install wireguard-go)"
fi

if [[ -n $MAX_LOAD ]]; then
    for ((i = 0; i < 90; i++)); do
        awk -v l="$(loadavg1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l < m) }' && break
        ((i % 6 == 0)) && log "waiting for the 1-minute load average ($(loadavg1)) to fall below $MAX_LOAD"
        sleep 10
    done
fi

{
    echo "# $(date -Is) host=$(hostname) kernel=$(uname -r) cpus=$(nproc) devices=$DEVICES rounds=$ROUNDS servers=$SERVERS deadline=${DEADLINE}s devices_per_source_address=$PER_SOURCE"
    echo "# command: $0 $ORIG_ARGS"
    echo "# uptime at start: $(uptime)"
    echo "# cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "# arcd: ${ARCD_REV:-not run}"
    echo "# wireguard-go: $(wireguard-go --version 2>&1 | head -1)"
    [[ -n $GOTATUN ]] && echo "# gotatun: $("$GOTATUN" --version 2>&1 | head -1)"
    echo "# net.core.rmem_max=$(sysctl -n net.core.rmem_max) rmem_default=$(sysctl -n net.core.rmem_default)"
    echo "# generator: $PROCS process(es) of at most $PER_PROC devices (open-file limit $(ulimit -n)), $GEN_THREADS thread(s) each"
    printf 'time\timpl\tround\tdevices\tsessions\tanswered\ts50\ts90\ts99\ts100\ta50\ta90\ta99\ta100\trate\tinitiations\tcookies\tcookie_devices\tserver_cpu_s\tgenerator_cpu_s\tsrv_rcvbuf_drops\tmachine_busy_pct\tload1\n'
} >"$OUT/results.tsv"
grep '^#' "$OUT/results.tsv" >&2

setup_namespaces
private_wireguard_dir arcst-wireguard || die "no private mount namespace with a tmpfs on $UAPI_DIR"
log "namespaces $NS_S, $NS_C; devices send from $SOURCE_NET, $PER_SOURCE per address"
[[ " ${IMPLS[*]} " == *" arcd "* ]] && setup_arcd
[[ " ${IMPLS[*]} " == *" wireguard-go "* || " ${IMPLS[*]} " == *" gotatun "* ]] && setup_wg_keys

for ((round = 1; round <= ROUNDS; round++)); do
    order=("${IMPLS[@]:$(((round - 1) % ${#IMPLS[@]}))}" "${IMPLS[@]:0:$(((round - 1) % ${#IMPLS[@]}))}")
    log "round $round/$ROUNDS (order: ${order[*]}; load $(loadavg1))"
    for impl in "${order[@]}"; do
        storm "$impl" "$round"
    done
done

echo "# uptime at end: $(uptime)" >>"$OUT/results.tsv"
summary "$OUT" | tee "$OUT/summary.md"
log "results in $OUT"
