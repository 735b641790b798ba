#!/usr/bin/env bash
# pg-failover.sh — end-to-end proof that arcd rides out the loss of its PostgreSQL primary (issue
# 14, "HA of the engine"): a primary with a synchronous streaming standby (Debian's PostgreSQL 15),
# arcd nodes whose store URL names both hosts with target_session_attrs=read-write, createSim in a
# loop recording every 201, kill -9 of the primary, pg_ctl promote of the standby. Run as root;
# scripts/test.sh runs it.
#
#   namespace <p>lan: bridge br0, 10.98.0.0/24
#   <p>pg .2      primary: synchronous_standby_names = standby1 (a commit is acknowledged only once
#                 the standby has its WAL on disk)
#   <p>pg2 .3     hot standby (pg_basebackup -R from the primary, cluster_name standby1)
#   <p>api .10    arcd: API only       } [store] url = postgres://arcd@10.98.0.2:5432,10.98.0.3:5432/
#   <p>tokyo .11  arcd: ap-northeast-1 }   arcd?target_session_attrs=read-write&connect_timeout=3
#   <p> = arcfo-<pid>-. No default route, no link to the host.
#
# Asserts: the standby streams synchronously (pg_stat_replication.sync_state = sync) and is read-only
# → createSim on api in a loop (every 201 recorded) → kill -9 of the primary's postmaster and its
# children → pg_ctl promote on the standby → writes resume within 30 s of the kill with no arcd
# restarted (both nodes still the same PIDs) → [PEER CHANGES] the last SIM made on api is a peer
# on tokyo (its outbox follower reconnected to the promoted server) → every SIM acknowledged with 201, before and after
# the failover, is listed by listSims and answered by getSim; the promoted server holds exactly
# the SIMs the API acknowledged, give or take requests that were cut off unanswered. Prints the
# write gap (last 201 answered before the kill → 201 answering the first createSim sent after it)
# and kill → that 201.
#
# Environment: ARCD_BIN=PATH (use this arcd instead of building it), E2E_KEEP_WORK=1,
# E2E_LOG_LEVEL=F, E2E_WRITES_BEFORE=N (201s before the kill, default 40), E2E_PEER_CHANGES=1
# (default: also check that tokyo's follower of the peer-change outbox holds, after the failover,
# the last SIM created on api; 0 skips it, for a build without the outbox).
# Needs: root, iproute2, postgresql-15, jq, curl, iputils-ping, procps (and what the nodes need).
set -euo pipefail

E2E_NAME=pg-failover.sh
NS_PREFIX="arcfo-$$-"
# shellcheck source=scripts/e2e/lib/cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/cluster.sh"
WRITES_BEFORE=${E2E_WRITES_BEFORE:-40}
PEER_CHANGES=${E2E_PEER_CHANGES:-1}
[[ $WRITES_BEFORE =~ ^[0-9]+$ ]] && ((WRITES_BEFORE >= 1)) || { echo "$E2E_NAME: E2E_WRITES_BEFORE: a positive number" >&2; exit 2; }

cluster_init
build_arcd

stage "1. LAN"
lan_up pg=$ADDR_PG pg2=$ADDR_PG2 api=$ADDR_API tokyo=$ADDR_TOKYO

stage "2. primary and synchronous standby (scripts/provision/postgres.sh)"
pg_up pg primary --synchronous-standby standby1
pg_up pg2 standby1 --standby-of "$ADDR_PG:$PG_PORT_LAB"
t0=$(now_ms)
until [[ $(psql_at pg "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'" 2>/dev/null) == sync ]]; do
    (($(now_ms) - t0 < 15000)) || fail "standby1 streams synchronously" "pg_stat_replication: $(psql_at pg 'SELECT application_name, state, sync_state FROM pg_stat_replication' 2>&1)"
    sleep 0.2
done
[[ $(psql_at pg2 'SELECT pg_is_in_recovery()') == t ]] || fail "standby1 is a hot standby" "pg_is_in_recovery() is not true"
pass "primary $ADDR_PG with synchronous standby1 $ADDR_PG2" "sync_state = sync, standby read-only"

stage "3. arcd nodes with a multi-host URL"
STORE_URL="postgres://arcd@$ADDR_PG:$PG_PORT_LAB,$ADDR_PG2:$PG_PORT_LAB/arcd?target_session_attrs=read-write&connect_timeout=3"
node_start api yes none
node_start tokyo no "$RP_TOKYO"
api_login
pids_before="${NODE_PID[api]} ${NODE_PID[tokyo]}"

stage "4. createSim in a loop, kill -9 the primary, promote the standby"
# writer: createSim after createSim; one line per answer:
# "<sent, UNIX ms> <answered, UNIX ms> <HTTP status> <simId or -> <the device's public key or ->".
writer() {
    local id sent
    while [[ ! -e $WORK/writer.stop ]]; do
        sent=$(now_ms)
        # (Not in $(...): API_STATUS must be set in this shell.)
        if API_OUT=$WORK/writer-last.json create_sim >"$WORK/writer-sim.json" 2>/dev/null; then
            id=$(jq -r '(.simId // "-") + " " + (.arcSessionStatus.arcClientPeerPublicKey // "-")' "$WORK/writer-sim.json" 2>/dev/null) || id="- -"
            echo "$sent $(now_ms) $API_STATUS $id"
        else
            echo "$sent $(now_ms) $API_STATUS - -"
            sleep 0.1
        fi
    done >>"$WORK/writes.txt"
}
writer &
PIDS+=("$!:bash")
WRITER_PID=$!
acked() { awk '$3 == 201' "$WORK/writes.txt" 2>/dev/null | wc -l; }
t0=$(now_ms)
until (($(acked) >= WRITES_BEFORE)); do
    (($(now_ms) - t0 < 30000)) || fail "createSim loop" "only $(acked) 201s in 30 s: $(tail -n 3 "$WORK/writes.txt" 2>/dev/null | tr '\n' ' ')"
    sleep 0.1
done
t_kill=$(now_ms)
pg_kill "${PG_PID_OF[primary]}" KILL
pass "kill -9 the primary's postmaster and its children" "after $(acked) acknowledged createSims"
nsx pg2 runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$WORK/pg-standby1/data" -w -t 30 promote >/dev/null ||
    fail "pg_ctl promote standby1" "see its log"
[[ $(psql_at pg2 'SELECT pg_is_in_recovery()') == f ]] || fail "standby1 promoted" "still in recovery"
pass "pg_ctl promote standby1" "$(($(now_ms) - t_kill)) ms after the kill"
# Writes resumed: the answer to the first createSim sent after the kill (one in flight at the kill
# may have committed before it).
first_after() { awk -v t="$t_kill" '$1 > t && $3 == 201 { print $2; exit }' "$WORK/writes.txt"; }
until [[ -n $(first_after) ]]; do
    (($(now_ms) - t_kill < 30000)) || fail "writes resume within 30 s without restarting arcd" "last answers: $(tail -n 3 "$WORK/writes.txt" | tr '\n' ' ')"
    sleep 0.1
done
resumed=$(first_after)
last_before=$(awk -v t="$t_kill" '$2 <= t && $3 == 201 { l = $2 } END { print l }' "$WORK/writes.txt")
failed=$(awk -v t="$t_kill" '$2 > t && $3 != 201' "$WORK/writes.txt" | wc -l)
statuses=$(awk -v t="$t_kill" '$2 > t && $3 != 201 { print $3 }' "$WORK/writes.txt" | sort | uniq -c | awk '{ printf "%s x%s ", $2, $1 }')
pass "writes resume without restarting arcd" "first 201 $((resumed - t_kill)) ms after the kill; $failed failed answers in between: ${statuses:-none}"
figure "write gap (last 201 before kill -> first 201 of a request sent after)" "$((resumed - last_before)) ms"
figure "kill -9 primary -> first 201 of a request sent after" "$((resumed - t_kill)) ms"
t0=$(now_ms)
until (($(awk -v t="$resumed" '$1 > t && $3 == 201' "$WORK/writes.txt" | wc -l) >= 10)); do
    (($(now_ms) - t0 < 15000)) || fail "writes go on after the failover" "fewer than 10 201s in 15 s"
    sleep 0.1
done
touch "$WORK/writer.stop"
wait "$WRITER_PID" || true
[[ "${NODE_PID[api]} ${NODE_PID[tokyo]}" == "$pids_before" ]] && proc_is_ours "${NODE_PID[api]}" "$(basename "$ARCD" | cut -c1-15)" &&
    proc_is_ours "${NODE_PID[tokyo]}" "$(basename "$ARCD" | cut -c1-15)" || fail "no arcd node restarted" "a node's PID changed or is gone"
pass "no arcd node restarted" "api PID ${NODE_PID[api]}, tokyo PID ${NODE_PID[tokyo]}"
if ((PEER_CHANGES)); then
    # tokyo's follower of the peer-change outbox rode out the failover too: the last SIM created
    # on api after it is a peer of tokyo's data plane.
    last_pub=$(awk '$3 == 201 { k = $5 } END { print k }' "$WORK/writes.txt")
    t0=$(now_ms)
    until in_mnt timeout 5 wg show "$UAPI_TOKYO" peers 2>/dev/null | grep -qxF -- "$last_pub"; do
        (($(now_ms) - t0 < 30000)) || fail "[PEER CHANGES] tokyo follows the outbox after the failover" "the last SIM's key $last_pub is not a peer of tokyo after 30 s"
        sleep 0.2
    done
    pass "[PEER CHANGES] tokyo follows the outbox after the failover" "the last SIM created on api is a peer on tokyo"
fi

stage "5. no acknowledged write lost"
awk '$3 == 201 { print $4 }' "$WORK/writes.txt" | sort >"$WORK/acked.txt"
n_acked=$(wc -l <"$WORK/acked.txt")
: >"$WORK/listed.txt"
after=""
while :; do
    page=$(api GET "/v1/sims?limit=1000${after:+&last_evaluated_key=$after}") || fail "listSims on api after the failover" "see above"
    jq -r '.[].simId' <<<"$page" >>"$WORK/listed.txt"
    (($(jq length <<<"$page") == 1000)) || break
    after=$(jq -r '.[-1].simId' <<<"$page")
done
sort -o "$WORK/listed.txt" "$WORK/listed.txt"
missing=$(comm -23 "$WORK/acked.txt" "$WORK/listed.txt" | wc -l)
((missing == 0)) || fail "every acknowledged SIM listed" "$missing of $n_acked missing, e.g. $(comm -23 "$WORK/acked.txt" "$WORK/listed.txt" | head -n 3 | tr '\n' ' ')"
extra=$(comm -13 "$WORK/acked.txt" "$WORK/listed.txt" | wc -l)
cut_off=$(awk '$3 != 201' "$WORK/writes.txt" | wc -l)
((extra <= cut_off)) || fail "no SIM appeared from nowhere" "$extra listed SIMs were never acknowledged, but only $cut_off requests failed"
pass "listSims: every one of the $n_acked acknowledged SIMs is there" "$extra more from requests answered with an error (of $cut_off)"
while read -r id; do
    api GET "/v1/sims/$id" >/dev/null || fail "getSim $id (acknowledged) after the failover" "HTTP $API_STATUS"
done < <(awk -v t="$t_kill" '$2 <= t && $3 == 201 { print $4 }' "$WORK/writes.txt" | tail -n 10)
pass "getSim answers the last 10 SIMs acknowledged before the kill"
figure "acknowledged createSims (before + after the failover)" "$n_acked"
stage "done"
