//! Where each session's device was last seen (migration 8), so a restarted arcd can start the
//! WireGuard handshake toward it instead of waiting for the device to notice the restart.

use std::net::SocketAddr;

use rusqlite::{params, Connection, Transaction};

use super::Result;
use crate::ids::Imsi;

/// A device's last authenticated UDP source address, tied to the session it was seen in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedEndpoint {
    pub imsi: Imsi,
    pub session_id: String,
    pub endpoint: SocketAddr,
}

/// Records the endpoints in the caller's transaction; returns how many sessions took one. A
/// session closed or re-created since the endpoint was seen (other `session_id`) is left alone.
pub fn save(tx: &Transaction, endpoints: &[SavedEndpoint]) -> Result<usize> {
    let mut update = tx.prepare_cached(
        "UPDATE arc_sessions SET last_endpoint = ?3 WHERE imsi = ?1 AND session_id = ?2",
    )?;
    let mut saved = 0;
    for entry in endpoints {
        saved += update.execute(params![
            entry.imsi,
            entry.session_id,
            entry.endpoint.to_string()
        ])?;
    }
    Ok(saved)
}

/// Every active session's saved endpoint. A value that does not parse (edited by hand) is skipped
/// with a warning: it is only a hint, the device still reaches arcd on its own.
pub fn saved(conn: &Connection) -> Result<Vec<SavedEndpoint>> {
    let mut statement = conn.prepare(
        "SELECT imsi, session_id, last_endpoint FROM arc_sessions
         WHERE last_endpoint IS NOT NULL ORDER BY imsi",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, Imsi>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    let mut saved = Vec::new();
    for row in rows {
        let (imsi, session_id, text) = row?;
        match text.parse() {
            Ok(endpoint) => saved.push(SavedEndpoint {
                imsi,
                session_id,
                endpoint,
            }),
            Err(_) => {
                tracing::warn!(%imsi, endpoint = %text, "saved device endpoint is not ip:port; ignored")
            }
        }
    }
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::temp_store;

    /// Session rows alone, written on a side connection with foreign keys off: the row's
    /// neighbours (SIM, subscriber, rendezvous point) do not matter here.
    fn insert_sessions(db: &std::path::Path, sessions: &[(&str, &str)]) {
        let conn = Connection::open(db).expect("open");
        conn.pragma_update(None, "foreign_keys", false)
            .expect("fk off");
        for (imsi, session_id) in sessions {
            conn.execute(
                "INSERT INTO arc_sessions(imsi, sim_id, session_id, rp_id, client_ip, created_at, last_updated_at)
                 VALUES (?1, ?1, ?2, 'rp', '10.0.0.2', 0, 0)",
                params![imsi, session_id],
            )
            .expect("insert session");
        }
    }

    #[test]
    fn endpoints_are_saved_per_session_and_read_back() {
        let (dir, store) = temp_store();
        insert_sessions(
            &dir.path().join("arcd.sqlite"),
            &[("a", "s-a"), ("b", "s-b"), ("c", "s-c")],
        );
        let a = SavedEndpoint {
            imsi: "a".into(),
            session_id: "s-a".into(),
            endpoint: "192.0.2.1:51820".parse().expect("addr"),
        };
        let b_old_session = SavedEndpoint {
            imsi: "b".into(),
            session_id: "replaced".into(),
            endpoint: "192.0.2.2:51820".parse().expect("addr"),
        };
        let c = SavedEndpoint {
            imsi: "c".into(),
            session_id: "s-c".into(),
            endpoint: "[2001:db8::1]:4500".parse().expect("addr"),
        };
        let saved = store
            .write(|tx| save(tx, &[a.clone(), b_old_session, c.clone()]))
            .expect("save");
        assert_eq!(saved, 2, "the endpoint of a replaced session is not saved");
        assert_eq!(store.read(saved_fn).expect("read"), vec![a, c]);
    }

    fn saved_fn(conn: &Connection) -> Result<Vec<SavedEndpoint>> {
        saved(conn)
    }
}
