//! Where each session's device was last seen (migration 8), so a restarted arcd can start the
//! WireGuard handshake toward it instead of waiting for the device to notice the restart.
//! Written once for both store engines (see `store::db`).

use std::net::SocketAddr;

use super::db::{chunks, values_rows, Db, Param};
use super::Result;
use crate::ids::Imsi;

/// A device's last authenticated UDP source address, tied to the session it was seen in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedEndpoint {
    pub imsi: Imsi,
    pub session_id: String,
    pub endpoint: SocketAddr,
}

/// Sessions updated by one statement: 64 × 3 parameters.
const ROWS_PER_STATEMENT: usize = 64;

/// Records the endpoints in the caller's transaction; returns how many sessions took one. A
/// session closed or re-created since the endpoint was seen (other `session_id`) is left alone.
/// One `UPDATE … FROM (VALUES …)` per chunk: each row of the list finds its session by the
/// primary key (test `save_looks_sessions_up_by_key`).
pub fn save(db: &mut dyn Db, endpoints: &[SavedEndpoint]) -> Result<usize> {
    let mut saved = 0;
    for chunk in chunks(endpoints, ROWS_PER_STATEMENT) {
        let texts: Vec<String> = chunk.iter().map(|e| e.endpoint.to_string()).collect();
        let mut params: Vec<&dyn Param> = Vec::with_capacity(chunk.len() * 3);
        for (entry, text) in chunk.iter().zip(&texts) {
            params.extend([&entry.imsi as &dyn Param, &entry.session_id, text]);
        }
        saved += db.execute(&save_sql(chunk.len()), &params)?;
    }
    usize::try_from(saved).map_err(|e| super::StoreError::Corrupt(e.to_string()))
}

fn save_sql(rows: usize) -> String {
    format!(
        "UPDATE arc_sessions SET last_endpoint = v.column3
         FROM (VALUES {}) AS v
         WHERE arc_sessions.imsi = v.column1 AND arc_sessions.session_id = v.column2",
        values_rows(rows, 3)
    )
}

/// Every active session's saved endpoint. A value that does not parse (edited by hand) is skipped
/// with a warning: it is only a hint, the device still reaches arcd on its own.
pub fn saved(db: &mut dyn Db) -> Result<Vec<SavedEndpoint>> {
    let rows = db.query(
        "SELECT imsi, session_id, last_endpoint FROM arc_sessions
         WHERE last_endpoint IS NOT NULL ORDER BY imsi",
        &[],
    )?;
    let mut saved = Vec::new();
    for row in rows {
        let imsi = Imsi::new(row.text(0)?);
        let text = row.text(2)?;
        match text.parse() {
            Ok(endpoint) => saved.push(SavedEndpoint {
                imsi,
                session_id: row.text(1)?,
                endpoint,
            }),
            Err(_) => {
                tracing::warn!(%imsi, endpoint = %text, "saved device endpoint is not ip:port; ignored")
            }
        }
    }
    Ok(saved)
}

/// The same tests on both engines: `sqlite` always, `postgres` when ARCD_TEST_POSTGRES_URL names a
/// server (scripts/test-postgres.sh).
#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::db::Backend;
    use crate::store::operators;

    use crate::store::testing::on_both_engines;

    on_both_engines!(
        endpoints_are_saved_per_session_and_read_back,
        a_batch_longer_than_one_statement_is_saved_whole,
    );

    /// Session rows with the least of their neighbours (operator, rendezvous point, SIM,
    /// subscriber) that the foreign keys ask for; the sessions' IMSIs are also their SIM IDs.
    fn insert_sessions(store: &impl Backend, sessions: &[(String, String)]) {
        store
            .write_db(|db| {
                let operator_id = operators::create_operator(db)?;
                db.execute(
                    "INSERT INTO rendezvous_points(rp_id, private_key, public_key, endpoint, pool, allowed_ips, created_at)
                     VALUES ('rp', 'private', 'public', 'rp.example:11010', '10.0.0.0/16', '[]', 0)",
                    &[],
                )?;
                for (imsi, session_id) in sessions {
                    db.execute(
                        "INSERT INTO sims(sim_id, operator_id, sim_type, status, coverage, created_at, last_modified_at)
                         VALUES ($1, $2, 'virtual', 'active', 'jp', 0, 0)",
                        &[imsi, &operator_id],
                    )?;
                    db.execute(
                        "INSERT INTO subscribers(imsi, sim_id, iccid, subscription, is_primary, is_virtual, status, created_at, last_modified_at)
                         VALUES ($1, $1, $1, 'planArc01', $2, $2, 'active', 0, 0)",
                        &[imsi, &true],
                    )?;
                    db.execute(
                        "INSERT INTO arc_sessions(imsi, sim_id, session_id, rp_id, client_ip, created_at, last_updated_at)
                         VALUES ($1, $1, $2, 'rp', '10.0.0.2', 0, 0)",
                        &[imsi, session_id],
                    )?;
                }
                Ok(())
            })
            .expect("insert sessions");
    }

    fn sessions(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|imsi| (imsi.to_string(), format!("s-{imsi}")))
            .collect()
    }

    fn endpoints_are_saved_per_session_and_read_back(store: &impl Backend) {
        insert_sessions(store, &sessions(&["a", "b", "c"]));
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
        let saved_now = store
            .write_db(|db| save(db, &[a.clone(), b_old_session.clone(), c.clone()]))
            .expect("save");
        assert_eq!(
            saved_now, 2,
            "the endpoint of a replaced session is not saved"
        );
        assert_eq!(store.read_db(saved).expect("read"), vec![a, c]);
    }

    /// 150 sessions: chunks of 64, 64, 16, 4 and 2 statements' worth, every one saved.
    fn a_batch_longer_than_one_statement_is_saved_whole(store: &impl Backend) {
        let names: Vec<String> = (0..150).map(|i| format!("{i:03}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        insert_sessions(store, &sessions(&names));
        let endpoints: Vec<SavedEndpoint> = names
            .iter()
            .enumerate()
            .map(|(i, imsi)| SavedEndpoint {
                imsi: (*imsi).into(),
                session_id: format!("s-{imsi}"),
                endpoint: SocketAddr::from(([192, 0, 2, 1], 1000 + i as u16)),
            })
            .collect();
        let saved_now = store.write_db(|db| save(db, &endpoints)).expect("save");
        assert_eq!(saved_now, 150);
        assert_eq!(store.read_db(saved).expect("read"), endpoints);
        assert_eq!(store.write_db(|db| save(db, &[])).expect("none"), 0);
    }

    /// The multi-row UPDATE walks the list and finds each session by its primary key: never a
    /// scan of `arc_sessions`, however many sessions there are.
    #[test]
    fn save_looks_sessions_up_by_key() {
        let (_dir, store) = crate::store::testing::temp_store();
        let plan: Vec<String> = store
            .sqlite()
            .expect("a SQLite store")
            .read(|conn| {
                let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", save_sql(2)))?;
                let rows = statement.query_map(["x"; 6], |row| row.get::<_, String>(3))?;
                Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
            })
            .expect("plan");
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH arc_sessions USING INDEX")),
            "{plan:?}"
        );
        assert!(
            !plan
                .iter()
                .any(|step| step.starts_with("SCAN arc_sessions")),
            "{plan:?}"
        );
    }
}
