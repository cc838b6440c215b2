//! `hostwall explain`: why a flow is allowed or denied, from the reference
//! evaluator. Works on a file offline and on the agent's applied policy.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::policy::{Policy, rule_flow};
use crate::reference::{Denial, Flow, Origin, Reference};

/// One end of the flow as the user names it: an endpoint, an address or
/// `host`.
fn resolve(
    policy: &Policy,
    node: &str,
    host: &[IpAddr],
    name: &str,
    v6: Option<bool>,
) -> Result<(IpAddr, Option<String>), String> {
    let pick = |addrs: &[IpAddr]| -> Option<IpAddr> {
        addrs.iter().copied().find(|a| v6.is_none_or(|six| a.is_ipv6() == six))
    };
    if name == "host" {
        let a = pick(host).ok_or_else(|| "the host has no address of that family".to_string())?;
        return Ok((a, None));
    }
    if let Ok(addr) = name.parse::<IpAddr>() {
        let owner = policy.endpoints.iter().find(|e| e.addresses.contains(&addr));
        let local = owner.filter(|e| e.is_local(node)).map(|e| e.name.clone());
        return Ok((addr, local));
    }
    let ep = policy
        .endpoints
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| format!("\"{name}\" is neither an endpoint, an address nor host"))?;
    let addr = pick(&ep.addresses).ok_or_else(|| format!("endpoint {name} has no address of that family"))?;
    Ok((addr, ep.is_local(node).then(|| ep.name.clone())))
}

/// `PROTO[/PORT|/TYPE[/CODE]]`.
fn parse_spec(spec: &str) -> Result<(u8, u16, u8, u8), String> {
    let mut parts = spec.split('/');
    let proto = parts.next().unwrap_or_default();
    let proto: u8 = match proto {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" => 58,
        "sctp" => 132,
        n => n.parse().map_err(|_| format!("\"{n}\" is not a protocol"))?,
    };
    let a = parts
        .next()
        .map(|p| p.parse::<u16>().map_err(|_| format!("\"{p}\" is not a number")))
        .transpose()?;
    let b = parts
        .next()
        .map(|p| p.parse::<u8>().map_err(|_| format!("\"{p}\" is not an ICMP code")))
        .transpose()?;
    match proto {
        1 | 58 => {
            let ty = a.unwrap_or(if proto == 1 { 8 } else { 128 });
            let ty = u8::try_from(ty).map_err(|_| format!("{ty} is not an ICMP type"))?;
            Ok((proto, 0, ty, b.unwrap_or(0)))
        }
        _ => Ok((proto, a.unwrap_or(0), 0, 0)),
    }
}

pub fn explain(
    policy: &Policy,
    node: &str,
    host: &[IpAddr],
    from: &str,
    to: &str,
    spec: &str,
) -> Result<Value, String> {
    let (proto, port, icmp_type, icmp_code) = parse_spec(spec)?;
    let family = [from, to]
        .iter()
        .find_map(|s| s.parse::<IpAddr>().ok())
        .map(|a| a.is_ipv6())
        .or(match proto {
            58 => Some(true),
            1 => Some(false),
            _ => None,
        });
    let (src, sender) = resolve(policy, node, host, from, family)?;
    let (dst, _) = resolve(policy, node, host, to, Some(src.is_ipv6()))?;
    let origin = match &sender {
        Some(name) => Origin::Endpoint(name.clone()),
        None => Origin::Elsewhere,
    };
    let flow = Flow {
        src,
        dst,
        proto,
        port,
        icmp_type,
        icmp_code,
    };
    let reference = Reference {
        policy,
        node,
        host_addresses: host,
    };
    let v = reference.judge(&origin, &flow);
    let describe = |refs: &[crate::compile::RuleRef]| -> Vec<Value> {
        refs.iter()
            .map(|r| {
                let g = &policy.groups[&r.group];
                let (rule, key) = match r.direction {
                    crate::policy::Direction::Ingress => (&g.ingress[r.index], "from"),
                    crate::policy::Direction::Egress => (&g.egress[r.index], "to"),
                };
                json!({"group": r.group, "direction": r.direction.as_str(), "index": r.index, "rule": rule_flow(rule, key)})
            })
            .collect()
    };
    let denied_by = v.denied.as_ref().map(|d| match d {
        Denial::SpoofedSource => "anti-spoofing: the source is not one of the sending endpoint's addresses",
        Denial::LocalAddressWrongPath => {
            "anti-spoofing: a local endpoint's address arriving other than through its interface"
        }
        Denial::Egress => "the sender's egress rules",
        Denial::Ingress => "the receiver's ingress rules",
    });
    Ok(json!({
        "allowed": v.allowed(),
        "enforced": v.sender.is_some() || v.receiver.is_some(),
        "src": src, "dst": dst, "proto": proto, "port": port, "icmp_type": icmp_type, "icmp_code": icmp_code,
        "sender": v.sender, "receiver": v.receiver,
        "egress_rules": describe(&v.egress),
        "ingress_rules": describe(&v.ingress),
        "denied_by": denied_by,
    }))
}

/// Human-readable lines for an explanation.
pub fn print(v: &Value) {
    let end = |addr: &Value, ep: &Value| match ep.as_str() {
        Some(name) => format!("{name} ({})", addr.as_str().unwrap_or("")),
        None => addr.as_str().unwrap_or("").to_string(),
    };
    let what = match v["proto"].as_u64() {
        Some(1) | Some(58) => format!("icmp type {} code {}", v["icmp_type"], v["icmp_code"]),
        Some(6) => format!("tcp/{}", v["port"]),
        Some(17) => format!("udp/{}", v["port"]),
        Some(132) => format!("sctp/{}", v["port"]),
        p => format!("protocol {}", p.unwrap_or(0)),
    };
    let verdict = if v["allowed"] == Value::Bool(true) {
        "allowed"
    } else {
        "denied"
    };
    println!(
        "{verdict}: {} -> {} {what}",
        end(&v["src"], &v["sender"]),
        end(&v["dst"], &v["receiver"])
    );
    if v["enforced"] == Value::Bool(false) {
        println!("  neither end is a local endpoint: hostwall does not judge this flow here");
    }
    for (key, label) in [
        ("egress_rules", "sender's egress"),
        ("ingress_rules", "receiver's ingress"),
    ] {
        for r in v[key].as_array().into_iter().flatten() {
            println!(
                "  {label}: {}/{}[{}] {}",
                r["group"].as_str().unwrap_or(""),
                r["direction"].as_str().unwrap_or(""),
                r["index"],
                r["rule"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(by) = v["denied_by"].as_str() {
        println!("  denied by {by}");
    }
}
