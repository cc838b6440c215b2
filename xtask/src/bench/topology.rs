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

use hostwall_tests::topology::unique_name;
use hostwall_tests::{Host, Netns};

use super::policy::{ENDPOINTS, Ep};
use super::{Bg, Tools};

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
    pub fn iperf_server(&self, ep: Ep, port: u16) -> anyhow::Result<Bg> {
        let mut cmd = self.container(ep).ns.command("iperf3");
        cmd.args(["-s", "-p", &port.to_string()]);
        let bg = Bg::start(cmd, &format!("iperf3 -s on {}", ep.name), None)?;
        // iperf3 has no readiness line on stdout before a test; it binds at
        // once, so a short wait is enough.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(bg)
    }
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
