#!/usr/bin/env bash
# Management page benchmark: first render of the SIM list in headless chromium with many SIMs.
#
#   scripts/bench/web.sh                      # 10,000 SIMs, release arcd built here
#   BENCH_SIMS=100000 scripts/bench/web.sh    # paging at 100,000 SIMs
#
# Starts arcd (release build, or ARCD_BIN=PATH; read and removed from the environment) in a temp
# data directory on 127.0.0.1 with TLS on, no TUN and no services (no root needed), seeds
# BENCH_SIMS SIMs through the public API (POST /v1/arcd/iot_sims, 700 per call: the API takes
# bodies up to 64 KiB; IoT SIMs have no session, so the address pool is not involved), then runs
# tests/web/bench.mjs: for BENCH_RUNS fresh
# browser contexts (cold cache) the time from navigation start to the first SIM rows in the DOM
# (performance.now() from a MutationObserver installed before the page's scripts), the next page,
# an IMSI search, and the bytes of every asset the page loaded. Prints the figures as JSON.
#
# Environment: ARCD_BIN, BENCH_SIMS (default 10000), BENCH_RUNS (default 7), BENCH_KEEP=1.
# Needs: cargo (unless ARCD_BIN), curl, jq, node + npm, chromium (/usr/bin/chromium).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
sims=${BENCH_SIMS:-10000}
runs=${BENCH_RUNS:-7}
arcd=${ARCD_BIN:-}
unset ARCD_BIN

for tool in curl jq node npm; do
    command -v "$tool" >/dev/null || { echo "web.sh: missing $tool" >&2; exit 1; }
done
[[ -x /usr/bin/chromium ]] || { echo "web.sh: missing /usr/bin/chromium (apt-get install chromium)" >&2; exit 1; }

work=$(mktemp -d -t arcd-webbench.XXXXXX)
arcd_pid=""
cleanup() {
    if [[ -n $arcd_pid ]] && kill -0 "$arcd_pid" 2>/dev/null; then
        kill "$arcd_pid"
        wait "$arcd_pid" 2>/dev/null || true
    fi
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

if [[ -z $arcd ]]; then
    (cd "$repo" && cargo build --release --locked >&2)
    arcd=$repo/target/release/arcd
fi
(cd "$repo/tests/web" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)

cat >"$work/arcd.toml" <<EOF
data_dir = "$work/data"
[api]
listen = "127.0.0.1:0"
[tun]
enabled = false
[services]
enabled = false
[[rendezvous_points]]
id = "ap-northeast-1"
listen = "127.0.0.1:0"
endpoint = "127.0.0.1:11010"
pool = "10.64.0.0/16"
allowed_ips = ["100.127.0.0/16"]
[log]
level = "warn,arcd::server=info"
EOF
: >"$work/arcd.log" # exists before the background job opens it: the wait below reads it
arcd_env_unset=() # arcd reads every ARCD_* variable as configuration: none of the caller's
while read -r v; do arcd_env_unset+=(-u "$v"); done < <(compgen -e | grep '^ARCD_' || true)
env "${arcd_env_unset[@]}" RUST_LOG=warn,arcd::server=info \
    "$arcd" serve --config "$work/arcd.toml" >"$work/arcd.log" 2>&1 &
arcd_pid=$!
port=""
for _ in $(seq 100); do
    port=$(sed -n 's/.*API listening addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/arcd.log" | head -n 1) || true
    [[ -n $port && -s $work/data/root-credentials.json ]] && break
    sleep 0.1
done
[[ -n $port ]] || { cat "$work/arcd.log" >&2; echo "arcd did not start" >&2; exit 1; }
base="https://127.0.0.1:$port"
creds=$work/data/root-credentials.json
cacert=$work/data/tls-cert.pem

auth=$(curl -fsS --cacert "$cacert" -H 'Content-Type: application/json' \
    -d "$(jq -c '{authKeyId, authKey}' "$creds")" "$base/v1/auth")
api_key=$(jq -r .apiKey <<<"$auth")
token=$(jq -r .token <<<"$auth")

echo "seeding $sims IoT SIMs through POST /v1/arcd/iot_sims ..." >&2
seed_started=$(date +%s%N)
for ((from = 0; from < sims; from += 700)); do
    count=$((sims - from < 700 ? sims - from : 700))
    jq -nc --argjson from "$from" --argjson n "$count" \
        '[range($from; $from + $n) | {iccid: ("89812" + (. | tostring | ("0" * (14 - length)) + .)),
          imsi: ("4402" + (. | tostring | ("0" * (11 - length)) + .)), subscription: "plan-D"}]' \
        >"$work/batch.json"
    curl -fsS --cacert "$cacert" -o /dev/null -H 'Content-Type: application/json' \
        -H "X-Soracom-API-Key: $api_key" -H "X-Soracom-Token: $token" \
        --data-binary @"$work/batch.json" "$base/v1/arcd/iot_sims"
done
seed_ms=$((($(date +%s%N) - seed_started) / 1000000))
echo "seeded in $seed_ms ms" >&2

WEB_URL=$base WEB_CREDENTIALS=$creds WEB_BENCH_RUNS=$runs NODE_EXTRA_CA_CERTS=$cacert \
    node "$repo/tests/web/bench.mjs" | jq -c --argjson sims "$sims" --argjson seed "$seed_ms" \
    '. + {sims: $sims, seedMs: $seed}'
