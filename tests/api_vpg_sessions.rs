//! HTTPS integration tests of sessions in VPGs: the rendezvous point table (coverage by
//! Host header × in or out of a VPG), addresses from the VPG subnet, group and VPG changes that
//! apply only at the next session re-creation (and move the data-plane peer between listeners),
//! a tiny VPG subnet running out (clear 400, nothing half-created), addresses unique across VPGs
//! (default and overlapping subnets, one operator or two), a VPG subnet overlapping a rendezvous
//! point pool refused, a group naming an unusable VPG, a VPG region without a rendezvous point,
//! and terminate refused while a session is in it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use arcd::store::db::Backend;
use std::net::Ipv4Addr;
use std::time::Duration;

use arcd::config::RendezvousPointConfig;
use ipnet::Ipv4Net;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::checked::{text, Checked};
use support::server::{assert_error, read, TestServer};

const TOKYO: &str = "ap-northeast-1";
const FRANKFURT: &str = "eu-central-1";
const OREGON: &str = "us-west-2";
const GLOBAL_HOST: &str = "g.api.example.net";

/// Three rendezvous points, each with its own listener, endpoint and pool.
async fn start() -> TestServer {
    TestServer::start_with(|config| {
        config.rendezvous_points[0].endpoint = "tokyo.example.net:11010".into();
        for (id, endpoint, pool) in [
            (FRANKFURT, "frankfurt.example.net:11010", "10.65.0.0/16"),
            (OREGON, "oregon.example.net:11010", "10.66.0.0/16"),
        ] {
            config.rendezvous_points.push(RendezvousPointConfig {
                name: None,
                id: id.into(),
                listen: "127.0.0.1:0".parse().expect("literal address"),
                endpoint: endpoint.into(),
                pool: pool.parse().expect("literal network"),
                allowed_ips: vec!["100.127.0.0/16".parse().expect("literal network")],
            });
        }
    })
    .await
}

fn endpoint_of(rp: &str) -> &'static str {
    match rp {
        TOKYO => "tokyo.example.net:11010",
        FRANKFURT => "frankfurt.example.net:11010",
        OREGON => "oregon.example.net:11010",
        other => panic!("no endpoint for {other}"),
    }
}

fn pool_of(rp: &str) -> Ipv4Net {
    match rp {
        TOKYO => "10.64.0.0/16",
        FRANKFURT => "10.65.0.0/16",
        OREGON => "10.66.0.0/16",
        other => panic!("no pool for {other}"),
    }
    .parse()
    .expect("literal network")
}

async fn server_key(server: &TestServer, rp: &str) -> String {
    use arcd::store::db::Backend;
    let store = server.running.store.clone();
    let rp = arcd::ids::RendezvousPointId::new(rp);
    tokio::task::spawn_blocking(move || {
        store
            .read_db(|db| arcd::store::rendezvous::get(db, &rp))
            .expect("rendezvous point")
            .public_key
    })
    .await
    .expect("join")
}

async fn count(server: &TestServer, table: &str) -> i64 {
    let store = server.running.store.clone();
    let sql = format!("SELECT COUNT(*) FROM {table}");
    tokio::task::spawn_blocking(move || {
        store
            .read_db(|db| db.query_one(&sql, &[])?.int(0))
            .expect("count")
    })
    .await
    .expect("join")
}

async fn counts(server: &TestServer) -> Vec<i64> {
    let mut all = Vec::new();
    for table in [
        "sims",
        "subscribers",
        "arc_sessions",
        "session_events",
        "address_leases",
    ] {
        all.push(count(server, table).await);
    }
    all
}

/// Creates a virtual SIM through the API host of the coverage (`g` by Host header).
async fn create_sim(api: &Checked, global: bool) -> String {
    let mut request = api
        .request(Method::POST, "/v1/sims")
        .json(&json!({"type": "virtual", "subscription": "planArc01"}));
    if global {
        request = request.header(reqwest::header::HOST, GLOBAL_HOST);
    }
    let (status, _, body) = read(request.send().await.expect("request")).await;
    assert_eq!(status, StatusCode::CREATED, "createSim: {body}");
    text(&body, "/simId").to_string()
}

async fn create_vpg(api: &Checked, region: &str, subnet: &str) -> String {
    let (status, vpg) = api
        .post(
            "/v1/virtual_private_gateways",
            json!({"type": 14, "placement": {"region": region}, "deviceSubnetCidrRange": subnet}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{vpg}");
    text(&vpg, "/vpgId").to_string()
}

/// A group whose `SoracomAir` → `vpgId` names `vpg_id`.
async fn create_group(api: &Checked, vpg_id: &str) -> String {
    let (status, group) = api
        .post(
            "/v1/groups",
            json!({"configuration": {"SoracomAir": {"vpgId": vpg_id}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    text(&group, "/groupId").to_string()
}

async fn set_group(api: &Checked, sim_id: &str, group_id: Option<&str>) {
    let (status, body) = match group_id {
        Some(group_id) => {
            api.post(
                &format!("/v1/sims/{sim_id}/set_group"),
                json!({"groupId": group_id}),
            )
            .await
        }
        None => {
            api.post_empty(&format!("/v1/sims/{sim_id}/unset_group"))
                .await
        }
    };
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn sim(api: &Checked, sim_id: &str) -> Value {
    let (status, body) = api.get(&format!("/v1/sims/{sim_id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// What a session looks like from the API.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    rp: String,
    vpg_id: Option<String>,
    endpoint: String,
    server_key: String,
    client_ip: Ipv4Addr,
    session_id: String,
}

async fn seen(api: &Checked, sim_id: &str) -> Seen {
    let body = sim(api, sim_id).await;
    let arc = &body["arcSessionStatus"];
    let status = &body["sessionStatus"];
    let vpg_id = arc["vpgId"].as_str().map(str::to_string);
    assert_eq!(status["vpgId"].as_str(), vpg_id.as_deref(), "{body}");
    assert_eq!(status["placement"], arc["placement"], "{body}");
    assert_eq!(
        arc["arcClientPeerIpAddress"], status["ueIpAddress"],
        "{body}"
    );
    Seen {
        rp: text(arc, "/placement/region").to_string(),
        vpg_id,
        endpoint: text(arc, "/arcServerEndpoint").to_string(),
        server_key: text(arc, "/arcServerPeerPublicKey").to_string(),
        client_ip: text(arc, "/arcClientPeerIpAddress")
            .parse()
            .expect("client address"),
        session_id: text(status, "/sessionId").to_string(),
    }
}

async fn imsi_of(api: &Checked, sim_id: &str) -> String {
    let body = sim(api, sim_id).await;
    text(&body["sessionStatus"], "/imsi").to_string()
}

/// Waits until the data plane serves the SIM's peer on `rp` (and on no other listener).
async fn assert_peer_on(server: &TestServer, imsi: &str, rp: &str) {
    let engine = server.running.dataplane.engine.clone();
    for _ in 0..200 {
        let on: Vec<String> = [TOKYO, FRANKFURT, OREGON]
            .into_iter()
            .filter(|id| {
                engine
                    .snapshots(&(*id).into(), std::time::SystemTime::now())
                    .iter()
                    .any(|p| p.imsi == imsi)
            })
            .map(str::to_string)
            .collect();
        if on == [rp.to_string()] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("peer {imsi} is not served on {rp} alone");
}

/// Checks the session against the RP and VPG it should be in.
async fn assert_session(
    server: &TestServer,
    api: &Checked,
    sim_id: &str,
    rp: &str,
    vpg: Option<(&str, Ipv4Net)>,
) -> Seen {
    let s = seen(api, sim_id).await;
    assert_eq!(s.rp, rp, "{s:?}");
    assert_eq!(s.endpoint, endpoint_of(rp), "{s:?}");
    assert_eq!(s.server_key, server_key(server, rp).await, "{s:?}");
    assert_eq!(s.vpg_id.as_deref(), vpg.map(|(id, _)| id), "{s:?}");
    let net = vpg.map_or(pool_of(rp), |(_, net)| net);
    assert!(net.contains(&s.client_ip), "{s:?} not in {net}");
    assert_ne!(s.client_ip, net.network(), "{s:?}");
    assert_ne!(s.client_ip, net.broadcast(), "{s:?}");
    assert_peer_on(server, &imsi_of(api, sim_id).await, rp).await;
    s
}

/// The newest session events, newest first: (event, vpgId).
async fn events(api: &Checked, sim_id: &str) -> Vec<(String, Option<String>)> {
    let (status, body) = api.get(&format!("/v1/sims/{sim_id}/events/sessions")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                text(e, "/event").to_string(),
                e["vpgId"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[tokio::test]
async fn seed_selection_table_through_the_api() {
    let server = start().await;
    let api = Checked(server.login().await);
    let oregon_net: Ipv4Net = "10.200.0.0/24".parse().expect("net");
    let tokyo_net: Ipv4Net = "10.201.0.0/24".parse().expect("net");
    let vpg_oregon = create_vpg(&api, OREGON, "10.200.0.0/24").await;
    let vpg_tokyo = create_vpg(&api, TOKYO, "10.201.0.0/24").await;
    let group_oregon = create_group(&api, &vpg_oregon).await;
    let group_tokyo = create_group(&api, &vpg_tokyo).await;

    // (global coverage, group, expected RP, expected VPG)
    let rows = [
        (false, None, TOKYO, None),
        (true, None, FRANKFURT, None),
        (
            false,
            Some(&group_oregon),
            TOKYO,
            Some((vpg_oregon.as_str(), oregon_net)),
        ),
        (
            true,
            Some(&group_oregon),
            OREGON,
            Some((vpg_oregon.as_str(), oregon_net)),
        ),
        (
            false,
            Some(&group_tokyo),
            TOKYO,
            Some((vpg_tokyo.as_str(), tokyo_net)),
        ),
        (
            true,
            Some(&group_tokyo),
            TOKYO,
            Some((vpg_tokyo.as_str(), tokyo_net)),
        ),
    ];
    for (global, group, rp, vpg) in rows {
        let sim_id = create_sim(&api, global).await;
        if let Some(group) = group {
            set_group(&api, &sim_id, Some(group)).await;
            let (status, created) = api
                .post(&format!("/v1/sims/{sim_id}/sessions/arc"), json!({}))
                .await;
            assert_eq!(status, StatusCode::OK, "{created}");
            assert_eq!(created["arcServerEndpoint"], json!(endpoint_of(rp)));
            assert_eq!(
                created["arcServerPeerPublicKey"],
                json!(server_key(&server, rp).await)
            );
        }
        let s = assert_session(&server, &api, &sim_id, rp, vpg).await;
        let newest = events(&api, &sim_id).await;
        assert_eq!(
            newest[0],
            ("Created".to_string(), s.vpg_id.clone()),
            "global {global}, group {group:?}"
        );
    }
}

#[tokio::test]
async fn group_and_vpg_changes_apply_at_the_next_recreation() {
    let server = start().await;
    let api = Checked(server.login().await);
    let oregon_net: Ipv4Net = "10.200.0.0/24".parse().expect("net");
    let tokyo_net: Ipv4Net = "10.201.0.0/24".parse().expect("net");
    let vpg_oregon = create_vpg(&api, OREGON, "10.200.0.0/24").await;
    let vpg_tokyo = create_vpg(&api, TOKYO, "10.201.0.0/24").await;
    let group = create_group(&api, &vpg_oregon).await;

    let sim_id = create_sim(&api, true).await;
    let outside = assert_session(&server, &api, &sim_id, FRANKFURT, None).await;

    // Joining the group changes nothing until the session is re-created.
    set_group(&api, &sim_id, Some(&group)).await;
    assert_eq!(seen(&api, &sim_id).await, outside);
    assert_peer_on(&server, &imsi_of(&api, &sim_id).await, FRANKFURT).await;

    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/delete_session"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let in_oregon = assert_session(
        &server,
        &api,
        &sim_id,
        OREGON,
        Some((&vpg_oregon, oregon_net)),
    )
    .await;
    assert_ne!(in_oregon.session_id, outside.session_id);
    assert_ne!(in_oregon.server_key, outside.server_key);
    assert_eq!(
        events(&api, &sim_id).await[..2],
        [
            ("Created".to_string(), Some(vpg_oregon.clone())),
            ("Deleted".to_string(), None)
        ]
    );

    // The group now names another VPG: again only at the next re-creation.
    let (status, body) = api
        .put(
            &format!("/v1/groups/{group}/configuration/SoracomAir"),
            json!([{"key": "vpgId", "value": vpg_tokyo}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(seen(&api, &sim_id).await, in_oregon);
    let (status, body) = api
        .post(&format!("/v1/sims/{sim_id}/sessions/arc"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let in_tokyo =
        assert_session(&server, &api, &sim_id, TOKYO, Some((&vpg_tokyo, tokyo_net))).await;
    assert_eq!(
        events(&api, &sim_id).await[..2],
        [
            ("Created".to_string(), Some(vpg_tokyo.clone())),
            ("Deleted".to_string(), Some(vpg_oregon.clone()))
        ]
    );

    // Leaving the group: the session stays in the Tokyo VPG until re-created.
    set_group(&api, &sim_id, None).await;
    assert_eq!(seen(&api, &sim_id).await, in_tokyo);
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/delete_session"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_session(&server, &api, &sim_id, FRANKFURT, None).await;

    // Renewing credentials re-creates the session too, and so picks up the group.
    set_group(&api, &sim_id, Some(&group)).await;
    let (status, body) = api
        .put(&format!("/v1/sims/{sim_id}/credentials/arc"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_session(&server, &api, &sim_id, TOKYO, Some((&vpg_tokyo, tokyo_net))).await;
}

/// `sessionStats.online` of a VPG, as listed and as got (the two must agree).
async fn online_in(api: &Checked, vpg_id: &str) -> i64 {
    let (status, got) = api
        .get(&format!("/v1/virtual_private_gateways/{vpg_id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let (status, listed) = api.get("/v1/virtual_private_gateways").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let listed = listed
        .as_array()
        .and_then(|all| all.iter().find(|v| v["vpgId"] == json!(vpg_id)))
        .cloned()
        .expect("listed");
    assert_eq!(
        listed["sessionStats"]["online"],
        got["sessionStats"]["online"]
    );
    got["sessionStats"]["online"]
        .as_i64()
        .expect("online count")
}

#[tokio::test]
async fn tiny_vpg_subnet_runs_out_cleanly() {
    let server = start().await;
    let api = Checked(server.login().await);
    // A /30 holds two device addresses: .1 and .2 (network and broadcast never handed out).
    let net: Ipv4Net = "10.250.0.0/30".parse().expect("net");
    let vpg = create_vpg(&api, OREGON, "10.250.0.0/30").await;
    let group = create_group(&api, &vpg).await;
    let mut sims = Vec::new();
    for _ in 0..3 {
        let sim_id = create_sim(&api, true).await;
        set_group(&api, &sim_id, Some(&group)).await;
        sims.push(sim_id);
    }
    let mut addresses = Vec::new();
    for sim_id in &sims[..2] {
        let (status, body) = api
            .post_empty(&format!("/v1/sims/{sim_id}/delete_session"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        addresses.push(
            assert_session(&server, &api, sim_id, OREGON, Some((&vpg, net)))
                .await
                .client_ip,
        );
    }
    addresses.sort();
    assert_eq!(
        addresses,
        [Ipv4Addr::new(10, 250, 0, 1), Ipv4Addr::new(10, 250, 0, 2)]
    );

    // The third does not fit: a clear 400, and its old session is untouched.
    let before = seen(&api, &sims[2]).await;
    let rows = counts(&server).await;
    for path in ["delete_session", "sessions/arc"] {
        // createArcSession requires the body `{}`; deleteSimSession has none.
        let body = (path == "sessions/arc").then(|| json!({}));
        let (status, body) = api
            .call(Method::POST, &format!("/v1/sims/{}/{path}", sims[2]), body)
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], json!("VPG0003"), "{body}");
        let message = text(&body, "/message");
        assert!(
            message.contains("10.250.0.0/30") && message.contains(&vpg),
            "{message}"
        );
        assert_eq!(seen(&api, &sims[2]).await, before);
        assert_eq!(counts(&server).await, rows);
    }
    assert_eq!(before.rp, FRANKFURT);
    assert_peer_on(&server, &imsi_of(&api, &sims[2]).await, FRANKFURT).await;
    assert_eq!(
        online_in(&api, &vpg).await,
        2,
        "the two sessions in the VPG"
    );

    // Its online count follows its SIMs: a session moved out and a terminated SIM leave it.
    set_group(&api, &sims[0], None).await;
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{}/delete_session", sims[0]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(online_in(&api, &vpg).await, 1);
    for step in ["enable_termination", "terminate"] {
        let (status, body) = api
            .post_empty(&format!("/v1/sims/{}/{step}", sims[1]))
            .await;
        assert_eq!(status, StatusCode::OK, "{step}: {body}");
    }
    assert_eq!(online_in(&api, &vpg).await, 0);

    // A secondary virtual subscriber on an IoT SIM in the group does not fit either: nothing of
    // it is written.
    let (status, imported) = api
        .post(
            "/v1/arcd/iot_sims",
            json!([{"iccid": "8981100000000000001", "imsi": "440100000000001", "subscription": "plan-D"}]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{imported}");
    let iot = text(&imported[0], "/simId").to_string();
    set_group(&api, &iot, Some(&group)).await;
    let rows = counts(&server).await;
    let (status, body) = api
        .post(
            &format!("/v1/sims/{iot}/profiles/8981100000000000001/add_subscription"),
            json!({"subscription": "planArc01", "type": "virtual"}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], json!("VPG0003"), "{body}");
    assert_eq!(counts(&server).await, rows);
}

#[tokio::test]
async fn a_group_naming_an_unusable_vpg_is_refused() {
    let server = start().await;
    let api = Checked(server.login().await);
    let other = Checked(server.other_operator().await);
    let foreign = create_vpg(&other, OREGON, "10.200.0.0/24").await;
    let sim_id = create_sim(&api, true).await;
    let before = seen(&api, &sim_id).await;
    for value in [
        json!(foreign),
        json!("00000000-0000-4000-8000-000000000000"),
        json!(42),
    ] {
        let group = create_group(&api, "placeholder").await;
        let (status, body) = api
            .put(
                &format!("/v1/groups/{group}/configuration/SoracomAir"),
                json!([{"key": "vpgId", "value": value}]),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        set_group(&api, &sim_id, Some(&group)).await;
        let rows = counts(&server).await;
        let (status, body) = api
            .post(&format!("/v1/sims/{sim_id}/sessions/arc"), json!({}))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], json!("VPG0002"), "{value}: {body}");
        assert!(text(&body, "/message").contains(&group), "{body}");
        assert_eq!(seen(&api, &sim_id).await, before);
        assert_eq!(counts(&server).await, rows);
    }
    // A null vpgId means no VPG.
    let group = create_group(&api, "placeholder").await;
    let (status, body) = api
        .put(
            &format!("/v1/groups/{group}/configuration/SoracomAir"),
            json!([{"key": "vpgId", "value": null}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    set_group(&api, &sim_id, Some(&group)).await;
    let (status, body) = api
        .post(&format!("/v1/sims/{sim_id}/sessions/arc"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_session(&server, &api, &sim_id, FRANKFURT, None).await;
}

#[tokio::test]
async fn vpg_region_without_a_rendezvous_point_falls_back_to_the_global_one() {
    let server = start().await;
    let api = Checked(server.login().await);
    let net: Ipv4Net = "10.210.0.0/24".parse().expect("net");
    let vpg = create_vpg(&api, "ap-southeast-2", "10.210.0.0/24").await;
    let group = create_group(&api, &vpg).await;
    for (global, rp) in [(true, FRANKFURT), (false, TOKYO)] {
        let sim_id = create_sim(&api, global).await;
        set_group(&api, &sim_id, Some(&group)).await;
        let (status, body) = api
            .post_empty(&format!("/v1/sims/{sim_id}/delete_session"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_session(&server, &api, &sim_id, rp, Some((&vpg, net))).await;
    }
}

#[tokio::test]
async fn terminate_is_refused_while_a_session_is_in_the_vpg() {
    let server = start().await;
    let api = Checked(server.login().await);
    let vpg = create_vpg(&api, OREGON, "10.200.0.0/24").await;
    let group = create_group(&api, &vpg).await;
    let sim_id = create_sim(&api, true).await;
    set_group(&api, &sim_id, Some(&group)).await;
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/delete_session"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .get(&format!("/v1/virtual_private_gateways/{vpg}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The group no longer names it, but the session is still in it.
    let (status, body) = api
        .delete(&format!(
            "/v1/groups/{group}/configuration/SoracomAir/vpgId"
        ))
        .await;
    assert!(status.is_success(), "{status} {body}");
    let terminate = format!("/v1/virtual_private_gateways/{vpg}/terminate");
    let (status, body) = api.post_empty(&terminate).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], json!("VPG0001"), "{body}");
    assert!(
        text(&body, "/message").contains("1 Arc session(s)"),
        "{body}"
    );

    // Re-created outside the VPG, the session no longer holds it.
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/delete_session"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_session(&server, &api, &sim_id, FRANKFURT, None).await;
    let (status, body) = api.post_empty(&terminate).await;
    assert!(status.is_success(), "{status} {body}");
}

/// A VPG with the default subnet (no `deviceSubnetCidrRange` in the request).
async fn create_default_vpg(api: &Checked, region: &str) -> String {
    let (status, vpg) = api
        .post(
            "/v1/virtual_private_gateways",
            json!({"type": 14, "placement": {"region": region}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{vpg}");
    assert_eq!(vpg["deviceSubnetCidrRange"], json!("10.128.0.0/9"), "{vpg}");
    text(&vpg, "/vpgId").to_string()
}

/// A new global-coverage SIM of `api`'s operator in `group`, its session re-created into the VPG.
async fn sim_in_group(api: &Checked, group: &str) -> String {
    let sim_id = create_sim(api, true).await;
    set_group(api, &sim_id, Some(group)).await;
    let (status, body) = api
        .post_empty(&format!("/v1/sims/{sim_id}/delete_session"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    sim_id
}

#[tokio::test]
async fn vpgs_with_the_default_subnet_never_share_an_address() {
    let server = start().await;
    let api = Checked(server.login().await);
    let other = Checked(server.other_operator().await);
    let default_net: Ipv4Net = "10.128.0.0/9".parse().expect("net");
    let mut vpgs = Vec::new();
    for (operator, region) in [(&api, OREGON), (&api, TOKYO), (&other, OREGON)] {
        let vpg = create_default_vpg(operator, region).await;
        let group = create_group(operator, &vpg).await;
        vpgs.push((operator, region, vpg, group));
    }
    let mut addresses = Vec::new();
    for round in 0..2 {
        for (operator, region, vpg, group) in &vpgs {
            let sim_id = sim_in_group(operator, group).await;
            let s = assert_session(
                &server,
                operator,
                &sim_id,
                region,
                Some((vpg.as_str(), default_net)),
            )
            .await;
            assert!(
                !addresses.contains(&s.client_ip),
                "round {round}: {s:?} already handed out in {addresses:?}"
            );
            addresses.push(s.client_ip);
        }
    }
    assert_eq!(addresses.len(), 6);
}

#[tokio::test]
async fn overlapping_vpg_subnets_skip_each_others_addresses() {
    let server = start().await;
    let api = Checked(server.login().await);
    let other = Checked(server.other_operator().await);
    // A (.1-.2) and C (.5-.6) lie inside B (.1-.6); C belongs to another operator.
    let net_a: Ipv4Net = "10.200.0.0/30".parse().expect("net");
    let net_b: Ipv4Net = "10.200.0.0/29".parse().expect("net");
    let net_c: Ipv4Net = "10.200.0.4/30".parse().expect("net");
    let vpg_a = create_vpg(&api, OREGON, "10.200.0.0/30").await;
    let vpg_b = create_vpg(&api, OREGON, "10.200.0.0/29").await;
    let vpg_c = create_vpg(&other, OREGON, "10.200.0.4/30").await;
    let group_a = create_group(&api, &vpg_a).await;
    let group_b = create_group(&api, &vpg_b).await;
    let group_c = create_group(&other, &vpg_c).await;
    let ip = |last: u8| Ipv4Addr::new(10, 200, 0, last);

    let mut placed = Vec::new();
    for (operator, group, vpg, net, expected) in [
        (&api, &group_a, &vpg_a, net_a, 1),
        (&api, &group_a, &vpg_a, net_a, 2),
        // B skips A's .1 and .2.
        (&api, &group_b, &vpg_b, net_b, 3),
        (&other, &group_c, &vpg_c, net_c, 5),
        (&other, &group_c, &vpg_c, net_c, 6),
        // B's highest address is taken by C: B finds the free one below it.
        (&api, &group_b, &vpg_b, net_b, 4),
    ] {
        let sim_id = sim_in_group(operator, group).await;
        let s = assert_session(&server, operator, &sim_id, OREGON, Some((vpg, net))).await;
        assert_eq!(s.client_ip, ip(expected), "{s:?}");
        placed.push(s.client_ip);
    }

    // Every VPG is now full, each with fewer devices than its subnet holds addresses: a clear
    // 400 VPG0003 and nothing written.
    for (operator, group, vpg, subnet) in [
        (&api, &group_a, &vpg_a, "10.200.0.0/30"),
        (&api, &group_b, &vpg_b, "10.200.0.0/29"),
        (&other, &group_c, &vpg_c, "10.200.0.4/30"),
    ] {
        let sim_id = create_sim(operator, true).await;
        set_group(operator, &sim_id, Some(group)).await;
        let before = seen(operator, &sim_id).await;
        let rows = counts(&server).await;
        let (status, body) = operator
            .post_empty(&format!("/v1/sims/{sim_id}/delete_session"))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], json!("VPG0003"), "{body}");
        let message = text(&body, "/message");
        assert!(
            message.contains(subnet) && message.contains(vpg.as_str()),
            "{message}"
        );
        assert_eq!(seen(operator, &sim_id).await, before);
        assert_eq!(counts(&server).await, rows);
    }
}

#[tokio::test]
async fn a_vpg_subnet_overlapping_a_rendezvous_point_pool_is_refused() {
    let server = start().await;
    let api = Checked(server.login().await);
    for (subnet, pool, rp) in [
        ("10.64.0.0/16", "10.64.0.0/16", TOKYO),
        ("10.64.3.0/24", "10.64.0.0/16", TOKYO),
        ("10.0.0.0/8", "10.64.0.0/16", TOKYO),
        ("10.65.255.252/30", "10.65.0.0/16", FRANKFURT),
    ] {
        let (status, body) = api
            .post(
                "/v1/virtual_private_gateways",
                json!({"type": 14, "placement": {"region": OREGON}, "deviceSubnetCidrRange": subnet}),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
        let message = text(&body, "/message");
        assert!(
            message.contains(subnet) && message.contains(pool) && message.contains(rp),
            "{subnet}: {message}"
        );
        assert_eq!(count(&server, "vpgs").await, 0, "{subnet}");
    }
    // Right next to the pools is fine.
    create_vpg(&api, OREGON, "10.67.0.0/16").await;
    create_vpg(&api, OREGON, "10.63.0.0/16").await;
    assert_eq!(count(&server, "vpgs").await, 2);
}
