#!/usr/bin/env bash
# render-wg-conf.sh — turn an arcd (SORACOM-compatible) Sim JSON into a WireGuard device config.
#
#   render-wg-conf.sh [options] SIM_JSON [PRIVATE_KEY_FILE]
#
#   SIM_JSON          file holding a Sim object (createSim / getSim answer) or a createArcSession
#                     answer (the arc* fields at the top level); "-" reads standard input.
#   PRIVATE_KEY_FILE  file holding the device's private key (base64, as `wg genkey` writes it, or
#                     the arcClientPeerPrivateKey of a createSim / renew-credentials answer).
#                     Without it the key is taken from profiles[*].arcClientPeerPrivateKey of
#                     SIM_JSON (present only in the createSim answer).
#
# Options:
#   --wg-quick         also write `Address = <arcClientPeerIpAddress>/32`, `DNS = 100.127.0.53`
#                      (arcd's resolver in the tunnel) and `MTU = <mtu>` in [Interface] (a wg-quick
#                      file). Default: a `wg setconf` file, which takes none of them (`wg setconf`
#                      rejects them; `wg-quick strip` removes them); get the address with
#                      --print-address and add it with `ip addr`.
#   --mtu N            MTU for --wg-quick (default 1420).
#   --keepalive N      PersistentKeepalive seconds (default 25; 0 leaves it off).
#   --extra-allowed-ips CIDR[,CIDR...]
#                      append networks to the peer's AllowedIPs (tests only).
#   --print-address    print only the client address (no prefix length) and exit.
#   --print-allowed-ips
#                      print only arcAllowedIPs, one per line, and exit.
#
# Output: the configuration on standard output, for example
#   [Interface]
#   PrivateKey = <device private key>
#
#   [Peer]
#   PublicKey = <arcServerPeerPublicKey>
#   Endpoint = <arcServerEndpoint>
#   AllowedIPs = 100.127.0.0/16
#   PersistentKeepalive = 25
# Needs bash and jq. Exit status 2 on bad usage, 1 when the JSON lacks a field.
set -euo pipefail

prog=${0##*/}
usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "$prog: $*" >&2
    exit 1
}

wg_quick=0
mtu=1420
keepalive=25
extra=""
print=""
while (($#)); do
    case $1 in
        --wg-quick) wg_quick=1 ;;
        --mtu) mtu=${2:?--mtu needs a value}; shift ;;
        --keepalive) keepalive=${2:?--keepalive needs a value}; shift ;;
        --extra-allowed-ips) extra=${2:?--extra-allowed-ips needs a value}; shift ;;
        --print-address) print=address ;;
        --print-allowed-ips) print=allowed ;;
        -h | --help) usage ;;
        --) shift; break ;;
        -?*) echo "$prog: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
    shift
done
(($# >= 1 && $# <= 2)) || usage
[[ $mtu =~ ^[0-9]+$ ]] || die "--mtu: not a number: $mtu"
[[ $keepalive =~ ^[0-9]+$ ]] || die "--keepalive: not a number: $keepalive"
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"

sim_json=$(cat -- "$1") || die "cannot read $1"
jq -e 'type == "object"' >/dev/null 2>&1 <<<"$sim_json" || die "$1: not a JSON object"

# The session fields: inside arcSessionStatus (Sim), or at the top level (createArcSession).
field() {
    jq -r --arg f "$1" '(.arcSessionStatus // .) | .[$f] // empty
        | if type == "array" then .[] else tostring end' <<<"$sim_json"
}

address=$(field arcClientPeerIpAddress)
address=${address%%/*}
[[ $address =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "no valid arcClientPeerIpAddress in the Sim JSON (got '${address}')"
mapfile -t allowed < <(field arcAllowedIPs)
((${#allowed[@]})) || die "no arcAllowedIPs in the Sim JSON"

case $print in
    address) echo "$address"; exit 0 ;;
    allowed) printf '%s\n' "${allowed[@]}"; exit 0 ;;
esac

server_key=$(field arcServerPeerPublicKey)
endpoint=$(field arcServerEndpoint)
[[ -n $server_key ]] || die "no arcServerPeerPublicKey in the Sim JSON"
[[ -n $endpoint ]] || die "no arcServerEndpoint in the Sim JSON"

if (($# == 2)); then
    private_key=$(tr -d ' \t\r\n' <"$2") || die "cannot read $2"
else
    private_key=$(jq -r '[.profiles // {} | .[] | .arcClientPeerPrivateKey // empty] | first // empty' <<<"$sim_json")
    [[ -n $private_key ]] || die "no private key: give PRIVATE_KEY_FILE (only the createSim answer holds profiles[*].arcClientPeerPrivateKey)"
fi
# A WireGuard key is 32 bytes: 43 base64 characters and one '='.
[[ $private_key =~ ^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$ ]] || die "the private key is not a base64 WireGuard key"

if [[ -n $extra ]]; then
    IFS=',' read -r -a more <<<"$extra"
    allowed+=("${more[@]}")
fi
allowed_list=$(IFS=','; echo "${allowed[*]}")
allowed_list=${allowed_list//,/, }

echo "[Interface]"
echo "PrivateKey = $private_key"
if ((wg_quick)); then
    echo "Address = $address/32"
    echo "DNS = 100.127.0.53"
    echo "MTU = $mtu"
fi
echo
echo "[Peer]"
echo "PublicKey = $server_key"
echo "Endpoint = $endpoint"
echo "AllowedIPs = $allowed_list"
if ((keepalive > 0)); then
    echo "PersistentKeepalive = $keepalive"
fi
