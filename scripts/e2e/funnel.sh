#!/usr/bin/env bash
# funnel.sh — Funnel, Funk and the credentials API end to end (run as root; scripts/test.sh runs
# it with the other e2e scripts). Stage: scripts/e2e/lib/funnel-stage.sh (arcd, a wireguard-go
# device running a virtual subscriber of an imported IoT SIM, Mosquitto and an HTTP sink in a
# destination namespace of their own).
#
# Checks:
#  1. credentials: created through /v1/credentials, listed without the secret; a group naming
#     unknown credentials or an unusable destination is refused (400) at configuration time
#  2. Funnel → Mosquitto: HTTP (204), TCP and UDP 23080 (200) messages from the device arrive
#     exactly as sent, wrapped with the IoT SIM's (primary) IMSI, its SIM ID and a timestamp;
#     with contentType json a message that is not JSON gets `400 Invalid JSON is send to funnel.`
#     and is not delivered
#  3. Funnel → HTTP webhook with api-token credentials: the envelope and `Authorization: Bearer`
#  4. Funk: the function's body comes back to the device, the function saw the primary IMSI
#  5. switched off: Funnel and Funk answer their refusals
#  6. bad destination (a broker nobody runs): the device is answered at once, the failure is
#     counted (arcd_funnel_deliveries{result="failed"}) and logged
#
# Environment: FN_ARCD_BIN=PATH (an arcd binary instead of `cargo build --release --locked`),
# FN_KEEP=1 (keep the scratch directory).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source=scripts/provision/lib.sh
source "$REPO_DIR/scripts/provision/lib.sh"
# shellcheck source=scripts/lib/procs.sh
source "$REPO_DIR/scripts/lib/procs.sh"
# shellcheck source=scripts/lib/links.sh
source "$REPO_DIR/scripts/lib/links.sh"
TAG=arcfn
# shellcheck source=scripts/e2e/lib/funnel-stage.sh
source "$SCRIPT_DIR/lib/funnel-stage.sh"

pass() { log "PASS: $*"; }

trap funnel_stage_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ARCD=${FN_ARCD_BIN:-}
if [[ -z $ARCD ]]; then
    log "cargo build --release --locked"
    ARCD=$(timeout 1800 "$REPO_DIR/scripts/provision/build-arcd.sh" --src "$REPO_DIR") || die "build failed"
fi
ARCD=$(realpath -- "$ARCD")
funnel_stage_up "$ARCD" info

# ------------------------------------------------------------------ 1. credentials --
api POST /v1/credentials/mosquitto "$(jq -nc --arg u "$MQTT_USER" --arg p "$MQTT_PASSWORD" \
    '{type: "username-password-credentials", description: "e2e broker", credentials: {username: $u, password: $p}}')" >/dev/null ||
    die "createCredential failed"
api POST /v1/credentials/hook '{"type":"api-token-credentials","credentials":{"token":"e2e-hook-token"}}' >/dev/null
listed=$(api GET /v1/credentials)
[[ $(jq length <<<"$listed") == 2 ]] || die "listCredentials: $listed"
! grep -q -e "$MQTT_PASSWORD" -e e2e-hook-token <<<"$listed" || die "listCredentials shows a secret"
mqtt_dest=$(jq -nc --arg url "mqtt://$DST_ADDR:1883/devices/funnel" '{provider: "mqtt", resourceUrl: $url}')
code=$(api_status POST /v1/groups "$(jq -nc --argjson d "$mqtt_dest" '{configuration: {SoracomFunnel: {enabled: true, credentialsId: "nobody", destination: $d}}}')")
[[ $code == 400 ]] || die "a group naming unknown credentials got $code"
code=$(api_status POST /v1/groups '{"configuration":{"SoracomFunnel":{"enabled":true,"destination":{"provider":"aws","service":"kinesis","resourceUrl":"https://kinesis.example/s"}}}}')
[[ $code == 400 ]] || die "a group with a destination arcd cannot deliver to got $code"
group=$(api POST /v1/groups "$(jq -nc --argjson d "$mqtt_dest" --arg f "$SINK_URL/function" '{
    tags: {name: "e2e-funnel"},
    configuration: {
        SoracomFunnel: {enabled: true, credentialsId: "mosquitto", contentType: "json", destination: $d},
        SoracomFunk: {enabled: true, destination: {provider: "http", resourceUrl: $f}}
    }}')") || die "createGroup failed: $(cat "$WORK/last-answer.json" 2>/dev/null)"
GROUP_ID=$(jq -r .groupId <<<"$group")
api POST "/v1/sims/$IOT_ICCID/set_group" "{\"groupId\":\"$GROUP_ID\"}" >/dev/null
pass "credentials stored, listed without secrets; bad group configurations refused with 400"

# ------------------------------------------------------------- 2. Funnel → Mosquitto --
subscribe_mqtt devices/funnel "$WORK/mqtt.txt"
mark="e2e-$$"
http_code=$(nsx "$NS_DEV" curl -sS -m 5 -o "$WORK/funnel-http.out" -w '%{http_code}' \
    -H 'Content-Type: application/json' --data "{\"via\":\"http\",\"mark\":\"$mark\"}" "http://$FUNNEL_ADDR/")
[[ $http_code == 204 ]] || die "Funnel over HTTP answered $http_code: $(cat "$WORK/funnel-http.out")"
tcp_reply=$(printf '{"via":"tcp","mark":"%s"}\n' "$mark" | nsx "$NS_DEV" timeout 5 nc -q 1 "$FUNNEL_ADDR" 23080)
[[ $tcp_reply == 200 ]] || die "Funnel over TCP answered '$tcp_reply'"
udp_reply=$(printf '{"via":"udp","mark":"%s"}' "$mark" | nsx "$NS_DEV" timeout 5 nc -u -w 1 "$FUNNEL_ADDR" 23080)
[[ $udp_reply == 200 ]] || die "Funnel over UDP answered '$udp_reply'"
bad_reply=$(printf 'not json %s' "$mark" | nsx "$NS_DEV" timeout 5 nc -u -w 1 "$FUNNEL_ADDR" 23080)
[[ $bad_reply == "400 Invalid JSON is send to funnel." ]] || die "Funnel took non-JSON: '$bad_reply'"
wait_for 10 test "$(wc -l <"$WORK/mqtt.txt")" -ge 3 || die "Mosquitto got $(wc -l <"$WORK/mqtt.txt") of 3 messages"
sleep 1 # anything more (the refused message, a duplicate) would arrive now
[[ $(wc -l <"$WORK/mqtt.txt") == 3 ]] || die "Mosquitto got more than the 3 messages: $(cat "$WORK/mqtt.txt")"
for via in http tcp udp; do
    jq -se --arg via "$via" --arg mark "$mark" --arg imsi "$IOT_IMSI" --arg sim "$IOT_ICCID" \
        'any(.[]; .payloads == {via: $via, mark: $mark} and .imsi == $imsi
         and .simId == $sim and .sourceProtocol == $via and (.timestamp | type) == "number"
         and .credentialsId == "mosquitto")' "$WORK/mqtt.txt" >/dev/null ||
        die "the $via message is not as sent with IMSI $IOT_IMSI: $(cat "$WORK/mqtt.txt")"
done
! grep -q "$VIRTUAL_IMSI" "$WORK/mqtt.txt" || die "the virtual subscriber's IMSI reached Mosquitto"
pass "Funnel: HTTP 204, TCP/UDP 200; Mosquitto got exactly the 3 messages, with IMSI $IOT_IMSI (not $VIRTUAL_IMSI); non-JSON refused"

# -------------------------------------------------------------- 3. Funnel → webhook --
api PUT "/v1/groups/$GROUP_ID/configuration/SoracomFunnel" "$(jq -nc --arg u "$SINK_URL/webhook" \
    '[{key: "destination", value: {provider: "http", resourceUrl: $u}}, {key: "credentialsId", value: "hook"}]')" >/dev/null
http_code=$(nsx "$NS_DEV" curl -sS -m 5 -o /dev/null -w '%{http_code}' --data "{\"via\":\"webhook\",\"mark\":\"$mark\"}" "http://$FUNNEL_ADDR/")
[[ $http_code == 204 ]] || die "Funnel to the webhook answered $http_code"
wait_for 10 grep -q '"/webhook"' "$WORK/sink.jsonl" || die "the webhook got nothing"
jq -se --arg imsi "$IOT_IMSI" --arg mark "$mark" 'any(.[]; .path == "/webhook" and .headers.authorization == "Bearer e2e-hook-token"
    and (.body | fromjson | .imsi == $imsi and .payloads.mark == $mark))' "$WORK/sink.jsonl" >/dev/null ||
    die "the webhook's request is not right: $(grep webhook "$WORK/sink.jsonl")"
pass "Funnel → webhook: envelope with IMSI $IOT_IMSI and Authorization: Bearer from the credentials"

# ------------------------------------------------------------------------- 4. Funk --
funk=$(nsx "$NS_DEV" curl -sS -m 10 --resolve "funk.soracom.io:80:$UNIFIED_ADDR" \
    -H 'Content-Type: application/json' --data '{"temperature":30}' http://funk.soracom.io/)
jq -e --arg imsi "$IOT_IMSI" '.function == "ok" and .imsi == $imsi and .received == {temperature: 30}' <<<"$funk" >/dev/null ||
    die "Funk answered '$funk'"
pass "Funk: the function's body came back ($funk)"

# ----------------------------------------------------------------- 5. switched off --
api PUT "/v1/groups/$GROUP_ID/configuration/SoracomFunk" '[{"key":"enabled","value":false}]' >/dev/null
api PUT "/v1/groups/$GROUP_ID/configuration/SoracomFunnel" '[{"key":"enabled","value":false}]' >/dev/null
funk_off=$(nsx "$NS_DEV" curl -sS -m 5 -w ' %{http_code}' --resolve "funk.soracom.io:80:$UNIFIED_ADDR" --data '{}' http://funk.soracom.io/)
[[ $funk_off == "Funk is not enabled for this SIM's group. 400" ]] || die "Funk off answered '$funk_off'"
funnel_off=$(printf '{}' | nsx "$NS_DEV" timeout 5 nc -u -w 1 "$FUNNEL_ADDR" 23080)
[[ $funnel_off == "400 Funnel is not enabled for this SIM's group." ]] || die "Funnel off answered '$funnel_off'"
pass "switched off: Funk 400 '$funk_off', Funnel '$funnel_off'"

# ------------------------------------------------------------- 6. bad destination --
api PUT "/v1/groups/$GROUP_ID/configuration/SoracomFunnel" "$(jq -nc --arg url "mqtt://$DST_ADDR:1884/devices/funnel" \
    '[{key: "enabled", value: true}, {key: "credentialsId", value: "mosquitto"}, {key: "destination", value: {provider: "mqtt", resourceUrl: $url}}]')" >/dev/null
failed_before=$(metric 'arcd_funnel_deliveries_total{result="failed"}')
started=$(date +%s%N)
reply=$(printf '{"to":"nowhere"}' | nsx "$NS_DEV" timeout 5 nc -u -w 1 "$FUNNEL_ADDR" 23080)
elapsed_ms=$((($(date +%s%N) - started) / 1000000))
[[ $reply == 200 ]] || die "Funnel with a dead broker answered '$reply'"
((elapsed_ms < 1500)) || die "the device waited ${elapsed_ms} ms" # nc -w 1 itself waits 1 s
wait_for 10 test "$(metric 'arcd_funnel_deliveries_total{result="failed"}')" -gt "$failed_before" ||
    die "no counted failure: $(metric 'arcd_funnel_deliveries_total{result="failed"}')"
grep -q "MQTT delivery failing" "$WORK/arcd.log" || die "no logged failure in arcd's log"
kill -0 "$ARCD_PID" || die "arcd died"
pass "bad destination: device answered 200 in ${elapsed_ms} ms (nc's 1 s wait included); failure counted ($(metric 'arcd_funnel_deliveries_total{result="failed"}')) and logged"
log "all Funnel/Funk checks passed"
