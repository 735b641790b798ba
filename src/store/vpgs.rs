//! Virtual Private Gateways. A VPG is owned by one operator; SIMs join it through their group's
//! `SoracomAir` → `vpgId` (wired into sessions elsewhere). Terminating keeps the row with status
//! `terminated` so the id is never reused; the API shows only `running` VPGs (the official
//! `VirtualPrivateGateway.status` knows no other value), so a terminated VPG answers like a
//! missing one.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use super::db::{Db, Row};
use super::{now_ms, Entity, Result, Rule, StoreError};
use crate::config::{RendezvousPointConfig, KNOWN_REGIONS};
use crate::ids;
use crate::ids::{OperatorId, RendezvousPointId, VpgId};
use crate::subnets::overlaps;

/// VPG types `createVirtualPrivateGateway` accepts: 14 Type-E, 15 Type-F, 242 Type-F2.
pub const CREATABLE_TYPES: &[i64] = &[14, 15, 242];

/// `deviceSubnetCidrRange` when the request gives none.
pub const DEFAULT_DEVICE_SUBNET: &str = "10.128.0.0/9";

/// Longest prefix a device subnet may have: a /30 still holds two usable addresses.
pub const MAX_DEVICE_SUBNET_PREFIX: u8 = 30;

pub const STATUS_RUNNING: &str = "running";
pub const STATUS_TERMINATED: &str = "terminated";

/// What `createVirtualPrivateGateway` asks for, before validation.
#[derive(Debug, Clone)]
pub struct NewVpg {
    pub vpg_type: i64,
    pub region: String,
    /// `None`: [`DEFAULT_DEVICE_SUBNET`].
    pub device_subnet: Option<String>,
    /// `None`: true, as in the official API.
    pub use_internet_gateway: Option<bool>,
    pub device_to_device: bool,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpgRecord {
    pub vpg_id: VpgId,
    pub operator_id: OperatorId,
    pub vpg_type: i64,
    /// The placement region, which is also the id of the rendezvous point that serves it.
    pub region: RendezvousPointId,
    pub device_subnet: Ipv4Net,
    pub use_internet_gateway: bool,
    /// arcd extension: devices of this VPG may reach each other.
    pub device_to_device: bool,
    pub status: String,
    pub tags: BTreeMap<String, String>,
    pub created_at: i64,
    pub last_modified_at: i64,
    /// Arc sessions currently in this VPG.
    pub online_sessions: u64,
}

/// A device subnet: an IPv4 network address (no host bits set) with room for devices.
pub fn parse_device_subnet(text: &str) -> std::result::Result<Ipv4Net, String> {
    let net: Ipv4Net = text.trim().parse().map_err(|_| {
        format!("deviceSubnetCidrRange `{text}` is not an IPv4 CIDR range like 10.128.0.0/9")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "deviceSubnetCidrRange `{text}` has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    if net.prefix_len() > MAX_DEVICE_SUBNET_PREFIX {
        return Err(format!(
            "deviceSubnetCidrRange `{text}` holds no device address; use a prefix of at most /{MAX_DEVICE_SUBNET_PREFIX}"
        ));
    }
    Ok(net)
}

fn invalid(message: String) -> StoreError {
    Rule::InvalidVpg(message).into()
}

fn validate(new: &NewVpg, rendezvous_points: &[RendezvousPointConfig]) -> Result<Ipv4Net> {
    if !CREATABLE_TYPES.contains(&new.vpg_type) {
        return Err(invalid(format!(
            "type {} cannot be created; use one of 14 (Type-E), 15 (Type-F), 242 (Type-F2)",
            new.vpg_type
        )));
    }
    if !KNOWN_REGIONS.contains(&new.region.as_str()) {
        return Err(invalid(format!(
            "placement.region `{}` is not a placement region; use one of {}",
            new.region,
            KNOWN_REGIONS.join(", ")
        )));
    }
    let subnet = parse_device_subnet(
        new.device_subnet
            .as_deref()
            .unwrap_or(DEFAULT_DEVICE_SUBNET),
    )
    .map_err(invalid)?;
    // Devices are found by client address alone, so a VPG address must never also be one a
    // rendezvous point hands out to devices outside VPGs.
    if let Some(rp) = rendezvous_points
        .iter()
        .find(|rp| overlaps(&subnet, &rp.pool))
    {
        return Err(invalid(format!(
            "deviceSubnetCidrRange {subnet} overlaps {}, the client address pool of rendezvous point {}; choose a range outside every rendezvous point pool",
            rp.pool, rp.id
        )));
    }
    Ok(subnet)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Creates a running VPG. Its device subnet must not overlap the pool of any of the configured
/// `rendezvous_points`. Device subnets of VPGs may overlap each other (every VPG defaults to
/// [`DEFAULT_DEVICE_SUBNET`]): sessions lease their addresses from one scope shared by all VPGs.
pub fn create(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    new: &NewVpg,
    rendezvous_points: &[RendezvousPointConfig],
) -> Result<VpgRecord> {
    let subnet = validate(new, rendezvous_points)?;
    let vpg_id = ids::new_vpg_id();
    let now = now_ms();
    db.execute(
        "INSERT INTO vpgs(vpg_id, operator_id, type, region, device_subnet, use_internet_gateway,
                          device_to_device, status, tags, created_at, last_modified_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
        &[
            &vpg_id,
            operator_id,
            &new.vpg_type,
            &new.region,
            &subnet.to_string(),
            &new.use_internet_gateway.unwrap_or(true),
            &new.device_to_device,
            &STATUS_RUNNING,
            &to_json(&new.tags)?,
            &now,
        ],
    )?;
    get(db, operator_id, &vpg_id)
}

const COLUMNS: &str = "v.vpg_id, v.operator_id, v.type, v.region, v.device_subnet,
    v.use_internet_gateway, v.device_to_device, v.status, v.tags, v.created_at, v.last_modified_at,
    (SELECT COUNT(*) FROM arc_sessions a WHERE a.vpg_id = v.vpg_id)";

/// A VPG from a row of [`COLUMNS`].
fn record(row: &Row) -> Result<VpgRecord> {
    let vpg_id = VpgId::new(row.text(0)?);
    let subnet = row.text(4)?;
    let device_subnet = subnet
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("VPG {vpg_id} subnet `{subnet}`")))?;
    let tags =
        serde_json::from_str(&row.text(8)?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(VpgRecord {
        operator_id: OperatorId::new(row.text(1)?),
        vpg_type: row.int(2)?,
        region: RendezvousPointId::new(row.text(3)?),
        device_subnet,
        use_internet_gateway: row.bool(5)?,
        device_to_device: row.bool(6)?,
        status: row.text(7)?,
        tags,
        created_at: row.int(9)?,
        last_modified_at: row.int(10)?,
        online_sessions: row.int(11)?.max(0) as u64,
        vpg_id,
    })
}

/// The operator's running VPG; a terminated one, or another operator's, is not found.
pub fn get(db: &mut dyn Db, operator_id: &OperatorId, vpg_id: &VpgId) -> Result<VpgRecord> {
    let row = db
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM vpgs v WHERE v.vpg_id = $1 AND v.operator_id = $2 AND v.status = $3"
            ),
            &[vpg_id, operator_id, &STATUS_RUNNING],
        )?
        .ok_or(StoreError::NotFound(Entity::Vpg))?;
    record(&row)
}

/// Tag filter of `listVirtualPrivateGateways`.
#[derive(Debug, Clone)]
pub struct TagFilter {
    pub name: String,
    pub value: String,
    pub prefix: bool,
}

/// The operator's running VPGs in id order, after `after_vpg_id`. Tags are a JSON object in one
/// column; the engine lists its entries (`Db::json_object_entries`), the rest is portable.
pub fn list(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    tag: Option<&TagFilter>,
    after_vpg_id: Option<&str>,
    limit: u32,
) -> Result<Vec<VpgRecord>> {
    let tag_entries = db.json_object_entries("v.tags");
    let rows = db.query(
        &format!(
            "SELECT {COLUMNS} FROM vpgs v
             WHERE v.operator_id = $1 AND v.status = $2 AND v.vpg_id > $3
               AND (CAST($4 AS TEXT) IS NULL OR EXISTS (
                     SELECT 1 FROM {tag_entries} t
                     WHERE t.key = $4
                       AND (CASE WHEN $6 THEN substr(t.value, 1, length(CAST($5 AS TEXT))) = $5
                                 ELSE t.value = $5 END)))
             ORDER BY v.vpg_id LIMIT $7"
        ),
        &[
            operator_id,
            &STATUS_RUNNING,
            &after_vpg_id.unwrap_or(""),
            &tag.map(|t| t.name.as_str()),
            &tag.map(|t| t.value.as_str()),
            &tag.is_some_and(|t| t.prefix),
            &limit,
        ],
    )?;
    rows.iter().map(record).collect()
}

/// Groups of the operator whose `SoracomAir` → `vpgId` names the VPG.
fn groups_naming(db: &mut dyn Db, operator_id: &OperatorId, vpg_id: &VpgId) -> Result<u64> {
    let n = db
        .query_one(
            "SELECT COUNT(*) FROM group_configuration c JOIN groups g ON g.group_id = c.group_id
             WHERE g.operator_id = $1 AND c.namespace = 'SoracomAir' AND c.key = 'vpgId' AND c.value = $2",
            &[operator_id, &to_json(&vpg_id)?],
        )?
        .int(0)?;
    Ok(n.max(0) as u64)
}

/// Refused while a group of the operator names the VPG (`SoracomAir` → `vpgId`) or an Arc
/// session is in it; the row stays with status `terminated`.
pub fn terminate(db: &mut dyn Db, operator_id: &OperatorId, vpg_id: &VpgId) -> Result<()> {
    let vpg = get(db, operator_id, vpg_id)?;
    let groups = groups_naming(db, operator_id, vpg_id)?;
    if groups > 0 || vpg.online_sessions > 0 {
        return Err(Rule::VpgInUse {
            groups,
            sessions: vpg.online_sessions,
        }
        .into());
    }
    db.execute(
        "UPDATE vpgs SET status = $2, last_modified_at = $3 WHERE vpg_id = $1",
        &[vpg_id, &STATUS_TERMINATED, &now_ms()],
    )?;
    Ok(())
}

/// arcd extension: lets devices of the VPG reach each other, or not.
pub fn set_device_to_device(
    db: &mut dyn Db,
    operator_id: &OperatorId,
    vpg_id: &VpgId,
    enabled: bool,
) -> Result<VpgRecord> {
    get(db, operator_id, vpg_id)?;
    db.execute(
        "UPDATE vpgs SET device_to_device = $2, last_modified_at = $3 WHERE vpg_id = $1",
        &[vpg_id, &enabled, &now_ms()],
    )?;
    get(db, operator_id, vpg_id)
}

/// What the data plane needs of one running VPG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningVpg {
    pub vpg_id: VpgId,
    pub device_subnet: Ipv4Net,
    pub device_to_device: bool,
    pub use_internet_gateway: bool,
}

/// Every running VPG of any operator, by id: what the data plane's VPG rules and the host's
/// routes are rebuilt from at start and after each VPG change (read in the changing transaction,
/// so they follow commit order).
pub fn running(db: &mut dyn Db) -> Result<Vec<RunningVpg>> {
    let rows = db.query(
        "SELECT vpg_id, device_subnet, device_to_device, use_internet_gateway
         FROM vpgs WHERE status = $1 ORDER BY vpg_id",
        &[&STATUS_RUNNING],
    )?;
    rows.iter()
        .map(|row| {
            let vpg_id = VpgId::new(row.text(0)?);
            let device_subnet = row
                .text(1)?
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("device subnet of VPG {vpg_id}")))?;
            Ok(RunningVpg {
                vpg_id,
                device_subnet,
                device_to_device: row.bool(2)?,
                use_internet_gateway: row.bool(3)?,
            })
        })
        .collect()
}

/// The same tests on both engines: `sqlite` always, `postgres` when ARCD_TEST_POSTGRES_URL names a
/// server (scripts/test-postgres.sh).
#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::db::Backend;

    use crate::store::testing::on_both_engines;

    on_both_engines!(
        create_defaults_get_list_terminate,
        invalid_requests_write_nothing,
        terminate_refused_while_a_group_names_it,
        tag_filter,
    );

    fn operator(store: &impl Backend, id: &str) -> OperatorId {
        let id = OperatorId::new(id);
        store
            .write_db(|db| {
                db.execute(
                    "INSERT INTO operators(operator_id, created_at) VALUES ($1, $2)",
                    &[&id, &now_ms()],
                )
            })
            .expect("operator");
        id
    }

    fn new_vpg() -> NewVpg {
        NewVpg {
            vpg_type: 14,
            region: "eu-central-1".into(),
            device_subnet: None,
            use_internet_gateway: None,
            device_to_device: false,
            tags: BTreeMap::new(),
        }
    }

    fn create_defaults_get_list_terminate(store: &impl Backend) {
        let op = operator(store, "OP0000000001");
        let other = operator(store, "OP0000000002");
        let vpg = store
            .write_db(|db| create(db, &op, &new_vpg(), &[]))
            .expect("create");
        assert_eq!(vpg.device_subnet.to_string(), DEFAULT_DEVICE_SUBNET);
        assert!(vpg.use_internet_gateway);
        assert!(!vpg.device_to_device);
        assert_eq!(vpg.status, STATUS_RUNNING);
        assert_eq!(vpg.online_sessions, 0);
        let got = store.read_db(|db| get(db, &op, &vpg.vpg_id)).expect("get");
        assert_eq!(got, vpg);
        assert!(matches!(
            store.read_db(|db| get(db, &other, &vpg.vpg_id)),
            Err(StoreError::NotFound(Entity::Vpg))
        ));
        let on = store
            .write_db(|db| set_device_to_device(db, &op, &vpg.vpg_id, true))
            .expect("d2d");
        assert!(on.device_to_device);
        let running_now = store.read_db(running).expect("running");
        assert_eq!(running_now.len(), 1);
        assert_eq!(running_now[0].vpg_id, vpg.vpg_id);
        assert!(running_now[0].device_to_device);
        assert!(running_now[0].use_internet_gateway);
        assert_eq!(
            store
                .read_db(|db| list(db, &op, None, None, 10))
                .expect("list")
                .len(),
            1
        );
        assert!(store
            .read_db(|db| list(db, &other, None, None, 10))
            .expect("list")
            .is_empty());
        store
            .write_db(|db| terminate(db, &op, &vpg.vpg_id))
            .expect("terminate");
        assert!(store
            .read_db(|db| list(db, &op, None, None, 10))
            .expect("list")
            .is_empty());
        assert!(
            store.read_db(running).expect("running").is_empty(),
            "a terminated VPG is gone from the data plane"
        );
        assert!(matches!(
            store.write_db(|db| terminate(db, &op, &vpg.vpg_id)),
            Err(StoreError::NotFound(Entity::Vpg))
        ));
        let status = store
            .read_db(|db| {
                db.query_one("SELECT status FROM vpgs WHERE vpg_id = $1", &[&vpg.vpg_id])?
                    .text(0)
            })
            .expect("row kept");
        assert_eq!(status, STATUS_TERMINATED);
    }

    fn invalid_requests_write_nothing(store: &impl Backend) {
        let op = operator(store, "OP0000000003");
        let cases = [
            NewVpg {
                vpg_type: 12,
                ..new_vpg()
            },
            NewVpg {
                region: "mars-1".into(),
                ..new_vpg()
            },
            NewVpg {
                device_subnet: Some("10.0.0.0".into()),
                ..new_vpg()
            },
            NewVpg {
                device_subnet: Some("10.0.0.1/8".into()),
                ..new_vpg()
            },
            NewVpg {
                device_subnet: Some("10.0.0.0/31".into()),
                ..new_vpg()
            },
            NewVpg {
                device_subnet: Some("fd00::/64".into()),
                ..new_vpg()
            },
            // Overlapping the rendezvous point pool 10.64.0.0/16: inside, equal, around it.
            NewVpg {
                device_subnet: Some("10.64.8.0/24".into()),
                ..new_vpg()
            },
            NewVpg {
                device_subnet: Some("10.64.0.0/16".into()),
                ..new_vpg()
            },
            NewVpg {
                device_subnet: Some("10.0.0.0/8".into()),
                ..new_vpg()
            },
        ];
        let pools = crate::config::Config::default().rendezvous_points;
        assert_eq!(pools[0].pool.to_string(), "10.64.0.0/16");
        for case in cases {
            let result = store.write_db(|db| create(db, &op, &case, &pools));
            assert!(
                matches!(result, Err(StoreError::Rule(Rule::InvalidVpg(_)))),
                "{case:?}: {result:?}"
            );
        }
        let n = store
            .read_db(|db| db.query_one("SELECT COUNT(*) FROM vpgs", &[])?.int(0))
            .expect("count");
        assert_eq!(n, 0);
        // Next to the pool, and the default subnet, are fine.
        for subnet in [Some("10.65.0.0/16"), Some("10.63.255.252/30"), None] {
            let new = NewVpg {
                device_subnet: subnet.map(str::to_string),
                ..new_vpg()
            };
            store
                .write_db(|db| create(db, &op, &new, &pools))
                .expect("no overlap");
        }
    }

    fn terminate_refused_while_a_group_names_it(store: &impl Backend) {
        let op = operator(store, "OP0000000004");
        let vpg = store
            .write_db(|db| create(db, &op, &new_vpg(), &[]))
            .expect("create");
        let mut configuration = crate::store::groups::Configuration::new();
        configuration
            .entry("SoracomAir".into())
            .or_default()
            .insert(
                "vpgId".into(),
                serde_json::Value::String(vpg.vpg_id.to_string()),
            );
        let group = store
            .write_db(|db| crate::store::groups::create(db, &op, &BTreeMap::new(), &configuration))
            .expect("group");
        assert!(matches!(
            store.write_db(|db| terminate(db, &op, &vpg.vpg_id)),
            Err(StoreError::Rule(Rule::VpgInUse {
                groups: 1,
                sessions: 0
            }))
        ));
        assert_eq!(
            store
                .read_db(|db| get(db, &op, &vpg.vpg_id))
                .expect("still there"),
            vpg
        );
        store
            .write_db(|db| {
                crate::store::groups::delete_configuration(
                    db,
                    &op,
                    &group.group_id,
                    "SoracomAir",
                    "vpgId",
                )
            })
            .expect("unname");
        store
            .write_db(|db| terminate(db, &op, &vpg.vpg_id))
            .expect("terminate");
    }

    /// Exact and prefix matches on one tag, case-sensitive on both engines; other tags of the
    /// same VPG do not match by their value.
    fn tag_filter(store: &impl Backend) {
        let op = operator(store, "OP0000000005");
        for name in ["alpha", "alphabet", "beta", "Alpha"] {
            let tags = BTreeMap::from([
                ("name".to_string(), name.to_string()),
                ("site".to_string(), "alpha".to_string()),
            ]);
            store
                .write_db(|db| {
                    let new = NewVpg {
                        tags: tags.clone(),
                        ..new_vpg()
                    };
                    create(db, &op, &new, &[])
                })
                .expect("create");
        }
        let count = |name: &str, value: &str, prefix: bool| {
            let filter = TagFilter {
                name: name.into(),
                value: value.into(),
                prefix,
            };
            store
                .read_db(|db| list(db, &op, Some(&filter), None, 10))
                .expect("list")
                .len()
        };
        assert_eq!(count("name", "alpha", false), 1);
        assert_eq!(count("name", "alpha", true), 2);
        assert_eq!(count("name", "Alph", true), 1);
        assert_eq!(count("name", "gamma", true), 0);
        assert_eq!(count("site", "alpha", false), 4);
        assert_eq!(count("missing", "alpha", true), 0);
        // A page after the first VPG id leaves the others.
        let all = store
            .read_db(|db| list(db, &op, None, None, 10))
            .expect("list");
        assert_eq!(all.len(), 4);
        let after = all[0].vpg_id.as_str().to_string();
        assert_eq!(
            store
                .read_db(|db| list(db, &op, None, Some(&after), 10))
                .expect("page")
                .len(),
            3
        );
    }
}
