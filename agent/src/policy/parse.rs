//! Reading the control file: the text (YAML, or JSON, which is YAML) becomes
//! raw structs that mirror it, and validation turns those into the model.
//!
//! Errors name the field they are about, like
//! `groups.web.ingress[0].ports: 70000 is not a port`, so a person can find
//! the line without a schema at hand.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_yaml_ng::Value;

use super::check::{Fault, PeerPath, RulePath, at, check_model, check_rule, fault, proto_label};
use super::model::{
    ConntrackTimeouts, Direction, Endpoint, Group, IcmpMatch, Midstream, OnPolicyChange, Peer, Policy, PortRange,
    Proto, Quarantine, Rule, Settings,
};

/// Why a control file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read; the reason is the source.
    #[error("{}: cannot read the policy file", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not one YAML document; `message` gives line and column
    /// where the parser has them.
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    /// Well-formed YAML that breaks the file format. `path` names the field,
    /// like `groups.web.ingress[0].ports`; it is empty when the message is
    /// about the document as a whole.
    #[error("{origin}: {}{message}", path_prefix(.path))]
    Invalid {
        origin: String,
        path: String,
        message: String,
    },
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

impl PolicyError {
    /// The field the error is about, like `endpoints[1].groups[0]`; `None`
    /// for I/O and syntax errors and for errors about the whole document.
    pub fn field_path(&self) -> Option<&str> {
        match self {
            PolicyError::Invalid { path, .. } if !path.is_empty() => Some(path),
            _ => None,
        }
    }
}

/// Reads and validates the control file at `path`; errors name the file as
/// it was given.
pub fn load_file(path: &Path) -> Result<Policy, PolicyError> {
    let bytes = std::fs::read(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_bytes(&bytes, &path.display().to_string())
}

/// Parses and validates a control file's bytes, which must be UTF-8 text;
/// `origin` starts every error message.
pub fn parse_bytes(bytes: &[u8], origin: &str) -> Result<Policy, PolicyError> {
    let text = std::str::from_utf8(bytes).map_err(|err| {
        let at = err.valid_up_to();
        let before = &bytes[..at];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = at - before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) + 1;
        PolicyError::Syntax {
            origin: origin.to_owned(),
            message: format!("not UTF-8 text: an invalid byte at line {line} column {column} (offset {at})"),
        }
    })?;
    parse_str(text, origin)
}

/// Parses and validates a control file's text; `origin` (a file name, say)
/// starts every error message.
pub fn parse_str(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    let value = load(text, origin)?;
    // Without tracking where it is, which only an error needs: when the
    // text does not fit the format it is read again to say where.
    let raw = match RawPolicy::deserialize(value) {
        Ok(raw) => raw,
        Err(fast) => {
            let value = load(text, origin)?;
            let err = match serde_path_to_error::deserialize::<_, RawPolicy>(value) {
                Err(err) => err,
                Ok(_) => {
                    return Err(PolicyError::Invalid {
                        origin: origin.to_owned(),
                        path: String::new(),
                        message: requote(&fast.to_string()),
                    });
                }
            };
            let message = err.inner().to_string();
            return Err(PolicyError::Invalid {
                origin: origin.to_owned(),
                path: field_path(err.path(), &message),
                message: requote(&message),
            });
        }
    };
    validate(raw).map_err(|fault| PolicyError::Invalid {
        origin: origin.to_owned(),
        path: fault.path,
        message: fault.message,
    })
}

/// Reads a control file's text into a generic value, merge keys applied,
/// so that syntax errors, which carry line and column, are told apart
/// from format errors, which carry a field path.
fn load(text: &str, origin: &str) -> Result<Value, PolicyError> {
    let syntax = |message: String| PolicyError::Syntax {
        origin: origin.to_owned(),
        message,
    };
    if let Some((line, column)) = super::nesting::too_deep(text, super::nesting::MAX_FLOW_DEPTH) {
        return Err(syntax(format!(
            "invalid YAML: flow collections ([...], {{...}}) nested deeper than {} levels at line {line} column {column}",
            super::nesting::MAX_FLOW_DEPTH
        )));
    }
    let mut value: Value = serde_yaml_ng::from_str(text).map_err(|err| syntax(yaml_message(&err)))?;
    // A merge key is `<<`, written as such or with escapes.
    if text.contains("<<") || text.contains('\\') {
        value.apply_merge().map_err(|err| syntax(yaml_message(&err)))?;
    }
    if value.is_null() {
        return Err(PolicyError::Invalid {
            origin: origin.to_owned(),
            path: String::new(),
            message: "the document is empty; a policy needs at least \"version: 1\"".into(),
        });
    }
    Ok(value)
}

/// One rule as a request gives it, field by field.
pub struct RuleFields {
    pub proto: Scalar,
    pub ports: Option<Scalar>,
    pub icmp_type: Option<Scalar>,
    pub icmp_code: Option<Scalar>,
    pub peers: Vec<RawPeer>,
    pub description: Option<String>,
}

/// The rule `fields` describe, for a group's `dir` rules, read and checked
/// as a rule of a control file is (errors name `rule.<field>`). Its
/// references are checked with the policy it joins.
pub fn rule_from_fields(fields: RuleFields, dir: Direction) -> Result<Rule, PolicyError> {
    let origin = "the rule";
    let icmp = match (fields.icmp_type, fields.icmp_code) {
        (Some(ty), code) => Some(RawIcmp { ty, code }),
        (None, Some(_)) => return Err(fault("rule.icmp.code", "needs an ICMP type (icmp_type)").into_error(origin)),
        (None, None) => None,
    };
    let (from, to) = match dir {
        Direction::Ingress => (Some(fields.peers), None),
        Direction::Egress => (None, Some(fields.peers)),
    };
    let raw = RawRule {
        proto: fields.proto,
        ports: fields.ports,
        icmp,
        from,
        to,
        description: fields.description,
    };
    validate_rule(raw, &"rule", dir).map_err(|f| f.into_error(origin))
}

/// One endpoint as a request gives it.
pub struct EndpointFields {
    pub name: String,
    pub node: Option<String>,
    pub interface: Option<String>,
    pub mac: Option<String>,
    pub addresses: Vec<String>,
    pub groups: Vec<String>,
}

/// The endpoint `fields` describe, its values read as a control file's
/// are (errors name `endpoint.<field>`); the policy it joins checks the
/// rest.
pub fn endpoint_from_fields(fields: EndpointFields) -> Result<Endpoint, PolicyError> {
    let raw = RawEndpoint {
        name: fields.name,
        node: fields.node,
        interface: fields.interface,
        mac: fields.mac,
        addresses: fields.addresses,
        groups: Some(fields.groups),
    };
    validate_endpoint(raw, "endpoint").map_err(|f| f.into_error("the endpoint"))
}

/// The path of a format error in the style of the validation errors: an
/// unknown field is reported at the map that holds it, and a bad map key at
/// the map.
fn field_path(path: &serde_path_to_error::Path, message: &str) -> String {
    use serde_path_to_error::Segment;

    let mut segments: Vec<&Segment> = path.iter().collect();
    match segments.last() {
        Some(Segment::Map { key }) if message.starts_with(&format!("unknown field `{key}`")) => {
            segments.pop();
        }
        Some(Segment::Unknown) => {
            segments.pop();
        }
        _ => {}
    }
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

fn yaml_message(err: &serde_yaml_ng::Error) -> String {
    let message = err.to_string();
    match err.location() {
        Some(at) if !message.contains(" at line ") => {
            format!("invalid YAML: {message} at line {} column {}", at.line(), at.column())
        }
        _ => format!("invalid YAML: {message}"),
    }
}

/// serde quotes names and values in backticks; in these messages names are
/// in double quotes and numbers stand bare, like the rest of the messages.
fn requote(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (i, part) in message.split('`').enumerate() {
        let quoted = i % 2 == 1;
        let numeric = part.starts_with(|c: char| c.is_ascii_digit() || c == '-') && part.parse::<f64>().is_ok();
        let bare = numeric || part == "true" || part == "false";
        if quoted && !bare {
            out.push('"');
            out.push_str(part);
            out.push('"');
        } else {
            out.push_str(part);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a policy: a map with version, prefix_lists, groups, endpoints and settings"
)]
struct RawPolicy {
    version: Scalar,
    prefix_lists: Option<Ordered<Vec<String>>>,
    // A group may be written with no body (`db:`) when it only names a set
    // of endpoints.
    groups: Option<Ordered<Option<RawGroup>>>,
    endpoints: Option<Vec<RawEndpoint>>,
    settings: Option<RawSettings>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a group: a map with description, ingress and egress"
)]
struct RawGroup {
    description: Option<String>,
    ingress: Option<Vec<RawRule>>,
    egress: Option<Vec<RawRule>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rule: a map with proto, ports, icmp, from or to, and description"
)]
struct RawRule {
    proto: Scalar,
    ports: Option<Scalar>,
    icmp: Option<RawIcmp>,
    from: Option<Vec<RawPeer>>,
    to: Option<Vec<RawPeer>>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an ICMP match: a map with type and code")]
struct RawIcmp {
    #[serde(rename = "type")]
    ty: Scalar,
    code: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an endpoint: a map with name, node, interface, mac, addresses and groups"
)]
struct RawEndpoint {
    name: String,
    node: Option<String>,
    interface: Option<String>,
    mac: Option<String>,
    addresses: Vec<String>,
    groups: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "settings: a map with conntrack, on_policy_change and quarantine"
)]
struct RawSettings {
    conntrack: Option<RawConntrack>,
    on_policy_change: Option<String>,
    quarantine: Option<RawQuarantine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "quarantine: a map with interfaces (a glob)")]
struct RawQuarantine {
    interfaces: String,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "conntrack settings: a map with tcp_established, tcp_other, udp, udp_stream, icmp, other, max_per_endpoint, max_inbound_per_endpoint, midstream and midstream_window"
)]
struct RawConntrack {
    tcp_established: Option<Scalar>,
    tcp_other: Option<Scalar>,
    udp: Option<Scalar>,
    udp_stream: Option<Scalar>,
    icmp: Option<Scalar>,
    other: Option<Scalar>,
    max_per_endpoint: Option<Scalar>,
    max_inbound_per_endpoint: Option<Scalar>,
    midstream: Option<String>,
    midstream_window: Option<Scalar>,
}

/// A value that may be written as an integer or as a string (`ports: 443`
/// and `ports: "8000-8100"`); validation decides what it means.
pub enum Scalar {
    Int(i128),
    Str(String),
}

impl Scalar {
    /// The integer written as a number or as a string of digits.
    fn as_int(&self) -> Option<i128> {
        match self {
            Scalar::Int(n) => Some(*n),
            Scalar::Str(s) if is_digits(s) => s.parse().ok(),
            Scalar::Str(_) => None,
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(n) => write!(f, "{n}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;

        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
        }

        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// A map whose entries keep the order of the file, so the first error
/// reported is the first one in the file.
struct Ordered<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for OrderedVisitor<T> {
            type Value = Ordered<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from names")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<T>, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(Ordered(entries))
            }
        }

        deserializer.deserialize_map(OrderedVisitor(PhantomData))
    }
}

/// A peer as written: `host`, `{group: NAME}`, `{cidr: CIDR}` or
/// `{prefix_list: NAME}`.
pub enum RawPeer {
    Group(String),
    Cidr(String),
    PrefixList(String),
    Host,
}

impl<'de> Deserialize<'de> for RawPeer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PeerVisitor;

        const KINDS: &[&str] = &["group", "cidr", "prefix_list"];

        impl<'de> Visitor<'de> for PeerVisitor {
            type Value = RawPeer;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a peer: host, {group: NAME}, {cidr: CIDR} or {prefix_list: NAME}")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPeer, E> {
                if v.eq_ignore_ascii_case("host") {
                    Ok(RawPeer::Host)
                } else {
                    Err(E::custom(format!(
                        "{v:?} is not a peer; write host, {{group: NAME}}, {{cidr: CIDR}} or {{prefix_list: NAME}}"
                    )))
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPeer, A::Error> {
                let Some(kind) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(
                        "an empty peer; write {group: NAME}, {cidr: CIDR} or {prefix_list: NAME}",
                    ));
                };
                let make = match kind.as_str() {
                    "group" => RawPeer::Group,
                    "cidr" => RawPeer::Cidr,
                    "prefix_list" => RawPeer::PrefixList,
                    _ => return Err(de::Error::unknown_field(&kind, KINDS)),
                };
                let peer = make(map.next_value()?);
                if let Some(second) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "a peer has one key, but this one has both {kind:?} and {second:?}; write them as separate peers"
                    )));
                }
                Ok(peer)
            }
        }

        deserializer.deserialize_any(PeerVisitor)
    }
}

// ---------------------------------------------------------------------------
// From the file's form to the model: each value read and checked for what
// it is on its own; the model as a whole is then checked by `check`.

/// As [`at`], with the path written only when there is a fault (rules and
/// peers are many; their paths are needed only in errors).
fn at_lazy(path: impl FnOnce() -> String) -> impl FnOnce(String) -> Fault {
    move |message| fault(path(), message)
}

fn validate(raw: RawPolicy) -> Result<Policy, Fault> {
    if !matches!(raw.version, Scalar::Int(1)) {
        return Err(fault(
            "version",
            format!(
                "{} is not a supported version (this hostwall reads version 1)",
                raw.version
            ),
        ));
    }

    let mut prefix_lists = BTreeMap::new();
    for (name, entries) in raw.prefix_lists.map_or_else(Vec::new, |m| m.0) {
        let nets = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| parse_cidr(entry).map_err(at(format!("prefix_lists.{name}[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        prefix_lists.insert(name, nets);
    }

    let mut groups = BTreeMap::new();
    for (name, body) in raw.groups.map_or_else(Vec::new, |m| m.0) {
        let body = body.unwrap_or(RawGroup {
            description: None,
            ingress: None,
            egress: None,
        });
        let rules = |list: Option<Vec<RawRule>>, dir: Direction| {
            list.unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(index, rule)| {
                    let path = RulePath {
                        group: &name,
                        dir,
                        index,
                    };
                    validate_rule(rule, &path, dir)
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let group = Group {
            description: body.description,
            ingress: rules(body.ingress, Direction::Ingress)?,
            egress: rules(body.egress, Direction::Egress)?,
        };
        groups.insert(name, group);
    }

    let endpoints = raw
        .endpoints
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(index, ep)| validate_endpoint(ep, &format!("endpoints[{index}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let settings = validate_settings(raw.settings)?;

    let policy = Policy {
        prefix_lists,
        groups,
        endpoints,
        settings,
    };
    check_model(&policy)?;
    Ok(policy)
}

fn validate_rule(raw: RawRule, path: &dyn std::fmt::Display, dir: Direction) -> Result<Rule, Fault> {
    let proto = parse_proto(&raw.proto).map_err(at_lazy(|| format!("{path}.proto")))?;
    // Checked before the value is read, so that `ports: x` on an ICMP rule
    // says what is wrong with the rule.
    if raw.ports.is_some() && !proto.has_ports() {
        return Err(fault(
            format!("{path}.ports"),
            format!(
                "ports are only allowed with tcp, udp or sctp, not {}",
                proto_label(proto)
            ),
        ));
    }
    if raw.icmp.is_some() && !proto.is_icmp() {
        return Err(fault(
            format!("{path}.icmp"),
            format!(
                "icmp matches are only allowed with icmp or icmpv6, not {}",
                proto_label(proto)
            ),
        ));
    }
    let ports = match raw.ports {
        None => None,
        Some(ports) => Some(parse_ports(&ports).map_err(at_lazy(|| format!("{path}.ports")))?),
    };
    let icmp = match raw.icmp {
        None => None,
        Some(icmp) => Some(IcmpMatch {
            ty: parse_byte(&icmp.ty, "an ICMP type").map_err(at_lazy(|| format!("{path}.icmp.type")))?,
            code: icmp
                .code
                .map(|code| parse_byte(&code, "an ICMP code"))
                .transpose()
                .map_err(at_lazy(|| format!("{path}.icmp.code")))?,
        }),
    };

    let (key, other_key, peers, other, what) = match dir {
        Direction::Ingress => ("from", "to", raw.from, raw.to, "sources"),
        Direction::Egress => ("to", "from", raw.to, raw.from, "destinations"),
    };
    if other.is_some() {
        return Err(fault(
            format!("{path}.{other_key}"),
            format!(
                "{} rules list their {what} under \"{key}\", not \"{other_key}\"",
                dir.as_str()
            ),
        ));
    }
    let Some(peers) = peers else {
        return Err(fault(path.to_string(), format!("missing field \"{key}\"")));
    };
    let peers = peers
        .into_iter()
        .enumerate()
        .map(|(index, peer)| {
            let at = PeerPath { rule: path, key, index };
            validate_peer(peer, &at)
        })
        .collect::<Result<Vec<_>, _>>()?;

    let rule = Rule {
        proto,
        ports,
        icmp,
        peers,
        description: raw.description,
    };
    check_rule(&rule, path, dir)?;
    Ok(rule)
}

fn validate_peer(raw: RawPeer, path: &dyn std::fmt::Display) -> Result<Peer, Fault> {
    match raw {
        RawPeer::Host => Ok(Peer::Host),
        RawPeer::Cidr(text) => parse_cidr(&text)
            .map(Peer::Cidr)
            .map_err(at_lazy(|| format!("{path}.cidr"))),
        RawPeer::Group(name) => Ok(Peer::Group(name)),
        RawPeer::PrefixList(name) => Ok(Peer::PrefixList(name)),
    }
}

fn validate_endpoint(ep: RawEndpoint, path: &str) -> Result<Endpoint, Fault> {
    let mac = match &ep.mac {
        None => None,
        Some(text) => {
            let Some(mac) = parse_mac(text) else {
                return Err(fault(
                    format!("{path}.mac"),
                    format!(
                        "{text:?} of endpoint {:?} is not a MAC address; write six hex pairs separated by ':', like \"02:aa:00:00:00:01\"",
                        ep.name
                    ),
                ));
            };
            Some(mac)
        }
    };
    let addresses = ep
        .addresses
        .iter()
        .enumerate()
        .map(|(i, text)| parse_address(text).map_err(at(format!("{path}.addresses[{i}]"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Endpoint {
        name: ep.name,
        node: ep.node,
        interface: ep.interface,
        mac,
        addresses,
        groups: ep.groups.unwrap_or_default(),
    })
}

fn validate_settings(raw: Option<RawSettings>) -> Result<Settings, Fault> {
    let mut conntrack = ConntrackTimeouts::default();
    let mut on_policy_change = OnPolicyChange::default();
    let mut quarantine = None;
    let raw = match raw {
        Some(RawSettings {
            conntrack,
            on_policy_change: change,
            quarantine: q,
        }) => {
            if let Some(change) = change {
                on_policy_change = match change.as_str() {
                    "keep" => OnPolicyChange::Keep,
                    "revalidate" => OnPolicyChange::Revalidate,
                    other => {
                        return Err(fault(
                            "settings.on_policy_change",
                            format!("\"{other}\" is not a choice; write keep or revalidate"),
                        ));
                    }
                };
            }
            if let Some(q) = q {
                if q.interfaces.is_empty() || q.interfaces.len() > 64 || q.interfaces.contains('/') {
                    return Err(fault(
                        "settings.quarantine.interfaces",
                        format!("\"{}\" is not an interface name pattern (like veth*)", q.interfaces),
                    ));
                }
                quarantine = Some(Quarantine {
                    interfaces: q.interfaces,
                });
            }
            conntrack
        }
        None => None,
    };
    if let Some(mut raw) = raw {
        if let Some(v) = raw.max_per_endpoint.take() {
            conntrack.max_per_endpoint = parse_flow_cap(&v, hostwall_common::MAX_CONNTRACK_ENTRIES)
                .map_err(at("settings.conntrack.max_per_endpoint"))?;
        }
        if let Some(v) = raw.max_inbound_per_endpoint.take() {
            conntrack.max_inbound_per_endpoint = parse_flow_cap(&v, hostwall_common::MAX_CONNTRACK_INBOUND_ENTRIES)
                .map_err(at("settings.conntrack.max_inbound_per_endpoint"))?;
        }
        let window = match raw.midstream_window.take() {
            Some(v) => Some(parse_duration(&v).map_err(at("settings.conntrack.midstream_window"))?),
            None => None,
        };
        conntrack.midstream = match raw.midstream.take().as_deref() {
            None | Some("startup") => Midstream::Startup(window.unwrap_or(Midstream::DEFAULT_WINDOW)),
            Some(choice @ ("allow" | "deny")) => {
                if window.is_some() {
                    return Err(fault(
                        "settings.conntrack.midstream_window",
                        format!("applies only to midstream: startup, not {choice}"),
                    ));
                }
                if choice == "allow" {
                    Midstream::Allow
                } else {
                    Midstream::Deny
                }
            }
            Some(other) => {
                return Err(fault(
                    "settings.conntrack.midstream",
                    format!("\"{other}\" is not a choice; write allow, startup or deny"),
                ));
            }
        };
        let fields = [
            ("tcp_established", raw.tcp_established, &mut conntrack.tcp_established),
            ("tcp_other", raw.tcp_other, &mut conntrack.tcp_other),
            ("udp", raw.udp, &mut conntrack.udp),
            ("udp_stream", raw.udp_stream, &mut conntrack.udp_stream),
            ("icmp", raw.icmp, &mut conntrack.icmp),
            ("other", raw.other, &mut conntrack.other),
        ];
        for (key, value, slot) in fields {
            if let Some(value) = value {
                *slot = parse_duration(&value).map_err(at(format!("settings.conntrack.{key}")))?;
            }
        }
    }
    Ok(Settings {
        conntrack,
        on_policy_change,
        quarantine,
    })
}

fn parse_flow_cap(value: &Scalar, cap: u32) -> Result<u32, String> {
    let n = match value {
        Scalar::Int(n) => *n,
        Scalar::Str(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| format!("\"{s}\" is not a number of flows"))?,
    };
    if n < 1 || n > cap as i128 {
        return Err(format!("{n} is not between 1 and {cap} (the conntrack table's size)"));
    }
    Ok(n as u32)
}

// ---------------------------------------------------------------------------
// Values.

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// An Ethernet address written as six hex pairs separated by `:`
/// (`02:aa:00:00:00:01`, either case), nothing else.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(mac)
}

fn parse_proto(value: &Scalar) -> Result<Proto, String> {
    if let Scalar::Str(s) = value {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => return Ok(Proto::TCP),
            "udp" => return Ok(Proto::UDP),
            "icmp" => return Ok(Proto::ICMP),
            "icmpv6" => return Ok(Proto::ICMPV6),
            "sctp" => return Ok(Proto::SCTP),
            "all" => return Ok(Proto::All),
            _ => {}
        }
    }
    match value.as_int() {
        Some(n) => u8::try_from(n)
            .map(Proto::Number)
            .map_err(|_| format!("{n} is not a protocol number (0-255)")),
        None => Err(format!(
            "{value} is not a protocol (write tcp, udp, icmp, icmpv6, sctp, all or a number 0-255)"
        )),
    }
}

/// How a protocol is named in messages: `icmp`, `all`, `protocol 47`.
fn parse_ports(value: &Scalar) -> Result<PortRange, String> {
    let text = match value {
        Scalar::Int(n) => {
            let port = u16::try_from(*n).map_err(|_| format!("{n} is not a port"))?;
            return Ok(PortRange {
                first: port,
                last: port,
            });
        }
        Scalar::Str(s) => s.as_str(),
    };
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let first = parse_port(first, text)?;
    let last = parse_port(last, text)?;
    if first > last {
        return Err(format!("{first}-{last} is a reversed range; write {last}-{first}"));
    }
    Ok(PortRange { first, last })
}

fn parse_port(part: &str, whole: &str) -> Result<u16, String> {
    let part = part.trim();
    if !is_digits(part) {
        return Err(format!(
            "{whole:?} is not a port or port range (write 443 or \"8000-8100\")"
        ));
    }
    part.parse().map_err(|_| format!("{part} is not a port"))
}

fn parse_byte(value: &Scalar, what: &str) -> Result<u8, String> {
    match value.as_int() {
        Some(n) => u8::try_from(n).map_err(|_| format!("{n} is not {what} (0-255)")),
        None => Err(format!("{value} is not {what} (0-255)")),
    }
}

/// A CIDR in canonical form. A bare address means that one address, which
/// is how people write single hosts.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let not_cidr = || format!("{text:?} is not a CIDR (write it like 10.0.0.0/8 or 2001:db8::/32)");
    let Some((addr, len)) = text.split_once('/') else {
        return text.parse::<IpAddr>().map(IpNet::from).map_err(|_| not_cidr());
    };
    let addr: IpAddr = addr.parse().map_err(|_| not_cidr())?;
    if !is_digits(len) {
        return Err(not_cidr());
    }
    let (family, max) = if addr.is_ipv4() { ("IPv4", 32) } else { ("IPv6", 128) };
    let net = len
        .parse()
        .ok()
        .and_then(|len| IpNet::new(addr, len).ok())
        .ok_or_else(|| format!("{text}: an {family} prefix is at most /{max}"))?;
    let canonical = net.trunc();
    if canonical != net {
        return Err(format!("{text} has host bits set; did you mean {canonical}?"));
    }
    Ok(net)
}

fn parse_address(text: &str) -> Result<IpAddr, String> {
    let addr: IpAddr = text.parse().map_err(|_| {
        if text.contains('/') {
            format!("{text} is not an address; write it without a prefix length")
        } else {
            format!("{text:?} is not an IP address")
        }
    })?;
    if addr.is_unspecified() {
        return Err(format!("{addr} is the unspecified address, not an endpoint's address"));
    }
    if addr.is_multicast() {
        return Err(format!("{addr} is a multicast address, not an endpoint's address"));
    }
    if let IpAddr::V6(v6) = addr {
        // A link-local address is only unique on its own link, so it can't
        // name an endpoint across the hosts that read the file.
        if v6.is_unicast_link_local() {
            return Err(format!(
                "{addr} is an IPv6 link-local address (fe80::/10), which is not unique across links; list the endpoint's global or unique local addresses"
            ));
        }
        // Packets carry IPv4 addresses as IPv4, so the mapped form would
        // never match.
        if let Some(v4) = v6.to_ipv4_mapped() {
            return Err(format!("{addr} is an IPv4-mapped IPv6 address; write it as {v4}"));
        }
    }
    Ok(addr)
}

/// The longest timeout accepted; it keeps any later conversion to
/// nanoseconds or jiffies far from overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 86_400);

fn parse_duration(value: &Scalar) -> Result<Duration, String> {
    let not_duration = || format!("{value} is not a duration (write it like 30s, 5m, 2h or 5d)");
    let Scalar::Str(text) = value else {
        return Err(not_duration());
    };
    let seconds_per_unit: u64 = match text.as_bytes().last() {
        Some(b's') => 1,
        Some(b'm') => 60,
        Some(b'h') => 3_600,
        Some(b'd') => 86_400,
        _ => return Err(not_duration()),
    };
    // The unit is one ASCII byte, so this slices on a character boundary.
    let count = &text[..text.len() - 1];
    if !is_digits(count) {
        return Err(not_duration());
    }
    let too_long = || format!("{value} is longer than 365d, the longest timeout");
    let seconds = count
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(seconds_per_unit))
        .ok_or_else(too_long)?;
    if seconds == 0 {
        return Err(format!("{value} is zero; a timeout must be positive"));
    }
    let duration = Duration::from_secs(seconds);
    if duration > MAX_TIMEOUT {
        return Err(too_long());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
version: 1
prefix_lists:
  office: ["192.0.2.0/24", "2001:db8::/32"]
groups:
  web:
    description: public web tier
    ingress:                        # traffic INTO members of this group
      - proto: tcp
        ports: 443
        from: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}]
      - proto: icmp
        icmp: {type: 8}
        from: [host]
    egress:                         # traffic FROM members of this group
      - {proto: tcp, ports: 8080, to: [{group: api}]}
  api:
    ingress:
      - {proto: tcp, ports: 8080, from: [{group: web}]}
    egress:
      - {proto: tcp, ports: 5432, to: [{group: db}]}
      - {proto: udp, ports: 53, to: [host]}
  db:
endpoints:
  - name: web-1
    interface: hw-web1
    addresses: ["10.10.0.11", "fd00:10::11"]
    groups: [web]
  - name: db-1
    node: host-b
    interface: hw-db1
    addresses: ["10.20.0.5"]
    groups: [db]
settings:
  conntrack: {tcp_established: 432000s, tcp_other: 120s, udp: 30s, udp_stream: 180s, icmp: 30s, other: 600s}
"#;

    fn parse(text: &str) -> Policy {
        match parse_str(text, "test.yaml") {
            Ok(policy) => policy,
            Err(err) => panic!("{err}"),
        }
    }

    /// The whole message of an error that must be a field error.
    fn invalid(text: &str) -> String {
        match parse_str(text, "test.yaml") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(err @ PolicyError::Invalid { .. }) => err.to_string(),
            Err(err) => panic!("not a field error: {err}"),
        }
    }

    /// A document with the given lines under `groups:` and a `web` and `db`
    /// group to refer to.
    fn with_groups(groups: &str) -> String {
        format!("version: 1\nprefix_lists:\n  office: [192.0.2.0/24]\ngroups:\n{groups}\n  db:\n  web:\n")
    }

    /// A document with one ingress rule for group `api`.
    fn with_rule(rule: &str) -> String {
        with_groups(&format!("  api:\n    ingress:\n      - {rule}"))
    }

    fn only_rule(policy: &Policy) -> &Rule {
        &policy.groups["api"].ingress[0]
    }

    fn with_endpoints(endpoints: &str) -> String {
        format!("version: 1\ngroups:\n  web:\n  db:\nendpoints:\n{endpoints}")
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn ports(first: u16, last: u16) -> Option<PortRange> {
        Some(PortRange { first, last })
    }

    fn rule(proto: Proto, ports: Option<PortRange>, peers: Vec<Peer>) -> Rule {
        Rule {
            proto,
            ports,
            icmp: None,
            peers,
            description: None,
        }
    }

    fn example_model() -> Policy {
        let mut prefix_lists = BTreeMap::new();
        prefix_lists.insert("office".to_owned(), vec![net("192.0.2.0/24"), net("2001:db8::/32")]);
        let mut groups = BTreeMap::new();
        groups.insert(
            "web".to_owned(),
            Group {
                description: Some("public web tier".into()),
                ingress: vec![
                    rule(
                        Proto::TCP,
                        ports(443, 443),
                        vec![Peer::Cidr(net("0.0.0.0/0")), Peer::Cidr(net("::/0"))],
                    ),
                    Rule {
                        icmp: Some(IcmpMatch { ty: 8, code: None }),
                        ..rule(Proto::ICMP, None, vec![Peer::Host])
                    },
                ],
                egress: vec![rule(Proto::TCP, ports(8080, 8080), vec![Peer::Group("api".into())])],
            },
        );
        groups.insert(
            "api".to_owned(),
            Group {
                description: None,
                ingress: vec![rule(Proto::TCP, ports(8080, 8080), vec![Peer::Group("web".into())])],
                egress: vec![
                    rule(Proto::TCP, ports(5432, 5432), vec![Peer::Group("db".into())]),
                    rule(Proto::UDP, ports(53, 53), vec![Peer::Host]),
                ],
            },
        );
        groups.insert("db".to_owned(), Group::default());
        Policy {
            prefix_lists,
            groups,
            endpoints: vec![
                Endpoint {
                    name: "web-1".into(),
                    node: None,
                    interface: Some("hw-web1".into()),
                    mac: None,
                    addresses: vec![ip("10.10.0.11"), ip("fd00:10::11")],
                    groups: vec!["web".into()],
                },
                Endpoint {
                    name: "db-1".into(),
                    node: Some("host-b".into()),
                    interface: Some("hw-db1".into()),
                    mac: None,
                    addresses: vec![ip("10.20.0.5")],
                    groups: vec!["db".into()],
                },
            ],
            settings: Settings::default(),
        }
    }

    // --- Whole documents -------------------------------------------------

    #[test]
    fn example_parses_into_the_model() {
        assert_eq!(parse(EXAMPLE), example_model());
    }

    #[test]
    fn json_is_accepted() {
        let json = r#"{
            "version": 1,
            "prefix_lists": {"office": ["192.0.2.0/24", "2001:db8::/32"]},
            "groups": {
                "web": {
                    "description": "public web tier",
                    "ingress": [
                        {"proto": "tcp", "ports": 443, "from": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]},
                        {"proto": "icmp", "icmp": {"type": 8}, "from": ["host"]}
                    ],
                    "egress": [{"proto": "tcp", "ports": "8080", "to": [{"group": "api"}]}]
                },
                "api": {
                    "ingress": [{"proto": 6, "ports": 8080, "from": [{"group": "web"}]}],
                    "egress": [
                        {"proto": "tcp", "ports": 5432, "to": [{"group": "db"}]},
                        {"proto": "udp", "ports": 53, "to": ["host"]}
                    ]
                },
                "db": {}
            },
            "endpoints": [
                {"name": "web-1", "interface": "hw-web1", "addresses": ["10.10.0.11", "fd00:10::11"], "groups": ["web"]},
                {"name": "db-1", "node": "host-b", "interface": "hw-db1", "addresses": ["10.20.0.5"], "groups": ["db"]}
            ]
        }"#;
        assert_eq!(parse(json), example_model());
    }

    #[test]
    fn json_errors_name_the_field() {
        let json =
            r#"{"version": 1, "groups": {"web": {"ingress": [{"proto": "tcp", "ports": 70000, "from": ["host"]}]}}}"#;
        assert_eq!(
            invalid(json),
            "test.yaml: groups.web.ingress[0].ports: 70000 is not a port"
        );
    }

    #[test]
    fn only_version_is_required() {
        let policy = parse("version: 1\n");
        assert!(policy.prefix_lists.is_empty());
        assert!(policy.groups.is_empty());
        assert!(policy.endpoints.is_empty());
        assert_eq!(policy.settings, Settings::default());
    }

    #[test]
    fn empty_sections_are_empty() {
        let policy = parse("version: 1\nprefix_lists:\ngroups:\nendpoints:\nsettings:\n  conntrack:\n");
        assert!(policy.groups.is_empty() && policy.endpoints.is_empty());
        assert_eq!(policy.settings, Settings::default());
    }

    #[test]
    fn group_parts_are_optional() {
        let policy = parse(
            "version: 1\ngroups:\n  a:\n  b: {}\n  c: {description: only words}\n  d: {ingress: [], egress: null}\n",
        );
        assert_eq!(policy.groups.len(), 4);
        assert_eq!(policy.groups["a"], Group::default());
        assert_eq!(policy.groups["b"], Group::default());
        assert_eq!(policy.groups["c"].description.as_deref(), Some("only words"));
        assert_eq!(policy.groups["d"], Group::default());
    }

    #[test]
    fn version_must_be_1() {
        assert_eq!(invalid("groups: {}\n"), "test.yaml: missing field \"version\"");
        assert_eq!(
            invalid("version: 2\n"),
            "test.yaml: version: 2 is not a supported version (this hostwall reads version 1)"
        );
        assert_eq!(
            invalid("version: \"1\"\n"),
            "test.yaml: version: \"1\" is not a supported version (this hostwall reads version 1)"
        );
    }

    #[test]
    fn empty_document_is_an_error() {
        for text in ["", "# nothing here\n", "---\n"] {
            assert_eq!(
                invalid(text),
                "test.yaml: the document is empty; a policy needs at least \"version: 1\""
            );
        }
    }

    #[test]
    fn document_must_be_a_map() {
        assert_eq!(
            invalid("- version: 1\n"),
            "test.yaml: invalid type: sequence, expected a policy: a map with version, prefix_lists, groups, endpoints and settings"
        );
    }

    #[test]
    fn order_is_kept() {
        let policy = parse(&with_endpoints(
            "  - {name: z, addresses: [10.0.0.3]}\n  - {name: a, addresses: [10.0.0.1, 10.0.0.2]}\n  - {name: m, addresses: [], groups: [web, db]}\n",
        ));
        let names: Vec<&str> = policy.endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["z", "a", "m"]);
        assert_eq!(policy.endpoints[1].addresses, [ip("10.0.0.1"), ip("10.0.0.2")]);
        assert_eq!(policy.endpoints[2].groups, ["web", "db"]);

        let policy = parse(&with_groups(
            "  api:\n    egress:\n      - {proto: udp, to: [host]}\n      - {proto: tcp, to: [{group: web}, host, {cidr: 10.0.0.0/8}, {prefix_list: office}]}\n",
        ));
        let egress = &policy.groups["api"].egress;
        assert_eq!(egress[0].proto, Proto::UDP);
        assert_eq!(
            egress[1].peers,
            [
                Peer::Group("web".into()),
                Peer::Host,
                Peer::Cidr(net("10.0.0.0/8")),
                Peer::PrefixList("office".into()),
            ]
        );
    }

    #[test]
    fn first_error_in_file_order() {
        // "zeta" comes first in the file though not in name order.
        let text = "version: 1\ngroups:\n  zeta:\n    ingress: [{proto: tcp, ports: 70000, from: [host]}]\n  alpha:\n    ingress: [{proto: tcp, ports: 70001, from: [host]}]\n";
        assert_eq!(
            invalid(text),
            "test.yaml: groups.zeta.ingress[0].ports: 70000 is not a port"
        );
    }

    #[test]
    fn anchors_and_merge_keys_work() {
        let policy = parse(
            "version: 1\ngroups:\n  web:\n    ingress:\n      - &https {proto: tcp, ports: 443, from: [host]}\n      - {<<: *https, ports: 8443}\n",
        );
        let ingress = &policy.groups["web"].ingress;
        assert_eq!(ingress[0].ports, ports(443, 443));
        assert_eq!(ingress[1].ports, ports(8443, 8443));
        assert_eq!(ingress[1].peers, [Peer::Host]);
    }

    // --- Rules -----------------------------------------------------------

    #[test]
    fn the_same_rule_twice_in_a_group_is_refused_naming_both() {
        let text = "version: 1\ngroups:\n  web:\n    ingress:\n      - {proto: tcp, ports: 443, from: [host], description: one}\n      - {proto: udp, ports: 443, from: [host]}\n      - {proto: tcp, ports: 443, from: [host], description: two}\n";
        assert_eq!(
            invalid(text),
            "test.yaml: groups.web.ingress[2]: the same rule as groups.web.ingress[0] (protocol, ports, ICMP match and peers): remove one of them"
        );
        // The same match in the other direction, or in another group, is
        // another rule.
        parse(
            "version: 1\ngroups:\n  web:\n    ingress: [{proto: tcp, ports: 443, from: [host]}]\n    egress: [{proto: tcp, ports: 443, to: [host]}]\n  api:\n    ingress: [{proto: tcp, ports: 443, from: [host]}]\n",
        );
    }

    #[test]
    fn rule_description_is_kept() {
        let policy = parse(&with_rule("{proto: tcp, from: [host], description: ssh from the host}"));
        assert_eq!(only_rule(&policy).description.as_deref(), Some("ssh from the host"));
    }

    #[test]
    fn protocols_by_name_and_number() {
        for (written, proto) in [
            ("tcp", Proto::TCP),
            ("TCP", Proto::TCP),
            ("6", Proto::TCP),
            ("\"6\"", Proto::TCP),
            ("udp", Proto::UDP),
            ("17", Proto::UDP),
            ("icmp", Proto::ICMP),
            ("IcMp", Proto::ICMP),
            ("icmpv6", Proto::ICMPV6),
            ("sctp", Proto::SCTP),
            ("all", Proto::All),
            ("ALL", Proto::All),
            ("47", Proto::Number(47)),
            ("0", Proto::Number(0)),
            ("255", Proto::Number(255)),
        ] {
            let policy = parse(&with_rule(&format!("{{proto: {written}, from: [host]}}")));
            assert_eq!(only_rule(&policy).proto, proto, "proto: {written}");
        }
    }

    #[test]
    fn bad_protocols() {
        assert_eq!(
            invalid(&with_rule("{proto: tcpp, from: [host]}")),
            "test.yaml: groups.api.ingress[0].proto: \"tcpp\" is not a protocol (write tcp, udp, icmp, icmpv6, sctp, all or a number 0-255)"
        );
        assert_eq!(
            invalid(&with_rule("{proto: 256, from: [host]}")),
            "test.yaml: groups.api.ingress[0].proto: 256 is not a protocol number (0-255)"
        );
        assert_eq!(
            invalid(&with_rule("{proto: \"300\", from: [host]}")),
            "test.yaml: groups.api.ingress[0].proto: 300 is not a protocol number (0-255)"
        );
        assert_eq!(
            invalid(&with_rule("{proto: -1, from: [host]}")),
            "test.yaml: groups.api.ingress[0].proto: -1 is not a protocol number (0-255)"
        );
        assert_eq!(
            invalid(&with_rule("{from: [host]}")),
            "test.yaml: groups.api.ingress[0]: missing field \"proto\""
        );
    }

    #[test]
    fn ports_forms() {
        for (written, expected) in [
            ("443", ports(443, 443)),
            ("\"443\"", ports(443, 443)),
            ("0", ports(0, 0)),
            ("65535", ports(65535, 65535)),
            ("8000-8100", ports(8000, 8100)),
            ("\"8000-8100\"", ports(8000, 8100)),
            ("\"8000 - 8100\"", ports(8000, 8100)),
            ("80-80", ports(80, 80)),
            ("0-65535", ports(0, 65535)),
        ] {
            let policy = parse(&with_rule(&format!("{{proto: udp, ports: {written}, from: [host]}}")));
            assert_eq!(only_rule(&policy).ports, expected, "ports: {written}");
        }
        let policy = parse(&with_rule("{proto: sctp, from: [host]}"));
        assert_eq!(only_rule(&policy).ports, None);
        let policy = parse(&with_rule("{proto: 6, ports: 22, from: [host]}"));
        assert_eq!(only_rule(&policy).ports, ports(22, 22));
    }

    #[test]
    fn bad_ports() {
        let at = "test.yaml: groups.api.ingress[0].ports: ";
        for (written, message) in [
            ("70000", "70000 is not a port"),
            ("\"70000\"", "70000 is not a port"),
            ("-1", "-1 is not a port"),
            ("8000-70000", "70000 is not a port"),
            ("8100-8000", "8100-8000 is a reversed range; write 8000-8100"),
            (
                "http",
                "\"http\" is not a port or port range (write 443 or \"8000-8100\")",
            ),
            (
                "80-",
                "\"80-\" is not a port or port range (write 443 or \"8000-8100\")",
            ),
            ("\"\"", "\"\" is not a port or port range (write 443 or \"8000-8100\")"),
            (
                "1-2-3",
                "\"1-2-3\" is not a port or port range (write 443 or \"8000-8100\")",
            ),
        ] {
            assert_eq!(
                invalid(&with_rule(&format!("{{proto: tcp, ports: {written}, from: [host]}}"))),
                format!("{at}{message}"),
                "ports: {written}"
            );
        }
    }

    #[test]
    fn ports_need_a_port_protocol() {
        let text = "version: 1\ngroups:\n  web:\n    ingress:\n      - {proto: tcp, ports: 443, from: [host]}\n      - {proto: icmp, ports: 8, from: [host]}\n";
        assert_eq!(
            invalid(text),
            "test.yaml: groups.web.ingress[1].ports: ports are only allowed with tcp, udp or sctp, not icmp"
        );
        assert_eq!(
            invalid(&with_rule("{proto: all, ports: 80, from: [host]}")),
            "test.yaml: groups.api.ingress[0].ports: ports are only allowed with tcp, udp or sctp, not all"
        );
        assert_eq!(
            invalid(&with_rule("{proto: 47, ports: 80, from: [host]}")),
            "test.yaml: groups.api.ingress[0].ports: ports are only allowed with tcp, udp or sctp, not protocol 47"
        );
    }

    #[test]
    fn icmp_matches() {
        let policy = parse(&with_rule("{proto: icmpv6, icmp: {type: 128, code: 0}, from: [host]}"));
        assert_eq!(only_rule(&policy).icmp, Some(IcmpMatch { ty: 128, code: Some(0) }));
        let policy = parse(&with_rule("{proto: 1, icmp: {type: \"3\"}, from: [host]}"));
        assert_eq!(only_rule(&policy).icmp, Some(IcmpMatch { ty: 3, code: None }));
        let policy = parse(&with_rule("{proto: icmp, from: [host]}"));
        assert_eq!(only_rule(&policy).icmp, None);
    }

    #[test]
    fn bad_icmp_matches() {
        assert_eq!(
            invalid(&with_rule("{proto: tcp, icmp: {type: 8}, from: [host]}")),
            "test.yaml: groups.api.ingress[0].icmp: icmp matches are only allowed with icmp or icmpv6, not tcp"
        );
        assert_eq!(
            invalid(&with_rule("{proto: icmp, icmp: {type: 256}, from: [host]}")),
            "test.yaml: groups.api.ingress[0].icmp.type: 256 is not an ICMP type (0-255)"
        );
        assert_eq!(
            invalid(&with_rule("{proto: icmp, icmp: {type: echo}, from: [host]}")),
            "test.yaml: groups.api.ingress[0].icmp.type: \"echo\" is not an ICMP type (0-255)"
        );
        assert_eq!(
            invalid(&with_rule("{proto: icmp, icmp: {type: 3, code: 300}, from: [host]}")),
            "test.yaml: groups.api.ingress[0].icmp.code: 300 is not an ICMP code (0-255)"
        );
        assert_eq!(
            invalid(&with_rule("{proto: icmp, icmp: {code: 0}, from: [host]}")),
            "test.yaml: groups.api.ingress[0].icmp: missing field \"type\""
        );
        assert!(
            invalid(&with_rule("{proto: icmp, icmp: {type: 8, kode: 0}, from: [host]}"))
                .starts_with("test.yaml: groups.api.ingress[0].icmp: unknown field \"kode\", expected ")
        );
    }

    #[test]
    fn peers_key_follows_direction() {
        assert_eq!(
            invalid(&with_rule("{proto: tcp, to: [host]}")),
            "test.yaml: groups.api.ingress[0].to: ingress rules list their sources under \"from\", not \"to\""
        );
        assert_eq!(
            invalid(&with_groups("  api:\n    egress:\n      - {proto: tcp, from: [host]}")),
            "test.yaml: groups.api.egress[0].from: egress rules list their destinations under \"to\", not \"from\""
        );
        assert_eq!(
            invalid(&with_rule("{proto: tcp, from: [host], to: [host]}")),
            "test.yaml: groups.api.ingress[0].to: ingress rules list their sources under \"from\", not \"to\""
        );
    }

    #[test]
    fn rules_need_peers() {
        assert_eq!(
            invalid(&with_rule("{proto: tcp, from: []}")),
            "test.yaml: groups.api.ingress[0].from: needs at least one peer: host, {group: NAME}, {cidr: CIDR} or {prefix_list: NAME}"
        );
        assert_eq!(
            invalid(&with_rule("{proto: tcp}")),
            "test.yaml: groups.api.ingress[0]: missing field \"from\""
        );
        assert_eq!(
            invalid(&with_groups("  api:\n    egress:\n      - {proto: tcp, to: []}")),
            "test.yaml: groups.api.egress[0].to: needs at least one peer: host, {group: NAME}, {cidr: CIDR} or {prefix_list: NAME}"
        );
    }

    #[test]
    fn unknown_rule_field() {
        let message = invalid("version: 1\ngroups:\n  web:\n    ingress:\n      - {prot: tcp, from: [host]}\n");
        assert_eq!(
            message,
            "test.yaml: groups.web.ingress[0]: unknown field \"prot\", expected one of \"proto\", \"ports\", \"icmp\", \"from\", \"to\", \"description\""
        );
    }

    #[test]
    fn unknown_fields_everywhere() {
        for (text, expected) in [
            ("version: 1\ngrops: {}\n", "test.yaml: unknown field \"grops\""),
            (
                "version: 1\ngroups:\n  web: {ingres: []}\n",
                "test.yaml: groups.web: unknown field \"ingres\"",
            ),
            (
                "version: 1\nendpoints:\n  - {name: a, addresses: [], group: []}\n",
                "test.yaml: endpoints[0]: unknown field \"group\"",
            ),
            (
                "version: 1\nsettings: {contrack: {}}\n",
                "test.yaml: settings: unknown field \"contrack\"",
            ),
            (
                "version: 1\nsettings: {conntrack: {tcp: 5s}}\n",
                "test.yaml: settings.conntrack: unknown field \"tcp\"",
            ),
        ] {
            let message = invalid(text);
            assert!(message.starts_with(&format!("{expected}, expected ")), "{message}");
        }
    }

    #[test]
    fn type_errors_name_the_field() {
        assert_eq!(
            invalid("version: 1\ngroups:\n  web:\n    ingress: {proto: tcp}\n"),
            "test.yaml: groups.web.ingress: invalid type: map, expected a sequence"
        );
        assert_eq!(
            invalid(&with_rule("{proto: 1.5, from: [host]}")),
            "test.yaml: groups.api.ingress[0].proto: invalid type: floating point 1.5, expected an integer or a string"
        );
        assert_eq!(
            invalid(&with_endpoints("  - {name: 7, addresses: []}\n")),
            "test.yaml: endpoints[0].name: invalid type: integer 7, expected a string"
        );
        assert_eq!(
            invalid("version: 1\ngroups:\n  123: {}\n"),
            "test.yaml: groups: invalid type: integer 123, expected a string"
        );
    }

    // --- Peers -----------------------------------------------------------

    #[test]
    fn peer_forms() {
        let policy = parse(&with_rule(
            "{proto: all, from: [HOST, {group: web}, {prefix_list: office}, {cidr: 10.1.0.0/16}, {cidr: 10.1.2.3}, {cidr: \"2001:db8::1\"}, {cidr: \"2001:db8::/64\"}]}",
        ));
        assert_eq!(
            only_rule(&policy).peers,
            [
                Peer::Host,
                Peer::Group("web".into()),
                Peer::PrefixList("office".into()),
                Peer::Cidr(net("10.1.0.0/16")),
                Peer::Cidr(net("10.1.2.3/32")),
                Peer::Cidr(net("2001:db8::1/128")),
                Peer::Cidr(net("2001:db8::/64")),
            ]
        );
    }

    #[test]
    fn bad_peers() {
        let at = "test.yaml: groups.api.ingress[0].from";
        for (written, message) in [
            (
                "hst",
                "[0]: \"hst\" is not a peer; write host, {group: NAME}, {cidr: CIDR} or {prefix_list: NAME}",
            ),
            (
                "{grop: web}",
                "[0]: unknown field \"grop\", expected one of \"group\", \"cidr\", \"prefix_list\"",
            ),
            (
                "{group: web, cidr: 10.0.0.0/8}",
                "[0]: a peer has one key, but this one has both \"group\" and \"cidr\"; write them as separate peers",
            ),
            (
                "{}",
                "[0]: an empty peer; write {group: NAME}, {cidr: CIDR} or {prefix_list: NAME}",
            ),
            (
                "{cidr: [10.0.0.0/8]}",
                "[0].cidr: invalid type: sequence, expected a string",
            ),
            ("{group: wbe}", "[0].group: unknown group \"wbe\""),
            ("{prefix_list: ofice}", "[0].prefix_list: unknown prefix list \"ofice\""),
        ] {
            assert_eq!(
                invalid(&with_rule(&format!("{{proto: tcp, from: [{written}]}}"))),
                format!("{at}{message}"),
                "peer {written}"
            );
        }
    }

    #[test]
    fn unknown_prefix_list_path() {
        let text = "version: 1\nprefix_lists:\n  office: [192.0.2.0/24]\ngroups:\n  db:\n  api:\n    egress:\n      - {proto: tcp, ports: 5432, to: [{group: db}]}\n      - {proto: udp, ports: 53, to: [host]}\n      - {proto: tcp, to: [{prefix_list: ofice}]}\n";
        assert_eq!(
            invalid(text),
            "test.yaml: groups.api.egress[2].to[0].prefix_list: unknown prefix list \"ofice\""
        );
    }

    #[test]
    fn groups_may_refer_to_later_groups() {
        let policy = parse("version: 1\ngroups:\n  a:\n    egress: [{proto: tcp, to: [{group: b}]}]\n  b:\n");
        assert_eq!(policy.groups["a"].egress[0].peers, [Peer::Group("b".into())]);
    }

    #[test]
    fn cidr_with_host_bits() {
        let text = "version: 1\ngroups:\n  web:\n    ingress:\n      - {proto: tcp, from: [{cidr: 10.0.0.1/8}]}\n";
        assert_eq!(
            invalid(text),
            "test.yaml: groups.web.ingress[0].from[0].cidr: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"
        );
        assert_eq!(
            invalid(&with_rule("{proto: tcp, from: [host, {cidr: \"2001:db8::1/32\"}]}")),
            "test.yaml: groups.api.ingress[0].from[1].cidr: 2001:db8::1/32 has host bits set; did you mean 2001:db8::/32?"
        );
    }

    #[test]
    fn bad_cidrs() {
        let at = "test.yaml: groups.api.ingress[0].from[0].cidr: ";
        for (written, message) in [
            ("10.0.0.0/33", "10.0.0.0/33: an IPv4 prefix is at most /32"),
            ("\"2001:db8::/129\"", "2001:db8::/129: an IPv6 prefix is at most /128"),
            ("10.0.0.0/999", "10.0.0.0/999: an IPv4 prefix is at most /32"),
            (
                "10.0.0/8",
                "\"10.0.0/8\" is not a CIDR (write it like 10.0.0.0/8 or 2001:db8::/32)",
            ),
            (
                "10.0.0.0/",
                "\"10.0.0.0/\" is not a CIDR (write it like 10.0.0.0/8 or 2001:db8::/32)",
            ),
            (
                "10.0.0.0/x",
                "\"10.0.0.0/x\" is not a CIDR (write it like 10.0.0.0/8 or 2001:db8::/32)",
            ),
            (
                "office",
                "\"office\" is not a CIDR (write it like 10.0.0.0/8 or 2001:db8::/32)",
            ),
        ] {
            assert_eq!(
                invalid(&with_rule(&format!("{{proto: tcp, from: [{{cidr: {written}}}]}}"))),
                format!("{at}{message}"),
                "cidr {written}"
            );
        }
    }

    // --- Prefix lists ----------------------------------------------------

    #[test]
    fn prefix_lists() {
        let policy =
            parse("version: 1\nprefix_lists:\n  office: [192.0.2.0/24, \"2001:db8::/32\", 198.51.100.7]\n  none: []\n");
        assert_eq!(
            policy.prefix_lists["office"],
            [net("192.0.2.0/24"), net("2001:db8::/32"), net("198.51.100.7/32")]
        );
        assert!(policy.prefix_lists["none"].is_empty());
    }

    #[test]
    fn prefix_list_entries_are_checked() {
        assert_eq!(
            invalid("version: 1\nprefix_lists:\n  office: [192.0.2.0/24, 198.51.100.1/24]\n"),
            "test.yaml: prefix_lists.office[1]: 198.51.100.1/24 has host bits set; did you mean 198.51.100.0/24?"
        );
        assert_eq!(
            invalid("version: 1\nprefix_lists:\n  office: [192.0.2.0/24, nope]\n"),
            "test.yaml: prefix_lists.office[1]: \"nope\" is not a CIDR (write it like 10.0.0.0/8 or 2001:db8::/32)"
        );
        assert_eq!(
            invalid("version: 1\nprefix_lists:\n  office: 192.0.2.0/24\n"),
            "test.yaml: prefix_lists.office: invalid type: string \"192.0.2.0/24\", expected a sequence"
        );
    }

    // --- Names -----------------------------------------------------------

    #[test]
    fn names() {
        let long = "a".repeat(63);
        let policy = parse(&format!(
            "version: 1\ngroups:\n  {long}:\n  A_b.c-9:\nprefix_lists:\n  x.y: []\nendpoints:\n  - {{name: {long}, addresses: []}}\n"
        ));
        assert!(policy.groups.contains_key(&long));
        assert!(policy.groups.contains_key("A_b.c-9"));
        assert!(policy.prefix_lists.contains_key("x.y"));

        let too_long = "a".repeat(64);
        assert_eq!(
            invalid(&format!("version: 1\ngroups:\n  {too_long}:\n")),
            format!("test.yaml: groups: group name \"{too_long}\" is longer than 63 characters")
        );
        assert_eq!(
            invalid("version: 1\ngroups:\n  \"web tier\":\n"),
            "test.yaml: groups: group name \"web tier\" contains ' '; use only letters, digits, '_', '.' and '-'"
        );
        assert_eq!(
            invalid("version: 1\ngroups:\n  \"\":\n"),
            "test.yaml: groups: group name must not be empty"
        );
        assert_eq!(
            invalid("version: 1\nprefix_lists:\n  \"office/1\": []\n"),
            "test.yaml: prefix_lists: prefix list name \"office/1\" contains '/'; use only letters, digits, '_', '.' and '-'"
        );
        assert_eq!(
            invalid(&with_endpoints(
                "  - {name: ok, addresses: []}\n  - {name: \"wéb\", addresses: []}\n"
            )),
            "test.yaml: endpoints[1].name: endpoint name \"wéb\" contains 'é'; use only letters, digits, '_', '.' and '-'"
        );
        assert_eq!(
            invalid(&with_endpoints("  - {name: \"\", addresses: []}\n")),
            "test.yaml: endpoints[0].name: endpoint name must not be empty"
        );
    }

    // --- Endpoints -------------------------------------------------------

    #[test]
    fn endpoint_parts() {
        let policy = parse(&with_endpoints(
            "  - {name: remote, node: host-c, addresses: [\"2001:db8::5\"]}\n  - {name: bare, addresses: []}\n",
        ));
        assert_eq!(
            policy.endpoints,
            [
                Endpoint {
                    name: "remote".into(),
                    node: Some("host-c".into()),
                    interface: None,
                    mac: None,
                    addresses: vec![ip("2001:db8::5")],
                    groups: vec![],
                },
                Endpoint {
                    name: "bare".into(),
                    node: None,
                    interface: None,
                    mac: None,
                    addresses: vec![],
                    groups: vec![],
                },
            ]
        );
        assert_eq!(
            invalid(&with_endpoints("  - {name: a}\n")),
            "test.yaml: endpoints[0]: missing field \"addresses\""
        );
        assert_eq!(
            invalid(&with_endpoints("  - {name: a, node: \"\", addresses: []}\n")),
            "test.yaml: endpoints[0].node: must not be empty; leave node out for an endpoint on whichever host reads the file"
        );
    }

    #[test]
    fn endpoint_names_are_unique() {
        assert_eq!(
            invalid(&with_endpoints(
                "  - {name: a, addresses: []}\n  - {name: b, addresses: []}\n  - {name: a, addresses: []}\n"
            )),
            "test.yaml: endpoints[2].name: endpoint name \"a\" is already used by endpoints[0]"
        );
    }

    #[test]
    fn endpoint_groups_must_exist() {
        let text = "version: 1\ngroups:\n  web:\n  db:\nendpoints:\n  - {name: web-1, addresses: [10.10.0.11], groups: [web]}\n  - {name: db-1, addresses: [10.20.0.5], groups: [dbb]}\n";
        assert_eq!(
            invalid(text),
            "test.yaml: endpoints[1].groups[0]: unknown group \"dbb\""
        );
        assert_eq!(
            invalid(&with_endpoints(
                "  - {name: a, addresses: [], groups: [web, db, web]}\n"
            )),
            "test.yaml: endpoints[0].groups[2]: group \"web\" is listed twice"
        );
    }

    #[test]
    fn an_endpoint_has_at_most_eight_groups() {
        let names: Vec<String> = (0..9).map(|i| format!("g{i}")).collect();
        let groups: String = names.iter().map(|n| format!("  {n}:\n")).collect();
        let text = |n: usize| {
            format!(
                "version: 1\ngroups:\n{groups}endpoints:\n  - {{name: a, addresses: [10.0.0.1], groups: [{}]}}\n",
                names[..n].join(", ")
            )
        };
        assert!(parse_str(&text(8), "test.yaml").is_ok());
        assert_eq!(
            invalid(&text(9)),
            "test.yaml: endpoints[0].groups: 9 groups, more than the 8 an endpoint may have"
        );
    }

    #[test]
    fn addresses_belong_to_one_endpoint() {
        assert_eq!(
            invalid(&with_endpoints(
                "  - {name: web-1, addresses: [10.0.0.1]}\n  - {name: web-2, addresses: [10.0.0.2, 10.0.0.1]}\n"
            )),
            "test.yaml: endpoints[1].addresses[1]: 10.0.0.1 of endpoint \"web-2\" already belongs to endpoint \"web-1\"; an address may belong to one endpoint only"
        );
        // The same address however it is written.
        assert_eq!(
            invalid(&with_endpoints(
                "  - {name: a, addresses: [\"fd00::1\"]}\n  - {name: b, addresses: [\"fd00:0:0::0001\"]}\n"
            )),
            "test.yaml: endpoints[1].addresses[0]: fd00::1 of endpoint \"b\" already belongs to endpoint \"a\"; an address may belong to one endpoint only"
        );
        assert_eq!(
            invalid(&with_endpoints("  - {name: a, addresses: [10.0.0.1, 10.0.0.1]}\n")),
            "test.yaml: endpoints[0].addresses[1]: 10.0.0.1 is listed twice"
        );
    }

    #[test]
    fn bad_addresses() {
        let at = "test.yaml: endpoints[0].addresses[0]: ";
        for (written, message) in [
            (
                "0.0.0.0",
                "0.0.0.0 is the unspecified address, not an endpoint's address",
            ),
            ("\"::\"", ":: is the unspecified address, not an endpoint's address"),
            (
                "224.0.0.1",
                "224.0.0.1 is a multicast address, not an endpoint's address",
            ),
            (
                "\"ff02::1\"",
                "ff02::1 is a multicast address, not an endpoint's address",
            ),
            (
                "\"fe80::1\"",
                "fe80::1 is an IPv6 link-local address (fe80::/10), which is not unique across links; list the endpoint's global or unique local addresses",
            ),
            (
                "\"febf::1\"",
                "febf::1 is an IPv6 link-local address (fe80::/10), which is not unique across links; list the endpoint's global or unique local addresses",
            ),
            (
                "\"::ffff:10.0.0.1\"",
                "::ffff:10.0.0.1 is an IPv4-mapped IPv6 address; write it as 10.0.0.1",
            ),
            (
                "10.0.0.1/32",
                "10.0.0.1/32 is not an address; write it without a prefix length",
            ),
            ("web-1", "\"web-1\" is not an IP address"),
            ("10.0.0.256", "\"10.0.0.256\" is not an IP address"),
        ] {
            assert_eq!(
                invalid(&with_endpoints(&format!("  - {{name: a, addresses: [{written}]}}\n"))),
                format!("{at}{message}"),
                "address {written}"
            );
        }
        // Just outside fe80::/10.
        let policy = parse(&with_endpoints("  - {name: a, addresses: [\"fec0::1\"]}\n"));
        assert_eq!(policy.endpoints[0].addresses, [ip("fec0::1")]);
    }

    #[test]
    fn interface_names() {
        let policy = parse(&with_endpoints(
            "  - {name: a, interface: abcdefghijklmno, addresses: []}\n",
        ));
        assert_eq!(policy.endpoints[0].interface.as_deref(), Some("abcdefghijklmno"));
        let at = "test.yaml: endpoints[0].interface: ";
        for (written, message) in [
            (
                "abcdefghijklmnop",
                "interface name \"abcdefghijklmnop\" is longer than 15 bytes, the kernel's limit",
            ),
            ("\"\"", "interface name must not be empty"),
            ("\"hw/1\"", "interface name \"hw/1\" contains '/'"),
            ("\"hw 1\"", "interface name \"hw 1\" contains ' '"),
            ("\"hw\\t1\"", "interface name \"hw\\t1\" contains '\\t'"),
            ("\"hw:1\"", "interface name \"hw:1\" contains ':'"),
            ("\"..\"", "\"..\" is not a valid interface name"),
        ] {
            assert_eq!(
                invalid(&with_endpoints(&format!(
                    "  - {{name: a, interface: {written}, addresses: []}}\n"
                ))),
                format!("{at}{message}"),
                "interface {written}"
            );
        }
    }

    #[test]
    fn endpoint_macs() {
        let policy = parse(&with_endpoints(
            "  - {name: a, interface: hw-a, mac: 02:AA:00:00:00:01, addresses: []}\n  - {name: b, interface: hw-b, mac: \"10:20:30:40:50:60\", addresses: []}\n  - {name: c, interface: hw-c, addresses: []}\n  - {name: d, interface: hw-d, mac: 12:34:56:07:08:09, addresses: []}\n",
        ));
        let macs: Vec<_> = policy.endpoints.iter().map(|e| e.mac).collect();
        assert_eq!(
            macs,
            [
                Some([0x02, 0xaa, 0, 0, 0, 1]),
                Some([0x10, 0x20, 0x30, 0x40, 0x50, 0x60]),
                None,
                Some([0x12, 0x34, 0x56, 0x07, 0x08, 0x09]),
            ]
        );
    }

    #[test]
    fn bad_macs() {
        let at = "test.yaml: endpoints[0].mac: ";
        let form = "is not a MAC address; write six hex pairs separated by ':', like \"02:aa:00:00:00:01\"";
        for (written, message) in [
            (
                "\"02:aa:00:00:00\"",
                format!("\"02:aa:00:00:00\" of endpoint \"a\" {form}"),
            ),
            (
                "\"02:aa:00:00:00:01:02\"",
                format!("\"02:aa:00:00:00:01:02\" of endpoint \"a\" {form}"),
            ),
            (
                "\"02-aa-00-00-00-01\"",
                format!("\"02-aa-00-00-00-01\" of endpoint \"a\" {form}"),
            ),
            (
                "\"02:aa:0:00:00:01\"",
                format!("\"02:aa:0:00:00:01\" of endpoint \"a\" {form}"),
            ),
            (
                "\"02:aa:+0:00:00:01\"",
                format!("\"02:aa:+0:00:00:01\" of endpoint \"a\" {form}"),
            ),
            (
                "\"02:aa:g0:00:00:01\"",
                format!("\"02:aa:g0:00:00:01\" of endpoint \"a\" {form}"),
            ),
            (
                "\" 02:aa:00:00:00:01\"",
                format!("\" 02:aa:00:00:00:01\" of endpoint \"a\" {form}"),
            ),
            (
                "\"0x02aa00000001\"",
                format!("\"0x02aa00000001\" of endpoint \"a\" {form}"),
            ),
            ("\"\"", format!("\"\" of endpoint \"a\" {form}")),
            (
                "\"00:00:00:00:00:00\"",
                "00:00:00:00:00:00 of endpoint \"a\" is all zeros, not an endpoint's MAC".to_string(),
            ),
            (
                "\"01:00:5E:00:00:01\"",
                "01:00:5e:00:00:01 of endpoint \"a\" is a multicast (or broadcast) address, not an endpoint's MAC"
                    .to_string(),
            ),
            (
                "\"ff:ff:ff:ff:ff:ff\"",
                "ff:ff:ff:ff:ff:ff of endpoint \"a\" is a multicast (or broadcast) address, not an endpoint's MAC"
                    .to_string(),
            ),
        ] {
            assert_eq!(
                invalid(&with_endpoints(&format!(
                    "  - {{name: a, interface: hw-a, mac: {written}, addresses: []}}\n"
                ))),
                format!("{at}{message}"),
                "mac {written}"
            );
        }
        assert_eq!(
            invalid(&with_endpoints(
                "  - {name: a, interface: hw-a, mac: 5, addresses: []}\n"
            )),
            "test.yaml: endpoints[0].mac: invalid type: integer 5, expected a string"
        );
        assert_eq!(
            invalid(&with_endpoints(
                "  - {name: a, mac: \"02:aa:00:00:00:01\", addresses: []}\n"
            )),
            "test.yaml: endpoints[0].mac: endpoint \"a\" has no interface, so it is enforced nowhere and has no use for a mac"
        );
    }

    #[test]
    fn macs_are_unique_per_node() {
        // Different nodes: fine, and so is the same MAC written otherwise
        // on another node.
        parse(&with_endpoints(
            "  - {name: a, node: n1, interface: hw0, mac: \"02:aa:00:00:00:01\", addresses: []}\n  - {name: b, node: n2, interface: hw0, mac: \"02:AA:00:00:00:01\", addresses: []}\n",
        ));
        assert_eq!(
            invalid(&with_endpoints(
                "  - {name: a, interface: hw0, mac: \"02:aa:00:00:00:01\", addresses: []}\n  - {name: b, interface: hw1, mac: \"02:AA:00:00:00:01\", addresses: []}\n"
            )),
            "test.yaml: endpoints[1].mac: 02:aa:00:00:00:01 of endpoint \"b\" is already the MAC of endpoint \"a\"; endpoints on one host need MACs of their own"
        );
        assert_eq!(
            invalid(&with_endpoints(
                "  - {name: a, node: n1, interface: hw0, mac: \"02:aa:00:00:00:01\", addresses: []}\n  - {name: b, interface: hw1, mac: \"02:aa:00:00:00:01\", addresses: []}\n"
            )),
            "test.yaml: endpoints[1].mac: 02:aa:00:00:00:01 of endpoint \"b\" is already the MAC of endpoint \"a\" on node \"n1\"; endpoints on one host need MACs of their own"
        );
    }

    #[test]
    fn interfaces_are_unique_per_node() {
        // Different nodes, or no interface at all: fine.
        parse(&with_endpoints(
            "  - {name: a, node: n1, interface: hw0, addresses: []}\n  - {name: b, node: n2, interface: hw0, addresses: []}\n  - {name: c, addresses: []}\n  - {name: d, addresses: []}\n",
        ));
        assert_eq!(
            invalid(&with_endpoints(
                "  - {name: a, interface: hw0, addresses: []}\n  - {name: b, interface: hw0, addresses: []}\n"
            )),
            "test.yaml: endpoints[1].interface: interface \"hw0\" is already used by endpoint \"a\""
        );
        assert_eq!(
            invalid(&with_endpoints(
                "  - {name: a, node: n1, interface: hw0, addresses: []}\n  - {name: b, node: n1, interface: hw0, addresses: []}\n"
            )),
            "test.yaml: endpoints[1].interface: interface \"hw0\" is already used by endpoint \"a\" on node \"n1\""
        );
        // An endpoint without a node is local on n1 too.
        assert_eq!(
            invalid(&with_endpoints(
                "  - {name: a, node: n1, interface: hw0, addresses: []}\n  - {name: b, interface: hw0, addresses: []}\n"
            )),
            "test.yaml: endpoints[1].interface: interface \"hw0\" is already used by endpoint \"a\" on node \"n1\""
        );
        assert_eq!(
            invalid(&with_endpoints(
                "  - {name: a, interface: hw0, addresses: []}\n  - {name: b, node: n1, interface: hw0, addresses: []}\n"
            )),
            "test.yaml: endpoints[1].interface: interface \"hw0\" is already used by endpoint \"a\" on node \"n1\""
        );
    }

    // --- Settings --------------------------------------------------------

    fn timeouts(conntrack: &str) -> Result<ConntrackTimeouts, String> {
        parse_str(
            &format!("version: 1\nsettings:\n  conntrack: {conntrack}\n"),
            "test.yaml",
        )
        .map(|policy| policy.settings.conntrack)
        .map_err(|err| err.to_string())
    }

    #[test]
    fn durations() {
        for (written, seconds) in [
            ("1s", 1),
            ("30s", 30),
            ("5m", 300),
            ("2h", 7_200),
            ("5d", 432_000),
            ("365d", 31_536_000),
            ("0030s", 30),
        ] {
            let parsed = parse_duration(&Scalar::Str(written.into()));
            assert_eq!(parsed, Ok(Duration::from_secs(seconds)), "{written}");
        }
    }

    #[test]
    fn bad_durations() {
        let hint = "is not a duration (write it like 30s, 5m, 2h or 5d)";
        for written in [
            "30", "s", "", "5x", "-5s", "+5s", "5 s", " 5s", "5S", "1.5h", "5ms", "5sé", "é",
        ] {
            assert_eq!(
                parse_duration(&Scalar::Str(written.into())),
                Err(format!("{written:?} {hint}"))
            );
        }
        assert_eq!(parse_duration(&Scalar::Int(30)), Err(format!("30 {hint}")));
        assert_eq!(
            parse_duration(&Scalar::Str("0s".into())),
            Err("\"0s\" is zero; a timeout must be positive".into())
        );
        assert_eq!(
            parse_duration(&Scalar::Str("0d".into())),
            Err("\"0d\" is zero; a timeout must be positive".into())
        );
        for written in ["366d", "31536001s", "99999999999999999999s", "999999999999999999d"] {
            assert_eq!(
                parse_duration(&Scalar::Str(written.into())),
                Err(format!("{written:?} is longer than 365d, the longest timeout"))
            );
        }
    }

    #[test]
    fn settings_defaults_and_overrides() {
        assert_eq!(timeouts("{}"), Ok(ConntrackTimeouts::default()));
        assert_eq!(
            timeouts("{udp: 1m, other: 1h}"),
            Ok(ConntrackTimeouts {
                udp: Duration::from_secs(60),
                other: Duration::from_secs(3_600),
                ..ConntrackTimeouts::default()
            })
        );
        assert_eq!(
            timeouts(
                "{tcp_established: 1d, tcp_other: 2m, udp: 3s, udp_stream: 4m, icmp: 5s, other: 6h, max_per_endpoint: 7, max_inbound_per_endpoint: 8, midstream_window: 10m}"
            ),
            Ok(ConntrackTimeouts {
                tcp_established: Duration::from_secs(86_400),
                tcp_other: Duration::from_secs(120),
                udp: Duration::from_secs(3),
                udp_stream: Duration::from_secs(240),
                icmp: Duration::from_secs(5),
                other: Duration::from_secs(21_600),
                max_per_endpoint: 7,
                max_inbound_per_endpoint: 8,
                midstream: Midstream::Startup(Duration::from_secs(600)),
            })
        );
        for (choice, want) in [
            ("allow", Midstream::Allow),
            ("deny", Midstream::Deny),
            ("startup", Midstream::default()),
        ] {
            assert_eq!(
                timeouts(&format!("{{midstream: {choice}}}")).map(|c| c.midstream),
                Ok(want)
            );
        }
        assert_eq!(
            timeouts("{midstream: sometimes}"),
            Err(
                "test.yaml: settings.conntrack.midstream: \"sometimes\" is not a choice; write allow, startup or deny"
                    .into()
            )
        );
        assert_eq!(
            timeouts("{midstream: deny, midstream_window: 5m}"),
            Err("test.yaml: settings.conntrack.midstream_window: applies only to midstream: startup, not deny".into())
        );
        assert!(timeouts("{max_inbound_per_endpoint: 0}").is_err());
        assert_eq!(parse("version: 1\nsettings: {}\n").settings, Settings::default());
    }

    #[test]
    fn flow_cap_must_fit_the_table() {
        assert_eq!(
            timeouts("{max_per_endpoint: 0}"),
            Err("test.yaml: settings.conntrack.max_per_endpoint: 0 is not between 1 and 131072 (the conntrack table's size)".into())
        );
        assert!(timeouts("{max_per_endpoint: 9999999}").is_err());
    }

    #[test]
    fn settings_errors_name_the_key() {
        assert_eq!(
            timeouts("{udp: \"30\"}"),
            Err("test.yaml: settings.conntrack.udp: \"30\" is not a duration (write it like 30s, 5m, 2h or 5d)".into())
        );
        assert_eq!(
            timeouts("{udp: 30}"),
            Err("test.yaml: settings.conntrack.udp: 30 is not a duration (write it like 30s, 5m, 2h or 5d)".into())
        );
        assert_eq!(
            timeouts("{tcp_other: 0m}"),
            Err("test.yaml: settings.conntrack.tcp_other: \"0m\" is zero; a timeout must be positive".into())
        );
    }

    // --- Syntax, files and the error type ---------------------------------

    #[test]
    fn syntax_errors_have_line_and_column() {
        let err = parse_str("version: 1\ngroups:\n  web: [1, 2\n", "p.yaml").unwrap_err();
        assert!(matches!(err, PolicyError::Syntax { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.starts_with("p.yaml: invalid YAML: "), "{message}");
        assert!(message.contains("line 4 column 1"), "{message}");
        assert_eq!(err.field_path(), None);

        let err = parse_str("version: 1\n\tgroups: {}\n", "p.yaml").unwrap_err();
        assert!(matches!(err, PolicyError::Syntax { .. }), "{err:?}");
        assert!(err.to_string().contains("line 2 column 1"), "{err}");
    }

    #[test]
    fn duplicate_keys_are_syntax_errors() {
        let err = parse_str("version: 1\ngroups:\n  web: {}\n  web: {}\n", "p.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.yaml: invalid YAML: groups: duplicate entry with key \"web\" at line 3 column 3"
        );
    }

    #[test]
    fn several_documents_are_an_error() {
        let err = parse_str("version: 1\n---\nversion: 1\n", "p.yaml").unwrap_err();
        assert!(matches!(err, PolicyError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn field_path_helper() {
        let err = parse_str(&with_rule("{proto: tcp, ports: 70000, from: [host]}"), "p").unwrap_err();
        assert_eq!(err.field_path(), Some("groups.api.ingress[0].ports"));
        match &err {
            PolicyError::Invalid { origin, path, message } => {
                assert_eq!(origin, "p");
                assert_eq!(path, "groups.api.ingress[0].ports");
                assert_eq!(message, "70000 is not a port");
            }
            other => panic!("{other:?}"),
        }
        let err = parse_str("grops: 1\nversion: 1\n", "p").unwrap_err();
        assert_eq!(err.field_path(), None);
    }

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("hostwall-parse-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn load_file_reads_and_names_the_file() {
        let path = temp_file("good.yaml", EXAMPLE.as_bytes());
        assert_eq!(load_file(&path).unwrap(), example_model());
        std::fs::remove_file(&path).unwrap();

        let path = temp_file(
            "bad.yaml",
            b"version: 1\ngroups:\n  web:\n    ingress: [{proto: tcp, ports: 70000, from: [host]}]\n",
        );
        let err = load_file(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: groups.web.ingress[0].ports: 70000 is not a port", path.display())
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn load_file_errors() {
        let missing = std::env::temp_dir().join("hostwall-parse-no-such-file.yaml");
        let err = load_file(&missing).unwrap_err();
        match &err {
            PolicyError::Io { path, source } => {
                assert_eq!(path, &missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!("{}: cannot read the policy file", missing.display())
        );
        assert!(std::error::Error::source(&err).is_some());

        let path = temp_file("latin1.yaml", b"version: 1\n# caf\xe9\n");
        let err = load_file(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: not UTF-8 text: an invalid byte at line 2 column 6 (offset 16)",
                path.display()
            )
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn requote_rewrites_backticks() {
        assert_eq!(
            requote("unknown field `prot`, expected one of `proto`, `ports`"),
            "unknown field \"prot\", expected one of \"proto\", \"ports\""
        );
        assert_eq!(
            requote("invalid type: integer `7`, expected a string"),
            "invalid type: integer 7, expected a string"
        );
        assert_eq!(
            requote("unknown field `inf`, expected `-1`"),
            "unknown field \"inf\", expected -1"
        );
        assert_eq!(requote("no quotes"), "no quotes");
    }
}
