use std::path::PathBuf;
use std::process::ExitCode;

use hostwall::agent::{self, Options};

#[derive(clap::Args)]
pub struct Args {
    /// The control file.
    #[arg(long)]
    config: PathBuf,
    /// Interface facing other hosts; gets the XDP early-drop filter.
    #[arg(long)]
    uplink: Option<String>,
    /// This host's node name (default: the hostname).
    #[arg(long)]
    node: Option<String>,
    /// Directory on a bpffs for pinned maps (mounted if needed).
    #[arg(long, default_value = super::DEFAULT_BPFFS)]
    bpffs: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = Options {
        config: args.config,
        uplink: args.uplink,
        node: args.node.unwrap_or_else(hostwall::host::hostname),
        bpffs: args.bpffs,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(agent::run(opts))?;
    Ok(ExitCode::SUCCESS)
}
