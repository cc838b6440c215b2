//! `GET /v1/conntrack` and `DELETE /v1/conntrack`, both filtered by query:
//! `addr` (either end, an address or CIDR), `port` (either end), `proto`
//! (name or number), `endpoint` (an endpoint's name: any of its
//! addresses).

use std::net::IpAddr;

use hostwall_common::{CT_CLOSING, CT_MIDSTREAM, CT_SEEN_REPLY, CtKey, FAMILY_V4};
use ipnet::IpNet;
use tracing::info;

use crate::api::http::Request;
use crate::api::replies::{self, Flow, FlowsReply, FlushReply};
use crate::api::{Caller, ErrorKind, Reply, error};
use crate::daemon::Agent;
use crate::datapath::conntrack;

struct Filter {
    nets: Vec<IpNet>,
    port: Option<u16>,
    proto: Option<u8>,
}

fn filter(agent: &Agent, req: &Request) -> Result<Filter, Reply> {
    let mut f = Filter {
        nets: Vec::new(),
        port: None,
        proto: None,
    };
    if let Some(a) = req.query("addr") {
        let net = a
            .parse::<IpNet>()
            .or_else(|_| a.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| error(ErrorKind::Invalid, format!("addr: \"{a}\" is not an address or CIDR")))?;
        f.nets.push(net);
    }
    if let Some(name) = req.query("endpoint") {
        let ep = agent
            .policy
            .endpoints
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| error(ErrorKind::NotFound, format!("endpoint: no endpoint named {name}")))?;
        f.nets.extend(ep.addresses.iter().map(|a| IpNet::from(*a)));
    }
    if let Some(p) = req.query("port") {
        f.port = Some(
            p.parse()
                .map_err(|_| error(ErrorKind::Invalid, format!("port: \"{p}\" is not a port")))?,
        );
    }
    if let Some(p) = req.query("proto") {
        f.proto = Some(match p {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            "icmpv6" => 58,
            "sctp" => 132,
            n => n
                .parse()
                .map_err(|_| error(ErrorKind::Invalid, format!("proto: \"{n}\" is not a protocol")))?,
        });
    }
    Ok(f)
}

fn addr(k: &CtKey, b: &[u8; 16]) -> IpAddr {
    if k.family == FAMILY_V4 {
        IpAddr::from([b[0], b[1], b[2], b[3]])
    } else {
        IpAddr::from(*b)
    }
}

impl Filter {
    fn matches(&self, k: &CtKey) -> bool {
        let (s, d) = (addr(k, &k.src), addr(k, &k.dst));
        (self.nets.is_empty() || self.nets.iter().any(|n| n.contains(&s) || n.contains(&d)))
            && self.port.is_none_or(|p| k.sport == p || k.dport == p)
            && self.proto.is_none_or(|p| k.proto == p)
    }
}

pub fn list(agent: &mut Agent, req: &Request) -> Reply {
    let f = match filter(agent, req) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let now = crate::datapath::stats::monotonic_ns();
    let flows: Vec<Flow> = conntrack::flows(&agent.datapath.ebpf)
        .into_iter()
        .filter(|flow| f.matches(&flow.key))
        .map(|flow| {
            // Shown in the direction the rules allowed.
            let k = flow.allowed();
            let v = flow.entry;
            Flow {
                proto: k.proto,
                src: addr(&k, &k.src),
                sport: k.sport,
                dst: addr(&k, &k.dst),
                dport: k.dport,
                table: flow.table.name().to_string(),
                midstream: v.flags & CT_MIDSTREAM != 0,
                seen_reply: v.flags & CT_SEEN_REPLY != 0,
                closing: v.flags & CT_CLOSING != 0,
                idle_seconds: now.saturating_sub(v.last_seen_ns) / 1_000_000_000,
                rule_egress: agent.registry.admitted_by(v.rule_egress),
                rule_ingress: agent.registry.admitted_by(v.rule_ingress),
            }
        })
        .collect();
    (200, replies::json(&FlowsReply { flows }))
}

pub fn flush(agent: &mut Agent, req: &Request, caller: &Caller, mode: super::Mode) -> Reply {
    let f = match filter(agent, req) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let doomed: Vec<_> = conntrack::flows(&agent.datapath.ebpf)
        .into_iter()
        .filter(|flow| f.matches(&flow.key))
        .collect();
    if mode == super::Mode::DryRun {
        return (
            200,
            replies::json(&FlushReply {
                flushed: 0,
                would_flush: Some(doomed.len()),
                dry_run: true,
            }),
        );
    }
    let flushed = conntrack::remove(&mut agent.datapath.ebpf, &doomed);
    info!(uid = caller.uid, flushed, "conntrack flushed");
    (
        200,
        replies::json(&FlushReply {
            flushed,
            would_flush: None,
            dry_run: false,
        }),
    )
}
