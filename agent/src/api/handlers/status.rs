//! `GET /v1/status`: is the policy enforced, where, and how full are the
//! maps. Each local endpoint carries the MAC its frames must have, or the
//! `problem` that leaves it without one (all its frames are dropped).

use std::time::UNIX_EPOCH;

use serde_json::{Value, json};

use crate::api::Reply;
use crate::daemon::Agent;
use crate::policy::format_mac;

pub fn get(agent: &mut Agent) -> Reply {
    let policy_hash = crate::daemon::lifecycle::sha256_hex(crate::policy::to_yaml(&agent.policy).as_bytes());
    let applied_at = agent
        .applied_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let endpoints: Vec<Value> = agent
        .policy
        .endpoints
        .iter()
        .filter(|e| e.is_local(&agent.opts.node))
        .map(|e| {
            let compiled = agent.compiled.endpoints.iter().find(|c| c.name == e.name);
            let ifindex = compiled.and_then(|c| c.ifindex);
            let attached = ifindex.is_some_and(|i| agent.attachments.is_attached(i));
            let state = match (ifindex, attached) {
                (None, _) => "waiting for interface",
                (Some(_), true) => "enforced",
                (Some(_), false) => "attach failed",
            };
            // The MAC the enforced policy holds, and why there is none.
            let mac = compiled.map(|c| c.info.mac).filter(|m| *m != [0; 6]);
            let problem = ifindex.and_then(|i| {
                agent.macs.get(i).and_then(|m| m.problem()).or_else(|| {
                    mac.is_none()
                        .then(|| "no MAC is fixed for it yet; all its frames are dropped until it has one".to_string())
                })
            });
            json!({
                "name": e.name, "interface": e.interface, "ifindex": ifindex,
                "attached": attached, "state": state, "groups": e.groups,
                "mac": mac.as_ref().map(format_mac), "problem": problem,
            })
        })
        .collect();
    let quarantined: Vec<Value> = agent
        .quarantined
        .iter()
        .map(|(i, n)| json!({"interface": n, "ifindex": i}))
        .collect();
    let enforced = endpoints.iter().all(|e| e["state"] != "attach failed");
    (
        200,
        json!({
            "enforced": enforced,
            "policy": {
                "hash": policy_hash,
                "applied_at": applied_at,
                "generation": agent.generation,
                "file": agent.opts.config,
            },
            "node": agent.opts.node,
            "hook": agent.attachments.kind().as_str(),
            "layout": agent.layout.version(),
            "bpffs": agent.layout.dir(),
            "pid": std::process::id(),
            "uplink": agent.opts.uplink,
            "endpoints": endpoints,
            "quarantined": quarantined,
            "maps": crate::datapath::stats::fill_levels(agent),
            "map_memory": {
                "bytes": agent.datapath.slots.memory().0,
                "max": agent.datapath.slots.memory().1,
            },
            "last_error": agent.last_error,
        }),
    )
}
