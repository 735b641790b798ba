//! Who is calling a platform service: tunnel source address → session → SIM → group settings.
//! Traffic of a secondary virtual subscriber counts as its IoT SIM's (the primary IMSI).

use std::net::IpAddr;

use serde_json::Value;

use super::ServiceContext;
use crate::ids::Imsi;
use crate::store::db::Backend;
use crate::store::groups::{self, Configuration};
use crate::store::{sims, SimRecord, StoreError};

/// A caller identified by its tunnel address, with the SIM and group settings as stored now
/// (a group change applies to the very next request, no session reset needed).
#[derive(Debug, Clone)]
pub struct Caller {
    pub primary_imsi: Imsi,
    /// The virtual subscriber whose WireGuard session carried the request.
    pub tunnel_imsi: Imsi,
    pub sim: SimRecord,
    pub configuration: Configuration,
}

#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    /// Not the address of any active session (e.g. a spoofed or stale source).
    #[error("{0} is not the address of an active session")]
    Unknown(IpAddr),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Caller {
    /// A value of the caller's group configuration, if the SIM is in a group and it is set.
    pub fn setting(&self, namespace: &str, key: &str) -> Option<&Value> {
        self.configuration.get(namespace)?.get(key)
    }

    /// A boolean switch such as `SoracomHarvest.enabled`; absent or not `true` means off.
    pub fn enabled(&self, namespace: &str, key: &str) -> bool {
        self.setting(namespace, key).and_then(Value::as_bool) == Some(true)
    }
}

pub fn identify(ctx: &ServiceContext, source: IpAddr) -> Result<Caller, CallerError> {
    let IpAddr::V4(client_ip) = source else {
        return Err(CallerError::Unknown(source));
    };
    let session = ctx
        .engine
        .session_by_client_ip(client_ip)
        .ok_or(CallerError::Unknown(source))?;
    let (sim, configuration) = ctx.store.read_db(|db| {
        let sim = sims::get(db, &session.operator_id, &session.sim_id)?;
        let configuration = match &sim.group_id {
            Some(group_id) => match groups::get(db, &sim.operator_id, group_id) {
                Ok(group) => group.configuration,
                Err(StoreError::NotFound(_)) => Configuration::new(),
                Err(e) => return Err(e),
            },
            None => Configuration::new(),
        };
        Ok((sim, configuration))
    })?;
    Ok(Caller {
        primary_imsi: session.primary_imsi,
        tunnel_imsi: session.imsi,
        sim,
        configuration,
    })
}
