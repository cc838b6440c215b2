//! Planted bugs, one per guarantee of SECURITY.md, for the
//! stateful differential test to find. They exist only in the object built
//! with the `mutants` feature, which the tests build beside the real one
//! and load with `HW_MUTANT` set to one of the codes below; the object the
//! agent loads has none of them (`mutant` is then `false`, compiled away).

/// A TCP SYN without ACK (or SCTP INIT) matching an entry as a reply passes.
pub const MUTANT_SYN_AS_REPLY: u32 = 1;
/// An ICMP error from an endpoint passes when it quotes any tracked flow,
/// whoever it was addressed to.
pub const MUTANT_ICMP_ERROR_FROM_ANYONE: u32 = 2;
/// Flows opened towards an endpoint go into its own table and share.
pub const MUTANT_INBOUND_CHARGED_AS_OPENED: u32 = 3;
/// Mid-stream admission ignores `settings.conntrack.midstream`.
pub const MUTANT_MIDSTREAM_ALWAYS: u32 = 4;
/// At an endpoint's interface, a packet from an address of this host is
/// taken from whatever interface it entered by.
pub const MUTANT_PATH_UNCHECKED: u32 = 5;
/// At an endpoint's interface, a packet to an address the receiver does
/// not list (broadcast, multicast, unlisted) matches conntrack.
pub const MUTANT_UNADDRESSED_TRACKED: u32 = 6;
/// Router advertisements and redirects reach endpoints from anywhere.
pub const MUTANT_ROUTER_FROM_ANYONE: u32 = 7;
/// A neighbour advertisement from an endpoint may claim any target.
pub const MUTANT_NA_ANY_TARGET: u32 = 8;
/// An endpoint's frames may carry any Ethernet source.
pub const MUTANT_MAC_UNCHECKED: u32 = 9;

#[cfg(feature = "mutants")]
#[unsafe(no_mangle)]
static HW_MUTANT: u32 = u32::MAX;

/// Whether the planted bug `code` is active.
#[inline(always)]
pub fn mutant(code: u32) -> bool {
    #[cfg(feature = "mutants")]
    {
        unsafe { core::ptr::read_volatile(&HW_MUTANT) == code }
    }
    #[cfg(not(feature = "mutants"))]
    {
        let _ = code;
        false
    }
}
