//! `GET /v1/policy`, `PUT /v1/policy` (apply a whole control file) and
//! `POST /v1/policy/diff` (what applying it would change).

use serde_json::{Value, json};

use super::{Mode, Prepared};
use crate::api::replies::{self, DiffReply};
use crate::api::{Caller, ErrorKind, Reply, error};
use crate::compile::RuleRef;
use crate::daemon::Agent;
use crate::policy::{Direction, Peer, Policy, format_mac, rule_flow, to_yaml};

/// The applied policy, with the id of every rule.
pub fn get(agent: &mut Agent) -> Reply {
    let mut groups = serde_json::Map::new();
    for (name, g) in &agent.policy.groups {
        let mut dirs = serde_json::Map::new();
        for (direction, rules, key) in [
            (Direction::Ingress, &g.ingress, "from"),
            (Direction::Egress, &g.egress, "to"),
        ] {
            let list: Vec<Value> = rules
                .iter()
                .enumerate()
                .map(|(index, r)| {
                    let id = agent
                        .compiled
                        .rule_id(&RuleRef { group: name.clone(), direction, index })
                        .and_then(|slot| agent.registry.id(slot));
                    json!({
                        "id": id,
                        "proto": r.proto.name(),
                        "ports": r.ports.map(|p| if p.first == p.last { p.first.to_string() } else { format!("{}-{}", p.first, p.last) }),
                        "icmp_type": r.icmp.map(|i| i.ty),
                        "icmp_code": r.icmp.and_then(|i| i.code),
                        "peers": r.peers.iter().map(peer_json).collect::<Vec<_>>(),
                        "description": r.description,
                        "rule": rule_flow(r, key),
                    })
                })
                .collect();
            dirs.insert(direction.as_str().into(), Value::Array(list));
        }
        if let Some(d) = &g.description {
            dirs.insert("description".into(), json!(d));
        }
        groups.insert(name.clone(), Value::Object(dirs));
    }
    let endpoints: Vec<Value> = agent
        .policy
        .endpoints
        .iter()
        .map(|e| {
            json!({
                "name": e.name, "node": e.node, "interface": e.interface,
                "mac": e.mac.as_ref().map(format_mac), "addresses": e.addresses, "groups": e.groups, "local": e.is_local(&agent.opts.node),
            })
        })
        .collect();
    (
        200,
        json!({
            "generation": agent.generation,
            "groups": groups,
            "endpoints": endpoints,
            "prefix_lists": agent.policy.prefix_lists,
            "yaml": to_yaml(&agent.policy),
        }),
    )
}

/// A peer as JSON, in the control file's shape: `{"group": "web"}`,
/// `{"cidr": "10.0.0.0/8"}`, `{"prefix_list": "office"}`, `"host"`.
fn peer_json(peer: &Peer) -> Value {
    match peer {
        Peer::Group(g) => json!({ "group": g }),
        Peer::Cidr(c) => json!({ "cidr": c.to_string() }),
        Peer::PrefixList(p) => json!({ "prefix_list": p }),
        Peer::Host => json!("host"),
    }
}

/// The body's policy, as the server parsed it.
fn body_policy(prepared: Prepared) -> Result<Policy, Reply> {
    match prepared {
        Prepared::Policy(parsed) => parsed.map_err(|e| error(ErrorKind::Invalid, e)),
        _ => Err(error(ErrorKind::Internal, "the request's policy was not read")),
    }
}

pub fn apply(agent: &mut Agent, prepared: Prepared, caller: &Caller, mode: Mode) -> Reply {
    match body_policy(prepared) {
        Ok(p) => super::commit_parsed(agent, p, "apply", caller, mode),
        Err(r) => r,
    }
}

pub fn diff(agent: &mut Agent, prepared: Prepared) -> Reply {
    match body_policy(prepared) {
        Ok(p) => (
            200,
            replies::json(&DiffReply {
                changes: crate::policy::diff(&agent.policy, &p),
            }),
        ),
        Err(r) => r,
    }
}
