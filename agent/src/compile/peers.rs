//! The labels of addresses: what the peer LPM tries hold, and which labels
//! a rule's peers stand for.
//!
//! A label is a group named as a peer, `host`, or one CIDR of the policy
//! (from a CIDR peer or a prefix list). An address's entry lists the groups
//! of its endpoint that rules name, `host` for the host's own addresses, and
//! every CIDR that contains it, nearest first. Each prefix the policy names
//! is an entry of its own, so the longest match finds the labels of every
//! address inside it, the CIDRs around it included.
//!
//! An entry holds `MAX_PEER_LABELS` labels. When an address lies in more
//! CIDRs than that leaves room for, the CIDRs of its chain that name the
//! fewest rules share one closure label, `LABEL_CIDRS_FROM`, under which
//! the rules of each of them are written once more; the others (broad
//! peers among them) keep labels of their own. Only such deep chains cost entries beyond one per rule,
//! peer and port block.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use hostwall_common::{LABEL_CIDR, LABEL_CIDRS_FROM, LABEL_GROUP, LABEL_HOST, MAX_PEER_LABELS, PEER_HOST, PeerInfo};
use ipnet::IpNet;

use super::Mutation;
use crate::policy::{Peer, Policy, Rule};

/// What one prefix is, before its labels are worked out.
#[derive(Default)]
struct Own {
    /// Its CIDR id, when the policy names this prefix as a CIDR.
    cidr: Option<u32>,
    /// Labels of the named groups its endpoint belongs to.
    groups: Vec<u32>,
    host: bool,
    /// Index of the endpoint that owns this exact address.
    owner: Option<usize>,
}

pub struct Prefixes {
    entries: Vec<(IpNet, PeerInfo)>,
    cidr_ids: HashMap<IpNet, u32>,
    group_ids: BTreeMap<String, u32>,
    /// By CIDR id: the closures (by their label id) that stand for it.
    closures_of: HashMap<u32, Vec<u32>>,
}

impl Prefixes {
    /// `local`: the local endpoints' ids by index in `policy.endpoints`.
    pub fn build(
        policy: &Policy,
        host_addresses: &[IpAddr],
        group_ids: &BTreeMap<String, u32>,
        local: &BTreeMap<usize, u32>,
        mutation: Option<Mutation>,
    ) -> Prefixes {
        // Only what some rule names tells addresses apart.
        let mut named_groups: BTreeSet<&str> = BTreeSet::new();
        let mut host_named = false;
        let mut cidrs: BTreeSet<IpNet> = BTreeSet::new();
        for group in policy.groups.values() {
            for rule in group.ingress.iter().chain(&group.egress) {
                for peer in &rule.peers {
                    match peer {
                        Peer::Group(g) => {
                            named_groups.insert(g);
                        }
                        Peer::Host => host_named = true,
                        Peer::Cidr(net) => {
                            cidrs.insert(net.trunc());
                        }
                        Peer::PrefixList(name) => {
                            cidrs.extend(policy.prefix_lists.get(name).into_iter().flatten().map(IpNet::trunc));
                        }
                    }
                }
            }
        }
        let cidr_ids: HashMap<IpNet, u32> = cidrs.iter().enumerate().map(|(i, n)| (*n, i as u32 + 1)).collect();
        // What a CIDR's label costs: the entries of the rules that name it.
        let mut weight: HashMap<u32, usize> = HashMap::new();
        for group in policy.groups.values() {
            for rule in group.ingress.iter().chain(&group.egress) {
                let blocks = super::rule_blocks(rule);
                for peer in &rule.peers {
                    let nets: Vec<&IpNet> = match peer {
                        Peer::Cidr(net) => vec![net],
                        Peer::PrefixList(name) => policy.prefix_lists.get(name).into_iter().flatten().collect(),
                        _ => continue,
                    };
                    for net in nets {
                        *weight.entry(cidr_ids[&net.trunc()]).or_default() += blocks;
                    }
                }
            }
        }

        let mut own: BTreeMap<IpNet, Own> = BTreeMap::new();
        for (net, id) in &cidr_ids {
            own.entry(*net).or_default().cidr = Some(*id);
        }
        for (i, ep) in policy.endpoints.iter().enumerate() {
            let groups: Vec<u32> = ep
                .groups
                .iter()
                .filter(|g| named_groups.contains(g.as_str()))
                .map(|g| LABEL_GROUP | group_ids[g])
                .collect();
            // A remote endpoint no rule names by group is found by the
            // CIDRs around it, as any address is.
            if groups.is_empty() && !local.contains_key(&i) {
                continue;
            }
            for addr in &ep.addresses {
                let o = own.entry(IpNet::from(*addr)).or_default();
                o.owner = Some(i);
                o.groups.clone_from(&groups);
            }
        }
        for addr in host_addresses {
            own.entry(IpNet::from(*addr)).or_default().host = true;
        }

        // Prefixes in order, each after every prefix that contains it
        // (shorter first at one address), so that a stack holds the CIDRs
        // around the current one.
        let mut entries = Vec::new();
        // Closures by the CIDRs they stand for: their label ids.
        let mut closures: BTreeMap<Vec<u32>, u32> = BTreeMap::new();
        let mut around: Vec<(IpNet, u32)> = Vec::new();
        for (net, o) in &own {
            while around.last().is_some_and(|(outer, _)| !outer.contains(net)) {
                around.pop();
            }
            let mut chain: Vec<u32> = o
                .cidr
                .into_iter()
                .chain(around.iter().rev().map(|(_, id)| *id))
                .collect();
            if mutation == Some(Mutation::DropShorterPrefix) {
                chain = o.cidr.into_iter().collect();
            }
            let mut labels = o.groups.clone();
            if o.host && host_named {
                labels.push(LABEL_HOST);
            }
            let room = MAX_PEER_LABELS - labels.len();
            if chain.len() > room {
                // The CIDRs that name the fewest rules share one label, under
                // which their rules are written again; the rest (broad peers
                // among them) keep their own.
                let taken = chain.len() - room + 1;
                let mut by_weight = chain.clone();
                by_weight.sort_by_key(|id| (weight.get(id).copied().unwrap_or(0), *id));
                let mut members = by_weight[..taken].to_vec();
                members.sort_unstable();
                let next = closures.len() as u32 + 1;
                let id = *closures.entry(members.clone()).or_insert(next);
                if mutation != Some(Mutation::SkipClosure) {
                    labels.push(LABEL_CIDRS_FROM | id);
                }
                labels.extend(chain.iter().filter(|c| !members.contains(c)).map(|id| LABEL_CIDR | id));
            } else {
                labels.extend(chain.iter().map(|id| LABEL_CIDR | id));
            }
            let local_endpoint = o.owner.and_then(|i| local.get(&i)).copied().unwrap_or(0);
            if !labels.is_empty() || o.host || local_endpoint != 0 {
                let mut info = PeerInfo::NONE;
                info.local_endpoint = local_endpoint;
                if o.host {
                    info.flags |= PEER_HOST;
                }
                info.n_labels = labels.len() as u32;
                info.labels[..labels.len()].copy_from_slice(&labels);
                entries.push((*net, info));
            }
            if let Some(id) = o.cidr {
                around.push((*net, id));
            }
        }
        let mut closures_of: HashMap<u32, Vec<u32>> = HashMap::new();
        for (members, label) in &closures {
            for id in members {
                closures_of.entry(*id).or_default().push(*label);
            }
        }
        Prefixes {
            entries,
            cidr_ids,
            group_ids: group_ids.clone(),
            closures_of,
        }
    }

    /// Every prefix's entry, in address order.
    pub fn entries(&self) -> &[(IpNet, PeerInfo)] {
        &self.entries
    }

    /// The labels a rule is written under: one per group, CIDR (prefix-list
    /// entries included) and `host` among its peers, and the closures that
    /// stand for any of its CIDRs. Ascending, without repeats.
    pub fn rule_labels(&self, policy: &Policy, rule: &Rule) -> Vec<u32> {
        let mut labels = Vec::new();
        let cidr = |net: &IpNet, labels: &mut Vec<u32>| {
            if let Some(id) = self.cidr_ids.get(&net.trunc()) {
                labels.push(LABEL_CIDR | id);
                for closure in self.closures_of.get(id).into_iter().flatten() {
                    labels.push(LABEL_CIDRS_FROM | closure);
                }
            }
        };
        for peer in &rule.peers {
            match peer {
                Peer::Group(g) => labels.extend(self.group_ids.get(g).map(|id| LABEL_GROUP | id)),
                Peer::Host => labels.push(LABEL_HOST),
                Peer::Cidr(net) => cidr(net, &mut labels),
                Peer::PrefixList(name) => {
                    for net in policy.prefix_lists.get(name).into_iter().flatten() {
                        cidr(net, &mut labels);
                    }
                }
            }
        }
        labels.sort_unstable();
        labels.dedup();
        labels
    }
}
