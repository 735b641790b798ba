# shellcheck shell=bash
# shellcheck disable=SC2153,SC2034,SC2004 # netns.sh (which sources this) defines the variables and the associative arrays
# Stage 8 of scripts/e2e/netns.sh (sourced by it, with its functions and state): rendezvous
# points, coverage and VPGs.
#
#   8a  arcd restarted with Oregon (us-west-2) and Frankfurt (eu-central-1) added to its config
#       (the egress NAT stays on from stage 5f, so stage 9 can check its removal): three listeners, three control
#       sockets; d1's session (Tokyo) is untouched, and d1, without PersistentKeepalive and in a
#       session arcd started (so it has no reason to handshake by itself for 15 s), pings again
#       within 2 s of the restart: arcd starts the handshake toward its saved endpoint
#   8b  d4 and d5: SIMs created through the global-coverage API host (Host: g.api.arc.lab),
#       outside a VPG: Frankfurt's endpoint and key, handshakes on Frankfurt's port
#   8c  a VPG placed in Oregon (own subnet, internet gateway off), a group naming it, d4 and d5
#       in it, delete_session: Oregon's endpoint and key, an address from the VPG subnet, vpgId
#       and placement in the session; the devices reach the platform addresses (the VPG subnet
#       is routed to arc0) and the VPG's online count is 2
#   8d  d4 <-> d5 by their VPG addresses: dropped while device-to-device is off, delivered once
#       it is turned on (PUT /v1/arcd/virtual_private_gateways/{id}/device_to_device)
#   8e  d1 (outside the VPG) cannot reach d5; with the internet gateway off d4 cannot reach a
#       host address beyond arcd (10.99.9.1 in rv) that d1 reaches
#
# Like the stages before it: every check prints PASS or ends the run with FAIL.

OREGON=us-west-2 FRANKFURT=eu-central-1 oregon_key=""
OREGON_PORT=11020 FRANKFURT_PORT=11030
GLOBAL_API_HOST=g.api.arc.lab # matches the default coverage.global_hosts glob "g.api.*"
VPG_SUBNET=10.200.0.0/24
BEYOND_ADDR=10.99.9.1 # an address on rv's loopback: "the internet" as seen from a device

gone() { ! alive "$1"; }

# The RP a device's peer is on, from `wg show` on each control socket in rv.
peer_on_socket() { # peer_on_socket SOCKET PUBKEY
    nsx "$NS_RV" timeout 10 wg show "$1" peers 2>/dev/null | grep -qxF "$2"
}

# ------------------------------------------------------------------ 8a ----
stage "8a. three rendezvous points: arcd restarted with Oregon and Frankfurt added"
api GET "/v1/sims/${SIM_ID[d1]}" >"$WORK/d1.before-restart.json" || fail "getSim d1" "see above"
# d1 must not handshake on its own within the 2 s measured below, or the check proves nothing:
# no PersistentKeepalive, and a session arcd initiated (delete_session; the device keeps its
# key), so d1 is the responder and wireguard-go's age-based rekey of an initiator cannot fire.
# Left alone, wireguard-go handshakes again only 15 s after its data stops being answered.
d1_server_key=$(sim_field d1 .arcSessionStatus.arcServerPeerPublicKey)
nsx "$NS_D1" wg set "$IF_D1" peer "$d1_server_key" persistent-keepalive off ||
    fail "d1: PersistentKeepalive off" "wg set failed"
api POST "/v1/sims/${SIM_ID[d1]}/delete_session" >/dev/null || fail "delete_session d1" "see above"
run_ping "$NS_D1" "$PLATFORM_ADDR" 1 0.2 15
((PING_RX >= 1)) || fail "d1: session started by arcd before the restart" "no reply within 15 s"
api GET "/v1/sims/${SIM_ID[d1]}" >"$WORK/d1.before-restart.json" || fail "getSim d1" "see above"
kill -TERM "$ARCD_PID"
wait_for 15 gone "$ARCD_PID" || fail "arcd stops on SIGTERM" "PID $ARCD_PID still runs after 15 s"
wait_for 10 eval "! ip -n '$NS_RV' link show arc0" || fail "arcd stops on SIGTERM" "arc0 is still there"
cat >>"$WORK/arcd.toml" <<EOF

# Added by scripts/e2e/lib/vpg-stage.sh: two more rendezvous points in the same process.
[[rendezvous_points]]
id = "$OREGON"
listen = "0.0.0.0:$OREGON_PORT"
endpoint = "$RV_ADDR:$OREGON_PORT"
pool = "10.65.0.0/16"
allowed_ips = ["100.127.0.0/16"]

[[rendezvous_points]]
id = "$FRANKFURT"
name = "Frankfurt lab"
listen = "0.0.0.0:$FRANKFURT_PORT"
endpoint = "$RV_ADDR:$FRANKFURT_PORT"
pool = "10.66.0.0/16"
allowed_ips = ["100.127.0.0/16"]
EOF
ip -n "$NS_RV" addr add "$BEYOND_ADDR/32" dev lo
(exec nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$NS_RV" \
    env "${ARCD_ENV_UNSET[@]}" "${ARCD_LAUNCH[@]}" "$ARCD" --config "$WORK/arcd.toml" serve \
    >>"$WORK/arcd.log" 2>&1 </dev/null 3>&- 4>&-) &
ARCD_PID=$!
PIDS+=("$ARCD_PID:$(basename "$ARCD" | cut -c1-15)")
t_restart=$(now_ms)
# d1 pings from the moment arcd starts, one probe every 100 ms until the first reply.
RESTART_PING_OUT=$WORK/ping-restart.out
(exec nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" ip netns exec "$NS_D1" timeout 45 \
    ping -n -D -c 1 -i 0.1 -W 1 -w 40 "$PLATFORM_ADDR" >"$RESTART_PING_OUT" 2>&1 </dev/null 3>&- 4>&-) &
restart_ping=$!
PIDS+=("$restart_ping:timeout")
wait_for 30 arcd_up || fail "arcd restarts with three rendezvous points" "no API after 30 s"
for port in "$WG_PORT" "$OREGON_PORT" "$FRANKFURT_PORT"; do
    wait_for 10 eval "nsx '$NS_RV' timeout 5 ss -Hlun 'sport = :$port' | grep -q ." ||
        fail "three listeners" "nothing listens on UDP $port"
done
for sock in arc-apne1 arc-usw2 arc-euc1; do
    wait_for 10 in_mnt test -S "$UAPI_DIR/$sock.sock" || fail "three control sockets" "no $UAPI_DIR/$sock.sock"
done
pass "arcd restarted: UDP $WG_PORT, $OREGON_PORT, $FRANKFURT_PORT and sockets arc-apne1, arc-usw2, arc-euc1"

api GET "/v1/sims/${SIM_ID[d1]}" >"$WORK/d1.after-restart.json" || fail "getSim d1" "see above"
session_of() { jq -c '.arcSessionStatus | {arcServerEndpoint, arcServerPeerPublicKey, arcClientPeerIpAddress, arcClientPeerPublicKey}' "$1"; }
[[ $(session_of "$WORK/d1.before-restart.json") == "$(session_of "$WORK/d1.after-restart.json")" ]] ||
    fail "d1's session untouched by the new rendezvous points" \
        "before $(session_of "$WORK/d1.before-restart.json"), after $(session_of "$WORK/d1.after-restart.json")"
# The device keeps its configuration and does nothing special: arcd handshakes toward it.
wait "$restart_ping" || true
PING_OUT=$RESTART_PING_OUT
PING_TX=$(sed -n 's/^\([0-9][0-9]*\) packets transmitted.*/\1/p' "$PING_OUT")
PING_RX=$(sed -n 's/.* transmitted, \([0-9][0-9]*\) received.*/\1/p' "$PING_OUT")
((${PING_RX:-0} >= 1)) || fail "d1 resumes after the restart" "no reply within 40 s (${PING_TX:-0} probes)"
resumed=$(($(first_reply_ms) - t_restart))
figure "arcd restart -> idle d1's first reply" "${resumed} ms (${PING_TX} probe(s) of 100 ms)"
echo "arcd restart: d1 (no keepalive) answered ${resumed} ms after arcd was started"
((resumed < 2000)) ||
    fail "d1 passes traffic within 2 s of the restart" "first reply after ${resumed} ms: arcd did not start the handshake"
grep -q 'handshakes started toward the devices' "$WORK/arcd.log" ||
    fail "arcd resumes sessions" "no summary line of the handshakes it started in arcd's log"
peer_on_socket arc-apne1 "${DEV_PUB[d1]}" ||
    fail "d1 still on Tokyo" "d1's key is not a peer on arc-apne1"
pass "d1's session untouched (same endpoint, keys, address) and traffic resumed" "${resumed} ms after the restart"

# ------------------------------------------------------------------ 8b ----
stage "8b. global coverage outside a VPG: Frankfurt"
# arcd never shows a server's private key, so `wg show` has no public key to compare: a device's
# handshake through a listener is what proves it was given that listener's key.
tokyo_key=$(sim_field d1 .arcSessionStatus.arcServerPeerPublicKey)
frankfurt_key=""
for dev in d4 d5; do
    API_HOST=$GLOBAL_API_HOST api POST /v1/sims '{"type":"virtual","subscription":"planArc01"}' \
        >"$WORK/$dev.create.json" || fail "$dev: createSim on $GLOBAL_API_HOST" "see above"
    provision_device "$dev" --sim-json "$WORK/$dev.create.json" --check-ping "$PLATFORM_ADDR" --check-timeout 15 ||
        fail "$dev: device.sh" "scripts/provision/device.sh failed (output above)"
    SIM_ID[$dev]=$(cat "$WORK/$dev/sim-id")
    DEV_PUB[$dev]=$(wg pubkey <"$WORK/$dev/private.key")
    [[ $(sim_field "$dev" .arcSessionStatus.arcServerEndpoint) == "$RV_ADDR:$FRANKFURT_PORT" ]] ||
        fail "$dev: Frankfurt" "arcServerEndpoint $(sim_field "$dev" .arcSessionStatus.arcServerEndpoint)"
    key=$(sim_field "$dev" .arcSessionStatus.arcServerPeerPublicKey)
    [[ $key != "$tokyo_key" && ( -z $frankfurt_key || $key == "$frankfurt_key" ) ]] ||
        fail "$dev: Frankfurt" "arcServerPeerPublicKey $key: Tokyo's, or not the one d4 got"
    frankfurt_key=$key
    [[ $(sim_field "$dev" '.arcSessionStatus.vpgId // "none"') == none ]] ||
        fail "$dev: outside a VPG" "vpgId $(sim_field "$dev" .arcSessionStatus.vpgId)"
    peer_on_socket arc-euc1 "${DEV_PUB[$dev]}" || fail "$dev: on Frankfurt's listener" "not a peer of arc-euc1"
    (($(dev_handshake "$dev") > 0)) || fail "$dev: handshake with Frankfurt" "no handshake with the key the API gave"
    ! peer_on_socket arc-apne1 "${DEV_PUB[$dev]}" || fail "$dev: on Frankfurt's listener" "also a peer of arc-apne1"
    pass "$dev: global-coverage SIM on Frankfurt" "$(sim_field "$dev" .arcSessionStatus.arcServerEndpoint), $(cat "$WORK/$dev/address")"
done
API_HOST="" # back to the jp API host for the rest
jq -e --arg id "${SIM_ID[d4]}" 'map(select(.simId == $id)) | length == 1' \
    <(api GET "/v1/sims?limit=100") >/dev/null || fail "listSims from the jp host" "d4's global SIM not listed"
pass "the global SIMs are listed and read from the jp API host too"

# ------------------------------------------------------------------ 8c ----
stage "8c. a VPG in Oregon: session re-created there, address from the VPG subnet"
vpg=$(api POST /v1/virtual_private_gateways \
    "{\"type\":14,\"placement\":{\"region\":\"$OREGON\"},\"deviceSubnetCidrRange\":\"$VPG_SUBNET\",\"useInternetGateway\":false}") ||
    fail "createVirtualPrivateGateway" "see above"
VPG_ID=$(jq -r .vpgId <<<"$vpg")
[[ $(jq -r .arcdDeviceToDevice <<<"$vpg") == false ]] || fail "createVirtualPrivateGateway" "device-to-device not off by default"
group=$(api POST /v1/groups '{"tags":{"name":"e2e-vpg"}}') || fail "createGroup" "see above"
VPG_GROUP=$(jq -r .groupId <<<"$group")
api PUT "/v1/groups/$VPG_GROUP/configuration/SoracomAir" "[{\"key\":\"vpgId\",\"value\":\"$VPG_ID\"}]" >/dev/null ||
    fail "group SoracomAir vpgId" "see above"
for dev in d4 d5; do
    api POST "/v1/sims/${SIM_ID[$dev]}/set_group" "{\"groupId\":\"$VPG_GROUP\"}" >/dev/null || fail "$dev: set_group" "see above"
    api GET "/v1/sims/${SIM_ID[$dev]}" >"$WORK/$dev.get.json" || fail "$dev: getSim" "see above"
    [[ $(jq -r .arcSessionStatus.arcServerEndpoint "$WORK/$dev.get.json") == "$RV_ADDR:$FRANKFURT_PORT" ]] ||
        fail "$dev: group change waits for re-creation" "the session moved before delete_session"
    api POST "/v1/sims/${SIM_ID[$dev]}/delete_session" >/dev/null || fail "$dev: delete_session" "see above"
    api GET "/v1/sims/${SIM_ID[$dev]}" >"$WORK/$dev.get.json" || fail "$dev: getSim" "see above"
    provision_device "$dev" --configure-only --sim-json "$WORK/$dev.get.json" --key "$WORK/$dev/private.key" \
        --check-ping "$PLATFORM_ADDR" --check-timeout 15 ||
        fail "$dev: reconfigured for the VPG session" "device.sh failed (output above): the VPG device cannot reach $PLATFORM_ADDR"
    addr=$(cat "$WORK/$dev/address")
    DEV_ADDR[$dev]=$addr
    [[ $(sim_field "$dev" .arcSessionStatus.arcServerEndpoint) == "$RV_ADDR:$OREGON_PORT" ]] ||
        fail "$dev: Oregon" "arcServerEndpoint $(sim_field "$dev" .arcSessionStatus.arcServerEndpoint)"
    key=$(sim_field "$dev" .arcSessionStatus.arcServerPeerPublicKey)
    [[ $key != "$tokyo_key" && $key != "$frankfurt_key" && ( -z $oregon_key || $key == "$oregon_key" ) ]] ||
        fail "$dev: Oregon" "arcServerPeerPublicKey $key: Tokyo's, Frankfurt's, or not the one d4 got"
    oregon_key=$key
    [[ $(sim_field "$dev" .arcSessionStatus.vpgId) == "$VPG_ID" ]] ||
        fail "$dev: in the VPG" "vpgId $(sim_field "$dev" '.arcSessionStatus.vpgId // "none"')"
    [[ $(sim_field "$dev" '.arcSessionStatus.placement.region // ""') == "$OREGON" ]] ||
        fail "$dev: placement" "$(sim_field "$dev" '.arcSessionStatus.placement')"
    [[ $addr == 10.200.0.* ]] || fail "$dev: address from the VPG subnet" "$addr is not in $VPG_SUBNET"
    peer_on_socket arc-usw2 "${DEV_PUB[$dev]}" || fail "$dev: moved to Oregon" "not a peer of arc-usw2"
    (($(dev_handshake "$dev") > 0)) || fail "$dev: handshake with Oregon" "no handshake with the key the API gave"
    ! peer_on_socket arc-euc1 "${DEV_PUB[$dev]}" || fail "$dev: moved to Oregon" "still a peer of arc-euc1"
    pass "$dev: in the VPG on Oregon, reaching $PLATFORM_ADDR" "$RV_ADDR:$OREGON_PORT, $addr, vpgId $VPG_ID"
done
ip -n "$NS_RV" route show "$VPG_SUBNET" | grep -q "dev arc0" ||
    fail "VPG subnet routed to arc0" "$(ip -n "$NS_RV" route show "$VPG_SUBNET")"
online=$(api GET "/v1/virtual_private_gateways/$VPG_ID" | jq -r .sessionStats.online) || fail "getVirtualPrivateGateway" "see above"
((online == 2)) || fail "VPG sessionStats.online" "$online, not 2"
pass "VPG subnet $VPG_SUBNET routed to arc0; sessionStats.online = 2"

# ------------------------------------------------------------------ 8d ----
stage "8d. device-to-device inside the VPG: only once turned on"
dev_route_also d4 "${DEV_ADDR[d5]}/32" "$BEYOND_ADDR/32"
dev_route_also d5 "${DEV_ADDR[d4]}/32"
expect_unreachable "d4 -> d5 (${DEV_ADDR[d5]}) while device-to-device is off" d4 "${DEV_ADDR[d5]}" d5
api PUT "/v1/arcd/virtual_private_gateways/$VPG_ID/device_to_device" '{"enabled":true}' >"$WORK/vpg-d2d.json" ||
    fail "device_to_device on" "see above"
[[ $(jq -r .arcdDeviceToDevice "$WORK/vpg-d2d.json") == true ]] || fail "device_to_device on" "answer says it is off"
for pair in "d4 d5" "d5 d4"; do
    read -r src dst <<<"$pair"
    run_ping "$(dev_ns "$src")" "${DEV_ADDR[$dst]}" 3 0.2 5
    ((PING_RX >= 2)) || fail "$src -> $dst with device-to-device on" "$PING_RX/$PING_TX replies"
    pass "$src -> $dst (${DEV_ADDR[$dst]}) with device-to-device on" "$PING_RX/$PING_TX replies, avg ${PING_AVG} ms"
done

# ------------------------------------------------------------------ 8e ----
stage "8e. outsiders and the internet gateway"
dev_route_also d1 "${DEV_ADDR[d5]}/32" "$BEYOND_ADDR/32"
expect_unreachable "d1 (outside the VPG) -> d5 (${DEV_ADDR[d5]})" d1 "${DEV_ADDR[d5]}" d5
run_ping "$NS_D1" "$BEYOND_ADDR" 3 0.2 5
((PING_RX >= 2)) || fail "d1 reaches $BEYOND_ADDR beyond arcd" "$PING_RX/$PING_TX replies: the check below would prove nothing"
pass "d1 (no VPG) reaches $BEYOND_ADDR beyond arcd" "$PING_RX/$PING_TX replies"
echos_before=$(snmp "$NS_RV" Icmp InEchos)
run_ping "$NS_D4" "$BEYOND_ADDR" 5 0.2 3
echos=$(($(snmp "$NS_RV" Icmp InEchos) - echos_before))
((PING_TX > 0 && PING_RX == 0 && echos == 0)) ||
    fail "d4 (VPG, internet gateway off) cannot reach $BEYOND_ADDR" "$PING_RX/$PING_TX replies, rv saw $echos echo requests"
pass "d4 (VPG, internet gateway off) cannot reach $BEYOND_ADDR" "$PING_TX probes, 0 replies, rv saw none"
run_ping "$NS_D4" "$PLATFORM_ADDR" 2 0.2 5
((PING_RX >= 1)) || fail "d4 still reaches $PLATFORM_ADDR" "$PING_RX/$PING_TX replies"
pass "d4 still reaches the platform address $PLATFORM_ADDR with the internet gateway off"
