# links.sh — namespace plumbing shared by the e2e and bench scripts. Sourced, not run.
# shellcheck shell=bash

# wait_for SECONDS cmd...: run cmd every 0.1 s until it succeeds; status 1 after SECONDS.
wait_for() {
    local t=$(($1 * 10))
    shift
    while ((t-- > 0)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# device_link RV_NS RV_IF RV_IP DEV_NS DEV_IP TARGET: a veth pair between the rendezvous host's
# namespace (RV_IF, RV_IP/30) and a device namespace (v-rv, DEV_IP/30), both up, and in the
# device namespace one host route to TARGET (the rendezvous host's address) over it. Nothing
# else is routed: no packet can leave the namespaces.
device_link() {
    local rv_ns=$1 rv_if=$2 rv_ip=$3 dev_ns=$4 dev_ip=$5 target=$6
    ip -n "$rv_ns" link add "$rv_if" type veth peer name v-rv netns "$dev_ns"
    ip -n "$rv_ns" addr add "$rv_ip/30" dev "$rv_if"
    ip -n "$dev_ns" addr add "$dev_ip/30" dev v-rv
    ip -n "$rv_ns" link set "$rv_if" up
    ip -n "$dev_ns" link set v-rv up
    ip -n "$dev_ns" route add "$target/32" via "$rv_ip"
}
