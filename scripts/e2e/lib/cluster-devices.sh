# cluster-devices.sh — devices of the multi-node lab (scripts/e2e/multinode.sh): each a
# namespace on the LAN with Debian's wireguard-go + wg, set up by scripts/provision/device.sh
# from a SIM made through node api. Sourced after lib/cluster.sh, not run.
# shellcheck shell=bash

# dev_up DEV [device.sh options...]: device.sh in DEV's namespace (interface wg-DEV, state in
# WORK/DEV), its wireguard-go PID file registered for the cleanup before it runs.
dev_up() {
    local dev=$1 entry
    shift
    entry="$WORK/$dev.wireguard-go.pid:wireguard-go"
    [[ " ${PIDFILES[*]} " == *" $entry "* ]] || PIDFILES+=("$entry")
    nsx "$dev" "$PROV/device.sh" --interface "wg-$dev" --mtu "$MTU" --wg-log-level error \
        --pid-file "$WORK/$dev.wireguard-go.pid" --log-file "$WORK/wireguard-go-$dev.log" \
        "$@" "$WORK/$dev" 2>&1 | sed 's/^/    /'
    return "${PIPESTATUS[0]}"
}

# dev_create DEV [HOST_HEADER]: a new SIM through node api's API for DEV (device.sh: createSim,
# wg setconf, address, routes), no ping yet.
dev_create() {
    local dev=$1 host=${2:-}
    dev_up "$dev" --api "https://$ADDR_API:$API_PORT" --auth "$WORK/api-data/root-credentials.json" \
        --cacert "$WORK/api-data/tls-cert.pem" ${host:+--host-header "$host"} ||
        fail "device $dev: createSim on node api and wireguard-go (device.sh)" "output above"
}

dev_sim() { jq -r "$2" "$WORK/$1/sim.json"; }
dev_pub() { cat "$WORK/$1/public.key"; }

# The RP node's view: latest handshake (UNIX s, 0 = none) of DEV's key on control socket SOCK.
node_handshake() { # node_handshake SOCK DEV
    local out
    out=$(in_mnt timeout 5 wg show "$1" latest-handshakes 2>/dev/null) || { echo 0; return; }
    awk -v k="$(dev_pub "$2")" '$1 == k { print $2; f = 1 } END { if (!f) print 0 }' <<<"$out"
}
node_has_peer() { in_mnt timeout 5 wg show "$1" peers 2>/dev/null | grep -qxF "$(dev_pub "$2")"; }

# ping_until DEV DEADLINE_S: one probe every 100 ms until the first reply through DEV's tunnel;
# prints the ms it took, status 1 when nothing answered.
ping_until() {
    local dev=$1 deadline=$2 t0 out=$WORK/ping-until-$1.out
    t0=$(now_ms)
    nsx "$dev" timeout $((deadline + 3)) ping -n -c 1 -i 0.1 -W 1 -w "$deadline" "$PLATFORM_ADDR" >"$out" 2>&1 || return 1
    echo $(($(now_ms) - t0))
}

# ping_count DEV COUNT INTERVAL: replies out of COUNT probes (one every INTERVAL s).
ping_count() {
    local out n
    out=$(nsx "$1" timeout $(($2 + 10)) ping -n -q -c "$2" -i "$3" -W 1 "$PLATFORM_ADDR" 2>/dev/null) || true
    n=$(sed -n 's/.* transmitted, \([0-9]*\) received.*/\1/p' <<<"$out")
    echo "${n:-0}"
}

# ping_bg_start DEV: a continuous ping (every 100 ms) from DEV in the background, for the outage
# stages; ping_bg_stop DEV stops it (SIGINT: ping prints its summary) and sets BG_TX and BG_RX.
declare -A PING_BG=()
ping_bg_start() {
    # -O: a line for a probe that got no answer too, so ping_bg_wait counts every probe.
    # -D: each line stamped (UNIX s.us), for bg_first_reply_after.
    spawn "$1" "$WORK/ping-bg-$1.out" ping ping -n -D -O -i 0.1 -W 1 "$PLATFORM_ADDR"
    PING_BG[$1]=$SPAWNED_PID
}
# ping_bg_wait DEV N: until DEV's background ping has sent at least N probes (the observation
# window of an outage stage).
ping_bg_wait() {
    local dev=$1 n=$2 t0
    t0=$(now_ms)
    until (($(grep -c 'icmp_seq=' "$WORK/ping-bg-$dev.out" 2>/dev/null || true) >= n)); do
        (($(now_ms) - t0 < n * 100 + 10000)) || fail "$dev's background ping" "fewer than $n probes sent"
        sleep 0.1
    done
}
ping_bg_stop() {
    local pid=${PING_BG[$1]} out=$WORK/ping-bg-$1.out
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    BG_TX=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$out")
    BG_RX=$(sed -n 's/.* transmitted, \([0-9]*\) received.*/\1/p' "$out")
    BG_TX=${BG_TX:-0} BG_RX=${BG_RX:-0}
}

# bg_first_reply_after DEV MS: UNIX ms of the first reply in DEV's background ping after MS;
# status 1 when there is none yet.
bg_first_reply_after() {
    awk -v t="$2" '/bytes from/ { gsub(/[\[\]]/, "", $1); ms = $1 * 1000; if (ms > t) { printf "%.0f\n", ms; found = 1; exit } }
        END { exit !found }' "$WORK/ping-bg-$1.out"
}

# expect_pings DEV NAME: 5 of 5 probes answered through DEV's tunnel.
expect_pings() {
    local got
    got=$(ping_count "$1" 5 0.2)
    ((got == 5)) || fail "$2" "$got/5 replies through $1's tunnel"
    pass "$2" "5/5 replies"
}

# expect_cut_off DEV NAME: no reply any more, and a fresh handshake with the key the device holds
# gets no answer either (polls up to 10 s for the change to reach the RP node first).
expect_cut_off() {
    local dev=$1 name=$2 t0 got=1 srv
    t0=$(now_ms)
    while (($(now_ms) - t0 < 10000)); do
        got=$(ping_count "$dev" 3 0.2)
        ((got == 0)) && break
    done
    ((got == 0)) || fail "$name" "$dev still gets replies 10 s after the change on node api"
    srv=$(dev_sim "$dev" .arcSessionStatus.arcServerPeerPublicKey)
    nsx "$dev" timeout 10 wg set "wg-$dev" peer "$srv" remove
    nsx "$dev" timeout 10 wg setconf "wg-$dev" "$WORK/$dev/wg.conf"
    got=$(ping_count "$dev" 6 0.5)
    ((got == 0)) || fail "$name" "$got replies after a fresh handshake with the old key"
    pass "$name" "no reply within $(($(now_ms) - t0)) ms, and none after a fresh handshake"
}

# Quantile Q (0-100) of the numbers in FILE (one a line), nearest rank.
quantile() {
    sort -n "$2" | awk -v q="$1" '{ v[NR] = $1 } END { if (!NR) { print "n/a"; exit } i = int((q / 100) * NR + 0.999999); if (i < 1) i = 1; print v[i] }'
}
