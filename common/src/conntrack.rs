//! Connection tracking entries. Two LRU hashes shared by all programs and
//! not double-buffered (flows outlive policy generations):
//!
//! - `HW_CONNTRACK`: flows a local endpoint opened, made at its own
//!   interface and counted against its `max_per_endpoint`;
//! - `HW_CT_INBOUND`: flows others (the host, remote peers) opened towards
//!   a local endpoint, counted against its `max_inbound_per_endpoint`.
//!
//! An inbound flood therefore evicts only inbound flows and never one a
//! local endpoint opened. A flow is stored once, under the tuple of the
//! packet that made the entry. A packet is looked up as-is (same direction)
//! and reversed. When a table is full the kernel evicts its least recently
//! used entry; an evicted flow is judged again by the rules on its next
//! packet.

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

impl CtKey {
    /// The same flow's tuple in the other direction. An ICMP echo key keeps
    /// its identifier and request type, so a reply finds its request.
    #[inline(always)]
    pub fn reversed(&self) -> CtKey {
        let is_icmp = self.proto == 1 || self.proto == 58;
        CtKey {
            src: self.dst,
            dst: self.src,
            sport: if is_icmp { self.sport } else { self.dport },
            dport: if is_icmp { self.dport } else { self.sport },
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

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
    /// The local endpoint the flow counts against: in `HW_CONNTRACK` the
    /// endpoint that sent the packet that made the entry
    /// (`max_per_endpoint`), in `HW_CT_INBOUND` the endpoint it was sent to
    /// (`max_inbound_per_endpoint`).
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
/// Made by a mid-stream TCP packet (no SYN) that the rules deny in its own
/// direction but allow reversed. The key is that packet's direction; the
/// flow the rules allow runs the other way, so packets in the key's
/// direction are its replies. `CT_ORIG_LOCAL`/`CT_REPLY_LOCAL` describe the
/// key's direction as for any entry.
pub const CT_MIDSTREAM: u32 = 16;

/// Whether a packet found under an entry travels as the allowed flow's
/// replies: found reversed for an ordinary entry, found as-is for a
/// mid-stream one.
#[inline(always)]
pub fn ct_is_reply(flags: u32, found_reversed: bool) -> bool {
    found_reversed != (flags & CT_MIDSTREAM != 0)
}

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
