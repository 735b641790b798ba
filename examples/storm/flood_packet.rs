//! The inner packets of a flood (flood.rs): IPv4/UDP packets that carry `MAGIC`, their device's
//! number, their sequence number and a payload derived from both, with valid checksums, so that
//! what comes out of the server's TUN can be checked packet by packet.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::fleet::checksum;

/// Marks a flood packet's payload.
pub const MAGIC: [u8; 4] = *b"FLD1";
pub const IP_HEADER: usize = 20;
pub const UDP_HEADER: usize = 8;
/// MAGIC, device number, sequence number.
pub const TAG: usize = 12;

/// An IPv4/UDP packet of `len` bytes from `source` to `target`, for device `index`; its
/// sequence number is set by `set_sequence`.
pub fn flood_packet(
    source: Ipv4Addr,
    target: SocketAddrV4,
    len: usize,
    index: usize,
    seq: u32,
) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&source.octets());
    p[16..20].copy_from_slice(&target.ip().octets());
    let source_port = 10_000 + (index % 50_000) as u16;
    p[20..22].copy_from_slice(&source_port.to_be_bytes());
    p[22..24].copy_from_slice(&target.port().to_be_bytes());
    p[24..26].copy_from_slice(&((len - IP_HEADER) as u16).to_be_bytes());
    let payload = IP_HEADER + UDP_HEADER;
    p[payload..payload + 4].copy_from_slice(&MAGIC);
    p[payload + 4..payload + 8].copy_from_slice(&(index as u32).to_be_bytes());
    set_sequence(&mut p, seq);
    p
}

/// Writes the sequence number, the payload bytes derived from it, the IP identification and
/// both checksums.
pub fn set_sequence(p: &mut [u8], seq: u32) {
    let payload = IP_HEADER + UDP_HEADER;
    p[payload + 8..payload + TAG].copy_from_slice(&seq.to_be_bytes());
    let fill = filler(p, seq);
    for (i, byte) in p[payload + TAG..].iter_mut().enumerate() {
        *byte = fill.wrapping_add(i as u8);
    }
    p[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    p[10..12].fill(0);
    let header = checksum(&p[..IP_HEADER]);
    p[10..12].copy_from_slice(&header.to_be_bytes());
    p[26..28].fill(0);
    let udp = udp_checksum(p);
    p[26..28].copy_from_slice(&udp.to_be_bytes());
}

/// The first payload byte after the tag: device number and sequence number mixed.
fn filler(p: &[u8], seq: u32) -> u8 {
    let payload = IP_HEADER + UDP_HEADER;
    let index = u32::from_be_bytes([
        p[payload + 4],
        p[payload + 5],
        p[payload + 6],
        p[payload + 7],
    ]);
    (index.wrapping_mul(31) ^ seq) as u8
}

fn udp_checksum(p: &[u8]) -> u16 {
    let udp_len = p.len() - IP_HEADER;
    let mut pseudo = Vec::with_capacity(12 + udp_len);
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[IP_HEADER..]);
    match checksum(&pseudo) {
        0 => 0xffff, // 0 means "no checksum" in UDP over IPv4
        sum => sum,
    }
}

#[allow(dead_code)] // for tests/storm_flood.rs
/// The device number and sequence number of an intact flood packet of `len` bytes to `target`:
/// `None` for anything else, or a flood packet whose payload or checksums do not match.
pub fn parse_flood_packet(p: &[u8], target: SocketAddrV4, len: usize) -> Option<(u32, u32)> {
    let payload = IP_HEADER + UDP_HEADER;
    if p.len() != len || p[0] != 0x45 || p[9] != 17 || p[16..20] != target.ip().octets() {
        return None;
    }
    if p[payload..payload + 4] != MAGIC || p[22..24] != target.port().to_be_bytes() {
        return None;
    }
    let index = u32::from_be_bytes(p[payload + 4..payload + 8].try_into().ok()?);
    let seq = u32::from_be_bytes(p[payload + 8..payload + TAG].try_into().ok()?);
    let source = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let expected = flood_packet(source, target, len, index as usize, seq);
    (expected == p).then_some((index, seq))
}
