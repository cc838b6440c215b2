//! The benchmark's policy, written three ways: a hostwall control file, an
//! iptables-restore file and an nft script, all allowing the same pairs.
//!
//! Three local endpoints, each behind a routed veth pair (see
//! `topology.rs`): `client` may open any TCP connection to `server`;
//! `server` accepts TCP 5201 (iperf3) and 7000 (the load tool) from
//! `client`, plus one filler rule per (peer address, port) pair that no
//! benchmark traffic uses; `flood` may send nothing. A policy of N rules
//! has N - 3 fillers. The TEST_RUN policy adds ICMP timestamp rules (see
//! `progrun.rs`), IPv6 fillers and 1,000 remote endpoints; the comparison
//! with an earlier eBPF object (`compare.rs`) adds to it UDP and echo rules
//! from `client` and from the remote endpoints.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// TCP port of iperf3 and of the load tool's server.
pub const IPERF_PORT: u16 = 5201;
pub const LOAD_PORT: u16 = 7000;
/// A port `server` listens on that no rule allows.
pub const DENIED_PORT: u16 = 7001;
/// UDP port the flood is aimed at (nothing allows it).
pub const FLOOD_PORT: u16 = 9;
/// UDP port `server` accepts from `client` and the remote endpoints in the
/// TEST_RUN policy.
pub const UDP_PORT: u16 = 7002;

/// A routed endpoint: container `.2` and host `.1` of `10.78.K.0/24` and
/// `fd00:78:K::/64`.
#[derive(Clone, Copy, Debug)]
pub struct Ep {
    pub name: &'static str,
    pub iface: &'static str,
    pub k: u8,
}

impl Ep {
    pub fn v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, self.k, 2)
    }
    pub fn gw4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, self.k, 1)
    }
    pub fn v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x78, self.k as u16, 0, 0, 0, 0, 2)
    }
    pub fn gw6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x78, self.k as u16, 0, 0, 0, 0, 1)
    }
}

pub const CLIENT: Ep = Ep {
    name: "client",
    iface: "hb-cli",
    k: 1,
};
pub const SERVER: Ep = Ep {
    name: "server",
    iface: "hb-srv",
    k: 2,
};
pub const FLOOD: Ep = Ep {
    name: "flood",
    iface: "hb-fld",
    k: 3,
};
pub const ENDPOINTS: [Ep; 3] = [CLIENT, SERVER, FLOOD];

/// The addresses of remote endpoint `i` (group `fleet`, on another node).
pub fn remote_endpoint(i: u32) -> (Ipv4Addr, Ipv6Addr) {
    (
        Ipv4Addr::from(0x0ac9_0000u32 + i),
        Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, (i + 1) as u16),
    )
}

/// Rules every policy has besides the fillers.
pub const BASE_RULES: usize = 3;

/// Which addresses the filler rules name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fillers {
    /// IPv4 only: every filler is a rule iptables' IPv4 chain holds, so the
    /// chain the benchmark traffic meets has all N rules.
    V4,
    /// Alternating IPv4 and IPv6 (the TEST_RUN policy).
    Mixed,
}

/// The `i`-th filler: a peer address that sends nothing, and a port.
fn filler(i: usize, fillers: Fillers) -> (String, u16) {
    let port = 20_000 + (i % 20_000) as u16;
    let v6 = fillers == Fillers::Mixed && i % 2 == 1;
    let n = (i / if fillers == Fillers::Mixed { 2 } else { 1 }) as u32;
    if v6 {
        (format!("fd00:200::{:x}:{:x}/128", n >> 16, n & 0xffff), port)
    } else {
        let a = Ipv4Addr::from(0x0ac8_0000u32 + n);
        (format!("{a}/32"), port)
    }
}

#[derive(Clone, Debug)]
pub struct Spec {
    /// Total rules.
    pub rules: usize,
    pub fillers: Fillers,
    /// Remote endpoints (in group `fleet`, on another node).
    pub remote_endpoints: usize,
    /// Extra rules and settings of the TEST_RUN policy.
    pub test_run: bool,
    /// With `test_run`: the comparison's UDP and echo rules.
    pub compare: bool,
    /// `server` also accepts any TCP connection from this CIDR (the hook
    /// benchmark's remote host).
    pub allow_from: Option<String>,
}

impl Spec {
    pub fn traffic(rules: usize) -> Spec {
        Spec {
            rules,
            fillers: Fillers::V4,
            remote_endpoints: 0,
            test_run: false,
            compare: false,
            allow_from: None,
        }
    }

    fn base_rules(&self) -> usize {
        let compare = match (self.test_run && self.compare, self.remote_endpoints > 0) {
            (false, _) => 0,
            (true, false) => 6,
            (true, true) => 10,
        };
        BASE_RULES + if self.test_run { 4 } else { 0 } + compare + usize::from(self.allow_from.is_some())
    }

    pub fn filler_count(&self) -> usize {
        self.rules.saturating_sub(self.base_rules())
    }
}

/// The hostwall control file.
pub fn hostwall_yaml(spec: &Spec) -> String {
    let mut y = String::from("version: 1\ngroups:\n  client:\n    egress:\n");
    y.push_str("      - {proto: tcp, to: [{group: server}]}\n");
    if spec.test_run {
        y.push_str("      - {proto: icmp, icmp: {type: 13}, to: [{group: server}]}\n");
        y.push_str("      - {proto: icmpv6, icmp: {type: 139}, to: [{group: server}]}\n");
    }
    if spec.test_run && spec.compare {
        y.push_str("      - {proto: udp, to: [{group: server}]}\n");
        y.push_str("      - {proto: icmp, icmp: {type: 8}, to: [{group: server}]}\n");
        y.push_str("      - {proto: icmpv6, icmp: {type: 128}, to: [{group: server}]}\n");
    }
    y.push_str("  server:\n    ingress:\n");
    let _ = writeln!(
        y,
        "      - {{proto: tcp, ports: {IPERF_PORT}, from: [{{group: client}}]}}"
    );
    let _ = writeln!(
        y,
        "      - {{proto: tcp, ports: {LOAD_PORT}, from: [{{group: client}}]}}"
    );
    if spec.test_run {
        y.push_str("      - {proto: icmp, icmp: {type: 13}, from: [{group: client}]}\n");
        y.push_str("      - {proto: icmpv6, icmp: {type: 139}, from: [{group: client}]}\n");
    }
    if spec.test_run && spec.compare {
        let _ = writeln!(
            y,
            "      - {{proto: udp, ports: {UDP_PORT}, from: [{{group: client}}]}}"
        );
        y.push_str("      - {proto: icmp, icmp: {type: 8}, from: [{group: client}]}\n");
        y.push_str("      - {proto: icmpv6, icmp: {type: 128}, from: [{group: client}]}\n");
        if spec.remote_endpoints > 0 {
            for rule in [
                format!("{{proto: tcp, ports: {LOAD_PORT}"),
                format!("{{proto: udp, ports: {UDP_PORT}"),
                "{proto: icmp, icmp: {type: 8}".into(),
                "{proto: icmpv6, icmp: {type: 128}".into(),
            ] {
                let _ = writeln!(y, "      - {rule}, from: [{{group: fleet}}]}}");
            }
        }
    }
    if let Some(cidr) = &spec.allow_from {
        let _ = writeln!(y, "      - {{proto: tcp, from: [{{cidr: \"{cidr}\"}}]}}");
    }
    for i in 0..spec.filler_count() {
        let (peer, port) = filler(i, spec.fillers);
        let _ = writeln!(y, "      - {{proto: tcp, ports: {port}, from: [{{cidr: \"{peer}\"}}]}}");
    }
    y.push_str("  flood: {}\n");
    if spec.remote_endpoints > 0 {
        y.push_str("  fleet: {}\n");
    }
    y.push_str("endpoints:\n");
    for ep in ENDPOINTS {
        let _ = writeln!(
            y,
            "  - {{name: {}, interface: {}, addresses: [\"{}\", \"{}\"], groups: [{}]}}",
            ep.name,
            ep.iface,
            ep.v4(),
            ep.v6(),
            ep.name
        );
    }
    for i in 0..spec.remote_endpoints as u32 {
        let (a4, a6) = remote_endpoint(i);
        let _ = writeln!(
            y,
            "  - {{name: fleet-{i}, node: elsewhere, addresses: [\"{a4}\", \"{a6}\"], groups: [fleet]}}"
        );
    }
    // The connection-rate test opens more flows than the default share of
    // one endpoint; the benchmark measures rules, not that cap.
    y.push_str("settings:\n  conntrack: {max_per_endpoint: 131072}\n");
    y
}

/// The iptables-restore file an operator would write: established and
/// related first, then one rule per allowed peer and port, in the order of
/// the control file (the benchmark's own pairs come first there too, but
/// here they are appended last, as the newest rules of a chain are).
pub fn iptables_restore(spec: &Spec) -> String {
    let (c, s) = (CLIENT.v4(), SERVER.v4());
    let mut r = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    r.push_str("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    for i in 0..spec.filler_count() {
        let (peer, port) = filler(i, Fillers::V4);
        let _ = writeln!(
            r,
            "-A FORWARD -s {peer} -d {s}/32 -p tcp -m tcp --dport {port} -j ACCEPT"
        );
    }
    for port in [IPERF_PORT, LOAD_PORT] {
        let _ = writeln!(
            r,
            "-A FORWARD -s {c}/32 -d {s}/32 -p tcp -m tcp --dport {port} -j ACCEPT"
        );
    }
    r.push_str("COMMIT\n");
    r
}

/// One iptables rule that is not in the policy (the one-rule change).
pub fn iptables_extra_rule() -> String {
    format!(
        "FORWARD -s 10.202.0.1/32 -d {}/32 -p tcp -m tcp --dport 40000 -j ACCEPT",
        SERVER.v4()
    )
}

pub const NFT_TABLE: &str = "inet hwbench";

/// The nft script written the best way nftables allows: a verdict map on
/// the connection state, then one lookup in a set of (source, destination,
/// protocol, port) tuples, whatever the number of rules. It replaces the
/// table atomically.
pub fn nft_script(spec: &Spec) -> String {
    let (c, s) = (CLIENT.v4(), SERVER.v4());
    let mut elements: Vec<String> = (0..spec.filler_count())
        .map(|i| {
            let (peer, port) = filler(i, Fillers::V4);
            format!("{} . {s} . tcp . {port}", peer.trim_end_matches("/32"))
        })
        .collect();
    for port in [IPERF_PORT, LOAD_PORT] {
        elements.push(format!("{c} . {s} . tcp . {port}"));
    }
    let mut n = format!("table {NFT_TABLE}\ndelete table {NFT_TABLE}\ntable {NFT_TABLE} {{\n");
    n.push_str("  set allow4 {\n    type ipv4_addr . ipv4_addr . inet_proto . inet_service\n");
    n.push_str("    size 262144\n    elements = {\n");
    for (i, e) in elements.iter().enumerate() {
        let sep = if i + 1 == elements.len() { "" } else { "," };
        let _ = writeln!(n, "      {e}{sep}");
    }
    n.push_str("    }\n  }\n");
    n.push_str("  chain forward {\n    type filter hook forward priority filter; policy drop;\n");
    n.push_str("    ct state vmap { established : accept, related : accept }\n");
    n.push_str("    ip saddr . ip daddr . meta l4proto . th dport @allow4 accept\n");
    n.push_str("    counter drop\n  }\n}\n");
    n
}

/// One set element that is not in the policy (the one-rule change).
pub fn nft_extra_element() -> String {
    format!("{{ 10.202.0.1 . {} . tcp . 40000 }}", SERVER.v4())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_file_is_valid_and_has_the_rule_count() {
        for spec in [
            Spec::traffic(10),
            Spec::traffic(1000),
            Spec {
                rules: 100,
                fillers: Fillers::Mixed,
                remote_endpoints: 20,
                test_run: true,
                compare: false,
                allow_from: None,
            },
            Spec {
                rules: 100,
                fillers: Fillers::Mixed,
                remote_endpoints: 20,
                test_run: true,
                compare: true,
                allow_from: None,
            },
        ] {
            let p = hostwall_tests::hostwall::policy::parse_str(&hostwall_yaml(&spec), "bench.yaml")
                .expect("the generated policy is valid");
            let rules: usize = p.groups.values().map(|g| g.ingress.len() + g.egress.len()).sum();
            assert_eq!(rules, spec.rules);
            let ipt = iptables_restore(&spec);
            assert_eq!(
                ipt.lines().filter(|l| l.starts_with("-A")).count(),
                spec.filler_count() + 3
            );
        }
    }
}
