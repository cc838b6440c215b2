//! The benchmark host: the harness's host namespace, with the containers
//! of `policy::ENDPOINTS` routed rather than bridged.
//!
//! ```text
//!  client ns            host ns (forwards)             server ns
//!  eth0 10.78.1.2 ── hb-cli 10.78.1.1   hb-srv 10.78.2.1 ── eth0 10.78.2.2
//!                            hb-fld 10.78.3.1 ── eth0 10.78.3.2  flood ns
//! ```
//!
//! Routing puts the same forwarding path in front of every variant:
//! iptables' FORWARD chain and nftables' forward hook see the traffic
//! without br_netfilter (which some variants would pay for and others not),
//! and hostwall sits on the host-side veths as on a bridge.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hostwall_tests::topology::unique_name;
use hostwall_tests::{Host, Netns};
use serde_json::Value;

use super::policy::{ENDPOINTS, Ep};
use super::{Bg, Tools, in_netns, output};

pub struct Container {
    pub ep: Ep,
    pub ns: Netns,
}

/// A host with the three routed containers. Dropping it deletes every
/// namespace.
pub struct Testbed {
    // Containers go before the host: their veth pairs end in it.
    pub containers: Vec<Container>,
    pub host: Host,
    pub tools: Tools,
}

impl Testbed {
    pub fn new(tools: &Tools) -> anyhow::Result<Testbed> {
        let host = Host::builder(&tools.bins).prefix("hwbench").build()?;
        let mut containers = Vec::new();
        for ep in ENDPOINTS {
            containers.push(add_routed(&host, ep)?);
        }
        Ok(Testbed {
            containers,
            host,
            tools: tools.clone(),
        })
    }

    pub fn container(&self, ep: Ep) -> &Container {
        self.containers
            .iter()
            .find(|c| c.ep.name == ep.name)
            .expect("every endpoint has a container")
    }

    pub fn host_ns(&self) -> &str {
        self.host.ns().name()
    }

    /// `hostwall-load serve PORT` in a container.
    pub fn load_server(&self, ep: Ep, port: u16) -> anyhow::Result<Bg> {
        let mut cmd = self.container(ep).ns.command(&self.tools.load.to_string_lossy());
        cmd.args(["serve", &port.to_string(), "--threads", "4"]);
        Bg::start(cmd, &format!("the load server on {}:{port}", ep.name), Some("ready"))
    }

    /// `iperf3 -s` in a container; it accepts one test after the other.
    /// Returns once the server's socket listens.
    pub fn iperf_server(&self, ep: Ep, port: u16) -> anyhow::Result<Bg> {
        let mut cmd = self.container(ep).ns.command("iperf3");
        cmd.args(["-s", "-p", &port.to_string()]);
        let bg = Bg::start(cmd, &format!("iperf3 -s on {}", ep.name), None)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listening =
                output(in_netns(self.container(ep).ns.name(), "ss").args(["-Hltn", &format!("sport = :{port}")]))?;
            if !listening.trim().is_empty() {
                return Ok(bg);
            }
            if Instant::now() > deadline {
                bail!("iperf3 -s on {} did not listen on port {port} within 10 s", ep.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One iperf3 TCP stream of `secs` (rounded up to whole seconds) from the
/// namespace `from_ns` to `to:port`, in Gbit/s. A stream that ends without
/// a result (a server still closing the previous test answers "busy") is
/// run again, up to three times in all, each failure printed; the last one
/// is an error quoting iperf3.
pub fn iperf(from_ns: &str, to: IpAddr, port: u16, secs: f64) -> anyhow::Result<f64> {
    let mut last = String::new();
    for _ in 0..3 {
        let mut cmd = in_netns(from_ns, "iperf3");
        cmd.args(["-c", &to.to_string(), "-p", &port.to_string(), "-J", "-t"])
            .arg(format!("{}", secs.ceil() as u64))
            .stdin(Stdio::null());
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if out.status.success()
            && let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64()
        {
            return Ok(bps / 1e9);
        }
        last = match v["error"].as_str() {
            Some(e) => e.to_string(),
            None => format!(
                "{} without end.sum_received: {} {}",
                out.status,
                text.chars().take(400).collect::<String>(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        };
        eprintln!("bench: iperf3 from {from_ns} to {to}:{port} again: {last}");
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("iperf3 from {from_ns} to {to}:{port}: {last}")
}

/// A container at `10.78.K.2` (`fd00:78:K::2`) behind its own veth pair,
/// whose host side holds `.1` and routes.
fn add_routed(host: &Host, ep: Ep) -> anyhow::Result<Container> {
    let ns = Netns::create(&format!("{}-{}", unique_name("hwbench"), ep.name))?;
    ns.sysctl(&[
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
        // Connection-rate tests open tens of thousands of connections; the
        // client closes first and keeps them in TIME_WAIT.
        "net.ipv4.ip_local_port_range=1024 65535",
        "net.ipv4.tcp_tw_reuse=1",
    ])?;
    host.ns().ip(&format!(
        "link add {} type veth peer name eth0 netns {}",
        ep.iface,
        ns.name()
    ))?;
    host.ns().ip(&format!("addr add {}/24 dev {}", ep.gw4(), ep.iface))?;
    host.ns()
        .ip(&format!("addr add {}/64 dev {} nodad", ep.gw6(), ep.iface))?;
    host.ns().ip(&format!("link set {} up", ep.iface))?;
    ns.ip("link set eth0 up")?;
    ns.ip(&format!("addr add {}/24 dev eth0", ep.v4()))?;
    ns.ip(&format!("addr add {}/64 dev eth0 nodad", ep.v6()))?;
    ns.ip(&format!("route add default via {}", ep.gw4()))?;
    ns.ip(&format!("-6 route add default via {}", ep.gw6()))?;
    Ok(Container { ep, ns })
}
