//! Rendezvous points: the server key pair is made once and kept; endpoint, pool and allowed IPs
//! follow the configuration at every start.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

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

/// Inserts or updates each configured rendezvous point; a new one gets a fresh server key pair.
pub fn sync(tx: &Transaction, configured: &[RendezvousPointConfig]) -> Result<()> {
    for rp in configured {
        let allowed: Vec<String> = rp.allowed_ips.iter().map(|n| n.to_string()).collect();
        let allowed =
            serde_json::to_string(&allowed).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let updated = tx.execute(
            "UPDATE rendezvous_points SET endpoint = ?2, pool = ?3, allowed_ips = ?4 WHERE rp_id = ?1",
            params![rp.id, rp.endpoint, rp.pool.to_string(), allowed],
        )?;
        if updated == 0 {
            let pair = wgkey::generate();
            tx.execute(
                "INSERT INTO rendezvous_points(rp_id, private_key, public_key, endpoint, pool, allowed_ips, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![rp.id, pair.private_key, pair.public_key, rp.endpoint, rp.pool.to_string(), allowed, now_ms()],
            )?;
            tracing::info!(rendezvous_point = %rp.id, public_key = %pair.public_key, "server key pair generated");
        }
    }
    Ok(())
}

pub fn get(conn: &Connection, rp_id: &RendezvousPointId) -> Result<RendezvousPoint> {
    conn.prepare_cached(
        "SELECT rp_id, public_key, endpoint, pool, allowed_ips FROM rendezvous_points WHERE rp_id = ?1",
    )?
    .query_row([rp_id], |row| {
        Ok((
            row.get::<_, RendezvousPointId>(0)?,

            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, String>(4)?,
        ))
    })
    .optional()?
    .ok_or_else(|| Rule::UnknownRendezvousPoint(rp_id.to_string()).into())
    .and_then(|(rp_id, public_key, endpoint, pool, allowed)| {
        Ok(RendezvousPoint {
            pool: pool
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("pool of {rp_id}")))?,
            allowed_ips: parse_allowed_ips(&allowed)?,
            rp_id,
            public_key,
            endpoint,
        })
    })
}

pub(crate) fn parse_allowed_ips(json: &str) -> Result<Vec<String>> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("allowed_ips: {e}")))
}

/// The server private key, for the data plane only: never logged, never served by the API.
pub fn private_key(conn: &Connection, rp_id: &RendezvousPointId) -> Result<String> {
    conn.query_row(
        "SELECT private_key FROM rendezvous_points WHERE rp_id = ?1",
        [rp_id],
        |row| row.get(0),
    )
    .optional()?
    .ok_or_else(|| Rule::UnknownRendezvousPoint(rp_id.to_string()).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::testing::temp_store;

    #[test]
    fn key_pair_survives_resync_and_endpoint_follows_config() {
        let (_dir, store) = temp_store();
        let mut rps = Config::default().rendezvous_points;
        store.write(|tx| sync(tx, &rps)).expect("sync");
        let first = store
            .read(|c| get(c, &"ap-northeast-1".into()))
            .expect("get");
        rps[0].endpoint = "rp.example.net:11010".into();
        store.write(|tx| sync(tx, &rps)).expect("resync");
        let second = store
            .read(|c| get(c, &"ap-northeast-1".into()))
            .expect("get");
        assert_eq!(first.public_key, second.public_key);
        assert_eq!(second.endpoint, "rp.example.net:11010");
        assert_eq!(second.allowed_ips, vec!["100.127.0.0/16".to_string()]);
        let private = store
            .read(|c| private_key(c, &"ap-northeast-1".into()))
            .expect("key");
        assert_eq!(
            wgkey::public_from_private(&private).as_deref(),
            Some(first.public_key.as_str())
        );
        assert!(store.read(|c| get(c, &"us-west-2".into())).is_err());
    }
}
