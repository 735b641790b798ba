//! Where the running VPGs meet the data plane and the host: the engine's per-VPG rules
//! (device-to-device, internet gateway), a route on the TUN device for each VPG device subnet,
//! and those subnets in the egress NAT. Rebuilt from the whole set of running VPGs at start and
//! after each committed VPG change, so there is no incremental state to get wrong.

use std::sync::Arc;

use ipnet::Ipv4Net;
use parking_lot::{Mutex, MutexGuard};

use super::egress::Egress;
use super::engine::Engine;
use super::host_routes;
use crate::store::vpgs::RunningVpg;
use crate::subnets::overlaps;

pub struct VpgPlane {
    engine: Arc<Engine>,
    /// Absent without a real TUN device (in-memory data plane): nothing to route; and after
    /// `remove_host_side`.
    host: Mutex<Option<HostSide>>,
}

/// The host's routing state arcd owns.
pub struct HostSide {
    ifindex: u32,
    /// The rendezvous point pools: routed by the device's own addresses, never by VPG routes.
    pools: Vec<Ipv4Net>,
    /// VPG subnets currently routed to the device by arcd.
    routed: Vec<Ipv4Net>,
    egress: Option<Egress>,
}

impl HostSide {
    pub fn new(ifindex: u32, pools: Vec<Ipv4Net>, egress: Option<Egress>) -> HostSide {
        HostSide {
            ifindex,
            pools,
            routed: Vec::new(),
            egress,
        }
    }

    fn sync(&mut self, running: &[RunningVpg]) {
        let subnets: Vec<Ipv4Net> = running.iter().map(|v| v.device_subnet).collect();
        let wanted: Vec<Ipv4Net> = Ipv4Net::aggregate(&subnets)
            .into_iter()
            .filter(|subnet| {
                // A route replacing a pool's connected route would cut the pool off. New VPGs
                // are refused such a subnet; only a later config change can cause it.
                let clash = self.pools.iter().find(|p| overlaps(p, subnet));
                if let Some(pool) = clash {
                    tracing::warn!(%subnet, %pool, "a VPG device subnet overlaps a rendezvous point pool: not routed");
                }
                clash.is_none()
            })
            .collect();
        for subnet in self.routed.clone() {
            if wanted.contains(&subnet) {
                continue;
            }
            match host_routes::delete(self.ifindex, subnet) {
                Ok(()) => tracing::info!(%subnet, "VPG device subnet no longer routed"),
                Err(e) => tracing::warn!(%subnet, error = %e, "could not remove a VPG route"),
            }
        }
        self.routed.retain(|subnet| wanted.contains(subnet));
        for subnet in &wanted {
            if self.routed.contains(subnet) {
                continue;
            }
            match host_routes::add(self.ifindex, *subnet) {
                Ok(()) => {
                    tracing::info!(%subnet, "VPG device subnet routed to the TUN device");
                    self.routed.push(*subnet);
                }
                Err(e) => tracing::warn!(
                    %subnet,
                    error = %e,
                    "could not route a VPG device subnet: its devices cannot reach the platform services"
                ),
            }
        }
        if let Some(egress) = &mut self.egress {
            let networks: Vec<Ipv4Net> = self.pools.iter().chain(&self.routed).copied().collect();
            if let Err(e) = egress.set_networks(&networks) {
                tracing::warn!(error = %e, "egress NAT does not follow the VPG subnets");
            }
        }
    }
}

impl Drop for HostSide {
    fn drop(&mut self) {
        // The device's removal takes its routes along; this covers an arcd that keeps running
        // without them (tests start and stop several).
        for subnet in &self.routed {
            let _ = host_routes::delete(self.ifindex, *subnet);
        }
    }
}

impl VpgPlane {
    pub fn new(engine: Arc<Engine>, host: Option<HostSide>) -> VpgPlane {
        VpgPlane {
            engine,
            host: Mutex::new(host),
        }
    }

    fn host(&self) -> MutexGuard<'_, Option<HostSide>> {
        self.host.lock()
    }

    /// Makes the data plane and the host follow `running` (every running VPG).
    pub fn apply(&self, running: &[RunningVpg]) {
        self.engine.set_vpgs(running);
        if let Some(host) = self.host().as_mut() {
            host.sync(running);
        }
    }

    /// The VPG subnets routed to the TUN device (empty without one).
    pub fn routed(&self) -> Vec<Ipv4Net> {
        self.host()
            .as_ref()
            .map(|host| host.routed.clone())
            .unwrap_or_default()
    }

    /// Removes arcd's routes and egress NAT from the host, when arcd stops. Later `apply` calls
    /// only change the engine's rules.
    pub fn remove_host_side(&self) {
        drop(self.host().take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::tun_device::{
        self,
        test_support::{require_root, unique_name},
    };

    fn running(id: &str, subnet: &str) -> RunningVpg {
        RunningVpg {
            vpg_id: id.into(),
            device_subnet: subnet.parse().expect("net"),
            device_to_device: false,
            use_internet_gateway: true,
        }
    }

    fn routes_of(device: &str) -> String {
        let out = std::process::Command::new("ip")
            .args(["-o", "route", "show", "dev", device])
            .output()
            .expect("ip route");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[tokio::test]
    #[ignore = "needs root: TUN device and host routes"]
    async fn routes_follow_the_running_vpgs() {
        require_root("routes_follow_the_running_vpgs");
        let name = unique_name("arcvp");
        let pool: Ipv4Net = "10.252.0.0/16".parse().expect("net");
        let gateway: Ipv4Net = "10.252.0.1/16".parse().expect("net");
        let device = tun_device::open(&name, 1420, &[gateway], 1).expect("open TUN");
        let ifindex = device.device().if_index().expect("ifindex");
        let engine = Arc::new(Engine::new(Vec::new()));
        let plane = VpgPlane::new(
            engine.clone(),
            Some(HostSide::new(ifindex, vec![pool], None)),
        );

        // Overlapping subnets are routed once; one inside the pool never.
        plane.apply(&[
            running("a", "198.18.0.0/15"),
            running("b", "198.18.4.0/24"),
            running("c", "10.252.8.0/24"),
        ]);
        assert_eq!(
            plane.routed(),
            vec!["198.18.0.0/15".parse::<Ipv4Net>().unwrap()]
        );
        let routes = routes_of(&name);
        assert!(routes.contains("198.18.0.0/15"), "{routes}");
        assert!(!routes.contains("10.252.8.0/24"), "{routes}");
        assert!(
            routes.contains("10.252.0.0/16"),
            "the pool keeps its route: {routes}"
        );

        // "a" terminated: "b" still needs its subnet.
        plane.apply(&[running("b", "198.18.4.0/24")]);
        let routes = routes_of(&name);
        assert!(
            routes.contains("198.18.4.0/24") && !routes.contains("198.18.0.0/15"),
            "{routes}"
        );

        plane.apply(&[]);
        assert!(plane.routed().is_empty());
        let routes = routes_of(&name);
        assert!(!routes.contains("198.18."), "{routes}");
        assert!(routes.contains("10.252.0.0/16"), "{routes}");
    }
}
