//! Verdict and drop-reason codes.
//!
//! These numbers are part of the public interface (counters, logs, `hostwall
//! stats`). They are assigned once and never renumbered or reused; a retired
//! code stays reserved.

/// Why a packet was dropped. Index into the `HW_DROPS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The sender's egress rules do not allow the flow.
    EgressDenied = 1,
    /// The receiver's ingress rules do not allow the flow.
    IngressDenied = 2,
    /// A packet from an endpoint's interface carries a source address that is
    /// not one of that endpoint's addresses.
    SpoofedSource = 3,
    /// A packet claims a local endpoint's address but did not enter through
    /// that endpoint's interface.
    LocalAddressWrongPath = 4,
    /// A packet arriving on the uplink claims one of the host's addresses.
    HostAddressSpoofed = 5,
    /// Not IPv4, IPv6 or ARP (including VLAN-tagged frames).
    UnsupportedEthertype = 6,
    /// A header is truncated or malformed.
    Malformed = 7,
    /// A non-first IP fragment whose first fragment was not let through.
    FragmentUntracked = 8,
    /// An ARP packet from an endpoint claims an address it does not own.
    ArpSpoofed = 9,
    /// A neighbour advertisement from an endpoint claims an address it does
    /// not own.
    NdSpoofed = 10,
    /// ICMPv6 an endpoint may not send: router advertisements, redirects, or
    /// link-local traffic other than neighbour discovery and MLD.
    Icmpv6Forbidden = 11,
    /// The interface carries hostwall's programs but no endpoint is
    /// configured for it in the active policy.
    NoEndpoint = 12,
    /// An ICMP error that quotes a flow the connection tracker does not know.
    IcmpErrorUntracked = 13,
    /// The IPv6 extension header chain is longer than hostwall parses.
    Ipv6ExtensionChainTooLong = 14,
    /// The interface matches `settings.quarantine` and is not an endpoint.
    Quarantined = 15,
    /// The endpoint already holds `settings.conntrack.max_per_endpoint`
    /// tracked flows.
    ConntrackEndpointFull = 16,
    /// A frame from an endpoint whose Ethernet source, or whose ARP or
    /// neighbour discovery link-layer address, is not the endpoint's MAC.
    MacSpoofed = 17,
    /// Neighbour discovery or MLD of the wrong shape: hop limit,
    /// destination, length, options or Router Alert.
    NdMalformed = 18,
    /// A router advertisement or redirect towards an endpoint that did not
    /// come from the host's stack or the uplink.
    RouterMessageWrongPath = 19,
    /// From an endpoint: an IPv4 loose or strict source route option, or
    /// an IPv6 routing header of type 0 or 4.
    SourceRouted = 20,
}

/// Number of slots in the drop counter array; codes must stay below it.
pub const DROP_REASON_SLOTS: u32 = 32;

impl DropReason {
    pub const ALL: [DropReason; 20] = [
        DropReason::EgressDenied,
        DropReason::IngressDenied,
        DropReason::SpoofedSource,
        DropReason::LocalAddressWrongPath,
        DropReason::HostAddressSpoofed,
        DropReason::UnsupportedEthertype,
        DropReason::Malformed,
        DropReason::FragmentUntracked,
        DropReason::ArpSpoofed,
        DropReason::NdSpoofed,
        DropReason::Icmpv6Forbidden,
        DropReason::NoEndpoint,
        DropReason::IcmpErrorUntracked,
        DropReason::Ipv6ExtensionChainTooLong,
        DropReason::Quarantined,
        DropReason::ConntrackEndpointFull,
        DropReason::MacSpoofed,
        DropReason::NdMalformed,
        DropReason::RouterMessageWrongPath,
        DropReason::SourceRouted,
    ];

    /// The name used in logs and in `hostwall stats`.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::EgressDenied => "egress-denied",
            DropReason::IngressDenied => "ingress-denied",
            DropReason::SpoofedSource => "spoofed-source",
            DropReason::LocalAddressWrongPath => "local-address-wrong-path",
            DropReason::HostAddressSpoofed => "host-address-spoofed",
            DropReason::UnsupportedEthertype => "unsupported-ethertype",
            DropReason::Malformed => "malformed",
            DropReason::FragmentUntracked => "fragment-untracked",
            DropReason::ArpSpoofed => "arp-spoofed",
            DropReason::NdSpoofed => "nd-spoofed",
            DropReason::Icmpv6Forbidden => "icmpv6-forbidden",
            DropReason::NoEndpoint => "no-endpoint",
            DropReason::IcmpErrorUntracked => "icmp-error-untracked",
            DropReason::Ipv6ExtensionChainTooLong => "ipv6-extension-chain-too-long",
            DropReason::Quarantined => "quarantined",
            DropReason::ConntrackEndpointFull => "conntrack-endpoint-full",
            DropReason::MacSpoofed => "mac-spoofed",
            DropReason::NdMalformed => "nd-malformed",
            DropReason::RouterMessageWrongPath => "router-message-wrong-path",
            DropReason::SourceRouted => "source-routed",
        }
    }

    pub fn from_code(code: u32) -> Option<DropReason> {
        DropReason::ALL.into_iter().find(|r| *r as u32 == code)
    }
}

/// Why a packet was let through. Index into the `HW_PASSES` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassReason {
    /// A packet of a tracked flow, in the direction that opened it.
    Established = 1,
    /// A reply of a tracked flow.
    Reply = 2,
    /// The first packet of a flow the rules allow; it is now tracked.
    NewAllowed = 3,
    /// An ICMP error quoting a tracked flow.
    Related = 4,
    /// ARP, neighbour discovery or MLD that the endpoint may send or receive.
    Neighbour = 5,
    /// A non-first fragment of a datagram whose first fragment passed.
    Fragment = 6,
    /// Uplink traffic the uplink filter leaves to the receiver's own
    /// interface: not addressed to a local endpoint, malformed, or an ICMP
    /// error (XDP only).
    NotForEndpoint = 7,
}

pub const PASS_REASON_SLOTS: u32 = 16;

impl PassReason {
    pub const ALL: [PassReason; 7] = [
        PassReason::Established,
        PassReason::Reply,
        PassReason::NewAllowed,
        PassReason::Related,
        PassReason::Neighbour,
        PassReason::Fragment,
        PassReason::NotForEndpoint,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            PassReason::Established => "established",
            PassReason::Reply => "reply",
            PassReason::NewAllowed => "new-allowed",
            PassReason::Related => "related",
            PassReason::Neighbour => "neighbour",
            PassReason::Fragment => "fragment",
            PassReason::NotForEndpoint => "not-for-endpoint",
        }
    }
}
