//! `GET /v1/stats`: per-rule counters (and rules that never matched),
//! drops and passes by reason, totals of both conntrack tables (`conntrack`:
//! flows endpoints opened, `inbound`: flows opened towards them).

use crate::api::Reply;
use crate::api::replies::{self, RuleCounter, StatsReply};
use crate::daemon::Agent;

pub fn get(agent: &mut Agent) -> Reply {
    let s = crate::datapath::stats::read(&agent.datapath.ebpf, &agent.compiled);
    let rules: Vec<RuleCounter> = agent
        .compiled
        .rules
        .iter()
        .map(|(slot, r)| {
            let (packets, bytes) = s.rules.get(slot).copied().unwrap_or_default();
            let id = agent.registry.id(*slot);
            let g = &agent.policy.groups[&r.group];
            let rule = match r.direction {
                crate::policy::Direction::Ingress => crate::policy::rule_flow(&g.ingress[r.index], "from"),
                crate::policy::Direction::Egress => crate::policy::rule_flow(&g.egress[r.index], "to"),
            };
            RuleCounter {
                id,
                group: r.group.clone(),
                direction: r.direction.as_str().to_string(),
                index: r.index,
                rule,
                packets,
                bytes,
                never_matched: packets == 0,
            }
        })
        .collect();
    (
        200,
        replies::json(&StatsReply {
            rules,
            drops: s.drops,
            passes: s.passes,
            conntrack: s.conntrack,
            inbound: s.inbound,
        }),
    )
}
