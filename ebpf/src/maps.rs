//! Every map the programs use. Maps marked "slot" exist twice; the agent
//! writes the inactive copy and flips `HW_ACTIVE`, so a packet is judged by
//! one policy generation from start to end.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use hostwall_common::*;

/// [0] = the active slot (0 or 1). Written by the agent after it has filled
/// that slot.
#[map(name = "HW_ACTIVE")]
pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Conntrack timeouts per slot. Written by the agent.
#[map(name = "HW_SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(2, 0);

/// Slot: ifindex of an endpoint's host-side interface -> the endpoint, its
/// MAC and its groups. Written by the agent.
#[map(name = "HW_IFACE_0")]
pub static IFACE_0: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINT_INTERFACES, 0);
#[map(name = "HW_IFACE_1")]
pub static IFACE_1: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINT_INTERFACES, 0);

/// Slot: (ifindex, address) pairs an endpoint may send from; value is the
/// endpoint id. Written by the agent.
#[map(name = "HW_SRC_0")]
pub static SRC_0: HashMap<SrcKey, u32> = HashMap::with_max_entries(MAX_SRC_ENTRIES, 0);
#[map(name = "HW_SRC_1")]
pub static SRC_1: HashMap<SrcKey, u32> = HashMap::with_max_entries(MAX_SRC_ENTRIES, 0);

/// Slot: every address of this host (the host's own and its local
/// endpoints') -> the interface a packet from it must enter by (0: the
/// host's stack). Written by the agent.
#[map(name = "HW_LOCAL_0")]
pub static LOCAL_0: HashMap<LocalKey, LocalAddr> = HashMap::with_max_entries(MAX_LOCAL_ENTRIES, 0);
#[map(name = "HW_LOCAL_1")]
pub static LOCAL_1: HashMap<LocalKey, LocalAddr> = HashMap::with_max_entries(MAX_LOCAL_ENTRIES, 0);

/// Slot: IPv4 address (or prefix of addresses) of an endpoint or of the
/// host -> the labels rules may name it by (its groups named as peers,
/// `host`), and its local endpoint and host flag. Written by the agent.
#[map(name = "HW_PEER4_0")]
pub static PEER4_0: LpmTrie<[u8; 4], PeerInfo> = LpmTrie::with_max_entries(MAX_PEER_ENTRIES, 0);
#[map(name = "HW_PEER4_1")]
pub static PEER4_1: LpmTrie<[u8; 4], PeerInfo> = LpmTrie::with_max_entries(MAX_PEER_ENTRIES, 0);

/// Slot: IPv6 prefix -> its labels. Written by the agent.
#[map(name = "HW_PEER6_0")]
pub static PEER6_0: LpmTrie<[u8; 16], PeerInfo> = LpmTrie::with_max_entries(MAX_PEER_ENTRIES, 0);
#[map(name = "HW_PEER6_1")]
pub static PEER6_1: LpmTrie<[u8; 16], PeerInfo> = LpmTrie::with_max_entries(MAX_PEER_ENTRIES, 0);

/// Slot: (group, peer label, direction, protocol, port prefix) -> rule: one
/// entry per rule, group or `host` among its peers and prefix-aligned
/// block of its port range. Written by the agent.
#[map(name = "HW_POLICY_0")]
pub static POLICY_0: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::with_max_entries(MAX_POLICY_ENTRIES, 0);
#[map(name = "HW_POLICY_1")]
pub static POLICY_1: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::with_max_entries(MAX_POLICY_ENTRIES, 0);

/// Slot: (group, tier, direction, protocol, port, IPv4 prefix) -> the
/// rule (or, for `TIER_RANGES`, the port runs) of rules whose peers are
/// CIDRs or prefix lists: one entry per rule, CIDR and port for single
/// ports and for every protocol, one per group, direction, protocol and
/// CIDR for ranges. Written by the agent.
#[map(name = "HW_CIDR4_0")]
pub static CIDR4_0: LpmTrie<CidrKey<4>, CidrValue> = LpmTrie::with_max_entries(MAX_POLICY_ENTRIES, 0);
#[map(name = "HW_CIDR4_1")]
pub static CIDR4_1: LpmTrie<CidrKey<4>, CidrValue> = LpmTrie::with_max_entries(MAX_POLICY_ENTRIES, 0);

/// Slot: the same for IPv6 prefixes. Written by the agent.
#[map(name = "HW_CIDR6_0")]
pub static CIDR6_0: LpmTrie<CidrKey<16>, CidrValue> = LpmTrie::with_max_entries(MAX_POLICY_ENTRIES, 0);
#[map(name = "HW_CIDR6_1")]
pub static CIDR6_1: LpmTrie<CidrKey<16>, CidrValue> = LpmTrie::with_max_entries(MAX_POLICY_ENTRIES, 0);

/// Tracked flows local endpoints opened (made at the sender's interface).
/// Written by the programs; read and flushed by the agent.
#[map(name = "HW_CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(MAX_CONNTRACK_ENTRIES, 0);

/// Tracked flows others opened towards a local endpoint (made at its
/// interface or on the uplink): a table of their own, so that an inbound
/// flood evicts only inbound flows.
#[map(name = "HW_CT_INBOUND")]
pub static CT_INBOUND: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(MAX_CONNTRACK_INBOUND_ENTRIES, 0);

/// [0] = the uplink's ifindex (0: none). A hint for the order of conntrack
/// lookups at an endpoint's interface. Written by the agent.
#[map(name = "HW_UPLINK")]
pub static UPLINK: Array<u32> = Array::with_max_entries(1, 0);

/// Per slot: until when mid-stream TCP packets may create entries
/// (`MIDSTREAM_*`). Written by the agent.
#[map(name = "HW_MIDSTREAM")]
pub static MIDSTREAM: Array<u64> = Array::with_max_entries(2, 0);

/// IP datagrams whose first fragment passed. Written by the programs.
#[map(name = "HW_FRAGS")]
pub static FRAGS: LruHashMap<FragKey, u64> = LruHashMap::with_max_entries(MAX_FRAGMENT_ENTRIES, 0);

/// Per CPU: step 6's question to `hw_policy` and the state of its walk.
#[map(name = "HW_POLICY_SCAN")]
pub static POLICY_SCAN: PerCpuArray<crate::judge::PolicyScan> = PerCpuArray::with_max_entries(1, 0);

/// Per rule id: packets and bytes of the flows the rule admitted.
#[map(name = "HW_RULE_STATS")]
pub static RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// Per `DropReason` code: dropped packets and bytes.
#[map(name = "HW_DROPS")]
pub static DROPS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DROP_REASON_SLOTS, 0);

/// Per `PassReason` code: passed packets and bytes, counted at every hook.
#[map(name = "HW_PASSES")]
pub static PASSES: PerCpuArray<Counter> = PerCpuArray::with_max_entries(PASS_REASON_SLOTS, 0);

/// Flows inserted into `HW_CONNTRACK` ([0]) and `HW_CT_INBOUND` ([1]);
/// with a table's live entry count this gives its LRU evictions.
#[map(name = "HW_CT_EVENTS")]
pub static CT_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

/// Per rule slot: a hash of the rule (group, direction, match) the slot
/// stands for, 0 when unused. Written and read by the agent only, so that
/// a restarted agent gives surviving rules their old ids (and counters).
#[map(name = "HW_RULE_KEYS")]
pub static RULE_KEYS: Array<u64> = Array::with_max_entries(MAX_RULES, 0);

/// Per rule id (counter slot): the id users see for the rule in it, which
/// no other rule ever gets; [0] the next such id. Written and read by the
/// agent only.
#[map(name = "HW_RULE_IDS")]
pub static RULE_IDS: Array<u64> = Array::with_max_entries(MAX_RULES, 0);

/// Per local endpoint id: the flows it holds in `HW_CONNTRACK`. The
/// programs count up as they insert; the agent recounts (and removes
/// expired flows) every two seconds, which also accounts for LRU evictions.
#[map(name = "HW_CT_COUNT")]
pub static CT_COUNT: HashMap<u32, u32> = HashMap::with_max_entries(MAX_ENDPOINT_INTERFACES, 0);

/// Per local endpoint id: the flows others opened towards it
/// (`HW_CT_INBOUND`), counted as `HW_CT_COUNT` is.
#[map(name = "HW_CT_COUNT_IN")]
pub static CT_COUNT_IN: HashMap<u32, u32> = HashMap::with_max_entries(MAX_ENDPOINT_INTERFACES, 0);
