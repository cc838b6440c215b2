//! Keys and values of the policy maps.
//!
//! Every policy map exists twice (slot 0 and slot 1). The agent fills the
//! inactive slot, then flips `HW_ACTIVE[0]`; a program reads the active slot
//! once per packet, so each packet is judged by exactly one policy generation.

use core::mem::size_of;

/// Direction of a rule, seen from the local endpoint that owns it.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Groups one endpoint may belong to at most (the validator refuses more):
/// a new flow makes a fixed number of policy lookups per group of the
/// deciding endpoint.
pub const MAX_GROUPS: usize = 8;

/// Labels one peer entry holds at most: the groups named as peers that the
/// address's endpoint belongs to, and `host`.
pub const MAX_PEER_LABELS: usize = MAX_GROUPS + 1;

/// A label's kind, in its top four bits; the rest is an id.
pub const LABEL_KIND_MASK: u32 = 0xf000_0000;
/// A group, by its group id.
pub const LABEL_GROUP: u32 = 0x1000_0000;
/// The host's own addresses (the `host` peer).
pub const LABEL_HOST: u32 = 0x2000_0000;

/// Bits of a `PolicyKey` that are always compared exactly: group, label
/// and direction. A rule for every protocol is an entry of exactly these
/// bits; one for a protocol adds `foreign` and `proto` (16 bits), and its
/// port range 0..=16 prefix bits on top.
pub const POLICY_FIXED_BITS: u32 = 9 * 8;
/// Prefix bits of an entry for one protocol and every port.
pub const POLICY_PROTO_BITS: u32 = POLICY_FIXED_BITS + 16;

/// Key of the policy LPM trie (`HW_POLICY_{0,1}`): one entry per rule, per
/// group or `host` among its peers and per prefix-aligned block of its
/// port range.
///
/// `group` is the group that holds the rule, `label` one of its peers
/// (`LABEL_*`). `foreign` is 0 in every entry; a packet's key sets it for
/// ICMP of the other IP family (ICMPv6 in IPv4, ICMP in IPv6), which only
/// rules for every protocol match. `port` is big-endian so that a port
/// range splits into prefix-aligned blocks; for ICMP it holds
/// `type << 8 | code`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub group: u32,
    pub label: u32,
    pub dir: u8,
    pub foreign: u8,
    pub proto: u8,
    pub port_be: [u8; 2],
    /// Beyond every prefix; always zero.
    pub _tail: [u8; 3],
}
const _: () = assert!(size_of::<PolicyKey>() == 16);

impl PolicyKey {
    /// The key of an entry: `foreign` 0, `port` the block's start.
    pub const fn entry(group: u32, label: u32, dir: u8, proto: u8, port: u16) -> PolicyKey {
        PolicyKey {
            group,
            label,
            dir,
            foreign: 0,
            proto,
            port_be: port.to_be_bytes(),
            _tail: [0; 3],
        }
    }
}

/// ICMP of the other IP family (ICMPv6 in IPv4, ICMP in IPv6): only rules
/// for every protocol match it (`PolicyKey::foreign`).
#[inline(always)]
pub fn foreign_icmp(family: u8, proto: u8) -> bool {
    (family == FAMILY_V4 && proto == 58) || (family == FAMILY_V6 && proto == 1)
}
const _: () = assert!(core::mem::offset_of!(PolicyKey, foreign) * 8 == POLICY_FIXED_BITS as usize);
const _: () = assert!(core::mem::offset_of!(PolicyKey, port_be) * 8 == POLICY_PROTO_BITS as usize);

/// Tiers of the CIDR tries (`HW_CIDR4_{0,1}`, `HW_CIDR6_{0,1}`), in
/// `CidrKey::tier`: rules whose peers are CIDRs or prefix lists, by the
/// shape of their protocol and ports.
///
/// One port, or one ICMP type and code: the key holds it, and the longest
/// match over the address settles the rest.
pub const TIER_EXACT: u8 = 1;
/// Every protocol: the key holds no protocol or port.
pub const TIER_ANY: u8 = 2;
/// Any other range of one protocol: the key holds the protocol, and the
/// entry of a CIDR lists the port runs of its own rules and of the CIDRs
/// around it (`CidrValue`). Tiers above it continue a list that did not
/// fit (`CidrValue::next`).
pub const TIER_RANGES: u8 = 3;
/// Entries a range walk visits at most: the compiler refuses a policy
/// whose runs along one chain of CIDRs need more.
pub const MAX_RANGE_STEPS: usize = 8;
/// Port runs one range entry holds.
pub const MAX_CIDR_RUNS: usize = 8;

/// Bits of a `CidrKey` compared exactly, before the address: group, tier,
/// direction, `foreign`, protocol and port (zero where the tier has none).
pub const CIDR_FIXED_BITS: u32 = 10 * 8;

/// Key of a CIDR trie: `N` is 4 (IPv4) or 16 (IPv6). Entries are
/// `CIDR_FIXED_BITS` plus the CIDR's prefix length long; `foreign` is 0
/// in every entry and in a key of `TIER_ANY` (see `PolicyKey`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrKey<const N: usize> {
    pub group: u32,
    pub tier: u8,
    pub dir: u8,
    pub foreign: u8,
    pub proto: u8,
    pub port_be: [u8; 2],
    pub addr: [u8; N],
    /// Beyond every prefix; always zero.
    pub _tail: [u8; 2],
}
const _: () = assert!(size_of::<CidrKey<4>>() == 16);
const _: () = assert!(size_of::<CidrKey<16>>() == 28);
const _: () = assert!(core::mem::offset_of!(CidrKey<4>, addr) * 8 == CIDR_FIXED_BITS as usize);

impl<const N: usize> CidrKey<N> {
    pub const fn entry(group: u32, tier: u8, dir: u8, proto: u8, port: u16, addr: [u8; N]) -> CidrKey<N> {
        CidrKey {
            group,
            tier,
            dir,
            foreign: 0,
            proto,
            port_be: port.to_be_bytes(),
            addr,
            _tail: [0; 2],
        }
    }
}

/// An inclusive run of the port field and the rule that allows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortRun {
    pub first: u16,
    pub last: u16,
    pub rule: u32,
}

/// Value of a CIDR trie. `TIER_EXACT` and `TIER_ANY` entries give `rule`;
/// a range entry gives its runs (disjoint; the list ends at the first
/// whose `rule` is 0, rule ids start at 1), and `next`, when not 0, the
/// entry that holds the rest: `tier << 8 | (prefix length of its address +
/// 1)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CidrValue {
    pub rule: u32,
    pub next: u32,
    pub runs: [PortRun; MAX_CIDR_RUNS],
}
const _: () = assert!(size_of::<CidrValue>() == 8 + 8 * MAX_CIDR_RUNS);

/// Value of the policy trie: the rule that allows the matching packets,
/// an index into `HW_RULE_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyValue {
    pub rule: u32,
}
const _: () = assert!(size_of::<PolicyValue>() == 4);

/// What an address is, from the peer LPM tries (`HW_PEER4_{0,1}`,
/// `HW_PEER6_{0,1}`): the labels rules may name it by (the first
/// `n_labels`, the rest 0), and whether it is a local endpoint's
/// (`local_endpoint`, its endpoint id, and `groups`, that endpoint's) or
/// the host's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub local_endpoint: u32,
    pub flags: u32,
    pub n_labels: u32,
    pub labels: [u32; MAX_PEER_LABELS],
    pub _pad: u32,
    pub groups: Groups,
}
const _: () = assert!(size_of::<PeerInfo>() == 16 + 4 * MAX_PEER_LABELS + size_of::<Groups>());

impl PeerInfo {
    /// An address no prefix covers: no rule matches it.
    pub const NONE: PeerInfo = PeerInfo {
        local_endpoint: 0,
        flags: 0,
        n_labels: 0,
        labels: [0; MAX_PEER_LABELS],
        _pad: 0,
        groups: Groups::NONE,
    };
}

/// `PeerInfo::flags`: the address is one of the host's own.
pub const PEER_HOST: u32 = 1;

/// A local endpoint's groups, in its interface's entry (`HW_IFACE_{0,1}`)
/// and in the peer entries of its addresses: the groups whose rules judge
/// its traffic, at most `MAX_GROUPS` (the first `n`, the rest 0; group ids
/// start at 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Groups {
    pub n: u32,
    pub ids: [u32; MAX_GROUPS],
}
const _: () = assert!(size_of::<Groups>() == 36);

impl Groups {
    pub const NONE: Groups = Groups {
        n: 0,
        ids: [0; MAX_GROUPS],
    };
}

/// Key of the source guard (`HW_SRC_{0,1}`): an address an endpoint may use
/// as its source, on its interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SrcKey {
    pub ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<SrcKey>() == 24);

/// A local endpoint as its interface sees it (`HW_IFACE_{0,1}`, keyed by
/// ifindex): its id and MAC, and the groups whose rules judge its traffic.
///
/// `mac` is the Ethernet address of the container's side of the
/// interface, fixed when the endpoint is attached: every frame from the
/// endpoint, and every link-layer address its ARP and neighbour discovery
/// claim, must carry it. All zeros means the endpoint has no usable MAC
/// (unknown, or one the host or another endpoint uses): all its frames are
/// dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub endpoint: u32,
    /// Zero.
    pub _reserved: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    pub groups: Groups,
}
const _: () = assert!(size_of::<EndpointInfo>() == 16 + size_of::<Groups>());

impl EndpointInfo {
    /// An interface's entry without groups (a quarantined one's, say).
    pub const fn new(endpoint: u32, mac: [u8; 6]) -> EndpointInfo {
        EndpointInfo {
            endpoint,
            _reserved: 0,
            mac,
            _pad: [0; 2],
            groups: Groups::NONE,
        }
    }
}

/// Key of `HW_LOCAL_{0,1}`: an address that belongs to this host, the
/// host's own or a local endpoint's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LocalKey {
    /// `FAMILY_V4` or `FAMILY_V6`, widened: a key built of whole words.
    pub family: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<LocalKey>() == 20);

/// Value of `HW_LOCAL_{0,1}`: the only path a packet from this address may
/// take to an endpoint. `ifindex` is the endpoint's host-side interface, or
/// 0 for the host's own addresses (the host's stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalAddr {
    pub ifindex: u32,
    pub flags: u32,
}
const _: () = assert!(size_of::<LocalAddr>() == 8);

/// `LocalAddr::ifindex` of a local endpoint whose interface does not exist
/// (yet): no packet from its addresses may reach an endpoint.
pub const LOCAL_NO_PATH: u32 = u32::MAX;

/// `LocalAddr::flags`: an endpoint's link-local address (the EUI-64 of its
/// MAC, or one listed on it). It may be the source of neighbour discovery
/// and MLD only, and traffic to it is never the endpoint's own (never
/// matches conntrack).
pub const LOCAL_LINK_ONLY: u32 = 1;

/// `EndpointInfo::endpoint` of a quarantined interface: everything to and
/// from it is dropped.
pub const QUARANTINED: u32 = u32::MAX;

/// Per-generation settings (`HW_SETTINGS`, index = slot). Timeouts in ns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    pub tcp_established_ns: u64,
    pub tcp_other_ns: u64,
    pub udp_ns: u64,
    pub udp_stream_ns: u64,
    pub icmp_ns: u64,
    pub other_ns: u64,
    pub fragment_ns: u64,
    /// Tracked flows one endpoint may open (`HW_CONNTRACK`); new flows
    /// beyond it are dropped.
    pub max_flows_per_endpoint: u32,
    /// Tracked flows others may open towards one endpoint
    /// (`HW_CT_INBOUND`); new flows beyond it are dropped.
    pub max_inbound_per_endpoint: u32,
    /// Changes with every policy the agent writes, never 0: conntrack
    /// entries remember paths checked under one generation
    /// (`CtEntry::paths_gen`).
    pub generation: u32,
    /// The agent's generation of the policy (`hostwall status`): one more
    /// with every change applied. The datapath does not read it; kept in
    /// the pinned map, it survives the agent's restarts.
    pub policy_generation: u32,
}
const _: () = assert!(size_of::<Settings>() == 72);

/// `HW_MIDSTREAM[slot]`: mid-stream TCP packets may create entries while
/// `bpf_ktime_get_ns()` is below this value. `MIDSTREAM_NEVER` is
/// `settings.conntrack.midstream: deny`, `MIDSTREAM_ALWAYS` is `allow`, and
/// `startup` is the agent's start plus `midstream_window`.
pub const MIDSTREAM_NEVER: u64 = 0;
pub const MIDSTREAM_ALWAYS: u64 = u64::MAX;

/// Packet and byte counter of one rule (`HW_RULE_STATS`, per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// Map capacities. The policy and peer maps are LPM tries, which allocate
/// entries as they are written: their capacities are ceilings, and the
/// agent's `--max-map-memory` is what bounds a policy. The agent refuses a
/// policy that does not fit.
pub const MAX_POLICY_ENTRIES: u32 = 16_777_216;
pub const MAX_PEER_ENTRIES: u32 = 4_194_304;
pub const MAX_SRC_ENTRIES: u32 = 16_384;
/// Endpoint addresses and the host's own.
pub const MAX_LOCAL_ENTRIES: u32 = MAX_SRC_ENTRIES + 4_096;
pub const MAX_ENDPOINT_INTERFACES: u32 = 4_096;
pub const MAX_RULES: u32 = 65_536;
pub const MAX_CONNTRACK_ENTRIES: u32 = 131_072;
pub const MAX_CONNTRACK_INBOUND_ENTRIES: u32 = 131_072;
pub const MAX_FRAGMENT_ENTRIES: u32 = 8_192;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for CidrKey<4> {}
    unsafe impl aya::Pod for CidrKey<16> {}
    unsafe impl aya::Pod for CidrValue {}
    unsafe impl aya::Pod for PeerInfo {}
    unsafe impl aya::Pod for Groups {}
    unsafe impl aya::Pod for SrcKey {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for LocalKey {}
    unsafe impl aya::Pod for LocalAddr {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for Counter {}
}
