#!/usr/bin/env bash
# web-device.sh — the device's side of the browser test (scripts/e2e/web.sh): called by the
# Playwright script (tests/web/ui.test.mjs) with what it read from the page. Not a test itself
# (scripts/test.sh does not run scripts/e2e/lib/).
#
#   web-device.sh up CONF        bring the device up from the wg-quick file CONF the page showed:
#                                wireguard-go in the device namespace, `wg setconf` with the
#                                wg-quick-only lines (Address, DNS, MTU) stripped, the address
#                                and MTU set with `ip`, one route per AllowedIPs entry
#   web-device.sh harvest JSON   POST JSON from the device to Harvest (http://100.127.111.111/);
#                                prints the HTTP status
#   web-device.sh traffic SECS   SECS seconds of 1000-byte pings through the tunnel (answered or
#                                not, arcd counts them), for the page's throughput figures
#
# Environment (set by web.sh): WEB_DEVICE_NS (network namespace), WEB_DEVICE_IF (interface),
# WEB_WORK (run directory: wireguard-go.pid, wireguard-go.log, device.setconf). Runs inside
# web.sh's mount namespace, so wireguard-go's control socket lands on its private tmpfs.
set -euo pipefail

: "${WEB_DEVICE_NS:?} ${WEB_DEVICE_IF:?} ${WEB_WORK:?}"
ns=$WEB_DEVICE_NS
ifname=$WEB_DEVICE_IF
nsx() { ip netns exec "$ns" "$@"; }

# wait_for (and log/die) from the provisioning library the lab's hosts use.
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../provision/lib.sh"

# conf_value KEY FILE: the value of the first `KEY = value` line.
conf_value() { sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$2" | head -n 1; }

case ${1:-} in
    up)
        conf=${2:?up needs the wg-quick file}
        address=$(conf_value Address "$conf")
        mtu=$(conf_value MTU "$conf")
        allowed=$(conf_value AllowedIPs "$conf")
        [[ $address =~ ^[0-9.]+/[0-9]+$ ]] || { echo "web-device.sh: no Address in $conf" >&2; exit 1; }
        setconf=$WEB_WORK/device.setconf
        # `wg setconf` knows only WireGuard's own keys.
        grep -Ev '^[[:space:]]*(Address|DNS|MTU|Table|PreUp|PostUp|PreDown|PostDown|SaveConfig)[[:space:]]*=' "$conf" >"$setconf"
        chmod 600 "$setconf"
        # Started in the background with its output in a file (so the caller's pipes close);
        # `ip netns exec` exec()s wireguard-go, so $! is wireguard-go itself.
        (exec ip netns exec "$ns" wireguard-go -f "$ifname" >"$WEB_WORK/wireguard-go.log" 2>&1 </dev/null) &
        echo $! >"$WEB_WORK/wireguard-go.pid"
        wait_for 10 test -S "/var/run/wireguard/$ifname.sock" || { echo "web-device.sh: wireguard-go made no control socket" >&2; exit 1; }
        nsx wg setconf "$ifname" "$setconf"
        nsx ip addr add "$address" dev "$ifname"
        nsx ip link set "$ifname" mtu "${mtu:-1420}" up
        IFS=', ' read -r -a nets <<<"$allowed"
        for net in "${nets[@]}"; do
            [[ -n $net ]] && nsx ip route replace "$net" dev "$ifname" src "${address%/*}"
        done
        # Traffic starts the handshake at once (the keepalive would too, a little later).
        nsx ping -n -c 3 -i 0.3 -W 2 100.127.100.127 >/dev/null 2>&1 || true
        echo "device up: $ifname $address"
        ;;
    harvest)
        body=${2:?harvest needs a JSON body}
        nsx curl -sS -m 10 -o /dev/null -w '%{http_code}' -X POST \
            -H 'Content-Type: application/json' --data-binary "$body" http://100.127.111.111/ || echo 000
        ;;
    traffic)
        seconds=${2:?traffic needs a number of seconds}
        [[ $seconds =~ ^[0-9]+$ ]] || { echo "web-device.sh: traffic SECS: not a number: $seconds" >&2; exit 2; }
        nsx ping -n -q -s 1000 -i 0.2 -w "$seconds" 100.127.100.127 >/dev/null 2>&1 || true
        echo "sent ${seconds}s of pings"
        ;;
    *)
        echo "usage: web-device.sh up CONF | harvest JSON | traffic SECS" >&2
        exit 2
        ;;
esac
