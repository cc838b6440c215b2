//! The agent over time: interfaces that appear after it started, and
//! control files replaced while it runs (SIGHUP).

mod common;

use std::process::Command;

use common::bins;
use hostwall_tests::agent::RELOAD_TIMEOUT;
use hostwall_tests::{Agent, Check, Container, DropReason, Expect, Host, Node, Probe, assert_checks};

const LATE_POLICY: &str = r#"
version: 1
groups:
  web:
    egress:
      - {proto: tcp, ports: 8080, to: [{group: late}]}
  late:
    ingress:
      - {proto: tcp, ports: 8080, from: [{group: web}]}
      - {proto: icmp, icmp: {type: 8}, from: [host]}
      - {proto: icmpv6, icmp: {type: 128}, from: [host]}
endpoints:
  - {name: web, interface: hw-web, addresses: ["10.77.0.11", "fd00:77::11"], groups: [web]}
  - {name: late, interface: hw-late, addresses: ["10.77.0.20", "fd00:77::20"], groups: [late]}
"#;

/// What only the hooks on `late`'s own interface can decide: traffic
/// between it and the host (not an endpoint, so judged nowhere else).
fn late_checks<'a>(host: &'a Host, web: &'a Container, late: &'a Container) -> (Vec<Check<'a>>, Vec<Check<'a>>) {
    let mut allowed = Vec::new();
    let mut denied = Vec::new();
    for (to, host_addr) in late.addrs().into_iter().zip(host.addrs()) {
        allowed.push(Check::allowed(web, Probe::Tcp(8080), to).labelled("late"));
        allowed.push(Check::allowed(host, Probe::Ping, to).labelled("late"));
        denied.push(Check::denied(host, Probe::Tcp(9090), to).labelled("late"));
        denied.push(Check::denied(late, Probe::Udp(53), host_addr).labelled("host"));
    }
    (allowed, denied)
}

#[test]
fn interface_created_after_start_is_enforced() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let _host_server = host.serve(&[], &[53]).expect("echo server in the host namespace");
    let mut agent = Agent::start(&host, LATE_POLICY).expect("starting the agent");
    assert!(
        agent.count_log(&["hw-late"]) > 0,
        "the agent did not mention the missing interface hw-late; its log:\n{}",
        agent.log()
    );

    for round in 1..=2 {
        // Round 2 is the container restarted: same name, new interface.
        let late = host.add_container("late", "hw-late", 20).expect("adding late");
        let _server = late.serve(&[8080, 9090], &[]).expect("echo servers in late");
        agent
            .wait_for_lines(&["attached", "interface=hw-late"], round, RELOAD_TIMEOUT)
            .expect("the agent did not attach to the new interface");
        let (allowed, denied) = late_checks(&host, &web, &late);
        assert_checks(&format!("round {round}: what late's rules allow"), &allowed);
        let before = agent.stats().expect("reading counters");
        assert_checks(&format!("round {round}: what late's rules deny"), &denied);
        let delta = agent.assert_dropped_since(&before, DropReason::IngressDenied, 2);
        assert!(
            delta.dropped(DropReason::EgressDenied) >= 2,
            "late's egress was not enforced: {delta}"
        );

        if round == 2 {
            let status = agent.stop().expect("stopping the agent");
            assert!(status.success(), "the agent exited with {status}");
            assert_checks("after the agent stopped (enforcement stays)", &denied);
            agent.uninstall().expect("hostwall uninstall");
            let controls: Vec<Check> = denied.iter().map(|c| c.clone().expecting(Expect::Allowed)).collect();
            assert_checks("control: after hostwall uninstall", &controls);
        }
    }
}

const BASE_POLICY: &str = r#"
version: 1
groups:
  web:
    egress:
      - {proto: tcp, ports: 8080, to: [{group: api}]}
  api:
    ingress:
      - {proto: tcp, ports: 8080, from: [{group: web}]}
endpoints:
  - {name: web, interface: hw-web, addresses: ["10.77.0.11", "fd00:77::11"], groups: [web]}
  - {name: api, interface: hw-api, addresses: ["10.77.0.12", "fd00:77::12"], groups: [api]}
"#;

/// `hostwall validate FILE`: its exit code and stderr.
fn validate(agent: &Agent) -> (Option<i32>, String) {
    let out = Command::new(&bins().hostwall)
        .arg("validate")
        .arg(agent.config_path())
        .output()
        .expect("running validate");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn sighup_applies_valid_policies_and_refuses_invalid_ones() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let api = host.add_container("api", "hw-api", 12).expect("adding api");
    let _server = api.serve(&[8080, 9090], &[]).expect("echo servers in api");
    let mut agent = Agent::start(&host, BASE_POLICY).expect("starting the agent");

    let to_api = api.addrs();
    let old_policy = |what: &str| {
        let mut checks = Vec::new();
        for to in to_api {
            checks.push(Check::allowed(&web, Probe::Tcp(8080), to).labelled("api"));
            checks.push(Check::denied(&web, Probe::Tcp(9090), to).labelled("api"));
        }
        assert_checks(what, &checks);
    };
    old_policy("the first policy");

    let wider = BASE_POLICY.replace(
        "      - {proto: tcp, ports: 8080, to: [{group: api}]}\n",
        "      - {proto: tcp, ports: 8080, to: [{group: api}]}\n      - {proto: tcp, ports: 9090, to: [{group: api}]}\n",
    )
    .replace(
        "      - {proto: tcp, ports: 8080, from: [{group: web}]}\n",
        "      - {proto: tcp, ports: 8080, from: [{group: web}]}\n      - {proto: tcp, ports: 9090, from: [{group: web}]}\n",
    );
    // The wider policy with a byte that is not UTF-8 in a comment: read
    // with the byte replaced, it would apply.
    let mut latin1 = b"# caf\xe9\n".to_vec();
    latin1.extend_from_slice(wider.as_bytes());
    let invalid: [(&str, Vec<u8>, &str); 5] = [
        (
            "a YAML syntax error",
            b"version: 1\ngroups: [\n".to_vec(),
            "invalid YAML",
        ),
        (
            "an unknown group",
            BASE_POLICY
                .replace("to: [{group: api}]", "to: [{group: nosuch}]")
                .into_bytes(),
            "groups.web.egress[0]",
        ),
        (
            "a port out of range",
            BASE_POLICY
                .replace("ports: 8080, from", "ports: 70000, from")
                .into_bytes(),
            "groups.api.ingress[0]",
        ),
        (
            "a byte that is not UTF-8",
            latin1,
            "not UTF-8 text: an invalid byte at line 1 column 6",
        ),
        (
            "100,000 nested flow sequences",
            format!("version: 1\ngroups: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            "nested deeper than 64 levels at line 2 column 73",
        ),
    ];
    for (what, text, message) in &invalid {
        agent
            .reload_refused(text)
            .unwrap_or_else(|e| panic!("reloading with {what}: {e:#}"));
        let (code, stderr) = validate(&agent);
        assert_eq!(
            code,
            Some(2),
            "`hostwall validate` on {what}: exit code; stderr: {stderr}"
        );
        assert!(
            stderr.starts_with("error: ") && stderr.contains(message),
            "`hostwall validate` on {what} should name {message:?}: {stderr}"
        );
        old_policy(&format!("after refusing {what}, the first policy still holds"));
    }

    agent.reload(&wider).expect("reloading with a valid policy");
    let (code, stderr) = validate(&agent);
    assert_eq!(code, Some(0), "`hostwall validate` on the valid policy: {stderr}");
    let mut checks = Vec::new();
    for to in to_api {
        checks.push(Check::allowed(&web, Probe::Tcp(8080), to).labelled("api"));
        checks.push(Check::allowed(&web, Probe::Tcp(9090), to).labelled("api"));
    }
    assert_checks("the second policy", &checks);
    let stats = agent.stats().expect("reading counters");
    assert!(
        stats.rule("web", "egress", 1).unwrap_or(0) > 0,
        "the new rule counted nothing: {stats}"
    );

    // Taking the rule away again denies new connections again.
    agent.reload(BASE_POLICY).expect("reloading the first policy");
    old_policy("the first policy, reloaded");

    // A start on a file that is not UTF-8 (the wider policy after a
    // Latin-1 comment) is refused: the agent exits, and what it enforced
    // stays.
    agent.stop().expect("stopping the agent");
    agent.write_config(&invalid[3].1).expect("writing the control file");
    let refused = agent.restart();
    assert!(refused.is_err(), "the agent started on a file that is not UTF-8");
    assert!(
        agent
            .log()
            .contains("not UTF-8 text: an invalid byte at line 1 column 6"),
        "the refusal names the byte: {}",
        agent.log()
    );
    old_policy("after a refused start, the first policy still holds");
}
