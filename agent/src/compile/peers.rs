//! The labels of addresses: what the peer LPM tries hold, and which labels
//! a rule's group and `host` peers stand for.
//!
//! A label is a group named as a peer, or `host`. An address's entry lists
//! the groups of its endpoint that rules name, and `host` for the host's
//! own addresses; it also tells a local endpoint's address (its endpoint
//! id) and the host's. CIDR and prefix-list peers are not labels: the CIDR
//! tries find them by the address itself ([`super::cidrs`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hostwall_common::{LABEL_GROUP, LABEL_HOST, MAX_PEER_LABELS, PEER_HOST, PeerInfo};
use ipnet::IpNet;

use crate::policy::{Peer, Policy, Rule};

/// What one address is, before its labels are worked out.
#[derive(Default)]
struct Own {
    /// Labels of the named groups its endpoint belongs to.
    groups: Vec<u32>,
    host: bool,
    /// Index of the endpoint that owns this exact address.
    owner: Option<usize>,
}

pub struct Prefixes {
    entries: Vec<(IpNet, PeerInfo)>,
    group_ids: BTreeMap<String, u32>,
}

impl Prefixes {
    /// `local`: the local endpoints' ids by index in `policy.endpoints`.
    pub fn build(
        policy: &Policy,
        host_addresses: &[IpAddr],
        group_ids: &BTreeMap<String, u32>,
        local: &BTreeMap<usize, u32>,
    ) -> Prefixes {
        // Only what some rule names tells addresses apart.
        let mut named_groups: BTreeSet<&str> = BTreeSet::new();
        let mut host_named = false;
        for group in policy.groups.values() {
            for rule in group.ingress.iter().chain(&group.egress) {
                for peer in &rule.peers {
                    match peer {
                        Peer::Group(g) => {
                            named_groups.insert(g);
                        }
                        Peer::Host => host_named = true,
                        Peer::Cidr(_) | Peer::PrefixList(_) => {}
                    }
                }
            }
        }

        let mut own: BTreeMap<IpNet, Own> = BTreeMap::new();
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

        let mut entries = Vec::new();
        for (net, o) in &own {
            let mut labels = o.groups.clone();
            if o.host && host_named {
                labels.push(LABEL_HOST);
            }
            // The validator allows `MAX_GROUPS` groups per endpoint.
            labels.truncate(MAX_PEER_LABELS);
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
        }
        Prefixes {
            entries,
            group_ids: group_ids.clone(),
        }
    }

    /// Every address's entry, in address order.
    pub fn entries(&self) -> &[(IpNet, PeerInfo)] {
        &self.entries
    }

    /// The labels a rule is written under in `HW_POLICY`: one per group and
    /// `host` among its peers. Ascending, without repeats.
    pub fn rule_labels(&self, rule: &Rule) -> Vec<u32> {
        let mut labels = Vec::new();
        for peer in &rule.peers {
            match peer {
                Peer::Group(g) => labels.extend(self.group_ids.get(g).map(|id| LABEL_GROUP | id)),
                Peer::Host => labels.push(LABEL_HOST),
                Peer::Cidr(_) | Peer::PrefixList(_) => {}
            }
        }
        labels.sort_unstable();
        labels.dedup();
        labels
    }
}
