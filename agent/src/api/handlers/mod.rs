//! One file per request. Every handler runs on the agent's task with the
//! agent's state; mutations go through `Agent::apply_and_save`.

mod conntrack;
mod endpoints;
mod explain;
mod policy;
mod reload;
mod rollback;
mod rules;
mod stats;
mod status;

use super::http::Request;
use super::replies::{self, ChangeReply};
use super::{Caller, ErrorKind, Reply, error, routes, types};
use crate::daemon::Agent;
use crate::policy::Policy;

/// What a request needs read before it reaches the agent's task: a whole
/// policy to parse (the body of `PUT /v1/policy` and `POST
/// /v1/policy/diff`, up to `--max-request-bytes` of YAML) or the control
/// file (`POST /v1/reload`). The server prepares it on a blocking thread,
/// so that the agent goes on handling interfaces, quarantine and other
/// requests meanwhile.
pub enum Prepared {
    Nothing,
    Policy(Result<Policy, crate::policy::PolicyError>),
    File(crate::daemon::FileRead),
}

fn segments(req: &Request) -> Vec<&str> {
    req.path.trim_matches('/').split('/').collect()
}

/// Reads what `req` needs (see [`Prepared`]); blocking, and as slow as the
/// request is large. `config` is the control file.
pub fn prepare(req: &Request, config: &std::path::Path) -> Prepared {
    let segments = segments(req);
    let Ok(route) = routes::find(&req.method, &segments) else {
        return Prepared::Nothing;
    };
    if types::check_query(req, route.query).is_err() {
        // Refused by `handle` without reading anything.
        return Prepared::Nothing;
    }
    match (req.method.as_str(), segments.as_slice()) {
        ("PUT", ["v1", "policy"]) | ("POST", ["v1", "policy", "diff"]) => {
            Prepared::Policy(crate::policy::parse_bytes(&req.body, "the submitted policy"))
        }
        ("POST", ["v1", "reload"]) => Prepared::File(crate::daemon::FileRead::read(config, None)),
        _ => Prepared::Nothing,
    }
}

/// How a change request is carried out: for real, or only to say what it
/// would change (`dry_run=true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Change,
    DryRun,
}

pub fn handle(agent: &mut Agent, req: &Request, caller: &Caller, prepared: Prepared) -> Reply {
    let segments = segments(req);
    let route = match routes::find(&req.method, &segments) {
        Ok(route) => route,
        Err(true) => {
            return error(
                ErrorKind::MethodNotAllowed,
                format!("{} is not allowed on {}", req.method, req.path),
            );
        }
        Err(false) => return error(ErrorKind::NotFound, format!("no such API path: {}", req.path)),
    };
    if let Err(r) = types::check_query(req, route.query) {
        return r;
    }
    let mode = match types::dry_run(req) {
        Ok(true) => Mode::DryRun,
        Ok(false) => Mode::Change,
        Err(r) => return r,
    };
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "status"]) => status::get(agent),
        ("GET", ["v1", "schema"]) => (200, routes::document()),
        ("GET", ["v1", "policy"]) => policy::get(agent),
        ("PUT", ["v1", "policy"]) => policy::apply(agent, prepared, caller, mode),
        ("POST", ["v1", "policy", "diff"]) => policy::diff(agent, prepared),
        ("POST", ["v1", "reload"]) => reload::post(agent, prepared, caller, mode),
        ("POST", ["v1", "rollback"]) => rollback::post(agent, caller, mode),
        ("POST", ["v1", "rules"]) => rules::add(agent, req, caller, mode),
        ("DELETE", ["v1", "rules"]) => rules::remove(agent, req, caller, mode),
        ("POST", ["v1", "endpoints"]) => endpoints::add(agent, req, caller, mode),
        ("DELETE", ["v1", "endpoints", name]) => endpoints::remove(agent, name, caller, mode),
        ("GET", ["v1", "stats"]) => stats::get(agent),
        ("GET", ["v1", "explain"]) => explain::get(agent, req),
        ("GET", ["v1", "conntrack"]) => conntrack::list(agent, req),
        ("DELETE", ["v1", "conntrack"]) => conntrack::flush(agent, req, caller, mode),
        _ => error(
            ErrorKind::Internal,
            format!("{} {} is a route without a handler", req.method, req.path),
        ),
    }
}

/// Checks an edited policy with the validator every control file ends in,
/// so an API change can never enforce what a file could not, then applies
/// and saves it; the reply carries what changed.
fn commit(agent: &mut Agent, edited: Policy, source: &str, caller: &Caller, mode: Mode) -> Reply {
    match crate::policy::check(&edited, "the changed policy") {
        Ok(()) => commit_parsed(agent, edited, source, caller, mode),
        Err(e) => error(ErrorKind::Invalid, e),
    }
}

/// Applies and saves a policy that has been checked: parsed from a whole
/// control file (the body of `PUT /v1/policy`, a reload, the policy a
/// rollback goes back to) or edited and checked by `commit`. A dry run compiles the policy and checks it as an apply would (ids,
/// maps and their memory, a control file changed behind the agent), and
/// writes nothing.
fn commit_parsed(agent: &mut Agent, policy: Policy, source: &str, caller: &Caller, mode: Mode) -> Reply {
    if mode == Mode::DryRun {
        return match agent.check(&policy) {
            Ok(change) => (
                200,
                replies::json(&ChangeReply {
                    applied: false,
                    dry_run: true,
                    changes: Some(change),
                    generation: agent.generation,
                }),
            ),
            Err(e) => error(ErrorKind::Conflict, format!("{:#}", anyhow::Error::new(e))),
        };
    }
    match agent.apply_and_save(policy, source, caller) {
        Ok(change) => (
            200,
            replies::json(&ChangeReply {
                applied: true,
                dry_run: false,
                changes: Some(change),
                generation: agent.generation,
            }),
        ),
        Err(e) => error(ErrorKind::Conflict, format!("{:#}", anyhow::Error::new(e))),
    }
}
