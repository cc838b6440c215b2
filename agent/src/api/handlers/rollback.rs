//! `POST /v1/rollback`: back to the policy enforced before the last
//! change, itself a change (written back, and undone by another rollback).

use super::Mode;
use crate::api::{Caller, ErrorKind, Reply, error};
use crate::daemon::Agent;

pub fn post(agent: &mut Agent, caller: &Caller, mode: Mode) -> Reply {
    let Some(previous) = agent.previous.clone() else {
        return error(
            ErrorKind::Conflict,
            "there is no earlier policy to roll back to: none was changed since the agent started",
        );
    };
    super::commit_parsed(agent, previous, "rollback", caller, mode)
}
