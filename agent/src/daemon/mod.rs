//! `hostwall agent`: the daemon. It enforces the control file, serves the
//! control API, follows the file, the host's interfaces and addresses, and
//! leaves enforcement in place when it stops (fail-static).

mod enforce;
mod gc;
mod grow;
mod guard;
pub mod lifecycle;
pub mod macs;
pub mod notify;
pub mod rules;
pub mod state;
mod verify;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::api::{self, Caller, http::Request};
use crate::compile::Compiled;
use crate::datapath::{Attachments, Datapath, Layout};
use crate::policy::Policy;
pub use enforce::ApplyError;
use rules::RuleRegistry;
use watch::Watch;

pub struct Options {
    pub config: PathBuf,
    pub uplink: Option<String>,
    pub node: String,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
    /// Members of this group may use the control API besides root.
    pub admin_group: Option<u32>,
    /// Capacities of the policy maps.
    pub map_sizes: crate::datapath::MapSizes,
    /// Largest control API request (`--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Where changes made through the API are kept (`--write-back`).
    pub write_back: WriteBack,
    /// The agent's own state (`--state-dir`): with `--write-back none`,
    /// the policy changed through the API.
    pub state_dir: PathBuf,
}

/// Where a change made through the API is saved, so that it survives a
/// restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteBack {
    /// Into the control file (its symlink, owner and mode kept).
    File,
    /// Into the state directory; the control file is left alone (it is
    /// managed elsewhere). An edit of the control file is applied and
    /// replaces what the API changed.
    None,
}

/// Fallback for missed events: interfaces and addresses are compared this
/// often even without a netlink event.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// Conntrack garbage collection runs every this many reconcile ticks.
const GC_EVERY_TICKS: u32 = 2;
/// Editors and configuration management write files in several steps.
const FILE_SETTLE: Duration = Duration::from_millis(100);

/// A request from the control API, answered on `reply`.
pub struct ApiCall {
    pub request: Request,
    pub caller: Caller,
    /// The body as read before the request reached the agent's task.
    pub prepared: api::handlers::Prepared,
    pub reply: oneshot::Sender<api::Reply>,
}

/// The agent's state. One task owns it; API requests, file and link events
/// are handled one at a time, so updates never interleave.
pub struct Agent {
    pub opts: Options,
    pub layout: Layout,
    pub datapath: Datapath,
    pub attachments: Attachments,
    /// The policy enforced now (the last good one).
    pub policy: Policy,
    /// The policy enforced before the last change (what `hostwall
    /// rollback` goes back to); none until a change since the start.
    pub previous: Option<Policy>,
    pub compiled: Compiled,
    pub registry: RuleRegistry,
    pub host_addresses: BTreeSet<IpAddr>,
    /// Quarantined interfaces: ifindex -> name.
    pub quarantined: BTreeMap<u32, String>,
    /// The MAC fixed (or refused) for each endpoint interface, by ifindex.
    pub macs: macs::Macs,
    pub applied_at: SystemTime,
    /// SHA-256 of the control file's bytes as last read or written.
    pub file_hash: Option<String>,
    /// Whether the enforced policy is the control file's (false after a
    /// change through the API with `--write-back none`).
    pub matches_file: bool,
    /// SHA-256 of the control file's bytes when they last held the
    /// enforced policy (applied from it, or written back): a file that
    /// differs was changed behind the agent, and a write-back would
    /// overwrite that change.
    pub enforced_file_hash: Option<String>,
    pub last_error: Option<String>,
    /// When `last_error` happened.
    pub last_error_at: Option<SystemTime>,
    /// When this agent process started.
    pub started_at: SystemTime,
    pub generation: u64,
    /// While an upgrade is under way: the older layout's links directory,
    /// whose links are taken over.
    pub adopt_from: Option<PathBuf>,
    /// Quarantines new interfaces off the agent's task (tcx only).
    guard: Option<guard::Guard>,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let (mut agent, old_layouts) = lifecycle::start(opts)?;

    let (api_tx, mut api_rx) = mpsc::channel::<ApiCall>(64);
    let server = api::server::bind(&agent.opts.socket, agent.opts.admin_group)
        .with_context(|| format!("serving the control API on {}", agent.opts.socket.display()))?;
    let limits = api::server::Limits {
        admin_group: agent.opts.admin_group,
        max_request: agent.opts.max_request_bytes,
    };
    tokio::spawn(api::server::serve(server, api_tx, limits, agent.opts.config.clone()));

    let file_watch = Watch::control_file(&agent.opts.config).context("watching the control file")?;
    let link_watch = Watch::links().context("watching links over rtnetlink")?;

    lifecycle::finish_upgrade(&mut agent, &old_layouts);
    info!(
        config = %agent.opts.config.display(),
        endpoints = agent.compiled.endpoints.len(),
        attached = agent.attachments.attached().count(),
        rules = agent.compiled.rules.len(),
        hook = agent.attachments.kind().as_str(),
        layout = agent.layout.version(),
        "policy applied"
    );
    match notify::notify("READY=1\nSTATUS=enforcing") {
        Ok(true) => info!("notified the service manager: ready"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "could not notify the service manager"),
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    let mut file_pending: Option<tokio::time::Instant> = None;
    let mut gc_due = 0u32;
    let (read_tx, mut read_rx) = mpsc::channel::<(u64, FileRead)>(4);
    let mut reads = Reads {
        started: 0,
        force: false,
        tx: read_tx,
    };
    loop {
        let settle = async {
            match file_pending {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                info!("SIGHUP: reloading the control file");
                reads.start(&agent, true);
            }
            Some((seq, read)) = read_rx.recv() => {
                if let Some(force) = reads.finished(seq) {
                    agent.reload_from(read, force);
                }
            }
            Some(call) = api_rx.recv() => {
                let reply = api::handlers::handle(&mut agent, &call.request, &call.caller, call.prepared);
                let _ = call.reply.send(reply);
            }
            r = file_watch.changed() => {
                if let Err(e) = r {
                    error!(error = %e, "watching the control file failed");
                }
                file_pending = Some(tokio::time::Instant::now() + FILE_SETTLE);
            }
            _ = settle => {
                file_pending = None;
                reads.start(&agent, false);
            }
            r = link_watch.changed() => {
                if let Err(e) = r {
                    error!(error = %e, "watching links failed");
                }
                agent.reconcile();
            }
            _ = tick.tick() => {
                agent.reconcile();
                agent.verify_enforcement();
                gc_due += 1;
                if gc_due >= GC_EVERY_TICKS {
                    gc_due = 0;
                    agent.conntrack_gc();
                }
            }
        }
    }
    let _ = std::fs::remove_file(&agent.opts.socket);
    info!("stopping; enforcement stays in place (hostwall uninstall removes it)");
    Ok(())
}

/// The control file as read and parsed off the agent's task (a policy of
/// tens of thousands of rules takes a good part of a second to parse;
/// interfaces, quarantine and requests are handled meanwhile).
pub enum FileRead {
    /// The file could not be read.
    Unreadable(String),
    /// Its bytes hash to what the agent last read: not parsed again.
    Unchanged,
    Parsed {
        hash: String,
        policy: Box<Result<Policy, crate::policy::PolicyError>>,
    },
}

impl FileRead {
    /// Reads and parses `path`; `known` is the hash of the bytes last read,
    /// when a file that still has them need not be parsed again.
    pub fn read(path: &std::path::Path, known: Option<&str>) -> FileRead {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return FileRead::Unreadable(format!("{}: cannot read the control file: {e}", path.display())),
        };
        let hash = lifecycle::sha256_hex(&bytes);
        if known == Some(hash.as_str()) {
            return FileRead::Unchanged;
        }
        let policy = crate::policy::parse_bytes(&bytes, &path.display().to_string());
        FileRead::Parsed {
            hash,
            policy: Box::new(policy),
        }
    }
}

/// Reads of the control file, each on a blocking thread. Only the latest
/// one started is applied (an earlier one may finish later), forced if any
/// read since the last one applied was.
struct Reads {
    started: u64,
    force: bool,
    tx: mpsc::Sender<(u64, FileRead)>,
}

impl Reads {
    fn start(&mut self, agent: &Agent, force: bool) {
        self.started += 1;
        self.force |= force;
        let known = if self.force { None } else { agent.file_hash.clone() };
        let (path, tx, seq) = (agent.opts.config.clone(), self.tx.clone(), self.started);
        tokio::task::spawn_blocking(move || {
            let _ = tx.blocking_send((seq, FileRead::read(&path, known.as_deref())));
        });
    }

    /// Whether read `seq` is to be applied, and forced.
    fn finished(&mut self, seq: u64) -> Option<bool> {
        (seq == self.started).then(|| std::mem::take(&mut self.force))
    }
}

impl Agent {
    /// Enforces the control file as read. An invalid file is refused: the
    /// last good policy stays enforced and the error is kept for `status`.
    /// A file that cannot be read is an error only when `force`d (SIGHUP,
    /// `hostwall reload`): a file being replaced may be missing for a
    /// moment, and a missing file never removes the policy.
    pub fn reload_from(&mut self, read: FileRead, force: bool) {
        let (hash, parsed) = match read {
            FileRead::Unreadable(message) => {
                if force {
                    self.fail(message);
                }
                return;
            }
            FileRead::Unchanged => return,
            FileRead::Parsed { hash, policy } => (hash, *policy),
        };
        if !force && self.file_hash.as_deref() == Some(hash.as_str()) {
            return;
        }
        self.file_hash = Some(hash);
        match parsed {
            Ok(p) => match self.apply(p, "control file", None) {
                Ok(change) => {
                    self.enforced_file_hash = self.file_hash.clone();
                    self.matches_file = true;
                    if self.opts.write_back == WriteBack::None {
                        state::clear(&self.opts.state_dir);
                    }
                    info!(changes = %change.summary(), "policy applied from the control file")
                }
                Err(e) => self.fail(format!("{e:#}")),
            },
            Err(e) => self.fail(format!("{:#}", anyhow::Error::new(e))),
        }
    }

    fn fail(&mut self, message: String) {
        error!(error = %message, "policy refused; the last good policy stays enforced");
        self.record_error(message);
    }

    /// Keeps `message` as the last error, with its time, for `status`.
    fn record_error(&mut self, message: String) {
        self.last_error = Some(message);
        self.last_error_at = Some(SystemTime::now());
    }
}
