//! Developer commands: `cargo xtask test`, `cargo xtask demo`, `cargo xtask bench`.

mod bench;
mod demo;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Formatting, lints, unit, packet and integration tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build, start a demo host, enforce examples/shop.yaml and print the
    /// reachability matrix.
    Demo,
    /// Measure hostwall against no filter, iptables and nftables; writes
    /// bench/report.md and its plots.
    Bench {
        /// Small sizes and short runs (bench/out/quick/): checks that the
        /// benchmark works.
        #[arg(long)]
        quick: bool,
    },
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(repo_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Builds the agent and the traffic probe; returns their paths.
fn build_binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    cargo(&[
        "build",
        "--package",
        "hostwall",
        "--package",
        "hostwall-tests",
        "--bins",
    ])?;
    let target = repo_root().join("target").join("debug");
    Ok((target.join("hostwall"), target.join("hostwall-probe")))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Test { args } => {
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            build_binaries()?;
            let mut test = vec!["test", "--no-fail-fast"];
            if !args.is_empty() {
                test.push("--");
                test.extend(args.iter().map(String::as_str));
            }
            cargo(&test)?;
            if args.is_empty() {
                bench::run(&repo_root(), true)?;
            }
            println!("all tests passed");
            Ok(())
        }
        Cmd::Demo => {
            let (hostwall, probe) = build_binaries()?;
            if !demo::run(&hostwall, &probe, &repo_root())? {
                bail!("the observed reachability matrix differs from examples/shop.expected");
            }
            Ok(())
        }
        Cmd::Bench { quick } => bench::run(&repo_root(), quick),
    }
}
