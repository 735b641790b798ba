#!/usr/bin/env bash
# endorse.sh — end-to-end proof of Endorse (run as root; scripts/test.sh runs it in CI): real
# WireGuard devices (Debian's wireguard-go) fetch tokens through their tunnels from arcd's Endorse
# service, and a verifier outside arcd (PyJWT, scripts/e2e/lib/endorse-verify.py) checks them with
# the key set fetched from the API, as a user's backend would.
#
#   ┌──────────── netns <p>rv ───────────────────┐
#   │ arcd: API https://10.97.0.1:8443, UDP 11010 │
#   │ TUN arc0: Endorse 100.127.120.120:80, DNS   │
#   │ lo 10.97.0.1/32                             │
#   │ v-d1 10.97.1.1/30        v-d3 10.97.3.1/30  │
#   └──────┬───────────────────────┬──────────────┘
#      veth│                   veth│
#   ┌──────┴── netns <p>d1 ─┐ ┌────┴──── netns <p>d3 ─────┐
#   │ wireguard-go, a       │ │ wireguard-go, a virtual    │
#   │ virtual SIM           │ │ subscriber of an IoT SIM   │
#   └───────────────────────┘ └────────────────────────────┘
#   <p> = arcend-<pid>-. No namespace has a route out.
#
# Checks: d1 outside any group gets the refusal (403) · DNS in the tunnel answers
# endorse.soracom.io with Endorse's address · the JWKS is served without authentication · d1 in a
# group with Endorse on gets a token that PyJWT verifies (RS256, aud, exp, iat, nbf, jti) with the
# IMSI, SIM ID and request parameters asserted · d3's token asserts the IoT SIM's IMSI (the
# primary), never its virtual one · a POST body becomes requestParameters · a tampered token fails
# (InvalidSignatureError) · a token past its tokenTimeoutSeconds fails (ExpiredSignatureError) ·
# a bad tokenTimeoutSeconds is refused by the API (400) · switched off → 403 again.
#
# Environment:
#   ARCD_BIN=PATH   use this arcd binary instead of `cargo build --release --locked`
#   E2E_KEEP_WORK=1 keep the temp directory
# Needs: root, /dev/net/tun, iproute2, wireguard-go, wireguard-tools, curl, jq, dig
# (bind9-dnsutils), python3 with PyJWT and cryptography (python3-jwt python3-cryptography).
# A missing tool is a failure, never a skip.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
PROV=$REPO_DIR/scripts/provision
VERIFY=$SCRIPT_DIR/lib/endorse-verify.py
# Debian's interpreter, where python3-jwt is installed (not a python3 earlier on PATH).
PYTHON=/usr/bin/python3

RUN_ID=$$
NS_RV="arcend-${RUN_ID}-rv"
NS_D1="arcend-${RUN_ID}-d1"
NS_D3="arcend-${RUN_ID}-d3"
RV_ADDR=10.97.0.1
API_PORT=8443
WG_PORT=11010
API_URL="https://${RV_ADDR}:${API_PORT}"
ENDORSE_ADDR=100.127.120.120
PLATFORM_ADDR=100.127.100.127
IOT_ICCID=8981100000000000058
IOT_IMSI=440101234567892
MNT_HOLDER=""
WORK=""
PIDS=()     # "pid:comm" of the background processes we started
PIDFILES=() # "file:comm" of processes started for us by helpers

log() { printf '[endorse.sh] %s\n' "$*"; }
pass() { printf 'PASS  %s\n' "$*"; }
fail() {
    printf 'FAIL  %s\n' "$*"
    if [[ -n $WORK && -s $WORK/arcd.log ]]; then
        echo "==== tail of arcd's log ===="
        tail -n 40 "$WORK/arcd.log" | sed 's/\x1b\[[0-9;]*m//g' || true
    fi
    exit 1
}

# shellcheck source=scripts/lib/procs.sh
source "$REPO_DIR/scripts/lib/procs.sh"
# shellcheck source=scripts/lib/links.sh
source "$REPO_DIR/scripts/lib/links.sh" # wait_for, device_link, private_wireguard_dir

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local ns pid
    stop_recorded
    wait 2>/dev/null
    for ns in "$NS_D1" "$NS_D3" "$NS_RV"; do
        if [[ -e /run/netns/$ns ]]; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do
                log "warning: process $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) still in $ns"
            done
            ip netns del "$ns" 2>/dev/null || log "warning: could not delete namespace $ns"
        fi
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${E2E_KEEP_WORK:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    if ((rc == 0)); then echo "RESULT: endorse.sh: all checks passed"; else echo "RESULT: endorse.sh FAILED (exit $rc)"; fi
    exit "$rc"
}

nsx() { # nsx NS cmd...: in network namespace NS inside our mount namespace
    local ns=$1
    shift
    nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$ns" "$@"
}

API_KEY="" API_TOKEN=""
# api METHOD PATH [BODY]: the API from inside rv; body on stdout; status 1 on a non-2xx answer
# (the status is also left in $WORK/api.status).
api() {
    local method=$1 path=$2 body=${3-} code
    local args=(-sS -m 10 -X "$method" -o "$WORK/api.out" -w '%{http_code}' --cacert "$WORK/data/tls-cert.pem")
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
    [[ -n $API_KEY ]] && args+=(-H "X-Soracom-API-Key: $API_KEY" -H "X-Soracom-Token: $API_TOKEN")
    code=$(nsx "$NS_RV" timeout 15 curl "${args[@]}" "$API_URL$path") || code=${code:-000}
    echo "$code" >"$WORK/api.status"
    if [[ $code != 2?? ]]; then
        echo "API $method $path -> HTTP $code: $(head -c 400 "$WORK/api.out")" >&2
        return 1
    fi
    cat "$WORK/api.out"
}

# endorse DEV [curl args...]: asks Endorse from the device through its tunnel, by name (resolved
# by arcd's DNS in the tunnel); the body goes to $WORK/endorse.out, the status to stdout.
endorse() {
    local dev=$1
    shift
    nsx "$(dev_ns "$dev")" curl -sS -m 10 -o "$WORK/endorse.out" -w '%{http_code}' \
        --resolve "endorse.soracom.io:80:$ENDORSE_RESOLVED" "$@" || true
}
dev_ns() { case $1 in d1) echo "$NS_D1" ;; d3) echo "$NS_D3" ;; esac }

# token DEV [curl args...]: a token for DEV on stdout; status 1 (the reason on stderr) on
# anything but 200 {"token": ...}.
token() {
    local dev=$1 code
    shift
    code=$(endorse "$dev" "$@" http://endorse.soracom.io/)
    if [[ $code != 200 ]]; then
        echo "$dev: Endorse answered $code $(head -c 300 "$WORK/endorse.out")" >&2
        return 1
    fi
    jq -er '.token' "$WORK/endorse.out"
}

verify() { "$PYTHON" "$VERIFY" "$WORK/jwks.json" "$@"; }

set_endorse() { # set_endorse GROUP JSON_ITEMS
    api PUT "/v1/groups/$1/configuration/SoracomEndorse" "$2" >/dev/null ||
        fail "PUT SoracomEndorse $2"
}

# ==================================================================== main ==
[[ $EUID -eq 0 ]] || { echo "endorse.sh: needs root (network namespaces, TUN, WireGuard)" >&2; exit 1; }
for tool in ip wg wireguard-go curl jq dig nsenter unshare; do
    command -v "$tool" >/dev/null ||
        fail "missing $tool (apt-get install --no-install-recommends iproute2 wireguard-tools wireguard-go curl jq bind9-dnsutils util-linux)"
done
"$PYTHON" -c 'import jwt, cryptography' 2>/dev/null ||
    fail "no PyJWT with RSA for $PYTHON (apt-get install --no-install-recommends python3-jwt python3-cryptography)"
[[ -c /dev/net/tun ]] || fail "/dev/net/tun is missing"

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ARCD=${ARCD_BIN:-}
[[ -z $ARCD ]] || ARCD=$(realpath -m -- "$ARCD")
unset ARCD_BIN
WORK=$(mktemp -d /tmp/arcend.XXXXXX)
chmod 700 "$WORK"
cd "$REPO_DIR"

log "1. arcd binary"
if [[ -z $ARCD ]]; then
    ARCD=$(timeout 1800 "$PROV/build-arcd.sh" --src "$REPO_DIR") || fail "build-arcd.sh failed"
else
    ARCD=$("$PROV/build-arcd.sh" --prebuilt "$ARCD") || fail "build-arcd.sh --prebuilt $ARCD failed"
fi
ARCD_ENV_UNSET=()
while read -r v; do ARCD_ENV_UNSET+=(-u "$v"); done < <(compgen -e | grep '^ARCD_' || true)

log "2. namespaces"
for ns in "$NS_RV" "$NS_D1" "$NS_D3"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
private_wireguard_dir arcend-wireguard || fail "no private mount namespace with a tmpfs on /var/run/wireguard"
ip -n "$NS_RV" addr add "$RV_ADDR/32" dev lo
device_link "$NS_RV" v-d1 10.97.1.1 "$NS_D1" 10.97.1.2 "$RV_ADDR"
device_link "$NS_RV" v-d3 10.97.3.1 "$NS_D3" 10.97.3.2 "$RV_ADDR"

log "3. arcd in $NS_RV (scripts/provision/rendezvous.sh)"
PIDFILES+=("$WORK/arcd.pid:$(basename "$ARCD" | cut -c1-15)")
nsx "$NS_RV" env "${ARCD_ENV_UNSET[@]}" "$PROV/rendezvous.sh" --arcd "$ARCD" \
    --config "$WORK/arcd.toml" --data-dir "$WORK/data" \
    --api-listen "$RV_ADDR:$API_PORT" --api-tls yes --api-hostname "$RV_ADDR" \
    --rp-id ap-northeast-1 --rp-listen "0.0.0.0:$WG_PORT" --rp-endpoint "$RV_ADDR:$WG_PORT" \
    --pool 10.64.0.0/16 --allowed-ips 100.127.0.0/16 --tun-name arc0 --mtu 1420 \
    --log-level info --pid-file "$WORK/arcd.pid" --log-file "$WORK/arcd.log" 2>&1 | sed 's/^/    /' ||
    fail "arcd did not start (rendezvous.sh output above)"
creds=$WORK/data/root-credentials.json
auth=$(api POST /v1/auth "$(jq -c '{authKeyId, authKey}' "$creds")") || fail "POST /v1/auth"
API_KEY=$(jq -r .apiKey <<<"$auth")
API_TOKEN=$(jq -r .token <<<"$auth")

log "4. devices: d1 a virtual SIM, d3 a virtual subscriber of an imported IoT SIM"
provision() { # provision DEV [device.sh options...]
    local dev=$1
    shift
    PIDFILES+=("$WORK/$dev.wireguard-go.pid:wireguard-go")
    nsx "$(dev_ns "$dev")" "$PROV/device.sh" --interface "wg$dev" --mtu 1420 \
        --pid-file "$WORK/$dev.wireguard-go.pid" --log-file "$WORK/wireguard-go-$dev.log" \
        --api "$API_URL" --auth "$creds" --cacert "$WORK/data/tls-cert.pem" \
        --check-ping "$PLATFORM_ADDR" --check-timeout 10 "$@" "$WORK/$dev" 2>&1 | sed 's/^/    /'
    return "${PIPESTATUS[0]}"
}
provision d1 || fail "d1: device.sh (output above)"
api POST /v1/arcd/iot_sims "[{\"iccid\":\"$IOT_ICCID\",\"imsi\":\"$IOT_IMSI\",\"subscription\":\"plan-D\"}]" >/dev/null ||
    fail "import the IoT SIM"
provision d3 --add-subscription "$IOT_ICCID" || fail "d3: device.sh --add-subscription (output above)"
D1_SIM=$(cat "$WORK/d1/sim-id")
D1_IMSI=$(jq -r '.profiles[.simId].primaryImsi' "$WORK/d1/sim.json")
# Every 15-digit string of d3's Sim but the IoT SIM's own IMSI: its virtual subscriber's IMSI.
D3_VIRTUAL_IMSIS=$(jq -r --arg p "$IOT_IMSI" '[.. | strings | select(test("^[0-9]{15}$") and . != $p)] | unique | join(",")' "$WORK/d3/sim.json")
[[ $D1_IMSI =~ ^[0-9]{15}$ ]] || fail "d1: no primary IMSI in its Sim"
[[ -n $D3_VIRTUAL_IMSIS ]] || fail "d3: no virtual subscriber in its Sim"
pass "devices up: d1 $D1_SIM ($D1_IMSI), d3 on IoT SIM $IOT_ICCID (virtual $D3_VIRTUAL_IMSIS)"

log "5. Endorse through the tunnels"
ENDORSE_RESOLVED=$(nsx "$NS_D1" dig +short +time=2 +tries=2 @100.127.0.53 endorse.soracom.io A)
[[ $ENDORSE_RESOLVED == "$ENDORSE_ADDR" ]] ||
    fail "DNS in the tunnel: endorse.soracom.io is '$ENDORSE_RESOLVED', want $ENDORSE_ADDR"
pass "DNS in the tunnel: endorse.soracom.io = $ENDORSE_ADDR"

code=$(endorse d1 http://endorse.soracom.io/)
[[ $code == 403 ]] || fail "d1 outside any group: want 403, got $code $(head -c 200 "$WORK/endorse.out")"
pass "d1 outside any group: 403 \"$(cat "$WORK/endorse.out")\""

# The key set, without an API key: what a backend fetches.
code=$(nsx "$NS_RV" curl -sS -m 10 --cacert "$WORK/data/tls-cert.pem" -o "$WORK/jwks.json" \
    -w '%{http_code}' "$API_URL/v1/arcd/endorse/jwks") || code=000
[[ $code == 200 ]] || fail "GET /v1/arcd/endorse/jwks without authentication: HTTP $code"
jq -e '.keys | length == 1 and (.[0] | .kty == "RSA" and .alg == "RS256" and (.n | length) > 300)' \
    "$WORK/jwks.json" >/dev/null || fail "JWKS: $(head -c 300 "$WORK/jwks.json")"
! grep -q '"d"' "$WORK/jwks.json" || fail "JWKS holds a private exponent"
pass "JWKS served without authentication: kid $(jq -r '.keys[0].kid' "$WORK/jwks.json")"

group=$(api POST /v1/groups '{"configuration":{"SoracomEndorse":{"enabled":true,
    "parametersToEndorse":{"imsi":true,"simId":true,"requestParameters":true},"tokenTimeoutSeconds":600}}}') ||
    fail "create the group"
GROUP=$(jq -r .groupId <<<"$group")
for sim in "$D1_SIM" "$IOT_ICCID"; do
    api POST "/v1/sims/$sim/set_group" "{\"groupId\":\"$GROUP\"}" >/dev/null || fail "set_group $sim"
done

t1=$(token d1 -G --data-urlencode 'username=sora' --data-urlencode 'sessionId=123') ||
    fail "d1 in the group gets a token (see above)"
claims=$(verify "$t1") || fail "PyJWT rejects d1's token: $claims"
jq -e --arg imsi "$D1_IMSI" --arg sim "$D1_SIM" '
    .aud == "soracom-endorse-audience" and .sub == "soracom-endorse" and (.exp - .iat) == 600
    and ."soracom-endorse-claim" == {imsi: $imsi, simId: $sim,
                                     requestParameters: {username: "sora", sessionId: "123"}}' \
    <<<"$claims" >/dev/null || fail "d1's claims: $claims"
pass "d1: token verified by PyJWT with the published key: $(jq -c '."soracom-endorse-claim"' <<<"$claims")"

t3=$(token d3 -X POST -d '{"deviceName":"pump-3"}') || fail "d3 gets a token (see above)"
claims3=$(verify "$t3") || fail "PyJWT rejects d3's token: $claims3"
jq -e --arg imsi "$IOT_IMSI" --arg sim "$IOT_ICCID" '
    ."soracom-endorse-claim" == {imsi: $imsi, simId: $sim, requestParameters: {deviceName: "pump-3"}}' \
    <<<"$claims3" >/dev/null || fail "d3's claims (want the IoT SIM's IMSI $IOT_IMSI): $claims3"
[[ $(jq -r .jti <<<"$claims3") != $(jq -r .jti <<<"$claims") ]] || fail "two tokens share a jti"
for virtual in ${D3_VIRTUAL_IMSIS//,/ }; do
    ! grep -q "$virtual" <<<"$claims3" || fail "d3's token names its virtual IMSI $virtual"
done
pass "d3 (virtual subscriber): token asserts the IoT SIM's IMSI $IOT_IMSI, the POST body as requestParameters"

out=$(verify "$t1" --tamper) && fail "a tampered token verified: $out"
[[ $out == "REJECTED InvalidSignatureError"* ]] || fail "tampered token: $out"
pass "tampered token (IMSI changed): $out"

api PUT "/v1/groups/$GROUP/configuration/SoracomEndorse" '[{"key":"tokenTimeoutSeconds","value":0}]' >/dev/null &&
    fail "tokenTimeoutSeconds 0 was accepted"
[[ $(cat "$WORK/api.status") == 400 ]] || fail "tokenTimeoutSeconds 0: want 400, got $(cat "$WORK/api.status")"
pass "tokenTimeoutSeconds 0 refused by the API: $(jq -r .message "$WORK/api.out")"

# Times are whole seconds: a 3 s token has more than 2 s left when issued.
set_endorse "$GROUP" '[{"key":"tokenTimeoutSeconds","value":3}]'
short=$(token d1) || fail "d1 gets a 3 s token (see above)"
out=$(verify "$short") || fail "a fresh 3 s token does not verify: $out"
sleep 4
out=$(verify "$short") && fail "an expired token verified: $out"
[[ $out == "REJECTED ExpiredSignatureError"* ]] || fail "expired token: $out"
pass "token past its 3 s tokenTimeoutSeconds: $out"

set_endorse "$GROUP" '[{"key":"enabled","value":false}]'
code=$(endorse d3 http://endorse.soracom.io/)
[[ $code == 403 ]] || fail "switched off: want 403, got $code"
pass "switched off: 403 \"$(cat "$WORK/endorse.out")\""

grep -q 'Endorse token issued' "$WORK/arcd.log" || fail "no 'Endorse token issued' line in arcd's log"
! grep -qF "$t1" "$WORK/arcd.log" || fail "arcd's log holds a token"
pass "arcd's log: one line per token, no token in it"
