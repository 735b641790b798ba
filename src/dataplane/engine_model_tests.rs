//! Reference-model property test of the engine: random sequences of device handshakes, data in
//! every direction, session resets, credential renewals, VPG changes, roaming and garbage are
//! applied to an engine with in-memory I/O (the `Outbox`), and after every step what came out is
//! compared with a small model of who may talk to whom.
//!
//! The model, per device: whether its `Tunn` holds a session (it can send), whether that session
//! is the one the engine's current peer holds (`live`: a handshake since the last reset or
//! renewal), the endpoint the engine knows for it, and its VPG; per VPG: running,
//! device-to-device, internet gateway. The rules it checks are those of docs/ARCHITECTURE.md:
//! a device reaches the platform addresses always, other networks unless its running VPG has the
//! internet gateway off, and another device only inside one running VPG with device-to-device on;
//! packets of an old session or an old key are dropped; the endpoint follows the latest
//! authenticated packet; a reset with the same key re-initiates toward the known endpoint.
//!
//! boringtun's clock is the real one (see `Engine`'s docs on time): a case lasts milliseconds,
//! far below any WireGuard timer, so no timer fires inside a sequence.

use proptest::prelude::*;

use super::*;

const DEVICES: usize = 4;
const VPGS: [&str; 2] = ["vpg-a", "vpg-b"];
const PLATFORM: Ipv4Addr = Ipv4Addr::new(100, 127, 0, 53);
const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const ATTACKER: ([u8; 4], u16) = ([203, 0, 113, 9], 666);

#[derive(Debug, Clone)]
enum Op {
    Handshake(usize),
    ToPlatform(usize),
    ToInternet(usize),
    ToDevice(usize, usize),
    FromPlatform(usize),
    /// delete_session: a new session id, the same key.
    Reset(usize),
    /// A new key pair and a new session; the old `Tunn` keeps sending.
    Renew(usize),
    StaleData(usize),
    Roam(usize),
    MoveSim(usize, Option<usize>),
    SetVpg {
        vpg: usize,
        running: bool,
        device_to_device: bool,
        internet_gateway: bool,
    },
    /// A mutated copy of the last datagram a device sent, or random bytes, from a stranger.
    Garbage {
        truncate_to: usize,
        flip_bit: Option<usize>,
        random: Vec<u8>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let d = 0..DEVICES;
    prop_oneof![
        3 => d.clone().prop_map(Op::Handshake),
        3 => d.clone().prop_map(Op::ToPlatform),
        2 => d.clone().prop_map(Op::ToInternet),
        4 => (d.clone(), d.clone()).prop_map(|(a, b)| Op::ToDevice(a, b)),
        3 => d.clone().prop_map(Op::FromPlatform),
        1 => d.clone().prop_map(Op::Reset),
        1 => d.clone().prop_map(Op::Renew),
        1 => d.clone().prop_map(Op::StaleData),
        1 => d.clone().prop_map(Op::Roam),
        2 => (d, proptest::option::of(0..VPGS.len())).prop_map(|(i, v)| Op::MoveSim(i, v)),
        2 => (0..VPGS.len(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(vpg, running, device_to_device, internet_gateway)| Op::SetVpg {
                vpg,
                running,
                device_to_device,
                internet_gateway,
            }
        ),
        1 => (
            0..400usize,
            proptest::option::of(0..3200usize),
            proptest::collection::vec(any::<u8>(), 0..160),
        )
            .prop_map(|(truncate_to, flip_bit, random)| Op::Garbage {
                truncate_to,
                flip_bit,
                random,
            }),
    ]
}

struct ModelDevice {
    tunn: Tunn,
    /// An earlier `Tunn` that still holds a session (kept after a renewal to replay old keys).
    stale: Option<Tunn>,
    addr: SocketAddr,
    ip: Ipv4Addr,
    session: ActiveSession,
    has_session: bool,
    live: bool,
    engine_endpoint: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ModelVpg {
    running: bool,
    device_to_device: bool,
    internet_gateway: bool,
}

struct World {
    engine: Engine,
    devices: Vec<ModelDevice>,
    vpgs: [ModelVpg; 2],
    next_seed: u8,
    next_port: u16,
    next_session: u32,
    last_datagram: Option<Vec<u8>>,
}

fn server_public() -> PublicKey {
    PublicKey::from(&StaticSecret::from(SERVER_KEY))
}

fn new_tunn(seed: u8, index: u32) -> Tunn {
    Tunn::new(
        StaticSecret::from([seed; 32]),
        server_public(),
        None,
        None,
        index,
        None,
    )
}

/// Where a sequence starts: each device's VPG and each VPG's rules. Every device then
/// handshakes, so that most sequences start where traffic can flow.
fn start() -> impl Strategy<Value = ([Option<usize>; DEVICES], [ModelVpg; 2])> {
    let vpg = (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(running, device_to_device, internet_gateway)| ModelVpg {
            running,
            device_to_device,
            internet_gateway,
        },
    );
    (
        proptest::array::uniform4(proptest::option::of(0..VPGS.len())),
        proptest::array::uniform2(vpg),
    )
}

impl World {
    fn new(device_vpgs: [Option<usize>; DEVICES], vpgs: [ModelVpg; 2]) -> World {
        let mut devices = Vec::new();
        for (n, vpg) in device_vpgs.iter().enumerate() {
            let d = device(n as u8 + 2, vpg.map(|v| VPGS[v]));
            devices.push(ModelDevice {
                tunn: d.tunn,
                stale: None,
                addr: d.addr,
                ip: d.ip,
                session: d.session,
                has_session: false,
                live: false,
                engine_endpoint: None,
            });
        }
        let engine = Engine::new(vec![Listener::new(&"ap-northeast-1".into(), SERVER_KEY)]);
        let mut out = Outbox::new();
        for d in &devices {
            let applied = engine.apply_change(
                PeerChange::Upsert(d.session.clone()),
                Instant::now(),
                &mut out,
            );
            assert!(matches!(applied, Applied::Added(_)), "{applied:?}");
        }
        assert!(out.is_empty());
        let mut world = World {
            engine,
            devices,
            vpgs,
            next_seed: 100,
            next_port: 40_000,
            next_session: 1,
            last_datagram: None,
        };
        world.push_vpgs();
        for i in 0..DEVICES {
            world.step(&Op::Handshake(i)).expect("initial handshake");
        }
        world
    }

    /// Gives the engine the rules of every running VPG, as the VPG plane does after a change.
    fn push_vpgs(&self) {
        let running: Vec<RunningVpg> = VPGS
            .iter()
            .zip(self.vpgs)
            .filter(|(_, v)| v.running)
            .map(|(id, v)| super::vpg(id, v.device_to_device, v.internet_gateway))
            .collect();
        self.engine.set_vpgs(&running);
    }

    fn vpg_of(&self, i: usize) -> Option<ModelVpg> {
        let id = self.devices[i].session.vpg_id.as_ref()?.as_str();
        let v = VPGS.iter().position(|v| *v == id)?;
        Some(self.vpgs[v]).filter(|v| v.running)
    }

    /// The model's rule for device → device.
    fn device_to_device_allowed(&self, from: usize, to: usize) -> bool {
        let (a, b) = (
            &self.devices[from].session.vpg_id,
            &self.devices[to].session.vpg_id,
        );
        a.is_some() && a == b && self.vpg_of(from).is_some_and(|v| v.device_to_device)
    }

    /// The model's rule for device → anything that is not a device.
    fn egress_allowed(&self, from: usize, destination: Ipv4Addr) -> bool {
        destination == PLATFORM || self.vpg_of(from).is_none_or(|v| v.internet_gateway)
    }

    fn encapsulate(&mut self, i: usize, destination: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let d = &mut self.devices[i];
        let mut buf = vec![0u8; BUFFER_SIZE];
        match d
            .tunn
            .encapsulate(&packet(d.ip, destination, payload), &mut buf)
        {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            other => panic!("device {i} has no session: {other:?}"),
        }
    }

    fn feed(&mut self, from: SocketAddr, datagram: &[u8]) -> Outbox {
        let mut out = Outbox::new();
        let mut buf = vec![0u8; BUFFER_SIZE];
        self.engine
            .handle_datagram(0, from, datagram, Instant::now(), &mut buf, &mut out);
        out
    }

    fn session_change(&mut self, i: usize, new_key: Option<u8>) -> Outbox {
        let d = &mut self.devices[i];
        d.session.session_id = format!("model-session-{}", self.next_session);
        self.next_session += 1;
        if let Some(seed) = new_key {
            let public = PublicKey::from(&StaticSecret::from([seed; 32]));
            d.session.client_public_key = crate::wgkey::encode(public.as_bytes());
        }
        let mut out = Outbox::new();
        let applied = self.engine.apply_change(
            PeerChange::Upsert(d.session.clone()),
            Instant::now(),
            &mut out,
        );
        assert!(matches!(applied, Applied::NewSession(_)), "{applied:?}");
        out
    }

    /// Applies one operation and checks what the engine sent against the model.
    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Handshake(i) => {
                self.handshake(i)?;
                let m = &mut self.devices[i];
                m.has_session = true;
                m.live = true;
                m.engine_endpoint = Some(m.addr);
            }
            Op::ToPlatform(i) | Op::ToInternet(i) => {
                if !self.devices[i].has_session {
                    return Ok(());
                }
                let destination = if matches!(op, Op::ToPlatform(_)) {
                    PLATFORM
                } else {
                    INTERNET
                };
                let datagram = self.encapsulate(i, destination, b"up");
                let out = self.feed(self.devices[i].addr, &datagram);
                self.last_datagram = Some(datagram);
                let live = self.devices[i].live;
                let expected: Outbox = if live && self.egress_allowed(i, destination) {
                    vec![Outgoing::Tun(packet(
                        self.devices[i].ip,
                        destination,
                        b"up",
                    ))]
                } else {
                    Vec::new()
                };
                prop_assert_eq!(out, expected, "device {} to {}", i, destination);
                if live {
                    self.devices[i].engine_endpoint = Some(self.devices[i].addr);
                }
            }
            Op::ToDevice(i, j) => {
                let j = if i == j { (j + 1) % DEVICES } else { j };
                if !self.devices[i].has_session {
                    return Ok(());
                }
                let target_ip = self.devices[j].ip;
                let datagram = self.encapsulate(i, target_ip, b"peer");
                let out = self.feed(self.devices[i].addr, &datagram);
                self.last_datagram = Some(datagram);
                let live = self.devices[i].live;
                let forwarded = live && self.device_to_device_allowed(i, j);
                let sent = packet(self.devices[i].ip, target_ip, b"peer");
                self.check_delivery(j, out, forwarded.then_some(&sent[..]))?;
                if live {
                    self.devices[i].engine_endpoint = Some(self.devices[i].addr);
                }
            }
            Op::FromPlatform(i) => {
                let sent = packet(PLATFORM, self.devices[i].ip, b"down");
                let mut out = Outbox::new();
                let mut buf = vec![0u8; BUFFER_SIZE];
                self.engine
                    .handle_tun_packet(&sent, Instant::now(), &mut buf, &mut out);
                self.check_delivery(i, out, Some(&sent))?;
            }
            Op::Reset(i) => {
                let out = self.session_change(i, None);
                let d = &mut self.devices[i];
                d.live = false;
                match d.engine_endpoint {
                    Some(endpoint) => {
                        prop_assert_eq!(out.len(), 1, "reset re-initiates: {:?}", out);
                        let is_initiation = matches!(&out[0], Outgoing::Udp { to, data, .. }
                            if *to == endpoint && data.first() == Some(&1));
                        prop_assert!(is_initiation, "{:?}", out);
                    }
                    None => prop_assert!(out.is_empty(), "{:?}", out),
                }
            }
            Op::Renew(i) => {
                let seed = self.next_seed;
                self.next_seed = self.next_seed.wrapping_add(1).max(100);
                let out = self.session_change(i, Some(seed));
                prop_assert!(out.is_empty(), "a new key starts nothing: {:?}", out);
                let d = &mut self.devices[i];
                let old = std::mem::replace(&mut d.tunn, new_tunn(seed, u32::from(seed)));
                if d.has_session {
                    d.stale = Some(old);
                }
                d.has_session = false;
                d.live = false;
                d.engine_endpoint = None;
            }
            Op::StaleData(i) => {
                let d = &mut self.devices[i];
                let Some(stale) = d.stale.as_mut() else {
                    return Ok(());
                };
                let mut buf = vec![0u8; BUFFER_SIZE];
                let datagram = match stale.encapsulate(&packet(d.ip, PLATFORM, b"old"), &mut buf) {
                    TunnResult::WriteToNetwork(p) => p.to_vec(),
                    _ => return Ok(()),
                };
                let out = self.feed(self.devices[i].addr, &datagram);
                prop_assert!(out.is_empty(), "old key's packet passed: {:?}", out);
            }
            Op::Roam(i) => {
                self.next_port += 1;
                self.devices[i].addr.set_port(self.next_port);
            }
            Op::MoveSim(i, vpg) => {
                self.devices[i].session.vpg_id = vpg.map(|v| VPGS[v].into());

                let mut out = Outbox::new();
                let applied = self.engine.apply_change(
                    PeerChange::Upsert(self.devices[i].session.clone()),
                    Instant::now(),
                    &mut out,
                );
                prop_assert!(matches!(applied, Applied::Updated(_)), "{:?}", applied);
                prop_assert!(out.is_empty());
            }
            Op::SetVpg {
                vpg,
                running,
                device_to_device,
                internet_gateway,
            } => {
                self.vpgs[vpg] = ModelVpg {
                    running,
                    device_to_device,
                    internet_gateway,
                };
                self.push_vpgs();
            }
            Op::Garbage {
                truncate_to,
                flip_bit,
                ref random,
            } => {
                let datagram = match &self.last_datagram {
                    Some(valid) => {
                        let mut m = valid[..truncate_to.min(valid.len())].to_vec();
                        match flip_bit {
                            Some(bit) if !m.is_empty() => {
                                let at = (bit / 8) % m.len();
                                m[at] ^= 1 << (bit % 8);
                            }
                            // An unmodified whole copy is a replay, not garbage.
                            _ if m.len() == valid.len() => m.truncate(m.len() / 2),
                            _ => {}
                        }
                        m
                    }
                    None => random.clone(),
                };
                let out = self.feed(SocketAddr::from(ATTACKER), &datagram);
                prop_assert!(out.is_empty(), "garbage answered: {:?}", out);
            }
        }
        prop_assert_eq!(self.engine.peer_count(), DEVICES);
        // The services' caller lookup sees every device's current session.
        for d in &self.devices {
            let seen = self.engine.session_by_client_ip(d.ip);
            prop_assert_eq!(seen.as_ref(), Some(&d.session));
        }
        Ok(())
    }

    /// The device initiates, the engine answers, the device confirms with a keepalive. Unlike
    /// `connect`, packets the engine queued while the device had no session may come out too.
    fn handshake(&mut self, i: usize) -> Result<(), TestCaseError> {
        let mut buf = vec![0u8; BUFFER_SIZE];
        let addr = self.devices[i].addr;
        let init = match self.devices[i]
            .tunn
            .format_handshake_initiation(&mut buf, true)
        {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            other => panic!("no initiation: {other:?}"),
        };
        let mut out = self.feed(addr, &init);
        let answers = udp_payloads(&mut out, addr);
        prop_assert!(out.is_empty(), "only answers to the device: {:?}", out);
        prop_assert_eq!(
            answers.first().and_then(|a| a.first()),
            Some(&2),
            "a response"
        );
        let replies = answer(&mut self.devices[i].tunn, answers);
        for reply in replies {
            let out = self.feed(addr, &reply);
            prop_assert!(out.iter().all(|o| !matches!(o, Outgoing::Tun(_))));
        }
        let keepalive = match self.devices[i].tunn.encapsulate(&[], &mut buf) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            other => panic!("no keepalive: {other:?}"),
        };
        let out = self.feed(addr, &keepalive);
        prop_assert!(out.is_empty(), "a keepalive is not answered: {:?}", out);
        Ok(())
    }

    /// What the engine sent toward device `j`: `expected` decrypted there (when `j` is live and
    /// the engine knows its endpoint), at most handshake initiations otherwise; never the TUN.
    fn check_delivery(
        &mut self,
        j: usize,
        out: Outbox,
        expected: Option<&[u8]>,
    ) -> Result<(), TestCaseError> {
        let d = &mut self.devices[j];
        let mut datagrams = Vec::new();
        for o in out {
            match o {
                Outgoing::Udp { to, data, .. } => {
                    prop_assert_eq!(Some(to), d.engine_endpoint, "sent elsewhere");
                    datagrams.push(data);
                }
                Outgoing::Tun(p) => prop_assert!(false, "to the TUN: {:?}", p),
            }
        }
        let Some(expected) = expected.filter(|_| d.engine_endpoint.is_some()) else {
            prop_assert!(
                datagrams.is_empty(),
                "not allowed, yet sent: {:?}",
                datagrams
            );
            return Ok(());
        };
        if !d.live {
            let only_initiations = datagrams.iter().all(|p| p.first() == Some(&1));
            prop_assert!(only_initiations, "data to a device without a session");
            return Ok(());
        }
        prop_assert_eq!(datagrams.len(), 1);
        let mut buf = vec![0u8; BUFFER_SIZE];
        match d.tunn.decapsulate(None, &datagrams[0], &mut buf) {
            TunnResult::WriteToTunnelV4(p, _) => prop_assert_eq!(p, expected),
            other => prop_assert!(false, "device {} could not read it: {:?}", j, other),
        }
        Ok(())
    }
}

/// Feeds datagrams to a device's `Tunn`; returns what it answers (a handshake's keepalive).
fn answer(tunn: &mut Tunn, datagrams: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut replies = Vec::new();
    let mut buf = vec![0u8; BUFFER_SIZE];
    for datagram in datagrams {
        let mut result = tunn.decapsulate(None, &datagram, &mut buf);
        while let TunnResult::WriteToNetwork(p) = result {
            replies.push(p.to_vec());
            result = tunn.decapsulate(None, &[], &mut buf);
        }
    }
    replies
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_follows_the_reference_model(
        (device_vpgs, vpgs) in start(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let mut world = World::new(device_vpgs, vpgs);
        for op in &ops {
            world.step(op)?;
        }
    }
}
