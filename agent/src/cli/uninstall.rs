use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The agent's bpffs directory.
    #[arg(long, default_value = super::DEFAULT_BPFFS)]
    bpffs: PathBuf,
}

pub fn run(args: Args, _ctx: &super::Ctx) -> anyhow::Result<ExitCode> {
    let removed = hostwall::daemon::lifecycle::uninstall(&args.bpffs)?;
    println!("{}", removed.summary(&args.bpffs));
    Ok(ExitCode::SUCCESS)
}
