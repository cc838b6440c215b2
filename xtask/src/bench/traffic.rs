//! Real traffic between two containers on one host, for no filter,
//! hostwall, iptables and nftables enforcing the same policy, at each rule
//! count. Each variant gets a fresh host (so no variant inherits another's
//! conntrack state), first proves that it filters, then is timed:
//!
//! - stream: one iperf3 TCP stream, client to server;
//! - rr: requests of one byte, one after the other, on one connection;
//! - crr: connect, one request, close (two client threads);
//! - flood: the flood container sends UDP to the server as fast as one
//!   thread can while iperf3 runs; the filter's drop counter gives the rate
//!   of denied packets dropped, iperf3 what the allowed flow kept.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use hostwall_tests::{Agent, DropReason};
use serde_json::Value;

use super::policy::{self, CLIENT, DENIED_PORT, FLOOD, FLOOD_PORT, IPERF_PORT, LOAD_PORT, SERVER, Spec};
use super::topology::{self, Testbed};
use super::{Plan, Tools, in_netns, output, spawn_collect};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    None,
    Hostwall,
    Iptables,
    Nftables,
}

pub const VARIANTS: [Variant; 4] = [Variant::None, Variant::Hostwall, Variant::Iptables, Variant::Nftables];

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::None => "no filter",
            Variant::Hostwall => "hostwall",
            Variant::Iptables => "iptables",
            Variant::Nftables => "nftables",
        }
    }
}

/// What one variant at one rule count gave.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// `None` when it passed the filter check; else why it was not timed.
    pub broken: Option<String>,
    /// What the filter check saw, for the report.
    pub check: String,
    pub stream_gbps: f64,
    pub rr_per_s: f64,
    pub rr_p99_us: f64,
    pub crr_per_s: f64,
    pub crr_errors: u64,
    /// Denied packets dropped per second during the flood (None: no filter).
    pub flood_dropped_per_s: Option<f64>,
    pub flood_sent_per_s: f64,
    /// iperf3 during the flood.
    pub flood_stream_gbps: f64,
    /// Agent memory (hostwall only).
    pub memory: Option<Memory>,
    pub setup_secs: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Memory {
    /// Kernel memory of each map (bpftool's `bytes_memlock`).
    pub maps: BTreeMap<String, u64>,
    pub agent_rss_kib: u64,
    /// Tracked flows after the connection-rate test.
    pub ct_entries: usize,
}

#[derive(Clone, Debug)]
pub struct Results {
    pub secs: f64,
    pub runs: BTreeMap<(usize, Variant), Run>,
}

pub fn run(plan: &Plan, tools: &Tools) -> anyhow::Result<Results> {
    let mut out = Results {
        secs: plan.secs,
        runs: BTreeMap::new(),
    };
    for &rules in &plan.traffic_rules {
        for v in VARIANTS {
            let r = run_one(plan, tools, rules, v).with_context(|| format!("{} at {rules} rules", v.name()))?;
            println!(
                "  {rules:>6} rules  {:<9} {}",
                v.name(),
                match &r.broken {
                    Some(why) => format!("BROKEN: {why}"),
                    None => format!(
                        "stream {:.2} Gbit/s, rr {:.0}/s, crr {:.0}/s, flood dropped {}/s (stream {:.2} Gbit/s)",
                        r.stream_gbps,
                        r.rr_per_s,
                        r.crr_per_s,
                        r.flood_dropped_per_s.map(|d| format!("{d:.0}")).unwrap_or("-".into()),
                        r.flood_stream_gbps
                    ),
                }
            );
            out.runs.insert((rules, v), r);
        }
    }
    Ok(out)
}

/// The filter a variant installs, removed with the testbed.
enum Filter {
    None,
    Hostwall(Box<Agent>),
    Iptables,
    Nftables,
}

fn install(bed: &Testbed, rules: usize, v: Variant) -> anyhow::Result<Filter> {
    let spec = Spec::traffic(rules);
    let dir = std::env::temp_dir();
    Ok(match v {
        Variant::None => Filter::None,
        Variant::Hostwall => Filter::Hostwall(Box::new(Agent::start(&bed.host, &policy::hostwall_yaml(&spec))?)),
        Variant::Iptables => {
            let path = dir.join(format!("hwbench-{}.iptables", std::process::id()));
            std::fs::write(&path, policy::iptables_restore(&spec))?;
            let r = output(in_netns(bed.host_ns(), "iptables-restore").arg(&path));
            let _ = std::fs::remove_file(&path);
            r?;
            Filter::Iptables
        }
        Variant::Nftables => {
            let path = dir.join(format!("hwbench-{}.nft", std::process::id()));
            std::fs::write(&path, policy::nft_script(&spec))?;
            let r = output(in_netns(bed.host_ns(), "nft").arg("-f").arg(&path));
            let _ = std::fs::remove_file(&path);
            r?;
            Filter::Nftables
        }
    })
}

fn run_one(plan: &Plan, tools: &Tools, rules: usize, v: Variant) -> anyhow::Result<Run> {
    let t = std::time::Instant::now();
    let bed = Testbed::new(tools)?;
    let _iperf = bed.iperf_server(SERVER, IPERF_PORT)?;
    let _load = bed.load_server(SERVER, LOAD_PORT)?;
    let _other = bed.load_server(SERVER, DENIED_PORT)?;
    let filter = install(&bed, rules, v)?;
    let mut run = Run {
        setup_secs: t.elapsed().as_secs_f64(),
        ..Run::default()
    };

    (run.check, run.broken) = prove_it_filters(&bed, v)?;
    if run.broken.is_some() {
        return Ok(run);
    }

    let secs = plan.secs;
    run.stream_gbps = iperf(&bed, secs)?;
    let rr = load(&bed, "rr", &["--secs", &secs.to_string()])?;
    run.rr_per_s = num(&rr, "rate")?;
    run.rr_p99_us = num(&rr, "p99_us")?;
    let crr = load(&bed, "crr", &["--secs", &secs.to_string(), "--threads", "2"])?;
    run.crr_per_s = num(&crr, "rate")?;
    run.crr_errors = num(&crr, "errors")? as u64;

    if let Filter::Hostwall(agent) = &filter {
        run.memory = Some(memory(agent)?);
    }

    // Flood while the allowed stream runs.
    let before = dropped(&bed, &filter)?;
    let mut flood_cmd = bed.container(FLOOD).ns.command(&bed.tools.load.to_string_lossy());
    let target = SocketAddr::new(SERVER.v4().into(), FLOOD_PORT);
    flood_cmd.args([
        "flood",
        &target.to_string(),
        "--secs",
        &secs.to_string(),
        "--size",
        "64",
    ]);
    let flood = spawn_collect(flood_cmd, "the flood")?;
    run.flood_stream_gbps = iperf(&bed, secs)?;
    let flood = flood
        .join()
        .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
    let flood: Value = serde_json::from_str(flood.trim()).context("the flood's output")?;
    let after = dropped(&bed, &filter)?;
    let flood_secs = num(&flood, "secs")?;
    run.flood_sent_per_s = num(&flood, "rate")?;
    run.flood_dropped_per_s = match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / flood_secs),
        _ => None,
    };
    drop(filter);
    Ok(run)
}

fn word(passed: bool) -> &'static str {
    if passed { "passed" } else { "dropped" }
}

/// The same allow/deny check for every variant before anything is timed:
/// what it saw, and why the variant is not to be timed (`None`: it
/// filters). Without a filter, every check must get through.
pub(super) fn prove_it_filters(bed: &Testbed, v: Variant) -> anyhow::Result<(String, Option<String>)> {
    let allowed = check(bed, CLIENT, LOAD_PORT)?;
    let denied_peer = check(bed, FLOOD, LOAD_PORT)?;
    let denied_port = check(bed, CLIENT, DENIED_PORT)?;
    let seen = format!(
        "client→server:{LOAD_PORT} {}, flood→server:{LOAD_PORT} {}, client→server:{DENIED_PORT} {}",
        word(allowed),
        word(denied_peer),
        word(denied_port)
    );
    let broken = if v == Variant::None {
        if !(allowed && denied_peer && denied_port) {
            bail!("without a filter every check must get through: {seen}");
        }
        None
    } else if !allowed {
        Some(format!("blocks the allowed pair ({seen})"))
    } else if denied_peer || denied_port {
        Some(format!("lets a denied pair through ({seen})"))
    } else {
        None
    };
    Ok((seen, broken))
}

/// Whether one request from `from` to the server's `port` is answered.
fn check(bed: &Testbed, from: policy::Ep, port: u16) -> anyhow::Result<bool> {
    let target = SocketAddr::new(SERVER.v4().into(), port);
    let mut cmd = in_netns(bed.container(from).ns.name(), &bed.tools.load.to_string_lossy());
    cmd.args(["check", &target.to_string(), "--timeout", "1000"]);
    let mut answered = false;
    // An allowed pair may lose its first SYN to neighbour resolution.
    for _ in 0..3 {
        let status = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        match status.code() {
            Some(0) => {
                answered = true;
                break;
            }
            Some(1) => continue,
            _ => bail!("the check {from:?} → {target} failed ({status})", from = from.name),
        }
    }
    Ok(answered)
}

fn iperf(bed: &Testbed, secs: f64) -> anyhow::Result<f64> {
    topology::iperf(bed.container(CLIENT).ns.name(), SERVER.v4().into(), IPERF_PORT, secs)
}

pub(super) fn load(bed: &Testbed, mode: &str, args: &[&str]) -> anyhow::Result<Value> {
    let target = SocketAddr::new(SERVER.v4().into(), LOAD_PORT);
    let mut cmd = in_netns(bed.container(CLIENT).ns.name(), &bed.tools.load.to_string_lossy());
    cmd.arg(mode).arg(target.to_string()).args(args);
    let text = output(&mut cmd)?;
    serde_json::from_str(text.trim()).with_context(|| format!("hostwall-load {mode} printed {text:?}"))
}

pub fn num(v: &Value, key: &str) -> anyhow::Result<f64> {
    v[key].as_f64().with_context(|| format!("no {key} in {v}"))
}

/// The filter's count of dropped packets so far.
fn dropped(bed: &Testbed, filter: &Filter) -> anyhow::Result<Option<u64>> {
    Ok(match filter {
        Filter::None => None,
        Filter::Hostwall(agent) => {
            let s = agent.stats()?;
            Some(
                [DropReason::EgressDenied, DropReason::IngressDenied]
                    .iter()
                    .map(|r| s.dropped(*r))
                    .sum(),
            )
        }
        // The FORWARD chain's policy counter.
        Filter::Iptables => {
            let text = output(in_netns(bed.host_ns(), "iptables-save").arg("-c"))?;
            let n = text
                .lines()
                .find(|l| l.starts_with(":FORWARD DROP ["))
                .and_then(|l| l.split('[').nth(1))
                .and_then(|l| l.split(':').next())
                .and_then(|n| n.parse::<u64>().ok())
                .context("no FORWARD policy counter in iptables-save -c")?;
            Some(n)
        }
        // The chain's final `counter drop` rule.
        Filter::Nftables => {
            let text = output(in_netns(bed.host_ns(), "nft").args(["list", "chain", "inet", "hwbench", "forward"]))?;
            let n = text
                .lines()
                .find(|l| l.contains("counter packets") && l.trim_end().ends_with("drop"))
                .and_then(|l| l.split("counter packets").nth(1))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .context("no drop counter in the nft chain")?;
            Some(n)
        }
    })
}

/// Kernel memory of the agent's maps and the agent's resident memory.
fn memory(agent: &Agent) -> anyhow::Result<Memory> {
    let mut m = Memory::default();
    let maps_dir = agent
        .bpffs()
        .join(format!(
            "v{}",
            hostwall_tests::hostwall::datapath::layout::LAYOUT_VERSION
        ))
        .join("maps");
    for e in std::fs::read_dir(&maps_dir).with_context(|| format!("reading {}", maps_dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let text = output(
            std::process::Command::new("bpftool")
                .args(["-j", "map", "show", "pinned"])
                .arg(e.path()),
        )?;
        let v: Value = serde_json::from_str(&text)?;
        m.maps.insert(name, v["bytes_memlock"].as_u64().unwrap_or(0));
    }
    if let Some(pid) = agent.pid() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        m.agent_rss_kib = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
    }
    let stats = agent.cli(&["status", "--json"])?;
    let v: Value = serde_json::from_str(&stats)?;
    m.ct_entries = find_ct_entries(&v).unwrap_or(0);
    Ok(m)
}

/// `HW_CONNTRACK`'s entry count in `hostwall status --json`.
fn find_ct_entries(v: &Value) -> Option<usize> {
    match v {
        Value::Object(m) => {
            if m.get("map").and_then(Value::as_str) == Some("HW_CONNTRACK") {
                return m.get("entries").and_then(Value::as_u64).map(|n| n as usize);
            }
            m.values().find_map(find_ct_entries)
        }
        Value::Array(a) => a.iter().find_map(find_ct_entries),
        _ => None,
    }
}
