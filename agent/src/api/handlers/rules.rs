//! `POST /v1/rules` and `DELETE /v1/rules`: one rule at a time.
//!
//! Body: `{"group", "direction": "ingress"|"egress", "proto", "ports",
//! "icmp_type", "icmp_code", "peer", "description"}`, where `peer` is
//! `group:NAME`, `cidr:CIDR`, `prefix-list:NAME` or `host`. A removal
//! names the same fields, or just `{"id": N}` from `GET /v1/policy`.

use super::Mode;
use crate::api::http::Request;
use crate::api::types::{self, DirectionName, RuleAdd, RuleRemove, Scalar};
use crate::api::{Caller, ErrorKind, Reply, error};
use crate::daemon::Agent;
use crate::policy::{self, Direction, Peer, RawPeer, Rule, RuleFields};

fn direction(d: DirectionName) -> Direction {
    match d {
        DirectionName::Ingress => Direction::Ingress,
        DirectionName::Egress => Direction::Egress,
    }
}

fn scalar(s: &Scalar) -> policy::Scalar {
    match s {
        Scalar::Number(n) => policy::Scalar::Int(i128::from(*n)),
        Scalar::Text(t) => policy::Scalar::Str(t.clone()),
    }
}

/// The peer a request names: `group:NAME`, `cidr:CIDR`,
/// `prefix-list:NAME` or `host`.
fn peer(spec: &str) -> Result<RawPeer, Reply> {
    if spec == "host" {
        return Ok(RawPeer::Host);
    }
    let (kind, value) = spec.split_once(':').ok_or_else(|| {
        error(
            ErrorKind::Invalid,
            format!("peer: \"{spec}\" is not group:NAME, cidr:CIDR, prefix-list:NAME or host"),
        )
    })?;
    let value = value.to_string();
    Ok(match kind {
        "group" => RawPeer::Group(value),
        "cidr" => RawPeer::Cidr(value),
        "prefix-list" | "prefix_list" => RawPeer::PrefixList(value),
        _ => {
            return Err(error(
                ErrorKind::Invalid,
                format!("peer: \"{kind}\" is not group, cidr, prefix-list or host"),
            ));
        }
    })
}

/// What a request says of one rule.
struct Fields<'a> {
    proto: &'a Scalar,
    ports: Option<&'a Scalar>,
    icmp_type: Option<&'a Scalar>,
    icmp_code: Option<&'a Scalar>,
    peer: &'a str,
    description: Option<&'a str>,
}

/// The rule a request describes, its values read and checked as a rule of
/// a control file is; the policy it joins is checked as a whole on commit.
fn rule_from(f: &Fields, dir: Direction) -> Result<Rule, Reply> {
    let fields = RuleFields {
        proto: scalar(f.proto),
        ports: f.ports.map(scalar),
        icmp_type: f.icmp_type.map(scalar),
        icmp_code: f.icmp_code.map(scalar),
        peers: vec![peer(f.peer)?],
        description: f.description.map(str::to_string),
    };
    policy::rule_from_fields(fields, dir).map_err(|e| error(ErrorKind::Invalid, e))
}

pub fn add(agent: &mut Agent, req: &Request, caller: &Caller, mode: Mode) -> Reply {
    let body: RuleAdd = match types::body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let dir = direction(body.direction);
    let fields = Fields {
        proto: &body.proto,
        ports: body.ports.as_ref(),
        icmp_type: body.icmp_type.as_ref(),
        icmp_code: body.icmp_code.as_ref(),
        peer: &body.peer,
        description: body.description.as_deref(),
    };
    let group = body.group.clone();
    let rule = match rule_from(&fields, dir) {
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
        return error(ErrorKind::Conflict, "the group already has this rule");
    }
    rules.push(rule);
    super::commit(agent, edited, "rule add", caller, mode)
}

/// Same protocol, ports and ICMP match (peers aside).
fn same_match(a: &Rule, b: &Rule) -> bool {
    a.proto == b.proto && a.ports == b.ports && a.icmp == b.icmp
}

pub fn remove(agent: &mut Agent, req: &Request, caller: &Caller, mode: Mode) -> Reply {
    let body: RuleRemove = match types::body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut edited = agent.policy.clone();
    if let Some(id) = body.id {
        let named = [
            ("group", body.group.is_some()),
            ("direction", body.direction.is_some()),
            ("proto", body.proto.is_some()),
            ("ports", body.ports.is_some()),
            ("icmp_type", body.icmp_type.is_some()),
            ("icmp_code", body.icmp_code.is_some()),
            ("peer", body.peer.is_some()),
        ];
        if let Some((field, _)) = named.iter().find(|(_, given)| *given) {
            return error(
                ErrorKind::Invalid,
                format!("{field}: give a rule's id or its fields, not both"),
            );
        }
        let Some(r) = agent
            .registry
            .slot(id)
            .and_then(|slot| agent.compiled.rule(slot))
            .cloned()
        else {
            return error(
                ErrorKind::NotFound,
                format!("no rule has id {id} (see `hostwall get policy`)"),
            );
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
        return super::commit(agent, edited, "rule remove", caller, mode);
    }
    let Some(group) = body.group.clone() else {
        return error(ErrorKind::Invalid, "group: missing (or give id)");
    };
    let Some(dir) = body.direction.map(direction) else {
        return error(ErrorKind::Invalid, "direction: missing (ingress or egress)");
    };
    let Some(proto) = body.proto.as_ref() else {
        return error(ErrorKind::Invalid, "proto: missing");
    };
    let Some(peer) = body.peer.as_deref() else {
        return error(ErrorKind::Invalid, "peer: missing");
    };
    let fields = Fields {
        proto,
        ports: body.ports.as_ref(),
        icmp_type: body.icmp_type.as_ref(),
        icmp_code: body.icmp_code.as_ref(),
        peer,
        description: None,
    };
    let target = match rule_from(&fields, dir) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(g) = edited.groups.get_mut(&group) else {
        return error(ErrorKind::NotFound, format!("no group named {group}"));
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
        return error(ErrorKind::NotFound, "no rule of the group matches");
    }
    super::commit(agent, edited, "rule remove", caller, mode)
}
