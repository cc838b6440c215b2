//! Real traffic between namespaces: echo servers, one-shot probes, and
//! batches of expected reachability run in parallel.
//!
//! A dropped packet shows as a timeout, so a probe has three outcomes worth
//! telling apart: its echo came back (allowed), nothing came back (dropped,
//! when a firewall is the only thing in the way), or the peer refused (the
//! packet arrived but nothing listens: a harness problem, never "denied").

use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cleanup::{self, Resource};
use crate::netns::{describe, output};

/// Timeout of a probe expected to be dropped. Short: it is always waited
/// out.
pub const DENIED_TIMEOUT: Duration = Duration::from_millis(1000);
/// Timeout of each attempt of a probe expected to get through.
pub const ALLOWED_TIMEOUT: Duration = Duration::from_millis(2000);
/// Attempts of a probe expected to get through (first-packet neighbour
/// resolution and scheduling hiccups must not fail a test).
pub const ALLOWED_ATTEMPTS: u32 = 3;

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    /// Connect, send a line, expect it echoed.
    Tcp(u16),
    /// Send a datagram, expect it echoed.
    Udp(u16),
    /// One ICMP or ICMPv6 echo request (`ping`).
    Ping,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Tcp(p) => write!(f, "tcp/{p}"),
            Probe::Udp(p) => write!(f, "udp/{p}"),
            Probe::Ping => f.write_str("ping"),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ProbeOptions {
    /// Defaults to [`DENIED_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// Send from this address (it must be configured in the namespace).
    pub source: Option<IpAddr>,
    /// Send from this port (TCP and UDP).
    pub sport: Option<u16>,
    /// Message size in bytes (ICMP: the echo payload; UDP and TCP: the
    /// line). Above the MTU, ICMP and UDP leave as IP fragments.
    pub size: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The reply came back.
    Echoed,
    /// Nothing came back in time.
    TimedOut,
    /// Connection refused or ICMP unreachable: the packet got somewhere.
    Refused(String),
    /// The probe could not run as intended.
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Echoed => f.write_str("echoed"),
            Outcome::TimedOut => f.write_str("timed out"),
            Outcome::Refused(m) => write!(f, "refused ({m})"),
            Outcome::Failed(m) => write!(f, "probe failed ({m})"),
        }
    }
}

/// Something that sends and receives: a container, the host namespace, the
/// remote host.
pub trait Node: Sync {
    fn netns(&self) -> &str;
    /// How messages name it.
    fn label(&self) -> &str;
    fn probe_bin(&self) -> &Path;

    /// One attempt of `probe` to `dst`.
    fn probe(&self, probe: Probe, dst: IpAddr, opts: &ProbeOptions) -> anyhow::Result<Outcome> {
        attempt(self.netns(), self.probe_bin(), probe, dst, opts)
    }

    /// Starts echo servers on every address of the namespace.
    fn serve(&self, tcp: &[u16], udp: &[u16]) -> anyhow::Result<Server> {
        let specs: Vec<String> = tcp
            .iter()
            .map(|p| format!("tcp:{p}"))
            .chain(udp.iter().map(|p| format!("udp:{p}")))
            .collect();
        Server::start(self.netns(), self.label(), self.probe_bin(), &specs)
    }

    /// Starts `hostwall-probe serve` with any specs (`tcpecho:PORT`,
    /// `udpseq:PORT` as well as `tcp:PORT`, `udp:PORT`).
    fn serve_specs(&self, specs: &[&str]) -> anyhow::Result<Server> {
        let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        Server::start(self.netns(), self.label(), self.probe_bin(), &specs)
    }
}

fn attempt(netns: &str, probe_bin: &Path, probe: Probe, dst: IpAddr, opts: &ProbeOptions) -> anyhow::Result<Outcome> {
    let timeout = opts.timeout.unwrap_or(DENIED_TIMEOUT);
    let mut cmd = Command::new("ip");
    // `timeout` is only a backstop: both tools stop on their own.
    let backstop = format!("{}", timeout.as_secs() + 5);
    cmd.args(["netns", "exec", netns, "timeout", "-s", "KILL", &backstop]);
    match probe {
        Probe::Tcp(port) | Probe::Udp(port) => {
            let proto = if matches!(probe, Probe::Tcp(_)) { "tcp" } else { "udp" };
            cmd.arg(probe_bin).args(["connect", proto]);
            cmd.arg(SocketAddr::new(dst, port).to_string());
            cmd.args(["--timeout", &timeout.as_millis().to_string()]);
            if let Some(s) = opts.source {
                cmd.args(["--source", &s.to_string()]);
            }
            if let Some(p) = opts.sport {
                cmd.args(["--sport", &p.to_string()]);
            }
            if let Some(n) = opts.size {
                cmd.args(["--size", &n.to_string()]);
            }
        }
        Probe::Ping => {
            if opts.sport.is_some() {
                bail!("ping has no source port");
            }
            let family = if dst.is_ipv4() { "-4" } else { "-6" };
            cmd.args(["ping", family, "-n", "-q", "-c", "1", "-W"]);
            cmd.arg(format!("{:.3}", timeout.as_secs_f64()));
            if let Some(s) = opts.source {
                cmd.args(["-I", &s.to_string()]);
            }
            if let Some(n) = opts.size {
                cmd.args(["-s", &n.to_string()]);
            }
            cmd.arg(dst.to_string());
        }
    }
    let out = output(&mut cmd)?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Ok(match (probe, out.status.code()) {
        (_, Some(0)) => Outcome::Echoed,
        (_, Some(1)) => Outcome::TimedOut,
        (Probe::Tcp(_) | Probe::Udp(_), Some(3)) => Outcome::Refused(stderr),
        _ => Outcome::Failed(format!("`{}`: {}: {stderr}", describe(&cmd), out.status)),
    })
}

/// What a server saw: `PROTO PORT PEER`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub tcp: bool,
    pub port: u16,
    pub peer: SocketAddr,
}

/// The output lines of a child process, collected by reader threads.
#[derive(Default)]
pub(crate) struct ServerLog {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl ServerLog {
    /// Collects the child's stdout and stderr from now on.
    pub(crate) fn capture(child: &mut Child) -> Arc<ServerLog> {
        let log = Arc::new(ServerLog::default());
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    log.changed.notify_all();
                }
            });
        }
        log
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits up to `timeout` for another line.
    pub(crate) fn wait_change(&self, timeout: Duration) {
        let guard = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.changed.wait_timeout(guard, timeout);
    }
}

/// `hostwall-probe serve` running in a namespace; killed on drop.
pub struct Server {
    child: Child,
    log: Arc<ServerLog>,
    cleanup_id: u64,
}

impl Server {
    fn start(netns: &str, label: &str, probe_bin: &Path, specs: &[String]) -> anyhow::Result<Server> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(probe_bin).arg("serve");
        cmd.args(specs);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{}`", describe(&cmd)))?;
        let cleanup_id = cleanup::register(Resource::Process {
            pid: child.id() as i32,
            graceful: false,
        });
        let log = ServerLog::capture(&mut child);
        let mut server = Server { child, log, cleanup_id };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if server.lines().iter().any(|l| l == "ready") {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "echo server in {label} exited ({status}): {}",
                    server.lines().join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "echo server in {label} not ready after 10 s: {}",
                    server.lines().join("\n")
                );
            }
            server.wait_change(Duration::from_millis(100));
        }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lines()
    }

    fn wait_change(&self, timeout: Duration) {
        self.log.wait_change(timeout)
    }

    /// The sequence numbers a `udpseq:PORT` server received, in arrival
    /// order (an unreadable datagram counts as `u64::MAX`).
    pub fn seqs(&self, port: u16) -> Vec<u64> {
        let prefix = format!("seq {port} ");
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|rest| rest.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX))
            .collect()
    }

    /// Waits up to `timeout` until a `udpseq:PORT` server has received at
    /// least `count` datagrams; returns what it received.
    pub fn wait_for_seqs(&self, port: u16, count: usize, timeout: Duration) -> Vec<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let seqs = self.seqs(port);
            if seqs.len() >= count || Instant::now() >= deadline {
                return seqs;
            }
            self.wait_change(Duration::from_millis(50));
        }
    }

    /// Peers whose connections a `tcpecho:PORT` server accepted.
    pub fn accepted(&self, port: u16) -> Vec<SocketAddr> {
        let prefix = format!("accept tcpecho {port} ");
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix)?.parse().ok())
            .collect()
    }

    /// Every message received so far.
    pub fn received(&self) -> Vec<Received> {
        self.lines()
            .iter()
            .filter_map(|l| {
                let mut parts = l.strip_prefix("recv ")?.split(' ');
                let tcp = parts.next()? == "tcp";
                let port = parts.next()?.parse().ok()?;
                let peer = parts.next()?.parse().ok()?;
                Some(Received { tcp, port, peer })
            })
            .collect()
    }

    /// How many messages came from `ip`.
    pub fn received_from(&self, ip: IpAddr) -> usize {
        self.received().iter().filter(|r| r.peer.ip() == ip).count()
    }

    /// Waits up to `timeout` for a message from `ip`. Servers print what they
    /// get a moment after the echo left, so checks right after a probe wait
    /// briefly.
    pub fn saw_from_within(&self, ip: IpAddr, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.received_from(ip) > 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.wait_change(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        cleanup::forget(self.cleanup_id);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Allowed,
    Denied,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::Allowed => "allowed",
            Expect::Denied => "denied",
        })
    }
}

/// One expected reachability: `from` sends `probe` to `to`.
#[derive(Clone)]
pub struct Check<'a> {
    pub from: &'a dyn Node,
    pub probe: Probe,
    pub to: IpAddr,
    /// How messages name the destination (default: the address).
    pub to_label: Option<String>,
    pub opts: ProbeOptions,
    pub expect: Expect,
}

impl<'a> Check<'a> {
    pub fn new(from: &'a dyn Node, probe: Probe, to: IpAddr, expect: Expect) -> Check<'a> {
        Check {
            from,
            probe,
            to,
            to_label: None,
            opts: ProbeOptions::default(),
            expect,
        }
    }

    pub fn allowed(from: &'a dyn Node, probe: Probe, to: impl Into<IpAddr>) -> Check<'a> {
        Check::new(from, probe, to.into(), Expect::Allowed)
    }

    pub fn denied(from: &'a dyn Node, probe: Probe, to: impl Into<IpAddr>) -> Check<'a> {
        Check::new(from, probe, to.into(), Expect::Denied)
    }

    pub fn labelled(mut self, to_label: &str) -> Self {
        self.to_label = Some(to_label.to_string());
        self
    }

    pub fn source(mut self, source: impl Into<IpAddr>) -> Self {
        self.opts.source = Some(source.into());
        self
    }

    pub fn sport(mut self, sport: u16) -> Self {
        self.opts.sport = Some(sport);
        self
    }

    pub fn size(mut self, bytes: usize) -> Self {
        self.opts.size = Some(bytes);
        self
    }

    /// The same check with the opposite expectation (controls: what is
    /// denied with the agent must get through without it).
    pub fn expecting(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }
}

impl fmt::Display for Check<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → ", self.from.label())?;
        match &self.to_label {
            Some(l) => write!(f, "{l} ({})", self.to)?,
            None => write!(f, "{}", self.to)?,
        }
        write!(f, " {}", self.probe)?;
        if let Some(s) = self.opts.source {
            write!(f, " from {s}")?;
        }
        if let Some(p) = self.opts.sport {
            write!(f, " sport {p}")?;
        }
        if let Some(n) = self.opts.size {
            write!(f, " size {n}")?;
        }
        Ok(())
    }
}

/// What running a [`Check`] gave.
#[derive(Clone, Debug)]
pub struct Report {
    pub outcome: Outcome,
    pub attempts: u32,
    /// Whether the outcome is the expected one: an echo for allowed, a
    /// timeout for denied.
    pub ok: bool,
}

impl Report {
    /// What was seen, if it is clear-cut.
    pub fn observed(&self) -> Option<Expect> {
        match self.outcome {
            Outcome::Echoed => Some(Expect::Allowed),
            Outcome::TimedOut => Some(Expect::Denied),
            _ => None,
        }
    }
}

/// Runs one check: a probe expected to get through is retried; one
/// expected to be dropped gets a single attempt (it has to time out).
pub fn run_check(check: &Check<'_>) -> Report {
    let (tries, timeout) = match check.expect {
        Expect::Allowed => (ALLOWED_ATTEMPTS, ALLOWED_TIMEOUT),
        Expect::Denied => (1, DENIED_TIMEOUT),
    };
    let opts = ProbeOptions {
        timeout: Some(check.opts.timeout.unwrap_or(timeout)),
        ..check.opts.clone()
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = match check.from.probe(check.probe, check.to, &opts) {
            Ok(o) => o,
            Err(e) => Outcome::Failed(format!("{e:#}")),
        };
        let ok = match check.expect {
            Expect::Allowed => outcome == Outcome::Echoed,
            Expect::Denied => outcome == Outcome::TimedOut,
        };
        let retry =
            !ok && check.expect == Expect::Allowed && attempts < tries && !matches!(outcome, Outcome::Failed(_));
        if !retry {
            return Report { outcome, attempts, ok };
        }
    }
}

/// Runs checks in parallel (a dropped probe costs its whole timeout, so a
/// batch takes about as long as its slowest check). Reports are in the
/// order of `checks`.
pub fn run_checks(checks: &[Check<'_>]) -> Vec<Report> {
    run_checks_with(checks, 16)
}

/// [`run_checks`] with `workers` probes in flight at most.
pub fn run_checks_with(checks: &[Check<'_>], workers: usize) -> Vec<Report> {
    let next = AtomicUsize::new(0);
    let reports: Mutex<Vec<Option<Report>>> = Mutex::new(vec![None; checks.len()]);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, checks.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(check) = checks.get(i) else { break };
                    let report = run_check(check);
                    reports.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(report);
                }
            });
        }
    });
    reports
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every check ran"))
        .collect()
}

/// Runs checks in parallel and panics listing every one whose outcome was
/// not the expected one. `what` says which phase of the test this is.
pub fn assert_checks(what: &str, checks: &[Check<'_>]) {
    let reports = run_checks(checks);
    let failed: Vec<String> = checks
        .iter()
        .zip(&reports)
        .filter(|(_, r)| !r.ok)
        .map(|(c, r)| {
            let tries = if r.attempts > 1 {
                format!(" ({} attempts)", r.attempts)
            } else {
                String::new()
            };
            format!("  {c}: expected {}, got {}{tries}", c.expect, r.outcome)
        })
        .collect();
    if !failed.is_empty() {
        panic!(
            "{what}: {} of {} reachability checks failed:\n{}",
            failed.len(),
            checks.len(),
            failed.join("\n")
        );
    }
}
