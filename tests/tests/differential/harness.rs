//! Running generated cases through the real programs and comparing every
//! answer with the model, on one fixture per thread.
//!
//! Case `i` of seed `s` is generated from its own RNG (seeded from `s` and
//! `i`), so any case can be generated again alone, whichever thread ran
//! it. A disagreeing case is shrunk by proptest and reported as the body of
//! a regression test.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hostwall::compile::{self, Compiled, HostView, Limits, Mutation};
use hostwall::policy::{Direction, Peer, Policy};
use hostwall_common::{DropReason, PassReason};
use hostwall_tests::testrun::{Expect, Fixture, NODE};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use crate::generate::{self, At, Case, POOL, Packet, Transport};
use crate::model::{Judgement, Model, Step, Window};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compiler {
    Real,
    Mutated(Mutation),
}

impl Compiler {
    fn compile(self, f: &Fixture, policy: &Policy, host: &[IpAddr]) -> Compiled {
        match self {
            Compiler::Real => f.compile(policy, host),
            Compiler::Mutated(m) => {
                let resolve = |name: &str| f.resolve(name);
                let macs = f.macs();
                let view = HostView {
                    node: NODE,
                    host_addresses: host,
                    ifindex: &resolve,
                    macs: &macs,
                };
                compile::compile_with_mutation(policy, &view, &Limits::default(), &compile::positional_ids(policy), m)
                    .expect("compile")
            }
        }
    }
}

/// What coverage needs to know of a case's policy, worked out once.
pub struct Facts {
    /// Every CIDR a rule or prefix list names.
    cidrs: Vec<ipnet::IpNet>,
    /// Port ranges of the rules, by protocol.
    ranges: std::collections::HashMap<u8, Vec<hostwall::policy::PortRange>>,
}

impl Facts {
    pub fn of(case: &Case) -> Facts {
        let rules = || {
            case.policy
                .groups
                .values()
                .flat_map(|g| g.ingress.iter().chain(&g.egress))
        };
        let mut ranges: std::collections::HashMap<u8, Vec<_>> = std::collections::HashMap::new();
        for r in rules() {
            if let (hostwall::policy::Proto::Number(p), Some(ports)) = (r.proto, r.ports) {
                ranges.entry(p).or_default().push(ports);
            }
        }
        let cidrs = rules()
            .flat_map(|r| r.peers.iter())
            .filter_map(|p| match p {
                Peer::Cidr(n) => Some(*n),
                _ => None,
            })
            .chain(case.policy.prefix_lists.values().flatten().copied())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        Facts { cidrs, ranges }
    }
}

/// What the generated cases exercised.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    pub policies: u64,
    pub packets: u64,
    /// Packets the datapath judged (everything but the uplink's packets
    /// for no local endpoint).
    pub judged: u64,
    pub not_for_endpoint: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Packets aimed at a rule, and how many of them were allowed.
    pub aimed: u64,
    pub aimed_allowed: u64,
    pub drops: BTreeMap<&'static str, u64>,
    pub hooks: BTreeMap<&'static str, u64>,
    pub families: BTreeMap<&'static str, u64>,
    pub protocols: BTreeMap<&'static str, u64>,
    /// The destination port is the first or last port of a range of a rule
    /// of the packet's protocol.
    pub range_boundary: u64,
    /// ... or one below the first, one above the last.
    pub range_beyond: u64,
    /// Destination ports 0, 1 and 65535.
    pub edge_ports: [u64; 3],
    /// An address of the packet lies in two or more of the policy's CIDRs
    /// (which then nest).
    pub nested_cidrs: u64,
    /// ... in four or more.
    pub deeply_nested: u64,
    /// An address of the packet lies in a `/0` of the policy, or in a
    /// broad prefix (`/1` to `/8` for IPv4, `/1` to `/16` for IPv6).
    pub world_peer: u64,
    pub broad_peer: u64,
    /// The destination port lies in a rule's range of the packet's
    /// protocol of each shape: one port, a prefix-aligned block, an
    /// unaligned range, 1024-65535, 1-65535.
    pub range_shapes: [u64; 5],
    /// The packet is judged at a local endpoint that shares a group with
    /// another local endpoint.
    pub shared_groups: u64,
    /// An address of the packet is the first or last of one of the
    /// policy's CIDRs, or one beyond.
    pub cidr_edges: u64,
    /// Allowed by a rule whose group peer names the other address, by
    /// family of the packet.
    pub group_peer_v4: u64,
    pub group_peer_v6: u64,
    /// Passed by conntrack, in the original direction and as replies.
    pub established: u64,
    pub replies: u64,
    /// Judged by the rules although a flow had been tracked (it expired).
    pub expired: u64,
    /// TCP without SYN admitted as the reverse of an allowed flow.
    pub reverse: u64,
    /// Replies of flows never let through, dropped by the rules.
    pub replies_dropped: u64,
}

impl Coverage {
    pub fn merge(&mut self, o: &Coverage) {
        self.policies += o.policies;
        self.packets += o.packets;
        self.judged += o.judged;
        self.not_for_endpoint += o.not_for_endpoint;
        self.allowed += o.allowed;
        self.denied += o.denied;
        self.aimed += o.aimed;
        self.aimed_allowed += o.aimed_allowed;
        for (a, b) in [
            (&mut self.drops, &o.drops),
            (&mut self.hooks, &o.hooks),
            (&mut self.families, &o.families),
            (&mut self.protocols, &o.protocols),
        ] {
            for (k, v) in b {
                *a.entry(k).or_default() += v;
            }
        }
        self.range_boundary += o.range_boundary;
        self.range_beyond += o.range_beyond;
        for i in 0..3 {
            self.edge_ports[i] += o.edge_ports[i];
        }
        self.nested_cidrs += o.nested_cidrs;
        self.deeply_nested += o.deeply_nested;
        self.world_peer += o.world_peer;
        self.broad_peer += o.broad_peer;
        for (a, b) in self.range_shapes.iter_mut().zip(o.range_shapes) {
            *a += b;
        }
        self.shared_groups += o.shared_groups;
        self.cidr_edges += o.cidr_edges;
        self.group_peer_v4 += o.group_peer_v4;
        self.group_peer_v6 += o.group_peer_v6;
        self.established += o.established;
        self.replies += o.replies;
        self.expired += o.expired;
        self.reverse += o.reverse;
        self.replies_dropped += o.replies_dropped;
    }

    pub fn record(&mut self, facts: &Facts, case: &Case, pkt: &Packet, j: &Judgement) {
        self.packets += 1;
        *self
            .hooks
            .entry(match pkt.at {
                At::From(_) => "from-endpoint",
                At::To(_) | At::ToVia(..) => "to-endpoint",
                At::Uplink => "uplink",
            })
            .or_default() += 1;
        *self
            .families
            .entry(if pkt.src.is_ipv6() { "ipv6" } else { "ipv4" })
            .or_default() += 1;
        *self
            .protocols
            .entry(match pkt.l4 {
                Transport::Tcp { .. } => "tcp",
                Transport::Udp { .. } => "udp",
                Transport::Sctp { .. } => "sctp",
                Transport::Icmp { proto: 1, .. } => "icmp",
                Transport::Icmp { .. } => "icmpv6",
                Transport::Other { .. } => "other",
                Transport::Nd { .. } => "nd",
            })
            .or_default() += 1;
        match j.expect {
            Expect::Pass(PassReason::NotForEndpoint) => {
                self.not_for_endpoint += 1;
                return;
            }
            Expect::Pass(PassReason::Established) => self.established += 1,
            Expect::Pass(PassReason::Reply) => self.replies += 1,
            _ => {}
        }
        self.judged += 1;
        if pkt.aimed {
            self.aimed += 1;
            self.aimed_allowed += matches!(j.expect, Expect::Pass(_)) as u64;
        }
        match j.expect {
            Expect::Pass(_) => self.allowed += 1,
            Expect::Drop(d) => {
                self.denied += 1;
                *self.drops.entry(d.name()).or_default() += 1;
            }
        }
        if j.step == Step::Reverse {
            self.reverse += 1;
        }
        if j.stale {
            self.expired += 1;
        }

        let proto = pkt.l4.proto();
        let dport = pkt.l4.dport();
        if matches!(proto, 6 | 17 | 132) {
            let ranges = facts.ranges.get(&proto).map(Vec::as_slice).unwrap_or_default();
            if ranges.iter().any(|p| dport == p.first || dport == p.last) {
                self.range_boundary += 1;
            }
            if ranges
                .iter()
                .any(|p| Some(dport) == p.first.checked_sub(1) || Some(dport) == p.last.checked_add(1))
            {
                self.range_beyond += 1;
            }
            for (i, edge) in [0u16, 1, 65535].iter().enumerate() {
                if dport == *edge {
                    self.edge_ports[i] += 1;
                }
            }
        }

        if matches!(proto, 6 | 17 | 132) {
            let ranges = facts.ranges.get(&proto).map(Vec::as_slice).unwrap_or_default();
            for p in ranges.iter().filter(|p| p.first <= dport && dport <= p.last) {
                let size = p.last as u32 - p.first as u32 + 1;
                let shape = match (p.first, p.last) {
                    (1, 65535) => 4,
                    (1024, 65535) => 3,
                    _ if size == 1 => 0,
                    _ if size.is_power_of_two() && (p.first as u32).is_multiple_of(size) => 1,
                    _ => 2,
                };
                self.range_shapes[shape] += 1;
            }
        }

        let cidrs = &facts.cidrs;
        let around = |a: &IpAddr| cidrs.iter().filter(|n| n.contains(a)).count();
        if [pkt.src, pkt.dst].iter().any(|a| around(a) >= 2) {
            self.nested_cidrs += 1;
        }
        if [pkt.src, pkt.dst].iter().any(|a| around(a) >= 4) {
            self.deeply_nested += 1;
        }
        let covering = |short: &dyn Fn(&ipnet::IpNet) -> bool| {
            [pkt.src, pkt.dst]
                .iter()
                .any(|a| cidrs.iter().any(|n| short(n) && n.contains(a)))
        };
        if covering(&|n| n.prefix_len() == 0) {
            self.world_peer += 1;
        }
        if covering(&|n| n.prefix_len() > 0 && n.prefix_len() <= if n.addr().is_ipv4() { 8 } else { 16 }) {
            self.broad_peer += 1;
        }
        let interface = match &pkt.at {
            At::From(i) | At::To(i) | At::ToVia(i, _) => Some(i.as_str()),
            At::Uplink => None,
        };
        if let Some(interface) = interface {
            let local = |e: &&hostwall::policy::Endpoint| e.is_local(NODE);
            let me = case
                .policy
                .endpoints
                .iter()
                .filter(local)
                .find(|e| e.interface.as_deref() == Some(interface));
            if let Some(me) = me
                && case
                    .policy
                    .endpoints
                    .iter()
                    .filter(local)
                    .any(|o| o.name != me.name && o.groups.iter().any(|g| me.groups.contains(g)))
            {
                self.shared_groups += 1;
            }
        }
        let at_edge = |a: IpAddr, n: &ipnet::IpNet| {
            let bits = |x: IpAddr| match x {
                IpAddr::V4(v) => u32::from(v) as u128,
                IpAddr::V6(v) => u128::from(v),
            };
            let (first, last, x) = (bits(n.network()), bits(n.broadcast()), bits(a));
            a.is_ipv6() == n.addr().is_ipv6()
                && (x == first || x == last || Some(x) == first.checked_sub(1) || Some(x) == last.checked_add(1))
        };
        if [pkt.src, pkt.dst].iter().any(|a| cidrs.iter().any(|n| at_edge(*a, n))) {
            self.cidr_edges += 1;
        }

        if let (Expect::Pass(PassReason::NewAllowed), Some(v)) = (j.expect, &j.verdict) {
            let by_group = |refs: &[compile::RuleRef], other: IpAddr| {
                refs.iter().any(|r| {
                    let g = &case.policy.groups[&r.group];
                    let rule = match r.direction {
                        Direction::Ingress => &g.ingress[r.index],
                        Direction::Egress => &g.egress[r.index],
                    };
                    rule.peers.iter().any(|p| match p {
                        Peer::Group(name) => case
                            .policy
                            .endpoints
                            .iter()
                            .any(|e| e.groups.contains(name) && e.addresses.contains(&other)),
                        _ => false,
                    })
                })
            };
            let (src, dst) = match j.step {
                Step::Reverse => (pkt.dst, pkt.src),
                _ => (pkt.src, pkt.dst),
            };
            if by_group(&v.egress, dst) || by_group(&v.ingress, src) {
                if pkt.src.is_ipv6() {
                    self.group_peer_v6 += 1;
                } else {
                    self.group_peer_v4 += 1;
                }
            }
        }
    }

    fn share(&self, n: u64) -> f64 {
        n as f64 / self.judged.max(1) as f64
    }

    pub fn summary(&self) -> String {
        format!(
            "{} policies, {} packets: {} judged ({:.1}% allowed, {:.1}% denied), {} not for a local endpoint\n\
             {} aimed at a rule, {:.1}% of them allowed\n\
             drops {:?}\nhooks {:?}\nfamilies {:?}\nprotocols {:?}\n\
             range boundaries {} ({:.1}%), one beyond {} ({:.1}%), ports 0/1/65535 {:?}\n\
             nested CIDRs {} ({:.1}%), four deep {}, in /0 {}, in a broad prefix {}, CIDR edges {} ({:.1}%), group peers v4 {} v6 {}\n\
             range shapes (single, aligned, unaligned, 1024-65535, 1-65535) {:?}, sharing a group {}\n\
             established {}, replies {}, expired {}, reverse {}, replies dropped {}",
            self.policies,
            self.packets,
            self.judged,
            100.0 * self.share(self.allowed),
            100.0 * self.share(self.denied),
            self.not_for_endpoint,
            self.aimed,
            100.0 * self.aimed_allowed as f64 / self.aimed.max(1) as f64,
            self.drops,
            self.hooks,
            self.families,
            self.protocols,
            self.range_boundary,
            100.0 * self.share(self.range_boundary),
            self.range_beyond,
            100.0 * self.share(self.range_beyond),
            self.edge_ports,
            self.nested_cidrs,
            100.0 * self.share(self.nested_cidrs),
            self.deeply_nested,
            self.world_peer,
            self.broad_peer,
            self.cidr_edges,
            100.0 * self.share(self.cidr_edges),
            self.group_peer_v4,
            self.group_peer_v6,
            self.range_shapes,
            self.shared_groups,
            self.established,
            self.replies,
            self.expired,
            self.reverse,
            self.replies_dropped,
        )
    }

    /// The generator's strength: every verdict is common, and the places
    /// compilers get wrong are hit often.
    pub fn assert_strong(&self) {
        let mut weak = Vec::new();
        let mut at_least = |what: &str, n: u64, share: f64| {
            if self.share(n) < share {
                weak.push(format!(
                    "{what}: {n} ({:.2}% < {:.2}%)",
                    100.0 * self.share(n),
                    100.0 * share
                ));
            }
        };
        at_least("allowed", self.allowed, 0.25);
        at_least("denied", self.denied, 0.25);
        for reason in [
            DropReason::EgressDenied,
            DropReason::IngressDenied,
            DropReason::SpoofedSource,
            DropReason::LocalAddressWrongPath,
            DropReason::HostAddressSpoofed,
        ] {
            at_least(reason.name(), self.drops.get(reason.name()).copied().unwrap_or(0), 0.01);
        }
        for hook in ["from-endpoint", "to-endpoint", "uplink"] {
            at_least(hook, self.hooks.get(hook).copied().unwrap_or(0), 0.1);
        }
        for family in ["ipv4", "ipv6"] {
            at_least(family, self.families.get(family).copied().unwrap_or(0), 0.2);
        }
        for proto in ["tcp", "udp", "sctp", "icmp", "icmpv6", "other"] {
            at_least(proto, self.protocols.get(proto).copied().unwrap_or(0), 0.02);
        }
        at_least("range boundaries", self.range_boundary, 0.1);
        at_least("one beyond a range", self.range_beyond, 0.05);
        for (i, port) in ["port 0", "port 1", "port 65535"].iter().enumerate() {
            at_least(port, self.edge_ports[i], 0.002);
        }
        at_least("nested CIDRs", self.nested_cidrs, 0.1);
        at_least("CIDRs nested four deep", self.deeply_nested, 0.02);
        at_least("in a /0 peer", self.world_peer, 0.05);
        at_least("in a broad prefix", self.broad_peer, 0.05);
        for (i, shape) in ["single-port", "prefix-aligned", "unaligned", "1024-65535", "1-65535"]
            .iter()
            .enumerate()
        {
            at_least(&format!("{shape} ranges"), self.range_shapes[i], 0.01);
        }
        at_least("local endpoints sharing a group", self.shared_groups, 0.1);
        at_least("CIDR edges", self.cidr_edges, 0.05);
        at_least("group peers over IPv4", self.group_peer_v4, 0.01);
        at_least("group peers over IPv6", self.group_peer_v6, 0.01);
        assert!(
            weak.is_empty(),
            "the generated cases are too weak:\n{}\n\n{}",
            weak.join("\n"),
            self.summary()
        );
    }
}

/// Runs `case` on `f` packet by packet with conntrack flushed after every
/// packet that passed, so each is judged as a new flow; returns every
/// disagreement with the model.
pub fn check_stateless(
    f: &mut Fixture,
    case: &Case,
    compiler: Compiler,
    mut cov: Option<&mut Coverage>,
) -> Vec<String> {
    f.flush_conntrack();
    let compiled = compiler.compile(f, &case.policy, &case.host);
    f.apply_compiled(&compiled);
    let mut model = Model::new(&case.policy, &case.host);
    let mut problems = Vec::new();
    let facts = Facts::of(case);
    if let Some(c) = cov.as_deref_mut() {
        c.policies += 1;
    }
    for pkt in &case.packets {
        let start = Instant::now();
        let observed = f.run(pkt.at.hook(), &pkt.frame());
        let window = Window {
            start,
            end: Instant::now(),
        };
        let passed = matches!(observed, Expect::Pass(_));
        let tracked = if passed { f.take_conntrack() } else { Vec::new() };
        match model.step(pkt, observed, window) {
            Ok(j) => {
                if let Err(e) = check_tracked(&compiled, pkt, &j, &tracked) {
                    problems.push(format!("{}\n    {e}", pkt.source()));
                }
                if let Some(c) = cov.as_deref_mut() {
                    c.record(&facts, case, pkt, &j);
                }
            }
            Err(j) => problems.push(format!(
                "{}\n    datapath: {observed:?}, expected {:?} (reference: {:?})",
                pkt.source(),
                j.expect,
                j.verdict.map(|v| v.denied),
            )),
        }
        model.forget();
    }
    problems
}

/// A new flow that passed is tracked once, with rules the reference lists
/// as allowing it; nothing else is tracked.
fn check_tracked(
    compiled: &Compiled,
    pkt: &Packet,
    j: &Judgement,
    tracked: &[(hostwall_common::CtKey, hostwall_common::CtEntry)],
) -> Result<(), String> {
    // ICMP other than echo requests is judged packet by packet.
    let tracked_kind = match pkt.l4 {
        Transport::Icmp { proto, ty, .. } => (proto == 1 && ty == 8) || (proto == 58 && ty == 128),
        _ => true,
    };
    let expect_entry = j.expect == Expect::Pass(PassReason::NewAllowed) && tracked_kind && !j.notes.never_tracked;
    if !expect_entry {
        return if tracked.is_empty() {
            Ok(())
        } else {
            Err(format!("tracked {} flows, expected none", tracked.len()))
        };
    }
    let [(_, entry)] = tracked else {
        return Err(format!("tracked {} flows, expected one", tracked.len()));
    };
    let v = j.verdict.as_ref().expect("the rules decided");
    let ids = |refs: &[compile::RuleRef]| -> Vec<u32> { refs.iter().filter_map(|r| compiled.rule_id(r)).collect() };
    let side = |name: &str, got: u32, local: bool, allowing: Vec<u32>| {
        if (local && !allowing.contains(&got)) || (!local && got != 0) {
            Err(format!(
                "{name} rule {got} ({:?}), the reference allows by {allowing:?}",
                compiled.rule(got)
            ))
        } else {
            Ok(())
        }
    };
    side("egress", entry.rule_egress, v.sender.is_some(), ids(&v.egress))?;
    side("ingress", entry.rule_ingress, v.receiver.is_some(), ids(&v.ingress))
}

/// A run of generated cases.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    /// Case indices `first..first + policies`.
    pub first: u64,
    pub policies: u64,
    pub packets: RangeInclusive<usize>,
    pub compiler: Compiler,
    /// How many disagreeing cases to shrink (each takes a while).
    pub shrink: usize,
    /// Print progress every this many policies (0: never).
    pub progress: u64,
}

#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub index: u64,
    pub problems: Vec<String>,
    /// The shrunk case, as the body of a regression test.
    pub minimal: Option<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "case {} of seed {:#x} (again: cargo xtask fuzz-datapath --seed {:#x} --case {}):",
            self.index, self.seed, self.seed, self.index
        )?;
        for p in self.problems.iter().take(5) {
            writeln!(f, "  {p}")?;
        }
        if self.problems.len() > 5 {
            writeln!(f, "  ... {} more", self.problems.len() - 5)?;
        }
        if let Some(m) = &self.minimal {
            writeln!(f, "shrunk to:\n{m}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub coverage: Coverage,
    pub failures: Vec<Failure>,
    pub elapsed: Duration,
}

impl Report {
    pub fn disagreements(&self) -> usize {
        self.failures.iter().map(|f| f.problems.len()).sum()
    }
}

/// The RNG of case `index` of `seed`.
pub fn runner(seed: u64, index: u64) -> TestRunner {
    let mut x = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    let config = Config {
        failure_persistence: None,
        max_shrink_iters: 1024,
        max_shrink_time: 60_000,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// A generated value that can be written out as a regression test.
pub trait Source: Sized {
    fn source(&self) -> String;

    /// Smaller values that may still fail on their own, for after
    /// proptest's shrinking (which cannot go below a strategy's minimum
    /// length).
    fn parts(&self) -> Vec<Self> {
        Vec::new()
    }
}

impl Source for Case {
    fn source(&self) -> String {
        Case::source(self)
    }

    /// Each packet alone: packets of a case are judged independently.
    fn parts(&self) -> Vec<Case> {
        self.packets
            .iter()
            .map(|p| Case {
                packets: vec![p.clone()],
                ..self.clone()
            })
            .collect()
    }
}

/// Runs the plan's stateless check on as many threads as there are CPUs,
/// each with a fixture of its own.
pub fn run(plan: &Plan) -> Report {
    let packets = plan.packets.clone();
    run_with(
        plan,
        move || generate::case(packets.clone(), false),
        |f, case, cov| check_stateless(f, case, plan.compiler, cov),
    )
}

/// Runs `check` on the plan's cases of `strategy`.
pub fn run_with<S, G, F>(plan: &Plan, strategy: G, check: F) -> Report
where
    S: Strategy,
    S::Value: Source,
    G: Fn() -> S + Sync,
    F: Fn(&mut Fixture, &S::Value, Option<&mut Coverage>) -> Vec<String> + Sync,
{
    let start = Instant::now();
    let next = AtomicU64::new(plan.first);
    let end = plan.first + plan.policies;
    let report = Mutex::new(Report::default());
    let shrink_budget = Mutex::new(plan.shrink);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
        .min(plan.policies)
        .max(1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut f = Fixture::with_interfaces(&POOL);
                let strategy = strategy();
                let mut cov = Coverage::default();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= end {
                        break;
                    }
                    let mut runner = runner(plan.seed, index);
                    let tree = strategy.new_tree(&mut runner).expect("generate a case");
                    let problems = check(&mut f, &tree.current(), Some(&mut cov));
                    if plan.progress > 0 && (index + 1 - plan.first).is_multiple_of(plan.progress) {
                        eprintln!(
                            "{} of {} policies, {:.0?}",
                            index + 1 - plan.first,
                            plan.policies,
                            start.elapsed()
                        );
                    }
                    if problems.is_empty() {
                        continue;
                    }
                    let shrink = {
                        let mut b = shrink_budget.lock().unwrap();
                        let go = *b > 0;
                        *b = b.saturating_sub(1);
                        go
                    };
                    let minimal = if shrink {
                        shrunk(&mut runner, tree, &mut f, &check)
                    } else {
                        None
                    };
                    report.lock().unwrap().failures.push(Failure {
                        seed: plan.seed,
                        index,
                        problems,
                        minimal,
                    });
                }
                report.lock().unwrap().coverage.merge(&cov);
            });
        }
    });
    let mut report = report.into_inner().unwrap();
    report.failures.sort_by_key(|f| f.index);
    report.elapsed = start.elapsed();
    report
}

/// The smallest case proptest finds that still disagrees.
fn shrunk<T, F>(runner: &mut TestRunner, tree: T, f: &mut Fixture, check: &F) -> Option<String>
where
    T: ValueTree,
    T::Value: Source,
    F: Fn(&mut Fixture, &T::Value, Option<&mut Coverage>) -> Vec<String>,
{
    let f = std::cell::RefCell::new(f);
    let result = runner.run_one(tree, |case| {
        let problems = check(&mut f.borrow_mut(), &case, None);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TestCaseError::fail(problems.join("\n")))
        }
    });
    match result {
        Err(TestError::Fail(why, case)) => {
            let mut f = f.borrow_mut();
            let failing: Vec<_> = case
                .parts()
                .into_iter()
                .filter(|part| !check(&mut f, part, None).is_empty())
                .collect();
            let shown = match failing.first() {
                Some(part) => part.source(),
                None => case.source(),
            };
            Some(format!("{shown}\n// {why}"))
        }
        _ => None,
    }
}
