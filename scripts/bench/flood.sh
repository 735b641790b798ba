#!/usr/bin/env bash
# flood.sh — arcd's packet workers with the client's crypto out of the way (issue 16): many
# devices send data packets encrypted beforehand (`storm flood`), and arcd decrypts them with
# `[dataplane] workers = 1` and with the default (one per core), interleaved (run as root).
#
#   flood.sh [-n DEVICES] [-k PACKETS] [-t SECONDS] [-r ROUNDS] [-w WINDOW] [-o DIR] [-L LOAD]
#   flood.sh summary DIR     print the markdown summary of a results directory again
#   flood.sh cleanup         remove namespaces left by a run that was killed with SIGKILL
#
# Namespaces as storm.sh's (storm-common.sh): arcd in one with its TUN on 10.64.0.1/14, the
# generator in the other, one veth between them. The devices are N virtual SIMs made through the
# API once (`storm provision`); each sends from its own address of 10.220.0.0/14, so SO_REUSEPORT
# spreads them over arcd's workers. Each run: arcd starts afresh with one configuration, then
# `storm flood` handshakes every device, encrypts K IPv4/UDP packets of 1,400 bytes per device to
# 10.64.0.1 port 9 (no socket there: the kernel drops them after its UDP lookup, and its ICMP
# answers are rate-limited to 1,000 a second), and, in the timed region, sends them in GSO batches
# round-robin over the devices, at most W packets in flight (by the TUN's receive counter, read
# from /proc/ARCD_PID/net/dev), until all are sent or T seconds have passed.
#
# Per run (results.tsv, one row): arcd's decrypted packets and their bytes (arcd_packets/
# arcd_bytes, direction rx, from /metrics before and after), the timed region's length (from the
# first send to the TUN counter's last change), packets/s and Gbit/s of inner IP packets, arcd's
# CPU seconds (utime+stime of all its threads), the cores that is, and CPU seconds per GB, the generator's CPU
# seconds, the CPU used by everything else on the machine in the timed region ("others",
# cores), UDP receive-buffer drops and NoPorts in arcd's namespace, the 1-minute load average,
# and the CPU seconds of each of arcd's busy threads (whether the work spread over cores).
#
# Options:
#   -n N  devices (default 64)           -k N  packets per device (default 15000: 1.4 GB in all)
#   -t S  seconds at most per flood (10)  -r N  rounds (default 3; each runs both configurations)
#   -w N  packets in flight (4096)        -o DIR results (default /tmp/arcd-flood-YYYYmmdd-HHMMSS)
#   -L LOAD  before starting, wait (up to 15 min) until the 1-minute load average is below LOAD
# Environment: DP_ARCD_BIN, DP_STORM_BIN (binaries; default: cargo build --release), DP_KEEP=1.
#
# What this measures and what it does not: UDP upload only (device → arcd → TUN), no TCP, and no
# client crypto in the loop. It shows whether arcd's decryption scales over workers when many
# devices send; it says nothing of a real client's throughput.
#
# Needs: root, /dev/net/tun, iproute2, jq, curl, cargo.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source=scripts/lib/procs.sh
source "$REPO_DIR/scripts/lib/procs.sh" # proc_is_ours, stop_pids
# shellcheck source=scripts/lib/links.sh
source "$REPO_DIR/scripts/lib/links.sh" # wait_for, private_wireguard_dir
BENCH_NAME=flood.sh
NS_TAG=arcfl
# shellcheck source=scripts/bench/storm-common.sh
source "$SCRIPT_DIR/storm-common.sh" # namespaces, arcd, spawn, cleanup, counters

DEVICES=64
PACKETS=15000
SECONDS_MAX=10
ROUNDS=3
WINDOW=4096
OUT=""
MAX_LOAD=""
PACKET_LEN=1400
CONFIGS=(w1 default)

# metric NAME: arcd's rx counter NAME (arcd_packets, arcd_bytes) summed over rendezvous points
metric() {
    nsx "$NS_S" curl -s -m 5 "http://$SRV_IP:$METRICS_PORT/metrics" |
        awk -v name="$1" '$1 ~ "^" name "(_total)?[{]" && $1 ~ /direction="rx"/ { s += $2 } END { printf "%.0f\n", s }'
}

flood() { # flood CONFIG ROUND
    local cfg=$1 round=$2 rlog line key p0 b0 p1 b1 d0 d1 n0 n1 load
    start_arcd "$WORK/arcd-$cfg.toml"
    sleep 1 # arcd's start-up work is done before the flood
    rlog=$OUT/logs/flood-$cfg-$round.log
    p0=$(metric arcd_packets) b0=$(metric arcd_bytes)
    d0=$(rcvbuf_errors) n0=$(udp_counter NoPorts) load=$(loadavg1)
    spawn "$NS_C" "$rlog" storm "$STORM" flood --devices "$WORK/devices" --count "$DEVICES" \
        --endpoint "$SRV_IP:$WG_PORT" --sources "$SOURCE_NET" --ports-per-source 1 \
        --target "$TUN_IP:9" --packet-len "$PACKET_LEN" --packets "$PACKETS" \
        --seconds "$SECONDS_MAX" --window "$WINDOW" --server-pid "$SRV_PID" --tun "$TUN_NAME"
    wait "$SPAWNED_PID" || die "storm flood against arcd ($cfg) failed: $(tail -3 "$rlog")"
    p1=$(metric arcd_packets) b1=$(metric arcd_bytes)
    d1=$(rcvbuf_errors) n1=$(udp_counter NoPorts)
    stop_server
    line=$(grep '^FLOOD_RESULT ' "$rlog" | tail -1) || die "no FLOOD_RESULT in $rlog"
    {
        printf '%s\t%s\t%s' "$(date +%T)" "$cfg" "$round"
        for key in devices sent elapsed_s server_cpu_s generator_cpu_s machine_busy_cores measured_s tun_rx_bytes window_full presumed_lost; do
            printf '\t%s' "$(sed -nE "s/.* $key=([^ ]+).*/\1/p" <<<" ${line#FLOOD_RESULT}")"
        done
        printf '\t%s\t%s\t%s\t%s\t%s' "$((p1 - p0))" "$((b1 - b0))" "$((d1 - d0))" "$((n1 - n0))" "$load"
        printf '\t%s\n' "$(sed -nE 's/.* server_threads=([^ ]+).*/\1/p' <<<"$line")"
    } >>"$OUT/results.tsv"
    log "$cfg round $round: $(grep -v '^FLOOD_RESULT' "$rlog" | tail -1)"
}

summary() {
    local dir=$1
    grep '^#' "$dir/results.tsv"
    echo
    echo "Medians over the rounds (pps and Gbit/s of inner IP packets arcd decrypted and wrote to its TUN):"
    echo
    echo "| arcd | rounds | devices | packets sent | arcd decrypted | seconds | packets/s | Gbit/s | arcd CPU s | arcd cores | arcd CPU s/GB | generator CPU s | others (cores) | rcvbuf drops |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk -F'\t' '
        function median(list,   a, n, i, j, t) { n = split(list, a, " ")
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
            return n ? (n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2) : "-" }
        function add(k, c, v) { vals[k, c] = vals[k, c] " " v }
        !/^#/ && $2 != "config" { k = $2; if (!(k in seen)) { seen[k] = 1; order[++n] = k } rounds[k]++; dev[k] = $4
            s = $6; add(k, "sent", $5); add(k, "pkts", $14); add(k, "secs", s)
            add(k, "pps", $14 / s); add(k, "gbit", $15 * 8 / s / 1e9); add(k, "cpu", $7)
            add(k, "cores", $7 / $10)
            add(k, "cpugb", ($15 > 0 ? $7 / ($15 / 1e9) : 0)); add(k, "gcpu", $8)
            add(k, "others", $9 - ($7 + $8) / $10); add(k, "drops", $16)
            rate[k, $3] = $14 / s; if ($3 > last) last = $3 }
        END { for (i = 1; i <= n; i++) { k = order[i]
            printf "| %s | %d | %s | %.0f | %.0f | %.2f | %.0f | %.3f | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f |\n", k, rounds[k], dev[k],
                median(vals[k, "sent"]), median(vals[k, "pkts"]), median(vals[k, "secs"]), median(vals[k, "pps"]),
                median(vals[k, "gbit"]), median(vals[k, "cpu"]), median(vals[k, "cores"]), median(vals[k, "cpugb"]), median(vals[k, "gcpu"]),
                median(vals[k, "others"]), median(vals[k, "drops"]) }
            if (("w1", "pps") in vals && ("default", "pps") in vals) {
                r = median(vals["default", "pps"]) / median(vals["w1", "pps"])
                printf "\ndefault workers / 1 worker, packets/s (medians): %.2f; per round:", r
                for (j = 1; j <= last; j++) if (("w1", j) in rate && ("default", j) in rate) printf " %.2f", rate["default", j] / rate["w1", j]
                print "" } }
    ' "$dir/results.tsv"
}

ORIG_ARGS="$*"
case ${1:-} in
    summary) summary "${2:?usage: flood.sh summary DIR}"; exit 0 ;;
    cleanup) [[ $EUID -eq 0 ]] || die "needs root"; cleanup_stale; exit 0 ;;
esac
while getopts "n:k:t:r:w:o:L:h" opt; do
    case $opt in
        n) DEVICES=$OPTARG ;;
        k) PACKETS=$OPTARG ;;
        t) SECONDS_MAX=$OPTARG ;;
        r) ROUNDS=$OPTARG ;;
        w) WINDOW=$OPTARG ;;
        o) OUT=$OPTARG ;;
        L) MAX_LOAD=$OPTARG ;;
        h | *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    esac
done
shift $((OPTIND - 1))
(($# == 0)) || die "unexpected argument $1 (see -h)"
for v in "$DEVICES" "$PACKETS" "$ROUNDS" "$WINDOW" "$SECONDS_MAX"; do
    [[ $v =~ ^[0-9]+$ ]] || die "options take whole numbers (got '$v')"
done
((DEVICES >= 1 && DEVICES <= 4096)) || die "-n: 1 to 4,096 devices"
((DEVICES * PACKETS <= 4000000)) || die "-n × -k: at most 4,000,000 packets (5.7 GB held by the generator)"
[[ $EUID -eq 0 ]] || die "needs root (network namespaces, TUN devices)"
[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing"
for tool in ip jq curl unshare nsenter timeout awk; do
    command -v "$tool" >/dev/null || die "missing $tool"
done

OUT=${OUT:-/tmp/arcd-flood-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/logs"
OUT=$(realpath "$OUT")
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK=$(mktemp -d /tmp/arcfl.XXXXXX)
chmod 700 "$WORK"
ln -sfn "$OUT/logs" "$WORK/logs"

# Copies of the binaries, so a rebuild by someone else cannot swap them mid-run.
if [[ -z ${DP_ARCD_BIN:-} || -z ${DP_STORM_BIN:-} ]]; then
    log "cargo build --release --bin arcd --example storm (in $REPO_DIR)"
    (cd "$REPO_DIR" && timeout 1800 cargo build --release --bin arcd --example storm) || die "cargo build --release failed"
fi
cp "${DP_STORM_BIN:-$REPO_DIR/target/release/examples/storm}" "$WORK/storm"
cp "${DP_ARCD_BIN:-$REPO_DIR/target/release/arcd}" "$WORK/arcd"
STORM=$WORK/storm
ARCD=$WORK/arcd
ARCD_REV="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo ?)"
dirty=$(git -C "$REPO_DIR" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)
((dirty == 0)) || ARCD_REV+=" + $dirty modified file(s) in src/Cargo.*"

if [[ -n $MAX_LOAD ]]; then
    for ((i = 0; i < 90; i++)); do
        awk -v l="$(loadavg1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l < m) }' && break
        ((i % 6 == 0)) && log "waiting for the 1-minute load average ($(loadavg1)) to fall below $MAX_LOAD"
        sleep 10
    done
fi

{
    echo "# $(date -Is) host=$(hostname) kernel=$(uname -r) cpus=$(nproc) devices=$DEVICES packets_per_device=$PACKETS packet_len=$PACKET_LEN seconds_max=$SECONDS_MAX window=$WINDOW rounds=$ROUNDS"
    echo "# command: $0 $ORIG_ARGS"
    echo "# uptime at start: $(uptime)"
    echo "# cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "# arcd: $ARCD_REV; configurations: w1 = [dataplane] workers = 1, default = no workers key (one per core: $(nproc))"
    printf 'time\tconfig\tround\tdevices\tsent\telapsed_s\tserver_cpu_s\tgenerator_cpu_s\tmachine_busy_cores\tmeasured_s\ttun_rx_bytes\twindow_full\tpresumed_lost\tarcd_rx_packets\tarcd_rx_bytes\tsrv_rcvbuf_drops\tsrv_udp_noports\tload1\tarcd_threads_cpu_s\n'
} >"$OUT/results.tsv"
grep '^#' "$OUT/results.tsv" >&2

setup_namespaces
private_wireguard_dir arcfl-wireguard || die "no private mount namespace with a tmpfs on $UAPI_DIR"
ARCD_DATA=$WORK/arcd-data
mkdir -p "$ARCD_DATA"
metrics_toml="[metrics]
enabled = true
listen = \"$SRV_IP:$METRICS_PORT\""
write_arcd_config "$WORK/arcd-default.toml" "$metrics_toml"
write_arcd_config "$WORK/arcd-w1.toml" "$metrics_toml

[dataplane]
workers = 1"
start_arcd "$WORK/arcd-default.toml"
provision_sims "$DEVICES" "$WORK/devices"
stop_server

for ((round = 1; round <= ROUNDS; round++)); do
    order=("${CONFIGS[@]}")
    ((round % 2 == 0)) && order=("${CONFIGS[1]}" "${CONFIGS[0]}")
    log "round $round/$ROUNDS (order: ${order[*]}; load $(loadavg1))"
    for cfg in "${order[@]}"; do
        flood "$cfg" "$round"
    done
done

echo "# uptime at end: $(uptime)" >>"$OUT/results.tsv"
summary "$OUT" | tee "$OUT/summary.md"
log "results in $OUT"
