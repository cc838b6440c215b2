//! The two-host scenario, one VM per host, linked by their virtio NICs
//! only. Each VM builds a host of its own with the test harness (a host
//! namespace with a bridge and the containers web, db and lonely), moves
//! its NIC `eth0` into that host namespace as the uplink, routes the other
//! host's bridge subnet over the link, and runs `hostwall agent --uplink
//! eth0 --node vm-X` on the shared control file `two-host.yaml`.
//!
//! The VMs keep in step with barriers over the link: at step N each serves
//! TCP port 7000+N on its link address and waits until the other's answers
//! and the other has reached its own (so that neither leaves a step, or
//! powers off after the last, while the other still waits for it).
//! Each host takes one turn as the sender while the other counts what
//! arrives, so the receiver's forwarding counters see only the sender's
//! traffic:
//!
//! 1. controls, before either agent runs: every flow below gets through;
//! 2. the sender's web reaches the receiver's db (tcp/5432, udp/8053,
//!    ping; IPv4 and IPv6): a group reference across hosts, judged by the
//!    sender's egress and the receiver's ingress rules;
//! 3. web → the receiver's db on tcp/6000 passes the sender's egress but
//!    not db's ingress: the receiver's XDP filter on eth0 drops it, which
//!    shows as ingress-denied in the receiver's `hostwall stats --json`
//!    while its forwarding counters stand still (a packet dropped by TC on
//!    the container's interface would have been forwarded first);
//! 4. lonely → db and web → web across hosts: denied by the sender's own
//!    egress rules (egress-denied on the sender).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hostwall_tests::netns::run as run_cmd;
use hostwall_tests::{
    Agent, AgentOptions, Check, Container, DropReason, Expect, Host, Node, Probe, ProbeOptions, Server, Stats, Subnet,
    run_checks,
};

use super::{bins, say};

/// The control file both agents load.
const POLICY: &str = include_str!("two-host.yaml");
const UPLINK: &str = "eth0";
const TCP_PORTS: &[u16] = &[5432, 6000];
const UDP_PORTS: &[u16] = &[8053];
/// Barrier step N is TCP port BARRIER_PORT + N on the link addresses.
const BARRIER_PORT: u16 = 7000;
/// The first barrier also waits for the other VM to boot and set up.
const FIRST_WAIT: Duration = Duration::from_secs(300);
const WAIT: Duration = Duration::from_secs(180);
/// Lets the last packets of a phase (TCP teardown) pass before counting.
const SETTLE: Duration = Duration::from_millis(500);

struct Side {
    role: &'static str,
    node: &'static str,
    link: [IpAddr; 2],
    bridge: Subnet,
}

fn side(role: &str) -> anyhow::Result<Side> {
    let (role, node, n, bridge) = match role {
        "a" => ("a", "vm-a", 1, Subnet::new([10, 81, 0], "fd00:81::")),
        "b" => ("b", "vm-b", 2, Subnet::new([10, 82, 0], "fd00:82::")),
        other => bail!("unknown role {other:?} (expected a or b)"),
    };
    Ok(Side {
        role,
        node,
        link: [
            Ipv4Addr::new(192, 0, 2, n).into(),
            Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, n.into()).into(),
        ],
        bridge,
    })
}

/// Puts the NIC into the host namespace and routes the other host's
/// bridge subnet through the other host's link address.
fn adopt_nic(host: &Host, me: &Side, peer: &Side) -> anyhow::Result<()> {
    run_cmd(Command::new("ip").args(["link", "set", UPLINK, "netns", host.ns().name()]))
        .context("moving the NIC into the host namespace")?;
    let ns = host.ns();
    ns.sysctl(&[
        &format!("net.ipv4.conf.{UPLINK}.rp_filter=0"),
        &format!("net.ipv6.conf.{UPLINK}.accept_dad=0"),
    ])?;
    ns.ip(&format!("link set {UPLINK} up"))?;
    ns.ip(&format!("addr add {}/24 dev {UPLINK}", me.link[0]))?;
    ns.ip(&format!("addr add {}/64 dev {UPLINK} nodad", me.link[1]))?;
    ns.ip(&format!("route add {} via {}", peer.bridge.v4_cidr(), peer.link[0]))?;
    ns.ip(&format!("-6 route add {} via {}", peer.bridge.v6_cidr(), peer.link[1]))?;
    Ok(())
}

/// Barriers over the link (see the module comment).
struct Barriers<'a> {
    host: &'a Host,
    peer: IpAddr,
    step: u16,
    servers: Vec<Server>,
}

impl Barriers<'_> {
    fn wait(&mut self, what: &str, timeout: Duration) -> anyhow::Result<()> {
        self.step += 1;
        let port = BARRIER_PORT + self.step;
        let started = Instant::now();
        self.servers.push(self.host.serve(&[port], &[])?);
        let opts = ProbeOptions {
            timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let server = self.servers.last().expect("this step's server");
        let mut answered = false;
        loop {
            if !answered {
                answered = self.host.probe(Probe::Tcp(port), self.peer, &opts)? == hostwall_tests::Outcome::Echoed;
            }
            // The other VM's probe of this step reached this VM's server
            // (which notes it once the echo has left): it knows this VM is
            // here too.
            let reached = server.received_from(self.peer) > 0;
            if answered && reached {
                break;
            }
            if started.elapsed() > timeout {
                bail!(
                    "step {} ({what}): the other VM did not get there within {timeout:?} (its server answered: {answered}, it reached this one: {reached})",
                    self.step
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        say(format_args!(
            "step {} ({what}): both VMs there after {:.1} s",
            self.step,
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

/// Runs checks; an error lists every one that did not come out as expected.
fn expect(what: &str, checks: &[Check<'_>]) -> anyhow::Result<()> {
    let started = Instant::now();
    let reports = run_checks(checks);
    let failed: Vec<String> = checks
        .iter()
        .zip(&reports)
        .filter(|(_, r)| !r.ok)
        .map(|(c, r)| format!("  {c}: expected {}, got {}", c.expect, r.outcome))
        .collect();
    if !failed.is_empty() {
        bail!(
            "{what}: {} of {} checks failed:\n{}",
            failed.len(),
            checks.len(),
            failed.join("\n")
        );
    }
    say(format_args!(
        "{what}: {} checks as expected ({:.1} s)",
        checks.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// What this host's containers send to the other host, per IP family.
struct Flows<'a> {
    allowed: Vec<Check<'a>>,
    /// Denied by the receiver's ingress rules only.
    receiver_denies: Vec<Check<'a>>,
    /// Denied by the sender's egress rules.
    sender_denies: Vec<Check<'a>>,
}

impl<'a> Flows<'a> {
    fn new(web: &'a Container, lonely: &'a Container, peer: &Side) -> Flows<'a> {
        let mut f = Flows {
            allowed: Vec::new(),
            receiver_denies: Vec::new(),
            sender_denies: Vec::new(),
        };
        for family in 0..2 {
            let db = peer.bridge.addr(13, family);
            let peer_web = peer.bridge.addr(11, family);
            let db_label = format!("{} db", peer.node);
            let web_label = format!("{} web", peer.node);
            for probe in [Probe::Tcp(5432), Probe::Udp(8053), Probe::Ping] {
                f.allowed.push(Check::allowed(web, probe, db).labelled(&db_label));
            }
            f.receiver_denies
                .push(Check::denied(web, Probe::Tcp(6000), db).labelled(&db_label));
            f.sender_denies
                .push(Check::denied(lonely, Probe::Tcp(5432), db).labelled(&db_label));
            f.sender_denies
                .push(Check::denied(web, Probe::Tcp(5432), peer_web).labelled(&web_label));
        }
        f
    }

    fn denied(&self) -> Vec<Check<'a>> {
        [self.receiver_denies.as_slice(), self.sender_denies.as_slice()].concat()
    }

    /// Everything, expected to get through while no agent runs.
    fn controls(&self) -> Vec<Check<'a>> {
        self.allowed
            .iter()
            .chain(&self.denied())
            .map(|c| c.clone().expecting(Expect::Allowed))
            .collect()
    }
}

/// IPv4 and IPv6 datagrams the host namespace has forwarded.
fn forwarded(host: &Host) -> anyhow::Result<u64> {
    Ok(host.snmp("Ip", "ForwDatagrams")? + host.snmp("Ip6", "OutForwDatagrams")?)
}

/// The XDP mode `ip -d link` shows for the uplink: `xdp` (in the driver)
/// or `xdpgeneric`.
fn xdp_mode(host: &Host) -> anyhow::Result<String> {
    let out = host.ns().exec(&["ip", "-d", "link", "show", "dev", UPLINK])?;
    let first = out.lines().next().unwrap_or_default();
    let mode = ["xdpgeneric", "xdpoffload", "xdpdrv", "xdp"]
        .into_iter()
        .find(|m| first.split_whitespace().any(|w| w == *m))
        .with_context(|| format!("no XDP program on {UPLINK}: {out}"))?;
    Ok(mode.to_string())
}

pub fn run(role: &str) -> anyhow::Result<()> {
    let me = side(role)?;
    let peer = side(if me.role == "a" { "b" } else { "a" })?;
    let bins = bins()?;
    let host = Host::builder(&bins).prefix("hwv").bridge(me.bridge.clone()).build()?;
    adopt_nic(&host, &me, &peer)?;
    let web = host.add_container("web", "hw-web", 11)?;
    let db = host.add_container("db", "hw-db", 13)?;
    let lonely = host.add_container("lonely", "hw-lonely", 15)?;
    let mut servers = Vec::new();
    for c in [&web, &db, &lonely] {
        servers.push(c.serve(TCP_PORTS, UDP_PORTS)?);
    }
    let db_server = &servers[1];
    let mut barrier = Barriers {
        host: &host,
        peer: peer.link[0],
        step: 0,
        servers: Vec::new(),
    };
    barrier.wait("both hosts set up", FIRST_WAIT)?;

    let flows = Flows::new(&web, &lonely, &peer);
    expect(
        &format!("{} → {}, control: no agent on either host", me.node, peer.node),
        &flows.controls(),
    )?;
    barrier.wait("controls done", WAIT)?;

    let agent = Agent::start_with(
        &host,
        POLICY,
        &AgentOptions {
            uplink: Some(UPLINK.into()),
            node: Some(me.node.into()),
            ..Default::default()
        },
    )?;
    ensure!(
        agent.count_log(&["uplink filter attached"]) == 1,
        "the agent did not attach its uplink filter; its log:\n{}",
        agent.log()
    );
    ensure!(
        agent.count_log(&["hw-web"]) > 0 && agent.log().lines().any(|l| l.contains("attached=3")),
        "the agent did not attach to exactly this host's three containers; its log:\n{}",
        agent.log()
    );
    say(format_args!(
        "{}: agent enforcing, XDP mode {} on {UPLINK}",
        me.node,
        xdp_mode(&host)?
    ));
    barrier.wait("both agents enforcing", WAIT)?;

    for sender in ["a", "b"] {
        if sender == me.role {
            send(&mut barrier, &agent, &flows, &me, &peer)?;
        } else {
            receive(&mut barrier, &agent, &host, db_server, &me, &peer)?;
        }
    }
    barrier.wait("done", WAIT)?;
    // The other VM's probe was echoed; let the echo reach it before this VM
    // powers off.
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

fn send(barrier: &mut Barriers, agent: &Agent, flows: &Flows, me: &Side, peer: &Side) -> anyhow::Result<()> {
    barrier.wait(&format!("{} sends: {} counting", me.node, peer.node), WAIT)?;
    expect(
        &format!("{} → {}: what the group rules allow", me.node, peer.node),
        &flows.allowed,
    )?;
    barrier.wait(&format!("{} sends: allowed flows done", me.node), WAIT)?;
    barrier.wait(&format!("{} sends: {} counted them", me.node, peer.node), WAIT)?;
    let before = agent.stats()?;
    expect(
        &format!("{} → {}: what the rules deny", me.node, peer.node),
        &flows.denied(),
    )?;
    let delta = agent.stats()?.since(&before);
    let egress = delta.dropped(DropReason::EgressDenied);
    ensure!(
        egress >= flows.sender_denies.len() as u64,
        "{} sender-side denials, {egress} counted as egress-denied: {delta}",
        flows.sender_denies.len()
    );
    ensure!(
        delta.dropped(DropReason::IngressDenied) == 0,
        "the sender judged the receiver's ingress rules: {delta}"
    );
    say(format_args!(
        "{}: the sender's own egress rules dropped {egress} packets (egress-denied)",
        me.node
    ));
    barrier.wait(&format!("{} sends: denied flows done", me.node), WAIT)?;
    Ok(())
}

fn receive(
    barrier: &mut Barriers,
    agent: &Agent,
    host: &Host,
    db_server: &Server,
    me: &Side,
    peer: &Side,
) -> anyhow::Result<()> {
    let snapshot = || -> anyhow::Result<(Stats, u64)> { Ok((agent.stats()?, forwarded(host)?)) };
    let peer_web = [peer.bridge.addr(11, 0), peer.bridge.addr(11, 1)];
    let from_peer_web = |port: u16| {
        db_server
            .received()
            .iter()
            .filter(|r| r.port == port && peer_web.contains(&r.peer.ip()))
            .count()
    };

    let (s0, f0) = snapshot()?;
    let seen_5432 = from_peer_web(5432);
    barrier.wait(&format!("{} sends: {} counting", peer.node, me.node), WAIT)?;
    barrier.wait(&format!("{} sends: allowed flows done", peer.node), WAIT)?;
    std::thread::sleep(SETTLE);
    let (s1, f1) = snapshot()?;
    let delta = s1.since(&s0);
    ensure!(
        f1 > f0,
        "{}: the allowed flows from {} were not forwarded (forwarded +0): {delta}",
        me.node,
        peer.node
    );
    ensure!(
        from_peer_web(5432) > seen_5432,
        "{}: db's server got nothing on tcp/5432 from {}'s web",
        me.node,
        peer.node
    );
    ensure!(
        delta.rule("db", "ingress", 0).unwrap_or(0) > 0,
        "{}: db's ingress rule for tcp/5432 from group web counted nothing: {delta}",
        me.node
    );
    ensure!(
        delta.dropped(DropReason::IngressDenied) == 0,
        "{}: allowed flows were dropped: {delta}",
        me.node
    );
    say(format_args!(
        "{}: allowed flows from {} arrived (forwarded +{}, db ingress rule +{})",
        me.node,
        peer.node,
        f1 - f0,
        delta.rule("db", "ingress", 0).unwrap_or(0)
    ));

    let seen_6000 = from_peer_web(6000);
    barrier.wait(&format!("{} sends: {} counted them", peer.node, me.node), WAIT)?;
    barrier.wait(&format!("{} sends: denied flows done", peer.node), WAIT)?;
    std::thread::sleep(SETTLE);
    let (s2, f2) = snapshot()?;
    let delta = s2.since(&s1);
    let ingress = delta.dropped(DropReason::IngressDenied);
    // Both families' connection attempts to tcp/6000.
    ensure!(
        ingress >= 2,
        "{}: web on {} tried tcp/6000 to db over IPv4 and IPv6, {ingress} drops counted as ingress-denied: {delta}",
        me.node,
        peer.node
    );
    ensure!(
        f2 == f1,
        "{}: denied packets were forwarded (forwarded +{}), so the XDP filter on {UPLINK} did not drop them: {delta}",
        me.node,
        f2 - f1
    );
    ensure!(
        from_peer_web(6000) == seen_6000,
        "{}: db's server received a denied connection on tcp/6000",
        me.node
    );
    say(format_args!(
        "{}: XDP on {UPLINK} dropped what db's ingress rules deny from {} before the stack saw it \
         (ingress-denied +{ingress}, forwarded +0)",
        me.node, peer.node
    ));
    Ok(())
}
