#!/usr/bin/env bash
# rendezvous.sh — set up the rendezvous host of the arcd lab: write arcd's configuration, start
# `arcd serve` (API, TUN device, one rendezvous point) and wait until it is ready.
#
#   rendezvous.sh [options] --rp-endpoint HOST:PORT
#
# Two ways to run arcd:
#   default           a systemd unit arcd.service (written, enabled and restarted here): the VM
#   --pid-file FILE   in the background, its PID written to FILE at once and its output appended
#                     to --log-file; the caller stops it (kill the PID). Used by
#                     scripts/e2e/netns.sh inside a network namespace, where nothing runs systemd.
#
# Options (defaults in brackets):
#   --arcd PATH            arcd binary [/usr/local/bin/arcd, else `arcd` on PATH]
#   --config FILE          arcd configuration file written here [/etc/arcd/arcd.toml]
#   --data-dir DIR         arcd's data_dir [/var/lib/arcd]
#   --api-listen ADDR:PORT API address [0.0.0.0:8443]
#   --api-tls yes|no       HTTPS with the self-signed certificate arcd generates in data_dir
#                          (tls-cert.pem: what clients pass to curl --cacert), or plain HTTP [yes]
#   --api-hostname NAME    a subject alternative name of that certificate; repeat for several
#                          (names or IPv4 addresses clients use) [localhost]
#   --rp-id ID             rendezvous point id [ap-northeast-1]
#   --rp-listen ADDR:PORT  its UDP listener [0.0.0.0:11010]
#   --rp-endpoint H:PORT   what devices are told to connect to (arcServerEndpoint) (required
#                          unless --rendezvous-point is given)
#   --pool CIDR            client address pool [10.64.0.0/16]
#   --rendezvous-point ID,LISTEN,ENDPOINT,POOL
#                          one entry of [[rendezvous_points]]; repeat for several. Replaces the
#                          one of --rp-id, --rp-listen, --rp-endpoint and --pool. Every node of a
#                          multi-node lab gets the same list
#   --store-url URL        [store] engine = "postgres" with this url (a libpq URL without spaces,
#                          several hosts allowed: postgres://arcd@h1:5432,h2:5432/arcd?
#                          target_session_attrs=read-write) [SQLite in --data-dir]
#   --node-api yes|no      [node] api: this node serves the API [yes]
#   --node-rendezvous-points IDS
#                          [node] rendezvous_points: comma-separated ids this node serves, '*'
#                          for all, 'none' for an API-only node [*]
#   --allowed-ips CIDR,..  arcAllowedIPs [100.127.0.0/16]
#   --tun-name NAME        TUN interface [arc0]
#   --mtu N                TUN MTU [1420]
#   --log-level FILTER     arcd's log filter [info]
#   --metrics-listen A:P   turn the Prometheus metrics listener on at this address (GET /metrics)
#                          [off]
#   --egress-masquerade yes|no  egress NAT for device traffic leaving for other networks
#                          (egress.masquerade: nftables table `ip arcd`) [no]
#   --run-as USER          (background mode) run arcd as USER and USER's group with CAP_NET_ADMIN
#                          and CAP_NET_BIND_SERVICE as its only capabilities (ambient, inheritable,
#                          bounding set) and no new privileges, as the packaged systemd unit
#                          (packaging/arcd.service) does;
#                          data_dir is given to USER. /var/run/wireguard must let USER add its
#                          control sockets (the package's tmpfiles.d entry does) [root]
#   --pid-file FILE        background mode (see above)
#   --log-file FILE        arcd's output in background mode [DATA_DIR/arcd.log]
#   --timeout SECONDS      how long to wait for arcd to be ready [30]
#   --package PKG          also install this Debian package (with --install); repeat for several
#   --install              install missing Debian packages (PROVISION_INSTALL=1)
#   -h, --help             this text
#
# Ready means: root-credentials.json in data_dir (SQLite only: on PostgreSQL the node that starts
# first writes it), the API answers (GET /openapi.yaml) when the node serves it, and when it
# serves rendezvous points, their UDP ports listen and the TUN device exists. The script then prints where the API and the
# credentials are. Exit status 1 when arcd does not get ready (its log's tail is shown), 2 on bad
# arguments. ARCD_* variables of the caller never reach arcd (it would read them as configuration).
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

arcd=""
config=/etc/arcd/arcd.toml
data_dir=/var/lib/arcd
api_listen=0.0.0.0:8443
api_tls=yes
hostnames=()
rp_id=ap-northeast-1
rp_listen=0.0.0.0:11010
rp_endpoint=""
pool=10.64.0.0/16
allowed_ips=100.127.0.0/16
tun_name=arc0
mtu=1420
log_level=info
metrics_listen=""
egress=no
run_as=""
pid_file=""
log_file=""
timeout=30
packages=()
rps=()
store_url=""
node_api=yes
node_rps='*'

while (($#)); do
    case $1 in
        --arcd) arcd=${2:?--arcd needs a value}; shift ;;
        --config) config=${2:?--config needs a value}; shift ;;
        --data-dir) data_dir=${2:?--data-dir needs a value}; shift ;;
        --api-listen) api_listen=${2:?--api-listen needs a value}; shift ;;
        --api-tls) api_tls=${2:?--api-tls needs a value}; shift ;;
        --api-hostname) hostnames+=("${2:?--api-hostname needs a value}"); shift ;;
        --rp-id) rp_id=${2:?--rp-id needs a value}; shift ;;
        --rp-listen) rp_listen=${2:?--rp-listen needs a value}; shift ;;
        --rp-endpoint) rp_endpoint=${2:?--rp-endpoint needs a value}; shift ;;
        --pool) pool=${2:?--pool needs a value}; shift ;;
        --rendezvous-point) rps+=("${2:?--rendezvous-point needs a value}"); shift ;;
        --store-url) store_url=${2:?--store-url needs a value}; shift ;;
        --node-api) node_api=${2:?--node-api needs a value}; shift ;;
        --node-rendezvous-points) node_rps=${2:?--node-rendezvous-points needs a value}; shift ;;
        --allowed-ips) allowed_ips=${2:?--allowed-ips needs a value}; shift ;;
        --tun-name) tun_name=${2:?--tun-name needs a value}; shift ;;
        --mtu) mtu=${2:?--mtu needs a value}; shift ;;
        --log-level) log_level=${2:?--log-level needs a value}; shift ;;
        --metrics-listen) metrics_listen=${2:?--metrics-listen needs a value}; shift ;;
        --egress-masquerade) egress=${2:?--egress-masquerade needs a value}; shift ;;
        --run-as) run_as=${2:?--run-as needs a value}; shift ;;
        --pid-file) pid_file=${2:?--pid-file needs a value}; shift ;;
        --log-file) log_file=${2:?--log-file needs a value}; shift ;;
        --timeout) timeout=${2:?--timeout needs a value}; shift ;;
        --package) packages+=("${2:?--package needs a value}"); shift ;;
        --install) PROVISION_INSTALL=1 ;;
        -h | --help) print_usage "$0"; exit 0 ;;
        *) usage_error "unknown argument $1" ;;
    esac
    shift
done
[[ -n $rp_endpoint || ${#rps[@]} -gt 0 ]] || usage_error "--rp-endpoint is required"
((${#rps[@]})) || rps=("$rp_id,$rp_listen,$rp_endpoint,$pool")
for r in "${rps[@]}"; do
    IFS=, read -r r_id r_listen r_endpoint r_pool r_more <<<"$r"
    [[ -n $r_pool && -z $r_more ]] || usage_error "--rendezvous-point: ID,LISTEN,ENDPOINT,POOL, not '$r'"
    check_arg "--rendezvous-point id" "$r_id" is_plain
    check_arg "--rendezvous-point listen" "$r_listen" is_host_port
    check_arg "--rendezvous-point endpoint" "$r_endpoint" is_host_port
    check_arg "--rendezvous-point pool" "$r_pool" is_cidr
done
# A libpq URL goes into TOML between double quotes: no quotes, backslashes or spaces.
url_re='^postgres(ql)?://[A-Za-z0-9._:/@+=,%?&-]+$'
[[ -z $store_url || $store_url =~ $url_re ]] ||
    usage_error "--store-url: a postgres:// URL without spaces or quotes, not '$store_url'"
[[ $node_api == yes || $node_api == no ]] || usage_error "--node-api: yes or no, not '$node_api'"
[[ $node_rps == '*' || $node_rps == none ]] || check_arg --node-rendezvous-points "$node_rps" is_plain
check_arg --api-listen "$api_listen" is_host_port
[[ -z $metrics_listen ]] || check_arg --metrics-listen "$metrics_listen" is_host_port
check_arg --rp-listen "$rp_listen" is_host_port
[[ -z $rp_endpoint ]] || check_arg --rp-endpoint "$rp_endpoint" is_host_port
check_arg --pool "$pool" is_cidr
check_arg --tun-name "$tun_name" is_ifname
check_arg --mtu "$mtu" is_uint
check_arg --timeout "$timeout" is_uint
check_arg --rp-id "$rp_id" is_plain
check_arg --log-level "$log_level" is_plain
check_arg --config "$config" is_plain
check_arg --data-dir "$data_dir" is_plain
[[ $api_tls == yes || $api_tls == no ]] || usage_error "--api-tls: yes or no, not '$api_tls'"
[[ $egress == yes || $egress == no ]] || usage_error "--egress-masquerade: yes or no, not '$egress'"
[[ -z $run_as ]] || check_arg --run-as "$run_as" is_plain
IFS=',' read -r -a allowed <<<"$allowed_ips"
((${#allowed[@]})) || usage_error "--allowed-ips: empty"
for c in "${allowed[@]}"; do check_arg --allowed-ips "$c" is_cidr; done
((${#hostnames[@]})) || hostnames=(localhost)
for h in "${hostnames[@]}"; do check_arg --api-hostname "$h" is_plain; done
[[ -z $pid_file ]] || check_arg --pid-file "$pid_file" is_plain
[[ -n $log_file ]] || log_file=$data_dir/arcd.log
[[ -z $pid_file && -n $arcd ]] && [[ $arcd != /* ]] && usage_error "--arcd: give an absolute path for the systemd unit"
for p in "${packages[@]}"; do check_arg --package "$p" is_package_name; done
mode=systemd
[[ -n $pid_file ]] && mode=background
[[ -z $run_as || $mode == background ]] || usage_error "--run-as needs --pid-file (the systemd unit of the Debian package runs arcd as user arcd)"
validate_only_exit "arcd ($mode) with $config: API ${api_listen} (tls $api_tls, names ${hostnames[*]}, served: $node_api), rendezvous points ${rps[*]} (served here: $node_rps), store ${store_url:-SQLite in $data_dir}"

# ------------------------------------------------------------------- tools --
[[ $EUID -eq 0 ]] || die "needs root (arcd makes a TUN device; systemd unit)"
tools=(curl:curl jq:jq ip:iproute2 ss:iproute2 wg:wireguard-tools)
need_tools "${tools[@]}"
install_packages "${packages[@]}"
if [[ -z $arcd ]]; then
    if [[ -x /usr/local/bin/arcd ]]; then
        arcd=/usr/local/bin/arcd
    else
        arcd=$(command -v arcd) || die "no arcd binary: pass --arcd (scripts/provision/build-arcd.sh builds one)"
    fi
fi
[[ -f $arcd && -x $arcd ]] || die "no executable arcd at $arcd"
arcd=$(realpath -- "$arcd")
if [[ $mode == systemd ]]; then
    have_systemd || die "no systemd here: pass --pid-file FILE to run arcd in the background"
fi
[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing (arcd's TUN device needs it)"
# What starts arcd: nothing more as root, or setpriv dropping to --run-as with the unit's two
# capabilities.
launcher=()
if [[ -n $run_as ]]; then
    need_tools setpriv:util-linux
    run_uid=$(id -u -- "$run_as" 2>/dev/null) || die "--run-as: no user $run_as"
    run_gid=$(id -g -- "$run_as")
    ((run_uid != 0)) || die "--run-as: $run_as is root"
    launcher=(setpriv "--reuid=$run_uid" "--regid=$run_gid" --init-groups
        --inh-caps=-all,+net_admin,+net_bind_service --ambient-caps=-all,+net_admin,+net_bind_service
        --bounding-set=-all,+net_admin,+net_bind_service
        --no-new-privs --)
fi

# ------------------------------------------------------------------ config --
toml_list() { # toml_list A B...: ["A", "B"]
    local out="" x
    for x in "$@"; do out+="${out:+, }\"$x\""; done
    printf '[%s]' "$out"
}
tls_bool=true
[[ $api_tls == no ]] && tls_bool=false
mkdir -p "$(dirname "$config")"
mkdir -p "$data_dir"
chmod 0700 "$data_dir"
# As StateDirectory= does for the unit: the data directory belongs to the user arcd runs as.
[[ -z $run_as ]] || chown -R "$run_uid:$run_gid" "$data_dir"
umask 022
cat >"$config.tmp.$$" <<EOF
# Written by scripts/provision/rendezvous.sh: the arcd lab's rendezvous host.
# Every key and its default: config/arcd.toml in the arcd repository.
data_dir = "$data_dir"

[api]
listen = "$api_listen"
tls = $tls_bool
hostnames = $(toml_list "${hostnames[@]}")

[tun]
enabled = true
name = "$tun_name"
mtu = $mtu

[egress]
masquerade = $([[ $egress == yes ]] && echo true || echo false)

[log]
level = "$log_level"
EOF
for r in "${rps[@]}"; do
    IFS=, read -r r_id r_listen r_endpoint r_pool <<<"$r"
    printf '\n[[rendezvous_points]]\nid = "%s"\nlisten = "%s"\nendpoint = "%s"\npool = "%s"\nallowed_ips = %s\n' \
        "$r_id" "$r_listen" "$r_endpoint" "$r_pool" "$(toml_list "${allowed[@]}")" >>"$config.tmp.$$"
done
if [[ -n $store_url ]]; then
    printf '\n[store]\nengine = "postgres"\nurl = "%s"\n' "$store_url" >>"$config.tmp.$$"
fi
case $node_rps in
    '*') served=("*") ;;
    none) served=() ;;
    *) IFS=, read -r -a served <<<"$node_rps" ;;
esac
printf '\n[node]\napi = %s\nrendezvous_points = %s\n' "$([[ $node_api == yes ]] && echo true || echo false)" \
    "$(toml_list ${served[@]+"${served[@]}"})" >>"$config.tmp.$$"
if [[ -n $metrics_listen ]]; then
    printf '\n[metrics]\nenabled = true\nlisten = "%s"\n' "$metrics_listen" >>"$config.tmp.$$"
fi
mv -f "$config.tmp.$$" "$config"
log "wrote $config"

# ------------------------------------------------------------------- start --
arcd_env_unset
if [[ $mode == background ]]; then
    if pid_file_alive "$pid_file" "${arcd##*/}"; then
        die "arcd already runs with PID $(<"$pid_file") (from $pid_file)"
    fi
    mkdir -p "$(dirname "$pid_file")" "$(dirname "$log_file")"
    start_background "$pid_file" "$log_file" env "${ARCD_ENV_UNSET[@]}" "${launcher[@]}" "$arcd" --config "$config" serve
    arcd_pid=$BACKGROUND_PID
    log "started arcd in the background: PID $arcd_pid (in $pid_file), log $log_file${run_as:+, as user $run_as with CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only}"
else
    cat >/etc/systemd/system/arcd.service.tmp <<EOF
# Written by scripts/provision/rendezvous.sh.
[Unit]
Description=arcd: virtual SIM API and WireGuard rendezvous point
Documentation=file://$config
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=$arcd --config $config serve
Restart=on-failure
RestartSec=2
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
EOF
    mv -f /etc/systemd/system/arcd.service.tmp /etc/systemd/system/arcd.service
    systemctl daemon-reload
    systemctl enable arcd.service >/dev/null 2>&1 || die "systemctl enable arcd.service failed"
    systemctl restart arcd.service
    log "arcd.service (re)started"
fi

show_log() {
    echo "==== tail of arcd's log ====" >&2
    if [[ $mode == background ]]; then
        tail -n 40 "$log_file" >&2 || true
    else
        journalctl -u arcd.service -n 40 --no-pager >&2 || true
    fi
}
running() {
    if [[ $mode == background ]]; then
        proc_alive "$arcd_pid"
    else
        if systemctl is-failed --quiet arcd.service; then return 1; fi
    fi
}

# The API from this host: the listen address, or loopback when it is the wildcard.
api_host=${api_listen%:*}
api_port=${api_listen##*:}
[[ $api_host == 0.0.0.0 ]] && api_host=127.0.0.1
scheme=https
[[ $api_tls == no ]] && scheme=http
probe_url="$scheme://$api_host:$api_port"
# The UDP ports of the rendezvous points this node serves.
rp_ports=()
for r in "${rps[@]}"; do
    IFS=, read -r r_id r_listen _ <<<"$r"
    [[ $node_rps == '*' || ,$node_rps, == *",$r_id,"* ]] && rp_ports+=("${r_listen##*:}")
done

ready() {
    [[ -n $store_url || -s $data_dir/root-credentials.json ]] || return 1
    # -k: a liveness probe of the local listener; clients check the certificate (device.sh --cacert).
    [[ $node_api == no ]] || curl -fsSk -o /dev/null -m 2 "$probe_url/openapi.yaml" || return 1
    local p
    for p in ${rp_ports[@]+"${rp_ports[@]}"}; do
        ss -Hlun "sport = :$p" | grep -q . || return 1
    done
    ((${#rp_ports[@]} == 0)) || ip link show "$tun_name" >/dev/null 2>&1 || return 1
}
t0=$(now_ms)
deadline=$((SECONDS + timeout))
until ready >/dev/null 2>&1; do
    if ! running; then
        show_log
        die "arcd exited during start"
    fi
    if ((SECONDS >= deadline)); then
        show_log
        die "arcd not ready after ${timeout} s (want root-credentials.json, GET $probe_url/openapi.yaml, UDP ${rp_ports[*]:-none}, TUN $tun_name)"
    fi
    sleep 0.1
done
log "arcd ready in $(($(now_ms) - t0)) ms: API $([[ $node_api == yes ]] && echo "$probe_url (listen $api_listen)" || echo "not served here"), rendezvous points served here: $node_rps of ${rps[*]}, TUN $tun_name"
[[ ! -s $data_dir/root-credentials.json ]] || log "root credentials (POST /v1/auth): $data_dir/root-credentials.json"
[[ $api_tls == yes ]] && log "API certificate (curl --cacert): $data_dir/tls-cert.pem"
exit 0
