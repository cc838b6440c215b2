//! The validated policy: what the control file means, independent of how it
//! was written. Everything downstream (the compiler, the CLI) works on these
//! types only.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

/// A whole control file, validated: every group and prefix-list reference
/// resolves, every CIDR is canonical, every address belongs to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub prefix_lists: BTreeMap<String, Vec<IpNet>>,
    pub groups: BTreeMap<String, Group>,
    pub endpoints: Vec<Endpoint>,
    pub settings: Settings,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    pub description: Option<String>,
    /// Traffic into members of this group.
    pub ingress: Vec<Rule>,
    /// Traffic from members of this group.
    pub egress: Vec<Rule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// One allow rule. `peers` are the sources (ingress) or destinations
/// (egress).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub proto: Proto,
    /// Only for TCP, UDP and SCTP; `None` = every port.
    pub ports: Option<PortRange>,
    /// Only for ICMP and ICMPv6; `None` = every type and code.
    pub icmp: Option<IcmpMatch>,
    pub peers: Vec<Peer>,
    pub description: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// Every protocol, every port.
    All,
    /// An IP protocol number (6 = TCP, 17 = UDP, 1 = ICMP, 58 = ICMPv6, 132 = SCTP).
    Number(u8),
}

impl Proto {
    pub const TCP: Proto = Proto::Number(6);
    pub const UDP: Proto = Proto::Number(17);
    pub const ICMP: Proto = Proto::Number(1);
    pub const ICMPV6: Proto = Proto::Number(58);
    pub const SCTP: Proto = Proto::Number(132);

    /// Whether rules of this protocol may carry `ports`.
    pub fn has_ports(self) -> bool {
        matches!(self, Proto::Number(6 | 17 | 132))
    }

    /// Whether rules of this protocol may carry `icmp`.
    pub fn is_icmp(self) -> bool {
        matches!(self, Proto::Number(1 | 58))
    }

    pub fn name(self) -> String {
        match self {
            Proto::All => "all".into(),
            Proto::Number(6) => "tcp".into(),
            Proto::Number(17) => "udp".into(),
            Proto::Number(1) => "icmp".into(),
            Proto::Number(58) => "icmpv6".into(),
            Proto::Number(132) => "sctp".into(),
            Proto::Number(n) => n.to_string(),
        }
    }
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    pub ty: u8,
    /// `None` = every code of that type.
    pub code: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// The addresses of every endpoint in the group, local or remote.
    Group(String),
    /// Any address in the CIDR, whoever owns it.
    Cidr(IpNet),
    /// Any address in any CIDR of the prefix list.
    PrefixList(String),
    /// The host's own network stack.
    Host,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    /// The host it runs on; `None` = whichever host reads the file.
    pub node: Option<String>,
    /// The host-side interface of the container's veth pair.
    pub interface: Option<String>,
    /// The Ethernet address every frame from the endpoint must carry; when
    /// `None`, the agent reads it from the container's side of the veth
    /// pair. A unicast address, never all zeros.
    pub mac: Option<[u8; 6]>,
    pub addresses: Vec<IpAddr>,
    pub groups: Vec<String>,
}

impl Endpoint {
    /// Local endpoints are enforced on this host; the others are known by
    /// their addresses only.
    pub fn is_local(&self, node: &str) -> bool {
        self.interface.is_some() && self.node.as_deref().is_none_or(|n| n == node)
    }
}

/// An Ethernet address as the control file and `hostwall status` write it:
/// six lowercase hex pairs separated by `:`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub conntrack: ConntrackTimeouts,
    /// What happens to tracked flows a new policy no longer allows.
    pub on_policy_change: OnPolicyChange,
    /// Interfaces that get no network unless they are endpoints.
    pub quarantine: Option<Quarantine>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnPolicyChange {
    /// Tracked flows continue until they time out (as AWS security groups).
    #[default]
    Keep,
    /// Tracked flows the new policy does not allow are ended.
    Revalidate,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantine {
    /// A glob (`*`, `?`) over interface names.
    pub interfaces: String,
}

impl Quarantine {
    pub fn matches(&self, name: &str) -> bool {
        glob(self.interfaces.as_bytes(), name.as_bytes())
    }
}

/// Whether `name` matches `pattern` (`*` any run, `?` any one byte). One
/// pass over the name, going back only to just after the last `*`: at most
/// `pattern.len() × name.len()` steps, however many stars.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // The last star seen and the name position its run would end at next.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(c) if *c == b'?' || *c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                // The star takes one byte more.
                Some((sp, sn)) => {
                    star = Some((sp, sn + 1));
                    p = sp + 1;
                    n = sn + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|c| *c == b'*')
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConntrackTimeouts {
    pub tcp_established: Duration,
    pub tcp_other: Duration,
    pub udp: Duration,
    pub udp_stream: Duration,
    pub icmp: Duration,
    pub other: Duration,
    /// Tracked flows one local endpoint may have opened at once.
    pub max_per_endpoint: u32,
    /// Tracked flows others (the host, remote peers) may have opened
    /// towards one local endpoint at once.
    pub max_inbound_per_endpoint: u32,
    /// When a TCP packet without SYN that the rules deny, but whose reverse
    /// flow they allow, is tracked as a reply of that flow.
    pub midstream: Midstream,
}

/// `settings.conntrack.midstream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Midstream {
    /// Always.
    Allow,
    /// During this long after the agent starts (`startup`, with
    /// `midstream_window`), so that connections that predate it survive.
    Startup(Duration),
    /// Never.
    Deny,
}

impl Midstream {
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
}

impl Default for Midstream {
    fn default() -> Self {
        Midstream::Startup(Midstream::DEFAULT_WINDOW)
    }
}

impl Default for ConntrackTimeouts {
    fn default() -> Self {
        ConntrackTimeouts {
            tcp_established: Duration::from_secs(432_000),
            tcp_other: Duration::from_secs(120),
            udp: Duration::from_secs(30),
            udp_stream: Duration::from_secs(180),
            icmp: Duration::from_secs(30),
            other: Duration::from_secs(600),
            max_per_endpoint: 32_768,
            max_inbound_per_endpoint: 32_768,
            midstream: Midstream::default(),
        }
    }
}
