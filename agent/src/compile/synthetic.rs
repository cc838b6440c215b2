//! Large policies of a realistic shape, for capacity tests and benchmarks:
//! a fleet of endpoints spread over nodes, tiers of groups that reference
//! each other, and rules with port ranges and overlapping CIDRs of both
//! families. Deterministic for a given [`Shape`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::policy::{Endpoint, Group, IcmpMatch, Peer, Policy, PortRange, Proto, Rule, Settings};

/// The node [`policy`] puts its local endpoints on.
pub const NODE: &str = "node-0";

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub endpoints: usize,
    /// Endpoints on [`NODE`]; the rest are spread over other nodes.
    pub local: usize,
    /// Groups; each is a tier whose endpoints share a subnet.
    pub groups: usize,
    /// Rules in all, spread evenly over the groups, ingress and egress.
    pub rules: usize,
    pub prefix_lists: usize,
    /// Percent of CIDR peers that cover every endpoint (0.0.0.0/0,
    /// 10.0.0.0/8, ::/0). Each such rule needs a policy entry per peer
    /// class, so these decide whether a policy fits.
    pub broad: u64,
    pub seed: u64,
}

impl Shape {
    /// 1,000 endpoints (100 on this node), 200 groups, 10,000 rules,
    /// no CIDR covering every endpoint.
    pub const LARGE: Shape = Shape {
        endpoints: 1_000,
        local: 100,
        groups: 200,
        rules: 10_000,
        prefix_lists: 20,
        broad: 0,
        seed: 1,
    };
}

/// xorshift64*: enough to spread choices, with no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Endpoint `i` of tier `t = i % tiers` is host `i / tiers + 1` of the
/// tier's subnet, 10.x.y.0/24 (and fd00:0:t::/64 for every other one).
fn addresses(i: usize, tiers: usize) -> Vec<IpAddr> {
    let (t, k) = ((i % tiers) as u32, (i / tiers) as u32 + 1);
    let v4 = Ipv4Addr::from(0x0a00_0000 | t << 8 | k);
    let mut out = vec![IpAddr::V4(v4)];
    if (i / tiers).is_multiple_of(2) {
        out.push(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, t as u16, 0, 0, 0, 0, k as u16)));
    }
    out
}

fn cidr(rng: &mut Rng, shape: &Shape) -> IpNet {
    let v6 = rng.chance(30);
    let tier = rng.below(shape.groups) as u32;
    let make = |a: IpAddr, len: u8| IpNet::new(a, len).expect("valid length").trunc();
    let tier4 = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | tier << 8 | 1));
    let tier6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, tier as u16, 0, 0, 0, 0, 1));
    let (a, len4, len6) = match rng.below(100) as u64 {
        n if n < shape.broad => {
            return match rng.below(3) {
                0 => make(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                1 => make(tier4, 8),
                _ => make(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            };
        }
        // The tier's subnet.
        n if n < 45 => ((tier4, tier6), 24, 64),
        // One endpoint.
        n if n < 60 => ((tier4, tier6), 32, 128),
        // A few neighbouring tiers.
        n if n < 70 => ((tier4, tier6), 21 + rng.below(3) as u8, 60 + rng.below(3) as u8),
        // Somewhere outside: offices, partners, the internet.
        _ => {
            let host = rng.next() as u32;
            let ext4 = IpAddr::V4(Ipv4Addr::from(0xc000_0200 | (host & 0x00ff_00ff)));
            let ext6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, host as u16, 0, 0, 0, 0, 1));
            ((ext4, ext6), 16 + rng.below(17) as u8, 32 + rng.below(97) as u8)
        }
    };
    if v6 { make(a.1, len6) } else { make(a.0, len4) }
}

fn ports(rng: &mut Rng) -> PortRange {
    const COMMON: [u16; 8] = [22, 53, 80, 443, 3306, 5432, 6379, 8080];
    match rng.below(4) {
        0 | 1 => {
            let p = COMMON[rng.below(COMMON.len())];
            PortRange { first: p, last: p }
        }
        2 => {
            let first = 8000 + rng.below(100) as u16 * 10;
            PortRange {
                first,
                last: first + rng.below(200) as u16,
            }
        }
        _ => PortRange {
            first: 30000,
            last: 32767,
        },
    }
}

/// A policy of the given shape.
pub fn policy(shape: &Shape) -> Policy {
    let mut rng = Rng(shape.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let tiers = shape.groups.max(1);
    let group_names: Vec<String> = (0..tiers).map(|g| format!("g{g:03}")).collect();

    let mut prefix_lists = BTreeMap::new();
    for l in 0..shape.prefix_lists {
        let nets = (0..1 + rng.below(6)).map(|_| cidr(&mut rng, shape)).collect();
        prefix_lists.insert(format!("list{l:02}"), nets);
    }

    let endpoints: Vec<Endpoint> = (0..shape.endpoints)
        .map(|i| {
            // The tier's group, and for some a shared one (monitoring,
            // bastions) among the first ten.
            let mut groups = vec![group_names[i % tiers].clone()];
            if rng.chance(30) {
                let extra = group_names[rng.below(tiers.min(10))].clone();
                if !groups.contains(&extra) {
                    groups.push(extra);
                }
            }
            let node = if i < shape.local {
                NODE.to_string()
            } else {
                format!("node-{}", 1 + i / 40)
            };
            Endpoint {
                name: format!("ep{i:05}"),
                node: Some(node),
                interface: Some(format!("hw{i:05}")),
                mac: None,
                addresses: addresses(i, tiers),
                groups,
            }
        })
        .collect();

    let mut groups: BTreeMap<String, Group> = group_names.iter().map(|g| (g.clone(), Group::default())).collect();
    let list_names: Vec<String> = prefix_lists.keys().cloned().collect();
    for r in 0..shape.rules {
        let name = &group_names[r % tiers];
        let peers = (0..1 + rng.below(3))
            .map(|_| match rng.below(10) {
                0..=4 => Peer::Group(group_names[rng.below(tiers)].clone()),
                5..=7 => Peer::Cidr(cidr(&mut rng, shape)),
                8 if !list_names.is_empty() => Peer::PrefixList(list_names[rng.below(list_names.len())].clone()),
                _ => Peer::Host,
            })
            .collect();
        let (proto, ports, icmp) = match rng.below(10) {
            0..=5 => (Proto::TCP, Some(ports(&mut rng)), None),
            6 | 7 => (Proto::UDP, Some(ports(&mut rng)), None),
            8 => (
                Proto::ICMP,
                None,
                Some(IcmpMatch {
                    ty: 8,
                    code: rng.chance(50).then_some(0),
                }),
            ),
            _ => (Proto::All, None, None),
        };
        let rule = Rule {
            proto,
            ports,
            icmp,
            peers,
            description: None,
        };
        let group = groups.get_mut(name).expect("group exists");
        if (r / tiers).is_multiple_of(2) {
            group.ingress.push(rule);
        } else {
            group.egress.push(rule);
        }
    }

    Policy {
        prefix_lists,
        groups,
        endpoints,
        settings: Settings::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{CompileError, HostView, Limits, compile};
    use crate::policy::{parse_str, to_yaml};

    fn view<'a>(host: &'a [IpAddr], ifindex: &'a dyn Fn(&str) -> Option<u32>) -> HostView<'a> {
        static NO_MACS: BTreeMap<u32, [u8; 6]> = BTreeMap::new();
        HostView {
            node: NODE,
            host_addresses: host,
            ifindex,
            macs: &NO_MACS,
        }
    }

    fn host() -> Vec<IpAddr> {
        vec!["10.255.0.1".parse().unwrap(), "fd00:ff::1".parse().unwrap()]
    }

    fn ifindex(name: &str) -> Option<u32> {
        name.strip_prefix("hw")
            .and_then(|n| n.parse::<u32>().ok())
            .map(|n| n + 100)
    }

    #[test]
    fn the_large_policy_is_valid_and_of_its_shape() {
        let p = policy(&Shape::LARGE);
        assert_eq!(p.endpoints.len(), 1_000);
        assert_eq!(p.groups.len(), 200);
        let rules: usize = p.groups.values().map(|g| g.ingress.len() + g.egress.len()).sum();
        assert_eq!(rules, 10_000);
        assert_eq!(p.endpoints.iter().filter(|e| e.is_local(NODE)).count(), 100);
        let ranges = p
            .groups
            .values()
            .flat_map(|g| g.ingress.iter().chain(&g.egress))
            .filter(|r| r.ports.is_some_and(|p| p.first < p.last))
            .count();
        assert!(ranges > 1_000, "{ranges} port ranges");
        // Nested CIDRs: some CIDR lies inside another.
        let nets: Vec<IpNet> = p
            .groups
            .values()
            .flat_map(|g| g.ingress.iter().chain(&g.egress))
            .flat_map(|r| &r.peers)
            .filter_map(|peer| match peer {
                Peer::Cidr(n) => Some(*n),
                _ => None,
            })
            .collect();
        assert!(nets.iter().any(|a| nets.iter().any(|b| a != b && b.contains(a))));
        // It is a control file the parser accepts as it is.
        let text = to_yaml(&p);
        assert_eq!(parse_str(&text, "large.yaml").expect("valid"), p);
    }

    #[test]
    fn the_large_policy_fits_the_maps() {
        let p = policy(&Shape::LARGE);
        let host = host();
        let c = compile(&p, &view(&host, &ifindex)).expect("fits");
        let limits = Limits::default();
        assert_eq!(c.endpoints.len(), 100);
        assert!(c.policy.len() <= limits.policy_entries, "{}", c.policy.len());
        assert!(c.peer4.len() <= limits.peer_entries);
        assert!(c.peer6.len() <= limits.peer_entries);
        assert_eq!(c.rules.len(), 10_000);
        // Not trivially: the policy fills a good part of the policy map.
        assert!(c.policy.len() > 10_000, "{} policy entries", c.policy.len());
    }

    #[test]
    fn a_policy_that_does_not_fit_is_refused_with_the_map_named() {
        // 5,000 endpoints on this node need more interfaces than
        // HW_IFACE holds.
        let p = policy(&Shape {
            endpoints: 5_000,
            local: 5_000,
            groups: 50,
            rules: 500,
            ..Shape::LARGE
        });
        let host = host();
        let any_ifindex = |name: &str| ifindex(name);
        let err = compile(&p, &view(&host, &any_ifindex)).unwrap_err();
        assert_eq!(
            err,
            CompileError::MapFull {
                map: "HW_IFACE",
                needed: 5_000,
                capacity: 4_096
            }
        );
        assert_eq!(
            err.to_string(),
            "the policy needs 5000 entries in HW_IFACE, which holds 4096 (904 too many)"
        );

        // The same fleet where 5% of the CIDR peers cover every endpoint:
        // each such rule needs an entry per peer class of its family, more
        // than the policy map holds.
        let broad = policy(&Shape {
            broad: 5,
            ..Shape::LARGE
        });
        let err = compile(&broad, &view(&host, &ifindex)).unwrap_err();
        let CompileError::MapFull { map, needed, capacity } = err else {
            panic!("{err}");
        };
        assert_eq!((map, capacity), ("HW_POLICY", 262_144));
        assert!(needed > capacity);
        assert_eq!(
            err.to_string(),
            format!(
                "the policy needs {needed} entries in HW_POLICY, which holds 262144 ({} too many)",
                needed - capacity
            )
        );
    }

    #[test]
    fn more_rules_than_rule_ids_are_refused() {
        let p = policy(&Shape {
            endpoints: 100,
            local: 10,
            groups: 100,
            rules: 70_000,
            prefix_lists: 0,
            broad: 1,
            seed: 2,
        });
        let host = host();
        let err = compile(&p, &view(&host, &ifindex)).unwrap_err();
        assert!(
            matches!(
                err,
                CompileError::MapFull {
                    map: "HW_RULE_STATS",
                    capacity: 65_535,
                    ..
                }
            ),
            "{err}"
        );
    }
}
