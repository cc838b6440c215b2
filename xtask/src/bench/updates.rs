//! Policy updates: the wall time of applying a whole policy of N rules
//! (hostwall: `hostwall apply` through the running agent; iptables-restore;
//! `nft -f`), each time replacing the 10-rule policy, and the latency of a
//! one-rule change (hostwall: `hostwall rule add` and `rule remove`;
//! iptables: `-A` and `-D`; nftables: adding and deleting a set element).
//! Every timing is of the whole command, process start included, as an
//! operator or an orchestrator would run it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use hostwall_tests::Agent;

use super::policy::{self, Spec};
use super::topology::Testbed;
use super::{Plan, Tools, in_netns, median, timed};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tool {
    Hostwall,
    Iptables,
    Nftables,
}

pub const TOOLS: [Tool; 3] = [Tool::Hostwall, Tool::Iptables, Tool::Nftables];

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Hostwall => "hostwall apply",
            Tool::Iptables => "iptables-restore",
            Tool::Nftables => "nft -f",
        }
    }
    pub fn one_rule(self) -> &'static str {
        match self {
            Tool::Hostwall => "hostwall rule add/remove",
            Tool::Iptables => "iptables -A/-D",
            Tool::Nftables => "nft add/delete element",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Results {
    pub rounds: usize,
    /// (rules, tool) -> median ms of a whole apply.
    pub apply_ms: BTreeMap<(usize, Tool), f64>,
    /// (rules, tool) -> ms of every one-rule change.
    pub change_ms: BTreeMap<(usize, Tool), Vec<f64>>,
    /// (rules, tool, error) of applies that failed; that tool's one-rule
    /// changes at that size are not measured.
    pub failed: Vec<(usize, Tool, String)>,
}

struct Files {
    small: PathBuf,
    big: PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.small);
        let _ = std::fs::remove_file(&self.big);
    }
}

fn files(kind: &str, small: String, big: String) -> anyhow::Result<Files> {
    let dir = std::env::temp_dir();
    let f = Files {
        small: dir.join(format!("hwbench-{}-small.{kind}", std::process::id())),
        big: dir.join(format!("hwbench-{}-big.{kind}", std::process::id())),
    };
    std::fs::write(&f.small, small)?;
    std::fs::write(&f.big, big)?;
    Ok(f)
}

pub fn run(plan: &Plan, tools: &Tools) -> anyhow::Result<Results> {
    let mut out = Results {
        rounds: plan.apply_rounds,
        apply_ms: BTreeMap::new(),
        change_ms: BTreeMap::new(),
        failed: Vec::new(),
    };
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    for &rules in &plan.update_rules {
        let small = Spec::traffic(10);
        let big = Spec::traffic(rules);
        let bed = Testbed::new(tools)?;
        let hostwall = &tools.bins.hostwall;
        let agent = Agent::start(&bed.host, &policy::hostwall_yaml(&small))?;
        let cli = |args: &[&str]| {
            let mut c = Command::new(hostwall);
            c.arg("--socket").arg(agent.socket()).args(args);
            c
        };
        let hw = files("yaml", policy::hostwall_yaml(&small), policy::hostwall_yaml(&big))?;
        let ipt = files(
            "iptables",
            policy::iptables_restore(&small),
            policy::iptables_restore(&big),
        )?;
        let nft = files("nft", policy::nft_script(&small), policy::nft_script(&big))?;
        let ns = bed.host_ns();

        for tool in TOOLS {
            let mut samples = Vec::new();
            for _ in 0..plan.apply_rounds {
                let (mut reset, mut apply) = match tool {
                    Tool::Hostwall => (
                        cli(&["apply", &hw.small.to_string_lossy()]),
                        cli(&["apply", &hw.big.to_string_lossy()]),
                    ),
                    Tool::Iptables => {
                        let mut r = in_netns(ns, "iptables-restore");
                        r.arg(&ipt.small);
                        let mut a = in_netns(ns, "iptables-restore");
                        a.arg(&ipt.big);
                        (r, a)
                    }
                    Tool::Nftables => {
                        let mut r = in_netns(ns, "nft");
                        r.arg("-f").arg(&nft.small);
                        let mut a = in_netns(ns, "nft");
                        a.arg("-f").arg(&nft.big);
                        (r, a)
                    }
                };
                timed(&mut reset)?;
                match timed(&mut apply) {
                    Ok(d) => samples.push(ms(d)),
                    Err(e) => {
                        println!("  {rules:>6} rules  {:<18} failed: {e:#}", tool.name());
                        out.failed.push((rules, tool, format!("{e:#}")));
                        break;
                    }
                }
            }
            if samples.is_empty() {
                continue;
            }
            let m = median(&mut samples);
            println!("  {rules:>6} rules  {:<18} {m:>9.1} ms", tool.name());
            out.apply_ms.insert((rules, tool), m);
        }

        // One-rule changes, each tool holding the N-rule policy.
        let ipt_rule = policy::iptables_extra_rule();
        let ipt_rule: Vec<&str> = ipt_rule.split_whitespace().collect();
        let element = policy::nft_extra_element();
        // Past 10,000 rules a change takes long enough that fewer samples
        // keep the run short; the report gives their number.
        let changes = if rules > 10_000 {
            plan.rule_changes.min(10)
        } else {
            plan.rule_changes
        };
        for tool in TOOLS {
            if out.failed.iter().any(|(n, t, _)| *n == rules && *t == tool) {
                continue;
            }
            let mut samples = Vec::new();
            for i in 0..changes {
                let add = i % 2 == 0;
                let mut cmd = match tool {
                    Tool::Hostwall => cli(&[
                        "rule",
                        if add { "add" } else { "remove" },
                        "server",
                        "ingress",
                        "--proto",
                        "tcp",
                        "--ports",
                        "40000",
                        "--peer",
                        "cidr:10.202.0.1/32",
                    ]),
                    Tool::Iptables => {
                        let mut c = in_netns(ns, "iptables");
                        c.arg(if add { "-A" } else { "-D" }).args(&ipt_rule);
                        c
                    }
                    Tool::Nftables => {
                        let mut c = in_netns(ns, "nft");
                        c.args([
                            if add { "add" } else { "delete" },
                            "element",
                            "inet",
                            "hwbench",
                            "allow4",
                        ])
                        .arg(&element);
                        c
                    }
                };
                samples.push(ms(timed(&mut cmd)?));
            }
            let mut sorted = samples.clone();
            println!(
                "  {rules:>6} rules  {:<26} p50 {:>7.2} ms  p99 {:>7.2} ms",
                tool.one_rule(),
                super::quantile(&mut sorted, 0.5),
                super::quantile(&mut sorted, 0.99)
            );
            out.change_ms.insert((rules, tool), samples);
        }
        drop(agent);
    }
    Ok(out)
}
