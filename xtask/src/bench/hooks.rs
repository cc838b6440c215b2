//! Which hook does what: TCP throughput through a container's veth with
//! no program, with hostwall's TC programs, and with an XDP program that
//! passes everything (hostwall's own uplink program, attached to the
//! client's host-side veth by starting the agent with `--uplink hb-cli`
//! and a policy without local endpoints: every packet is judged "not for a
//! local endpoint" and passed after two address lookups). Then the uplink:
//! a remote host behind `uplink0` streams to the server and floods it with
//! denied UDP, with hostwall on TC only and with its XDP filter on the
//! uplink as well.

use std::net::SocketAddr;

use anyhow::Context as _;
use hostwall_tests::{Agent, AgentOptions, DropReason};
use serde_json::Value;

use super::policy::{self, CLIENT, FLOOD_PORT, IPERF_PORT, SERVER, Spec};
use super::topology::{self, Testbed};
use super::traffic::num;
use super::{Plan, Tools, spawn_collect};

#[derive(Clone, Debug)]
pub struct Results {
    /// (setup, Gbit/s) client to server through the veths.
    pub veth: Vec<(String, f64)>,
    /// (setup, Gbit/s remote to server, flood packets sent/s, dropped/s).
    pub uplink: Vec<(String, f64, f64, Option<f64>)>,
}

const NO_ENDPOINTS: &str = "version: 1\ngroups: {}\nendpoints: []\n";

pub fn run(plan: &Plan, tools: &Tools) -> anyhow::Result<Results> {
    let mut out = Results {
        veth: Vec::new(),
        uplink: Vec::new(),
    };
    let secs = plan.secs;

    for setup in [
        "no program",
        "TC: hostwall (10 rules)",
        "XDP on the client's veth (passes all)",
    ] {
        let bed = Testbed::new(tools)?;
        let _iperf = bed.iperf_server(SERVER, IPERF_PORT)?;
        let _agent = match setup {
            "no program" => None,
            "TC: hostwall (10 rules)" => Some(Agent::start(&bed.host, &policy::hostwall_yaml(&Spec::traffic(10)))?),
            _ => Some(Agent::start_with(
                &bed.host,
                NO_ENDPOINTS,
                &AgentOptions {
                    uplink: Some(CLIENT.iface.into()),
                    ..Default::default()
                },
            )?),
        };
        let gbps = iperf(bed.container(CLIENT).ns.name(), secs)?;
        println!("  veth    {setup:<40} {gbps:>7.2} Gbit/s");
        out.veth.push((setup.to_string(), gbps));
    }

    for setup in ["no program", "TC only", "TC + XDP on the uplink"] {
        let bed = Testbed::new(tools)?;
        let remote = bed.host.add_remote()?;
        let _iperf = bed.iperf_server(SERVER, IPERF_PORT)?;
        let spec = Spec {
            allow_from: Some(bed.host.uplink_subnet().v4_cidr()),
            ..Spec::traffic(10)
        };
        let agent = match setup {
            "no program" => None,
            "TC only" => Some(Agent::start(&bed.host, &policy::hostwall_yaml(&spec))?),
            _ => Some(Agent::start_with(
                &bed.host,
                &policy::hostwall_yaml(&spec),
                &AgentOptions {
                    uplink: Some(hostwall_tests::topology::UPLINK.into()),
                    ..Default::default()
                },
            )?),
        };
        let gbps = iperf(remote.ns().name(), secs)?;
        let drops = |a: &Agent| -> anyhow::Result<u64> {
            let s = a.stats()?;
            Ok(s.dropped(DropReason::IngressDenied))
        };
        let before = agent.as_ref().map(drops).transpose()?;
        let target = SocketAddr::new(SERVER.v4().into(), FLOOD_PORT);
        let mut cmd = remote.ns().command(&tools.load.to_string_lossy());
        cmd.args([
            "flood",
            &target.to_string(),
            "--secs",
            &secs.to_string(),
            "--size",
            "64",
        ]);
        let flood = spawn_collect(cmd, "the flood")?
            .join()
            .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
        let flood: Value = serde_json::from_str(flood.trim()).context("the flood's output")?;
        let after = agent.as_ref().map(drops).transpose()?;
        let dropped = match (before, after) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / num(&flood, "secs")?),
            _ => None,
        };
        let sent = num(&flood, "rate")?;
        println!(
            "  uplink  {setup:<40} {gbps:>7.2} Gbit/s; flood sent {sent:.0}/s, dropped {}/s",
            dropped.map(|d| format!("{d:.0}")).unwrap_or("-".into())
        );
        out.uplink.push((setup.to_string(), gbps, sent, dropped));
        drop(agent);
        drop(remote);
    }
    Ok(out)
}

fn iperf(from_ns: &str, secs: f64) -> anyhow::Result<f64> {
    topology::iperf(from_ns, SERVER.v4().into(), IPERF_PORT, secs)
}
