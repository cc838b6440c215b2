//! The one validator of the model: what makes a policy valid, whatever it
//! was built from. The control file's parser turns text into the model and
//! ends here; an API change edits the model and is checked here too, so a
//! change can never enforce what a file could not.
//!
//! Errors name the field as the control file would write it, like
//! `groups.web.ingress[0].from[1].group: unknown group "api"`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::model::{Direction, Endpoint, IcmpMatch, Peer, Policy, PortRange, Proto, Rule, format_mac};
use super::parse::PolicyError;

/// A validation failure, before the origin is attached.
pub(super) struct Fault {
    pub path: String,
    pub message: String,
}

pub(super) fn fault(path: impl Into<String>, message: impl Into<String>) -> Fault {
    Fault {
        path: path.into(),
        message: message.into(),
    }
}

/// Turns a message into a fault at `path`.
pub(super) fn at(path: impl Into<String>) -> impl FnOnce(String) -> Fault {
    move |message| fault(path, message)
}

impl Fault {
    pub(super) fn into_error(self, origin: &str) -> PolicyError {
        PolicyError::Invalid {
            origin: origin.to_owned(),
            path: self.path,
            message: self.message,
        }
    }
}

/// Where a rule sits: `groups.<name>.<direction>[<index>]`, written out
/// only for an error.
pub(super) struct RulePath<'a> {
    pub group: &'a str,
    pub dir: Direction,
    pub index: usize,
}

impl std::fmt::Display for RulePath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "groups.{}.{}[{}]", self.group, self.dir.as_str(), self.index)
    }
}

/// Where a peer sits: `<rule>.<key>[<index>]`.
pub(super) struct PeerPath<'a> {
    pub rule: &'a dyn std::fmt::Display,
    pub key: &'a str,
    pub index: usize,
}

impl std::fmt::Display for PeerPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}[{}]", self.rule, self.key, self.index)
    }
}

/// The key a rule of `dir` lists its peers under.
pub(super) fn peer_key(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}

/// Checks `policy` as a whole; `origin` (a file name, "the changed
/// policy") starts the error message.
pub fn check(policy: &Policy, origin: &str) -> Result<(), PolicyError> {
    check_model(policy).map_err(|f| f.into_error(origin))
}

pub(super) fn check_model(policy: &Policy) -> Result<(), Fault> {
    for (name, nets) in &policy.prefix_lists {
        check_name("prefix list", name).map_err(at("prefix_lists"))?;
        for (i, net) in nets.iter().enumerate() {
            if net.trunc() != *net {
                return Err(fault(
                    format!("prefix_lists.{name}[{i}]"),
                    format!("{net} has host bits set; did you mean {}?", net.trunc()),
                ));
            }
        }
    }
    for name in policy.groups.keys() {
        check_name("group", name).map_err(at("groups"))?;
    }
    for (name, group) in &policy.groups {
        for (dir, rules) in [(Direction::Ingress, &group.ingress), (Direction::Egress, &group.egress)] {
            for (index, rule) in rules.iter().enumerate() {
                let path = RulePath {
                    group: name,
                    dir,
                    index,
                };
                check_rule(rule, &path, dir)?;
                check_references(policy, rule, &path, dir)?;
            }
            no_duplicate_rules(name, dir, rules)?;
        }
    }
    check_endpoints(policy)?;
    if let Some(q) = &policy.settings.quarantine
        && (q.interfaces.is_empty() || q.interfaces.len() > 64 || q.interfaces.contains('/'))
    {
        return Err(fault(
            "settings.quarantine.interfaces",
            format!("\"{}\" is not an interface name pattern (like veth*)", q.interfaces),
        ));
    }
    Ok(())
}

/// What one rule must be on its own: ports only where there are ports,
/// ICMP matches only for ICMP, at least one peer, canonical CIDRs.
pub(super) fn check_rule(rule: &Rule, path: &dyn std::fmt::Display, dir: Direction) -> Result<(), Fault> {
    if rule.ports.is_some() && !rule.proto.has_ports() {
        return Err(fault(
            format!("{path}.ports"),
            format!(
                "ports are only allowed with tcp, udp or sctp, not {}",
                proto_label(rule.proto)
            ),
        ));
    }
    if let Some(PortRange { first, last }) = rule.ports
        && first > last
    {
        return Err(fault(
            format!("{path}.ports"),
            format!("{first}-{last} is not a range: the first port is above the last"),
        ));
    }
    if rule.icmp.is_some() && !rule.proto.is_icmp() {
        return Err(fault(
            format!("{path}.icmp"),
            format!(
                "icmp matches are only allowed with icmp or icmpv6, not {}",
                proto_label(rule.proto)
            ),
        ));
    }
    let key = peer_key(dir);
    if rule.peers.is_empty() {
        return Err(fault(
            format!("{path}.{key}"),
            "needs at least one peer: host, {group: NAME}, {cidr: CIDR} or {prefix_list: NAME}",
        ));
    }
    for (index, peer) in rule.peers.iter().enumerate() {
        if let Peer::Cidr(net) = peer
            && net.trunc() != *net
        {
            let at = PeerPath { rule: path, key, index };
            return Err(fault(
                format!("{at}.cidr"),
                format!("{net} has host bits set; did you mean {}?", net.trunc()),
            ));
        }
    }
    Ok(())
}

/// Every group and prefix list a rule names exists.
fn check_references(policy: &Policy, rule: &Rule, path: &dyn std::fmt::Display, dir: Direction) -> Result<(), Fault> {
    let key = peer_key(dir);
    for (index, peer) in rule.peers.iter().enumerate() {
        let at = || PeerPath { rule: path, key, index };
        match peer {
            Peer::Group(name) if !policy.groups.contains_key(name) => {
                return Err(fault(format!("{}.group", at()), format!("unknown group {name:?}")));
            }
            Peer::PrefixList(name) if !policy.prefix_lists.contains_key(name) => {
                return Err(fault(
                    format!("{}.prefix_list", at()),
                    format!("unknown prefix list {name:?}"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuses two rules of one group and direction that match the same
/// traffic the same way (protocol, ports, ICMP match and peers; a
/// description may differ): they would be one rule with one id and one
/// counter, and removing one would leave the other.
fn no_duplicate_rules(group: &str, dir: Direction, rules: &[Rule]) -> Result<(), Fault> {
    /// What makes two rules the same rule.
    type Match<'a> = (Proto, Option<PortRange>, Option<IcmpMatch>, &'a [Peer]);
    let mut seen: HashMap<Match, usize> = HashMap::with_capacity(rules.len());
    for (index, r) in rules.iter().enumerate() {
        match seen.entry((r.proto, r.ports, r.icmp, &r.peers)) {
            std::collections::hash_map::Entry::Occupied(first) => {
                let first = RulePath {
                    group,
                    dir,
                    index: *first.get(),
                };
                return Err(fault(
                    RulePath { group, dir, index }.to_string(),
                    format!("the same rule as {first} (protocol, ports, ICMP match and peers): remove one of them"),
                ));
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(index);
            }
        }
    }
    Ok(())
}

fn check_endpoints(policy: &Policy) -> Result<(), Fault> {
    let endpoints = &policy.endpoints;
    let mut names: HashMap<&str, usize> = HashMap::with_capacity(endpoints.len());
    let mut owners: HashMap<IpAddr, usize> = HashMap::new();
    for (index, ep) in endpoints.iter().enumerate() {
        let path = format!("endpoints[{index}]");
        let earlier = &endpoints[..index];

        check_name("endpoint", &ep.name).map_err(at(format!("{path}.name")))?;
        if let Some(&first) = names.get(ep.name.as_str()) {
            return Err(fault(
                format!("{path}.name"),
                format!("endpoint name {:?} is already used by endpoints[{first}]", ep.name),
            ));
        }
        names.insert(&ep.name, index);

        if ep.node.as_deref() == Some("") {
            return Err(fault(
                format!("{path}.node"),
                "must not be empty; leave node out for an endpoint on whichever host reads the file",
            ));
        }

        if let Some(interface) = &ep.interface {
            check_interface(interface).map_err(at(format!("{path}.interface")))?;
            if let Some(clash) = interface_clash(earlier, ep.node.as_deref(), interface) {
                return Err(fault(format!("{path}.interface"), clash));
            }
        }

        if let Some(mac) = &ep.mac {
            let at_mac = format!("{path}.mac");
            if ep.interface.is_none() {
                return Err(fault(
                    at_mac,
                    format!(
                        "endpoint {:?} has no interface, so it is enforced nowhere and has no use for a mac",
                        ep.name
                    ),
                ));
            }
            if let Err(problem) = check_mac(mac) {
                return Err(fault(
                    at_mac,
                    format!("{} of endpoint {:?} is {problem}", format_mac(mac), ep.name),
                ));
            }
            if let Some(clash) = mac_clash(earlier, ep.node.as_deref(), mac) {
                return Err(fault(
                    at_mac,
                    format!("{} of endpoint {:?} {clash}", format_mac(mac), ep.name),
                ));
            }
        }

        for (i, addr) in ep.addresses.iter().enumerate() {
            let addr_path = || format!("{path}.addresses[{i}]");
            match owners.get(addr) {
                Some(&owner) if owner == index => {
                    return Err(fault(addr_path(), format!("{addr} is listed twice")));
                }
                Some(&owner) => {
                    return Err(fault(
                        addr_path(),
                        format!(
                            "{addr} of endpoint {:?} already belongs to endpoint {:?}; an address may belong to one endpoint only",
                            ep.name, endpoints[owner].name
                        ),
                    ));
                }
                None => {}
            }
            owners.insert(*addr, index);
        }

        if ep.groups.len() > hostwall_common::MAX_GROUPS {
            return Err(fault(
                format!("{path}.groups"),
                format!(
                    "{} groups, more than the {} an endpoint may have",
                    ep.groups.len(),
                    hostwall_common::MAX_GROUPS
                ),
            ));
        }
        let mut seen = HashSet::with_capacity(ep.groups.len());
        for (i, group) in ep.groups.iter().enumerate() {
            let group_path = format!("{path}.groups[{i}]");
            if !policy.groups.contains_key(group) {
                return Err(fault(group_path, format!("unknown group {group:?}")));
            }
            if !seen.insert(group) {
                return Err(fault(group_path, format!("group {group:?} is listed twice")));
            }
        }
    }
    Ok(())
}

/// Two endpoints that may be local on one host can't share a MAC: the
/// datapath tells their frames apart by it.
fn mac_clash(earlier: &[Endpoint], node: Option<&str>, mac: &[u8; 6]) -> Option<String> {
    let other = earlier
        .iter()
        .find(|e| e.mac.as_ref() == Some(mac) && nodes_meet(e.node.as_deref(), node))?;
    let place = match (other.node.as_deref(), node) {
        (None, None) => String::new(),
        (Some(n), _) | (None, Some(n)) => format!(" on node {n:?}"),
    };
    Some(format!(
        "is already the MAC of endpoint {:?}{place}; endpoints on one host need MACs of their own",
        other.name
    ))
}

/// Two endpoints with one interface name can't both be local on a host:
/// the datapath would not know whose traffic it sees. An endpoint without a
/// node is local wherever the file is read, so it clashes with every node.
fn interface_clash(earlier: &[Endpoint], node: Option<&str>, interface: &str) -> Option<String> {
    let other = earlier
        .iter()
        .find(|e| e.interface.as_deref() == Some(interface) && nodes_meet(e.node.as_deref(), node))?;
    let place = match (other.node.as_deref(), node) {
        (None, None) => String::new(),
        (Some(n), _) | (None, Some(n)) => format!(" on node {n:?}"),
    };
    Some(format!(
        "interface {interface:?} is already used by endpoint {:?}{place}",
        other.name
    ))
}

fn nodes_meet(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// Names end up in paths, log lines and map keys, so they stay plain.
fn check_name(kind: &str, name: &str) -> Result<(), String> {
    const MAX: usize = 63;
    if name.is_empty() {
        return Err(format!("{kind} name must not be empty"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{kind} name {name:?} contains {c:?}; use only letters, digits, '_', '.' and '-'"
        ));
    }
    if name.len() > MAX {
        return Err(format!("{kind} name {name:?} is longer than {MAX} characters"));
    }
    Ok(())
}

/// The kernel's own rule for interface names (dev_valid_name), so a name
/// accepted here can exist.
fn check_interface(name: &str) -> Result<(), String> {
    const MAX: usize = 15;
    if name.is_empty() {
        return Err("interface name must not be empty".into());
    }
    if name.len() > MAX {
        return Err(format!(
            "interface name {name:?} is longer than {MAX} bytes, the kernel's limit"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("interface name {name:?} contains {c:?}"));
    }
    Ok(())
}

/// What makes `mac` unfit to be one endpoint's own address, if anything.
fn check_mac(mac: &[u8; 6]) -> Result<(), &'static str> {
    if *mac == [0; 6] {
        return Err("all zeros, not an endpoint's MAC");
    }
    if mac[0] & 1 != 0 {
        return Err("a multicast (or broadcast) address, not an endpoint's MAC");
    }
    Ok(())
}

/// `tcp`, or `protocol 47` for a number without a name.
pub(super) fn proto_label(proto: Proto) -> String {
    match proto {
        Proto::Number(n) if proto.name() == n.to_string() => format!("protocol {n}"),
        _ => proto.name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        EndpointFields, RawPeer, RuleFields, Scalar, endpoint_from_fields, parse_str, rule_from_fields, to_yaml,
    };

    const POLICY: &str = r#"
version: 1
prefix_lists:
  office: ["192.0.2.0/24"]
groups:
  web:
    egress:
      - {proto: tcp, ports: 5432, to: [{group: db}]}
  db:
    ingress:
      - {proto: tcp, ports: 5432, from: [{group: web}, {prefix_list: office}]}
endpoints:
  - {name: web-1, interface: hw-web, addresses: [10.77.0.11], groups: [web]}
  - {name: db-1, interface: hw-db, addresses: [10.77.0.12], groups: [db]}
"#;

    fn policy() -> Policy {
        parse_str(POLICY, "test").expect("the test policy is valid")
    }

    fn refused(p: &Policy) -> String {
        check(p, "the changed policy")
            .expect_err("the edit should be refused")
            .to_string()
    }

    #[test]
    fn what_a_file_may_not_say_an_edit_may_not_either() {
        assert!(check(&policy(), "test").is_ok());

        let mut p = policy();
        p.groups.get_mut("web").unwrap().egress[0]
            .peers
            .push(Peer::Group("api".into()));
        let message = refused(&p);
        assert!(
            message.contains("groups.web.egress[0].to[1].group: unknown group \"api\""),
            "{message}"
        );
        // The same mistake written in a file gets the same words.
        let file = POLICY.replace("to: [{group: db}]", "to: [{group: db}, {group: api}]");
        let err = parse_str(&file, "the changed policy").unwrap_err().to_string();
        assert_eq!(err, message);

        let mut p = policy();
        let rule = p.groups["db"].ingress[0].clone();
        p.groups.get_mut("db").unwrap().ingress.push(rule);
        assert!(refused(&p).contains("the same rule as groups.db.ingress[0]"));

        let mut p = policy();
        p.groups.get_mut("web").unwrap().egress[0].proto = Proto::ICMP;
        assert!(refused(&p).contains("groups.web.egress[0].ports: ports are only allowed with tcp, udp or sctp"));

        let mut p = policy();
        p.groups.get_mut("web").unwrap().egress[0].peers.clear();
        assert!(refused(&p).contains("groups.web.egress[0].to: needs at least one peer"));

        let mut p = policy();
        p.endpoints[1].addresses = p.endpoints[0].addresses.clone();
        assert!(refused(&p).contains("already belongs to endpoint \"web-1\""));

        let mut p = policy();
        p.endpoints[1].name = "web 1".into();
        assert!(refused(&p).contains("endpoints[1].name"));

        let mut p = policy();
        p.endpoints[0].groups.push("nosuch".into());
        assert!(refused(&p).contains("endpoints[0].groups[1]: unknown group \"nosuch\""));

        let mut p = policy();
        p.endpoints[1].interface = Some("hw-web".into());
        assert!(refused(&p).contains("interface \"hw-web\" is already used by endpoint \"web-1\""));

        let mut p = policy();
        p.endpoints[0].mac = Some([1, 0, 0, 0, 0, 1]);
        assert!(refused(&p).contains("a multicast (or broadcast) address"));

        let mut p = policy();
        p.prefix_lists.insert("bad name".into(), vec![]);
        assert!(refused(&p).contains("prefix list name \"bad name\""));
    }

    #[test]
    fn rules_and_endpoints_from_fields_are_what_the_file_would_say() {
        let fields = |proto: Scalar, ports: Option<Scalar>, peer: RawPeer| RuleFields {
            proto,
            ports,
            icmp_type: None,
            icmp_code: None,
            peers: vec![peer],
            description: Some("a \"quoted\" description: with {braces}".into()),
        };
        let mut p = policy();
        for (dir, f) in [
            (
                Direction::Egress,
                fields(Scalar::Str("udp".into()), Some(Scalar::Int(53)), RawPeer::Host),
            ),
            (
                Direction::Egress,
                fields(
                    Scalar::Int(6),
                    Some(Scalar::Str("8000-8100".into())),
                    RawPeer::Cidr("10.0.0.0/8".into()),
                ),
            ),
            (
                Direction::Ingress,
                fields(Scalar::Str("sctp".into()), None, RawPeer::PrefixList("office".into())),
            ),
        ] {
            let rule = rule_from_fields(f, dir).expect("a valid rule");
            let g = p.groups.get_mut("web").unwrap();
            match dir {
                Direction::Ingress => g.ingress.push(rule),
                Direction::Egress => g.egress.push(rule),
            }
        }
        let endpoint = endpoint_from_fields(EndpointFields {
            name: "web-2".into(),
            node: None,
            interface: Some("hw-web2".into()),
            mac: Some("02:AA:00:00:00:02".into()),
            addresses: vec!["10.77.0.13".into(), "fd00:77::13".into()],
            groups: vec!["web".into(), "db".into()],
        })
        .expect("a valid endpoint");
        p.endpoints.push(endpoint);
        check(&p, "the changed policy").expect("the edited policy is valid");
        // Written back and read again, it is the same policy.
        assert_eq!(parse_str(&to_yaml(&p), "written back").expect("re-reading"), p);

        let bad = rule_from_fields(
            RuleFields {
                proto: Scalar::Str("tcp".into()),
                ports: Some(Scalar::Int(70_000)),
                icmp_type: None,
                icmp_code: None,
                peers: vec![RawPeer::Host],
                description: None,
            },
            Direction::Egress,
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("rule.ports") && bad.contains("70000"), "{bad}");
        let bad = endpoint_from_fields(EndpointFields {
            name: "x".into(),
            node: None,
            interface: Some("hw-x".into()),
            mac: None,
            addresses: vec!["10.77.0.300".into()],
            groups: vec![],
        })
        .unwrap_err()
        .to_string();
        assert!(bad.contains("endpoint.addresses[0]"), "{bad}");
    }
}
