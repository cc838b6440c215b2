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

/// Bits of a `PolicyKey` that are always compared exactly: everything but
/// the port. A rule's port range adds 0..=16 prefix bits on top.
pub const POLICY_FIXED_BITS: u32 = 12 * 8;

/// Key of the policy LPM trie (`HW_POLICY_{0,1}`).
///
/// `policy` is the id of a set of groups (endpoints with the same groups
/// share it), `class` the peer class of the other address (see `PeerInfo`).
/// `any_proto` = 1 marks rules with `proto: all`; those entries have
/// `proto` = 0 and cover every port. `port` is big-endian so a port range
/// splits into prefix-aligned blocks; for ICMP it holds `type << 8 | code`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub policy: u32,
    pub class: u32,
    pub dir: u8,
    pub any_proto: u8,
    pub proto: u8,
    pub _pad: u8,
    pub port_be: [u8; 2],
    /// Beyond every prefix; always zero.
    pub _tail: [u8; 2],
}
const _: () = assert!(size_of::<PolicyKey>() == 16);
const _: () = assert!(core::mem::offset_of!(PolicyKey, port_be) * 8 == POLICY_FIXED_BITS as usize);

/// Value of the policy trie: the rule that allows the matching packets,
/// an index into `HW_RULE_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyValue {
    pub rule: u32,
}
const _: () = assert!(size_of::<PolicyValue>() == 4);

/// What an address is, from the peer LPM tries (`HW_PEER4_{0,1}`,
/// `HW_PEER6_{0,1}`).
///
/// `class` groups addresses that match exactly the same set of rule peers
/// (CIDRs, prefix lists, groups, the host), so one policy lookup per packet
/// is exact even when CIDRs overlap. `local_policy` is non-zero when the
/// address belongs to a local endpoint (its policy id), `local_endpoint`
/// then names it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub class: u32,
    pub local_policy: u32,
    pub local_endpoint: u32,
    pub flags: u32,
}
const _: () = assert!(size_of::<PeerInfo>() == 16);

/// `PeerInfo::flags`: the address is one of the host's own.
pub const PEER_HOST: u32 = 1;

/// Class of an address no prefix covers. No rule matches it.
pub const CLASS_WORLD: u32 = 0;

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
/// ifindex).
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
    pub policy: u32,
    pub endpoint: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<EndpointInfo>() == 16);

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
    pub _pad: u32,
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

/// Map capacities. The agent refuses a policy that does not fit.
pub const MAX_POLICY_ENTRIES: u32 = 262_144;
pub const MAX_PEER_ENTRIES: u32 = 65_536;
pub const MAX_SRC_ENTRIES: u32 = 16_384;
/// Endpoint addresses and the host's own.
pub const MAX_LOCAL_ENTRIES: u32 = MAX_SRC_ENTRIES + 4_096;
pub const MAX_ENDPOINT_INTERFACES: u32 = 4_096;
pub const MAX_RULES: u32 = 65_536;
pub const MAX_CONNTRACK_ENTRIES: u32 = 262_144;
pub const MAX_CONNTRACK_INBOUND_ENTRIES: u32 = 262_144;
pub const MAX_FRAGMENT_ENTRIES: u32 = 8_192;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for PeerInfo {}
    unsafe impl aya::Pod for SrcKey {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for LocalKey {}
    unsafe impl aya::Pod for LocalAddr {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for Counter {}
}
