//! Every route of the control API in one table: its method and path, the
//! query keys it takes, the type of its request body and of its reply.
//! The table gives each request its allowed query keys and the served
//! schema (`GET /v1/schema`, `hostwall schema`).

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use super::ErrorBody;
use super::replies::*;
use super::types::{EndpointAdd, RuleAdd, RuleRemove};

/// A schema of `T`, built by the generator that collects definitions.
type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

fn of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// A control file in YAML or JSON (README: the control file).
fn control_file(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "string",
        "contentMediaType": "application/yaml",
        "description": "a whole control file, YAML or JSON, as `hostwall validate` reads it"
    })
}

/// A reply the schema describes as a JSON object without listing its
/// fields (the README describes them).
fn object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({ "type": "object" })
}

/// The reply of `GET /v1/schema`: this document.
fn document_schema(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({ "type": "object", "description": "this document" })
}

pub struct Route {
    pub method: &'static str,
    /// Segments; `{name}` stands for any one.
    pub path: &'static str,
    pub query: &'static [&'static str],
    pub summary: &'static str,
    pub request: Option<SchemaOf>,
    pub reply: SchemaOf,
}

/// The key every change request takes: `dry_run=true` says what it would
/// change and changes nothing.
const CHANGE: &[&str] = &["dry_run"];

pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/v1/status",
        query: &[],
        summary: "whether the policy is enforced, where, and how full the maps are",
        request: None,
        reply: of::<StatusReply>,
    },
    Route {
        method: "GET",
        path: "/v1/schema",
        query: &[],
        summary: "this schema",
        request: None,
        reply: document_schema,
    },
    Route {
        method: "GET",
        path: "/v1/policy",
        query: &[],
        summary: "the enforced policy, its rules with their ids",
        request: None,
        reply: object,
    },
    Route {
        method: "PUT",
        path: "/v1/policy",
        query: CHANGE,
        summary: "apply a whole control file",
        request: Some(control_file),
        reply: of::<ChangeReply>,
    },
    Route {
        method: "POST",
        path: "/v1/policy/diff",
        query: &[],
        summary: "what applying a control file would change",
        request: Some(control_file),
        reply: of::<DiffReply>,
    },
    Route {
        method: "POST",
        path: "/v1/reload",
        query: CHANGE,
        summary: "re-read the control file (as SIGHUP)",
        request: None,
        reply: of::<ChangeReply>,
    },
    Route {
        method: "POST",
        path: "/v1/rollback",
        query: CHANGE,
        summary: "go back to the policy enforced before the last change",
        request: None,
        reply: of::<ChangeReply>,
    },
    Route {
        method: "POST",
        path: "/v1/rules",
        query: CHANGE,
        summary: "add one rule",
        request: Some(of::<RuleAdd>),
        reply: of::<ChangeReply>,
    },
    Route {
        method: "DELETE",
        path: "/v1/rules",
        query: CHANGE,
        summary: "remove a rule by id, or revoke a peer from the rules that match",
        request: Some(of::<RuleRemove>),
        reply: of::<ChangeReply>,
    },
    Route {
        method: "POST",
        path: "/v1/endpoints",
        query: CHANGE,
        summary: "add an endpoint, or replace the one of that name",
        request: Some(of::<EndpointAdd>),
        reply: of::<ChangeReply>,
    },
    Route {
        method: "DELETE",
        path: "/v1/endpoints/{name}",
        query: CHANGE,
        summary: "remove an endpoint (its name percent-encoded)",
        request: None,
        reply: of::<ChangeReply>,
    },
    Route {
        method: "GET",
        path: "/v1/stats",
        query: &[],
        summary: "per-rule counters, drops and passes by reason, conntrack totals",
        request: None,
        reply: of::<StatsReply>,
    },
    Route {
        method: "GET",
        path: "/v1/explain",
        query: &["from", "to", "flow"],
        summary: "why a flow is allowed or denied, and by which rules",
        request: None,
        reply: object,
    },
    Route {
        method: "GET",
        path: "/v1/conntrack",
        query: &["addr", "port", "proto", "endpoint"],
        summary: "tracked flows, filtered",
        request: None,
        reply: of::<FlowsReply>,
    },
    Route {
        method: "DELETE",
        path: "/v1/conntrack",
        query: &["addr", "port", "proto", "endpoint", "dry_run"],
        summary: "end tracked flows, filtered",
        request: None,
        reply: of::<FlushReply>,
    },
];

impl Route {
    fn matches_path(&self, segments: &[&str]) -> bool {
        let pattern: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        pattern.len() == segments.len() && pattern.iter().zip(segments).all(|(p, s)| p.starts_with('{') || p == s)
    }
}

/// The route of a request, or why there is none: `Err(true)` when the path
/// exists with other methods.
pub fn find(method: &str, segments: &[&str]) -> Result<&'static Route, bool> {
    let mut path_exists = false;
    for route in ROUTES {
        if route.matches_path(segments) {
            if route.method == method {
                return Ok(route);
            }
            path_exists = true;
        }
    }
    Err(path_exists)
}

/// The API's schema (JSON Schema 2020-12): each route with its query keys,
/// request and reply, the error body, and the definitions they share.
pub fn document() -> Value {
    let mut g = SchemaGenerator::default();
    let routes: Vec<Value> = ROUTES
        .iter()
        .map(|r| {
            json!({
                "method": r.method,
                "path": r.path,
                "summary": r.summary,
                "query": r.query,
                "request": r.request.map(|f| f(&mut g)),
                "reply": (r.reply)(&mut g),
            })
        })
        .collect();
    let error = g.subschema_for::<ErrorBody>();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hostwall control API",
        "version": super::VERSION,
        "routes": routes,
        "error": error,
        "$defs": g.take_definitions(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_found_and_others_are_told_apart() {
        for r in ROUTES {
            let path = r.path.replace("{name}", "web");
            let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
            assert_eq!(find(r.method, &segments).map(|f| f.path), Ok(r.path));
        }
        assert_eq!(find("PATCH", &["v1", "rules"]).err(), Some(true));
        assert_eq!(find("GET", &["v1", "nothing"]).err(), Some(false));
        assert_eq!(find("DELETE", &["v1", "endpoints"]).err(), Some(true));
        assert_eq!(find("DELETE", &["v1", "endpoints", "a", "b"]).err(), Some(false));
    }

    /// `dist/api-schema.json` is the schema the types generate: rewrite it
    /// with `hostwall schema > dist/api-schema.json` after changing them.
    #[test]
    fn the_committed_schema_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/api-schema.json");
        let committed: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("reading dist/api-schema.json"))
                .expect("dist/api-schema.json is JSON");
        assert!(
            committed == document(),
            "dist/api-schema.json differs from the types: run `hostwall schema > dist/api-schema.json`"
        );
    }

    #[test]
    fn the_schema_describes_requests_replies_and_errors() {
        let doc = document();
        let defs = doc["$defs"].as_object().expect("definitions");
        for name in [
            "RuleAdd",
            "RuleRemove",
            "EndpointAdd",
            "ChangeReply",
            "StatusReply",
            "ErrorBody",
            "ErrorKind",
        ] {
            assert!(defs.contains_key(name), "no definition of {name}: {:?}", defs.keys());
        }
        // Strict requests: an unknown field is not allowed by the schema
        // either.
        assert_eq!(defs["RuleAdd"]["additionalProperties"], Value::Bool(false));
        let kinds = defs["ErrorKind"].to_string();
        for k in ErrorKind::ALL {
            let name = serde_json::to_value(k).unwrap();
            assert!(kinds.contains(&name.to_string()), "{name} missing from {kinds}");
        }
    }

    use crate::api::ErrorKind;
}
