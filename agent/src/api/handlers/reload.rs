//! `POST /v1/reload`: re-read the control file, as SIGHUP does.

use serde_json::json;

use super::{Mode, Prepared};
use crate::api::{Caller, Reply, error};
use crate::daemon::{Agent, FileRead};

pub fn post(agent: &mut Agent, prepared: Prepared, caller: &Caller, mode: Mode) -> Reply {
    let Prepared::File(read) = prepared else {
        return error(500, "the control file was not read");
    };
    if mode == Mode::DryRun {
        return match read {
            FileRead::Unreadable(message) => error(422, message),
            FileRead::Unchanged => error(500, "the control file was not parsed"),
            FileRead::Parsed { policy, .. } => match *policy {
                Ok(p) => super::commit_parsed(agent, p, "reload", caller, mode),
                Err(e) => error(422, e),
            },
        };
    }
    let generation = agent.generation;
    agent.reload_from(read, true);
    match &agent.last_error {
        Some(e) if agent.generation == generation => error(422, e),
        _ => (200, json!({ "applied": true, "generation": agent.generation })),
    }
}
