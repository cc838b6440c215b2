//! The VM side of `cargo xtask vm-test`: /init runs this binary (the xtask
//! built for musl, installed as /bin/hostwall-vm) as `hostwall-vm
//! vm-guest`. What to do comes from the kernel command line:
//!
//! - `hostwall.scenario=single hostwall.hook=clsact|tcx
//!   hostwall.tests=matrix,identity,… hostwall.threads=N`: check the agent
//!   picks the expected TC attach path, then run those integration test
//!   executables from /tests.
//! - `hostwall.scenario=two-host hostwall.role=a|b`: one side of the
//!   two-host scenario ([`two_host`]).
//!
//! Every line meant for the host starts with `hostwall-vm: `; the exit
//! status becomes the success or failure marker /init prints.

mod single;
mod two_host;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hostwall_tests::Binaries;

/// Where the image puts the programs under test.
const HOSTWALL: &str = "/bin/hostwall";
const PROBE: &str = "/bin/hostwall-probe";

/// One line for the host's progress output (and the console log).
pub fn say(msg: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "hostwall-vm: {msg}");
    let _ = out.flush();
}

fn bins() -> anyhow::Result<Binaries> {
    Binaries::new(HOSTWALL, PROBE)
}

/// `hostwall.KEY=VALUE` parameters of the kernel command line.
fn params() -> anyhow::Result<BTreeMap<String, String>> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    Ok(cmdline
        .split_whitespace()
        .filter_map(|p| p.strip_prefix("hostwall."))
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Waits for `child` up to `timeout`; kills it when the time is up.
fn wait_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

pub fn main() -> anyhow::Result<()> {
    let params = params()?;
    let get = |key: &str| {
        params
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("no hostwall.{key}= on the kernel command line"))
    };
    say(format_args!("Linux {}, scenario {}", release(), get("scenario")?));
    match get("scenario")? {
        "single" => {
            let tests: Vec<&str> = get("tests")?.split(',').filter(|t| !t.is_empty()).collect();
            let threads = get("threads")?;
            single::run(get("hook")?, &tests, threads)
        }
        "two-host" => two_host::run(get("role")?),
        other => bail!("unknown scenario {other:?}"),
    }
}

/// Runs `cmd` to completion (bounded by `timeout`), its output going to
/// the console; fails unless it exits 0.
fn run_bounded(what: &str, cmd: &mut Command, timeout: Duration) -> anyhow::Result<()> {
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    match wait_timeout(&mut child, timeout)? {
        Some(s) if s.success() => Ok(()),
        Some(s) => bail!("{what} failed ({s})"),
        None => bail!("{what} did not finish within {timeout:?} and was killed"),
    }
}
