//! Peer classes: addresses grouped by the set of rule peers they match.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use hostwall_common::{FAMILY_V4, FAMILY_V6};
use ipnet::IpNet;

use crate::policy::{Peer, Policy};

/// Something a rule peer can name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Label {
    Cidr(IpNet),
    Group(String),
    Host,
}

/// What one LPM prefix stands for.
#[derive(Clone, Debug, Default)]
pub struct PrefixClass {
    pub class: u32,
    pub host: bool,
    /// Index of the endpoint that owns this exact address.
    pub endpoint: Option<usize>,
}

#[derive(Default)]
struct Own {
    /// Label ids, as [`PeerClasses::build`] interns them.
    labels: Vec<u32>,
    host: bool,
    endpoint: Option<usize>,
}

pub struct PeerClasses {
    prefixes: BTreeMap<IpNet, PrefixClass>,
    /// The family of class id `i + 1`.
    families: Vec<u8>,
    labels: HashMap<Label, u32>,
    /// By label id: the classes whose label sets hold it, ascending, so
    /// that a rule's classes are found without scanning every class.
    by_label: Vec<Vec<u32>>,
}

impl PeerClasses {
    pub fn build(policy: &Policy, host_addresses: &[IpAddr]) -> PeerClasses {
        // Only what some rule names can tell addresses apart: a group no
        // rule names, or the host when no rule names it, would only split
        // classes (and multiply policy entries) for nothing.
        let mut labels: HashMap<Label, u32> = HashMap::new();
        let mut named_lists: BTreeSet<&str> = BTreeSet::new();
        let intern = |labels: &mut HashMap<Label, u32>, l: Label| {
            let next = labels.len() as u32;
            *labels.entry(l).or_insert(next)
        };
        for group in policy.groups.values() {
            for rule in group.ingress.iter().chain(&group.egress) {
                for peer in &rule.peers {
                    match peer {
                        Peer::Cidr(net) => {
                            intern(&mut labels, Label::Cidr(net.trunc()));
                        }
                        Peer::Group(g) => {
                            intern(&mut labels, Label::Group(g.clone()));
                        }
                        Peer::PrefixList(name) => {
                            if named_lists.insert(name) {
                                for net in policy.prefix_lists.get(name).into_iter().flatten() {
                                    intern(&mut labels, Label::Cidr(net.trunc()));
                                }
                            }
                        }
                        Peer::Host => {
                            intern(&mut labels, Label::Host);
                        }
                    }
                }
            }
        }

        let mut own: BTreeMap<IpNet, Own> = BTreeMap::new();
        for (label, id) in &labels {
            if let Label::Cidr(net) = label {
                own.entry(*net).or_default().labels.push(*id);
            }
        }
        for (i, ep) in policy.endpoints.iter().enumerate() {
            for addr in &ep.addresses {
                let entry = own.entry(IpNet::from(*addr)).or_default();
                entry.endpoint = Some(i);
                for g in &ep.groups {
                    if let Some(id) = labels.get(&Label::Group(g.clone())) {
                        entry.labels.push(*id);
                    }
                }
            }
        }
        let host_label = labels.get(&Label::Host).copied();
        for addr in host_addresses {
            let entry = own.entry(IpNet::from(*addr)).or_default();
            entry.host = true;
            entry.labels.extend(host_label);
        }

        // Prefixes in order, each after every prefix that contains it
        // (shorter first at one address), so a stack of the enclosing
        // prefixes gives each its inherited labels.
        let mut ids: HashMap<(u8, Vec<u32>), u32> = HashMap::new();
        let mut families = Vec::new();
        let mut by_label: Vec<Vec<u32>> = vec![Vec::new(); labels.len()];
        let mut prefixes = BTreeMap::new();
        let mut enclosing: Vec<(IpNet, Vec<u32>)> = Vec::new();
        for (net, o) in &own {
            while enclosing.last().is_some_and(|(outer, _)| !outer.contains(net)) {
                enclosing.pop();
            }
            let mut set = match enclosing.last() {
                Some((_, inherited)) => inherited.clone(),
                _ => Vec::new(),
            };
            set.extend(&o.labels);
            set.sort_unstable();
            set.dedup();
            let class = if set.is_empty() {
                0
            } else {
                let family = family(net);
                *ids.entry((family, set.clone())).or_insert_with(|| {
                    families.push(family);
                    let id = families.len() as u32;
                    for label in &set {
                        by_label[*label as usize].push(id);
                    }
                    id
                })
            };
            prefixes.insert(
                *net,
                PrefixClass {
                    class,
                    host: o.host,
                    endpoint: o.endpoint,
                },
            );
            enclosing.push((*net, set));
        }
        PeerClasses {
            prefixes,
            families,
            labels,
            by_label,
        }
    }

    pub fn prefixes(&self) -> impl Iterator<Item = (&IpNet, &PrefixClass)> {
        self.prefixes.iter()
    }

    /// Classes any of whose labels is in `labels`, restricted to one IP
    /// family when `family` is given; ascending.
    pub fn matching(&self, labels: &BTreeSet<Label>, family: Option<u8>) -> Vec<u32> {
        let mut out: Vec<u32> = labels
            .iter()
            .filter_map(|l| self.labels.get(l))
            .flat_map(|id| &self.by_label[*id as usize])
            .copied()
            .filter(|c| family.is_none_or(|want| self.families[*c as usize - 1] == want))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn family(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => FAMILY_V4,
        IpNet::V6(_) => FAMILY_V6,
    }
}
