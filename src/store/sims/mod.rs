//! SIMs: the rows behind the API's `Sim` object, standalone virtual SIM creation, status changes,
//! termination, groups and tags. Written once for both store engines (issue 14): functions take
//! a `&mut dyn Db` and use the portable SQL dialect (docs/design/store-engines.md). The jobs
//! live in the submodules: reading (`read`), making SIMs and their numbers (`create`), changing
//! them (`lifecycle`).

mod create;
mod lifecycle;
mod read;
#[cfg(test)]
mod tests;

pub use super::sim_search::{search, SimQuery};
use crate::config::Coverage;
use crate::ids::{GroupId, Imsi, OperatorId, RendezvousPointId, SimId, VpgId};
pub use create::{
    check_sim_quota, create_virtual, create_virtual_within_quota, CreatedSim, SimQuotaExceeded,
};
pub(crate) use create::{insert_subscriber, next_virtual_imsi, NewSubscriber};
pub use lifecycle::{
    change_status, delete_tag, put_tags, set_group, set_termination_enabled, terminate,
    StatusAction,
};
pub(crate) use lifecycle::{require_live_sim, touch};
pub(crate) use read::require_sim;
pub(super) use read::{completed, SIM_COLUMNS};
pub use read::{count, get, list, list_in_group, SimCounts};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRecord {
    pub sim_id: SimId,
    pub operator_id: OperatorId,
    /// `virtual` for arcd-made SIMs, `uicc` for imported IoT SIMs.
    pub sim_type: String,
    pub module_type: Option<String>,
    pub status: String,
    pub coverage: Coverage,
    pub group_id: Option<GroupId>,
    pub termination_enabled: bool,
    pub created_at: i64,
    pub last_modified_at: i64,
    pub tags: Vec<(String, String)>,
    /// Primary first.
    pub subscribers: Vec<SubscriberRecord>,
    pub session: Option<SessionRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberRecord {
    pub imsi: Imsi,
    pub iccid: String,
    pub msisdn: Option<String>,
    pub subscription: String,
    pub is_primary: bool,
    pub is_virtual: bool,
    pub status: String,
    pub arc_public_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub imsi: Imsi,
    pub session_id: String,
    pub rp_id: RendezvousPointId,
    pub client_ip: String,
    pub vpg_id: Option<VpgId>,
    pub created_at: i64,
    pub last_updated_at: i64,
    pub server_public_key: String,
    pub server_endpoint: String,
    pub allowed_ips: Vec<String>,
}

impl SimRecord {
    pub fn primary_imsi(&self) -> Option<&Imsi> {
        self.subscribers
            .iter()
            .find(|s| s.is_primary)
            .map(|s| &s.imsi)
    }

    /// The virtual subscriber carrying the Arc credentials, if the SIM has a live one.
    pub fn arc_subscriber(&self) -> Option<&SubscriberRecord> {
        self.subscribers
            .iter()
            .find(|s| s.is_virtual && s.status == "active")
    }
}
