//! Connection tracking entries (`HW_CONNTRACK`, an LRU hash shared by all
//! programs and not double-buffered: flows outlive policy generations).
//!
//! A flow is stored once, under the tuple of the packet that opened it. A
//! packet is looked up as-is (same direction) and reversed (a reply).
//! When the table is full the kernel evicts the least recently used entry;
//! an evicted flow is judged again by the rules on its next packet.

use core::mem::size_of;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// TCP/UDP ports. ICMP echo: `sport` = identifier, `dport` = the
    /// request's type, so only a reply can match a request reversed.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtKey>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen_ns: u64,
    /// `CT_*` flags.
    pub flags: u32,
    /// The egress rule of the sending endpoint that admitted the flow
    /// (0: none, the sender is not a local endpoint).
    pub rule_egress: u32,
    /// The ingress rule of the receiving endpoint (0: none).
    pub rule_ingress: u32,
    /// The local endpoint the flow counts against for
    /// `settings.conntrack.max_per_endpoint`: the sender when it is local,
    /// else the receiver.
    pub owner: u32,
}
const _: () = assert!(size_of::<CtEntry>() == 24);

/// A reply has been seen.
pub const CT_SEEN_REPLY: u32 = 1;
/// TCP FIN or RST seen: the short `tcp_other` timeout applies.
pub const CT_CLOSING: u32 = 2;
/// The flow was opened by a local endpoint: its packets in the original
/// direction were counted at that endpoint's interface.
pub const CT_ORIG_LOCAL: u32 = 4;
/// The flow's responder is a local endpoint: its replies were counted at
/// that endpoint's interface.
pub const CT_REPLY_LOCAL: u32 = 8;

/// How long an entry lives after its last packet. The one definition of
/// the conntrack timeouts, used by the programs and by the agent's
/// garbage collection.
#[inline(always)]
pub fn ct_timeout(settings: &crate::Settings, proto: u8, flags: u32) -> u64 {
    match proto {
        6 | 132 => {
            if flags & CT_CLOSING != 0 || flags & CT_SEEN_REPLY == 0 {
                settings.tcp_other_ns
            } else {
                settings.tcp_established_ns
            }
        }
        17 => {
            if flags & CT_SEEN_REPLY != 0 {
                settings.udp_stream_ns
            } else {
                settings.udp_ns
            }
        }
        1 | 58 => settings.icmp_ns,
        _ => settings.other_ns,
    }
}

/// Key of the fragment table (`HW_FRAGS`): a datagram whose first fragment
/// passed. Value: `bpf_ktime_get_ns` when it passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FragKey>() == 40);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for FragKey {}
}
