#!/usr/bin/env bash
# SQLite and PostgreSQL side by side: runs scripts/bench/api.sh (createSim, getSim, listSims over
# BENCH_SIMS SIMs, cold start) on each engine, BENCH_ROUNDS times (default 2), interleaved
# (sqlite, postgres, sqlite, postgres, …) so that the load other work puts on the machine falls on
# both alike, then prints every round's figures and their spread per row.
#
#   scripts/bench/engines.sh                 # release build of this checkout, 2 rounds
#   BENCH_ROUNDS=3 BENCH_DURATION=10s BENCH_SIMS=100000 scripts/bench/engines.sh
#
# Every BENCH_* variable of api.sh passes through (BENCH_PORT, BENCH_UDP_PORT, BENCH_TUN,
# BENCH_PG_VIA, BENCH_ARCD); BENCH_ENGINES (default "sqlite postgres") picks the engines.
# Each run's full report is kept in BENCH_OUT (default a new temporary directory).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
rounds=${BENCH_ROUNDS:-2}
engines=${BENCH_ENGINES:-sqlite postgres}
out=${BENCH_OUT:-$(mktemp -d -t arcd-engines.XXXXXX)}
mkdir -p "${out}"

if [[ -z ${BENCH_ARCD:-} ]]; then
    (cd "${repo}" && cargo build --release --locked)
    export BENCH_ARCD="${repo}/target/release/arcd"
fi

for round in $(seq 1 "${rounds}"); do
    for engine in ${engines}; do
        report="${out}/${engine}-${round}.txt"
        echo "== round ${round}/${rounds}: ${engine} (report: ${report}) load $(cut -d' ' -f1-3 /proc/loadavg)"
        if ! BENCH_ENGINE=${engine} "${repo}/scripts/bench/api.sh" >"${report}" 2>&1; then
            tail -30 "${report}" >&2
            echo "api.sh failed on ${engine}, round ${round}" >&2
            exit 1
        fi
        grep '^BENCH_ROW' "${report}" | sed "s/^BENCH_ROW /BENCH_ROW round=${round} /" >>"${out}/rows.txt"
    done
done

# One line per engine and row: each round's value, then min-max. Rates for the wrk rows, p50 and
# p99 besides; the curl and start-up rows have one time (ms) in the p50 column.
echo
echo "machine: $(nproc) cores, $(uname -r); load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
awk '
function field(name,   i, kv) {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == name) return kv[2] }
    return ""
}
function spread(list,   n, parts, i, lo, hi, v) {
    n = split(list, parts, " ")
    lo = ""; hi = ""
    for (i = 1; i <= n; i++) {
        if (parts[i] == "-") continue
        v = parts[i] + 0
        if (lo == "" || v < lo) lo = v
        if (hi == "" || v > hi) hi = v
    }
    if (lo == "") return "-"
    return sprintf("%s (%g-%g)", list, lo, hi)
}
/^BENCH_ROW/ {
    k = field("engine") " " field("key")
    if (!(k in seen)) { seen[k] = 1; order[++n] = k }
    rps[k] = rps[k] " " field("rps"); p50[k] = p50[k] " " field("p50"); p99[k] = p99[k] " " field("p99")
    errors[k] += field("errors") == "-" ? 0 : field("errors")
}
END {
    for (i = 1; i <= n; i++) {
        k = order[i]
        printf "%-28s req/s:%s  p50 ms:%s  p99 ms:%s  errors: %d\n", k, spread(substr(rps[k], 2)), spread(substr(p50[k], 2)), spread(substr(p99[k], 2)), errors[k]
    }
}' <(sort -s -t' ' -k3,3 -k4,4 "${out}/rows.txt")
echo "reports: ${out}"
