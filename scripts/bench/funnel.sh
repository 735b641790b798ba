#!/usr/bin/env bash
# funnel.sh — Funnel's throughput through the tunnel to Mosquitto (run as root), with no loss of
# acknowledged messages (issue 17: >= 2,000 messages/s on the 2-core box).
#
#   funnel.sh [-n MESSAGES] [-c CONNECTIONS] [-w WINDOW] [-o FILE]
#
# Stage: scripts/e2e/lib/funnel-stage.sh (arcd in its namespace, one wireguard-go device running
# a virtual subscriber of an imported IoT SIM, Mosquitto with a login in a destination
# namespace). The group sends Funnel to mqtt://10.97.2.2:1883/bench/funnel with the broker's
# login from /v1/credentials. A QoS 1 mosquitto_sub is subscribed first; then
# scripts/bench/funnel-sender.py sends MESSAGES JSON lines over CONNECTIONS TCP connections to
# 100.127.65.43:23080 through the tunnel, WINDOW unanswered per connection, and records every
# seq arcd acknowledged with `200`. The run is valid only when every acknowledged seq reached the
# subscriber (duplicates, which QoS 1 allows, are counted apart). Reported: acknowledged
# messages/s at the device, and delivered messages/s (first send to last arrival at Mosquitto).
#
# Options: -n MESSAGES (default 60000) -c CONNECTIONS (8) -w WINDOW (16) -o FILE (the table)
# Environment: FN_ARCD_BIN=PATH (else `cargo build --release --locked`), FN_KEEP=1,
# FN_LOG_LEVEL=F (arcd's log filter, default info: one line per message, as in production).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source=scripts/provision/lib.sh
source "$REPO_DIR/scripts/provision/lib.sh"
# shellcheck source=scripts/lib/procs.sh
source "$REPO_DIR/scripts/lib/procs.sh"
# shellcheck source=scripts/lib/links.sh
source "$REPO_DIR/scripts/lib/links.sh"
TAG=arcfnb
# shellcheck source=scripts/e2e/lib/funnel-stage.sh
source "$REPO_DIR/scripts/e2e/lib/funnel-stage.sh"

MESSAGES=60000
CONNS=8
WINDOW=16
OUT=""
while getopts "n:c:w:o:" opt; do
    case $opt in
    n) MESSAGES=$OPTARG ;;
    c) CONNS=$OPTARG ;;
    w) WINDOW=$OPTARG ;;
    o) OUT=$OPTARG ;;
    *) exit 2 ;;
    esac
done

trap funnel_stage_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ARCD=${FN_ARCD_BIN:-}
if [[ -z $ARCD ]]; then
    log "cargo build --release --locked"
    ARCD=$("$REPO_DIR/scripts/provision/build-arcd.sh" --src "$REPO_DIR") || die "build failed"
fi
ARCD=$(realpath -- "$ARCD")
funnel_stage_up "$ARCD" "${FN_LOG_LEVEL:-info}"

api POST /v1/credentials/mosquitto "$(jq -nc --arg u "$MQTT_USER" --arg p "$MQTT_PASSWORD" \
    '{type: "username-password-credentials", credentials: {username: $u, password: $p}}')" >/dev/null
group=$(api POST /v1/groups "$(jq -nc --arg url "mqtt://$DST_ADDR:1883/bench/funnel" '{
    configuration: {SoracomFunnel: {enabled: true, credentialsId: "mosquitto",
                                    destination: {provider: "mqtt", resourceUrl: $url}}}}')")
api POST "/v1/sims/$IOT_ICCID/set_group" "$(jq -c '{groupId}' <<<"$group")" >/dev/null

subscribe_mqtt bench/funnel "$WORK/received.jsonl"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "sending $MESSAGES messages over $CONNS connections (window $WINDOW); load $load_before"
started_ns=$(date +%s%N)
nsx "$NS_DEV" python3 "$SCRIPT_DIR/funnel-sender.py" --host "$FUNNEL_ADDR" -n "$MESSAGES" \
    -c "$CONNS" -w "$WINDOW" --acked "$WORK/acked.txt" >"$WORK/sender.json" ||
    die "funnel-sender.py failed"
sender=$(cat "$WORK/sender.json")
log "sender: $sender"
acked=$(jq .acked <<<"$sender")
# Everything acknowledged must arrive; wait until the subscriber has that many seqs.
received_seqs() { jq -r '.payloads.seq' "$WORK/received.jsonl" 2>/dev/null | sort -n -u >"$WORK/received.txt"; wc -l <"$WORK/received.txt"; }
deadline=$((SECONDS + 60))
last_count=-1
while :; do
    count=$(received_seqs)
    ((count >= acked)) && break
    ((SECONDS < deadline)) || break
    if ((count == last_count)); then sleep 1; else last_count=$count; sleep 0.5; fi
done
arrived_ns=$(stat -c %Y "$WORK/received.jsonl")000000000
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
lost=$(comm -23 <(sort "$WORK/acked.txt") <(sort "$WORK/received.txt") | wc -l)
lines=$(wc -l <"$WORK/received.jsonl")
duplicates=$((lines - $(wc -l <"$WORK/received.txt")))
wrong_imsi=$(jq -r --arg imsi "$IOT_IMSI" 'select(.imsi != $imsi) | .payloads.seq' "$WORK/received.jsonl" | wc -l)
seconds=$(jq .seconds <<<"$sender")
acked_rate=$(jq .acked_per_second <<<"$sender")
delivered_rate=$(awk -v n="$acked" -v s="$started_ns" -v e="$arrived_ns" 'BEGIN {d = (e - s) / 1e9; if (d < 1) d = 1; printf "%.0f", n / d}')
stats="delivered $(metric 'arcd_funnel_deliveries_total{result="delivered"}'), failed $(metric 'arcd_funnel_deliveries_total{result="failed"}'), dropped $(metric 'arcd_funnel_deliveries_total{result="dropped"}')"
kill -0 "$ARCD_PID" || die "arcd died"
((lost == 0 && wrong_imsi == 0)) || die "$lost acknowledged messages never reached Mosquitto, $wrong_imsi with another IMSI"

table=$(
    cat <<TABLE
| Funnel → Mosquitto (one wireguard-go device, TCP 23080, ${CONNS} connections × window ${WINDOW}) | value |
|---|---|
| messages sent / acknowledged (200) / refused | ${MESSAGES} / ${acked} / $(jq .refused <<<"$sender") |
| acknowledged at the device | ${acked_rate} messages/s (${seconds} s) |
| delivered to Mosquitto (first send to last arrival, 1 s resolution) | ~${delivered_rate} messages/s |
| acknowledged but lost / duplicates (QoS 1) / other IMSI | ${lost} / ${duplicates} / ${wrong_imsi} |
| arcd's counters | ${stats} |
| load average before → after | ${load_before} → ${load_after} |
TABLE
)
echo "$table"
[[ -z $OUT ]] || echo "$table" >"$OUT"
