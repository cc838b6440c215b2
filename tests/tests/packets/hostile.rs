//! Odd and hostile packets: the verdicts the README's table documents,
//! one test per row.

use hostwall_common::{CT_CLOSING, DropReason, PassReason};
use hostwall_tests::frames::*;
use hostwall_tests::testrun::{Expect, Fixture, Hook};

use super::*;

const OUTSIDE6: &str = "2001:db8:ff::7";

/// Every cut of `full` short of its whole length, at `hook` and on the
/// uplink. TC programs are run by the kernel only once the base IP header
/// is complete (it pulls it first), XDP programs once the Ethernet header
/// is; from there every cut must get the verdict `want` gives for its
/// length.
fn every_cut(
    f: &Fixture,
    hook: Hook<'_>,
    full: &Frame,
    ip_header: usize,
    want: impl Fn(usize) -> Expect,
    want_uplink: impl Fn(usize) -> Expect,
) {
    for len in 0..full.0.len() {
        let cut = Frame(full.0[..len].to_vec());
        match f.try_run(hook, &cut) {
            Ok(got) => assert_eq!(got, want(len), "cut to {len} of {} bytes", full.0.len()),
            Err(e) => assert!(
                len < 14 + ip_header,
                "the kernel refused a cut to {len} bytes, past the IP header: {e:?}"
            ),
        }
        match f.try_run(Uplink, &cut) {
            Ok(got) => assert_eq!(got, want_uplink(len), "uplink, cut to {len} of {} bytes", full.0.len()),
            Err(e) => assert!(len < 14, "XDP refused a cut to {len} bytes: {e:?}"),
        }
    }
}

#[test]
fn headers_truncated_at_any_byte_are_dropped() {
    let f = fixture();
    let malformed = |_| Drop(DropReason::Malformed);
    // The uplink filter passes what it cannot parse: the endpoint's TC
    // hook judges it again.
    let unparsed = |_| Pass(PassReason::NotForEndpoint);
    let allowed = Pass(PassReason::NewAllowed);
    let denied = Drop(DropReason::EgressDenied);
    // Each frame, the size of its base IP header, and the verdict on the
    // whole frame (web may send neither SCTP nor ICMPv6 to api).
    for (full, ip_header, whole) in [
        (frame(WEB, API, tcp(40300, 8080, SYN)), 20, allowed),
        (frame(WEB6, API6, tcp(40300, 8080, SYN)), 40, allowed),
        (frame(WEB, HOST, udp(40300, 53)), 20, allowed),
        (frame(WEB6, HOST6, udp(40300, 53)), 40, allowed),
        (frame(WEB, API, echo_request(false, 3)), 20, allowed),
        (frame(WEB6, API6, echo_request(true, 3)), 40, denied),
        (frame(WEB, API, sctp(40300, 8080)), 20, denied),
        (frame_v4_options(WEB, API, &[1; 40], tcp(40301, 8080, SYN)), 20, allowed),
        (frame_v6_ext(WEB6, API6, &[0, 60], tcp(40301, 8080, SYN)), 40, allowed),
        (
            frame_v6_chain(WEB6, API6, &[(0, 16), (43, 24), (51, 12)], tcp(40302, 8080, SYN)),
            40,
            allowed,
        ),
        (
            frame_v4_fragment(WEB, API, 500, 0, true, tcp(40303, 8080, SYN).bytes(), TCP),
            20,
            allowed,
        ),
        (
            frame_v6_fragment(WEB6, API6, 500, 0, true, TCP, tcp(40303, 8080, SYN).bytes()),
            40,
            allowed,
        ),
    ] {
        every_cut(&f, From("hw-web"), &full, ip_header, malformed, unparsed);
        // The same cuts arriving at the receiver.
        every_cut(&f, To("hw-api"), &full, ip_header, malformed, unparsed);
        assert_eq!(f.run(From("hw-web"), &full), whole, "the whole frame: {:02x?}", full.0);
    }
}

#[test]
fn icmp_errors_cut_short_quote_nothing() {
    let f = fixture();
    f.check(&[(
        "query",
        From("hw-web"),
        frame(WEB, HOST, udp(6100, 53)),
        Pass(PassReason::NewAllowed),
    )]);
    for (error, ip_header) in [
        (
            frame(HOST, WEB, icmp(3, 3, [0; 4], ip_packet(WEB, HOST, &udp(6100, 53)))),
            20,
        ),
        (
            frame(HOST6, WEB6, icmp(1, 4, [0; 4], ip_packet(WEB6, HOST6, &udp(6100, 53)))),
            40,
        ),
    ] {
        let l4 = 14 + ip_header;
        // Inside the ICMP header: malformed. Inside the quote (an IP
        // header and 8 bytes of ports): no flow to match.
        every_cut(
            &f,
            To("hw-web"),
            &error,
            ip_header,
            |len| {
                if len < l4 + 8 {
                    Drop(DropReason::Malformed)
                } else {
                    Drop(DropReason::IcmpErrorUntracked)
                }
            },
            // Parsed, the error claims the host's address.
            |len| {
                if len < l4 + 8 {
                    Pass(PassReason::NotForEndpoint)
                } else {
                    Drop(DropReason::HostAddressSpoofed)
                }
            },
        );
    }
    f.check(&[(
        "the whole error",
        To("hw-web"),
        frame(HOST, WEB, icmp(3, 3, [0; 4], ip_packet(WEB, HOST, &udp(6100, 53)))),
        Pass(PassReason::Related),
    )]);
}

#[test]
fn ipv4_options_are_skipped() {
    let f = fixture();
    let mut cases = Vec::new();
    // Every header length options allow: 4 to 40 bytes (IHL 6 to 15),
    // no-ops ended by end-of-options, and a record-route option.
    for words in 1..=10 {
        let mut options = vec![1u8; words * 4 - 1];
        options.push(0);
        let port = 41000 + words as u16;
        cases.push((
            "options, allowed port",
            From("hw-web"),
            frame_v4_options(WEB, API, &options, tcp(port, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ));
        cases.push((
            "options, denied port",
            From("hw-web"),
            frame_v4_options(WEB, API, &options, tcp(port, 9999, SYN)),
            Drop(DropReason::EgressDenied),
        ));
    }
    let mut record_route = vec![7, 39, 4];
    record_route.resize(40, 0);
    cases.push((
        "record route",
        From("hw-web"),
        frame_v4_options(WEB, API, &record_route, tcp(41100, 8080, SYN)),
        Pass(PassReason::NewAllowed),
    ));
    f.check(&cases);
    // A header length below the minimum.
    let mut short = frame(WEB, API, tcp(41101, 8080, SYN));
    short.0[14] = 0x44;
    assert_eq!(f.run(From("hw-web"), &short), Drop(DropReason::Malformed));
}

#[test]
fn non_first_fragments_never_pass_where_their_flow_is_denied() {
    let f = fixture();
    let denied = tcp(41200, 8082, SYN).bytes();
    let allowed = tcp(41201, 8080, SYN).bytes();
    let mut cases = vec![
        (
            "first fragment, denied",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 900, 0, true, denied.clone(), TCP),
            Drop(DropReason::EgressDenied),
        ),
        (
            "first fragment, denied, v6",
            From("hw-web"),
            frame_v6_fragment(WEB6, API6, 900, 0, true, TCP, denied.clone()),
            Drop(DropReason::EgressDenied),
        ),
    ];
    // Middle and last fragments at offsets up to the largest there is, at
    // the sender's interface and at the receiver's.
    for offset in [1u16, 2, 3, 100, 0x1000, 0x1fff] {
        for more in [true, false] {
            for hook in [From("hw-web"), To("hw-api")] {
                cases.push((
                    "later fragment of a denied datagram",
                    hook,
                    frame_v4_fragment(WEB, API, 900, offset, more, vec![0; 16], TCP),
                    Drop(DropReason::FragmentUntracked),
                ));
                cases.push((
                    "later fragment of a denied datagram, v6",
                    hook,
                    frame_v6_fragment(WEB6, API6, 900, offset, more, TCP, vec![0; 16]),
                    Drop(DropReason::FragmentUntracked),
                ));
            }
        }
    }
    cases.extend([
        (
            "later fragment before its first (reordered)",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 901, 3, false, vec![0; 8], TCP),
            Drop(DropReason::FragmentUntracked),
        ),
        (
            "then the first, allowed",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 901, 0, true, allowed.clone(), TCP),
            Pass(PassReason::NewAllowed),
        ),
        (
            "then the later one again",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 901, 3, false, vec![0; 8], TCP),
            Pass(PassReason::Fragment),
        ),
        (
            "and at the receiver's interface",
            To("hw-api"),
            frame_v4_fragment(WEB, API, 901, 3, false, vec![0; 8], TCP),
            Pass(PassReason::Fragment),
        ),
        (
            "overlapping later fragment (offset 8 bytes, over the TCP header's end)",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 901, 1, true, tcp(41201, 22, 0).bytes()[8..].to_vec(), TCP),
            Pass(PassReason::Fragment),
        ),
        (
            "same id, another destination",
            From("hw-web"),
            frame_v4_fragment(WEB, HOST, 901, 3, false, vec![0; 8], TCP),
            Drop(DropReason::FragmentUntracked),
        ),
        (
            "same id, another protocol",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 901, 3, false, vec![0; 8], UDP),
            Drop(DropReason::FragmentUntracked),
        ),
        (
            "overlapping first fragment re-judged, denied",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 901, 0, true, tcp(41201, 8082, SYN).bytes(), TCP),
            Drop(DropReason::EgressDenied),
        ),
        (
            "tiny first fragment: the TCP header cut at 8 bytes",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 902, 0, true, allowed[..8].to_vec(), TCP),
            Drop(DropReason::Malformed),
        ),
        (
            "its rest",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 902, 1, false, allowed[8..].to_vec(), TCP),
            Drop(DropReason::FragmentUntracked),
        ),
        (
            "offset 0 without more fragments is a whole packet",
            From("hw-web"),
            frame_v4_fragment(WEB, API, 903, 0, false, tcp(41202, 9999, SYN).bytes(), TCP),
            Drop(DropReason::EgressDenied),
        ),
        (
            "v6 atomic fragment (offset 0, M clear) is judged whole, allowed",
            From("hw-web"),
            frame_v6_fragment(WEB6, API6, 904, 0, false, TCP, tcp(41203, 8080, SYN).bytes()),
            Pass(PassReason::NewAllowed),
        ),
        (
            "v6 atomic fragment, denied",
            From("hw-web"),
            frame_v6_fragment(WEB6, API6, 905, 0, false, TCP, tcp(41203, 9999, SYN).bytes()),
            Drop(DropReason::EgressDenied),
        ),
        (
            "v6 fragment header after hop-by-hop, denied first fragment",
            From("hw-web"),
            v6_fragment_after_hop_by_hop(906, 0, true, tcp(41204, 9999, SYN).bytes()),
            Drop(DropReason::EgressDenied),
        ),
        (
            "its later fragment",
            From("hw-web"),
            v6_fragment_after_hop_by_hop(906, 2, false, vec![0; 8]),
            Drop(DropReason::FragmentUntracked),
        ),
        (
            "v6 fragment header after hop-by-hop, allowed",
            From("hw-web"),
            v6_fragment_after_hop_by_hop(907, 0, true, tcp(41205, 8080, SYN).bytes()),
            Pass(PassReason::NewAllowed),
        ),
        (
            "its later fragment",
            From("hw-web"),
            v6_fragment_after_hop_by_hop(907, 2, false, vec![0; 8]),
            Pass(PassReason::Fragment),
        ),
    ]);
    f.check(&cases);
}

/// An IPv6 fragment of WEB6 -> API6 (TCP) behind a hop-by-hop header.
fn v6_fragment_after_hop_by_hop(id: u32, offset8: u16, more: bool, body: Vec<u8>) -> Frame {
    let mut f = frame_v6_fragment(WEB6, API6, id, offset8, more, TCP, body);
    // Insert an 8-byte hop-by-hop header before the fragment header.
    let at = 14 + 40;
    f.0.splice(at..at, [44, 0, 0, 0, 0, 0, 0, 0]);
    f.0[14 + 6] = 0;
    let payload = u16::from_be_bytes([f.0[18], f.0[19]]) + 8;
    f.0[18..20].copy_from_slice(&payload.to_be_bytes());
    f
}

#[test]
fn ipv6_extension_chains_are_walked_up_to_eight_headers() {
    let f = fixture();
    let all_kinds = [(0, 8), (43, 24), (44, 8), (60, 16), (51, 12)];
    let eight = [(0, 8), (60, 8), (43, 8), (60, 8), (51, 8), (60, 8), (43, 8), (60, 8)];
    let nine = [(60, 8); 9];
    f.check(&[
        (
            "hop-by-hop, routing, fragment, destination options, AH: allowed",
            From("hw-web"),
            frame_v6_chain(WEB6, API6, &all_kinds, tcp(41300, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "the same chain, denied port",
            From("hw-web"),
            frame_v6_chain(WEB6, API6, &all_kinds, tcp(41300, 8082, SYN)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "eight headers",
            From("hw-web"),
            frame_v6_chain(WEB6, API6, &eight, tcp(41301, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "nine headers",
            From("hw-web"),
            frame_v6_chain(WEB6, API6, &nine, tcp(41302, 8080, SYN)),
            Drop(DropReason::Ipv6ExtensionChainTooLong),
        ),
        (
            "nine headers, to an endpoint",
            To("hw-web"),
            frame_v6_chain(OUTSIDE6, WEB6, &nine, tcp(41302, 80, SYN)),
            Drop(DropReason::Ipv6ExtensionChainTooLong),
        ),
        (
            "one destination options header of 2 KiB: the L4 header lies too deep",
            From("hw-web"),
            frame_v6_chain(WEB6, API6, &[(60, 2048)], tcp(41303, 8080, SYN)),
            Drop(DropReason::Ipv6ExtensionChainTooLong),
        ),
        (
            "headers up to 448 bytes are fine",
            From("hw-web"),
            frame_v6_chain(WEB6, API6, &[(0, 224), (60, 224)], tcp(41304, 8080, SYN)),
            Pass(PassReason::NewAllowed),
        ),
    ]);
}

const TUNNEL_POLICY: &str = r#"
version: 1
groups:
  tunnel:
    egress:
      - {proto: 47, to: [{cidr: 10.40.0.0/16}]}
      - {proto: all, to: [{cidr: 10.50.0.0/16}, {cidr: "fd00:50::/32"}]}
    ingress:
      - {proto: 47, from: [{cidr: 10.40.0.0/16}]}
endpoints:
  - {name: t, interface: hw-t, addresses: ["10.30.0.2", "fd00:30::2"], groups: [tunnel]}
"#;

#[test]
fn unknown_protocols_are_judged_by_their_number_and_tracked_by_address_pair() {
    let f = Fixture::new(TUNNEL_POLICY, &[]);
    let raw = |p| L4::Proto(p, vec![0; 12]);
    f.check(&[
        (
            "GRE to where 47 is allowed",
            From("hw-t"),
            frame("10.30.0.2", "10.40.0.9", raw(47)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "GRE again: the same address pair",
            From("hw-t"),
            frame("10.30.0.2", "10.40.0.9", raw(47)),
            Pass(PassReason::Established),
        ),
        (
            "GRE back",
            To("hw-t"),
            frame("10.40.0.9", "10.30.0.2", raw(47)),
            Pass(PassReason::Reply),
        ),
        (
            "protocol 253 there",
            From("hw-t"),
            frame("10.30.0.2", "10.40.0.9", raw(253)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "protocol 253 where all protocols are allowed",
            From("hw-t"),
            frame("10.30.0.2", "10.50.0.9", raw(253)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "protocol 255 where all protocols are allowed, v6",
            From("hw-t"),
            frame("fd00:30::2", "fd00:50::9", raw(255)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "no next header (59), v6, where all protocols are allowed",
            From("hw-t"),
            frame("fd00:30::2", "fd00:50::9", L4::Proto(59, vec![])),
            Pass(PassReason::NewAllowed),
        ),
        (
            "GRE in from elsewhere, allowed source",
            To("hw-t"),
            frame("10.40.7.7", "10.30.0.2", raw(47)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "protocol 253 in",
            To("hw-t"),
            frame("10.40.7.8", "10.30.0.2", raw(253)),
            Drop(DropReason::IngressDenied),
        ),
    ]);
}

#[test]
fn vlan_tagged_frames_are_dropped_to_and_from_endpoints() {
    let f = fixture();
    f.check(&[
        (
            "802.1Q from an endpoint",
            From("hw-web"),
            tagged(0x8100, frame(WEB, API, tcp(1, 8080, SYN))),
            Drop(DropReason::UnsupportedEthertype),
        ),
        (
            "802.1ad from an endpoint",
            From("hw-web"),
            tagged(0x88a8, tagged(0x8100, frame(WEB, API, tcp(1, 8080, SYN)))),
            Drop(DropReason::UnsupportedEthertype),
        ),
        (
            "802.1Q to an endpoint",
            To("hw-web"),
            tagged(0x8100, frame(OUTSIDE, WEB, tcp(1, 80, SYN))),
            Drop(DropReason::UnsupportedEthertype),
        ),
        (
            "tagged ARP from an endpoint",
            From("hw-web"),
            tagged(0x8100, arp(WEB, API)),
            Drop(DropReason::UnsupportedEthertype),
        ),
        (
            "802.1Q on the uplink: not the uplink filter's to judge",
            Uplink,
            tagged(0x8100, frame(OUTSIDE, WEB, tcp(1, 22, SYN))),
            Pass(PassReason::NotForEndpoint),
        ),
    ]);
}

#[test]
fn odd_tcp_flags_are_judged_by_the_rules() {
    let mut f = fixture();
    let xmas = FIN | SYN | RST | 0x08 | ACK | 0x20;
    let mut cases = Vec::new();
    for (i, flags) in [0, FIN, SYN | FIN, SYN | RST, xmas, RST].into_iter().enumerate() {
        let port = 41400 + i as u16;
        cases.push((
            "allowed port",
            From("hw-web"),
            frame(WEB, API, tcp(port, 8080, flags)),
            Pass(PassReason::NewAllowed),
        ));
        cases.push((
            "denied port (and no reverse flow allowed)",
            From("hw-web"),
            frame(WEB, API, tcp(port, 9999, flags)),
            Drop(DropReason::EgressDenied),
        ));
    }
    f.check(&cases);
    // Flows opened by a FIN or RST are tracked closing (the short
    // tcp_other timeout), the others not.
    let mut closing: Vec<(u16, bool)> = f
        .take_conntrack()
        .iter()
        .map(|(k, e)| (k.sport, e.flags & CT_CLOSING != 0))
        .collect();
    closing.sort();
    assert_eq!(
        closing,
        vec![
            (41400, false),
            (41401, true),
            (41402, true),
            (41403, true),
            (41404, true),
            (41405, true)
        ]
    );
}

#[test]
fn zero_length_udp_is_judged_by_its_ports() {
    let f = fixture();
    f.check(&[
        (
            "UDP length 8 (no payload)",
            From("hw-web"),
            frame(WEB, HOST, udp_with_length(41500, 53, 8)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "UDP length 0",
            From("hw-web"),
            frame(WEB, HOST, udp_with_length(41501, 53, 0)),
            Pass(PassReason::NewAllowed),
        ),
        (
            "UDP length 0, denied port",
            From("hw-web"),
            frame(WEB, HOST, udp_with_length(41502, 54, 0)),
            Drop(DropReason::EgressDenied),
        ),
        (
            "UDP length 0, v6",
            From("hw-web"),
            frame(WEB6, HOST6, udp_with_length(41503, 53, 0)),
            Pass(PassReason::NewAllowed),
        ),
    ]);
}

#[test]
fn icmp_errors_quoting_flows_never_tracked_are_dropped() {
    let f = fixture();
    let never = |src, dst, l4: L4| ip_packet(src, dst, &l4);
    f.check(&[
        (
            "v4 port unreachable quoting a UDP flow never seen",
            To("hw-web"),
            frame(HOST, WEB, icmp(3, 3, [0; 4], never(WEB, HOST, udp(7000, 53)))),
            Drop(DropReason::IcmpErrorUntracked),
        ),
        (
            "v4 time exceeded quoting a TCP flow never seen",
            To("hw-web"),
            frame(
                OUTSIDE,
                WEB,
                icmp(11, 0, [0; 4], never(WEB, OUTSIDE, tcp(7001, 80, SYN))),
            ),
            Drop(DropReason::IcmpErrorUntracked),
        ),
        (
            "v4 parameter problem quoting an echo never sent",
            To("hw-web"),
            frame(
                HOST,
                WEB,
                icmp(12, 0, [0; 4], never(WEB, HOST, echo_request(false, 77))),
            ),
            Drop(DropReason::IcmpErrorUntracked),
        ),
        (
            "v4 unreachable quoting an echo reply (never tracked)",
            To("hw-web"),
            frame(HOST, WEB, icmp(3, 1, [0; 4], never(WEB, HOST, echo_reply(false, 77)))),
            Drop(DropReason::IcmpErrorUntracked),
        ),
        (
            "v6 destination unreachable quoting a flow never seen",
            To("hw-web"),
            frame(HOST6, WEB6, icmp(1, 4, [0; 4], never(WEB6, HOST6, udp(7002, 53)))),
            Drop(DropReason::IcmpErrorUntracked),
        ),
        (
            "v6 packet too big quoting a flow never seen",
            To("hw-web"),
            frame(
                OUTSIDE6,
                WEB6,
                icmp(2, 0, [0, 0, 5, 0], never(WEB6, OUTSIDE6, tcp(7003, 443, SYN))),
            ),
            Drop(DropReason::IcmpErrorUntracked),
        ),
        (
            "v6 time exceeded from an endpoint quoting a flow never seen",
            From("hw-web"),
            frame(WEB6, API6, icmp(3, 0, [0; 4], never(API6, WEB6, tcp(7004, 80, SYN)))),
            Drop(DropReason::IcmpErrorUntracked),
        ),
        (
            "on the uplink: left to the receiver's interface",
            Uplink,
            frame(OUTSIDE, WEB, icmp(3, 3, [0; 4], never(WEB, OUTSIDE, udp(7005, 53)))),
            Pass(PassReason::NotForEndpoint),
        ),
        (
            "  which drops it",
            To("hw-web"),
            frame(OUTSIDE, WEB, icmp(3, 3, [0; 4], never(WEB, OUTSIDE, udp(7005, 53)))),
            Drop(DropReason::IcmpErrorUntracked),
        ),
        (
            "an error quoting nothing",
            To("hw-web"),
            frame(HOST, WEB, icmp(3, 3, [0; 4], vec![])),
            Drop(DropReason::IcmpErrorUntracked),
        ),
    ]);
}

#[test]
fn forged_sources_are_dropped() {
    let f = fixture();
    f.check(&[
        (
            "v4: an outside address from web",
            From("hw-web"),
            frame(OUTSIDE, API, tcp(1, 8080, SYN)),
            Drop(DropReason::SpoofedSource),
        ),
        (
            "v4: the host's address from web",
            From("hw-web"),
            frame(HOST, API, tcp(1, 8080, SYN)),
            Drop(DropReason::SpoofedSource),
        ),
        (
            "v6: api's address from web",
            From("hw-web"),
            frame(API6, WEB6, tcp(1, 80, SYN)),
            Drop(DropReason::SpoofedSource),
        ),
        (
            "v6: the host's address from web",
            From("hw-web"),
            frame(HOST6, API6, tcp(1, 8080, SYN)),
            Drop(DropReason::SpoofedSource),
        ),
        (
            "v6: an IPv4-mapped form of web's own address",
            From("hw-web"),
            frame("::ffff:10.10.0.11", API6, tcp(1, 8080, SYN)),
            Drop(DropReason::SpoofedSource),
        ),
        (
            "v6: link-local source for anything but neighbour discovery",
            From("hw-web"),
            frame("fe80::11", API6, tcp(1, 8080, SYN)),
            Drop(DropReason::Icmpv6Forbidden),
        ),
        (
            "v6: unspecified source",
            From("hw-web"),
            frame("::", API6, udp(1, 53)),
            Drop(DropReason::Icmpv6Forbidden),
        ),
        (
            "v6: web's address from the uplink",
            Uplink,
            frame(WEB6, API6, tcp(1, 8080, SYN)),
            Drop(DropReason::LocalAddressWrongPath),
        ),
        (
            "v6: the host's address from the uplink",
            Uplink,
            frame(HOST6, WEB6, tcp(1, 80, SYN)),
            Drop(DropReason::HostAddressSpoofed),
        ),
        (
            "v6: web's address arriving at api's interface not from web",
            ToVia("hw-api", PORT_IFACE),
            frame(WEB6, API6, tcp(1, 8080, SYN)),
            Drop(DropReason::LocalAddressWrongPath),
        ),
    ]);
}
