#!/usr/bin/env bash
# multinode.sh — end-to-end proof of multi-node arcd on PostgreSQL (issue 14): an API-only node and
# two rendezvous-point nodes sharing one PostgreSQL, real WireGuard devices, and the failures a
# deployment meets (a node killed, the database gone for 10 s). Run as root; scripts/test.sh runs it.
#
#   ┌─────────────────────────── namespace <p>lan: bridge br0, 10.98.0.0/24 ───────────────────────┐
#   └───┬──────────────┬──────────────────┬──────────────────────┬─────────────────────┬───────────┘
#   <p>pg .2       <p>api .10        <p>tokyo .11           <p>frankfurt .12      <p>d1 .21 … d4 .24
#   PostgreSQL 15  arcd: API only    arcd: ap-northeast-1   arcd: eu-central-1    wireguard-go + wg,
#   (initdb in a   https :8443,      UDP 11010, TUN arc0,   UDP 11011, TUN arc0,  a SIM each from
#   temp dir)      [node] api=true,  100.127.100.127,       100.127.100.127       node api (device.sh)
#                  rendezvous_points iperf3 -s              [node] api=false
#                  = []              [node] api=false
#   <p> = arcmn-<pid>-. No default route anywhere, no link to the host. Every arcd node reads the
#   same [[rendezvous_points]] list and [store] engine = "postgres", url = the pg namespace.
#
# Set up by the provisioning scripts the Vagrant lab runs (LAB_TOPOLOGY=multinode): postgres.sh,
# rendezvous.sh (one call per node: --node-api, --node-rendezvous-points, --store-url) and
# device.sh. The checks are this script's own; each prints PASS or FAIL, the first FAIL ends the
# run (exit 1, logs' tails shown); figures are printed at the end either way.
#
# Stages: build → LAN → PostgreSQL → nodes (api first: it makes the root operator; roles checked:
# who binds which UDP port and control socket, who serves the API) → devices: createSim on api,
# d1 and d2 connect through tokyo, d3 (Host g.api.*: global coverage) through frankfurt →
# [LIVE] getSim on api shows the device side (online, handshake, bytes) published by tokyo →
# [PEER CHANGES] delete_session / renew / terminate on api take effect on tokyo; commit→applied
# p50/p99 over >= 50 changes (tokyo's propagation_ms log field and metric) → kill -9 api: tunnels
# keep passing traffic (continuous pings, iperf3) → kill -9 tokyo and restart it: its devices come
# back, frankfurt's ping never stops → PostgreSQL stopped for 10 s: tunnels unaffected, api answers
# 503 {code,message}; after it is back createSim works without restarting a node and a new device
# connects → no panic in any log → cleanup (trap): processes by PID, namespaces, temp files.
#
# Environment:
#   ARCD_BIN=PATH        use this arcd instead of `cargo build --release --locked`
#   E2E_PEER_CHANGES=1   (default) changes made on node api reach the RP node's data plane while it
#                        runs (the store's peer-change outbox). 0: the RP nodes are restarted after
#                        the devices' SIMs exist (a node loads its sessions at start) and the
#                        lifecycle and propagation stage is skipped — for a build without the outbox
#   E2E_LIVE=1           (default) check getSim's arcdSessionStats on node api (live state that RP
#                        nodes publish through the store). 0: skipped
#   E2E_CHANGES=N        changes timed for the propagation figures (default 60, at least 50)
#   E2E_KEEP_WORK=1      keep the temp directory (configs, logs)
#   E2E_LOG_LEVEL=F      arcd's log filter (default info)
# Needs: root, /dev/net/tun, iproute2, wireguard-go, wireguard-tools, postgresql-15, iperf3, jq,
# curl, iputils-ping, procps.
set -euo pipefail

E2E_NAME=multinode.sh
NS_PREFIX="arcmn-$$-"
# shellcheck source=scripts/e2e/lib/cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/cluster.sh"
# shellcheck source=scripts/e2e/lib/cluster-devices.sh
source "$SCRIPT_DIR/lib/cluster-devices.sh"
PEER_CHANGES=${E2E_PEER_CHANGES:-1}
LIVE=${E2E_LIVE:-1}
CHANGES=${E2E_CHANGES:-60}
[[ $PEER_CHANGES =~ ^[01]$ && $LIVE =~ ^[01]$ ]] || { echo "$E2E_NAME: E2E_PEER_CHANGES and E2E_LIVE are 0 or 1" >&2; exit 2; }
[[ $CHANGES =~ ^[0-9]+$ ]] && ((CHANGES >= 50)) || { echo "$E2E_NAME: E2E_CHANGES: at least 50" >&2; exit 2; }

cluster_init
build_arcd

stage "1. LAN"
lan_up pg=$ADDR_PG api=$ADDR_API tokyo=$ADDR_TOKYO frankfurt=$ADDR_FRANKFURT \
    d1=10.98.0.21 d2=10.98.0.22 d3=10.98.0.23 d4=10.98.0.24

stage "2. PostgreSQL in $(ns_of pg) (scripts/provision/postgres.sh)"
pg_up pg main
STORE_URL="postgres://arcd@$ADDR_PG:$PG_PORT_LAB/arcd?connect_timeout=3"
[[ $(psql_at pg 'select 1') == 1 ]] || fail "PostgreSQL answers on $ADDR_PG" "psql from the pg namespace"
pass "PostgreSQL 15 on $ADDR_PG:$PG_PORT_LAB" "postmaster PID ${PG_PID_OF[main]}"

stage "3. arcd nodes api, tokyo, frankfurt (scripts/provision/rendezvous.sh)"
node_start api yes none
node_start tokyo no "$RP_TOKYO"
node_start frankfurt no "$RP_FRANKFURT"
udp_bound() { nsx "$1" ss -Hlun "sport = :$2" | grep -q .; }
tcp_bound() { nsx "$1" ss -Hltn "sport = :$2" | grep -q .; }
udp_bound tokyo "$PORT_TOKYO" && ! udp_bound tokyo "$PORT_FRANKFURT" || fail "tokyo binds only Tokyo's port" "ss in tokyo"
udp_bound frankfurt "$PORT_FRANKFURT" && ! udp_bound frankfurt "$PORT_TOKYO" || fail "frankfurt binds only Frankfurt's port" "ss in frankfurt"
! udp_bound api "$PORT_TOKYO" && ! udp_bound api "$PORT_FRANKFURT" || fail "api binds no rendezvous point" "a UDP port is bound in api"
tcp_bound api "$API_PORT" && ! tcp_bound tokyo "$API_PORT" && ! tcp_bound frankfurt "$API_PORT" ||
    fail "only api serves the API" "TCP $API_PORT"
in_mnt test -S "$UAPI_DIR/$UAPI_TOKYO.sock" && in_mnt test -S "$UAPI_DIR/$UAPI_FRANKFURT.sock" ||
    fail "control sockets" "want $UAPI_TOKYO.sock (tokyo) and $UAPI_FRANKFURT.sock (frankfurt)"
pass "node roles" "api: TCP $API_PORT only; tokyo: UDP $PORT_TOKYO; frankfurt: UDP $PORT_FRANKFURT"
spawn tokyo "$WORK/iperf3-server.log" iperf3 iperf3 -s -B 0.0.0.0 -p 5201
wait_for 5 tcp_bound tokyo 5201 || fail "iperf3 server in tokyo" "nothing listens on TCP 5201"
api_login

stage "4. devices: createSim on api → tunnels through tokyo and frankfurt"
for dev in d1 d2; do dev_create "$dev"; done
dev_create d3 "$GLOBAL_HOST"
for dev in d1 d2; do
    [[ $(dev_sim "$dev" .arcSessionStatus.arcServerEndpoint) == "$ADDR_TOKYO:$PORT_TOKYO" ]] ||
        fail "$dev's SIM is on tokyo" "arcServerEndpoint $(dev_sim "$dev" .arcSessionStatus.arcServerEndpoint)"
done
[[ $(dev_sim d3 .arcSessionStatus.arcServerEndpoint) == "$ADDR_FRANKFURT:$PORT_FRANKFURT" ]] ||
    fail "global-coverage SIM d3 lands on frankfurt" "arcServerEndpoint $(dev_sim d3 .arcSessionStatus.arcServerEndpoint)"
pass "SIMs placed" "d1, d2 -> $RP_TOKYO ($ADDR_TOKYO); d3 (Host $GLOBAL_HOST) -> $RP_FRANKFURT ($ADDR_FRANKFURT)"
if ((PEER_CHANGES == 0)); then
    log "E2E_PEER_CHANGES=0: restarting tokyo and frankfurt so they load the new sessions at start"
    for node in tokyo frankfurt; do node_kill9 "$node"; done
    node_start tokyo no "$RP_TOKYO"
    node_start frankfurt no "$RP_FRANKFURT"
fi
for dev in d1 d2 d3; do
    ms=$(ping_until "$dev" 20) || fail "$dev pings $PLATFORM_ADDR through its tunnel" "no reply within 20 s (the RP node does not know the peer?)"
    created=$(<"$WORK/$dev/created-at-ms")
    figure "$dev: createSim on api -> first reply via RP node" "$(($(now_ms) - created)) ms (ping wait $ms ms)"
done
for dev in d1 d2; do
    (($(node_handshake "$UAPI_TOKYO" "$dev") > 0)) || fail "$dev handshakes on tokyo" "no handshake in wg show $UAPI_TOKYO"
    ! node_has_peer "$UAPI_FRANKFURT" "$dev" || fail "$dev is not a peer on frankfurt" "listed in wg show $UAPI_FRANKFURT"
done
(($(node_handshake "$UAPI_FRANKFURT" d3) > 0)) || fail "d3 handshakes on frankfurt" "no handshake in wg show $UAPI_FRANKFURT"
! node_has_peer "$UAPI_TOKYO" d3 || fail "d3 is not a peer on tokyo" "listed in wg show $UAPI_TOKYO"
pass "createSim on api -> handshake on the RP node" "d1, d2 on tokyo; d3 on frankfurt; each a peer of its own node only"
expect_pings d1 "d1 pings $PLATFORM_ADDR (tokyo's platform address)"
expect_pings d3 "d3 pings $PLATFORM_ADDR (frankfurt's platform address)"

if ((LIVE)); then
    stage "5. [LIVE] getSim on api shows the device side that tokyo publishes"
    sim_d1=$(dev_sim d1 .simId)
    t0=$(now_ms)
    until api GET "/v1/sims/$sim_d1" >"$WORK/d1.live.json" 2>/dev/null &&
        jq -e '.arcdSessionStats.deviceOnline == true and (.arcdSessionStats.lastHandshakeAt // 0) > 0 and .arcdSessionStats.rxBytes > 0 and .arcdSessionStats.txBytes > 0' \
            "$WORK/d1.live.json" >/dev/null; do
        (($(now_ms) - t0 < 10000)) || fail "[LIVE] getSim d1 on api: deviceOnline, lastHandshakeAt, rx/tx" "after 10 s: $(jq -c '.arcdSessionStats' "$WORK/d1.live.json" 2>/dev/null)"
        sleep 0.25
    done
    pass "[LIVE] getSim d1 on api" "$(jq -c .arcdSessionStats "$WORK/d1.live.json") after $(($(now_ms) - t0)) ms"
    api GET "/v1/sims?limit=100" >"$WORK/list.live.json" || fail "[LIVE] listSims on api" "see above"
    jq -e --arg id "$sim_d1" '.[] | select(.simId == $id) | .arcdSessionStats.deviceOnline == true' "$WORK/list.live.json" >/dev/null ||
        fail "[LIVE] listSims on api shows d1 online" "$(jq -c --arg id "$sim_d1" '.[] | select(.simId == $id) | .arcdSessionStats' "$WORK/list.live.json")"
    pass "[LIVE] listSims on api shows d1 online"
fi

if ((PEER_CHANGES)); then
    # shellcheck source=scripts/e2e/lib/multinode-changes.sh
    source "$SCRIPT_DIR/lib/multinode-changes.sh"
fi

stage "7. kill -9 api: tunnels keep passing traffic"
ping_bg_start d1
ping_bg_start d3
node_kill9 api
api_gone() { ! tcp_bound api "$API_PORT"; }
wait_for 5 api_gone || fail "api is gone" "TCP $API_PORT still bound 5 s after kill -9"
nsx d1 timeout 20 iperf3 -c "$PLATFORM_ADDR" -p 5201 -n 16M -J >"$WORK/iperf3-d1.json" 2>&1 ||
    fail "iperf3 d1 -> tokyo with api dead" "$(jq -r '.error // empty' "$WORK/iperf3-d1.json" 2>/dev/null | head -c 200)"
mbit=$(jq -r '.end.sum_received.bits_per_second / 1e6 | floor' "$WORK/iperf3-d1.json")
pass "iperf3 d1 -> tokyo with api dead" "16 MiB at $mbit Mbit/s"
figure "iperf3 d1 -> tokyo (api dead)" "$mbit Mbit/s"
for dev in d1 d3; do
    ping_bg_wait "$dev" 50 # 5 s with api dead at least
    ping_bg_stop "$dev"; tx=$BG_TX rx=$BG_RX
    ((tx >= 50 && tx - rx <= 1)) || fail "$dev's ping while api died" "$rx/$tx replies"
    pass "$dev's ping while api died" "$rx/$tx replies"
done
node_start api yes none
api_login

stage "8. kill -9 tokyo and restart it: its devices return, frankfurt untouched"
ping_bg_start d3
returning=(d1)
[[ -e $WORK/d2.terminated ]] || returning+=(d2)
for dev in "${returning[@]}"; do ping_bg_start "$dev"; done
ping_bg_wait d3 5 # a few probes before the kill: the count below covers the whole outage
node_kill9 tokyo
t_dead=$(now_ms)
ping_bg_wait d1 "$(($(grep -c 'icmp_seq=' "$WORK/ping-bg-d1.out") + 10))" # 1 s with tokyo dead
! bg_first_reply_after d1 "$((t_dead + 300))" >/dev/null || fail "d1 loses its tunnel while tokyo is dead" "replies after the kill (the check proves nothing)"
t_restart=$(now_ms)
node_start tokyo no "$RP_TOKYO"
for dev in "${returning[@]}"; do
    until at=$(bg_first_reply_after "$dev" "$t_restart"); do
        (($(now_ms) - t_restart < 40000)) || fail "$dev returns after tokyo restarts" "no reply within 40 s"
        sleep 0.1
    done
    pass "$dev returns after tokyo restarts" "first reply $((at - t_restart)) ms after the restart began"
    figure "tokyo restart -> $dev's first reply" "$((at - t_restart)) ms"
    ping_bg_stop "$dev"
done
ping_bg_stop d3; tx=$BG_TX rx=$BG_RX
((tx >= 10 && tx - rx <= 1)) || fail "frankfurt's d3 never interrupted" "$rx/$tx replies during tokyo's kill and restart"
pass "frankfurt's d3 never interrupted" "$rx/$tx replies during tokyo's kill and restart"
figure "d3 ping during tokyo kill+restart" "$rx/$tx"

stage "9. PostgreSQL stopped for 10 s"
ping_bg_start d1
ping_bg_start d3
t_down=$(now_ms)
pg_stop_lab pg main
body=""
until [[ $API_STATUS == 503 ]]; do
    create_sim >/dev/null 2>&1 || sleep 0.1
    (($(now_ms) - t_down < 8000)) || fail "api answers 503 while PostgreSQL is down" "createSim -> HTTP $API_STATUS"
done
body=$(cat "$WORK/api-last.json")
jq -e '(.code | type == "string" and length > 0) and (.message | type == "string" and length > 0)' <<<"$body" >/dev/null ||
    fail "503 body is {code,message}" "$body"
api GET /v1/sims >/dev/null 2>&1 || true
[[ $API_STATUS == 503 ]] || fail "listSims answers 503 while PostgreSQL is down" "HTTP $API_STATUS"
pass "api answers 503 {code,message} while PostgreSQL is down" "$body"
while (($(now_ms) - t_down < 10000)); do sleep 0.2; done
pg_start_lab pg main
t_up=$(now_ms)
until create_sim >"$WORK/after-outage.json" 2>/dev/null; do
    (($(now_ms) - t_up < 30000)) || fail "createSim works again without restarting a node" "HTTP $API_STATUS 30 s after PostgreSQL came back"
    sleep 0.2
done
figure "PostgreSQL back -> createSim 201" "$(($(now_ms) - t_up)) ms"
pass "createSim works again without restarting a node" "$(($(now_ms) - t_up)) ms after PostgreSQL came back"
for dev in d1 d3; do
    ping_bg_stop "$dev"; tx=$BG_TX rx=$BG_RX
    ((tx >= 50 && tx - rx <= 1)) || fail "$dev's tunnel while PostgreSQL was down" "$rx/$tx replies"
    pass "$dev's tunnel while PostgreSQL was down" "$rx/$tx replies"
    figure "$dev ping during the database outage" "$rx/$tx"
done
if ((PEER_CHANGES)); then
    dev_create d4
    ms=$(ping_until d4 20) || fail "a new device connects after the outage (d4 via tokyo)" "no reply within 20 s"
    pass "a new device connects after the outage (d4 via tokyo)" "$ms ms"
fi

stage "10. every node alive, no panic"
for node in api tokyo frankfurt; do
    proc_is_ours "${NODE_PID[$node]}" "$(basename "$ARCD" | cut -c1-15)" || fail "$node alive" "PID ${NODE_PID[$node]} gone"
    ! grep -q panicked "$WORK/$node.log" || fail "$node's log has no panic" "$(grep -m1 panicked "$WORK/$node.log")"
done
pass "api, tokyo, frankfurt alive, no panic in their logs"
stage "done"
