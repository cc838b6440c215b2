//! `report.md` and its plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;

use super::compare::{self, Kind};
use super::plot::{self, Series, short};
use super::traffic::{VARIANTS, Variant};
use super::updates::{TOOLS, Tool};
use super::{Plan, Section, fleet, hooks, progrun, quantile, traffic, updates};

pub struct Report {
    plan: Plan,
    pub progrun: Option<progrun::Results>,
    pub traffic: Option<traffic::Results>,
    pub updates: Option<updates::Results>,
    pub hooks: Option<hooks::Results>,
    pub compare: Option<compare::Results>,
    pub fleet: Option<fleet::Results>,
    pub elapsed: Duration,
    goals: Vec<Goal>,
    loadavg_start: String,
}

/// Other work on the machine shows here.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Goal {
    what: String,
    measured: String,
    met: bool,
    /// What limits the result, said when the goal is missed.
    limit: &'static str,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{model}, {cpus} CPUs, {mem}")
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

impl Report {
    pub fn new(plan: &Plan) -> Report {
        Report {
            plan: plan.clone(),
            progrun: None,
            traffic: None,
            updates: None,
            hooks: None,
            compare: None,
            fleet: None,
            elapsed: Duration::ZERO,
            goals: Vec::new(),
            loadavg_start: loadavg(),
        }
    }

    fn goal(&mut self, what: &str, measured: String, met: bool, limit: &'static str) {
        self.goals.push(Goal {
            what: what.into(),
            measured,
            met,
            limit,
        });
    }

    /// Writes report.md and the plots into `dir`; returns the report's path.
    pub fn write(&mut self, dir: &Path) -> anyhow::Result<PathBuf> {
        let mut body = String::new();
        self.progrun_section(dir, &mut body)?;
        self.traffic_section(dir, &mut body)?;
        self.updates_section(dir, &mut body)?;
        self.memory_section(&mut body);
        self.hooks_section(dir, &mut body)?;
        self.compare_section(&mut body);
        self.fleet_section(&mut body);

        let mut md = String::new();
        let command = &self.plan.command;
        let _ = writeln!(md, "# hostwall benchmark\n");
        if self.plan.quick {
            md.push_str(
                "**Quick run**: small sizes and short runs, to check that the benchmark works. \
                 Its numbers mean nothing.\n\n",
            );
        }
        let _ = writeln!(md, "| | |\n| --- | --- |");
        let _ = writeln!(md, "| command | `{command}` (as root, from the repository) |");
        let _ = writeln!(md, "| date | {} |", first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
        let _ = writeln!(md, "| machine | {} |", machine());
        let _ = writeln!(
            md,
            "| kernel | Linux {} |",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        );
        let _ = writeln!(
            md,
            "| tools | {}; {}; {}; {} |",
            first_line("iperf3", &["--version"]),
            first_line("iptables", &["--version"]),
            first_line("nft", &["--version"]),
            first_line("bpftool", &["version"])
        );
        let _ = writeln!(md, "| duration | {:.0} s |", self.elapsed.as_secs_f64());
        let _ = writeln!(
            md,
            "| load average (1, 5, 15 min) | {} at the start, {} at the end |\n",
            self.loadavg_start,
            loadavg()
        );
        md.push_str(
            "A shared 2-CPU virtual machine: absolute numbers are noise from run to run; the \
             ratios between variants measured in the same run are what the benchmark is for.\n\n",
        );
        md.push_str("## Goals\n\n| goal | measured | met |\n| --- | --- | --- |\n");
        for g in &self.goals {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                g.what,
                g.measured,
                if g.met { "yes" } else { "**no**" }
            );
        }
        md.push('\n');
        let missed: Vec<&Goal> = self.goals.iter().filter(|g| !g.met).collect();
        if !missed.is_empty() {
            md.push_str("Where a goal is missed, what limits it:\n\n");
            for g in missed {
                let _ = writeln!(md, "- **{}** ({}): {}", g.what, g.measured, g.limit);
            }
            md.push('\n');
        }
        md.push_str(&body);
        let path = dir.join("report.md");
        std::fs::write(&path, md)?;
        Ok(path)
    }

    fn progrun_section(&mut self, dir: &Path, md: &mut String) -> anyhow::Result<()> {
        let Some(r) = self.progrun.clone() else { return Ok(()) };
        let rules = self.plan.progrun_rules.clone();
        let _ = writeln!(md, "## 1. Cost per packet (BPF_PROG_TEST_RUN)\n");
        let _ = writeln!(
            md,
            "The real TC program of a sending endpoint's interface, run {} times per case by the kernel \
             on one frame (median of {} rounds), with a policy of N rules and {} endpoints ({} of them on \
             another node). Rule fillers alternate IPv4 and IPv6 peers. Cases:\n",
            r.repeat,
            r.rounds,
            r.endpoints,
            r.endpoints - 3
        );
        md.push_str(
            "- **established**: a TCP ACK of a tracked flow (one conntrack hit).\n\
             - **new TCP flow**: a SYN the rules allow. Repeating one packet would make every run after \
             the first a conntrack hit, so the measured policy slot's `tcp_other` timeout (the timeout of \
             a flow that has seen no reply) is set to zero: each run finds the flow's entry expired and \
             takes the whole new-flow path, both conntrack lookups, the rule lookups of both sides and the \
             conntrack insert included.\n\
             - **new ICMP (untracked)**: an ICMP timestamp request (ICMPv6: node information query), a type \
             hostwall never tracks, so the rules judge every packet, with the stock settings.\n\
             - **denied**: a SYN the sender's egress allows and the receiver's ingress denies, the longest \
             path to a drop.\n\n",
        );
        md.push_str("| case | family |");
        for n in &rules {
            let _ = write!(md, " {n} rules |");
        }
        let last = *rules.last().unwrap_or(&0);
        let first = *rules.first().unwrap_or(&0);
        let _ = writeln!(md, " {last} / {first} |");
        md.push_str("| --- | --- |");
        for _ in 0..=rules.len() {
            md.push_str(" ---: |");
        }
        md.push('\n');
        let mut worst: (f64, String) = (0.0, String::new());
        let mut series = Vec::new();
        for case in progrun::CASES {
            for v6 in [false, true] {
                let fam = if v6 { "IPv6" } else { "IPv4" };
                let _ = write!(md, "| {case} | {fam} |");
                let values: Vec<Option<f64>> = rules.iter().map(|n| r.get(case, v6, *n)).collect();
                for v in &values {
                    let _ = write!(md, " {} |", v.map(|v| format!("{v:.0} ns")).unwrap_or("-".into()));
                }
                let q = match (r.get(case, v6, last), r.get(case, v6, first)) {
                    (Some(a), Some(b)) => ratio(a, b),
                    _ => f64::NAN,
                };
                let _ = writeln!(md, " {q:.2}× |");
                if q > worst.0 {
                    worst = (q, format!("{case}, {fam}"));
                }
                series.push(Series {
                    name: format!("{case} ({fam})"),
                    values,
                });
            }
        }
        let _ = writeln!(md, "\nEntries the compiler wrote (active slot):\n");
        md.push_str("| rules | HW_POLICY | HW_PEER4 + HW_PEER6 |\n| ---: | ---: | ---: |\n");
        for (n, policy, peers) in &r.entries {
            let _ = writeln!(md, "| {n} | {policy} | {peers} |");
        }
        plot::lines(
            &dir.join("cost_per_packet.png"),
            "Cost per packet, BPF_PROG_TEST_RUN (TC, sending endpoint)",
            "rules in the policy",
            "ns per packet",
            &rules,
            &series,
        )?;
        let _ = writeln!(md, "\n![cost per packet](cost_per_packet.png)\n");
        md.push_str(
            "The cost does not scan rules: a packet's rules are a fixed number of hash and LPM-trie lookups. \
             What grows is the depth of the LPM tries (peer addresses and policy keys), whose lookups walk \
             one node per distinguishing bit.\n\n",
        );
        self.goal(
            &format!("TEST_RUN: {last}-rule cost within 1.3× of the {first}-rule cost"),
            format!("worst {:.2}× ({})", worst.0, worst.1),
            worst.0 <= 1.3,
            "no lookup scans rules, but the LPM tries (peer addresses, policy keys) deepen as entries are \
             added: a lookup walks one node per distinguishing prefix bit, a few at 10 rules and about \
             log2(N) more at N. The new-flow and denied paths make up to four such lookups, so they grow \
             most; the established path (one conntrack hash lookup) does not grow.",
        );
        Ok(())
    }

    fn traffic_section(&mut self, dir: &Path, md: &mut String) -> anyhow::Result<()> {
        let Some(r) = self.traffic.clone() else { return Ok(()) };
        let sizes = self.plan.traffic_rules.clone();
        let _ = writeln!(md, "## 2. Real traffic between two containers\n");
        let _ = writeln!(
            md,
            "Containers `client`, `server` and `flood` are network namespaces behind veth pairs, routed \
             (not bridged) by a host namespace, all created and deleted by the benchmark. Each variant at \
             each size gets a fresh host. The policy lets `client` open TCP 5201 (iperf3) and 7000 (the \
             load tool) at `server`, and nothing else; N rules means N - 3 filler rules (one IPv4 peer \
             address and port each) besides those. Every timed measurement lasts {:.0} s.\n",
            r.secs
        );
        md.push_str(
            "- **hostwall**: the agent (release build) on the host-side veths, TC hooks.\n\
             - **iptables** (`iptables-restore`, the nf_tables backend of iptables 1.8): `FORWARD` policy \
             DROP, `-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` first, then one `-s PEER -d SERVER \
             -p tcp --dport PORT -j ACCEPT` per rule; the benchmark's own two rules come last, as an \
             operator's newest rules do.\n\
             - **nftables** (`nft -f`): an `inet` forward chain with policy drop, `ct state vmap { \
             established : accept, related : accept }`, then one lookup of (source, destination, \
             protocol, port) in a hashed set holding every rule, and a counted drop.\n\
             - Routing instead of a bridge: bridged traffic reaches iptables only through br_netfilter \
             (built into this kernel, with per-namespace switches), which costs even without rules; routing \
             puts the same forwarding path in front of all four variants.\n\n",
        );
        md.push_str(
            "Before anything is timed, every variant gets the same check: `client`→`server`:7000 must be \
             answered, `flood`→`server`:7000 and `client`→`server`:7001 (a port no rule allows, with a \
             server on it) must time out. A filter that lets a denied pair through is reported as broken \
             and not timed. Without a filter all three must get through (which shows the check can see a \
             pass).\n\n| rules | variant | check | set-up |\n| ---: | --- | --- | ---: |\n",
        );
        for ((n, v), run) in &r.runs {
            let verdict = match &run.broken {
                Some(why) => format!("**broken**: {why}"),
                None => run.check.clone(),
            };
            let _ = writeln!(md, "| {n} | {} | {verdict} | {:.1} s |", v.name(), run.setup_secs);
        }
        md.push('\n');

        type Pick = fn(&traffic::Run) -> Option<f64>;
        let metrics: [(&str, &str, &str, Pick); 5] = [
            ("TCP stream (iperf3, one stream)", "Gbit/s", "stream", |r| {
                Some(r.stream_gbps)
            }),
            ("request/response on one connection", "transactions/s", "rr", |r| {
                Some(r.rr_per_s)
            }),
            (
                "new connections (connect, one request, close)",
                "connections/s",
                "crr",
                |r| Some(r.crr_per_s),
            ),
            ("denied flood packets dropped", "packets/s", "flood_drop", |r| {
                r.flood_dropped_per_s
            }),
            ("allowed stream during the flood", "Gbit/s", "flood_stream", |r| {
                Some(r.flood_stream_gbps)
            }),
        ];
        let get = |n: usize, v: Variant, f: Pick| -> Option<f64> {
            r.runs.get(&(n, v)).filter(|run| run.broken.is_none()).and_then(f)
        };
        for (title, unit, file, f) in metrics {
            let _ = writeln!(md, "### {title} ({unit})\n");
            md.push_str("| rules |");
            for v in VARIANTS {
                let _ = write!(md, " {} |", v.name());
            }
            if file != "flood_drop" {
                md.push_str(" hostwall / no filter | iptables / no filter | nftables / no filter |");
            }
            md.push_str("\n| ---: |");
            let cols = VARIANTS.len() + if file != "flood_drop" { 3 } else { 0 };
            for _ in 0..cols {
                md.push_str(" ---: |");
            }
            md.push('\n');
            for &n in &sizes {
                let _ = write!(md, "| {n} |");
                for v in VARIANTS {
                    let cell = match r.runs.get(&(n, v)) {
                        Some(run) if run.broken.is_some() => "broken".to_string(),
                        Some(run) => f(run).map(short).unwrap_or("-".into()),
                        None => "-".into(),
                    };
                    let _ = write!(md, " {cell} |");
                }
                if file != "flood_drop" {
                    for v in [Variant::Hostwall, Variant::Iptables, Variant::Nftables] {
                        let q = match (get(n, v, f), get(n, Variant::None, f)) {
                            (Some(a), Some(b)) => format!("{:.2}", ratio(a, b)),
                            _ => "-".into(),
                        };
                        let _ = write!(md, " {q} |");
                    }
                }
                md.push('\n');
            }
            if file == "flood_drop" {
                md.push_str("\nFlood packets sent per second by the flooding container (one thread, 64-byte UDP):\n\n");
                variant_table(md, &sizes, |n, v| get(n, v, |r| Some(r.flood_sent_per_s)));
            }
            let series: Vec<Series> = VARIANTS
                .iter()
                .filter(|v| file != "flood_drop" || **v != Variant::None)
                .map(|v| Series {
                    name: v.name().to_string(),
                    values: sizes.iter().map(|n| get(*n, *v, f)).collect(),
                })
                .collect();
            let groups: Vec<String> = sizes.iter().map(|n| format!("{n} rules")).collect();
            let png = format!("traffic_{file}.png");
            plot::bars(&dir.join(&png), title, unit, &groups, &series)?;
            let _ = writeln!(md, "\n![{title}]({png})\n");
        }
        let _ = writeln!(md, "Request/response p99 latency (µs):\n");
        variant_table(md, &sizes, |n, v| get(n, v, |r| Some(r.rr_p99_us)));
        md.push('\n');

        // Goals.
        let stream_min = sizes
            .iter()
            .filter_map(|n| {
                Some((
                    ratio(
                        get(*n, Variant::Hostwall, |r| Some(r.stream_gbps))?,
                        get(*n, Variant::None, |r| Some(r.stream_gbps))?,
                    ),
                    *n,
                ))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((q, n)) = stream_min {
            self.goal(
                "stream throughput: hostwall ≥ 0.95 × no filter",
                format!("lowest {q:.2} (at {n} rules)"),
                q >= 0.95,
                "a stream is judged by one conntrack hit per GSO packet, which does not depend on the \
                 rules; compare the ratio across sizes and with the hook table in section 5 (the same \
                 TC programs against no program in another run): on this shared 2-CPU machine \
                 single-stream throughput moves by this much between runs, other worktrees' test suites \
                 running beside the benchmark.",
            );
        }
        let target = if sizes.contains(&10_000) {
            10_000
        } else {
            *sizes.last().unwrap_or(&0)
        };
        let crr = |v| get(target, v, |r| Some(r.crr_per_s));
        if let (Some(h), Some(none)) = (crr(Variant::Hostwall), crr(Variant::None)) {
            let q = ratio(h, none);
            self.goal(
                &format!("new connections/s at {target} rules: hostwall ≥ 0.9 × no filter"),
                format!("{q:.2}"),
                q >= 0.9,
                "every new connection costs hostwall two conntrack misses, the rule lookups of both sides \
                 and an LRU-hash insert on its SYN, and a conntrack hit on every later packet, at both \
                 veths; and the agent's conntrack sweep walks the whole table every 2 s with one system \
                 call per tracked flow (tens of thousands after a connection-rate test), on the same 2 \
                 CPUs as the load.",
            );
            if let Some(nft) = crr(Variant::Nftables) {
                let q = ratio(h, nft);
                self.goal(
                    &format!("new connections/s at {target} rules: hostwall ≥ nftables"),
                    format!("{q:.2} × nftables"),
                    q >= 1.0,
                    "as for the ratio to no filter; nftables' per-connection cost here is one conntrack \
                     entry and one hashed set lookup.",
                );
            }
        }
        if let Some(&big) = sizes.iter().max() {
            let crr = |v| get(big, v, |r| Some(r.crr_per_s));
            if let (Some(h), Some(ipt)) = (crr(Variant::Hostwall), crr(Variant::Iptables)) {
                let q = ratio(h, ipt);
                self.goal(
                    &format!("new connections/s at {big} rules: iptables an order of magnitude behind hostwall"),
                    format!("hostwall {q:.1} × iptables"),
                    q >= 10.0,
                    "iptables walks its FORWARD chain linearly for each new connection's first packet only \
                     (later packets match the ESTABLISHED rule first); at this size the walk is not yet ten \
                     times the cost of the rest of a connection's life.",
                );
            }
        }
        Ok(())
    }

    fn updates_section(&mut self, dir: &Path, md: &mut String) -> anyhow::Result<()> {
        let Some(r) = self.updates.clone() else { return Ok(()) };
        let sizes = self.plan.update_rules.clone();
        let _ = writeln!(md, "## 3. Updates\n");
        let _ = writeln!(
            md,
            "Wall time of the whole command, process start included. **Whole policy**: replacing the \
             10-rule policy by the N-rule one (median of {} rounds): `hostwall apply FILE` through the \
             running agent (parse, validate, compile, write the inactive slot, flip, save the control file), \
             `iptables-restore FILE` (the filter table), `nft -f FILE` (the table replaced atomically). \
             **One rule**: {} changes at N rules (10 above 10,000 rules), alternately adding and removing one rule: `hostwall rule \
             add/remove` (through the agent, which also saves the control file), `iptables -A/-D`, and \
             `nft add/delete element` in the rule set.\n",
            r.rounds, self.plan.rule_changes
        );
        md.push_str("| rules | hostwall apply | iptables-restore | nft -f | hostwall / iptables-restore |\n");
        md.push_str("| ---: | ---: | ---: | ---: | ---: |\n");
        for &n in &sizes {
            let g = |t| r.apply_ms.get(&(n, t)).copied();
            let cell = |t| g(t).map(|v| format!("{v:.1} ms")).unwrap_or("-".into());
            let q = match (g(Tool::Hostwall), g(Tool::Iptables)) {
                (Some(a), Some(b)) => format!("{:.3}", ratio(a, b)),
                _ => "-".into(),
            };
            let _ = writeln!(
                md,
                "| {n} | {} | {} | {} | {q} |",
                cell(Tool::Hostwall),
                cell(Tool::Iptables),
                cell(Tool::Nftables)
            );
        }
        for (n, t, e) in &r.failed {
            let _ = writeln!(md, "\n**{} failed at {n} rules**: {e}", t.name());
        }
        md.push_str("\n| rules | one-rule change | p50 | p99 | max |\n| ---: | --- | ---: | ---: | ---: |\n");
        for &n in &sizes {
            for t in TOOLS {
                if let Some(s) = r.change_ms.get(&(n, t)) {
                    let mut s = s.clone();
                    let (p50, p99, max) = (quantile(&mut s, 0.5), quantile(&mut s, 0.99), quantile(&mut s, 1.0));
                    let _ = writeln!(
                        md,
                        "| {n} | {} | {p50:.2} ms | {p99:.2} ms | {max:.2} ms |",
                        t.one_rule()
                    );
                }
            }
        }
        let groups: Vec<String> = sizes.iter().map(|n| format!("{n} rules")).collect();
        let series: Vec<Series> = TOOLS
            .iter()
            .map(|t| Series {
                name: t.name().into(),
                values: sizes.iter().map(|n| r.apply_ms.get(&(*n, *t)).copied()).collect(),
            })
            .collect();
        plot::bars(
            &dir.join("updates_apply.png"),
            "Applying a whole policy",
            "ms",
            &groups,
            &series,
        )?;
        let series: Vec<Series> = TOOLS
            .iter()
            .map(|t| Series {
                name: t.one_rule().into(),
                values: sizes
                    .iter()
                    .map(|n| r.change_ms.get(&(*n, *t)).map(|s| quantile(&mut s.clone(), 0.99)))
                    .collect(),
            })
            .collect();
        plot::bars(
            &dir.join("updates_one_rule.png"),
            "One-rule change, p99",
            "ms",
            &groups,
            &series,
        )?;
        md.push_str("\n![whole apply](updates_apply.png)\n\n![one rule](updates_one_rule.png)\n\n");

        let target = if sizes.contains(&10_000) {
            10_000
        } else {
            *sizes.last().unwrap_or(&0)
        };
        if let (Some(h), Some(i)) = (
            r.apply_ms.get(&(target, Tool::Hostwall)),
            r.apply_ms.get(&(target, Tool::Iptables)),
        ) {
            let q = ratio(*h, *i);
            self.goal(
                &format!("whole apply at {target} rules ≤ 0.1 × iptables-restore"),
                format!("{h:.1} ms vs {i:.1} ms ({q:.3}×)"),
                q <= 0.1,
                "the agent parses the YAML control file (libyaml through serde, about 13 ms per 1,000 \
                 rules of this policy on this machine), compiles the whole policy (about 6 ms per 1,000 \
                 rules), writes the map entries that changed (one batch system call per map) and saves the control \
                 file with fsync; iptables-restore parses a line format in C and sends one netlink batch. \
                 Parsing alone is about half of the apply: reaching a tenth of iptables-restore needs a \
                 faster parser or a binary format between the CLI and the agent.",
            );
        }
        if let Some(s) = r.change_ms.get(&(target, Tool::Hostwall)) {
            let p99 = quantile(&mut s.clone(), 0.99);
            self.goal(
                &format!("one-rule change p99 at {target} rules < 10 ms"),
                format!("{p99:.2} ms"),
                p99 < 10.0,
                "only the map writes are incremental: a rule change edits the policy, re-validates the \
                 whole of it through the YAML writer and parser (so an API change can never enforce what \
                 a file could not), recompiles it, diffs it and saves the control file with fsync, each \
                 proportional to the policy's size. Under 10 ms at 10,000 rules needs validation and \
                 compilation of the changed group only.",
            );
        }
        Ok(())
    }

    fn memory_section(&mut self, md: &mut String) {
        let Some(r) = self.traffic.clone() else { return };
        let rows: Vec<(usize, traffic::Memory)> = r
            .runs
            .iter()
            .filter_map(|((n, v), run)| {
                (*v == Variant::Hostwall)
                    .then(|| run.memory.clone().map(|m| (*n, m)))
                    .flatten()
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        md.push_str("## 4. Memory\n\n");
        md.push_str(
            "Kernel memory of every map as the kernel accounts it (`bytes_memlock` of `bpftool map show`, \
             the map's own memory-usage estimate on this kernel), read from the agent of the traffic run \
             after its connection-rate test, and the agent's resident memory (VmRSS). Slot maps exist twice; \
             the inactive slot holds the previous policy (here: none, so it is empty).\n\n",
        );
        let slot_maps = ["HW_POLICY", "HW_PEER4", "HW_PEER6", "HW_SRC", "HW_IFACE"];
        let is_slot = |name: &str| slot_maps.iter().any(|p| name.starts_with(p));
        md.push_str(
            "| rules | all maps | policy slots (both) | HW_CONNTRACK | tracked flows | agent RSS |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for (n, m) in &rows {
            let total: u64 = m.maps.values().sum();
            let slots: u64 = m.maps.iter().filter(|(k, _)| is_slot(k)).map(|(_, v)| v).sum();
            let ct = m.maps.get("HW_CONNTRACK").copied().unwrap_or(0);
            let _ = writeln!(
                md,
                "| {n} | {} | {} | {} | {} | {} |",
                mib(total),
                mib(slots),
                mib(ct),
                m.ct_entries,
                mib(m.agent_rss_kib * 1024)
            );
        }
        let (first, last) = (rows.first(), rows.last());
        if let (Some((n0, m0)), Some((n1, m1))) = (first, last)
            && n1 > n0
        {
            let slots =
                |m: &traffic::Memory| -> u64 { m.maps.iter().filter(|(k, _)| is_slot(k)).map(|(_, v)| v).sum() };
            let per_rule = (slots(m1) as f64 - slots(m0) as f64) / (*n1 - *n0) as f64;
            let rss = (m1.agent_rss_kib as f64 - m0.agent_rss_kib as f64) * 1024.0 / (*n1 - *n0) as f64;
            let ct = m1.maps.get("HW_CONNTRACK").copied().unwrap_or(0) as f64;
            let _ = writeln!(
                md,
                "\n- **Per rule**: {per_rule:.0} bytes of kernel memory (policy and peer entries of the active \
                 slot, from {n0} to {n1} rules), and {rss:.0} bytes of agent memory.\n\
                 - **Per tracked connection**: the conntrack table is a preallocated LRU hash of {} flows, \
                 {} in all whatever the load: {:.0} bytes per flow.\n",
                hostwall_common::MAX_CONNTRACK_ENTRIES,
                mib(ct as u64),
                ct / hostwall_common::MAX_CONNTRACK_ENTRIES as f64
            );
        }
        if let Some((n, m)) = rows.last() {
            let _ = writeln!(md, "Every map at {n} rules:\n\n| map | kernel memory |\n| --- | ---: |");
            for (k, v) in &m.maps {
                let _ = writeln!(md, "| {k} | {} |", mib(*v));
            }
            md.push('\n');
        }
    }

    fn hooks_section(&mut self, dir: &Path, md: &mut String) -> anyhow::Result<()> {
        let Some(r) = self.hooks.clone() else { return Ok(()) };
        md.push_str("## 5. Hook choice: XDP or TC\n\n");
        md.push_str(
            "One iperf3 TCP stream, client to server, through the host-side veths: no program; hostwall's \
             TC programs; an XDP program that passes everything on the client's host-side veth (hostwall's \
             own uplink program, attached natively with `--uplink hb-cli` and a policy without local \
             endpoints, so every packet is passed after two address lookups).\n\n\
             | setup | Gbit/s | / no program |\n| --- | ---: | ---: |\n",
        );
        let base = r.veth.first().map(|v| v.1).unwrap_or(f64::NAN);
        for (s, g) in &r.veth {
            let _ = writeln!(md, "| {s} | {g:.2} | {:.2} |", ratio(*g, base));
        }
        md.push_str(
            "\nThe uplink: a remote host behind `uplink0` (a veth pair standing for the NIC) streams to the \
             server and, separately, floods it with UDP that no rule allows (one thread, 64-byte \
             datagrams). Drops are hostwall's `ingress-denied` counter: at the server's TC hook after \
             routing without XDP, on the uplink before the stack with it.\n\n\
             | setup | Gbit/s | flood sent/s | dropped/s |\n| --- | ---: | ---: | ---: |\n",
        );
        for (s, g, sent, dropped) in &r.uplink {
            let _ = writeln!(
                md,
                "| {s} | {g:.2} | {} | {} |",
                short(*sent),
                dropped.map(short).unwrap_or("-".into())
            );
        }
        let groups: Vec<String> = r.veth.iter().map(|v| v.0.clone()).collect();
        let series = vec![Series {
            name: "Gbit/s".into(),
            values: r.veth.iter().map(|v| Some(v.1)).collect(),
        }];
        plot::bars(
            &dir.join("hooks_veth.png"),
            "Container veth: TCP stream by hook",
            "Gbit/s",
            &groups,
            &series,
        )?;
        md.push_str("\n![hooks](hooks_veth.png)\n\n");
        if let (Some(tc), Some(xdp)) = (r.veth.get(1), r.veth.get(2)) {
            let _ = writeln!(
                md,
                "On a veth, an XDP program keeps {:.0}% of the stream's throughput where TC keeps {:.0}%: with \
                 XDP attached, the veth can no longer pass GSO super-packets along, so every packet is \
                 segmented to MTU size before the program sees it. Hence hostwall judges endpoints at TC, \
                 and uses XDP only on an uplink, where packets arrive at MTU size anyway and denied \
                 traffic from other hosts is dropped before the stack spends anything on it.\n",
                100.0 * ratio(xdp.1, base),
                100.0 * ratio(tc.1, base)
            );
        }
        Ok(())
    }

    fn compare_section(&mut self, md: &mut String) {
        let Some(r) = self.compare.clone() else { return };
        let fam = |v6: bool| if v6 { "IPv6" } else { "IPv4" };
        let _ = writeln!(
            md,
            "## 6. This build's eBPF object against {}'s (BPF_PROG_TEST_RUN)\n",
            r.revision
        );
        let _ = writeln!(
            md,
            "The eBPF object of `{}` (commit {}: *{}*), built from that revision's tree the way \
             `agent/build.rs` builds it, against this build's, from {}. Both are loaded from their bytes \
             by the same loader and given the same compiled policy by the same slot code: {} rules (the \
             policy of section 1, which also allows UDP and echo requests to `server` from `client` and \
             from the remote endpoints), {} endpoints, the stock timeouts. For each family both objects \
             are loaded fresh {} times; each case runs {} rounds of {} runs per object, spread over \
             the loads and interleaved (the \
             baseline first in one round, this build first in the next), and the table keeps each \
             object's median. Before it is timed, a case must take its path in both objects: the \
             program passes the frame and the `HW_PASSES` counter of the expected reason (established, \
             reply or new-allowed) moves; every timed round is checked again by that counter, which must \
             move once per run.\n",
            r.revision,
            r.commit,
            r.subject,
            r.current,
            r.rules,
            r.endpoints,
            compare::LOADS.min(r.rounds).max(1),
            r.rounds,
            r.repeat
        );
        md.push_str(
            "Cases, each for TCP, UDP and ICMP echo (an ACK after a SYN, a datagram after a datagram, an \
             echo request after an echo request; the replies are an ACK, a datagram and an echo reply). \
             Flows `client` opens to `server`, two local endpoints, so that each packet meets two hooks:\n\n\
             - **established (sender's hook)**: a packet in the direction that opened the flow, at \
             `client`'s TC ingress; **(receiver's hook)**: the same packet at `server`'s TC egress.\n\
             - **reply (receiver's hook)**: the reply at `client`'s TC egress; **(sender's hook)**: the \
             same reply at `server`'s TC ingress.\n\
             - **new … flow**: a SYN, a datagram, an echo request the rules allow, at `client`'s TC \
             ingress. The measured slot's timeout of a flow without reply (`tcp_other`, `udp`, `icmp`, \
             checked against `ct_timeout`, by which both objects judge entries) is set to zero, so each \
             run finds the entry of the run before it expired and takes the whole new-flow path: the \
             conntrack lookups, both sides' rules and the insert.\n\n\
             Flows a remote endpoint (`fleet-0`, on another node) opens to `server`, which meet only \
             `server`'s hooks (**from remote**): established and new at its TC egress, the reply at its \
             TC ingress.\n\n",
        );
        let _ = writeln!(
            md,
            "| case | family | old ({}) | new | new / old | goal | met |\n| --- | --- | ---: | ---: | ---: | ---: | --- |",
            r.short
        );
        for s in &r.samples {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} ns | {:.0} ns | {:.3} | ≤ {:.2} | {} |",
                s.case.name(),
                fam(s.v6),
                s.old_ns(),
                s.new_ns(),
                s.ratio(),
                s.case.goal(),
                if s.met() { "yes" } else { "**no**" }
            );
        }
        // A packet between two local endpoints is judged at both hooks.
        let get = |kind: Kind, l4: compare::L4, v6: bool| {
            r.samples
                .iter()
                .find(|s| s.case.kind == kind && s.case.l4 == l4 && s.v6 == v6)
        };
        let mut both = String::new();
        for (what, kinds) in [
            ("opening direction", [Kind::Established, Kind::EstablishedReceived]),
            ("reply", [Kind::Reply, Kind::ReplySent]),
        ] {
            for l4 in compare::L4S {
                for v6 in [false, true] {
                    let (Some(a), Some(b)) = (get(kinds[0], l4, v6), get(kinds[1], l4, v6)) else {
                        continue;
                    };
                    let (old, new) = (a.old_ns() + b.old_ns(), a.new_ns() + b.new_ns());
                    let _ = writeln!(
                        both,
                        "| {} {what} | {} | {old:.0} ns | {new:.0} ns | {:.3} |",
                        l4.name(),
                        fam(v6),
                        ratio(new, old)
                    );
                }
            }
        }
        if !both.is_empty() {
            md.push_str(
                "\nBetween two local endpoints a packet is judged at the sender's and at the receiver's \
                 hook; the sums of the two:\n\n| packet | family | old | new | new / old |\n\
                 | --- | --- | ---: | ---: | ---: |\n",
            );
            md.push_str(&both);
        }
        md.push('\n');
        let groups: [(&[Kind], &str, &'static str); 6] = [
            (
                &[Kind::Established],
                "established flows at the sender's hook",
                "a flow the sender opened is found by step 5's first lookup in both objects (`HW_CONNTRACK` \
                 as-is); this build adds only work around it (the per-hook order of the candidates, the \
                 reply test of mid-stream entries, the parser's opens-a-flow flag).",
            ),
            (
                &[Kind::Reply],
                "replies at the receiver's hook",
                "at the receiver's hook this build looks a reply up reversed in `HW_CONNTRACK` first, where \
                 the baseline missed it as-is first and then found it reversed (an echo reply is looked up \
                 reversed only, in both); what remains is the work around the lookup.",
            ),
            (
                &[Kind::New],
                "new flows",
                "a new TCP or UDP flow at the sender's hook misses three conntrack lookups in this build (its \
                 own table as-is, `HW_CT_INBOUND` reversed, its own table reversed) where the baseline \
                 missed two, then judges both sides' rules and inserts, as before; an echo request is \
                 looked up once in both.",
            ),
            (
                &[Kind::EstablishedReceived, Kind::ReplySent],
                "a local flow's packets at the receiver's hook, its replies at the sender's",
                "`ToEndpoint` looks for a reply first (`HW_CONNTRACK` reversed), then for a flow opened \
                 towards its endpoint (`HW_CT_INBOUND` as-is), and only third for a packet in the opening \
                 direction of a flow another local endpoint opened (`HW_CONNTRACK` as-is), which the \
                 baseline found with its first lookup: two misses more (one for an echo request, which is \
                 never looked up reversed). At the sender's hook of a reply, `FromEndpoint` misses \
                 `HW_CT_INBOUND` before it finds the flow reversed in `HW_CONNTRACK`, which an echo reply \
                 (looked up reversed only) pays on top of a single lookup. The misses are measured here \
                 against nearly empty tables whose buckets stay in cache; in a loaded table each extra \
                 lookup may also wait for memory. Over both \
                 hooks the lookup order moves cost from the reply to the opening direction (the table of \
                 sums).",
            ),
            (
                &[Kind::RemoteEstablished, Kind::RemoteReply],
                "flows a remote endpoint opens, established and reply",
                "a packet in the opening direction of a flow a remote endpoint opened is looked for at \
                 `ToEndpoint` as a reply in `HW_CONNTRACK` first (a miss) and found second, in \
                 `HW_CT_INBOUND`, where the baseline found it first (an echo request misses nothing more: \
                 it is never looked up reversed). Its reply is found second at `FromEndpoint` in both \
                 objects.",
            ),
            (
                &[Kind::RemoteNew],
                "new flows a remote endpoint opens",
                "a new TCP or UDP flow from a remote endpoint misses three conntrack lookups at `ToEndpoint` \
                 where the baseline missed two, then the receiver's rules and the insert into \
                 `HW_CT_INBOUND`, counted in `HW_CT_COUNT_IN`.",
            ),
        ];
        for (kinds, what, limit) in groups {
            let worst = r
                .samples
                .iter()
                .filter(|s| kinds.contains(&s.case.kind))
                .max_by(|a, b| a.ratio().total_cmp(&b.ratio()));
            let Some(worst) = worst else { continue };
            let goal = worst.case.goal();
            self.goal(
                &format!(
                    "against {}: {what} (TCP, UDP, ICMP echo; IPv4, IPv6) ≤ {goal:.2} × the baseline's cost",
                    r.short
                ),
                format!("worst {:.3}× ({}, {})", worst.ratio(), worst.case.name(), fam(worst.v6)),
                worst.met(),
                limit,
            );
        }
    }

    fn fleet_section(&mut self, md: &mut String) {
        let Some(f) = self.fleet.take() else { return };
        md.push_str(
            "## Fleet policies

",
        );
        md.push_str(
            "Policies of the mix operators write (`hostwall::compile::synthetic::fleet`: 200 groups, \
             1,000 endpoints of which 50 on this node, endpoints in 1 to 5 groups; peers 45% groups, \
             15% prefix lists, 10% `host`, 10% specific CIDRs and the given share of broad CIDRs such \
             as `0.0.0.0/0`, `10.0.0.0/8` and `::/0`; 70% single ports, 15% ranges). *Bound*: Σ over \
             rules of port blocks × own peers, what one slot's `HW_POLICY` may hold. *Compile*: the \
             file's text parsed, validated and compiled. *Apply*: the same, then written into a slot \
             that held an empty policy and flipped, in this process. *Maps*: the kernel memory of \
             every map (the `memlock` of each map's descriptor) with both slots holding the policy \
             and conntrack at its default size. *Memory per rule*: how much the measuring process's \
             resident memory grew, from its start (the eBPF object loaded and the maps created included) \
             to holding the parsed policy, its compiled form (without the entries the slots hold), the rule registry and what each slot holds, over the rules; \
             *heap per rule*: the same for its heap in use (jemalloc's count). As the agent does after each apply, what is held is packed into fresh allocations and the freed pages are purged before memory is read. Medians of 5 rounds.\n\n",
        );
        md.push_str(
            "| rules | broad | policy entries | bound | HW_PEER entries | compile | apply | maps | memory per rule | heap per rule |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for r in &f.rows {
            let _ = writeln!(
                md,
                "| {} | {}% | {} | {} | {} | {:.1} ms | {:.1} ms | {} | {} B | {} B |",
                r.rules,
                r.broad,
                r.policy_entries,
                r.bound,
                r.peer_entries,
                r.compile_ms,
                r.apply_ms,
                mib(r.total_memory()),
                r.rss_growth / r.rules.max(1) as u64,
                r.heap_growth / r.rules.max(1) as u64
            );
        }
        if let Some(r) = f.rows.iter().max_by_key(|r| r.total_memory()) {
            md.push_str("\nMemory by map for the largest row:\n\n| map | memory |\n| --- | ---: |\n");
            let mut maps: Vec<(&String, &u64)> = r.maps.iter().collect();
            maps.sort_by_key(|(_, b)| std::cmp::Reverse(**b));
            for (name, bytes) in maps {
                let _ = writeln!(md, "| {name} | {} |", mib(*bytes));
            }
        }
        md.push('\n');
        let (small, large) = f.flow_rules;
        let (groups, labels) = f.flow_shape;
        let _ = writeln!(
            md,
            "New flows through BPF_PROG_TEST_RUN from the local endpoint of the fleet with the most groups ({groups}) \
             at {small} and {large} rules. Each policy holds the 8 rules the cases need and, in each of the \
             endpoint's groups, a rule naming every group of the two peers ({labels} labels), so that a case makes \
             the same lookups at both sizes: what differs is only how many rules the maps hold. Every run is a new \
             flow, its entry expired at once.\n\n| case | {small} rules | {large} rules | ratio |\n| --- | ---: | ---: | ---: |"
        );
        let mut worst: Option<(f64, String)> = None;
        for a in f.flows.iter().filter(|x| x.rules == small) {
            let Some(b) = f.flows.iter().find(|x| x.rules == large && x.case == a.case) else {
                continue;
            };
            let r = ratio(b.ns, a.ns);
            let _ = writeln!(md, "| {} | {:.0} ns | {:.0} ns | {r:.2} |", a.case, a.ns, b.ns);
            if worst.as_ref().is_none_or(|(w, _)| r > *w) {
                worst = Some((r, a.case.clone()));
            }
        }
        md.push('\n');
        if let Some((r, case)) = worst {
            self.goal(
                &format!("fleet TEST_RUN: a new flow at {large} rules within 1.3× of {small} rules"),
                format!("worst {r:.2}× ({case})"),
                r <= 1.3,
                "a new flow makes the same lookups at any size (per group of the endpoint: the peer's labels, then \
                 three CIDR tiers); what grows is the depth of the LPM tries those lookups walk, and the cache \
                 misses of larger maps",
            );
        }
        let rates = &f.rates;
        let _ = writeln!(
            md,
            "New connections (connect, one request, close; two client threads) from `client` to `server` under a \
             fleet policy of {} rules with 10% broad peers, which the two join with a group each, the rule that \
             allows them last (`fleetrate.rs`): iptables with an ipset per group and prefix list, nftables with \
             named sets, each with one rule per policy rule and IPv4 peer of the groups with members on this host, \
             egress then ingress, conntrack first. Each variant first proves that it filters.\n\n\
             | variant | rules given | check | connections/s | hostwall ÷ variant |\n| --- | ---: | --- | ---: | ---: |",
            rates.policy_rules
        );
        let hostwall = rates
            .rates
            .iter()
            .find(|r| r.variant == traffic::Variant::Hostwall && r.broken.is_none())
            .map(|r| r.crr_per_s);
        for r in &rates.rates {
            let (rate, vs) = match (&r.broken, hostwall) {
                (Some(why), _) => (format!("not timed: {why}"), "-".to_string()),
                (None, Some(h)) => (format!("{:.0}", r.crr_per_s), format!("{:.2}", ratio(h, r.crr_per_s))),
                (None, None) => (format!("{:.0}", r.crr_per_s), "-".to_string()),
            };
            let given = if r.variant == traffic::Variant::None {
                "-".to_string()
            } else {
                r.rules.to_string()
            };
            let _ = writeln!(md, "| {} | {given} | {} | {rate} | {vs} |", r.variant.name(), r.check);
        }
        md.push('\n');
        let within = f.rows.iter().all(|r| r.policy_entries <= r.bound);
        let worst = f
            .rows
            .iter()
            .map(|r| r.policy_entries as f64 / r.bound.max(1) as f64)
            .fold(0.0, f64::max);
        self.goal(
            "fleet: HW_POLICY and the CIDR tries hold at most Σ port blocks × own peers per slot",
            format!("at most {worst:.2} × the bound"),
            within,
            "an entry per rule, peer and port block, or fewer",
        );
        let at_10k: Vec<&fleet::Row> = f.rows.iter().filter(|r| r.rules == 10_000).collect();
        if !at_10k.is_empty() {
            let mem = at_10k.iter().map(|r| r.total_memory()).max().unwrap_or(0);
            self.goal(
                "fleet at 10,000 rules: kernel memory of all maps ≤ 64 MiB (both slots full, default conntrack)",
                mib(mem),
                mem <= 64 << 20,
                "conntrack's two LRU tables are preallocated at their default size",
            );
            let apply = at_10k.iter().map(|r| r.apply_ms).fold(0.0, f64::max);
            let compile = at_10k.iter().map(|r| r.compile_ms).fold(0.0, f64::max);
            // Per rule: what a policy of 10,000 rules holds beyond one of
            // 1,000 with the same endpoints, over the rules it adds (the
            // largest over the broad shares).
            let per_added_rule = |growth: fn(&fleet::Row) -> u64| {
                at_10k
                    .iter()
                    .filter_map(|big| {
                        let small = f.rows.iter().find(|r| r.rules == 1_000 && r.broad == big.broad)?;
                        Some(growth(big).saturating_sub(growth(small)) as f64 / (big.rules - small.rules) as f64)
                    })
                    .fold(None, |w: Option<f64>, x| Some(w.map_or(x, |w| w.max(x))))
            };
            let per_rule = per_added_rule(|r| r.rss_growth);
            let heap_per_rule = per_added_rule(|r| r.heap_growth).unwrap_or(0.0);
            if let Some(per_rule) = per_rule {
                self.goal(
                    "fleet at 10,000 rules: the agent's own memory ≤ 1 KiB per rule",
                    format!(
                        "{per_rule:.0} bytes per rule resident, {heap_per_rule:.0} of heap in use (what a policy of 10,000 rules holds beyond one of 1,000 with the same endpoints: the parsed policy, its compiled form without the entries, the rule registry, each slot's contents)"
                    ),
                    per_rule <= 1024.0,
                    "after each apply the agent copies what it keeps into fresh allocations and jemalloc hands the pages of the parse's temporaries back to the kernel",
                );
            }
            self.goal(
                "fleet at 10,000 rules: file read → flipped ≤ 100 ms",
                format!("{apply:.1} ms (compile alone {compile:.1} ms)"),
                apply <= 100.0,
                "the whole file is parsed, validated and compiled, and every entry written, on each apply",
            );
        }
        self.fleet = Some(f);
    }

    /// For `--quick`: every section run produced numbers and plots, and
    /// every filter passed its check.
    pub fn check_complete(&self) -> anyhow::Result<()> {
        let ran = |s: Section| self.plan.sections.contains(&s);
        let mut missing = Vec::new();
        if ran(Section::Progrun)
            && self
                .progrun
                .as_ref()
                .is_none_or(|r| r.samples.iter().any(|s| !positive(s.ns)))
        {
            missing.push("cost per packet".to_string());
        }
        if ran(Section::Baseline)
            && self.compare.as_ref().is_none_or(|r| {
                r.samples.len() != 2 * compare::CASES.len()
                    || r.samples.iter().any(|s| !positive(s.old_ns()) || !positive(s.new_ns()))
            })
        {
            missing.push("the comparison with the baseline object".to_string());
        }
        match &self.traffic {
            _ if !ran(Section::Traffic) => {}
            Some(t) => {
                for ((n, v), run) in &t.runs {
                    if let Some(why) = &run.broken {
                        missing.push(format!("{} at {n} rules is broken: {why}", v.name()));
                    } else if ![run.stream_gbps, run.rr_per_s, run.crr_per_s].into_iter().all(positive) {
                        missing.push(format!("{} at {n} rules measured nothing", v.name()));
                    } else if *v != Variant::None && !run.flood_dropped_per_s.is_some_and(|d| d > 0.0) {
                        missing.push(format!("{} at {n} rules dropped no flood packet", v.name()));
                    }
                }
            }
            None => missing.push("traffic".into()),
        }
        if ran(Section::Updates)
            && self
                .updates
                .as_ref()
                .is_none_or(|u| u.apply_ms.values().any(|v| !positive(*v)))
        {
            missing.push("updates".into());
        }
        if ran(Section::Fleet)
            && self.fleet.as_ref().is_none_or(|f| {
                f.rows.is_empty() || f.rows.iter().any(|r| r.total_memory() == 0 || r.policy_entries == 0)
            })
        {
            missing.push("fleet".into());
        }
        if ran(Section::Hooks)
            && self
                .hooks
                .as_ref()
                .is_none_or(|h| h.veth.iter().any(|v| !positive(v.1)))
        {
            missing.push("hooks".into());
        }
        for (section, png) in [
            (Section::Progrun, "cost_per_packet.png"),
            (Section::Traffic, "traffic_stream.png"),
            (Section::Updates, "updates_apply.png"),
            (Section::Hooks, "hooks_veth.png"),
        ] {
            if ran(section) && !self.plan.out_dir.join(png).is_file() {
                missing.push(png.into());
            }
        }
        if !missing.is_empty() {
            bail!("the quick benchmark is incomplete: {}", missing.join("; "));
        }
        println!("bench --quick: every measurement ran and every filter passed its check");
        Ok(())
    }
}

/// A measured value that is a number above zero (not NaN).
fn positive(v: f64) -> bool {
    v > 0.0
}

fn mib(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

/// A table of one number per rule count and variant ("-" where there is
/// none).
fn variant_table(md: &mut String, sizes: &[usize], cell: impl Fn(usize, Variant) -> Option<f64>) {
    md.push_str("| rules |");
    for v in VARIANTS {
        let _ = write!(md, " {} |", v.name());
    }
    md.push_str("\n| ---: |");
    for _ in VARIANTS {
        md.push_str(" ---: |");
    }
    md.push('\n');
    for &n in sizes {
        let _ = write!(md, "| {n} |");
        for v in VARIANTS {
            let text = cell(n, v).map(short).unwrap_or("-".into());
            let _ = write!(md, " {text} |");
        }
        md.push('\n');
    }
}
