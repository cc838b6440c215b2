//! `POST /v1/rules` and `DELETE /v1/rules`: one rule at a time.
//!
//! Body: `{"group", "direction": "ingress"|"egress", "proto", "ports",
//! "icmp_type", "icmp_code", "peer", "description"}`, where `peer` is
//! `group:NAME`, `cidr:CIDR`, `prefix-list:NAME` or `host`. A removal
//! names the same fields, or just `{"id": N}` from `GET /v1/policy`.

use serde_json::{Map, Value};

use crate::api::http::Request;
use crate::api::{Caller, Reply, error};
use crate::daemon::Agent;
use crate::policy::{Direction, Peer, Rule, parse_rule};

fn field(body: &Map<String, Value>, name: &str) -> Option<String> {
    match body.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn direction(body: &Map<String, Value>) -> Result<Direction, Reply> {
    match field(body, "direction").as_deref() {
        Some("ingress") => Ok(Direction::Ingress),
        Some("egress") => Ok(Direction::Egress),
        Some(other) => Err(error(422, format!("direction: \"{other}\" is not ingress or egress"))),
        None => Err(error(422, "direction: missing (ingress or egress)")),
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// The peer in control-file syntax.
fn peer_yaml(spec: &str) -> Result<String, Reply> {
    if spec == "host" {
        return Ok("host".into());
    }
    let (kind, value) = spec.split_once(':').ok_or_else(|| {
        error(
            422,
            format!("peer: \"{spec}\" is not group:NAME, cidr:CIDR, prefix-list:NAME or host"),
        )
    })?;
    let key = match kind {
        "group" => "group",
        "cidr" => "cidr",
        "prefix-list" | "prefix_list" => "prefix_list",
        _ => {
            return Err(error(
                422,
                format!("peer: \"{kind}\" is not group, cidr, prefix-list or host"),
            ));
        }
    };
    Ok(format!("{{{key}: {}}}", quote(value)))
}

/// The rule a request describes, parsed and validated like a rule of a
/// control file.
fn rule_from(agent: &Agent, body: &Map<String, Value>, group: &str, dir: Direction) -> Result<Rule, Reply> {
    let proto = field(body, "proto").ok_or_else(|| error(422, "proto: missing"))?;
    let peer = field(body, "peer").ok_or_else(|| error(422, "peer: missing"))?;
    let mut parts = vec![format!("proto: {}", quote(&proto))];
    if let Some(ports) = field(body, "ports") {
        parts.push(format!("ports: {}", quote(&ports)));
    }
    match (field(body, "icmp_type"), field(body, "icmp_code")) {
        (Some(t), Some(c)) => parts.push(format!("icmp: {{type: {}, code: {}}}", quote(&t), quote(&c))),
        (Some(t), None) => parts.push(format!("icmp: {{type: {}}}", quote(&t))),
        (None, Some(_)) => return Err(error(422, "icmp_code: needs icmp_type")),
        (None, None) => {}
    }
    let key = if dir == Direction::Ingress { "from" } else { "to" };
    parts.push(format!("{key}: [{}]", peer_yaml(&peer)?));
    if let Some(d) = field(body, "description") {
        parts.push(format!("description: {}", quote(&d)));
    }
    let text = format!("{{{}}}", parts.join(", "));
    parse_rule(&agent.policy, group, dir, &text, "the rule").map_err(|e| error(422, e))
}

pub fn add(agent: &mut Agent, req: &Request, caller: &Caller) -> Reply {
    let body = match super::json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(group) = field(&body, "group") else {
        return error(422, "group: missing");
    };
    let dir = match direction(&body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let rule = match rule_from(agent, &body, &group, dir) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut edited = agent.policy.clone();
    let g = edited.groups.entry(group.clone()).or_default();
    let rules = if dir == Direction::Ingress {
        &mut g.ingress
    } else {
        &mut g.egress
    };
    if rules
        .iter()
        .any(|r| same_match(r, &rule) && rule.peers.iter().all(|p| r.peers.contains(p)))
    {
        return error(409, "the group already has this rule");
    }
    rules.push(rule);
    super::commit(agent, edited, "rule add", caller)
}

/// Same protocol, ports and ICMP match (peers aside).
fn same_match(a: &Rule, b: &Rule) -> bool {
    a.proto == b.proto && a.ports == b.ports && a.icmp == b.icmp
}

pub fn remove(agent: &mut Agent, req: &Request, caller: &Caller) -> Reply {
    let body = match super::json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut edited = agent.policy.clone();
    if let Some(id) = body.get("id") {
        let Some(id) = id.as_u64().and_then(|i| u32::try_from(i).ok()) else {
            return error(422, "id: not a rule id");
        };
        let Some(r) = agent.compiled.rule(id).cloned() else {
            return error(404, format!("no rule has id {id} (see `hostwall get policy`)"));
        };
        let g = edited
            .groups
            .get_mut(&r.group)
            .expect("compiled rules exist in the policy");
        let rules = if r.direction == Direction::Ingress {
            &mut g.ingress
        } else {
            &mut g.egress
        };
        rules.remove(r.index);
        return super::commit(agent, edited, "rule remove", caller);
    }
    let Some(group) = field(&body, "group") else {
        return error(422, "group: missing (or give id)");
    };
    let dir = match direction(&body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let target = match rule_from(agent, &body, &group, dir) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(g) = edited.groups.get_mut(&group) else {
        return error(404, format!("no group named {group}"));
    };
    let rules = if dir == Direction::Ingress {
        &mut g.ingress
    } else {
        &mut g.egress
    };
    // The peer is revoked from every matching rule; a rule left without
    // peers goes.
    let peer: &Peer = &target.peers[0];
    let mut found = false;
    for r in rules.iter_mut().filter(|r| same_match(r, &target)) {
        let before = r.peers.len();
        r.peers.retain(|p| p != peer);
        found |= r.peers.len() != before;
    }
    rules.retain(|r| !r.peers.is_empty());
    if !found {
        return error(404, "no rule of the group matches");
    }
    super::commit(agent, edited, "rule remove", caller)
}
