//! Overlapping CIDR peers with different ports: an address inside both
//! prefixes gets the ports of both, one inside only the wider prefix gets
//! only its ports.

mod common;

use common::bins;
use hostwall_tests::{Agent, Check, DropReason, Expect, Host, Node, Probe, Subnet, assert_checks};

/// The bridge is 10.1.0.0/24 (inside both 10.0.0.0/8 and 10.1.0.0/16); the
/// remote host is 10.200.0.2 (inside 10.0.0.0/8 only). Likewise for IPv6
/// with fd00::/16 and fd00:1::/32.
const POLICY: &str = r#"
version: 1
groups:
  svc:
    ingress:
      - {proto: tcp, ports: 22, from: [{cidr: 10.0.0.0/8}, {cidr: "fd00::/16"}]}
      - {proto: tcp, ports: 443, from: [{cidr: 10.1.0.0/16}, {cidr: "fd00:1::/32"}]}
      - {proto: tcp, ports: "8000-8100", from: [{cidr: 10.1.0.0/16}, {cidr: "fd00:1::/32"}]}
  client:
    egress:
      - {proto: all, to: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}]}
endpoints:
  - {name: client, interface: hw-client, addresses: ["10.1.0.11", "fd00:1::11"], groups: [client]}
  - {name: svc, interface: hw-svc, addresses: ["10.1.0.12", "fd00:1::12"], groups: [svc]}
"#;

const PORTS: &[u16] = &[22, 80, 443, 7999, 8000, 8080, 8100, 8101];

#[test]
fn overlapping_cidrs_combine_their_ports() {
    let host = Host::builder(&bins())
        .bridge(Subnet::new([10, 1, 0], "fd00:1::"))
        .uplink(Subnet::new([10, 200, 0], "fd00:200::"))
        .build()
        .expect("building the host namespace");
    let client = host.add_container("client", "hw-client", 11).expect("adding client");
    let svc = host.add_container("svc", "hw-svc", 12).expect("adding svc");
    let remote = host.add_remote().expect("adding the remote host");
    let _server = svc.serve(PORTS, &[]).expect("echo servers in svc");

    let mut allowed = Vec::new();
    let mut denied = Vec::new();
    for to in svc.addrs() {
        // client is in 10.0.0.0/8 and 10.1.0.0/16: 22, 443 and 8000-8100.
        for port in [22, 443, 8000, 8080, 8100] {
            allowed.push(Check::allowed(&client, Probe::Tcp(port), to).labelled("svc"));
        }
        for port in [80, 7999, 8101] {
            denied.push(Check::denied(&client, Probe::Tcp(port), to).labelled("svc"));
        }
        // remote is in 10.0.0.0/8 only: 22.
        allowed.push(Check::allowed(&remote, Probe::Tcp(22), to).labelled("svc"));
        for port in [443, 8080, 80] {
            denied.push(Check::denied(&remote, Probe::Tcp(port), to).labelled("svc"));
        }
    }
    let controls: Vec<Check> = denied.iter().map(|c| c.clone().expecting(Expect::Allowed)).collect();
    assert_checks("control: before the agent starts", &controls);

    let agent = Agent::start(&host, POLICY).expect("starting the agent");
    assert_checks("ports the overlapping prefixes allow", &allowed);
    let before = agent.stats().expect("reading counters");
    assert_checks("ports no prefix allows", &denied);
    agent.assert_dropped_since(&before, DropReason::IngressDenied, denied.len() as u64);
}
