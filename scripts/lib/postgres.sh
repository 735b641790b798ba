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
#                       Settings read when set (the e2e scripts and scripts/provision/postgres.sh
#                       use them for a server on a namespace's or VM's address):
#                         PG_LISTEN      listen_addresses instead of 127.0.0.1
#                         PG_PORT        this port instead of a free one
#                         PG_DIR_WANTED  this (new or empty) directory instead of a temp dir
#                         PG_TRUST_NET   a CIDR whose clients connect as any role without a
#                                        password, replication included (lab networks only)
#                         PG_SETTINGS    more server settings, "name=value" words
#   pg_start_standby HOST PORT
#                       the same, but the data directory is a pg_basebackup -R of the primary at
#                       HOST:PORT (user arcd; trust for replication there): a hot standby that
#                       streams from it and can be promoted with pg_promote.
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
    _pg_run_as_default
    _pg_make_dir || return 1
    if ! _pg_as "$PG_BIN/initdb" -D "$PG_DIR/data" -U "$PG_USER_NAME" --auth=trust \
        --encoding=UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1; then
        cat "$PG_DIR/initdb.log" >&2
        rm -rf "$PG_DIR"
        return 1
    fi
    _pg_trust_net
    _pg_launch
}

# pg_start_standby HOST PORT: a hot standby of the primary at HOST:PORT (see the top).
pg_start_standby() {
    local host=$1 port=$2
    _pg_run_as_default
    _pg_make_dir || return 1
    # -R: standby.signal and primary_conninfo; -X stream: the WAL of the copy comes along.
    if ! _pg_as "$PG_BIN/pg_basebackup" -D "$PG_DIR/data" -R -X stream -c fast \
        -d "host=$host port=$port user=$PG_USER_NAME" >"$PG_DIR/basebackup.log" 2>&1; then
        cat "$PG_DIR/basebackup.log" >&2
        rm -rf "$PG_DIR"
        return 1
    fi
    _pg_launch
}

_pg_run_as_default() {
    if [[ $(id -u) == 0 && -z ${PG_RUN_AS:-} ]]; then
        if id postgres >/dev/null 2>&1; then PG_RUN_AS=postgres; else PG_RUN_AS=nobody; fi
    fi
}

_pg_make_dir() {
    if [[ -n ${PG_DIR_WANTED:-} ]]; then
        PG_DIR=$PG_DIR_WANTED
        mkdir -p "$PG_DIR" || return 1
        [[ -z $(ls -A "$PG_DIR") ]] || {
            echo "postgres.sh: $PG_DIR is not empty" >&2
            return 1
        }
    else
        PG_DIR=$(mktemp -d /tmp/arcd-pg.XXXXXX) || return 1
    fi
    chmod 0755 "$PG_DIR"
    if [[ $(id -u) == 0 ]]; then chown "$PG_RUN_AS" "$PG_DIR"; fi
}

# Clients of PG_TRUST_NET: any database and replication, without a password.
_pg_trust_net() {
    [[ -n ${PG_TRUST_NET:-} ]] || return 0
    printf 'host all all %s trust\nhost replication all %s trust\n' "$PG_TRUST_NET" "$PG_TRUST_NET" |
        _pg_as tee -a "$PG_DIR/data/pg_hba.conf" >/dev/null
}

# Starts the server of PG_DIR/data and sets PG_PID, PG_URL, PG_SOCKET_URL.
_pg_launch() {
    local listen=${PG_LISTEN:-127.0.0.1} opts setting
    [[ -n ${PG_PORT:-} ]] || PG_PORT=$(_pg_free_port)
    # -k: the unix socket in PG_DIR; -h: the TCP address(es). Logs to a file in PG_DIR.
    opts="-k $PG_DIR -h $listen -p $PG_PORT -c max_connections=100"
    for setting in ${PG_SETTINGS:-}; do opts+=" -c $setting"; done
    # Kept for a start again after a stop (pg_ctl start -o "$(cat PG_DIR/server.opts)").
    printf '%s\n' "$opts" | _pg_as tee "$PG_DIR/server.opts" >/dev/null
    _pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 30 \
        -o "$opts" start >/dev/null ||
        {
            cat "$PG_DIR/server.log" >&2
            [[ -n ${PG_DIR_WANTED:-} ]] || rm -rf "$PG_DIR"
            return 1
        }
    PG_PID=$(head -1 "$PG_DIR/data/postmaster.pid")
    [[ $listen == '*' || $listen == 0.0.0.0 ]] && listen=127.0.0.1
    PG_URL="postgres://$PG_USER_NAME@${listen%%,*}:$PG_PORT/postgres"
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
