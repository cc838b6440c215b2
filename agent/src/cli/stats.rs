use std::path::PathBuf;
use std::process::ExitCode;

use hostwall::{compile, datapath::stats, policy};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// The agent's bpffs directory.
    #[arg(long, default_value = super::DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// The control file the agent enforces, to name per-rule counters.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rules = match &args.config {
        Some(path) => {
            let p = policy::load_file(path)?;
            let view = compile::HostView {
                node: "",
                host_addresses: &[],
                ifindex: &|_| None,
            };
            compile::compile(&p, &view)?.rules
        }
        None => Vec::new(),
    };
    let s = stats::read_pinned(&args.bpffs, rules.len() as u32)?;
    let named: Vec<_> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (packets, bytes) = s.rules.get(i + 1).copied().unwrap_or_default();
            (i + 1, r, packets, bytes)
        })
        .collect();
    if args.json {
        let out = json!({
            "drops": s.drops,
            "passes": s.passes,
            "rules": named.iter().map(|(id, r, p, b)| json!({
                "id": id, "group": r.group, "direction": r.direction.as_str(), "index": r.index,
                "packets": p, "bytes": b,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<32} {:>12} {:>14}", "DROPPED", "PACKETS", "BYTES");
    for r in &s.drops {
        println!("{:<32} {:>12} {:>14}", r.reason, r.packets, r.bytes);
    }
    println!("\n{:<32} {:>12} {:>14}", "PASSED", "PACKETS", "BYTES");
    for r in &s.passes {
        println!("{:<32} {:>12} {:>14}", r.reason, r.packets, r.bytes);
    }
    if !named.is_empty() {
        println!(
            "\n{:<6} {:<32} {:>12} {:>14}",
            "RULE", "GROUP/DIRECTION[INDEX]", "PACKETS", "BYTES"
        );
        for (id, r, p, b) in &named {
            let name = format!("{}/{}[{}]", r.group, r.direction.as_str(), r.index);
            let never = if *p == 0 { "  (never matched)" } else { "" };
            println!("{:<6} {:<32} {:>12} {:>14}{never}", id, name, p, b);
        }
    }
    Ok(ExitCode::SUCCESS)
}
