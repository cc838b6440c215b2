//! The stateful attacks of SECURITY.md, with real traffic against the
//! running agent. Frames no socket would send come from `hostwall-send`
//! inside the attacker's namespace: a container (an endpoint), the host
//! namespace, or the other host behind the uplink (the agent then runs the
//! uplink's XDP filter). Every attack is tried over IPv4 and IPv6, first
//! with no agent, to show that it works when nothing filters, then with the
//! agent:
//!
//! 1. A mid-stream entry never opens a connection (SECURITY.md 2). Where
//!    only B → A:80 is allowed, A's bare ACK A:80 → B:22 makes a mid-stream
//!    entry while mid-stream admission is open, but A's SYN A:80 → B:22 is
//!    judged by the rules, dropped, and B's listener on port 22 accepts
//!    nothing. With `midstream: deny`, or once the startup window has
//!    closed, the bare ACK itself is dropped.
//! 2. ICMP errors are bound to their flow's parties (SECURITY.md 3). A port
//!    unreachable about V's UDP flow to S, sent to V by anyone but S, is
//!    dropped as `icmp-error-untracked` and V's connected socket keeps
//!    working; S's own port unreachable still reaches V.
//! 3. No peer takes another endpoint's conntrack share (SECURITY.md 4). A
//!    flood of new flows beyond the budget it is charged to is dropped as
//!    `conntrack-endpoint-full`, and the victim's own new connections still
//!    get through.
//! 4. Flows an agent of layout 1 left behind are carried over: they go on
//!    both ways, in the table they belong to, and a SYN against one opens
//!    nothing.
//!
//! The victim's side is read as a user would read it: a capture on the
//! victim's eth0 and the victim's own sockets, opened inside its namespace.

mod common;

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{bins, in_netns, udp_bind};
use hostwall_tests::bins::locate_sender;
use hostwall_tests::frames::{ACK, SYN, TCP};
use hostwall_tests::netns::run;
use hostwall_tests::topology::{BRIDGE, UPLINK};
use hostwall_tests::{Agent, AgentOptions, Container, DropReason, Host, Netns, PassReason, Remote, Stats, Subnet};
use serde_json::Value;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How long anything that should happen may take on a busy machine.
const DEADLINE: Duration = Duration::from_secs(5);
/// How long a connection attempt that should be dropped is given: the SYN
/// and one retransmission.
const DROPPED_CONNECT: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------
// 1. Mid-stream entries

#[test]
fn midstream_entry_never_opens_from_an_endpoint() {
    midstream_entry_never_opens(Origin::Endpoint);
}

#[test]
fn midstream_entry_never_opens_from_the_host() {
    midstream_entry_never_opens(Origin::Host);
}

#[test]
fn midstream_entry_never_opens_through_the_uplink() {
    midstream_entry_never_opens(Origin::Uplink);
}

/// b may open tcp/80 to the attacker (and the attacker, when it is a
/// container, accepts it); nothing else is allowed.
fn midstream_policy(lab: &Lab, settings: &str) -> String {
    let mut policy = String::from("version: 1\ngroups:\n  client:\n    egress:\n");
    let mut endpoints = lab.endpoint("b", "client");
    if lab.origin == Origin::Endpoint {
        policy += "      - {proto: tcp, ports: 80, to: [{group: attacker}]}\n";
        policy += "  attacker:\n    ingress:\n      - {proto: tcp, ports: 80, from: [{group: client}]}\n";
        endpoints += &lab.endpoint("a", "attacker");
    } else {
        policy += &format!("      - {{proto: tcp, ports: 80, to: [{}]}}\n", lab.outside_peer());
    }
    format!("{policy}endpoints:\n{endpoints}{settings}")
}

fn midstream_entry_never_opens(origin: Origin) {
    let names: &[(&str, u8)] = match origin {
        Origin::Endpoint => &[("a", 11), ("b", 12)],
        _ => &[("b", 12)],
    };
    let lab = Lab::new(origin, names);
    let b = lab.container("b");
    let attacker = lab.attacker("a");
    // The rules that deny the attacker's packets: its own egress, or b's
    // ingress when the attacker is not a local endpoint.
    let denied_by = match origin {
        Origin::Endpoint => DropReason::EgressDenied,
        _ => DropReason::IngressDenied,
    };
    let listener = tcp_listen(b.ns(), 22);
    let mut capture = Capture::open(b);
    let pairs: Vec<(IpAddr, IpAddr)> = (0..2).map(|f| (attacker.addrs[f], b.addrs()[f])).collect();
    let bare_ack = |a: IpAddr, to: IpAddr, port: u16| format!("{} tcp {a} {to} 80 {port} A", family(a));

    // Without hostwall: the bare ACKs arrive, and the attacker connects
    // from port 80 to b's port 22.
    for &(a, to) in &pairs {
        for port in [22, 23, 24] {
            attacker.send(b, &bare_ack(a, to, port));
        }
    }
    for &(a, to) in &pairs {
        for port in [22, 23, 24] {
            let n = capture.wait_for(0, |s| s.is_tcp(a, 80, to, port, ACK), 1, DEADLINE);
            assert_eq!(
                n, 1,
                "control: without hostwall, {}'s bare ACK {a}:80 → {to}:{port} did not reach b",
                attacker.label
            );
        }
    }
    for &(a, to) in &pairs {
        let conn = tcp_connect(
            attacker.ns,
            Some(SocketAddr::new(a, 80)),
            SocketAddr::new(to, 22),
            DEADLINE,
        )
        .unwrap_or_else(|e| {
            panic!(
                "control: without hostwall, {} could not connect {a}:80 → {to}:22: {e}",
                attacker.label
            )
        });
        let (accepted, peer) = accept_within(&listener, DEADLINE)
            .unwrap_or_else(|| panic!("control: without hostwall, b's listener on 22 accepted nothing from {a}"));
        assert_eq!(peer, SocketAddr::new(a, 80), "control: b accepted another peer");
        // A reset, not a close: no TIME_WAIT keeps the tuple from being
        // used again.
        conn.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
        drop(conn);
        drop(accepted);
    }

    // With hostwall, inside the startup window (60 s by default): the bare
    // ACK passes and makes a mid-stream entry, as the far side of a
    // connection b → attacker:80 that predates the agent.
    let mut agent = lab.start_agent(&midstream_policy(&lab, ""));
    let started = Instant::now();
    let mark = capture.mark();
    for &(a, to) in &pairs {
        attacker.send(b, &bare_ack(a, to, 22));
    }
    for &(a, to) in &pairs {
        let n = capture.wait_for(mark, |s| s.is_tcp(a, 80, to, 22, ACK), 1, DEADLINE);
        assert_eq!(
            n, 1,
            "during the mid-stream window, {}'s bare ACK {a}:80 → {to}:22 did not reach b",
            attacker.label
        );
    }
    let flows = conntrack_flows(&agent, &["--port", "22"]);
    for &(a, to) in &pairs {
        assert!(
            flows
                .iter()
                .any(|f| is_flow(f, (a, 80), (to, 22)) && f["midstream"] == true),
            "no mid-stream entry for {to}:22 ↔ {a}:80 after the bare ACK; tracked: {flows:?}"
        );
    }

    // The attack: a real connection from the attacker's port 80 to b:22.
    // Its SYN finds the mid-stream entry, but a SYN never answers a flow.
    let before = agent.stats().expect("reading counters");
    let forwarded = lab.forwarded();
    let mark = capture.mark();
    let attempts: Vec<io::Result<Socket>> = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter()
            .map(|&(a, to)| {
                let ns = attacker.ns;
                s.spawn(move || {
                    tcp_connect(
                        ns,
                        Some(SocketAddr::new(a, 80)),
                        SocketAddr::new(to, 22),
                        DROPPED_CONNECT,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a connecting thread"))
            .collect()
    });
    for (attempt, &(a, to)) in attempts.iter().zip(&pairs) {
        match attempt {
            Ok(_) => panic!(
                "{} opened a connection {a}:80 → {to}:22 through its mid-stream entry",
                attacker.label
            ),
            Err(e) => assert_eq!(
                e.kind(),
                io::ErrorKind::TimedOut,
                "{}'s connection {a}:80 → {to}:22 failed otherwise than by a drop: {e}",
                attacker.label
            ),
        }
    }
    if let Some((_, peer)) = accept_within(&listener, Duration::ZERO) {
        panic!("b's listener on port 22 accepted a connection from {peer}");
    }
    for &(a, to) in &pairs {
        let syns = capture.count_since(mark, |s| s.is_tcp(a, 80, to, 22, SYN));
        assert_eq!(syns, 0, "{}'s SYN {a}:80 → {to}:22 reached b", attacker.label);
    }
    agent.assert_dropped_since(&before, denied_by, 2);
    if origin == Origin::Uplink {
        assert_eq!(
            lab.forwarded(),
            forwarded,
            "the remote host's SYNs were forwarded by the host: the XDP filter let them pass"
        );
    }

    // `midstream: deny`: no mid-stream entries at all.
    agent
        .reload(&midstream_policy(&lab, "settings:\n  conntrack: {midstream: deny}\n"))
        .expect("applying midstream: deny");
    bare_ack_dropped(
        &agent,
        &attacker,
        b,
        &mut capture,
        &pairs,
        23,
        denied_by,
        "with midstream: deny",
    );

    // `midstream: startup` once its window has closed.
    let window = Duration::from_secs(1);
    if let Some(rest) = (window + Duration::from_millis(200)).checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    agent
        .reload(&midstream_policy(
            &lab,
            "settings:\n  conntrack: {midstream: startup, midstream_window: 1s}\n",
        ))
        .expect("applying a 1 s mid-stream window");
    bare_ack_dropped(
        &agent,
        &attacker,
        b,
        &mut capture,
        &pairs,
        24,
        denied_by,
        "after the mid-stream window",
    );
}

/// Sends a bare ACK attacker:80 → b:`port` per pair and checks that each
/// was dropped as `reason`, reached nothing and made no entry.
#[allow(clippy::too_many_arguments)]
fn bare_ack_dropped(
    agent: &Agent,
    attacker: &Attacker,
    b: &Container,
    capture: &mut Capture,
    pairs: &[(IpAddr, IpAddr)],
    port: u16,
    reason: DropReason,
    when: &str,
) {
    let before = agent.stats().expect("reading counters");
    let mark = capture.mark();
    for &(a, to) in pairs {
        attacker.send(b, &format!("{} tcp {a} {to} 80 {port} A", family(a)));
    }
    let delta = stats_until(agent, &before, |d| d.dropped(reason) >= 2);
    for &(a, to) in pairs {
        let n = capture.count_since(mark, |s| s.is_tcp(a, 80, to, port, ACK));
        assert_eq!(
            n, 0,
            "{when}, {}'s bare ACK {a}:80 → {to}:{port} reached b",
            attacker.label
        );
    }
    assert!(
        delta.dropped(reason) >= 2,
        "{when}, {}'s bare ACKs to port {port} were not counted as {}; counters since: {delta}",
        attacker.label,
        reason.name()
    );
    let flows = conntrack_flows(agent, &["--port", &port.to_string()]);
    assert!(flows.is_empty(), "{when}, the bare ACKs made entries: {flows:?}");
}

// ---------------------------------------------------------------------------
// 2. ICMP errors from someone who is not a party of the flow

#[test]
fn foreign_icmp_error_is_dropped_from_an_endpoint() {
    foreign_icmp_error_is_dropped(Origin::Endpoint);
}

#[test]
fn foreign_icmp_error_is_dropped_from_the_host() {
    foreign_icmp_error_is_dropped(Origin::Host);
}

#[test]
fn foreign_icmp_error_is_dropped_through_the_uplink() {
    foreign_icmp_error_is_dropped(Origin::Uplink);
}

/// v may send udp/7000 to s and, unless the attacker is the host, to the
/// host. The attacker, when it is a container (x), is another client of s:
/// its rules allow it nothing towards v.
fn icmp_policy(lab: &Lab) -> String {
    let mut endpoints = lab.endpoint("v", "victim") + &lab.endpoint("s", "server");
    let (clients, neighbour) = if lab.origin == Origin::Endpoint {
        endpoints += &lab.endpoint("x", "neighbour");
        (
            "[{group: victim}, {group: neighbour}]",
            "  neighbour:\n    egress:\n      - {proto: udp, ports: 7000, to: [{group: server}]}\n",
        )
    } else {
        ("[{group: victim}]", "")
    };
    let servers = if lab.origin == Origin::Host {
        "{group: server}"
    } else {
        "{group: server}, host"
    };
    format!(
        "version: 1
groups:
  victim:
    egress:
      - {{proto: udp, ports: 7000, to: [{servers}]}}
  server:
    ingress:
      - {{proto: udp, ports: 7000, from: {clients}}}
{neighbour}endpoints:
{endpoints}"
    )
}

/// A connected UDP socket of v's towards one of its servers: a port
/// unreachable about its flow makes its next recv fail with ECONNREFUSED.
struct UdpFlow {
    client: UdpSocket,
    /// Index into the servers.
    server: usize,
    what: String,
}

fn foreign_icmp_error_is_dropped(origin: Origin) {
    let names: &[(&str, u8)] = match origin {
        Origin::Endpoint => &[("v", 21), ("s", 23), ("x", 24)],
        _ => &[("v", 21), ("s", 23)],
    };
    let lab = Lab::new(origin, names);
    let (v, s) = (lab.container("v"), lab.container("s"));
    let attacker = lab.attacker("x");
    // v's servers, each on udp/7000: s, and the host unless it attacks.
    let mut servers: Vec<(&str, &Netns, [IpAddr; 2])> = vec![("s", s.ns(), s.addrs())];
    if origin != Origin::Host {
        servers.push(("the host", lab.host.ns(), lab.host.addrs()));
    }
    let mut sockets: Vec<UdpSocket> = servers.iter().map(|(_, ns, _)| udp_bind(ns, 7000)).collect();
    let flows: Vec<UdpFlow> = servers
        .iter()
        .enumerate()
        .flat_map(|(i, (name, _, addrs))| {
            (0..2).map(move |f| {
                let to = SocketAddr::new(addrs[f], 7000);
                UdpFlow {
                    client: udp_connect(v.ns(), v.addrs()[f], to),
                    server: i,
                    what: format!("v's flow to {name} ({})", FAMILY[f]),
                }
            })
        })
        .collect();
    // Port unreachable (IPv4 3/3, IPv6 1/4) from the attacker to v, quoting
    // v's datagram to its server.
    let forge = |flow: &UdpFlow| {
        let local = flow.client.local_addr().expect("v's local address");
        let to = flow.client.peer_addr().expect("v's server");
        let (vip, att) = (local.ip(), attacker.addrs[usize::from(local.is_ipv6())]);
        let (ty, code) = if vip.is_ipv4() { (3, 3) } else { (1, 4) };
        attacker.send(
            v,
            &format!(
                "{} icmp-error {ty} {code} {att} {vip} udp {vip} {} {} {} hostwall-ping",
                family(vip),
                to.ip(),
                local.port(),
                to.port()
            ),
        );
    };

    // Without hostwall the forged errors kill v's flows.
    for flow in &flows {
        roundtrip(&flow.client, &sockets[flow.server]).unwrap_or_else(|e| panic!("control: {}: {e}", flow.what));
    }
    flows.iter().for_each(forge);
    for flow in &flows {
        assert!(
            wait_refused(&flow.client, DEADLINE),
            "control: without hostwall, {}'s forged port unreachable did not make {} fail",
            attacker.label,
            flow.what
        );
    }

    // With hostwall they are dropped, and the flows go on.
    let agent = lab.start_agent(&icmp_policy(&lab));
    for flow in &flows {
        roundtrip(&flow.client, &sockets[flow.server]).unwrap_or_else(|e| panic!("{} under hostwall: {e}", flow.what));
    }
    let before = agent.stats().expect("reading counters");
    flows.iter().for_each(forge);
    let n = flows.len() as u64;
    let delta = stats_until(&agent, &before, |d| d.dropped(DropReason::IcmpErrorUntracked) >= n);
    for flow in &flows {
        if let Some(e) = flow.client.take_error().expect("SO_ERROR") {
            panic!(
                "{}'s forged port unreachable reached v: {} failed with {e}",
                attacker.label, flow.what
            );
        }
    }
    assert!(
        delta.dropped(DropReason::IcmpErrorUntracked) >= n,
        "{}'s {n} forged port unreachables were not counted as icmp-error-untracked; counters since: {delta}",
        attacker.label
    );
    for flow in &flows {
        roundtrip(&flow.client, &sockets[flow.server])
            .unwrap_or_else(|e| panic!("{} after the forged errors: {e}", flow.what));
    }

    // The flows' own parties: the servers close their ports, and their port
    // unreachables reach v.
    sockets.clear();
    let before = agent.stats().expect("reading counters");
    for flow in &flows {
        flow.client
            .send(b"hostwall-ping")
            .unwrap_or_else(|e| panic!("{}: sending to the closed port: {e}", flow.what));
    }
    for flow in &flows {
        assert!(
            wait_refused(&flow.client, DEADLINE),
            "the server's own port unreachable did not reach v under hostwall: {}",
            flow.what
        );
    }
    let delta = agent.stats().expect("reading counters").since(&before);
    assert!(
        delta.passed(PassReason::Related) >= n,
        "the servers' port unreachables were not passed as related; counters since: {delta}"
    );
}

/// Sends a datagram from `client` that `server` echoes; the echo must come
/// back.
fn roundtrip(client: &UdpSocket, server: &UdpSocket) -> io::Result<()> {
    let msg = b"hostwall-ping";
    let mut buf = [0u8; 64];
    client.send(msg)?;
    server.set_read_timeout(Some(DEADLINE))?;
    let (n, peer) = server.recv_from(&mut buf)?;
    server.send_to(&buf[..n], peer)?;
    client.set_read_timeout(Some(DEADLINE))?;
    let n = client.recv(&mut buf)?;
    if &buf[..n] != msg {
        return Err(io::Error::other(format!("a wrong echo {:?}", &buf[..n])));
    }
    Ok(())
}

/// Whether `client`'s recv fails with ECONNREFUSED within `timeout`.
fn wait_refused(client: &UdpSocket, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64];
    client
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("setting a read timeout");
    loop {
        if let Err(e) = client.recv(&mut buf)
            && e.kind() == io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

// ---------------------------------------------------------------------------
// 3. Conntrack shares

#[test]
fn flood_takes_no_share_of_others_from_an_endpoint() {
    flood_takes_no_share_of_others(Origin::Endpoint);
}

#[test]
fn flood_takes_no_share_of_others_from_the_host() {
    flood_takes_no_share_of_others(Origin::Host);
}

#[test]
fn flood_takes_no_share_of_others_through_the_uplink() {
    flood_takes_no_share_of_others(Origin::Uplink);
}

/// `max_per_endpoint` and `max_inbound_per_endpoint` of the policy below.
const CAP: usize = 64;
/// New flows per victim: as many SYNs and bare ACKs from distinct ports.
const FLOOD: usize = 128;
/// Flows a budget may admit beyond its cap: its count is not atomic across
/// CPUs (README).
const SLACK: usize = 4;

/// The victims accept tcp/80 from the attacker (and the host) and may open
/// tcp/443 to s; attacker containers may open tcp/80 to the victims and
/// tcp/443 to s. Both budgets are `CAP`.
fn share_policy(lab: &Lab) -> String {
    let (peers, attackers, group, endpoints) = if lab.origin == Origin::Endpoint {
        (
            "{group: attacker}, host".to_string(),
            ", {group: attacker}",
            "  attacker:
    egress:
      - {proto: tcp, ports: 80, to: [{group: victim}]}
      - {proto: tcp, ports: 443, to: [{group: server}]}
",
            lab.endpoint("a", "attacker") + &lab.endpoint("b", "attacker"),
        )
    } else {
        (lab.outside_peer(), "", "", String::new())
    };
    let endpoints =
        lab.endpoint("v", "victim") + &lab.endpoint("w", "victim") + &lab.endpoint("s", "server") + &endpoints;
    format!(
        "version: 1
groups:
  victim:
    ingress:
      - {{proto: tcp, ports: 80, from: [{peers}]}}
    egress:
      - {{proto: tcp, ports: 443, to: [{{group: server}}]}}
      - {{proto: udp, ports: 9, to: [{{group: server}}]}}
  server:
    ingress:
      - {{proto: tcp, ports: 443, from: [{{group: victim}}{attackers}]}}
      - {{proto: udp, ports: 9, from: [{{group: victim}}]}}
{group}endpoints:
{endpoints}settings:
  conntrack: {{udp: 1s, max_per_endpoint: {CAP}, max_inbound_per_endpoint: {CAP}}}
"
    )
}

fn flood_takes_no_share_of_others(origin: Origin) {
    let names: &[(&str, u8)] = match origin {
        Origin::Endpoint => &[("v", 21), ("w", 22), ("s", 23), ("a", 11), ("b", 12)],
        _ => &[("v", 21), ("w", 22), ("s", 23)],
    };
    let lab = Lab::new(origin, names);
    let s = lab.container("s");
    // v is flooded over IPv4, w over IPv6: each victim's budget is its own.
    let victims = [lab.container("v"), lab.container("w")];
    let attackers = [lab.attacker("a"), lab.attacker("b")];
    let listeners = victims.map(|c| tcp_listen(c.ns(), 80));
    let server = tcp_listen(s.ns(), 443);
    let mut captures = victims.map(Capture::open);
    let flood = |f: usize, first_port: u16| {
        let (a, to) = (attackers[f].addrs[f], victims[f].addrs()[f]);
        let last = first_port + FLOOD as u16 - 1;
        attackers[f].send(
            victims[f],
            &format!("{} tcp {a} {to} {first_port}-{last} 80 S", family(a)),
        );
        let (first, last) = (first_port + 5000, last + 5000);
        attackers[f].send(victims[f], &format!("{} tcp {a} {to} {first}-{last} 80 A", family(a)));
    };
    let is_flood = |f: usize| {
        let (a, to) = (attackers[f].addrs[f], victims[f].addrs()[f]);
        move |s: &Seen| s.is_tcp_from(a, to, 80) && (s.flags == SYN || s.flags == ACK)
    };

    // Without hostwall the victims take every new flow. (A connection
    // first, so that the host has resolved the victims' addresses when it
    // forwards the flood from the uplink.)
    for f in 0..2 {
        let to = SocketAddr::new(victims[f].addrs()[f], 80);
        let conn = tcp_connect(attackers[f].ns, None, to, DEADLINE)
            .unwrap_or_else(|e| panic!("control: {} → {to}: {e}", attackers[f].label));
        accept_within(&listeners[f], DEADLINE).unwrap_or_else(|| panic!("control: {to} accepted nothing"));
        drop(conn);
    }
    let marks = captures.each_mut().map(|c| c.mark());
    for f in 0..2 {
        flood(f, 20000);
    }
    for f in 0..2 {
        let n = captures[f].wait_for(marks[f], is_flood(f), 2 * FLOOD, DEADLINE);
        assert_eq!(
            n,
            2 * FLOOD,
            "control: without hostwall, {} of {} flood packets from {} reached {}",
            n,
            2 * FLOOD,
            attackers[f].label,
            victims[f].name
        );
    }

    let agent = lab.start_agent(&share_policy(&lab));
    just_after_recount(&agent, victims[0], s);
    let before = agent.stats().expect("reading counters");
    let marks = captures.each_mut().map(|c| c.mark());
    for f in 0..2 {
        flood(f, 21000);
    }
    // Every flood packet reaches its victim or is dropped for a full budget.
    let total = 4 * FLOOD;
    let mut seen = [0; 2];
    let delta = stats_until(&agent, &before, |d| {
        for f in 0..2 {
            seen[f] = captures[f].count_since(marks[f], is_flood(f));
        }
        seen[0] + seen[1] + d.dropped(DropReason::ConntrackEndpointFull) as usize >= total
    });
    let full = delta.dropped(DropReason::ConntrackEndpointFull) as usize;
    assert_eq!(
        seen[0] + seen[1] + full,
        total,
        "of {total} flood packets, {seen:?} reached the victims and {full} were dropped as conntrack-endpoint-full; \
         counters since: {delta}"
    );
    for f in 0..2 {
        assert!(
            (CAP..=CAP + SLACK).contains(&seen[f]),
            "{} of {} new flows from {} reached {}, whose budget is {CAP}; counters since: {delta}",
            seen[f],
            2 * FLOOD,
            attackers[f].label,
            victims[f].name
        );
    }

    // The victims' own new connections, IPv4 and IPv6, get through.
    let before = agent.stats().expect("reading counters");
    for victim in victims {
        for to in s.addrs() {
            for _ in 0..4 {
                let to = SocketAddr::new(to, 443);
                let conn = tcp_connect(victim.ns(), None, to, DEADLINE).unwrap_or_else(|e| {
                    panic!("after the flood, {}'s own connection to {to} failed: {e}", victim.name)
                });
                accept_within(&server, DEADLINE)
                    .unwrap_or_else(|| panic!("after the flood, s accepted nothing from {}", victim.name));
                drop(conn);
            }
        }
    }
    let delta = agent.stats().expect("reading counters").since(&before);
    assert_eq!(
        delta.dropped(DropReason::ConntrackEndpointFull),
        0,
        "the victims' own connections met a full budget: {delta}"
    );

    // The budget the flood was charged to is full: its owner's next new
    // flow is dropped, everyone else's passes.
    let before = agent.stats().expect("reading counters");
    let results: Vec<io::Result<Socket>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|f| {
                let (ns, to) = match origin {
                    // The flooding containers' own shares.
                    Origin::Endpoint => (attackers[f].ns, SocketAddr::new(s.addrs()[f], 443)),
                    // The victims' inbound budgets.
                    _ => (attackers[f].ns, SocketAddr::new(victims[f].addrs()[f], 80)),
                };
                scope.spawn(move || tcp_connect(ns, None, to, DROPPED_CONNECT))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a connecting thread"))
            .collect()
    });
    for (f, result) in results.iter().enumerate() {
        let whose = match origin {
            Origin::Endpoint => format!("{}'s own new connection to s", attackers[f].label),
            _ => format!("{}'s new connection to {}", attackers[f].label, victims[f].name),
        };
        match result {
            Ok(_) => panic!("{whose} got through a full budget"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{whose} failed otherwise: {e}"),
        }
    }
    agent.assert_dropped_since(&before, DropReason::ConntrackEndpointFull, 2);
    // `hostwall stats` reports each table: the victims' flood in the
    // inbound one, the containers' in the one of flows endpoints opened.
    let stats: Value = serde_json::from_str(&agent.cli(&["--json", "stats"]).expect("hostwall stats"))
        .expect("hostwall stats --json prints JSON");
    let table = if origin == Origin::Endpoint {
        "conntrack"
    } else {
        "inbound"
    };
    let entries = stats[table]["entries"].as_u64().unwrap_or(0);
    assert!(
        entries >= 2 * CAP as u64,
        "hostwall stats shows {entries} entries in `{table}`, the flood made {}: {stats}",
        2 * CAP
    );
    if origin == Origin::Endpoint {
        // The flood cost its senders, not the victims: the host still gets
        // in.
        for f in 0..2 {
            let to = SocketAddr::new(victims[f].addrs()[f], 80);
            tcp_connect(lab.host.ns(), None, to, DEADLINE)
                .unwrap_or_else(|e| panic!("after the containers' flood, the host could not connect to {to}: {e}"));
            accept_within(&listeners[f], DEADLINE).unwrap_or_else(|| panic!("{to} accepted nothing from the host"));
        }
    }
}

/// Returns right after the agent's conntrack recount (every two seconds,
/// README): a recount while the flood runs may count some of its flows
/// twice (a count errs high until the next recount), which would cut the
/// flood short of the cap; a flood sent now cannot meet the next. Seen through an entry that
/// expires (a UDP datagram no one answers, `udp: 1s`): the recount is what
/// removes it.
fn just_after_recount(agent: &Agent, from: &Container, to: &Container) {
    let socket = udp_connect(from.ns(), from.v4.into(), SocketAddr::new(to.v4.into(), 9));
    socket.send(b"hostwall-recount").expect("sending the expiring datagram");
    let port = socket.local_addr().expect("local address").port();
    let listed = || {
        conntrack_flows(agent, &["--port", "9"])
            .iter()
            .any(|f| f["sport"] == port)
    };
    let deadline = Instant::now() + DEADLINE;
    while !listed() {
        assert!(Instant::now() < deadline, "the datagram to udp/9 made no entry");
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + 3 * DEADLINE;
    while listed() {
        assert!(
            Instant::now() < deadline,
            "the agent did not remove an expired entry within {:?}",
            3 * DEADLINE
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The test host

/// Where the attack comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A container, through its own endpoint interface.
    Endpoint,
    /// The host namespace, onto the bridge.
    Host,
    /// The other host, through the uplink (the agent runs its XDP filter).
    Uplink,
}

// ---------------------------------------------------------------------------
// 4. Flows carried over from layout 1

/// An agent of this build that finds the pins of layout 1 carries their
/// tracked flows over, each under its canonical key in the table it belongs
/// to (SECURITY.md 2, "older entries"): the flows go on in both directions
/// although no rule allows them any more, and the new checks hold for them
/// (a SYN against a carried flow opens nothing).
#[test]
fn flows_of_layout_1_are_carried_over_and_checked() {
    let lab = Lab::new(Origin::Host, &[("v", 21)]);
    let v = lab.container("v");
    let host = lab.host.addrs()[0];
    let vip = v.addrs()[0];
    // v has no rules: nothing passes but tracked flows.
    let policy = format!("version: 1\ngroups: {{}}\nendpoints:\n{}", lab.endpoint("v", ""));
    let mut agent = lab.start_agent(&policy);
    agent.stop().expect("stopping the agent");
    agent.uninstall().expect("removing this build's layout");

    // Layout 1's conntrack map, as that build left it: one table, each flow
    // under the tuple of the packet that made it.
    let maps = agent.bpffs().join("v1").join("maps");
    std::fs::create_dir_all(&maps).expect("creating layout 1's directory");
    let map = maps.join("HW_CONNTRACK");
    let map_path = map.to_str().expect("a UTF-8 path");
    run(Command::new("bpftool").args([
        "map",
        "create",
        map_path,
        "type",
        "lru_hash",
        "key",
        "40",
        "value",
        "24",
        "entries",
        "4096",
        "name",
        "HW_CONNTRACK",
    ]))
    .expect("creating layout 1's HW_CONNTRACK with bpftool");
    // CT_SEEN_REPLY = 1, CT_ORIG_LOCAL = 4, CT_REPLY_LOCAL = 8.
    let old = [
        // The host opened udp 5000 -> v:9000.
        (host, 5000, vip, 9000, 17u8, 1 | 8),
        // v opened udp 6000 -> the host's 7000.
        (vip, 6000, host, 7000, 17, 1 | 4),
        // The host opened tcp 8000 -> v:22.
        (host, 8000, vip, 22, 6, 1 | 8),
    ];
    let now = monotonic_ns();
    for (src, sport, dst, dport, proto, flags) in old {
        run(Command::new("bpftool")
            .args(["map", "update", "pinned", map_path, "key", "hex"])
            .args(ct_key_hex(src, sport, dst, dport, proto))
            .args(["value", "hex"])
            .args(ct_entry_hex(now, flags)))
        .expect("writing a layout 1 flow with bpftool");
    }

    agent.restart().expect("starting this build over layout 1");
    assert!(
        !agent.bpffs().join("v1").exists(),
        "layout 1 is still pinned after the upgrade"
    );
    let flows = conntrack_flows(&agent, &[]);
    let listed = |src: IpAddr, sport: u16, dst: IpAddr, dport: u16, table: &str| {
        flows.iter().any(|f| {
            f["src"].as_str() == Some(&src.to_string())
                && f["sport"].as_u64() == Some(sport.into())
                && f["dst"].as_str() == Some(&dst.to_string())
                && f["dport"].as_u64() == Some(dport.into())
                && f["table"].as_str() == Some(table)
        })
    };
    assert!(
        listed(host, 5000, vip, 9000, "inbound"),
        "the host's flow to v is not listed as opened towards v: {flows:?}"
    );
    assert!(
        listed(vip, 6000, host, 7000, "opened"),
        "v's flow to the host is not listed as opened by v: {flows:?}"
    );

    // Both carried UDP flows go on, both ways; the same ports otherwise
    // are denied.
    let v9000 = udp_bind(v.ns(), 9000);
    let h5000 = udp_connect(lab.host.ns(), host, SocketAddr::new(vip, 9000));
    let h5000_port = h5000.local_addr().expect("the host's socket").port();
    assert_ne!(h5000_port, 5000, "an ephemeral port for the denied control");
    let host5000 = in_netns(lab.host.ns(), || {
        let s = UdpSocket::bind(SocketAddr::new(host, 5000))?;
        s.connect(SocketAddr::new(vip, 9000))?;
        Ok(s)
    })
    .expect("the host's udp/5000");
    roundtrip(&host5000, &v9000).expect("the carried flow host:5000 -> v:9000 and its reply");
    let before = agent.stats().expect("reading counters");
    h5000.send(b"hostwall-ping").expect("sending from another port");
    let delta = stats_until(&agent, &before, |d| d.dropped(DropReason::IngressDenied) >= 1);
    assert!(
        delta.dropped(DropReason::IngressDenied) >= 1,
        "control: the host's datagram from another port was not denied; counters since: {delta}"
    );
    let h7000 = udp_bind(lab.host.ns(), 7000);
    let v6000 = in_netns(v.ns(), || {
        let s = UdpSocket::bind(SocketAddr::new(vip, 6000))?;
        s.connect(SocketAddr::new(host, 7000))?;
        Ok(s)
    })
    .expect("v's udp/6000");
    roundtrip(&v6000, &h7000).expect("the carried flow v:6000 -> host:7000 and its reply");

    // v's SYN against the host's carried TCP flow opens nothing; its ACK
    // is a reply.
    let attacker = Attacker {
        label: "v".into(),
        ns: v.ns(),
        iface: "eth0",
        addrs: v.addrs(),
        gateway_mac: Some(mac_of(lab.host.ns(), BRIDGE)),
    };
    let before = agent.stats().expect("reading counters");
    attacker.send(v, &format!("ipv4 tcp {vip} {host} 22 8000 S"));
    let delta = stats_until(&agent, &before, |d| d.dropped(DropReason::EgressDenied) >= 1);
    assert!(
        delta.dropped(DropReason::EgressDenied) >= 1,
        "v's SYN against the carried flow was not judged by v's egress; counters since: {delta}"
    );
    let before = agent.stats().expect("reading counters");
    attacker.send(v, &format!("ipv4 tcp {vip} {host} 22 8000 A"));
    let delta = stats_until(&agent, &before, |d| d.passed(PassReason::Reply) >= 1);
    assert!(
        delta.passed(PassReason::Reply) >= 1,
        "v's ACK on the carried flow did not pass as a reply; counters since: {delta}"
    );
}

/// Layout 1's `CtKey` as bpftool's hex bytes (native byte order).
fn ct_key_hex(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> Vec<String> {
    let addr = |a: IpAddr| -> [u8; 16] {
        match a {
            IpAddr::V4(v4) => {
                let mut b = [0; 16];
                b[..4].copy_from_slice(&v4.octets());
                b
            }
            IpAddr::V6(v6) => v6.octets(),
        }
    };
    let mut k = Vec::with_capacity(40);
    k.extend_from_slice(&addr(src));
    k.extend_from_slice(&addr(dst));
    k.extend_from_slice(&sport.to_ne_bytes());
    k.extend_from_slice(&dport.to_ne_bytes());
    k.extend_from_slice(&[proto, if src.is_ipv4() { 4 } else { 6 }, 0, 0]);
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// Layout 1's `CtEntry`: seen at `last_seen_ns`, with `flags`, no rules,
/// no owner.
fn ct_entry_hex(last_seen_ns: u64, flags: u32) -> Vec<String> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&last_seen_ns.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&[0; 12]);
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// `CLOCK_MONOTONIC` in ns, the programs' clock.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

const FAMILY: [&str; 2] = ["IPv4", "IPv6"];

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "ipv4" } else { "ipv6" }
}

/// A host on subnets of its own (10.93.0.0/24, fd00:93::/64 on the bridge;
/// 198.18.93.0/24, 2001:db8:93::/64 on the uplink), its containers, and the
/// remote host when the attack comes through the uplink. Fields drop in
/// order: the containers and the remote before the host.
struct Lab {
    origin: Origin,
    containers: Vec<Container>,
    remote: Option<Remote>,
    host: Host,
}

impl Lab {
    /// Containers `hw-NAME` at `.N` of the bridge subnet.
    fn new(origin: Origin, containers: &[(&str, u8)]) -> Lab {
        let host = Host::builder(&bins())
            .bridge(Subnet::new([10, 93, 0], "fd00:93::"))
            .uplink(Subnet::new([198, 18, 93], "2001:db8:93::"))
            .build()
            .expect("building the host namespace");
        let containers = containers
            .iter()
            .map(|(name, n)| {
                host.add_container(name, &format!("hw-{name}"), *n)
                    .unwrap_or_else(|e| panic!("adding container {name}: {e:#}"))
            })
            .collect();
        let remote = (origin == Origin::Uplink).then(|| host.add_remote().expect("adding the remote host"));
        Lab {
            origin,
            containers,
            remote,
            host,
        }
    }

    fn container(&self, name: &str) -> &Container {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    /// A line of the control file's `endpoints`.
    fn endpoint(&self, name: &str, groups: &str) -> String {
        let c = self.container(name);
        format!(
            "  - {{name: {name}, interface: {}, addresses: [\"{}\", \"{}\"], groups: [{groups}]}}\n",
            c.iface, c.v4, c.v6
        )
    }

    /// The rule peers that name an attacker outside the containers.
    fn outside_peer(&self) -> String {
        match self.origin {
            Origin::Host => "host".to_string(),
            Origin::Uplink => {
                let net = self.host.uplink_subnet();
                format!("{{cidr: {}}}, {{cidr: \"{}\"}}", net.v4_cidr(), net.v6_cidr())
            }
            Origin::Endpoint => panic!("the attacker is a container"),
        }
    }

    /// The agent on `policy`, with the uplink's filter when there is an
    /// uplink.
    fn start_agent(&self, policy: &str) -> Agent {
        let opts = AgentOptions {
            uplink: self.remote.as_ref().map(|_| UPLINK.to_string()),
            ..Default::default()
        };
        Agent::start_with(&self.host, policy, &opts).expect("starting the agent")
    }

    /// The attacker: container `name`, the host or the remote host.
    fn attacker(&self, name: &str) -> Attacker<'_> {
        match self.origin {
            Origin::Endpoint => {
                let c = self.container(name);
                Attacker {
                    label: c.name.clone(),
                    ns: c.ns(),
                    iface: "eth0",
                    addrs: c.addrs(),
                    gateway_mac: None,
                }
            }
            Origin::Host => Attacker {
                label: "the host".into(),
                ns: self.host.ns(),
                iface: BRIDGE,
                addrs: self.host.addrs(),
                gateway_mac: None,
            },
            Origin::Uplink => {
                let remote = self.remote.as_ref().expect("a remote host");
                Attacker {
                    label: "the remote host".into(),
                    ns: remote.ns(),
                    iface: "eth0",
                    addrs: remote.addrs(),
                    gateway_mac: Some(mac_of(self.host.ns(), UPLINK)),
                }
            }
        }
    }

    /// IPv4 and IPv6 datagrams the host namespace has forwarded (packets
    /// the uplink's XDP filter drops never count here).
    fn forwarded(&self) -> u64 {
        self.host.snmp("Ip", "ForwDatagrams").expect("reading Ip:ForwDatagrams")
            + self
                .host
                .snmp("Ip6", "OutForwDatagrams")
                .expect("reading Ip6OutForwDatagrams")
    }
}

/// Who sends the attack, and from where onto the wire.
struct Attacker<'a> {
    label: String,
    ns: &'a Netns,
    iface: &'static str,
    /// IPv4, IPv6.
    addrs: [IpAddr; 2],
    /// The next hop's MAC when the victim is not on the same link.
    gateway_mac: Option<String>,
}

impl Attacker<'_> {
    /// Sends the frames `hostwall-send` builds from `packet` towards
    /// `victim`.
    fn send(&self, victim: &Container, packet: &str) {
        let mac = match &self.gateway_mac {
            Some(mac) => mac.clone(),
            None => mac_of(victim.ns(), "eth0"),
        };
        let sender = sender().to_str().expect("a UTF-8 path");
        let mut cmd = self.ns.command(sender);
        cmd.args(["--iface", self.iface, "--dst-mac", &mac])
            .args(packet.split_whitespace());
        run(&mut cmd).unwrap_or_else(|e| panic!("{} sending `{packet}`: {e:#}", self.label));
    }
}

fn sender() -> &'static Path {
    static SENDER: OnceLock<PathBuf> = OnceLock::new();
    SENDER.get_or_init(|| {
        locate_sender(Some(Path::new(env!("CARGO_BIN_EXE_hostwall-send")))).expect("locating hostwall-send")
    })
}

fn mac_of(ns: &Netns, iface: &str) -> String {
    ns.exec(&["cat", &format!("/sys/class/net/{iface}/address")])
        .unwrap_or_else(|e| panic!("reading the MAC address of {iface}: {e:#}"))
        .trim()
        .to_string()
}

/// `hostwall conntrack list --json` with `filters`.
fn conntrack_flows(agent: &Agent, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["--json", "conntrack", "list"];
    args.extend_from_slice(filters);
    let out = agent.cli(&args).expect("listing tracked flows");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("conntrack list printed no JSON ({e}): {out}"));
    v["flows"].as_array().cloned().unwrap_or_default()
}

/// Whether a listed flow runs between these two ends, either way.
fn is_flow(flow: &Value, a: (IpAddr, u16), b: (IpAddr, u16)) -> bool {
    let end = |addr: &str, port: &str| -> Option<(IpAddr, u16)> {
        Some((flow[addr].as_str()?.parse().ok()?, flow[port].as_u64()? as u16))
    };
    let (src, dst) = (end("src", "sport"), end("dst", "dport"));
    (src == Some(a) && dst == Some(b)) || (src == Some(b) && dst == Some(a))
}

/// Polls the counters since `before` until `done` holds or [`DEADLINE`]
/// passes; returns the last reading.
fn stats_until(agent: &Agent, before: &Stats, mut done: impl FnMut(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let delta = agent.stats().expect("reading counters").since(before);
        if done(&delta) || Instant::now() >= deadline {
            return delta;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Sockets inside the namespaces

/// A non-blocking TCP listener on `[::]:port` (IPv4 too).
fn tcp_listen(ns: &Netns, port: u16) -> Socket {
    in_netns(ns, || {
        let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port).into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .unwrap_or_else(|e| panic!("listening on tcp/{port} in {}: {e}", ns.name()))
}

/// A connection `listener` accepts within `timeout`, and its peer.
fn accept_within(listener: &Socket, timeout: Duration) -> Option<(Socket, SocketAddr)> {
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((conn, peer)) => return Some((conn, canonical(&peer))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn canonical(addr: &SockAddr) -> SocketAddr {
    let a = addr.as_socket().expect("an IP socket address");
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// A TCP connection from `ns` to `to`, from `local` if given (even when
/// another socket has that port), within `timeout`.
fn tcp_connect(ns: &Netns, local: Option<SocketAddr>, to: SocketAddr, timeout: Duration) -> io::Result<Socket> {
    in_netns(ns, || {
        let s = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
        if let Some(local) = local {
            s.set_reuse_address(true)?;
            s.bind(&local.into())?;
        }
        s.connect_timeout(&to.into(), timeout)?;
        Ok(s)
    })
}

/// A UDP socket from `local` (any port) connected to `to`.
fn udp_connect(ns: &Netns, local: IpAddr, to: SocketAddr) -> UdpSocket {
    in_netns(ns, || {
        let s = UdpSocket::bind(SocketAddr::new(local, 0))?;
        s.connect(to)?;
        Ok(s)
    })
    .unwrap_or_else(|e| panic!("a UDP socket {local} → {to} in {}: {e}", ns.name()))
}

// ---------------------------------------------------------------------------
// Capture

/// `sll_pkttype` of a frame the interface sent.
const PACKET_OUTGOING: u8 = 4;

/// What a capture saw of one received frame.
#[derive(Clone, Copy, Debug)]
struct Seen {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    /// TCP flags.
    flags: u8,
}

impl Seen {
    fn parse(frame: &[u8]) -> Option<Seen> {
        let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
        let ip = frame.get(14..)?;
        let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match ethertype {
            0x0800 => {
                let ihl = (*ip.first()? & 0x0f) as usize * 4;
                let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
                let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
                (src.into(), dst.into(), *ip.get(9)?, ip.get(ihl..)?)
            }
            0x86dd => {
                let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
                let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
                (src.into(), dst.into(), *ip.get(6)?, ip.get(40..)?)
            }
            _ => return None,
        };
        let port = |at: usize| l4.get(at..at + 2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        Some(Seen {
            src,
            dst,
            proto,
            sport: port(0),
            dport: port(2),
            flags: if proto == TCP {
                l4.get(13).copied().unwrap_or(0)
            } else {
                0
            },
        })
    }

    /// A TCP segment `src → dst:dport`.
    fn is_tcp_from(&self, src: IpAddr, dst: IpAddr, dport: u16) -> bool {
        self.proto == TCP && self.src == src && self.dst == dst && self.dport == dport
    }

    /// A TCP segment `src:sport → dst:dport` with exactly `flags`.
    fn is_tcp(&self, src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> bool {
        self.is_tcp_from(src, dst, dport) && self.sport == sport && self.flags == flags
    }
}

/// Every frame a container's eth0 receives from the moment it is opened:
/// an AF_PACKET socket inside the container's namespace.
struct Capture {
    fd: OwnedFd,
    seen: Vec<Seen>,
}

impl Capture {
    fn open(c: &Container) -> Capture {
        let fd = in_netns(c.ns(), || {
            // Protocol 0 until bound: nothing is queued from other
            // interfaces meanwhile.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // Room for every frame of a flood between two reads.
            let bytes: libc::c_int = 16 << 20;
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&bytes as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            addr.sll_ifindex = ifindex as i32;
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(fd)
        })
        .unwrap_or_else(|e| panic!("capturing on {}'s eth0: {e}", c.name));
        Capture { fd, seen: Vec::new() }
    }

    /// Reads what arrived since the last read.
    fn drain(&mut self) {
        let mut buf = [0u8; 2048];
        loop {
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "reading the capture: {e}");
                return;
            }
            if from.sll_pkttype == PACKET_OUTGOING {
                continue;
            }
            if let Some(seen) = Seen::parse(&buf[..n as usize]) {
                self.seen.push(seen);
            }
        }
    }

    /// A point to count from.
    fn mark(&mut self) -> usize {
        self.drain();
        self.seen.len()
    }

    /// Frames since `mark` that match.
    fn count_since(&mut self, mark: usize, matches: impl Fn(&Seen) -> bool) -> usize {
        self.drain();
        self.seen[mark..].iter().filter(|s| matches(s)).count()
    }

    /// Waits up to `timeout` for `at_least` matching frames since `mark`;
    /// returns how many there were.
    fn wait_for(&mut self, mark: usize, matches: impl Fn(&Seen) -> bool, at_least: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.count_since(mark, &matches);
            if n >= at_least || Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
