//! The CLI against a running agent: rules and endpoints added and removed,
//! `diff` and `apply`, refused input that changes nothing, the control file
//! written back after every change, counters and tracked flows; and the
//! control file edited behind the agent's back (hot reload).

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::bins;
use common::daemon::{DEADLINE, cli_fails, cli_json, flows, poll, rule_id, rules_of, wait_for};
use hostwall_tests::hostwall::policy::{Policy, parse_str};
use hostwall_tests::{
    Agent, AgentOptions, Check, Container, DropReason, Expect, Host, Node, Outcome, Probe, ProbeOptions, Server,
    UdpSeqSender, assert_checks, seq_gaps,
};

const POLICY: &str = r#"
version: 1
groups:
  web:
    egress:
      - {proto: tcp, ports: 8080, to: [{group: api}]}
      - {proto: udp, ports: 8053, to: [{group: api}]}
  api:
    ingress:
      - {proto: tcp, ports: 8080, from: [{group: web}]}
      - {proto: udp, ports: 8053, from: [{group: web}]}
endpoints:
  - {name: web, interface: hw-web, addresses: ["10.77.0.11", "fd00:77::11"], groups: [web]}
  - {name: api, interface: hw-api, addresses: ["10.77.0.12", "fd00:77::12"], groups: [api]}
"#;

struct Setup {
    agent: Agent,
    servers: Vec<Server>,
    web: Container,
    api: Container,
    db: Container,
    _host: Host,
}

/// web and api are endpoints; db (10.77.0.13) is a container the policy
/// does not know yet. api serves tcp 8080 and 9090 (echo) and udp 8053
/// (sequence receiver) and 9053 (echo).
fn setup(policy: &str) -> Setup {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let api = host.add_container("api", "hw-api", 12).expect("adding api");
    let db = host.add_container("db", "hw-db", 13).expect("adding db");
    let servers = vec![
        api.serve_specs(&["tcpecho:8080", "tcp:9090", "udpseq:8053", "udp:9053"])
            .expect("servers in api"),
    ];
    let agent = Agent::start(&host, policy).expect("starting the agent");
    Setup {
        agent,
        servers,
        web,
        api,
        db,
        _host: host,
    }
}

/// The applied policy as the agent reports it (`get policy`), parsed back.
fn applied(agent: &Agent) -> Policy {
    let v = cli_json(agent, &["get", "policy"]);
    let yaml = v["yaml"]
        .as_str()
        .unwrap_or_else(|| panic!("no yaml in `get policy`: {v}"));
    parse_str(yaml, "get policy").unwrap_or_else(|e| panic!("`get policy` yaml does not parse: {e}\n{yaml}"))
}

/// The control file on disk passes `hostwall validate` and holds the
/// applied policy.
fn assert_file_matches(agent: &Agent, what: &str) {
    let out = Command::new(&bins().hostwall)
        .arg("validate")
        .arg(agent.config_path())
        .output()
        .expect("running hostwall validate");
    assert!(
        out.status.success(),
        "{what}: `hostwall validate` refuses the control file the agent wrote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(agent.config_path()).expect("reading the control file");
    let on_disk = parse_str(&text, "the control file").expect("the control file parses");
    assert_eq!(
        on_disk,
        applied(agent),
        "{what}: the control file does not hold the applied policy:\n{text}"
    );
}

fn cli(agent: &Agent, args: &[&str]) -> String {
    agent
        .cli(args)
        .unwrap_or_else(|e| panic!("hostwall {}: {e:#}", args.join(" ")))
}

/// Polls new TCP connections from `from` to `to` until they are dropped.
fn wait_denied(from: &Container, port: u16, to: &Container) {
    let opts = ProbeOptions {
        timeout: Some(std::time::Duration::from_millis(1000)),
        ..Default::default()
    };
    wait_for(
        &format!("{} → {} tcp/{port} is dropped", from.name, to.name),
        DEADLINE,
        || match from.probe(Probe::Tcp(port), to.v4.into(), &opts) {
            Ok(Outcome::TimedOut) => Some(()),
            Ok(Outcome::Echoed) => None,
            Ok(other) => panic!("{} → {} tcp/{port}: unexpected {other}", from.name, to.name),
            Err(e) => panic!("{} → {} tcp/{port}: {e:#}", from.name, to.name),
        },
    );
}

#[test]
fn rules_endpoints_diff_and_apply_through_the_cli() {
    let s = setup(POLICY);
    let agent = &s.agent;
    let to_api = |port| Check::allowed(&s.web, Probe::Tcp(port), s.api.v4).labelled("api");
    assert_checks(
        "the first policy",
        &[to_api(8080), to_api(9090).expecting(Expect::Denied)],
    );
    let kept_id = rule_id(agent, "web", "egress", 0);
    let kept_count = || agent.stats().expect("counters").rule("web", "egress", 0).unwrap_or(0);
    // The probe's last packets (its connection's close) may trail it.
    let mut last = u64::MAX;
    let kept_before = wait_for("the tcp/8080 rule's counter settles", DEADLINE, || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = kept_count();
        let settled = now == last;
        last = now;
        settled.then_some(now)
    });
    assert!(kept_before > 0, "web → api tcp/8080 counted nothing");

    // rule add: both sides of tcp/9090.
    let out = cli(agent, &add_to_api("9090"));
    assert!(out.contains("rule added"), "rule add said: {out}");
    cli(agent, &add_from_web("9090"));
    let rules = rules_of(agent, "web", "egress");
    let added = rules
        .iter()
        .find(|r| r["ports"] == "9090")
        .unwrap_or_else(|| panic!("`get policy` does not show the added rule: {rules:?}"));
    let added_id = added["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("the added rule has no id: {added}"));
    assert!(added_id != kept_id, "the added rule reuses id {kept_id}");
    let human = cli(agent, &["get", "policy"]);
    assert!(
        human.contains(&format!("[{added_id}]")) && human.contains("9090"),
        "`get policy` does not list rule {added_id}:\n{human}"
    );
    assert_file_matches(agent, "after rule add");
    // The rule that survived the updates kept its id and its count, and
    // goes on counting.
    assert_eq!(
        rule_id(agent, "web", "egress", 0),
        kept_id,
        "a surviving rule changed its id"
    );
    assert_eq!(
        kept_count(),
        kept_before,
        "rule {kept_id}'s counter changed across updates that did not touch it"
    );
    assert_checks("after rule add", &[to_api(8080), to_api(9090)]);
    let kept_after = kept_count();
    assert!(
        kept_after > kept_before,
        "rule {kept_id} counted {kept_before} before the updates and {kept_after} after more traffic"
    );

    // rule remove --id.
    cli(agent, &["rule", "remove", "--id", &added_id.to_string()]);
    let rules = rules_of(agent, "web", "egress");
    assert!(
        rules.iter().all(|r| r["id"] != added_id && r["ports"] != "9090"),
        "rule {added_id} is still there: {rules:?}"
    );
    assert_file_matches(agent, "after rule remove");
    wait_denied(&s.web, 9090, &s.api);

    // endpoint add / remove: db joins group web, then leaves.
    let db_reaches_api = || Check::allowed(&s.db, Probe::Tcp(8080), s.api.v4).labelled("api");
    assert_checks(
        "db is no endpoint: api's ingress does not admit it",
        &[db_reaches_api().expecting(Expect::Denied)],
    );
    let v4 = s.db.v4.to_string();
    cli(
        agent,
        &[
            "endpoint",
            "add",
            "db",
            "--interface",
            "hw-db",
            "--address",
            &v4,
            "--group",
            "web",
        ],
    );
    assert_file_matches(agent, "after endpoint add");
    assert!(
        applied(agent).endpoints.iter().any(|e| e.name == "db"),
        "db is not in the applied policy"
    );
    assert_checks("db in group web", &[db_reaches_api()]);
    cli(agent, &["endpoint", "remove", "db"]);
    assert_file_matches(agent, "after endpoint remove");
    wait_denied(&s.db, 8080, &s.api);

    // diff shows, apply applies.
    let hash = agent.policy_hash().expect("status");
    let next = POLICY.replace(
        "      - {proto: udp, ports: 8053, to: [{group: api}]}\n",
        "      - {proto: udp, ports: 8053, to: [{group: api}]}\n      - {proto: udp, ports: 9053, to: [{group: api}]}\n",
    )
    .replace(
        "      - {proto: udp, ports: 8053, from: [{group: web}]}\n",
        "      - {proto: udp, ports: 8053, from: [{group: web}]}\n      - {proto: udp, ports: 9053, from: [{group: web}]}\n",
    );
    let file = agent.scratch_path("next.yaml").expect("scratch path");
    std::fs::write(&file, &next).expect("writing the next policy");
    let file = file.to_str().expect("utf-8 path");
    let diff = diff_json(agent, file, true);
    let added_rules = diff["changes"]["rules_added"].as_array().cloned().unwrap_or_default();
    assert_eq!(added_rules.len(), 2, "diff should show two added rules: {diff}");
    // api's ingress rule for tcp/9090 is still applied, and not in the file.
    let removed = diff["changes"]["rules_removed"].as_array().cloned().unwrap_or_default();
    assert!(
        removed.len() == 1
            && removed[0]["group"] == "api"
            && removed[0]["rule"].as_str().is_some_and(|r| r.contains("9090")),
        "diff should show api's tcp/9090 rule removed: {diff}"
    );
    let human = String::from_utf8_lossy(&agent.cli_output(&["diff", file]).expect("running diff").stdout).into_owned();
    assert!(
        human.contains("+ rule") && human.contains("9053"),
        "diff said:\n{human}"
    );
    assert_eq!(agent.policy_hash().expect("status"), hash, "diff changed the policy");
    let udp_9053 = Check::allowed(&s.web, Probe::Udp(9053), s.api.v4).labelled("api");
    assert_checks("before apply", &[udp_9053.clone().expecting(Expect::Denied)]);
    cli(agent, &["apply", file]);
    assert_ne!(
        agent.policy_hash().expect("status"),
        hash,
        "apply did not change the policy"
    );
    assert_eq!(
        applied(agent),
        parse_str(&next, "next").expect("the next policy parses"),
        "apply did not apply the file"
    );
    assert_file_matches(agent, "after apply");
    assert_checks("after apply", &[udp_9053]);
    let diff = diff_json(agent, file, false);
    assert!(
        diff["changes"]["rules_added"].as_array().is_some_and(Vec::is_empty),
        "diff against the applied file should be empty: {diff}"
    );
}

#[test]
fn invalid_cli_input_names_the_field_and_changes_nothing() {
    let s = setup(POLICY);
    let agent = &s.agent;
    let hash = agent.policy_hash().expect("status");
    let generation = agent.status().expect("status")["policy"]["generation"].clone();
    let file_before = std::fs::read(agent.config_path()).expect("reading the control file");
    let bad_file = agent.scratch_path("bad.yaml").expect("scratch path");
    std::fs::write(&bad_file, POLICY.replace("ports: 8053, from", "ports: 70000, from")).expect("writing");
    let bad_file = bad_file.to_str().expect("utf-8 path");

    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "a port out of range",
            vec![
                "rule",
                "add",
                "web",
                "egress",
                "--proto",
                "tcp",
                "--ports",
                "70000",
                "--peer",
                "group:api",
            ],
            vec!["rule.ports", "70000"],
        ),
        (
            "an unknown group as peer",
            vec![
                "rule",
                "add",
                "web",
                "egress",
                "--proto",
                "tcp",
                "--ports",
                "80",
                "--peer",
                "group:nosuch",
            ],
            vec!["groups.web.egress[", "].to[0].group", "nosuch"],
        ),
        (
            "ports with icmp",
            vec![
                "rule",
                "add",
                "web",
                "egress",
                "--proto",
                "icmp",
                "--ports",
                "80",
                "--peer",
                "group:api",
            ],
            vec!["rule.ports", "icmp"],
        ),
        (
            "a malformed peer",
            vec!["rule", "add", "web", "egress", "--proto", "tcp", "--peer", "bogus"],
            vec!["peer", "bogus"],
        ),
        (
            "an address that is not one",
            vec![
                "endpoint",
                "add",
                "x",
                "--interface",
                "hw-x",
                "--address",
                "10.77.0.300",
                "--group",
                "web",
            ],
            vec!["addresses[0]", "10.77.0.300"],
        ),
        (
            "an address another endpoint owns",
            vec![
                "endpoint",
                "add",
                "x",
                "--interface",
                "hw-x",
                "--address",
                "10.77.0.11",
                "--group",
                "web",
            ],
            vec!["addresses[0]", "10.77.0.11", "web"],
        ),
        (
            "removing a rule id that does not exist",
            vec!["rule", "remove", "--id", "999"],
            vec!["999"],
        ),
        (
            "removing an unknown endpoint",
            vec!["endpoint", "remove", "nosuch"],
            vec!["nosuch"],
        ),
        (
            "applying an invalid file",
            vec!["apply", bad_file],
            vec!["groups.api.ingress[1].ports", "70000"],
        ),
    ];
    for (what, args, needles) in &cases {
        let (code, stderr) = cli_fails(agent, args);
        assert_ne!(code, 0, "{what}");
        assert!(
            stderr.starts_with("error: ") && needles.iter().all(|n| stderr.contains(n)),
            "{what}: the error should name {needles:?}: {stderr}"
        );
        assert_eq!(agent.policy_hash().expect("status"), hash, "{what} changed the policy");
        assert_eq!(
            std::fs::read(agent.config_path()).expect("reading the control file"),
            file_before,
            "{what} rewrote the control file"
        );
    }
    assert_eq!(
        agent.status().expect("status")["policy"]["generation"],
        generation,
        "refused input applied something"
    );
    assert_checks(
        "the policy is unchanged",
        &[
            Check::allowed(&s.web, Probe::Tcp(8080), s.api.v4).labelled("api"),
            Check::denied(&s.web, Probe::Udp(9053), s.api.v4).labelled("api"),
        ],
    );
}

#[test]
fn stats_and_conntrack_through_the_cli() {
    let s = setup(POLICY);
    let agent = &s.agent;
    let v = cli_json(agent, &["stats"]);
    let rules = v["rules"].as_array().cloned().unwrap_or_default();
    assert_eq!(rules.len(), 4, "one counter per rule: {v}");
    assert!(
        rules
            .iter()
            .all(|r| r["never_matched"] == true && r["id"].as_u64().is_some()),
        "before any traffic every rule has an id and never matched: {rules:?}"
    );

    let udp = UdpSeqSender::start(&s.web, SocketAddr::new(s.api.v4.into(), 8053), 50).expect("starting the UDP flow");
    let server = &s.servers[0];
    server.wait_for_seqs(8053, 10, DEADLINE);
    let stats = agent.stats().expect("counters");
    assert!(
        stats.rule("web", "egress", 1).unwrap_or(0) >= 10,
        "the udp rule counted too little: {stats}"
    );
    let human = cli(agent, &["stats"]);
    let line = |needle: &str| {
        human
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("`hostwall stats` has no line for {needle}:\n{human}"))
            .to_string()
    };
    assert!(
        !line("web/egress: {proto: udp, ports: 8053").contains("never matched"),
        "stats:\n{human}"
    );
    assert!(
        line("web/egress: {proto: tcp, ports: 8080").contains("never matched"),
        "stats:\n{human}"
    );

    // conntrack list and its filters.
    let web = s.web.v4.to_string();
    let found = flows(agent, &["--addr", &web, "--port", "8053", "--proto", "udp"]);
    assert!(
        found.len() == 1 && found[0]["src"] == web.as_str() && found[0]["dport"] == 8053,
        "conntrack list --addr {web} --port 8053 --proto udp: {found:?}"
    );
    assert_eq!(
        flows(agent, &["--endpoint", "web", "--proto", "udp"]).len(),
        1,
        "--endpoint web"
    );
    assert_eq!(
        flows(agent, &["--addr", "10.77.0.0/24", "--port", "8053"]).len(),
        1,
        "--addr as a CIDR"
    );
    for (filter, expected) in [
        (["--port", "9999"], 0),
        (["--proto", "tcp"], 0),
        (["--addr", "10.77.0.13"], 0),
        (["--endpoint", "api"], 1),
    ] {
        let f = flows(agent, &filter);
        assert_eq!(f.len(), expected, "conntrack list {filter:?}: {f:?}");
    }
    let table = cli(agent, &["conntrack", "list", "--port", "8053"]);
    assert!(table.contains(&format!("{web}:")), "conntrack list table:\n{table}");

    // The rule goes; the tracked flow stays (keep) until it is flushed.
    let id = rule_id(agent, "web", "egress", 1);
    cli(agent, &["rule", "remove", "--id", &id.to_string()]);
    let seen = server.seqs(8053).len();
    server.wait_for_seqs(8053, seen + 10, DEADLINE);
    assert!(
        server.seqs(8053).len() >= seen + 10,
        "the tracked flow stopped when its rule was removed"
    );
    let before = agent.stats().expect("counters");
    let flushed = cli_json(agent, &["conntrack", "flush", "--addr", &web]);
    assert!(flushed["flushed"].as_u64().unwrap_or(0) >= 1, "flush: {flushed}");
    let delta = poll(DEADLINE, || {
        let d = agent.stats().expect("counters").since(&before);
        (d.dropped(DropReason::EgressDenied) >= 10, d)
    });
    assert!(
        delta.dropped(DropReason::EgressDenied) >= 10,
        "the flushed flow's datagrams are not dropped: {delta}"
    );
    let sent = udp.finish().expect("stopping the UDP flow");
    let received = server.seqs(8053);
    assert!((received.len() as u64) < sent, "every datagram arrived after the flush");
    if let Some(gaps) = seq_gaps(&received, received.len() as u64) {
        panic!("the flow did not end at the flush: {gaps}");
    }
    let left = flows(agent, &["--addr", &web]);
    assert!(
        left.is_empty(),
        "flows of web are tracked again after the flush: {left:?}"
    );
}

fn last_error(agent: &Agent) -> Option<String> {
    agent.status().expect("status")["last_error"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn edits_of_the_control_file_apply_without_sighup() {
    let s = setup(POLICY);
    let agent = &s.agent;
    let hash = agent.policy_hash().expect("status");
    let tcp_8080 = || Check::allowed(&s.web, Probe::Tcp(8080), s.api.v4).labelled("api");
    let udp_9053 = || Check::allowed(&s.web, Probe::Udp(9053), s.api.v4).labelled("api");
    assert_checks("the first policy", &[tcp_8080(), udp_9053().expecting(Expect::Denied)]);

    // Written and renamed into place, as configuration management does.
    let wider = POLICY
        .replace(
            "      - {proto: udp, ports: 8053, to: [{group: api}]}\n",
            "      - {proto: udp, ports: 8053, to: [{group: api}]}\n      - {proto: udp, ports: 9053, to: [{group: api}]}\n",
        )
        .replace(
            "      - {proto: udp, ports: 8053, from: [{group: web}]}\n",
            "      - {proto: udp, ports: 8053, from: [{group: web}]}\n      - {proto: udp, ports: 9053, from: [{group: web}]}\n",
        );
    agent.write_config(&wider).expect("replacing the control file");
    let wider_hash = wait_for("the edited file is applied", DEADLINE, || {
        let h = agent.policy_hash().expect("status");
        (h != hash).then_some(h)
    });
    assert_eq!(
        applied(agent),
        parse_str(&wider, "wider").expect("parses"),
        "the applied policy is not the edited file"
    );
    assert_eq!(last_error(agent), None, "a valid edit left an error");
    assert!(
        agent.count_log(&["SIGHUP"]) == 0,
        "the agent was sent SIGHUP; its log:\n{}",
        agent.log()
    );
    assert_checks("after the edit", &[tcp_8080(), udp_9053()]);

    // An invalid edit is refused and reported; the last good policy holds.
    let invalid = wider.replace("ports: 9053, from", "ports: 70000, from");
    agent.write_config(&invalid).expect("replacing the control file");
    let error = wait_for("status reports the invalid edit", DEADLINE, || last_error(agent));
    assert!(
        error.contains("groups.api.ingress[2].ports") && error.contains("70000"),
        "last_error should name the field and the value: {error}"
    );
    // With its time, in RFC 3339, beside the agent's version and uptime.
    let status = agent.status().expect("status");
    let rfc3339 = |v: &serde_json::Value| {
        v.as_str()
            .is_some_and(|t| t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.starts_with("20"))
    };
    assert!(rfc3339(&status["last_error_at"]), "{status}");
    assert!(
        rfc3339(&status["started_at"]) && rfc3339(&status["policy"]["applied_at_rfc3339"]),
        "{status}"
    );
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].as_u64().is_some(), "{status}");
    assert_eq!(
        agent.policy_hash().expect("status"),
        wider_hash,
        "the invalid edit changed the policy"
    );
    let human = cli(agent, &["status"]);
    assert!(
        human.contains("last error") && human.contains("70000"),
        "status:\n{human}"
    );
    assert_checks(
        "the last good policy after the invalid edit",
        &[
            tcp_8080(),
            udp_9053(),
            Check::denied(&s.web, Probe::Tcp(9090), s.api.v4).labelled("api"),
        ],
    );

    // Written in place (truncate, then write): applied too, the error goes.
    std::fs::write(agent.config_path(), POLICY).expect("writing the control file");
    wait_for("the rewritten file is applied", DEADLINE, || {
        (agent.policy_hash().expect("status") == hash).then_some(())
    });
    assert_eq!(last_error(agent), None, "the error stays after a valid edit");
    assert_checks(
        "the first policy again",
        &[tcp_8080(), udp_9053().expecting(Expect::Denied)],
    );
}

/// The policy map's capacity is the agent's `--policy-entries`: status
/// reports it, a policy that does not fit is refused at start with the map
/// and the count, and an update that does not fit changes nothing.
#[test]
fn map_sizes_are_configurable_and_a_policy_that_does_not_fit_is_refused() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let _web = host.add_container("web", "hw-web", 11).expect("adding web");
    let _api = host.add_container("api", "hw-api", 12).expect("adding api");
    // POLICY needs 8 policy entries (4 rules, each for web's two address
    // classes or api's).
    let small = hostwall_tests::AgentOptions {
        args: vec!["--policy-entries".into(), "16".into()],
        ..Default::default()
    };
    let agent = Agent::start_with(&host, POLICY, &small).expect("starting the agent with 16 policy entries");
    let status = agent.status().expect("status");
    let policy_map = status["maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["map"] == "HW_POLICY"))
        .unwrap_or_else(|| panic!("no HW_POLICY fill level in status: {status}"));
    assert_eq!(policy_map["capacity"].as_u64(), Some(16), "{policy_map}");
    let used = policy_map["entries"].as_u64().expect("entries");
    assert!(used > 0 && used <= 16, "{policy_map}");

    // Widening every rule to all ports of many ranges needs more entries.
    let hash = agent.policy_hash().expect("policy hash");
    let wide = POLICY.replace("ports: 8080", "ports: \"1-65534\"");
    let (_, err) = cli_fails(&agent, &["apply", &write_temp(&agent, &wide)]);
    assert!(
        err.contains("HW_POLICY") && err.contains("too many"),
        "the refusal names the map and the excess: {err}"
    );
    assert_eq!(
        agent.policy_hash().expect("policy hash"),
        hash,
        "a refused update changed the policy"
    );
    drop(agent);

    let tiny = hostwall_tests::AgentOptions {
        args: vec!["--policy-entries".into(), "16".into()],
        ..Default::default()
    };
    let err = match Agent::start_with(&host, &wide, &tiny) {
        Ok(_) => panic!("an agent whose policy does not fit its maps started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("HW_POLICY") && err.contains("which holds 16"), "{err}");
}

/// Past `--max-map-memory`, a policy is refused with the map it needs most
/// and the flag named, and the last good policy stays enforced: the LPM
/// tries' entries and the growth of maps allocated whole both count.
#[test]
fn a_policy_past_the_memory_ceiling_is_refused_naming_the_map_and_the_flag() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let _web = host.add_container("web", "hw-web", 11).expect("adding web");
    let _api = host.add_container("api", "hw-api", 12).expect("adding api");
    let agent = Agent::start(&host, POLICY).expect("starting the agent");
    let memory = agent.status().expect("status")["map_memory"].clone();
    let (used, max) = (memory["bytes"].as_u64(), memory["max"].as_u64());
    assert_eq!(max, Some(512 << 20), "the default ceiling: {memory}");
    let used = used
        .filter(|b| *b > 0)
        .unwrap_or_else(|| panic!("no map memory in status: {memory}"));
    drop(agent);

    // A ceiling 32 KiB above what the small policy takes: 1,000 rules for
    // api (as many rule slots as the agent sized its counters for), each of
    // a port range on a CIDR of its own, need more (an entry each in
    // HW_CIDR4, in both slots).
    let opts = |margin: u64| hostwall_tests::AgentOptions {
        args: vec!["--max-map-memory".into(), (used + margin).to_string()],
        ..Default::default()
    };
    let agent = Agent::start_with(&host, POLICY, &opts(32 << 10)).expect("starting the agent under a tight ceiling");
    let hash = agent.policy_hash().expect("policy hash");
    let with_rules = |rule: &dyn Fn(usize) -> String, n: usize| {
        let rules: String = (0..n).map(rule).collect();
        POLICY.replacen("    ingress:\n", &format!("    ingress:\n{rules}"), 1)
    };
    let cidrs = with_rules(
        &|i| {
            format!(
                "      - {{proto: tcp, ports: \"1000-1999\", from: [{{cidr: 10.{}.{}.0/24}}]}}\n",
                i / 250,
                i % 250
            )
        },
        1_000,
    );
    let (_, err) = cli_fails(&agent, &["apply", &write_temp(&agent, &cidrs)]);
    assert!(
        err.contains("--max-map-memory") && err.contains("HW_CIDR4 alone takes") && err.contains("for 1000 entries"),
        "the refusal names the flag and the map: {err}"
    );
    assert_eq!(
        agent.policy_hash().expect("policy hash"),
        hash,
        "a refused update changed the policy"
    );
    drop(agent);

    // Maps grow only within the ceiling: 5,000 rules by group, whose few
    // policy entries fit 512 KiB, need the rule counters to grow past it.
    let agent = Agent::start_with(&host, POLICY, &opts(512 << 10)).expect("starting the agent under a tight ceiling");
    let hash = agent.policy_hash().expect("policy hash");
    let rule_slots = |agent: &Agent| {
        let status = agent.status().expect("status");
        status["maps"]
            .as_array()
            .and_then(|maps| maps.iter().find(|m| m["map"] == "HW_RULE_STATS"))
            .and_then(|m| m["capacity"].as_u64())
            .unwrap_or_else(|| panic!("no HW_RULE_STATS capacity in status: {status}"))
    };
    let slots = rule_slots(&agent);
    assert!(
        slots < 5_000,
        "the agent sized its rule counters for the small policy: {slots}"
    );
    let many = with_rules(
        &|i| {
            format!(
                "      - {{proto: tcp, ports: {}, from: [{{group: web}}]}}\n",
                10_000 + i
            )
        },
        5_000,
    );
    let (_, err) = cli_fails(&agent, &["apply", &write_temp(&agent, &many)]);
    assert!(
        err.contains("--max-map-memory")
            && err.contains("HW_RULE_STATS alone takes")
            && err.contains("for 16384 entries"),
        "the refusal names the flag and the map that would grow: {err}"
    );
    assert_eq!(
        agent.policy_hash().expect("policy hash"),
        hash,
        "a refused update changed the policy"
    );
    assert_eq!(rule_slots(&agent), slots, "a refused update grew the maps");
    assert_eq!(agent.count_log(&["maps grown"]), 0, "{}", agent.log());
}

fn write_temp(agent: &Agent, text: &str) -> String {
    let path = agent.scratch_path("wide.yaml").expect("a scratch path");
    std::fs::write(&path, text).expect("writing the policy");
    path.display().to_string()
}

/// `rule add` arguments for web's egress to api on tcp/`port`.
fn add_to_api(port: &str) -> [&str; 10] {
    [
        "rule",
        "add",
        "web",
        "egress",
        "--proto",
        "tcp",
        "--ports",
        port,
        "--peer",
        "group:api",
    ]
}

/// `rule add` arguments for api's ingress from web on tcp/`port`.
fn add_from_web(port: &str) -> [&str; 10] {
    [
        "rule",
        "add",
        "api",
        "ingress",
        "--proto",
        "tcp",
        "--ports",
        port,
        "--peer",
        "group:web",
    ]
}

/// `hostwall --json diff FILE`, which exits 1 when there are changes.
fn diff_json(agent: &Agent, file: &str, changes: bool) -> serde_json::Value {
    let out = agent.cli_output(&["--json", "diff", file]).expect("running diff");
    assert_eq!(
        out.status.code(),
        Some(if changes { 1 } else { 0 }),
        "diff's exit code with{} changes: {}",
        if changes { "" } else { "out" },
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("diff printed JSON")
}

/// The id of the rule of `group`'s `direction` list for `ports`.
fn id_for_ports(agent: &Agent, group: &str, direction: &str, ports: &str) -> Option<u64> {
    rules_of(agent, group, direction)
        .iter()
        .find(|r| r["ports"] == ports)
        .and_then(|r| r["id"].as_u64())
}

#[test]
fn rule_ids_name_one_rule_forever() {
    let s = setup(POLICY);
    let mut agent = s.agent;
    let add = |agent: &Agent, port: &str| {
        cli(agent, &add_to_api(port));
        id_for_ports(agent, "web", "egress", port).unwrap_or_else(|| panic!("rule for {port} not listed"))
    };
    let removed = add(&agent, "9090");
    // Peers are JSON in the control file's shape, not YAML text.
    let listed = rules_of(&agent, "web", "egress");
    let rule = listed.iter().find(|r| r["ports"] == "9090").expect("the added rule");
    assert_eq!(rule["peers"], serde_json::json!([{"group": "api"}]), "{rule}");
    cli(&agent, &["rule", "remove", "--id", &removed.to_string()]);
    // An unrelated rule added next does not get the removed rule's id...
    let unrelated = add(&agent, "9191");
    assert!(unrelated > removed, "rule for 9191 got id {unrelated} after {removed}");
    // ... so removing the old id again removes nothing.
    let (_, stderr) = cli_fails(&agent, &["rule", "remove", "--id", &removed.to_string()]);
    assert!(stderr.contains(&format!("no rule has id {removed}")), "{stderr}");
    assert_eq!(id_for_ports(&agent, "web", "egress", "9191"), Some(unrelated));
    // The removed rule added again is a new rule.
    let again = add(&agent, "9090");
    assert!(again > unrelated, "the re-added rule got id {again}");

    // A description is not part of a rule: editing it keeps the rule's id
    // and counter.
    assert_checks(
        "traffic for the first rule",
        &[Check::allowed(&s.web, Probe::Tcp(8080), s.api.v4).labelled("api")],
    );
    let first = id_for_ports(&agent, "web", "egress", "8080").expect("the first rule");
    let before = agent_stats_rule(&agent, first);
    assert!(before > 0, "rule {first} counted nothing");
    let text = std::fs::read_to_string(agent.config_path()).expect("reading the control file");
    let described = text.replacen(
        "{proto: tcp, ports: 8080, to: [{group: \"api\"}]}",
        "{proto: tcp, ports: 8080, to: [{group: \"api\"}], description: \"the web tier's API calls\"}",
        1,
    );
    assert_ne!(described, text, "the control file holds the rule as written: {text}");
    agent.reload(&described).expect("reloading with a description");
    assert_eq!(id_for_ports(&agent, "web", "egress", "8080"), Some(first));
    assert!(
        agent_stats_rule(&agent, first) >= before,
        "rule {first}'s counter was reset by a new description"
    );

    // Ids survive a restart, and the next rule's is new.
    let ids: Vec<u64> = rules_of(&agent, "web", "egress")
        .iter()
        .filter_map(|r| r["id"].as_u64())
        .collect();
    agent.stop().expect("stopping the agent");
    agent.restart().expect("restarting the agent");
    let after: Vec<u64> = rules_of(&agent, "web", "egress")
        .iter()
        .filter_map(|r| r["id"].as_u64())
        .collect();
    assert_eq!(after, ids, "ids changed across a restart");
    let next = add(&agent, "9292");
    assert!(next > again, "the first rule after the restart got id {next}");
    drop(s.servers);
}

/// Packets rule `id` counted, from `hostwall stats --json`.
fn agent_stats_rule(agent: &Agent, id: u64) -> u64 {
    let v = cli_json(agent, &["stats"]);
    v["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["id"] == id))
        .and_then(|r| r["packets"].as_u64())
        .unwrap_or(0)
}

#[test]
fn logs_say_who_changed_what_without_colours_and_as_json_when_asked() {
    let s = setup(POLICY);
    let agent = &s.agent;
    cli(agent, &add_to_api("9090"));
    let log = agent.log();
    assert!(
        !log.contains('\u{1b}'),
        "escape sequences in a log that is not a terminal:\n{log}"
    );
    let changed = log
        .lines()
        .find(|l| l.contains("policy changed") && l.contains("rule add"))
        .unwrap_or_else(|| panic!("no change logged:\n{log}"));
    assert!(
        changed.contains("uid=0")
            && changed.contains("+rule web egress {proto: tcp, ports: 9090, to: [{group: \"api\"}]}"),
        "the change names who and what: {changed}"
    );
    drop(s.servers);

    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let _web = host.add_container("web", "hw-web", 11).expect("adding web");
    let _api = host.add_container("api", "hw-api", 12).expect("adding api");
    let opts = hostwall_tests::AgentOptions {
        args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    };
    let agent = Agent::start_with(&host, POLICY, &opts).expect("starting the agent with JSON logs");
    let log = agent.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "policy applied" && l["level"] == "INFO"),
        "{log}"
    );
}

#[test]
fn write_back_keeps_symlinks_owners_and_the_operators_edits() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let s = setup(POLICY);
    let mut agent = s.agent;
    // The control file as a GitOps checkout has it: a symlink into the
    // checkout, the file group-owned and group-readable.
    let config = agent.config_path().to_path_buf();
    let checkout = agent.scratch_path("checkout").expect("a scratch path");
    std::fs::create_dir_all(&checkout).expect("creating the checkout");
    let target = checkout.join("policy.yaml");
    std::fs::copy(&config, &target).expect("copying the control file");
    std::os::unix::fs::chown(&target, Some(0), Some(48_611)).expect("chown");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let link = config.with_file_name(".policy.yaml.link");
    std::os::unix::fs::symlink(&target, &link).expect("making the symlink");
    std::fs::rename(&link, &config).expect("putting the symlink in place");

    cli(&agent, &add_to_api("9090"));
    let meta = std::fs::symlink_metadata(&config).expect("the control file");
    assert!(
        meta.file_type().is_symlink(),
        "the write-back replaced the symlink by a file"
    );
    let written = std::fs::read_to_string(&target).expect("reading the checkout's file");
    assert!(
        written.contains("ports: 9090"),
        "the change is not in the symlink's target:\n{written}"
    );
    let meta = std::fs::metadata(&target).expect("the target");
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (0, 48_611, 0o640));

    // An edit the agent refused (an operator's half-done work): a change
    // through the API must not overwrite it, and applies nothing.
    let generation = agent.status().expect("status")["policy"]["generation"].clone();
    // Written in place, through the symlink, as an editor saves.
    let edit = format!("{written}half-done: [\n");
    let refused = agent.count_log(&["policy refused"]);
    std::fs::write(&config, &edit).expect("editing the control file");
    agent.signal(libc::SIGHUP).expect("SIGHUP");
    agent
        .wait_for_log("policy refused", refused + 1, std::time::Duration::from_secs(20))
        .expect("the half-done edit is refused");
    let (_, stderr) = cli_fails(&agent, &add_to_api("9191"));
    assert!(stderr.contains("changed since the agent last read it"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&config).expect("reading the control file"),
        edit,
        "the operator's edit was overwritten"
    );
    assert_eq!(agent.status().expect("status")["policy"]["generation"], generation);
    // Once the edit is saved whole, changes go through again.
    let applied = agent.count_log(&["policy applied from the control file"]);
    std::fs::write(&config, &written).expect("finishing the edit");
    agent.signal(libc::SIGHUP).expect("SIGHUP");
    agent
        .wait_for_log(
            "policy applied from the control file",
            applied + 1,
            std::time::Duration::from_secs(20),
        )
        .expect("the finished edit is applied");
    cli(&agent, &add_to_api("9191"));
    drop(s.servers);
}

/// Exit code and stdout of `hostwall ARGS` against `agent`.
fn exit_of(agent: &Agent, args: &[&str]) -> (Option<i32>, String) {
    let out = agent
        .cli_output(args)
        .unwrap_or_else(|e| panic!("running `hostwall {}`: {e:#}", args.join(" ")));
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn exit_codes_tell_outcomes_apart() {
    let s = setup(POLICY);
    let agent = &s.agent;
    assert_eq!(
        exit_of(agent, &["explain", "--from", "web", "--to", "api", "tcp/8080"]).0,
        Some(0)
    );
    assert_eq!(
        exit_of(agent, &["explain", "--from", "web", "--to", "api", "tcp/9999"]).0,
        Some(1)
    );
    assert_eq!(
        exit_of(agent, &["explain", "--from", "nosuch", "--to", "api", "tcp/8080"]).0,
        Some(2)
    );

    let same = agent.scratch_path("same.yaml").expect("a scratch path");
    std::fs::write(&same, POLICY).expect("writing");
    assert_eq!(exit_of(agent, &["diff", same.to_str().expect("UTF-8")]).0, Some(0));
    let other = agent.scratch_path("other.yaml").expect("a scratch path");
    std::fs::write(&other, POLICY.replace("ports: 8053", "ports: 8054")).expect("writing");
    assert_eq!(exit_of(agent, &["diff", other.to_str().expect("UTF-8")]).0, Some(1));
    let invalid = agent.scratch_path("invalid.yaml").expect("a scratch path");
    std::fs::write(&invalid, "version: 1\ngroups: [\n").expect("writing");
    assert_eq!(exit_of(agent, &["apply", invalid.to_str().expect("UTF-8")]).0, Some(2));
    assert_eq!(exit_of(agent, &["status"]).0, Some(0));

    // Errors are JSON too with --json.
    let (code, stdout) = exit_of(agent, &["--json", "rule", "remove", "--id", "999999"]);
    assert_eq!(code, Some(2));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("no rule has id 999999")),
        "{v}"
    );
    assert_eq!(v["exit_code"], 2);
    // `validate` needs no agent and speaks JSON too: a refused file names
    // the field.
    let bad_port = agent.scratch_path("bad-port.yaml").expect("a scratch path");
    std::fs::write(&bad_port, POLICY.replace("ports: 8053", "ports: 70000")).expect("writing");
    let out = Command::new(&bins().hostwall)
        .args(["--json", "validate"])
        .arg(&bad_port)
        .output()
        .expect("running hostwall validate");
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(v["path"].as_str().is_some_and(|p| p.ends_with(".ports")), "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("70000")), "{v}");
    let out = Command::new(&bins().hostwall)
        .args(["--json", "validate"])
        .arg(&same)
        .output()
        .expect("running hostwall validate");
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("validate --json prints JSON");
    assert_eq!(v["valid"], true, "{v}");

    // No agent on the socket.
    let out = Command::new(&bins().hostwall)
        .args(["--socket", "/nonexistent/hostwall.sock", "status"])
        .output()
        .expect("running hostwall status");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    drop(s.servers);
}

#[test]
fn dry_runs_change_nothing_and_rollback_goes_back() {
    let s = setup(POLICY);
    let agent = &s.agent;
    let hash = || agent.policy_hash().expect("the enforced policy's hash");
    let file = || std::fs::read(agent.config_path()).expect("reading the control file");
    let (hash0, file0) = (hash(), file());
    let to_9090 = || Check::denied(&s.web, Probe::Tcp(9090), s.api.v4).labelled("api");
    let wide = write_temp(agent, &POLICY.replace("ports: 8080", "ports: 8080-9090"));

    // Each change command says what it would change, and changes nothing:
    // not the enforced policy, not the control file, not the traffic.
    let (code, out) = exit_of(agent, &["--dry-run", "apply", &wide]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("dry run, nothing changed") && out.contains("8080-9090"),
        "{out}"
    );
    let (code, out) = exit_of(
        agent,
        &[
            "--json",
            "--dry-run",
            "rule",
            "add",
            "web",
            "egress",
            "--proto",
            "udp",
            "--ports",
            "7070",
            "--peer",
            "group:api",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["dry_run"], true, "{v}");
    assert_eq!(v["changes"]["rules_added"].as_array().map(Vec::len), Some(1), "{v}");
    let (code, out) = exit_of(agent, &["--dry-run", "endpoint", "remove", "api"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("- endpoints api"), "{out}");
    let (code, out) = exit_of(agent, &["--dry-run", "conntrack", "flush"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("would be flushed"), "{out}");
    assert_eq!(hash(), hash0, "a dry run changed the enforced policy");
    assert_eq!(file(), file0, "a dry run changed the control file");
    assert_checks("after dry runs", &[to_9090()]);

    // A dry run is checked as the change would be.
    let (code, _) = exit_of(
        agent,
        &[
            "--dry-run",
            "rule",
            "add",
            "web",
            "egress",
            "--proto",
            "tcp",
            "--ports",
            "1",
            "--peer",
            "group:nosuch",
        ],
    );
    assert_eq!(code, Some(2), "a dry run of an invalid rule should be refused");
    // Commands that change nothing have no dry run.
    assert_eq!(exit_of(agent, &["--dry-run", "status"]).0, Some(2));

    // Nothing to roll back to before a change.
    let (code, _) = exit_of(agent, &["rollback"]);
    assert_eq!(code, Some(2));

    cli(agent, &["apply", &wide]);
    let hash1 = hash();
    assert_checks("9090 allowed", &[to_9090().expecting(Expect::Allowed)]);
    let (code, out) = exit_of(agent, &["--dry-run", "rollback"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("rolling back would change"), "{out}");
    assert_eq!(hash(), hash1, "a dry run of rollback rolled back");

    // Rollback is a change of its own: enforced, written back, and undone
    // by the next rollback.
    let out = cli(agent, &["rollback"]);
    assert!(out.contains("rolled back"), "{out}");
    assert_eq!(hash(), hash0, "rollback should restore the policy before the apply");
    wait_denied(&s.web, 9090, &s.api);
    assert_file_matches(agent, "after rollback");
    cli(agent, &["rollback"]);
    assert_eq!(hash(), hash1, "a second rollback should undo the first");
    assert_checks("9090 allowed again", &[to_9090().expecting(Expect::Allowed)]);
}

/// A directory of the test's own, removed when the test ends, passed or
/// failed.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("hwt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn write_back_none_keeps_changes_in_the_state_directory_until_the_file_changes() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let api = host.add_container("api", "hw-api", 12).expect("adding api");
    let _servers = api.serve_specs(&["tcpecho:8080", "tcp:9090"]).expect("servers in api");
    let state = TempDir::new("state");
    let opts = AgentOptions {
        args: vec![
            "--write-back".into(),
            "none".into(),
            "--state-dir".into(),
            state.0.display().to_string(),
        ],
        ..Default::default()
    };
    let mut agent = Agent::start_with(&host, POLICY, &opts).expect("starting the agent");
    let file = || std::fs::read(agent.config_path()).expect("reading the control file");
    let file0 = file();
    let matches_file = |agent: &Agent| agent.status().expect("hostwall status")["policy"]["matches_file"].clone();
    let to_9090 = || Check::denied(&web, Probe::Tcp(9090), api.v4).labelled("api");
    assert_eq!(matches_file(&agent), true);

    cli(&agent, &add_to_api("9090"));
    cli(&agent, &add_from_web("9090"));
    assert_checks("9090 allowed through the API", &[to_9090().expecting(Expect::Allowed)]);
    assert_eq!(file(), file0, "--write-back none wrote to the control file");
    assert_eq!(
        matches_file(&agent),
        false,
        "status should say the enforced policy differs from the file"
    );
    assert!(
        state.0.join("policy.yaml").exists(),
        "the change is not in the state directory"
    );

    // The change survives a restart.
    agent.stop().expect("stopping the agent");
    agent.restart().expect("restarting the agent");
    assert_checks(
        "9090 allowed after the restart",
        &[to_9090().expecting(Expect::Allowed)],
    );
    assert_eq!(matches_file(&agent), false);

    // An edit of the control file wins over what the API changed, now and
    // after the next restart.
    agent
        .write_config(POLICY.replace("ports: 8053", "ports: 8054"))
        .expect("editing the control file");
    wait_for("the edited control file is applied", DEADLINE, || {
        (matches_file(&agent) == true).then_some(())
    });
    wait_denied(&web, 9090, &api);
    assert!(
        !state.0.join("policy.yaml").exists(),
        "the state outlived the control file's change"
    );
    agent.stop().expect("stopping the agent");
    agent.restart().expect("restarting the agent");
    assert_checks("the control file's policy after the restart", &[to_9090()]);
}
