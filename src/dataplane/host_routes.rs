//! Routes on the TUN device for networks that have no address there: the device subnets of
//! VPGs. A rendezvous point pool is routed by the gateway address arcd puts on the device; a
//! VPG hands out every host address of its subnet, so its subnet is routed with a plain
//! `dev arc0 scope link` route instead (the kernel then sends the platform services' answers and
//! any other traffic for VPG devices into the data plane).
//!
//! Routes are set through rtnetlink (the crates tun-rs already uses), each request acknowledged,
//! so a refusal is an error here and not a silent gap.

use std::io;

use ipnet::Ipv4Net;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::constants::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// What the kernel answers when the route to delete does not exist.
const ESRCH: i32 = 3;

/// Adds (or replaces) the route `net dev <ifindex> scope link` in the main table.
pub fn add(ifindex: u32, net: Ipv4Net) -> io::Result<()> {
    request(
        RouteNetlinkMessage::NewRoute(route_message(ifindex, net)),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Removes the route `net dev <ifindex>`; a route already gone is not an error.
pub fn delete(ifindex: u32, net: Ipv4Net) -> io::Result<()> {
    match request(
        RouteNetlinkMessage::DelRoute(route_message(ifindex, net)),
        0,
    ) {
        Err(e) if e.raw_os_error() == Some(ESRCH) => Ok(()),
        other => other,
    }
}

/// The routes of `ifindex` in the main table whose destination is exactly `net`.
fn route_message(ifindex: u32, net: Ipv4Net) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = AddressFamily::Inet;
    message.header.destination_prefix_length = net.prefix_len();
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::Static;
    message.header.scope = RouteScope::Link;
    message.header.kind = RouteType::Unicast;
    message.attributes = vec![
        RouteAttribute::Destination(RouteAddress::Inet(net.network())),
        RouteAttribute::Oif(ifindex),
    ];
    message
}

fn request(message: RouteNetlinkMessage, extra_flags: u16) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let (reply, _) = socket.recv_from_full()?;
    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| io::Error::other(format!("unreadable rtnetlink answer: {e}")))?;
    match answer.payload {
        NetlinkPayload::Error(error) if error.code.is_some() => Err(error.to_io()),
        NetlinkPayload::Error(_) => Ok(()),
        other => Err(io::Error::other(format!(
            "unexpected rtnetlink answer: {other:?}"
        ))),
    }
}

/// An address inside `net` other than its network address, for route lookups in tests.
#[cfg(test)]
fn some_host(net: Ipv4Net) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(net.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::tun_device::{
        self,
        test_support::{require_root, unique_name},
    };

    fn route_get(ip: std::net::Ipv4Addr) -> String {
        let out = std::process::Command::new("ip")
            .args(["-o", "route", "get", &ip.to_string()])
            .output()
            .expect("ip route get");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[tokio::test]
    #[ignore = "needs root: TUN device and host routes"]
    async fn routes_a_subnet_to_the_device_and_removes_it() {
        require_root("routes_a_subnet_to_the_device_and_removes_it");
        let name = unique_name("arcrt");
        let gateway: Ipv4Net = "10.251.0.1/24".parse().expect("net");
        let device = tun_device::open(&name, 1420, &[gateway], 1).expect("open TUN");
        let ifindex = device.device().if_index().expect("ifindex");
        // A TEST-NET-2 range nothing else on a test machine routes.
        let subnet: Ipv4Net = "198.51.100.0/24".parse().expect("net");

        add(ifindex, subnet).expect("add route");
        add(ifindex, subnet).expect("adding again replaces");
        assert!(
            route_get(some_host(subnet)).contains(&format!("dev {name}")),
            "{}",
            route_get(some_host(subnet))
        );

        delete(ifindex, subnet).expect("delete route");
        delete(ifindex, subnet).expect("deleting a missing route is fine");
        assert!(
            !route_get(some_host(subnet)).contains(&format!("dev {name}")),
            "{}",
            route_get(some_host(subnet))
        );
        assert!(add(u32::MAX, subnet).is_err(), "no such interface");
    }
}
