use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;

#[derive(clap::Args)]
pub struct Args {
    /// The agent's bpffs directory.
    #[arg(long, default_value = super::DEFAULT_BPFFS)]
    bpffs: PathBuf,
}

/// How long a running agent may take to exit once asked to.
const AGENT_EXIT: Duration = Duration::from_secs(20);

pub fn run(args: Args, ctx: &super::Ctx) -> anyhow::Result<ExitCode> {
    // An agent that runs on this bpffs would go on reporting endpoints as
    // enforced and accepting changes: it is stopped first.
    if let Some(pid) = agent_on(ctx, &args.bpffs) {
        println!(
            "stopping the agent (pid {pid}) that enforces from {}",
            args.bpffs.display()
        );
        stop(pid)?;
    }
    let removed = hostwall::daemon::lifecycle::uninstall(&args.bpffs)?;
    println!("{}", removed.summary(&args.bpffs));
    Ok(ExitCode::SUCCESS)
}

/// The pid of the agent answering on the control socket, when its pins
/// are under `bpffs`.
fn agent_on(ctx: &super::Ctx, bpffs: &Path) -> Option<u32> {
    let status = ctx.call("GET", "/v1/status", &[], None).ok()?;
    let layout = PathBuf::from(status["bpffs"].as_str()?);
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    let root = layout.parent()?;
    if !same(root, bpffs) {
        return None;
    }
    status["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

/// Whether `pid` is a live process (an exited one its parent has not
/// reaped yet is not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// SIGTERM, then waits until the process is gone.
fn stop(pid: u32) -> anyhow::Result<()> {
    let pid_t = i32::try_from(pid).context("a pid")?;
    // SAFETY: kill only sends a signal.
    if unsafe { libc::kill(pid_t, libc::SIGTERM) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("stopping the agent (pid {pid}): {e}");
    }
    let started = Instant::now();
    while running(pid) {
        if started.elapsed() > AGENT_EXIT {
            anyhow::bail!(
                "the agent (pid {pid}) did not exit within {}s of SIGTERM; nothing was removed",
                AGENT_EXIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
