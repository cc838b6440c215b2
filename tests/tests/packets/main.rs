//! Table-driven tests of the real eBPF programs through BPF_PROG_TEST_RUN:
//! a built frame in, the expected verdict (and the counter that explains
//! it) out. Each test gets a network namespace of its own (unshared on its
//! thread) holding veth interfaces that stand for endpoint interfaces.

use Expect::{Drop, Pass};
use Hook::{From, To, ToVia, Uplink};

mod hostile;
mod identity;
mod stateful;
use hostwall::compile::{self, HostView};
use hostwall::policy::parse_str;
use hostwall_common::{DropReason, PassReason};
use hostwall_tests::frames::*;
use hostwall_tests::testrun::{Expect, Fixture, Hook, PORT_IFACE};

// Named addresses of the test policy.
const WEB: &str = "10.10.0.11";
const WEB6: &str = "fd00:10::11";
const API: &str = "10.10.0.21";
const API6: &str = "fd00:10::21";
const DB_REMOTE: &str = "10.20.0.5";
const LONELY: &str = "10.10.0.99";
const HOST: &str = "10.10.0.1";
const HOST6: &str = "fd00:10::1";
const OUTSIDE: &str = "203.0.113.7";
const OFFICE: &str = "192.0.2.10";

const POLICY: &str = r#"
version: 1
prefix_lists:
  office: ["192.0.2.0/24"]
groups:
  web:
    ingress:
      - {proto: tcp, ports: 80, from: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}]}
      - {proto: tcp, ports: 22, from: [{prefix_list: office}]}
      - {proto: icmp, icmp: {type: 8}, from: [host]}
      - {proto: icmpv6, icmp: {type: 128}, from: [host]}
    egress:
      - {proto: tcp, ports: "8080-8081", to: [{group: api}]}
      - {proto: tcp, ports: 9000, to: [{group: api}]}
      - {proto: udp, ports: 53, to: [host]}
      - {proto: icmp, to: [{group: api}]}
  api:
    ingress:
      - {proto: tcp, ports: 8080, from: [{group: web}]}
      - {proto: icmp, icmp: {type: 8}, from: [{group: web}]}
    egress:
      - {proto: tcp, ports: 5432, to: [{group: db}]}
  db:
    ingress:
      - {proto: tcp, ports: 5432, from: [{group: api}]}
endpoints:
  - {name: web-1, interface: hw-web, addresses: ["10.10.0.11", "fd00:10::11"], groups: [web]}
  - {name: api-1, interface: hw-api, addresses: ["10.10.0.21", "fd00:10::21"], groups: [api]}
  - {name: db-1, node: elsewhere, interface: hw-db, addresses: ["10.20.0.5"], groups: [db]}
  - {name: lonely, interface: hw-lonely, addresses: ["10.10.0.99"], groups: []}
settings:
  conntrack: {udp: 1s, icmp: 1s}
"#;

fn fixture() -> Fixture {
    Fixture::new(POLICY, &[HOST, HOST6])
}

#[test]
fn rules_decide_new_flows() {
    let f = fixture();
    f.check(&[
        (
            "web->api allowed port",
            From("hw-web"),
            frame(WEB, API, tcp(40000, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "web->api v6",
            From("hw-web"),
            frame(WEB6, API6, tcp(40000, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "web->api port not in egress",
            From("hw-web"),
            frame(WEB, API, tcp(40000, 8082, SYN)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "web->api 8081: web's egress allows, api's ingress does not",
            From("hw-web"),
            frame(WEB, API, tcp(40000, 8081, SYN)),
            Drop(DropReason::IngressDenied),
        ),
        (
            "api->web: no egress rule",
            From("hw-api"),
            frame(API, WEB, tcp(40000, 80, SYN)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "api->remote db",
            From("hw-api"),
            frame(API, DB_REMOTE, tcp(40000, 5432, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "web->remote db",
            From("hw-web"),
            frame(WEB, DB_REMOTE, tcp(40000, 5432, SYN)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "web->host dns",
            From("hw-web"),
            frame(WEB, HOST, udp(5353, 53)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "web->host tcp",
            From("hw-web"),
            frame(WEB, HOST, tcp(5353, 53, SYN)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "lonely sends",
            From("hw-lonely"),
            frame(LONELY, API, tcp(1, 8080, SYN)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "lonely receives",
            To("hw-lonely"),
            frame(OUTSIDE, LONELY, tcp(1, 80, SYN)),
            Drop(DropReason::IngressDenied),
        ),
        (
            "outside->web 80",
            To("hw-web"),
            frame(OUTSIDE, WEB, tcp(1, 80, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "outside->web 22",
            To("hw-web"),
            frame(OUTSIDE, WEB, tcp(1, 22, SYN)),
            Drop(DropReason::IngressDenied),
        ),
        (
            "office->web 22",
            To("hw-web"),
            frame(OFFICE, WEB, tcp(1, 22, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "host ping web",
            To("hw-web"),
            frame(HOST, WEB, echo_request(false, 7)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "host ping6 web",
            To("hw-web"),
            frame(HOST6, WEB6, echo_request(true, 7)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "outside ping web",
            To("hw-web"),
            frame(OUTSIDE, WEB, echo_request(false, 7)),
            Drop(DropReason::IngressDenied),
        ),
        (
            "host->web other icmp type",
            To("hw-web"),
            frame(HOST, WEB, icmp(13, 0, [0; 4], vec![])),
            Drop(DropReason::IngressDenied),
        ),
    ]);
}

#[test]
fn replies_pass_and_unsolicited_replies_do_not() {
    let f = fixture();
    f.check(&[
        (
            "unsolicited reply",
            From("hw-api"),
            frame(API, WEB, tcp(8080, 40001, SYN | ACK)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "request",
            From("hw-web"),
            frame(WEB, API, tcp(40001, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "request at api's interface",
            To("hw-api"),
            frame(WEB, API, tcp(40001, 8080, SYN)),
            Pass(PassReason::Established),
        ),
        (
            "reply",
            From("hw-api"),
            frame(API, WEB, tcp(8080, 40001, SYN | ACK)),
            Pass(PassReason::Reply),
        ),
        (
            "reply at web's interface",
            To("hw-web"),
            frame(API, WEB, tcp(8080, 40001, SYN | ACK)),
            Pass(PassReason::Reply),
        ),
        (
            "next request",
            From("hw-web"),
            frame(WEB, API, tcp(40001, 8080, ACK)),
            Pass(PassReason::Established),
        ),
        (
            "mid-stream packet of a flow the rules allow (started before the agent)",
            From("hw-api"),
            frame(API, WEB, tcp(8080, 40002, ACK)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "its next packet is a reply",
            From("hw-api"),
            frame(API, WEB, tcp(8080, 40002, ACK)),
            Pass(PassReason::Reply),
        ),
        (
            "mid-stream packet whose reverse the rules deny",
            From("hw-api"),
            frame(API, WEB, tcp(8082, 40003, ACK)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "a SYN is never admitted as the reverse of a flow",
            From("hw-api"),
            frame(API, WEB, tcp(8080, 40004, SYN)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "echo request",
            From("hw-web"),
            frame(WEB, API, echo_request(false, 99)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "echo reply",
            From("hw-api"),
            frame(API, WEB, echo_reply(false, 99)),
            Pass(PassReason::Reply),
        ),
        (
            "echo reply wrong id",
            From("hw-api"),
            frame(API, WEB, echo_reply(false, 98)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "echo request back along the tracked id is not a reply",
            From("hw-api"),
            frame(API, WEB, echo_request(false, 99)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "dns query",
            From("hw-web"),
            frame(WEB, HOST, udp(5353, 53)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "dns answer",
            To("hw-web"),
            frame(HOST, WEB, udp(53, 5353)),
            Pass(PassReason::Reply),
        ),
        (
            "answer to another port",
            To("hw-web"),
            frame(HOST, WEB, udp(53, 5354)),
            Drop(DropReason::IngressDenied),
        ),
    ]);
}

#[test]
fn flows_expire_after_their_timeout() {
    let f = fixture();
    f.check(&[
        (
            "dns query",
            From("hw-web"),
            frame(WEB, HOST, udp(5353, 53)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "dns answer",
            To("hw-web"),
            frame(HOST, WEB, udp(53, 5353)),
            Pass(PassReason::Reply),
        ),
    ]);
    // udp_stream keeps the default 180 s once a reply is seen; a flow
    // without replies uses `udp: 1s`.
    f.check(&[(
        "unanswered query",
        From("hw-web"),
        frame(WEB, HOST, udp(5354, 53)),
        Pass(PassReason::NewAllowed),
    )]);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    f.check(&[
        (
            "late answer",
            To("hw-web"),
            frame(HOST, WEB, udp(53, 5354)),
            Drop(DropReason::IngressDenied),
        ),
        (
            "answered flow still tracked",
            To("hw-web"),
            frame(HOST, WEB, udp(53, 5353)),
            Pass(PassReason::Reply),
        ),
        (
            "query again is new",
            From("hw-web"),
            frame(WEB, HOST, udp(5354, 53)),
            Pass(PassReason::NewAllowed),
        ),
    ]);
}

#[test]
fn identity_comes_from_the_interface() {
    let f = fixture();
    f.check(&[
        (
            "forged source v4",
            From("hw-web"),
            frame(LONELY, API, tcp(1, 8080, SYN)),
            Drop(DropReason::SpoofedSource),
        ),
        (
            "another endpoint's source",
            From("hw-lonely"),
            frame(WEB, API, tcp(1, 8080, SYN)),
            Drop(DropReason::SpoofedSource),
        ),
        (
            "forged source v6",
            From("hw-web"),
            frame("fd00:10::99", API6, tcp(1, 8080, SYN)),
            Drop(DropReason::SpoofedSource),
        ),
        (
            "local address arriving from elsewhere",
            ToVia("hw-api", PORT_IFACE),
            frame(WEB, API, tcp(40009, 8080, SYN)),
            Drop(DropReason::LocalAddressWrongPath),
        ),
        (
            "arp for own address",
            From("hw-web"),
            arp(WEB, API),
            Pass(PassReason::Neighbour),
        ),
        (
            "arp probe",
            From("hw-web"),
            arp("0.0.0.0", WEB),
            Pass(PassReason::Neighbour),
        ),
        (
            "arp claiming api",
            From("hw-web"),
            arp(API, HOST),
            Drop(DropReason::ArpSpoofed),
        ),
        (
            "arp to endpoint",
            To("hw-web"),
            arp(HOST, WEB),
            Pass(PassReason::Neighbour),
        ),
        (
            "vlan tagged",
            From("hw-web"),
            vlan(frame(WEB, API, tcp(1, 8080, SYN))),
            Drop(DropReason::UnsupportedEthertype),
        ),
        (
            "vlan to endpoint",
            To("hw-web"),
            vlan(frame(OUTSIDE, WEB, tcp(1, 80, SYN))),
            Drop(DropReason::UnsupportedEthertype),
        ),
    ]);
}

#[test]
fn ipv6_neighbour_discovery_but_no_router_games() {
    let f = fixture();
    // web's link-local address, from its MAC.
    let ll = &f.link_local("hw-web");
    f.check(&[
        (
            "NS from link-local",
            From("hw-web"),
            nd(ll, "ff02::1:ff00:21", 135, API6),
            Pass(PassReason::Neighbour),
        ),
        (
            "NS during DAD",
            From("hw-web"),
            nd("::", "ff02::1:ff00:11", 135, WEB6),
            Pass(PassReason::Neighbour),
        ),
        (
            "NA for own address",
            From("hw-web"),
            nd(ll, "fe80::1", 136, WEB6),
            Pass(PassReason::Neighbour),
        ),
        (
            "NA for own link-local",
            From("hw-web"),
            nd(ll, "fe80::1", 136, ll),
            Pass(PassReason::Neighbour),
        ),
        (
            "NA claiming api",
            From("hw-web"),
            nd(ll, "fe80::1", 136, API6),
            Drop(DropReason::NdSpoofed),
        ),
        ("RS", From("hw-web"), rs(ll), Pass(PassReason::Neighbour)),
        (
            "MLDv2 report",
            From("hw-web"),
            mld_v2_report(ll, &["ff02::1:ff00:11"]),
            Pass(PassReason::Neighbour),
        ),
        (
            "RA from container",
            From("hw-web"),
            frame(ll, "ff02::1", icmp(134, 0, [0; 4], vec![0; 8])),
            Drop(DropReason::Icmpv6Forbidden),
        ),
        (
            "redirect from container",
            From("hw-web"),
            frame(ll, "fe80::1", icmp(137, 0, [0; 4], vec![0; 32])),
            Drop(DropReason::Icmpv6Forbidden),
        ),
        (
            "link-local tcp",
            From("hw-web"),
            frame(ll, "fe80::21", tcp(1, 8080, SYN)),
            Drop(DropReason::Icmpv6Forbidden),
        ),
        (
            "RA from host to endpoint",
            To("hw-web"),
            frame("fe80::1", "ff02::1", icmp(134, 0, [0; 4], vec![0; 8])),
            Pass(PassReason::Neighbour),
        ),
    ]);
}

#[test]
fn fragments_follow_their_first_fragment() {
    let f = fixture();
    let syn = tcp(40100, 8080, SYN).bytes();
    let denied = tcp(40100, 8082, SYN).bytes();
    f.check(&[
        (
            "first fragment, allowed",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 77, 0, true, syn.clone(), TCP),
            Pass(PassReason::NewAllowed),
        ),
        (
            "middle fragment",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 77, 3, true, vec![0; 24], TCP),
            Pass(PassReason::Fragment),
        ),
        (
            "last fragment",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 77, 6, false, vec![0; 8], TCP),
            Pass(PassReason::Fragment),
        ),
        (
            "first fragment, denied",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 78, 0, true, denied, TCP),
            Drop(DropReason::EgressDenied),
        ),
        (
            "later fragment of denied",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 78, 3, false, vec![0; 8], TCP),
            Drop(DropReason::FragmentUntracked),
        ),
        (
            "orphan later fragment",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 79, 1, false, vec![0; 8], TCP),
            Drop(DropReason::FragmentUntracked),
        ),
        (
            "overlapping fragment at offset 0 re-judged",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 78, 0, true, tcp(40100, 8082, SYN).bytes(), TCP),
            Drop(DropReason::EgressDenied),
        ),
        (
            "v6 first fragment",
            From("hw-web"),
            frame_v6_fragment(WEB6, API6, 5, 0, true, TCP, tcp(40101, 8080, SYN).bytes()),
            Pass(PassReason::NewAllowed),
        ),
        (
            "v6 later fragment",
            From("hw-web"),
            frame_v6_fragment(WEB6, API6, 5, 2, false, TCP, vec![0; 8]),
            Pass(PassReason::Fragment),
        ),
        (
            "v6 orphan fragment",
            From("hw-web"),
            frame_v6_fragment(WEB6, API6, 6, 2, false, TCP, vec![0; 8]),
            Drop(DropReason::FragmentUntracked),
        ),
        (
            "first fragment of the reply (passes by conntrack)",
            From("hw-api"),
            frame_v4_fragment(API, WEB, 90, 0, true, tcp(8080, 40100, SYN | ACK).bytes(), TCP),
            Pass(PassReason::Reply),
        ),
        (
            "later fragment of the reply",
            From("hw-api"),
            frame_v4_fragment(API, WEB, 90, 3, false, vec![0; 8], TCP),
            Pass(PassReason::Fragment),
        ),
    ]);
}

#[test]
fn odd_headers_are_judged_by_what_they_carry() {
    let f = fixture();
    f.check(&[
        (
            "ipv4 options",
            From("hw-web"),
            frame_v4_options(WEB, API, &[1, 1, 1, 0], tcp(40200, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "ipv4 options, denied port",
            From("hw-web"),
            frame_v4_options(WEB, API, &[1, 1, 1, 0], tcp(40200, 9999, SYN)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "v6 hop-by-hop",
            From("hw-web"),
            frame_v6_ext(WEB6, API6, &[0], tcp(40201, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "v6 long chain",
            From("hw-web"),
            frame_v6_ext(WEB6, API6, &[0, 60, 43, 60], tcp(40202, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "v6 chain, denied port",
            From("hw-web"),
            frame_v6_ext(WEB6, API6, &[0, 60, 43, 60], tcp(40202, 8082, SYN)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "v6 chain too long",
            From("hw-web"),
            frame_v6_ext(WEB6, API6, &[60; 9], tcp(40203, 8080, SYN)),
            Drop(DropReason::Ipv6ExtensionChainTooLong),
        ),
        (
            "unknown L4 protocol",
            From("hw-web"),
            frame(WEB, API, L4::Raw(vec![0; 16])),
            Drop(DropReason::EgressDenied),
        ),
        (
            "SYN+FIN, allowed port",
            From("hw-web"),
            frame(WEB, API, tcp(40204, 8080, SYN | FIN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "no flags, denied port",
            From("hw-web"),
            frame(WEB, API, tcp(40205, 9999, 0)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "SYN+RST, denied port",
            From("hw-web"),
            frame(WEB, API, tcp(40206, 9999, SYN | RST)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "zero-length udp",
            From("hw-web"),
            frame(WEB, HOST, udp(1000, 53)),
            Pass(PassReason::NewAllowed),
        ),
    ]);
}

#[test]
fn icmp_errors_need_a_tracked_flow() {
    let f = fixture();
    let quoted = ip_packet(WEB, HOST, &udp(6000, 53));
    let quoted6 = ip_packet(WEB6, API6, &tcp(6001, 8080, SYN));
    let unknown = ip_packet(WEB, HOST, &udp(6002, 53));
    f.check(&[
        (
            "query",
            From("hw-web"),
            frame(WEB, HOST, udp(6000, 53)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "port unreachable for it",
            To("hw-web"),
            frame(HOST, WEB, icmp(3, 3, [0; 4], quoted.clone())),
            Pass(PassReason::Related),
        ),
        (
            "error quoting an untracked flow",
            To("hw-web"),
            frame(HOST, WEB, icmp(3, 3, [0; 4], unknown)),
            Drop(DropReason::IcmpErrorUntracked),
        ),
        (
            "error sent to someone else than the flow's sender",
            From("hw-web"),
            frame(WEB, API, icmp(3, 3, [0; 4], quoted)),
            Drop(DropReason::IcmpErrorUntracked),
        ),
        (
            "v6 request",
            From("hw-web"),
            frame(WEB6, API6, tcp(6001, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "v6 packet too big",
            From("hw-api"),
            frame(API6, WEB6, icmp(2, 0, [0, 0, 5, 0], quoted6)),
            Pass(PassReason::Related),
        ),
    ]);
}

#[test]
fn uplink_filter_drops_what_the_endpoint_would() {
    let f = fixture();
    f.check(&[
        (
            "outside->web 80",
            Uplink,
            frame(OUTSIDE, WEB, tcp(1, 80, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "then at web's interface",
            To("hw-web"),
            frame(OUTSIDE, WEB, tcp(1, 80, SYN)),
            Pass(PassReason::Established),
        ),
        (
            "outside->web 22",
            Uplink,
            frame(OUTSIDE, WEB, tcp(1, 22, SYN)),
            Drop(DropReason::IngressDenied),
        ),
        (
            "remote db->api",
            Uplink,
            frame(DB_REMOTE, API, tcp(1, 8080, SYN)),
            Drop(DropReason::IngressDenied),
        ),
        (
            "claims web's address",
            Uplink,
            frame(WEB, API, tcp(1, 8080, SYN)),
            Drop(DropReason::LocalAddressWrongPath),
        ),
        (
            "claims the host's address",
            Uplink,
            frame(HOST, WEB, tcp(1, 80, SYN)),
            Drop(DropReason::HostAddressSpoofed),
        ),
        (
            "not for an endpoint",
            Uplink,
            frame(OUTSIDE, "198.51.100.1", tcp(1, 22, SYN)),
            Pass(PassReason::NotForEndpoint),
        ),
        (
            "to the host",
            Uplink,
            frame(OUTSIDE, HOST, tcp(1, 22, SYN)),
            Pass(PassReason::NotForEndpoint),
        ),
        ("arp", Uplink, arp(OUTSIDE, HOST), Pass(PassReason::Neighbour)),
        (
            "reply to api's flow",
            Uplink,
            frame(DB_REMOTE, API, tcp(5432, 41000, SYN | ACK)),
            Drop(DropReason::IngressDenied),
        ),
        (
            "api opens the flow",
            From("hw-api"),
            frame(API, DB_REMOTE, tcp(41000, 5432, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "now the reply passes",
            Uplink,
            frame(DB_REMOTE, API, tcp(5432, 41000, SYN | ACK)),
            Pass(PassReason::Reply),
        ),
    ]);
}

#[test]
fn interfaces_without_an_endpoint_drop() {
    let f = Fixture::new(
        r#"
version: 1
endpoints:
  - {name: a, interface: hw-a, addresses: ["10.0.0.1"]}
  - {name: gone, interface: hw-gone, addresses: ["10.0.0.2"]}
"#,
        &[],
    );
    // Remove hw-gone's endpoint by applying a policy without it.
    let policy = parse_str(
        "version: 1\nendpoints:\n  - {name: a, interface: hw-a, addresses: [\"10.0.0.1\"]}\n",
        "t",
    )
    .unwrap();
    let gone = f.ifindex("hw-gone");
    let mut f = f;
    f.apply(&policy, &[]);
    assert_ne!(gone, 0);
    f.check(&[(
        "stale interface",
        From("hw-gone"),
        frame("10.0.0.2", "10.0.0.1", tcp(1, 1, SYN)),
        Drop(DropReason::NoEndpoint),
    )]);
}

#[test]
fn rule_counters_count_each_packet_once() {
    let f = fixture();
    let rules: Vec<u64> = f.counters("HW_RULE_STATS");
    assert!(rules.iter().all(|c| *c == 0));
    f.check(&[
        (
            "request",
            From("hw-web"),
            frame(WEB, API, tcp(42000, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "request at api",
            To("hw-api"),
            frame(WEB, API, tcp(42000, 8080, SYN)),
            Pass(PassReason::Established),
        ),
        (
            "reply",
            From("hw-api"),
            frame(API, WEB, tcp(8080, 42000, SYN | ACK)),
            Pass(PassReason::Reply),
        ),
        (
            "reply at web",
            To("hw-web"),
            frame(API, WEB, tcp(8080, 42000, SYN | ACK)),
            Pass(PassReason::Reply),
        ),
    ]);
    let policy = parse_str(POLICY, "t").unwrap();
    let view = HostView {
        node: "test",
        host_addresses: &[],
        ifindex: &|_| None,
        macs: &Default::default(),
    };
    let c = compile::compile(&policy, &view).unwrap();
    let id = |group: &str, dir, index| {
        c.rule_id(&compile::RuleRef {
            group: group.into(),
            direction: dir,
            index,
        })
        .unwrap() as usize
    };
    let after = f.counters("HW_RULE_STATS");
    use hostwall::policy::Direction::*;
    assert_eq!(
        after[id("web", Egress, 0)],
        2,
        "web's egress rule: request and reply, once each"
    );
    assert_eq!(
        after[id("api", Ingress, 0)],
        2,
        "api's ingress rule: request and reply, once each"
    );
    assert_eq!(after.iter().sum::<u64>(), 4);
}

#[test]
fn one_endpoint_cannot_take_the_whole_conntrack_table() {
    let f = Fixture::new(
        &POLICY.replace("conntrack: {udp: 1s, icmp: 1s}", "conntrack: {max_per_endpoint: 2}"),
        &[HOST],
    );
    f.check(&[
        (
            "first flow",
            From("hw-web"),
            frame(WEB, API, tcp(43000, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "second flow",
            From("hw-web"),
            frame(WEB, API, tcp(43001, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "third flow",
            From("hw-web"),
            frame(WEB, API, tcp(43002, 8080, SYN)),
            Drop(DropReason::ConntrackEndpointFull),
        ),
        (
            "tracked flows go on",
            From("hw-web"),
            frame(WEB, API, tcp(43000, 8080, ACK)),
            Pass(PassReason::Established),
        ),
        (
            "flows opened towards web count against its inbound share, not this one",
            To("hw-web"),
            frame(OUTSIDE, WEB, tcp(1, 80, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "api has its own share",
            From("hw-api"),
            frame(API, DB_REMOTE, tcp(43003, 5432, SYN)),
            Pass(PassReason::NewAllowed),
        ),
    ]);
}

#[test]
fn a_flooding_endpoint_does_not_evict_another_endpoints_flow() {
    let f = Fixture::new(
        &POLICY.replace("conntrack: {udp: 1s, icmp: 1s}", "conntrack: {max_per_endpoint: 64}"),
        &[HOST],
    );
    f.check(&[(
        "api's connection to the remote db",
        From("hw-api"),
        frame(API, DB_REMOTE, tcp(44000, 5432, SYN)),
        Pass(PassReason::NewAllowed),
    )]);
    // web opens flows without end: its share fills, the rest is dropped and
    // counted, and api's tracked flow is untouched.
    let mut dropped = 0;
    for port in 0..2_000u16 {
        match f.run(From("hw-web"), &frame(WEB, API, tcp(10_000 + port, 8080, SYN))) {
            Pass(PassReason::NewAllowed) => {}
            Drop(DropReason::ConntrackEndpointFull) => dropped += 1,
            other => panic!("flood packet {port}: {other:?}"),
        }
    }
    assert_eq!(dropped, 2_000 - 64, "web's share is 64 flows");
    f.check(&[
        (
            "api's flow goes on as established",
            From("hw-api"),
            frame(API, DB_REMOTE, tcp(44000, 5432, ACK)),
            Pass(PassReason::Established),
        ),
        (
            "and its replies as replies",
            Uplink,
            frame(DB_REMOTE, API, tcp(5432, 44000, ACK)),
            Pass(PassReason::Reply),
        ),
        (
            "api may still open new flows",
            From("hw-api"),
            frame(API, DB_REMOTE, tcp(44001, 5432, SYN)),
            Pass(PassReason::NewAllowed),
        ),
    ]);
}
