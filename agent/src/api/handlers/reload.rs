//! `POST /v1/reload`: re-read the control file, as SIGHUP does.

use super::{Mode, Prepared};
use crate::api::replies::{self, ChangeReply};
use crate::api::{Caller, ErrorKind, Reply, error};
use crate::daemon::{Agent, FileRead};

pub fn post(agent: &mut Agent, prepared: Prepared, caller: &Caller, mode: Mode) -> Reply {
    let Prepared::File(read) = prepared else {
        return error(ErrorKind::Internal, "the control file was not read");
    };
    if mode == Mode::DryRun {
        return match read {
            FileRead::Unreadable(message) => error(ErrorKind::Invalid, message),
            FileRead::Unchanged => error(ErrorKind::Internal, "the control file was not parsed"),
            FileRead::Parsed { policy, .. } => match *policy {
                Ok(p) => super::commit_parsed(agent, p, "reload", caller, mode),
                Err(e) => error(ErrorKind::Invalid, e),
            },
        };
    }
    let generation = agent.generation;
    agent.reload_from(read, true);
    match &agent.last_error {
        Some(e) if agent.generation == generation => error(ErrorKind::Invalid, e),
        _ => (
            200,
            replies::json(&ChangeReply {
                applied: true,
                dry_run: false,
                changes: None,
                generation: agent.generation,
            }),
        ),
    }
}
