//! Identity bypasses, one table per class of SECURITY.md's section 5:
//! destinations a receiver does not list, Ethernet and link-layer
//! addresses, neighbour discovery and MLD shapes, the path an address of
//! this host must come by, and source routes. Each attack has its control.

use hostwall_common::{DropReason, PassReason};
use hostwall_tests::frames::*;
use hostwall_tests::testrun::{Expect, Fixture, Hook, PORT_IFACE, UPLINK_IFACE};

use Expect::{Drop, Pass};
use Hook::{From, To, ToVia};

const A: &str = "10.30.0.11";
const A6: &str = "fd00:30::11";
const B: &str = "10.30.0.21";
const B6: &str = "fd00:30::21";
const HOST: &str = "10.30.0.1";
const HOST6: &str = "fd00:30::1";
const HOST_LL: &str = "fe80::1";
/// An address on the bridge that no endpoint has: an undeclared port's.
const PORT: &str = "10.30.0.77";
const PORT_LL: &str = "fe80::77";

const POLICY: &str = r#"
version: 1
groups:
  a:
    egress:
      - {proto: udp, ports: 5353, to: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}]}
      - {proto: tcp, ports: 80, to: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}]}
      - {proto: tcp, ports: 22, to: [{group: b}]}
  b:
    ingress:
      - {proto: tcp, ports: 22, from: [{group: a}]}
      - {proto: tcp, ports: 80, from: [host]}
endpoints:
  - {name: a, interface: hw-a, addresses: ["10.30.0.11", "fd00:30::11"], groups: [a]}
  - {name: b, interface: hw-b, addresses: ["10.30.0.21", "fd00:30::21"], groups: [b]}
"#;

const BROADCAST_MAC: [u8; 6] = [0xff; 6];
const FOREIGN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

fn fixture() -> Fixture {
    Fixture::new(POLICY, &[HOST, HOST6, HOST_LL])
}

fn ll_option(kind: u8, mac: [u8; 6]) -> Vec<u8> {
    let mut o = vec![kind, 1];
    o.extend_from_slice(&mac);
    o
}

#[test]
fn packets_to_addresses_the_receiver_does_not_list_are_judged_by_its_ingress() {
    let mut f = fixture();
    let b_ll = f.link_local("hw-b");
    let cases = [
        (
            "subnet broadcast",
            with_dst_mac(frame(A, "10.30.0.255", udp(5353, 5353)), BROADCAST_MAC),
        ),
        (
            "limited broadcast",
            with_dst_mac(frame(A, "255.255.255.255", udp(5353, 5353)), BROADCAST_MAC),
        ),
        (
            "IPv4 multicast",
            with_dst_mac(frame(A, "224.0.0.251", udp(5353, 5353)), [0x01, 0, 0x5e, 0, 0, 0xfb]),
        ),
        (
            "IPv6 multicast",
            with_dst_mac(frame(A6, "ff02::1", udp(5353, 5353)), [0x33, 0x33, 0, 0, 0, 1]),
        ),
        (
            "an address of b it does not list",
            frame(A, "10.30.0.99", tcp(40000, 80, SYN)),
        ),
        ("b's link-local address", frame(A6, &b_ll, tcp(40000, 80, SYN))),
    ];
    for (name, frame) in &cases {
        // a's egress allows each; b's ingress allows none of them. The
        // flooded copy, or the frame sent to b's MAC, is b's to judge.
        f.check(&[
            (name, From("hw-a"), frame.clone(), Pass(PassReason::NewAllowed)),
            (name, To("hw-b"), frame.clone(), Drop(DropReason::IngressDenied)),
            (name, To("hw-b"), frame.clone(), Drop(DropReason::IngressDenied)),
        ]);
    }
    // Group destinations are never tracked; the unicast ones are a's flows
    // but never b's.
    let tracked: Vec<_> = f.conntrack().into_iter().map(|(k, _)| k).collect();
    assert_eq!(tracked.len(), 2, "only the unicast flows are tracked: {tracked:?}");
    f.flush_conntrack();
    // Control: the same flows to b's listed address are b's own.
    f.check(&[
        (
            "control: a to b",
            From("hw-a"),
            frame(A, B, tcp(40001, 22, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "control: at b",
            To("hw-b"),
            frame(A, B, tcp(40001, 22, SYN)),
            Pass(PassReason::Established),
        ),
        (
            "control: b's reply",
            From("hw-b"),
            frame(B, A, tcp(22, 40001, SYN | ACK)),
            Pass(PassReason::Reply),
        ),
    ]);
}

#[test]
fn an_endpoints_frames_and_link_layer_addresses_carry_its_mac() {
    let f = fixture();
    let a_ll = &f.link_local("hw-a");
    let mut ns_foreign = ll_option(1, FOREIGN_MAC);
    ns_foreign.truncate(8);
    f.check(&[
        (
            "control: a's own MAC",
            From("hw-a"),
            frame(A, B, tcp(40010, 22, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "another Ethernet source",
            From("hw-a"),
            with_src_mac(frame(A, B, tcp(40011, 22, SYN)), FOREIGN_MAC),
            Drop(DropReason::MacSpoofed),
        ),
        (
            "another Ethernet source on ARP",
            From("hw-a"),
            with_src_mac(arp(A, B), FOREIGN_MAC),
            Drop(DropReason::MacSpoofed),
        ),
        ("control: ARP", From("hw-a"), arp(A, B), Pass(PassReason::Neighbour)),
        (
            "ARP with another sender hardware address",
            From("hw-a"),
            {
                let mut f = arp(A, B);
                f.0[22..28].copy_from_slice(&FOREIGN_MAC);
                f
            },
            Drop(DropReason::MacSpoofed),
        ),
        (
            "NS with another source link-layer address",
            From("hw-a"),
            nd_with(a_ll, "ff02::1:ff00:21", 135, B6, 255, &ns_foreign),
            Drop(DropReason::MacSpoofed),
        ),
        (
            "NA with another target link-layer address",
            From("hw-a"),
            nd_with(a_ll, "ff02::1", 136, A6, 255, &ll_option(2, FOREIGN_MAC)),
            Drop(DropReason::MacSpoofed),
        ),
        (
            "control: NA with a's own",
            From("hw-a"),
            nd_with(a_ll, "ff02::1", 136, A6, 255, &ll_option(2, SRC_MAC)),
            Pass(PassReason::Neighbour),
        ),
    ]);
}

#[test]
fn neighbour_discovery_and_mld_have_their_shape_and_claim_only_the_senders_addresses() {
    let f = fixture();
    let a_ll = &f.link_local("hw-a");
    let b_ll = &f.link_local("hw-b");
    let mut with_data = ll_option(1, SRC_MAC);
    with_data.extend_from_slice(b"exfiltrated data");
    let mld_v1 = |dst: &str, ty: u8, group: &str, extra: usize| {
        let g: std::net::Ipv6Addr = group.parse().unwrap();
        let mut body = g.octets().to_vec();
        body.extend(std::iter::repeat_n(0, extra));
        mld(a_ll, dst, ty, [0; 4], body)
    };
    f.check(&[
        (
            "control: NS to b's global address (unreachability detection)",
            From("hw-a"),
            nd(a_ll, B6, 135, B6),
            Pass(PassReason::Neighbour),
        ),
        (
            "NS carrying data after its options",
            From("hw-a"),
            nd_with(a_ll, B6, 135, B6, 255, &with_data),
            Drop(DropReason::NdMalformed),
        ),
        (
            "NS with hop limit 64 (routed)",
            From("hw-a"),
            nd_with(a_ll, B6, 135, B6, 64, &ll_option(1, SRC_MAC)),
            Drop(DropReason::NdMalformed),
        ),
        (
            "NS to an address off this host",
            From("hw-a"),
            nd(a_ll, "2001:db8::5", 135, "2001:db8::5"),
            Drop(DropReason::NdMalformed),
        ),
        (
            "NS with a prefix option",
            From("hw-a"),
            nd_with(
                a_ll,
                B6,
                135,
                B6,
                255,
                &[
                    3, 4, 64, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfd, 0, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0,
                ],
            ),
            Drop(DropReason::NdMalformed),
        ),
        (
            "NS with an option of length 0",
            From("hw-a"),
            nd_with(a_ll, B6, 135, B6, 255, &[1, 0, 0, 0, 0, 0, 0, 0]),
            Drop(DropReason::NdMalformed),
        ),
        (
            "NS from a link-local address that is not a's",
            From("hw-a"),
            nd("fe80::99", "ff02::1:ff00:21", 135, B6),
            Drop(DropReason::NdSpoofed),
        ),
        (
            "NA claiming the host's (the router's) link-local address",
            From("hw-a"),
            nd(a_ll, "ff02::1", 136, HOST_LL),
            Drop(DropReason::NdSpoofed),
        ),
        (
            "NA claiming b's link-local address",
            From("hw-a"),
            nd(a_ll, "ff02::1", 136, b_ll),
            Drop(DropReason::NdSpoofed),
        ),
        (
            "NA from the unspecified address",
            From("hw-a"),
            nd("::", "ff02::1", 136, A6),
            Drop(DropReason::NdSpoofed),
        ),
        (
            "control: NA for a's link-local address",
            From("hw-a"),
            nd(a_ll, "ff02::1", 136, a_ll),
            Pass(PassReason::Neighbour),
        ),
        (
            "control: MLDv1 report",
            From("hw-a"),
            mld_v1("ff02::1:ff00:11", 131, "ff02::1:ff00:11", 0),
            Pass(PassReason::Neighbour),
        ),
        (
            "MLDv1 report carrying data",
            From("hw-a"),
            mld_v1("ff02::1:ff00:11", 131, "ff02::1:ff00:11", 16),
            Drop(DropReason::NdMalformed),
        ),
        (
            "MLDv1 report to b's global address",
            From("hw-a"),
            mld_v1(B6, 131, B6, 0),
            Drop(DropReason::NdMalformed),
        ),
        (
            "control: MLDv1 done",
            From("hw-a"),
            mld_v1("ff02::2", 132, "ff02::1:ff00:11", 0),
            Pass(PassReason::Neighbour),
        ),
        (
            "MLD without a Router Alert",
            From("hw-a"),
            ipv6_icmp_frame(a_ll, "ff02::16", 1, false, &icmp(143, 0, [0; 4], vec![])),
            Drop(DropReason::NdMalformed),
        ),
        (
            "MLDv2 report with more records than it declares",
            From("hw-a"),
            {
                let mut f = mld_v2_report(a_ll, &["ff02::1:ff00:11", "ff02::fb"]);
                // Record count (the last byte of the 4 after the checksum).
                let at = f.0.len() - 2 * 20 - 1;
                f.0[at] = 1;
                f
            },
            Drop(DropReason::NdMalformed),
        ),
        (
            "control: MLDv2 report of two records",
            From("hw-a"),
            mld_v2_report(a_ll, &["ff02::1:ff00:11", "ff02::fb"]),
            Pass(PassReason::Neighbour),
        ),
        (
            "NS with data from an undeclared port",
            ToVia("hw-b", PORT_IFACE),
            nd_with(PORT_LL, B6, 135, B6, 255, &with_data),
            Drop(DropReason::NdMalformed),
        ),
        (
            "NA from an undeclared port claiming the host's link-local address",
            ToVia("hw-b", PORT_IFACE),
            nd(PORT_LL, "ff02::1", 136, HOST_LL),
            Drop(DropReason::NdSpoofed),
        ),
        (
            "NA from an undeclared port claiming a's address",
            ToVia("hw-b", PORT_IFACE),
            nd(PORT_LL, "ff02::1", 136, A6),
            Drop(DropReason::NdSpoofed),
        ),
        (
            "control: an undeclared port's NA for its own address",
            ToVia("hw-b", PORT_IFACE),
            nd(PORT_LL, "ff02::1", 136, PORT_LL),
            Pass(PassReason::Neighbour),
        ),
    ]);
}

#[test]
fn an_address_of_this_host_carries_its_identity_only_on_its_own_path() {
    let f = fixture();
    let ra = |src: &str| frame(src, "ff02::1", icmp(134, 0, [0; 4], vec![0; 8]));
    let redirect = |src: &str| frame(src, B, icmp(5, 1, [10, 30, 0, 77], vec![0; 28]));
    f.check(&[
        (
            "control: the host's address from the host's stack",
            To("hw-b"),
            frame(HOST, B, tcp(40020, 80, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "the host's address from an undeclared port",
            ToVia("hw-b", PORT_IFACE),
            frame(HOST, B, tcp(40021, 80, SYN)),
            Drop(DropReason::HostAddressSpoofed),
        ),
        (
            "the host's address from the uplink",
            ToVia("hw-b", UPLINK_IFACE),
            frame(HOST6, B6, tcp(40021, 80, SYN)),
            Drop(DropReason::HostAddressSpoofed),
        ),
        (
            "the host's address from another endpoint's interface",
            ToVia("hw-b", "hw-a"),
            frame(HOST, B, tcp(40021, 80, SYN)),
            Drop(DropReason::HostAddressSpoofed),
        ),
        // a opens a flow to b; an undeclared port then injects into it.
        (
            "a opens a:40022 -> b:22",
            From("hw-a"),
            frame(A, B, tcp(40022, 22, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "control: the flow at b",
            To("hw-b"),
            frame(A, B, tcp(40022, 22, ACK)),
            Pass(PassReason::Established),
        ),
        (
            "a's tracked tuple from an undeclared port",
            ToVia("hw-b", PORT_IFACE),
            frame(A, B, tcp(40022, 22, ACK)),
            Drop(DropReason::LocalAddressWrongPath),
        ),
        (
            "a's tracked tuple from the uplink's side",
            ToVia("hw-b", UPLINK_IFACE),
            frame(A6, B6, tcp(40022, 22, ACK)),
            Drop(DropReason::LocalAddressWrongPath),
        ),
        (
            "control: an undeclared port's own address is judged by the rules",
            ToVia("hw-b", PORT_IFACE),
            frame(PORT, B, tcp(40023, 22, SYN)),
            Drop(DropReason::IngressDenied),
        ),
        (
            "ARP from an undeclared port claiming the host's address",
            ToVia("hw-b", PORT_IFACE),
            arp(HOST, B),
            Drop(DropReason::ArpSpoofed),
        ),
        (
            "ARP from an undeclared port claiming a's address",
            ToVia("hw-b", PORT_IFACE),
            arp(A, B),
            Drop(DropReason::ArpSpoofed),
        ),
        (
            "control: an undeclared port's ARP for itself",
            ToVia("hw-b", PORT_IFACE),
            arp(PORT, B),
            Pass(PassReason::Neighbour),
        ),
        (
            "control: RA from the host's stack",
            To("hw-b"),
            ra(HOST_LL),
            Pass(PassReason::Neighbour),
        ),
        (
            "control: RA from the uplink",
            ToVia("hw-b", UPLINK_IFACE),
            ra("fe80::fe"),
            Pass(PassReason::Neighbour),
        ),
        (
            "RA from an undeclared port",
            ToVia("hw-b", PORT_IFACE),
            ra(PORT_LL),
            Drop(DropReason::RouterMessageWrongPath),
        ),
        (
            "RA with the host's link-local address from an undeclared port",
            ToVia("hw-b", PORT_IFACE),
            ra(HOST_LL),
            Drop(DropReason::HostAddressSpoofed),
        ),
        (
            "ICMP redirect from an undeclared port",
            ToVia("hw-b", PORT_IFACE),
            redirect(PORT),
            Drop(DropReason::RouterMessageWrongPath),
        ),
        (
            "ICMP router advertisement from an undeclared port",
            ToVia("hw-b", PORT_IFACE),
            frame(
                PORT,
                "224.0.0.1",
                icmp(9, 0, [1, 2, 0, 30], vec![10, 30, 0, 77, 0, 0, 0, 0]),
            ),
            Drop(DropReason::RouterMessageWrongPath),
        ),
        (
            "control: an ICMP redirect from the host's stack goes on to the rules",
            To("hw-b"),
            redirect(HOST),
            Drop(DropReason::IngressDenied),
        ),
    ]);
}

#[test]
fn an_endpoint_cannot_route_its_packets() {
    let f = fixture();
    let routed_v6 = |routing_type: u8| {
        let mut f = frame_v6_chain(A6, B6, &[(43, 24)], tcp(40030, 22, SYN));
        f.0[14 + 40 + 2] = routing_type;
        f
    };
    f.check(&[
        (
            "loose source route",
            From("hw-a"),
            frame_v4_options(A, B, &[131, 7, 4, 10, 30, 0, 99, 0], tcp(40030, 22, SYN)),
            Drop(DropReason::SourceRouted),
        ),
        (
            "strict source route",
            From("hw-a"),
            frame_v4_options(A, B, &[137, 7, 4, 10, 30, 0, 99, 0], tcp(40030, 22, SYN)),
            Drop(DropReason::SourceRouted),
        ),
        (
            "a source route after padding",
            From("hw-a"),
            frame_v4_options(A, B, &[1, 1, 1, 1, 1, 131, 7, 4, 10, 30, 0, 99], tcp(40030, 22, SYN)),
            Drop(DropReason::SourceRouted),
        ),
        (
            "a source route after a record route",
            From("hw-a"),
            frame_v4_options(
                A,
                B,
                &[7, 7, 4, 0, 0, 0, 0, 131, 7, 4, 10, 30, 0, 99, 0, 0],
                tcp(40030, 22, SYN),
            ),
            Drop(DropReason::SourceRouted),
        ),
        (
            "control: a record route",
            From("hw-a"),
            frame_v4_options(A, B, &[7, 7, 4, 0, 0, 0, 0, 0], tcp(40031, 22, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "IPv6 routing header type 0",
            From("hw-a"),
            routed_v6(0),
            Drop(DropReason::SourceRouted),
        ),
        (
            "IPv6 segment routing header (type 4)",
            From("hw-a"),
            routed_v6(4),
            Drop(DropReason::SourceRouted),
        ),
        (
            "control: IPv6 routing header type 2",
            From("hw-a"),
            routed_v6(2),
            Pass(PassReason::NewAllowed),
        ),
        (
            "control: source routes towards an endpoint go on to the rules",
            To("hw-b"),
            frame_v4_options(HOST, B, &[131, 7, 4, 10, 30, 0, 99, 0], tcp(40032, 80, SYN)),
            Pass(PassReason::NewAllowed),
        ),
    ]);
}

/// A flow's packets at a receiver pass on the paths the flow learned there
/// (`CtEntry::via`) only under the policy they were learned under, and only
/// for the receiver that learned them.
#[test]
fn a_flow_forgets_the_paths_it_learned_when_the_policy_changes() {
    const REMOTE: &str = "10.40.0.5";
    let policy = |c_addresses: &str| {
        let yaml = format!(
            r#"
version: 1
groups:
  a:
    egress:
      - {{proto: tcp, ports: 22, to: [{{group: b}}]}}
  b:
    ingress:
      - {{proto: tcp, ports: 22, from: [{{group: a}}]}}
      - {{proto: tcp, ports: 80, from: [{{cidr: 10.40.0.0/16}}]}}
  c: {{}}
endpoints:
  - {{name: a, interface: hw-a, addresses: ["10.30.0.11"], groups: [a]}}
  - {{name: b, interface: hw-b, addresses: ["10.30.0.21"], groups: [b]}}
  - {{name: c, interface: hw-c, addresses: [{c_addresses}], groups: [c]}}
"#
        );
        hostwall::policy::parse_str(&yaml, "t.yaml").unwrap()
    };
    let host: Vec<std::net::IpAddr> = vec![HOST.parse().unwrap()];
    let mut f = Fixture::with_interfaces(&["hw-a", "hw-b", "hw-c"]);
    f.apply(&policy(r#""10.30.0.31""#), &host);
    let ack = || frame(REMOTE, B, tcp(40100, 80, ACK));
    f.check(&[
        (
            "a remote peer opens remote:40100 -> b:80 through the uplink",
            ToVia("hw-b", UPLINK_IFACE),
            frame(REMOTE, B, tcp(40100, 80, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "control: a remote address comes by any path",
            ToVia("hw-b", PORT_IFACE),
            ack(),
            Pass(PassReason::Established),
        ),
        (
            "control: its flow through the uplink again (the path last learned)",
            ToVia("hw-b", UPLINK_IFACE),
            ack(),
            Pass(PassReason::Established),
        ),
        (
            "a opens a:40101 -> b:22",
            From("hw-a"),
            frame(A, B, tcp(40101, 22, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "control: b receives it",
            To("hw-b"),
            frame(A, B, tcp(40101, 22, ACK)),
            Pass(PassReason::Established),
        ),
        (
            "the same packet at c's interface, as if c received it: judged by c's ingress",
            ToVia("hw-c", "hw-a"),
            frame(A, B, tcp(40101, 22, ACK)),
            Drop(DropReason::IngressDenied),
        ),
    ]);

    // The remote address becomes c's: it now comes only through c's
    // interface, tracked flow or not.
    f.apply(&policy(r#""10.30.0.31", "10.40.0.5""#), &host);
    f.check(&[
        (
            "the flow's learned path (the uplink) is not c's",
            ToVia("hw-b", UPLINK_IFACE),
            ack(),
            Drop(DropReason::LocalAddressWrongPath),
        ),
        (
            "control: the flow through c's interface",
            ToVia("hw-b", "hw-c"),
            ack(),
            Pass(PassReason::Established),
        ),
        (
            "and the uplink again, after c's path was learned",
            ToVia("hw-b", UPLINK_IFACE),
            ack(),
            Drop(DropReason::LocalAddressWrongPath),
        ),
        (
            "control: a's flow at b, learned under the old policy, checked again",
            To("hw-b"),
            frame(A, B, tcp(40101, 22, ACK)),
            Pass(PassReason::Established),
        ),
    ]);
}
