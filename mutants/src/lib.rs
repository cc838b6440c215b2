//! The eBPF programs built with the `mutants` feature: each planted bug of
//! `ebpf/src/mutants.rs` is switched on by setting the global `HW_MUTANT`
//! when the object is loaded. Only the stateful differential test uses it,
//! to show that it finds every one; the agent never loads it.

/// The object with every planted bug, all off unless `HW_MUTANT` is set
/// (empty in cross builds, which do not run the differential tests).
pub static MUTANT_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hostwall"));

/// The name of the global that selects the planted bug.
pub const MUTANT_GLOBAL: &str = "HW_MUTANT";

/// The planted bugs, as numbered in `ebpf/src/mutants.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Mutant {
    /// A SYN without ACK (or SCTP INIT) is taken as a reply.
    SynAsReply = 1,
    /// An ICMP error from an endpoint is related whoever the quoted packet
    /// was addressed to.
    IcmpErrorFromAnyone = 2,
    /// Flows opened towards an endpoint are charged to its own share.
    InboundChargedAsOpened = 3,
    /// Mid-stream admission ignores its setting.
    MidstreamAlways = 4,
    /// An address of this host is taken from whatever interface it
    /// entered by.
    PathUnchecked = 5,
    /// A packet to an address its receiver does not list matches
    /// conntrack.
    UnaddressedTracked = 6,
    /// Router advertisements and redirects reach endpoints from anywhere.
    RouterFromAnyone = 7,
    /// A neighbour advertisement from an endpoint may claim any target.
    NaAnyTarget = 8,
    /// An endpoint's frames may carry any Ethernet source.
    MacUnchecked = 9,
}

impl Mutant {
    pub const ALL: [Mutant; 9] = [
        Mutant::SynAsReply,
        Mutant::IcmpErrorFromAnyone,
        Mutant::InboundChargedAsOpened,
        Mutant::MidstreamAlways,
        Mutant::PathUnchecked,
        Mutant::UnaddressedTracked,
        Mutant::RouterFromAnyone,
        Mutant::NaAnyTarget,
        Mutant::MacUnchecked,
    ];
}
