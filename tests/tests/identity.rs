//! Source-address identity: a container that sends from an address the
//! control file does not give it is dropped at its own interface.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{SHOP_POLICY, shop};
use hostwall_tests::{Agent, Check, DropReason, Expect, Probe, assert_checks};

#[test]
fn spoofed_source_is_dropped() {
    let shop = shop();
    let fake4: IpAddr = shop.host.subnet().v4(99).into();
    let fake6: IpAddr = shop.host.subnet().v6(99).into();
    shop.web.add_address(fake4).expect("adding an unlisted IPv4 address");
    shop.web.add_address(fake6).expect("adding an unlisted IPv6 address");
    let api_server = shop.server(&shop.api);

    // web may send udp/8053 and ping to api, so only the source address is
    // wrong (and api resolves the fake address back to web, so these get
    // echoed when nothing filters).
    let mut spoofed = Vec::new();
    for (api, fake) in shop.api.addrs().into_iter().zip([fake4, fake6]) {
        spoofed.push(
            Check::denied(&shop.web, Probe::Udp(8053), api)
                .labelled("api")
                .source(fake),
        );
        spoofed.push(
            Check::denied(&shop.web, Probe::Tcp(8080), api)
                .labelled("api")
                .source(fake),
        );
        spoofed.push(Check::denied(&shop.web, Probe::Ping, api).labelled("api").source(fake));
    }
    let controls: Vec<Check> = spoofed.iter().map(|c| c.clone().expecting(Expect::Allowed)).collect();
    assert_checks("control: before the agent starts", &controls);
    for fake in [fake4, fake6] {
        assert!(
            api_server.saw_from_within(fake, Duration::from_secs(1)),
            "control: api's server saw nothing from {fake}"
        );
    }

    let agent = Agent::start(&shop.host, SHOP_POLICY).expect("starting the agent");
    // The real addresses work (and web has api's link-layer address, so the
    // spoofed packets are sent rather than stuck in address resolution).
    let genuine: Vec<Check> = shop
        .api
        .addrs()
        .map(|api| Check::allowed(&shop.web, Probe::Udp(8053), api).labelled("api"))
        .into();
    assert_checks("web's own addresses", &genuine);

    let seen_before = api_server.received_from(fake4) + api_server.received_from(fake6);
    let before = agent.stats().expect("reading counters");
    assert_checks("spoofed sources", &spoofed);
    agent.assert_dropped_since(&before, DropReason::SpoofedSource, spoofed.len() as u64);
    std::thread::sleep(Duration::from_millis(200));
    let seen_after = api_server.received_from(fake4) + api_server.received_from(fake6);
    assert_eq!(
        seen_after, seen_before,
        "api's server received packets with a spoofed source"
    );
}
