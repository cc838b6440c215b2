//! Writing a policy back as a control file. The output parses back to an
//! equal `Policy`; comments of the original file are not kept.

use std::fmt::Write as _;
use std::time::Duration;

use super::model::*;

/// The policy as a control file, in the documented format.
pub fn to_yaml(policy: &Policy) -> String {
    let mut out = String::from("version: 1\n");
    if !policy.prefix_lists.is_empty() {
        out.push_str("prefix_lists:\n");
        for (name, nets) in &policy.prefix_lists {
            let nets: Vec<String> = nets.iter().map(|n| quote(&n.to_string())).collect();
            let _ = writeln!(out, "  {name}: [{}]", nets.join(", "));
        }
    }
    if !policy.groups.is_empty() {
        out.push_str("groups:\n");
        for (name, group) in &policy.groups {
            let _ = writeln!(out, "  {name}:");
            if let Some(d) = &group.description {
                let _ = writeln!(out, "    description: {}", quote(d));
            }
            for (key, rules, peers_key) in [("ingress", &group.ingress, "from"), ("egress", &group.egress, "to")] {
                if rules.is_empty() {
                    continue;
                }
                let _ = writeln!(out, "    {key}:");
                for rule in rules {
                    let _ = writeln!(out, "      - {}", rule_flow(rule, peers_key));
                }
            }
        }
    }
    if !policy.endpoints.is_empty() {
        out.push_str("endpoints:\n");
        for ep in &policy.endpoints {
            let _ = writeln!(out, "  - name: {}", quote(&ep.name));
            if let Some(node) = &ep.node {
                let _ = writeln!(out, "    node: {}", quote(node));
            }
            if let Some(iface) = &ep.interface {
                let _ = writeln!(out, "    interface: {}", quote(iface));
            }
            if let Some(mac) = &ep.mac {
                let _ = writeln!(out, "    mac: {}", quote(&format_mac(mac)));
            }
            let addrs: Vec<String> = ep.addresses.iter().map(|a| quote(&a.to_string())).collect();
            let _ = writeln!(out, "    addresses: [{}]", addrs.join(", "));
            let groups: Vec<String> = ep.groups.iter().map(|g| quote(g)).collect();
            let _ = writeln!(out, "    groups: [{}]", groups.join(", "));
        }
    }
    if policy.settings != Settings::default() {
        let ct = &policy.settings.conntrack;
        out.push_str("settings:\n");
        if policy.settings.on_policy_change == OnPolicyChange::Revalidate {
            out.push_str("  on_policy_change: revalidate\n");
        }
        if let Some(q) = &policy.settings.quarantine {
            let _ = writeln!(out, "  quarantine: {{interfaces: {}}}", quote(&q.interfaces));
        }
        let midstream = match ct.midstream {
            Midstream::Allow => "midstream: allow".to_string(),
            Midstream::Deny => "midstream: deny".to_string(),
            Midstream::Startup(w) => format!("midstream: startup, midstream_window: {}", duration(w)),
        };
        let _ = writeln!(
            out,
            "  conntrack: {{tcp_established: {}, tcp_other: {}, udp: {}, udp_stream: {}, icmp: {}, other: {}, max_per_endpoint: {}, max_inbound_per_endpoint: {}, {midstream}}}",
            duration(ct.tcp_established),
            duration(ct.tcp_other),
            duration(ct.udp),
            duration(ct.udp_stream),
            duration(ct.icmp),
            duration(ct.other),
            ct.max_per_endpoint,
            ct.max_inbound_per_endpoint,
        );
    }
    out
}

/// One rule as a YAML flow mapping.
pub fn rule_flow(rule: &Rule, peers_key: &str) -> String {
    let mut parts = vec![format!("proto: {}", rule.proto.name())];
    if let Some(p) = rule.ports {
        if p.first == p.last {
            parts.push(format!("ports: {}", p.first));
        } else {
            parts.push(format!("ports: \"{}-{}\"", p.first, p.last));
        }
    }
    if let Some(icmp) = rule.icmp {
        match icmp.code {
            Some(code) => parts.push(format!("icmp: {{type: {}, code: {code}}}", icmp.ty)),
            None => parts.push(format!("icmp: {{type: {}}}", icmp.ty)),
        }
    }
    let peers: Vec<String> = rule.peers.iter().map(peer_flow).collect();
    parts.push(format!("{peers_key}: [{}]", peers.join(", ")));
    if let Some(d) = &rule.description {
        parts.push(format!("description: {}", quote(d)));
    }
    format!("{{{}}}", parts.join(", "))
}

pub fn peer_flow(peer: &Peer) -> String {
    match peer {
        Peer::Group(g) => format!("{{group: {}}}", quote(g)),
        Peer::Cidr(c) => format!("{{cidr: {}}}", quote(&c.to_string())),
        Peer::PrefixList(p) => format!("{{prefix_list: {}}}", quote(p)),
        Peer::Host => "host".into(),
    }
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// A double-quoted YAML scalar. Characters YAML does not allow raw
/// (controls, DEL, C1 controls, a BOM, non-characters) and the ones it
/// reads as line breaks (NEL, LS, PS) are escaped, so that the string
/// reads back unchanged.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}') => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Quarantine;
    use crate::policy::parse_str;

    const FULL: &str = r#"
version: 1
prefix_lists:
  office: ["192.0.2.0/24", "2001:db8::/32"]
groups:
  web:
    description: "public: web \"tier\""
    ingress:
      - {proto: tcp, ports: 443, from: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}], description: https}
      - {proto: icmp, icmp: {type: 3, code: 4}, from: [host]}
      - {proto: icmpv6, from: [{prefix_list: office}]}
    egress:
      - {proto: tcp, ports: "8000-8100", to: [{group: api}]}
      - {proto: all, to: [host]}
      - {proto: 47, to: [{cidr: 10.0.0.0/8}]}
  api: {}
endpoints:
  - {name: web-1, interface: hw-web1, mac: "02:AA:00:00:00:01", addresses: ["10.10.0.11", "fd00:10::11"], groups: [web]}
  - {name: api-1, node: b, interface: hw-api1, addresses: ["10.10.0.21"], groups: [api, web]}
  - {name: bare, addresses: []}
settings:
  conntrack: {udp: 45s, tcp_other: 2m, icmp: 1h, other: 2d, max_per_endpoint: 100}
  on_policy_change: revalidate
  quarantine: {interfaces: "veth*"}
"#;

    #[test]
    fn written_policy_parses_back_equal() {
        let p = parse_str(FULL, "full.yaml").unwrap();
        let text = to_yaml(&p);
        let back = parse_str(&text, "written.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, p, "{text}");
        assert!(text.contains("    mac: \"02:aa:00:00:00:01\"\n"), "{text}");
    }

    #[test]
    fn quarantine_globs_match_interface_names() {
        let q = Quarantine {
            interfaces: "veth*".into(),
        };
        assert!(q.matches("veth0a1b"));
        assert!(q.matches("veth"));
        assert!(!q.matches("eth0"));
        let q = Quarantine {
            interfaces: "c?-*-x".into(),
        };
        assert!(q.matches("c1-abc-x"));
        assert!(!q.matches("c12-abc-x"));
        for (pattern, name, matches) in [
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("?", "", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "abcab", false),
            ("*ab", "aab", true),
            ("*a*a*a", "aaa", true),
            ("*a*a*a", "aa", false),
            ("veth**", "veth1", true),
            ("*?", "", false),
        ] {
            let q = Quarantine {
                interfaces: pattern.into(),
            };
            assert_eq!(q.matches(name), matches, "{pattern:?} against {name:?}");
        }
    }

    /// A pattern of many stars that does not match took exponential time
    /// (and the agent's event loop with it); it is answered at once now. In
    /// a thread, so that a matcher that never returns fails the test.
    #[test]
    fn quarantine_globs_with_many_stars_answer() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let q = Quarantine {
                interfaces: format!("{}x", "*".repeat(40)),
            };
            let star_runs = Quarantine {
                interfaces: "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b".into(),
            };
            let _ = tx.send((q.matches("aaaaaaaaaaaaaaa"), star_runs.matches("aaaaaaaaaaaaaaa")));
        });
        let answered = rx.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(answered, Ok((false, false)));
    }

    /// Found by the policy fuzz target (`fuzz/seeds/policy/escapes.yaml`):
    /// DEL and C1 controls were written raw, which YAML refuses, and NEL
    /// and LS raw, which YAML reads as line breaks.
    #[test]
    fn strings_yaml_cannot_hold_raw_read_back_equal() {
        let p = parse_str(
            "version: 1\ngroups:\n  web:\n    description: \"a\\x7f b\\x9f c\\u0085 d\\u2028 e\\u2029 f\\ufeff g\\x01 h\\t i\\\\ j\\\" k\\u00e9\"\n\
             endpoints:\n  - {name: w, node: \"n\\x7f\", interface: \"hw\\ufeff\", addresses: []}\n\
             settings:\n  quarantine: {interfaces: \"v\\x85*\"}\n",
            "escapes.yaml",
        )
        .unwrap();
        assert_eq!(
            p.groups["web"].description.as_deref(),
            Some("a\u{7f} b\u{9f} c\u{85} d\u{2028} e\u{2029} f\u{feff} g\u{1} h\t i\\ j\" k\u{e9}")
        );
        let text = to_yaml(&p);
        let back = parse_str(&text, "written.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, p, "{text}");
    }

    #[test]
    fn minimal_policy_writes_minimal_file() {
        let p = parse_str("version: 1\n", "min.yaml").unwrap();
        assert_eq!(to_yaml(&p), "version: 1\n");
    }
}
