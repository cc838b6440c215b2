//! The fleet section: the compiled form of policies of the mix operators
//! write (`hostwall::compile::synthetic::fleet`) at 1,000 to 50,000 rules
//! with 0, 10 and 20% broad peers. For each: the entries against the
//! bound, the time to parse and compile, the time from the file's text to
//! a flipped slot, and the kernel memory of every map once both policy
//! slots hold the policy. The measuring is done by the release binary
//! `hostwall-fleet`, one process per policy, so that each starts with no
//! other maps open. Then new connections per second under a fleet policy
//! for hostwall, iptables and nftables (`fleetrate.rs`).

use std::collections::BTreeMap;

use anyhow::Context as _;

use super::{Plan, Tools};

/// One policy's measurements.
#[derive(Clone, Debug)]
pub struct Row {
    pub rules: usize,
    pub broad: u64,
    pub policy_entries: usize,
    pub peer_entries: usize,
    /// Σ over rules of port blocks × own peers.
    pub bound: usize,
    /// Parse and validate the file's text, then compile (ms, median).
    pub compile_ms: f64,
    /// The file's text to a flipped slot, into a slot that held the
    /// previous size's policy (ms, median).
    pub apply_ms: f64,
    /// Kernel memory of every map (bytes), by map name, after both slots
    /// were written.
    pub maps: BTreeMap<String, u64>,
    /// Growth of the measuring process's resident memory (bytes) while it
    /// holds what the agent holds for the policy: the parsed policy, its
    /// compiled form, the rule registry and what each slot was written with.
    pub rss_growth: u64,
    /// Growth of its heap in use (bytes, jemalloc's count) over the same span.
    pub heap_growth: u64,
}

impl Row {
    pub fn total_memory(&self) -> u64 {
        self.maps.values().sum()
    }
}

/// The cost of one new flow through BPF_PROG_TEST_RUN.
#[derive(Clone, Debug)]
pub struct Flow {
    pub rules: usize,
    /// "IPv4 tcp broad denied"
    pub case: String,
    pub ns: f64,
}

pub struct Results {
    pub rows: Vec<Row>,
    pub flows: Vec<Flow>,
    /// The rule counts the TEST_RUN cases compare: the small and the large.
    pub flow_rules: (usize, usize),
    /// The TEST_RUN endpoint's groups and the peers' labels, the same at
    /// both sizes.
    pub flow_shape: (u64, u64),
    /// New connections per second under a fleet policy, by variant.
    pub rates: super::fleetrate::Results,
}

/// The sizes the section measures.
fn sizes(plan: &Plan) -> (Vec<usize>, Vec<u64>) {
    if plan.quick {
        (vec![1_000], vec![20])
    } else {
        (vec![1_000, 10_000, 50_000], vec![0, 10, 20])
    }
}

pub fn run(plan: &Plan, tools: &Tools) -> anyhow::Result<Results> {
    let (rule_counts, broads) = sizes(plan);
    let rounds = if plan.quick { 1 } else { 5 };
    let fleet = tools.load.with_file_name("hostwall-fleet");
    let mut rows = Vec::new();
    for &rules in &rule_counts {
        for &broad in &broads {
            let out = super::output(std::process::Command::new(&fleet).args([
                rules.to_string(),
                broad.to_string(),
                rounds.to_string(),
            ]))?;
            let v: serde_json::Value = serde_json::from_str(out.trim()).context("hostwall-fleet's output")?;
            let n = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
            let mut maps = BTreeMap::new();
            for (name, bytes) in v["maps"].as_object().into_iter().flatten() {
                maps.insert(name.clone(), bytes.as_u64().unwrap_or(0));
            }
            let r = Row {
                rules,
                broad,
                policy_entries: n("policy_entries"),
                peer_entries: n("peer_entries"),
                bound: n("bound"),
                compile_ms: v["compile_ms"].as_f64().unwrap_or(f64::NAN),
                apply_ms: v["apply_ms"].as_f64().unwrap_or(f64::NAN),
                maps,
                rss_growth: v["rss_growth"].as_u64().unwrap_or(0),
                heap_growth: v["heap_growth"].as_u64().unwrap_or(0),
            };
            println!(
                "bench: fleet {rules} rules, {broad}% broad: {} policy entries (bound {}), compile {:.1} ms, apply {:.1} ms, maps {:.1} MiB, {} bytes resident and {} of heap in use per rule",
                r.policy_entries,
                r.bound,
                r.compile_ms,
                r.apply_ms,
                r.total_memory() as f64 / (1 << 20) as f64,
                r.rss_growth / rules.max(1) as u64,
                r.heap_growth / rules.max(1) as u64
            );
            rows.push(r);
        }
    }
    let asked = if plan.quick { (10, 1_000) } else { (10, 10_000) };
    let (repeat, rounds) = if plan.quick { (1_000, 1) } else { (200_000, 5) };
    let mut flows = Vec::new();
    let mut flow_rules = asked;
    let mut flow_shape = (0, 0);
    for asked in [asked.0, asked.1] {
        let out = super::output(std::process::Command::new(&fleet).args([
            "testrun".to_string(),
            asked.to_string(),
            repeat.to_string(),
            rounds.to_string(),
        ]))?;
        let v: serde_json::Value = serde_json::from_str(out.trim()).context("hostwall-fleet testrun's output")?;
        // The policy holds a few rules more than asked: those the cases need.
        let rules = v["rules"].as_u64().unwrap_or(asked as u64) as usize;
        if asked == flow_rules.0 {
            flow_rules.0 = rules;
        } else {
            flow_rules.1 = rules;
        }
        flow_shape = (v["groups"].as_u64().unwrap_or(0), v["labels"].as_u64().unwrap_or(0));
        for c in v["cases"].as_array().into_iter().flatten() {
            let case = format!(
                "{} {} {} {}",
                c["family"].as_str().unwrap_or("?"),
                c["proto"].as_str().unwrap_or("?"),
                c["peer"].as_str().unwrap_or("?"),
                if c["allowed"].as_bool() == Some(true) {
                    "allowed"
                } else {
                    "denied"
                }
            );
            let ns = c["ns"].as_f64().unwrap_or(f64::NAN);
            println!("bench: fleet TEST_RUN {rules} rules, new flow {case}: {ns:.0} ns");
            flows.push(Flow { rules, case, ns });
        }
    }
    let rates = super::fleetrate::run(plan, tools)?;
    Ok(Results {
        rows,
        flows,
        flow_rules,
        flow_shape,
        rates,
    })
}
