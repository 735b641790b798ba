//! Harvest Data entries: what devices post to the Harvest service, read back through the
//! official data API. Stored under the primary IMSI (resource type `Subscriber`) and the SIM ID.

use rusqlite::{params, Transaction};

use super::Result;

/// The only resource type devices write through the tunnel.
pub const SUBSCRIBER: &str = "Subscriber";

/// One entry to store, as the Harvest service received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub operator_id: String,
    /// The primary IMSI of the device that sent it.
    pub imsi: String,
    pub sim_id: String,
    /// UNIX milliseconds: server time, or the device's `X-Soracom-Timestamp`.
    pub time: i64,
    pub content_type: String,
    pub content: String,
}

/// Stores `entries` in the caller's transaction (the Harvest service commits many posts at once).
pub fn insert(tx: &Transaction, entries: &[NewEntry]) -> Result<()> {
    let mut insert_entry = tx.prepare_cached(
        "INSERT INTO harvest_entries(operator_id, resource_type, resource_id, sim_id, time, content_type, content)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut touch_resource = tx.prepare_cached(
        "INSERT INTO harvest_resources(operator_id, resource_type, resource_id, last_modified_time)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(operator_id, resource_type, resource_id)
         DO UPDATE SET last_modified_time = max(last_modified_time, excluded.last_modified_time)",
    )?;
    for entry in entries {
        insert_entry.execute(params![
            entry.operator_id,
            SUBSCRIBER,
            entry.imsi,
            entry.sim_id,
            entry.time,
            entry.content_type,
            entry.content
        ])?;
        touch_resource.execute(params![
            entry.operator_id,
            SUBSCRIBER,
            entry.imsi,
            entry.time
        ])?;
    }
    Ok(())
}
