#!/usr/bin/env bash
# API fuzzing stage: runs schemathesis (property-based tests generated from the OpenAPI document)
# against a real arcd on a temporary data directory and fails on any 5xx answer or any answer that
# does not match the document (status code, content type, headers, body schema), and on any
# request the document forbids that arcd accepts.
#
#   scripts/schemathesis.sh                  # bounded run with the fixed seed below
#   ST_MAX_EXAMPLES=200 ST_SEED=7 scripts/schemathesis.sh
#
# Needs no root: arcd runs without its TUN device, with the API on plain HTTP on 127.0.0.1 and its
# rendezvous point on 127.0.0.1, both on free ports (never arcd's defaults). schemathesis is
# installed, pinned, into a virtualenv under target/ the first time (needs python3 with the venv
# module: Debian's python3-venv).
#
# Every operation of the served /openapi.yaml is tested but one, so operations added later are
# covered without editing this script. Operations that destroy state (terminate, delete) run too;
# their answers must conform all the same. Left out: `logout`, which would revoke the one token
# the run signs in with and leave every later operation answering 401 (tests/api_auth_tokens.rs
# covers it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/procs.sh
source scripts/lib/procs.sh

SCHEMATHESIS_VERSION=4.32.5
venv=${ST_VENV:-$PWD/target/schemathesis-venv}
seed=${ST_SEED:-20261205}
# Test cases per operation and phase, and a ceiling on the run's time: about four minutes in all
# on a 2-core machine (see docs/BENCHMARKS.md). One worker: with two, hypothesis (in
# schemathesis 4.32.5 on Python 3.11) sometimes fails in its own code ("AST constructor
# recursion depth mismatch"), which would fail the stage for no fault of arcd.
max_examples=${ST_MAX_EXAMPLES:-40}
max_time=${ST_MAX_TIME:-120}

# The checks that make the stage fail. Left out, with the reason:
#   positive_data_acceptance: arcd answers 400 to schema-valid requests its documented business
#     rules refuse (a VPG subnet that is not a network, a subscription other than planArc01, a
#     SIM that is terminated, ...); the 400s are documented per operation.
#   use_after_free, ensure_resource_availability: stateful-phase checks; arcd has no links in its
#     document, so the stateful phase is not run.
#   ignored_auth, object_level_authorization, missing_required_header, unsupported_method,
#     allow_header_conformance: covered by the cargo tests (tests/bad_input.rs); schemathesis's
#     own variants either need a second identity or flag arcd's JSON 405 answers to methods no
#     document operation has.
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection

ensure_schemathesis() {
    if [[ -x ${venv}/bin/st ]] && [[ $("${venv}/bin/st" --version 2>/dev/null) == *" ${SCHEMATHESIS_VERSION}" ]]; then
        return
    fi
    echo "installing schemathesis ${SCHEMATHESIS_VERSION} into ${venv}"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        echo "python3 with the venv module (Debian: apt-get install python3-venv) is needed" >&2
        exit 1
    fi
    rm -rf "${venv}"
    python3 -m venv "${venv}"
    "${venv}/bin/pip" install --quiet --disable-pip-version-check "schemathesis==${SCHEMATHESIS_VERSION}"
}

free_port() { # free_port tcp|udp
    python3 - "$1" <<'EOF'
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
with socket.socket(socket.AF_INET, kind) as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
EOF
}

ensure_schemathesis
# The served document must be the one the overlay generates (the venv has PyYAML).
"${venv}/bin/python" scripts/gen-openapi.py --check --subset tests/fixtures/soracom-api-arc-subset.yaml
cargo build --locked --quiet
arcd_bin=$PWD/target/debug/arcd
st_bin=${venv}/bin/st

work=$(mktemp -d "${TMPDIR:-/tmp}/arcd-schemathesis.XXXXXX")
PIDS=()
cleanup() {
    stop_recorded
    rm -rf "${work}"
}
trap cleanup EXIT

api_port=$(free_port tcp)
rp_port=$(free_port udp)
base=http://127.0.0.1:${api_port}

# Only ARCD_* variables set here reach arcd (it rejects unknown keys).
env $(compgen -e | grep '^ARCD_' | sed 's/^/-u /') \
    ARCD_DATA_DIR="${work}/data" \
    ARCD_API__LISTEN="127.0.0.1:${api_port}" \
    ARCD_API__TLS=false \
    ARCD_TUN__ENABLED=false \
    ARCD_LOG__LEVEL=warn \
    ARCD_RENDEZVOUS_POINTS="[{id=\"ap-northeast-1\",listen=\"127.0.0.1:${rp_port}\",endpoint=\"127.0.0.1:${rp_port}\",pool=\"10.64.0.0/16\",allowed_ips=[\"100.127.0.0/16\"]}]" \
    "${arcd_bin}" serve >"${work}/arcd.log" 2>&1 &
PIDS+=("$!:arcd")

for _ in $(seq 1 100); do
    curl -sf -o /dev/null "${base}/openapi.yaml" && break
    if ! proc_is_ours "${PIDS[0]%%:*}" arcd; then
        echo "arcd exited at start:" >&2
        cat "${work}/arcd.log" >&2
        exit 1
    fi
    sleep 0.1
done
curl -sSf -o "${work}/openapi.yaml" "${base}/openapi.yaml"

auth=$(python3 - "${work}/data/root-credentials.json" "${base}" <<'EOF'
import json, sys, urllib.request
creds = json.load(open(sys.argv[1]))
body = json.dumps({"authKeyId": creds["authKeyId"], "authKey": creds["authKey"]}).encode()
req = urllib.request.Request(sys.argv[2] + "/v1/auth", data=body,
                             headers={"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(req))
print(answer["apiKey"], answer["token"])
EOF
)
read -r api_key token <<<"${auth}"

started=${SECONDS}
status=0
# Run from the temporary directory: schemathesis keeps a cache of failures in ./.schemathesis.
(cd "${work}" && "${st_bin}" run "${base}/openapi.yaml" \
    --url "${base}/v1" \
    -H "X-Soracom-API-Key: ${api_key}" \
    -H "X-Soracom-Token: ${token}" \
    --checks "${checks}" \
    --exclude-operation-id logout \
    --phases examples,coverage,fuzzing \
    --seed "${seed}" \
    --max-examples "${max_examples}" \
    --max-time "${max_time}" \
    --request-timeout 10 \
    --workers 1 \
    --no-color \
    --generation-database none \
    --report junit --report-dir "${work}/report") \
    || status=$?
echo "schemathesis: exit ${status} after $((SECONDS - started)) s (seed ${seed}, ${max_examples} examples per operation)"

if ! proc_is_ours "${PIDS[0]%%:*}" arcd; then
    echo "arcd died during the run:" >&2
    tail -n 50 "${work}/arcd.log" >&2
    status=1
fi
if grep -q -E 'panicked|ERROR' "${work}/arcd.log"; then
    echo "arcd logged errors during the run:" >&2
    grep -E 'panicked|ERROR' "${work}/arcd.log" | head -n 20 >&2
    status=1
fi
exit "${status}"
