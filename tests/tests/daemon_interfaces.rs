//! Containers coming and going while the agent runs: `hostwall status`
//! tells an endpoint waiting for its interface from an enforced one, and
//! interfaces matching `settings.quarantine` get no network until they are
//! made endpoints.

mod common;

use common::bins;
use common::daemon::{DEADLINE, cli_json, wait_for};
use hostwall_tests::{Agent, Check, Container, DropReason, Host, Node, Probe, assert_checks};
use serde_json::Value;

/// The state `hostwall status --json` gives endpoint `name`.
fn endpoint_state(agent: &Agent, name: &str) -> (String, Value) {
    let status = agent.status().expect("hostwall status");
    let state = status["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .and_then(|e| e["state"].as_str())
        .unwrap_or("")
        .to_string();
    (state, status)
}

const LATE_POLICY: &str = r#"
version: 1
groups:
  web:
    egress:
      - {proto: udp, ports: 8053, to: [{group: late}]}
  late:
    ingress:
      - {proto: udp, ports: 8053, from: [{group: web}]}
endpoints:
  - {name: web, interface: hw-web, addresses: ["10.77.0.11", "fd00:77::11"], groups: [web]}
  - {name: late, interface: hw-late, addresses: ["10.77.0.20", "fd00:77::20"], groups: [late]}
"#;

#[test]
fn status_says_waiting_for_interface_until_it_appears() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let agent = Agent::start(&host, LATE_POLICY).expect("starting the agent");

    let out = agent.cli_output(&["status"]).expect("running hostwall status");
    let text = String::from_utf8_lossy(&out.stdout);
    let late_line = text.lines().find(|l| l.contains("hw-late")).unwrap_or("");
    assert!(
        late_line.contains("waiting for interface"),
        "`hostwall status` should say late is waiting for its interface:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("hw-web") && l.contains("enforced")),
        "`hostwall status` should say web is enforced:\n{text}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "a missing interface is no enforcement failure:\n{text}"
    );
    let (state, status) = endpoint_state(&agent, "late");
    assert_eq!(state, "waiting for interface", "status: {status}");

    let late = host.add_container("late", "hw-late", 20).expect("adding late");
    let _server = late.serve(&[], &[8053, 9053]).expect("echo servers in late");
    wait_for("late is enforced once its interface exists", DEADLINE, || {
        (endpoint_state(&agent, "late").0 == "enforced").then_some(())
    });
    let before = agent.stats().expect("reading counters");
    assert_checks(
        "late enforced",
        &[
            Check::allowed(&web, Probe::Udp(8053), late.v4).labelled("late"),
            Check::denied(&web, Probe::Udp(9053), late.v4).labelled("late"),
        ],
    );
    agent.assert_dropped_since(&before, DropReason::EgressDenied, 1);
}

const QUARANTINE_POLICY: &str = r#"
version: 1
groups:
  web:
    ingress:
      - {proto: udp, ports: 8053, from: [{cidr: 10.77.0.0/24}]}
      - {proto: icmp, icmp: {type: 8}, from: [host]}
    egress:
      - {proto: udp, ports: 8053, to: [{cidr: 10.77.0.0/24}]}
endpoints:
  - {name: web, interface: hw-web, addresses: ["10.77.0.11", "fd00:77::11"], groups: [web]}
settings:
  quarantine: {interfaces: "hwq*"}
"#;

/// The MAC the harness gives a container at 10.77.0.`n`.
fn mac(n: u8) -> String {
    format!("02:42:0a:4d:00:{n:02x}")
}

fn quarantined(agent: &Agent) -> Vec<String> {
    let status = agent.status().expect("hostwall status");
    status["quarantined"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| q["interface"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn quarantined_interface_gets_no_network_until_it_is_an_endpoint() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let web_server = web.serve(&[], &[8053]).expect("echo server in web");
    let agent = Agent::start(&host, QUARANTINE_POLICY).expect("starting the agent");
    assert!(quarantined(&agent).is_empty(), "nothing to quarantine yet");

    // Created down and off the bridge, as a runtime does before it plugs
    // the container in; quarantined before it can carry a packet.
    let q: Container = host
        .add_container_unplugged("q", "hwq1", host.subnet().v4(30), host.subnet().v6(30))
        .expect("adding q");
    wait_for("the agent quarantines hwq1", DEADLINE, || {
        quarantined(&agent).contains(&"hwq1".to_string()).then_some(())
    });
    host.plug(&q).expect("plugging q in");
    // Neighbour entries, so that what is sent are IP packets (ARP is
    // quarantined too).
    q.ns()
        .ip(&format!(
            "neigh replace {} lladdr {} dev eth0 nud permanent",
            web.v4,
            mac(11)
        ))
        .expect("static neighbour in q");
    q.ns()
        .ip(&format!(
            "neigh replace {} lladdr {} dev eth0 nud permanent",
            host.subnet().v4(1),
            host_mac(&host)
        ))
        .expect("static neighbour in q");
    host.ns()
        .ip(&format!(
            "neigh replace {} lladdr {} dev br0 nud permanent",
            q.v4,
            mac(30)
        ))
        .expect("static neighbour in the host");
    let _q_server = q.serve(&[], &[8053]).expect("echo server in q");

    let before = agent.stats().expect("reading counters");
    let cut_off = [
        Check::denied(&q, Probe::Udp(8053), web.v4).labelled("web"),
        Check::denied(&web, Probe::Udp(8053), q.v4).labelled("q"),
        Check::denied(&host, Probe::Ping, q.v4).labelled("q"),
        Check::denied(&q, Probe::Ping, host.subnet().v4(1)).labelled("host"),
    ];
    assert_checks("q quarantined", &cut_off);
    assert_eq!(
        web_server.received_from(q.v4.into()),
        0,
        "a datagram from quarantined q reached web"
    );
    agent.assert_dropped_since(&before, DropReason::Quarantined, cut_off.len() as u64);
    assert_checks(
        "web is no quarantine candidate",
        &[Check::allowed(&host, Probe::Ping, web.v4).labelled("web")],
    );

    let v4 = q.v4.to_string();
    let v6 = q.v6.to_string();
    let added = cli_json(
        &agent,
        &[
            "endpoint",
            "add",
            "q",
            "--interface",
            "hwq1",
            "--address",
            &v4,
            &v6,
            "--group",
            "web",
        ],
    );
    assert_eq!(added["applied"], true, "endpoint add: {added}");
    wait_for("q is an enforced endpoint", DEADLINE, || {
        (endpoint_state(&agent, "q").0 == "enforced" && quarantined(&agent).is_empty()).then_some(())
    });
    assert_checks(
        "q as an endpoint of group web",
        &[
            Check::allowed(&q, Probe::Udp(8053), web.v4).labelled("web"),
            Check::allowed(&web, Probe::Udp(8053), q.v4).labelled("q"),
            Check::allowed(&host, Probe::Ping, q.v4).labelled("q"),
            // Its rules apply now: web's group has no egress to the host.
            Check::denied(&q, Probe::Ping, host.subnet().v4(1)).labelled("host"),
        ],
    );
}

/// The bridge's MAC in the host namespace.
fn host_mac(host: &Host) -> String {
    let out = host
        .ns()
        .exec(&["cat", "/sys/class/net/br0/address"])
        .expect("reading br0's address");
    out.trim().to_string()
}
