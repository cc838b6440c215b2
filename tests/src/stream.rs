//! Long-lived flows, for watching enforcement while the agent changes
//! policy, restarts or upgrades: a TCP connection carrying data both ways
//! ([`TcpStreamer`], against a `tcpecho:PORT` server) and sequence-numbered
//! UDP datagrams at a steady rate ([`UdpSeqSender`], against a
//! `udpseq:PORT` server; see [`crate::Server::seqs`]).
//!
//! Both run `hostwall-probe` in the sender's namespace until told to
//! finish (their stdin is closed); dropping one kills it.

use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cleanup::{self, Resource};
use crate::netns::describe;
use crate::probe::{Node, ServerLog};

/// How long a stream may take to connect or to report its end.
const STREAM_TIMEOUT: Duration = Duration::from_secs(45);

/// A running `hostwall-probe` stream command.
struct StreamChild {
    child: Child,
    stdin: Option<ChildStdin>,
    log: Arc<ServerLog>,
    cleanup_id: u64,
    label: String,
}

impl StreamChild {
    fn spawn(from: &dyn Node, args: &[String], label: String) -> anyhow::Result<StreamChild> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", from.netns()])
            .arg(from.probe_bin())
            .args(args);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{}`", describe(&cmd)))?;
        let cleanup_id = cleanup::register(Resource::Process {
            pid: child.id() as i32,
            graceful: false,
        });
        let stdin = child.stdin.take();
        let log = ServerLog::capture(&mut child);
        Ok(StreamChild {
            child,
            stdin,
            log,
            cleanup_id,
            label,
        })
    }

    fn output(&self) -> String {
        self.log.lines().join("\n")
    }

    /// The last line starting with `prefix`, without it.
    fn last(&self, prefix: &str) -> Option<String> {
        self.log
            .lines()
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
    }

    /// Waits for a line starting with `prefix`; fails if the process exits
    /// first or `timeout` passes.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(rest) = self.last(prefix) {
                return Ok(rest);
            }
            if let Some(status) = self.child.try_wait()? {
                // Let the reader threads catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                if let Some(rest) = self.last(prefix) {
                    return Ok(rest);
                }
                bail!(
                    "{} exited ({status}) before `{prefix}`; it said:\n{}",
                    self.label,
                    self.output()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: no `{prefix}` after {timeout:?}; it said:\n{}",
                    self.label,
                    self.output()
                );
            }
            self.log.wait_change(Duration::from_millis(100));
        }
    }

    /// Closes stdin (the stop signal) and waits for the final line.
    fn finish(&mut self, prefix: &str) -> anyhow::Result<String> {
        drop(self.stdin.take());
        let line = self.wait_line(prefix, STREAM_TIMEOUT)?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("{} exited with {status}; it said:\n{}", self.label, self.output());
        }
        Ok(line)
    }

    /// `Some(output)` if the process has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                std::thread::sleep(Duration::from_millis(100));
                Some(format!("{status}; it said:\n{}", self.output()))
            }
            _ => None,
        }
    }
}

impl Drop for StreamChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        cleanup::forget(self.cleanup_id);
    }
}

/// Bytes written and bytes echoed back so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub sent: u64,
    pub echoed: u64,
}

fn parse_progress(text: &str) -> Option<Progress> {
    let mut p = Progress::default();
    for part in text.split_whitespace() {
        match part.split_once('=')? {
            ("sent", v) => p.sent = v.parse().ok()?,
            ("echoed", v) => p.echoed = v.parse().ok()?,
            _ => {}
        }
    }
    Some(p)
}

/// A TCP connection from a node to a `tcpecho:PORT` server, writing a
/// counted byte pattern every few milliseconds and checking every byte
/// that comes back.
pub struct TcpStreamer {
    proc: StreamChild,
    /// The client's end of the connection.
    pub local: SocketAddr,
}

impl TcpStreamer {
    /// Connects (the connection must be allowed) and starts streaming.
    pub fn start(from: &dyn Node, dst: SocketAddr) -> anyhow::Result<TcpStreamer> {
        let label = format!("tcp stream {} → {dst}", from.label());
        let args = ["tcp-stream".to_string(), dst.to_string()];
        let mut proc = StreamChild::spawn(from, &args, label)?;
        let local = proc.wait_line("connected ", STREAM_TIMEOUT)?;
        let local = local
            .trim()
            .parse()
            .with_context(|| format!("{}: bad local address {local:?}", proc.label))?;
        Ok(TcpStreamer { proc, local })
    }

    /// The last progress the client reported.
    pub fn progress(&self) -> Progress {
        self.proc
            .last("progress ")
            .and_then(|t| parse_progress(&t))
            .unwrap_or_default()
    }

    /// Waits until `bytes` bytes in total have been echoed. Fails if the
    /// stream broke.
    pub fn wait_echoed(&mut self, bytes: u64, timeout: Duration) -> anyhow::Result<Progress> {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.progress();
            if p.echoed >= bytes {
                return Ok(p);
            }
            if let Some(how) = self.proc.exited() {
                bail!("{} ended early: {how}", self.proc.label);
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: {} bytes echoed after {timeout:?}, waiting for {bytes}; it said:\n{}",
                    self.proc.label,
                    p.echoed,
                    self.proc.output()
                );
            }
            self.proc.log.wait_change(Duration::from_millis(100));
        }
    }

    /// Waits until `more` bytes beyond what has been echoed now come back:
    /// the connection is alive.
    pub fn assert_flowing(&mut self, more: u64, what: &str) -> Progress {
        let target = self.progress().echoed + more;
        self.wait_echoed(target, STREAM_TIMEOUT)
            .unwrap_or_else(|e| panic!("{what}: the TCP stream stopped: {e:#}"))
    }

    /// Whether the client has exited (it exits only on an error, or when
    /// finished).
    pub fn broken(&mut self) -> Option<String> {
        self.proc.exited()
    }

    /// Stops writing, waits for the rest of the echo, and returns how many
    /// bytes went both ways; fails if the connection broke at any point or
    /// the echo fell short.
    pub fn finish(mut self) -> anyhow::Result<u64> {
        let done = self.proc.finish("done ")?;
        let p = parse_progress(&done).with_context(|| format!("{}: bad final line {done:?}", self.proc.label))?;
        if p.sent != p.echoed || p.sent == 0 {
            bail!("{}: sent {} bytes, {} echoed", self.proc.label, p.sent, p.echoed);
        }
        Ok(p.sent)
    }
}

/// Sequence-numbered UDP datagrams from a node at a steady rate.
pub struct UdpSeqSender {
    proc: StreamChild,
}

impl UdpSeqSender {
    /// Starts sending to `dst` at `rate` datagrams per second.
    pub fn start(from: &dyn Node, dst: SocketAddr, rate: u32) -> anyhow::Result<UdpSeqSender> {
        UdpSeqSender::spawn(from, dst, rate, false)
    }

    /// As `start`, each datagram from a source port of its own: every one
    /// a new flow, judged by the rules.
    pub fn start_new_flows(from: &dyn Node, dst: SocketAddr, rate: u32) -> anyhow::Result<UdpSeqSender> {
        UdpSeqSender::spawn(from, dst, rate, true)
    }

    fn spawn(from: &dyn Node, dst: SocketAddr, rate: u32, new_flows: bool) -> anyhow::Result<UdpSeqSender> {
        let label = format!("udp sequence {} → {dst}", from.label());
        let args = [
            "udp-seq".to_string(),
            dst.to_string(),
            "--rate".to_string(),
            rate.to_string(),
            "--new-flows".to_string(),
            u8::from(new_flows).to_string(),
        ];
        Ok(UdpSeqSender {
            proc: StreamChild::spawn(from, &args, label)?,
        })
    }

    /// Stops sending; returns how many datagrams were sent (numbered
    /// 0..N). Fails if any send failed.
    pub fn finish(mut self) -> anyhow::Result<u64> {
        let line = self.proc.finish("sent ")?;
        let mut parts = line.split_whitespace();
        let sent: u64 = parts
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{}: bad final line {line:?}", self.proc.label))?;
        let errors: u64 = match (parts.next(), parts.next()) {
            (Some("errors"), Some(n)) => n.parse().unwrap_or(u64::MAX),
            _ => u64::MAX,
        };
        if errors != 0 {
            bail!("{}: {errors} sends failed ({sent} succeeded)", self.proc.label);
        }
        Ok(sent)
    }
}

/// Checks that `received` is exactly 0..sent, each once; describes what is
/// missing or repeated otherwise.
pub fn seq_gaps(received: &[u64], sent: u64) -> Option<String> {
    let mut seen = vec![0u32; sent as usize];
    let mut foreign = Vec::new();
    for &n in received {
        match seen.get_mut(n as usize) {
            Some(c) => *c += 1,
            None => foreign.push(n),
        }
    }
    let missing: Vec<u64> = (0..sent).filter(|n| seen[*n as usize] == 0).collect();
    let repeated: Vec<u64> = (0..sent).filter(|n| seen[*n as usize] > 1).collect();
    if missing.is_empty() && repeated.is_empty() && foreign.is_empty() {
        return None;
    }
    let show = |v: &[u64]| {
        let head: Vec<String> = v.iter().take(20).map(u64::to_string).collect();
        format!(
            "{} [{}{}]",
            v.len(),
            head.join(" "),
            if v.len() > 20 { " …" } else { "" }
        )
    };
    Some(format!(
        "of {sent} datagrams sent, {} received; missing {}; repeated {}; never sent {}",
        received.len(),
        show(&missing),
        show(&repeated),
        show(&foreign)
    ))
}
