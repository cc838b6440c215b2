//! Compiles a validated policy into the contents of the datapath's maps.
//!
//! The compiled form answers "does a rule allow this packet?" with a fixed
//! number of lookups, whatever the number of rules:
//!
//! - Addresses are sorted into peer classes: two addresses are in the same
//!   class when exactly the same rule peers (CIDRs, prefix lists, groups,
//!   the host) match them. Each prefix that any peer names becomes an LPM
//!   entry whose class already includes every shorter prefix around it,
//!   so the longest match alone is exact even when CIDRs overlap.
//! - Rules become LPM entries keyed by (policy, class, direction,
//!   protocol, port prefix). Overlapping port ranges are first split into
//!   disjoint intervals, each credited to the first rule (in file order)
//!   that covers it, then into prefix-aligned blocks.

mod classes;
mod lookup;
mod ports;
pub mod synthetic;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use hostwall_common::{
    DIR_EGRESS, DIR_INGRESS, EndpointInfo, FAMILY_V4, FAMILY_V6, LOCAL_LINK_ONLY, LOCAL_NO_PATH, LocalAddr, LocalKey,
    MAX_ENDPOINT_INTERFACES, MAX_LOCAL_ENTRIES, MAX_PEER_ENTRIES, MAX_POLICY_ENTRIES, MAX_RULES, MAX_SRC_ENTRIES,
    POLICY_FIXED_BITS, PeerInfo, PolicyKey, PolicyValue, Settings, SrcKey,
};

use crate::policy::{Direction, Midstream, Peer, Policy, Proto, Rule};
pub use classes::Label;
use classes::PeerClasses;
pub use lookup::Lookup;
pub use ports::{PortBlock, port_blocks};

/// An inclusive port range and the rule that allows it.
type PortRangeRule = (u16, u16, u32);

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
    /// Every rule with its id, in policy order.
    pub rules: Vec<(u32, RuleRef)>,
    pub settings: Settings,
    /// `settings.conntrack.midstream`; `HW_MIDSTREAM` is written from it
    /// and the agent's start.
    pub midstream: Midstream,
}

impl Compiled {
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
    /// A prefix's class leaves out the peers of the shorter prefixes
    /// around it, so a longest match forgets the CIDRs that contain it.
    DropShorterPrefix,
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
                out.rules.push((id, r));
            }
        }
    }
    check("HW_RULE_STATS", out.rules.len(), limits.rules)?;

    // Local endpoints and their policy ids (one per distinct set of groups).
    let mut policy_ids: BTreeMap<BTreeSet<&str>, u32> = BTreeMap::new();
    let mut local_policy: BTreeMap<usize, (u32, u32)> = BTreeMap::new();
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
        let groups: BTreeSet<&str> = ep.groups.iter().map(String::as_str).collect();
        let next = policy_ids.len() as u32 + 1;
        let pid = *policy_ids.entry(groups).or_insert(next);
        let endpoint_id = i as u32 + 1;
        local_policy.insert(i, (pid, endpoint_id));
        let interface = ep.interface.clone().unwrap_or_default();
        let ifindex = (host.ifindex)(&interface);
        let info = EndpointInfo {
            policy: pid,
            endpoint: endpoint_id,
            mac: ifindex.and_then(|i| host.macs.get(&i).copied()).unwrap_or([0; 6]),
            _pad: [0; 2],
        };
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

    // Peer classes.
    let classes = PeerClasses::build(
        policy,
        host.host_addresses,
        mutation == Some(Mutation::DropShorterPrefix),
    );
    for (net, labels_class) in classes.prefixes() {
        let mut info = PeerInfo {
            class: labels_class.class,
            local_policy: 0,
            local_endpoint: 0,
            flags: 0,
        };
        if labels_class.host {
            info.flags |= hostwall_common::PEER_HOST;
        }
        if let Some(owner) = labels_class.endpoint
            && let Some((pid, eid)) = local_policy.get(&owner)
        {
            info.local_policy = *pid;
            info.local_endpoint = *eid;
        }
        match net {
            ipnet::IpNet::V4(n) => out.peer4.push((n.prefix_len() as u32, n.network().octets(), info)),
            ipnet::IpNet::V6(n) => out.peer6.push((n.prefix_len() as u32, n.network().octets(), info)),
        }
    }
    check("HW_PEER4", out.peer4.len(), limits.peer_entries)?;
    check("HW_PEER6", out.peer6.len(), limits.peer_entries)?;

    // What each rule contributes to a bucket, worked out once although
    // every policy id whose groups hold the rule uses it.
    let mut compiled_rules: HashMap<(&str, Direction, usize), CompiledRule> = HashMap::new();

    // Rules, per policy id, direction and peer class.
    for (groups, pid) in &policy_ids {
        for direction in [Direction::Ingress, Direction::Egress] {
            // ((class, any_proto, proto), (first, last, rule id))
            let mut buckets: Vec<((u32, u8, u8), PortRangeRule)> = Vec::new();
            for group in groups {
                let Some(g) = policy.groups.get(*group) else { continue };
                let rules = match direction {
                    Direction::Ingress => &g.ingress,
                    Direction::Egress => &g.egress,
                };
                for (index, rule) in rules.iter().enumerate() {
                    let r = compiled_rules.entry((group, direction, index)).or_insert_with(|| {
                        let id = rule_ids[&RuleRef {
                            group: group.to_string(),
                            direction,
                            index,
                        }];
                        let (first, mut last) = rule_range(rule);
                        if mutation == Some(Mutation::OffByOneRange) && rule.ports.is_some() && last > first {
                            last -= 1;
                        }
                        let (any, proto) = match rule.proto {
                            Proto::All => (1, 0),
                            Proto::Number(n) => (0, n),
                        };
                        CompiledRule {
                            classes: classes.matching(&peer_labels(policy, rule), family_of(rule.proto)),
                            range: (first, last, id),
                            any,
                            proto,
                        }
                    });
                    buckets.extend(r.classes.iter().map(|class| ((*class, r.any, r.proto), r.range)));
                }
            }
            let dir = match direction {
                Direction::Ingress => DIR_INGRESS,
                Direction::Egress => DIR_EGRESS,
            };
            // Stable: within a bucket the rules stay in policy order, and
            // the first rule covering a port is the one credited.
            buckets.sort_by_key(|(bucket, _)| *bucket);
            for chunk in buckets.chunk_by(|a, b| a.0 == b.0) {
                let (class, any_proto, proto) = chunk[0].0;
                let ranges: Vec<PortRangeRule> = chunk.iter().map(|(_, r)| *r).collect();
                for block in port_blocks(&ranges) {
                    let key = PolicyKey {
                        policy: *pid,
                        class,
                        dir,
                        any_proto,
                        proto,
                        _pad: 0,
                        port_be: block.start.to_be_bytes(),
                        _tail: [0; 2],
                    };
                    out.policy.push((
                        POLICY_FIXED_BITS + block.prefix_bits,
                        key,
                        PolicyValue { rule: block.rule },
                    ));
                }
            }
        }
    }
    check("HW_POLICY", out.policy.len(), limits.policy_entries)?;
    Ok(out)
}

/// One rule, ready to go into the buckets of the policy ids that hold it.
struct CompiledRule {
    /// The peer classes its peers match.
    classes: Vec<u32>,
    range: PortRangeRule,
    any: u8,
    proto: u8,
}

fn check(map: &'static str, needed: usize, capacity: usize) -> Result<(), CompileError> {
    if needed > capacity {
        return Err(CompileError::MapFull { map, needed, capacity });
    }
    Ok(())
}

/// The labels a rule's peers stand for.
fn peer_labels(policy: &Policy, rule: &Rule) -> BTreeSet<Label> {
    let mut labels = BTreeSet::new();
    for peer in &rule.peers {
        match peer {
            Peer::Group(g) => {
                labels.insert(Label::Group(g.clone()));
            }
            Peer::Cidr(net) => {
                labels.insert(Label::Cidr(net.trunc()));
            }
            Peer::PrefixList(name) => {
                for net in policy.prefix_lists.get(name).into_iter().flatten() {
                    labels.insert(Label::Cidr(net.trunc()));
                }
            }
            Peer::Host => {
                labels.insert(Label::Host);
            }
        }
    }
    labels
}

/// ICMP rules match their own IP family only.
fn family_of(proto: Proto) -> Option<u8> {
    match proto {
        Proto::ICMP => Some(FAMILY_V4),
        Proto::ICMPV6 => Some(FAMILY_V6),
        _ => None,
    }
}

/// The inclusive range of the key's port field a rule covers.
fn rule_range(rule: &Rule) -> (u16, u16) {
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
        _pad: 0,
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
