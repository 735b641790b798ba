# storm-common.sh — what storm.sh and flood.sh share: two network namespaces joined by one veth,
# arcd in the server one with a TUN on the device pool, the storm generator in the client one,
# every process recorded by PID and stopped by PID. Sourced, not run.
#
#   ┌──── netns <tag>-<pid>-srv ─────────┐   one veth   ┌──── netns <tag>-<pid>-cli ─────────┐
#   │ the server on UDP 51820,           │──────────────│ the storm generator: one UDP       │
#   │ TUN 10.64.0.1/14;                  │ 10.216.0.1/30│ socket per device, from            │
#   │ route 10.220.0.0/14 via 10.216.0.2 │ 10.216.0.2/30│ 10.220.0.0/14 (a local route: any  │
#   └────────────────────────────────────┘              │ address of it can be bound)        │
#                                                       └────────────────────────────────────┘
# Neighbour entries on both ends of the veth are permanent, so no ARP resolution queue drops the
# first packets. Control sockets live on a private tmpfs in a mount namespace of the run.
#
# The sourcing script sets BENCH_NAME (its file name, for logs and stale namespaces) and NS_TAG
# (the namespaces' prefix) before sourcing, and the binaries ARCD and STORM before using them.
# shellcheck shell=bash
# shellcheck disable=SC2034 # settings used by the sourcing scripts

RUN_ID=$$
NS_S=${NS_TAG:?}-${RUN_ID}-srv
NS_C=${NS_TAG}-${RUN_ID}-cli
WG_PORT=51820
API_PORT=8443
METRICS_PORT=9469
MTU=1420
POOL=10.64.0.0/14
TUN_IP=10.64.0.1
TUN_NAME=sta
SRV_IP=10.216.0.1
CLI_IP=10.216.0.2
SOURCE_NET=10.220.0.0/14
UAPI_DIR=/var/run/wireguard

WORK=""
MNT_HOLDER=""
PIDS=()
SRV_PID=""

log() { printf '[%s %(%T)T] %s\n' "${BENCH_NAME:?}" -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

cleanup() {
    local rc=$?
    set +eu
    trap - EXIT INT TERM
    stop_pids "${PIDS[@]}"
    wait 2>/dev/null
    local ns pid left
    for ns in "$NS_S" "$NS_C"; do
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

# Namespaces left by a run of this script that was killed with SIGKILL (a running one's are kept).
cleanup_stale() {
    local ns pid owner
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NS_TAG-[0-9]*-" || true); do
        owner=${ns#"$NS_TAG"-}
        owner=${owner%%-*}
        if [[ $(cat "/proc/$owner/comm" 2>/dev/null) == "$BENCH_NAME" ]]; then
            log "$ns belongs to the running $BENCH_NAME $owner; left alone"
            continue
        fi
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            case $(cat "/proc/$pid/comm" 2>/dev/null) in
                arcd | wireguard-go | gotatun | storm) log "killing $pid ($(cat "/proc/$pid/comm")) in $ns"; kill -TERM "$pid" ;;
            esac
        done
        sleep 0.5
        ip netns del "$ns" && log "deleted $ns"
    done
}

in_mnt() { nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" "$@"; }
nsx() { local ns=$1; shift; nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$ns" "$@"; }

# spawn NS LOGFILE COMM cmd...: a long-running program in namespace NS (and our mount namespace),
# recorded as "PID:COMM"; nsenter and `ip netns exec` exec() it, so $! is the program itself.
spawn() {
    local ns=$1 logf=$2 comm=$3
    shift 3
    (exec nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$ns" "$@" >"$logf" 2>&1 </dev/null) &
    SPAWNED_PID=$!
    PIDS+=("$SPAWNED_PID:${comm:0:15}")
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

sys_ticks() { awk '/^cpu /{ print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9; exit }' /proc/stat; }
loadavg1() { cut -d' ' -f1 /proc/loadavg; }
# udp_counter NAME: a counter of the Udp: lines of the server namespace's /proc/net/snmp
udp_counter() {
    # shellcheck disable=SC2016 # awk's own $fields
    ip netns exec "$NS_S" awk -v name="$1" '/^Udp:/{ if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else { print $c[name]; exit } }' /proc/net/snmp 2>/dev/null || echo 0
}
rcvbuf_errors() { udp_counter RcvbufErrors; } # UDP receive-buffer drops in the server namespace

setup_namespaces() {
    local srv_mac cli_mac
    ip netns add "$NS_S"
    ip netns add "$NS_C"
    ip -n "$NS_S" link set lo up
    ip -n "$NS_C" link set lo up
    ip -n "$NS_S" link add stvs type veth peer name stvc netns "$NS_C"
    ip -n "$NS_S" addr add "$SRV_IP/30" dev stvs
    ip -n "$NS_C" addr add "$CLI_IP/30" dev stvc
    ip -n "$NS_S" link set stvs up
    ip -n "$NS_C" link set stvc up
    # Every address of the source network is local in the client namespace (a local route: the
    # generator binds any of them) and routed there from the server's.
    ip -n "$NS_C" route add local "$SOURCE_NET" dev lo
    ip -n "$NS_S" route add "$SOURCE_NET" via "$CLI_IP"
    srv_mac=$(ip -n "$NS_S" -j link show stvs | jq -r '.[0].address')
    cli_mac=$(ip -n "$NS_C" -j link show stvc | jq -r '.[0].address')
    ip -n "$NS_C" neigh replace "$SRV_IP" lladdr "$srv_mac" dev stvc nud permanent
    ip -n "$NS_S" neigh replace "$CLI_IP" lladdr "$cli_mac" dev stvs nud permanent
}

# write_arcd_config FILE [EXTRA_TOML]: arcd on the namespaces' addresses, data in $ARCD_DATA.
write_arcd_config() {
    cat >"$1" <<EOF
data_dir = "$ARCD_DATA"

[api]
listen = "$SRV_IP:$API_PORT"
tls = false

[tun]
enabled = true
name = "$TUN_NAME"
mtu = $MTU

[[rendezvous_points]]
id = "ap-northeast-1"
listen = "0.0.0.0:$WG_PORT"
endpoint = "$SRV_IP:$WG_PORT"
pool = "$POOL"
allowed_ips = ["$POOL", "100.127.0.0/16"]

[sims]
max_per_operator = 1000000000

[log]
level = "warn"
${2:-}
EOF
}

# start_arcd CONFIG: arcd in the server namespace, until its API answers (which it does once the
# data plane has loaded every session: server::start's order) and its TUN exists.
start_arcd() {
    local config=$1 unset_env=() v i
    while read -r v; do unset_env+=(-u "$v"); done < <(compgen -e | grep '^ARCD_' || true)
    spawn "$NS_S" "$WORK/logs/server-arcd.log" arcd env "${unset_env[@]}" "$ARCD" --config "$config" serve
    SRV_PID=$SPAWNED_PID
    for ((i = 0; i < 1200; i++)); do
        kill -0 "$SRV_PID" 2>/dev/null || die "arcd exited at start: $(tail -5 "$WORK/logs/server-arcd.log")"
        if [[ -s $ARCD_DATA/root-credentials.json ]] &&
            nsx "$NS_S" timeout 3 curl -s -o /dev/null -m 2 "http://$SRV_IP:$API_PORT/openapi.yaml"; then
            break
        fi
        sleep 0.1
    done
    ((i < 1200)) || die "arcd: no API after 120 s"
    wait_comm "$SRV_PID" arcd || die "arcd: /proc/$SRV_PID/comm is not arcd"
    wait_for 10 ip -n "$NS_S" link show "$TUN_NAME" || die "arcd: no TUN $TUN_NAME"
}

# provision_sims COUNT FILE: COUNT virtual SIMs through the running arcd's API (storm provision),
# one device each, into FILE.
provision_sims() {
    local count=$1 file=$2 t0=$EPOCHREALTIME
    log "arcd: creating $count SIMs through the API (storm provision)"
    nsx "$NS_C" "$STORM" provision --api "http://$SRV_IP:$API_PORT" \
        --credentials "$ARCD_DATA/root-credentials.json" --count "$count" \
        --devices "$file" >"$WORK/logs/provision.log" 2>&1 ||
        die "storm provision failed: $(tail -3 "$WORK/logs/provision.log")"
    log "arcd: $(wc -l <"$file") SIMs in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s"
}

stop_server() {
    [[ -n $SRV_PID ]] || return 0
    stop_pids "$SRV_PID:$(cat "/proc/$SRV_PID/comm" 2>/dev/null || echo gone)"
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
}
