//! The `hostwall` command line; one file per subcommand. Every command but
//! `agent`, `validate` and `uninstall` is a client of the agent's API.

mod agent;
mod apply;
mod conntrack;
mod endpoint;
mod explain;
mod get;
mod reload;
mod rule;
mod stats;
mod status;
mod uninstall;
mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;

pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/hostwall";
pub const DEFAULT_SOCKET: &str = "/run/hostwall/hostwall.sock";

#[derive(Parser)]
#[command(
    name = "hostwall",
    version,
    about = "eBPF security-group firewall for container hosts"
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The agent's control socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Say what a change (apply, reload, rollback, rule, endpoint,
    /// conntrack flush) would do, checked as the agent would do it, and
    /// change nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// How log lines are written to stderr: text (coloured only on a
    /// terminal) or json (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent in the foreground: enforce the control file.
    Agent(agent::Args),
    /// Remove every hostwall program, link and pin from this host.
    Uninstall(uninstall::Args),
    /// Print the API's JSON schema, as this binary's types generate it
    /// (no agent needed; `get schema` asks the running agent).
    Schema,
    /// Check a control file without applying it.
    Validate {
        /// The control file (YAML or JSON).
        file: PathBuf,
    },
    /// Apply a whole control file through the agent.
    Apply { file: PathBuf },
    /// Show what applying a control file would change.
    Diff { file: PathBuf },
    /// Re-read the agent's control file (as SIGHUP).
    Reload,
    /// Go back to the policy enforced before the last change (itself a
    /// change, written back; a second rollback undoes it).
    Rollback,
    /// Add or remove one rule.
    #[command(subcommand)]
    Rule(rule::Cmd),
    /// Add or remove one endpoint.
    #[command(subcommand)]
    Endpoint(endpoint::Cmd),
    /// Show applied state.
    #[command(subcommand)]
    Get(get::Cmd),
    /// Whether the policy is enforced, where, and how full the maps are.
    Status,
    /// Per-rule counters, rules that never matched, drops by reason.
    Stats,
    /// Why a flow is allowed or denied, and by which rules.
    Explain(explain::Args),
    /// List or flush tracked flows.
    #[command(subcommand)]
    Conntrack(conntrack::Cmd),
}

/// Exit codes, which tell outcomes apart (the README lists them).
pub mod exit {
    /// Done; allowed; no changes; everything enforced.
    pub const OK: u8 = 0;
    /// The answer is no: `explain` denied, `diff` found changes.
    pub const NO: u8 = 1;
    /// Invalid input, refused before anything changed: arguments, a
    /// control file, an unknown name, a request the agent refused, a
    /// conflict.
    pub const INVALID: u8 = 2;
    /// The agent cannot be reached, or does not enforce everything
    /// (`status`).
    pub const UNAVAILABLE: u8 = 3;
    /// Any other failure.
    pub const FAILED: u8 = 4;
}

/// Input the CLI itself refuses.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// The exit code of a failed command.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use hostwall::api::ErrorKind;
    use hostwall::api::client::ClientError;
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return match c {
                ClientError::Refused { kind, .. } => match kind {
                    ErrorKind::Internal => exit::FAILED,
                    _ => exit::INVALID,
                },
                ClientError::Forbidden { .. }
                | ClientError::Connect { .. }
                | ClientError::Io(_)
                | ClientError::BadResponse => exit::UNAVAILABLE,
            };
        }
        if cause.is::<hostwall::policy::PolicyError>()
            || cause.is::<Invalid>()
            || cause.is::<hostwall::daemon::lifecycle::NothingToUninstall>()
        {
            return exit::INVALID;
        }
    }
    exit::FAILED
}

/// A failed command's `--json` output: the message, the exit code and,
/// when the agent refused the request, the error's `kind` and HTTP status.
pub fn error_json(e: &anyhow::Error, code: u8) -> Value {
    use hostwall::api::client::ClientError;
    let mut v = serde_json::json!({ "error": format!("{e:#}"), "exit_code": code });
    if let Some(ClientError::Refused { status, kind, .. }) = e.chain().find_map(|c| c.downcast_ref::<ClientError>()) {
        v["kind"] = serde_json::to_value(kind).expect("kinds serialize");
        v["status"] = (*status).into();
    }
    if let Some(path) = e
        .chain()
        .find_map(|c| c.downcast_ref::<hostwall::policy::PolicyError>())
        .and_then(|p| p.field_path())
    {
        v["path"] = path.into();
    }
    v
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let changes = matches!(
        cli.command,
        Command::Apply { .. }
            | Command::Reload
            | Command::Rollback
            | Command::Rule(_)
            | Command::Endpoint(_)
            | Command::Conntrack(conntrack::Cmd::Flush(_))
    );
    if cli.dry_run && !changes {
        return Err(Invalid(
            "--dry-run is for commands that change something: apply, reload, rollback, rule, endpoint, conntrack flush"
                .into(),
        )
        .into());
    }
    let ctx = Ctx {
        socket: cli.socket,
        json: cli.json,
        dry_run: cli.dry_run,
    };
    match cli.command {
        Command::Agent(args) => agent::run(args, &ctx),
        Command::Uninstall(args) => uninstall::run(args, &ctx),
        Command::Validate { file } => validate::run(&ctx, &file),
        Command::Schema => {
            let doc = hostwall::api::routes::document();
            println!("{}", serde_json::to_string_pretty(&doc).expect("json values serialize"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply { file } => apply::apply(&ctx, &file),
        Command::Diff { file } => apply::diff(&ctx, &file),
        Command::Reload => reload::run(&ctx),
        Command::Rollback => reload::rollback(&ctx),
        Command::Rule(cmd) => rule::run(&ctx, cmd),
        Command::Endpoint(cmd) => endpoint::run(&ctx, cmd),
        Command::Get(cmd) => get::run(&ctx, cmd),
        Command::Status => status::run(&ctx),
        Command::Stats => stats::run(&ctx),
        Command::Conntrack(cmd) => conntrack::run(&ctx, cmd),
        Command::Explain(args) => explain::run(&ctx, args),
    }
}

/// What every API command needs.
pub struct Ctx {
    pub socket: PathBuf,
    pub json: bool,
    /// `--dry-run`: change requests ask only what they would change.
    pub dry_run: bool,
}

impl Ctx {
    pub fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> anyhow::Result<Value> {
        Ok(hostwall::api::client::call(&self.socket, method, path, query, body)?)
    }

    /// A request that changes something; with `--dry-run` it only asks
    /// what it would change.
    pub fn change(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> anyhow::Result<Value> {
        let mut query = query.to_vec();
        if self.dry_run {
            query.push(("dry_run", "true".to_string()));
        }
        self.call(method, path, &query, body)
    }

    /// Prints `value` as JSON with --json, else runs `human`.
    pub fn print(&self, value: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("json values serialize")
            );
        } else {
            human(value);
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// Human lines for the reply to a change: `done` and the generation, or,
/// for a dry run, what `would` change.
pub fn print_change(v: &Value, done: &str, would: &str) {
    if v["dry_run"] == Value::Bool(true) {
        println!("dry run, nothing changed; {would}:");
    } else {
        println!("{done} (generation {})", v["generation"]);
    }
    print_changes(&v["changes"]);
}

/// Human lines for a change summary (`changes` of an apply/diff reply).
pub fn print_changes(changes: &Value) {
    let list = |key: &str, sign: &str| {
        for item in changes[key].as_array().into_iter().flatten() {
            match item {
                Value::String(s) => println!(
                    "  {sign} {key_label} {s}",
                    key_label = key.split('_').next().unwrap_or(key)
                ),
                v => println!(
                    "  {sign} rule {}/{}: {}",
                    v["group"].as_str().unwrap_or(""),
                    v["direction"].as_str().unwrap_or(""),
                    v["rule"].as_str().unwrap_or("")
                ),
            }
        }
    };
    list("rules_added", "+");
    list("rules_removed", "-");
    list("endpoints_added", "+");
    list("endpoints_removed", "-");
    list("endpoints_changed", "~");
    list("groups_added", "+");
    list("groups_removed", "-");
    list("prefix_lists_changed", "~");
    if changes["settings_changed"] == Value::Bool(true) {
        println!("  ~ settings");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr; `RUST_LOG` overrides the level chosen by -v/-q.
/// Colours only when stderr is a terminal, never into a file or journal.
pub fn init_tracing(verbose: u8, quiet: bool, format: LogFormat) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
}
