//! `[[rendezvous_points]]`: each entry needs only its `id` (and `endpoint` when devices are not on
//! this machine); the other fields get defaults from the entry's position in the list, so a restart
//! with the same list gives the same ports and pools.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::RendezvousPointId;
use crate::subnets::overlaps;

/// UDP port of the first rendezvous point; the n-th (from 0) defaults to this + n.
pub const FIRST_LISTEN_PORT: u16 = 11010;
/// Default client pools are /16s taken in order from here (10.64.0.0/16, 10.65.0.0/16, ...).
const DEFAULT_POOLS: &str = "10.64.0.0/10";
const DEFAULT_POOL_PREFIX: u8 = 16;
/// Where VPG device subnets go by default (`deviceSubnetCidrRange`); default pools stay out of it.
const DEFAULT_VPG_RANGE: &str = "10.128.0.0/9";
const DEFAULT_ALLOWED_IPS: &str = "100.127.0.0/16";

#[derive(Debug, Clone, Serialize)]
pub struct RendezvousPointConfig {
    /// Placement region id, e.g. `ap-northeast-1`.
    pub id: RendezvousPointId,
    /// Display name for people (`Tokyo`); defaults to the region's city for known ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// UDP address the WireGuard listener binds.
    pub listen: SocketAddr,
    /// `host:port` devices are told (`arcServerEndpoint`).
    pub endpoint: String,
    /// Client /32s outside a VPG come from here.
    pub pool: Ipv4Net,
    pub allowed_ips: Vec<Ipv4Net>,
}

impl RendezvousPointConfig {
    /// The configured name, else the city of a known placement region, else the id.
    pub fn display_name(&self) -> &str {
        if let Some(name) = &self.name {
            return name;
        }
        match self.id.as_str() {
            "ap-northeast-1" => "Tokyo",
            "us-west-2" => "Oregon",
            "eu-central-1" => "Frankfurt",
            "ap-southeast-2" => "Sydney",
            "ap-south-1" => "Mumbai",
            "us-east-1" => "Virginia",
            other => other,
        }
    }
}

/// One entry as written in the file or environment: everything but `id` may be left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    listen: Option<SocketAddr>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    pool: Option<Ipv4Net>,
    #[serde(default)]
    allowed_ips: Option<Vec<Ipv4Net>>,
}

/// `deserialize_with` for `Config::rendezvous_points`: entries with their defaults filled in.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<RendezvousPointConfig>, D::Error> {
    let entries = Vec::<Entry>::deserialize(deserializer)?;
    with_defaults(entries).map_err(serde::de::Error::custom)
}

fn literal(net: &str) -> Ipv4Net {
    net.parse()
        .unwrap_or_else(|_| unreachable!("literal network {net}"))
}

/// Fills in what an entry leaves out:
/// - `listen`: `0.0.0.0:<11010 + position>`, or the next port up that no other entry uses;
/// - `endpoint`: `127.0.0.1:<listen port>` (only right for devices on this machine);
/// - `pool`: the first /16 of 10.64.0.0/10 that overlaps no other entry's pool, taken in list
///   order (never inside 10.128.0.0/9, the default VPG device subnet);
/// - `allowed_ips`: `["100.127.0.0/16"]` (the platform service addresses).
fn with_defaults(entries: Vec<Entry>) -> Result<Vec<RendezvousPointConfig>, String> {
    let mut ports: HashSet<u16> = entries
        .iter()
        .filter_map(|e| e.listen.map(|l| l.port()))
        .filter(|port| *port != 0)
        .collect();
    let vpg_range = literal(DEFAULT_VPG_RANGE);
    let mut pools: Vec<Ipv4Net> = entries.iter().filter_map(|e| e.pool).collect();
    let mut resolved = Vec::with_capacity(entries.len());
    for (position, entry) in entries.into_iter().enumerate() {
        let listen = match entry.listen {
            Some(listen) => listen,
            None => {
                let port = free_port(position, &ports).ok_or_else(|| {
                    format!(
                        "rendezvous_points[{position}].listen: no free default UDP port; set it"
                    )
                })?;
                ports.insert(port);
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
            }
        };
        let pool = match entry.pool {
            Some(pool) => pool,
            None => {
                let pool = free_pool(&pools, &vpg_range).ok_or_else(|| {
                    format!(
                        "rendezvous_points[{position}].pool: every /16 of {DEFAULT_POOLS} is taken; set it"
                    )
                })?;
                pools.push(pool);
                pool
            }
        };
        resolved.push(RendezvousPointConfig {
            endpoint: entry
                .endpoint
                .unwrap_or_else(|| format!("127.0.0.1:{}", listen.port())),
            id: RendezvousPointId::new(entry.id),

            name: entry.name,
            listen,
            pool,
            allowed_ips: entry
                .allowed_ips
                .unwrap_or_else(|| vec![literal(DEFAULT_ALLOWED_IPS)]),
        });
    }
    Ok(resolved)
}

fn free_port(position: usize, taken: &HashSet<u16>) -> Option<u16> {
    let first = u16::try_from(position)
        .ok()
        .and_then(|p| FIRST_LISTEN_PORT.checked_add(p))?;
    (first..=u16::MAX).find(|port| !taken.contains(port))
}

fn free_pool(taken: &[Ipv4Net], vpg_range: &Ipv4Net) -> Option<Ipv4Net> {
    literal(DEFAULT_POOLS)
        .subnets(DEFAULT_POOL_PREFIX)
        .ok()?
        .find(|candidate| {
            !overlaps(candidate, vpg_range) && !taken.iter().any(|pool| overlaps(candidate, pool))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            id: id.into(),
            name: None,
            listen: None,
            endpoint: None,
            pool: None,
            allowed_ips: None,
        }
    }

    #[test]
    fn an_id_alone_gets_the_documented_defaults() {
        let rps =
            with_defaults(vec![entry("ap-northeast-1"), entry("eu-central-1")]).expect("defaults");
        assert_eq!(rps[0].listen.to_string(), "0.0.0.0:11010");
        assert_eq!(rps[0].endpoint, "127.0.0.1:11010");
        assert_eq!(rps[0].pool.to_string(), "10.64.0.0/16");
        assert_eq!(rps[0].allowed_ips, vec![literal("100.127.0.0/16")]);
        assert_eq!(rps[1].listen.to_string(), "0.0.0.0:11011");
        assert_eq!(rps[1].endpoint, "127.0.0.1:11011");
        assert_eq!(rps[1].pool.to_string(), "10.65.0.0/16");
    }

    #[test]
    fn defaults_step_around_what_other_entries_set() {
        let mut first = entry("ap-northeast-1");
        first.endpoint = Some("rp.example.net:4500".into());
        let mut second = entry("eu-central-1");
        second.listen = Some("0.0.0.0:11010".parse().expect("literal"));
        second.pool = Some(literal("10.64.0.0/15"));
        let third = entry("us-west-2");
        let rps = with_defaults(vec![first, second, third]).expect("defaults");
        assert_eq!(rps[0].listen.port(), 11011, "11010 is the second entry's");
        assert_eq!(rps[0].endpoint, "rp.example.net:4500");
        assert_eq!(rps[0].pool.to_string(), "10.66.0.0/16", "10.64/15 is taken");
        assert_eq!(rps[1].listen.port(), 11010);
        assert_eq!(rps[2].listen.port(), 11012);
        assert_eq!(rps[2].pool.to_string(), "10.67.0.0/16");
    }

    #[test]
    fn a_full_range_is_an_error_not_a_clash() {
        let mut first = entry("ap-northeast-1");
        first.pool = Some(literal("10.0.0.0/8"));
        let err = with_defaults(vec![first, entry("eu-central-1")]).expect_err("no free /16");
        assert!(err.contains("rendezvous_points[1].pool"), "{err}");
    }
}
