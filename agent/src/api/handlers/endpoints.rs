//! `POST /v1/endpoints` (add or replace one) and `DELETE
//! /v1/endpoints/NAME`.
//!
//! Body: `{"name", "interface", "mac", "addresses": [..], "groups": [..],
//! "node"}`.

use super::Mode;
use crate::api::http::Request;
use crate::api::types::{self, EndpointAdd};
use crate::api::{Caller, ErrorKind, Reply, error};
use crate::daemon::Agent;
use crate::policy::{EndpointFields, endpoint_from_fields};

pub fn add(agent: &mut Agent, req: &Request, caller: &Caller, mode: Mode) -> Reply {
    let body: EndpointAdd = match types::body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let EndpointAdd {
        name,
        interface,
        mac,
        addresses,
        groups,
        node,
    } = body;
    // Read as an endpoint of a control file is; the policy it joins is
    // checked as a whole on commit.
    let fields = EndpointFields {
        name,
        node,
        interface,
        mac,
        addresses,
        groups,
    };
    let endpoint = match endpoint_from_fields(fields) {
        Ok(e) => e,
        Err(e) => return error(ErrorKind::Invalid, e),
    };
    let mut edited = agent.policy.clone();
    match edited.endpoints.iter_mut().find(|e| e.name == endpoint.name) {
        Some(existing) => *existing = endpoint,
        None => edited.endpoints.push(endpoint),
    }
    super::commit(agent, edited, "endpoint add", caller, mode)
}

pub fn remove(agent: &mut Agent, name: &str, caller: &Caller, mode: Mode) -> Reply {
    let mut edited = agent.policy.clone();
    let before = edited.endpoints.len();
    edited.endpoints.retain(|e| e.name != name);
    if edited.endpoints.len() == before {
        return error(ErrorKind::NotFound, format!("no endpoint named {name}"));
    }
    super::commit(agent, edited, "endpoint remove", caller, mode)
}
