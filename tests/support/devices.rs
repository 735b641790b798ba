//! Devices for the in-process service tests: virtual SIMs and virtual subscribers of imported IoT
//! SIMs whose peers the data plane knows, identified (as arcd identifies callers) by the tunnel
//! address, and the groups that switch services on for them.

use std::net::Ipv4Addr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::server::{Api, TestServer};

pub struct Device {
    pub sim_id: String,
    /// The IMSI the services must name: the SIM's primary one.
    pub imsi: String,
    /// The device's tunnel address.
    pub ip: Ipv4Addr,
}

/// Waits until the data plane's peer index knows `ip` (peer changes apply after commit).
pub async fn wait_for_peer(server: &TestServer, ip: Ipv4Addr) {
    for _ in 0..200 {
        let known = server
            .running
            .dataplane
            .engine
            .session_by_client_ip(ip)
            .is_some();
        if known {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("peer {ip} never appeared in the peer table");
}

/// The tunnel address of a SIM as createSim or getSim shows it.
pub fn client_ip(sim: &Value) -> Ipv4Addr {
    sim["arcSessionStatus"]["arcClientPeerIpAddress"]
        .as_str()
        .expect("client address")
        .parse()
        .expect("IPv4")
}

/// A standalone virtual SIM whose peer is in the data plane.
pub async fn virtual_sim(server: &TestServer, api: &Api) -> Device {
    let sim = api.create_sim().await;
    let ip = client_ip(&sim);
    wait_for_peer(server, ip).await;
    let sim_id = sim["simId"].as_str().expect("simId").to_string();
    let imsi = sim["profiles"][&sim_id]["primaryImsi"]
        .as_str()
        .expect("imsi")
        .to_string();
    Device { sim_id, imsi, ip }
}

/// An imported plan-D IoT SIM with a virtual subscriber added: the device talks through the
/// virtual subscriber's tunnel, the services must see the IoT SIM's IMSI. Returns the device and
/// the virtual subscriber's IMSI.
pub async fn secondary_virtual_subscriber(server: &TestServer, api: &Api) -> (Device, String) {
    let (iccid, iot_imsi) = ("8981100000000000058", "440101234567892");
    let (status, body) = api
        .post(
            "/v1/arcd/iot_sims",
            json!([{"iccid": iccid, "imsi": iot_imsi, "subscription": "plan-D"}]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, profile) = api
        .post(
            &format!("/v1/sims/{iccid}/profiles/{iccid}/add_subscription"),
            json!({"subscription": "planArc01", "type": "virtual"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    let virtual_imsi = profile["subscribers"]
        .as_object()
        .expect("subscribers")
        .keys()
        .find(|imsi| imsi.as_str() != iot_imsi)
        .expect("virtual subscriber")
        .clone();
    let (_, sim) = api.get(&format!("/v1/sims/{iccid}")).await;
    let ip = client_ip(&sim);
    wait_for_peer(server, ip).await;
    let device = Device {
        sim_id: iccid.to_string(),
        imsi: iot_imsi.to_string(),
        ip,
    };
    (device, virtual_imsi)
}

/// Creates a group with `configuration` and puts the SIM in it; returns the group's ID.
pub async fn join_group(api: &Api, sim_id: &str, configuration: Value) -> String {
    let (status, group) = api
        .post("/v1/groups", json!({"configuration": configuration}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let group_id = group["groupId"].as_str().expect("groupId").to_string();
    let (status, body) = api
        .post(
            &format!("/v1/sims/{sim_id}/set_group"),
            json!({"groupId": group_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    group_id
}
