//! A small frame builder: Ethernet, IPv4/IPv6, TCP/UDP/SCTP/ICMP and any
//! other protocol number. Checksums are left zero (the programs never
//! verify them) unless `fill_checksums` fills them in, for frames a real
//! stack is to take.

use std::net::IpAddr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const SCTP: u8 = 132;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const URG: u8 = 0x20;

/// SCTP chunk types.
pub const SCTP_INIT: u8 = 1;
pub const SCTP_INIT_ACK: u8 = 2;
pub const SCTP_DATA: u8 = 0;

#[derive(Clone, Debug)]
pub struct Frame(pub Vec<u8>);

/// The Ethernet source of every frame built here (and the sender hardware
/// address of its ARP, the link-layer address of its neighbour discovery).
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// What follows the IP header.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Sctp {
        sport: u16,
        dport: u16,
    },
    /// type, code, the 4 bytes after the checksum, then a payload.
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
        payload: Vec<u8>,
    },
    /// Protocol 253 (reserved for experiments) with these bytes.
    Raw(Vec<u8>),
    /// Any protocol number with these bytes: ICMP in an IPv6 packet, an
    /// unknown protocol, a header written by hand.
    Proto(u8, Vec<u8>),
}

impl L4 {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            L4::Tcp { sport, dport, flags } => {
                let mut h = Vec::with_capacity(20);
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, *flags, 0xff, 0xff, 0, 0, 0, 0]);
                h
            }
            L4::Udp { sport, dport } => {
                let mut h = Vec::with_capacity(8);
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&[0, 8, 0, 0]);
                h
            }
            L4::Sctp { sport, dport } => {
                // Common header: ports, verification tag, checksum.
                let mut h = Vec::with_capacity(12);
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
                h
            }
            L4::Icmp {
                ty,
                code,
                rest,
                payload,
            } => {
                let mut h = vec![*ty, *code, 0, 0];
                h.extend_from_slice(rest);
                h.extend_from_slice(payload);
                h
            }
            L4::Raw(b) | L4::Proto(_, b) => b.clone(),
        }
    }
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp { sport, dport, flags }
}

pub fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

pub fn sctp(sport: u16, dport: u16) -> L4 {
    L4::Sctp { sport, dport }
}

/// An SCTP packet whose first (and only) chunk is of type `chunk`, with
/// no chunk value.
pub fn sctp_chunk(sport: u16, dport: u16, chunk: u8) -> L4 {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    h.extend_from_slice(&[chunk, 0, 0, 4]);
    L4::Proto(SCTP, h)
}

/// The 8 bytes of an ICMP or ICMPv6 header without a payload, to put in a
/// packet of any protocol number.
pub fn icmp_header(ty: u8, code: u8, id: u16) -> Vec<u8> {
    let mut h = vec![ty, code, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h
}

pub fn echo_request(v6: bool, id: u16) -> L4 {
    let ty = if v6 { 128 } else { 8 };
    L4::Icmp {
        ty,
        code: 0,
        rest: [(id >> 8) as u8, id as u8, 0, 1],
        payload: vec![],
    }
}

pub fn echo_reply(v6: bool, id: u16) -> L4 {
    let ty = if v6 { 129 } else { 0 };
    L4::Icmp {
        ty,
        code: 0,
        rest: [(id >> 8) as u8, id as u8, 0, 1],
        payload: vec![],
    }
}

pub fn icmp(ty: u8, code: u8, rest: [u8; 4], payload: Vec<u8>) -> L4 {
    L4::Icmp {
        ty,
        code,
        rest,
        payload,
    }
}

fn proto_of(l4: &L4, v6: bool) -> u8 {
    match l4 {
        L4::Tcp { .. } => TCP,
        L4::Udp { .. } => UDP,
        L4::Sctp { .. } => SCTP,
        L4::Icmp { .. } => {
            if v6 {
                ICMPV6
            } else {
                ICMP
            }
        }
        L4::Raw(_) => 253,
        L4::Proto(p, _) => *p,
    }
}

/// The IP packet (no Ethernet header) of `src -> dst` carrying `l4`.
pub fn ip_packet(src: &str, dst: &str, l4: &L4) -> Vec<u8> {
    ip_packet_of(src.parse().unwrap(), dst.parse().unwrap(), l4)
}

/// [`ip_packet`] with parsed addresses.
pub fn ip_packet_of(src: IpAddr, dst: IpAddr, l4: &L4) -> Vec<u8> {
    let body = l4.bytes();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = ipv4_header(proto_of(l4, false), (20 + body.len()) as u16, 0x1234, 0);
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            h.extend_from_slice(&body);
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = ipv6_header(proto_of(l4, true), body.len() as u16);
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            h.extend_from_slice(&body);
            h
        }
        _ => panic!("mixed address families"),
    }
}

fn ipv4_header(proto: u8, total: u16, id: u16, frag: u16) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&[0; 8]);
    h
}

fn ipv6_header(next: u8, payload: u16) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&payload.to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&[0; 32]);
    h
}

/// An Ethernet frame of `src -> dst` carrying `l4`.
pub fn frame(src: &str, dst: &str, l4: L4) -> Frame {
    frame_of(src.parse().unwrap(), dst.parse().unwrap(), &l4)
}

/// [`frame`] with parsed addresses.
pub fn frame_of(src: IpAddr, dst: IpAddr, l4: &L4) -> Frame {
    let mut f = eth(if src.is_ipv6() { 0x86dd } else { 0x0800 });
    f.extend_from_slice(&ip_packet_of(src, dst, l4));
    Frame(f)
}

/// An IPv4 fragment: `offset8` in 8-byte units, `more` = MF flag.
pub fn frame_v4_fragment(src: &str, dst: &str, id: u16, offset8: u16, more: bool, body: Vec<u8>, proto: u8) -> Frame {
    let (s, d): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    let frag = offset8 | if more { 0x2000 } else { 0 };
    let mut h = ipv4_header(proto, (20 + body.len()) as u16, id, frag);
    h[12..16].copy_from_slice(&s.octets());
    h[16..20].copy_from_slice(&d.octets());
    h.extend_from_slice(&body);
    let mut f = eth(0x0800);
    f.extend_from_slice(&h);
    Frame(f)
}

/// An IPv4 packet with `options` (a multiple of 4 bytes) in its header.
pub fn frame_v4_options(src: &str, dst: &str, options: &[u8], l4: L4) -> Frame {
    let mut f = frame(src, dst, l4);
    let ihl = 5 + options.len() / 4;
    f.0[14] = 0x40 | ihl as u8;
    let at = 14 + 20;
    f.0.splice(at..at, options.iter().copied());
    Frame(f.0)
}

/// An IPv6 packet with a chain of extension headers before `l4`; each
/// entry is (header type, header bytes after next-header/length).
pub fn frame_v6_ext(src: &str, dst: &str, chain: &[u8], l4: L4) -> Frame {
    let v6 = true;
    let l4_proto = proto_of(&l4, v6);
    let mut ext = Vec::new();
    for (i, ty) in chain.iter().enumerate() {
        let next = chain.get(i + 1).copied().unwrap_or(l4_proto);
        match ty {
            // Fragment header: offset 0, M=1 when it is a first fragment.
            44 => ext.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 7]),
            _ => ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
        }
    }
    let body = l4.bytes();
    let first = chain.first().copied().unwrap_or(l4_proto);
    let mut h = ipv6_header(first, (ext.len() + body.len()) as u16);
    let (s, d): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    h[8..24].copy_from_slice(&s.octets());
    h[24..40].copy_from_slice(&d.octets());
    h.extend_from_slice(&ext);
    h.extend_from_slice(&body);
    let mut f = eth(0x86dd);
    f.extend_from_slice(&h);
    Frame(f)
}

/// An IPv6 packet with a chain of extension headers of chosen sizes
/// before `l4`: (header type, bytes). A fragment header (44) is always 8
/// bytes with offset 0 and M clear; AH (51) counts its length in 4-byte
/// units, the others in 8-byte units.
pub fn frame_v6_chain(src: &str, dst: &str, chain: &[(u8, usize)], l4: L4) -> Frame {
    let l4_proto = proto_of(&l4, true);
    let mut ext = Vec::new();
    for (i, (ty, bytes)) in chain.iter().enumerate() {
        let next = chain.get(i + 1).map(|c| c.0).unwrap_or(l4_proto);
        let (len_field, bytes) = match ty {
            44 => (0, 8),
            51 => (bytes / 4 - 2, *bytes),
            _ => (bytes / 8 - 1, *bytes),
        };
        // The rest is Pad1 options (zero bytes); a routing header is of
        // type 2 (Mobile IPv6), with no segments left.
        let mut h = vec![next, len_field as u8];
        h.resize(bytes, 0);
        if *ty == 43 {
            h[2] = 2;
        }
        ext.extend_from_slice(&h);
    }
    let body = l4.bytes();
    let first = chain.first().map(|c| c.0).unwrap_or(l4_proto);
    let mut h = ipv6_header(first, (ext.len() + body.len()) as u16);
    let (s, d): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    h[8..24].copy_from_slice(&s.octets());
    h[24..40].copy_from_slice(&d.octets());
    h.extend_from_slice(&ext);
    h.extend_from_slice(&body);
    let mut f = eth(0x86dd);
    f.extend_from_slice(&h);
    Frame(f)
}

/// An IPv6 fragment: fragment header with `offset8` and M flag, then `body`.
pub fn frame_v6_fragment(src: &str, dst: &str, id: u32, offset8: u16, more: bool, next: u8, body: Vec<u8>) -> Frame {
    let field = (offset8 << 3) | more as u16;
    let mut ext = vec![next, 0];
    ext.extend_from_slice(&field.to_be_bytes());
    ext.extend_from_slice(&id.to_be_bytes());
    let mut h = ipv6_header(44, (ext.len() + body.len()) as u16);
    let (s, d): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    h[8..24].copy_from_slice(&s.octets());
    h[24..40].copy_from_slice(&d.octets());
    h.extend_from_slice(&ext);
    h.extend_from_slice(&body);
    let mut f = eth(0x86dd);
    f.extend_from_slice(&h);
    Frame(f)
}

/// An ARP request claiming `sender` (spa) and asking for `target`.
pub fn arp(sender: &str, target: &str) -> Frame {
    let (s, t): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (sender.parse().unwrap(), target.parse().unwrap());
    let mut f = eth(0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&s.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&t.octets());
    Frame(f)
}

/// A frame with an 802.1Q tag in front of an IPv4 packet.
pub fn vlan(inner: Frame) -> Frame {
    tagged(0x8100, inner)
}

/// A frame with a VLAN tag of this TPID (0x8100 802.1Q, 0x88a8 802.1ad).
pub fn tagged(tpid: u16, inner: Frame) -> Frame {
    let mut f = inner.0[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&[0x00, 0x05]);
    f.extend_from_slice(&inner.0[12..]);
    Frame(f)
}

/// A UDP header whose length field says `len` (8 for an empty datagram,
/// 0 for what a jumbogram or a broken stack sends).
pub fn udp_with_length(sport: u16, dport: u16, len: u16) -> L4 {
    let mut h = Vec::with_capacity(8);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    L4::Proto(UDP, h)
}

/// A neighbour solicitation (135) or advertisement (136) for `target`, as
/// a host sends it: hop limit 255, and its source (solicitation; none from
/// `::`) or target (advertisement) link-layer address, [`SRC_MAC`].
pub fn nd(src: &str, dst: &str, ty: u8, target: &str) -> Frame {
    let mut options = Vec::new();
    if ty == 136 || src != "::" {
        options.extend_from_slice(&[if ty == 136 { 2 } else { 1 }, 1]);
        options.extend_from_slice(&SRC_MAC);
    }
    nd_with(src, dst, ty, target, 255, &options)
}

/// A neighbour solicitation or advertisement with this hop limit and these
/// option bytes after the target.
pub fn nd_with(src: &str, dst: &str, ty: u8, target: &str, hop_limit: u8, options: &[u8]) -> Frame {
    let t: std::net::Ipv6Addr = target.parse().unwrap();
    let flags = if ty == 136 { [0x60, 0, 0, 0] } else { [0; 4] };
    let mut body = t.octets().to_vec();
    body.extend_from_slice(options);
    ipv6_icmp_frame(src, dst, hop_limit, false, &icmp(ty, 0, flags, body))
}

/// A router solicitation from `src` with its source link-layer address.
pub fn rs(src: &str) -> Frame {
    let mut options = vec![1, 1];
    options.extend_from_slice(&SRC_MAC);
    ipv6_icmp_frame(src, "ff02::2", 255, false, &icmp(133, 0, [0; 4], options))
}

/// An MLD message of type `ty` as hosts send it (hop limit 1, a hop-by-hop
/// header with a Router Alert): `rest` is the 4 bytes after the checksum,
/// `body` what follows them.
pub fn mld(src: &str, dst: &str, ty: u8, rest: [u8; 4], body: Vec<u8>) -> Frame {
    ipv6_icmp_frame(src, dst, 1, true, &icmp(ty, 0, rest, body))
}

/// An MLDv2 report (143) to ff02::16 joining `groups`.
pub fn mld_v2_report(src: &str, groups: &[&str]) -> Frame {
    let mut body = Vec::new();
    for g in groups {
        let g: std::net::Ipv6Addr = g.parse().unwrap();
        // Change to exclude mode (4): no sources, no auxiliary data.
        body.extend_from_slice(&[4, 0, 0, 0]);
        body.extend_from_slice(&g.octets());
    }
    mld(src, "ff02::16", 143, [0, 0, 0, groups.len() as u8], body)
}

/// An IPv6 frame carrying ICMPv6 `l4` with this hop limit, after a
/// hop-by-hop header holding a Router Alert when `alert`.
pub fn ipv6_icmp_frame(src: &str, dst: &str, hop_limit: u8, alert: bool, l4: &L4) -> Frame {
    let body = l4.bytes();
    let hbh: Vec<u8> = if alert {
        vec![ICMPV6, 0, 5, 2, 0, 0, 1, 0]
    } else {
        vec![]
    };
    let mut h = ipv6_header(if alert { 0 } else { ICMPV6 }, (hbh.len() + body.len()) as u16);
    h[7] = hop_limit;
    let (s, d): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    h[8..24].copy_from_slice(&s.octets());
    h[24..40].copy_from_slice(&d.octets());
    h.extend_from_slice(&hbh);
    h.extend_from_slice(&body);
    let mut f = eth(0x86dd);
    f.extend_from_slice(&h);
    Frame(f)
}

/// `frame` with another Ethernet source.
pub fn with_src_mac(mut frame: Frame, mac: [u8; 6]) -> Frame {
    frame.0[6..12].copy_from_slice(&mac);
    frame
}

/// `frame` with another Ethernet destination.
pub fn with_dst_mac(mut frame: Frame, mac: [u8; 6]) -> Frame {
    frame.0[0..6].copy_from_slice(&mac);
    frame
}

/// The IPv4 header checksum and the transport checksum (with the
/// pseudo-header, except for ICMP) of an IP packet `p` without extension
/// headers.
pub fn fill_checksums(p: &mut [u8]) {
    let (l4_off, proto) = if p[0] >> 4 == 4 {
        ((p[0] & 0x0f) as usize * 4, p[9])
    } else {
        (40, p[6])
    };
    fill_checksums_at(p, l4_off, proto);
}

/// [`fill_checksums`] for an IP packet whose transport header of protocol
/// `proto` starts at `l4_off` (after IPv6 extension headers).
pub fn fill_checksums_at(p: &mut [u8], l4_off: usize, proto: u8) {
    let pseudo = if p[0] >> 4 == 4 {
        let ihl = (p[0] & 0x0f) as usize * 4;
        p[10..12].fill(0);
        let sum = checksum(&[&p[..ihl]]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut pseudo = p[12..20].to_vec();
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&((p.len() - l4_off) as u16).to_be_bytes());
        pseudo
    } else {
        let mut pseudo = p[8..40].to_vec();
        pseudo.extend_from_slice(&((p.len() - l4_off) as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
        pseudo
    };
    let at = match proto {
        TCP => 16,
        UDP => 6,
        ICMP | ICMPV6 => 2,
        _ => return,
    };
    let l4 = &mut p[l4_off..];
    if l4.len() < at + 2 {
        return;
    }
    l4[at..at + 2].fill(0);
    let mut sum = if proto == ICMP {
        checksum(&[l4])
    } else {
        checksum(&[&pseudo, l4])
    };
    if proto == UDP && sum == 0 {
        sum = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// The Internet checksum of the parts, one after the other (each part but
/// the last of even length).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += word as u32;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
