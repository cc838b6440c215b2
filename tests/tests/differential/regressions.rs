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

/// An endpoint's own address inside ::/0: its entry must carry the CIDR's
/// label although the address is a longer prefix of its own.
#[test]
fn drop_shorter_prefix_shrunk() {
    let yaml = r#"
version: 1
groups:
  g0:
    egress:
      - {proto: icmpv6, to: [{cidr: "::/0"}]}
endpoints:
  - {name: e0, interface: hwd0, addresses: ["fd00::"], groups: [g0]}
"#;
    let packets = [pkt(
        At::From("hwd0".into()),
        "fd00::",
        "fd00::",
        Transport::Icmp {
            proto: 58,
            ty: 128,
            code: 0,
            id: 0,
        },
    )];
    agree(yaml, &[], &packets);
    disagree(Mutation::DropShorterPrefix, yaml, &[], &packets);
}

/// An address inside 24 nested CIDRs, more than a peer entry holds: the
/// least used of them share a closure label, and the one only the TCP rule
/// names (10.0.0.0/8) is reached through it.
#[test]
fn skip_closure_deep_chain() {
    let nets: Vec<String> = (9..32).map(|len| format!("\"10.0.0.0/{len}\"")).collect();
    let yaml = format!(
        r#"
version: 1
prefix_lists:
  nested: [{}]
groups:
  g0:
    egress:
      - {{proto: tcp, ports: 80, to: [{{cidr: "10.0.0.0/8"}}]}}
      - {{proto: udp, ports: "1-65535", to: [{{prefix_list: nested}}]}}
endpoints:
  - {{name: e0, interface: hwd0, addresses: ["192.168.0.1"], groups: [g0]}}
"#,
        nets.join(", ")
    );
    let packets = [pkt(
        At::From("hwd0".into()),
        "192.168.0.1",
        "10.0.0.5",
        Transport::Tcp {
            sport: 20004,
            dport: 80,
            flags: SYN,
        },
    )];
    agree(&yaml, &[], &packets);
    disagree(Mutation::SkipClosure, &yaml, &[], &packets);
}
