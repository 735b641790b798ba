#!/usr/bin/env bash
# postgres.sh — set up the database host of the multi-node arcd lab: Debian's PostgreSQL 15
# listening on the lab network, a role and a database for arcd, and optionally a synchronous
# streaming standby.
#
#   postgres.sh [options]
#
# Two ways to run the server:
#   default           Debian's cluster 15/main (package postgresql-15, systemd unit
#                     postgresql@15-main): settings in conf.d/arcd-lab.conf, the trusted network
#                     in pg_hba.conf, role and database made with psql: the Vagrant VM
#   --dir DIR --pid-file FILE
#                     a server of its own: initdb in DIR (new or empty; the caller removes it),
#                     started with pg_ctl (scripts/lib/postgres.sh), the postmaster's PID written
#                     to FILE; the caller stops it by that PID. Used by scripts/e2e/multinode.sh
#                     and pg-failover.sh inside a network namespace.
#
# Options (defaults in brackets):
#   --listen ADDR          listen_addresses (an address of this host) [*]
#   --port N               TCP port [5432]
#   --trust-net CIDR       clients of this network connect as any role without a password,
#                          replication included. A lab on a private network only: a real
#                          deployment uses scram-sha-256 or certificates [none: local only]
#   --user NAME            the role arcd connects as (superuser in background mode) [arcd]
#   --database NAME        the database arcd uses, owned by --user [arcd]
#   --synchronous-standby NAME
#                          synchronous_standby_names: commits wait until the standby that
#                          connects with that application_name has the WAL on disk [none]
#   --standby-of HOST:PORT (background mode) no database of its own: a hot standby of that
#                          primary (pg_basebackup -R), promotable with pg_ctl promote
#   --name NAME            cluster_name, the application_name a standby reports to its primary
#                          [arcd-lab]
#   --install              install missing Debian packages (PROVISION_INSTALL=1)
#   -h, --help             this text
#
# Exit status 1 when the server does not start, 2 on bad arguments.
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

listen='*'
port=5432
trust_net=""
user=arcd
database=arcd
sync_standby=""
standby_of=""
name=arcd-lab
dir=""
pid_file=""
while (($#)); do
    case $1 in
        --listen) listen=${2:?--listen needs a value}; shift ;;
        --port) port=${2:?--port needs a value}; shift ;;
        --trust-net) trust_net=${2:?--trust-net needs a value}; shift ;;
        --user) user=${2:?--user needs a value}; shift ;;
        --database) database=${2:?--database needs a value}; shift ;;
        --synchronous-standby) sync_standby=${2:?--synchronous-standby needs a value}; shift ;;
        --standby-of) standby_of=${2:?--standby-of needs a value}; shift ;;
        --name) name=${2:?--name needs a value}; shift ;;
        --dir) dir=${2:?--dir needs a value}; shift ;;
        --pid-file) pid_file=${2:?--pid-file needs a value}; shift ;;
        --install) PROVISION_INSTALL=1 ;;
        -h | --help) print_usage "$0"; exit 0 ;;
        *) usage_error "unknown argument $1" ;;
    esac
    shift
done
[[ $listen == '*' ]] || check_arg --listen "$listen" is_ipv4
check_arg --port "$port" is_uint
((port > 0 && port < 65536)) || usage_error "--port: 1 to 65535"
[[ -z $trust_net ]] || check_arg --trust-net "$trust_net" is_cidr
is_identifier() { [[ $1 =~ ^[a-z_][a-z0-9_]{0,62}$ ]]; }
check_arg --user "$user" is_identifier
check_arg --database "$database" is_identifier
[[ -z $sync_standby ]] || check_arg --synchronous-standby "$sync_standby" is_identifier
check_arg --name "$name" is_plain
[[ -z $standby_of ]] || check_arg --standby-of "$standby_of" is_host_port
[[ -z $dir ]] || check_arg --dir "$dir" is_plain
[[ -z $pid_file ]] || check_arg --pid-file "$pid_file" is_plain
[[ -n $dir && -n $pid_file ]] || [[ -z $dir && -z $pid_file ]] || usage_error "--dir and --pid-file go together"
mode=systemd
[[ -n $dir ]] && mode=background
[[ -z $standby_of || $mode == background ]] || usage_error "--standby-of needs --dir and --pid-file"
role="primary"
[[ -n $standby_of ]] && role="hot standby of $standby_of"
validate_only_exit "PostgreSQL 15 ($mode, $role) on $listen:$port, role $user, database $database${trust_net:+, trusting $trust_net}${sync_standby:+, synchronous standby $sync_standby}"

[[ $EUID -eq 0 ]] || die "needs root (runs the server as user postgres)"
need_tools psql:postgresql-client-15 runuser:util-linux
[[ -x /usr/lib/postgresql/15/bin/pg_ctl ]] || {
    [[ $PROVISION_INSTALL == 1 ]] || die "PostgreSQL 15 is missing: apt-get install --no-install-recommends postgresql-15 (or pass --install)"
    apt_install postgresql-15
}

settings=("cluster_name=$name")
[[ -n $sync_standby ]] && settings+=("synchronous_standby_names=$sync_standby")

if [[ $mode == background ]]; then
    # shellcheck source=scripts/lib/postgres.sh
    source "$REPO_DIR/scripts/lib/postgres.sh"
    PG_LISTEN=$listen PG_PORT=$port PG_DIR_WANTED=$dir PG_TRUST_NET=$trust_net PG_USER_NAME=$user
    PG_SETTINGS="${settings[*]}"
    if [[ -n $standby_of ]]; then
        pg_start_standby "${standby_of%:*}" "${standby_of##*:}" >/dev/null || die "the standby did not start (log above)"
    else
        pg_start >/dev/null || die "PostgreSQL did not start (log above)"
    fi
    printf '%s\n' "$PG_PID" >"$pid_file.tmp.$$"
    mv -f "$pid_file.tmp.$$" "$pid_file"
    if [[ -z $standby_of && $database != postgres ]]; then
        # synchronous_commit = local: with a synchronous standby named, a commit would otherwise
        # wait for a standby that cannot exist before the primary does.
        psql "$PG_SOCKET_URL" -XAtq -v ON_ERROR_STOP=1 -c "SET synchronous_commit = local" \
            -c "CREATE DATABASE $database OWNER $user" ||
            die "CREATE DATABASE $database failed"
    fi
    log "PostgreSQL ($role) running: PID $PG_PID (in $pid_file), $listen:$port, data $dir/data, log $dir/server.log"
    exit 0
fi

# ------------------------------------------------------ Debian's cluster --
have_systemd || die "no systemd here: pass --dir DIR --pid-file FILE to run a server of its own"
conf_dir=/etc/postgresql/15/main
[[ -d $conf_dir ]] || die "no cluster 15/main ($conf_dir): pg_createcluster 15 main"
{
    echo "# Written by scripts/provision/postgres.sh (arcd lab)."
    echo "listen_addresses = '$listen'"
    echo "port = $port"
    for s in "${settings[@]}"; do echo "${s%%=*} = '${s#*=}'"; done
} >"$conf_dir/conf.d/arcd-lab.conf"
hba=$conf_dir/pg_hba.conf
sed -i '/# arcd-lab begin/,/# arcd-lab end/d' "$hba"
if [[ -n $trust_net ]]; then
    printf '# arcd-lab begin\nhost all all %s trust\nhost replication all %s trust\n# arcd-lab end\n' \
        "$trust_net" "$trust_net" >>"$hba"
fi
systemctl enable postgresql@15-main >/dev/null 2>&1 || true
systemctl restart postgresql@15-main || die "postgresql@15-main did not start"
wait_for 30 runuser -u postgres -- psql -p "$port" -XAtqc 'select 1' || die "PostgreSQL does not answer on port $port"
as_pg() { runuser -u postgres -- psql -p "$port" -XAtq -v ON_ERROR_STOP=1 "$@"; }
[[ $(as_pg -c "SELECT 1 FROM pg_roles WHERE rolname = '$user'") == 1 ]] ||
    as_pg -c "CREATE ROLE $user LOGIN" || die "CREATE ROLE $user failed"
[[ $(as_pg -c "SELECT 1 FROM pg_database WHERE datname = '$database'") == 1 ]] ||
    as_pg -c "CREATE DATABASE $database OWNER $user" || die "CREATE DATABASE $database failed"
log "PostgreSQL 15/main on $listen:$port: role $user, database $database${trust_net:+, clients of $trust_net trusted}"
