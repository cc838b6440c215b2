//! `POST /v1/endpoints` (add or replace one) and `DELETE
//! /v1/endpoints/NAME`.
//!
//! Body: `{"name", "interface", "mac", "addresses": [..], "groups": [..],
//! "node"}`.

use serde_json::Value;

use crate::api::http::Request;
use crate::api::{Caller, Reply, error};
use crate::daemon::Agent;
use crate::policy::{Endpoint, parse_str};

fn strings(v: Option<&Value>, name: &str) -> Result<Vec<String>, Reply> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| error(422, format!("{name}: a list of strings")))
            })
            .collect(),
        Some(_) => Err(error(422, format!("{name}: a list of strings"))),
    }
}

pub fn add(agent: &mut Agent, req: &Request, caller: &Caller) -> Reply {
    let body = match super::json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    let Some(name) = text("name") else {
        return error(422, "name: missing");
    };
    let (addresses, groups) = match (
        strings(body.get("addresses"), "addresses"),
        strings(body.get("groups"), "groups"),
    ) {
        (Ok(a), Ok(g)) => (a, g),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    // Parsed as a one-endpoint control file, so addresses and names get the
    // same checks (and messages) as in a file.
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let list = |v: &[String]| v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ");
    let mut doc = format!("version: 1\nendpoints:\n  - name: {}\n", quote(&name));
    if let Some(i) = text("interface") {
        doc.push_str(&format!("    interface: {}\n", quote(&i)));
    }
    if let Some(m) = text("mac") {
        doc.push_str(&format!("    mac: {}\n", quote(&m)));
    }
    if let Some(n) = text("node") {
        doc.push_str(&format!("    node: {}\n", quote(&n)));
    }
    doc.push_str(&format!("    addresses: [{}]\n", list(&addresses)));
    let parsed = match parse_str(&doc, "the endpoint") {
        Ok(p) => p,
        Err(e) => return error(422, e),
    };
    let mut endpoint: Endpoint = parsed.endpoints.into_iter().next().expect("one endpoint");
    endpoint.groups = groups;
    let mut edited = agent.policy.clone();
    match edited.endpoints.iter_mut().find(|e| e.name == endpoint.name) {
        Some(existing) => *existing = endpoint,
        None => edited.endpoints.push(endpoint),
    }
    super::commit(agent, edited, "endpoint add", caller)
}

pub fn remove(agent: &mut Agent, name: &str, caller: &Caller) -> Reply {
    let mut edited = agent.policy.clone();
    let before = edited.endpoints.len();
    edited.endpoints.retain(|e| e.name != name);
    if edited.endpoints.len() == before {
        return error(404, format!("no endpoint named {name}"));
    }
    super::commit(agent, edited, "endpoint remove", caller)
}
