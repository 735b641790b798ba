#!/usr/bin/env bash
# The store tests that run on both engines, against a throw-away PostgreSQL 15
# (scripts/lib/postgres.sh) named by ARCD_TEST_POSTGRES_URL; each test works in a schema of its own.
# With the variable set, a test that cannot reach the server fails (it never skips).
#
#   scripts/test-postgres.sh                         # cargo test --lib -- store::
#   scripts/test-postgres.sh store::groups::tests    # other test name filters
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/postgres.sh
source scripts/lib/postgres.sh
pg_start >/dev/null
trap pg_stop EXIT
filters=("$@")
((${#filters[@]})) || filters=(store::)
ARCD_TEST_POSTGRES_URL=$PG_URL cargo test --locked --lib -- "${filters[@]}"
