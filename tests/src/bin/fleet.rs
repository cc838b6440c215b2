//! `hostwall-fleet`: the measurements of `cargo xtask bench`'s fleet
//! section, in a release build. For a policy of the fleet mix
//! (`hostwall::compile::synthetic::fleet`) it prints one JSON object: the
//! compiled form's entries and bound, the time to parse and compile the
//! file's text, the time from the text to a flipped slot, and the kernel
//! memory of every map once both policy slots hold the policy.
//!
//! `testrun` prints the cost of new flows through BPF_PROG_TEST_RUN from
//! one of the fleet's local endpoints, under a fleet policy of RULES rules
//! (with 20% broad peers) holding the rules the cases need: IPv4 and IPv6,
//! TCP, UDP and ICMP echo, to a peer a specific rule names and to one only
//! broad rules name, allowed and denied. Whatever RULES, the endpoint's
//! groups each hold a rule and every group of the two peers is named, so
//! that a case makes the same lookups at any size.
//!
//! ```text
//! hostwall-fleet RULES BROAD_PERCENT ROUNDS
//! hostwall-fleet testrun RULES REPEAT ROUNDS
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use hostwall::compile::synthetic::{self, Fleet};
use hostwall::compile::{self, HostView};
use hostwall::daemon::rules::RuleRegistry;
use hostwall::datapath::Datapath;
use hostwall::policy::{IcmpMatch, Peer, PortRange, Proto, Rule, parse_str, to_yaml};
use hostwall_common::MAX_RULES;
use hostwall_tests::frames;
use hostwall_tests::testrun::Fixture;
use ipnet::IpNet;
use std::net::IpAddr;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Resident memory of this process (bytes).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Bytes of this process's heap in use (0 where the allocator does not
/// count them).
fn heap() -> u64 {
    hostwall::memory::allocated().unwrap_or(0)
}

fn run(rules: usize, broad: u64, rounds: usize) -> anyhow::Result<serde_json::Value> {
    let rss_start = rss();
    let heap_start = heap();
    let policy = synthetic::fleet(&Fleet::mix(rules, broad));
    let text = to_yaml(&policy);
    let host: Vec<std::net::IpAddr> = vec!["10.255.0.1".parse().expect("an address")];
    // Interfaces that the compiler takes as present; nothing is attached.
    let ifindex = |name: &str| -> Option<u32> {
        let n: u32 = name.strip_prefix("eni")?.parse().ok()?;
        Some(100 + n)
    };
    let macs = BTreeMap::new();
    let view = HostView {
        node: synthetic::NODE,
        host_addresses: &host,
        ifindex: &ifindex,
        macs: &macs,
    };
    let compile_text = || -> anyhow::Result<compile::Compiled> {
        let p = parse_str(&text, "fleet.yaml")?;
        Ok(compile::compile(&p, &view)?)
    };

    // The policy the agent keeps, parsed before it is compiled, as the
    // agent does.
    let mut held = parse_str(&text, "fleet.yaml")?;
    // And the ids it gave the policy's rules.
    let mut registry = RuleRegistry::new(MAX_RULES - 1);
    let assignment = registry
        .assign(&held)
        .map_err(|e| anyhow::anyhow!("more rules than {} rule slots", e.max))?;
    registry.commit(&assignment);
    drop(assignment);
    let mut compile_ms = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        compile_text()?;
        compile_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }

    let mut dp = Datapath::load_unpinned().context("loading the datapath")?;
    let empty = compile::compile(&parse_str("version: 1\n", "empty.yaml")?, &view)?;
    let mut apply_ms = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        // Both slots empty: each round writes the whole policy, as a first
        // apply does.
        dp.slots.apply(&empty)?;
        dp.slots.apply(&empty)?;
        let t = Instant::now();
        let c = compile_text()?;
        dp.slots.apply(&c)?;
        apply_ms.push(t.elapsed().as_secs_f64() * 1e3);
        // As the agent does after each apply (`Agent::compact`).
        dp.slots.compact();
        last = Some(c);
    }
    let mut c = last.context("no round ran")?;
    dp.slots.apply(&c)?;
    // What the agent holds for a policy: the parsed policy, its compiled
    // form (as the agent keeps it, without the entries the slots hold) and
    // what each slot was written with; not the generator's policy or the
    // file's text.
    let (policy_entries, peer_entries) = (c.policy_entries(), c.peer4.len() + c.peer6.len());
    if dp.slots.active_tables().is_some() {
        c.release_tables();
    }
    let (endpoints, bound) = (policy.endpoints.len(), compile::linear_size(&policy));
    drop(policy);
    drop(text);
    // As the agent does after each apply: what it keeps is packed into
    // fresh allocations and the freed pages go back to the kernel, so that
    // what is resident is what is held.
    hostwall::memory::compact(&mut held);
    hostwall::memory::compact(&mut c);
    hostwall::memory::compact(&mut registry);
    dp.slots.compact();
    hostwall::memory::release_freed();
    let rss_held = rss();
    let heap_held = heap();
    let maps = map_memory();
    Ok(serde_json::json!({
        "rules": rules,
        "broad": broad,
        "endpoints": endpoints,
        "policy_entries": policy_entries,
        "peer_entries": peer_entries,
        "bound": bound,
        "compile_ms": median(compile_ms),
        "apply_ms": median(apply_ms),
        "maps": maps,
        "rss_growth": rss_held.saturating_sub(rss_start),
        "heap_growth": heap_held.saturating_sub(heap_start),
        "policy_rules": held.groups.values().map(|g| g.ingress.len() + g.egress.len()).sum::<usize>(),
    }))
}

/// Kernel memory of the BPF maps this process holds open, by map name
/// (the `memlock` the kernel reports for each map's descriptor; names from
/// bpftool while the maps live).
fn map_memory() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            let name = std::process::Command::new("bpftool")
                .args(["map", "show", "id", &id, "-j"])
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .and_then(|m| m["name"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("map {id}"));
            *out.entry(name).or_default() += memlock.parse::<u64>().unwrap_or(0);
        }
    }
    out
}

/// The rules the TEST_RUN cases need, in the first group of the fleet's
/// first local endpoint: to `specific` by its own addresses, to `broad` by
/// the fleet's ranges only.
fn planted(specific: &[IpAddr], broad_ok: bool) -> Vec<Rule> {
    let cidr = |a: &IpAddr| Peer::Cidr(IpNet::from(*a));
    let ranges: Vec<Peer> = ["10.0.0.0/8", "fd00::/8"]
        .iter()
        .map(|n| Peer::Cidr(n.parse().expect("a CIDR")))
        .collect();
    let mut out = Vec::new();
    for (peers, tcp, udp) in [
        (specific.iter().map(cidr).collect::<Vec<_>>(), 18080, 18053),
        (if broad_ok { ranges } else { Vec::new() }, 28080, 28053),
    ] {
        if peers.is_empty() {
            continue;
        }
        for (proto, port) in [(Proto::TCP, tcp), (Proto::UDP, udp)] {
            out.push(Rule {
                proto,
                ports: Some(PortRange {
                    first: port,
                    last: port,
                }),
                icmp: None,
                peers: peers.clone(),
                description: None,
            });
        }
        for (proto, ty) in [(Proto::ICMP, 8), (Proto::ICMPV6, 128)] {
            out.push(Rule {
                proto,
                ports: None,
                icmp: Some(IcmpMatch { ty, code: None }),
                peers: peers.clone(),
                description: None,
            });
        }
    }
    out
}

fn testrun(rules: usize, repeat: u32, rounds: usize) -> anyhow::Result<serde_json::Value> {
    // 8 rules for the cases, one per group of the endpoint, the rest the
    // fleet's own.
    let mut policy = synthetic::fleet(&Fleet::mix(rules.saturating_sub(8 + 5), 20));
    let me = policy.endpoints[0].clone();
    // A remote endpoint with addresses of both families the specific rules
    // name; another that only the broad ones cover.
    let remote = |from: usize| {
        policy.endpoints[from..]
            .iter()
            .find(|e| e.addresses.len() == 2 && !e.is_local(synthetic::NODE))
            .cloned()
            .expect("a remote endpoint of both families")
    };
    let (specific, broad) = (remote(600), remote(800));
    let group = me.groups[0].clone();
    let mut planted = planted(&specific.addresses, true);
    let g = policy.groups.get_mut(&group).expect("the endpoint's group");
    planted.append(&mut g.egress);
    g.egress = planted;
    // What a new flow's lookups depend on besides the tries' contents: the
    // endpoint's groups that hold rules, and the labels of the other end
    // (its groups that some rule names). One rule in each of the
    // endpoint's groups, on a port no case uses, names every group of both
    // peers, so that these are the same at any size and the comparison is
    // of the number of rules alone.
    let labels: Vec<Peer> = specific
        .groups
        .iter()
        .chain(&broad.groups)
        .map(|g| Peer::Group(g.clone()))
        .collect();
    for name in &me.groups {
        let g = policy.groups.get_mut(name).expect("the endpoint's group");
        g.egress.insert(
            0,
            Rule {
                proto: Proto::TCP,
                ports: Some(PortRange {
                    first: 19999,
                    last: 19999,
                }),
                icmp: None,
                peers: labels.clone(),
                description: None,
            },
        );
    }
    let policy_rules: usize = policy.groups.values().map(|g| g.ingress.len() + g.egress.len()).sum();

    let iface = me.interface.clone().expect("a local endpoint's interface");
    let mut f = Fixture::with_interfaces(&[&iface]);
    let resolve = |name: &str| f.resolve(name);
    let macs = f.macs();
    let view = HostView {
        node: synthetic::NODE,
        host_addresses: &[],
        ifindex: &resolve,
        macs: &macs,
    };
    let mut compiled = compile::compile(&policy, &view)?;
    compiled.settings.max_flows_per_endpoint = u32::MAX;
    // Every run is a new flow: the entry it makes is expired at once.
    compiled.settings.tcp_other_ns = 0;
    compiled.settings.udp_ns = 0;
    compiled.settings.icmp_ns = 0;
    f.apply_compiled(&compiled);

    let mut cases = Vec::new();
    for v6 in [false, true] {
        let pick =
            |e: &hostwall::policy::Endpoint| *e.addresses.iter().find(|a| a.is_ipv6() == v6).expect("both families");
        let src = pick(&me);
        for (peer, dst, tcp, udp) in [
            ("specific", pick(&specific), 18080, 18053),
            ("broad", pick(&broad), 28080, 28053),
        ] {
            for proto in ["tcp", "udp", "icmp"] {
                for allowed in [true, false] {
                    let l4 = match (proto, allowed) {
                        ("tcp", true) => frames::tcp(40_000, tcp, frames::SYN),
                        ("tcp", false) => frames::tcp(40_000, 18999, frames::SYN),
                        ("udp", true) => frames::udp(40_000, udp),
                        ("udp", false) => frames::udp(40_000, 18999),
                        (_, true) => frames::echo_request(v6, 7),
                        // A timestamp request (a node information query):
                        // no rule allows it.
                        (_, false) => frames::icmp(if v6 { 139 } else { 13 }, 0, [0, 7, 0, 1], Vec::new()),
                    };
                    let frame = frames::frame_of(src, dst, &l4);
                    let (passed, _) = f.time_from(&iface, &frame, 1);
                    anyhow::ensure!(
                        passed == allowed,
                        "{proto} to the {peer} peer {dst} should be {}",
                        if allowed { "allowed" } else { "denied" }
                    );
                    let ns = median((0..rounds).map(|_| f.time_from(&iface, &frame, repeat).1).collect());
                    cases.push(serde_json::json!({
                        "family": if v6 { "IPv6" } else { "IPv4" },
                        "proto": proto,
                        "peer": peer,
                        "allowed": allowed,
                        "ns": ns,
                    }));
                }
            }
        }
    }
    Ok(serde_json::json!({
        "rules": policy_rules,
        "groups": me.groups.len(),
        "labels": labels.len(),
        "policy_entries": compiled.policy_entries(),
        "cases": cases,
    }))
}

/// Three numbers, or `None`.
fn three<A: std::str::FromStr, B: std::str::FromStr, C: std::str::FromStr>(args: &[String]) -> Option<(A, B, C)> {
    match args {
        [a, b, c] => Some((a.parse().ok()?, b.parse().ok()?, c.parse().ok()?)),
        _ => None,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("testrun") {
        let Some((rules, repeat, rounds)) = three(&args[1..]) else {
            eprintln!("usage: hostwall-fleet testrun RULES REPEAT ROUNDS");
            return ExitCode::from(2);
        };
        testrun(rules, repeat, rounds)
    } else {
        let Some((rules, broad, rounds)) = three(&args) else {
            eprintln!("usage: hostwall-fleet RULES BROAD_PERCENT ROUNDS");
            return ExitCode::from(2);
        };
        run(rules, broad, rounds)
    };
    match result {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hostwall-fleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}
