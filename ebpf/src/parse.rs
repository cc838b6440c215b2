//! Packet parsing. Every helper follows one contract: it reads only inside
//! `[data, data_end)` and returns `Err(DropReason::Malformed)` (or a more
//! precise reason) instead of reading past the end.

use core::mem::size_of;

use hostwall_common::{CtKey, DropReason, FAMILY_V4, FAMILY_V6};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const SCTP_INIT: u8 = 1;

/// Longest IPv6 extension header chain parsed; longer chains are dropped.
const MAX_IPV6_EXT: usize = 8;
/// Furthest offset at which an L4 header may start.
pub const MAX_L4_OFFSET: usize = 512;
/// Furthest byte the parser reads: an ICMP error's quoted headers after
/// the longest chain (`quoted_flow`), rounded up.
pub const MAX_READ: usize = MAX_L4_OFFSET + 8 + 64 + 8 + 8;

/// Bounds-checked pointer to a `T` at `off` bytes into the packet.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, off: usize) -> Result<*const T, DropReason> {
    if data + off + size_of::<T>() > data_end {
        return Err(DropReason::Malformed);
    }
    Ok((data + off) as *const T)
}

#[inline(always)]
pub fn read<T: Copy>(data: usize, data_end: usize, off: usize) -> Result<T, DropReason> {
    let p = ptr_at::<T>(data, data_end, off)?;
    Ok(unsafe { p.read_unaligned() })
}

#[inline(always)]
fn be16(data: usize, data_end: usize, off: usize) -> Result<u16, DropReason> {
    Ok(u16::from_be_bytes(read::<[u8; 2]>(data, data_end, off)?))
}

/// Where a packet sits in a fragmented datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    None,
    /// Offset 0, more fragments follow: carries the L4 header.
    First,
    /// Any later fragment: no L4 header.
    Later,
}

/// The fields of an IP packet that judging needs.
#[derive(Clone, Copy)]
pub struct Packet {
    pub family: u8,
    pub proto: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order. For ICMP, `sport` is the echo identifier.
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tcp_flags: u8,
    /// The packet can only open a flow, never answer one: a TCP segment
    /// with SYN set and ACK clear (whatever else it carries), an SCTP
    /// packet whose first chunk is INIT.
    pub opens: bool,
    pub fragment: Fragment,
    pub frag_id: u32,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
}

impl Packet {
    /// The port a rule matches: the destination port, or for ICMP
    /// `type << 8 | code`.
    #[inline(always)]
    pub fn rule_port(&self) -> u16 {
        if self.proto == IPPROTO_ICMP || self.proto == IPPROTO_ICMPV6 {
            ((self.icmp_type as u16) << 8) | self.icmp_code as u16
        } else {
            self.dport
        }
    }
}

/// The EtherType of the frame; VLAN tags are returned as-is (and dropped by
/// callers that judge endpoints).
#[inline(always)]
pub fn ethertype(data: usize, data_end: usize) -> Result<u16, DropReason> {
    be16(data, data_end, 12)
}

/// ARP: the sender protocol address, for Ethernet/IPv4 ARP only.
#[inline(always)]
pub fn arp_sender_ip(data: usize, data_end: usize) -> Result<[u8; 4], DropReason> {
    let htype = be16(data, data_end, ETH_HLEN)?;
    let ptype = be16(data, data_end, ETH_HLEN + 2)?;
    let lens = read::<[u8; 2]>(data, data_end, ETH_HLEN + 4)?;
    if htype != 1 || ptype != ETH_P_IP || lens != [6, 4] {
        return Err(DropReason::ArpSpoofed);
    }
    read::<[u8; 4]>(data, data_end, ETH_HLEN + 14)
}

/// An IPv4 packet; its options are skipped (an endpoint's source routes
/// are looked for before judging: `source_routed` in main.rs).
#[inline(always)]
pub fn parse_ipv4(data: usize, data_end: usize) -> Result<Packet, DropReason> {
    let off = ETH_HLEN;
    let ver_ihl = read::<u8>(data, data_end, off)?;
    let ihl = (ver_ihl & 0x0f) as usize * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return Err(DropReason::Malformed);
    }
    // The whole header, options included, must be present.
    ptr_at::<[u8; 20]>(data, data_end, off)?;
    if data + off + ihl > data_end {
        return Err(DropReason::Malformed);
    }
    let frag_field = be16(data, data_end, off + 6)?;
    let id = be16(data, data_end, off + 4)? as u32;
    let proto = read::<u8>(data, data_end, off + 9)?;
    let mut pkt = Packet {
        family: FAMILY_V4,
        proto,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags: 0,
        opens: false,
        fragment: Fragment::None,
        frag_id: id,
        l4_off: off + ihl,
    };
    let src = read::<[u8; 4]>(data, data_end, off + 12)?;
    let dst = read::<[u8; 4]>(data, data_end, off + 16)?;
    pkt.src[..4].copy_from_slice(&src);
    pkt.dst[..4].copy_from_slice(&dst);
    let more = frag_field & 0x2000 != 0;
    let offset = frag_field & 0x1fff;
    if offset != 0 {
        pkt.fragment = Fragment::Later;
        return Ok(pkt);
    }
    if more {
        pkt.fragment = Fragment::First;
    }
    parse_l4(data, data_end, &mut pkt)?;
    Ok(pkt)
}

#[inline(always)]
pub fn is_ipv6_ext(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 51 | 60)
}

#[inline(always)]
pub fn parse_ipv6(data: usize, data_end: usize) -> Result<Packet, DropReason> {
    let off = ETH_HLEN;
    let ver = read::<u8>(data, data_end, off)?;
    if ver >> 4 != 6 {
        return Err(DropReason::Malformed);
    }
    let mut nh = read::<u8>(data, data_end, off + 6)?;
    let mut pkt = Packet {
        family: FAMILY_V6,
        proto: nh,
        src: read::<[u8; 16]>(data, data_end, off + 8)?,
        dst: read::<[u8; 16]>(data, data_end, off + 24)?,
        sport: 0,
        dport: 0,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags: 0,
        opens: false,
        fragment: Fragment::None,
        frag_id: 0,
        l4_off: off + 40,
    };
    let mut l4 = off + 40;
    for _ in 0..MAX_IPV6_EXT {
        if !is_ipv6_ext(nh) {
            break;
        }
        if l4 > MAX_L4_OFFSET {
            return Err(DropReason::Ipv6ExtensionChainTooLong);
        }
        let hdr = read::<[u8; 8]>(data, data_end, l4)?;
        let len = match nh {
            44 => {
                let field = u16::from_be_bytes([hdr[2], hdr[3]]);
                pkt.frag_id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                if field & 0xfff8 != 0 {
                    pkt.fragment = Fragment::Later;
                } else if field & 1 != 0 {
                    pkt.fragment = Fragment::First;
                }
                8
            }
            51 => (hdr[1] as usize + 2) * 4,
            _ => (hdr[1] as usize + 1) * 8,
        };
        nh = hdr[0];
        l4 += len;
        if pkt.fragment == Fragment::Later {
            pkt.proto = nh;
            pkt.l4_off = l4;
            return Ok(pkt);
        }
    }
    if is_ipv6_ext(nh) {
        return Err(DropReason::Ipv6ExtensionChainTooLong);
    }
    if l4 > MAX_L4_OFFSET {
        return Err(DropReason::Ipv6ExtensionChainTooLong);
    }
    pkt.proto = nh;
    pkt.l4_off = l4;
    parse_l4(data, data_end, &mut pkt)?;
    Ok(pkt)
}

#[inline(always)]
fn parse_l4(data: usize, data_end: usize, pkt: &mut Packet) -> Result<(), DropReason> {
    let off = pkt.l4_off;
    if off > MAX_L4_OFFSET {
        return Err(DropReason::Malformed);
    }
    match pkt.proto {
        IPPROTO_TCP => {
            let hdr = read::<[u8; 20]>(data, data_end, off)?;
            pkt.sport = u16::from_be_bytes([hdr[0], hdr[1]]);
            pkt.dport = u16::from_be_bytes([hdr[2], hdr[3]]);
            pkt.tcp_flags = hdr[13];
            pkt.opens = hdr[13] & (TCP_SYN | TCP_ACK) == TCP_SYN;
        }
        IPPROTO_UDP => {
            let hdr = read::<[u8; 8]>(data, data_end, off)?;
            pkt.sport = u16::from_be_bytes([hdr[0], hdr[1]]);
            pkt.dport = u16::from_be_bytes([hdr[2], hdr[3]]);
        }
        IPPROTO_SCTP => {
            let hdr = read::<[u8; 12]>(data, data_end, off)?;
            pkt.sport = u16::from_be_bytes([hdr[0], hdr[1]]);
            pkt.dport = u16::from_be_bytes([hdr[2], hdr[3]]);
            // The first chunk's type; a packet without chunks opens nothing.
            if let Ok(chunk) = read::<u8>(data, data_end, off + 12) {
                pkt.opens = chunk == SCTP_INIT;
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let hdr = read::<[u8; 8]>(data, data_end, off)?;
            pkt.icmp_type = hdr[0];
            pkt.icmp_code = hdr[1];
            pkt.sport = u16::from_be_bytes([hdr[4], hdr[5]]);
        }
        _ => {}
    }
    Ok(())
}

/// For an ICMP or ICMPv6 error, the conntrack key of the packet it quotes,
/// as that packet was sent. `None` when the quote cannot be parsed.
#[inline(always)]
pub fn quoted_flow(data: usize, data_end: usize, pkt: &Packet) -> Option<CtKey> {
    let off = pkt.l4_off + 8;
    if off > MAX_L4_OFFSET {
        return None;
    }
    let mut key = CtKey {
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        proto: 0,
        family: pkt.family,
        _pad: [0; 2],
    };
    let l4;
    if pkt.family == FAMILY_V4 {
        let hdr = read::<[u8; 20]>(data, data_end, off).ok()?;
        let ihl = (hdr[0] & 0x0f) as usize * 4;
        if hdr[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        key.proto = hdr[9];
        key.src[..4].copy_from_slice(&hdr[12..16]);
        key.dst[..4].copy_from_slice(&hdr[16..20]);
        l4 = off + ihl;
    } else {
        let hdr = read::<[u8; 40]>(data, data_end, off).ok()?;
        if hdr[0] >> 4 != 6 {
            return None;
        }
        key.proto = hdr[6];
        key.src.copy_from_slice(&hdr[8..24]);
        key.dst.copy_from_slice(&hdr[24..40]);
        l4 = off + 40;
    }
    if l4 > MAX_L4_OFFSET + 64 {
        return None;
    }
    let ports = read::<[u8; 8]>(data, data_end, l4).ok()?;
    match key.proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            key.sport = u16::from_be_bytes([ports[0], ports[1]]);
            key.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Only echo requests are tracked.
            if !is_echo_request(key.proto, ports[0]) {
                return None;
            }
            key.sport = u16::from_be_bytes([ports[4], ports[5]]);
            key.dport = ports[0] as u16;
        }
        _ => {}
    }
    Some(key)
}

#[inline(always)]
pub fn is_echo_request(proto: u8, ty: u8) -> bool {
    (proto == IPPROTO_ICMP && ty == 8) || (proto == IPPROTO_ICMPV6 && ty == 128)
}

#[inline(always)]
pub fn is_echo_reply(proto: u8, ty: u8) -> bool {
    (proto == IPPROTO_ICMP && ty == 0) || (proto == IPPROTO_ICMPV6 && ty == 129)
}

/// ICMP errors that quote a packet: destination unreachable, time exceeded,
/// parameter problem (and ICMPv6 packet too big).
#[inline(always)]
pub fn is_icmp_error(proto: u8, ty: u8) -> bool {
    (proto == IPPROTO_ICMP && matches!(ty, 3 | 11 | 12)) || (proto == IPPROTO_ICMPV6 && matches!(ty, 1..=4))
}

/// Neighbour discovery messages an endpoint may send: router solicitation,
/// neighbour solicitation and advertisement.
#[inline(always)]
pub fn is_nd(ty: u8) -> bool {
    matches!(ty, 133 | 135 | 136)
}

/// ICMPv6 types that neighbour discovery and MLD need.
#[inline(always)]
pub fn is_nd_or_mld(ty: u8) -> bool {
    matches!(ty, 130..=133 | 135 | 136 | 143)
}
