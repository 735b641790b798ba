# cluster.sh — what scripts/e2e/multinode.sh and pg-failover.sh share: a lab LAN of network
# namespaces, PostgreSQL and arcd nodes in them (started by the provisioning scripts the Vagrant
# VMs run), devices, API calls, output and the cleanup. Sourced, not run.
# shellcheck shell=bash disable=SC2034 # the constants are for the scripts that source this file
#
# The LAN: namespace <p>lan holds a bridge; every host (database, arcd node, device) is a
# namespace <p>NAME with one veth "eth0" on that bridge and an address of 10.98.0.0/24. No
# namespace has a default route or a link to the host: no packet leaves them. The caller sets
# E2E_NAME (for messages) and NS_PREFIX before sourcing, then calls cluster_init.

LAN_NET=10.98.0.0/24
ADDR_PG=10.98.0.2 ADDR_PG2=10.98.0.3
ADDR_API=10.98.0.10 ADDR_TOKYO=10.98.0.11 ADDR_FRANKFURT=10.98.0.12
PG_PORT_LAB=5432
API_PORT=8443
PORT_TOKYO=11010 PORT_FRANKFURT=11011
RP_TOKYO=ap-northeast-1 RP_FRANKFURT=eu-central-1
UAPI_TOKYO=arc-apne1 UAPI_FRANKFURT=arc-euc1 # control socket names arcd derives from the ids
PLATFORM_ADDR=100.127.100.127
METRICS_URL=http://127.0.0.1:9469/metrics # every node's metrics listener, on its own loopback
GLOBAL_HOST=g.api.arcd-lab.test           # matches [coverage] global_hosts' default g.api.*
UAPI_DIR=/var/run/wireguard
MTU=1420

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
PROV=$REPO_DIR/scripts/provision
# shellcheck source=scripts/lib/procs.sh
source "$REPO_DIR/scripts/lib/procs.sh"
# shellcheck source=scripts/lib/links.sh
source "$REPO_DIR/scripts/lib/links.sh"

T_START=$(date +%s)
WORK="" MNT_HOLDER="" CURRENT_STAGE=start
PIDS=() PIDFILES=() NAMESPACES=() PG_PIDFILES=() FIG_KEYS=()
declare -A FIG=() HOST_ADDR=()

log() { printf '[%s] %s\n' "$E2E_NAME" "$*"; }
stage() {
    CURRENT_STAGE=$*
    printf '\n---- %s (%d s) ----\n' "$*" "$(($(date +%s) - T_START))"
}
figure() {
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
now_ms() {
    local t=${EPOCHREALTIME/[.,]/}
    echo $((10#$t / 1000))
}

show_logs() {
    [[ -n $WORK && -d $WORK ]] || return 0
    local f
    for f in "$WORK"/*.log "$WORK"/pg-*/server.log; do
        [[ -s $f ]] || continue
        echo "==== tail of ${f#"$WORK"/} ===="
        tail -n 25 "$f" | sed 's/\x1b\[[0-9;]*m//g' || true
    done
    echo "==== end of logs ===="
}

# ----------------------------------------------------------------- cleanup --
# arcd nodes, devices and pings by recorded PID; each PostgreSQL by its postmaster's PID (SIGINT:
# fast shutdown, then SIGKILL to it and its children); then the namespaces and WORK.
cleanup() {
    local rc=$? ns pid left
    set +e
    trap - EXIT INT TERM
    exec 1>&3 2>&4
    stop_recorded
    # The PID files postgres.sh wrote, and the servers' own (a start cut short writes no file).
    for entry in ${PG_PIDFILES[@]+"${PG_PIDFILES[@]}"} ${WORK:+"$WORK"/pg-*/data/postmaster.pid}; do
        pid=$(head -n 1 "$entry" 2>/dev/null) && [[ $pid =~ ^[0-9]+$ ]] && pg_kill "$pid" INT
    done
    wait 2>/dev/null
    for ns in ${NAMESPACES[@]+"${NAMESPACES[@]}"}; do
        [[ -e /run/netns/$ns ]] || continue
        left=""
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            left+="$pid($(cat "/proc/$pid/comm" 2>/dev/null)) "
        done
        [[ -z $left ]] || log "warning: processes not started by this script still in $ns: $left"
        ip netns del "$ns" 2>/dev/null || log "warning: could not delete namespace $ns"
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${E2E_KEEP_WORK:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    echo
    echo "==== $E2E_NAME summary ===="
    for k in ${FIG_KEYS[@]+"${FIG_KEYS[@]}"}; do printf '%-52s %s\n' "$k" "${FIG[$k]}"; done
    printf '%-52s %s\n' "total runtime" "$(($(date +%s) - T_START)) s"
    if ((rc == 0)); then
        echo "RESULT: all checks passed"
    else
        echo "RESULT: FAILED (exit $rc) in stage: $CURRENT_STAGE"
    fi
    exit "$rc"
}

# pg_kill PID SIG: SIG to a postmaster we started (comm postgres), up to 10 s for it to go, then
# SIGKILL to it and to its children (by PID).
pg_kill() {
    local pid=$1 sig=$2 kids i
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == postgres ]] || return 0
    kids=$(ps -o pid= --ppid "$pid" 2>/dev/null | tr '\n' ' ')
    if [[ $sig == KILL ]]; then
        # A machine that dies: the server and every backend at once.
        # shellcheck disable=SC2086 # a list of PIDs
        kill -KILL "$pid" $kids 2>/dev/null
        return 0
    fi
    kill "-$sig" "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == postgres ]] || break
        sleep 0.1
    done
    # shellcheck disable=SC2086 # a list of PIDs
    kill -KILL "$pid" $kids 2>/dev/null || true
}

# -------------------------------------------------------------- namespaces --
cluster_init() {
    [[ $EUID -eq 0 ]] || { echo "$E2E_NAME: needs root (network namespaces, TUN devices)" >&2; exit 1; }
    local tool
    for tool in ip wg wireguard-go jq curl ping timeout unshare nsenter ss psql runuser iperf3 ps; do
        command -v "$tool" >/dev/null || {
            echo "$E2E_NAME: missing $tool (apt-get install --no-install-recommends iproute2 wireguard-tools wireguard-go jq curl iputils-ping postgresql-15 iperf3 procps)" >&2
            exit 1
        }
    done
    [[ -x /usr/lib/postgresql/15/bin/pg_ctl ]] || { echo "$E2E_NAME: missing postgresql-15" >&2; exit 1; }
    [[ -c /dev/net/tun ]] || { echo "$E2E_NAME: /dev/net/tun is missing" >&2; exit 1; }
    exec 3>&1 4>&2
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    ARCD=${ARCD_BIN:-}
    [[ -z $ARCD ]] || ARCD=$(realpath -m -- "$ARCD")
    unset ARCD_BIN
    WORK=$(mktemp -d "/tmp/$E2E_NAME.XXXXXX")
    # The database servers run as user postgres and need to pass through to their directories.
    chmod 711 "$WORK"
    cd "$REPO_DIR" || exit 1
    arcd_env_unset_list
}

# arcd reads every ARCD_* variable as configuration: it is started with none of ours.
arcd_env_unset_list() {
    local v
    ARCD_ENV_UNSET=()
    while read -r v; do [[ -n $v ]] && ARCD_ENV_UNSET+=(-u "$v"); done < <(compgen -e | grep '^ARCD_' || true)
}

build_arcd() {
    stage "arcd binary (scripts/provision/build-arcd.sh)"
    if [[ -z $ARCD ]]; then
        ARCD=$(timeout 1800 "$PROV/build-arcd.sh" --src "$REPO_DIR") || die "build-arcd.sh failed"
    else
        ARCD=$("$PROV/build-arcd.sh" --prebuilt "$ARCD") || die "build-arcd.sh --prebuilt $ARCD failed"
    fi
    log "arcd: $ARCD"
}

ns_of() { echo "${NS_PREFIX}$1"; }

# lan_up HOST=ADDR...: the bridge namespace and one namespace per host on it.
lan_up() {
    local lan entry host addr ns
    lan=$(ns_of lan)
    ip netns add "$lan"
    NAMESPACES+=("$lan")
    ip -n "$lan" link add br0 type bridge
    ip -n "$lan" link set br0 up
    for entry in "$@"; do
        host=${entry%%=*} addr=${entry#*=}
        ns=$(ns_of "$host")
        ip netns add "$ns"
        NAMESPACES+=("$ns")
        ip -n "$ns" link set lo up
        ip -n "$lan" link add "h-$host" type veth peer name eth0 netns "$ns"
        ip -n "$lan" link set "h-$host" master br0 up
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set eth0 up
        HOST_ADDR[$host]=$addr
    done
    private_wireguard_dir "${NS_PREFIX}wg" || die "no private mount namespace with a tmpfs on $UAPI_DIR"
    local first=${1%%=*}
    for entry in "${@:2}"; do
        wait_for 5 nsx "$first" ping -n -c 1 -W 1 "${entry#*=}" ||
            fail "LAN $first -> $entry" "no reply over the bridge"
    done
    pass "LAN $LAN_NET in namespaces ${NS_PREFIX}*" "$*"
}

# nsx HOST cmd...: run cmd in HOST's network namespace, inside our mount namespace.
nsx() {
    local ns=$1
    shift
    [[ $ns == "$NS_PREFIX"* ]] || ns=$(ns_of "$ns")
    nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$ns" "$@"
}
in_mnt() { nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" "$@"; }

# spawn HOST LOGFILE COMM cmd...: a long-running program in HOST's namespace, PID recorded.
spawn() {
    local host=$1 logf=$2 comm=$3
    shift 3
    (exec nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$(ns_of "$host")" "$@" >"$logf" 2>&1 </dev/null 3>&- 4>&-) &
    SPAWNED_PID=$!
    PIDS+=("$SPAWNED_PID:${comm:0:15}")
}

# ---------------------------------------------------------------- database --
# pg_up HOST NAME [postgres.sh options...]: scripts/provision/postgres.sh in HOST's namespace,
# listening on its LAN address, data in WORK/pg-NAME; sets PG_PID_OF[NAME].
declare -A PG_PID_OF=()
pg_up() {
    local host=$1 name=$2 pidf
    shift 2
    pidf=$WORK/pg-$name.pid
    PG_PIDFILES+=("$pidf")
    nsx "$host" "$PROV/postgres.sh" --listen "${HOST_ADDR[$host]}" --port "$PG_PORT_LAB" \
        --trust-net "$LAN_NET" --name "$name" --dir "$WORK/pg-$name" --pid-file "$pidf" "$@" 2>&1 |
        sed 's/^/    /'
    ((PIPESTATUS[0] == 0)) || fail "PostgreSQL $name starts (postgres.sh)" "output above"
    PG_PID_OF[$name]=$(<"$pidf")
}
# pg_stop_lab HOST NAME: fast shutdown (clients disconnected), waited for; pg_start_lab HOST NAME:
# the same server started again with the options it had (server.opts, scripts/lib/postgres.sh).
pg_stop_lab() {
    nsx "$1" runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$WORK/pg-$2/data" -m fast -w -t 30 stop >/dev/null ||
        fail "PostgreSQL $2 stops" "pg_ctl stop"
}
pg_start_lab() {
    local dir=$WORK/pg-$2
    nsx "$1" runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "$(<"$dir/server.opts")" start >/dev/null || fail "PostgreSQL $2 starts again" "pg_ctl start"
    head -1 "$dir/data/postmaster.pid" >"$WORK/pg-$2.pid"
    PG_PID_OF[$2]=$(<"$WORK/pg-$2.pid")
}
# psql_at HOST SQL: one query on HOST's server from its namespace; the answer, unaligned.
psql_at() {
    nsx "$1" timeout 10 psql "host=${HOST_ADDR[$1]} port=$PG_PORT_LAB user=arcd dbname=arcd connect_timeout=3" -XAtqc "$2"
}

# ------------------------------------------------------------------- arcd --
# The [[rendezvous_points]] every node gets: Tokyo on node tokyo, Frankfurt on node frankfurt.
RP_LIST=(--rendezvous-point "$RP_TOKYO,0.0.0.0:$PORT_TOKYO,$ADDR_TOKYO:$PORT_TOKYO,10.64.0.0/16"
    --rendezvous-point "$RP_FRANKFURT,0.0.0.0:$PORT_FRANKFURT,$ADDR_FRANKFURT:$PORT_FRANKFURT,10.65.0.0/16")

# node_start NODE API(yes|no) RPS: scripts/provision/rendezvous.sh in NODE's namespace (config,
# data and log in WORK/NODE*), arcd in the background, its PID in NODE_PID[NODE]. Again after a
# kill: the same config and data directory.
declare -A NODE_PID=()
node_start() {
    local node=$1 api=$2 rps=$3 pidf t0
    pidf=$WORK/$node.pid
    [[ " ${PIDFILES[*]} " == *" $pidf:"* ]] || PIDFILES+=("$pidf:$(basename "$ARCD")")
    t0=$(now_ms)
    nsx "$node" env "${ARCD_ENV_UNSET[@]}" "$PROV/rendezvous.sh" --arcd "$ARCD" \
        --config "$WORK/$node.toml" --data-dir "$WORK/$node-data" \
        --api-listen "${HOST_ADDR[$node]}:$API_PORT" --api-tls yes --api-hostname "${HOST_ADDR[$node]}" \
        "${RP_LIST[@]}" --store-url "$STORE_URL" --node-api "$api" --node-rendezvous-points "$rps" \
        --log-level "${E2E_LOG_LEVEL:-info}" --metrics-listen 127.0.0.1:9469 \
        --pid-file "$pidf" --log-file "$WORK/$node.log" 2>&1 | sed 's/^/    /'
    ((PIPESTATUS[0] == 0)) || fail "arcd node $node starts (rendezvous.sh)" "output above"
    NODE_PID[$node]=$(<"$pidf")
    [[ $(cat "/proc/${NODE_PID[$node]}/comm" 2>/dev/null) == "$(basename "$ARCD" | cut -c1-15)" ]] ||
        fail "arcd node $node starts" "PID ${NODE_PID[$node]} is not a running arcd"
    figure "node $node: start to ready" "$(($(now_ms) - t0)) ms"
}

# node_kill9 NODE: SIGKILL, then wait until the PID is gone.
node_kill9() {
    local pid=${NODE_PID[$1]}
    proc_is_ours "$pid" "$(basename "$ARCD" | cut -c1-15)" || fail "kill -9 $1" "PID $pid is not our arcd"
    kill -KILL "$pid"
    wait_for 10 eval "! [[ -e /proc/$pid/stat ]] || grep -q ') Z' /proc/$pid/stat" || fail "kill -9 $1" "PID $pid still there"
}

# -------------------------------------------------------------------- API --
# api METHOD PATH [BODY]: the API of node api, from its namespace; body on stdout; status 1 on a
# non-2xx answer (then API_STATUS and API_OUT, default WORK/api-last.json, tell what came back).
# API_HOST=NAME sends that Host header (coverage).
API_KEY="" API_TOKEN="" API_HOST="" API_STATUS=""
api() {
    local method=$1 path=$2 body=${3-} out args
    out=${API_OUT:-$WORK/api-last.json}
    args=(-sS -m 10 -X "$method" -o "$out" -w '%{http_code}' -H 'Accept: application/json'
        --cacert "$WORK/api-data/tls-cert.pem")
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
    [[ -n $API_KEY ]] && args+=(-H "X-Soracom-API-Key: $API_KEY" -H "X-Soracom-Token: $API_TOKEN")
    [[ -n $API_HOST ]] && args+=(-H "Host: $API_HOST")
    API_STATUS=$(nsx api timeout 15 curl "${args[@]}" "https://$ADDR_API:$API_PORT$path" 2>"$out.err") || API_STATUS=${API_STATUS:-000}
    if [[ $API_STATUS != 2?? ]]; then
        echo "API $method $path -> HTTP $API_STATUS: $(head -c 300 "$out" 2>/dev/null) $(head -c 200 "$out.err")" >&2
        return 1
    fi
    cat "$out"
}

api_login() {
    local creds=$WORK/api-data/root-credentials.json auth
    [[ -s $creds ]] || fail "root credentials" "node api wrote no $creds (it starts first and makes the root operator)"
    auth=$(api POST /v1/auth "$(jq -c '{authKeyId, authKey}' "$creds")") || fail "POST /v1/auth on node api" "see above"
    API_KEY=$(jq -r '.apiKey // empty' <<<"$auth")
    API_TOKEN=$(jq -r '.token // empty' <<<"$auth")
    [[ -n $API_KEY && -n $API_TOKEN ]] || fail "POST /v1/auth" "no apiKey/token"
    pass "POST /v1/auth on node api with its root credentials"
}

# create_sim [HOST_HEADER]: createSim on node api; the Sim's JSON on stdout.
create_sim() {
    API_HOST=${1:-} api POST /v1/sims '{"type":"virtual","subscription":"planArc01"}'
}
