//! The `host` peer: the agent's own network namespace.

mod common;

use common::{SHOP_POLICY, shop};
use hostwall_tests::{Agent, Check, DropReason, Expect, Probe, assert_checks};

#[test]
fn host_rules_decide_what_the_host_may_reach() {
    let shop = shop();
    let mut allowed = Vec::new();
    let mut from_host = Vec::new();
    let mut to_host = Vec::new();
    for a in shop.families() {
        // web has `icmp from: [host]`; api and db have no host rule.
        allowed.push(Check::allowed(&shop.host, Probe::Ping, a.web).labelled("web"));
        from_host.push(Check::denied(&shop.host, Probe::Ping, a.api).labelled("api"));
        from_host.push(Check::denied(&shop.host, Probe::Ping, a.db).labelled("db"));
        // api has `udp 53 to: [host]`; web has no egress rule to the host.
        allowed.push(Check::allowed(&shop.api, Probe::Udp(53), a.host).labelled("host"));
        to_host.push(Check::denied(&shop.web, Probe::Udp(53), a.host).labelled("host"));
    }
    let controls: Vec<Check> = from_host
        .iter()
        .chain(&to_host)
        .map(|c| c.clone().expecting(Expect::Allowed))
        .collect();
    assert_checks("control: before the agent starts", &controls);

    let mut agent = Agent::start(&shop.host, SHOP_POLICY).expect("starting the agent");
    assert_checks("paths host rules allow", &allowed);
    let before = agent.stats().expect("reading counters");
    assert_checks("the host pinging containers without a host rule", &from_host);
    agent.assert_dropped_since(&before, DropReason::IngressDenied, from_host.len() as u64);
    let before = agent.stats().expect("reading counters");
    assert_checks("a container without a rule to the host", &to_host);
    agent.assert_dropped_since(&before, DropReason::EgressDenied, to_host.len() as u64);

    // A host rule added at run time lets the host ping api.
    let api_ingress = "      - {proto: tcp, ports: 9090, from: [{group: web}]}\n";
    let with_host_rule = SHOP_POLICY.replace(
        api_ingress,
        &format!(
            "{api_ingress}      - {{proto: icmp, from: [host]}}\n      - {{proto: icmpv6, icmp: {{type: 128}}, from: [host]}}\n"
        ),
    );
    assert_ne!(with_host_rule, SHOP_POLICY, "the policy edit did not apply");
    agent
        .reload(&with_host_rule)
        .expect("reloading with a host rule for api");
    let api_pings: Vec<Check> = shop
        .families()
        .map(|a| Check::allowed(&shop.host, Probe::Ping, a.api).labelled("api"))
        .into();
    assert_checks("the host pings api after the reload", &api_pings);
    let db_pings: Vec<Check> = shop
        .families()
        .map(|a| Check::denied(&shop.host, Probe::Ping, a.db).labelled("db"))
        .into();
    assert_checks("db still has no host rule", &db_pings);
}
