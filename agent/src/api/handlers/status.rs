//! `GET /v1/status`: is the policy enforced, where, and how full are the
//! maps. Each local endpoint carries the MAC its frames must have, or the
//! `problem` that leaves it without one (all its frames are dropped).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::api::Reply;
use crate::api::replies::{self, EndpointStatus, MapMemory, PolicyStatus, Quarantined, StatusReply};
use crate::daemon::Agent;
use crate::policy::format_mac;

/// `2026-12-03T14:05:09Z`: a time in RFC 3339, UTC, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

pub fn get(agent: &mut Agent) -> Reply {
    let policy_hash = crate::daemon::lifecycle::sha256_hex(crate::policy::to_yaml(&agent.policy).as_bytes());
    let applied_at = agent
        .applied_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let endpoints: Vec<EndpointStatus> = agent
        .policy
        .endpoints
        .iter()
        .filter(|e| e.is_local(&agent.opts.node))
        .map(|e| {
            let compiled = agent.compiled.endpoints.iter().find(|c| c.name == e.name);
            let ifindex = compiled.and_then(|c| c.ifindex);
            let attached = ifindex.is_some_and(|i| agent.attachments.is_attached(i));
            // What the kernel says, not what the agent last did.
            let missing = match ifindex {
                Some(i) if attached => agent
                    .attachments
                    .missing_hooks(&agent.datapath.ebpf, i)
                    .unwrap_or_else(|_| vec!["its hooks (they could not be read)"]),
                _ => Vec::new(),
            };
            let state = match (ifindex, attached) {
                (None, _) => WAITING.to_string(),
                (Some(_), true) if missing.is_empty() => ENFORCED.to_string(),
                (Some(_), true) => format!("programs missing from {}", missing.join(" and ")),
                (Some(_), false) => "attach failed".to_string(),
            };
            // The MAC the enforced policy holds, and why there is none.
            let mac = compiled.map(|c| c.info.mac).filter(|m| *m != [0; 6]);
            let problem = ifindex.and_then(|i| {
                agent.macs.get(i).and_then(|m| m.problem()).or_else(|| {
                    mac.is_none()
                        .then(|| "no MAC is fixed for it yet; all its frames are dropped until it has one".to_string())
                })
            });
            EndpointStatus {
                name: e.name.clone(),
                interface: e.interface.clone(),
                ifindex,
                attached,
                state,
                groups: e.groups.clone(),
                mac: mac.as_ref().map(format_mac),
                problem,
            }
        })
        .collect();
    let quarantined: Vec<Quarantined> = agent
        .quarantined
        .iter()
        .map(|(i, n)| Quarantined {
            interface: n.clone(),
            ifindex: *i,
        })
        .collect();
    let enforced = endpoints.iter().all(|e| e.state == ENFORCED || e.state == WAITING);
    let (bytes, max) = agent.datapath.slots.memory();
    let reply = StatusReply {
        enforced,
        policy: PolicyStatus {
            hash: policy_hash,
            applied_at,
            applied_at_rfc3339: rfc3339(agent.applied_at),
            generation: agent.generation,
            file: agent.opts.config.clone(),
            matches_file: agent.matches_file,
            write_back: match agent.opts.write_back {
                crate::daemon::WriteBack::File => "file",
                crate::daemon::WriteBack::None => "none",
            }
            .to_string(),
        },
        node: agent.opts.node.clone(),
        hook: agent.attachments.kind().as_str().to_string(),
        layout: agent.layout.version(),
        bpffs: agent.layout.dir(),
        pid: std::process::id(),
        uplink: agent.opts.uplink.clone(),
        endpoints,
        quarantined,
        maps: crate::datapath::stats::fill_levels(agent),
        map_memory: MapMemory { bytes, max },
        last_error: agent.last_error.clone(),
        last_error_at: agent.last_error_at.map(rfc3339),
        version: crate::api::VERSION.to_string(),
        started_at: rfc3339(agent.started_at),
        uptime_seconds: agent.started_at.elapsed().map(|d| d.as_secs()).unwrap_or(0),
    };
    (200, replies::json(&reply))
}

const ENFORCED: &str = "enforced";
const WAITING: &str = "waiting for interface";

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_are_rfc_3339_in_utc() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_796_306_709, "2026-12-03T14:05:09Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(secs)), text);
        }
    }
}
