//! Concrete cases from the differential tests: each policy and packet
//! that once showed a disagreement. The planted compiler bugs' shrunk
//! cases are kept too, as the smallest proof that the check sees them.

use std::net::IpAddr;

use hostwall::compile::Mutation;
use hostwall::policy::parse_str;
use hostwall_tests::testrun::Fixture;

use crate::generate::{At, Case, POOL, Packet, SYN, Transport};
use crate::harness::{Compiler, check_stateless};

fn case(yaml: &str, host: &[&str], packets: &[Packet]) -> Case {
    Case {
        policy: parse_str(yaml, "regression.yaml").expect("valid policy"),
        host: host.iter().map(|a| a.parse::<IpAddr>().unwrap()).collect(),
        packets: packets.to_vec(),
    }
}

/// Each packet, judged as a new flow, gets the reference's answer.
pub fn agree(yaml: &str, host: &[&str], packets: &[Packet]) {
    let mut f = Fixture::with_interfaces(&POOL);
    let problems = check_stateless(&mut f, &case(yaml, host, packets), Compiler::Real, None);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The packets get other answers than the reference's from a compiler
/// with `mutation` planted.
fn disagree(mutation: Mutation, yaml: &str, host: &[&str], packets: &[Packet]) {
    let mut f = Fixture::with_interfaces(&POOL);
    let problems = check_stateless(&mut f, &case(yaml, host, packets), Compiler::Mutated(mutation), None);
    assert_eq!(problems.len(), packets.len(), "{}", problems.join("\n"));
}

pub fn pkt(at: At, src: &str, dst: &str, l4: Transport) -> Packet {
    Packet {
        at,
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        l4,
        aimed: false,
        frag: crate::generate::Frag::Whole,
        quote: None,
        foreign_mac: false,
    }
}

/// The last port of a two-port range, from a remote member of the group
/// the rule names.
#[test]
fn off_by_one_range_shrunk() {
    let yaml = r#"
version: 1
groups:
  g0:
    ingress:
      - {proto: tcp, ports: "0-1", from: [{group: "g0"}]}
endpoints:
  - {name: e0, interface: hwd0, addresses: ["10.0.0.0"], groups: [g0]}
  - {name: e1, node: other, addresses: ["10.0.0.1"], groups: [g0]}
"#;
    let packets = [pkt(
        At::To("hwd0".into()),
        "10.0.0.1",
        "10.0.0.0",
        Transport::Tcp {
            sport: 20004,
            dport: 1,
            flags: SYN,
        },
    )];
    agree(yaml, &[], &packets);
    disagree(Mutation::OffByOneRange, yaml, &[], &packets);
}

/// A port range on a CIDR inside another that a range rule names: the
/// nearest CIDR's entry must carry the ranges of the CIDR around it.
#[test]
fn ranges_unmerged_nested_cidrs() {
    let yaml = r#"
version: 1
groups:
  g0:
    egress:
      - {proto: tcp, ports: "1000-2000", to: [{cidr: "10.0.0.0/8"}]}
      - {proto: tcp, ports: "3000-4000", to: [{cidr: "10.0.0.0/24"}]}
endpoints:
  - {name: e0, interface: hwd0, addresses: ["192.168.0.1"], groups: [g0]}
"#;
    let packets = [pkt(
        At::From("hwd0".into()),
        "192.168.0.1",
        "10.0.0.5",
        Transport::Tcp {
            sport: 20004,
            dport: 1500,
            flags: SYN,
        },
    )];
    agree(yaml, &[], &packets);
    disagree(Mutation::RangesUnmerged, yaml, &[], &packets);
}

/// More disjoint ranges on a chain of CIDRs than one entry holds: the walk
/// goes on from the nearest CIDR's entry to the entries of the CIDR around
/// it, the last port range reached only there.
#[test]
fn range_walk_cut_long_chain() {
    let outer: Vec<String> = (0..9)
        .map(|i| {
            format!(
                "      - {{proto: udp, ports: \"{}-{}\", to: [{{cidr: \"10.0.0.0/8\"}}]}}",
                1000 + i * 100,
                1010 + i * 100
            )
        })
        .collect();
    let yaml = format!(
        r#"
version: 1
groups:
  g0:
    egress:
{}
      - {{proto: udp, ports: "5000-5010", to: [{{cidr: "10.0.0.0/24"}}]}}
endpoints:
  - {{name: e0, interface: hwd0, addresses: ["192.168.0.1"], groups: [g0]}}
"#,
        outer.join("\n")
    );
    let packets = [pkt(
        At::From("hwd0".into()),
        "192.168.0.1",
        "10.0.0.5",
        Transport::Udp {
            sport: 20004,
            dport: 1805,
        },
    )];
    agree(&yaml, &[], &packets);
    disagree(Mutation::RangeWalkCut, &yaml, &[], &packets);
}

/// More narrow disjoint ranges on a chain of nine nested CIDRs than a walk
/// reaches: the compiler moves them to single-port entries, and every
/// port of each range, and none beside it, is allowed from inside each
/// CIDR of the chain as the reference says.
#[test]
fn narrow_ranges_past_the_walk_spread_to_single_ports() {
    let mut rules = Vec::new();
    for d in 0..9u16 {
        for r in 0..8u16 {
            let first = 1000 + (d * 8 + r) * 600;
            rules.push(format!(
                "      - {{proto: udp, ports: \"{first}-{}\", to: [{{cidr: \"10.0.0.0/{}\"}}]}}",
                first + 10,
                8 + d
            ));
        }
    }
    let yaml = format!(
        r#"
version: 1
groups:
  g0:
    egress:
{}
      - {{proto: udp, ports: "60000-61000", to: [{{cidr: "10.0.0.0/12"}}]}}
endpoints:
  - {{name: e0, interface: hwd0, addresses: ["192.168.0.1"], groups: [g0]}}
"#,
        rules.join("\n")
    );
    let mut packets = Vec::new();
    let from_e0 = |dst: &str, l4: Transport| pkt(At::From("hwd0".into()), "192.168.0.1", dst, l4);
    // 10.0.0.5 is in all nine CIDRs, 10.0.128.5 in all but the /16,
    // 10.8.0.5 in the /8 to /12, 10.128.0.5 in the /8 only, 11.0.0.5 in none.
    for dst in ["10.0.0.5", "10.0.128.5", "10.8.0.5", "10.128.0.5", "11.0.0.5"] {
        let mut dports = vec![59999, 60000, 61000, 61001];
        for d in [0u16, 4, 8] {
            let first = 1000 + (d * 8 + 7) * 600;
            dports.extend([first - 1, first, first + 5, first + 10, first + 11]);
        }
        for dport in dports {
            packets.push(from_e0(dst, Transport::Udp { sport: 20004, dport }));
        }
        packets.push(from_e0(
            dst,
            Transport::Tcp {
                sport: 20004,
                dport: 1000,
                flags: SYN,
            },
        ));
    }
    agree(&yaml, &[], &packets);
}
