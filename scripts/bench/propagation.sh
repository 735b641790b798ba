#!/usr/bin/env bash
# Peer-change propagation benchmark (issue 14): how long a committed session change takes to reach
# the data plane that holds the peer, at a steady rate of changes (createSim, each one a new peer).
#
#   postgres  PostgreSQL 15 (a throw-away server, scripts/lib/postgres.sh, on this box), node `api`
#             ([node] api = true, rendezvous_points = []) takes the createSims, node `rp`
#             (api = false, rendezvous_points = ["*"]) follows the outbox and installs the peers:
#             commit on one process, applied by another.
#   sqlite    one arcd (API and rendezvous point in one process): the same outbox, followed
#             in-process.
# Each applied change logs `propagation_ms` (now − the change's commit time, on the follower's
# clock); the script reads those lines of the node holding the peers and prints count, p50, p99,
# max. The rate comes from wrk with scripts/bench/create_sim_paced.lua (BENCH_CONNECTIONS
# connections, each pausing BENCH_DELAY_MS between requests); the achieved rate is printed.
#
#   scripts/bench/propagation.sh            # both engines, ~200 changes/s for 20 s each
#   BENCH_ENGINES=postgres BENCH_DURATION=60s scripts/bench/propagation.sh
#
# Needs: cargo, wrk, curl, jq, awk and Debian's postgresql-15. Writes only to its temp directory;
# stops only the processes it started (by PID). Environment (not ARCD_*, which arcd reads):
#   BENCH_ENGINES ("sqlite postgres")  BENCH_DURATION (20s)  BENCH_CONNECTIONS (4)
#   BENCH_DELAY_MS (18)  BENCH_PORT (18490)  BENCH_UDP_PORT (21090)  BENCH_ARCD (binary to measure)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench_dir="${repo}/scripts/bench"
engines=${BENCH_ENGINES:-sqlite postgres}
duration=${BENCH_DURATION:-20s}
connections=${BENCH_CONNECTIONS:-4}
export BENCH_DELAY_MS=${BENCH_DELAY_MS:-18}
port=${BENCH_PORT:-18490}
udp_port=${BENCH_UDP_PORT:-21090}
base="http://127.0.0.1:${port}"

for tool in cargo wrk curl jq awk; do
    command -v "${tool}" >/dev/null || { echo "missing ${tool}" >&2; exit 1; }
done

work=$(mktemp -d -t arcd-propagation.XXXXXX)
chmod 0755 "${work}"
pids=()
pg_started=0
# shellcheck source=scripts/lib/postgres.sh
source "${repo}/scripts/lib/postgres.sh"

stop_nodes() {
    local pid
    for pid in "${pids[@]}"; do
        if kill -0 "${pid}" 2>/dev/null; then
            kill "${pid}"
            wait "${pid}" 2>/dev/null || true
        fi
    done
    pids=()
}
cleanup() {
    stop_nodes
    if ((pg_started)); then pg_stop; fi
    rm -rf "${work}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section() { printf '\n==== %s ====\n' "$*"; }

if [[ -n ${BENCH_ARCD:-} ]]; then
    arcd=${BENCH_ARCD}
else
    section "build (cargo build --release --locked)"
    (cd "${repo}" && cargo build --release --locked)
    arcd="${repo}/target/release/arcd"
fi

write_config() { # file data_dir store_toml node_toml
    cat > "$1" <<TOML
data_dir = "$2"
$3
$4
[api]
listen = "127.0.0.1:${port}"
tls = false

[tun]
enabled = false

[sims]
max_per_operator = 1000000

[[rendezvous_points]]
id = "ap-northeast-1"
listen = "127.0.0.1:${udp_port}"
endpoint = "127.0.0.1:${udp_port}"
pool = "10.64.0.0/14"
allowed_ips = ["100.127.0.0/16"]
TOML
}

start_node() { # config log
    # shellcheck disable=SC2046 # one "-u NAME" pair per variable
    env $(compgen -e | grep '^ARCD_' | sed 's/^/-u /') RUST_LOG=info,arcd::api=warn NO_COLOR=1 \
        "${arcd}" serve --config "$1" >>"$2" 2>&1 &
    pids+=("$!")
}

wait_api() { # log
    for _ in $(seq 1 300); do
        curl -sf -o /dev/null "${base}/openapi.yaml" && return 0
        sleep 0.1
    done
    cat "$1"
    echo "the API did not answer on ${base}" >&2
    exit 1
}

wait_log() { # pattern log
    for _ in $(seq 1 300); do
        grep -q -- "$1" "$2" && return 0
        sleep 0.1
    done
    cat "$2"
    echo "no '$1' in $2" >&2
    exit 1
}

results=()
for engine in ${engines}; do
    dir="${work}/${engine}"
    mkdir -p "${dir}"
    case ${engine} in
        sqlite)
            write_config "${dir}/one.toml" "${dir}/one" "" ""
            start_node "${dir}/one.toml" "${dir}/one.log"
            wait_api "${dir}/one.log"
            credentials="${dir}/one/root-credentials.json"
            peer_log="${dir}/one.log"
            ;;
        postgres)
            if ((!pg_started)); then
                pg_start >/dev/null
                pg_started=1
            fi
            store=$(printf '[store]\nengine = "postgres"\nurl = "%s"\n' "${PG_SOCKET_URL}")
            write_config "${dir}/api.toml" "${dir}/api" "${store}" \
                $'[node]\napi = true\nrendezvous_points = []'
            write_config "${dir}/rp.toml" "${dir}/rp" "${store}" \
                $'[node]\napi = false\nrendezvous_points = ["*"]'
            start_node "${dir}/api.toml" "${dir}/api.log"
            wait_api "${dir}/api.log"
            start_node "${dir}/rp.toml" "${dir}/rp.log"
            wait_log "active sessions loaded" "${dir}/rp.log"
            credentials="${dir}/api/root-credentials.json"
            peer_log="${dir}/rp.log"
            ;;
        *) echo "unknown engine ${engine}" >&2; exit 2 ;;
    esac
    auth=$(jq '{authKeyId, authKey}' "${credentials}" |
        curl -sf -X POST "${base}/v1/auth" -H 'Content-Type: application/json' -d @-)
    BENCH_API_KEY=$(jq -r .apiKey <<<"${auth}")
    BENCH_TOKEN=$(jq -r .token <<<"${auth}")
    export BENCH_API_KEY BENCH_TOKEN

    section "${engine}: createSim for ${duration}, ${connections} connections, ${BENCH_DELAY_MS} ms pause each"
    wrk -t1 "-c${connections}" "-d${duration}" --latency -s "${bench_dir}/create_sim_paced.lua" \
        "${base}/v1/sims" | tee "${dir}/wrk.txt"
    result=$(grep '^BENCH_RESULT' "${dir}/wrk.txt")
    created=$(sed -nE 's/.* requests=([0-9]+).*/\1/p' <<<"${result}")
    rate=$(sed -nE 's/.* rps=([0-9.]+).*/\1/p' <<<"${result}")
    non2xx=$(sed -nE 's/.* non2xx=([0-9]+).*/\1/p' <<<"${result}")
    # Let the last changes arrive, then stop the nodes so their logs are complete.
    sleep 2
    stop_nodes
    grep -oE 'propagation_ms=[0-9.]+' "${peer_log}" | cut -d= -f2 | sort -n > "${dir}/propagation.txt"
    applied=$(wc -l < "${dir}/propagation.txt")
    if ((applied == 0)); then
        echo "no propagation_ms in ${peer_log}" >&2
        exit 1
    fi
    stats=$(awk '{ v[NR] = $1 } END {
        p50 = v[int((NR - 1) * 0.50) + 1]; p99 = v[int((NR - 1) * 0.99) + 1];
        printf "%s %s %s", p50, p99, v[NR] }' "${dir}/propagation.txt")
    read -r p50 p99 max <<<"${stats}"
    results+=("$(printf '| %-8s | %7s | %6s | %6s | %7s | %7s | %7s | %s |' \
        "${engine}" "${created}" "${non2xx}" "${rate}" "${applied}" "${p50}" "${p99}" "${max}")")
done

section "summary (propagation = commit → applied on the node holding the peers, ms)"
echo "| engine   | creates | non2xx | rate/s | applied | p50 ms  | p99 ms  | max ms |"
echo "|----------|--------:|-------:|-------:|--------:|--------:|--------:|-------:|"
printf '%s\n' "${results[@]}"
