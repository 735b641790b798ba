//! Rendezvous points: the server key pair is made once and kept; endpoint, pool and allowed IPs
//! follow the configuration at every start.
//!
//! Several nodes read the same configuration and may start at once (issue 14): the key pair is
//! written by whichever start commits first and the others read it back, so every node serves
//! one key per rendezvous point. Written once for both store engines (see `store::db`).

use super::db::Db;
use super::{now_ms, Result, Rule, StoreError};
use crate::config::RendezvousPointConfig;
use crate::ids::RendezvousPointId;
use crate::wgkey;

#[derive(Debug, Clone)]
pub struct RendezvousPoint {
    pub rp_id: RendezvousPointId,
    pub public_key: String,
    pub endpoint: String,
    pub pool: ipnet::Ipv4Net,
    pub allowed_ips: Vec<String>,
}

/// A server key pair that `sync` made (the rendezvous point was new), for the caller to log once
/// the transaction has committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewServerKey {
    pub rp_id: RendezvousPointId,
    pub public_key: String,
}

/// Inserts or updates each configured rendezvous point; a new one gets a fresh server key pair,
/// an existing one keeps its own. One upsert per point: a key pair is offered every time and kept
/// only by the insert, so two nodes syncing at once end with the key of whichever committed first
/// (SQLite serialises the writers; PostgreSQL makes the later one wait, fail its serializable
/// snapshot and run again, when it finds the row).
pub fn sync(db: &mut dyn Db, configured: &[RendezvousPointConfig]) -> Result<Vec<NewServerKey>> {
    let mut generated = Vec::new();
    for rp in configured {
        let allowed: Vec<String> = rp.allowed_ips.iter().map(|n| n.to_string()).collect();
        let allowed =
            serde_json::to_string(&allowed).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let offered = wgkey::generate();
        let kept = db
            .query_one(
                "INSERT INTO rendezvous_points(rp_id, private_key, public_key, endpoint, pool, allowed_ips, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (rp_id) DO UPDATE
                 SET endpoint = excluded.endpoint, pool = excluded.pool, allowed_ips = excluded.allowed_ips
                 RETURNING public_key",
                &[
                    &rp.id,
                    &offered.private_key,
                    &offered.public_key,
                    &rp.endpoint,
                    &rp.pool.to_string(),
                    &allowed,
                    &now_ms(),
                ],
            )?
            .text(0)?;
        if kept == offered.public_key {
            generated.push(NewServerKey {
                rp_id: rp.id.clone(),
                public_key: kept,
            });
        }
    }
    Ok(generated)
}

pub fn get(db: &mut dyn Db, rp_id: &RendezvousPointId) -> Result<RendezvousPoint> {
    let row = db
        .query_opt(
            "SELECT public_key, endpoint, pool, allowed_ips FROM rendezvous_points WHERE rp_id = $1",
            &[rp_id],
        )?
        .ok_or_else(|| Rule::UnknownRendezvousPoint(rp_id.to_string()))?;
    Ok(RendezvousPoint {
        pool: row
            .text(2)?
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("pool of {rp_id}")))?,
        allowed_ips: parse_allowed_ips(&row.text(3)?)?,
        rp_id: rp_id.clone(),
        public_key: row.text(0)?,
        endpoint: row.text(1)?,
    })
}

pub(crate) fn parse_allowed_ips(json: &str) -> Result<Vec<String>> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("allowed_ips: {e}")))
}

/// The server private key, for the data plane only: never logged, never served by the API.
pub fn private_key(db: &mut dyn Db, rp_id: &RendezvousPointId) -> Result<String> {
    db.query_opt(
        "SELECT private_key FROM rendezvous_points WHERE rp_id = $1",
        &[rp_id],
    )?
    .ok_or_else(|| Rule::UnknownRendezvousPoint(rp_id.to_string()))?
    .text(0)
}

/// The same tests on both engines: `sqlite` always, `postgres` when ARCD_TEST_POSTGRES_URL names a
/// server (scripts/test-postgres.sh).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::db::testing::temp_pg_store;
    use crate::store::db::Backend;

    use crate::store::testing::on_both_engines;

    on_both_engines!(key_pair_survives_resync_and_endpoint_follows_config);

    fn key_pair_survives_resync_and_endpoint_follows_config(store: &impl Backend) {
        let mut rps = Config::default().rendezvous_points;
        let generated = store.write_db(|db| sync(db, &rps)).expect("sync");
        let first = store
            .read_db(|db| get(db, &"ap-northeast-1".into()))
            .expect("get");
        assert_eq!(generated.len(), rps.len());
        assert!(generated.contains(&NewServerKey {
            rp_id: "ap-northeast-1".into(),
            public_key: first.public_key.clone(),
        }));
        rps[0].endpoint = "rp.example.net:11010".into();
        let generated = store.write_db(|db| sync(db, &rps)).expect("resync");
        assert!(generated.is_empty(), "{generated:?}");
        let second = store
            .read_db(|db| get(db, &"ap-northeast-1".into()))
            .expect("get");
        assert_eq!(first.public_key, second.public_key);
        assert_eq!(second.endpoint, "rp.example.net:11010");
        assert_eq!(second.allowed_ips, vec!["100.127.0.0/16".to_string()]);
        let private = store
            .read_db(|db| private_key(db, &"ap-northeast-1".into()))
            .expect("key");
        assert_eq!(
            wgkey::public_from_private(&private).as_deref(),
            Some(first.public_key.as_str())
        );
        assert!(store.read_db(|db| get(db, &"us-west-2".into())).is_err());
        assert!(store
            .read_db(|db| private_key(db, &"us-west-2".into()))
            .is_err());
    }

    /// Two nodes starting at once on one store: each round both sync a new rendezvous point at
    /// the same moment (two stores, two threads); both succeed and exactly one of them made the
    /// key pair that both then read.
    fn two_nodes_syncing_at_once_agree_on_one_key<S: Backend + Sync>(first: &S, second: &S) {
        for round in 0..20 {
            let mut rps = Config::default().rendezvous_points;
            rps.truncate(1);
            rps[0].id = format!("race-{round}").as_str().into();
            let start = std::sync::Barrier::new(2);
            let (made_by_first, made_by_second) = std::thread::scope(|scope| {
                let sync_on = |store: &S| {
                    start.wait();
                    store.write_db(|db| sync(db, &rps)).expect("sync")
                };
                let a = scope.spawn(move || sync_on(first));
                let b = scope.spawn(move || sync_on(second));
                (a.join().expect("first"), b.join().expect("second"))
            });
            let made: Vec<NewServerKey> = made_by_first.into_iter().chain(made_by_second).collect();
            assert_eq!(made.len(), 1, "round {round}: {made:?}");
            for store in [first, second] {
                let read = store.read_db(|db| get(db, &rps[0].id)).expect("get");
                assert_eq!(read.public_key, made[0].public_key, "round {round}");
                let private = store
                    .read_db(|db| private_key(db, &rps[0].id))
                    .expect("private key");
                assert_eq!(
                    wgkey::public_from_private(&private).as_deref(),
                    Some(made[0].public_key.as_str())
                );
            }
        }
    }

    mod two_nodes_syncing_at_once_agree_on_one_key {
        use crate::store::db::{Backend, PgStore};
        use crate::store::Store;

        #[test]
        fn sqlite() {
            let (dir, first) = crate::store::testing::temp_store();
            let second = Store::open(&dir.path().join("arcd.sqlite")).expect("second store");
            super::two_nodes_syncing_at_once_agree_on_one_key(&first, &second);
        }

        #[test]
        fn postgres() {
            let Some(first) = super::temp_pg_store() else {
                return;
            };
            let schema = first
                .read_db(|db| db.query_one("SELECT current_schema()::text", &[])?.text(0))
                .expect("schema");
            let url = std::env::var(crate::store::db::testing::POSTGRES_URL_VAR).expect("url");
            let second = PgStore::connect_in_schema(&url, &schema).expect("second store");
            super::two_nodes_syncing_at_once_agree_on_one_key(&first, &second);
        }
    }
}
