//! Peers indexed for the packet path: by IMSI (changes), by client public key (handshake
//! initiations) and by client address (packets from the TUN), each an O(1) lookup.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::store::{ActiveSession, PeerChange};

#[derive(Debug, Default)]
pub struct PeerTable {
    by_imsi: HashMap<String, ActiveSession>,
    by_public_key: HashMap<String, String>,
    by_client_ip: HashMap<Ipv4Addr, String>,
}

/// What applying one change did, for logging and for the engine to react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Added(ActiveSession),
    /// The session id changed: the engine must drop the peer's WireGuard state.
    NewSession(ActiveSession),
    Updated(ActiveSession),
    Removed(String),
    Unknown(String),
}

impl PeerTable {
    pub fn from_sessions(sessions: impl IntoIterator<Item = ActiveSession>) -> PeerTable {
        let mut table = PeerTable::default();
        for session in sessions {
            table.apply(PeerChange::Upsert(session));
        }
        table
    }

    pub fn apply(&mut self, change: PeerChange) -> Applied {
        match change {
            PeerChange::Upsert(session) => {
                let previous = self.take(&session.imsi);
                self.by_public_key
                    .insert(session.client_public_key.clone(), session.imsi.clone());
                self.by_client_ip
                    .insert(session.client_ip, session.imsi.clone());
                self.by_imsi.insert(session.imsi.clone(), session.clone());
                match previous {
                    None => Applied::Added(session),
                    Some(old) if old.session_id != session.session_id => {
                        Applied::NewSession(session)
                    }
                    Some(_) => Applied::Updated(session),
                }
            }
            PeerChange::Remove { imsi, .. } => match self.take(&imsi) {
                Some(_) => Applied::Removed(imsi),
                None => Applied::Unknown(imsi),
            },
        }
    }

    fn take(&mut self, imsi: &str) -> Option<ActiveSession> {
        let old = self.by_imsi.remove(imsi)?;
        // Only drop index entries that still point at this peer: a key or address may already
        // belong to another peer after a move.
        if self
            .by_public_key
            .get(&old.client_public_key)
            .map(String::as_str)
            == Some(imsi)
        {
            self.by_public_key.remove(&old.client_public_key);
        }
        if self.by_client_ip.get(&old.client_ip).map(String::as_str) == Some(imsi) {
            self.by_client_ip.remove(&old.client_ip);
        }
        Some(old)
    }

    pub fn by_imsi(&self, imsi: &str) -> Option<&ActiveSession> {
        self.by_imsi.get(imsi)
    }

    pub fn by_public_key(&self, key: &str) -> Option<&ActiveSession> {
        self.by_public_key
            .get(key)
            .and_then(|imsi| self.by_imsi.get(imsi))
    }

    pub fn by_client_ip(&self, ip: Ipv4Addr) -> Option<&ActiveSession> {
        self.by_client_ip
            .get(&ip)
            .and_then(|imsi| self.by_imsi.get(imsi))
    }

    pub fn sessions(&self) -> impl Iterator<Item = &ActiveSession> {
        self.by_imsi.values()
    }

    pub fn len(&self) -> usize {
        self.by_imsi.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_imsi.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(imsi: &str, key: &str, ip: [u8; 4], session_id: &str) -> ActiveSession {
        ActiveSession {
            imsi: imsi.into(),
            primary_imsi: imsi.into(),
            sim_id: format!("sim-{imsi}"),
            operator_id: "OP0000000001".into(),
            session_id: session_id.into(),
            rp_id: "ap-northeast-1".into(),
            client_public_key: key.into(),
            client_ip: Ipv4Addr::from(ip),
            group_id: None,
            vpg_id: None,
        }
    }

    #[test]
    fn upsert_indexes_and_replaces() {
        let mut table = PeerTable::default();
        let first = session("1", "k1", [10, 64, 0, 2], "s1");
        assert_eq!(
            table.apply(PeerChange::Upsert(first.clone())),
            Applied::Added(first)
        );
        assert_eq!(
            table.by_public_key("k1").map(|s| s.imsi.as_str()),
            Some("1")
        );
        assert_eq!(
            table
                .by_client_ip(Ipv4Addr::new(10, 64, 0, 2))
                .map(|s| s.imsi.as_str()),
            Some("1")
        );

        let renewed = session("1", "k2", [10, 64, 0, 2], "s2");
        assert!(matches!(
            table.apply(PeerChange::Upsert(renewed)),
            Applied::NewSession(_)
        ));
        assert!(
            table.by_public_key("k1").is_none(),
            "old key must stop matching at once"
        );
        assert!(table.by_public_key("k2").is_some());

        let mut regrouped = session("1", "k2", [10, 64, 0, 2], "s2");
        regrouped.group_id = Some("g".into());
        assert!(matches!(
            table.apply(PeerChange::Upsert(regrouped)),
            Applied::Updated(_)
        ));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn remove_clears_every_index() {
        let mut table = PeerTable::from_sessions([session("1", "k1", [10, 64, 0, 2], "s1")]);
        let removed = table.apply(PeerChange::Remove {
            imsi: "1".into(),
            rp_id: "ap-northeast-1".into(),
        });
        assert_eq!(removed, Applied::Removed("1".into()));
        assert!(table.is_empty());
        assert!(table.by_public_key("k1").is_none());
        assert!(table.by_client_ip(Ipv4Addr::new(10, 64, 0, 2)).is_none());
        let again = table.apply(PeerChange::Remove {
            imsi: "1".into(),
            rp_id: "ap-northeast-1".into(),
        });
        assert_eq!(again, Applied::Unknown("1".into()));
    }

    #[test]
    fn moved_address_keeps_new_owner() {
        let mut table = PeerTable::default();
        table.apply(PeerChange::Upsert(session("1", "k1", [10, 64, 0, 2], "s1")));
        // Peer 2 takes over the address (peer 1 was re-addressed in the same batch).
        table.apply(PeerChange::Upsert(session("2", "k2", [10, 64, 0, 2], "s2")));
        table.apply(PeerChange::Upsert(session("1", "k1", [10, 64, 0, 3], "s3")));
        assert_eq!(
            table
                .by_client_ip(Ipv4Addr::new(10, 64, 0, 2))
                .map(|s| s.imsi.as_str()),
            Some("2")
        );
        assert_eq!(
            table
                .by_client_ip(Ipv4Addr::new(10, 64, 0, 3))
                .map(|s| s.imsi.as_str()),
            Some("1")
        );
    }
}
