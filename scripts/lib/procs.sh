# procs.sh — stopping exactly the processes a test or bench script started. Sourced, not run.
# shellcheck shell=bash
#
# Scripts record every long-running process as "PID:COMM" (COMM = the first 15 characters of the
# program name, as /proc/PID/comm shows it) and stop them by PID on exit, never by name.

# proc_is_ours PID COMM: alive and still the program we started, or still our own child (between
# fork and exec it is bash, ip or env).
proc_is_ours() {
    local pid=$1 comm=$2 cur stat
    cur=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $cur == "$comm" ]] && return 0
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ $(cut -d' ' -f2 <<<"$stat") == "$$" ]]
}

# stop_pids PID:COMM...: SIGTERM to each one still ours, up to 5 s for them to exit, then SIGKILL
# (reported on stderr) to those that did not.
stop_pids() {
    local entry live=() i any
    for entry in "$@"; do
        if proc_is_ours "${entry%%:*}" "${entry#*:}"; then
            kill -TERM "${entry%%:*}" 2>/dev/null || true
            live+=("$entry")
        fi
    done
    for ((i = 0; i < 50; i++)); do
        any=0
        for entry in "${live[@]}"; do
            proc_is_ours "${entry%%:*}" "${entry#*:}" && any=1
        done
        ((any)) || break
        sleep 0.1
    done
    for entry in "${live[@]}"; do
        if proc_is_ours "${entry%%:*}" "${entry#*:}"; then
            printf 'pid %s (%s) ignored SIGTERM; sending SIGKILL\n' "${entry%%:*}" "${entry#*:}" >&2
            kill -KILL "${entry%%:*}" 2>/dev/null || true
        fi
    done
}

# stop_recorded: stop_pids for every "PID:COMM" in the caller's PIDS array and for the process of
# every "FILE:COMM" in its PIDFILES array (PID files written by the scripts that start daemons,
# as soon as they start them: an interrupted start still leaves a PID to stop).
stop_recorded() {
    local entry pid comm all=(${PIDS[@]+"${PIDS[@]}"})
    for entry in ${PIDFILES[@]+"${PIDFILES[@]}"}; do
        pid=$(cat "${entry%:*}" 2>/dev/null) || continue
        comm=${entry##*:}
        [[ $pid =~ ^[0-9]+$ ]] && all+=("$pid:${comm:0:15}")
    done
    stop_pids ${all[@]+"${all[@]}"}
}
