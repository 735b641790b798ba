//! JSON shapes of the official API (field names as in soracom-api-arc-subset.yaml), built from
//! store records. Only this module decides how a record looks on the wire.

use std::collections::BTreeMap;

use serde::Serialize;

use super::live::Live;
use crate::ids::{GroupId, Imsi, OperatorId, SimId, VpgId};
use crate::services;
use crate::store::groups::GroupRecord;
use crate::store::operators::AuthKeyInfo;
use crate::store::sessions::SessionEventRecord;
use crate::store::vpgs::VpgRecord;
use crate::store::{SessionRecord, SimRecord, SubscriberRecord};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sim {
    pub sim_id: SimId,
    pub operator_id: OperatorId,
    #[serde(rename = "type")]
    pub sim_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_type: Option<String>,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed_class: Option<&'static str>,
    pub active_profile_id: String,
    pub profiles: BTreeMap<String, SimProfile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arc_session_status: Option<ArcSessionStatus>,
    pub session_status: SessionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<GroupId>,
    pub tags: BTreeMap<String, String>,
    pub capabilities: Capabilities,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arcd_session_stats: Option<ArcdSessionStats>,
    pub termination_enabled: bool,
    pub created_time: i64,
    pub last_modified_time: i64,
}

#[derive(Serialize, Clone, Copy)]
pub struct Capabilities {
    pub data: bool,
    pub sms: bool,
}

const DATA_ONLY: Capabilities = Capabilities {
    data: true,
    sms: false,
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimProfile {
    pub iccid: String,
    pub primary_imsi: Imsi,
    pub ota_supported: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arc_client_peer_private_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arc_client_peer_public_key: Option<String>,
    pub subscribers: BTreeMap<String, SimplifiedSubscriber>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimplifiedSubscriber {
    pub imsi: Imsi,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msisdn: Option<String>,
    pub subscription: String,
    pub status: String,
    pub bundles: Vec<String>,
    pub capabilities: Capabilities,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub infrastructure_provider: &'static str,
    pub region: String,
}

fn placement(region: &str) -> Placement {
    Placement {
        infrastructure_provider: "aws",
        region: region.to_string(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArcSessionStatus {
    pub arc_server_endpoint: String,
    pub arc_server_peer_public_key: String,
    pub arc_client_peer_public_key: String,
    pub arc_client_peer_ip_address: String,
    #[serde(rename = "arcAllowedIPs")]
    pub arc_allowed_ips: Vec<String>,
    pub last_updated_at: i64,
    pub placement: Placement,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpg_id: Option<VpgId>,
}

/// `createArcSession` answer: the five session fields, never a private key.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArcSessionCreateResponse {
    pub arc_server_endpoint: String,
    pub arc_server_peer_public_key: String,
    pub arc_client_peer_public_key: String,
    pub arc_client_peer_ip_address: String,
    #[serde(rename = "arcAllowedIPs")]
    pub arc_allowed_ips: Vec<String>,
}

impl From<ArcSessionStatus> for ArcSessionCreateResponse {
    fn from(s: ArcSessionStatus) -> Self {
        ArcSessionCreateResponse {
            arc_server_endpoint: s.arc_server_endpoint,
            arc_server_peer_public_key: s.arc_server_peer_public_key,
            arc_client_peer_public_key: s.arc_client_peer_public_key,
            arc_client_peer_ip_address: s.arc_client_peer_ip_address,
            arc_allowed_ips: s.arc_allowed_ips,
        }
    }
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    pub online: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imsi: Option<Imsi>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ue_ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_servers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpg_id: Option<VpgId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_updated_at: Option<i64>,
}

/// Which private key to show: only the response that created the key pair carries it.
pub struct OneTimeKey<'a> {
    pub iccid: &'a str,
    pub private_key: &'a str,
}

pub fn arc_session_status(sim: &SimRecord) -> Option<ArcSessionStatus> {
    let session = sim.session.as_ref()?;
    let subscriber = sim.subscribers.iter().find(|s| s.imsi == session.imsi)?;
    Some(arc_status_of(session, subscriber))
}

fn arc_status_of(session: &SessionRecord, subscriber: &SubscriberRecord) -> ArcSessionStatus {
    ArcSessionStatus {
        arc_server_endpoint: session.server_endpoint.clone(),
        arc_server_peer_public_key: session.server_public_key.clone(),
        arc_client_peer_public_key: subscriber.arc_public_key.clone().unwrap_or_default(),
        arc_client_peer_ip_address: session.client_ip.clone(),
        arc_allowed_ips: session.allowed_ips.clone(),
        last_updated_at: session.last_updated_at,
        placement: placement(session.rp_id.as_str()),
        vpg_id: session.vpg_id.clone(),
    }
}

/// arcd extension on `Sim`: what the data plane sees of the device right now. The official
/// `sessionStatus.online` is the platform side (online from creation); this is the device side.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArcdSessionStats {
    /// The device completed a handshake within the last 180 s.
    pub device_online: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_handshake_at: Option<i64>,
    /// UNIX ms of the device's latest authenticated packet (keepalives included): "last seen".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_endpoint: Option<String>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

pub fn sim(record: &SimRecord, one_time_key: Option<OneTimeKey>, live: &Live) -> Sim {
    // Every SIM has a primary subscriber; the empty IMSI only keeps a broken row answerable.
    let primary_imsi = record
        .primary_imsi()
        .cloned()
        .unwrap_or_else(|| Imsi::new(""));
    let mut profiles: BTreeMap<String, SimProfile> = BTreeMap::new();
    for sub in &record.subscribers {
        let profile = profiles
            .entry(sub.iccid.clone())
            .or_insert_with(|| SimProfile {
                iccid: sub.iccid.clone(),
                primary_imsi: primary_imsi.clone(),
                ota_supported: false,
                arc_client_peer_private_key: None,
                arc_client_peer_public_key: None,
                subscribers: BTreeMap::new(),
            });
        if sub.is_virtual && sub.status == "active" {
            profile.arc_client_peer_public_key = sub.arc_public_key.clone();
        }
        profile
            .subscribers
            .insert(sub.imsi.to_string(), simplified(sub));
    }
    if let Some(key) = one_time_key {
        if let Some(profile) = profiles.get_mut(key.iccid) {
            profile.arc_client_peer_private_key = Some(key.private_key.to_string());
        }
    }
    let is_virtual = record.sim_type == "virtual";
    let tags = record
        .tags
        .iter()
        .cloned()
        .chain(std::iter::once(("name".to_string(), String::new())))
        .fold(BTreeMap::new(), |mut map, (k, v)| {
            map.entry(k).or_insert(v);
            map
        });
    Sim {
        sim_id: record.sim_id.clone(),
        operator_id: record.operator_id.clone(),
        sim_type: record.sim_type.clone(),
        module_type: record.module_type.clone(),
        status: record.status.clone(),
        speed_class: is_virtual.then_some("arc.standard"),
        active_profile_id: record.sim_id.to_string(),
        profiles,
        arc_session_status: arc_session_status(record),
        session_status: session_status(record, &primary_imsi),
        group_id: record.group_id.clone(),
        tags,
        capabilities: DATA_ONLY,
        arcd_session_stats: live.stats(record),
        termination_enabled: record.termination_enabled,
        created_time: record.created_at,
        last_modified_time: record.last_modified_at,
    }
}

/// The legacy `Subscriber` object the metadata service answers with (`/v1/subscriber`): the
/// primary subscriber of the SIM, with the session of the Arc subscriber that carries the device.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscriber {
    pub imsi: Imsi,
    pub msisdn: Option<String>,
    pub iccid: String,
    pub sim_id: SimId,
    pub operator_id: OperatorId,
    pub subscription: String,
    pub status: String,
    pub module_type: Option<String>,
    pub speed_class: Option<&'static str>,
    #[serde(rename = "type")]
    pub speed_class_type: Option<&'static str>,
    pub ip_address: Option<String>,
    pub apn: Option<String>,
    pub imei_lock: Option<String>,
    pub expiry_time: Option<i64>,
    pub group_id: Option<GroupId>,
    pub tags: BTreeMap<String, String>,
    pub session_status: SessionStatus,
    pub termination_enabled: bool,
    pub created_at: i64,
    pub last_modified_at: i64,
}

pub fn subscriber(record: &SimRecord) -> Subscriber {
    let primary = record.subscribers.iter().find(|s| s.is_primary);
    let primary_imsi = primary.map_or_else(|| Imsi::new(""), |s| s.imsi.clone());
    let speed_class = primary.filter(|s| s.is_virtual).map(|_| "arc.standard");
    Subscriber {
        imsi: primary_imsi.clone(),
        msisdn: primary.and_then(|s| s.msisdn.clone()),
        iccid: primary.map(|s| s.iccid.clone()).unwrap_or_default(),
        sim_id: record.sim_id.clone(),
        operator_id: record.operator_id.clone(),
        subscription: primary.map(|s| s.subscription.clone()).unwrap_or_default(),
        status: record.status.clone(),
        module_type: record.module_type.clone(),
        speed_class,
        speed_class_type: speed_class,
        ip_address: record.session.as_ref().map(|s| s.client_ip.clone()),
        apn: None,
        imei_lock: None,
        expiry_time: None,
        group_id: record.group_id.clone(),
        tags: record.tags.iter().cloned().collect(),
        session_status: session_status(record, &primary_imsi),
        termination_enabled: record.termination_enabled,
        created_at: record.created_at,
        last_modified_at: record.last_modified_at,
    }
}

fn simplified(sub: &SubscriberRecord) -> SimplifiedSubscriber {
    SimplifiedSubscriber {
        imsi: sub.imsi.clone(),
        msisdn: sub.msisdn.clone(),
        subscription: sub.subscription.clone(),
        status: sub.status.clone(),
        bundles: Vec::new(),
        capabilities: DATA_ONLY,
    }
}

/// The platform side of an Arc session is online from creation (docs/ARCHITECTURE.md,
/// "Sessions"); whether the device has handshaken is live data plane state, reported separately.
fn session_status(record: &SimRecord, primary_imsi: &Imsi) -> SessionStatus {
    let Some(session) = record.session.as_ref() else {
        return SessionStatus::default();
    };
    SessionStatus {
        online: true,
        imsi: Some(primary_imsi.clone()),

        session_id: Some(session.session_id.clone()),
        subscription: Some("planArc01".into()),
        ue_ip_address: Some(session.client_ip.clone()),
        dns_servers: Some(vec![services::DNS.to_string()]),
        placement: Some(placement(session.rp_id.as_str())),
        vpg_id: session.vpg_id.clone(),
        last_updated_at: Some(session.last_updated_at),
    }
}

/// `addSubscription` answer: the profile holding the new subscriber and its one-time private key.
pub fn profile_of(
    record: &SimRecord,
    iccid: &str,
    private_key: &str,
    live: &Live,
) -> Option<SimProfile> {
    let mut view = sim(record, Some(OneTimeKey { iccid, private_key }), live);
    view.profiles.remove(iccid)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionEvent {
    pub time: i64,
    pub created_time: String,
    pub event: String,
    pub imsi: Imsi,
    pub sim_id: SimId,
    pub operator_id: OperatorId,
    pub session_id: String,
    pub subscription: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ue_ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpg_id: Option<VpgId>,
}

pub fn session_event(e: &SessionEventRecord) -> SessionEvent {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.time.max(0) as u64);
    SessionEvent {
        time: e.time,
        created_time: humantime::format_rfc3339_millis(at).to_string(),
        event: e.event.clone(),
        imsi: e.imsi.clone(),
        sim_id: e.sim_id.clone(),
        operator_id: e.operator_id.clone(),
        session_id: e.session_id.clone(),
        subscription: e.subscription.clone(),
        ue_ip_address: e.ue_ip.clone(),
        vpg_id: e.vpg_id.clone(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub group_id: GroupId,
    pub operator_id: OperatorId,
    pub tags: BTreeMap<String, String>,
    pub configuration: crate::store::groups::Configuration,
    pub created_time: i64,
    pub last_modified_time: i64,
}

/// Tags as the official Group and VirtualPrivateGateway show them: `name` is always there
/// (empty when never set).
fn tags_with_name(tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut tags = tags.clone();
    tags.entry("name".into()).or_default();
    tags
}

pub fn group(g: &GroupRecord) -> Group {
    Group {
        group_id: g.group_id.clone(),
        operator_id: g.operator_id.clone(),
        tags: tags_with_name(&g.tags),
        configuration: g.configuration.clone(),
        created_time: g.created_at,
        last_modified_time: g.last_modified_at,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthKey {
    pub auth_key_id: String,
    /// UNIX seconds, unlike every other time in the API.
    pub create_date_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_date_time: Option<i64>,
}

pub fn auth_key(k: &AuthKeyInfo) -> AuthKey {
    AuthKey {
        auth_key_id: k.auth_key_id.clone(),
        create_date_time: k.created_at_ms / 1000,
        last_used_date_time: k.last_used_at_ms.map(|ms| ms / 1000),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VpgSessionStats {
    pub online: u64,
    pub last_updated_at: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Vpg {
    pub vpg_id: VpgId,
    pub operator_id: OperatorId,
    #[serde(rename = "type")]
    pub vpg_type: i64,
    pub status: String,
    pub placement: Placement,
    pub device_subnet_cidr_range: String,
    pub ue_subnet_cidr_range: String,
    pub use_internet_gateway: bool,
    pub tags: BTreeMap<String, String>,
    pub session_stats: VpgSessionStats,
    pub created_time: i64,
    pub last_modified_time: i64,
    /// arcd extension: devices of this VPG may reach each other.
    pub arcd_device_to_device: bool,
}

pub fn vpg(v: &VpgRecord) -> Vpg {
    Vpg {
        vpg_id: v.vpg_id.clone(),
        operator_id: v.operator_id.clone(),
        vpg_type: v.vpg_type,
        status: v.status.clone(),
        placement: placement(v.region.as_str()),
        device_subnet_cidr_range: v.device_subnet.to_string(),
        ue_subnet_cidr_range: v.device_subnet.to_string(),
        use_internet_gateway: v.use_internet_gateway,
        tags: tags_with_name(&v.tags),
        // Counted from the store at the time of the request.
        session_stats: VpgSessionStats {
            online: v.online_sessions,
            last_updated_at: crate::store::now_ms(),
        },
        created_time: v.created_at,
        last_modified_time: v.last_modified_at,
        arcd_device_to_device: v.device_to_device,
    }
}
