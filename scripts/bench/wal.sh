#!/usr/bin/env bash
# wal.sh — size of arcd's SQLite WAL under sustained createSim at full rate (wrk, 2 threads,
# 16 connections over HTTPS keep-alive), sampled every second; prints the createSim rate, the
# largest WAL seen, the WAL at the end and the database size. Issue 11 item 1: the WAL must stay
# under 64 MiB over 120 s (before the fix it grew by the whole write rate and never shrank).
#
#   wal.sh [ARCD_BINARY...]     each binary is measured in turn (default: cargo build --release)
#
# Environment (not ARCD_*, which arcd reads as configuration):
#   WAL_DURATION (default 120s)  WAL_PORT (default 18543)  WAL_ROUNDS (default 1: with several
#   binaries, rounds interleave them A B A B ...)
# arcd runs with TLS on, no TUN device and its rendezvous point on an ephemeral 127.0.0.1 UDP port
# (no root needed, nothing clashes with another arcd), a /12 client pool (createSim at ~3,000/s for
# 120 s needs more than the default /16), RUST_LOG=warn. Needs wrk, curl, jq. Writes only to its
# temporary directories; arcd is stopped by PID.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench_dir="${repo}/scripts/bench"
port=${WAL_PORT:-18543}
duration=${WAL_DURATION:-120s}
rounds=${WAL_ROUNDS:-1}
base="https://127.0.0.1:${port}"
for tool in wrk curl jq; do
    command -v "${tool}" >/dev/null || { echo "missing ${tool}" >&2; exit 1; }
done

binaries=("$@")
if ((${#binaries[@]} == 0)); then
    (cd "${repo}" && cargo build --release --locked)
    binaries=("${repo}/target/release/arcd")
fi

work=""
arcd_pid=""
sampler_pid=""
cleanup() {
    set +e
    [[ -z ${sampler_pid} ]] || kill "${sampler_pid}" 2>/dev/null
    if [[ -n ${arcd_pid} ]] && kill -0 "${arcd_pid}" 2>/dev/null; then
        kill "${arcd_pid}"
        wait "${arcd_pid}" 2>/dev/null
    fi
    [[ -z ${work} ]] || rm -rf "${work}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

measure() { # binary: prints one result line
    local arcd=$1
    work=$(mktemp -d -t arcd-wal.XXXXXX)
    cat >"${work}/wal.toml" <<TOML
data_dir = "${work}/data"
[api]
listen = "127.0.0.1:${port}"
[tun]
enabled = false
[[rendezvous_points]]
id = "ap-northeast-1"
listen = "127.0.0.1:0"
endpoint = "127.0.0.1:11010"
pool = "10.64.0.0/12"
allowed_ips = ["100.127.0.0/16"]
TOML
    # The per-operator SIM quota (default 10,000) would turn most of a full-rate run into 400s;
    # binaries from before the quota existed reject the key, so it is set only for those that know it.
    if grep -q max_per_operator "${arcd}"; then
        printf '[sims]\nmax_per_operator = 10000000\n' >>"${work}/wal.toml"
    fi
    # shellcheck disable=SC2046 # one "-u NAME" pair per variable
    env $(compgen -e | grep '^ARCD_' | sed 's/^/-u /') RUST_LOG=warn "${arcd}" serve --config "${work}/wal.toml" >"${work}/arcd.log" 2>&1 &
    arcd_pid=$!
    for _ in $(seq 1 200); do
        curl -skf -o /dev/null "${base}/openapi.yaml" && break
        kill -0 "${arcd_pid}" 2>/dev/null || { cat "${work}/arcd.log"; exit 1; }
        sleep 0.1
    done
    local auth
    auth=$(jq '{authKeyId, authKey}' "${work}/data/root-credentials.json" |
        curl -skf -X POST "${base}/v1/auth" -H 'Content-Type: application/json' -d @-)
    BENCH_API_KEY=$(jq -r .apiKey <<<"${auth}")
    BENCH_TOKEN=$(jq -r .token <<<"${auth}")
    export BENCH_API_KEY BENCH_TOKEN
    local wal="${work}/data/arcd.sqlite-wal"
    (while :; do stat -c %s "${wal}" 2>/dev/null || echo 0; sleep 1; done) >"${work}/wal-samples" &
    sampler_pid=$!
    wrk -t2 -c16 "-d${duration}" -s "${bench_dir}/create_sim.lua" "${base}/v1/sims" >"${work}/wrk.txt"
    kill "${sampler_pid}"
    wait "${sampler_pid}" 2>/dev/null || true
    sampler_pid=""
    local line rps requests non2xx max_wal end_wal db
    line=$(grep '^BENCH_RESULT' "${work}/wrk.txt")
    rps=$(sed -E 's/.* rps=([0-9.]+).*/\1/' <<<"${line}")
    requests=$(sed -E 's/.* requests=([0-9]+).*/\1/' <<<"${line}")
    non2xx=$(sed -E 's/.* non2xx=([0-9]+).*/\1/' <<<"${line}")
    max_wal=$(sort -n "${work}/wal-samples" | tail -n 1)
    end_wal=$(stat -c %s "${wal}" 2>/dev/null || echo 0)
    db=$(stat -c %s "${work}/data/arcd.sqlite")
    printf '| %s | %s | %s | %s | %.1f MiB | %.1f MiB | %.1f MiB | %s |\n' "${arcd}" "${duration}" \
        "${rps}" "${non2xx}" "$(bc -l <<<"${max_wal}/1048576")" "$(bc -l <<<"${end_wal}/1048576")" \
        "$(bc -l <<<"${db}/1048576")" "$(wc -l <"${work}/wal-samples")"
    kill "${arcd_pid}"
    wait "${arcd_pid}" 2>/dev/null || true
    arcd_pid=""
    rm -rf "${work}"
    work=""
}

echo "| binary | wrk -d | createSim/s | non-2xx | WAL max (1 s samples) | WAL at end | database | samples |"
echo "|---|---|---|---|---|---|---|---|"
for _ in $(seq 1 "${rounds}"); do
    for arcd in "${binaries[@]}"; do
        measure "${arcd}"
    done
done
echo "machine: $(nproc) cores, load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
