//! `[node]`: what one arcd process serves when several share a PostgreSQL store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use arcd::config::{Config, RendezvousPointConfig};
use arcd::ids::RendezvousPointId;
use support::server::test_config;
use support::store_engine::on_postgres;

fn with_frankfurt(config: &mut Config) {
    config.rendezvous_points.push(RendezvousPointConfig {
        id: RendezvousPointId::new("eu-central-1"),
        name: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        endpoint: "127.0.0.1:11011".into(),
        pool: "10.65.0.0/16".parse().unwrap(),
        allowed_ips: vec!["100.127.0.0/16".parse().unwrap()],
    });
}

fn served(running: &arcd::server::Running) -> Vec<String> {
    let mut ids: Vec<String> = running
        .dataplane
        .udp_addrs
        .iter()
        .map(|(rp_id, _)| rp_id.to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_node_without_the_api_still_serves_its_rendezvous_points() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    with_frankfurt(&mut config);
    config.node.api = false;
    let running = arcd::server::start(config).await.expect("starts");
    assert_eq!(running.api_addr, None);
    assert_eq!(served(&running), ["ap-northeast-1", "eu-central-1"]);
    running.shutdown().await;
}

/// On PostgreSQL a node serves the rendezvous points it names and no other; on SQLite (one
/// process owns the file) naming only some is refused at start, by key.
#[tokio::test]
async fn a_node_serves_only_the_rendezvous_points_it_names() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    with_frankfurt(&mut config);
    config.node.rendezvous_points = vec!["eu-central-1".into()];
    if !on_postgres() {
        let Err(error) = arcd::server::start(config).await else {
            panic!("a SQLite node serving only some rendezvous points started");
        };
        assert!(
            error.to_string().contains("node.rendezvous_points"),
            "{error}"
        );
        return;
    }
    let running = arcd::server::start(config).await.expect("starts");
    assert!(running.api_addr.is_some());
    assert_eq!(served(&running), ["eu-central-1"]);
    running.shutdown().await;
}
