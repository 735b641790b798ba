#!/usr/bin/env bash
# Peer-scale benchmark of arcd (issue 3, "Performance"): with 100,000 active sessions in the store,
#   - start-to-ready time, split into phases from arcd's own log lines (RUST_LOG=info, timestamps):
#       process start -> "active sessions loaded"   (SQLite: read every active session)
#                     -> "data plane peers loaded"  (the engine's peer index: every peer installed)
#                     -> "API listening"            (TLS off here, so nothing to make)
#                     -> first answer of the API    (curl polling every 10 ms)
#   - resident memory after the load (VmRSS, VmHWM from /proc/PID/status),
#   - idle CPU of the loaded process over BENCH_IDLE seconds (utime+stime from /proc/PID/stat), as
#     a percentage of one core.
# Targets: loaded in < 3 s, idle CPU < 5 % of one core, RSS < 250 MB.
#
# It builds and starts a release arcd in a temporary data directory with:
#   - tun.enabled = false: no TUN device, so no root needed and no clash with another arcd's arc0
#     (the data plane runs with an in-memory TUN; the UDP listener, peer table and timers are real);
#   - plain HTTP on 127.0.0.1:$BENCH_PORT and the UDP listener on 127.0.0.1:$BENCH_UDP_PORT;
#   - client pool 10.64.0.0/14 (262,141 addresses; the default /16 holds only 65,533 SIMs).
# It creates the SIMs through the API (POST /v1/sims with wrk and scripts/bench/create_sim.lua, as
# scripts/bench/api.sh does; RUST_LOG=warn meanwhile), then restarts arcd BENCH_RESTARTS times and
# measures each start; memory and idle CPU are taken on the last one.
#
# Needs: cargo, wrk, curl, jq, awk, getconf (Debian: apt-get install -y --no-install-recommends wrk curl jq).
# Environment (not ARCD_*, which arcd would read as configuration):
#   BENCH_SIMS (100000)  BENCH_PORT (18480)  BENCH_UDP_PORT (21010)  BENCH_IDLE (30, seconds)
#   BENCH_RESTARTS (5)   BENCH_KEEP=1 keeps the temporary directory
#   BENCH_DATA=DIR       reuse the data directory of an earlier BENCH_KEEP=1 run (skips seeding
#                        when it already holds BENCH_SIMS active sessions)
# Apart from the cargo build it writes only to its temporary directory, and it stops only the
# arcd processes it started (by their recorded PID).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench_dir="${repo}/scripts/bench"
target_sims=${BENCH_SIMS:-100000}
port=${BENCH_PORT:-18480}
udp_port=${BENCH_UDP_PORT:-21010}
idle_seconds=${BENCH_IDLE:-30}
restarts=${BENCH_RESTARTS:-5}
base="http://127.0.0.1:${port}"

for tool in cargo wrk curl jq awk getconf; do
    command -v "${tool}" >/dev/null || { echo "missing ${tool}" >&2; exit 1; }
done

work=$(mktemp -d -t arcd-peers.XXXXXX)
data_dir=${BENCH_DATA:-${work}/data}
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
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        echo "kept ${work} (data directory ${data_dir})"
    else
        rm -rf "${work}"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section() { printf '\n==== %s ====\n' "$*"; }
calc() { awk "BEGIN { printf \"%.3f\", $1 }"; }
now() { date +%s.%N; }
# RFC 3339 timestamp of a log line (tracing-subscriber's default format) -> seconds since the epoch.
log_time() { # pattern logfile
    local stamp
    stamp=$(grep -m1 -- "$1" "$2" | sed -E 's/\x1b\[[0-9;]*m//g' | awk '{print $1}')
    [[ -n ${stamp} ]] || { echo "no log line matching '$1' in $2" >&2; exit 1; }
    date -d "${stamp}" +%s.%N
}
log_field() { # pattern field logfile: value of field=value on the first matching line
    grep -m1 -- "$1" "$3" | sed -E 's/\x1b\[[0-9;]*m//g' | sed -nE "s/.*[ ]$2=([^ ]+).*/\1/p"
}

section "build (cargo build --release --locked)"
(cd "${repo}" && cargo build --release --locked)
arcd="${repo}/target/release/arcd"

cat > "${work}/peers.toml" <<TOML
# Defaults (config/arcd.toml) except: data directory, plain HTTP on 127.0.0.1, no TUN device
# (no root needed, no clash with another arcd's arc0), the UDP port, and a /14 pool for
# ${target_sims} SIMs.
data_dir = "${data_dir}"

[api]
listen = "127.0.0.1:${port}"
tls = false

[tun]
enabled = false

[[rendezvous_points]]
id = "ap-northeast-1"
listen = "127.0.0.1:${udp_port}"
endpoint = "127.0.0.1:${udp_port}"
pool = "10.64.0.0/14"
allowed_ips = ["100.127.0.0/16"]
TOML

start_arcd() { # RUST_LOG value, log file; sets arcd_pid and start_time, ready_time
    local level=$1 log=$2
    # arcd reads ARCD_* variables as configuration: none from the caller's shell may leak in.
    start_time=$(now)
    # shellcheck disable=SC2046 # one "-u NAME" pair per variable
    env $(compgen -e | grep '^ARCD_' | sed 's/^/-u /') RUST_LOG="${level}" NO_COLOR=1 \
        "${arcd}" serve --config "${work}/peers.toml" >>"${log}" 2>&1 &
    arcd_pid=$!
    for _ in $(seq 1 6000); do
        if curl -sf -o /dev/null "${base}/openapi.yaml"; then
            ready_time=$(now)
            return 0
        fi
        kill -0 "${arcd_pid}" 2>/dev/null || { cat "${log}"; echo "arcd exited" >&2; exit 1; }
        sleep 0.01
    done
    cat "${log}"
    echo "arcd did not answer on ${base} within 60 s" >&2
    exit 1
}

section "seed: arcd on ${base} (TLS off, tun.enabled = false, RUST_LOG=warn), ${target_sims} SIMs"
start_arcd warn "${work}/seed.log"
echo "arcd pid ${arcd_pid}, data dir ${data_dir}"
auth=$(jq '{authKeyId, authKey}' "${data_dir}/root-credentials.json" |
    curl -sf -X POST "${base}/v1/auth" -H 'Content-Type: application/json' -d @-)
BENCH_API_KEY=$(jq -r .apiKey <<<"${auth}")
BENCH_TOKEN=$(jq -r .token <<<"${auth}")
export BENCH_API_KEY BENCH_TOKEN

# How many active sessions the store holds: restart once and read arcd's own count.
stop_arcd
start_arcd info "${work}/count.log"
created=$(log_field "active sessions loaded" sessions "${work}/count.log")
echo "the store holds ${created} active sessions"
stop_arcd
if ((created < target_sims)); then
    start_arcd warn "${work}/seed.log"
    seed_start=$(now)
    rate=0
    while ((created < target_sims)); do
        # A short first run measures the rate; later runs aim just past the target.
        seconds=5
        ((rate == 0)) || seconds=$(((target_sims - created) / rate + 1))
        ((seconds <= 60)) || seconds=60
        echo "+ wrk -t2 -c16 -d${seconds}s -s scripts/bench/create_sim.lua ${base}/v1/sims"
        wrk -t2 -c16 "-d${seconds}s" -s "${bench_dir}/create_sim.lua" "${base}/v1/sims" >"${work}/wrk.txt"
        line=$(grep '^BENCH_RESULT' "${work}/wrk.txt")
        requests=$(sed -E 's/.* requests=([0-9]+).*/\1/' <<<"${line}")
        non2xx=$(sed -E 's/.* non2xx=([0-9]+).*/\1/' <<<"${line}")
        if ((requests == 0 || non2xx == requests)); then
            cat "${work}/wrk.txt"
            echo "seeding fails: every createSim was rejected" >&2
            exit 1
        fi
        created=$((created + requests - non2xx))
        rate=$(((requests - non2xx) / seconds))
        ((rate > 0)) || rate=100
        echo "  ${line#BENCH_RESULT }"
        echo "  about ${created} SIMs"
    done
    echo "seeded in $(printf '%.0f' "$(calc "$(now) - ${seed_start}")") s"
    stop_arcd
fi

hz=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of arcd (fields 14 and 15 of /proc/PID/stat, after the "(comm)")
    sed -E 's/^.*\) //' "/proc/${arcd_pid}/stat" | awk '{print $12 + $13}'
}

section "restart ${restarts} times with ${created}+ SIMs (RUST_LOG=info, log timestamps)"
declare -a ready_s loaded_s sql_s dp_s api_s cpu_s
sessions=0
for run in $(seq 1 "${restarts}"); do
    db_files=$(cd "${data_dir}" && for f in arcd.sqlite*; do printf '%s %s MB, ' "${f}" "$(calc "$(stat -c %s "${f}") / 1000000")"; done)
    echo "run ${run}: before start: ${db_files%, }; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    log="${work}/start-${run}.log"
    : >"${log}"
    start_arcd info "${log}"
    cpu_s[run]=$(calc "$(cpu_ticks) / ${hz}")
    t_sql=$(log_time "active sessions loaded" "${log}")
    t_dp=$(log_time "data plane peers loaded" "${log}")
    t_api=$(log_time "API listening" "${log}")
    sessions=$(log_field "active sessions loaded" sessions "${log}")
    peers=$(log_field "data plane peers loaded" peers "${log}")
    ready_s[run]=$(calc "${ready_time} - ${start_time}")
    loaded_s[run]=$(calc "${t_dp} - ${start_time}")
    sql_s[run]=$(calc "${t_sql} - ${start_time}")
    dp_s[run]=$(calc "${t_dp} - ${t_sql}")
    api_s[run]=$(calc "${ready_time} - ${t_dp}")
    printf 'run %d: %s sessions, %s peers; ready after %.3f s = SQLite %.3f + peer table and engine %.3f + API up to first answer %.3f (API listening at +%.3f); arcd used %.2f s of CPU until then\n' \
        "${run}" "${sessions}" "${peers}" "${ready_s[run]}" "${sql_s[run]}" "${dp_s[run]}" "${api_s[run]}" \
        "$(calc "${t_api} - ${start_time}")" "${cpu_s[run]}"
    if ((run < restarts)); then
        stop_arcd
    fi
done

section "memory and idle CPU of the loaded arcd (pid ${arcd_pid}), ${idle_seconds} s without traffic"
sleep 2
task_ns() { # CPU time of every thread of arcd in ns (first field of /proc/PID/task/*/schedstat)
    cat "/proc/${arcd_pid}"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%d", s}'
}
status_kib() { awk -v f="$1:" '$1 == f {print $2}' "/proc/${arcd_pid}/status"; }
thread_ids() { (cd "/proc/${arcd_pid}/task" && printf '%s ' *); }
tasks0=$(thread_ids)
t0=$(now)
c0=$(cpu_ticks)
n0=$(task_ns)
sleep "${idle_seconds}"
n1=$(task_ns)
c1=$(cpu_ticks)
t1=$(now)
tasks1=$(thread_ids)
idle_pct=$(calc "100 * (${c1} - ${c0}) / ${hz} / (${t1} - ${t0})")
idle_ns_pct=$(calc "100 * (${n1} - ${n0}) / 1e9 / (${t1} - ${t0})")
[[ ${tasks0} == "${tasks1}" ]] || echo "note: the thread set changed during the idle window (${tasks0}-> ${tasks1}); the per-thread figure misses exited threads"
rss_kib=$(status_kib VmRSS)
hwm_kib=$(status_kib VmHWM)
threads=$(status_kib Threads)
rss_mb=$(calc "${rss_kib} * 1024 / 1000000")
hwm_mb=$(calc "${hwm_kib} * 1024 / 1000000")
printf 'CPU: %.1f ms over all threads (schedstat) in %.1f s = %.3f %% of one core\n' \
    "$(calc "(${n1} - ${n0}) / 1e6")" "$(calc "${t1} - ${t0}")" "${idle_ns_pct}"
printf 'CPU: %d ticks (%d Hz, utime+stime) in %.1f s = %.2f %% of one core; VmRSS %s kB (%.1f MB), VmHWM %s kB (%.1f MB), %s threads\n' \
    "$((c1 - c0))" "${hz}" "$(calc "${t1} - ${t0}")" "${idle_pct}" "${rss_kib}" "${rss_mb}" "${hwm_kib}" "${hwm_mb}" "${threads}"
stop_arcd

verdict() { # value op target, op one of < >=
    if awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN { exit !((op == "<") ? (v + 0 < t + 0) : (v + 0 >= t + 0)) }'; then
        echo "yes"
    else
        echo "NO"
    fi
}
best() { printf '%s\n' "$@" | sort -g | head -1; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

section "summary"
echo "machine: $(nproc) cores, $(uname -r); load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "arcd: release build, plain HTTP, tun.enabled = false (in-memory TUN: no root, no arc0 clash),"
echo "      ${sessions} active sessions in the store, ${restarts} restarts (median and best shown)"
echo
printf '%-52s %12s %12s  %-14s %s\n' "measure" "median" "best" "target" "met"
loaded_median=$(median "${loaded_s[@]}")
ready_median=$(median "${ready_s[@]}")
printf '%-52s %12s %12s  %-14s %s\n' "start to 'data plane peers loaded' (s)" "${loaded_median}" "$(best "${loaded_s[@]}")" "< 3 s" "$(verdict "${loaded_median}" '<' 3)"
printf '%-52s %12s %12s  %-14s %s\n' "start to first API answer (s)" "${ready_median}" "$(best "${ready_s[@]}")" "< 3 s" "$(verdict "${ready_median}" '<' 3)"
printf '%-52s %12s %12s  %-14s %s\n' "  arcd CPU time until ready (s, utime+stime)" "$(median "${cpu_s[@]}")" "$(best "${cpu_s[@]}")" "" ""
printf '%-52s %12s %12s  %-14s %s\n' "  start -> 'active sessions loaded' (SQLite, s)" "$(median "${sql_s[@]}")" "$(best "${sql_s[@]}")" "" ""
printf '%-52s %12s %12s  %-14s %s\n' "  -> 'data plane peers loaded' (table+engine, s)" "$(median "${dp_s[@]}")" "$(best "${dp_s[@]}")" "" ""
printf '%-52s %12s %12s  %-14s %s\n' "  -> first API answer (s)" "$(median "${api_s[@]}")" "$(best "${api_s[@]}")" "" ""
printf '%-52s %12s %12s  %-14s %s\n' "idle CPU over ${idle_seconds} s, utime+stime (% of a core)" "${idle_pct}" "" "< 5 %" "$(verdict "${idle_pct}" '<' 5)"
printf '%-52s %12s %12s  %-14s %s\n' "idle CPU, per-thread schedstat (% of a core)" "${idle_ns_pct}" "" "< 5 %" "$(verdict "${idle_ns_pct}" '<' 5)"
printf '%-52s %12s %12s  %-14s %s\n' "VmRSS after load (MB)" "${rss_mb}" "" "< 250 MB" "$(verdict "${rss_mb}" '<' 250)"
printf '%-52s %12s %12s  %-14s %s\n' "VmHWM, peak RSS (MB)" "${hwm_mb}" "" "< 250 MB" "$(verdict "${hwm_mb}" '<' 250)"
