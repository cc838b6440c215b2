//! Generated policies and packets.
//!
//! A case is generated as a spec of plain values and indices, then
//! resolved against itself: a packet names "the second address of the
//! third endpoint" or "one past the last port of rule 5", and resolving
//! takes every index modulo what the policy has. Policies and packets are
//! thus generated independently, and proptest shrinks both.
//!
//! Addresses come from small spaces (10.0-1.0-3.x, fd00:0-1:0-3::x, and
//! now and then anywhere) so that endpoints, CIDRs of every prefix length
//! and packets overlap. Half the packets are aimed at a rule: sent by a
//! member of the rule's group to an address its peer names, at a port on
//! the boundary of its range, so that a good share is allowed and range
//! and prefix boundaries are hit.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use hostwall::policy::{
    ConntrackTimeouts, Direction, Endpoint, Group, IcmpMatch, Peer, Policy, PortRange, Proto, Rule, Settings,
    parse_str, to_yaml,
};
use hostwall_tests::frames::{self, Frame, L4};
use hostwall_tests::testrun::{HOST_STACK, Hook, NODE};

/// The Ethernet source of a frame with `foreign_mac`: no endpoint's.
pub const FOREIGN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
use ipnet::IpNet;
use proptest::collection::vec;
use proptest::prelude::*;

/// Interface names of the fixture's pool; local endpoints use them.
pub const POOL: [&str; 4] = ["hwd0", "hwd1", "hwd2", "hwd3"];

pub const SYN: u8 = frames::SYN;
pub const ACK: u8 = frames::ACK;
pub const FIN: u8 = frames::FIN;
pub const RST: u8 = frames::RST;

// ---------------------------------------------------------------------------
// Resolved cases.

/// Where a generated packet is run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum At {
    /// From the endpoint behind this interface.
    From(String),
    /// To the endpoint behind this interface, from the host's own stack.
    To(String),
    /// To the endpoint behind the first interface, having entered the host
    /// by the second: another endpoint's interface, `PORT_IFACE` (a bridge
    /// port that is no endpoint) or `UPLINK_IFACE`.
    ToVia(String, String),
    Uplink,
}

impl At {
    pub fn hook(&self) -> Hook<'_> {
        match self {
            At::From(i) => Hook::From(i),
            At::To(i) => Hook::ToVia(i, HOST_STACK),
            At::ToVia(i, via) => Hook::ToVia(i, via),
            At::Uplink => Hook::Uplink,
        }
    }

    /// The interface of the endpoint that receives here.
    pub fn receiver(&self) -> Option<&str> {
        match self {
            At::To(i) | At::ToVia(i, _) => Some(i),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// SCTP: the common header, and a first chunk of that type if any.
    Sctp {
        sport: u16,
        dport: u16,
        chunk: Option<u8>,
    },
    /// ICMP or ICMPv6 (by `proto`, whatever the IP family).
    Icmp {
        proto: u8,
        ty: u8,
        code: u8,
        id: u16,
    },
    /// Any other protocol: a few bytes of payload, no ports.
    Other {
        proto: u8,
    },
    /// IPv6 neighbour discovery as hosts send it: a neighbour
    /// advertisement (136) claiming `target` with the sender's link-layer
    /// address, or a router advertisement (134).
    Nd {
        ty: u8,
        target: [u8; 16],
    },
}

impl Transport {
    pub fn proto(&self) -> u8 {
        match self {
            Transport::Tcp { .. } => 6,
            Transport::Udp { .. } => 17,
            Transport::Sctp { .. } => 132,
            Transport::Icmp { proto, .. } | Transport::Other { proto } => *proto,
            Transport::Nd { .. } => 58,
        }
    }

    /// The destination port rules see (0 where there is none).
    pub fn dport(&self) -> u16 {
        match self {
            Transport::Tcp { dport, .. } | Transport::Udp { dport, .. } | Transport::Sctp { dport, .. } => *dport,
            _ => 0,
        }
    }
}

impl Transport {
    /// The frame builder's form.
    pub fn l4(&self) -> L4 {
        match *self {
            Transport::Tcp { sport, dport, flags } => frames::tcp(sport, dport, flags),
            Transport::Udp { sport, dport } => frames::udp(sport, dport),
            Transport::Sctp {
                sport,
                dport,
                chunk: None,
            } => frames::sctp(sport, dport),
            Transport::Sctp {
                sport,
                dport,
                chunk: Some(c),
            } => frames::sctp_chunk(sport, dport, c),
            Transport::Icmp { proto, ty, code, id } => L4::Proto(proto, frames::icmp_header(ty, code, id)),
            Transport::Other { proto } => L4::Proto(proto, vec![0; 8]),
            Transport::Nd { ty, .. } => frames::icmp(ty, 0, [0; 4], vec![0; 8]),
        }
    }
}

/// Where a packet sits in a fragmented datagram (with its IP id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Frag {
    #[default]
    Whole,
    /// Offset 0, more fragments follow: carries the L4 header.
    First(u16),
    /// Offset 8, the last: no L4 header.
    Later(u16),
}

/// The packet an ICMP error quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: Transport,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub at: At,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// For an ICMP error, its type and code (the quote follows).
    pub l4: Transport,
    /// Generated to match a rule (for the coverage report).
    pub aimed: bool,
    pub frag: Frag,
    /// What an ICMP error quotes.
    pub quote: Option<Quote>,
    /// The frame carries an Ethernet source that is not its sender's.
    pub foreign_mac: bool,
}

impl Packet {
    pub fn frame(&self) -> Frame {
        let l4 = match (self.l4, self.quote) {
            (Transport::Icmp { proto, ty, code, .. }, Some(q)) => {
                let quoted = frames::ip_packet_of(q.src, q.dst, &q.l4.l4());
                let mut h = vec![ty, code, 0, 0, 0, 0, 0, 0];
                h.extend_from_slice(&quoted);
                L4::Proto(proto, h)
            }
            (l4, _) => l4.l4(),
        };
        let frame = match (self.l4, self.frag) {
            (Transport::Nd { ty: 136, target }, _) => frames::nd(
                &self.src.to_string(),
                &self.dst.to_string(),
                136,
                &Ipv6Addr::from(target).to_string(),
            ),
            (_, Frag::Whole) => frames::frame_of(self.src, self.dst, &l4),
            (_, Frag::First(id) | Frag::Later(id)) => {
                let (body, offset8, more) = match self.frag {
                    Frag::First(_) => (l4.bytes(), 0, true),
                    _ => (vec![0; 8], 1, false),
                };
                let proto = self.l4.proto();
                let (src, dst) = (self.src.to_string(), self.dst.to_string());
                if self.src.is_ipv6() {
                    frames::frame_v6_fragment(&src, &dst, id as u32, offset8, more, proto, body)
                } else {
                    frames::frame_v4_fragment(&src, &dst, id, offset8, more, body, proto)
                }
            }
        };
        if self.foreign_mac {
            frames::with_src_mac(frame, FOREIGN_MAC)
        } else {
            frame
        }
    }

    /// The packet as Rust source, for a regression test
    /// (`regressions.rs`).
    pub fn source(&self) -> String {
        let at = match &self.at {
            At::From(i) => format!("At::From({i:?}.into())"),
            At::To(i) => format!("At::To({i:?}.into())"),
            At::ToVia(i, via) => format!("At::ToVia({i:?}.into(), {via:?}.into())"),
            At::Uplink => "At::Uplink".to_string(),
        };
        let l4 = match self.l4 {
            Transport::Tcp { sport, dport, flags } => {
                format!("Transport::Tcp {{ sport: {sport}, dport: {dport}, flags: {flags:#04x} }}")
            }
            Transport::Udp { sport, dport } => format!("Transport::Udp {{ sport: {sport}, dport: {dport} }}"),
            Transport::Sctp { sport, dport, chunk } => {
                format!("Transport::Sctp {{ sport: {sport}, dport: {dport}, chunk: {chunk:?} }}")
            }
            Transport::Icmp { proto, ty, code, id } => {
                format!("Transport::Icmp {{ proto: {proto}, ty: {ty}, code: {code}, id: {id} }}")
            }
            Transport::Other { proto } => format!("Transport::Other {{ proto: {proto} }}"),
            Transport::Nd { ty, target } => format!("Transport::Nd {{ ty: {ty}, target: {target:?} }}"),
        };
        format!(
            "pkt({at}, {:?}, {:?}, {l4})",
            self.src.to_string(),
            self.dst.to_string()
        )
    }
}

#[derive(Clone, Debug)]
pub struct Case {
    pub policy: Policy,
    pub host: Vec<IpAddr>,
    pub packets: Vec<Packet>,
}

impl Case {
    /// The case as the body of a regression test.
    pub fn source(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "agree(\n    r#\"\n{}\"#,", to_yaml(&self.policy));
        let host: Vec<String> = self.host.iter().map(|a| format!("{:?}", a.to_string())).collect();
        let _ = writeln!(out, "    &[{}],", host.join(", "));
        out.push_str("    &[\n");
        for p in &self.packets {
            let _ = writeln!(out, "        {},", p.source());
        }
        out.push_str("    ],\n);\n");
        out
    }
}

// ---------------------------------------------------------------------------
// Specs.

#[derive(Clone, Debug)]
pub struct CaseSpec {
    groups: usize,
    prefix_lists: Vec<Vec<CidrSpec>>,
    rules: Vec<(usize, bool, RuleSpec)>,
    endpoints: Vec<EndpointSpec>,
    host: Vec<IpAddr>,
    timeouts: Option<TimeoutSpec>,
    packets: Vec<PacketSpec>,
}

#[derive(Clone, Debug)]
struct CidrSpec {
    anchor: AnchorSpec,
    len: u8,
}

#[derive(Clone, Debug)]
enum AnchorSpec {
    Endpoint(usize, usize),
    Host(usize),
    Addr(IpAddr),
}

#[derive(Clone, Debug)]
struct RuleSpec {
    proto: Proto,
    ports: Option<(u16, u16)>,
    icmp: Option<(u8, Option<u8>)>,
    peers: Vec<PeerSpec>,
}

#[derive(Clone, Debug)]
enum PeerSpec {
    Group(usize),
    Cidr(CidrSpec),
    PrefixList(usize),
    Host,
}

#[derive(Clone, Debug)]
struct EndpointSpec {
    kind: EndpointKind,
    addresses: Vec<IpAddr>,
    groups: Vec<usize>,
}

#[derive(Clone, Copy, Debug)]
enum EndpointKind {
    /// Local, behind an interface of the fixture's pool.
    Local { explicit_node: bool },
    /// Local, but its interface does not exist.
    LocalMissing,
    /// On another node.
    Remote { interface: bool },
}

#[derive(Clone, Debug)]
struct TimeoutSpec {
    /// Seconds for tcp_established, tcp_other, udp, udp_stream, icmp, other.
    secs: [u64; 6],
}

#[derive(Clone, Debug)]
struct PacketSpec {
    aim: Option<AimSpec>,
    hook: HookSpec,
    v6: bool,
    /// From an endpoint: a source address other than its own.
    spoof: bool,
    src: AddrPick,
    dst: AddrPick,
    proto: ProtoPick,
    port: PortPick,
    icmp: IcmpPick,
    flags: u8,
}

#[derive(Clone, Debug)]
struct AimSpec {
    rule: usize,
    member: usize,
    peer: usize,
    /// Where in the peer's CIDR.
    edge: Edge,
    /// Where in the rule's port range.
    port: Edge,
    uplink: bool,
}

#[derive(Clone, Copy, Debug)]
enum HookSpec {
    From(usize),
    To(usize),
    Uplink,
}

#[derive(Clone, Debug)]
enum AddrPick {
    /// An address of the endpoint the hook belongs to.
    Own(usize),
    Endpoint(usize, usize),
    Host(usize),
    /// An address on or just beyond the edge of one of the policy's CIDRs.
    Cidr(usize, Edge),
    Raw(u32, u128),
}

/// A place relative to a CIDR or a range.
#[derive(Clone, Copy, Debug)]
enum Edge {
    First,
    Last,
    Inside(u128),
    Below,
    Above,
}

#[derive(Clone, Copy, Debug)]
enum ProtoPick {
    Rule(usize),
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
    Number(u8),
}

#[derive(Clone, Copy, Debug)]
enum PortPick {
    Rule(usize, Edge),
    Fixed(u16),
}

#[derive(Clone, Copy, Debug)]
enum IcmpPick {
    /// The rule's type and code, or one off.
    Rule(usize, i8, i8),
    Fixed(u8, u8),
}

// ---------------------------------------------------------------------------
// Strategies.

fn v4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        8 => (0u8..2, 0u8..4, any::<u8>()).prop_map(|(b, c, d)| Ipv4Addr::new(10, b, c, d)),
        1 => any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        8 => (0u16..2, 0u16..4, any::<u16>()).prop_map(|(b, c, d)| Ipv6Addr::new(0xfd00, b, c, 0, 0, 0, 0, d)),
        1 => any::<u128>().prop_map(Ipv6Addr::from),
    ]
}

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![v4().prop_map(IpAddr::V4), v6().prop_map(IpAddr::V6)]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(0u16),
        Just(1u16),
        Just(65535u16),
        Just(65534u16),
        0u16..1024,
        8000u16..8100,
        any::<u16>(),
    ]
}

fn cidr() -> impl Strategy<Value = CidrSpec> {
    let anchor = prop_oneof![
        3 => (any::<usize>(), any::<usize>()).prop_map(|(e, a)| AnchorSpec::Endpoint(e, a)),
        1 => any::<usize>().prop_map(AnchorSpec::Host),
        2 => addr().prop_map(AnchorSpec::Addr),
    ];
    // Broad peers are the most common there are: `0.0.0.0/0`, `::/0` and
    // short prefixes around endpoints, which cover most of them.
    let len = prop_oneof![
        4 => 0u8..=128,
        1 => Just(0u8),
        2 => 1u8..=16,
    ];
    (anchor, len).prop_map(|(anchor, len)| CidrSpec { anchor, len })
}

/// A prefix list: a few CIDRs anywhere, or a chain of four to six CIDRs
/// nested around one endpoint's address.
fn prefix_list() -> impl Strategy<Value = Vec<CidrSpec>> {
    prop_oneof![
        3 => vec(cidr(), 1..=4),
        1 => (any::<usize>(), any::<usize>(), vec(0u8..=128, 4..=6)).prop_map(|(e, a, lens)| {
            lens.into_iter()
                .map(|len| CidrSpec {
                    anchor: AnchorSpec::Endpoint(e, a),
                    len,
                })
                .collect()
        }),
    ]
}

fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![
        4 => Just(Proto::TCP),
        3 => Just(Proto::UDP),
        1 => Just(Proto::SCTP),
        2 => Just(Proto::ICMP),
        2 => Just(Proto::ICMPV6),
        2 => Just(Proto::All),
        1 => prop::sample::select(vec![0u8, 2, 4, 41, 43, 44, 47, 50, 51, 59, 60, 253, 255]).prop_map(Proto::Number),
        1 => any::<u8>().prop_map(Proto::Number),
    ]
}

fn icmp_type() -> impl Strategy<Value = u8> {
    prop_oneof![Just(0u8), Just(8u8), Just(13u8), Just(128u8), Just(129u8), any::<u8>()]
}

fn rule() -> impl Strategy<Value = RuleSpec> {
    // Every shape of range: single ports, prefix-aligned blocks, unaligned
    // ranges, the ephemeral ports and all but port 0.
    let ports = prop_oneof![
        1 => Just(None),
        2 => port().prop_map(|p| Some((p, p))),
        3 => (port(), port()).prop_map(|(a, b)| Some((a.min(b), a.max(b)))),
        1 => (port(), 0u16..16).prop_map(|(a, w)| Some((a, a.saturating_add(w)))),
        1 => (0u32..16, 0u32..16).prop_map(|(k, bits)| {
            let size = 1u32 << bits;
            let first = (k * size) % 65536;
            Some((first as u16, (first + size - 1).min(65535) as u16))
        }),
        1 => Just(Some((1024, 65535))),
        1 => Just(Some((1, 65535))),
    ];
    let icmp = prop_oneof![
        1 => Just(None),
        2 => (icmp_type(), prop::option::of(any::<u8>())).prop_map(Some),
    ];
    let peer = prop_oneof![
        3 => any::<usize>().prop_map(PeerSpec::Group),
        4 => cidr().prop_map(PeerSpec::Cidr),
        2 => any::<usize>().prop_map(PeerSpec::PrefixList),
        1 => Just(PeerSpec::Host),
    ];
    (proto(), ports, icmp, vec(peer, 1..=3)).prop_map(|(proto, ports, icmp, peers)| RuleSpec {
        proto,
        ports,
        icmp,
        peers,
    })
}

fn endpoint() -> impl Strategy<Value = EndpointSpec> {
    let kind = prop_oneof![
        6 => any::<bool>().prop_map(|explicit_node| EndpointKind::Local { explicit_node }),
        1 => Just(EndpointKind::LocalMissing),
        3 => any::<bool>().prop_map(|interface| EndpointKind::Remote { interface }),
    ];
    let groups = prop_oneof![
        1 => Just(Vec::new()),
        5 => vec(any::<usize>(), 1..=3),
    ];
    (kind, vec(addr(), 1..=3), groups).prop_map(|(kind, addresses, groups)| EndpointSpec {
        kind,
        addresses,
        groups,
    })
}

/// Mostly 0, sometimes one off either way.
fn off_by() -> impl Strategy<Value = i8> {
    prop_oneof![4 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)]
}

fn packet() -> impl Strategy<Value = PacketSpec> {
    let edge = || {
        prop_oneof![
            3 => Just(Edge::First),
            3 => Just(Edge::Last),
            2 => any::<u128>().prop_map(Edge::Inside),
            2 => Just(Edge::Below),
            2 => Just(Edge::Above),
        ]
    };
    // Aimed packets mostly land inside the rule's CIDR and port range.
    let inward = || {
        prop_oneof![
            3 => Just(Edge::First),
            3 => Just(Edge::Last),
            3 => any::<u128>().prop_map(Edge::Inside),
            1 => Just(Edge::Below),
            1 => Just(Edge::Above),
        ]
    };
    let aim = (
        any::<usize>(),
        any::<usize>(),
        any::<usize>(),
        inward(),
        inward(),
        any::<bool>(),
    )
        .prop_map(|(rule, member, peer, edge, port, uplink)| AimSpec {
            rule,
            member,
            peer,
            edge,
            port,
            uplink,
        });
    let hook = prop_oneof![
        any::<usize>().prop_map(HookSpec::From),
        any::<usize>().prop_map(HookSpec::To),
        Just(HookSpec::Uplink),
    ];
    let pick = move || {
        prop_oneof![
            3 => any::<usize>().prop_map(AddrPick::Own),
            3 => (any::<usize>(), any::<usize>()).prop_map(|(e, a)| AddrPick::Endpoint(e, a)),
            1 => any::<usize>().prop_map(AddrPick::Host),
            3 => (any::<usize>(), edge()).prop_map(|(c, e)| AddrPick::Cidr(c, e)),
            1 => (v4(), v6()).prop_map(|(a, b)| AddrPick::Raw(a.into(), b.into())),
        ]
    };
    let proto = prop_oneof![
        6 => any::<usize>().prop_map(ProtoPick::Rule),
        2 => Just(ProtoPick::Tcp),
        2 => Just(ProtoPick::Udp),
        1 => Just(ProtoPick::Sctp),
        1 => Just(ProtoPick::Icmp),
        1 => Just(ProtoPick::Icmpv6),
        1 => any::<u8>().prop_map(ProtoPick::Number),
    ];
    let port_pick = prop_oneof![
        3 => (any::<usize>(), edge()).prop_map(|(r, e)| PortPick::Rule(r, e)),
        1 => port().prop_map(PortPick::Fixed),
    ];
    let icmp = prop_oneof![
        3 => (any::<usize>(), off_by(), off_by()).prop_map(|(r, t, c)| IcmpPick::Rule(r, t, c)),
        1 => (icmp_type(), any::<u8>()).prop_map(|(t, c)| IcmpPick::Fixed(t, c)),
    ];
    // SYN is always set: a TCP packet without SYN may be admitted as the
    // reverse of an allowed flow, which the stateful tests cover.
    let flags = prop::sample::select(vec![SYN, SYN, SYN, SYN | ACK, SYN | FIN, SYN | RST, 0x3f]);
    (
        prop::option::weighted(0.6, aim),
        hook,
        any::<bool>(),
        prop::bool::weighted(0.15),
        pick(),
        pick(),
        proto,
        port_pick,
        icmp,
        flags,
    )
        .prop_map(
            |(aim, hook, v6, spoof, src, dst, proto, port, icmp, flags)| PacketSpec {
                aim,
                hook,
                v6,
                spoof,
                src,
                dst,
                proto,
                port,
                icmp,
                flags,
            },
        )
}

/// A policy with `packets` packets. `timeouts`: generate short conntrack
/// timeouts (stateful tests); otherwise the defaults.
pub fn case(packets: std::ops::RangeInclusive<usize>, timeouts: bool) -> impl Strategy<Value = Case> {
    let rules = vec((any::<usize>(), any::<bool>(), rule()), 0..=20);
    let timeout_spec = if timeouts {
        // 1 s (expires within a test's sleep) or an hour (does not).
        prop::array::uniform6(prop::sample::select(vec![1u64, 3600]))
            .prop_map(|secs| Some(TimeoutSpec { secs }))
            .boxed()
    } else {
        Just(None).boxed()
    };
    (
        1usize..=4,
        vec(prefix_list(), 0..=3),
        rules,
        vec(endpoint(), 1..=6),
        vec(addr(), 0..=3),
        timeout_spec,
        vec(packet(), packets),
    )
        .prop_map(
            |(groups, prefix_lists, rules, endpoints, host, timeouts, packets)| CaseSpec {
                groups,
                prefix_lists,
                rules,
                endpoints,
                host,
                timeouts,
                packets,
            },
        )
        .prop_map(|spec| spec.resolve())
}

// ---------------------------------------------------------------------------
// Resolving.

fn valid_endpoint_address(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_multicast(),
        IpAddr::V6(v6) => {
            !v6.is_unspecified() && !v6.is_multicast() && !v6.is_unicast_link_local() && v6.to_ipv4_mapped().is_none()
        }
    }
}

fn max_len(a: IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

/// The address at `edge` of `net`.
fn edge_of(net: IpNet, edge: Edge) -> IpAddr {
    let (first, last): (u128, u128) = match net {
        IpNet::V4(n) => (u32::from(n.network()) as u128, u32::from(n.broadcast()) as u128),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    };
    let max = if net.addr().is_ipv4() {
        u32::MAX as u128
    } else {
        u128::MAX
    };
    let x = match edge {
        Edge::First => first,
        Edge::Last => last,
        Edge::Inside(r) => first + r % (last - first).saturating_add(1).max(1),
        Edge::Below => first.checked_sub(1).unwrap_or(last.wrapping_add(1) & max),
        Edge::Above => {
            if last == max {
                first.wrapping_sub(1) & max
            } else {
                last + 1
            }
        }
    };
    match net {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(x as u32)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(x)),
    }
}

fn same_family(a: IpAddr, v6: bool) -> bool {
    a.is_ipv6() == v6
}

/// ICMP types that are never judged by rules: errors (they pass or fail
/// by the flow they quote) and, in IPv6, neighbour discovery and MLD.
pub fn unjudged_icmp(proto: u8, ty: u8, v6: bool) -> bool {
    let error = (proto == 1 && matches!(ty, 3 | 11 | 12)) || (proto == 58 && matches!(ty, 1..=4));
    let nd = v6 && proto == 58 && matches!(ty, 130..=137 | 143);
    error || nd
}

/// Protocol numbers IPv6 walks as extension headers, never an L4
/// protocol.
pub fn ipv6_extension(proto: u8) -> bool {
    matches!(proto, 0 | 43 | 44 | 51 | 60)
}

struct Ctx {
    policy: Policy,
    host: Vec<IpAddr>,
    /// (group, direction, rule) of every rule.
    rules: Vec<(String, Direction, Rule)>,
    cidrs: Vec<IpNet>,
    /// Indices of local endpoints behind an interface of the pool that
    /// have at least one address.
    hookable: Vec<usize>,
}

impl CaseSpec {
    pub fn resolve(self) -> Case {
        let group_names: Vec<String> = (0..self.groups).map(|i| format!("g{i}")).collect();
        let host: Vec<IpAddr> = {
            let mut h = Vec::new();
            for a in &self.host {
                if !h.contains(a) {
                    h.push(*a);
                }
            }
            h
        };

        // Endpoints first: CIDRs anchor on their addresses.
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let mut taken: Vec<IpAddr> = host.clone();
        let mut pool = POOL.iter();
        for (i, spec) in self.endpoints.iter().enumerate() {
            let mut addresses = Vec::new();
            for a in &spec.addresses {
                if valid_endpoint_address(a) && !taken.contains(a) {
                    taken.push(*a);
                    addresses.push(*a);
                }
            }
            let mut groups: Vec<String> = Vec::new();
            for g in &spec.groups {
                let name = &group_names[g % group_names.len()];
                if !groups.contains(name) {
                    groups.push(name.clone());
                }
            }
            let (node, interface) = match spec.kind {
                EndpointKind::Local { explicit_node } => match pool.next() {
                    Some(iface) => (explicit_node.then(|| NODE.to_string()), Some(iface.to_string())),
                    None => (None, Some(format!("hwx{i}"))),
                },
                EndpointKind::LocalMissing => (None, Some(format!("hwx{i}"))),
                EndpointKind::Remote { interface } => (Some("other".to_string()), interface.then(|| format!("hwr{i}"))),
            };
            endpoints.push(Endpoint {
                name: format!("e{i}"),
                node,
                interface,
                addresses,
                groups,
                mac: None,
            });
        }

        let anchor = |a: &AnchorSpec| -> IpAddr {
            match a {
                AnchorSpec::Endpoint(e, k) => {
                    let ep = &endpoints[e % endpoints.len()];
                    if ep.addresses.is_empty() {
                        host.first().copied().unwrap_or(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)))
                    } else {
                        ep.addresses[k % ep.addresses.len()]
                    }
                }
                AnchorSpec::Host(k) if !host.is_empty() => host[k % host.len()],
                AnchorSpec::Host(_) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
                AnchorSpec::Addr(a) => *a,
            }
        };
        let cidr = |c: &CidrSpec| -> IpNet {
            let a = anchor(&c.anchor);
            IpNet::new(a, c.len % (max_len(a) + 1))
                .expect("prefix in range")
                .trunc()
        };

        let prefix_lists: BTreeMap<String, Vec<IpNet>> = self
            .prefix_lists
            .iter()
            .enumerate()
            .map(|(i, nets)| (format!("pl{i}"), nets.iter().map(cidr).collect()))
            .collect();
        let list_names: Vec<String> = prefix_lists.keys().cloned().collect();

        let mut groups: BTreeMap<String, Group> = group_names.iter().map(|g| (g.clone(), Group::default())).collect();
        for (g, egress, spec) in &self.rules {
            let proto = spec.proto;
            let ports = spec
                .ports
                .filter(|_| proto.has_ports())
                .map(|(first, last)| PortRange { first, last });
            let icmp = spec
                .icmp
                .filter(|_| proto.is_icmp())
                .map(|(ty, code)| IcmpMatch { ty, code });
            let peers = spec
                .peers
                .iter()
                .map(|p| match p {
                    PeerSpec::Group(k) => Peer::Group(group_names[k % group_names.len()].clone()),
                    PeerSpec::Cidr(c) => Peer::Cidr(cidr(c)),
                    PeerSpec::PrefixList(k) if !list_names.is_empty() => {
                        Peer::PrefixList(list_names[k % list_names.len()].clone())
                    }
                    PeerSpec::PrefixList(_) => Peer::Host,
                    PeerSpec::Host => Peer::Host,
                })
                .collect();
            let rule = Rule {
                proto,
                ports,
                icmp,
                peers,
                description: None,
            };
            let group = groups.get_mut(&group_names[g % group_names.len()]).unwrap();
            let list = if *egress { &mut group.egress } else { &mut group.ingress };
            // A control file may not hold the same rule twice in a group
            // and direction; a repeat would add nothing.
            if !list.contains(&rule) {
                list.push(rule);
            }
        }

        let mut settings = Settings::default();
        if let Some(t) = &self.timeouts {
            let d = |i: usize| Duration::from_secs(t.secs[i]);
            settings.conntrack = ConntrackTimeouts {
                tcp_established: d(0),
                tcp_other: d(1),
                udp: d(2),
                udp_stream: d(3),
                icmp: d(4),
                other: d(5),
                ..ConntrackTimeouts::default()
            };
        }
        let policy = Policy {
            prefix_lists,
            groups,
            endpoints,
            settings,
        };
        // Every generated policy must be a valid control file, and written
        // out it must read back the same.
        let yaml = to_yaml(&policy);
        let parsed = parse_str(&yaml, "generated.yaml").unwrap_or_else(|e| panic!("generated policy: {e}\n{yaml}"));
        assert_eq!(parsed, policy, "generated policy does not read back equal:\n{yaml}");

        let mut rules = Vec::new();
        let mut cidrs = Vec::new();
        for (name, g) in &policy.groups {
            for (dir, list) in [(Direction::Ingress, &g.ingress), (Direction::Egress, &g.egress)] {
                for r in list {
                    rules.push((name.clone(), dir, r.clone()));
                    for p in &r.peers {
                        if let Peer::Cidr(n) = p {
                            cidrs.push(*n);
                        }
                    }
                }
            }
        }
        cidrs.extend(policy.prefix_lists.values().flatten().copied());
        cidrs.sort();
        cidrs.dedup();
        let hookable = policy
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.is_local(NODE) && !e.addresses.is_empty() && e.interface.as_deref().is_some_and(|i| POOL.contains(&i))
            })
            .map(|(i, _)| i)
            .collect();
        let ctx = Ctx {
            policy,
            host,
            rules,
            cidrs,
            hookable,
        };
        let packets = self
            .packets
            .iter()
            .enumerate()
            .map(|(i, p)| ctx.packet(p, i as u16))
            .collect();
        Case {
            policy: ctx.policy,
            host: ctx.host,
            packets,
        }
    }
}

impl Ctx {
    fn addresses_of(&self, endpoint: usize, v6: bool) -> Vec<IpAddr> {
        self.policy.endpoints[endpoint]
            .addresses
            .iter()
            .copied()
            .filter(|a| same_family(*a, v6))
            .collect()
    }

    /// A fallback address of a family, from the pick's raw bits.
    fn raw(v4: u32, v6: u128, want_v6: bool) -> IpAddr {
        if want_v6 {
            IpAddr::V6(Ipv6Addr::from(v6))
        } else {
            IpAddr::V4(Ipv4Addr::from(v4))
        }
    }

    /// Any endpoint's address of a family.
    fn pick_endpoint(&self, e: usize, k: usize, v6: bool) -> Option<IpAddr> {
        let all: Vec<IpAddr> = self
            .policy
            .endpoints
            .iter()
            .flat_map(|ep| ep.addresses.iter().copied())
            .filter(|a| same_family(*a, v6))
            .collect();
        if all.is_empty() {
            None
        } else {
            Some(all[e.wrapping_add(k) % all.len()])
        }
    }

    /// The address `pick` names, of the wanted family. `own` is the hook's
    /// endpoint, for [`AddrPick::Own`]; without one, that names any
    /// endpoint's address.
    fn pick(&self, pick: &AddrPick, own: Option<usize>, v6: bool) -> IpAddr {
        let fallback = Ctx::raw(0x0a00_0000 | 0x2ff, 0xfd00 << 112 | 0x2ff, v6);
        let choose = |list: Vec<IpAddr>, k: usize| -> Option<IpAddr> {
            if list.is_empty() {
                None
            } else {
                Some(list[k % list.len()])
            }
        };
        let found = match pick {
            AddrPick::Own(k) if own.is_some() => own.and_then(|e| choose(self.addresses_of(e, v6), *k)),
            AddrPick::Own(k) => self.pick_endpoint(*k, *k, v6),
            AddrPick::Endpoint(e, k) => self.pick_endpoint(*e, *k, v6),
            AddrPick::Host(k) => choose(self.host.iter().copied().filter(|a| same_family(*a, v6)).collect(), *k),
            AddrPick::Cidr(c, edge) => {
                let nets: Vec<IpNet> = self
                    .cidrs
                    .iter()
                    .copied()
                    .filter(|n| same_family(n.addr(), v6))
                    .collect();
                if nets.is_empty() {
                    None
                } else {
                    Some(edge_of(nets[c % nets.len()], *edge))
                }
            }
            AddrPick::Raw(a, b) => Some(Ctx::raw(*a, *b, v6)),
        };
        found.unwrap_or(fallback)
    }

    fn packet(&self, spec: &PacketSpec, index: u16) -> Packet {
        if let Some(aim) = &spec.aim
            && let Some(p) = self.aimed(spec, aim, index)
        {
            return p;
        }
        self.random(spec, index)
    }

    /// A packet aimed at a rule: from a member of its group to an address
    /// its peer names (egress), or the other way (ingress).
    fn aimed(&self, spec: &PacketSpec, aim: &AimSpec, index: u16) -> Option<Packet> {
        // Rules of groups with a member behind a pool interface.
        let members_of = |group: &String| -> Vec<usize> {
            self.hookable
                .iter()
                .copied()
                .filter(|e| self.policy.endpoints[*e].groups.contains(group))
                .collect()
        };
        let aimable: Vec<&(String, Direction, Rule)> = self
            .rules
            .iter()
            .filter(|(g, _, _)| !members_of(g).is_empty())
            .collect();
        if aimable.is_empty() {
            return None;
        }
        let (group, dir, rule) = aimable[aim.rule % aimable.len()];
        let members = members_of(group);
        // A peer address of a family the member has (and the rule's, for
        // ICMP), preferably not a local endpoint's, whose own rules would
        // have a say too. The first member and peer from the aim's that
        // have one.
        let family_ok = |c: &IpAddr| match rule.proto {
            Proto::ICMP => c.is_ipv4(),
            Proto::ICMPV6 => c.is_ipv6(),
            _ => true,
        };
        let usable = |member: usize, peer: &Peer| -> Vec<IpAddr> {
            let candidates: Vec<IpAddr> = match peer {
                Peer::Group(g) => self
                    .policy
                    .endpoints
                    .iter()
                    .filter(|e| e.groups.contains(g))
                    .flat_map(|e| e.addresses.iter().copied())
                    .collect(),
                Peer::Cidr(n) => vec![edge_of(*n, aim.edge)],
                Peer::PrefixList(l) => self.policy.prefix_lists[l]
                    .iter()
                    .map(|n| edge_of(*n, aim.edge))
                    .collect(),
                Peer::Host => self.host.clone(),
            };
            let own = &self.policy.endpoints[member].addresses;
            let mut usable: Vec<IpAddr> = candidates
                .into_iter()
                .filter(|c| own.iter().any(|o| o.is_ipv6() == c.is_ipv6()) && family_ok(c))
                .collect();
            if !aim.peer.is_multiple_of(3) && usable.iter().any(|c| self.hookable_owner(*c).is_none()) {
                usable.retain(|c| self.hookable_owner(*c).is_none());
            }
            usable
        };
        let (member, other) = (0..members.len() * rule.peers.len()).find_map(|k| {
            let member = members[(aim.member + k / rule.peers.len()) % members.len()];
            let peer = &rule.peers[(aim.peer + k) % rule.peers.len()];
            let usable = usable(member, peer);
            (!usable.is_empty()).then(|| (member, usable[aim.peer.wrapping_add(aim.rule) % usable.len()]))
        })?;
        let mine = self.addresses_of(member, other.is_ipv6());
        let mine = mine[aim.member % mine.len()];
        let iface = self.policy.endpoints[member].interface.clone().unwrap();
        let (at, src, dst) = match dir {
            Direction::Egress => (At::From(iface), mine, other),
            // Traffic from a local endpoint leaves through its interface.
            Direction::Ingress => match self.hookable_owner(other) {
                Some(sender) => (At::From(sender), other, mine),
                // The uplink drops the host's addresses as spoofed.
                None if aim.uplink && !self.host.contains(&other) => (At::Uplink, other, mine),
                None => (At::To(iface), other, mine),
            },
        };
        let mut spec = spec.clone();
        spec.port = PortPick::Rule(aim.rule, aim.port);
        let l4 = self.transport(&spec, Some(rule), other.is_ipv6(), index);
        Some(Packet {
            at,
            src,
            dst,
            l4,
            aimed: true,
            frag: Frag::Whole,
            quote: None,
            foreign_mac: false,
        })
    }

    fn random(&self, spec: &PacketSpec, index: u16) -> Packet {
        let hook = match spec.hook {
            HookSpec::From(i) if !self.hookable.is_empty() => HookSpec::From(self.hookable[i % self.hookable.len()]),
            HookSpec::To(i) if !self.hookable.is_empty() => HookSpec::To(self.hookable[i % self.hookable.len()]),
            _ => HookSpec::Uplink,
        };
        let (own, at) = match hook {
            HookSpec::From(e) => (Some(e), At::From(self.policy.endpoints[e].interface.clone().unwrap())),
            HookSpec::To(e) => (Some(e), At::To(self.policy.endpoints[e].interface.clone().unwrap())),
            HookSpec::Uplink => (None, At::Uplink),
        };
        // The hook's endpoint decides the family when it has only one.
        let v6 = match own {
            Some(e) if self.addresses_of(e, spec.v6).is_empty() => !spec.v6,
            _ => spec.v6,
        };
        let (src, dst) = match hook {
            HookSpec::From(e) if !spec.spoof => (
                self.pick(&AddrPick::Own(address_index(&spec.src)), Some(e), v6),
                self.pick(&spec.dst, None, v6),
            ),
            // Packets to an endpoint's interface are addressed to it.
            HookSpec::To(e) => (
                self.pick_elsewhere(&spec.src, v6),
                self.pick(&AddrPick::Own(address_index(&spec.dst)), Some(e), v6),
            ),
            HookSpec::Uplink => (self.pick_elsewhere(&spec.src, v6), self.pick(&spec.dst, None, v6)),
            HookSpec::From(_) => (self.pick(&spec.src, None, v6), self.pick(&spec.dst, None, v6)),
        };
        let l4 = self.transport(spec, None, v6, index);
        Packet {
            at,
            src,
            dst,
            l4,
            aimed: false,
            frag: Frag::Whole,
            quote: None,
            foreign_mac: false,
        }
    }

    /// The interface of the local endpoint that owns `addr`.
    fn hookable_owner(&self, addr: IpAddr) -> Option<String> {
        self.hookable
            .iter()
            .map(|e| &self.policy.endpoints[*e])
            .find(|e| e.addresses.contains(&addr))
            .and_then(|e| e.interface.clone())
    }

    /// A source for a packet that does not come from a local endpoint:
    /// now and then a local endpoint's address all the same (which took
    /// the wrong path), mostly a remote endpoint's or any address.
    fn pick_elsewhere(&self, pick: &AddrPick, v6: bool) -> IpAddr {
        let remote: Vec<IpAddr> = self
            .policy
            .endpoints
            .iter()
            .filter(|e| !e.is_local(NODE))
            .flat_map(|e| e.addresses.iter().copied())
            .filter(|a| same_family(*a, v6))
            .collect();
        match pick {
            AddrPick::Own(k) if k % 4 == 0 => self.pick(pick, None, v6),
            AddrPick::Own(k) => self.pick(&AddrPick::Cidr(*k, Edge::Inside(*k as u128)), None, v6),
            AddrPick::Endpoint(e, k) if !remote.is_empty() => remote[e.wrapping_add(*k) % remote.len()],
            _ => self.pick(pick, None, v6),
        }
    }

    fn rule(&self, k: usize) -> Option<&Rule> {
        if self.rules.is_empty() {
            None
        } else {
            Some(&self.rules[k % self.rules.len()].2)
        }
    }

    fn transport(&self, spec: &PacketSpec, aimed: Option<&Rule>, v6: bool, index: u16) -> Transport {
        let proto = match (aimed.map(|r| r.proto), spec.proto) {
            (Some(Proto::Number(n)), _) => n,
            (_, ProtoPick::Rule(k)) => match self.rule(k).map(|r| r.proto) {
                Some(Proto::Number(n)) => n,
                _ => 6,
            },
            (_, ProtoPick::Tcp) => 6,
            (_, ProtoPick::Udp) => 17,
            (_, ProtoPick::Sctp) => 132,
            (_, ProtoPick::Icmp) => 1,
            (_, ProtoPick::Icmpv6) => 58,
            (_, ProtoPick::Number(n)) => n,
        };
        let proto = if v6 && ipv6_extension(proto) { 253 } else { proto };
        let port_rule = |k: usize| aimed.or_else(|| self.rule(k)).and_then(|r| r.ports);
        let dport = match spec.port {
            PortPick::Rule(k, edge) => match port_rule(k) {
                Some(p) => port_edge(p, edge),
                None => edge_port(edge),
            },
            PortPick::Fixed(p) => p,
        };
        // Unique per packet of a case, so that no two packets of a batch
        // are one flow (the stateful tests make flows on purpose).
        let sport = 20000u16.wrapping_add(index);
        match proto {
            6 => Transport::Tcp {
                sport,
                dport,
                flags: spec.flags,
            },
            17 => Transport::Udp { sport, dport },
            132 => Transport::Sctp {
                sport,
                dport,
                chunk: None,
            },
            1 | 58 => {
                let (mut ty, code) = match spec.icmp {
                    IcmpPick::Rule(k, dt, dc) => match aimed.or_else(|| self.rule(k)).and_then(|r| r.icmp) {
                        Some(m) => (
                            m.ty.wrapping_add_signed(dt),
                            m.code.unwrap_or(0).wrapping_add_signed(dc),
                        ),
                        None => (if proto == 1 { 8 } else { 128 }, 0),
                    },
                    IcmpPick::Fixed(t, c) => (t, c),
                };
                while unjudged_icmp(proto, ty, v6) {
                    ty = ty.wrapping_add(1);
                }
                Transport::Icmp {
                    proto,
                    ty,
                    code,
                    id: index,
                }
            }
            _ => Transport::Other { proto },
        }
    }
}

fn address_index(pick: &AddrPick) -> usize {
    match pick {
        AddrPick::Own(k) | AddrPick::Host(k) | AddrPick::Cidr(k, _) => *k,
        AddrPick::Endpoint(e, k) => e.wrapping_add(*k),
        AddrPick::Raw(a, _) => *a as usize,
    }
}

fn port_edge(p: PortRange, edge: Edge) -> u16 {
    match edge {
        Edge::First => p.first,
        Edge::Last => p.last,
        Edge::Inside(r) => p.first + (r % (p.last as u128 - p.first as u128 + 1)) as u16,
        Edge::Below => p.first.wrapping_sub(1),
        Edge::Above => p.last.wrapping_add(1),
    }
}

/// Ports at the edges of the whole port space.
fn edge_port(edge: Edge) -> u16 {
    match edge {
        Edge::First => 0,
        Edge::Last => 65535,
        Edge::Inside(r) => r as u16,
        Edge::Below => 1,
        Edge::Above => 65534,
    }
}
