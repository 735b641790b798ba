#!/usr/bin/env bash
# postgres.sh — a throw-away PostgreSQL (Debian's packages) for tests and benchmarks.
# shellcheck shell=bash
#
# Sourced:
#   pg_start            initdb in a fresh temp dir, start the server on a unix socket in that dir and
#                       on 127.0.0.1:<free port>; sets PG_DIR, PG_PID, PG_PORT, PG_URL (TCP) and
#                       PG_SOCKET_URL (unix socket) and prints PG_URL. As root the server runs as
#                       an unprivileged user (PG_RUN_AS, default postgres, else nobody).
#                       fsync/synchronous_commit keep their defaults (durable commits).
#   pg_stop             stop that server by its PID (pg_ctl stop -m fast on its data dir, then
#                       SIGKILL to the PID if it is still there) and remove PG_DIR.
# Run:
#   scripts/lib/postgres.sh selftest    start, psql 'select 1' over both sockets, stop, check
#                                       nothing is left (process or directory).
#   scripts/lib/postgres.sh run CMD...  start, run CMD with ARCD_TEST_POSTGRES_URL set, stop.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_USER_NAME=arcd

_pg_as() {
    if [[ $(id -u) == 0 ]]; then
        runuser -u "$PG_RUN_AS" -- "$@"
    else
        "$@"
    fi
}

_pg_free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

# _pg_alive PID: running (a zombie left for a subreaper to collect counts as gone).
_pg_alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

pg_start() {
    if [[ $(id -u) == 0 ]]; then
        if [[ -z ${PG_RUN_AS:-} ]]; then
            if id postgres >/dev/null 2>&1; then PG_RUN_AS=postgres; else PG_RUN_AS=nobody; fi
        fi
    fi
    PG_DIR=$(mktemp -d /tmp/arcd-pg.XXXXXX) || return 1
    chmod 0755 "$PG_DIR"
    if [[ $(id -u) == 0 ]]; then chown "$PG_RUN_AS" "$PG_DIR"; fi
    if ! _pg_as "$PG_BIN/initdb" -D "$PG_DIR/data" -U "$PG_USER_NAME" --auth=trust \
        --encoding=UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1; then
        cat "$PG_DIR/initdb.log" >&2
        rm -rf "$PG_DIR"
        return 1
    fi
    PG_PORT=$(_pg_free_port)
    # -k: the unix socket in PG_DIR; -h: loopback TCP only. Logs to a file in PG_DIR.
    _pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 30 \
        -o "-k $PG_DIR -h 127.0.0.1 -p $PG_PORT -c max_connections=100" start >/dev/null ||
        {
            cat "$PG_DIR/server.log" >&2
            rm -rf "$PG_DIR"
            return 1
        }
    PG_PID=$(head -1 "$PG_DIR/data/postmaster.pid")
    PG_URL="postgres://$PG_USER_NAME@127.0.0.1:$PG_PORT/postgres"
    # libpq form with the socket directory as host (tokio-postgres reads it too).
    PG_SOCKET_URL="host=$PG_DIR port=$PG_PORT user=$PG_USER_NAME dbname=postgres"
    export PG_DIR PG_PID PG_PORT PG_URL PG_SOCKET_URL
    echo "$PG_URL"
}

pg_stop() {
    [[ -n ${PG_DIR:-} ]] || return 0
    if [[ -n ${PG_PID:-} ]] && _pg_alive "$PG_PID"; then
        _pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
        if _pg_alive "$PG_PID"; then
            echo "postgres pid $PG_PID did not stop; sending SIGKILL" >&2
            kill -KILL "$PG_PID" 2>/dev/null || true
        fi
    fi
    rm -rf "$PG_DIR"
    unset PG_DIR PG_PID PG_PORT PG_URL PG_SOCKET_URL
}

_pg_selftest() {
    set -e
    pg_start >/dev/null
    local dir=$PG_DIR pid=$PG_PID
    trap pg_stop EXIT
    [[ $(psql "$PG_URL" -XAtc 'select 1') == 1 ]]
    [[ $(psql "$PG_SOCKET_URL" -XAtc 'select 1') == 1 ]]
    [[ $(psql "$PG_URL" -XAtc 'show fsync') == on ]]
    [[ $(psql "$PG_URL" -XAtc 'show synchronous_commit') == on ]]
    pg_stop
    trap - EXIT
    if _pg_alive "$pid"; then
        echo "selftest: postgres pid $pid still running" >&2
        return 1
    fi
    if [[ -e $dir ]]; then
        echo "selftest: $dir left behind" >&2
        return 1
    fi
    echo "postgres.sh selftest: ok"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    case ${1:-} in
    selftest) _pg_selftest ;;
    run)
        shift
        pg_start >/dev/null
        trap pg_stop EXIT
        ARCD_TEST_POSTGRES_URL=$PG_URL "$@"
        ;;
    *)
        echo "usage: $0 selftest | run CMD..." >&2
        exit 2
        ;;
    esac
fi
