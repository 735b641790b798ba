//! Platform services inside the tunnel (metadata, Harvest, Beam, DNS, pong). They sit at SORACOM's
//! fixed addresses and identify a caller by its tunnel source address, always as the primary IMSI.

pub mod harvest_retention;

use std::net::Ipv4Addr;

use crate::dataplane::PeerTable;

pub const PONG_AND_METADATA: Ipv4Addr = Ipv4Addr::new(100, 127, 100, 127);
pub const DNS: Ipv4Addr = Ipv4Addr::new(100, 127, 0, 53);
pub const HARVEST: Ipv4Addr = Ipv4Addr::new(100, 127, 111, 111);
pub const BEAM: Ipv4Addr = Ipv4Addr::new(100, 127, 127, 100);
pub const UNIFIED: Ipv4Addr = Ipv4Addr::new(100, 127, 69, 42);

/// Carried by the TUN device as local addresses so the kernel (and later arcd's services) answer.
pub const PLATFORM_ADDRESSES: [Ipv4Addr; 5] = [PONG_AND_METADATA, DNS, HARVEST, BEAM, UNIFIED];

/// Who is calling a service: traffic of a secondary virtual subscriber counts as its IoT SIM's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub primary_imsi: String,
    pub sim_id: String,
    pub operator_id: String,
    pub group_id: Option<String>,
}

pub fn identify(peers: &PeerTable, source: Ipv4Addr) -> Option<Caller> {
    peers.by_client_ip(source).map(|session| Caller {
        primary_imsi: session.primary_imsi.clone(),
        sim_id: session.sim_id.clone(),
        operator_id: session.operator_id.clone(),
        group_id: session.group_id.clone(),
    })
}
