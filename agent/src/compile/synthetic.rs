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
    /// 10.0.0.0/8, ::/0).
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
            push_unique(&mut group.ingress, rule, r);
        } else {
            push_unique(&mut group.egress, rule, r);
        }
    }

    Policy {
        prefix_lists,
        groups,
        endpoints,
        settings: Settings::default(),
    }
}

/// An AWS-like fleet policy, the mix operators write: endpoints in one to
/// five groups, peers 45% groups, 15% prefix lists, 10% `host`, 10%
/// specific CIDRs (/20 to /32) and `broad` percent CIDRs that cover most
/// endpoints (`0.0.0.0/0`, `::/0`, `10.0.0.0/8`, `10.0.0.0/16`,
/// `fd00::/8`; below 20% the rest are groups); ports 70% single, 15%
/// ranges, the rest ICMP and every protocol.
#[derive(Clone, Copy, Debug)]
pub struct Fleet {
    pub rules: usize,
    pub groups: usize,
    pub endpoints: usize,
    /// Endpoints on [`NODE`]; the rest are spread over `nodes` other nodes.
    pub local: usize,
    pub nodes: usize,
    /// Percent of peers that are broad CIDRs.
    pub broad: u64,
    pub prefix_lists: usize,
    /// CIDRs per prefix list: up to this many.
    pub list_entries: usize,
    /// CIDRs of one more prefix list, `pl-large` (none when 0), that one rule
    /// in 5,000 names.
    pub large_list: usize,
    pub seed: u64,
}

impl Fleet {
    /// 10,000 rules over 200 groups and 1,000 endpoints (50 on this node,
    /// the rest on 20 others).
    pub const fn mix(rules: usize, broad: u64) -> Fleet {
        Fleet {
            rules,
            groups: 200,
            endpoints: 1_000,
            local: 50,
            nodes: 20,
            broad,
            prefix_lists: 40,
            list_entries: 20,
            large_list: 0,
            seed: 7,
        }
    }
}

/// Endpoint `i`'s addresses: 10.0.x.y (inside 10.0.0.0/16) and, for every
/// other one, fd00::x:y.
fn fleet_addresses(i: usize) -> Vec<IpAddr> {
    let (hi, lo) = ((i / 250) as u8, (i % 250) as u8 + 1);
    let mut out = vec![IpAddr::V4(Ipv4Addr::new(10, (i / 62_500) as u8, hi, lo))];
    if i.is_multiple_of(2) {
        out.push(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, hi as u16, lo as u16)));
    }
    out
}

fn fleet_specific(rng: &mut Rng, endpoints: usize) -> IpNet {
    let base = fleet_addresses(rng.below(endpoints))[0];
    let len = 20 + rng.below(13) as u8;
    IpNet::new(base, len).expect("valid length").trunc()
}

fn fleet_listed(rng: &mut Rng) -> IpNet {
    let a = rng.next() as u32;
    if rng.chance(50) {
        // Inside the fleet's range.
        IpNet::new(
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (a & 0x00ff_ffff))),
            16 + rng.below(13) as u8,
        )
    } else {
        // Offices, partners, the internet.
        IpNet::new(IpAddr::V4(Ipv4Addr::from(a | 0x0100_0000)), 12 + rng.below(21) as u8)
    }
    .expect("valid length")
    .trunc()
}

/// Appends `rule` to a group's list. Rules are drawn at random and may be
/// drawn twice, and a group may not hold the same rule twice in one
/// direction: a repeat gets one more peer, an address of its own in
/// 198.18.0.0/15 (`n` is the rule's number).
fn push_unique(list: &mut Vec<Rule>, mut rule: Rule, n: usize) {
    let mut k = 0u32;
    while list
        .iter()
        .any(|r| r.proto == rule.proto && r.ports == rule.ports && r.icmp == rule.icmp && r.peers == rule.peers)
    {
        let addr = std::net::Ipv4Addr::from(0xc612_0000 | ((n as u32).wrapping_add(k) & 0x1_ffff));
        rule.peers.push(Peer::Cidr(IpNet::from(IpAddr::V4(addr))));
        k += 1;
    }
    list.push(rule);
}

/// A policy of the fleet mix.
pub fn fleet(shape: &Fleet) -> Policy {
    const BROAD: [&str; 5] = ["0.0.0.0/0", "::/0", "10.0.0.0/8", "10.0.0.0/16", "fd00::/8"];
    const RANGES: [(u16, u16); 5] = [(8000, 8100), (30000, 32767), (1024, 65535), (9000, 9999), (6000, 6063)];
    const SINGLE: [u16; 12] = [22, 53, 80, 443, 2379, 3306, 5432, 6379, 8080, 8443, 9090, 9200];
    let mut rng = Rng(shape.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let groups = shape.groups.max(1);
    let group_names: Vec<String> = (0..groups).map(|g| format!("sg-{g:04}")).collect();

    let mut prefix_lists = BTreeMap::new();
    for l in 0..shape.prefix_lists {
        let nets = (0..1 + rng.below(shape.list_entries))
            .map(|_| fleet_listed(&mut rng))
            .collect();
        prefix_lists.insert(format!("pl-{l:04}"), nets);
    }
    let list_names: Vec<String> = prefix_lists.keys().cloned().collect();
    if shape.large_list > 0 {
        let nets: std::collections::BTreeSet<IpNet> = (0..shape.large_list as u32)
            .map(|i| IpNet::new(IpAddr::V4(Ipv4Addr::from(0x6400_0000 + (i << 8))), 24).expect("valid length"))
            .collect();
        prefix_lists.insert("pl-large".to_string(), nets.into_iter().collect());
    }

    let endpoints: Vec<Endpoint> = (0..shape.endpoints)
        .map(|i| {
            let mut groups = vec![group_names[i % groups].clone()];
            for _ in 0..rng.below(5) {
                let extra = group_names[rng.below(group_names.len())].clone();
                if !groups.contains(&extra) {
                    groups.push(extra);
                }
            }
            let node = if i < shape.local {
                NODE.to_string()
            } else {
                format!("node-{}", 1 + i % shape.nodes.max(1))
            };
            Endpoint {
                name: format!("i-{i:06}"),
                node: Some(node),
                interface: Some(format!("eni{i:06}")),
                mac: None,
                addresses: fleet_addresses(i),
                groups,
            }
        })
        .collect();

    let mut out: BTreeMap<String, Group> = group_names.iter().map(|g| (g.clone(), Group::default())).collect();
    let broad = shape.broad.min(20);
    for r in 0..shape.rules {
        let name = &group_names[r % groups];
        let peers: Vec<Peer> = if shape.large_list > 0 && r % 5_000 == 0 {
            vec![Peer::PrefixList("pl-large".to_string())]
        } else {
            (0..1 + rng.below(2))
                .map(|_| match rng.below(100) as u64 {
                    n if n < 45 + (20 - broad) => Peer::Group(group_names[rng.below(groups)].clone()),
                    n if n < 60 + (20 - broad) && !list_names.is_empty() => {
                        Peer::PrefixList(list_names[rng.below(list_names.len())].clone())
                    }
                    n if n < 70 + (20 - broad) => Peer::Host,
                    n if n < 80 + (20 - broad) => Peer::Cidr(fleet_specific(&mut rng, shape.endpoints.max(1))),
                    _ => Peer::Cidr(BROAD[rng.below(BROAD.len())].parse().expect("valid CIDR")),
                })
                .collect()
        };
        let tcp_or_udp = if rng.chance(80) { Proto::TCP } else { Proto::UDP };
        let (proto, ports, icmp) = match rng.below(100) {
            0..70 => {
                let p = SINGLE[rng.below(SINGLE.len())];
                (tcp_or_udp, Some(PortRange { first: p, last: p }), None)
            }
            70..85 => {
                let (first, last) = RANGES[rng.below(RANGES.len())];
                (tcp_or_udp, Some(PortRange { first, last }), None)
            }
            85..90 => (Proto::ICMP, None, Some(IcmpMatch { ty: 8, code: None })),
            90..93 => (Proto::ICMPV6, None, Some(IcmpMatch { ty: 128, code: None })),
            _ => (Proto::All, None, None),
        };
        let rule = Rule {
            proto,
            ports,
            icmp,
            peers,
            description: None,
        };
        let group = out.get_mut(name).expect("group exists");
        if rng.chance(60) {
            push_unique(&mut group.ingress, rule, r);
        } else {
            push_unique(&mut group.egress, rule, r);
        }
    }

    Policy {
        prefix_lists,
        groups: out,
        endpoints,
        settings: Settings::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{CompileError, HostView, Limits, compile, compile_with, linear_size, positional_ids};
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
        assert!(c.cidr4.len() <= limits.policy_entries, "{}", c.cidr4.len());
        assert!(c.cidr6.len() <= limits.policy_entries, "{}", c.cidr6.len());
        assert!(c.peer4.len() <= limits.peer_entries);
        assert!(c.peer6.len() <= limits.peer_entries);
        assert_eq!(c.rules.len(), 10_000);
        // Not trivially: the policy fills a good part of the policy map.
        assert!(c.policy_entries() > 10_000, "{} policy entries", c.policy_entries());
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

        // A policy map too small for what a policy needs is named too.
        let large = policy(&Shape::LARGE);
        let small = Limits {
            policy_entries: 1_000,
            ..Limits::default()
        };
        let err = compile_with(&large, &view(&host, &ifindex), &small, &positional_ids(&large)).unwrap_err();
        let CompileError::MapFull { map, needed, capacity } = err else {
            panic!("{err}");
        };
        assert_eq!((map, capacity), ("HW_POLICY", 1_000));
        assert_eq!(
            err.to_string(),
            format!(
                "the policy needs {needed} entries in HW_POLICY, which holds 1000 ({} too many)",
                needed - capacity
            )
        );
    }

    #[test]
    fn the_fleet_mix_stays_within_the_bound_with_every_share_of_broad_peers() {
        for broad in [0, 10, 20] {
            let p = fleet(&Fleet::mix(10_000, broad));
            assert_eq!(parse_str(&to_yaml(&p), "fleet.yaml").expect("valid"), p);
            let host = host();
            let c = compile(&p, &view(&host, &ifindex)).expect("fits the default maps");
            let bound = linear_size(&p);
            assert_eq!(c.rules.len(), 10_000);
            assert_eq!(c.endpoints.len(), 50);
            assert!(
                c.policy_entries() <= bound,
                "{broad}% broad: {} entries, more than {bound}",
                c.policy_entries()
            );
            // Not trivially: the rules of the groups this node's endpoints
            // hold are written.
            assert!(
                c.policy_entries() > 10_000,
                "{broad}% broad: {} entries",
                c.policy_entries()
            );
        }
    }

    #[test]
    fn fifty_thousand_rules_and_a_prefix_list_of_fifty_thousand_cidrs_fit_the_defaults() {
        let p = fleet(&Fleet {
            endpoints: 5_000,
            local: 500,
            large_list: 50_000,
            ..Fleet::mix(50_000, 20)
        });
        assert_eq!(p.prefix_lists["pl-large"].len(), 50_000);
        let host = host();
        let c = compile(&p, &view(&host, &ifindex)).expect("fits the default maps");
        assert_eq!(c.endpoints.len(), 500);
        assert!(c.policy_entries() <= linear_size(&p));
        assert!(c.cidr4.len() > 50_000, "{} IPv4 CIDR entries", c.cidr4.len());
        // Both slots, as the kernel counts LPM entries, and conntrack's two
        // tables: well under the default --max-map-memory.
        let tries = crate::datapath::memory::policy_tries(
            c.policy.len(),
            c.peer4.len(),
            c.peer6.len(),
            c.cidr4.len(),
            c.cidr6.len(),
        );
        let policy: u64 = 2 * tries.iter().map(|t| t.2).sum::<u64>();
        assert!(
            policy + (36 << 20) < crate::datapath::memory::DEFAULT_MAX_MAP_MEMORY / 2,
            "{policy} bytes"
        );
    }

    #[test]
    fn broad_peers_cost_what_they_say() {
        // CIDRs that cover every endpoint are written once per rule, peer
        // and port block, like any other peer: at most one entry each.
        for broad in [0, 10, 20] {
            let p = policy(&Shape { broad, ..Shape::LARGE });
            let host = host();
            let c = compile(&p, &view(&host, &ifindex)).expect("fits");
            let bound = linear_size(&p);
            assert!(
                c.policy_entries() <= bound,
                "{broad}% broad: {} entries, more than {bound}",
                c.policy_entries()
            );
        }
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
