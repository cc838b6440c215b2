//! `cargo xtask demo`: a demo host with the containers of
//! examples/shop.yaml, the agent enforcing it, and every pair of nodes
//! probed with real traffic. The observed reachability matrix is printed
//! and compared with examples/shop.expected.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, bail};
use hostwall_tests::hostwall::policy;
use hostwall_tests::{
    Agent, Binaries, Check, Container, DropReason, Expect, Host, Node, Probe, Server, Subnet, cleanup, run_checks_with,
};

/// The host namespace is a node like the containers.
const HOST: &str = "host";
/// Probes in flight at once: a dropped probe waits out its whole timeout.
const WORKERS: usize = 32;

/// One line of the expected matrix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    from: String,
    to: String,
    probe: Probe,
}

/// Verdicts for IPv4 and IPv6.
type Verdicts = [Expect; 2];

pub fn run(hostwall_bin: &Path, probe_bin: &Path, repo_root: &Path) -> anyhow::Result<bool> {
    cleanup::cleanup_on_interrupt().context("installing the Ctrl-C handler")?;
    let policy_path = repo_root.join("examples/shop.yaml");
    let expected_path = repo_root.join("examples/shop.expected");
    let policy_text =
        std::fs::read_to_string(&policy_path).with_context(|| format!("reading {}", policy_path.display()))?;
    let policy = policy::load_file(&policy_path)?;
    let expected_text =
        std::fs::read_to_string(&expected_path).with_context(|| format!("reading {}", expected_path.display()))?;
    let (expected, probes) =
        parse_expected(&expected_text).with_context(|| format!("in {}", expected_path.display()))?;

    let endpoints: Vec<(String, String, [IpAddr; 2])> = policy
        .endpoints
        .iter()
        .filter(|e| e.node.is_none())
        .map(|e| {
            let iface = e
                .interface
                .clone()
                .with_context(|| format!("endpoint {} has no interface", e.name))?;
            let v4 = e.addresses.iter().find(|a| a.is_ipv4());
            let v6 = e.addresses.iter().find(|a| a.is_ipv6());
            match (v4, v6) {
                (Some(v4), Some(v6)) => Ok((e.name.clone(), iface, [*v4, *v6])),
                _ => bail!("endpoint {} needs an IPv4 and an IPv6 address", e.name),
            }
        })
        .collect::<anyhow::Result<_>>()?;
    let mut nodes: Vec<String> = endpoints.iter().map(|(n, _, _)| n.clone()).collect();
    nodes.push(HOST.into());
    check_coverage(&expected, &nodes, &probes)?;

    let started = Instant::now();
    println!(
        "building the demo host: a bridge and {} containers ({})",
        endpoints.len(),
        nodes[..nodes.len() - 1].join(", ")
    );
    let bins = Binaries::new(hostwall_bin, probe_bin)?;
    let host = Host::builder(&bins)
        .prefix("hwdemo")
        .bridge(subnet_of(&endpoints)?)
        .build()?;
    let mut containers: Vec<Container> = Vec::new();
    for (name, iface, [v4, v6]) in &endpoints {
        let (IpAddr::V4(v4), IpAddr::V6(v6)) = (*v4, *v6) else {
            unreachable!("picked by family above")
        };
        containers.push(
            host.add_container_with(name, iface, v4, v6)
                .with_context(|| format!("adding {name}"))?,
        );
    }

    // Every node serves every probed port, so that "denied" always means
    // dropped, never "nothing listens".
    let tcp: BTreeSet<u16> = expected
        .keys()
        .filter_map(|k| if let Probe::Tcp(p) = k.probe { Some(p) } else { None })
        .collect();
    let udp: BTreeSet<u16> = expected
        .keys()
        .filter_map(|k| if let Probe::Udp(p) = k.probe { Some(p) } else { None })
        .collect();
    let (tcp, udp): (Vec<u16>, Vec<u16>) = (tcp.into_iter().collect(), udp.into_iter().collect());
    let mut servers: Vec<Server> = Vec::new();
    for c in &containers {
        servers.push(
            c.serve(&tcp, &udp)
                .with_context(|| format!("echo servers in {}", c.name))?,
        );
    }
    servers.push(host.serve(&tcp, &udp).context("echo servers in the host namespace")?);

    println!("starting the agent on {}", policy_path.display());
    let agent = Agent::start(&host, &policy_text)?;

    let mut by_name: BTreeMap<&str, (&dyn Node, [IpAddr; 2])> = BTreeMap::new();
    for c in &containers {
        by_name.insert(c.name.as_str(), (c as &dyn Node, c.addrs()));
    }
    by_name.insert(HOST, (&host as &dyn Node, host.addrs()));
    let mut checks = Vec::new();
    for (key, verdicts) in &expected {
        let (from, _) = by_name[key.from.as_str()];
        let (_, to) = by_name[key.to.as_str()];
        for family in 0..2 {
            checks.push(Check::new(from, key.probe, to[family], verdicts[family]).labelled(&key.to));
        }
    }
    println!("probing {} paths (TCP, UDP and ICMP over IPv4 and IPv6)", checks.len());
    let reports = run_checks_with(&checks, WORKERS);

    // Observed verdicts, and the paths whose probe gave no clear answer.
    let mut observed: BTreeMap<Key, [Option<Expect>; 2]> = BTreeMap::new();
    let mut problems = Vec::new();
    for ((key, _), pair) in expected.iter().zip(reports.chunks(2)) {
        let mut seen = [None; 2];
        for (family, report) in pair.iter().enumerate() {
            seen[family] = report.observed();
            if seen[family].is_none() {
                problems.push(format!(
                    "{} → {} {} {}: {}",
                    key.from,
                    key.to,
                    probe_name(key.probe),
                    FAMILY[family],
                    report.outcome
                ));
            }
        }
        observed.insert(key.clone(), seen);
    }

    print!("\n{}", render(&nodes, &probes, &expected, &observed));
    let stats = agent.stats()?;
    println!(
        "\nagent counters: {} new flows allowed, {} replies passed; dropped: {} egress-denied, {} ingress-denied",
        stats.passed(hostwall_tests::PassReason::NewAllowed),
        stats.passed(hostwall_tests::PassReason::Reply),
        stats.dropped(DropReason::EgressDenied),
        stats.dropped(DropReason::IngressDenied),
    );

    let mut diffs = Vec::new();
    for (key, want) in &expected {
        for family in 0..2 {
            let got = observed[key][family];
            if got != Some(want[family]) {
                let got = got.map_or("no clear answer".to_string(), |g| g.to_string());
                diffs.push(format!(
                    "  {} → {} {} {}: expected {}, observed {got}",
                    key.from,
                    key.to,
                    probe_name(key.probe),
                    FAMILY[family],
                    want[family]
                ));
            }
        }
    }
    for p in &problems {
        println!("probe problem: {p}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    if diffs.is_empty() {
        println!("matrix matches expected ({} paths, {elapsed:.1} s)", checks.len());
        Ok(true)
    } else {
        println!(
            "matrix differs from {} in {} of {} paths:",
            expected_path.display(),
            diffs.len(),
            checks.len()
        );
        println!("{}", diffs.join("\n"));
        Ok(false)
    }
}

const FAMILY: [&str; 2] = ["ipv4", "ipv6"];

/// The bridge subnet: the /24 and the /64 of the endpoints' addresses,
/// which must all share them (the host takes .1 and ::1).
fn subnet_of(endpoints: &[(String, String, [IpAddr; 2])]) -> anyhow::Result<Subnet> {
    let Some((_, _, [IpAddr::V4(v4), IpAddr::V6(v6)])) = endpoints.first() else {
        bail!("the policy has no endpoints")
    };
    let [a, b, c, _] = v4.octets();
    let s = v6.segments();
    let subnet = Subnet::new([a, b, c], &format!("{:x}:{:x}:{:x}:{:x}::", s[0], s[1], s[2], s[3]));
    for (name, _, [v4, v6]) in endpoints {
        let (IpAddr::V4(v4), IpAddr::V6(v6)) = (v4, v6) else {
            unreachable!()
        };
        let same4 = v4.octets()[..3] == [a, b, c];
        let same6 = v6.segments()[..4] == s[..4];
        if !same4 || !same6 || v4.octets()[3] == 1 {
            bail!(
                "endpoint {name}: the demo puts every container on one bridge, {} and {} (.1 is the host); {v4} and {v6} do not fit",
                subnet.v4_cidr(),
                subnet.v6_cidr()
            );
        }
    }
    Ok(subnet)
}

fn parse_probe(s: &str) -> anyhow::Result<Probe> {
    if s == "icmp" {
        return Ok(Probe::Ping);
    }
    let (proto, port) = s
        .split_once('/')
        .with_context(|| format!("{s:?} is not tcp/PORT, udp/PORT or icmp"))?;
    let port: u16 = port.parse().with_context(|| format!("{port:?} is not a port"))?;
    match proto {
        "tcp" => Ok(Probe::Tcp(port)),
        "udp" => Ok(Probe::Udp(port)),
        _ => bail!("{s:?} is not tcp/PORT, udp/PORT or icmp"),
    }
}

fn parse_verdict(s: &str) -> anyhow::Result<Expect> {
    match s {
        "allowed" => Ok(Expect::Allowed),
        "denied" => Ok(Expect::Denied),
        _ => bail!("{s:?} is neither allowed nor denied"),
    }
}

/// `FROM TO PROBE IPV4 IPV6` lines; `#` comments and blank lines skipped.
/// Also returns the probes in the order the file first names them.
fn parse_expected(text: &str) -> anyhow::Result<(BTreeMap<Key, Verdicts>, Vec<Probe>)> {
    let mut out = BTreeMap::new();
    let mut probes = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [from, to, probe, v4, v6] = fields[..] else {
            bail!("line {}: expected FROM TO PROBE IPV4 IPV6, got {line:?}", n + 1)
        };
        let key = Key {
            from: from.into(),
            to: to.into(),
            probe: parse_probe(probe).with_context(|| format!("line {}", n + 1))?,
        };
        let verdicts = [parse_verdict(v4), parse_verdict(v6)];
        let [Ok(v4), Ok(v6)] = verdicts else {
            bail!("line {}: {line:?}: verdicts are allowed or denied", n + 1)
        };
        if !probes.contains(&key.probe) {
            probes.push(key.probe);
        }
        if out.insert(key, [v4, v6]).is_some() {
            bail!("line {}: {from} {to} {probe} is listed twice", n + 1);
        }
    }
    Ok((out, probes))
}

/// Every ordered pair of distinct nodes with the same probes, and nothing
/// about unknown nodes.
fn check_coverage(expected: &BTreeMap<Key, Verdicts>, nodes: &[String], probes: &[Probe]) -> anyhow::Result<()> {
    for k in expected.keys() {
        for n in [&k.from, &k.to] {
            if !nodes.contains(n) {
                bail!("{n} is neither an endpoint of shop.yaml nor {HOST}");
            }
        }
        if k.from == k.to {
            bail!(
                "{} {} {}: a node probing itself never crosses the firewall",
                k.from,
                k.to,
                k.probe
            );
        }
    }
    for from in nodes {
        for to in nodes.iter().filter(|t| *t != from) {
            for probe in probes {
                let key = Key {
                    from: from.clone(),
                    to: to.clone(),
                    probe: *probe,
                };
                if !expected.contains_key(&key) {
                    bail!("no line for {from} {to} {}", probe_name(*probe));
                }
            }
        }
    }
    Ok(())
}

fn probe_name(p: Probe) -> String {
    match p {
        Probe::Ping => "icmp".into(),
        p => p.to_string(),
    }
}

/// One row per ordered pair, one column per probe. A cell says `allowed`
/// or `denied` when both families agree, `v4 only` / `v6 only` when one
/// gets through, and ends in `!` when it is not what shop.expected says.
fn render(
    nodes: &[String],
    probes: &[Probe],
    expected: &BTreeMap<Key, Verdicts>,
    observed: &BTreeMap<Key, [Option<Expect>; 2]>,
) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:<10}{:<10}", "FROM", "TO");
    for p in probes {
        let _ = write!(out, "{:<12}", probe_name(*p));
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    for from in nodes {
        for to in nodes.iter().filter(|t| *t != from) {
            let _ = write!(out, "{from:<10}{to:<10}");
            for probe in probes {
                let key = Key {
                    from: from.clone(),
                    to: to.clone(),
                    probe: *probe,
                };
                let seen = observed[&key];
                let cell = match seen {
                    [Some(Expect::Allowed), Some(Expect::Allowed)] => "allowed",
                    [Some(Expect::Denied), Some(Expect::Denied)] => "denied",
                    [Some(Expect::Allowed), Some(Expect::Denied)] => "v4 only",
                    [Some(Expect::Denied), Some(Expect::Allowed)] => "v6 only",
                    _ => "error",
                };
                let mark = if seen != expected[&key].map(Some) { "!" } else { "" };
                let _ = write!(out, "{:<12}", format!("{cell}{mark}"));
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str("(each cell: IPv4 and IPv6 together; ! marks a cell that differs from shop.expected)\n");
    out
}
