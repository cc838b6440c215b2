//! `POST /v1/reload`: re-read the control file, as SIGHUP does.

use serde_json::json;

use super::Prepared;
use crate::api::{Reply, error};
use crate::daemon::Agent;

pub fn post(agent: &mut Agent, prepared: Prepared) -> Reply {
    let Prepared::File(read) = prepared else {
        return error(500, "the control file was not read");
    };
    let generation = agent.generation;
    agent.reload_from(read, true);
    match &agent.last_error {
        Some(e) if agent.generation == generation => error(422, e),
        _ => (200, json!({ "applied": true, "generation": agent.generation })),
    }
}
