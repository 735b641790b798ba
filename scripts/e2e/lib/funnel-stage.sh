# funnel-stage.sh — the stage shared by scripts/e2e/funnel.sh and scripts/bench/funnel.sh.
# Sourced, not run.
# shellcheck shell=bash disable=SC2034 # the variables are the callers'
#
#   ┌── netns <tag>-<pid>-dev ──┐ veth ┌── netns <tag>-<pid>-rv ──────┐ veth ┌── netns <tag>-<pid>-dst ──┐
#   │ wireguard-go: a virtual   │──────│ arcd (rendezvous.sh): API    │──────│ Mosquitto 10.97.2.2:1883  │
#   │ subscriber added to an    │      │ https://10.97.0.1:8443, UDP  │      │ (one login), funnel-sink  │
#   │ imported IoT SIM          │      │ 11010, TUN with 100.127.x.y  │      │ .py 10.97.2.2:8080        │
#   └───────────────────────────┘      └──────────────────────────────┘      └───────────────────────────┘
#
# The caller sets TAG, sources scripts/provision/lib.sh, scripts/lib/procs.sh and links.sh, and
# traps EXIT with funnel_stage_cleanup. funnel_stage_up ARCD_BIN LOG_LEVEL builds it all; then
# API_KEY/API_TOKEN are set, `api` calls the API from rv, `nsx NS cmd` runs in a namespace,
# IOT_ICCID/IOT_IMSI name the SIM, VIRTUAL_IMSI its tunnel subscriber. Everything started is
# recorded by PID (PIDS, PIDFILES) and stopped by PID; the namespaces are deleted.

NS_RV="$TAG-$$-rv"
NS_DEV="$TAG-$$-dev"
NS_DST="$TAG-$$-dst"
RV_ADDR=10.97.0.1
RV_DEV=10.97.1.1 DEV_RV=10.97.1.2
RV_DST=10.97.2.1 DST_ADDR=10.97.2.2
API_URL="https://$RV_ADDR:8443"
METRICS_URL=http://127.0.0.1:9470/metrics
SINK_URL="http://$DST_ADDR:8080"
FUNNEL_ADDR=100.127.65.43
UNIFIED_ADDR=100.127.69.42
MQTT_USER=funnel
MQTT_PASSWORD="e2e-$RANDOM-$RANDOM"
IOT_ICCID=8981100000000000058
IOT_IMSI=440101234567892
WORK=""
MNT_HOLDER=""
PIDS=()
PIDFILES=()
API_KEY="" API_TOKEN=""

log() { printf '[%s %(%T)T] %s\n' "$TAG" -1 "$*" >&2; }
die() {
    log "ERROR: $*"
    [[ -n $WORK && -s $WORK/arcd.log ]] && tail -n 30 "$WORK/arcd.log" >&2
    exit 1
}

funnel_stage_cleanup() {
    local rc=$?
    set +eu
    trap - EXIT INT TERM
    stop_recorded
    wait 2>/dev/null
    for ns in "$NS_DEV" "$NS_DST" "$NS_RV"; do
        [[ -e /run/netns/$ns ]] && ip netns del "$ns"
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${FN_KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    ((rc == 0)) || log "exit status $rc"
    exit "$rc"
}

nsx() {
    local ns=$1
    shift
    nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$ns" "$@"
}

# bg_in NS COMM cmd...: cmd in the background in NS, recorded as PID:COMM. No function or
# subshell in between: nsenter and `ip netns exec` exec, so $! becomes the program itself.
bg_in() {
    local ns=$1 comm=$2
    shift 2
    nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$ns" "$@" &
    LAST_BG=$!
    PIDS+=("$LAST_BG:$comm")
}

api() { # METHOD PATH [BODY]: body on stdout, fails on a non-2xx answer
    local method=$1 path=$2 body=${3-}
    local args=(-sS -f -m 30 -X "$method" --cacert "$WORK/data/tls-cert.pem" -H 'Accept: application/json')
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
    [[ -n $API_KEY ]] && args+=(-H "X-Soracom-API-Key: $API_KEY" -H "X-Soracom-Token: $API_TOKEN")
    nsx "$NS_RV" curl "${args[@]}" "$API_URL$path"
}

# api_status METHOD PATH BODY: the HTTP status only (the body goes to $WORK/last-answer.json).
api_status() {
    nsx "$NS_RV" curl -sS -m 30 -o "$WORK/last-answer.json" -w '%{http_code}' -X "$1" \
        --cacert "$WORK/data/tls-cert.pem" -H "X-Soracom-API-Key: $API_KEY" \
        -H "X-Soracom-Token: $API_TOKEN" -H 'Content-Type: application/json' \
        --data-binary "$3" "$API_URL$2"
}

# metric NAME{LABELS}: its value in arcd's metrics (0 when absent).
metric() {
    nsx "$NS_RV" curl -fsS -m 5 "$METRICS_URL" | awk -v m="$1" '$1 == m {print $2; found=1} END {if (!found) print 0}'
}

funnel_stage_up() {
    local arcd=$1 level=$2
    [[ $EUID -eq 0 ]] || die "needs root"
    local tool
    for tool in ip wg wireguard-go jq curl nc unshare nsenter python3 mosquitto_passwd mosquitto_sub; do
        command -v "$tool" >/dev/null || die "missing $tool (scripts/test.sh installs its APT_PACKAGES)"
    done
    MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    [[ -x $MOSQUITTO ]] || die "missing mosquitto (apt-get install mosquitto mosquitto-clients)"
    ARCD_ENV_UNSET=()
    local v
    while read -r v; do ARCD_ENV_UNSET+=(-u "$v"); done < <(compgen -e | grep '^ARCD_' || true)

    WORK=$(mktemp -d "/tmp/$TAG.XXXXXX")
    chmod 700 "$WORK"
    local ns
    for ns in "$NS_RV" "$NS_DEV" "$NS_DST"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    private_wireguard_dir "$TAG" || die "no private mount namespace with a tmpfs on /var/run/wireguard"
    ip -n "$NS_RV" addr add "$RV_ADDR/32" dev lo
    device_link "$NS_RV" v-dev "$RV_DEV" "$NS_DEV" "$DEV_RV" "$RV_ADDR"
    device_link "$NS_RV" v-dst "$RV_DST" "$NS_DST" "$DST_ADDR" "$RV_ADDR"

    log "Mosquitto and funnel-sink.py in $NS_DST"
    mosquitto_passwd -b -c "$WORK/mosquitto.passwd" "$MQTT_USER" "$MQTT_PASSWORD" >/dev/null 2>&1 ||
        die "mosquitto_passwd failed"
    cat >"$WORK/mosquitto.conf" <<CONF
user root
listener 1883 $DST_ADDR
allow_anonymous false
password_file $WORK/mosquitto.passwd
persistence false
max_queued_messages 1000000
log_dest file $WORK/mosquitto.log
log_type error
log_type warning
log_type notice
log_type subscribe
CONF
    bg_in "$NS_DST" mosquitto "$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.out" 2>&1
    bg_in "$NS_DST" python3 python3 "$REPO_DIR/scripts/e2e/funnel-sink.py" --listen "$DST_ADDR:8080" \
        --log "$WORK/sink.jsonl" >"$WORK/sink.out" 2>&1
    wait_for 10 nsx "$NS_DST" nc -z "$DST_ADDR" 1883 || die "Mosquitto does not listen: $(cat "$WORK/mosquitto.out" "$WORK/mosquitto.log" 2>/dev/null | tail -n 5)"
    wait_for 10 nsx "$NS_DST" nc -z "$DST_ADDR" 8080 || die "funnel-sink.py does not listen: $(tail -n 5 "$WORK/sink.out")"

    log "arcd (rendezvous.sh) in $NS_RV"
    PIDFILES+=("$WORK/arcd.pid:$(basename "$arcd" | cut -c1-15)")
    nsx "$NS_RV" env "${ARCD_ENV_UNSET[@]}" "$REPO_DIR/scripts/provision/rendezvous.sh" --arcd "$arcd" \
        --config "$WORK/arcd.toml" --data-dir "$WORK/data" --api-listen "$RV_ADDR:8443" \
        --api-hostname "$RV_ADDR" --rp-endpoint "$RV_ADDR:11010" --log-level "$level" \
        --metrics-listen 127.0.0.1:9470 --pid-file "$WORK/arcd.pid" --log-file "$WORK/arcd.log" \
        >"$WORK/rendezvous.out" 2>&1 || die "rendezvous.sh failed: $(tail -n 5 "$WORK/rendezvous.out")"
    ARCD_PID=$(cat "$WORK/arcd.pid")

    local auth
    auth=$(api POST /v1/auth "$(jq -c '{authKeyId, authKey}' "$WORK/data/root-credentials.json")")
    API_KEY=$(jq -r .apiKey <<<"$auth")
    API_TOKEN=$(jq -r .token <<<"$auth")
    api POST /v1/arcd/iot_sims "$(jq -nc --arg iccid "$IOT_ICCID" --arg imsi "$IOT_IMSI" \
        '[{iccid: $iccid, imsi: $imsi, subscription: "plan-D"}]')" >/dev/null || die "IoT SIM import failed"

    log "device (device.sh --add-subscription $IOT_ICCID) in $NS_DEV"
    PIDFILES+=("$WORK/wireguard-go.pid:wireguard-go")
    nsx "$NS_DEV" "$REPO_DIR/scripts/provision/device.sh" --api "$API_URL" \
        --auth "$WORK/data/root-credentials.json" --cacert "$WORK/data/tls-cert.pem" \
        --add-subscription "$IOT_ICCID" --interface wgf0 --pid-file "$WORK/wireguard-go.pid" \
        --log-file "$WORK/wireguard-go.log" --check-ping "$FUNNEL_ADDR" --check-timeout 15 \
        "$WORK/dev" >"$WORK/device.out" 2>&1 || die "device.sh failed: $(tail -n 5 "$WORK/device.out")"
    [[ $(cat "$WORK/dev/sim-id") == "$IOT_ICCID" ]] || die "the device's SIM is not the IoT SIM"
    # shellcheck disable=SC2016 # a jq program
    VIRTUAL_IMSI=$(jq -r '.profiles[.simId] | .primaryImsi as $p | [.subscribers | keys[] | select(. != $p)][0]' "$WORK/dev/sim.json")
    [[ $VIRTUAL_IMSI =~ ^99999[0-9]{10}$ ]] || die "no virtual subscriber on the IoT SIM: '$VIRTUAL_IMSI'"
    log "device up: virtual subscriber $VIRTUAL_IMSI on IoT SIM $IOT_ICCID (IMSI $IOT_IMSI)"
}

# subscribe_mqtt TOPIC OUT [COUNT]: mosquitto_sub (QoS 1) in the background writing one message
# per line to OUT, returning once Mosquitto has logged the subscription.
subscribe_mqtt() {
    local topic=$1 out=$2 count=${3-}
    local id="sub-$RANDOM"
    local args=(-h "$DST_ADDR" -u "$MQTT_USER" -P "$MQTT_PASSWORD" -i "$id" -q 1 -t "$topic")
    [[ -n $count ]] && args+=(-C "$count")
    bg_in "$NS_DST" mosquitto_sub mosquitto_sub "${args[@]}" >"$out" 2>"$out.err"
    SUB_PID=$LAST_BG
    wait_for 10 grep -q "$id 1 $topic" "$WORK/mosquitto.log" ||
        die "mosquitto_sub never subscribed: $(tail -n 5 "$WORK/mosquitto.log" "$out.err")"
}
