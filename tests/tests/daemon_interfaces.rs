//! Containers coming and going while the agent runs: `hostwall status`
//! tells an endpoint waiting for its interface from an enforced one,
//! interfaces matching `settings.quarantine` get no network until they are
//! made endpoints, and every endpoint's MAC is fixed when its interface is
//! first seen (and refused when someone else uses it).

mod common;

use common::bins;
use common::daemon::{DEADLINE, cli_fails, cli_json, wait_for};
use hostwall_tests::{Agent, Check, Container, DropReason, Host, Node, Probe, UdpSeqSender, assert_checks};
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

/// The entry of endpoint `name` in `hostwall status --json`.
fn endpoint_status(agent: &Agent, name: &str) -> Value {
    let status = agent.status().expect("hostwall status");
    status["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no endpoint {name} in the status: {status}"))
}

/// The MAC of eth0 inside the container, as `ip -j link show` gives it.
fn eth0_mac(c: &Container) -> String {
    let out = c
        .ns()
        .exec(&["ip", "-j", "link", "show", "eth0"])
        .expect("ip -j link show eth0");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("`ip -j link show eth0` ({e}): {out}"));
    v[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in `ip -j link show eth0`: {out}"))
        .to_string()
}

const MAC_POLICY: &str = r#"
version: 1
groups:
  web:
    ingress:
      - {proto: icmp, icmp: {type: 8}, from: [host]}
endpoints:
  - {name: web, interface: hw-web, addresses: ["10.77.0.11", "fd00:77::11"], groups: [web]}
  - {name: api, interface: hw-api, addresses: ["10.77.0.12", "fd00:77::12"], groups: [web]}
  - {name: given, interface: hw-given, mac: "02:AA:00:00:00:13", addresses: ["10.77.0.13", "fd00:77::13"], groups: [web]}
"#;

#[test]
fn status_shows_the_mac_of_each_containers_eth0() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let api = host.add_container("api", "hw-api", 12).expect("adding api");
    let given = host.add_container("given", "hw-given", 13).expect("adding given");
    let agent = Agent::start(&host, MAC_POLICY).expect("starting the agent");

    let web_mac = eth0_mac(&web);
    for (c, mac) in [(&web, web_mac.clone()), (&api, eth0_mac(&api))] {
        let e = endpoint_status(&agent, &c.name);
        assert_eq!(e["mac"], mac.as_str(), "{}: status shows eth0's MAC: {e}", c.name);
        assert_eq!(e["problem"], Value::Null, "{}: {e}", c.name);
        assert_eq!(e["state"], "enforced", "{}: {e}", c.name);
    }
    // A `mac:` wins over what the container's eth0 has.
    let e = endpoint_status(&agent, "given");
    assert_ne!(eth0_mac(&given), "02:aa:00:00:00:13");
    assert_eq!(e["mac"], "02:aa:00:00:00:13", "given: {e}");
    assert_eq!(e["problem"], Value::Null, "given: {e}");
    let human = agent.cli(&["status"]).expect("hostwall status");
    assert!(
        human
            .lines()
            .any(|l| l.contains("hw-web") && l.contains("enforced") && l.contains(&web_mac)),
        "`hostwall status` shows web's MAC:\n{human}"
    );

    // Changed inside the container after the agent fixed it: not followed,
    // also when the policy is applied again for a new endpoint, whose MAC
    // is read when it is added.
    web.ns()
        .ip("link set eth0 address 02:42:0a:4d:00:63")
        .expect("changing web's MAC");
    assert_eq!(eth0_mac(&web), "02:42:0a:4d:00:63");
    let late = host.add_container("late", "hw-late", 20).expect("adding late");
    let (v4, v6) = (late.v4.to_string(), late.v6.to_string());
    let added = cli_json(
        &agent,
        &[
            "endpoint",
            "add",
            "late",
            "--interface",
            "hw-late",
            "--address",
            &v4,
            &v6,
            "--group",
            "web",
        ],
    );
    assert_eq!(added["applied"], true, "endpoint add: {added}");
    let late_mac = eth0_mac(&late);
    wait_for("late's MAC is fixed", DEADLINE, || {
        (endpoint_status(&agent, "late")["mac"] == late_mac.as_str()).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let e = endpoint_status(&agent, "web");
    assert_eq!(
        e["mac"],
        web_mac.as_str(),
        "web keeps the MAC it had when first seen: {e}"
    );
    assert_eq!(
        agent.count_log(&["MAC fixed", "hw-web"]),
        1,
        "web's MAC is fixed once:\n{}",
        agent.log()
    );
    // The control file written back keeps the `mac:`.
    let text = std::fs::read_to_string(agent.config_path()).expect("reading the control file");
    assert!(
        text.contains("mac: \"02:aa:00:00:00:13\""),
        "the control file keeps given's mac:\n{text}"
    );
}

const CLASH_POLICY: &str = r#"
version: 1
groups:
  web:
    ingress:
      - {proto: icmp, icmp: {type: 8}, from: [host]}
endpoints:
  - {name: web, interface: hw-web, addresses: ["10.77.0.11", "fd00:77::11"], groups: [web]}
  - {name: evil, interface: hw-evil, addresses: ["10.77.0.14", "fd00:77::14"], groups: [web]}
  - {name: copycat, interface: hw-copycat, addresses: ["10.77.0.15", "fd00:77::15"], groups: [web]}
"#;

#[test]
fn an_endpoint_with_a_mac_someone_else_uses_is_refused() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let evil = host.add_container("evil", "hw-evil", 14).expect("adding evil");
    let copycat = host.add_container("copycat", "hw-copycat", 15).expect("adding copycat");
    // Before the agent sees them: evil takes the bridge's MAC, copycat
    // web's.
    let bridge = host_mac(&host);
    let web_mac = eth0_mac(&web);
    evil.ns()
        .ip(&format!("link set eth0 address {bridge}"))
        .expect("giving evil the bridge's MAC");
    copycat
        .ns()
        .ip(&format!("link set eth0 address {web_mac}"))
        .expect("giving copycat web's MAC");
    let agent = Agent::start(&host, CLASH_POLICY).expect("starting the agent");

    let e = endpoint_status(&agent, "web");
    assert_eq!(e["mac"], web_mac.as_str(), "web keeps its MAC: {e}");
    assert_eq!(e["problem"], Value::Null, "web: {e}");

    let e = endpoint_status(&agent, "evil");
    assert_eq!(e["mac"], Value::Null, "evil gets no MAC: {e}");
    assert_eq!(e["state"], "enforced", "evil: {e}");
    let problem = e["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains(&format!("MAC {bridge} is used by br0")),
        "status says whose MAC evil has: {e}"
    );

    let e = endpoint_status(&agent, "copycat");
    assert_eq!(e["mac"], Value::Null, "copycat gets no MAC: {e}");
    let problem = e["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains(&format!("MAC {web_mac} is already the MAC of endpoint web (hw-web)")),
        "status says whose MAC copycat has: {e}"
    );

    let out = agent.cli_output(&["status"]).expect("running hostwall status");
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human
            .lines()
            .any(|l| l.contains("hw-evil") && l.contains("enforced, but no MAC")),
        "`hostwall status` puts a caveat on evil:\n{human}"
    );
    assert!(
        human.contains(&format!("MAC {bridge} is used by br0")),
        "`hostwall status` says why:\n{human}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "a refused MAC is no enforcement failure:\n{human}"
    );

    // Logged once, however often the agent looks again.
    agent.cli(&["reload"]).expect("hostwall reload");
    std::thread::sleep(std::time::Duration::from_secs(2));
    for (iface, whose) in [("hw-evil", "br0"), ("hw-copycat", "endpoint web")] {
        assert_eq!(
            agent.count_log(&["WARN", "MAC refused", iface, whose]),
            1,
            "the refusal of {iface} is logged once:\n{}",
            agent.log()
        );
    }
    assert_eq!(endpoint_status(&agent, "evil")["mac"], Value::Null);

    // Web is unaffected.
    assert_checks(
        "web keeps working",
        &[Check::allowed(&host, Probe::Ping, web.v4).labelled("web")],
    );
}

#[test]
fn a_bad_mac_is_refused_at_validate_and_apply() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let _web = host.add_container("web", "hw-web", 11).expect("adding web");
    let mut agent = Agent::start(&host, MAC_POLICY).expect("starting the agent");
    let hash = agent.policy_hash().expect("status");

    let with_mac = |mac: &str| {
        MAC_POLICY.replace(
            "{name: web, interface: hw-web,",
            &format!("{{name: web, interface: hw-web, mac: {mac},"),
        )
    };
    let cases = [
        (
            with_mac("\"02:aa:00:00:00\""),
            "endpoints[0].mac: \"02:aa:00:00:00\" of endpoint \"web\" is not a MAC address",
        ),
        (
            with_mac("\"02:aa:00:00:00:zz\""),
            "endpoints[0].mac: \"02:aa:00:00:00:zz\" of endpoint \"web\" is not a MAC address",
        ),
        (
            with_mac("\"01:00:5e:00:00:01\""),
            "endpoints[0].mac: 01:00:5e:00:00:01 of endpoint \"web\" is a multicast (or broadcast) address",
        ),
        (
            with_mac("\"00:00:00:00:00:00\""),
            "endpoints[0].mac: 00:00:00:00:00:00 of endpoint \"web\" is all zeros",
        ),
        (
            with_mac("\"02:aa:00:00:00:13\""),
            "endpoints[2].mac: 02:aa:00:00:00:13 of endpoint \"given\" is already the MAC of endpoint \"web\"",
        ),
    ];
    for (i, (policy, message)) in cases.iter().enumerate() {
        let file = agent.scratch_path(&format!("bad-mac-{i}.yaml")).expect("scratch file");
        std::fs::write(&file, policy).expect("writing the file");
        let out = std::process::Command::new(&bins().hostwall)
            .arg("validate")
            .arg(&file)
            .output()
            .expect("running hostwall validate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "validate accepted:\n{policy}\n{stderr}");
        assert!(stderr.contains(message), "validate says {message:?}; it said: {stderr}");

        let path = file.to_string_lossy().into_owned();
        let (_, stderr) = cli_fails(&agent, &["apply", &path]);
        assert!(stderr.contains(message), "apply says {message:?}; it said: {stderr}");
        assert_eq!(
            agent.policy_hash().expect("status"),
            hash,
            "a refused apply changed the policy"
        );
    }

    let (_, stderr) = cli_fails(
        &agent,
        &[
            "endpoint",
            "add",
            "x",
            "--interface",
            "hw-x",
            "--mac",
            "02:aa:00:00:00:13",
            "--address",
            "10.77.0.30",
        ],
    );
    assert!(
        stderr.contains("02:aa:00:00:00:13 of endpoint \"x\" is already the MAC of endpoint \"given\""),
        "endpoint add refuses a MAC another endpoint has: {stderr}"
    );

    // In the control file: refused, the last good policy stays.
    agent
        .reload_refused(with_mac("\"ff:ff:ff:ff:ff:ff\""))
        .expect("the agent refuses the file");
    let status = agent.status().expect("status");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("endpoints[0].mac: ff:ff:ff:ff:ff:ff of endpoint \"web\" is a multicast (or broadcast) address"),
        "status names the field: {status}"
    );
    assert_eq!(status["policy"]["hash"], hash.as_str());
}

#[test]
fn a_restarted_agent_keeps_the_macs_it_fixed() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let _api = host.add_container("api", "hw-api", 12).expect("adding api");
    let mut agent = Agent::start(&host, MAC_POLICY).expect("starting the agent");
    let web_mac = eth0_mac(&web);
    assert_eq!(endpoint_status(&agent, "web")["mac"], web_mac.as_str());

    // Changed while no agent runs: the restarted one keeps what the
    // pinned datapath enforces.
    agent.stop().expect("stopping the agent");
    web.ns()
        .ip("link set eth0 address 02:42:0a:4d:00:63")
        .expect("changing web's MAC");
    agent.restart().expect("restarting the agent");
    let e = endpoint_status(&agent, "web");
    assert_eq!(e["mac"], web_mac.as_str(), "web keeps its MAC across the restart: {e}");
    assert_eq!(e["problem"], Value::Null, "web: {e}");
    assert_eq!(
        agent.count_log(&["kept the endpoint MACs the earlier agent fixed", "adopted=2"]),
        1,
        "{}",
        agent.log()
    );
}

const LATE_MAC_POLICY: &str = r#"
version: 1
groups:
  web:
    ingress:
      - {proto: icmp, icmp: {type: 8}, from: [host]}
endpoints:
  - {name: slow, interface: hw-slow, addresses: ["10.77.0.21", "fd00:77::21"], groups: [web]}
"#;

/// As a container runtime does it: the veth pair is made in the host's
/// namespace, then one end moves into the container and is configured and
/// brought up. The MAC is read once it is there and up, not before.
#[test]
fn a_mac_is_read_once_the_containers_side_is_in_place() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let agent = Agent::start(&host, LATE_MAC_POLICY).expect("starting the agent");
    let problem = |agent: &Agent| {
        endpoint_status(agent, "slow")["problem"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_default()
    };

    host.ns()
        .ip("link add hw-slow type veth peer name slow0")
        .expect("adding the veth pair");
    host.ns()
        .ip("link set hw-slow master br0 up")
        .expect("plugging hw-slow in");
    wait_for("slow waits for its container's side", DEADLINE, || {
        problem(&agent)
            .contains("the far side of hw-slow (slow0) is in the host's own network namespace")
            .then_some(())
    });
    assert_eq!(endpoint_status(&agent, "slow")["mac"], Value::Null);

    let ns = hostwall_tests::Netns::create(&hostwall_tests::topology::unique_name("hwt-slow")).expect("a namespace");
    host.ns()
        .ip(&format!("link set slow0 netns {}", ns.name()))
        .expect("moving slow0 into the container");
    wait_for("slow waits for its container's side to be up", DEADLINE, || {
        problem(&agent)
            .contains("the container's side of hw-slow is not up yet")
            .then_some(())
    });
    ns.ip("link set slow0 address 02:42:0a:4d:00:21")
        .expect("setting slow0's MAC");
    ns.ip("link set slow0 up").expect("bringing slow0 up");
    wait_for("slow's MAC is fixed", DEADLINE, || {
        (endpoint_status(&agent, "slow")["mac"] == "02:42:0a:4d:00:21").then_some(())
    });
    assert_eq!(endpoint_status(&agent, "slow")["problem"], Value::Null);
    assert_eq!(
        agent.count_log(&["WARN", "MAC is not known", "hw-slow", "not up yet"]),
        1,
        "each reason is logged once:\n{}",
        agent.log()
    );
}

/// A fleet-sized control file on a busy node: 50,000 rules, 5,000
/// endpoints of which 500 are local with their interfaces present, and a
/// prefix list of 50,000 CIDRs, applied by an agent started with its
/// defaults. Every local interface is attached and enforced, the maps stay
/// under the default ceiling, and two more endpoints' traffic is judged by
/// the rules.
#[test]
fn fleet_policy_applies_with_defaults_and_five_hundred_interfaces_attached() {
    use hostwall::compile::synthetic::{self, Fleet};
    use hostwall::policy::{Endpoint, Group, Peer, PortRange, Proto, Rule, to_yaml};

    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let api = host.add_container("api", "hw-api", 12).expect("adding api");
    let _server = api.serve(&[], &[8053, 9053]).expect("echo servers in api");

    let mut policy = synthetic::fleet(&Fleet {
        endpoints: 5_000,
        local: 500,
        large_list: 50_000,
        ..Fleet::mix(50_000, 20)
    });
    // The fleet's local endpoints' interfaces, as a container runtime
    // leaves them: one veth pair each, in the host namespace.
    let local: Vec<String> = policy
        .endpoints
        .iter()
        .filter(|e| e.node.as_deref() == Some(synthetic::NODE))
        .filter_map(|e| e.interface.clone())
        .collect();
    assert_eq!(local.len(), 500);
    let batch: String = local
        .iter()
        .enumerate()
        .map(|(i, iface)| format!("link add {iface} type veth peer name hwx{i}\nlink set {iface} up\n"))
        .collect();
    let script = std::env::temp_dir().join(format!("hostwall-veths-{}.batch", std::process::id()));
    std::fs::write(&script, batch).expect("writing the ip batch");
    let made = host.ns().ip(&format!("-batch {}", script.display()));
    let _ = std::fs::remove_file(&script);
    made.expect("creating 500 veth pairs");

    let udp = |port: u16, peer: &str| Rule {
        proto: Proto::UDP,
        ports: Some(PortRange {
            first: port,
            last: port,
        }),
        icmp: None,
        peers: vec![Peer::Group(peer.into())],
        description: None,
    };
    policy.groups.insert(
        "web".into(),
        Group {
            egress: vec![udp(8053, "api")],
            ..Group::default()
        },
    );
    policy.groups.insert(
        "api".into(),
        Group {
            ingress: vec![udp(8053, "web")],
            ..Group::default()
        },
    );
    for (c, group) in [(&web, "web"), (&api, "api")] {
        policy.endpoints.push(Endpoint {
            name: c.name.clone(),
            node: Some(synthetic::NODE.into()),
            interface: Some(c.iface.clone()),
            mac: None,
            addresses: vec![c.v4.into(), c.v6.into()],
            groups: vec![group.into()],
        });
    }
    // The test binaries are debug builds, which parse and compile a policy
    // this size many times slower than a release agent.
    let opts = hostwall_tests::AgentOptions {
        node: Some(synthetic::NODE.into()),
        start_timeout: Some(std::time::Duration::from_secs(600)),
        ..Default::default()
    };
    let agent = Agent::start_with(&host, &to_yaml(&policy), &opts).expect("starting the agent with the fleet policy");

    let status = agent.status().expect("hostwall status");
    let endpoints = status["endpoints"].as_array().cloned().unwrap_or_default();
    let enforced: Vec<&str> = endpoints
        .iter()
        .filter(|e| e["state"] == "enforced")
        .filter_map(|e| e["interface"].as_str())
        .collect();
    assert_eq!(enforced.len(), 502, "every local interface is enforced");
    for iface in &local {
        assert!(enforced.contains(&iface.as_str()), "{iface} is not enforced");
    }
    let memory = &status["map_memory"];
    let (used, max) = (
        memory["bytes"].as_u64().unwrap_or(0),
        memory["max"].as_u64().unwrap_or(0),
    );
    assert!(
        used > 0 && used <= max,
        "map memory within the default ceiling: {memory}"
    );

    let before = agent.stats().expect("reading counters");
    assert_checks(
        "two endpoints beside the fleet",
        &[
            Check::allowed(&web, Probe::Udp(8053), api.v4).labelled("api"),
            Check::allowed(&web, Probe::Udp(8053), api.v6).labelled("api"),
            Check::denied(&web, Probe::Udp(9053), api.v4).labelled("api"),
        ],
    );
    agent.assert_dropped_since(&before, DropReason::EgressDenied, 1);
}

/// A control file of `bytes` or a little more: `QUARANTINE_POLICY` with
/// a group of many rules whose last names a group that does not exist, so
/// that it is refused only once it is read to the end.
fn large_refused_policy(bytes: usize) -> String {
    let mut bulk = String::from("groups:\n  bulk:\n    ingress:\n");
    let mut i = 0u32;
    while bulk.len() < bytes {
        bulk.push_str(&format!(
            "      - {{proto: tcp, ports: {}, from: [{{cidr: 10.{}.{}.{}/32}}]}}\n",
            1 + i % 60_000,
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        ));
        i += 1;
    }
    bulk.push_str("      - {proto: tcp, ports: 1, from: [{group: nowhere}]}\n");
    QUARANTINE_POLICY.replacen("groups:\n", &bulk, 1)
}

#[test]
fn interfaces_are_quarantined_while_a_large_request_is_read() {
    use std::io::{Read as _, Write as _};

    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let _web = host.add_container("web", "hw-web", 11).expect("adding web");
    let agent = Agent::start(&host, QUARANTINE_POLICY).expect("starting the agent");
    let hash = agent.policy_hash().expect("the enforced policy's hash");

    // Refused at its last rule: reading it takes seconds in a debug build.
    let body = large_refused_policy(6 << 20);
    let mut stream = std::os::unix::net::UnixStream::connect(agent.socket()).expect("connecting to the API");
    stream
        .write_all(
            format!(
                "PUT /v1/policy HTTP/1.1\r\nHost: hostwall\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .expect("sending the head");
    stream.write_all(body.as_bytes()).expect("sending the body");
    let reply = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    });
    std::thread::sleep(std::time::Duration::from_millis(300));

    let _q = host
        .add_container_unplugged("q", "hwq2", host.subnet().v4(31), host.subnet().v6(31))
        .expect("adding q");
    wait_for("the agent quarantines hwq2", DEADLINE, || {
        quarantined(&agent).contains(&"hwq2".to_string()).then_some(())
    });
    assert!(
        !reply.is_finished(),
        "hwq2 was quarantined only once the large request had been answered: reading it held up the agent"
    );
    let reply = reply.join().expect("the reading thread");
    assert!(
        reply.starts_with("HTTP/1.1 422") && reply.contains("unknown group"),
        "the large policy should be refused for its last rule: {}",
        &reply[..reply.len().min(400)]
    );
    assert_eq!(
        agent.policy_hash().expect("the enforced policy's hash"),
        hash,
        "a refused policy changed the enforced one"
    );
}

/// `QUARANTINE_POLICY` with `rules` more ingress rules for web, each from
/// eight /32s of its own: valid, and slow to compile in a debug build.
fn large_valid_policy(rules: u32) -> String {
    let mut bulk = String::from("    ingress:\n");
    for i in 0..rules {
        let peers: Vec<String> = (0..8)
            .map(|p| {
                let n = i * 8 + p;
                format!(
                    "{{cidr: 10.{}.{}.{}/32}}",
                    100 + ((n >> 16) & 127),
                    (n >> 8) & 255,
                    n & 255
                )
            })
            .collect();
        bulk.push_str(&format!(
            "      - {{proto: tcp, ports: {}, from: [{}]}}\n",
            1 + i % 60_000,
            peers.join(", ")
        ));
    }
    QUARANTINE_POLICY.replacen("    ingress:\n", &bulk, 1)
}

#[test]
fn interfaces_are_quarantined_while_the_agent_compiles_a_large_policy() {
    use std::io::{Read as _, Write as _};

    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let _web = host.add_container("web", "hw-web", 11).expect("adding web");
    let mut agent = Agent::start(&host, QUARANTINE_POLICY).expect("starting the agent");
    let compiles = agent.count_log(&["compiling a policy"]);
    let server = host
        .serve_specs(&["udpseq:8053", "udpseq:8054"])
        .expect("udp servers in the host");

    // Valid: the agent's task compiles it for seconds (in a debug build)
    // after it has been read.
    let body = large_valid_policy(25_000);
    let mut stream = std::os::unix::net::UnixStream::connect(agent.socket()).expect("connecting to the API");
    stream
        .write_all(
            format!(
                "PUT /v1/policy HTTP/1.1\r\nHost: hostwall\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .expect("sending the head");
    stream.write_all(body.as_bytes()).expect("sending the body");
    let reply = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    });
    agent
        .wait_for_log("compiling a policy", compiles + 1, DEADLINE)
        .expect("the agent starts compiling the large policy");

    // Two new containers while it compiles: q matches the quarantine
    // pattern, z (the control) does not.
    let q = host
        .add_container_unplugged("q", "hwq3", host.subnet().v4(33), host.subnet().v6(33))
        .expect("adding q");
    let z = host
        .add_container_unplugged("z", "hwz3", host.subnet().v4(34), host.subnet().v6(34))
        .expect("adding z");
    for (c, n) in [(&q, 33), (&z, 34)] {
        host.plug(c).expect("plugging in");
        // Neighbour entries both ways, so that what is sent are IP packets.
        c.ns()
            .ip(&format!(
                "neigh replace {} lladdr {} dev eth0 nud permanent",
                host.subnet().v4(1),
                host_mac(&host)
            ))
            .expect("static neighbour in the container");
        host.ns()
            .ip(&format!(
                "neigh replace {} lladdr {} dev br0 nud permanent",
                host.subnet().v4(n),
                mac(n)
            ))
            .expect("static neighbour in the host");
    }
    // Datagrams from both towards the host for as long as the agent
    // compiles.
    let dst = |port| std::net::SocketAddr::new(host.subnet().v4(1).into(), port);
    let q_stream = UdpSeqSender::start(&q, dst(8053), 500).expect("datagrams from q");
    let z_stream = UdpSeqSender::start(&z, dst(8054), 500).expect("datagrams from z");
    server.wait_for_seqs(8054, 20, DEADLINE);
    assert!(
        !reply.is_finished(),
        "the large policy was applied before z's datagrams arrived: nothing was sent while it compiled"
    );
    let reply = reply.join().expect("the reading thread");
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "the large policy should apply: {}",
        &reply[..reply.len().min(400)]
    );
    // The agent takes over from the guard: q stays cut off, now by the
    // policy's own quarantine entry.
    wait_for("the agent quarantines hwq3", DEADLINE, || {
        quarantined(&agent).contains(&"hwq3".to_string()).then_some(())
    });
    let before = agent.stats().expect("reading counters");
    std::thread::sleep(std::time::Duration::from_millis(300));
    agent.assert_dropped_since(&before, DropReason::Quarantined, 50);
    // The agent's links (the guard's, taken over and pinned) outlive it.
    agent.kill9().expect("killing the agent");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let q_sent = q_stream.finish().expect("q's datagrams");
    let z_sent = z_stream.finish().expect("z's datagrams");
    assert!(q_sent > 100 && z_sent > 100, "q sent {q_sent}, z sent {z_sent}");
    assert_eq!(
        server.seqs(8053).len(),
        0,
        "datagrams of quarantined q reached the host (while the agent compiled, or after)"
    );
    assert!(
        !server.seqs(8054).is_empty(),
        "none of z's datagrams reached the host: the control shows nothing"
    );
    assert_eq!(
        agent.count_log(&["quarantined as it appeared", "hwq3"]),
        1,
        "the guard did not quarantine hwq3; the agent's log:\n{}",
        agent.log()
    );
}
