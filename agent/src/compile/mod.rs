//! Compiles a validated policy into the contents of the datapath's maps.
//!
//! The compiled form is linear in what the file says and answers "does a
//! rule allow this packet?" with a fixed number of lookups per group of the
//! deciding endpoint:
//!
//! - Every endpoint address and every address of the host is given its
//!   *labels* (`HW_PEER4`/`HW_PEER6`): the groups named as peers that its
//!   endpoint belongs to, and `host` for the host's own addresses
//!   ([`peers`]).
//! - A rule's group and `host` peers make one `HW_POLICY` entry per label
//!   (a group counts once, not per member) and per prefix-aligned block of
//!   its port range, keyed by the group that holds it; the longest match of
//!   a lookup settles protocol and port, so overlapping ranges need no
//!   splitting.
//! - A rule's CIDR and prefix-list peers are entries of the CIDR tries
//!   (`HW_CIDR4`/`HW_CIDR6`), keyed by the group that holds it, a tier and
//!   the CIDR itself: the longest match over the other end's address
//!   answers for every CIDR of the group at once, nested CIDRs included
//!   ([`cidrs`]).
//! - A new flow looks up, for each of the deciding endpoint's groups, each
//!   label of the other end (at most `MAX_PEER_LABELS`) and the three CIDR
//!   tiers; the first hit wins.
//!
//! [`legacy`] keeps the earlier form (peer classes and one policy id per
//! set of groups) for eBPF objects of earlier builds, which the benchmark
//! runs side by side with this one.

mod cidrs;
pub mod legacy;
mod lookup;
mod peers;
mod ports;
pub mod synthetic;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use hostwall_common::{
    CidrKey, CidrValue, DIR_EGRESS, DIR_INGRESS, EndpointInfo, FAMILY_V4, FAMILY_V6, Groups, LOCAL_LINK_ONLY,
    LOCAL_NO_PATH, LocalAddr, LocalKey, MAX_ENDPOINT_INTERFACES, MAX_GROUPS, MAX_LOCAL_ENTRIES, MAX_PEER_ENTRIES,
    MAX_POLICY_ENTRIES, MAX_RULES, MAX_SRC_ENTRIES, POLICY_FIXED_BITS, POLICY_PROTO_BITS, PeerInfo, PolicyKey,
    PolicyValue, Settings, SrcKey,
};

use crate::policy::{Direction, Midstream, Peer, Policy, Proto, Rule};
pub use lookup::{Lookup, Tables};
use peers::Prefixes;
pub use ports::{PortBlock, port_blocks, port_runs};

/// Where a rule id comes from: the n-th rule of a group's ingress or egress.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub group: String,
    pub direction: Direction,
    pub index: usize,
}

/// A local endpoint as the datapath knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub name: String,
    pub interface: String,
    /// `None` while the interface does not exist.
    pub ifindex: Option<u32>,
    pub info: EndpointInfo,
}

/// The contents of one policy slot.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub endpoints: Vec<LocalEndpoint>,
    pub src: Vec<SrcKey>,
    /// Every address of this host (its own and its local endpoints') and
    /// the interface a packet from it must enter by.
    pub local: Vec<(LocalKey, LocalAddr)>,
    pub peer4: Vec<(u32, [u8; 4], PeerInfo)>,
    pub peer6: Vec<(u32, [u8; 16], PeerInfo)>,
    pub policy: Vec<(u32, PolicyKey, PolicyValue)>,
    /// The CIDR tries' entries (prefix length, key, value) by family.
    pub cidr4: Vec<(u32, CidrKey<4>, CidrValue)>,
    pub cidr6: Vec<(u32, CidrKey<16>, CidrValue)>,
    /// Every rule with its id, in policy order.
    pub rules: Vec<(u32, RuleRef)>,
    /// Group ids (`PolicyKey::group`, `LABEL_GROUP`), by name.
    pub group_ids: BTreeMap<String, u32>,
    pub settings: Settings,
    /// `settings.conntrack.midstream`; `HW_MIDSTREAM` is written from it
    /// and the agent's start.
    pub midstream: Midstream,
    /// The same policy in the form of earlier builds' objects, when asked
    /// for ([`legacy::compile_both`]).
    pub legacy: Option<Box<legacy::Legacy>>,
}

impl Compiled {
    /// Drops the entries of the peer, policy and CIDR tries (the slot they
    /// were written to holds them), keeping what the agent reads.
    pub fn release_tables(&mut self) {
        self.peer4 = Vec::new();
        self.peer6 = Vec::new();
        self.policy = Vec::new();
        self.cidr4 = Vec::new();
        self.cidr6 = Vec::new();
    }

    /// Entries of the policy maps one slot holds (`HW_POLICY`, `HW_CIDR4`,
    /// `HW_CIDR6`): what the linear bound counts.
    pub fn policy_entries(&self) -> usize {
        self.policy.len() + self.cidr4.len() + self.cidr6.len()
    }

    pub fn rule_id(&self, rule: &RuleRef) -> Option<u32> {
        self.rules.iter().find(|(_, r)| r == rule).map(|(id, _)| *id)
    }

    pub fn rule(&self, id: u32) -> Option<&RuleRef> {
        self.rules.iter().find(|(i, _)| *i == id).map(|(_, r)| r)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("rule {index} of {group} {} has no rule id", direction.as_str())]
    NoRuleId {
        group: String,
        direction: Direction,
        index: usize,
    },
    #[error(
        "the {} {} rules of group {group} need a walk of {steps} entries over nested CIDRs, more than {max}: \
         fewer disjoint port ranges wider than {spread} ports on CIDRs inside one another",
        direction.as_str(),
        crate::policy::Proto::Number(*proto).name(),
        max = hostwall_common::MAX_RANGE_STEPS,
        spread = cidrs::MAX_SPREAD_WIDTH
    )]
    RangeWalk {
        group: String,
        direction: Direction,
        proto: u8,
        steps: usize,
    },
    #[error("the policy needs {needed} entries in {map}, which holds {capacity} ({} too many)", needed - capacity)]
    MapFull {
        map: &'static str,
        needed: usize,
        capacity: usize,
    },
}

/// Capacities of the maps a compiled policy must fit in.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub policy_entries: usize,
    pub peer_entries: usize,
    pub src_entries: usize,
    pub local_entries: usize,
    pub interfaces: usize,
    pub rules: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            policy_entries: MAX_POLICY_ENTRIES as usize,
            peer_entries: MAX_PEER_ENTRIES as usize,
            src_entries: MAX_SRC_ENTRIES as usize,
            local_entries: MAX_LOCAL_ENTRIES as usize,
            interfaces: MAX_ENDPOINT_INTERFACES as usize,
            // Rule id 0 means "no rule".
            rules: MAX_RULES as usize - 1,
        }
    }
}

/// What the compiler needs to know about the host it runs on.
pub struct HostView<'a> {
    /// The agent's node name; endpoints of other nodes are remote.
    pub node: &'a str,
    /// The host's own addresses (what the `host` peer matches).
    pub host_addresses: &'a [IpAddr],
    /// Resolves an interface name to its ifindex, if it exists.
    pub ifindex: &'a dyn Fn(&str) -> Option<u32>,
    /// The MAC fixed for each endpoint interface (by ifindex); an interface
    /// missing here gets none, and its frames are all dropped.
    pub macs: &'a BTreeMap<u32, [u8; 6]>,
}

pub fn compile(policy: &Policy, host: &HostView<'_>) -> Result<Compiled, CompileError> {
    compile_with(policy, host, &Limits::default(), &positional_ids(policy))
}

/// Rule ids by position: groups by name, ingress then egress, rules in
/// file order, from 1.
pub fn positional_ids(policy: &Policy) -> BTreeMap<RuleRef, u32> {
    let mut ids = BTreeMap::new();
    for (name, group) in &policy.groups {
        for (direction, rules) in [(Direction::Ingress, &group.ingress), (Direction::Egress, &group.egress)] {
            for index in 0..rules.len() {
                let next = ids.len() as u32 + 1;
                ids.insert(
                    RuleRef {
                        group: name.clone(),
                        direction,
                        index,
                    },
                    next,
                );
            }
        }
    }
    ids
}

/// Compiles with the given rule ids (every rule of the policy must have
/// one), refusing a policy that does not fit `limits`.
pub fn compile_with(
    policy: &Policy,
    host: &HostView<'_>,
    limits: &Limits,
    rule_ids: &BTreeMap<RuleRef, u32>,
) -> Result<Compiled, CompileError> {
    compile_inner(policy, host, limits, rule_ids, None)
}

/// A deliberate compiler bug. The differential tests compile with one to
/// show that they notice; nothing else uses them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Port ranges of more than one port lose their last port.
    OffByOneRange,
    /// A CIDR's range entry leaves out the ranges of the CIDRs around it,
    /// so a lookup forgets the CIDRs that contain the nearest one.
    RangesUnmerged,
    /// A range entry whose runs did not fit names no next entry: the rest
    /// of its chain is skipped.
    RangeWalkCut,
    /// The CIDR tries' tier for every protocol is left empty.
    AnyTierSkipped,
    /// An endpoint's groups after its first are never looked up.
    FirstGroupOnly,
}

/// [`compile_with`] with `mutation` planted in it.
#[doc(hidden)]
pub fn compile_with_mutation(
    policy: &Policy,
    host: &HostView<'_>,
    limits: &Limits,
    rule_ids: &BTreeMap<RuleRef, u32>,
    mutation: Mutation,
) -> Result<Compiled, CompileError> {
    compile_inner(policy, host, limits, rule_ids, Some(mutation))
}

/// The rules and their ids, checked against `limits`.
fn rules_with_ids(
    policy: &Policy,
    limits: &Limits,
    rule_ids: &BTreeMap<RuleRef, u32>,
) -> Result<Vec<(u32, RuleRef)>, CompileError> {
    let mut out = Vec::new();
    for (name, group) in &policy.groups {
        for (direction, rules) in [(Direction::Ingress, &group.ingress), (Direction::Egress, &group.egress)] {
            for index in 0..rules.len() {
                let r = RuleRef {
                    group: name.clone(),
                    direction,
                    index,
                };
                let id = *rule_ids.get(&r).ok_or(CompileError::NoRuleId {
                    group: name.clone(),
                    direction,
                    index,
                })?;
                if id as usize > limits.rules {
                    return Err(CompileError::MapFull {
                        map: "HW_RULE_STATS",
                        needed: id as usize,
                        capacity: limits.rules,
                    });
                }
                out.push((id, r));
            }
        }
    }
    check("HW_RULE_STATS", out.len(), limits.rules)?;
    Ok(out)
}

/// Local endpoints with their interfaces, source guard and the host's
/// addresses: what both compiled forms share. Returns the endpoints' ids
/// by index in `policy.endpoints`.
fn locals(
    policy: &Policy,
    host: &HostView<'_>,
    limits: &Limits,
    out: &mut Compiled,
) -> Result<BTreeMap<usize, u32>, CompileError> {
    let mut ids: BTreeMap<usize, u32> = BTreeMap::new();
    // Endpoint addresses win over the host's: a packet from one must come
    // through that endpoint's interface.
    let mut local: HashMap<LocalKey, LocalAddr> = HashMap::new();
    let mut mac_uses: HashMap<[u8; 6], usize> = HashMap::new();
    for mac in host.macs.values() {
        *mac_uses.entry(*mac).or_default() += 1;
    }
    for addr in host.host_addresses {
        let (family, bytes) = addr_bytes(*addr);
        local.insert(
            LocalKey {
                family: family as u32,
                addr: bytes,
            },
            LocalAddr { ifindex: 0, flags: 0 },
        );
    }
    for (i, ep) in policy.endpoints.iter().enumerate() {
        if !ep.is_local(host.node) {
            continue;
        }
        let endpoint_id = i as u32 + 1;
        ids.insert(i, endpoint_id);
        let interface = ep.interface.clone().unwrap_or_default();
        let ifindex = (host.ifindex)(&interface);
        let info = EndpointInfo::new(
            endpoint_id,
            ifindex.and_then(|i| host.macs.get(&i).copied()).unwrap_or([0; 6]),
        );
        if ifindex.is_none() {
            // An endpoint whose interface is not there yet: its addresses
            // come by no path at all.
            for addr in &ep.addresses {
                let (family, bytes) = addr_bytes(*addr);
                local.insert(
                    LocalKey {
                        family: family as u32,
                        addr: bytes,
                    },
                    LocalAddr {
                        ifindex: LOCAL_NO_PATH,
                        flags: 0,
                    },
                );
            }
        }
        if let Some(ifindex) = ifindex {
            for addr in &ep.addresses {
                let (family, bytes) = addr_bytes(*addr);
                out.src.push(SrcKey {
                    ifindex,
                    family,
                    _pad: [0; 3],
                    addr: bytes,
                });
                let flags = if is_link_local(*addr) { LOCAL_LINK_ONLY } else { 0 };
                local.insert(
                    LocalKey {
                        family: family as u32,
                        addr: bytes,
                    },
                    LocalAddr { ifindex, flags },
                );
            }
            // A MAC two interfaces share (the agent never fixes one so)
            // gives neither its link-local address.
            let shared = mac_uses.get(&info.mac).is_some_and(|n| *n > 1);
            if info.mac != [0; 6] && !shared {
                local.insert(
                    LocalKey {
                        family: FAMILY_V6 as u32,
                        addr: eui64_link_local(info.mac),
                    },
                    LocalAddr {
                        ifindex,
                        flags: LOCAL_LINK_ONLY,
                    },
                );
            }
        }
        out.endpoints.push(LocalEndpoint {
            name: ep.name.clone(),
            interface,
            ifindex,
            info,
        });
    }
    check("HW_IFACE", out.endpoints.len(), limits.interfaces)?;
    check("HW_SRC", out.src.len(), limits.src_entries)?;
    out.local = local.into_iter().collect();
    out.local.sort_by_key(|(k, _)| (k.family, k.addr));
    check("HW_LOCAL", out.local.len(), limits.local_entries)?;
    Ok(ids)
}

fn compile_inner(
    policy: &Policy,
    host: &HostView<'_>,
    limits: &Limits,
    rule_ids: &BTreeMap<RuleRef, u32>,
    mutation: Option<Mutation>,
) -> Result<Compiled, CompileError> {
    let mut out = Compiled {
        settings: settings(policy),
        midstream: policy.settings.conntrack.midstream,
        ..Default::default()
    };
    out.rules = rules_with_ids(policy, limits, rule_ids)?;
    out.group_ids = policy
        .groups
        .keys()
        .enumerate()
        .map(|(i, name)| (name.clone(), i as u32 + 1))
        .collect();
    let endpoint_ids = locals(policy, host, limits, &mut out)?;

    // Each local endpoint's groups that hold rules: the first half of every
    // policy lookup's key, in its interface's entry and in its addresses'
    // peer entries.
    let mut groups_of: BTreeMap<u32, Groups> = BTreeMap::new();
    for (&index, &id) in &endpoint_ids {
        let ep = &policy.endpoints[index];
        let mut groups = Groups::default();
        let with_rules = ep.groups.iter().filter(|g| {
            policy
                .groups
                .get(*g)
                .is_some_and(|g| !g.ingress.is_empty() || !g.egress.is_empty())
        });
        for g in with_rules.take(MAX_GROUPS) {
            groups.ids[groups.n as usize] = out.group_ids[g];
            groups.n += 1;
            if mutation == Some(Mutation::FirstGroupOnly) {
                break;
            }
        }
        groups_of.insert(id, groups);
    }
    for ep in &mut out.endpoints {
        ep.info.groups = groups_of[&ep.info.endpoint];
    }

    // Labels of every address.
    let prefixes = Prefixes::build(policy, host.host_addresses, &out.group_ids, &endpoint_ids);
    for (net, mut info) in prefixes.entries().iter().copied() {
        if let Some(groups) = groups_of.get(&info.local_endpoint) {
            info.groups = *groups;
        }
        match net {
            ipnet::IpNet::V4(n) => out.peer4.push((n.prefix_len() as u32, n.network().octets(), info)),
            ipnet::IpNet::V6(n) => out.peer6.push((n.prefix_len() as u32, n.network().octets(), info)),
        }
    }
    check("HW_PEER4", out.peer4.len(), limits.peer_entries)?;
    check("HW_PEER6", out.peer6.len(), limits.peer_entries)?;

    // One entry per rule, group or `host` peer and port block, for the groups
    // a local endpoint holds (no lookup names another group). Where two
    // rules of a group make the same entry, the first keeps it.
    let held: std::collections::BTreeSet<u32> = groups_of
        .values()
        .flat_map(|g| g.ids[..g.n as usize].iter().copied())
        .collect();
    let mut seen: std::collections::HashSet<(u32, PolicyKey)> = std::collections::HashSet::new();
    for (id, r) in &out.rules {
        if !held.contains(&out.group_ids[&r.group]) {
            continue;
        }
        let g = &policy.groups[&r.group];
        let rule = match r.direction {
            Direction::Ingress => &g.ingress[r.index],
            Direction::Egress => &g.egress[r.index],
        };
        let dir = match r.direction {
            Direction::Ingress => DIR_INGRESS,
            Direction::Egress => DIR_EGRESS,
        };
        let group = out.group_ids[&r.group];
        for label in prefixes.rule_labels(rule) {
            for (len, key) in rule_keys(rule, group, label, dir, mutation) {
                if seen.insert((len, key)) {
                    out.policy.push((len, key, PolicyValue { rule: *id }));
                }
            }
        }
    }
    check("HW_POLICY", out.policy.len(), limits.policy_entries)?;

    // Rules' CIDR and prefix-list peers.
    let cidrs = cidrs::build(policy, &out.rules, &out.group_ids, &held, mutation)?;
    out.cidr4 = cidrs.v4;
    out.cidr6 = cidrs.v6;
    check("HW_CIDR4", out.cidr4.len(), limits.policy_entries)?;
    check("HW_CIDR6", out.cidr6.len(), limits.policy_entries)?;
    Ok(out)
}

/// A rule's entries under one label: (prefix length, key) per port block.
fn rule_keys(rule: &Rule, group: u32, label: u32, dir: u8, mutation: Option<Mutation>) -> Vec<(u32, PolicyKey)> {
    let key = |proto: u8, port: u16| PolicyKey::entry(group, label, dir, proto, port);
    let Proto::Number(proto) = rule.proto else {
        return vec![(POLICY_FIXED_BITS, key(0, 0))];
    };
    let (first, mut last) = rule_range(rule);
    if mutation == Some(Mutation::OffByOneRange) && rule.ports.is_some() && last > first {
        last -= 1;
    }
    port_blocks(&[(first, last, 0)])
        .into_iter()
        .map(|b| (POLICY_PROTO_BITS + b.prefix_bits, key(proto, b.start)))
        .collect()
}

/// The prefix-aligned blocks a rule's entries take under one label.
fn rule_blocks(rule: &Rule) -> usize {
    match rule.proto {
        Proto::All => 1,
        Proto::Number(_) => {
            let (first, last) = rule_range(rule);
            port_blocks(&[(first, last, 0)]).len()
        }
    }
}

/// The number the compiled form's size is bounded by: over all rules, the
/// rule's port blocks times its own peers (a CIDR or prefix-list entry
/// counts 1, a group 1, `host` 1).
pub fn linear_size(policy: &Policy) -> usize {
    let mut total = 0;
    for group in policy.groups.values() {
        for rule in group.ingress.iter().chain(&group.egress) {
            let peers: usize = rule
                .peers
                .iter()
                .map(|p| match p {
                    Peer::PrefixList(name) => policy.prefix_lists.get(name).map_or(0, |l| l.len()),
                    _ => 1,
                })
                .sum();
            total += peers * rule_blocks(rule);
        }
    }
    total
}

fn check(map: &'static str, needed: usize, capacity: usize) -> Result<(), CompileError> {
    if needed > capacity {
        return Err(CompileError::MapFull { map, needed, capacity });
    }
    Ok(())
}

/// The inclusive range of the key's port field a rule covers.
pub(crate) fn rule_range(rule: &Rule) -> (u16, u16) {
    if let Some(p) = rule.ports {
        return (p.first, p.last);
    }
    if let Some(icmp) = rule.icmp {
        let base = (icmp.ty as u16) << 8;
        return match icmp.code {
            Some(code) => (base | code as u16, base | code as u16),
            None => (base, base | 0xff),
        };
    }
    (0, u16::MAX)
}

fn settings(policy: &Policy) -> Settings {
    let ct = &policy.settings.conntrack;
    let ns = |d: std::time::Duration| d.as_nanos().min(u64::MAX as u128) as u64;
    Settings {
        tcp_established_ns: ns(ct.tcp_established),
        tcp_other_ns: ns(ct.tcp_other),
        udp_ns: ns(ct.udp),
        udp_stream_ns: ns(ct.udp_stream),
        icmp_ns: ns(ct.icmp),
        other_ns: ns(ct.other),
        fragment_ns: 30_000_000_000,
        max_flows_per_endpoint: ct.max_per_endpoint,
        max_inbound_per_endpoint: ct.max_inbound_per_endpoint,
        // Set when the policy is written (`Slots::apply`).
        generation: 0,
        // Set by the agent for the policy it applies.
        policy_generation: 0,
    }
}

/// The IPv6 link-local address a MAC's modified EUI-64 gives (RFC 4291):
/// what a container's kernel uses unless told otherwise.
pub fn eui64_link_local(mac: [u8; 6]) -> [u8; 16] {
    let mut a = [0; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    a
}

fn is_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

pub fn addr_bytes(addr: IpAddr) -> (u8, [u8; 16]) {
    let mut out = [0; 16];
    match addr {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            (FAMILY_V4, out)
        }
        IpAddr::V6(a) => (FAMILY_V6, a.octets()),
    }
}

#[cfg(test)]
mod tests;
