//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/`, each for a bounded
//! time. `cargo xtask fuzz-datapath`: the differential test of the eBPF
//! programs against the reference evaluator, for as many packets as asked.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};

/// The cargo-fuzz targets (`fuzz/fuzz_targets/`).
pub const TARGETS: [&str; 2] = ["policy", "api_decode"];

/// How long `cargo xtask test` fuzzes each target;
/// `HOSTWALL_FUZZ_SECONDS` changes it (0 skips fuzzing).
const TEST_SECONDS: u64 = 30;

/// Fuzzing as part of `cargo xtask test`.
pub fn after_tests(root: &Path) -> anyhow::Result<()> {
    let seconds = match std::env::var("HOSTWALL_FUZZ_SECONDS") {
        Ok(s) => s.parse().context("HOSTWALL_FUZZ_SECONDS is a number of seconds")?,
        Err(_) => TEST_SECONDS,
    };
    if seconds == 0 {
        return Ok(());
    }
    fuzz(root, seconds, &TARGETS)
}

/// Runs each target for `seconds`, starting from the committed seeds
/// (`fuzz/seeds/TARGET`) and the corpus earlier runs left in
/// `target/fuzz-corpus/TARGET`. A crash fails the run; libFuzzer saves
/// the input under `fuzz/artifacts/TARGET/`.
pub fn fuzz(root: &Path, seconds: u64, targets: &[&str]) -> anyhow::Result<()> {
    for target in targets {
        if !TARGETS.contains(target) {
            bail!("no fuzz target {target} (there are {})", TARGETS.join(", "));
        }
        let corpus = root.join("target").join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let seeds = root.join("fuzz").join("seeds").join(target);
        let mut args: Vec<String> = vec!["fuzz".into(), "run".into(), (*target).into()];
        args.push(corpus.display().to_string());
        args.push(seeds.display().to_string());
        args.push("--".into());
        args.push(format!("-max_total_time={seconds}"));
        args.push("-timeout=10".into());
        args.push("-rss_limit_mb=4096".into());
        let dict = root.join("fuzz").join(format!("{target}.dict"));
        if dict.exists() {
            args.push(format!("-dict={}", dict.display()));
        }
        println!("fuzzing {target} for {seconds} s");
        // cargo-fuzz passes -Z flags (sanitizers, coverage) to rustc; the
        // pinned toolchain accepts them with RUSTC_BOOTSTRAP, which is set
        // for this command only, never for the workspace build.
        let status = Command::new(env!("CARGO"))
            .args(&args)
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(root)
            .status()
            .context("running cargo fuzz (scripts/setup installs cargo-fuzz)")?;
        if !status.success() {
            bail!("fuzz target {target} failed ({status}); the input is under fuzz/artifacts/{target}/");
        }
    }
    Ok(())
}

/// A seed, decimal or 0x-prefixed hex (as the test prints it).
pub fn parse_seed(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| e.to_string())
}

/// Runs the differential test's long run for `cases` packets from `seed`
/// (a fresh one when `None`, printed so that a failure can be run again),
/// or only case `case` of the seed.
pub fn datapath(root: &Path, cases: u64, seed: Option<u64>, case: Option<u64>) -> anyhow::Result<()> {
    let seed = seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("differential run: {cases} packets, seed {seed:#x}");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "test",
        "--package",
        "hostwall-tests",
        "--test",
        "differential",
        "--",
        "--ignored",
        "--exact",
        "long_run",
        "--nocapture",
    ])
    .env("HOSTWALL_DIFF_CASES", cases.to_string())
    .env("HOSTWALL_DIFF_SEED", format!("{seed:#x}"))
    .current_dir(root);
    if let Some(case) = case {
        cmd.env("HOSTWALL_DIFF_CASE", case.to_string());
    }
    let status = cmd.status().context("running the differential test")?;
    if !status.success() {
        bail!("the datapath disagrees with the reference (seed {seed:#x}); the report above has the shrunk case");
    }
    Ok(())
}
