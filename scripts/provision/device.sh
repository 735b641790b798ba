#!/usr/bin/env bash
# device.sh — set up a device host of the arcd lab: a virtual SIM from arcd's API (or a virtual
# subscriber added to an imported IoT SIM) and a real WireGuard client for it (Debian's
# wireguard-go + wg), configured like wg-quick would from the Sim: private key, peer, address, MTU
# and a route for each of the Sim's arcAllowedIPs.
#
#   device.sh [options] STATE_DIR
#
# Steps: start wireguard-go on the interface → get a Sim (createSim through the API, or
# addSubscription on an IoT SIM with --add-subscription, or the Sim already in STATE_DIR, or
# --sim-json) → render STATE_DIR/wg.conf with render-wg-conf.sh and write STATE_DIR/up.sh (wg
# setconf, ip address, MTU, routes) → run up.sh → optionally ping an address through the tunnel
# until it answers (--check-ping).
#
# Two ways to run wireguard-go:
#   default           a systemd unit arcd-device-IF.service whose ExecStartPost runs up.sh, so the
#                     device comes back configured after a restart or reboot: the VM
#   --pid-file FILE   in the background, its PID written to FILE at once and its output appended
#                     to --log-file; the caller stops it (kill the PID). Used by
#                     scripts/e2e/netns.sh inside a network namespace, where nothing runs systemd.
#
# Options (defaults in brackets):
#   --api URL            arcd's API, e.g. https://192.168.56.10:8443 (needed to create a SIM)
#   --auth FILE          credentials for the API: arcd's root-credentials.json (authKeyId and
#                        authKey: POST /v1/auth is called) or a POST /v1/auth answer (apiKey, token)
#   --cacert FILE        certificate to trust for an https API (arcd's DATA_DIR/tls-cert.pem)
#   --host-header NAME   Host header of the API requests: arcd gives a new SIM the coverage its
#                        Host names ([coverage] global_hosts, e.g. g.api.example: global coverage,
#                        placed on the global rendezvous point) [the --api URL's host]
#   --sim-body JSON      createSim body [{"type":"virtual","subscription":"planArc01"}]
#   --add-subscription ICCID
#                        instead of createSim: add a virtual subscriber (planArc01) to the IoT SIM
#                        ICCID imported before (POST /v1/arcd/iot_sims; its simId and profile ID
#                        are the ICCID) with POST /v1/sims/ICCID/profiles/ICCID/add_subscription;
#                        the device then runs that subscriber's session (getSim ICCID) with the
#                        private key of the answer, and the platform sees it as the IoT SIM's IMSI
#   --new-sim            create a new SIM (or subscriber) even when STATE_DIR holds one (default:
#                        reuse it, after refreshing it with getSim when --api and --auth are given)
#   --sim-json FILE      use this Sim (createSim/getSim answer) instead of the API ...
#   --key FILE           ... with this private key (default: the createSim answer's own
#                        profiles[*].arcClientPeerPrivateKey)
#   --interface NAME     WireGuard interface [wg0]
#   --mtu N              interface MTU [1420]
#   --keepalive N        PersistentKeepalive seconds [25]
#   --wg-log-level L     wireguard-go's LOG_LEVEL: verbose, error or silent [error]
#   --pid-file FILE      background mode (see above)
#   --log-file FILE      wireguard-go's output in background mode [STATE_DIR/wireguard-go.log]
#   --configure-only     wireguard-go already runs: only (re)write the config and apply it
#   --check-ping ADDR    after configuring, ping ADDR through the tunnel until it answers
#   --check-timeout S    how long to ping [20]
#   --package PKG        also install this Debian package (with --install); repeat for several
#   --install            install missing Debian packages (PROVISION_INSTALL=1)
#   -h, --help           this text
#
# STATE_DIR (mode 0700) afterwards holds: interface, sim-id, sim.json (the Sim without any
# private key), private.key (0600), public.key, address, wg.conf (0600, `wg setconf` format),
# up.sh, and times in UNIX milliseconds: created-at-ms (createSim or addSubscription answered),
# configured-at-ms (up.sh done), first-reply-at-ms (--check-ping's first reply). The API key and
# token are never written. Exit status 1 on failure, 2 on bad arguments.
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RENDER=$REPO_DIR/scripts/e2e/render-wg-conf.sh

api_url=""
auth_file=""
cacert=""
sim_body='{"type":"virtual","subscription":"planArc01"}'
host_header=""
new_sim=0
add_subscription=""
sim_json_in=""
key_in=""
ifname=wg0
mtu=1420
keepalive=25
wg_log_level=error
pid_file=""
log_file=""
configure_only=0
check_ping=""
check_timeout=20
state=""
packages=()
while (($#)); do
    case $1 in
        --api) api_url=${2:?--api needs a value}; shift ;;
        --auth) auth_file=${2:?--auth needs a value}; shift ;;
        --cacert) cacert=${2:?--cacert needs a value}; shift ;;
        --sim-body) sim_body=${2:?--sim-body needs a value}; shift ;;
        --host-header) host_header=${2:?--host-header needs a value}; shift ;;
        --new-sim) new_sim=1 ;;
        --add-subscription) add_subscription=${2:?--add-subscription needs a value}; shift ;;
        --sim-json) sim_json_in=${2:?--sim-json needs a value}; shift ;;
        --key) key_in=${2:?--key needs a value}; shift ;;
        --interface) ifname=${2:?--interface needs a value}; shift ;;
        --mtu) mtu=${2:?--mtu needs a value}; shift ;;
        --keepalive) keepalive=${2:?--keepalive needs a value}; shift ;;
        --wg-log-level) wg_log_level=${2:?--wg-log-level needs a value}; shift ;;
        --pid-file) pid_file=${2:?--pid-file needs a value}; shift ;;
        --log-file) log_file=${2:?--log-file needs a value}; shift ;;
        --configure-only) configure_only=1 ;;
        --check-ping) check_ping=${2:?--check-ping needs a value}; shift ;;
        --check-timeout) check_timeout=${2:?--check-timeout needs a value}; shift ;;
        --package) packages+=("${2:?--package needs a value}"); shift ;;
        --install) PROVISION_INSTALL=1 ;;
        -h | --help) print_usage "$0"; exit 0 ;;
        -?*) usage_error "unknown option $1" ;;
        *)
            [[ -z $state ]] || usage_error "one STATE_DIR only (got $state and $1)"
            state=$1
            ;;
    esac
    shift
done
[[ -n $state ]] || usage_error "STATE_DIR is missing"
check_arg STATE_DIR "$state" is_plain
check_arg --interface "$ifname" is_ifname
[[ -z $host_header ]] || check_arg --host-header "$host_header" is_plain
check_arg --mtu "$mtu" is_uint
check_arg --keepalive "$keepalive" is_uint
check_arg --check-timeout "$check_timeout" is_uint
[[ -z $check_ping ]] || check_arg --check-ping "$check_ping" is_ipv4
[[ $wg_log_level =~ ^(verbose|error|silent)$ ]] || usage_error "--wg-log-level: verbose, error or silent"
[[ -z $api_url || $api_url =~ ^https?://[A-Za-z0-9.:-]+(/.*)?$ ]] || usage_error "--api: not an http(s) URL: $api_url"
api_url=${api_url%/}
[[ -z $key_in || -n $sim_json_in ]] || usage_error "--key goes with --sim-json"
[[ -z $pid_file ]] || check_arg --pid-file "$pid_file" is_plain
if [[ -z $sim_json_in ]] && ((new_sim)) && [[ -z $api_url || -z $auth_file ]]; then
    usage_error "--new-sim needs --api and --auth"
fi
if [[ -n $add_subscription ]]; then
    [[ $add_subscription =~ ^[0-9]{19,20}$ ]] || usage_error "--add-subscription: not an ICCID (19 or 20 digits): $add_subscription"
    [[ -z $sim_json_in ]] || usage_error "--add-subscription and --sim-json exclude each other"
    [[ -n $api_url && -n $auth_file ]] || usage_error "--add-subscription needs --api and --auth"
fi
((mtu >= 1280)) || usage_error "--mtu: at least 1280"
for p in "${packages[@]}"; do check_arg --package "$p" is_package_name; done
mode=systemd
[[ -n $pid_file ]] && mode=background
[[ -n $log_file ]] || log_file=$state/wireguard-go.log
if [[ -n $sim_json_in ]]; then
    source_desc="Sim from $sim_json_in"
elif [[ -n $add_subscription ]]; then
    source_desc="virtual subscriber of the IoT SIM $add_subscription from $api_url"
elif [[ -n $api_url ]]; then
    source_desc="SIM from $api_url"
else
    source_desc="Sim kept in $state"
fi
what="$mode"
((configure_only)) && what="configure only"
validate_only_exit "device $ifname ($what), $source_desc, state in $state${check_ping:+, check ping $check_ping}"

# ------------------------------------------------------------------- tools --
[[ $EUID -eq 0 ]] || die "needs root (TUN device, addresses, routes)"
tools=(wg:wireguard-tools wireguard-go:wireguard-go ip:iproute2 jq:jq curl:curl)
[[ -n $check_ping ]] && tools+=(ping:iputils-ping)
[[ $api_url == https:* && -z $cacert ]] && tools+=(update-ca-certificates:ca-certificates)
need_tools "${tools[@]}"
install_packages "${packages[@]}"
[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing (wireguard-go needs it)"
[[ -z $cacert || -r $cacert ]] || die "--cacert: cannot read $cacert"
[[ -z $auth_file || -r $auth_file ]] ||
    die "--auth: cannot read $auth_file (on the Vagrant devices it comes from the rendezvous VM: run \`vagrant up rendezvous\` first, then \`vagrant reload --provision $(hostname)\`)"
if [[ $mode == systemd ]] && ((configure_only == 0)); then
    have_systemd || die "no systemd here: pass --pid-file FILE to run wireguard-go in the background"
fi
mkdir -p "$state"
chmod 0700 "$state"
state=$(cd "$state" && pwd)
[[ $log_file == /* ]] || log_file=$PWD/$log_file
uapi_sock=/var/run/wireguard/$ifname.sock

# --------------------------------------------------------------------- API --
API_KEY="" API_TOKEN=""
auth_headers() {
    [[ -z $API_KEY ]] || printf 'X-Soracom-API-Key: %s\nX-Soracom-Token: %s\n' "$API_KEY" "$API_TOKEN"
}
# api METHOD PATH [BODY]: the answer on stdout; exit 1 with the status and body on a non-2xx
# answer. Credentials travel in headers read from a pipe, never on a command line.
api() {
    local method=$1 path=$2 body=${3-} out code args
    out=$(mktemp -p "$state" .api.XXXXXX)
    args=(-sS -m 15 -X "$method" -o "$out" -w '%{http_code}' -H 'Accept: application/json')
    [[ -n $cacert ]] && args+=(--cacert "$cacert")
    [[ -n $host_header ]] && args+=(-H "Host: $host_header")
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary @-)
    # (The process substitution must sit on curl's own command line: its pipe lives as long as
    # the command it appears in.)
    code=$(curl "${args[@]}" -H @<(auth_headers) "$api_url$path" <<<"$body" 2>"$out.err") || code=${code:-000}
    if [[ $code != 2?? ]]; then
        echo "$PROG: API $method $path -> HTTP $code: $(head -c 400 "$out") $(head -c 200 "$out.err")" >&2
        rm -f "$out" "$out.err"
        return 1
    fi
    cat "$out"
    rm -f "$out" "$out.err"
}

authenticate() {
    [[ -n $API_KEY ]] && return 0
    [[ -n $api_url && -n $auth_file ]] || die "the API needs --api and --auth"
    if jq -e '.apiKey and .token' "$auth_file" >/dev/null 2>&1; then
        API_KEY=$(jq -r .apiKey "$auth_file")
        API_TOKEN=$(jq -r .token "$auth_file")
    elif jq -e '.authKeyId and .authKey' "$auth_file" >/dev/null 2>&1; then
        local answer
        answer=$(api POST /v1/auth "$(jq -c '{authKeyId, authKey}' "$auth_file")") ||
            die "POST /v1/auth with $auth_file failed"
        API_KEY=$(jq -r '.apiKey // empty' <<<"$answer")
        API_TOKEN=$(jq -r '.token // empty' <<<"$answer")
        [[ -n $API_KEY && -n $API_TOKEN ]] || die "POST /v1/auth: no apiKey/token in the answer"
    else
        die "--auth $auth_file: neither authKeyId/authKey nor apiKey/token"
    fi
}

# keep_sim SIM_JSON_FILE KEY_FILE: store the Sim (without private keys) and the key in STATE_DIR.
keep_sim() {
    local sim=$1 key=$2 id
    id=$(jq -r '.simId // empty' "$sim")
    [[ -n $id ]] || die "$sim: no simId"
    (umask 077 && tr -d ' \t\r\n' <"$key" >"$state/private.key.new" && echo >>"$state/private.key.new")
    [[ -s $state/private.key.new ]] || die "$key: empty private key"
    jq 'del(.profiles[]?.arcClientPeerPrivateKey)' "$sim" >"$state/sim.json.new" || die "$sim: not JSON"
    mv -f "$state/private.key.new" "$state/private.key"
    mv -f "$state/sim.json.new" "$state/sim.json"
    printf '%s\n' "$id" >"$state/sim-id"
}

create_sim() {
    authenticate
    local created=$state/.created.json id
    (umask 077 && api POST /v1/sims "$sim_body" >"$created") || die "createSim (POST /v1/sims) failed"
    now_ms >"$state/created-at-ms"
    id=$(jq -r '.simId // empty' "$created")
    [[ -n $id ]] || die "createSim: no simId in the answer"
    (umask 077 && jq -r --arg id "$id" '.profiles[$id].arcClientPeerPrivateKey // empty' "$created" >"$state/.created.key")
    [[ -s $state/.created.key ]] || die "createSim: no profiles[\"$id\"].arcClientPeerPrivateKey in the answer"
    keep_sim "$created" "$state/.created.key"
    rm -f "$created" "$state/.created.key"
    log "created SIM $id"
}

# add_virtual_subscriber: addSubscription on the IoT SIM --add-subscription names. The answer is
# the SIM's profile with the new subscriber and its one-time private key; the session fields
# (address, server key, endpoint) come from getSim, whose arcSessionStatus is that subscriber's.
add_virtual_subscriber() {
    authenticate
    local iccid=$add_subscription added=$state/.added.json got=$state/.added-sim.json imsi
    (umask 077 && api POST "/v1/sims/$iccid/profiles/$iccid/add_subscription" \
        '{"subscription":"planArc01","type":"virtual"}' >"$added") ||
        die "addSubscription on the IoT SIM $iccid failed (imported with POST /v1/arcd/iot_sims?)"
    now_ms >"$state/created-at-ms"
    (umask 077 && jq -r '.arcClientPeerPrivateKey // empty' "$added" >"$state/.added.key")
    [[ -s $state/.added.key ]] || die "addSubscription: no arcClientPeerPrivateKey in the answer"
    imsi=$(jq -r '.primaryImsi as $p | [.subscribers // {} | keys[] | select(. != $p)] | join(" ")' "$added")
    api GET "/v1/sims/$iccid" >"$got" || die "getSim $iccid after addSubscription failed"
    keep_sim "$got" "$state/.added.key"
    rm -f "$added" "$got" "$state/.added.key"
    log "added a virtual subscriber to the IoT SIM $iccid (its subscribers besides the primary IMSI: ${imsi:-none})"
}

# new_sim_from_api: a SIM of our own (createSim), or a subscriber of the IoT SIM.
new_sim_from_api() {
    if [[ -n $add_subscription ]]; then
        add_virtual_subscriber
    else
        create_sim
    fi
}

# ------------------------------------------------------------ wireguard-go --
start_wireguard_go() {
    if [[ $mode == background ]]; then
        if pid_file_alive "$pid_file" wireguard-go; then
            die "wireguard-go already runs with PID $(<"$pid_file") (from $pid_file)"
        fi
        ip link show "$ifname" >/dev/null 2>&1 && die "interface $ifname exists already"
        mkdir -p "$(dirname "$pid_file")"
        WG_PROCESS_FOREGROUND=1 LOG_LEVEL=$wg_log_level \
            start_background "$pid_file" "$log_file" wireguard-go -f "$ifname"
        log "started wireguard-go $ifname in the background: PID $BACKGROUND_PID (in $pid_file)"
    else
        local unit=arcd-device-$ifname.service
        cat >"/etc/systemd/system/$unit.tmp" <<EOF
# Written by scripts/provision/device.sh: WireGuard device $ifname of the arcd lab.
[Unit]
Description=arcd lab device: wireguard-go $ifname
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
Environment=WG_PROCESS_FOREGROUND=1 LOG_LEVEL=$wg_log_level
ExecStart=$(command -v wireguard-go) -f $ifname
# Configure the interface from the state directory once it is there (not yet on the very first
# start: device.sh runs up.sh itself after getting the Sim).
ExecStartPost=/bin/sh -c 'test ! -x $state/up.sh || exec $state/up.sh'
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
EOF
        mv -f "/etc/systemd/system/$unit.tmp" "/etc/systemd/system/$unit"
        systemctl daemon-reload
        systemctl enable "$unit" >/dev/null 2>&1 || die "systemctl enable $unit failed"
        systemctl restart "$unit" || {
            journalctl -u "$unit" -n 30 --no-pager >&2 || true
            die "$unit did not start"
        }
        log "$unit (re)started"
    fi
    wait_for 10 test -S "$uapi_sock" || die "wireguard-go made no control socket $uapi_sock"
    wait_for 5 ip link show "$ifname" || die "interface $ifname did not appear"
}

# ------------------------------------------------------------------ main ----
printf '%s\n' "$ifname" >"$state/interface"
if ((configure_only)); then
    test -S "$uapi_sock" || die "--configure-only: no wireguard-go control socket $uapi_sock"
else
    start_wireguard_go
fi

if [[ -n $sim_json_in ]]; then
    [[ -r $sim_json_in ]] || die "--sim-json: cannot read $sim_json_in"
    if [[ -n $key_in ]]; then
        keep_sim "$sim_json_in" "$key_in"
    else
        (umask 077 && jq -r '[.profiles // {} | .[] | .arcClientPeerPrivateKey // empty] | first // empty' \
            "$sim_json_in" >"$state/.in.key")
        [[ -s $state/.in.key ]] || die "--sim-json $sim_json_in holds no private key: give --key"
        keep_sim "$sim_json_in" "$state/.in.key"
        rm -f "$state/.in.key"
    fi
    log "using the Sim $(<"$state/sim-id") from $sim_json_in"
elif [[ -s $state/sim.json && -s $state/private.key ]] && ((new_sim == 0)) &&
    [[ -z $add_subscription || $(cat "$state/sim-id" 2>/dev/null) == "$add_subscription" ]]; then
    id=$(<"$state/sim-id")
    if [[ -n $api_url && -n $auth_file ]]; then
        authenticate
        # Still known to this arcd (a rebuilt rendezvous host forgets it)? Refresh the session fields.
        if api GET "/v1/sims/$id" >"$state/.get.json" 2>"$state/.get.err"; then
            keep_sim "$state/.get.json" "$state/private.key"
            log "reusing SIM $id (refreshed with getSim)"
        elif grep -q 'HTTP 404' "$state/.get.err"; then
            log "SIM $id is unknown to $api_url: getting a new one"
            new_sim_from_api
        else
            cat "$state/.get.err" >&2
            die "getSim $id failed"
        fi
        rm -f "$state/.get.json" "$state/.get.err"
    else
        log "reusing SIM $id from $state"
    fi
else
    [[ -n $api_url ]] || die "no Sim: give --api and --auth (createSim), or --sim-json"
    new_sim_from_api
fi

# The key pair must be the one the server knows.
wg pubkey <"$state/private.key" >"$state/public.key" || die "private.key is not a WireGuard key"
api_pub=$(jq -r '.arcSessionStatus.arcClientPeerPublicKey // empty' "$state/sim.json")
[[ -z $api_pub || $api_pub == "$(<"$state/public.key")" ]] ||
    die "the Sim's arcClientPeerPublicKey $api_pub does not belong to private.key ($(<"$state/public.key"))"

(umask 077 && "$RENDER" --keepalive "$keepalive" "$state/sim.json" "$state/private.key" >"$state/wg.conf.new") ||
    die "render-wg-conf.sh failed on $state/sim.json"
mv -f "$state/wg.conf.new" "$state/wg.conf"
address=$("$RENDER" --print-address "$state/sim.json" "$state/private.key")
mapfile -t routes < <("$RENDER" --print-allowed-ips "$state/sim.json" "$state/private.key")
printf '%s\n' "$address" >"$state/address"

# up.sh: everything wg-quick would do for this config with a userspace interface. Run now, and
# by the systemd unit whenever wireguard-go starts again.
{
    echo '#!/bin/sh'
    echo "# Written by scripts/provision/device.sh: configures $ifname from $state/wg.conf."
    echo 'set -e'
    echo "i=0; while [ ! -S '$uapi_sock' ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done"
    echo "wg setconf '$ifname' '$state/wg.conf'"
    echo "ip addr flush dev '$ifname'"
    echo "ip addr add '$address/32' dev '$ifname'"
    echo "ip link set '$ifname' mtu '$mtu' up"
    for r in "${routes[@]}"; do
        echo "ip route replace '$r' dev '$ifname' src '$address'"
    done
} >"$state/up.sh.new"
chmod 0755 "$state/up.sh.new"
mv -f "$state/up.sh.new" "$state/up.sh"
"$state/up.sh" || die "$state/up.sh failed"
now_ms >"$state/configured-at-ms"
log "device $ifname up: SIM $(<"$state/sim-id"), address $address, peer $(jq -r .arcSessionStatus.arcServerEndpoint "$state/sim.json"), routes ${routes[*]}"

if [[ -n $check_ping ]]; then
    # One probe every 50 ms until the first reply; -D stamps it.
    out=$state/check-ping.out
    ping -n -D -c 1 -i 0.05 -W 1 -w "$check_timeout" "$check_ping" >"$out" 2>&1 || true
    read -r sec usec < <(sed -n 's/^\[\([0-9]*\)\.\([0-9]*\)\] .*bytes from.*/\1 \2/p' "$out" | head -n 1) || true
    if [[ -z ${sec:-} || -z ${usec:-} ]]; then
        cat "$out" >&2
        die "no reply from $check_ping through $ifname within ${check_timeout} s"
    fi
    echo $((10#$sec * 1000 + 10#$usec / 1000)) >"$state/first-reply-at-ms"
    log "$check_ping answers through the tunnel ($(($(<"$state/first-reply-at-ms") - $(<"$state/configured-at-ms"))) ms after the configuration)"
fi
