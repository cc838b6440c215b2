//! The compiled form of builds before layout 5, for their eBPF objects:
//! addresses sorted into peer classes (two addresses share a class when
//! exactly the same rule peers match them), and one policy entry per set of
//! groups of the local endpoints, peer class a rule's peers match and
//! disjoint port block. It grows with the product of rules, classes and
//! group sets; the benchmark writes it into an earlier build's object to
//! compare that object with this one on the same policy.

mod classes;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hostwall_common::{DIR_EGRESS, DIR_INGRESS, FAMILY_V4, FAMILY_V6, PEER_HOST, PolicyValue};

use super::{CompileError, Compiled, HostView, RuleRef, port_blocks, rule_range};
use crate::policy::{Direction, Peer, Policy, Proto, Rule};
use classes::{Label, PeerClasses};

/// Bits of a `LegacyPolicyKey` compared exactly: everything but the port.
pub const LEGACY_POLICY_FIXED_BITS: u32 = 12 * 8;

/// `PeerInfo` before layout 5.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegacyPeerInfo {
    pub class: u32,
    pub local_policy: u32,
    pub local_endpoint: u32,
    pub flags: u32,
}

/// `PolicyKey` before layout 5.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LegacyPolicyKey {
    pub policy: u32,
    pub class: u32,
    pub dir: u8,
    pub any_proto: u8,
    pub proto: u8,
    pub _pad: u8,
    pub port_be: [u8; 2],
    pub _tail: [u8; 2],
}

// SAFETY: plain `repr(C)` data without padding, as the older objects read it.
unsafe impl aya::Pod for LegacyPeerInfo {}
unsafe impl aya::Pod for LegacyPolicyKey {}

/// One slot's peer and policy maps in the older form.
#[derive(Clone, Debug, Default)]
pub struct Legacy {
    /// By endpoint id: its policy id (`HW_IFACE`'s first field then).
    pub policy_ids: BTreeMap<u32, u32>,
    pub peer4: Vec<(u32, [u8; 4], LegacyPeerInfo)>,
    pub peer6: Vec<(u32, [u8; 16], LegacyPeerInfo)>,
    pub policy: Vec<(u32, LegacyPolicyKey, PolicyValue)>,
}

/// (class, any protocol, protocol).
type Bucket = (u32, u8, u8);
/// An inclusive port range and the rule that allows it.
type PortRangeRule = (u16, u16, u32);

/// Compiles `policy` in this build's form and, beside it, the older one.
pub fn compile_both(policy: &Policy, host: &HostView<'_>) -> Result<Compiled, CompileError> {
    let mut compiled = super::compile(policy, host)?;
    compiled.legacy = Some(Box::new(compile(policy, host, &compiled)));
    Ok(compiled)
}

fn compile(policy: &Policy, host: &HostView<'_>, current: &Compiled) -> Legacy {
    let mut out = Legacy::default();
    let ids: HashMap<&RuleRef, u32> = current.rules.iter().map(|(id, r)| (r, *id)).collect();

    // Policy ids: one per distinct set of groups of the local endpoints.
    let mut policy_ids: BTreeMap<BTreeSet<&str>, u32> = BTreeMap::new();
    let mut local_policy: BTreeMap<usize, (u32, u32)> = BTreeMap::new();
    for (i, ep) in policy.endpoints.iter().enumerate() {
        if !ep.is_local(host.node) {
            continue;
        }
        let groups: BTreeSet<&str> = ep.groups.iter().map(String::as_str).collect();
        let next = policy_ids.len() as u32 + 1;
        let pid = *policy_ids.entry(groups).or_insert(next);
        let endpoint_id = i as u32 + 1;
        local_policy.insert(i, (pid, endpoint_id));
        out.policy_ids.insert(endpoint_id, pid);
    }

    let classes = PeerClasses::build(policy, host.host_addresses);
    for (net, labels_class) in classes.prefixes() {
        let mut info = LegacyPeerInfo {
            class: labels_class.class,
            local_policy: 0,
            local_endpoint: 0,
            flags: 0,
        };
        if labels_class.host {
            info.flags |= PEER_HOST;
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

    for (groups, pid) in &policy_ids {
        for direction in [Direction::Ingress, Direction::Egress] {
            // ((class, any_proto, proto), (first, last, rule id))
            let mut buckets: Vec<(Bucket, PortRangeRule)> = Vec::new();
            for group in groups {
                let Some(g) = policy.groups.get(*group) else { continue };
                let rules = match direction {
                    Direction::Ingress => &g.ingress,
                    Direction::Egress => &g.egress,
                };
                for (index, rule) in rules.iter().enumerate() {
                    let id = ids[&RuleRef {
                        group: group.to_string(),
                        direction,
                        index,
                    }];
                    let (first, last) = rule_range(rule);
                    let (any, proto) = match rule.proto {
                        Proto::All => (1, 0),
                        Proto::Number(n) => (0, n),
                    };
                    let matching = classes.matching(&peer_labels(policy, rule), family_of(rule.proto));
                    buckets.extend(matching.iter().map(|class| ((*class, any, proto), (first, last, id))));
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
                    let key = LegacyPolicyKey {
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
                        LEGACY_POLICY_FIXED_BITS + block.prefix_bits,
                        key,
                        PolicyValue { rule: block.rule },
                    ));
                }
            }
        }
    }
    out
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
