//! Peer classes: addresses grouped by the set of rule peers they match.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use hostwall_common::{FAMILY_V4, FAMILY_V6};
use ipnet::IpNet;

use crate::policy::Policy;

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
    labels: BTreeSet<Label>,
    host: bool,
    endpoint: Option<usize>,
}

pub struct PeerClasses {
    prefixes: BTreeMap<IpNet, PrefixClass>,
    /// Class id - 1 -> family.
    families: Vec<u8>,
    /// Label -> the classes whose labels include it, ascending, so that a
    /// rule's classes are found without scanning every class.
    by_label: HashMap<Label, Vec<u32>>,
}

impl PeerClasses {
    pub fn build(policy: &Policy, host_addresses: &[IpAddr]) -> PeerClasses {
        let mut own: BTreeMap<IpNet, Own> = BTreeMap::new();
        for group in policy.groups.values() {
            for rule in group.ingress.iter().chain(&group.egress) {
                for peer in &rule.peers {
                    if let crate::policy::Peer::Cidr(net) = peer {
                        own.entry(*net).or_default().labels.insert(Label::Cidr(*net));
                    }
                }
            }
        }
        for nets in policy.prefix_lists.values() {
            for net in nets {
                own.entry(*net).or_default().labels.insert(Label::Cidr(*net));
            }
        }
        for (i, ep) in policy.endpoints.iter().enumerate() {
            for addr in &ep.addresses {
                let entry = own.entry(IpNet::from(*addr)).or_default();
                entry.endpoint = Some(i);
                for g in &ep.groups {
                    entry.labels.insert(Label::Group(g.clone()));
                }
            }
        }
        for addr in host_addresses {
            let entry = own.entry(IpNet::from(*addr)).or_default();
            entry.host = true;
            entry.labels.insert(Label::Host);
        }

        let mut ids: BTreeMap<(u8, BTreeSet<Label>), u32> = BTreeMap::new();
        let mut classes = Vec::new();
        let mut prefixes = BTreeMap::new();
        for (net, o) in &own {
            // Every enclosing prefix's labels apply too.
            let mut labels = BTreeSet::new();
            for len in (0..=net.prefix_len()).rev() {
                let Ok(sup) = IpNet::new(net.network(), len) else {
                    continue;
                };
                if let Some(s) = own.get(&sup.trunc()) {
                    labels.extend(s.labels.iter().cloned());
                }
            }
            let class = if labels.is_empty() {
                hostwall_common::CLASS_WORLD
            } else {
                let family = family(net);
                *ids.entry((family, labels.clone())).or_insert_with(|| {
                    classes.push((family, labels));
                    classes.len() as u32
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
        }
        let mut by_label: HashMap<Label, Vec<u32>> = HashMap::new();
        let mut families = Vec::with_capacity(classes.len());
        for (i, (family, labels)) in classes.into_iter().enumerate() {
            families.push(family);
            for label in labels {
                by_label.entry(label).or_default().push(i as u32 + 1);
            }
        }
        PeerClasses {
            prefixes,
            families,
            by_label,
        }
    }

    pub fn prefixes(&self) -> impl Iterator<Item = (&IpNet, &PrefixClass)> {
        self.prefixes.iter()
    }

    /// Classes any of whose labels is in `labels`, restricted to one IP
    /// family when `family` is given.
    pub fn matching(&self, labels: &BTreeSet<Label>, family: Option<u8>) -> Vec<u32> {
        let mut out: Vec<u32> = labels
            .iter()
            .filter_map(|l| self.by_label.get(l))
            .flatten()
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
