//! `POST /v1/reload`: re-read the control file, as SIGHUP does.

use serde_json::json;

use crate::api::{Reply, error};
use crate::daemon::Agent;

pub fn post(agent: &mut Agent) -> Reply {
    let generation = agent.generation;
    agent.reload_file(true);
    match &agent.last_error {
        Some(e) if agent.generation == generation => error(422, e),
        _ => (200, json!({ "applied": true, "generation": agent.generation })),
    }
}
