//! The stateful guarantees of SECURITY.md, case by case: a reply never
//! opens, mid-stream entries pass their flow and only its replies and only
//! while admission is open, ICMP errors come only from a party of their
//! flow, and flows opened towards an endpoint never take the share of the
//! flows it opens. Every attack row has a control row nearby that shows the
//! same mechanism passing where the guarantee allows it.

use hostwall_common::{CT_MIDSTREAM, DropReason, PassReason};
use hostwall_tests::frames::*;
use hostwall_tests::testrun::{Expect, Fixture, Hook};

use Expect::{Drop, Pass};
use Hook::{From, To, Uplink};

/// `a` is reached on 80 (tcp, sctp) and 53 (udp) from `back` and sends
/// nothing; `b` may send anything anywhere (AWS's default egress) and is
/// reached on 443 from anyone and by parameter problems from the host;
/// `c` has no rules at all.
const POLICY: &str = r#"
version: 1
groups:
  front:
    ingress:
      - {proto: tcp, ports: 80, from: [{group: back}]}
      - {proto: sctp, ports: 80, from: [{group: back}]}
      - {proto: udp, ports: 53, from: [{group: back}]}
  back:
    egress:
      - {proto: all, to: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}]}
    ingress:
      - {proto: tcp, ports: 443, from: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}]}
      - {proto: icmp, icmp: {type: 12}, from: [host]}
      - {proto: icmpv6, icmp: {type: 4}, from: [host]}
endpoints:
  - {name: a, interface: hw-a, addresses: ["10.30.0.11", "fd00:30::11"], groups: [front]}
  - {name: b, interface: hw-b, addresses: ["10.30.0.12", "fd00:30::12"], groups: [back]}
  - {name: c, interface: hw-c, addresses: ["10.30.0.13", "fd00:30::13"], groups: []}
settings:
  conntrack: {midstream: allow}
"#;

/// The parties, in one family.
struct Net {
    v6: bool,
    a: &'static str,
    b: &'static str,
    c: &'static str,
    host: &'static str,
    outside: &'static str,
    router: &'static str,
}

const V4: Net = Net {
    v6: false,
    a: "10.30.0.11",
    b: "10.30.0.12",
    c: "10.30.0.13",
    host: "10.30.0.1",
    outside: "203.0.113.9",
    router: "198.51.100.1",
};

const V6: Net = Net {
    v6: true,
    a: "fd00:30::11",
    b: "fd00:30::12",
    c: "fd00:30::13",
    host: "fd00:30::1",
    outside: "2001:db8:30::9",
    router: "2001:db8:31::1",
};

impl Net {
    /// Port unreachable (ICMP 3/3, ICMPv6 1/4) quoting `quoted`.
    fn unreachable(&self, src: &str, dst: &str, quoted: Vec<u8>) -> Frame {
        let (ty, code) = if self.v6 { (1, 4) } else { (3, 3) };
        frame(src, dst, icmp(ty, code, [0; 4], quoted))
    }

    /// Parameter problem (ICMP 12, ICMPv6 4), which `b`'s rules allow from
    /// the host.
    fn parameter_problem(&self, src: &str, dst: &str, quoted: Vec<u8>) -> Frame {
        frame(src, dst, icmp(if self.v6 { 4 } else { 12 }, 0, [0; 4], quoted))
    }
}

fn fixture(settings: &str) -> Fixture {
    Fixture::new(
        &POLICY.replace("conntrack: {midstream: allow}", settings),
        &[V4.host, V6.host],
    )
}

fn name(n: &Net, case: &str) -> String {
    format!("{} {case}", if n.v6 { "IPv6" } else { "IPv4" })
}

#[test]
fn a_syn_is_never_a_reply_of_a_mid_stream_entry() {
    for n in [V4, V6] {
        let f = fixture("conntrack: {midstream: allow}");
        let mut cases = vec![
            (
                name(
                    &n,
                    "a's bare ACK a:80->b:22, denied its own way, b->a:80 allowed: a mid-stream entry",
                ),
                From("hw-a"),
                frame(n.a, n.b, tcp(80, 22, ACK)),
                Pass(PassReason::NewAllowed),
            ),
            (
                name(&n, "b's packets of the allowed flow b:22->a:80 pass"),
                From("hw-b"),
                frame(n.b, n.a, tcp(22, 80, ACK)),
                Pass(PassReason::Established),
            ),
            (
                name(&n, "a's SYN+ACK on the tuple is a reply"),
                From("hw-a"),
                frame(n.a, n.b, tcp(80, 22, SYN | ACK)),
                Pass(PassReason::Reply),
            ),
        ];
        for flags in [SYN, SYN | FIN, SYN | RST, SYN | PSH | URG, SYN | FIN | RST | PSH | URG] {
            cases.push((
                name(&n, &format!("a's SYN (flags {flags:#04x}) a:80->b:22 opens nothing")),
                From("hw-a"),
                frame(n.a, n.b, tcp(80, 22, flags)),
                Drop(DropReason::EgressDenied),
            ));
        }
        cases.push((
            name(&n, "nor does it at b's interface"),
            To("hw-b"),
            frame(n.a, n.b, tcp(80, 22, SYN)),
            Drop(DropReason::IngressDenied),
        ));
        check(&f, &cases);
        let entries = f.conntrack();
        assert_eq!(entries.len(), 1, "{}: one entry: {entries:?}", name(&n, ""));
        assert!(entries[0].1.flags & CT_MIDSTREAM != 0, "the entry is marked mid-stream");
    }
}

#[test]
fn a_syn_or_sctp_init_is_never_a_reply_of_an_ordinary_entry() {
    for n in [V4, V6] {
        let f = fixture("conntrack: {midstream: allow}");
        check(
            &f,
            &[
                (
                    name(&n, "b opens b:5000->a:80"),
                    From("hw-b"),
                    frame(n.b, n.a, tcp(5000, 80, SYN)),
                    Pass(PassReason::NewAllowed),
                ),
                (
                    name(&n, "a's SYN back a:80->b:5000 is judged by a's egress"),
                    From("hw-a"),
                    frame(n.a, n.b, tcp(80, 5000, SYN)),
                    Drop(DropReason::EgressDenied),
                ),
                (
                    name(&n, "a's SYN+ACK is the reply"),
                    From("hw-a"),
                    frame(n.a, n.b, tcp(80, 5000, SYN | ACK)),
                    Pass(PassReason::Reply),
                ),
                (
                    name(&n, "control: b opens b:443->host:7000"),
                    From("hw-b"),
                    frame(n.b, n.host, tcp(443, 7000, SYN)),
                    Pass(PassReason::NewAllowed),
                ),
                (
                    name(
                        &n,
                        "control: the host's SYN back host:7000->b:443 is allowed by b's ingress",
                    ),
                    To("hw-b"),
                    frame(n.host, n.b, tcp(7000, 443, SYN)),
                    Pass(PassReason::NewAllowed),
                ),
                (
                    name(&n, "the host's SYN back to another port of b is denied"),
                    From("hw-b"),
                    frame(n.b, n.host, tcp(22, 7001, SYN)),
                    Pass(PassReason::NewAllowed),
                ),
                (
                    name(&n, "  host:7001->b:22 SYN"),
                    To("hw-b"),
                    frame(n.host, n.b, tcp(7001, 22, SYN)),
                    Drop(DropReason::IngressDenied),
                ),
                (
                    name(&n, "b opens b:5002->outside:80"),
                    From("hw-b"),
                    frame(n.b, n.outside, tcp(5002, 80, SYN)),
                    Pass(PassReason::NewAllowed),
                ),
                (
                    name(
                        &n,
                        "the stranger's SYN back through the uplink is judged by b's ingress",
                    ),
                    Uplink,
                    frame(n.outside, n.b, tcp(80, 5002, SYN)),
                    Drop(DropReason::IngressDenied),
                ),
                (
                    name(&n, "  its SYN+ACK is the reply"),
                    Uplink,
                    frame(n.outside, n.b, tcp(80, 5002, SYN | ACK)),
                    Pass(PassReason::Reply),
                ),
                (
                    name(
                        &n,
                        "a stranger's bare ACK outside:9->b:22 through the uplink: mid-stream, b may send anywhere",
                    ),
                    Uplink,
                    frame(n.outside, n.b, tcp(9, 22, ACK)),
                    Pass(PassReason::NewAllowed),
                ),
                (
                    name(&n, "  then its SYN on that tuple opens nothing, on the uplink"),
                    Uplink,
                    frame(n.outside, n.b, tcp(9, 22, SYN)),
                    Drop(DropReason::IngressDenied),
                ),
                (
                    name(&n, "  nor at b's interface"),
                    To("hw-b"),
                    frame(n.outside, n.b, tcp(9, 22, SYN)),
                    Drop(DropReason::IngressDenied),
                ),
                (
                    name(&n, "  nor from the host"),
                    To("hw-b"),
                    frame(n.host, n.b, tcp(9, 22, SYN)),
                    Drop(DropReason::IngressDenied),
                ),
                (
                    name(&n, "b opens an SCTP association b:5000->a:80 (INIT)"),
                    From("hw-b"),
                    frame(n.b, n.a, sctp_chunk(5000, 80, SCTP_INIT)),
                    Pass(PassReason::NewAllowed),
                ),
                (
                    name(&n, "a's INIT back a:80->b:5000 is judged by a's egress"),
                    From("hw-a"),
                    frame(n.a, n.b, sctp_chunk(80, 5000, SCTP_INIT)),
                    Drop(DropReason::EgressDenied),
                ),
                (
                    name(&n, "a's INIT ACK is the reply"),
                    From("hw-a"),
                    frame(n.a, n.b, sctp_chunk(80, 5000, SCTP_INIT_ACK)),
                    Pass(PassReason::Reply),
                ),
                (
                    name(&n, "and DATA"),
                    From("hw-a"),
                    frame(n.a, n.b, sctp_chunk(80, 5000, SCTP_DATA)),
                    Pass(PassReason::Reply),
                ),
            ],
        );
    }
}

#[test]
fn mid_stream_admission_follows_its_setting() {
    let policy = |settings: &str| {
        hostwall::policy::parse_str(&POLICY.replace("conntrack: {midstream: allow}", settings), "t").unwrap()
    };
    // The window is long, and each case's start is taken just before it is
    // applied, so that however slowly the cases run, "within" is within.
    let now = hostwall::datapath::stats::monotonic_ns;
    for n in [V4, V6] {
        let ack = || frame(n.a, n.b, tcp(80, 22, ACK));
        let mut f = fixture("conntrack: {midstream: deny}");
        check(
            &f,
            &[(
                name(&n, "deny: a's bare ACK is judged by the rules only"),
                From("hw-a"),
                ack(),
                Drop(DropReason::EgressDenied),
            )],
        );

        let window = policy("conntrack: {midstream: startup, midstream_window: 60s}");
        let compiled = f.compile(&window, &[]);
        f.apply_started(&compiled, now().saturating_sub(61_000_000_000));
        check(
            &f,
            &[(
                name(&n, "startup, after the window: dropped"),
                From("hw-a"),
                ack(),
                Drop(DropReason::EgressDenied),
            )],
        );
        f.apply_started(&compiled, now());
        check(
            &f,
            &[
                (
                    name(&n, "startup, within the window: a mid-stream entry"),
                    From("hw-a"),
                    ack(),
                    Pass(PassReason::NewAllowed),
                ),
                (
                    name(
                        &n,
                        "other protocols are never admitted mid-stream: b->a udp/53 is allowed, a->b is not",
                    ),
                    From("hw-a"),
                    frame(n.a, n.b, udp(53, 5353)),
                    Drop(DropReason::EgressDenied),
                ),
                (
                    name(&n, "  nor SCTP"),
                    From("hw-a"),
                    frame(n.a, n.b, sctp_chunk(80, 5001, SCTP_DATA)),
                    Drop(DropReason::EgressDenied),
                ),
            ],
        );
        f.apply(&policy("conntrack: {midstream: allow}"), &[]);
        check(
            &f,
            &[(
                name(&n, "allow: always"),
                From("hw-a"),
                frame(n.a, n.b, tcp(80, 23, ACK)),
                Pass(PassReason::NewAllowed),
            )],
        );
    }
}

#[test]
fn icmp_errors_come_only_from_a_party_of_their_flow() {
    for n in [V4, V6] {
        let f = fixture("conntrack: {midstream: allow}");
        let b_to_a = ip_packet(n.b, n.a, &udp(6000, 53));
        let b_to_host = ip_packet(n.b, n.host, &udp(6001, 53));
        let b_to_outside = ip_packet(n.b, n.outside, &udp(6002, 53));
        check(
            &f,
            &[
                (
                    name(&n, "b queries a"),
                    From("hw-b"),
                    frame(n.b, n.a, udp(6000, 53)),
                    Pass(PassReason::NewAllowed),
                ),
                (
                    name(&n, "b queries the host"),
                    From("hw-b"),
                    frame(n.b, n.host, udp(6001, 53)),
                    Pass(PassReason::NewAllowed),
                ),
                (
                    name(&n, "b queries a remote server"),
                    From("hw-b"),
                    frame(n.b, n.outside, udp(6002, 53)),
                    Pass(PassReason::NewAllowed),
                ),
                (
                    name(&n, "a reports on the datagram it received"),
                    From("hw-a"),
                    n.unreachable(n.a, n.b, b_to_a.clone()),
                    Pass(PassReason::Related),
                ),
                (
                    name(&n, "  and it reaches b"),
                    To("hw-b"),
                    n.unreachable(n.a, n.b, b_to_a.clone()),
                    Pass(PassReason::Related),
                ),
                (
                    name(&n, "c, no party of it, forges the same error"),
                    From("hw-c"),
                    n.unreachable(n.c, n.b, b_to_a.clone()),
                    Drop(DropReason::IcmpErrorUntracked),
                ),
                (
                    name(&n, "a reports on a packet that was not addressed to it"),
                    From("hw-a"),
                    n.unreachable(n.a, n.b, b_to_host.clone()),
                    Drop(DropReason::IcmpErrorUntracked),
                ),
                (
                    name(&n, "a's error to someone else than the quoted packet's sender"),
                    From("hw-a"),
                    n.unreachable(n.a, n.c, b_to_a.clone()),
                    Drop(DropReason::IcmpErrorUntracked),
                ),
                (
                    name(&n, "the host's stack reports on b's packet to it"),
                    To("hw-b"),
                    n.unreachable(n.host, n.b, b_to_host.clone()),
                    Pass(PassReason::Related),
                ),
                (
                    name(&n, "the host's stack reports on a flow between two endpoints"),
                    To("hw-b"),
                    n.unreachable(n.host, n.b, b_to_a.clone()),
                    Drop(DropReason::IcmpErrorUntracked),
                ),
                (
                    name(&n, "the uplink filter leaves ICMP errors to the receiver's interface"),
                    Uplink,
                    n.unreachable(n.router, n.b, b_to_outside.clone()),
                    Pass(PassReason::NotForEndpoint),
                ),
                (
                    name(&n, "a router on the uplink reports on b's packet to a remote server"),
                    To("hw-b"),
                    n.unreachable(n.router, n.b, b_to_outside.clone()),
                    Pass(PassReason::Related),
                ),
                (
                    name(&n, "  even one it says nothing about: only b's interface judges them"),
                    Uplink,
                    n.unreachable(n.router, n.b, b_to_a.clone()),
                    Pass(PassReason::NotForEndpoint),
                ),
                (
                    name(&n, "a remote host reports on a flow between two endpoints"),
                    To("hw-b"),
                    n.unreachable(n.router, n.b, b_to_a.clone()),
                    Drop(DropReason::IcmpErrorUntracked),
                ),
                (
                    name(&n, "a remote host reports on b's flow to the host"),
                    To("hw-b"),
                    n.unreachable(n.router, n.b, b_to_host.clone()),
                    Drop(DropReason::IcmpErrorUntracked),
                ),
                (
                    name(&n, "a remote host sends b's error to a"),
                    To("hw-a"),
                    n.unreachable(n.router, n.a, b_to_outside.clone()),
                    Drop(DropReason::IcmpErrorUntracked),
                ),
                (
                    name(&n, "an unrelated error that b's rules allow passes by them"),
                    To("hw-b"),
                    n.parameter_problem(n.host, n.b, b_to_a.clone()),
                    Pass(PassReason::NewAllowed),
                ),
                (
                    name(&n, "the same error from a remote host is denied by them"),
                    To("hw-b"),
                    n.parameter_problem(n.router, n.b, b_to_a.clone()),
                    Drop(DropReason::IcmpErrorUntracked),
                ),
            ],
        );
    }
}

#[test]
fn flows_opened_towards_an_endpoint_never_take_the_share_of_those_it_opens() {
    for n in [V4, V6] {
        let f = fixture("conntrack: {midstream: allow, max_per_endpoint: 4, max_inbound_per_endpoint: 4}");
        let mut cases = Vec::new();
        // Bare ACKs from random ports to a port b does not accept: each is
        // admitted mid-stream (b may send anywhere), charged to b's
        // inbound share, until it is full.
        for port in 0..6u16 {
            cases.push((
                name(&n, &format!("flood ACK {port}")),
                To("hw-b"),
                frame(n.outside, n.b, tcp(20_000 + port, 22, ACK)),
                if port < 4 {
                    Pass(PassReason::NewAllowed)
                } else {
                    Drop(DropReason::ConntrackEndpointFull)
                },
            ));
        }
        for port in 0..2u16 {
            cases.push((
                name(&n, &format!("flood ACK {port} through the uplink")),
                Uplink,
                frame(n.outside, n.b, tcp(30_000 + port, 22, ACK)),
                Drop(DropReason::ConntrackEndpointFull),
            ));
        }
        cases.push((
            name(&n, "flood SYN to the allowed port"),
            To("hw-b"),
            frame(n.outside, n.b, tcp(40_000, 443, SYN)),
            Drop(DropReason::ConntrackEndpointFull),
        ));
        for port in 0..5u16 {
            cases.push((
                name(&n, &format!("b opens its own flow {port}")),
                From("hw-b"),
                frame(n.b, n.outside, tcp(50_000 + port, 443, SYN)),
                if port < 4 {
                    Pass(PassReason::NewAllowed)
                } else {
                    Drop(DropReason::ConntrackEndpointFull)
                },
            ));
        }
        cases.push((
            name(&n, "the flood's flows pass as any tracked flow"),
            From("hw-b"),
            frame(n.b, n.outside, tcp(22, 20_000, ACK)),
            Pass(PassReason::Established),
        ));
        check(&f, &cases);
        use hostwall::datapath::conntrack::Table;
        assert_eq!(
            f.conntrack_table(Table::Inbound).len(),
            4,
            "{}",
            name(&n, "inbound entries")
        );
        assert_eq!(
            f.conntrack_table(Table::Opened).len(),
            4,
            "{}",
            name(&n, "opened entries")
        );
    }
}

fn check(f: &Fixture, cases: &[(String, Hook<'_>, Frame, Expect)]) {
    let named: Vec<(&str, Hook<'_>, Frame, Expect)> = cases
        .iter()
        .map(|(n, h, fr, e)| (n.as_str(), *h, fr.clone(), *e))
        .collect();
    f.check(&named);
}
