#!/usr/bin/env bash
# API benchmark of arcd with wrk over HTTPS keep-alive (2 threads, 16 connections, 20 s a run):
#   (a) createSim  POST /v1/sims             sustained rate and latency
#   (b) getSim     GET  /v1/sims/{sim_id}    rate on one existing SIM
#   (c) listSims   GET  /v1/sims?limit=100 and GET /v1/sims (default limit) over >= 100,000 SIMs,
#                  plus one cold-ish request with curl (fresh process, new TLS connection)
#
# It builds and starts a release arcd in a temporary data directory on 127.0.0.1 with TLS on and
# the default configuration, except: the listen address, the data directory, and the client
# address pool (10.64.0.0/14 instead of the default /16, which holds only 65,533 SIMs and so
# cannot take 100,000). Every SIM is created through the API (no direct database writes).
# RUST_LOG=warn keeps the per-request info log lines out of the measurement.
# BENCH_ENGINE=postgres runs the same load against arcd on PostgreSQL: a throw-away server from
# scripts/lib/postgres.sh on this machine (Debian defaults: fsync and synchronous_commit on),
# reached over loopback TCP (BENCH_PG_VIA=socket: its unix socket), stopped and removed at exit.
# (d) is the cold start: the time from starting the process to the API answering, with every
# session of the ${BENCH_SIMS} SIMs loaded and handed to the data plane first (the API binds last).
#
# Needs: cargo, wrk, curl, jq, awk (Debian: apt-get install -y --no-install-recommends wrk curl jq).
# Environment (not ARCD_*, which arcd would read as configuration):
#              BENCH_PORT (default 18443), BENCH_DURATION (default 20s),
#              BENCH_SIMS (default 100000), BENCH_KEEP=1 keeps the data directory,
#              BENCH_ARCD=PATH measures that binary instead of building this checkout's,
#              BENCH_ENGINE=sqlite|postgres (default sqlite), BENCH_PG_VIA=tcp|socket,
#              BENCH_UDP_PORT (default 11010) and BENCH_TUN (default arc0): the RP's listen port
#              and TUN device, so two runs (or another arcd) do not collide.
# The default configuration also binds UDP 0.0.0.0:11010 and creates the TUN device arc0 (run as
# root; no other arcd may run on the machine meanwhile).
# It prints a summary table; apart from the cargo build it writes only to its temporary directory.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench_dir="${repo}/scripts/bench"
port=${BENCH_PORT:-18443}
duration=${BENCH_DURATION:-20s}
target_sims=${BENCH_SIMS:-100000}
base="https://127.0.0.1:${port}"
engine=${BENCH_ENGINE:-sqlite}
udp_port=${BENCH_UDP_PORT:-11010}
tun_name=${BENCH_TUN:-arc0}
case ${engine} in sqlite | postgres) ;; *) echo "BENCH_ENGINE: sqlite or postgres" >&2; exit 2 ;; esac
wrk_opts=(-t2 -c16 "-d${duration}" --latency)

for tool in cargo wrk curl jq; do
    command -v "${tool}" >/dev/null || { echo "missing ${tool}" >&2; exit 1; }
done

work=$(mktemp -d -t arcd-bench.XXXXXX)
arcd_pid=""

stop_arcd() {
    if [[ -n ${arcd_pid} ]] && kill -0 "${arcd_pid}" 2>/dev/null; then
        kill "${arcd_pid}"
        wait "${arcd_pid}" 2>/dev/null || true
    fi
    arcd_pid=""
}

cleanup() {
    stop_arcd
    if [[ ${engine} == postgres ]]; then pg_stop; fi
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        echo "kept ${work}"
    else
        rm -rf "${work}"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section() { printf '\n==== %s ====\n' "$*"; }
calc() { awk "BEGIN { printf \"%.3f\", $1 }"; }

if [[ -n ${BENCH_ARCD:-} ]]; then
    arcd=${BENCH_ARCD}
else
    section "build (cargo build --release --locked)"
    (cd "${repo}" && cargo build --release --locked)
    arcd="${repo}/target/release/arcd"
fi

store_section=""
if [[ ${engine} == postgres ]]; then
    # shellcheck source=scripts/lib/postgres.sh
    source "${repo}/scripts/lib/postgres.sh"
    section "start a throw-away PostgreSQL (scripts/lib/postgres.sh)"
    pg_start
    if [[ ${BENCH_PG_VIA:-tcp} == socket ]]; then pg_url=${PG_SOCKET_URL}; else pg_url=${PG_URL}; fi
    echo "PostgreSQL $("${PG_BIN}/postgres" --version | awk '{print $3}'), data in ${PG_DIR}, arcd connects to ${pg_url}"
    store_section=$(printf '[store]\nengine = "postgres"\nurl = "%s"\n' "${pg_url}")
fi

cat > "${work}/bench.toml" <<TOML
# Defaults (config/arcd.toml) except the data directory, the listen address, a pool big enough
# for ${target_sims} SIMs and an operator quota no run reaches (the default is 10,000 SIMs; the
# quota is still checked on every create, and a refused create would be a fast error).
data_dir = "${work}/data"

[sims]
max_per_operator = 1000000000

[api]
listen = "127.0.0.1:${port}"

[tun]
name = "${tun_name}"

${store_section}

[[rendezvous_points]]
id = "ap-northeast-1"
listen = "0.0.0.0:${udp_port}"
endpoint = "127.0.0.1:${udp_port}"
pool = "10.64.0.0/14"
allowed_ips = ["100.127.0.0/16"]
TOML

start_arcd() {
    # RUST_LOG=warn: no per-request log line (they cost CPU and disk on the measured machine);
    # arcd::server's few start-up lines stay (the number of sessions loaded).
    # arcd reads ARCD_* variables as configuration: none from the caller's shell may leak in.
    # shellcheck disable=SC2046 # one "-u NAME" pair per variable
    env $(compgen -e | grep '^ARCD_' | sed 's/^/-u /') RUST_LOG=warn,arcd::server=info "${arcd}" serve --config "${work}/bench.toml" >>"${work}/arcd.log" 2>&1 &
    arcd_pid=$!
    local started
    started=$(date +%s.%N)
    for _ in $(seq 1 3000); do
        if curl -skf -o /dev/null "${base}/openapi.yaml"; then
            start_seconds=$(calc "$(date +%s.%N) - ${started}")
            return 0
        fi
        kill -0 "${arcd_pid}" 2>/dev/null || { cat "${work}/arcd.log"; echo "arcd exited" >&2; exit 1; }
        sleep 0.02
    done
    cat "${work}/arcd.log"
    echo "arcd did not answer on ${base}" >&2
    exit 1
}

section "start arcd on ${base} (TLS on, RUST_LOG=warn: per-request log lines are off)"
start_arcd
echo "arcd pid ${arcd_pid}, data dir ${work}/data"

auth=$(jq '{authKeyId, authKey}' "${work}/data/root-credentials.json" |
    curl -skf -X POST "${base}/v1/auth" -H 'Content-Type: application/json' -d @-)
BENCH_API_KEY=$(jq -r .apiKey <<<"${auth}")
BENCH_TOKEN=$(jq -r .token <<<"${auth}")
export BENCH_API_KEY BENCH_TOKEN
hdr=(-H "X-Soracom-API-Key: ${BENCH_API_KEY}" -H "X-Soracom-Token: ${BENCH_TOKEN}")

# Runs wrk, shows its report, and leaves the BENCH_RESULT fields in the array `r`.
declare -A r
run_wrk() { # name script url [wrk options, default: wrk_opts]
    local name=$1 script=$2 url=$3 out="${work}/wrk-$1.txt"
    shift 3
    local opts=("$@")
    ((${#opts[@]} > 0)) || opts=("${wrk_opts[@]}")
    echo "+ wrk ${opts[*]} -s scripts/bench/${script} ${url}"
    wrk "${opts[@]}" -s "${bench_dir}/${script}" "${url}" | tee "${out}"
    r=()
    local field
    # shellcheck disable=SC2013 # the fields are words on one line
    for field in $(grep '^BENCH_RESULT' "${out}" | cut -d' ' -f2-); do
        r[${field%%=*}]=${field#*=}
    done
    local errors=$((r[non2xx] + r[connect_err] + r[read_err] + r[write_err] + r[timeouts]))
    if ((errors > 0)); then
        echo "WARNING: ${name}: ${errors} failed requests (non-2xx ${r[non2xx]}, timeouts ${r[timeouts]})"
    fi
}

declare -A result
record() { # name: copies the last run's figures
    result[$1.rps]=${r[rps]}
    result[$1.p50]=${r[p50_ms]}
    result[$1.p99]=${r[p99_ms]}
    result[$1.errors]=$((r[non2xx] + r[connect_err] + r[read_err] + r[write_err] + r[timeouts]))
}

# CPU seconds (user + system) used so far by arcd and, on PostgreSQL, by the server: the
# postmaster with its exited children and every live backend. Per request, this is the cost
# of createSim on this machine whatever else runs on it (the rates above depend on the share of
# the 2 cores the other work leaves).
cpu_seconds() {
    local pids=("${arcd_pid}") total=0 pid fields utime stime cutime cstime
    if [[ ${engine} == postgres ]]; then
        mapfile -t -O 1 pids < <(echo "${PG_PID}"; pgrep -P "${PG_PID}")
    fi
    for pid in "${pids[@]}"; do
        # Fields 14-17 of /proc/PID/stat (utime stime cutime cstime, clock ticks), counted
        # after the command name, which may hold spaces.
        fields=$(awk '{ sub(/^.*\) /, ""); print $12, $13, $14, $15 }' "/proc/${pid}/stat" 2>/dev/null) || continue
        [[ -n ${fields} ]] || continue
        read -r utime stime cutime cstime <<<"${fields}"
        total=$((total + utime + stime))
        # The postmaster's children that have exited are in its cutime/cstime.
        if [[ ${pid} == "${PG_PID:-}" ]]; then total=$((total + cutime + cstime)); fi
    done
    calc "${total} / $(getconf CLK_TCK)"
}

created=0
section "(a) createSim: POST /v1/sims"
cpu_before=$(cpu_seconds)
run_wrk create create_sim.lua "${base}/v1/sims"
record create
create_cpu_ms=$(calc "($(cpu_seconds) - ${cpu_before}) * 1000 / ${r[requests]}")
echo "CPU of arcd$([[ ${engine} == postgres ]] && echo ' + PostgreSQL') per createSim: ${create_cpu_ms} ms"
created=$((created + r[requests] - r[non2xx]))
# The same at a bounded offered rate (16 connections, 8 ms pause between requests): the
# latency a client sees at ~1,500/s rather than the queueing of a saturated closed loop.
run_wrk create-paced create_sim_paced.lua "${base}/v1/sims"
record create-paced
created=$((created + r[requests] - r[non2xx]))

section "(b) getSim: GET /v1/sims/{sim_id} on one SIM"
sim_id=$(curl -skf "${base}/v1/sims?limit=1" "${hdr[@]}" | jq -r '.[0].simId')
echo "SIM ${sim_id}"
run_wrk get get.lua "${base}/v1/sims/${sim_id}"
record get

section "seed: createSim with wrk until ${target_sims} SIMs exist (about ${created} so far)"
while ((created < target_sims)); do
    rate=${result[create.rps]%.*}
    ((rate > 0)) || rate=100
    seconds=$(((target_sims - created) / rate + 2))
    ((seconds <= 60)) || seconds=60
    echo "+ wrk -t2 -c16 -d${seconds}s -s scripts/bench/create_sim.lua ${base}/v1/sims"
    wrk -t2 -c16 "-d${seconds}s" -s "${bench_dir}/create_sim.lua" "${base}/v1/sims" >"${work}/seed.txt"
    line=$(grep '^BENCH_RESULT' "${work}/seed.txt")
    requests=$(sed -E 's/.* requests=([0-9]+).*/\1/' <<<"${line}")
    non2xx=$(sed -E 's/.* non2xx=([0-9]+).*/\1/' <<<"${line}")
    if ((requests == 0 || non2xx == requests)); then
        cat "${work}/seed.txt"
        echo "seeding fails: every createSim was rejected" >&2
        exit 1
    fi
    created=$((created + requests - non2xx))
    echo "  ${line#BENCH_RESULT }"
    echo "  about ${created} SIMs"
done

section "count the SIMs through the API (listSims, limit=1000, following x-soracom-next-key)"
count=0
next=""
walk_start=$(date +%s.%N)
while :; do
    url="${base}/v1/sims?limit=1000"
    [[ -z ${next} ]] || url+="&last_evaluated_key=${next}"
    page=$(curl -skf -D "${work}/headers.txt" "${url}" "${hdr[@]}")
    count=$((count + $(jq length <<<"${page}")))
    next=$(tr -d '\r' <"${work}/headers.txt" | awk -F': ' 'tolower($1)=="x-soracom-next-key"{print $2}')
    [[ -n ${next} ]] || break
done
walk_seconds=$(calc "$(date +%s.%N) - ${walk_start}")
echo "${count} SIMs (full walk in $(printf '%.2f' "${walk_seconds}") s)"
if ((count < target_sims)); then
    echo "only ${count} SIMs, wanted ${target_sims}" >&2
    exit 1
fi

section "(d) cold start: restart arcd with ${count} SIMs' sessions in the store"
stop_arcd
start_arcd
cold_start_ms=$(calc "${start_seconds} * 1000")
loaded=$(grep -o 'active sessions loaded.*' "${work}/arcd.log" | tail -1 || true)
printf 'process start to the API answering: %.0f ms (%s)\n' "${cold_start_ms}" "${loaded:-no load line: RUST_LOG=warn}"

section "(c) listSims cold-ish: the restarted arcd, one request on a new TLS connection"
timing='%{time_appconnect} %{time_starttransfer} %{time_total} %{size_download} %{http_code}\n'
read -r appconnect starttransfer total size code < <(curl -sk -o /dev/null -w "${timing}" \
    "${base}/v1/sims?limit=100" "${hdr[@]}")
cold_total_ms=$(calc "${total} * 1000")
cold_server_ms=$(calc "(${starttransfer} - ${appconnect}) * 1000")
printf 'HTTP %s, %s bytes: time_total %.1f ms (TCP+TLS handshake included), after TLS until first byte %.1f ms\n' \
    "${code}" "${size}" "${cold_total_ms}" "${cold_server_ms}"
read -r appconnect starttransfer total size code < <(curl -sk -o /dev/null -w "${timing}" \
    "${base}/v1/sims?limit=100" "${hdr[@]}")
warm_total_ms=$(calc "${total} * 1000")
printf 'second request (warm): time_total %.1f ms\n' "${warm_total_ms}"

section "(c) listSims: GET /v1/sims?limit=100 over ${count} SIMs"
run_wrk list100 get.lua "${base}/v1/sims?limit=100"
record list100

section "(c) listSims: GET /v1/sims?limit=100 over ${count} SIMs, one connection (latency of a lone client)"
run_wrk list100c1 get.lua "${base}/v1/sims?limit=100" -t1 -c1 "-d${duration}" --latency
record list100c1

section "(c) listSims: GET /v1/sims (default limit) over ${count} SIMs"
run_wrk listdefault get.lua "${base}/v1/sims"
record listdefault

verdict() { # value op target, op one of < >=
    if awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN { exit !((op == "<") ? (v + 0 < t + 0) : (v + 0 >= t + 0)) }'; then
        echo "yes"
    else
        echo "NO"
    fi
}

section "summary"
echo "machine: $(nproc) cores, $(uname -r); load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk ${wrk_opts[*]} over HTTPS keep-alive against 127.0.0.1 (wrk shares the machine with arcd)"
echo "arcd: release build, TLS on, RUST_LOG=warn (no per-request log lines), ${count} SIMs at (c), store ${engine}"
echo
# The targets: SQLite's from the single-box work, PostgreSQL's createSim and cold start from issue 14.
if [[ ${engine} == postgres ]]; then
    create_rate=1000 create_p99=50 create_target=">= 1000/s, p99 < 50 ms"
else
    create_rate=1500 create_p99=25 create_target=">= 1500/s, p99 < 25 ms"
fi
# One line a row for people, and one BENCH_ROW line a row for scripts/bench/engines.sh.
row() { # key label rps p50 p99 errors target met
    printf '%-36s %12s %10s %10s %8s  %-26s %s\n' "$2" "$3" "$4" "$5" "$6" "$7" "$8"
    printf 'BENCH_ROW engine=%s key=%s rps=%s p50=%s p99=%s errors=%s\n' "${engine}" "$1" "$3" "$4" "$5" "$6" >>"${work}/rows.txt"
}
wrk_row() { # key label target met
    row "$1" "$2" "${result[$1.rps]}" "${result[$1.p50]}" "${result[$1.p99]}" "${result[$1.errors]}" "$3" "$4"
}
create_met() { # key
    [[ $(verdict "${result[$1.rps]}" '>=' "${create_rate}") == yes && $(verdict "${result[$1.p99]}" '<' "${create_p99}") == yes ]] && echo yes || echo NO
}
: >"${work}/rows.txt"
printf '%-36s %12s %10s %10s %8s  %-26s %s\n' "benchmark" "req/s" "p50 ms" "p99 ms" "errors" "target" "met"
wrk_row create "(a) createSim POST /v1/sims" "${create_target}" "$(create_met create)"
wrk_row create-paced "(a) createSim, offered ~1700/s" "${create_target}" "$(create_met create-paced)"
wrk_row get "(b) getSim GET /v1/sims/{id}" ">= 10000/s" "$(verdict "${result[get.rps]}" '>=' 10000)"
wrk_row list100 "(c) listSims ?limit=100 (wrk)" "first page < 20 ms" "$(verdict "${result[list100.p99]}" '<' 20) (p99)"
wrk_row list100c1 "(c) listSims ?limit=100 (wrk -c1)" "first page < 20 ms" "$(verdict "${result[list100c1.p99]}" '<' 20) (p99)"
wrk_row listdefault "(c) listSims default limit (wrk)" "first page < 20 ms" "$(verdict "${result[listdefault.p99]}" '<' 20) (p99)"
row list-cold "(c) listSims ?limit=100 cold (curl)" "-" "${cold_total_ms}" "-" "-" "first page < 20 ms" "$(verdict "${cold_total_ms}" '<' 20) (time_total)"
row list-cold-server "    same, after TLS to first byte" "-" "${cold_server_ms}" "-" "-" "" ""
row create-cpu "(a) CPU ms per createSim (server side)" "-" "${create_cpu_ms}" "-" "-" "< 2 ms (2 cores / 1000/s)" "$(verdict "${create_cpu_ms}" '<' 2)"
row cold-start "(d) cold start, ${count} sessions" "-" "${cold_start_ms}" "-" "-" "< 5000 ms" "$(verdict "${cold_start_ms}" '<' 5000)"
cat "${work}/rows.txt"
