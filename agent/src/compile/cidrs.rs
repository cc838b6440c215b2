//! Rules whose peers are CIDRs or prefix lists: the CIDR tries'
//! (`HW_CIDR4`/`HW_CIDR6`) entries.
//!
//! Such a rule is found by the other end's address, in one trie per
//! family whose keys start with the group that holds the rule, a tier and
//! the direction, so that the longest match over the address answers for
//! every CIDR of the group at once:
//!
//! - `TIER_EXACT`: a rule for one port (or one ICMP type and code) is one
//!   entry per CIDR, keyed by protocol and port as well.
//! - `TIER_ANY`: a rule for every protocol is one entry per CIDR.
//! - `TIER_RANGES`: the other rules of a protocol. The longest match finds
//!   the nearest CIDR around the address that such rules name, so its entry
//!   lists the port runs of its own rules and of the CIDRs around it. Where
//!   they do not fit one entry (`MAX_CIDR_RUNS`), the entry names the next
//!   entry of the chain (`CidrValue::next`); a walk visits at most
//!   `MAX_RANGE_STEPS` entries. Where a chain of nested CIDRs holds more
//!   runs than such a walk reaches, its narrowest ranges (up to
//!   `MAX_SPREAD_WIDTH` ports) become `TIER_EXACT` entries, one per port.
//!
//! Each entry is one rule and CIDR (single ports, every protocol), one
//! group, direction, protocol and CIDR (ranges) or one port of a spread
//! range and CIDR: never more entries than rules × CIDRs ×
//! `MAX_SPREAD_WIDTH`, and rules × CIDRs where no walk is too long.

use std::collections::{BTreeMap, HashSet};

use hostwall_common::{
    CIDR_FIXED_BITS, CidrKey, CidrValue, DIR_EGRESS, DIR_INGRESS, MAX_CIDR_RUNS, MAX_RANGE_STEPS, PortRun, TIER_ANY,
    TIER_EXACT, TIER_RANGES,
};
use ipnet::IpNet;

use super::{CompileError, Mutation, RuleRef, port_runs, rule_range};
use crate::policy::{Direction, Peer, Policy, Proto, Rule};

#[derive(Default)]
pub struct CidrEntries {
    pub v4: Vec<(u32, CidrKey<4>, CidrValue)>,
    pub v6: Vec<(u32, CidrKey<16>, CidrValue)>,
}

/// The CIDRs among a rule's peers (prefix lists' entries included), each
/// once, in the order written.
pub fn rule_cidrs(policy: &Policy, rule: &Rule) -> Vec<IpNet> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for peer in &rule.peers {
        let nets: &[IpNet] = match peer {
            Peer::Cidr(net) => std::slice::from_ref(net),
            Peer::PrefixList(name) => policy.prefix_lists.get(name).map_or(&[], Vec::as_slice),
            Peer::Group(_) | Peer::Host => continue,
        };
        for net in nets {
            let net = net.trunc();
            if seen.insert(net) {
                out.push(net);
            }
        }
    }
    out
}

/// The range tier of one group, direction and protocol: by CIDR, the
/// ranges its own rules allow, in rule order.
type RangeSet = BTreeMap<IpNet, Vec<(u16, u16, u32)>>;

/// What an entry's key holds besides its CIDR.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct At {
    group: u32,
    tier: u8,
    dir: u8,
    proto: u8,
    port: u16,
}

impl At {
    fn key<const N: usize>(self, addr: [u8; N]) -> CidrKey<N> {
        CidrKey::entry(self.group, self.tier, self.dir, self.proto, self.port, addr)
    }
}

impl CidrEntries {
    fn push(&mut self, net: IpNet, at: At, value: CidrValue) {
        let len = CIDR_FIXED_BITS + net.prefix_len() as u32;
        match net {
            IpNet::V4(n) => self.v4.push((len, at.key(n.network().octets()), value)),
            IpNet::V6(n) => self.v6.push((len, at.key(n.network().octets()), value)),
        }
    }
}

/// The entries of `rules` (id, where) whose group is in `held` (the groups
/// local endpoints hold; no lookup names another).
pub fn build(
    policy: &Policy,
    rules: &[(u32, RuleRef)],
    group_ids: &BTreeMap<String, u32>,
    held: &std::collections::BTreeSet<u32>,
    mutation: Option<Mutation>,
) -> Result<CidrEntries, CompileError> {
    let mut out = CidrEntries::default();
    let mut seen: HashSet<(At, IpNet)> = HashSet::new();
    let mut ranges: BTreeMap<(u32, u8, u8), RangeSet> = BTreeMap::new();
    for (id, r) in rules {
        let group = group_ids[&r.group];
        if !held.contains(&group) {
            continue;
        }
        let g = &policy.groups[&r.group];
        let (rule, dir) = match r.direction {
            Direction::Ingress => (&g.ingress[r.index], DIR_INGRESS),
            Direction::Egress => (&g.egress[r.index], DIR_EGRESS),
        };
        let nets = rule_cidrs(policy, rule);
        if nets.is_empty() {
            continue;
        }
        let value = CidrValue {
            rule: *id,
            ..Default::default()
        };
        // One entry per CIDR, the first rule keeping an entry two make.
        let at = match rule.proto {
            Proto::All if mutation == Some(Mutation::AnyTierSkipped) => continue,
            Proto::All => At {
                group,
                tier: TIER_ANY,
                dir,
                proto: 0,
                port: 0,
            },
            Proto::Number(proto) => {
                let (first, mut last) = rule_range(rule);
                if first == last {
                    At {
                        group,
                        tier: TIER_EXACT,
                        dir,
                        proto,
                        port: first,
                    }
                } else {
                    if mutation == Some(Mutation::OffByOneRange) && rule.ports.is_some() {
                        last -= 1;
                    }
                    let set = ranges.entry((group, dir, proto)).or_default();
                    for net in nets {
                        set.entry(net).or_default().push((first, last, *id));
                    }
                    continue;
                }
            }
        };
        for net in nets {
            if seen.insert((at, net)) {
                out.push(net, at, value);
            }
        }
    }
    for ((group, dir, proto), set) in &ranges {
        range_tier(&mut out, &mut seen, *group, *dir, *proto, set, mutation).map_err(|steps| {
            let name = group_ids
                .iter()
                .find(|(_, id)| **id == *group)
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            CompileError::RangeWalk {
                group: name,
                direction: if *dir == DIR_INGRESS {
                    Direction::Ingress
                } else {
                    Direction::Egress
                },
                proto: *proto,
                steps,
            }
        })?;
    }
    Ok(out)
}

/// Ranges at most this many ports wide go to `TIER_EXACT`, one entry per
/// port, where the runs of one chain of nested CIDRs would otherwise need
/// a walk longer than `MAX_RANGE_STEPS`.
pub const MAX_SPREAD_WIDTH: u32 = 256;

/// One range set's entries. Where a walk would be too long, the narrowest
/// ranges (up to 2, 4, 8, ... `MAX_SPREAD_WIDTH` ports) become single-port
/// entries, found by one longest match whatever the CIDRs around them,
/// until the rest fits. Err: the longest walk of what is left.
fn range_tier(
    out: &mut CidrEntries,
    seen: &mut HashSet<(At, IpNet)>,
    group: u32,
    dir: u8,
    proto: u8,
    set: &RangeSet,
    mutation: Option<Mutation>,
) -> Result<(), usize> {
    let mut set = std::borrow::Cow::Borrowed(set);
    let mut width = 1u32;
    loop {
        let mut entries = CidrEntries::default();
        let steps = match range_entries(&mut entries, group, dir, proto, &set, mutation) {
            Ok(()) => {
                out.v4.append(&mut entries.v4);
                out.v6.append(&mut entries.v6);
                return Ok(());
            }
            Err(steps) => steps,
        };
        // Spread the narrowest ranges left, the next width up that has any.
        let narrowest = set
            .values()
            .flatten()
            .map(|&(first, last, _)| u32::from(last) - u32::from(first) + 1)
            .min()
            .unwrap_or(u32::MAX);
        while width < narrowest {
            width *= 2;
        }
        if width > MAX_SPREAD_WIDTH {
            return Err(steps);
        }
        let mut rest = RangeSet::new();
        for (net, own) in set.iter() {
            let (narrow, wide): (Vec<_>, Vec<_>) = own
                .iter()
                .partition(|&&(first, last, _)| u32::from(last) - u32::from(first) < width);
            for (first, last, rule) in narrow {
                for port in first..=last {
                    let at = At {
                        group,
                        tier: TIER_EXACT,
                        dir,
                        proto,
                        port,
                    };
                    if seen.insert((at, *net)) {
                        out.push(
                            *net,
                            at,
                            CidrValue {
                                rule,
                                ..Default::default()
                            },
                        );
                    }
                }
            }
            if !wide.is_empty() {
                rest.insert(*net, wide);
            }
        }
        set = std::borrow::Cow::Owned(rest);
    }
}

fn value(runs: &[(u16, u16, u32)], next: u32) -> CidrValue {
    let mut v = CidrValue {
        next,
        ..Default::default()
    };
    for (slot, (first, last, rule)) in v.runs.iter_mut().zip(runs) {
        *slot = PortRun {
            first: *first,
            last: *last,
            rule: *rule,
        };
    }
    v
}

/// One range set's entries. Each CIDR's first entry holds the runs of its
/// own rules and of as many CIDRs around it (nearest first) as fit, and
/// names the entry of the first CIDR that did not; a CIDR whose own runs
/// do not fit one entry spreads them over the tiers above `TIER_RANGES`.
/// Err: the longest walk, when it is longer than `MAX_RANGE_STEPS`.
fn range_entries(
    out: &mut CidrEntries,
    group: u32,
    dir: u8,
    proto: u8,
    set: &RangeSet,
    mutation: Option<Mutation>,
) -> Result<(), usize> {
    let ranges_at = At {
        group,
        tier: TIER_RANGES,
        dir,
        proto,
        port: 0,
    };
    let nets: Vec<_> = set.iter().collect();
    // Each CIDR after every CIDR around it (shorter first at one address):
    // a stack holds the chain of CIDRs around the current one.
    let mut around: Vec<usize> = Vec::new();
    // By index: how many entries a walk from the CIDR's first one visits.
    let mut steps: Vec<usize> = vec![0; nets.len()];
    let next_of = |i: usize| -> u32 { (TIER_RANGES as u32) << 8 | (nets[i].0.prefix_len() as u32 + 1) };
    let mut longest = 0;
    for (i, (net, own)) in nets.iter().enumerate() {
        while around.last().is_some_and(|&o| !nets[o].0.contains(*net)) {
            around.pop();
        }
        let own_runs = port_runs(own);
        if own_runs.len() > MAX_CIDR_RUNS {
            // Its own runs over several tiers; the last continues with the
            // CIDR around it.
            let chunks: Vec<&[(u16, u16, u32)]> = own_runs.chunks(MAX_CIDR_RUNS).collect();
            let n = chunks.len();
            if TIER_RANGES as usize + n > u8::MAX as usize {
                return Err(usize::MAX);
            }
            for (k, chunk) in chunks.iter().enumerate() {
                let next = if k + 1 < n {
                    (TIER_RANGES as u32 + k as u32 + 1) << 8 | (net.prefix_len() as u32 + 1)
                } else {
                    around.last().map_or(0, |&p| next_of(p))
                };
                out.push(
                    **net,
                    At {
                        tier: TIER_RANGES + k as u8,
                        ..ranges_at
                    },
                    value(
                        chunk,
                        if mutation == Some(Mutation::RangeWalkCut) {
                            0
                        } else {
                            next
                        },
                    ),
                );
            }
            steps[i] = n + around.last().map_or(0, |&p| steps[p]);
        } else {
            // As many CIDRs around it as fit.
            let mut merged: Vec<(u16, u16, u32)> = own.to_vec();
            let mut runs = own_runs;
            let mut rest: Option<usize> = None;
            if mutation != Some(Mutation::RangesUnmerged) {
                for &o in around.iter().rev() {
                    let mut more = merged.clone();
                    more.extend_from_slice(nets[o].1);
                    let more_runs = port_runs(&more);
                    if more_runs.len() > MAX_CIDR_RUNS {
                        rest = Some(o);
                        break;
                    }
                    merged = more;
                    runs = more_runs;
                }
            }
            let next = match rest {
                Some(o) if mutation != Some(Mutation::RangeWalkCut) => next_of(o),
                _ => 0,
            };
            out.push(**net, ranges_at, value(&runs, next));
            steps[i] = 1 + rest.map_or(0, |o| steps[o]);
        }
        longest = longest.max(steps[i]);
        around.push(i);
    }
    if longest > MAX_RANGE_STEPS {
        return Err(longest);
    }
    Ok(())
}
