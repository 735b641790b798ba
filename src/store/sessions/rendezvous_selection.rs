//! Which rendezvous point a new session goes to: the configured policy and the placement table
//! (docs/ARCHITECTURE.md, "Sessions").

use crate::config::Coverage;
use crate::ids::RendezvousPointId;
use crate::store::vpgs::VpgRecord;

/// Where new sessions go and how long a released address rests before reuse.
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    pub jp_rendezvous_point: RendezvousPointId,
    pub global_rendezvous_point: RendezvousPointId,
    pub address_quarantine_ms: i64,
    /// Ids of the rendezvous points this process serves. A VPG placed in a region outside this
    /// list cannot host its global-coverage sessions there: they fall back to the global RP.
    pub rendezvous_points: Vec<RendezvousPointId>,
}

impl SessionPolicy {
    pub fn rendezvous_point_for(&self, coverage: Coverage) -> &RendezvousPointId {
        match coverage {
            Coverage::Jp => &self.jp_rendezvous_point,
            Coverage::G => &self.global_rendezvous_point,
        }
    }

    /// Whether this process serves rendezvous point `rp_id`.
    pub(super) fn serves(&self, rp_id: &RendezvousPointId) -> bool {
        self.rendezvous_points.iter().any(|id| id == rp_id)
    }
}

/// The rendezvous point of a new session, as docs/ARCHITECTURE.md ("Sessions") states it: not in
/// a VPG, Japan coverage uses the Japan RP (Tokyo) and global coverage the global RP (Frankfurt);
/// in a VPG, Japan coverage still uses Tokyo while global coverage uses the VPG's placement
/// region. The VPG's region is returned as is, even when no such RP is configured: the caller
/// decides what to do then (`placement::place` falls back to the coverage's RP with a warning).
pub fn select_rendezvous_point<'a>(
    coverage: Coverage,
    vpg: Option<&'a VpgRecord>,
    policy: &'a SessionPolicy,
) -> &'a RendezvousPointId {
    match (coverage, vpg) {
        (Coverage::G, Some(vpg)) => &vpg.region,
        (coverage, _) => policy.rendezvous_point_for(coverage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vpg_in(region: &str) -> VpgRecord {
        VpgRecord {
            vpg_id: "00000000-0000-4000-8000-000000000000".into(),
            operator_id: "OP0000000001".into(),
            vpg_type: 14,
            region: region.into(),
            device_subnet: "10.128.0.0/9".parse().expect("net"),
            use_internet_gateway: true,
            device_to_device: false,
            status: "running".into(),
            tags: Default::default(),
            created_at: 0,
            last_modified_at: 0,
            online_sessions: 0,
        }
    }

    fn policy(jp: &str, global: &str) -> SessionPolicy {
        SessionPolicy {
            jp_rendezvous_point: jp.into(),
            global_rendezvous_point: global.into(),
            address_quarantine_ms: 0,
            rendezvous_points: Vec::new(),
        }
    }

    /// Checks `select_rendezvous_point` against (coverage, VPG region, expected RP) rows.
    fn assert_selects(policy: &SessionPolicy, rows: &[(Coverage, Option<&str>, &str)]) {
        for &(coverage, region, expected) in rows {
            let vpg = region.map(vpg_in);
            assert_eq!(
                select_rendezvous_point(coverage, vpg.as_ref(), policy),
                expected,
                "{coverage:?} in a VPG in {region:?}"
            );
        }
    }

    /// Every row of the placement table (docs/ARCHITECTURE.md, "Sessions"), with the default
    /// policy (Tokyo for jp, Frankfurt for g), and the VPG placed in every region.
    #[test]
    fn seed_selection_table() {
        let policy = policy("ap-northeast-1", "eu-central-1");
        assert_selects(
            &policy,
            &[
                (Coverage::Jp, None, "ap-northeast-1"),
                (Coverage::G, None, "eu-central-1"),
            ],
        );
        for region in crate::config::KNOWN_REGIONS {
            assert_selects(
                &policy,
                &[
                    (Coverage::Jp, Some(*region), "ap-northeast-1"),
                    (Coverage::G, Some(*region), *region),
                ],
            );
        }
    }

    /// Outside a VPG (and for jp inside one) the configured RPs of the policy are used.
    #[test]
    fn policy_rps_are_configurable() {
        assert_selects(
            &policy("us-west-2", "ap-southeast-2"),
            &[
                (Coverage::Jp, None, "us-west-2"),
                (Coverage::G, None, "ap-southeast-2"),
                (Coverage::Jp, Some("eu-central-1"), "us-west-2"),
                (Coverage::G, Some("eu-central-1"), "eu-central-1"),
            ],
        );
    }
}
