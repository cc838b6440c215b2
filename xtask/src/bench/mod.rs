//! `cargo xtask bench`: builds hostwall in release mode, measures it
//! against no filter, iptables and nftables, and writes `bench/report.md`
//! with PNG plots beside it. `--quick` runs every measurement at small
//! sizes into `bench/out/quick/` (a check that the benchmark works, run by
//! `cargo xtask test`; its numbers mean nothing). `--only SECTION,…` runs
//! some sections into `bench/out/only/`; `--baseline REV` names the
//! revision whose eBPF object this build's is compared with.
//!
//! Every topology lives in network namespaces the benchmark creates and
//! deletes (also on failure and Ctrl-C); nothing is routed out of them.

pub mod baseline;
mod compare;
mod fleet;
mod fleetrate;
mod hooks;
mod plot;
mod policy;
mod progrun;
mod report;
mod topology;
mod traffic;
mod updates;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::ValueEnum as _;
use hostwall_tests::{Binaries, cleanup};

/// Sizes and durations of one run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    /// Rule counts of the TEST_RUN measurements.
    pub progrun_rules: Vec<usize>,
    pub progrun_repeat: u32,
    /// TEST_RUN rounds per case (the median is kept).
    pub progrun_rounds: usize,
    pub remote_endpoints: usize,
    /// Rule counts of the traffic measurements.
    pub traffic_rules: Vec<usize>,
    /// Seconds of each timed traffic measurement.
    pub secs: f64,
    /// Rule counts of the update measurements.
    pub update_rules: Vec<usize>,
    /// Whole-policy applies per tool and size (the median is kept).
    pub apply_rounds: usize,
    /// One-rule changes through the CLI per size.
    pub rule_changes: usize,
    /// The revision whose eBPF object this build's is compared with.
    pub baseline: String,
    /// Rules of the comparison's policy.
    pub compare_rules: usize,
    pub compare_repeat: u32,
    /// Rounds per case and object (the median is kept).
    pub compare_rounds: usize,
    pub out_dir: PathBuf,
    /// The sections run, in order.
    pub sections: Vec<Section>,
    /// The command line, for the report.
    pub command: String,
}

/// The sections of the benchmark (`--only`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Cost per packet through BPF_PROG_TEST_RUN.
    Progrun,
    /// Real traffic: no filter, hostwall, iptables, nftables.
    Traffic,
    /// Whole-policy applies and one-rule changes.
    Updates,
    /// XDP and TC on a veth and an uplink.
    Hooks,
    /// This build's eBPF object against the baseline revision's.
    Baseline,
    /// The compiled form of fleet policies: entries, memory, compile and
    /// apply times.
    Fleet,
}

pub const SECTIONS: [Section; 6] = [
    Section::Progrun,
    Section::Traffic,
    Section::Updates,
    Section::Hooks,
    Section::Baseline,
    Section::Fleet,
];

impl Section {
    /// Whether the section runs the release binaries.
    fn needs_binaries(self) -> bool {
        matches!(
            self,
            Section::Traffic | Section::Updates | Section::Hooks | Section::Fleet
        )
    }
}

/// What `cargo xtask bench` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    /// Only these sections (all when empty).
    pub only: Vec<Section>,
    pub baseline: String,
}

impl Plan {
    pub fn full(root: &Path) -> Plan {
        Plan {
            quick: false,
            progrun_rules: vec![10, 100, 1_000, 10_000],
            progrun_repeat: 1_000_000,
            progrun_rounds: 3,
            remote_endpoints: 1_000,
            traffic_rules: vec![10, 1_000, 10_000, 50_000],
            secs: 3.0,
            update_rules: vec![1_000, 10_000, 50_000],
            apply_rounds: 3,
            rule_changes: 100,
            baseline: baseline::DEFAULT_REVISION.into(),
            compare_rules: 1_000,
            compare_repeat: 500_000,
            compare_rounds: 9,
            out_dir: root.join("bench"),
            sections: SECTIONS.to_vec(),
            command: "cargo xtask bench".into(),
        }
    }

    pub fn quick(root: &Path) -> Plan {
        Plan {
            quick: true,
            progrun_rules: vec![10, 1_000],
            progrun_repeat: 10_000,
            progrun_rounds: 1,
            remote_endpoints: 50,
            traffic_rules: vec![10],
            secs: 1.0,
            update_rules: vec![1_000],
            apply_rounds: 1,
            rule_changes: 6,
            baseline: baseline::DEFAULT_REVISION.into(),
            compare_rules: 1_000,
            compare_repeat: 10_000,
            compare_rounds: 1,
            out_dir: root.join("bench").join("out").join("quick"),
            sections: SECTIONS.to_vec(),
            command: "cargo xtask bench --quick".into(),
        }
    }
}

/// Release builds of the agent, the probe and the load tool.
pub fn build(root: &Path) -> anyhow::Result<Tools> {
    crate::cargo(&[
        "build",
        "--release",
        "--package",
        "hostwall",
        "--package",
        "hostwall-tests",
        "--bins",
    ])?;
    let dir = root.join("target").join("release");
    Ok(Tools {
        bins: Binaries::new(dir.join("hostwall"), dir.join("hostwall-probe"))?,
        load: dir.join("hostwall-load"),
    })
}

#[derive(Clone, Debug)]
pub struct Tools {
    pub bins: Binaries,
    pub load: PathBuf,
}

pub fn run(root: &Path, opts: &Options) -> anyhow::Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark creates network namespaces and loads eBPF programs: run it as root");
    }
    let mut plan = if opts.quick {
        Plan::quick(root)
    } else {
        Plan::full(root)
    };
    plan.baseline = opts.baseline.clone();
    if opts.baseline != baseline::DEFAULT_REVISION {
        plan.command.push_str(&format!(" --baseline {}", opts.baseline));
    }
    if !opts.only.is_empty() {
        plan.sections = SECTIONS.into_iter().filter(|s| opts.only.contains(s)).collect();
        let names: Vec<String> = plan
            .sections
            .iter()
            .filter_map(|s| s.to_possible_value().map(|v| v.get_name().to_string()))
            .collect();
        plan.command.push_str(&format!(" --only {}", names.join(",")));
        // A partial report never replaces the full one.
        if !opts.quick {
            plan.out_dir = root.join("bench").join("out").join("only");
        }
    }
    let binaries = plan.sections.iter().any(|s| s.needs_binaries());
    if binaries {
        for tool in ["iperf3", "iptables-restore", "nft", "bpftool"] {
            if which(tool).is_none() {
                bail!("{tool} is not installed (scripts/setup installs it)");
            }
        }
    }
    cleanup::cleanup_on_interrupt().context("installing the Ctrl-C handler")?;
    let tools = if binaries { Some(build(root)?) } else { None };
    let tools = || tools.as_ref().context("the release binaries were not built");
    // Built (or found in its cache) before anything is timed.
    let mut baseline_object = if plan.sections.contains(&Section::Baseline) {
        if plan.quick && !baseline::available(root, &plan.baseline) {
            // A shallow clone has no older revisions: the quick run only
            // checks that the benchmark works, and says what it left out.
            println!(
                "bench: {} is not in this clone's history; the comparison with it is left out of the quick run",
                plan.baseline
            );
            plan.sections.retain(|s| *s != Section::Baseline);
            None
        } else {
            Some(baseline::object(root, &plan.baseline)?)
        }
    } else {
        None
    };
    std::fs::create_dir_all(&plan.out_dir).with_context(|| format!("creating {}", plan.out_dir.display()))?;
    let started = Instant::now();
    let mut report = report::Report::new(&plan);

    for section in plan.sections.clone() {
        match section {
            Section::Progrun => {
                step("cost per packet (BPF_PROG_TEST_RUN)");
                report.progrun = Some(progrun::run(&plan)?);
            }
            Section::Traffic => {
                step("real traffic: no filter, hostwall, iptables, nftables");
                report.traffic = Some(traffic::run(&plan, tools()?)?);
            }
            Section::Updates => {
                step("updates: whole policy and one rule");
                report.updates = Some(updates::run(&plan, tools()?)?);
            }
            Section::Hooks => {
                step("hook choice: XDP and TC");
                report.hooks = Some(hooks::run(&plan, tools()?)?);
            }
            Section::Baseline => {
                step(&format!("eBPF object against {} (BPF_PROG_TEST_RUN)", plan.baseline));
                let object = baseline_object.take().context("the baseline object")?;
                report.compare = Some(compare::run(root, &plan, object)?);
            }
            Section::Fleet => {
                step("fleet policies: entries, memory, compile and apply");
                report.fleet = Some(fleet::run(&plan, tools()?)?);
            }
        }
    }

    report.elapsed = started.elapsed();
    let path = report.write(&plan.out_dir)?;
    println!(
        "report written to {} ({:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    if opts.quick {
        report.check_complete()?;
    }
    Ok(())
}

fn step(what: &str) {
    println!("bench: {what}");
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// A command run in a named network namespace by entering it with setns(2)
/// just before exec: unlike `ip netns exec`, this adds nothing but the
/// command's own cost, which matters where commands are timed.
pub fn in_netns(netns: &str, program: &str) -> Command {
    use std::os::unix::process::CommandExt as _;
    let path = std::ffi::CString::new(format!("/run/netns/{netns}")).expect("no NUL in a namespace name");
    let mut cmd = Command::new(program);
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs a command to completion; its stdout, or an error with its stderr.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Wall time of a command run to completion (it must succeed).
pub fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// A background process, killed on drop. It also dies with the benchmark
/// (PR_SET_PDEATHSIG), so that nothing outlives a run that is killed.
pub struct Bg {
    child: Child,
}

impl Bg {
    /// Starts `cmd`; with `ready`, waits until its first stdout line is
    /// that.
    pub fn start(mut cmd: Command, what: &str, ready: Option<&str>) -> anyhow::Result<Bg> {
        use std::os::unix::process::CommandExt as _;
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.stdin(Stdio::null())
            .stdout(if ready.is_some() { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::null());
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let mut bg = Bg { child };
        if let Some(ready) = ready {
            let mut stdout = bg.child.stdout.take().context("no stdout")?;
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            if String::from_utf8_lossy(&line).trim() != ready {
                bail!("{what} did not start: {}", String::from_utf8_lossy(&line));
            }
        }
        Ok(bg)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a command whose stdout is collected, killed on drop.
pub fn spawn_collect(mut cmd: Command, what: &str) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<String>>> {
    use std::os::unix::process::CommandExt as _;
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let what = what.to_string();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    Ok(std::thread::spawn(move || {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }))
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `p`-th quantile (0..=1) by nearest rank.
pub fn quantile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}
