#!/usr/bin/env bash
# createSim-shaped writes on a throw-away PostgreSQL 15 (scripts/lib/postgres.sh): one transaction
# of 4 inserts + 1 update (scripts/bench/pg/createsim.sql; createsim-counters.sql adds today's two
# counter-row updates) over the unix socket and over loopback TCP, with 1 and 16 clients, synchronous_commit on (the default). Prints transactions/s and
# p50/p99 latency (ms) from pgbench's per-transaction log. PG_BENCH_SCRIPTS picks scripts of
# scripts/bench/pg/ (createsim-outbox*: with the peer-change outbox row, and its NOTIFY inside or after
# the transaction).
#
#   scripts/bench/pg-createsim.sh [SECONDS]     # default 10 s per run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/lib/postgres.sh
source scripts/lib/postgres.sh
SECONDS_PER_RUN=${1:-10}
PGBENCH=$PG_BIN/pgbench
pg_start >/dev/null
trap pg_stop EXIT
psql "$PG_URL" -XAtq -c 'show synchronous_commit' | grep -qx on
psql "$PG_URL" -XAtq -v ON_ERROR_STOP=1 -f scripts/bench/pg/schema.sql
logs=$PG_DIR/logs
mkdir -p "$logs"
printf '%-18s %-5s %7s %9s %8s %8s\n' script via clients tx/s p50_ms p99_ms
for script in ${PG_BENCH_SCRIPTS:-createsim createsim-nohot createsim-counters}; do
for via in unix tcp; do
    if [[ $via == unix ]]; then host=$PG_DIR; else host=127.0.0.1; fi
    for clients in 1 16; do
        rm -f "$logs"/*
        out=$PG_DIR/pgbench-$script-$via-$clients.out
        (cd "$logs" && "$PGBENCH" -n -h "$host" -p "$PG_PORT" -U arcd -M prepared \
            -c "$clients" -j "$((clients < 2 ? 1 : 2))" -T "$SECONDS_PER_RUN" -l \
            --log-prefix=tx -f "$OLDPWD/scripts/bench/pg/$script.sql" postgres >"$out" 2>&1) ||
            { cat "$out" >&2; exit 1; }
        tps=$(grep -oP 'tps = \K[0-9.]+' "$out" | head -1)
        # Per-transaction log: client tx_no latency_us script epoch_s epoch_us.
        read -r p50 p99 < <(cat "$logs"/tx.* | awk '{print $3}' | sort -n |
            awk '{a[NR]=$1} END {printf "%.2f %.2f\n", a[int(NR*0.50)]/1000, a[int(NR*0.99)]/1000}')
        printf '%-18s %-5s %7s %9.0f %8s %8s\n' "$script" "$via" "$clients" "$tps" "$p50" "$p99"
    done
done
done
