#!/usr/bin/env bash
# services.sh — throughput of arcd's in-tunnel platform services from one real device (run as
# root): Harvest Data HTTP posts (every one must be stored: the count read back through the
# official data API must equal the count sent) and metadata lookups.
#
#   services.sh [-n POSTS] [-c CONNECTIONS] [-d SECONDS] [-o FILE]
#
#   ┌──── netns arcsvb-<pid>-rv ─────────────┐  veth  ┌──── netns arcsvb-<pid>-dev ─────────┐
#   │ arcd serve (rendezvous.sh): API         │────────│ wireguard-go (device.sh), a virtual │
#   │ https://10.98.0.1:8443, UDP 11010, TUN  │        │ SIM made through the API            │
#   │ arc0 with the platform addresses        │        │ ab / wrk → 100.127.x.x via the tunnel│
#   └─────────────────────────────────────────┘        └─────────────────────────────────────┘
#
# Steps: arcd and the device are set up by the same provisioning scripts as the Vagrant VMs
# (scripts/provision/rendezvous.sh, device.sh); a group with Harvest and metadata on is made and
# the SIM put in it through the official API. Then, from the device namespace:
#   harvest   `ab -k -n POSTS -c CONNECTIONS -p body.json -T application/json
#             http://100.127.111.111/` (a fixed count, so "nothing lost" is exact); every answer
#             must be 201, then GET /v1/subscribers/{imsi}/data is paged (limit 1000) and the
#             entries counted: the figure is valid only when stored == sent.
#   metadata  `wrk -t2 -c CONNECTIONS -d SECONDS http://100.127.100.127/v1/subscriber.imsi`; every
#             answer must be 200 (wrk's non-2xx count is 0).
# Targets (issue 4): Harvest >= 2,000 posts/s with nothing lost, metadata >= 5,000 lookups/s.
# While the Harvest posts go in, the WAL's size is sampled every second; its largest value is
# reported (issue 11: under 64 MiB).
# The results are printed as a markdown table (and written to -o FILE when given).
#
# Options: -n POSTS (default 60000) -c CONNECTIONS (default 16) -d SECONDS (default 10)
# Environment (not ARCD_*, which arcd reads as configuration):
#   SB_ARCD_BIN=PATH  use this arcd binary instead of `cargo build --release --locked`
#   SB_KEEP=1         keep the scratch directory
#   SB_LOG_LEVEL=F    arcd log filter (default "info", arcd's default: one line per request)
# Needs: root, /dev/net/tun, iproute2, wireguard-go, wireguard-tools, ab (apache2-utils), wrk,
# jq, curl. Everything started is recorded by PID and stopped by PID; namespaces are deleted.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
PROV=$REPO_DIR/scripts/provision
# shellcheck source=scripts/provision/lib.sh
source "$PROV/lib.sh" # die, wait_for
# shellcheck source=scripts/lib/procs.sh
source "$REPO_DIR/scripts/lib/procs.sh" # proc_is_ours, stop_pids
# shellcheck source=scripts/lib/links.sh
source "$REPO_DIR/scripts/lib/links.sh" # device_link, private_wireguard_dir

POSTS=60000
CONNS=16
DURATION=10
OUT=""
while getopts "n:c:d:o:" opt; do
    case $opt in
    n) POSTS=$OPTARG ;;
    c) CONNS=$OPTARG ;;
    d) DURATION=$OPTARG ;;
    o) OUT=$OPTARG ;;
    *) exit 2 ;;
    esac
done

NS_RV="arcsvb-$$-rv"
NS_DEV="arcsvb-$$-dev"
RV_ADDR=10.98.0.1
RV_DEV=10.98.1.1 DEV_RV=10.98.1.2
API_URL="https://$RV_ADDR:8443"
UAPI_DIR=/var/run/wireguard
HARVEST=100.127.111.111
METADATA=100.127.100.127

WORK=""
MNT_HOLDER=""
PIDS=()
PIDFILES=()

log() { printf '[services.sh %(%T)T] %s\n' -1 "$*" >&2; }
die() {
    log "ERROR: $*"
    [[ -n $WORK && -s $WORK/arcd.log ]] && tail -n 30 "$WORK/arcd.log" >&2
    exit 1
}

cleanup() {
    local rc=$?
    set +eu
    trap - EXIT INT TERM
    stop_recorded
    wait 2>/dev/null
    for ns in "$NS_DEV" "$NS_RV"; do
        [[ -e /run/netns/$ns ]] && ip netns del "$ns"
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${SB_KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    ((rc == 0)) || log "exit status $rc"
    exit "$rc"
}

in_mnt() { nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" "$@"; }
nsx() {
    local ns=$1
    shift
    nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$ns" "$@"
}

API_KEY="" API_TOKEN=""
api() { # METHOD PATH [BODY]: body on stdout, fails on a non-2xx answer
    local method=$1 path=$2 body=${3-}
    local args=(-sS -f -m 30 -X "$method" --cacert "$WORK/data/tls-cert.pem" -H 'Accept: application/json')
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
    [[ -n $API_KEY ]] && args+=(-H "X-Soracom-API-Key: $API_KEY" -H "X-Soracom-Token: $API_TOKEN")
    nsx "$NS_RV" curl "${args[@]}" "$API_URL$path"
}

# ==================================================================== main ==
[[ $EUID -eq 0 ]] || die "needs root"
for tool in ip wg wireguard-go ab wrk jq curl unshare nsenter; do
    command -v "$tool" >/dev/null || die "missing $tool (apt-get install --no-install-recommends apache2-utils wrk wireguard-tools wireguard-go jq curl)"
done
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ARCD=${SB_ARCD_BIN:-}
if [[ -z $ARCD ]]; then
    log "cargo build --release --locked"
    ARCD=$("$PROV/build-arcd.sh" --src "$REPO_DIR") || die "build failed"
fi
ARCD=$(realpath -- "$ARCD")
ARCD_ENV_UNSET=()
while read -r v; do ARCD_ENV_UNSET+=(-u "$v"); done < <(compgen -e | grep '^ARCD_' || true)

WORK=$(mktemp -d /tmp/arcsvb.XXXXXX)
chmod 700 "$WORK"

for ns in "$NS_RV" "$NS_DEV"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
private_wireguard_dir arcsvb || die "no private mount namespace with a tmpfs on $UAPI_DIR"
ip -n "$NS_RV" addr add "$RV_ADDR/32" dev lo
device_link "$NS_RV" v-dev "$RV_DEV" "$NS_DEV" "$DEV_RV" "$RV_ADDR"

log "arcd (rendezvous.sh) in $NS_RV"
PIDFILES+=("$WORK/arcd.pid:$(basename "$ARCD" | cut -c1-15)")
nsx "$NS_RV" env "${ARCD_ENV_UNSET[@]}" "$PROV/rendezvous.sh" --arcd "$ARCD" \
    --config "$WORK/arcd.toml" --data-dir "$WORK/data" --api-listen "$RV_ADDR:8443" \
    --api-hostname "$RV_ADDR" --rp-endpoint "$RV_ADDR:11010" --log-level "${SB_LOG_LEVEL:-info}" \
    --pid-file "$WORK/arcd.pid" --log-file "$WORK/arcd.log" >"$WORK/rendezvous.out" 2>&1 ||
    die "rendezvous.sh failed: $(tail -n 5 "$WORK/rendezvous.out")"
ARCD_PID=$(cat "$WORK/arcd.pid")

log "device (device.sh) in $NS_DEV"
PIDFILES+=("$WORK/wireguard-go.pid:wireguard-go")
nsx "$NS_DEV" "$PROV/device.sh" --api "$API_URL" --auth "$WORK/data/root-credentials.json" \
    --cacert "$WORK/data/tls-cert.pem" --interface wgb0 --pid-file "$WORK/wireguard-go.pid" \
    --log-file "$WORK/wireguard-go.log" --check-ping "$METADATA" --check-timeout 15 \
    "$WORK/dev" >"$WORK/device.out" 2>&1 || die "device.sh failed: $(tail -n 5 "$WORK/device.out")"
SIM_ID=$(cat "$WORK/dev/sim-id")
IMSI=$(jq -r --arg s "$SIM_ID" '.profiles[$s].primaryImsi' "$WORK/dev/sim.json")

auth=$(api POST /v1/auth "$(jq -c '{authKeyId, authKey}' "$WORK/data/root-credentials.json")")
API_KEY=$(jq -r .apiKey <<<"$auth")
API_TOKEN=$(jq -r .token <<<"$auth")
group=$(api POST /v1/groups '{"tags":{"name":"bench"},"configuration":{"SoracomAir":{"metadata":{"enabled":true}},"SoracomHarvest":{"enabled":true}}}')
api POST "/v1/sims/$SIM_ID/set_group" "$(jq -c '{groupId}' <<<"$group")" >/dev/null
log "SIM $SIM_ID (IMSI $IMSI) in a group with Harvest and metadata on"

# ---------------------------------------------------------------- harvest --
echo '{"temperature":21.5,"humidity":40,"battery":3.7}' >"$WORK/body.json"
log "Harvest: ab -k -n $POSTS -c $CONNS"
# The WAL's size every second while the posts go in (issue 11: it must stay bounded).
(while :; do stat -c %s "$WORK/data/arcd.sqlite-wal" 2>/dev/null || echo 0; sleep 1; done) >"$WORK/wal-samples" &
WAL_SAMPLER=$!
PIDS+=("$WAL_SAMPLER:$(cat "/proc/$WAL_SAMPLER/comm")")
nsx "$NS_DEV" ab -q -k -n "$POSTS" -c "$CONNS" -p "$WORK/body.json" -T application/json \
    "http://$HARVEST/" >"$WORK/ab.txt" 2>&1 || die "ab failed: $(tail -n 5 "$WORK/ab.txt")"
kill "$WAL_SAMPLER"
wal_max_mib=$(sort -n "$WORK/wal-samples" | tail -n 1 | awk '{printf "%.1f", $1 / 1048576}')
harvest_seconds=$(awk '/^Time taken for tests:/ {printf "%.0f", $5}' "$WORK/ab.txt")
complete=$(awk '/^Complete requests:/ {print $3}' "$WORK/ab.txt")
failed=$(awk '/^Failed requests:/ {print $3}' "$WORK/ab.txt")
non2xx=$(awk '/^Non-2xx responses:/ {print $3}' "$WORK/ab.txt")
harvest_rps=$(awk '/^Requests per second:/ {print $4}' "$WORK/ab.txt")
harvest_p50=$(awk '$1 == "50%" {print $2}' "$WORK/ab.txt")
harvest_p99=$(awk '$1 == "99%" {print $2}' "$WORK/ab.txt")
[[ $complete == "$POSTS" && $failed == 0 && -z $non2xx ]] ||
    die "Harvest: $complete of $POSTS complete, $failed failed, ${non2xx:-0} not 2xx"

stored=0
key=""
while :; do
    path="/v1/subscribers/$IMSI/data?limit=1000"
    [[ -n $key ]] && path+="&last_evaluated_key=$(jq -rn --arg k "$key" '$k|@uri')"
    page=$(nsx "$NS_RV" curl -sS -f -m 30 -D "$WORK/headers" --cacert "$WORK/data/tls-cert.pem" \
        -H "X-Soracom-API-Key: $API_KEY" -H "X-Soracom-Token: $API_TOKEN" "$API_URL$path")
    stored=$((stored + $(jq length <<<"$page")))
    key=$(tr -d '\r' <"$WORK/headers" | awk -F': ' 'tolower($1) == "x-soracom-next-key" {print $2}')
    [[ -n $key ]] || break
done
[[ $stored == "$POSTS" ]] || die "Harvest: sent $POSTS, stored $stored"
log "Harvest: $harvest_rps posts/s, stored $stored of $POSTS"

# --------------------------------------------------------------- metadata --
log "metadata: wrk -t2 -c$CONNS -d${DURATION}s"
nsx "$NS_DEV" wrk -t2 -c "$CONNS" -d "${DURATION}s" --latency \
    "http://$METADATA/v1/subscriber.imsi" >"$WORK/wrk.txt" 2>&1 || die "wrk failed"
meta_rps=$(awk '/^Requests\/sec:/ {print $2}' "$WORK/wrk.txt")
meta_p50=$(awk '$1 == "50%" {print $2}' "$WORK/wrk.txt")
meta_p99=$(awk '$1 == "99%" {print $2}' "$WORK/wrk.txt")
! grep -q "Non-2xx" "$WORK/wrk.txt" || die "metadata: $(grep Non-2xx "$WORK/wrk.txt")"
answer=$(nsx "$NS_DEV" curl -sS -m 5 "http://$METADATA/v1/subscriber.imsi")
[[ $answer == "$IMSI" ]] || die "metadata answered '$answer', not $IMSI"
kill -0 "$ARCD_PID" || die "arcd died"

table=$(
    cat <<EOF
| service (one device, ${CONNS} connections, through wireguard-go) | rate | p50 | p99 | check |
|---|---|---|---|---|
| Harvest HTTP POST (ab -k -n ${POSTS}, ${harvest_seconds} s) | ${harvest_rps} posts/s | ${harvest_p50} ms | ${harvest_p99} ms | stored ${stored} = sent ${POSTS}, all 201; WAL max ${wal_max_mib} MiB |
| metadata GET /v1/subscriber.imsi (wrk ${DURATION} s) | ${meta_rps} req/s | ${meta_p50} | ${meta_p99} | all 200, answer = IMSI |
EOF
)
echo "$table"
[[ -z $OUT ]] || echo "$table" >"$OUT"
