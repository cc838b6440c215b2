//! The compiler's output, read back the way the datapath reads it.

use std::net::IpAddr;

use hostwall_common::{DIR_EGRESS, DIR_INGRESS, PeerInfo};

use super::*;
use crate::policy::parse_str;

fn compile_yaml(yaml: &str, host: &[&str]) -> Compiled {
    let policy = parse_str(yaml, "test.yaml").expect("valid policy");
    let host: Vec<IpAddr> = host.iter().map(|a| a.parse().unwrap()).collect();
    let view = HostView {
        node: "n1",
        host_addresses: &host,
        ifindex: &fake_ifindex,
        macs: &Default::default(),
    };
    compile(&policy, &view).expect("compiles")
}

/// A distinct ifindex per interface name.
fn fake_ifindex(name: &str) -> Option<u32> {
    Some(
        name.bytes()
            .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32)),
    )
}

/// The peer entry the datapath's LPM lookup finds for `addr`.
fn peer(c: &Compiled, addr: &str) -> PeerInfo {
    Lookup::new(c).peer(addr.parse().unwrap())
}

/// The rule the datapath's policy lookups find for local endpoint
/// `endpoint` and the other end `other`.
fn rule(c: &Compiled, endpoint: &str, other: &str, dir: u8, proto: u8, port: u16) -> Option<u32> {
    let lookup = Lookup::new(c);
    let other: IpAddr = other.parse().unwrap();
    let family = if other.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 };
    lookup.rule(
        &lookup.groups(endpoint_id(c, endpoint)),
        &lookup.peer(other),
        other,
        dir,
        family,
        proto,
        port,
    )
}

fn endpoint_id(c: &Compiled, endpoint: &str) -> u32 {
    c.endpoints.iter().find(|e| e.name == endpoint).unwrap().info.endpoint
}

/// Does `from` (an address) reach local endpoint `to` on `proto`/`port`,
/// by `to`'s ingress rules alone?
fn ingress_allows(c: &Compiled, to: &str, from: &str, proto: u8, port: u16) -> bool {
    rule(c, to, from, DIR_INGRESS, proto, port).is_some()
}

fn egress_allows(c: &Compiled, from: &str, to: &str, proto: u8, port: u16) -> bool {
    rule(c, from, to, DIR_EGRESS, proto, port).is_some()
}

const OVERLAP: &str = r#"
version: 1
groups:
  ssh:
    ingress:
      - {proto: tcp, ports: 22, from: [{cidr: 10.0.0.0/8}]}
      - {proto: tcp, ports: 443, from: [{cidr: 10.1.0.0/16}]}
endpoints:
  - {name: srv, interface: hw-srv, addresses: ["172.16.0.2"], groups: [ssh]}
"#;

#[test]
fn overlapping_cidrs_keep_both_rules() {
    let c = compile_yaml(OVERLAP, &[]);
    assert!(
        ingress_allows(&c, "srv", "10.1.2.3", 6, 22),
        "10/8 port 22 must still apply inside 10.1/16"
    );
    assert!(ingress_allows(&c, "srv", "10.1.2.3", 6, 443));
    assert!(ingress_allows(&c, "srv", "10.2.0.1", 6, 22));
    assert!(
        !ingress_allows(&c, "srv", "10.2.0.1", 6, 443),
        "443 is only for 10.1/16"
    );
    assert!(!ingress_allows(&c, "srv", "11.0.0.1", 6, 22));
    assert!(
        !ingress_allows(&c, "srv", "10.1.2.3", 17, 22),
        "tcp rule must not allow udp"
    );
    assert!(!ingress_allows(&c, "srv", "10.1.2.3", 6, 23));
}

#[test]
fn port_ranges_are_exact_at_their_edges() {
    let c = compile_yaml(
        r#"
version: 1
groups:
  g:
    ingress:
      - {proto: tcp, ports: "8000-8100", from: [{cidr: 0.0.0.0/0}]}
      - {proto: udp, ports: "1-65534", from: [{cidr: 0.0.0.0/0}]}
      - {proto: tcp, ports: 0, from: [{cidr: 0.0.0.0/0}]}
endpoints:
  - {name: e, interface: hw-e, addresses: ["10.0.0.2"], groups: [g]}
"#,
        &[],
    );
    for (proto, port, want) in [
        (6, 7999, false),
        (6, 8000, true),
        (6, 8050, true),
        (6, 8100, true),
        (6, 8101, false),
        (6, 0, true),
        (6, 1, false),
        (17, 0, false),
        (17, 1, true),
        (17, 65534, true),
        (17, 65535, false),
    ] {
        assert_eq!(
            ingress_allows(&c, "e", "1.2.3.4", proto, port),
            want,
            "proto {proto} port {port}"
        );
    }
}

#[test]
fn port_blocks_match_first_covering_range_for_every_port() {
    let ranges = [
        (0, 0, 1),
        (5, 1030, 2),
        (1000, 2000, 3),
        (65535, 65535, 4),
        (1024, 1024, 5),
        (30000, 65534, 6),
    ];
    let blocks = port_blocks(&ranges);
    for port in 0..=u16::MAX {
        let want = ranges.iter().find(|(f, l, _)| *f <= port && port <= *l).map(|r| r.2);
        let got: Vec<u32> = blocks
            .iter()
            .filter(|b| {
                let mask = if b.prefix_bits == 0 {
                    0
                } else {
                    u16::MAX << (16 - b.prefix_bits)
                };
                b.start & mask == port & mask
            })
            .map(|b| b.rule)
            .collect();
        assert!(got.len() <= 1, "port {port} in {} blocks", got.len());
        assert_eq!(got.first().copied(), want, "port {port}");
    }
}

const SHOP: &str = r#"
version: 1
prefix_lists:
  office: ["192.0.2.0/24", "2001:db8::/32"]
groups:
  web:
    ingress:
      - {proto: tcp, ports: 443, from: [{prefix_list: office}]}
      - {proto: icmp, icmp: {type: 8}, from: [host]}
      - {proto: icmpv6, icmp: {type: 128}, from: [host]}
    egress:
      - {proto: tcp, ports: 8080, to: [{group: api}]}
  api:
    ingress:
      - {proto: tcp, ports: 8080, from: [{group: web}]}
    egress:
      - {proto: all, to: [{group: db}]}
  db:
    ingress:
      - {proto: tcp, ports: 5432, from: [{group: api}]}
endpoints:
  - {name: web-1, interface: hw-web1, addresses: ["10.10.0.11", "fd00:10::11"], groups: [web]}
  - {name: api-1, interface: hw-api1, addresses: ["10.10.0.21", "fd00:10::21"], groups: [api]}
  - {name: db-1, node: n2, interface: hw-db1, addresses: ["10.20.0.5", "fd00:20::5"], groups: [db]}
  - {name: lonely, interface: hw-lonely, addresses: ["10.10.0.99"], groups: []}
"#;

#[test]
fn group_peers_cover_both_families_and_remote_endpoints() {
    let c = compile_yaml(SHOP, &["10.10.0.1", "fd00:10::1"]);
    assert!(egress_allows(&c, "web-1", "10.10.0.21", 6, 8080));
    assert!(egress_allows(&c, "web-1", "fd00:10::21", 6, 8080));
    assert!(!egress_allows(&c, "web-1", "10.10.0.21", 6, 8081));
    assert!(ingress_allows(&c, "api-1", "fd00:10::11", 6, 8080));
    // db-1 runs on another node: it is a peer, not a local endpoint.
    assert!(c.endpoints.iter().all(|e| e.name != "db-1"));
    assert!(egress_allows(&c, "api-1", "10.20.0.5", 6, 5432));
    assert!(
        egress_allows(&c, "api-1", "fd00:20::5", 132, 9),
        "proto all covers every protocol"
    );
    assert_eq!(peer(&c, "10.20.0.5").local_endpoint, 0);
    assert_ne!(peer(&c, "10.10.0.21").local_endpoint, 0);
}

#[test]
fn icmp_rules_stay_in_their_family_and_type() {
    let c = compile_yaml(SHOP, &["10.10.0.1", "fd00:10::1"]);
    assert!(ingress_allows(&c, "web-1", "10.10.0.1", 1, 8 << 8));
    assert!(
        ingress_allows(&c, "web-1", "10.10.0.1", 1, (8 << 8) | 3),
        "type without code covers every code"
    );
    assert!(!ingress_allows(&c, "web-1", "10.10.0.1", 1, 13 << 8));
    assert!(ingress_allows(&c, "web-1", "fd00:10::1", 58, 128 << 8));
    assert!(
        !ingress_allows(&c, "web-1", "fd00:10::1", 1, 8 << 8),
        "icmp rules match IPv4 only"
    );
    assert!(
        !ingress_allows(&c, "web-1", "10.10.0.1", 58, 128 << 8),
        "icmpv6 rules match IPv6 only"
    );
}

#[test]
fn host_peer_is_the_host_addresses_only() {
    let c = compile_yaml(SHOP, &["10.10.0.1", "fd00:10::1"]);
    assert_ne!(peer(&c, "10.10.0.1").flags & hostwall_common::PEER_HOST, 0);
    assert!(!ingress_allows(&c, "web-1", "10.10.0.2", 1, 8 << 8));
    assert!(
        !ingress_allows(&c, "web-1", "10.10.0.21", 1, 8 << 8),
        "an endpoint is not the host"
    );
}

#[test]
fn prefix_lists_match_by_address_whoever_owns_it() {
    let c = compile_yaml(SHOP, &["192.0.2.1"]);
    assert!(ingress_allows(&c, "web-1", "192.0.2.200", 6, 443));
    assert!(ingress_allows(&c, "web-1", "2001:db8::7", 6, 443));
    assert!(
        ingress_allows(&c, "web-1", "192.0.2.1", 6, 443),
        "the host's address inside the list matches too"
    );
    assert!(!ingress_allows(&c, "web-1", "198.51.100.1", 6, 443));
}

#[test]
fn endpoint_without_groups_gets_no_rules() {
    let c = compile_yaml(SHOP, &[]);
    let id = endpoint_id(&c, "lonely");
    let lonely = c.endpoints.iter().find(|e| e.info.endpoint == id).unwrap();
    assert_eq!(lonely.info.groups.n, 0);
    assert_eq!(lonely.info.groups.ids, [0; hostwall_common::MAX_GROUPS]);
    assert!(!egress_allows(&c, "lonely", "10.10.0.21", 6, 8080));
}

#[test]
fn a_local_endpoints_groups_are_in_its_interface_and_address_entries() {
    let c = compile_yaml(SHOP, &[]);
    for ep in &c.endpoints {
        if ep.info.groups.n == 0 {
            continue;
        }
        let entries: Vec<PeerInfo> = c
            .peer4
            .iter()
            .map(|(_, _, i)| *i)
            .chain(c.peer6.iter().map(|(_, _, i)| *i))
            .filter(|i| i.local_endpoint == ep.info.endpoint)
            .collect();
        assert!(!entries.is_empty(), "{} has no address entry", ep.name);
        for info in entries {
            assert_eq!(info.groups, ep.info.groups, "{}", ep.name);
        }
    }
    let remote = c.peer4.iter().filter(|(_, _, i)| i.local_endpoint == 0);
    for (_, _, info) in remote {
        assert_eq!(info.groups.n, 0);
    }
}

#[test]
fn source_guard_lists_each_local_address_on_its_interface() {
    let c = compile_yaml(SHOP, &[]);
    let web = c.endpoints.iter().find(|e| e.name == "web-1").unwrap();
    let addrs: Vec<_> = c.src.iter().filter(|k| Some(k.ifindex) == web.ifindex).collect();
    assert_eq!(addrs.len(), 2);
    assert!(
        c.src
            .iter()
            .all(|k| k.addr != addr_bytes("10.20.0.5".parse().unwrap()).1),
        "remote endpoints have no guard"
    );
}

#[test]
fn a_policy_that_does_not_fit_is_refused_with_the_limit() {
    let policy = parse_str(SHOP, "shop.yaml").unwrap();
    let view = HostView {
        node: "n1",
        host_addresses: &[],
        ifindex: &|_| Some(7),
        macs: &Default::default(),
    };
    let limits = Limits {
        policy_entries: 3,
        ..Limits::default()
    };
    let err = compile_with(&policy, &view, &limits, &positional_ids(&policy)).unwrap_err();
    let CompileError::MapFull { map, needed, capacity } = &err else {
        panic!("{err}")
    };
    assert_eq!((*map, *capacity), ("HW_POLICY", 3));
    assert!(*needed > 3);
    assert!(err.to_string().contains(&format!("{} too many", needed - 3)), "{err}");
}

#[test]
fn rule_ids_are_stable_and_dense() {
    let c = compile_yaml(SHOP, &[]);
    let id = c
        .rule_id(&RuleRef {
            group: "api".into(),
            direction: Direction::Ingress,
            index: 0,
        })
        .unwrap();
    assert_eq!(c.rule(id).unwrap().group, "api");
    assert!(c.policy.iter().all(|(_, _, v)| c.rule(v.rule).is_some()));
}

/// The datapath asks an address's peer entry whether `HW_LOCAL` may hold it
/// (`may_be_local` in `ebpf/src/judge.rs`): every address there but the
/// link-local ones finds one that says so, a local endpoint's (its
/// interface there or not) or the host's, however CIDRs cover it.
#[test]
fn every_address_of_this_host_has_a_peer_entry_that_says_so() {
    let yaml = r#"
version: 1
groups:
  g:
    ingress:
      - {proto: tcp, ports: 22, from: [{cidr: 10.0.0.0/8}, {cidr: 10.10.0.21/32}, {cidr: "fd00::/8"}, host]}
endpoints:
  - {name: a, interface: hw-a, addresses: ["10.10.0.21", "fd00:10::21"], groups: [g]}
  - {name: gone, interface: hw-gone, addresses: ["10.10.0.22", "fd00:10::22"], groups: [g]}
  - {name: far, node: elsewhere, interface: hw-far, addresses: ["10.10.0.23"], groups: [g]}
"#;
    let policy = parse_str(yaml, "test.yaml").expect("valid policy");
    let host: Vec<IpAddr> = ["10.10.0.1", "fd00:10::1", "10.0.0.0"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let ifindex = |name: &str| if name == "hw-gone" { None } else { fake_ifindex(name) };
    let view = HostView {
        node: "n1",
        host_addresses: &host,
        ifindex: &ifindex,
        macs: &[(fake_ifindex("hw-a").unwrap(), [2, 0, 0, 0, 0, 1])]
            .into_iter()
            .collect(),
    };
    let c = compile(&policy, &view).expect("compiles");
    let lookup = Lookup::new(&c);
    assert!(
        c.local.len() >= 7,
        "host, endpoints and a link-local address: {:?}",
        c.local
    );
    for (key, at) in &c.local {
        let addr: IpAddr = if key.family == FAMILY_V4 as u32 {
            std::net::Ipv4Addr::new(key.addr[0], key.addr[1], key.addr[2], key.addr[3]).into()
        } else {
            std::net::Ipv6Addr::from(key.addr).into()
        };
        if at.flags & LOCAL_LINK_ONLY != 0 {
            continue;
        }
        let info = lookup.peer(addr);
        assert!(
            info.local_endpoint != 0 || info.flags & hostwall_common::PEER_HOST != 0,
            "{addr} is in HW_LOCAL ({at:?}) but its peer entry says neither endpoint nor host: {info:?}"
        );
    }
    assert_eq!(
        lookup.peer("10.10.0.23".parse().unwrap()).local_endpoint,
        0,
        "a remote endpoint"
    );
}

/// Nested CIDRs with more disjoint ranges than one range entry holds: the
/// walk reaches every range of the chain; narrow ranges that would make the
/// walk too long become single-port entries; a chain of wide ranges whose
/// walk would be longer than the datapath makes is refused with its group
/// named.
#[test]
fn range_walks_reach_every_range_of_a_chain_and_are_bounded() {
    // Depth CIDRs 10.0.0.0/8, /9, ... each with 8 disjoint UDP ranges: no
    // entry has room for a neighbour's, so a walk visits one per CIDR.
    let chain = |depth: usize, width: usize| -> String {
        let mut rules = String::new();
        for d in 0..depth {
            for r in 0..8 {
                let first = 1000 + (d * 8 + r) * 600;
                rules.push_str(&format!(
                    "      - {{proto: udp, ports: \"{first}-{}\", to: [{{cidr: \"10.0.0.0/{}\"}}]}}\n",
                    first + width,
                    8 + d
                ));
            }
        }
        format!(
            "version: 1\ngroups:\n  web:\n    egress:\n{rules}endpoints:\n  - {{name: w, interface: w0, addresses: [\"192.168.0.1\"], groups: [web]}}\n"
        )
    };
    for (depth, width) in [(8, 300), (9, 10), (12, 255)] {
        let c = compile_yaml(&chain(depth, width), &[]);
        let last = 1000 + (depth * 8 - 1) * 600;
        let (first, last) = (last as u16, (last + width) as u16);
        // The outermost CIDR's ranges, from inside the innermost.
        assert!(egress_allows(&c, "w", "10.0.0.1", 17, 1000), "{depth}x{width}");
        assert!(egress_allows(&c, "w", "10.0.0.1", 17, 1000 + 7 * 600 + width as u16));
        // The innermost CIDR's last range, its ends and beyond them.
        assert!(egress_allows(&c, "w", "10.0.0.1", 17, first), "{depth}x{width}");
        assert!(egress_allows(&c, "w", "10.0.0.1", 17, last), "{depth}x{width}");
        assert!(!egress_allows(&c, "w", "10.0.0.1", 17, first - 1), "{depth}x{width}");
        assert!(!egress_allows(&c, "w", "10.0.0.1", 17, last + 1), "{depth}x{width}");
        assert!(!egress_allows(&c, "w", "10.0.0.1", 6, first), "{depth}x{width}");
        // Outside the innermost CIDR, only the outer CIDRs' ranges.
        assert!(!egress_allows(&c, "w", "10.128.0.1", 17, first), "{depth}x{width}");
        assert!(egress_allows(&c, "w", "10.128.0.1", 17, 1000), "{depth}x{width}");
        assert!(!egress_allows(&c, "w", "11.0.0.1", 17, 1000), "{depth}x{width}");
    }

    let policy = parse_str(&chain(9, 300), "test.yaml").unwrap();
    let view = HostView {
        node: "n1",
        host_addresses: &[],
        ifindex: &fake_ifindex,
        macs: &Default::default(),
    };
    let err = compile(&policy, &view).unwrap_err();
    assert!(
        matches!(&err, CompileError::RangeWalk { group, steps: 9, .. } if group == "web"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the egress udp rules of group web need a walk of 9 entries over nested CIDRs, more than 8: fewer \
         disjoint port ranges wider than 256 ports on CIDRs inside one another"
    );
}

/// Thousands of narrow ranges on broad, nested peers of both families (a
/// common shape: one rule per service's small port block, to anywhere, the
/// VPC and a partner network) compile, and allow exactly their ports.
#[test]
fn many_narrow_ranges_on_nested_cidrs_allow_exactly_their_ports() {
    let mut rules = String::new();
    for i in 0..3000u32 {
        let first = 20000 + i * 10;
        rules.push_str(&format!(
            "      - {{proto: tcp, ports: \"{first}-{}\", to: [{{cidr: \"0.0.0.0/0\"}}, {{cidr: \"10.0.0.0/8\"}}, {{cidr: \"::/0\"}}, {{cidr: \"192.0.2.0/24\"}}]}}\n",
            first + 5
        ));
    }
    let yaml = format!(
        "version: 1\ngroups:\n  bulk:\n    egress:\n{rules}      - {{proto: tcp, ports: \"1000-1999\", to: [{{cidr: \"10.1.0.0/16\"}}]}}\nendpoints:\n  - {{name: w, interface: w0, addresses: [\"192.168.0.1\", \"fd00::1\"], groups: [bulk]}}\n"
    );
    let c = compile_yaml(&yaml, &[]);
    for peer in ["10.1.2.3", "10.9.9.9", "192.0.2.7", "198.51.100.1", "2001:db8::1"] {
        for i in [0u16, 1, 1499, 2999] {
            let first = 20000 + i * 10;
            for port in first..=first + 5 {
                assert!(egress_allows(&c, "w", peer, 6, port), "{peer} port {port}");
            }
            assert!(!egress_allows(&c, "w", peer, 6, first + 6), "{peer} port {}", first + 6);
            assert!(!egress_allows(&c, "w", peer, 6, first + 9), "{peer} port {}", first + 9);
            assert!(!egress_allows(&c, "w", peer, 17, first), "{peer} udp {first}");
        }
        assert!(!egress_allows(&c, "w", peer, 6, 19999), "{peer}");
    }
    // The wide range on the innermost CIDR stays reachable.
    assert!(egress_allows(&c, "w", "10.1.2.3", 6, 1500));
    assert!(!egress_allows(&c, "w", "10.2.2.3", 6, 1500));
}
