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

# private_wireguard_dir TAG: a mount namespace of this run (held by a `sleep` whose PID is
# MNT_HOLDER, recorded in PIDS) with a private tmpfs named TAG on /var/run/wireguard, where
# arcd's and wireguard-go's control sockets go: no clash with the host or a concurrent run, and
# nothing left behind. Make it after the network namespaces (it must see their /run/netns
# mounts); enter it with nsenter --mount=/proc/$MNT_HOLDER/ns/mnt. Status 1 when it fails.
private_wireguard_dir() {
    local tag=$1
    unshare --mount --propagation private sleep 1000000 </dev/null >/dev/null 2>&1 3>&- 4>&- &
    MNT_HOLDER=$!
    PIDS+=("$MNT_HOLDER:sleep")
    wait_for 5 mount_holder_ready || return 1
    nsenter --mount="/proc/$MNT_HOLDER/ns/mnt" sh -c \
        "mkdir -p /var/run/wireguard && mount -t tmpfs -o mode=0755,size=1m '$tag' /var/run/wireguard"
}

# The holder has entered a mount namespace other than ours.
mount_holder_ready() {
    local theirs
    theirs=$(readlink "/proc/$MNT_HOLDER/ns/mnt" 2>/dev/null) || return 1
    [[ -n $theirs && $theirs != "$(readlink /proc/$$/ns/mnt)" && $(cat "/proc/$MNT_HOLDER/comm" 2>/dev/null) == sleep ]]
}
