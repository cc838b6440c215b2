//! The agent under test: `hostwall agent` running in a host namespace, and
//! its counters read through `hostwall stats`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hostwall_common::{DropReason, PassReason};

use crate::bins::Binaries;
use crate::cleanup::{self, Resource};
use crate::netns::{describe, output, run};
use crate::topology::{Host, unique_name};

/// How long the agent may take to load, attach and log `policy applied`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a reload or re-attach may take to show in the log.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// The node name the agent is started with; endpoints with another `node`
/// are remote.
pub const NODE: &str = "testnode";

#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// `--uplink`: the interface to put the XDP filter on.
    pub uplink: Option<String>,
    /// `--node`; default [`NODE`].
    pub node: Option<String>,
    /// More arguments for `hostwall agent` (e.g. `--admin-group`).
    pub args: Vec<String>,
    /// Environment variables for the agent (e.g. `NOTIFY_SOCKET`,
    /// `HOSTWALL_LAYOUT_VERSION`).
    pub env: Vec<(String, String)>,
    /// How long the first policy may take to apply; default
    /// [`START_TIMEOUT`].
    pub start_timeout: Option<Duration>,
    /// How the agent process is started.
    pub launch: Launch,
    /// The harness mounts no bpffs for the agent: it must find or mount
    /// one itself.
    pub own_bpffs: bool,
}

/// How the agent process is started, in the test's network namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Launch {
    /// `ip netns exec`: a mount namespace of its own, /sys remounted.
    #[default]
    NetnsExec,
    /// `nsenter --net`: the host's mount namespace.
    HostMounts,
    /// As a hardened systemd unit runs it: `unshare -m`, a mount
    /// namespace of its own whose mounts follow the host's, with /sys
    /// read-only.
    UnitLike,
}

#[derive(Default)]
struct Log {
    text: Mutex<String>,
    changed: Condvar,
}

/// A running agent with its own config file and bpffs. On drop it is
/// stopped (SIGTERM, then SIGKILL), its bpffs unmounted and its directory
/// removed; when the test is panicking its log is printed first.
pub struct Agent {
    child: Option<Child>,
    /// The cleanup registration of the running child.
    child_cleanup: Option<u64>,
    bins: Binaries,
    host_ns: String,
    opts: AgentOptions,
    label: String,
    dir: PathBuf,
    config: PathBuf,
    bpffs: PathBuf,
    socket: PathBuf,
    log: Arc<Log>,
    cleanup_ids: Vec<u64>,
}

impl Agent {
    /// Starts the agent on `host` with `policy` (the control file's text)
    /// and waits until it logs `policy applied`.
    pub fn start(host: &Host, policy: &str) -> anyhow::Result<Agent> {
        Agent::start_with(host, policy, &AgentOptions::default())
    }

    pub fn start_with(host: &Host, policy: &str, opts: &AgentOptions) -> anyhow::Result<Agent> {
        let label = unique_name("hwt-agent");
        let dir = std::env::temp_dir().join(&label);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cleanup_ids = vec![cleanup::register(Resource::Dir(dir.clone()))];
        let config = dir.join("policy.yaml");
        let bpffs = dir.join("bpffs");
        let socket = dir.join("hostwall.sock");
        let mut agent = Agent {
            child: None,
            child_cleanup: None,
            bins: host.bins().clone(),
            host_ns: host.ns().name().to_string(),
            opts: opts.clone(),
            label,
            dir,
            config,
            bpffs,
            socket,
            log: Arc::new(Log::default()),
            cleanup_ids: Vec::new(),
        };
        std::fs::write(&agent.config, policy)?;
        // The bpffs is mounted here, outside `ip netns exec`: one the agent
        // mounted itself would live in its private mount namespace only.
        std::fs::create_dir_all(&agent.bpffs)?;
        if !opts.own_bpffs {
            mount_bpffs(&agent.bpffs)?;
        }
        // Also when the agent mounts it (in the host's mount namespace).
        cleanup_ids.push(cleanup::register(Resource::Mount(agent.bpffs.clone())));
        agent.cleanup_ids = cleanup_ids;

        agent.spawn()?;
        agent
            .wait_for_log("policy applied", 1, opts.start_timeout.unwrap_or(START_TIMEOUT))
            .context("the agent did not start")?;
        Ok(agent)
    }

    /// Runs `hostwall agent` with this agent's config, bpffs, socket and
    /// options; its output goes to the same log.
    fn spawn(&mut self) -> anyhow::Result<()> {
        // Each launcher execs the next (no fork), so the child's pid is the
        // agent's and signals reach it directly.
        let mut cmd = match self.opts.launch {
            Launch::NetnsExec => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &self.host_ns]).arg(&self.bins.hostwall);
                cmd
            }
            Launch::HostMounts => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{}", self.host_ns))
                    .arg("--")
                    .arg(&self.bins.hostwall);
                cmd
            }
            Launch::UnitLike => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{}", self.host_ns))
                    .args(["--", "unshare", "--mount", "--propagation", "slave", "--", "sh", "-c"])
                    .arg(r#"mount -o remount,bind,ro /sys && exec "$0" "$@""#)
                    .arg(&self.bins.hostwall);
                cmd
            }
        };
        cmd.arg("agent");
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--socket")
            .arg(&self.socket);
        cmd.args(["--node", self.opts.node.as_deref().unwrap_or(NODE)]);
        if let Some(uplink) = &self.opts.uplink {
            cmd.args(["--uplink", uplink]);
        }
        cmd.args(&self.opts.args);
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove(hostwall::datapath::layout::LAYOUT_VERSION_ENV);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{}`", describe(&cmd)))?;
        self.child_cleanup = Some(cleanup::register(Resource::Process {
            pid: child.id() as i32,
            graceful: true,
        }));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut text = log.text.lock().unwrap_or_else(|e| e.into_inner());
                    text.push_str(&line);
                    text.push('\n');
                    log.changed.notify_all();
                }
            });
        }
        self.child = Some(child);
        Ok(())
    }

    fn forget_child(&mut self) {
        if let Some(id) = self.child_cleanup.take() {
            cleanup::forget(id);
        }
    }

    /// Whether the agent process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the agent with SIGKILL (no chance to clean up) and reaps it.
    /// Its config, bpffs and socket path stay for [`Agent::restart`].
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("the agent is not running")?;
        child.kill().context("sending SIGKILL to the agent")?;
        child.wait()?;
        self.forget_child();
        Ok(())
    }

    /// Starts the agent again on the same config, bpffs and socket (after
    /// [`Agent::stop`] or [`Agent::kill9`]) and waits until it logs
    /// `policy applied` once more.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let opts = self.opts.clone();
        self.restart_with(&opts)
    }

    /// [`Agent::restart`] with other options (same config, bpffs, socket).
    pub fn restart_with(&mut self, opts: &AgentOptions) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("the agent is still running");
        }
        if let Some(mut old) = self.child.take() {
            let _ = old.wait();
            self.forget_child();
        }
        self.opts = opts.clone();
        let before = self.count_log(&["policy applied"]);
        self.spawn()?;
        self.wait_for_log("policy applied", before + 1, START_TIMEOUT)
            .context("the restarted agent did not apply its policy")
    }

    /// A path for files a test hands to the CLI (`apply`, `diff`), in a
    /// directory of its own: the agent watches the control file's
    /// directory, and these are no business of it. Removed with the agent.
    pub fn scratch_path(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("scratch");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir.join(name))
    }

    /// The agent's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The agent's control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs a `hostwall` CLI command against this agent (from the test
    /// process) and returns its stdout; fails on a non-zero exit.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.bins.hostwall);
        cmd.arg("--socket").arg(&self.socket).args(args);
        run(&mut cmd)
    }

    /// Runs a `hostwall` CLI command against this agent and returns how it
    /// went, whatever its exit status.
    pub fn cli_output(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(&self.bins.hostwall);
        cmd.arg("--socket").arg(&self.socket).args(args);
        output(&mut cmd)
    }

    /// `hostwall status --json`, parsed. `status` exits 1 when the policy
    /// is not enforced everywhere; that is still a status.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.cli_output(&["status", "--json"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "`hostwall status --json` ({}) printed no JSON: {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        // A status that is not enforced still is one; an error is not.
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            bail!("`hostwall status --json` ({}): {e}", out.status);
        }
        Ok(v)
    }

    /// The hash of the enforced policy, from `hostwall status`.
    pub fn policy_hash(&self) -> anyhow::Result<String> {
        let v = self.status()?;
        v["policy"]["hash"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no policy.hash in the status: {v}"))
    }

    /// `hostwall uninstall` on this agent's bpffs: removes enforcement that
    /// outlives a stopped agent.
    pub fn uninstall(&self) -> anyhow::Result<()> {
        // In the agent's network namespace: on kernels without tcx the
        // programs are netlink filters, found only there.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host_ns])
            .arg(&self.bins.hostwall)
            .arg("uninstall")
            .arg("--bpffs")
            .arg(&self.bpffs);
        run(&mut cmd).map(drop)
    }

    /// `hostwall uninstall --bpffs DIR` (DIR this agent's unless given)
    /// with this agent's socket, while it may run: (success, stdout and
    /// stderr).
    pub fn uninstall_output(&self, bpffs: Option<&Path>) -> anyhow::Result<(bool, String)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.host_ns])
            .arg(&self.bins.hostwall)
            .arg("--socket")
            .arg(&self.socket)
            .arg("uninstall")
            .arg("--bpffs")
            .arg(bpffs.unwrap_or(&self.bpffs))
            .output()?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        self.log.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many log lines contain every one of `needles`.
    pub fn count_log(&self, needles: &[&str]) -> usize {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits until `occurrences` log lines contain `needle`; fails early,
    /// with the log, if the agent exits.
    pub fn wait_for_log(&mut self, needle: &str, occurrences: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for_lines(&[needle], occurrences, timeout)
    }

    /// Like [`Agent::wait_for_log`], for lines containing all of `needles`.
    pub fn wait_for_lines(&mut self, needles: &[&str], occurrences: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count_log(needles) >= occurrences {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                // Let the reader threads catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "the agent exited ({status}) before logging {needles:?}; its log:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "no {needles:?} in the agent's log after {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            let text = self.log.text.lock().unwrap_or_else(|e| e.into_inner());
            let _ = self.log.changed.wait_timeout(text, Duration::from_millis(100));
        }
    }

    /// Replaces the control file, sends SIGHUP and waits for the agent to
    /// log `policy applied` once more.
    pub fn reload(&mut self, policy: &str) -> anyhow::Result<()> {
        let before = self.count_log(&["policy applied"]);
        self.write_config(policy)?;
        self.signal(libc::SIGHUP)?;
        self.wait_for_log("policy applied", before + 1, RELOAD_TIMEOUT)?;
        Ok(())
    }

    /// Replaces the control file with one the agent must refuse, sends
    /// SIGHUP and waits for it to log `policy refused`.
    pub fn reload_refused(&mut self, policy: impl AsRef<[u8]>) -> anyhow::Result<()> {
        let applied = self.count_log(&["policy applied"]);
        let before = self.count_log(&["policy refused"]);
        self.write_config(policy)?;
        self.signal(libc::SIGHUP)?;
        self.wait_for_log("policy refused", before + 1, RELOAD_TIMEOUT)?;
        if self.count_log(&["policy applied"]) != applied {
            bail!(
                "the agent both refused and applied the policy; its log:\n{}",
                self.log()
            );
        }
        Ok(())
    }

    /// Replaces the control file the way configuration management does
    /// (a new file renamed over the old), so the agent's file watch never
    /// sees half a file.
    pub fn write_config(&self, policy: impl AsRef<[u8]>) -> anyhow::Result<()> {
        let tmp = self.dir.join(".policy.yaml.new");
        std::fs::write(&tmp, policy)?;
        std::fs::rename(&tmp, &self.config)?;
        Ok(())
    }

    pub fn signal(&self, sig: libc::c_int) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("the agent is not running")?;
        if unsafe { libc::kill(child.id() as i32, sig) } != 0 {
            return Err(std::io::Error::last_os_error()).context("signalling the agent");
        }
        Ok(())
    }

    /// Stops the agent with SIGTERM and returns how it exited (SIGKILL after
    /// 10 s counts as a failure).
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("the agent is not running")
        };
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                self.forget_child();
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "the agent ignored SIGTERM for 10 s and was killed; its log:\n{}",
            self.log()
        )
    }

    /// Panics unless at least `at_least` drops for `reason` were counted
    /// since `before`; returns the counts since `before`.
    pub fn assert_dropped_since(&self, before: &Stats, reason: DropReason, at_least: u64) -> Stats {
        let delta = self.stats().expect("reading the agent's counters").since(before);
        let n = delta.dropped(reason);
        assert!(
            n >= at_least,
            "expected at least {at_least} drops counted as {}, got {n}; counters since: {delta}",
            reason.name()
        );
        delta
    }

    /// `hostwall stats --json`, run from the test process against the
    /// agent's socket.
    pub fn stats(&self) -> anyhow::Result<Stats> {
        let out = self.cli(&["stats", "--json"])?;
        Stats::parse(&out).with_context(|| format!("parsing `hostwall stats --json` output:\n{out}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        // Counters are readable only while the agent runs.
        let stats = if panicking && self.child.is_some() {
            self.stats().ok()
        } else {
            None
        };
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.forget_child();
        if panicking {
            eprintln!(
                "---- log of agent {} ----\n{}---- end of agent log ----",
                self.label,
                self.log()
            );
            if let Some(stats) = stats {
                eprintln!("---- counters of agent {} ----\n{stats}", self.label);
            }
        }
        cleanup::unmount(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.dir);
        for id in &self.cleanup_ids {
            cleanup::forget(*id);
        }
    }
}

fn mount_bpffs(dir: &Path) -> anyhow::Result<()> {
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("mounting a bpffs on {}", dir.display()));
    }
    Ok(())
}

/// One per-rule counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleStat {
    pub id: u64,
    pub group: String,
    /// `ingress` or `egress`.
    pub direction: String,
    pub index: u64,
    pub packets: u64,
}

/// The agent's counters, by reason name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub drops: BTreeMap<String, u64>,
    pub passes: BTreeMap<String, u64>,
    pub rules: Vec<RuleStat>,
}

impl Stats {
    pub fn parse(json: &str) -> anyhow::Result<Stats> {
        let v: serde_json::Value = serde_json::from_str(json)?;
        let reasons = |key: &str| -> anyhow::Result<BTreeMap<String, u64>> {
            let list = v[key].as_array().with_context(|| format!("no {key:?} list"))?;
            list.iter()
                .map(|r| {
                    let name = r["reason"].as_str().context("a counter without a reason")?;
                    let packets = r["packets"].as_u64().context("a counter without packets")?;
                    Ok((name.to_string(), packets))
                })
                .collect()
        };
        let rules = match v["rules"].as_array() {
            Some(list) => list
                .iter()
                .map(|r| {
                    Some(RuleStat {
                        id: r["id"].as_u64()?,
                        group: r["group"].as_str()?.to_string(),
                        direction: r["direction"].as_str()?.to_string(),
                        index: r["index"].as_u64()?,
                        packets: r["packets"].as_u64()?,
                    })
                })
                .collect::<Option<Vec<_>>>()
                .context("a malformed rule counter")?,
            None => Vec::new(),
        };
        Ok(Stats {
            drops: reasons("drops")?,
            passes: reasons("passes")?,
            rules,
        })
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.name()).copied().unwrap_or(0)
    }

    pub fn passed(&self, reason: PassReason) -> u64 {
        self.passes.get(reason.name()).copied().unwrap_or(0)
    }

    /// Packets counted for rule `index` of `group`'s `direction` list.
    pub fn rule(&self, group: &str, direction: &str, index: u64) -> Option<u64> {
        self.rules
            .iter()
            .find(|r| r.group == group && r.direction == direction && r.index == index)
            .map(|r| r.packets)
    }

    /// The counts since `earlier` (counters only grow while an agent runs).
    pub fn since(&self, earlier: &Stats) -> Stats {
        let sub = |now: &BTreeMap<String, u64>, then: &BTreeMap<String, u64>| {
            now.iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(then.get(k).copied().unwrap_or(0))))
                .collect()
        };
        Stats {
            drops: sub(&self.drops, &earlier.drops),
            passes: sub(&self.passes, &earlier.passes),
            rules: self
                .rules
                .iter()
                .map(|r| {
                    let then = earlier.rule(&r.group, &r.direction, r.index).unwrap_or(0);
                    RuleStat {
                        packets: r.packets.saturating_sub(then),
                        ..r.clone()
                    }
                })
                .collect(),
        }
    }
}

/// The non-zero counters, for failure messages.
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nonzero = |m: &BTreeMap<String, u64>| {
            m.iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        write!(
            f,
            "drops: [{}] passes: [{}]",
            nonzero(&self.drops),
            nonzero(&self.passes)
        )?;
        let rules: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.packets > 0)
            .map(|r| format!("{}/{}[{}]={}", r.group, r.direction, r.index, r.packets))
            .collect();
        if !rules.is_empty() {
            write!(f, " rules: [{}]", rules.join(" "))?;
        }
        Ok(())
    }
}
