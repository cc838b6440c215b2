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
