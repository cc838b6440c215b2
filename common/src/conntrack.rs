//! Connection tracking entries. Two LRU hashes shared by all programs and
//! not double-buffered (flows outlive policy generations):
//!
//! - `HW_CONNTRACK`: flows a local endpoint opened, made at its own
//!   interface and counted against its `max_per_endpoint`;
//! - `HW_CT_INBOUND`: flows others (the host, remote peers) opened towards
//!   a local endpoint, counted against its `max_inbound_per_endpoint`.
//!
//! An inbound flood therefore evicts only inbound flows and never one a
//! local endpoint opened. A flow is stored once, under its tuple in a
//! canonical order ([`CtKey::canonical`]), so that one lookup per table
//! finds it from either direction; `CT_FLIPPED` says which way the flow the
//! rules allowed runs. When a table is full the kernel evicts its least
//! recently used entry; an evicted flow is judged again by the rules on its
//! next packet.

use core::mem::size_of;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// TCP/UDP/SCTP ports. ICMP echo: `sport` = identifier, `dport` = the
    /// request's type (a reply is keyed as its request).
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtKey>() == 40);

/// A total order of addresses (not the numeric one: it only has to be the
/// same everywhere).
#[inline(always)]
fn addr_cmp(a: &[u8; 16], b: &[u8; 16]) -> core::cmp::Ordering {
    let word = |x: &[u8; 16], i: usize| {
        u64::from_ne_bytes([
            x[i],
            x[i + 1],
            x[i + 2],
            x[i + 3],
            x[i + 4],
            x[i + 5],
            x[i + 6],
            x[i + 7],
        ])
    };
    match word(a, 0).cmp(&word(b, 0)) {
        core::cmp::Ordering::Equal => word(a, 8).cmp(&word(b, 8)),
        other => other,
    }
}

impl CtKey {
    /// Puts the tuple in canonical order: for TCP, UDP, SCTP and other
    /// protocols, the (address, port) end that compares lower first; for
    /// ICMP echo, the lower address first (the identifier and request type
    /// stay). Returns whether it swapped the ends, i.e. whether the tuple
    /// as it was runs from the canonical key's `dst` to its `src`. In place,
    /// for the programs' small stack.
    #[inline(always)]
    pub fn canonicalize(&mut self) -> bool {
        let is_icmp = self.proto == 1 || self.proto == 58;
        let swap = match addr_cmp(&self.src, &self.dst) {
            core::cmp::Ordering::Greater => true,
            core::cmp::Ordering::Less => false,
            core::cmp::Ordering::Equal => !is_icmp && self.sport > self.dport,
        };
        if swap {
            core::mem::swap(&mut self.src, &mut self.dst);
            if !is_icmp {
                core::mem::swap(&mut self.sport, &mut self.dport);
            }
        }
        swap
    }

    /// [`CtKey::canonicalize`] on a copy.
    #[inline(always)]
    pub fn canonical(&self) -> (CtKey, bool) {
        let mut k = *self;
        let swapped = k.canonicalize();
        (k, swapped)
    }

    /// The tuple of the flow an entry stores, in the direction the rules
    /// allowed, from its canonical key and flags.
    #[inline(always)]
    pub fn oriented(&self, flags: u32) -> CtKey {
        if flags & CT_FLIPPED != 0 {
            self.reversed()
        } else {
            *self
        }
    }

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
    /// The policy generation (`Settings::generation`) under which `via`
    /// was checked; 0: never. A generation ends whenever the policy maps
    /// change, and with it what was learned.
    pub paths_gen: u32,
    /// For each end of the canonical key (`src`, `dst`): the interface its
    /// packets entered the host by (`ingress_ifindex`: a local endpoint's
    /// interface, 0 for the host's stack, the uplink or another device for
    /// remote peers), as seen at a receiving endpoint's interface on a
    /// packet that passed the path checks there. For a local endpoint this
    /// is also the interface it receives on. A later packet of the flow at
    /// an endpoint's interface that arrived the same way and is received by
    /// the same endpoint passes without the checks being made again.
    pub via: [u32; 2],
    pub _pad: u32,
}
const _: () = assert!(size_of::<CtEntry>() == 40);

impl CtEntry {
    /// A new entry, nothing learned about its paths.
    #[inline(always)]
    pub fn new(last_seen_ns: u64, flags: u32, rule_egress: u32, rule_ingress: u32, owner: u32) -> CtEntry {
        CtEntry {
            last_seen_ns,
            flags,
            rule_egress,
            rule_ingress,
            owner,
            paths_gen: 0,
            via: [0; 2],
            _pad: 0,
        }
    }
}

/// The entry of layouts 1 to 3, before paths were learned; carried over
/// into a [`CtEntry`] on upgrade.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntryV3 {
    pub last_seen_ns: u64,
    pub flags: u32,
    pub rule_egress: u32,
    pub rule_ingress: u32,
    pub owner: u32,
}
const _: () = assert!(size_of::<CtEntryV3>() == 24);

impl From<CtEntryV3> for CtEntry {
    fn from(e: CtEntryV3) -> CtEntry {
        CtEntry::new(e.last_seen_ns, e.flags, e.rule_egress, e.rule_ingress, e.owner)
    }
}

/// Both directions have been seen: a reply (for a mid-stream entry, a
/// packet of the allowed direction).
pub const CT_SEEN_REPLY: u32 = 1;
/// TCP FIN or RST seen: the short `tcp_other` timeout applies.
pub const CT_CLOSING: u32 = 2;
/// The allowed flow's sender is a local endpoint: its packets in the
/// allowed direction are counted at that endpoint's interface.
pub const CT_ORIG_LOCAL: u32 = 4;
/// The allowed flow's receiver is a local endpoint: its replies are
/// counted at that endpoint's interface.
pub const CT_REPLY_LOCAL: u32 = 8;
/// Made by a mid-stream TCP packet (no SYN) that the rules deny in its own
/// direction but allow reversed: a reply of the flow the entry stores.
/// Both directions are seen (`CT_SEEN_REPLY`) once a packet of the allowed
/// direction passes.
pub const CT_MIDSTREAM: u32 = 16;
/// The flow the rules allowed runs from the key's `dst` to its `src` (the
/// canonical order swapped it).
pub const CT_FLIPPED: u32 = 32;

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
    unsafe impl aya::Pod for CtEntryV3 {}
    unsafe impl aya::Pod for FragKey {}
}
