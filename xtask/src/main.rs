//! Developer commands: `cargo xtask test`, `cargo xtask demo`, `cargo xtask
//! bench`, `cargo xtask vm-test`, `cargo xtask fuzz`, `cargo xtask
//! fuzz-datapath`.

mod bench;
mod demo;
mod fuzz;
mod vm;

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
        /// Only these sections (comma-separated); the report goes to
        /// bench/out/only/ (bench/out/quick/ with --quick).
        #[arg(long, visible_alias = "section", value_enum, value_delimiter = ',')]
        only: Vec<bench::Section>,
        /// The revision whose eBPF object this build's is compared with.
        #[arg(long, value_name = "REV", default_value = bench::baseline::DEFAULT_REVISION)]
        baseline: String,
    },
    /// The integration scenarios in QEMU VMs on Debian's 6.1 and 6.12
    /// kernels, and two VMs linked as two hosts (HOSTWALL_VM_ACCEL=kvm for
    /// KVM; TCG by default).
    VmTest {
        /// Only these kernels for the single-host scenario (e.g. 6.1).
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Only these integration tests inside the VMs (e.g. matrix).
        #[arg(long = "test")]
        tests: Vec<String>,
        /// Leave out the two-host scenario.
        #[arg(long)]
        no_two_host: bool,
        /// Leave out the single-host scenarios.
        #[arg(long, conflicts_with = "no_two_host")]
        no_single: bool,
    },
    /// Inside a test VM: run the scenario its kernel command line names.
    #[command(hide = true)]
    VmGuest,
    /// Run the cargo-fuzz targets for a bounded time each.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// Compare the eBPF programs with the reference evaluator on generated
    /// policies and packets.
    FuzzDatapath {
        /// Packets to run (about 200 per policy).
        #[arg(long, default_value_t = 1_000_000)]
        cases: u64,
        /// The seed (default: a fresh one, printed).
        #[arg(long, value_parser = fuzz::parse_seed)]
        seed: Option<u64>,
        /// Run only this case (policy) of the seed, as a failure names it.
        #[arg(long)]
        case: Option<u64>,
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
            fuzz::after_tests(&repo_root())?;
            if args.is_empty() {
                bench::run(
                    &repo_root(),
                    &bench::Options {
                        quick: true,
                        only: Vec::new(),
                        baseline: bench::baseline::DEFAULT_REVISION.into(),
                    },
                )?;
            }
            println!("all tests passed");
            Ok(())
        }
        Cmd::VmTest {
            kernels,
            tests,
            no_two_host,
            no_single,
        } => vm::run(vm::Options {
            kernels,
            tests,
            single: !no_single,
            two_host: !no_two_host,
        }),
        Cmd::VmGuest => vm::guest::main(),
        Cmd::Demo => {
            let (hostwall, probe) = build_binaries()?;
            if !demo::run(&hostwall, &probe, &repo_root())? {
                bail!("the observed reachability matrix differs from examples/shop.expected");
            }
            Ok(())
        }
        Cmd::Bench { quick, only, baseline } => bench::run(&repo_root(), &bench::Options { quick, only, baseline }),
        Cmd::Fuzz { seconds, targets } => {
            let targets: Vec<&str> = if targets.is_empty() {
                fuzz::TARGETS.to_vec()
            } else {
                targets.iter().map(String::as_str).collect()
            };
            fuzz::fuzz(&repo_root(), seconds, &targets)
        }
        Cmd::FuzzDatapath { cases, seed, case } => fuzz::datapath(&repo_root(), cases, seed, case),
    }
}
