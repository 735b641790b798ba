#!/usr/bin/env bash
# The tests that run on both store engines, against a throw-away PostgreSQL 15
# (scripts/lib/postgres.sh) named by ARCD_TEST_POSTGRES_URL: the store's unit tests (each in a
# schema of its own) and the in-process API/data-plane/services tests (each test server in a
# schema of its own, see tests/support/store_engine.rs). With the variable set, a test that cannot
# reach the server fails (it never skips).
#
#   scripts/test-postgres.sh                         # all of the above
#   scripts/test-postgres.sh --lib store::groups     # any cargo test selection instead
#
# Not run here (SQLite's own files): backup, crash_durability, graceful_stop, service_notify,
# upgrades, disk_full, cli, api_auth_tokens (opens the SQLite file beside the server).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/postgres.sh
source scripts/lib/postgres.sh
pg_start >/dev/null
trap pg_stop EXIT
export ARCD_TEST_POSTGRES_URL=$PG_URL
if (($#)); then
    cargo test --locked "$@"
    exit
fi
BOTH_ENGINES=(
    api_data api_groups_auth api_routes api_sims api_smoke api_spec_rules api_tenancy
    api_vpg_sessions api_vpgs bad_input dataplane_inprocess dataplane_vpg edge_connections metrics
    node_roles peer_follower restart_resume services soratun_replay store_copy store_outage
    two_nodes web_page
)
cargo test --locked --lib -- store:: api::
tests=()
for name in "${BOTH_ENGINES[@]}"; do tests+=(--test "$name"); done
cargo test --locked "${tests[@]}"
