//! The agent's own life under traffic: killed with SIGKILL and restarted,
//! started on a host whose connections predate it, upgraded to a newer
//! pinned layout, stopped and uninstalled. Enforcement never lapses and
//! never cuts an allowed flow, until `hostwall uninstall` removes it.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::bins;
use common::daemon::{DEADLINE, flows, rule_id};
use hostwall::datapath::layout::{LAYOUT_VERSION, LAYOUT_VERSION_ENV};
use hostwall_tests::{
    Agent, AgentOptions, Check, Container, DropReason, Expect, Host, Node, Probe, Server, TcpStreamer, UdpSeqSender,
    assert_checks, seq_gaps,
};

/// a may reach b on tcp/8080 and udp/8053; c may reach nothing.
const POLICY: &str = r#"
version: 1
groups:
  client:
    egress:
      - {proto: tcp, ports: 8080, to: [{group: server}]}
      - {proto: udp, ports: 8053, to: [{group: server}]}
  server:
    ingress:
      - {proto: tcp, ports: 8080, from: [{group: client}, {group: intruder}]}
      - {proto: udp, ports: 8053, from: [{group: client}]}
      - {proto: udp, ports: 9000, from: [{group: intruder}]}
  intruder: {}
endpoints:
  - {name: a, interface: hw-a, addresses: ["10.77.0.11", "fd00:77::11"], groups: [client]}
  - {name: b, interface: hw-b, addresses: ["10.77.0.12", "fd00:77::12"], groups: [server]}
  - {name: c, interface: hw-c, addresses: ["10.77.0.13", "fd00:77::13"], groups: [intruder]}
"#;

struct Setup {
    server: Server,
    a: Container,
    b: Container,
    c: Container,
    host: Host,
}

/// Client a, server b (TCP echo on 8080, sequence receivers on udp 8053
/// and 9000) and intruder c; no agent yet. The control checks show that
/// what the agent will deny gets through without it.
fn setup() -> Setup {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let a = host.add_container("a", "hw-a", 11).expect("adding a");
    let b = host.add_container("b", "hw-b", 12).expect("adding b");
    let c = host.add_container("c", "hw-c", 13).expect("adding c");
    let server = b
        .serve_specs(&["tcpecho:8080", "udpseq:8053", "udpseq:9000"])
        .expect("servers in b");
    Setup { server, a, b, c, host }
}

impl Setup {
    fn dst(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.b.v4.into(), port)
    }

    fn allowed(&self) -> Check<'_> {
        Check::allowed(&self.a, Probe::Tcp(8080), self.b.v4).labelled("b")
    }

    /// c has no egress rule.
    fn denied(&self) -> Check<'_> {
        Check::denied(&self.c, Probe::Tcp(8080), self.b.v4).labelled("b")
    }

    fn control(&self) {
        assert_checks(
            "control: before the agent starts",
            &[self.denied().expecting(Expect::Allowed)],
        );
    }
}

/// The streams of a test: an allowed TCP connection and UDP flow from a to
/// b, and denied datagrams from c to b.
struct Streams {
    tcp: TcpStreamer,
    udp: UdpSeqSender,
    denied: UdpSeqSender,
}

impl Streams {
    fn start(s: &Setup) -> Streams {
        let mut tcp = TcpStreamer::start(&s.a, s.dst(8080)).expect("starting the TCP stream");
        let udp = UdpSeqSender::start(&s.a, s.dst(8053), 50).expect("starting the UDP stream");
        let denied = UdpSeqSender::start(&s.c, s.dst(9000), 50).expect("starting the denied datagrams");
        tcp.assert_flowing(16 * 1024, "at the start");
        Streams { tcp, udp, denied }
    }

    /// Stops everything and checks that the allowed flows lost nothing and
    /// none of the denied datagrams arrived; returns how many datagrams the
    /// allowed UDP flow carried.
    fn finish(self, s: &Setup, what: &str) -> u64 {
        let denied = self.denied.finish().expect("stopping the denied datagrams");
        let sent = self.udp.finish().expect("stopping the UDP stream");
        self.tcp
            .finish()
            .unwrap_or_else(|e| panic!("{what}: the TCP connection did not go through unbroken: {e:#}"));
        let received = s.server.wait_for_seqs(8053, sent as usize, DEADLINE);
        if let Some(gaps) = seq_gaps(&received, sent) {
            panic!("{what}: the allowed UDP flow lost datagrams: {gaps}");
        }
        let leaked = s.server.seqs(9000).len();
        assert_eq!(
            leaked, 0,
            "{what}: {leaked} of {denied} denied datagrams from c reached b"
        );
        sent
    }
}

#[test]
fn sigkill_leaves_enforcement_and_a_restart_adopts_it() {
    let s = setup();
    s.control();
    let mut agent = Agent::start(&s.host, POLICY).expect("starting the agent");
    let start = agent.stats().expect("reading counters");
    let mut streams = Streams::start(&s);
    let hash = agent.policy_hash().expect("status");
    let ids: Vec<u64> = (0..2).map(|i| rule_id(&agent, "client", "egress", i)).collect();
    let before = agent.stats().expect("reading counters");
    let generation = |agent: &Agent| {
        agent.status().expect("status")["policy"]["generation"]
            .as_u64()
            .expect("a generation")
    };
    let generation_before = generation(&agent);
    assert!(
        generation_before >= 1,
        "the first policy the agent applied has generation {generation_before}"
    );

    agent.kill9().expect("killing the agent");
    assert!(
        agent.cli_output(&["status"]).expect("running status").status.code() != Some(0),
        "`hostwall status` succeeded with no agent running"
    );
    streams.tcp.assert_flowing(16 * 1024, "with no agent running");
    assert_checks("with no agent running", &[s.allowed(), s.denied()]);

    agent.restart().expect("restarting the agent");
    assert!(
        agent.log().contains("adopting the pinned datapath"),
        "the restarted agent did not adopt the pinned datapath; its log:\n{}",
        agent.log()
    );
    assert_eq!(
        agent.policy_hash().expect("status"),
        hash,
        "the policy hash changed across the restart"
    );
    // The restarted agent counts on: a generation names one policy
    // applied, across restarts.
    assert_eq!(
        generation(&agent),
        generation_before + 1,
        "the restarted agent's startup apply should be the generation after the last one before the kill"
    );
    let again: Vec<u64> = (0..2).map(|i| rule_id(&agent, "client", "egress", i)).collect();
    assert_eq!(again, ids, "rule ids changed across the restart");
    let after = agent.stats().expect("reading counters");
    for (group, direction, index) in [
        ("client", "egress", 0),
        ("client", "egress", 1),
        ("server", "ingress", 1),
    ] {
        let (then, now) = (
            before.rule(group, direction, index).unwrap_or(0),
            after.rule(group, direction, index).unwrap_or(0),
        );
        assert!(
            then > 0 && now >= then,
            "rule {group}/{direction}[{index}] counted {then} before the kill and {now} after the restart"
        );
    }
    streams.tcp.assert_flowing(16 * 1024, "after the restart");
    assert_checks("after the restart", &[s.allowed(), s.denied()]);
    let sent = streams.finish(&s, "across SIGKILL and restart");
    // The datapath counted on with no agent, into counters the restarted
    // agent kept: each datagram once.
    let delta = agent.stats().expect("reading counters").since(&start);
    assert_eq!(
        delta.rule("client", "egress", 1),
        Some(sent),
        "the udp rule should have counted all {sent} datagrams: {delta}"
    );
    assert!(
        delta.dropped(DropReason::EgressDenied) > 0,
        "c's datagrams were not counted as dropped: {delta}"
    );
}

#[test]
fn agent_start_keeps_connections_that_predate_it() {
    let s = setup();
    s.control();
    let mut tcp = TcpStreamer::start(&s.a, s.dst(8080)).expect("starting the TCP stream before the agent");
    tcp.assert_flowing(16 * 1024, "before the agent starts");

    let agent = Agent::start(&s.host, POLICY).expect("starting the agent");
    tcp.assert_flowing(32 * 1024, "after the agent started");
    let tracked = flows(&agent, &["--port", "8080", "--proto", "tcp"]);
    assert!(
        tracked.len() == 1 && tracked[0]["seen_reply"] == true && tracked[0]["src"] == s.a.v4.to_string(),
        "the connection is tracked as a's flow to b with its reply seen: {tracked:?}"
    );
    let stats = agent.stats().expect("reading counters");
    let drops: u64 = stats.drops.values().sum();
    assert_eq!(
        drops, 0,
        "packets were dropped while the agent took over live connections: {stats}"
    );

    assert_checks("enforcing", &[s.allowed(), s.denied()]);
    tcp.finish()
        .expect("the connection that predates the agent went on unbroken");
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn layout_upgrade_takes_over_without_a_gap() {
    let s = setup();
    s.control();
    // This build's layout, and a newer one played by the same build.
    let (old, new) = (LAYOUT_VERSION, LAYOUT_VERSION + 1);
    let mut agent = Agent::start(&s.host, POLICY).expect("starting the agent (this build's layout)");
    let v1 = agent.bpffs().join(format!("v{old}"));
    let v2 = agent.bpffs().join(format!("v{new}"));
    assert!(
        v1.join("maps").is_dir(),
        "no layout {old} under {}",
        agent.bpffs().display()
    );
    let mut streams = Streams::start(&s);
    let before = agent.stats().expect("reading counters");

    let status = agent.stop().expect("stopping the older layout's agent");
    assert!(status.success(), "the agent exited with {status}");
    streams.tcp.assert_flowing(8 * 1024, "between the two agents");
    let newer = AgentOptions {
        env: vec![(LAYOUT_VERSION_ENV.into(), new.to_string())],
        ..Default::default()
    };
    agent.restart_with(&newer).expect("starting the newer layout's agent");

    let status = agent.status().expect("status");
    assert_eq!(
        status["layout"].as_u64(),
        Some(new as u64),
        "the new agent's layout: {status}"
    );
    assert!(!v1.exists(), "layout {old} is still pinned: {:?}", entries(&v1));
    for sub in ["maps", "progs", "links"] {
        assert!(
            !entries(&v2.join(sub)).is_empty(),
            "layout {new} has nothing under {sub}: {:?}",
            entries(&v2)
        );
    }
    // Three endpoints, two hooks each.
    assert_eq!(
        entries(&v2.join("links")).len(),
        6,
        "pinned links: {:?}",
        entries(&v2.join("links"))
    );
    let after = agent.stats().expect("reading counters");
    let (then, now) = (
        before.rule("client", "egress", 1).unwrap_or(0),
        after.rule("client", "egress", 1).unwrap_or(0),
    );
    assert!(
        then > 0 && now >= then,
        "the UDP rule's counter was not carried over: {then} before, {now} after"
    );

    streams.tcp.assert_flowing(16 * 1024, "after the upgrade");
    assert_checks("after the upgrade", &[s.allowed(), s.denied()]);
    let sent = streams.finish(&s, "across the layout upgrade");
    // Every datagram was counted once: by the old programs (carried over
    // after the takeover) or by the new ones.
    let end = agent
        .stats()
        .expect("reading counters")
        .rule("client", "egress", 1)
        .unwrap_or(0);
    assert!(
        end >= sent,
        "the UDP rule counted {end} packets across the upgrade but {sent} datagrams were sent: counts were lost"
    );
}

#[test]
fn uninstall_after_stop_removes_pins_and_enforcement() {
    let s = setup();
    s.control();
    let mut agent = Agent::start(&s.host, POLICY).expect("starting the agent");
    let checks = [s.allowed(), s.denied()];
    assert_checks("enforcing", &checks);

    let status = agent.stop().expect("stopping the agent");
    assert!(status.success(), "the agent exited with {status}");
    assert_checks("after the agent stopped (fail-static)", &checks);
    // Three endpoints, two hooks each, pinned so that they outlive the
    // agent.
    let links = entries(&agent.bpffs().join(format!("v{LAYOUT_VERSION}")).join("links"));
    assert_eq!(links.len(), 6, "pinned links after the stop: {links:?}");

    agent.uninstall().expect("hostwall uninstall");
    // A fresh bpffs holds the kernel's own `maps.debug` and `progs.debug`
    // (BPF preload); everything else was hostwall's.
    let left: Vec<String> = entries(agent.bpffs())
        .into_iter()
        .filter(|n| n != "maps.debug" && n != "progs.debug")
        .collect();
    assert!(
        left.is_empty(),
        "pins left under {} after uninstall: {left:?}",
        agent.bpffs().display()
    );
    assert_checks(
        "after hostwall uninstall: nothing is filtered",
        &[s.allowed(), s.denied().expecting(Expect::Allowed)],
    );
}

#[test]
fn restart_releases_interfaces_that_are_no_longer_endpoints() {
    let s = setup();
    let mut agent = Agent::start(&s.host, POLICY).expect("starting the agent");
    let c_to_host = || Check::allowed(&s.c, Probe::Ping, s.host.subnet().v4(1)).labelled("host");
    assert_checks(
        "c is an endpoint without egress rules",
        &[c_to_host().expecting(Expect::Denied)],
    );

    agent.kill9().expect("killing the agent");
    // c leaves the policy while no agent runs.
    let without_c: String = POLICY
        .lines()
        .filter(|l| !l.contains("name: c,"))
        .map(|l| l.to_string() + "\n")
        .collect();
    agent.write_config(&without_c).expect("writing the control file");
    agent.restart().expect("restarting the agent");

    // Interfaces that are no endpoints are left alone.
    assert_checks(
        "c is no endpoint after the restart",
        &[c_to_host(), s.allowed(), s.denied().expecting(Expect::Denied)],
    );
    let links = entries(&agent.bpffs().join(format!("v{LAYOUT_VERSION}")).join("links"));
    assert_eq!(links.len(), 4, "only a's and b's hooks stay pinned: {links:?}");
}

/// The agent of `launch` with no bpffs mounted for it.
fn own_bpffs(launch: hostwall_tests::Launch) -> AgentOptions {
    AgentOptions {
        launch,
        own_bpffs: true,
        start_timeout: Some(std::time::Duration::from_secs(20)),
        ..Default::default()
    }
}

#[test]
fn a_bpffs_that_would_die_with_the_agent_is_refused() {
    let s = setup();
    s.control();
    // `ip netns exec` gives the agent a mount namespace of its own: a bpffs
    // it mounted there would vanish, pins and all, when it exits.
    let err = Agent::start_with(&s.host, POLICY, &own_bpffs(hostwall_tests::Launch::NetnsExec))
        .err()
        .expect("the agent started with a bpffs that dies with it");
    let text = format!("{err:#}");
    assert!(
        text.contains("mount namespace is not the host's") && text.contains("mount -t bpf bpf /sys/fs/bpf"),
        "the refusal names why and the fix: {text}"
    );
    assert_checks("nothing was enforced", &[s.denied().expecting(Expect::Allowed)]);

    // Control: in the host's mount namespace the agent mounts the bpffs
    // itself, and its pins and enforcement outlive it.
    let mut agent = Agent::start_with(&s.host, POLICY, &own_bpffs(hostwall_tests::Launch::HostMounts))
        .expect("starting the agent in the host's mount namespace");
    assert!(hostwall::host::is_bpffs(agent.bpffs()), "the agent mounted no bpffs");
    agent.stop().expect("stopping the agent");
    let active = agent.bpffs().join(format!("v{LAYOUT_VERSION}/maps/HW_ACTIVE"));
    assert!(active.exists(), "{} is gone after the agent exited", active.display());
    assert_checks("after the agent exited", &[s.allowed(), s.denied()]);
    agent.uninstall().expect("uninstalling");
}

#[test]
fn pins_survive_an_agent_in_a_namespace_like_its_units() {
    let s = setup();
    s.control();
    // A mount namespace of its own with /sys read-only, as the hardened
    // unit gives it, and the host's bpffs inherited.
    let mut agent = Agent::start_with(
        &s.host,
        POLICY,
        &AgentOptions {
            launch: hostwall_tests::Launch::UnitLike,
            ..Default::default()
        },
    )
    .expect("starting the agent as its unit runs it");
    assert_checks("enforced", &[s.allowed(), s.denied()]);
    let streams = Streams::start(&s);
    agent.stop().expect("stopping the agent");
    let active = agent.bpffs().join(format!("v{LAYOUT_VERSION}/maps/HW_ACTIVE"));
    assert!(active.exists(), "{} is gone after the agent exited", active.display());
    assert_checks("after the agent exited", &[s.allowed(), s.denied()]);
    streams.finish(&s, "across the agent's exit");
    agent.uninstall().expect("uninstalling");
}

#[test]
fn uninstall_stops_a_running_agent_and_fails_where_there_is_nothing() {
    let s = setup();
    s.control();
    let mut agent = Agent::start(&s.host, POLICY).expect("starting the agent");
    assert_checks("enforcing", &[s.allowed(), s.denied()]);

    // A mistyped --bpffs removes nothing and says so.
    let typo = agent.bpffs().with_file_name("bpfs");
    let (ok, said) = agent.uninstall_output(Some(&typo)).expect("running uninstall");
    assert!(!ok, "uninstall of {} succeeded: {said}", typo.display());
    assert!(
        said.contains("does not exist") && said.contains("nothing was removed"),
        "{said}"
    );
    std::fs::create_dir_all(&typo).expect("creating an empty directory");
    let (ok, said) = agent.uninstall_output(Some(&typo)).expect("running uninstall");
    assert!(!ok && said.contains("nothing of hostwall's is under"), "{said}");
    let _ = std::fs::remove_dir(&typo);
    assert!(agent.is_running(), "the agent was stopped for another bpffs");
    assert_checks("still enforcing", &[s.allowed(), s.denied()]);

    // On the agent's own: the agent is stopped first, so that nothing goes
    // on reporting endpoints as enforced or accepting changes.
    let (ok, said) = agent.uninstall_output(None).expect("running uninstall");
    assert!(ok, "uninstall failed: {said}");
    assert!(said.contains("stopping the agent"), "{said}");
    assert!(!agent.is_running(), "the agent still runs after uninstall");
    assert!(agent.status().is_err(), "the agent still answers after uninstall");
    assert_checks(
        "after hostwall uninstall: nothing is filtered",
        &[s.allowed(), s.denied().expecting(Expect::Allowed)],
    );
}

#[test]
fn removed_pins_and_links_are_made_again_while_the_agent_runs() {
    let s = setup();
    let mut agent = Agent::start(&s.host, POLICY).expect("starting the agent");
    let checks = [s.allowed(), s.denied()];
    assert_checks("enforcing", &checks);
    let layout = agent.bpffs().join(format!("v{LAYOUT_VERSION}"));
    let remove_all_in = |dir: &str| {
        for name in entries(&layout.join(dir)) {
            std::fs::remove_file(layout.join(dir).join(&name)).expect("removing a pin");
        }
    };

    // The control: without an agent, removing the links' pins ends the
    // links, and with them the filtering.
    agent.stop().expect("stopping the agent");
    remove_all_in("links");
    assert_checks(
        "link pins removed while no agent runs: nothing is filtered",
        &[s.allowed(), s.denied().expecting(Expect::Allowed)],
    );
    agent.restart().expect("restarting the agent");
    assert_checks("enforcing after the restart", &checks);

    // With the agent running: links, maps and programs lose their pins.
    remove_all_in("links");
    remove_all_in("maps");
    remove_all_in("progs");
    agent
        .wait_for_log("programs attached again", 3, DEADLINE)
        .expect("the agent attaches its programs to the three endpoints again");
    agent
        .wait_for_log("pinned again", 1, DEADLINE)
        .expect("the agent notices the pins are gone");
    assert_checks("enforcing once the agent attached its programs again", &checks);
    let status = agent.status().expect("hostwall status");
    assert_eq!(status["enforced"], true, "status: {status}");
    for dir in ["links", "maps", "progs"] {
        assert!(!entries(&layout.join(dir)).is_empty(), "nothing pinned again in {dir}");
    }
    assert_eq!(entries(&layout.join("links")).len(), 6, "two hooks of three endpoints");

    // What was pinned again is what a restart adopts: enforcement outlives
    // the agent again.
    agent.stop().expect("stopping the agent");
    assert_checks("after the agent stopped (fail-static)", &checks);
}
