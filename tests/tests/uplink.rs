//! The uplink XDP filter: traffic from another host that the receivers'
//! ingress rules deny, or that claims a local endpoint's or the host's
//! address, is dropped on arrival, before the host routes it. The tests
//! tell an XDP drop from a later TC drop by the host namespace's
//! forwarding counters: a packet XDP dropped was never forwarded.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::bins;
use hostwall_tests::{
    Agent, AgentOptions, Check, Container, DropReason, Expect, Host, Node, Probe, ProbeOptions, Remote, Server,
    assert_checks, topology::UPLINK,
};

/// web accepts tcp/80, udp/8053 and ping from the remote host's subnet;
/// db accepts tcp/5432 and udp/8053 from web only.
const POLICY: &str = r#"
version: 1
groups:
  web:
    ingress:
      - {proto: tcp, ports: 80, from: [{cidr: 198.51.100.0/24}, {cidr: "2001:db8:77::/64"}]}
      - {proto: udp, ports: 8053, from: [{cidr: 198.51.100.0/24}, {cidr: "2001:db8:77::/64"}]}
      - {proto: icmp, icmp: {type: 8}, from: [{cidr: 198.51.100.0/24}]}
      - {proto: icmpv6, icmp: {type: 128}, from: [{cidr: "2001:db8:77::/64"}]}
  db:
    ingress:
      - {proto: tcp, ports: 5432, from: [{group: web}]}
      - {proto: udp, ports: 8053, from: [{group: web}]}
endpoints:
  - {name: web, interface: hw-web, addresses: ["10.77.0.11", "fd00:77::11"], groups: [web]}
  - {name: db, interface: hw-db, addresses: ["10.77.0.13", "fd00:77::13"], groups: [db]}
"#;

struct Setup {
    servers: Vec<Server>,
    web: Container,
    db: Container,
    remote: Remote,
    host: Host,
}

fn setup() -> Setup {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let db = host.add_container("db", "hw-db", 13).expect("adding db");
    let remote = host.add_remote().expect("adding the remote host");
    let servers = vec![
        web.serve(&[80, 8080], &[53, 8053]).expect("echo servers in web"),
        db.serve(&[5432], &[8053]).expect("echo servers in db"),
    ];
    Setup {
        servers,
        web,
        db,
        remote,
        host,
    }
}

fn start_agent(host: &Host) -> Agent {
    Agent::start_with(
        host,
        POLICY,
        &AgentOptions {
            uplink: Some(UPLINK.into()),
            ..Default::default()
        },
    )
    .expect("starting the agent")
}

/// IPv4 and IPv6 datagrams the host namespace has forwarded.
fn forwarded(host: &Host) -> u64 {
    host.snmp("Ip", "ForwDatagrams").expect("reading Ip:ForwDatagrams")
        + host
            .snmp("Ip6", "OutForwDatagrams")
            .expect("reading Ip6OutForwDatagrams")
}

#[test]
fn uplink_filter_drops_what_ingress_rules_deny() {
    let s = setup();
    let mut allowed = Vec::new();
    let mut denied = Vec::new();
    for i in 0..2 {
        let (web, db) = (s.web.addrs()[i], s.db.addrs()[i]);
        allowed.push(Check::allowed(&s.remote, Probe::Tcp(80), web).labelled("web"));
        allowed.push(Check::allowed(&s.remote, Probe::Udp(8053), web).labelled("web"));
        allowed.push(Check::allowed(&s.remote, Probe::Ping, web).labelled("web"));
        // Traffic for the host itself is not the filter's business.
        allowed.push(Check::allowed(&s.remote, Probe::Ping, s.host.addrs()[i]).labelled("host"));
        allowed.push(Check::allowed(&s.remote, Probe::Ping, s.host.uplink_subnet().addr(1, i)).labelled("host"));
        denied.push(Check::denied(&s.remote, Probe::Tcp(8080), web).labelled("web"));
        denied.push(Check::denied(&s.remote, Probe::Udp(53), web).labelled("web"));
        denied.push(Check::denied(&s.remote, Probe::Tcp(5432), db).labelled("db"));
        denied.push(Check::denied(&s.remote, Probe::Udp(8053), db).labelled("db"));
        denied.push(Check::denied(&s.remote, Probe::Ping, db).labelled("db"));
    }
    let controls: Vec<Check> = denied.iter().map(|c| c.clone().expecting(Expect::Allowed)).collect();
    assert_checks("control: before the agent starts", &controls);

    let agent = start_agent(&s.host);
    let fwd = forwarded(&s.host);
    assert_checks("what web accepts from the remote host", &allowed);
    assert!(
        forwarded(&s.host) > fwd,
        "allowed traffic from the uplink was not counted as forwarded"
    );

    let fwd = forwarded(&s.host);
    let before = agent.stats().expect("reading counters");
    assert_checks("what the receivers do not accept from the remote host", &denied);
    agent.assert_dropped_since(&before, DropReason::IngressDenied, denied.len() as u64);
    assert_eq!(
        forwarded(&s.host),
        fwd,
        "denied traffic was forwarded by the host: it passed the XDP filter"
    );
}

#[test]
fn uplink_filter_drops_forged_local_addresses() {
    let s = setup();
    let db_server = &s.servers[1];
    let web_addrs = s.web.addrs();
    let host_addrs = s.host.addrs();
    let db_addrs = s.db.addrs();
    for a in web_addrs.iter().chain(&host_addrs) {
        s.remote
            .add_address(*a)
            .expect("adding a forged address to the remote host");
    }
    // Replies to a forged source go to its real owner, never back to the
    // remote host: what arrived is read from db's server log.
    let send = |source: IpAddr, probe: Probe, to: IpAddr| {
        let opts = ProbeOptions {
            source: Some(source),
            timeout: Some(Duration::from_millis(500)),
            ..Default::default()
        };
        s.remote.probe(probe, to, &opts).expect("sending from the remote host");
    };

    // Control: without the agent the host forwards them (rp_filter is off),
    // and db's ingress rules would accept web's address.
    for (web, db) in web_addrs.into_iter().zip(db_addrs) {
        send(web, Probe::Udp(8053), db);
        assert!(
            db_server.saw_from_within(web, Duration::from_secs(2)),
            "control: db did not receive a datagram from the remote host claiming {web}"
        );
    }

    let agent = start_agent(&s.host);
    let before = agent.stats().expect("reading counters");
    let fwd = forwarded(&s.host);
    let seen = web_addrs.map(|a| db_server.received_from(a));
    for (web, db) in web_addrs.into_iter().zip(db_addrs) {
        send(web, Probe::Udp(8053), db);
        send(web, Probe::Tcp(5432), db);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        web_addrs.map(|a| db_server.received_from(a)),
        seen,
        "db received packets forging web's address"
    );
    let delta = agent.assert_dropped_since(&before, DropReason::LocalAddressWrongPath, 4);
    assert_eq!(
        delta.dropped(DropReason::IngressDenied),
        0,
        "forged packets judged by the rules: {delta}"
    );
    assert_eq!(
        forwarded(&s.host),
        fwd,
        "packets forging web's address were forwarded by the host"
    );

    let before = agent.stats().expect("reading counters");
    for (host, db) in host_addrs.into_iter().zip(db_addrs) {
        send(host, Probe::Udp(8053), db);
    }
    agent.assert_dropped_since(&before, DropReason::HostAddressSpoofed, 2);
}

/// The remote host is an endpoint of another node: known by its addresses
/// only, and a member of group partners.
const PARTNER_POLICY: &str = r#"
version: 1
groups:
  web:
    ingress:
      - {proto: tcp, ports: 8080, from: [{group: partners}]}
    egress:
      - {proto: udp, ports: 53, to: [{group: partners}]}
  partners: {}
endpoints:
  - {name: web, interface: hw-web, addresses: ["10.77.0.11", "fd00:77::11"], groups: [web]}
  - {name: partner, node: other-node, interface: hw-partner, addresses: ["198.51.100.2", "2001:db8:77::2"], groups: [partners]}
"#;

#[test]
fn endpoints_of_other_nodes_are_peers_by_address() {
    let s = setup();
    let _remote_server = s.remote.serve(&[], &[53, 54]).expect("echo servers in the remote host");
    let mut allowed = Vec::new();
    let mut denied = Vec::new();
    for (web, remote) in s.web.addrs().into_iter().zip(s.remote.addrs()) {
        allowed.push(Check::allowed(&s.remote, Probe::Tcp(8080), web).labelled("web"));
        allowed.push(Check::allowed(&s.web, Probe::Udp(53), remote).labelled("partner"));
        denied.push(Check::denied(&s.remote, Probe::Tcp(80), web).labelled("web"));
        denied.push(Check::denied(&s.web, Probe::Udp(54), remote).labelled("partner"));
    }
    let controls: Vec<Check> = denied.iter().map(|c| c.clone().expecting(Expect::Allowed)).collect();
    assert_checks("control: before the agent starts", &controls);
    let agent = Agent::start_with(
        &s.host,
        PARTNER_POLICY,
        &AgentOptions {
            uplink: Some(UPLINK.into()),
            ..Default::default()
        },
    )
    .expect("starting the agent");
    assert!(
        agent.count_log(&["hw-partner"]) == 0,
        "the agent treats the other node's endpoint as local; its log:\n{}",
        agent.log()
    );
    assert_checks("what group partners may do", &allowed);
    assert_checks("what group partners may not do", &denied);
}
