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
use crate::policy::{Endpoint, parse_str};

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
    // Parsed as a one-endpoint control file, so addresses and names get the
    // same checks (and messages) as in a file.
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let list = |v: &[String]| v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ");
    let mut doc = format!("version: 1\nendpoints:\n  - name: {}\n", quote(&name));
    if let Some(i) = interface {
        doc.push_str(&format!("    interface: {}\n", quote(&i)));
    }
    if let Some(m) = mac {
        doc.push_str(&format!("    mac: {}\n", quote(&m)));
    }
    if let Some(n) = node {
        doc.push_str(&format!("    node: {}\n", quote(&n)));
    }
    doc.push_str(&format!("    addresses: [{}]\n", list(&addresses)));
    let parsed = match parse_str(&doc, "the endpoint") {
        Ok(p) => p,
        Err(e) => return error(ErrorKind::Invalid, e),
    };
    let mut endpoint: Endpoint = parsed.endpoints.into_iter().next().expect("one endpoint");
    endpoint.groups = groups;
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
