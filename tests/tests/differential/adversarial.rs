//! Adversarial sequences: random policies over a fixed cast of parties
//! (three local endpoints, a remote endpoint and a stranger behind the
//! uplink, a router there, the host, and an undeclared port on the bridge),
//! and random sequences of packets between them: TCP with any of the 256
//! flag combinations, ACK first, SYN against flows running the other way,
//! UDP, SCTP chunks, ICMP echo, ICMP errors quoting live and dead flows
//! from parties and strangers, first and later fragments, floods against
//! the per-endpoint shares, and pauses longer than short timeouts.
//!
//! Each packet is run through the real programs at every hook it meets,
//! in order (from its sender's interface, the uplink, its receiver's
//! interface), sharing conntrack across the whole sequence, and every
//! answer is compared with the model (`model.rs`), which is written from
//! SECURITY.md and shares no code with the compiler or the datapath.
//!
//! Case `i` of seed `s` comes from an RNG of its own, so a failure names
//! the case to run again (`HOSTWALL_DIFF_SEED`, `HOSTWALL_ADVERSARIAL_CASE`).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hostwall::datapath::Datapath;
use hostwall::policy::{Policy, parse_str, to_yaml};
use hostwall_common::{DropReason, PassReason};
use hostwall_mutants::{MUTANT_GLOBAL, MUTANT_OBJECT, Mutant};
use hostwall_tests::testrun::{Expect, Fixture, PORT_IFACE, UPLINK_IFACE};

use crate::generate::{ACK, At, FIN, Frag, POOL, Packet, Quote, RST, SYN, Transport};
use crate::model::{Model, Window, is_icmp_error};

const PSH: u8 = 0x08;
const URG: u8 = 0x20;

/// Longer than the short timeouts (1 s) some cases use.
const PAUSE: Duration = Duration::from_millis(1100);

/// A party of the cast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Party {
    /// The local endpoint behind `POOL[i]`.
    Local(usize),
    /// An endpoint of another node, behind the uplink.
    RemoteEndpoint,
    /// Someone on the internet, behind the uplink.
    Stranger,
    /// A router behind the uplink (it only sends ICMP errors).
    Router,
    Host,
    /// A container on the bridge that the policy does not declare.
    Undeclared,
    /// Every station of the bridge: a broadcast or multicast address.
    Everyone,
    /// An address of the local endpoint behind `POOL[i]` that the policy
    /// does not list (the endpoint's MAC, another IP address).
    Unlisted(usize),
}

const LOCALS: usize = 3;

impl Party {
    fn addr(self, v6: bool) -> IpAddr {
        let s = match (self, v6) {
            (Party::Local(i), false) => return format!("10.60.0.{}", 11 + i).parse().unwrap(),
            (Party::Local(i), true) => return format!("fd00:60::{}", 11 + i).parse().unwrap(),
            (Party::RemoteEndpoint, false) => "10.61.0.5",
            (Party::RemoteEndpoint, true) => "fd00:61::5",
            (Party::Stranger, false) => "203.0.113.7",
            (Party::Stranger, true) => "2001:db8:60::7",
            (Party::Router, false) => "198.51.100.1",
            (Party::Router, true) => "2001:db8:61::1",
            (Party::Host, false) => "10.60.0.1",
            (Party::Host, true) => "fd00:60::1",
            (Party::Undeclared, false) => "10.60.0.99",
            (Party::Undeclared, true) => "fd00:60::99",
            (Party::Everyone, false) => "224.0.0.251",
            (Party::Everyone, true) => "ff02::1",
            (Party::Unlisted(i), false) => return format!("10.60.0.{}", 111 + i).parse().unwrap(),
            (Party::Unlisted(i), true) => return format!("fd00:60::{}", 111 + i).parse().unwrap(),
        };
        s.parse().unwrap()
    }

    fn behind_uplink(self) -> bool {
        matches!(self, Party::RemoteEndpoint | Party::Stranger | Party::Router)
    }

    fn of(addr: IpAddr) -> Option<Party> {
        let all = [
            Party::Local(0),
            Party::Local(1),
            Party::Local(2),
            Party::RemoteEndpoint,
            Party::Stranger,
            Party::Router,
            Party::Host,
            Party::Undeclared,
            Party::Everyone,
            Party::Unlisted(0),
            Party::Unlisted(1),
            Party::Unlisted(2),
        ];
        all.into_iter().find(|p| p.addr(addr.is_ipv6()) == addr)
    }
}

/// The hooks a packet from `from` to `to` meets, in order (`uplink`: the
/// agent filters the uplink).
fn hooks(from: Party, to: Party, uplink: bool) -> Vec<At> {
    let mut out = Vec::new();
    if let Party::Local(i) = from {
        out.push(At::From(POOL[i].to_string()));
    }
    if from.behind_uplink() && uplink {
        out.push(At::Uplink);
    }
    // The way it entered the host, as the receiver's interface sees it.
    let arrive = |j: usize| match from {
        Party::Local(i) => At::ToVia(POOL[j].to_string(), POOL[i].to_string()),
        Party::Host => At::To(POOL[j].to_string()),
        Party::Undeclared => At::ToVia(POOL[j].to_string(), PORT_IFACE.to_string()),
        _ => At::ToVia(POOL[j].to_string(), UPLINK_IFACE.to_string()),
    };
    match to {
        Party::Local(j) | Party::Unlisted(j) => out.push(arrive(j)),
        // A flooded copy at every other endpoint's interface.
        Party::Everyone => out.extend((0..LOCALS).filter(|j| from != Party::Local(*j)).map(arrive)),
        _ => {}
    }
    out
}

/// SplitMix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, case: u64) -> Rng {
        let mut r = Rng(seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// How mid-stream admission is set up for a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Window_ {
    Allow,
    Deny,
    /// `startup`, within its window.
    Open,
    /// `startup`, its window passed.
    Closed,
}

/// A generated case: its policy and the start of its mid-stream window.
struct Case {
    policy: Policy,
    host: Vec<IpAddr>,
    window: Window_,
    short_timeouts: bool,
    /// The agent filters the uplink (else remote packets meet only the
    /// receiver's interface).
    uplink: bool,
}

const PORTS: [u16; 5] = [22, 80, 443, 1500, 5000];

fn policy_yaml(rng: &mut Rng) -> (String, Window_, bool) {
    let mut y = String::from("version: 1\ngroups:\n");
    let peers = [
        "{group: g0}",
        "{group: g1}",
        "{group: g2}",
        "host",
        "{cidr: 0.0.0.0/0}",
        "{cidr: \"::/0\"}",
        "{cidr: 10.60.0.0/24}",
        "{cidr: \"fd00:60::/64\"}",
        "{cidr: 203.0.113.0/24}",
        "{cidr: \"2001:db8:60::/64\"}",
        "{cidr: 10.60.0.99/32}",
        "{cidr: \"fd00:60::99/128\"}",
    ];
    for g in 0..3 {
        let _ = writeln!(y, "  g{g}:");
        for dir in ["ingress", "egress"] {
            let n = 1 + rng.below(4);
            let _ = writeln!(y, "    {dir}:");
            // A group may not hold the same rule twice in a direction; a
            // repeat would add nothing.
            let mut written = std::collections::HashSet::new();
            for _ in 0..n {
                let key = if dir == "ingress" { "from" } else { "to" };
                let mut ps: Vec<&str> = (0..1 + rng.below(3)).map(|_| rng.pick(&peers)).collect();
                ps.dedup();
                let ps = ps.join(", ");
                let rule = match rng.below(8) {
                    0 | 1 => format!("proto: tcp, ports: {}", rng.pick(&PORTS)),
                    2 => "proto: tcp, ports: \"1000-2000\"".to_string(),
                    3 => format!("proto: udp, ports: {}", rng.pick(&PORTS)),
                    4 => format!("proto: sctp, ports: {}", rng.pick(&PORTS)),
                    5 => "proto: icmp".to_string(),
                    6 => "proto: icmpv6, icmp: {type: 128}".to_string(),
                    _ => "proto: all".to_string(),
                };
                let line = format!("      - {{{rule}, {key}: [{ps}]}}");
                if written.insert(line.clone()) {
                    let _ = writeln!(y, "{line}");
                }
            }
        }
    }
    y.push_str("endpoints:\n");
    for (i, iface) in POOL.iter().enumerate().take(LOCALS) {
        // Mostly in one group or two; now and then in none.
        let groups: Vec<String> = if rng.chance(10) {
            Vec::new()
        } else {
            let first = rng.below(3);
            (0..3)
                .filter(|g| *g == first || rng.chance(30))
                .map(|g| format!("g{g}"))
                .collect()
        };
        let _ = writeln!(
            y,
            "  - {{name: l{i}, interface: {iface}, addresses: [\"10.60.0.{}\", \"fd00:60::{}\"], groups: [{}]}}",
            11 + i,
            11 + i,
            groups.join(", ")
        );
    }
    let g = rng.below(3);
    let _ = writeln!(
        y,
        "  - {{name: far, node: elsewhere, interface: hw-far, addresses: [\"10.61.0.5\", \"fd00:61::5\"], groups: [g{g}]}}"
    );
    let window = rng.pick(&[Window_::Allow, Window_::Deny, Window_::Open, Window_::Closed]);
    let midstream = match window {
        Window_::Allow => "midstream: allow",
        Window_::Deny => "midstream: deny",
        Window_::Open => "midstream: startup, midstream_window: 1h",
        Window_::Closed => "midstream: startup, midstream_window: 1s",
    };
    let cap = |rng: &mut Rng| rng.pick(&[2u32, 4, 8, 32768]);
    // Pauses are real time: few cases have timeouts short enough for one.
    let short = rng.chance(5);
    let timeouts = if short {
        "tcp_established: 1s, tcp_other: 1s, udp: 1s, udp_stream: 1s, icmp: 1s, other: 1s"
    } else {
        "tcp_established: 1h, tcp_other: 1h, udp: 1h, udp_stream: 1h, icmp: 1h, other: 1h"
    };
    let _ = writeln!(
        y,
        "settings:\n  conntrack: {{{timeouts}, max_per_endpoint: {}, max_inbound_per_endpoint: {}, {midstream}}}",
        cap(rng),
        cap(rng)
    );
    (y, window, short)
}

impl Case {
    fn generate(seed: u64, index: u64) -> (Case, Rng) {
        let mut rng = Rng::new(seed, index);
        let (yaml, window, short_timeouts) = policy_yaml(&mut rng);
        let uplink = rng.chance(75);
        let policy = parse_str(&yaml, "adversarial.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let host = vec![Party::Host.addr(false), Party::Host.addr(true)];
        (
            Case {
                policy,
                host,
                window,
                short_timeouts,
                uplink,
            },
            rng,
        )
    }
}

/// The generator of a sequence: what has been sent, to answer and quote.
struct Sequence {
    sent: Vec<Packet>,
    first_fragments: Vec<(Party, Party, bool, Transport, u16)>,
    next_frag_id: u16,
}

fn tcp_flags(rng: &mut Rng) -> u8 {
    if rng.chance(35) {
        // Any of the 256 combinations.
        rng.next() as u8
    } else {
        rng.pick(&[
            SYN,
            ACK,
            SYN | ACK,
            FIN | ACK,
            RST,
            RST | ACK,
            PSH | ACK,
            SYN | FIN,
            SYN | URG,
            0,
        ])
    }
}

fn transport(rng: &mut Rng, v6: bool) -> Transport {
    let sport = if rng.chance(50) {
        rng.pick(&PORTS)
    } else {
        40_000 + rng.below(8) as u16
    };
    let dport = rng.pick(&PORTS);
    match rng.below(20) {
        0..=9 => Transport::Tcp {
            sport,
            dport,
            flags: tcp_flags(rng),
        },
        10..=13 => Transport::Udp { sport, dport },
        14..=15 => Transport::Sctp {
            sport,
            dport,
            chunk: rng.pick(&[Some(1), Some(2), Some(0), Some(10), None]),
        },
        16..=18 => Transport::Icmp {
            proto: if v6 { 58 } else { 1 },
            ty: match (v6, rng.chance(70)) {
                (false, true) => 8,
                (false, false) => 0,
                (true, true) => 128,
                (true, false) => 129,
            },
            code: 0,
            id: 1 + rng.below(2) as u16,
        },
        _ => Transport::Other { proto: 47 },
    }
}

/// A sender and a receiver of which at least one is a local endpoint.
fn pair(rng: &mut Rng) -> (Party, Party) {
    let local = |rng: &mut Rng| Party::Local(rng.below(LOCALS));
    let other = |rng: &mut Rng| rng.pick(&[Party::RemoteEndpoint, Party::Stranger, Party::Host, Party::Undeclared]);
    loop {
        let (a, b) = match rng.below(3) {
            0 => (local(rng), local(rng)),
            1 => (local(rng), other(rng)),
            _ => (other(rng), local(rng)),
        };
        if a != b {
            return (a, b);
        }
    }
}

fn packet(src: IpAddr, dst: IpAddr, l4: Transport) -> Packet {
    Packet {
        at: At::Uplink,
        src,
        dst,
        l4,
        aimed: false,
        frag: Frag::Whole,
        quote: None,
        foreign_mac: false,
    }
}

fn reversed(l4: Transport, rng: &mut Rng) -> Transport {
    match l4 {
        Transport::Tcp { sport, dport, .. } => Transport::Tcp {
            sport: dport,
            dport: sport,
            flags: tcp_flags(rng),
        },
        Transport::Udp { sport, dport } => Transport::Udp {
            sport: dport,
            dport: sport,
        },
        Transport::Sctp { sport, dport, .. } => Transport::Sctp {
            sport: dport,
            dport: sport,
            chunk: rng.pick(&[Some(1), Some(2), Some(0), None]),
        },
        Transport::Icmp { proto, id, .. } => Transport::Icmp {
            proto,
            ty: rng.pick(&if proto == 58 { [129, 128] } else { [0, 8] }),
            code: 0,
            id,
        },
        other => other,
    }
}

impl Sequence {
    /// The next packet (or burst), with its sender and receiver.
    fn next(&mut self, rng: &mut Rng) -> Vec<(Party, Party, Packet)> {
        let v6 = rng.chance(50);
        let earlier = |rng: &mut Rng, sent: &[Packet]| (!sent.is_empty()).then(|| sent[rng.below(sent.len())].clone());
        match rng.below(100) {
            // Answer or repeat an earlier packet.
            0..=34 => {
                if let Some(p) = earlier(rng, &self.sent)
                    && let (Some(a), Some(b)) = (Party::of(p.src), Party::of(p.dst))
                {
                    if rng.chance(70) {
                        return vec![(b, a, packet(p.dst, p.src, reversed(p.l4, rng)))];
                    }
                    let l4 = match p.l4 {
                        Transport::Tcp { sport, dport, .. } => Transport::Tcp {
                            sport,
                            dport,
                            flags: tcp_flags(rng),
                        },
                        other => other,
                    };
                    return vec![(a, b, packet(p.src, p.dst, l4))];
                }
                self.fresh(rng, v6)
            }
            // An ICMP error quoting an earlier packet, from anyone.
            35..=52 => {
                let Some(q) = earlier(rng, &self.sent) else {
                    return self.fresh(rng, v6);
                };
                let v6 = q.src.is_ipv6();
                let (qsrc, qdst) = (Party::of(q.src).unwrap(), Party::of(q.dst).unwrap());
                let to = if rng.chance(85) { qsrc } else { pair(rng).1 };
                let from = match rng.below(4) {
                    0 => qdst,
                    1 => Party::Router,
                    2 => rng.pick(&[Party::Local(0), Party::Local(1), Party::Local(2), Party::Host]),
                    _ => pair(rng).0,
                };
                if from == to || hooks(from, to, true).is_empty() {
                    return self.fresh(rng, v6);
                }
                let (proto, ty, code) = if v6 {
                    rng.pick(&[(58, 1, 4), (58, 2, 0), (58, 3, 0), (58, 4, 0)])
                } else {
                    rng.pick(&[(1, 3, 3), (1, 3, 4), (1, 11, 0), (1, 12, 0)])
                };
                let mut p = packet(from.addr(v6), to.addr(v6), Transport::Icmp { proto, ty, code, id: 0 });
                p.quote = Some(Quote {
                    src: q.src,
                    dst: q.dst,
                    l4: q.l4,
                });
                vec![(from, to, p)]
            }
            // Fragments.
            53..=64 => {
                if rng.chance(55)
                    && !self.first_fragments.is_empty()
                    && let Some(&(a, b, v6, l4, id)) = self.first_fragments.get(rng.below(self.first_fragments.len()))
                {
                    let mut p = packet(a.addr(v6), b.addr(v6), l4);
                    p.frag = Frag::Later(if rng.chance(85) { id } else { id.wrapping_add(1) });
                    return vec![(a, b, p)];
                }
                let (a, b) = pair(rng);
                let l4 = transport(rng, v6);
                if matches!(l4, Transport::Icmp { .. }) {
                    return self.fresh(rng, v6);
                }
                self.next_frag_id = self.next_frag_id.wrapping_add(1);
                let id = self.next_frag_id;
                self.first_fragments.push((a, b, v6, l4, id));
                let mut p = packet(a.addr(v6), b.addr(v6), l4);
                p.frag = Frag::First(id);
                vec![(a, b, p)]
            }
            // A flood of bare ACKs or SYNs towards an endpoint.
            65..=69 => {
                let victim = Party::Local(rng.below(LOCALS));
                let from = rng.pick(&[Party::Stranger, Party::Host, Party::Undeclared, Party::RemoteEndpoint]);
                let flags = rng.pick(&[ACK, SYN, ACK | PSH]);
                let dport = rng.pick(&PORTS);
                (0..6)
                    .map(|k| {
                        let l4 = Transport::Tcp {
                            sport: 30_000 + (rng.next() % 20_000) as u16 + k,
                            dport,
                            flags,
                        };
                        (from, victim, packet(from.addr(v6), victim.addr(v6), l4))
                    })
                    .collect()
            }
            // A spoofed source, from an endpoint, the uplink or an
            // undeclared port.
            70..=72 => {
                let (a, b) = pair(rng);
                let claimed = rng.pick(&[Party::Local(0), Party::Local(1), Party::Host, Party::Stranger]);
                let may_spoof = matches!(a, Party::Local(_) | Party::Undeclared) || a.behind_uplink();
                if !may_spoof || claimed == a {
                    return self.fresh(rng, v6);
                }
                let p = packet(claimed.addr(v6), b.addr(v6), transport(rng, v6));
                vec![(a, b, p)]
            }
            // An earlier packet's tuple (or its reply's) injected by an
            // undeclared port or from behind the uplink.
            73..=76 => {
                let Some(p) = earlier(rng, &self.sent) else {
                    return self.fresh(rng, v6);
                };
                let (Some(a), Some(b)) = (Party::of(p.src), Party::of(p.dst)) else {
                    return self.fresh(rng, v6);
                };
                let injector = rng.pick(&[Party::Undeclared, Party::Stranger]);
                let (victim, pkt) = if rng.chance(50) {
                    (b, packet(p.src, p.dst, reversed(reversed(p.l4, rng), rng)))
                } else {
                    (a, packet(p.dst, p.src, reversed(p.l4, rng)))
                };
                vec![(injector, victim, pkt)]
            }
            // To every station, or to an address its receiver does not list.
            77..=81 => {
                let from = rng.pick(&[
                    Party::Local(0),
                    Party::Local(1),
                    Party::Local(2),
                    Party::Host,
                    Party::Undeclared,
                    Party::Stranger,
                ]);
                let to = if rng.chance(50) {
                    Party::Everyone
                } else {
                    Party::Unlisted(rng.below(LOCALS))
                };
                vec![(from, to, packet(from.addr(v6), to.addr(v6), transport(rng, v6)))]
            }
            // Neighbour advertisements claiming addresses, and router
            // advertisements, from anyone.
            84..=88 => {
                let from = rng.pick(&[
                    Party::Local(0),
                    Party::Local(1),
                    Party::Local(2),
                    Party::Host,
                    Party::Undeclared,
                    Party::Stranger,
                ]);
                let claimed = rng.pick(&[from, Party::Local(0), Party::Local(1), Party::Host, Party::Undeclared]);
                let target = match claimed.addr(true) {
                    IpAddr::V6(a) => a.octets(),
                    IpAddr::V4(_) => unreachable!("IPv6 addresses"),
                };
                let ty = if rng.chance(70) { 136 } else { 134 };
                let to = if rng.chance(50) {
                    Party::Everyone
                } else {
                    Party::Local(rng.below(LOCALS))
                };
                if from == to {
                    return self.fresh(rng, v6);
                }
                vec![(
                    from,
                    to,
                    packet(from.addr(true), to.addr(true), Transport::Nd { ty, target }),
                )]
            }
            // An endpoint's frame with another Ethernet source.
            82..=83 => {
                let mut burst = self.fresh(rng, v6);
                for (from, _, p) in &mut burst {
                    p.foreign_mac = matches!(from, Party::Local(_));
                }
                burst
            }
            _ => self.fresh(rng, v6),
        }
    }

    fn fresh(&mut self, rng: &mut Rng, v6: bool) -> Vec<(Party, Party, Packet)> {
        let (a, b) = pair(rng);
        vec![(a, b, packet(a.addr(v6), b.addr(v6), transport(rng, v6)))]
    }
}

/// What a run saw, for the coverage assertions.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub cases: u64,
    /// Packets sent, and the hooks they were judged at.
    pub steps: u64,
    pub hooks: u64,
    pub passed: u64,
    pub dropped: u64,
    /// A TCP SYN (or SCTP INIT) meeting a flow it would be a reply of.
    pub opens_on_reply: u64,
    /// An ICMP error from a non-party quoting a live flow.
    pub error_from_non_party: u64,
    /// A mid-stream packet outside the startup window.
    pub midstream_closed: u64,
    /// An endpoint opening a flow while flows opened towards it fill its
    /// inbound share.
    pub opened_with_inbound_full: u64,
    pub related: u64,
    pub fragments: u64,
    pub mid_stream: u64,
    pub share_full: u64,
    /// An address of this host arriving at a receiver by another way than
    /// its own (dropped before conntrack).
    pub wrong_path: u64,
    /// Judged by the rules and never tracked: to a group or unlisted
    /// address, a local endpoint's packet at the receiver.
    pub never_tracked: u64,
    /// Frames from an endpoint with another Ethernet source.
    pub mac_spoofed: u64,
    /// Neighbour advertisements claiming what is not their sender's.
    pub nd_spoofed: u64,
    /// Router advertisements from where routers are not.
    pub router_wrong_path: u64,
}

impl Tally {
    fn merge(&mut self, o: &Tally) {
        self.cases += o.cases;
        self.steps += o.steps;
        self.hooks += o.hooks;
        self.passed += o.passed;
        self.dropped += o.dropped;
        self.opens_on_reply += o.opens_on_reply;
        self.error_from_non_party += o.error_from_non_party;
        self.midstream_closed += o.midstream_closed;
        self.opened_with_inbound_full += o.opened_with_inbound_full;
        self.related += o.related;
        self.fragments += o.fragments;
        self.mid_stream += o.mid_stream;
        self.share_full += o.share_full;
        self.wrong_path += o.wrong_path;
        self.never_tracked += o.never_tracked;
        self.mac_spoofed += o.mac_spoofed;
        self.nd_spoofed += o.nd_spoofed;
        self.router_wrong_path += o.router_wrong_path;
    }
}

/// Which object the programs come from.
#[derive(Clone, Copy, Debug)]
pub enum Object {
    Real,
    Mutant(Mutant),
}

pub struct Plan {
    pub seed: u64,
    pub first: u64,
    pub cases: u64,
    pub steps_per_case: usize,
    pub object: Object,
    /// Stop at the first disagreement (finding a planted bug).
    pub stop_at_first: bool,
}

#[derive(Default)]
pub struct Report {
    pub tally: Tally,
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

/// Runs one case on `f`; returns its disagreements.
fn run_case(f: &mut Fixture, seed: u64, index: u64, steps: usize, tally: &mut Tally) -> Vec<String> {
    let (case, mut rng) = Case::generate(seed, index);
    f.flush_conntrack();
    let compiled = f.compile(&case.policy, &case.host);
    let now = hostwall::datapath::stats::monotonic_ns();
    let started = if case.window == Window_::Closed {
        now.saturating_sub(5_000_000_000)
    } else {
        now
    };
    f.apply_started(&compiled, started);
    let mut model = Model::new(&case.policy, &case.host);
    model.set_midstream_open(matches!(case.window, Window_::Allow | Window_::Open));
    tally.cases += 1;
    let mut seq = Sequence {
        sent: Vec::new(),
        first_fragments: Vec::new(),
        next_frag_id: (index as u16).wrapping_mul(97),
    };
    let mut log: Vec<String> = Vec::new();
    let mut paused = false;
    let mut done = 0;
    while done < steps {
        if case.short_timeouts && !paused && rng.chance(2) {
            paused = true;
            log.push("pause".into());
            std::thread::sleep(PAUSE);
        }
        for (from, to, pkt) in seq.next(&mut rng) {
            done += 1;
            tally.steps += 1;
            let mut noted = crate::model::Notes::default();
            for at in hooks(from, to, case.uplink) {
                let pkt = Packet { at, ..pkt.clone() };
                let start = Instant::now();
                let observed = f.run(pkt.at.hook(), &pkt.frame());
                let window = Window {
                    start,
                    end: Instant::now(),
                };
                let stepped = model.step(&pkt, observed, window);
                tally.hooks += 1;
                log.push(describe(&pkt, observed));
                match stepped {
                    Ok(j) => {
                        noted.opens_on_reply |= j.notes.opens_on_reply;
                        noted.error_from_non_party |= j.notes.error_from_non_party;
                        noted.midstream_closed |= j.notes.midstream_closed;
                        noted.opened_with_inbound_full |= j.notes.opened_with_inbound_full;
                        if j.notes.never_tracked {
                            tally.never_tracked += 1;
                        }
                        match observed {
                            Expect::Drop(DropReason::LocalAddressWrongPath | DropReason::HostAddressSpoofed)
                                if pkt.at.receiver().is_some() =>
                            {
                                tally.wrong_path += 1
                            }
                            Expect::Drop(DropReason::MacSpoofed) => tally.mac_spoofed += 1,
                            Expect::Drop(DropReason::NdSpoofed) => tally.nd_spoofed += 1,
                            Expect::Drop(DropReason::RouterMessageWrongPath) => tally.router_wrong_path += 1,
                            Expect::Pass(PassReason::Related) => tally.related += 1,
                            Expect::Pass(PassReason::Fragment) => tally.fragments += 1,
                            Expect::Drop(DropReason::ConntrackEndpointFull) => tally.share_full += 1,
                            _ => {}
                        }
                        if j.step == crate::model::Step::Reverse {
                            tally.mid_stream += 1;
                        }
                        if matches!(observed, Expect::Pass(_)) {
                            tally.passed += 1;
                        } else {
                            tally.dropped += 1;
                            break;
                        }
                    }
                    Err(j) => {
                        let tail: Vec<&String> = log
                            .iter()
                            .rev()
                            .take(40)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect();
                        return vec![format!(
                            "case {index} of seed {seed:#x} (again: HOSTWALL_DIFF_SEED={seed:#x} HOSTWALL_ADVERSARIAL_CASE={index}), step {done}:\n  {}\n  datapath: {observed:?}, model: {:?} by {:?} (reference: {:?})\n  window: {:?}, uplink filtered: {}\n  the last hooks run:\n    {}\n  policy:\n{}",
                            pkt_source(&pkt),
                            j.expect,
                            j.step,
                            j.verdict.map(|v| v.denied),
                            case.window,
                            case.uplink,
                            tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n    "),
                            to_yaml(&case.policy)
                        )];
                    }
                }
            }
            tally.opens_on_reply += noted.opens_on_reply as u64;
            tally.error_from_non_party += noted.error_from_non_party as u64;
            tally.midstream_closed += noted.midstream_closed as u64;
            tally.opened_with_inbound_full += noted.opened_with_inbound_full as u64;
            // Flows to answer, repeat and quote (neighbour discovery is
            // not a flow).
            if pkt.quote.is_none() && !is_icmp_error(&pkt.l4) && !matches!(pkt.l4, Transport::Nd { .. }) {
                seq.sent.push(pkt);
            }
        }
    }
    Vec::new()
}

fn pkt_source(p: &Packet) -> String {
    format!(
        "{:?} {} -> {} {:?} frag {:?} quote {:?}",
        p.at, p.src, p.dst, p.l4, p.frag, p.quote
    )
}

fn describe(p: &Packet, observed: Expect) -> String {
    format!("{} => {observed:?}", pkt_source(p))
}

fn fixture(object: Object) -> Fixture {
    match object {
        Object::Real => Fixture::with_interfaces(&POOL),
        Object::Mutant(m) => Fixture::with_interfaces_loading(&POOL, || {
            Datapath::load_object_unpinned_with(MUTANT_OBJECT, MUTANT_GLOBAL, m as u32).expect("load the mutant object")
        }),
    }
}

pub fn run(plan: &Plan) -> Report {
    let start = Instant::now();
    let next = AtomicU64::new(plan.first);
    let end = plan.first + plan.cases;
    let report = Mutex::new(Report::default());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut f = fixture(plan.object);
                let mut tally = Tally::default();
                loop {
                    if plan.stop_at_first && !report.lock().unwrap().failures.is_empty() {
                        break;
                    }
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= end {
                        break;
                    }
                    let problems = run_case(&mut f, plan.seed, index, plan.steps_per_case, &mut tally);
                    report.lock().unwrap().failures.extend(problems);
                }
                report.lock().unwrap().tally.merge(&tally);
            });
        }
    });
    let mut report = report.into_inner().unwrap();
    report.elapsed = start.elapsed();
    report
}
