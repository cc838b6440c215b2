//! New connections per second under a fleet policy (the mix of
//! `hostwall::compile::synthetic::fleet`, 10% broad peers) for no filter,
//! hostwall, iptables and nftables. The benchmark's client and server join
//! the fleet policy with a group each; the rule that lets client open
//! connections to the server's load port is the policy's last. The
//! baselines are written as an operator would for the groups with members
//! on this host: iptables with one ipset per group, prefix list and the
//! host's addresses and one rule per policy rule and peer; nftables with
//! named sets and one rule per policy rule and peer. Both check the
//! sender's egress rules, then the receiver's ingress rules, as security
//! groups do, after conntrack lets established flows through. IPv4 only
//! (the connections are IPv4): rules for IPv6 peers are left out of the
//! baselines.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::Context as _;
use hostwall::compile::synthetic::{self, Fleet};
use hostwall::policy::{Endpoint, Group, Peer, Policy, PortRange, Proto, Rule, to_yaml};
use hostwall_tests::{Agent, AgentOptions};

use super::policy::{DENIED_PORT, ENDPOINTS, LOAD_PORT, SERVER};
use super::topology::Testbed;
use super::traffic::{VARIANTS, Variant, num};
use super::{Plan, Tools, in_netns, output};

/// One variant's connection rate.
#[derive(Clone, Debug)]
pub struct Rate {
    pub variant: Variant,
    /// `None` when it passed the filter check; else why it was not timed.
    pub broken: Option<String>,
    pub check: String,
    pub crr_per_s: f64,
    /// Rules the variant was given (hostwall: the policy's; the baselines:
    /// their rules after the translation).
    pub rules: usize,
}

pub struct Results {
    pub policy_rules: usize,
    pub rates: Vec<Rate>,
}

const GROUPS: [&str; 3] = ["bench-client", "bench-server", "bench-flood"];

/// The fleet policy with the benchmark's three endpoints in it.
pub fn policy(rules: usize) -> Policy {
    let mut p = synthetic::fleet(&Fleet::mix(rules.saturating_sub(2), 10));
    let load = |peer: &str| Rule {
        proto: Proto::TCP,
        ports: Some(PortRange {
            first: LOAD_PORT,
            last: LOAD_PORT,
        }),
        icmp: None,
        peers: vec![Peer::Group(peer.into())],
        description: None,
    };
    p.groups.insert(
        "bench-client".into(),
        Group {
            egress: vec![load("bench-server")],
            ..Group::default()
        },
    );
    p.groups.insert(
        "bench-server".into(),
        Group {
            ingress: vec![load("bench-client")],
            ..Group::default()
        },
    );
    p.groups.insert("bench-flood".into(), Group::default());
    for (ep, group) in ENDPOINTS.iter().zip(GROUPS) {
        p.endpoints.push(Endpoint {
            name: ep.name.into(),
            node: None,
            interface: Some(ep.iface.into()),
            mac: None,
            addresses: vec![ep.v4().into(), ep.v6().into()],
            groups: vec![group.into()],
        });
    }
    // The connection-rate test opens more flows than one endpoint's
    // default share.
    p.settings.conntrack.max_per_endpoint = 131_072;
    p
}

fn is_local(e: &Endpoint) -> bool {
    e.node.as_deref().is_none_or(|n| n == synthetic::NODE)
}

/// The rules of groups with members on this host, the fleet's first and
/// the benchmark's last: (group, ingress?, rule).
fn local_rules(p: &Policy) -> Vec<(&str, bool, &Rule)> {
    let held: BTreeSet<&str> = p
        .endpoints
        .iter()
        .filter(|e| is_local(e))
        .flat_map(|e| e.groups.iter().map(String::as_str))
        .collect();
    let mut names: Vec<&str> = p
        .groups
        .keys()
        .map(String::as_str)
        .filter(|g| held.contains(g))
        .collect();
    names.sort_by_key(|g| (GROUPS.contains(g), *g));
    let mut out = Vec::new();
    for name in names {
        let g = &p.groups[name];
        out.extend(g.egress.iter().map(|r| (name, false, r)));
        out.extend(g.ingress.iter().map(|r| (name, true, r)));
    }
    out
}

fn host_addresses() -> Vec<IpAddr> {
    ENDPOINTS.iter().map(|e| e.gw4().into()).collect()
}

fn set_name(kind: &str, name: &str) -> String {
    format!("hw_{kind}_{}", name.replace('-', "_"))
}

/// A rule's protocol match.
fn proto_match(r: &Rule, nft: bool) -> String {
    let ports = r.ports.map(|p| {
        if p.first == p.last {
            p.first.to_string()
        } else if nft {
            format!("{}-{}", p.first, p.last)
        } else {
            format!("{}:{}", p.first, p.last)
        }
    });
    match r.proto {
        Proto::All => String::new(),
        Proto::Number(1) => match (&r.icmp, nft) {
            (None, false) => "-p icmp".into(),
            (None, true) => "meta l4proto icmp".into(),
            (Some(m), false) => match m.code {
                Some(c) => format!("-p icmp --icmp-type {}/{c}", m.ty),
                None => format!("-p icmp --icmp-type {}", m.ty),
            },
            (Some(m), true) => match m.code {
                Some(c) => format!("icmp type {} icmp code {c}", m.ty),
                None => format!("icmp type {}", m.ty),
            },
        },
        Proto::Number(n) => {
            let name = match n {
                6 => Some("tcp"),
                17 => Some("udp"),
                132 => Some("sctp"),
                _ => None,
            };
            match (name, ports, nft) {
                (Some(name), Some(p), false) => format!("-p {name} -m {name} --dport {p}"),
                (Some(name), Some(p), true) => format!("{name} dport {p}"),
                (Some(name), None, false) => format!("-p {name}"),
                (Some(name), None, true) => format!("meta l4proto {name}"),
                (None, _, false) => format!("-p {n}"),
                (None, _, true) => format!("meta l4proto {n}"),
            }
        }
    }
}

/// An address set the baselines match on: its name, whether it holds
/// networks, and its IPv4 members.
struct AddrSet {
    name: String,
    nets: bool,
    members: BTreeSet<String>,
}

/// Every group's members, every prefix list, the host's addresses
/// (`hw_host`) and those of the endpoints on this host (`hw_local`).
fn addr_sets(p: &Policy) -> Vec<AddrSet> {
    let v4 = |addrs: &mut dyn Iterator<Item = &IpAddr>| -> BTreeSet<String> {
        addrs.filter(|a| a.is_ipv4()).map(IpAddr::to_string).collect()
    };
    let mut out: Vec<AddrSet> = p
        .groups
        .keys()
        .map(|g| AddrSet {
            name: set_name("g", g),
            nets: false,
            members: v4(&mut p
                .endpoints
                .iter()
                .filter(|e| e.groups.contains(g))
                .flat_map(|e| &e.addresses)),
        })
        .collect();
    out.extend(p.prefix_lists.iter().map(|(name, nets)| {
        AddrSet {
            name: set_name("pl", name),
            nets: true,
            members: nets
                .iter()
                .filter(|n| n.addr().is_ipv4())
                .map(|n| n.to_string())
                .collect(),
        }
    }));
    out.push(AddrSet {
        name: "hw_host".into(),
        nets: false,
        members: v4(&mut host_addresses().iter()),
    });
    out.push(AddrSet {
        name: "hw_local".into(),
        nets: false,
        members: v4(&mut p.endpoints.iter().filter(|e| is_local(e)).flat_map(|e| &e.addresses)),
    });
    out
}

/// The baselines' rules: each rule of `local_rules` once per peer, without
/// what IPv4 packets never meet (ICMPv6 rules, IPv6 CIDRs): (group,
/// ingress?, rule, peer).
fn rule_peers(p: &Policy) -> Vec<(&str, bool, &Rule, &Peer)> {
    local_rules(p)
        .into_iter()
        .filter(|(_, _, r)| r.proto != Proto::ICMPV6)
        .flat_map(|(group, ingress, r)| {
            r.peers
                .iter()
                .filter(|peer| !matches!(peer, Peer::Cidr(n) if !n.addr().is_ipv4()))
                .map(move |peer| (group, ingress, r, peer))
        })
        .collect()
}

/// The ipset restore file, the iptables-restore file and its number of
/// rules from the policy.
pub fn iptables(p: &Policy) -> (String, String, usize) {
    let mut sets = String::new();
    for set in addr_sets(p) {
        let kind = if set.nets { "hash:net" } else { "hash:ip" };
        let _ = writeln!(sets, "create {} {kind} family inet maxelem 1048576", set.name);
        for m in &set.members {
            let _ = writeln!(sets, "add {} {m}", set.name);
        }
    }

    let mut t = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:hw-egress - [0:0]\n:hw-ingress - [0:0]\n",
    );
    t.push_str("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    t.push_str("-A FORWARD -m set ! --match-set hw_local src -j hw-ingress\n");
    t.push_str("-A FORWARD -j hw-egress\n");
    t.push_str("-A hw-ingress -m set ! --match-set hw_local dst -j ACCEPT\n");
    let mut egress = String::new();
    let mut ingress = String::new();
    let rules = rule_peers(p);
    for &(group, is_ingress, r, peer) in &rules {
        let (own, other) = if is_ingress { ("dst", "src") } else { ("src", "dst") };
        let peer = match peer {
            Peer::Group(g) => format!("-m set --match-set {} {other}", set_name("g", g)),
            Peer::PrefixList(l) => format!("-m set --match-set {} {other}", set_name("pl", l)),
            Peer::Host => format!("-m set --match-set hw_host {other}"),
            Peer::Cidr(n) => format!("-{} {n}", if is_ingress { 's' } else { 'd' }),
        };
        let line = format!(
            "-m set --match-set {} {own} {peer} {}",
            set_name("g", group),
            proto_match(r, false)
        );
        if is_ingress {
            let _ = writeln!(ingress, "-A hw-ingress {line} -j ACCEPT");
        } else {
            let _ = writeln!(egress, "-A hw-egress {line} -j hw-ingress");
        }
    }
    t.push_str(&egress);
    t.push_str("-A hw-egress -j DROP\n");
    t.push_str(&ingress);
    t.push_str("-A hw-ingress -j DROP\nCOMMIT\n");
    (sets, t, rules.len())
}

pub const NFT_TABLE: &str = "ip hwfleet";

/// The nft script (it replaces its table atomically) and its number of
/// rules from the policy.
pub fn nft(p: &Policy) -> (String, usize) {
    let mut n = format!("table {NFT_TABLE}\ndelete table {NFT_TABLE}\ntable {NFT_TABLE} {{\n");
    for set in addr_sets(p) {
        let _ = write!(n, "  set {} {{\n    type ipv4_addr\n", set.name);
        if set.nets {
            n.push_str("    flags interval\n    auto-merge\n");
        }
        if !set.members.is_empty() {
            let members: Vec<&str> = set.members.iter().map(String::as_str).collect();
            let _ = writeln!(n, "    elements = {{ {} }}", members.join(", "));
        }
        n.push_str("  }\n");
    }

    let mut egress = String::new();
    let mut ingress = String::new();
    let rules = rule_peers(p);
    for &(group, is_ingress, r, peer) in &rules {
        let (own, other) = if is_ingress {
            ("daddr", "saddr")
        } else {
            ("saddr", "daddr")
        };
        let peer = match peer {
            Peer::Group(g) => format!("ip {other} @{}", set_name("g", g)),
            Peer::PrefixList(l) => format!("ip {other} @{}", set_name("pl", l)),
            Peer::Host => format!("ip {other} @hw_host"),
            Peer::Cidr(c) => format!("ip {other} {c}"),
        };
        let line = format!("ip {own} @{} {peer} {}", set_name("g", group), proto_match(r, true));
        if is_ingress {
            let _ = writeln!(ingress, "    {line} accept");
        } else {
            let _ = writeln!(egress, "    {line} jump ingress");
        }
    }
    n.push_str("  chain ingress {\n    ip daddr != @hw_local accept\n");
    n.push_str(&ingress);
    n.push_str("    drop\n  }\n  chain egress {\n");
    n.push_str(&egress);
    n.push_str("    drop\n  }\n");
    n.push_str("  chain forward {\n    type filter hook forward priority filter; policy drop;\n");
    n.push_str("    ct state vmap { established : accept, related : accept }\n");
    n.push_str("    ip saddr != @hw_local jump ingress\n    jump egress\n  }\n}\n");
    (n, rules.len())
}

/// Installs a variant's filter (removed with the testbed; hostwall's agent
/// with the value returned) and says how many rules it was given.
fn install(bed: &Testbed, p: &Policy, v: Variant) -> anyhow::Result<(Option<Agent>, usize)> {
    let dir = std::env::temp_dir();
    let write = |ext: &str, text: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join(format!("hwbench-fleet-{}.{ext}", std::process::id()));
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let run = |program: &str, args: &[&str], path: &std::path::Path| -> anyhow::Result<()> {
        let r = output(in_netns(bed.host_ns(), program).args(args).arg(path));
        let _ = std::fs::remove_file(path);
        r.map(|_| ()).with_context(|| format!("{program} {}", args.join(" ")))
    };
    Ok(match v {
        Variant::None => (None, 0),
        Variant::Hostwall => {
            let rules = p.groups.values().map(|g| g.ingress.len() + g.egress.len()).sum();
            let opts = AgentOptions {
                node: Some(synthetic::NODE.into()),
                ..AgentOptions::default()
            };
            let agent = Agent::start_with(&bed.host, &to_yaml(p), &opts)?;
            (Some(agent), rules)
        }
        Variant::Iptables => {
            let (sets, rules, n) = iptables(p);
            run("ipset", &["restore", "-file"], &write("ipset", &sets)?)?;
            run("iptables-restore", &[], &write("iptables", &rules)?)?;
            (None, n)
        }
        Variant::Nftables => {
            let (script, n) = nft(p);
            run("nft", &["-f"], &write("nft", &script)?)?;
            (None, n)
        }
    })
}

pub fn run(plan: &Plan, tools: &Tools) -> anyhow::Result<Results> {
    let rules = if plan.quick { 1_000 } else { 10_000 };
    let p = policy(rules);
    let mut rates = Vec::new();
    for v in VARIANTS {
        let r = run_one(plan, tools, &p, v).with_context(|| format!("{} under the fleet policy", v.name()))?;
        println!(
            "bench: fleet new connections, {rules} rules, {}: {}",
            v.name(),
            match &r.broken {
                Some(why) => format!("BROKEN: {why}"),
                None => format!("{:.0}/s ({} rules as given)", r.crr_per_s, r.rules),
            }
        );
        rates.push(r);
    }
    Ok(Results {
        policy_rules: rules,
        rates,
    })
}

fn run_one(plan: &Plan, tools: &Tools, p: &Policy, v: Variant) -> anyhow::Result<Rate> {
    let bed = Testbed::new(tools)?;
    let _load = bed.load_server(SERVER, LOAD_PORT)?;
    let _other = bed.load_server(SERVER, DENIED_PORT)?;
    let (agent, rules) = install(&bed, p, v)?;
    let (check, broken) = super::traffic::prove_it_filters(&bed, v)?;
    let mut rate = Rate {
        variant: v,
        broken,
        check,
        crr_per_s: 0.0,
        rules,
    };
    if rate.broken.is_some() {
        return Ok(rate);
    }
    let secs = plan.secs.to_string();
    let crr = super::traffic::load(&bed, "crr", &["--secs", &secs, "--threads", "2"])?;
    rate.crr_per_s = num(&crr, "rate")?;
    drop(agent);
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every set a baseline's rules name is created, and the rule that
    /// allows the benchmark's connections comes after every fleet rule.
    #[test]
    fn the_baselines_name_only_sets_they_create_and_end_with_the_benchmarks_rules() {
        let p = policy(1_000);
        let (sets, rules, n) = iptables(&p);
        let created: BTreeSet<&str> = sets
            .lines()
            .filter_map(|l| l.strip_prefix("create ")?.split_whitespace().next())
            .collect();
        let words: Vec<&str> = rules.split_whitespace().collect();
        for w in words.windows(2).filter(|w| w[0] == "--match-set") {
            assert!(
                created.contains(w[1]),
                "iptables names the set {} that ipset lacks",
                w[1]
            );
        }
        let lines: Vec<&str> = rules.lines().filter(|l| l.contains("--match-set hw_g_")).collect();
        assert!(n > 500 && lines.len() == n, "{n} rules, {} lines", lines.len());
        for chain in ["-A hw-egress ", "-A hw-ingress "] {
            let chain: Vec<&&str> = lines.iter().filter(|l| l.starts_with(chain)).collect();
            let last = chain.last().expect("rules in both chains");
            assert!(
                last.contains("hw_g_bench_"),
                "the chain's last rule is a fleet rule: {last}"
            );
            assert!(
                chain.len() > 100,
                "few fleet rules before the benchmark's: {}",
                chain.len()
            );
        }

        let (script, count) = nft(&p);
        assert_eq!(count, n, "nftables gets as many rules as iptables");
        let declared: BTreeSet<&str> = script
            .lines()
            .filter_map(|l| l.trim().strip_prefix("set ")?.split_whitespace().next())
            .collect();
        for w in script.split_whitespace().filter_map(|w| w.strip_prefix('@')) {
            assert!(declared.contains(w), "nft names the set {w} it does not declare");
        }
    }
}
