//! The `hostwall` command line; one file per subcommand.

mod agent;
mod stats;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/hostwall";

#[derive(Parser)]
#[command(
    name = "hostwall",
    version,
    about = "eBPF security-group firewall for container hosts"
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent in the foreground: enforce the control file.
    Agent(agent::Args),
    /// Check a control file without applying it.
    Validate {
        /// The control file (YAML or JSON).
        file: PathBuf,
    },
    /// Show drop and pass counters (and per-rule counters with --config).
    Stats(stats::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Validate { file } => validate::run(&file),
        Command::Stats(args) => stats::run(args),
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the level chosen by -v/-q.
pub fn init_tracing(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
