//! The single-host scenario: the integration test executables, unchanged,
//! on the VM's kernel.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hostwall_tests::{Agent, Host};

use super::{HOSTWALL, PROBE, bins, run_bounded, say};

/// One test executable may take this long; the host's deadline for the
/// whole VM is the outer bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);

const HOOK_POLICY: &str = r#"
version: 1
endpoints:
  - {name: probe, interface: hw-probe, addresses: ["10.77.0.11", "fd00:77::11"], groups: []}
"#;

/// The agent's own account of its TC attach path (`hook=` in `policy
/// applied`) must be the one this kernel is in the stage for: a 6.1 VM
/// that took the tcx path would test nothing new.
fn check_hook(expected: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let host = Host::builder(&bins()?).prefix("hwv").build()?;
    let _probe = host.add_container("probe", "hw-probe", 11)?;
    let agent = Agent::start(&host, HOOK_POLICY)?;
    let log = agent.log();
    let hook = log
        .lines()
        .filter(|l| l.contains("policy applied"))
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("hook=")))
        .map(|h| h.trim_matches('"'))
        .with_context(|| format!("no hook= in the agent's `policy applied` line; its log:\n{log}"))?
        .to_string();
    if hook != expected {
        bail!("the agent attached with {hook}, expected {expected} on this kernel; its log:\n{log}");
    }
    say(format_args!(
        "attach path {hook}, as expected ({:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

pub fn run(hook: &str, tests: &[&str], threads: &str) -> anyhow::Result<()> {
    check_hook(hook)?;
    let mut failed = Vec::new();
    for spec in tests {
        // `binary` or `binary:test+test` (exact test names).
        let (name, only) = spec.split_once(':').unwrap_or((spec, ""));
        let only: Vec<&str> = only.split('+').filter(|t| !t.is_empty()).collect();
        let started = Instant::now();
        if only.is_empty() {
            say(format_args!("test {name}: running"));
        } else {
            say(format_args!("test {name}: running {}", only.join(", ")));
        }
        let mut cmd = Command::new(format!("/tests/{name}"));
        if !only.is_empty() {
            cmd.arg("--exact").args(&only);
        }
        let result = run_bounded(
            &format!("/tests/{name}"),
            cmd.args(["--test-threads", threads])
                .env("HOSTWALL_BIN", HOSTWALL)
                .env("HOSTWALL_PROBE_BIN", PROBE)
                .env("RUST_BACKTRACE", "1"),
            TEST_TIMEOUT,
        );
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => say(format_args!("test {name}: passed in {secs:.1} s")),
            Err(e) => {
                say(format_args!("test {name}: FAILED in {secs:.1} s: {e:#}"));
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}
