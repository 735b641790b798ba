# multinode-changes.sh — stage 6 of scripts/e2e/multinode.sh ([PEER CHANGES], E2E_PEER_CHANGES=1):
# changes made through node api reach the data plane of the RP node holding the peer while it
# runs (the store's peer-change outbox), and how long that takes. Sourced, not run.
# shellcheck shell=bash

stage "6a. [PEER CHANGES] delete_session on api: d2's session is reset on tokyo, traffic resumes"
dev_hs() { nsx "$1" timeout 5 wg show "wg-$1" latest-handshakes | awk '{ print $2 }'; }
sim_d2=$(dev_sim d2 .simId)
hs_before=$(dev_hs d2)
while (($(date +%s) <= hs_before)); do sleep 0.2; done # handshake times are whole seconds
api POST "/v1/sims/$sim_d2/delete_session" >/dev/null || fail "delete_session d2 on api" "see above"
t0=$(now_ms)
until (($(dev_hs d2) > hs_before)) && (($(ping_count d2 1 0.2) == 1)); do
    (($(now_ms) - t0 < 30000)) || fail "delete_session: d2 handshakes anew and passes traffic" "latest handshake $(dev_hs d2), was $hs_before"
done
pass "delete_session on api: new handshake on tokyo, traffic resumed" "$(($(now_ms) - t0)) ms"
figure "delete_session on api -> d2 traffic again" "$(($(now_ms) - t0)) ms"

stage "6b. [PEER CHANGES] renew credentials on api: the old key stops on tokyo, the new one works"
(umask 077 && api PUT "/v1/sims/$sim_d2/credentials/arc" '{}' >"$WORK/d2.renew.json") || fail "renew d2 on api" "see above"
jq -r '.arcClientPeerPrivateKey // empty' "$WORK/d2.renew.json" >"$WORK/d2.newkey"
[[ -s $WORK/d2.newkey ]] || fail "renew d2 on api" "no arcClientPeerPrivateKey in the answer"
expect_cut_off d2 "renew: d2's old key gets nothing from tokyo"
api GET "/v1/sims/$sim_d2" >"$WORK/d2.renewed.json" || fail "getSim d2 after renewal" "see above"
dev_up d2 --configure-only --sim-json "$WORK/d2.renewed.json" --key "$WORK/d2.newkey" ||
    fail "renew: device.sh --configure-only with the new key" "output above"
ms=$(ping_until d2 20) || fail "renew: d2's new key works through tokyo" "no reply within 20 s"
pass "renew: d2's new key works through tokyo" "first reply after $ms ms"

stage "6c. [PEER CHANGES] terminate on api: d2 is cut off on tokyo, d1 unaffected"
api POST "/v1/sims/$sim_d2/enable_termination" >/dev/null || fail "enable_termination d2" "see above"
api POST "/v1/sims/$sim_d2/terminate" >/dev/null || fail "terminate d2" "see above"
touch "$WORK/d2.terminated"
expect_cut_off d2 "terminate: d2 gets nothing from tokyo"
t0=$(now_ms)
while node_has_peer "$UAPI_TOKYO" d2; do
    (($(now_ms) - t0 < 5000)) || fail "terminate: d2's key leaves tokyo's peers" "still in wg show $UAPI_TOKYO"
    sleep 0.1
done
expect_pings d1 "d1 unaffected by d2's changes"

stage "6d. [PEER CHANGES] commit on api -> applied on tokyo, over $CHANGES changes"
# Half creations (upserts), half terminations (removals) of SIMs on tokyo, one at a time. The
# RP node logs "peer change followed … propagation_ms=N" (its apply time minus the commit time the
# store recorded) per change and counts it in arcd_peer_change_propagation_seconds.
followed() { grep 'peer change followed' "$WORK/tokyo.log" | grep -o 'propagation_ms=[0-9]*' || true; }
count_before=$(followed | wc -l)
made=()
for ((i = 0; i < CHANGES / 2; i++)); do
    id=$(create_sim | jq -r .simId) || fail "createSim $i on api" "see above"
    made+=("$id")
done
for id in "${made[@]}"; do
    api POST "/v1/sims/$id/enable_termination" >/dev/null && api POST "/v1/sims/$id/terminate" >/dev/null ||
        fail "terminate $id on api" "see above"
done
want=$((count_before + 2 * (CHANGES / 2)))
t0=$(now_ms)
until (($(followed | wc -l) >= want)); do
    (($(now_ms) - t0 < 15000)) || fail "tokyo applies all $CHANGES changes" "$(followed | wc -l) 'peer change followed' lines, want $want"
    sleep 0.2
done
followed | tail -n "$CHANGES" | cut -d= -f2 >"$WORK/propagation.txt"
p50=$(quantile 50 "$WORK/propagation.txt")
p99=$(quantile 99 "$WORK/propagation.txt")
count=$(nsx tokyo curl -fsS -m 3 "$METRICS_URL" | awk '$1 ~ /^arcd_peer_change_propagation_seconds_count/ { s += $2 } END { print s + 0 }')
((count >= CHANGES)) || fail "tokyo's arcd_peer_change_propagation_seconds" "_count $count, want >= $CHANGES"
pass "commit on api -> applied on tokyo" "p50 $p50 ms, p99 $p99 ms over $CHANGES changes; metric count $count"
figure "commit->applied on tokyo (log, $CHANGES changes)" "p50 $p50 ms, p99 $p99 ms"
