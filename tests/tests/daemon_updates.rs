//! Policy updates under traffic: a hundred updates in a row, between a
//! policy of a few entries and one of thousands more, neither cut an
//! allowed flow nor open, even for one packet, a path that both the old
//! and the new policy deny; a removed rule stops new connections while
//! established ones continue (`keep`) or end (`revalidate`).

mod common;

use std::net::{IpAddr, SocketAddr};

use common::bins;
use common::daemon::{DEADLINE, flows, poll, rule_id, wait_for};
use hostwall_tests::{
    Agent, Check, DropReason, Expect, Host, Node, Outcome, Probe, ProbeOptions, TcpStreamer, UdpSeqSender,
    assert_checks, seq_gaps,
};

const STREAM_TCP: u16 = 7000;
const STREAM_UDP: u16 = 7001;
/// X: s → r, allowed in A only. Y: r → s, allowed in B only.
const X_PORT: u16 = 8080;
const Y_PORT: u16 = 8081;
/// Z: z1 → z2, denied in A (z2's ingress) and in B (z1's egress); allowed
/// by any mix of A's egress and B's ingress.
const Z_PORT: u16 = 9000;

const ENDPOINTS: &str = r#"
endpoints:
  - {name: s, interface: hw-s, addresses: ["10.77.0.11", "fd00:77::11"], groups: [sender]}
  - {name: r, interface: hw-r, addresses: ["10.77.0.12", "fd00:77::12"], groups: [receiver]}
  - {name: z1, interface: hw-z1, addresses: ["10.77.0.13", "fd00:77::13"], groups: [zs]}
  - {name: z2, interface: hw-z2, addresses: ["10.77.0.14", "fd00:77::14"], groups: [zr]}
"#;

fn policy_a() -> String {
    format!(
        r#"version: 1
groups:
  sender:
    egress:
      - {{proto: tcp, ports: {STREAM_TCP}, to: [{{group: receiver}}]}}
      - {{proto: udp, ports: {STREAM_UDP}, to: [{{group: receiver}}]}}
      - {{proto: udp, ports: {X_PORT}, to: [{{group: receiver}}]}}
  receiver:
    ingress:
      - {{proto: tcp, ports: {STREAM_TCP}, from: [{{group: sender}}]}}
      - {{proto: udp, ports: {STREAM_UDP}, from: [{{group: sender}}]}}
      - {{proto: udp, ports: {X_PORT}, from: [{{group: sender}}]}}
  zs:
    egress:
      - {{proto: udp, ports: {Z_PORT}, to: [{{group: zr}}]}}
  zr: {{}}
{ENDPOINTS}"#
    )
}

/// Rules of a group only s holds in policy B, on ports no probe uses: B's
/// maps hold thousands of entries more than A's, broad peers among them,
/// so that every other update grows them and every other one shrinks them.
fn bulk_rules() -> String {
    const PEERS: [&str; 4] = ["0.0.0.0/0", "10.0.0.0/8", "::/0", "192.0.2.0/24"];
    (0..3_000)
        .map(|i| {
            format!(
                "      - {{proto: tcp, ports: \"{}-{}\", to: [{{cidr: \"{}\"}}]}}\n",
                20_000 + i * 10,
                20_000 + i * 10 + 5,
                PEERS[i % PEERS.len()]
            )
        })
        .collect()
}

fn policy_b() -> String {
    let endpoints = ENDPOINTS.replace("groups: [sender]}", "groups: [sender, bulk]}");
    format!(
        r#"version: 1
groups:
  bulk:
    egress:
{bulk}
  sender:
    egress:
      - {{proto: tcp, ports: {STREAM_TCP}, to: [{{group: receiver}}]}}
      - {{proto: udp, ports: {STREAM_UDP}, to: [{{group: receiver}}]}}
    ingress:
      - {{proto: udp, ports: {Y_PORT}, from: [{{group: receiver}}]}}
  receiver:
    ingress:
      - {{proto: tcp, ports: {STREAM_TCP}, from: [{{group: sender}}]}}
      - {{proto: udp, ports: {STREAM_UDP}, from: [{{group: sender}}]}}
    egress:
      - {{proto: udp, ports: {Y_PORT}, to: [{{group: sender}}]}}
  zs: {{}}
  zr:
    ingress:
      - {{proto: udp, ports: {Z_PORT}, from: [{{group: zs}}]}}
{endpoints}"#,
        bulk = bulk_rules()
    )
}

/// The streams run over IPv4.
fn v4(c: &hostwall_tests::Container) -> IpAddr {
    c.v4.into()
}

/// The containers of `ENDPOINTS`: s, r, z1, z2.
fn endpoints(host: &Host) -> [hostwall_tests::Container; 4] {
    [("s", 11), ("r", 12), ("z1", 13), ("z2", 14)].map(|(name, n)| {
        host.add_container(name, &format!("hw-{name}"), n)
            .unwrap_or_else(|e| panic!("adding container {name}: {e:#}"))
    })
}

/// What the denied Z datagrams show once the senders stopped: none reached
/// z2 (beyond the `control_seen` sent without the agent), and every drop
/// since `before` is one of Z's (none belongs to an allowed stream).
/// Findings go to `failures`; returns the counters since `before`.
fn denied_findings(
    agent: &Agent,
    before: &hostwall_tests::Stats,
    z2_server: &hostwall_tests::Server,
    control_seen: usize,
    z_sent: u64,
    failures: &mut Vec<String>,
) -> hostwall_tests::Stats {
    let z_seen = z2_server.seqs(Z_PORT).len() - control_seen;
    if z_seen != 0 {
        failures.push(format!("{z_seen} of {z_sent} denied Z datagrams reached z2"));
    }
    let delta = poll(DEADLINE, || {
        let d = agent.stats().expect("reading counters").since(before);
        (d.drops.values().sum::<u64>() >= z_sent, d)
    });
    let dropped: u64 = delta.drops.values().sum();
    if dropped != z_sent {
        failures.push(format!(
            "{z_sent} Z datagrams were sent and nothing else should have been dropped, but {dropped} packets were"
        ));
    }
    delta
}

#[test]
fn hundred_updates_neither_cut_allowed_flows_nor_open_denied_ones() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let [s, r, z1, z2] = endpoints(&host);
    let r_server = r
        .serve_specs(&[
            &format!("tcpecho:{STREAM_TCP}"),
            &format!("udpseq:{STREAM_UDP}"),
            &format!("udp:{X_PORT}"),
        ])
        .expect("servers in r");
    let _s_server = s.serve(&[], &[Y_PORT]).expect("server in s");
    let z2_server = z2.serve_specs(&[&format!("udpseq:{Z_PORT}")]).expect("server in z2");
    let z_dst = SocketAddr::new(v4(&z2), Z_PORT);

    // Control: without the agent, Z's datagrams arrive, so an empty
    // receiver later means they were dropped.
    let z = UdpSeqSender::start(&z1, z_dst, 200).expect("starting the control Z sender");
    let seen = wait_for("the control Z datagrams arrive", DEADLINE, || {
        let n = z2_server.seqs(Z_PORT).len();
        (n >= 20).then_some(n)
    });
    let sent = z.finish().expect("stopping the control Z sender");
    assert!(seen > 0 && sent > 0);
    let control_seen = z2_server.wait_for_seqs(Z_PORT, sent as usize, DEADLINE).len();

    let agent = Agent::start(&host, &policy_a()).expect("starting the agent on policy A");
    let file_a = agent.scratch_path("a.yaml").expect("scratch path");
    let file_b = agent.scratch_path("b.yaml").expect("scratch path");
    std::fs::write(&file_a, policy_a()).expect("writing policy A");
    std::fs::write(&file_b, policy_b()).expect("writing policy B");
    let apply = |file: &std::path::Path| {
        agent
            .cli(&["apply", file.to_str().expect("utf-8 path")])
            .unwrap_or_else(|e| panic!("hostwall apply {}: {e:#}", file.display()))
    };

    // What A and B each allow, checked once with traffic.
    let x_allowed = |allowed: bool| {
        let c = Check::allowed(&s, Probe::Udp(X_PORT), r.v4).labelled("r (X)");
        if allowed { c } else { c.expecting(Expect::Denied) }
    };
    let y_allowed = |allowed: bool| {
        let c = Check::allowed(&r, Probe::Udp(Y_PORT), s.v4).labelled("s (Y)");
        if allowed { c } else { c.expecting(Expect::Denied) }
    };
    // Entries of the policy tries: by group (HW_POLICY) and by CIDR.
    let policy_entries = || {
        let status = agent.status().expect("status");
        ["HW_POLICY", "HW_CIDR4", "HW_CIDR6"]
            .iter()
            .map(|name| {
                status["maps"]
                    .as_array()
                    .and_then(|maps| maps.iter().find(|m| m["map"] == *name))
                    .and_then(|m| m["entries"].as_u64())
                    .unwrap_or_else(|| panic!("no {name} entries in status: {status}"))
            })
            .sum::<u64>()
    };
    assert_checks("policy A", &[x_allowed(true), y_allowed(false)]);
    let hash_a = agent.policy_hash().expect("status");
    let entries_a = policy_entries();
    apply(&file_b);
    assert_checks("policy B", &[x_allowed(false), y_allowed(true)]);
    let entries_b = policy_entries();
    assert!(
        entries_a < 100 && entries_b > 3_000,
        "policy B is the larger by thousands of entries: A {entries_a}, B {entries_b}"
    );
    let hash_b = agent.policy_hash().expect("status");
    assert_ne!(hash_a, hash_b, "policies A and B have the same hash");
    apply(&file_a);
    let generation_before = agent.status().expect("status")["policy"]["generation"]
        .as_u64()
        .expect("a generation");

    let before = agent.stats().expect("reading counters");
    let mut tcp = TcpStreamer::start(&s, SocketAddr::new(v4(&r), STREAM_TCP)).expect("starting the TCP stream");
    let udp = UdpSeqSender::start(&s, SocketAddr::new(v4(&r), STREAM_UDP), 50).expect("starting the UDP stream");
    let z = UdpSeqSender::start(&z1, z_dst, 200).expect("starting the Z sender");
    tcp.assert_flowing(16 * 1024, "before the updates");

    for i in 0..100 {
        // B first: after an even number of updates A is enforced again.
        apply(if i % 2 == 0 { &file_b } else { &file_a });
        if let Some(how) = tcp.broken() {
            panic!("the TCP stream broke during update {}: {how}", i + 1);
        }
    }
    tcp.assert_flowing(16 * 1024, "after the updates");
    let status = agent.status().expect("status");
    assert_eq!(
        status["policy"]["generation"].as_u64(),
        Some(generation_before + 100),
        "100 updates were applied: {status}"
    );
    assert_eq!(
        status["policy"]["hash"].as_str(),
        Some(hash_a.as_str()),
        "policy A is enforced at the end"
    );
    let tracked = flows(&agent, &["--port", &STREAM_UDP.to_string(), "--proto", "udp"]);
    assert_eq!(tracked.len(), 1, "the UDP stream is one tracked flow: {tracked:?}");

    let z_sent = z.finish().expect("stopping the Z sender");
    let udp_sent = udp.finish().expect("stopping the UDP stream");
    let tcp_bytes = tcp
        .finish()
        .expect("the TCP stream went both ways, complete and in order");
    assert!(tcp_bytes > 0);

    // Every finding is collected, so one run tells everything that went
    // wrong.
    let mut failures = Vec::new();
    let received = r_server.wait_for_seqs(STREAM_UDP, udp_sent as usize, DEADLINE);
    if let Some(gaps) = seq_gaps(&received, udp_sent) {
        failures.push(format!(
            "the allowed UDP stream lost datagrams across the updates: {gaps}"
        ));
    }
    let delta = denied_findings(&agent, &before, &z2_server, control_seen, z_sent, &mut failures);
    // Z was judged under both policies: the updates happened under traffic.
    if delta.dropped(DropReason::EgressDenied) == 0 || delta.dropped(DropReason::IngressDenied) == 0 {
        failures.push("Z's datagrams were not judged under both policies".to_string());
    }
    // The stream's rules survived every update with their counters, and
    // counted each datagram once.
    for (group, direction) in [("sender", "egress"), ("receiver", "ingress")] {
        if delta.rule(group, direction, 1) != Some(udp_sent) {
            failures.push(format!(
                "rule {group}/{direction}[1] (udp {STREAM_UDP}) should have counted the {udp_sent} datagrams"
            ));
        }
        if delta.rule(group, direction, 0).unwrap_or(0) == 0 {
            failures.push(format!(
                "rule {group}/{direction}[0] (tcp {STREAM_TCP}) counted nothing"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\ncounters since the streams started: {delta}",
        failures.join("\n")
    );
}

const REMOVAL_POLICY: &str = r#"
version: 1
groups:
  client:
    egress:
      - {proto: tcp, ports: 8080, to: [{group: server}]}
      - {proto: udp, ports: 8053, to: [{group: server}]}
  server:
    ingress:
      - {proto: tcp, ports: 8080, from: [{group: client}]}
      - {proto: udp, ports: 8053, from: [{group: client}]}
endpoints:
  - {name: a, interface: hw-a, addresses: ["10.77.0.11", "fd00:77::11"], groups: [client]}
  - {name: b, interface: hw-b, addresses: ["10.77.0.12", "fd00:77::12"], groups: [server]}
"#;

/// A host with client a and server b, b serving a TCP echo on 8080 and a
/// UDP sequence receiver on 8053, under `policy`.
fn removal_setup(
    policy: &str,
) -> (
    Agent,
    hostwall_tests::Server,
    hostwall_tests::Container,
    hostwall_tests::Container,
    Host,
) {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let a = host.add_container("a", "hw-a", 11).expect("adding a");
    let b = host.add_container("b", "hw-b", 12).expect("adding b");
    let server = b.serve_specs(&["tcpecho:8080", "udpseq:8053"]).expect("servers in b");
    let agent = Agent::start(&host, policy).expect("starting the agent");
    (agent, server, a, b, host)
}

/// Removes a's two egress rules by id.
fn remove_client_rules(agent: &Agent) {
    let ids = [
        rule_id(agent, "client", "egress", 0),
        rule_id(agent, "client", "egress", 1),
    ];
    for id in ids {
        agent
            .cli(&["rule", "remove", "--id", &id.to_string()])
            .unwrap_or_else(|e| panic!("hostwall rule remove --id {id}: {e:#}"));
    }
}

/// Polls new TCP connections from a to b:8080 until one times out.
fn wait_new_connections_refused(a: &hostwall_tests::Container, b: &hostwall_tests::Container) {
    let opts = ProbeOptions {
        timeout: Some(std::time::Duration::from_millis(1000)),
        ..Default::default()
    };
    wait_for("new connections a → b tcp/8080 are dropped", DEADLINE, || {
        match a.probe(Probe::Tcp(8080), b.v4.into(), &opts) {
            Ok(Outcome::TimedOut) => Some(()),
            Ok(Outcome::Echoed) => None,
            Ok(other) => panic!("a → b tcp/8080: unexpected {other}"),
            Err(e) => panic!("a → b tcp/8080: {e:#}"),
        }
    });
}

#[test]
fn removed_rule_refuses_new_connections_and_keeps_established_ones() {
    let (agent, server, a, b, _host) = removal_setup(REMOVAL_POLICY);
    let mut tcp = TcpStreamer::start(&a, SocketAddr::new(b.v4.into(), 8080)).expect("starting the TCP stream");
    let udp = UdpSeqSender::start(&a, SocketAddr::new(b.v4.into(), 8053), 50).expect("starting the UDP stream");
    tcp.assert_flowing(16 * 1024, "before the removal");
    assert_checks(
        "before the removal",
        &[Check::allowed(&a, Probe::Tcp(8080), b.v4).labelled("b")],
    );

    remove_client_rules(&agent);
    wait_new_connections_refused(&a, &b);
    tcp.assert_flowing(16 * 1024, "after the removal (keep)");

    let sent = udp.finish().expect("stopping the UDP stream");
    tcp.finish()
        .expect("the established TCP connection continued after its rule was removed");
    let received = server.wait_for_seqs(8053, sent as usize, DEADLINE);
    if let Some(gaps) = seq_gaps(&received, sent) {
        panic!("the established UDP flow was cut when its rule was removed (on_policy_change: keep): {gaps}");
    }
}

#[test]
fn removed_rule_ends_established_flows_with_revalidate() {
    // A third rule, by CIDR, that keeps a's IPv6 connections to b allowed.
    let policy = format!("{REMOVAL_POLICY}settings:\n  on_policy_change: revalidate\n").replacen(
        "      - {proto: udp, ports: 8053, to: [{group: server}]}\n",
        "      - {proto: udp, ports: 8053, to: [{group: server}]}\n      - {proto: tcp, ports: 8080, to: [{cidr: \"fd00:77::/64\"}]}\n",
        1,
    );
    let (agent, server, a, b, _host) = removal_setup(&policy);
    let mut tcp = TcpStreamer::start(&a, SocketAddr::new(b.v4.into(), 8080)).expect("starting the TCP stream");
    let mut kept = TcpStreamer::start(&a, SocketAddr::new(b.v6.into(), 8080)).expect("starting the IPv6 TCP stream");
    kept.assert_flowing(16 * 1024, "before the removal (IPv6)");
    let udp = UdpSeqSender::start(&a, SocketAddr::new(b.v4.into(), 8053), 50).expect("starting the UDP stream");
    tcp.assert_flowing(16 * 1024, "before the removal");
    server.wait_for_seqs(8053, 10, DEADLINE);
    assert_eq!(
        flows(&agent, &["--addr", &a.v4.to_string()]).len(),
        2,
        "both flows are tracked"
    );

    let kept_before = flows(&agent, &["--addr", &a.v6.to_string()]);
    let before = agent.stats().expect("reading counters");
    remove_client_rules(&agent);
    // Revalidation ran before the update returned, and nothing the rules
    // deny is tracked again.
    let left = flows(&agent, &["--addr", &a.v4.to_string()]);
    assert!(
        left.is_empty(),
        "flows the new policy denies are still tracked: {left:?}"
    );
    // The flow a remaining rule allows is still tracked under the entry
    // its SYN made (one ended and taken up again would name the rule that
    // took it up), and flows.
    let kept_flows = flows(&agent, &["--addr", &a.v6.to_string()]);
    assert!(
        kept_flows.len() == 1 && kept_flows[0]["rule_egress"] == kept_before[0]["rule_egress"],
        "the IPv6 flow the CIDR rule allows was not kept: {kept_flows:?}, before {kept_before:?}"
    );
    kept.assert_flowing(16 * 1024, "after the removal (IPv6, allowed by the CIDR rule)");

    // The flows' next packets are dropped.
    wait_for("the ended flows' packets are dropped", DEADLINE, || {
        let d = agent.stats().expect("reading counters").since(&before);
        (d.dropped(DropReason::EgressDenied) >= 20).then_some(())
    });
    let stalled = tcp.progress().echoed;
    wait_for("more of the ended flows' packets are dropped", DEADLINE, || {
        let d = agent.stats().expect("reading counters").since(&before);
        (d.dropped(DropReason::EgressDenied) >= 40).then_some(())
    });
    assert_eq!(
        tcp.progress().echoed,
        stalled,
        "bytes still came back on a TCP connection the new policy ended"
    );
    let sent = udp.finish().expect("stopping the UDP stream");
    let received = server.seqs(8053);
    let k = received.len() as u64;
    assert!(k < sent, "every datagram arrived although the flow was ended");
    // Judged in order: what arrived is exactly the datagrams before the end.
    if let Some(gaps) = seq_gaps(&received, k) {
        panic!("the UDP flow did not end at one point: {gaps}");
    }
    wait_new_connections_refused(&a, &b);
    kept.finish()
        .expect("the IPv6 connection a remaining rule allows continued through revalidation");
}

/// Policy A with what outgrows the maps an agent sized for A: a group of
/// 3,000 rules for s (rule slots), 300 more addresses for z1 (the
/// anti-spoofing and local-address maps) and 100 more local endpoints,
/// whose interfaces do not exist yet (the interface maps). What the probes
/// meet is A's.
fn policy_grown() -> String {
    let extra: String = (0..300)
        .map(|i| format!(", \"10.78.{}.{}\"", i / 200, i % 200 + 1))
        .collect();
    let absent: String = (0..100)
        .map(|i| {
            format!(
                "  - {{name: later{i}, interface: hw-later{i}, addresses: [\"10.79.0.{}\"], groups: [zr]}}\n",
                i + 1
            )
        })
        .collect();
    let endpoints = ENDPOINTS
        .replace("groups: [sender]}", "groups: [sender, bulk]}")
        .replace("\"fd00:77::13\"]", &format!("\"fd00:77::13\"{extra}]"))
        + &absent;
    let a = policy_a();
    let groups = &a[..a.find("\nendpoints:").expect("policy A lists endpoints")];
    format!("{groups}\n  bulk:\n    egress:\n{}{endpoints}", bulk_rules())
}

/// The capacity `status` reports for `map`.
fn capacity(agent: &Agent, map: &str) -> u64 {
    let status = agent.status().expect("status");
    status["maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["map"] == map))
        .and_then(|m| m["capacity"].as_u64())
        .unwrap_or_else(|| panic!("no {map} capacity in status: {status}"))
}

/// A policy that outgrows the maps the agent sized at its start is applied
/// by growing them under traffic: larger maps and the programs using them
/// are swapped in on every hook while streams run and denied datagrams
/// keep coming. No allowed packet is lost, no denied one passes, the
/// tracked flows and the rule counters carry on, and an agent killed and
/// started again keeps the larger maps.
#[test]
fn maps_grow_under_traffic_without_losing_or_passing_a_packet() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let [s, r, z1, z2] = endpoints(&host);
    let r_server = r
        .serve_specs(&[
            &format!("tcpecho:{STREAM_TCP}"),
            &format!("udpseq:{STREAM_UDP}"),
            &format!("udpseq:{X_PORT}"),
        ])
        .expect("servers in r");
    let z2_server = z2.serve_specs(&[&format!("udpseq:{Z_PORT}")]).expect("server in z2");
    let z_dst = SocketAddr::new(v4(&z2), Z_PORT);

    // Control: without the agent, Z's datagrams arrive.
    let z = UdpSeqSender::start(&z1, z_dst, 200).expect("starting the control Z sender");
    wait_for("the control Z datagrams arrive", DEADLINE, || {
        (z2_server.seqs(Z_PORT).len() >= 20).then_some(())
    });
    let sent = z.finish().expect("stopping the control Z sender");
    let control_seen = z2_server.wait_for_seqs(Z_PORT, sent as usize, DEADLINE).len();

    let mut agent = Agent::start(&host, &policy_a()).expect("starting the agent on policy A");
    let grown_file = agent.scratch_path("grown.yaml").expect("scratch path");
    std::fs::write(&grown_file, policy_grown()).expect("writing the larger policy");
    let maps = ["HW_RULE_STATS", "HW_SRC", "HW_LOCAL", "HW_IFACE"];
    let sized: Vec<u64> = maps.iter().map(|m| capacity(&agent, m)).collect();
    assert!(
        sized[0] < 3_000 && sized[1] < 300 && sized[2] < 300 && sized[3] < 100,
        "the agent sized its maps for policy A ({maps:?}: {sized:?}), so the larger policy outgrows them"
    );

    let before = agent.stats().expect("reading counters");
    let mut tcp = TcpStreamer::start(&s, SocketAddr::new(v4(&r), STREAM_TCP)).expect("starting the TCP stream");
    let udp = UdpSeqSender::start(&s, SocketAddr::new(v4(&r), STREAM_UDP), 50).expect("starting the UDP stream");
    // New flows all along, each judged by the rules and the maps that grow.
    let fresh =
        UdpSeqSender::start_new_flows(&s, SocketAddr::new(v4(&r), X_PORT), 100).expect("starting the new-flow sender");
    let z = UdpSeqSender::start(&z1, z_dst, 200).expect("starting the Z sender");
    tcp.assert_flowing(16 * 1024, "before the maps grow");
    let udp_flow = |agent: &Agent| flows(agent, &["--port", &STREAM_UDP.to_string(), "--proto", "udp"]);
    let tracked = udp_flow(&agent);
    assert_eq!(tracked.len(), 1, "the UDP stream is one tracked flow: {tracked:?}");

    agent
        .cli(&["apply", grown_file.to_str().expect("utf-8 path")])
        .unwrap_or_else(|e| panic!("applying the larger policy: {e:#}"));
    let grown: Vec<u64> = maps.iter().map(|m| capacity(&agent, m)).collect();
    assert!(
        grown[0] >= 3_000 && grown[1] >= 300 && grown[2] >= 300 && grown[3] >= 100,
        "the maps grew for the larger policy ({maps:?}: {sized:?} -> {grown:?})"
    );
    assert_eq!(
        agent.count_log(&["maps grown for the policy"]),
        1,
        "the agent says it grew its maps, once:\n{}",
        agent.log()
    );
    tcp.assert_flowing(16 * 1024, "after the maps grew");
    let after = udp_flow(&agent);
    assert!(
        after.len() == 1 && after[0]["rule_egress"] == tracked[0]["rule_egress"],
        "the UDP stream's flow is tracked under the entry it had before the maps grew: {after:?}, before {tracked:?}"
    );

    // An agent killed and started again adopts the larger maps as they
    // are pinned, and has nothing to grow.
    agent.kill9().expect("killing the agent");
    agent.restart().expect("restarting the agent");
    let restarted: Vec<u64> = maps.iter().map(|m| capacity(&agent, m)).collect();
    assert_eq!(restarted, grown, "a restart keeps the grown maps");
    assert_eq!(agent.count_log(&["maps grown for the policy"]), 1, "{}", agent.log());
    tcp.assert_flowing(16 * 1024, "after the restart");

    let z_sent = z.finish().expect("stopping the Z sender");
    let fresh_sent = fresh.finish().expect("stopping the new-flow sender");
    let udp_sent = udp.finish().expect("stopping the UDP stream");
    tcp.finish()
        .expect("the TCP stream went both ways, complete and in order, across the growth");
    let mut failures = Vec::new();
    let received = r_server.wait_for_seqs(STREAM_UDP, udp_sent as usize, DEADLINE);
    if let Some(gaps) = seq_gaps(&received, udp_sent) {
        failures.push(format!(
            "the allowed UDP stream lost datagrams while the maps grew: {gaps}"
        ));
    }
    let received = r_server.wait_for_seqs(X_PORT, fresh_sent as usize, DEADLINE);
    if let Some(gaps) = seq_gaps(&received, fresh_sent) {
        failures.push(format!("allowed new flows were lost while the maps grew: {gaps}"));
    }
    let delta = denied_findings(&agent, &before, &z2_server, control_seen, z_sent, &mut failures);
    // Counted in the old maps until the hooks were swapped, in the new
    // ones after: each datagram once.
    for (group, direction) in [("sender", "egress"), ("receiver", "ingress")] {
        if delta.rule(group, direction, 1) != Some(udp_sent) {
            failures.push(format!(
                "rule {group}/{direction}[1] (udp {STREAM_UDP}) counted {:?} of the {udp_sent} datagrams",
                delta.rule(group, direction, 1)
            ));
        }
        if delta.rule(group, direction, 2) != Some(fresh_sent) {
            failures.push(format!(
                "rule {group}/{direction}[2] (udp {X_PORT}) counted {:?} of the {fresh_sent} new flows' datagrams",
                delta.rule(group, direction, 2)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\ncounters since the streams started: {delta}",
        failures.join("\n")
    );
}
