//! A WireGuard device in the test process: boringtun's `Tunn` over a loopback UDP socket, the same
//! noise code a real client runs, driven step by step.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use tokio::net::UdpSocket;

pub struct WgClient {
    pub private_key: String,
    pub tunn: Tunn,
    pub socket: UdpSocket,
    pub server: SocketAddr,
    buf: Vec<u8>,
}

fn key(text: &str) -> [u8; 32] {
    arcd::wgkey::parse_key(text).expect("valid base64 key")
}

impl WgClient {
    /// The device of `sim` (a createSim or getSim answer: its key and session) toward `server`,
    /// and the address it sends from.
    pub async fn for_sim(sim: &serde_json::Value, server: SocketAddr) -> (WgClient, Ipv4Addr) {
        let sim_id = sim["simId"].as_str().expect("simId");
        let private = sim["profiles"][sim_id]["arcClientPeerPrivateKey"]
            .as_str()
            .expect("the device's private key");
        let session = &sim["arcSessionStatus"];
        let ip: Ipv4Addr = session["arcClientPeerIpAddress"]
            .as_str()
            .expect("client address")
            .parse()
            .expect("IPv4 client address");
        let server_key = session["arcServerPeerPublicKey"]
            .as_str()
            .expect("server key");
        (WgClient::new(private, server_key, server).await, ip)
    }

    pub async fn new(private_key: &str, server_public_key: &str, server: SocketAddr) -> WgClient {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        let tunn = Tunn::new(
            StaticSecret::from(key(private_key)),
            PublicKey::from(key(server_public_key)),
            None,
            None,
            rand::random::<u32>() >> 8,
            None,
        );
        WgClient {
            private_key: private_key.to_string(),
            tunn,
            socket,
            server,
            buf: vec![0u8; 65_600],
        }
    }

    /// Encrypts `packet` (starting a handshake first if needed) and sends what results.
    pub async fn send(&mut self, packet: &[u8]) {
        let result = self.tunn.encapsulate(packet, &mut self.buf);
        if let TunnResult::WriteToNetwork(data) = result {
            self.socket.send_to(data, self.server).await.expect("send");
        }
    }

    /// Sends a raw datagram (garbage, replays) as this client.
    pub async fn send_raw(&self, datagram: &[u8]) {
        self.socket
            .send_to(datagram, self.server)
            .await
            .expect("send");
    }

    /// Processes datagrams until a decrypted IP packet arrives or `wait` passes. Handshake
    /// messages are answered along the way, as a real device would.
    pub async fn recv(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut datagram = vec![0u8; 65_600];
        loop {
            let (len, from) =
                tokio::time::timeout_at(deadline, self.socket.recv_from(&mut datagram))
                    .await
                    .ok()?
                    .expect("recv");
            let mut result =
                self.tunn
                    .decapsulate(Some(from.ip()), &datagram[..len], &mut self.buf);
            loop {
                match result {
                    TunnResult::WriteToNetwork(data) => {
                        self.socket.send_to(data, self.server).await.expect("send");
                        result = self.tunn.decapsulate(None, &[], &mut self.buf);
                    }
                    TunnResult::WriteToTunnelV4(packet, _) => return Some(packet.to_vec()),
                    _ => break,
                }
            }
        }
    }

    /// Runs the handshake (with the first packet queued behind it) and waits for the session.
    pub async fn connect(&mut self, first_packet: &[u8], wait: Duration) -> bool {
        self.send(first_packet).await;
        let deadline = tokio::time::Instant::now() + wait;
        let mut datagram = vec![0u8; 65_600];
        while tokio::time::Instant::now() < deadline {
            let Ok(Ok((len, from))) =
                tokio::time::timeout_at(deadline, self.socket.recv_from(&mut datagram)).await
            else {
                return false;
            };
            let cookie_reply = len == 64 && datagram[0] == 3;
            let mut result =
                self.tunn
                    .decapsulate(Some(from.ip()), &datagram[..len], &mut self.buf);
            if cookie_reply {
                // The server is under load: retry at once with the cookie (mac2), as a real
                // client does on its next attempt.
                if let TunnResult::WriteToNetwork(init) =
                    self.tunn.format_handshake_initiation(&mut self.buf, true)
                {
                    self.socket.send_to(init, self.server).await.expect("send");
                }
                continue;
            }
            let mut established = false;
            while let TunnResult::WriteToNetwork(data) = result {
                established = true;
                self.socket.send_to(data, self.server).await.expect("send");
                result = self.tunn.decapsulate(None, &[], &mut self.buf);
            }
            if established || self.tunn.time_since_last_handshake().is_some() {
                return true;
            }
        }
        false
    }
}

/// A minimal IPv4/UDP packet with a valid header checksum.
pub fn udp_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let checksum = ipv4_checksum(&p[..20]);
    p[10..12].copy_from_slice(&checksum.to_be_bytes());
    p[20..22].copy_from_slice(&src_port.to_be_bytes());
    p[22..24].copy_from_slice(&dst_port.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn source_of(packet: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15])
}

pub fn destination_of(packet: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19])
}

pub fn payload_of(packet: &[u8]) -> &[u8] {
    &packet[28..]
}
