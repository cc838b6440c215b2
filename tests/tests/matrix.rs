//! The main reachability matrix of the shop fixture, over TCP, UDP and
//! ICMP, IPv4 and IPv6: what the rules allow gets through, what they do
//! not is dropped (and worked before the agent started, and works again
//! once it stops), with the drop reason counted.

mod common;

use common::{HOST_TCP, HOST_UDP, SHOP_POLICY, TCP_PORTS, UDP_PORTS, shop};
use hostwall_tests::{Agent, Check, DropReason, Expect, Node, Outcome, PassReason, Probe, assert_checks};

/// The same checks expecting the opposite: what the agent drops must get
/// through without it.
fn controls<'a>(checks: &[Check<'a>]) -> Vec<Check<'a>> {
    checks.iter().map(|c| c.clone().expecting(Expect::Allowed)).collect()
}

#[test]
fn allowed_paths_get_through() {
    let shop = shop();
    let agent = Agent::start(&shop.host, SHOP_POLICY).expect("starting the agent");
    let before = agent.stats().expect("reading counters");
    let mut checks = Vec::new();
    for a in shop.families() {
        checks.push(Check::allowed(&shop.web, Probe::Tcp(8080), a.api).labelled("api"));
        // Segmentation offload hands the hooks packets larger than the MTU.
        checks.push(
            Check::allowed(&shop.web, Probe::Tcp(8080), a.api)
                .labelled("api")
                .size(60_000),
        );
        checks.push(Check::allowed(&shop.web, Probe::Udp(8053), a.api).labelled("api"));
        checks.push(Check::allowed(&shop.web, Probe::Ping, a.api).labelled("api"));
        checks.push(Check::allowed(&shop.api, Probe::Tcp(5432), a.db).labelled("db"));
        checks.push(Check::allowed(&shop.api, Probe::Udp(53), a.host).labelled("host"));
        checks.push(Check::allowed(&shop.host, Probe::Tcp(80), a.web).labelled("web"));
        checks.push(Check::allowed(&shop.host, Probe::Ping, a.web).labelled("web"));
        checks.push(Check::allowed(&shop.host, Probe::Ping, a.intruder).labelled("intruder"));
    }
    assert_checks("allowed paths", &checks);

    let delta = agent.stats().expect("reading counters").since(&before);
    let first_packets = delta.passed(PassReason::NewAllowed);
    assert!(
        first_packets >= checks.len() as u64,
        "{} allowed flows, but only {first_packets} counted as new-allowed: {delta}",
        checks.len()
    );
    // The rules that allowed them were credited.
    let used = [
        ("web", "egress", 0),
        ("web", "egress", 1),
        ("web", "egress", 2),
        ("web", "egress", 3),
        ("api", "ingress", 0),
        ("api", "ingress", 2),
        ("api", "egress", 0),
        ("api", "egress", 2),
        ("db", "ingress", 0),
        ("web", "ingress", 0),
        ("web", "ingress", 1),
        ("web", "ingress", 2),
    ];
    for (group, direction, index) in used {
        let n = delta.rule(group, direction, index).unwrap_or(0);
        assert!(
            n > 0,
            "rule {group}/{direction}[{index}] allowed traffic but counted no packets: {delta}"
        );
    }
    let policy_drops = delta.dropped(DropReason::EgressDenied) + delta.dropped(DropReason::IngressDenied);
    assert_eq!(policy_drops, 0, "allowed paths caused policy drops: {delta}");
}

#[test]
fn denied_paths_are_dropped_with_their_reason() {
    let shop = shop();
    let mut egress = Vec::new();
    let mut ingress = Vec::new();
    for a in shop.families() {
        // The sender has no egress rule (whatever the receiver accepts).
        egress.push(Check::denied(&shop.api, Probe::Tcp(80), a.web).labelled("web"));
        egress.push(Check::denied(&shop.web, Probe::Tcp(9090), a.api).labelled("api"));
        egress.push(Check::denied(&shop.db, Probe::Tcp(8080), a.api).labelled("api"));
        egress.push(Check::denied(&shop.web, Probe::Tcp(5432), a.db).labelled("db"));
        egress.push(Check::denied(&shop.web, Probe::Ping, a.db).labelled("db"));
        egress.push(Check::denied(&shop.web, Probe::Udp(53), a.host).labelled("host"));
        egress.push(Check::denied(&shop.db, Probe::Udp(8053), a.api).labelled("api"));
        // The sender may, the receiver does not accept.
        ingress.push(Check::denied(&shop.api, Probe::Tcp(6000), a.db).labelled("db"));
        ingress.push(Check::denied(&shop.api, Probe::Tcp(6000), a.web).labelled("web"));
        ingress.push(Check::denied(&shop.host, Probe::Ping, a.api).labelled("api"));
        ingress.push(Check::denied(&shop.host, Probe::Tcp(5432), a.db).labelled("db"));
        ingress.push(Check::denied(&shop.host, Probe::Udp(8053), a.web).labelled("web"));
    }
    let controls = controls(&[egress.as_slice(), ingress.as_slice()].concat());
    assert_checks("control: before the agent starts", &controls);

    let mut agent = Agent::start(&shop.host, SHOP_POLICY).expect("starting the agent");
    let before = agent.stats().expect("reading counters");
    assert_checks("paths the sender's egress rules deny", &egress);
    let delta = agent.assert_dropped_since(&before, DropReason::EgressDenied, egress.len() as u64);
    assert_eq!(
        delta.dropped(DropReason::IngressDenied),
        0,
        "egress denials counted as ingress-denied: {delta}"
    );

    let before = agent.stats().expect("reading counters");
    assert_checks("paths the receiver's ingress rules deny", &ingress);
    let delta = agent.assert_dropped_since(&before, DropReason::IngressDenied, ingress.len() as u64);
    assert_eq!(
        delta.dropped(DropReason::EgressDenied),
        0,
        "ingress denials counted as egress-denied: {delta}"
    );

    let status = agent.stop().expect("stopping the agent");
    assert!(
        status.success(),
        "the agent exited with {status} on SIGTERM; its log:\n{}",
        agent.log()
    );
    // Fail-static: a stopped agent leaves enforcement in place.
    let still_denied: Vec<Check> = [egress.as_slice(), ingress.as_slice()].concat();
    assert_checks("after the agent stopped (enforcement stays)", &still_denied);
    agent.uninstall().expect("hostwall uninstall");
    assert_checks("control: after hostwall uninstall (enforcement removed)", &controls);
}

#[test]
fn intruder_reaches_nothing() {
    let shop = shop();
    let mut checks = Vec::new();
    for a in shop.families() {
        for (name, to) in [("web", a.web), ("api", a.api), ("db", a.db), ("lonely", a.lonely)] {
            for port in TCP_PORTS {
                checks.push(Check::denied(&shop.intruder, Probe::Tcp(*port), to).labelled(name));
            }
            for port in UDP_PORTS {
                checks.push(Check::denied(&shop.intruder, Probe::Udp(*port), to).labelled(name));
            }
            checks.push(Check::denied(&shop.intruder, Probe::Ping, to).labelled(name));
        }
        for port in HOST_TCP {
            checks.push(Check::denied(&shop.intruder, Probe::Tcp(*port), a.host).labelled("host"));
        }
        for port in HOST_UDP {
            checks.push(Check::denied(&shop.intruder, Probe::Udp(*port), a.host).labelled("host"));
        }
        checks.push(Check::denied(&shop.intruder, Probe::Ping, a.host).labelled("host"));
    }
    assert_checks("control: before the agent starts", &controls(&checks));

    let agent = Agent::start(&shop.host, SHOP_POLICY).expect("starting the agent");
    let before = agent.stats().expect("reading counters");
    assert_checks("the intruder's attempts", &checks);
    agent.assert_dropped_since(&before, DropReason::EgressDenied, checks.len() as u64);
    // Its group is not useless: the host may still ping it.
    let pings: Vec<Check> = shop
        .families()
        .map(|a| Check::allowed(&shop.host, Probe::Ping, a.intruder))
        .into();
    assert_checks("the intruder is alive", &pings);
}

#[test]
fn endpoint_without_groups_neither_sends_nor_receives() {
    let shop = shop();
    let lonely = &shop.lonely;
    let mut sends = Vec::new();
    let mut receives = Vec::new();
    for a in shop.families() {
        // web accepts tcp/80 from the whole subnet, api tcp/8080 from web
        // (not enough), the host anything: the sender's (missing) egress
        // rules stop these.
        sends.push(Check::denied(lonely, Probe::Tcp(80), a.web).labelled("web"));
        sends.push(Check::denied(lonely, Probe::Tcp(8080), a.api).labelled("api"));
        sends.push(Check::denied(lonely, Probe::Udp(53), a.host).labelled("host"));
        sends.push(Check::denied(lonely, Probe::Ping, a.host).labelled("host"));
        // api may send tcp/6000 to the whole subnet; the host is not an
        // endpoint: only the receiver's (missing) ingress rules stop these.
        receives.push(Check::denied(&shop.api, Probe::Tcp(6000), a.lonely).labelled("lonely"));
        receives.push(Check::denied(&shop.host, Probe::Tcp(80), a.lonely).labelled("lonely"));
        receives.push(Check::denied(&shop.host, Probe::Udp(8053), a.lonely).labelled("lonely"));
        receives.push(Check::denied(&shop.host, Probe::Ping, a.lonely).labelled("lonely"));
    }
    assert_checks(
        "control: before the agent starts",
        &controls(&[sends.as_slice(), receives.as_slice()].concat()),
    );

    let agent = Agent::start(&shop.host, SHOP_POLICY).expect("starting the agent");
    let before = agent.stats().expect("reading counters");
    assert_checks("sending from an endpoint without groups", &sends);
    agent.assert_dropped_since(&before, DropReason::EgressDenied, sends.len() as u64);
    let before = agent.stats().expect("reading counters");
    assert_checks("sending to an endpoint without groups", &receives);
    agent.assert_dropped_since(&before, DropReason::IngressDenied, receives.len() as u64);
}

#[test]
fn replies_pass_without_a_rule_for_them() {
    let shop = shop();
    let agent = Agent::start(&shop.host, SHOP_POLICY).expect("starting the agent");
    // api has no egress rule towards web: its answers pass only as replies.
    let mut requests = Vec::new();
    for a in shop.families() {
        requests.push(Check::allowed(&shop.web, Probe::Tcp(8080), a.api).labelled("api"));
        requests.push(Check::allowed(&shop.web, Probe::Udp(8053), a.api).labelled("api"));
        requests.push(Check::allowed(&shop.web, Probe::Ping, a.api).labelled("api"));
    }
    let before = agent.stats().expect("reading counters");
    assert_checks("requests whose replies no rule allows", &requests);
    let delta = agent.stats().expect("reading counters").since(&before);
    assert!(
        delta.passed(PassReason::Reply) >= requests.len() as u64,
        "{} request/reply exchanges, but only {} packets passed as replies: {delta}",
        requests.len(),
        delta.passed(PassReason::Reply)
    );
    // api's own egress rules were not what let the replies out.
    for index in 0..3 {
        assert_eq!(
            delta.rule("api", "egress", index),
            Some(0),
            "api egress rule {index} matched a reply: {delta}"
        );
    }
    // The same packets are not allowed as new flows.
    let new_flows: Vec<Check> = shop
        .families()
        .map(|a| Check::denied(&shop.api, Probe::Tcp(8080), a.web).labelled("web"))
        .into();
    assert_checks("api opening connections to web", &new_flows);
}

#[test]
fn unsolicited_reply_is_dropped() {
    let shop = shop();
    // A datagram from api's service port 8053 to web's port 40000 looks like
    // a reply to a request web never sent.
    let fake_replies: Vec<Check> = shop
        .families()
        .map(|a| {
            Check::denied(&shop.api, Probe::Udp(40000), a.web)
                .labelled("web")
                .sport(8053)
        })
        .into();
    assert_checks("control: before the agent starts", &controls(&fake_replies));
    let web_server = shop.server(&shop.web);
    let from_api = || {
        shop.api
            .addrs()
            .map(|a| web_server.received_from(a))
            .iter()
            .sum::<usize>()
    };
    let seen_before = from_api();
    assert_eq!(seen_before, 2, "web's server should have seen both control datagrams");

    let agent = Agent::start(&shop.host, SHOP_POLICY).expect("starting the agent");
    let before = agent.stats().expect("reading counters");
    assert_checks("unsolicited replies", &fake_replies);
    agent.assert_dropped_since(&before, DropReason::EgressDenied, fake_replies.len() as u64);
    assert_eq!(from_api(), seen_before, "web's server received an unsolicited reply");

    // The real exchange on the same ports works: web asks first.
    let real: Vec<Check> = shop
        .families()
        .map(|a| {
            Check::allowed(&shop.web, Probe::Udp(8053), a.api)
                .labelled("api")
                .sport(40000)
        })
        .into();
    assert_checks("a real request and its reply on the same ports", &real);
}

#[test]
fn fragmented_datagrams_pass_both_ways() {
    let shop = shop();
    // 4000 bytes leave as three IP fragments, and so do the replies: every
    // later fragment passes only because its first one did.
    let mut checks = Vec::new();
    for a in shop.families() {
        checks.push(Check::allowed(&shop.web, Probe::Ping, a.api).labelled("api").size(4000));
        checks.push(
            Check::allowed(&shop.web, Probe::Udp(8053), a.api)
                .labelled("api")
                .size(4000),
        );
        checks.push(
            Check::allowed(&shop.host, Probe::Ping, a.web)
                .labelled("web")
                .size(4000),
        );
    }
    assert_checks("control: before the agent starts", &checks);

    let agent = Agent::start(&shop.host, SHOP_POLICY).expect("starting the agent");
    let before = agent.stats().expect("reading counters");
    assert_checks("fragmented requests and replies", &checks);
    let delta = agent.stats().expect("reading counters").since(&before);
    assert!(
        delta.passed(PassReason::Fragment) > 0,
        "no fragment was counted: {delta}"
    );
    assert_eq!(
        delta.dropped(DropReason::FragmentUntracked),
        0,
        "fragments dropped: {delta}"
    );
}

#[test]
fn errors_of_allowed_flows_reach_the_sender() {
    let shop = shop();
    let agent = Agent::start(&shop.host, SHOP_POLICY).expect("starting the agent");
    // web may reach api on 9999, where nothing listens: the port-unreachable
    // error (UDP) and the reset (TCP) must come back, not a timeout.
    let before = agent.stats().expect("reading counters");
    for a in shop.families() {
        for probe in [Probe::Udp(9999), Probe::Tcp(9999)] {
            let outcome = shop.web.probe(probe, a.api, &Default::default()).expect("probing");
            assert!(
                matches!(outcome, Outcome::Refused(_)),
                "web → api ({}) {probe}: expected refused (nothing listens), got {outcome}",
                a.api
            );
        }
    }
    let delta = agent.stats().expect("reading counters").since(&before);
    // 2 ICMP errors, each judged at api's and at web's interface.
    assert!(
        delta.passed(PassReason::Related) >= 4,
        "ICMP errors not counted as related: {delta}"
    );
}
