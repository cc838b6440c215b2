//! Where a packet is judged. The three hooks (from an endpoint, to an
//! endpoint, arriving on the uplink) share the order below; each step is
//! tagged with its number in the code. SECURITY.md states what each step
//! guarantees. (Before `judge` runs, the TC programs drop frames with a VLAN
//! tag in the skb's metadata, and an endpoint's IPv4 source routes.)
//!
//! 1. Frame type: IPv4/IPv6 continue; ARP, neighbour discovery and MLD are
//!    checked for their shape and the addresses they claim, and pass;
//!    router advertisements and redirects reach endpoints only from the
//!    host's stack or the uplink; everything else from or to an endpoint is
//!    dropped (the uplink passes it on).
//! 2. Identity: a frame from an endpoint must carry its MAC, and a packet
//!    one of its addresses on that interface (link-local only for
//!    neighbour discovery and MLD), and no IPv6 source route. At an
//!    endpoint's interface, an address of this host (a local endpoint's,
//!    the host's) must have entered the host by the way it belongs to (that
//!    endpoint's interface, the host's stack), before conntrack is looked
//!    at. On the uplink a source claiming a local endpoint's or the host's
//!    address is dropped. A packet to a group address, or at an endpoint's
//!    interface to an address the receiver does not list, is never looked
//!    up in conntrack nor tracked (steps 4, 5 and 7): the rules judge it.
//! 3. Fragments: a non-first fragment passes only if its first fragment
//!    passed.
//! 4. ICMP errors are related to a tracked flow only when their source is
//!    a party of it: an endpoint reporting on a packet addressed to it, or
//!    the host's stack or the uplink reporting on a packet a local endpoint
//!    sent towards them; and they go to the quoted packet's sender. Any
//!    other error is judged by the rules (step 6), never tracked. The uplink
//!    leaves ICMP errors to the receiver's interface.
//! 5. Conntrack: a packet of a tracked, unexpired flow passes, in either
//!    direction (a flow is kept under its canonical key: one lookup per
//!    table), except that a packet which can only open a flow (TCP SYN
//!    without ACK, SCTP INIT) is never a reply: it goes on to the rules.
//!    At an endpoint's interface a packet that may be a flow's is looked up
//!    before step 2's path checks: it passes if it came the way, to the
//!    receiver, that one of its flow's packets passed them by under the
//!    current policy generation (the entry's `via`); otherwise the checks
//!    are made now, learned when they pass, and judge the packet when they
//!    do not.
//! 6. Rules: the sender's egress rules (when the sender is a local
//!    endpoint) and the receiver's ingress rules (when the receiver is a
//!    local endpoint), both from the same policy slot. A new flow that both
//!    allow is tracked. While mid-stream admission is open
//!    (`settings.conntrack.midstream`), a TCP packet without SYN that the
//!    rules deny may be the far side of a flow the rules allow (one that
//!    predates the agent): it is tracked as a mid-stream entry, which
//!    passes that flow and only replies to it.
//! 7. Conntrack shares: a flow a local endpoint opens goes into
//!    `HW_CONNTRACK` and counts against its `max_per_endpoint`; a flow
//!    others open towards it goes into `HW_CT_INBOUND` and counts against
//!    its `max_inbound_per_endpoint`. A new flow beyond its share is
//!    dropped.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    maps::{LruHashMap, lpm_trie::Key},
};
use hostwall_common::*;

use crate::{
    maps::*,
    mutants::*,
    parse::{self, Fragment, Packet},
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// TC ingress of an endpoint's host-side interface: the endpoint sends.
    FromEndpoint,
    /// TC egress of an endpoint's host-side interface: the endpoint receives.
    ToEndpoint,
    /// XDP on the uplink: traffic from other hosts.
    Uplink,
}

pub enum Verdict {
    Pass(PassReason),
    Drop(DropReason),
}

/// Judge one frame in `[data, data_end)`. `ifindex` is the interface the
/// hook runs on; `arrived_on` the interface the packet entered the host by
/// (the skb's `ingress_ifindex`: 0 from the host's own stack), a hint for
/// and the only path a packet from the host's own addresses or a local
/// endpoint's may take to an endpoint.
#[inline(always)]
pub fn judge(hook: Hook, data: usize, data_end: usize, ifindex: u32, arrived_on: u32) -> Verdict {
    match try_judge(hook, data, data_end, ifindex, arrived_on) {
        Ok(pass) => Verdict::Pass(pass),
        // The uplink filter only drops what it is sure of; the TC hook of
        // the receiving endpoint judges malformed packets again.
        Err(DropReason::Malformed) if hook == Hook::Uplink => Verdict::Pass(PassReason::NotForEndpoint),
        Err(reason) => Verdict::Drop(reason),
    }
}

#[inline(always)]
fn try_judge(
    hook: Hook,
    data: usize,
    data_end: usize,
    ifindex: u32,
    arrived_on: u32,
) -> Result<PassReason, DropReason> {
    let slot = active_slot();
    let endpoint = if hook == Hook::Uplink {
        Endpoint::NONE
    } else {
        iface(slot, ifindex).ok_or(DropReason::NoEndpoint)?
    };
    if endpoint.endpoint == QUARANTINED {
        return Err(DropReason::Quarantined);
    }

    // 2. Identity at L2: an endpoint's frames carry its MAC.
    if hook == Hook::FromEndpoint {
        let src_mac = parse::read::<[u8; 6]>(data, data_end, 6)?;
        if (endpoint.mac == [0; 6] || src_mac != endpoint.mac) && !mutant(MUTANT_MAC_UNCHECKED) {
            return Err(DropReason::MacSpoofed);
        }
    }

    // 1. Frame type.
    let pkt = match parse::ethertype(data, data_end)? {
        parse::ETH_P_IP => parse::parse_ipv4(data, data_end)?,
        parse::ETH_P_IPV6 => parse::parse_ipv6(data, data_end)?,
        parse::ETH_P_ARP => return arp(hook, slot, &endpoint, ifindex, arrived_on, data, data_end),
        _ if hook == Hook::Uplink => return Ok(PassReason::NotForEndpoint),
        _ => return Err(DropReason::UnsupportedEthertype),
    };

    // 2. Paths: an address of this host carries its identity only on the
    // path it belongs to, checked before anything else can pass the packet.
    // At an endpoint's interface the packet must have entered the host
    // through the interface of the endpoint that owns its source (or, for
    // the host's addresses, come from the host's stack). `addressed`: the
    // packet is the receiver's own, to one of its listed addresses.
    // A packet that may be a flow's is looked up in conntrack first (step
    // 5): a flow remembers the paths by which its packets passed these
    // checks.
    let mut addressed = false;
    if hook == Hook::ToEndpoint && !flow_kind(data, data_end, &pkt) {
        source_path(slot, &pkt, arrived_on)?;
        addressed = !to_group_of_stations(data, data_end) && addressed_to(slot, &pkt, ifindex);
    }

    // 1. Neighbour discovery, MLD and router messages.
    if pkt.proto == parse::IPPROTO_ICMPV6 && pkt.fragment == Fragment::None && pkt.family == FAMILY_V6 {
        if let Some(pass) = neighbour(hook, slot, &endpoint, ifindex, arrived_on, data, data_end, &pkt)? {
            return Ok(pass);
        }
    }
    if hook == Hook::ToEndpoint
        && pkt.proto == parse::IPPROTO_ICMP
        && pkt.fragment != Fragment::Later
        && matches!(pkt.icmp_type, 5 | 9)
        && !router_path(arrived_on)
    {
        return Err(DropReason::RouterMessageWrongPath);
    }

    // 2. Identity.
    let mut peers = Peers::new(slot, ifindex);
    match hook {
        Hook::FromEndpoint => {
            if pkt.family == FAMILY_V6 && is_link_local_or_unspecified(&pkt.src) {
                return Err(DropReason::Icmpv6Forbidden);
            }
            if !src_allowed(slot, ifindex, pkt.family, &pkt.src) {
                return Err(DropReason::SpoofedSource);
            }
        }
        Hook::ToEndpoint => {}
        Hook::Uplink => {
            let src_info = peers.src(&pkt);
            if src_info.local_endpoint() != 0 {
                return Err(DropReason::LocalAddressWrongPath);
            }
            if src_info.flags() & PEER_HOST != 0 {
                return Err(DropReason::HostAddressSpoofed);
            }
            if peers.dst(&pkt).local_endpoint() == 0 {
                return Ok(PassReason::NotForEndpoint);
            }
        }
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let settings = match SETTINGS.get(slot) {
        Some(s) => *s,
        None => return Err(DropReason::NoEndpoint),
    };
    let settings = &settings;

    // 3. Fragments.
    if pkt.fragment == Fragment::Later {
        // A datagram's fragments arrive together; an old entry (an IP id
        // reused much later) lets nothing through.
        let fresh = match unsafe { FRAGS.get(&frag_key(&pkt)) } {
            Some(seen) => now.saturating_sub(*seen) <= settings.fragment_ns,
            None => false,
        };
        return if fresh {
            Ok(PassReason::Fragment)
        } else {
            Err(DropReason::FragmentUntracked)
        };
    }

    let direct = direct(hook, data, data_end, &pkt, addressed);

    // Steps 4 to 6 decide whether the packet passes; a first fragment that
    // passes, by whichever step, lets the rest of its datagram through.
    let pass = 'flow: {
        // The packet's flow under its canonical key, and whether the packet
        // runs against that key's order.
        let mut key = flow_key(&pkt);
        let flipped = key.canonicalize();
        let icmp_error = parse::is_icmp_error(pkt.proto, pkt.icmp_type);
        if icmp_error {
            // 4. ICMP errors. The uplink filter leaves them to the
            // receiver's interface, which judges them whole: they are few,
            // and judging them twice would cost the XDP program more than
            // the verifier allows on older kernels.
            if hook == Hook::Uplink {
                return Ok(PassReason::NotForEndpoint);
            }
            if direct && related(hook, &endpoint, &mut peers, data, data_end, &pkt, settings, now) {
                break 'flow PassReason::Related;
            }
            // 6. Any other error is judged by the rules like any ICMP
            // packet; errors are never tracked.
            let (rule_egress, rule_ingress, _) =
                decide(hook, GroupsOf::Hook, &mut peers, &pkt).map_err(|_| DropReason::IcmpErrorUntracked)?;
            let bytes = (data_end - data) as u64;
            count_rule(rule_egress, bytes);
            count_rule(rule_ingress, bytes);
            break 'flow PassReason::NewAllowed;
        }
        let lookup = Lookup {
            hook,
            pkt: &pkt,
            key: &key,
            flipped,
            settings,
            now,
            len: data_end - data,
            slot,
            ifindex,
            arrived_on,
        };
        // Whether the rules judge the packet without tracking it.
        let untracked = if hook == Hook::ToEndpoint {
            // 5. Conntrack, with the paths the flow learned (`ct_match`);
            // a frame to a group of stations is never a flow's.
            if !to_group_of_stations(data, data_end) {
                match ct_lookup(&lookup) {
                    Some(true) => break 'flow PassReason::Reply,
                    Some(false) => break 'flow PassReason::Established,
                    None => {}
                }
            }
            // 2. Paths, for a packet of no flow (made again for a packet
            // checked before step 5). The source's peer entry, which the
            // rules need anyway, says whether it may be an address of this
            // host at all (`may_be_local` is asked again rather than kept: a
            // value kept across the lookups makes the verifier walk them
            // once for each). A local endpoint's packets at the receiver's
            // interface are never tracked: flows are tracked where they are
            // first judged, at the sender's own interface.
            if may_be_local(&mut peers, &pkt) {
                source_path(slot, &pkt, arrived_on)?;
            }
            let addressed = !to_group_of_stations(data, data_end) && addressed_to(slot, &pkt, ifindex);
            let src_local = may_be_local(&mut peers, &pkt) && {
                let owner = local(slot, pkt.family, &pkt.src);
                owner.found != 0 && owner.ifindex != 0
            };
            !(addressed || mutant(MUTANT_UNADDRESSED_TRACKED)) || src_local
        } else {
            if direct {
                // 5. Conntrack.
                match ct_lookup(&lookup) {
                    Some(true) => break 'flow PassReason::Reply,
                    Some(false) => break 'flow PassReason::Established,
                    None => {}
                }
            }
            !direct
        };

        // 6. Rules, for packets that are never tracked: packets to group or
        // unlisted addresses, and a local endpoint's packets at the
        // receiver's interface.
        if untracked {
            // From an endpoint that is a group address, which no receiver
            // lists: the sender's egress alone.
            let (rule_egress, rule_ingress) = if hook == Hook::FromEndpoint {
                peers.dst(&pkt);
                let rule = policy(&peers, GroupsOf::Hook, DIR_EGRESS, &pkt).ok_or(DropReason::EgressDenied)?;
                (rule, 0)
            } else {
                let (e, i, _) = decide(hook, GroupsOf::Hook, &mut peers, &pkt)?;
                (e, i)
            };
            if hook != Hook::Uplink {
                let bytes = (data_end - data) as u64;
                count_rule(rule_egress, bytes);
                count_rule(rule_ingress, bytes);
            }
            break 'flow PassReason::NewAllowed;
        }

        // 6. Rules.
        let decided = decide(hook, GroupsOf::Hook, &mut peers, &pkt);
        let (rule_egress, rule_ingress, mut flags) = match decided {
            // The flow runs the packet's way.
            Ok((e, i, f)) => (e, i, f | if flipped { CT_FLIPPED } else { 0 }),
            Err(reason) => {
                // 6d. Mid-stream: a TCP packet without SYN that the rules
                // deny in its own direction may be the far side of a flow
                // that predates the agent (or whose entry was evicted). If
                // the rules allow the reverse flow, and mid-stream admission
                // is open, that flow is tracked, marked mid-stream: this
                // packet is one of its replies.
                let by_rules = matches!(reason, DropReason::EgressDenied | DropReason::IngressDenied);
                if !by_rules || pkt.proto != parse::IPPROTO_TCP || pkt.tcp_flags & parse::TCP_SYN != 0 {
                    return Err(reason);
                }
                if !midstream_open(slot, now) {
                    return Err(reason);
                }
                // The reverse flow's ends are this packet's, swapped: lookups
                // already made are reused.
                let mut rev_peers = peers.swapped();
                match decide_reverse(hook, &mut rev_peers, &reversed_packet(&pkt)) {
                    // The flow runs against the packet.
                    Some((e, i, f)) => (e, i, f | CT_MIDSTREAM | if flipped { 0 } else { CT_FLIPPED }),
                    None => return Err(reason),
                }
            }
        };

        if tracked_kind(&pkt) {
            if pkt.proto == parse::IPPROTO_TCP && pkt.tcp_flags & (parse::TCP_FIN | parse::TCP_RST) != 0 {
                flags |= CT_CLOSING;
            }
            // 7. Conntrack shares: the sender's table when it is the
            // endpoint of this interface, else the receiver's inbound one.
            let inbound = hook != Hook::FromEndpoint && !mutant(MUTANT_INBOUND_CHARGED_AS_OPENED);
            let owner = if hook == Hook::Uplink {
                peers.dst(&pkt).local_endpoint()
            } else {
                endpoint.endpoint
            };
            if !reserve_flow(owner, inbound, settings) {
                return Err(DropReason::ConntrackEndpointFull);
            }
            let mut entry = CtEntry::new(now, flags, rule_egress, rule_ingress, owner);
            if hook == Hook::ToEndpoint {
                // This packet has just passed step 2.
                learn_paths(&mut entry, flipped, settings, arrived_on, ifindex);
            }
            let table = if inbound { &CT_INBOUND } else { &CONNTRACK };
            if table.insert(&key, &entry, 0).is_ok()
                && let Some(n) = CT_EVENTS.get_ptr_mut(if inbound { 1 } else { 0 })
            {
                unsafe { *n += 1 };
            }
        }
        if hook != Hook::Uplink {
            let bytes = (data_end - data) as u64;
            count_rule(rule_egress, bytes);
            count_rule(rule_ingress, bytes);
        }
        PassReason::NewAllowed
    };
    remember_first_fragment(&pkt, now);
    Ok(pass)
}

/// ARP (steps 1 and 2): from an endpoint, its sender hardware address must
/// be the endpoint's MAC and its sender address one of the endpoint's (or
/// 0.0.0.0, a probe). Towards an endpoint, a sender address of this host
/// must come the way that address belongs to.
#[inline(always)]
fn arp(
    hook: Hook,
    slot: u32,
    endpoint: &Endpoint,
    ifindex: u32,
    arrived_on: u32,
    data: usize,
    data_end: usize,
) -> Result<PassReason, DropReason> {
    if hook == Hook::Uplink {
        return Ok(PassReason::Neighbour);
    }
    let spa = parse::arp_sender_ip(data, data_end)?;
    let addr = v4_addr(spa);
    if hook == Hook::FromEndpoint {
        let sha = parse::read::<[u8; 6]>(data, data_end, parse::ETH_HLEN + 8)?;
        if sha != endpoint.mac {
            return Err(DropReason::MacSpoofed);
        }
        if spa != [0; 4] && !src_allowed(slot, ifindex, FAMILY_V4, &addr) {
            return Err(DropReason::ArpSpoofed);
        }
    } else if let owner = local(slot, FAMILY_V4, &addr)
        && owner.found != 0
        && owner.ifindex != arrived_on
    {
        return Err(DropReason::ArpSpoofed);
    }
    Ok(PassReason::Neighbour)
}

/// Whether router advertisements and redirects may come this way: from the
/// host's own stack, or from the uplink (when it is a port of the bridge).
#[inline(always)]
fn router_path(arrived_on: u32) -> bool {
    arrived_on == 0 || Some(arrived_on) == UPLINK.get(0).copied()
}

/// Whether conntrack may know the packet's flow: a packet to a group
/// address is never tracked, and at an endpoint's interface only packets
/// to the receiver's listed addresses (`addressed`) are its flows' own.
/// (Worked out just before it is needed: a value kept from the start
/// would make the verifier walk every step in between once for each.)
#[inline(always)]
fn direct(hook: Hook, data: usize, data_end: usize, pkt: &Packet, addressed: bool) -> bool {
    match hook {
        Hook::FromEndpoint => !to_group_of_stations(data, data_end) && !is_group_address(pkt),
        Hook::ToEndpoint => addressed || mutant(MUTANT_UNADDRESSED_TRACKED),
        Hook::Uplink => true,
    }
}

/// Whether a packet at an endpoint's interface may be a tracked flow's,
/// and so is looked up in conntrack before its paths are checked (step 2
/// follows on a miss): a packet of a kind that is tracked (not a later
/// fragment, no ICMP message other than echo) to an individual address.
/// Any other has its paths checked first.
#[inline(always)]
fn flow_kind(data: usize, data_end: usize, pkt: &Packet) -> bool {
    let kind = match pkt.proto {
        parse::IPPROTO_ICMP | parse::IPPROTO_ICMPV6 => {
            parse::is_echo_request(pkt.proto, pkt.icmp_type) || parse::is_echo_reply(pkt.proto, pkt.icmp_type)
        }
        _ => true,
    };
    kind && pkt.fragment != Fragment::Later && !to_group_of_stations(data, data_end) && !is_group_address(pkt)
}

/// Step 2 at an endpoint's interface: a source address of this host (a
/// local endpoint's, the host's) must have entered the host by the way it
/// belongs to.
#[inline(always)]
fn source_path(slot: u32, pkt: &Packet, arrived_on: u32) -> Result<(), DropReason> {
    let owner = local(slot, pkt.family, &pkt.src);
    if owner.found != 0 && owner.ifindex != arrived_on && !mutant(MUTANT_PATH_UNCHECKED) {
        return Err(if owner.ifindex == 0 {
            DropReason::HostAddressSpoofed
        } else {
            DropReason::LocalAddressWrongPath
        });
    }
    Ok(())
}

/// Whether a packet's source may be an address of this host (`HW_LOCAL`):
/// the agent gives every such address but the link-local ones a peer entry
/// of its own that says so (a local endpoint's, the host's).
#[inline(always)]
fn may_be_local(peers: &mut Peers, pkt: &Packet) -> bool {
    let info = peers.src(pkt);
    info.local_endpoint() != 0 || info.flags() & PEER_HOST != 0 || (pkt.family == FAMILY_V6 && is_link_local(&pkt.src))
}

/// Step 2 at an endpoint's interface: whether the packet is to one of the
/// receiver's listed addresses, which alone are its flows' own (the
/// Ethernet destination is the caller's to check).
#[inline(always)]
fn addressed_to(slot: u32, pkt: &Packet, ifindex: u32) -> bool {
    let owner = local(slot, pkt.family, &pkt.dst);
    owner.found != 0 && owner.ifindex == ifindex && owner.flags & LOCAL_LINK_ONLY == 0
}

/// A frame to a group of stations (an Ethernet broadcast or multicast
/// destination) is flooded: each copy is judged at each receiver's
/// interface.
#[inline(always)]
fn to_group_of_stations(data: usize, data_end: usize) -> bool {
    matches!(parse::read::<[u8; 2]>(data, data_end, 0), Ok(b) if b[0] & 1 != 0)
}

/// Multicast and broadcast IP destinations.
#[inline(always)]
fn is_group_address(pkt: &Packet) -> bool {
    if pkt.family == FAMILY_V4 {
        pkt.dst[0] & 0xf0 == 0xe0 || pkt.dst[..4] == [0xff; 4]
    } else {
        pkt.dst[0] == 0xff
    }
}

/// Step 4: whether an ICMP error is related to a tracked flow of its own
/// parties. The quoted packet `q` must have been sent by the error's
/// destination. From an endpoint, `q` must have been addressed to that
/// endpoint (it reports on a packet it received). From the host's stack or
/// the uplink, `q` must have been sent by a local endpoint (the one this
/// interface serves) to a party reached that way: not a local endpoint, and
/// the host only when the error comes from the host.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn related(
    hook: Hook,
    endpoint: &Endpoint,
    peers: &mut Peers,
    data: usize,
    data_end: usize,
    pkt: &Packet,
    settings: &Settings,
    now: u64,
) -> bool {
    let Some(mut q) = parse::quoted_flow(data, data_end, pkt) else {
        return false;
    };
    if q.src != pkt.dst {
        return false;
    }
    let slot = peers.slot;
    let reporter = match hook {
        Hook::FromEndpoint => endpoint.endpoint,
        Hook::ToEndpoint => peers.src(pkt).local_endpoint(),
        Hook::Uplink => 0,
    };
    let q_dst = peer(slot, q.family, &q.dst);
    if reporter != 0 {
        if q_dst.local_endpoint() != reporter && !mutant(MUTANT_ICMP_ERROR_FROM_ANYONE) {
            return false;
        }
    } else {
        // `q.src` is the error's destination, already looked up.
        let q_src = peers.dst(pkt);
        if q_src.local_endpoint() == 0 || q_dst.local_endpoint() != 0 {
            return false;
        }
        if hook == Hook::ToEndpoint && q_src.local_endpoint() != endpoint.endpoint {
            return false;
        }
        // Only the host's own stack reports on a packet sent to the host.
        if q_dst.flags() & PEER_HOST != 0 && (hook == Hook::Uplink || peers.src(pkt).flags() & PEER_HOST == 0) {
            return false;
        }
    }
    q.canonicalize();
    live(&CONNTRACK, &q, settings, now).is_some() || live(&CT_INBOUND, &q, settings, now).is_some()
}

/// What step 5 looks a packet's flow up by.
struct Lookup<'a> {
    hook: Hook,
    pkt: &'a Packet,
    /// The packet's canonical key, and whether the packet runs against its
    /// order.
    key: &'a CtKey,
    flipped: bool,
    settings: &'a Settings,
    now: u64,
    len: usize,
    slot: u32,
    /// The interface the hook runs on, and the one the packet entered the
    /// host by.
    ifindex: u32,
    arrived_on: u32,
}

/// Step 5: the tracked flow of a packet, touched; whether the packet is one
/// of its replies. One lookup per table, the likelier table first: an
/// endpoint's own flows are in `HW_CONNTRACK`, flows opened towards it in
/// `HW_CT_INBOUND`. At an endpoint's interface a packet that entered the
/// host elsewhere than the uplink or the host's own stack most likely comes
/// from another local endpoint (`arrived_on` is a hint: both tables are
/// looked in). Each table's entry is used where it is found, so that the
/// verifier never follows one path for entries of both maps.
#[inline(always)]
fn ct_lookup(l: &Lookup) -> Option<bool> {
    let inbound_first = match l.hook {
        Hook::FromEndpoint => false,
        Hook::ToEndpoint => l.arrived_on == 0 || Some(l.arrived_on) == UPLINK.get(0).copied(),
        Hook::Uplink => true,
    };
    if inbound_first {
        ct_match(&CT_INBOUND, l).or_else(|| ct_match(&CONNTRACK, l))
    } else {
        ct_match(&CONNTRACK, l).or_else(|| ct_match(&CT_INBOUND, l))
    }
}

/// Step 5 in one table.
#[inline(always)]
fn ct_match(table: &LruHashMap<CtKey, CtEntry>, l: &Lookup) -> Option<bool> {
    let entry = live(table, l.key, l.settings, l.now)?;
    let reply = l.flipped != (unsafe { (*entry).flags } & CT_FLIPPED != 0);
    // ICMP is directional: an echo request is never a reply, an echo reply
    // never anything else.
    let (proto, ty) = (l.pkt.proto, l.pkt.icmp_type);
    if (reply && parse::is_echo_request(proto, ty)) || (!reply && parse::is_echo_reply(proto, ty)) {
        return None;
    }
    // A packet that can only open a flow never answers one: unless the
    // other table holds its flow, it is judged by the rules as a new flow.
    if reply && l.pkt.opens && !mutant(MUTANT_SYN_AS_REPLY) {
        return None;
    }
    // At an endpoint's interface step 2 comes before a flow passes a
    // packet. A packet that came the way one of the flow's packets passed
    // it by, under the current policy, passes as that one did; one that
    // came another way is checked, and the way it came learned when it
    // passes. One that does not is no packet of this flow: step 2 judges
    // it.
    if l.hook == Hook::ToEndpoint {
        let e = unsafe { &mut *entry };
        let (sender, receiver) = if l.flipped {
            (e.via[1], e.via[0])
        } else {
            (e.via[0], e.via[1])
        };
        if e.paths_gen != l.settings.generation || sender != l.arrived_on || receiver != l.ifindex {
            if !paths_pass(l.slot, l.pkt, l.arrived_on, l.ifindex) {
                return None;
            }
            learn_paths(e, l.flipped, l.settings, l.arrived_on, l.ifindex);
        }
    }
    ct_touch(l.hook, entry, reply, l.pkt, l.now, l.len);
    Some(reply)
}

/// Step 2 for a packet of a tracked flow that came a way the flow has not
/// learned: whether its source's path and its destination check out.
#[inline(always)]
fn paths_pass(slot: u32, pkt: &Packet, arrived_on: u32, ifindex: u32) -> bool {
    source_path(slot, pkt, arrived_on).is_ok()
        && (addressed_to(slot, pkt, ifindex) || mutant(MUTANT_UNADDRESSED_TRACKED))
}

/// Records in `entry` the paths of a packet at an endpoint's interface
/// that has passed step 2: its sender's (`arrived_on`) and its receiver's
/// (`ifindex`). `flipped`: the packet runs from the key's `dst` to its
/// `src`.
#[inline(always)]
fn learn_paths(entry: &mut CtEntry, flipped: bool, settings: &Settings, arrived_on: u32, ifindex: u32) {
    entry.paths_gen = settings.generation;
    entry.via = if flipped {
        [ifindex, arrived_on]
    } else {
        [arrived_on, ifindex]
    };
}

/// Whether mid-stream packets may create entries now (step 6d).
#[inline(always)]
fn midstream_open(slot: u32, now: u64) -> bool {
    if mutant(MUTANT_MIDSTREAM_ALWAYS) {
        return true;
    }
    match MIDSTREAM.get(slot) {
        Some(until) => now < *until,
        None => false,
    }
}

/// Step 6: the rules that allow a new flow, as (egress rule, ingress rule,
/// conntrack flags). `sender`: whose groups judge the egress of a flow from
/// an endpoint (the hook's endpoint, or for a reversed packet its source).
#[inline(always)]
fn decide(hook: Hook, sender: GroupsOf, peers: &mut Peers, pkt: &Packet) -> Result<(u32, u32, u32), DropReason> {
    let mut rule_egress = 0;
    let mut rule_ingress = 0;
    let mut flags = 0;
    match hook {
        Hook::FromEndpoint => {
            // 6a. The sender's egress, then the receiver's ingress when it
            // is local, under the same slot.
            let dst_info = peers.dst(pkt);
            rule_egress = policy(peers, sender, DIR_EGRESS, pkt).ok_or(DropReason::EgressDenied)?;
            flags |= CT_ORIG_LOCAL;
            if dst_info.local_endpoint() != 0 {
                peers.src(pkt);
                rule_ingress = policy(peers, GroupsOf::Dst, DIR_INGRESS, pkt).ok_or(DropReason::IngressDenied)?;
                flags |= CT_REPLY_LOCAL;
            }
        }
        Hook::ToEndpoint => {
            // 6b. The receiver's ingress. A local endpoint's packet (its
            // path checked in step 2) was judged by its egress at its own
            // interface.
            peers.src(pkt);
            rule_ingress = policy(peers, GroupsOf::Hook, DIR_INGRESS, pkt).ok_or(DropReason::IngressDenied)?;
            flags |= CT_REPLY_LOCAL;
        }
        Hook::Uplink => {
            // 6c. The same ingress decision the receiver's TC hook would take.
            // A receiver that is no local endpoint has no groups.
            peers.src(pkt);
            peers.dst(pkt);
            rule_ingress = policy(peers, GroupsOf::Dst, DIR_INGRESS, pkt).ok_or(DropReason::IngressDenied)?;
            flags |= CT_REPLY_LOCAL;
        }
    }
    Ok((rule_egress, rule_ingress, flags))
}

/// Step 6d: the rules for `rev` (a packet reversed), judged as a new flow.
/// At an endpoint's interface and on the uplink the packet comes from
/// outside towards a local endpoint, so the reverse flow runs from that
/// endpoint to an outsider and its egress alone decides. From an endpoint,
/// the reverse flow runs from the other party (its egress, where local) to
/// this endpoint (its ingress).
#[inline(always)]
fn decide_reverse(hook: Hook, peers: &mut Peers, rev: &Packet) -> Option<(u32, u32, u32)> {
    if hook != Hook::FromEndpoint {
        let sender = if hook == Hook::Uplink {
            peers.src(rev);
            GroupsOf::Src
        } else {
            GroupsOf::Hook
        };
        peers.dst(rev);
        let rule_egress = policy(peers, sender, DIR_EGRESS, rev)?;
        return Some((rule_egress, 0, CT_ORIG_LOCAL));
    }
    let src_info = peers.src(rev);
    if src_info.local_endpoint() != 0 {
        return decide(Hook::FromEndpoint, GroupsOf::Src, peers, rev).ok();
    }
    let dst_info = peers.dst(rev);
    if dst_info.local_endpoint() != 0 {
        let rule_ingress = policy(peers, GroupsOf::Dst, DIR_INGRESS, rev)?;
        return Some((0, rule_ingress, CT_REPLY_LOCAL));
    }
    None
}

/// What a packet's two addresses are (`HW_PEER*`), each looked up at most
/// once per packet. Each lookup also leaves the address's labels in
/// `HW_POLICY_SCAN`, on the side (0 or 1) that `side_of_src`/`side_of_dst`
/// name, for step 6's walk.
struct Peers {
    slot: u32,
    src: Peer,
    dst: Peer,
    /// `SRC_KNOWN` and `DST_KNOWN`: which of the two has been looked up.
    /// (Flags rather than `Option`s: the payload of a `None` is undefined,
    /// and the compiler may fill it from any register, a packet pointer
    /// included, which the verifier then refuses to see combined.)
    known: u32,
    /// The scratch side of the source's labels (the destination's is the
    /// other): 0, and 1 once swapped.
    flip: u32,
    /// The hook's interface, whose endpoint's groups `GroupsOf::Hook` names.
    ifindex: u32,
}

const SRC_KNOWN: u32 = 1;
const DST_KNOWN: u32 = 2;

/// What `HW_PEER*` says of an address besides its labels (which step 6
/// looks up again where it needs them): a copy of two words, which the
/// verifier merges across paths as it cannot merge pointers to entries.
#[derive(Clone, Copy)]
struct Peer {
    local_endpoint: u32,
    flags: u32,
}

impl Peer {
    const NONE: Peer = Peer {
        local_endpoint: 0,
        flags: 0,
    };

    /// The local endpoint that owns the address, 0 for none.
    #[inline(always)]
    fn local_endpoint(self) -> u32 {
        self.local_endpoint
    }

    #[inline(always)]
    fn flags(self) -> u32 {
        self.flags
    }
}

impl Peers {
    #[inline(always)]
    fn new(slot: u32, ifindex: u32) -> Peers {
        Peers {
            slot,
            src: Peer::NONE,
            dst: Peer::NONE,
            known: 0,
            flip: 0,
            ifindex,
        }
    }

    /// The same lookups for the packet travelling the other way.
    #[inline(always)]
    fn swapped(&self) -> Peers {
        let mut known = 0;
        if self.known & SRC_KNOWN != 0 {
            known |= DST_KNOWN;
        }
        if self.known & DST_KNOWN != 0 {
            known |= SRC_KNOWN;
        }
        Peers {
            slot: self.slot,
            src: self.dst,
            dst: self.src,
            known,
            flip: self.flip ^ 1,
            ifindex: self.ifindex,
        }
    }

    #[inline(always)]
    fn side_of_src(&self) -> u32 {
        self.flip & 1
    }

    #[inline(always)]
    fn side_of_dst(&self) -> u32 {
        (self.flip ^ 1) & 1
    }

    #[inline(always)]
    fn src(&mut self, pkt: &Packet) -> Peer {
        if self.known & SRC_KNOWN == 0 {
            self.src = labelled_peer(self.slot, pkt.family, &pkt.src, self.side_of_src());
            self.known |= SRC_KNOWN;
        }
        self.src
    }

    #[inline(always)]
    fn dst(&mut self, pkt: &Packet) -> Peer {
        if self.known & DST_KNOWN == 0 {
            self.dst = labelled_peer(self.slot, pkt.family, &pkt.dst, self.side_of_dst());
            self.known |= DST_KNOWN;
        }
        self.dst
    }
}

/// The same packet travelling the other way, without its L4 offset: what
/// the rules read of it. (Copying the offset would keep it live, and the
/// verifier would walk the rules once for every offset the parser allows.)
#[inline(always)]
fn reversed_packet(pkt: &Packet) -> Packet {
    Packet {
        family: pkt.family,
        proto: pkt.proto,
        src: pkt.dst,
        dst: pkt.src,
        sport: pkt.dport,
        dport: pkt.sport,
        icmp_type: pkt.icmp_type,
        icmp_code: pkt.icmp_code,
        tcp_flags: pkt.tcp_flags,
        opens: pkt.opens,
        fragment: pkt.fragment,
        frag_id: pkt.frag_id,
        l4_off: 0,
    }
}

/// Neighbour discovery, MLD and router messages (steps 1 and 2 for
/// ICMPv6). `Ok(None)` means the packet is ordinary ICMPv6 and goes on to
/// the rules.
///
/// At both of an endpoint's hooks, neighbour discovery (133, 135, 136)
/// must have hop limit 255, go to a link-scope multicast group, a
/// link-local address or an address of this host, and be its fixed header
/// plus well-formed options of the types it may carry; MLD (130-132, 143)
/// must have hop limit 1, a hop-by-hop header holding only a Router Alert,
/// its own destination, and exactly the length its records declare. From
/// an endpoint, every address and link-layer address claimed must be the
/// endpoint's own. Router advertisements and redirects (134, 137) come
/// only from the host's stack or the uplink.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn neighbour(
    hook: Hook,
    slot: u32,
    endpoint: &Endpoint,
    ifindex: u32,
    arrived_on: u32,
    data: usize,
    data_end: usize,
    pkt: &Packet,
) -> Result<Option<PassReason>, DropReason> {
    let ty = pkt.icmp_type;
    let router = ty == 134 || ty == 137;
    if !router && !parse::is_nd_or_mld(ty) {
        return Ok(None);
    }
    if hook == Hook::Uplink {
        return Ok(Some(PassReason::Neighbour));
    }
    if router {
        if hook == Hook::FromEndpoint {
            return Err(DropReason::Icmpv6Forbidden);
        }
        if !router_path(arrived_on) && !mutant(MUTANT_ROUTER_FROM_ANYONE) {
            return Err(DropReason::RouterMessageWrongPath);
        }
        return Ok(Some(PassReason::Neighbour));
    }
    // The ICMPv6 message runs to the end of the IPv6 payload.
    let payload = parse::read::<[u8; 2]>(data, data_end, parse::ETH_HLEN + 4)?;
    let end = parse::ETH_HLEN + 40 + u16::from_be_bytes(payload) as usize;
    if end < pkt.l4_off + 8 || end > parse::MAX_READ {
        return Err(DropReason::NdMalformed);
    }
    let len = end - pkt.l4_off;
    let hop_limit = parse::read::<u8>(data, data_end, parse::ETH_HLEN + 7)?;
    let unspecified = pkt.src == [0; 16];
    if parse::is_nd(ty) {
        if hop_limit != 255 || pkt.l4_off != parse::ETH_HLEN + 40 {
            return Err(DropReason::NdMalformed);
        }
        let fixed = if ty == 133 { 8 } else { 24 };
        if len < fixed {
            return Err(DropReason::NdMalformed);
        }
        nd_options(hook, endpoint, data, data_end, ty, pkt.l4_off + fixed, end, unspecified)?;
        let to_group = pkt.dst[0] == 0xff && pkt.dst[1] == 0x02;
        if !to_group && !is_link_local(&pkt.dst) && local(slot, FAMILY_V6, &pkt.dst).found == 0 {
            return Err(DropReason::NdMalformed);
        }
    } else {
        mld_shape(data, data_end, pkt, ty, hop_limit, len)?;
    }
    // Addresses claimed. From an endpoint: its source (or :: while it has
    // none, except in an advertisement) and an advertisement's target must
    // be the endpoint's own, its link-local included. Towards an endpoint:
    // an advertisement's target of this host's must come the way that
    // address belongs to (the source was checked in step 2).
    let advertises = ty == 136;
    let target = if advertises {
        parse::read::<[u8; 16]>(data, data_end, pkt.l4_off + 8)?
    } else {
        [0; 16]
    };
    if hook == Hook::FromEndpoint {
        if unspecified {
            if ty == 136 || ty == 130 {
                return Err(DropReason::NdSpoofed);
            }
        } else if !owns(slot, ifindex, &pkt.src) {
            return Err(if is_link_local(&pkt.src) {
                DropReason::NdSpoofed
            } else {
                DropReason::SpoofedSource
            });
        }
        if advertises && !owns(slot, ifindex, &target) && !mutant(MUTANT_NA_ANY_TARGET) {
            return Err(DropReason::NdSpoofed);
        }
    } else if advertises
        && let owner = local(slot, FAMILY_V6, &target)
        && owner.found != 0
        && owner.ifindex != arrived_on
    {
        return Err(DropReason::NdSpoofed);
    }
    Ok(Some(PassReason::Neighbour))
}

/// Longest run of options a neighbour discovery message may carry.
const MAX_ND_OPTIONS: usize = 4;

/// The options of a neighbour discovery message of type `ty`, from `off`
/// to `end`: source (1, solicitations) and target (2, advertisements)
/// link-layer addresses of one Ethernet address, which from an endpoint
/// must be its MAC, and a nonce (14, solicitations); nothing else, and
/// they must fill the message exactly.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn nd_options(
    hook: Hook,
    endpoint: &Endpoint,
    data: usize,
    data_end: usize,
    ty: u8,
    off: usize,
    end: usize,
    unspecified: bool,
) -> Result<(), DropReason> {
    let mut o = off;
    for _ in 0..MAX_ND_OPTIONS {
        if o >= end || o > parse::MAX_READ {
            break;
        }
        let opt = parse::read::<[u8; 8]>(data, data_end, o)?;
        let (kind, units) = (opt[0], opt[1] as usize);
        if units == 0 {
            return Err(DropReason::NdMalformed);
        }
        match kind {
            1 | 2 => {
                let allowed = if kind == 1 {
                    ty != 136 && !unspecified
                } else {
                    ty == 136
                };
                if units != 1 || !allowed {
                    return Err(DropReason::NdMalformed);
                }
                if hook == Hook::FromEndpoint && opt[2..8] != endpoint.mac {
                    return Err(DropReason::MacSpoofed);
                }
            }
            14 if ty == 135 => {}
            _ => return Err(DropReason::NdMalformed),
        }
        o += units * 8;
    }
    if o != end {
        return Err(DropReason::NdMalformed);
    }
    Ok(())
}

/// Most multicast address records an MLDv2 report may carry.
const MAX_MLD_RECORDS: usize = 16;

/// MLD's shape: hop limit 1, one 8-byte hop-by-hop header holding a Router
/// Alert (RFC 2711) and padding, the destination its type uses, and a
/// length of exactly what it declares: 24 bytes for MLDv1 (131, 132) and a
/// v1 query, 28 plus its sources for a v2 query, the declared records for
/// a v2 report (143).
#[inline(always)]
fn mld_shape(data: usize, data_end: usize, pkt: &Packet, ty: u8, hop_limit: u8, len: usize) -> Result<(), DropReason> {
    let hbh = parse::read::<[u8; 8]>(data, data_end, parse::ETH_HLEN + 40)?;
    let first = parse::read::<u8>(data, data_end, parse::ETH_HLEN + 6)?;
    let padding = hbh[6..8] == [1, 0] || hbh[6..8] == [0, 0];
    if hop_limit != 1
        || first != 0
        || pkt.l4_off != parse::ETH_HLEN + 48
        || hbh[0] != parse::IPPROTO_ICMPV6
        || hbh[1] != 0
        || hbh[2..6] != [5, 2, 0, 0]
        || !padding
    {
        return Err(DropReason::NdMalformed);
    }
    // The multicast address an MLDv1 message is about, and whether it goes
    // to it. (No `Option`s of addresses here or below: the compiler may
    // fill a `None`'s payload from any register, and the verifier refuses
    // packet pointers in it.)
    let group = parse::read::<[u8; 16]>(data, data_end, pkt.l4_off + 8).unwrap_or([0; 16]);
    let to_group = group[0] == 0xff && group == pkt.dst;
    let all_routers = pkt.dst == ipv6_link_group(2);
    let ok = match ty {
        131 => len == 24 && to_group,
        132 => len == 24 && all_routers,
        130 => {
            let to = pkt.dst == ipv6_link_group(1) || to_group;
            let sized = len == 24 || {
                let n = parse::read::<[u8; 2]>(data, data_end, pkt.l4_off + 26)?;
                len == 28 + 16 * u16::from_be_bytes(n) as usize
            };
            to && sized
        }
        _ => pkt.dst == ipv6_link_group(0x16) && mld_records(data, data_end, pkt.l4_off, len)?,
    };
    if !ok {
        return Err(DropReason::NdMalformed);
    }
    Ok(())
}

/// Whether an MLDv2 report of `len` bytes at `off` is exactly the records
/// it declares.
#[inline(always)]
fn mld_records(data: usize, data_end: usize, off: usize, len: usize) -> Result<bool, DropReason> {
    let count = u16::from_be_bytes(parse::read::<[u8; 2]>(data, data_end, off + 6)?) as usize;
    if count > MAX_MLD_RECORDS {
        return Ok(false);
    }
    let end = off + len;
    let mut o = off + 8;
    for i in 0..MAX_MLD_RECORDS {
        if i >= count || o > parse::MAX_READ {
            break;
        }
        let rec = parse::read::<[u8; 4]>(data, data_end, o)?;
        let sources = u16::from_be_bytes([rec[2], rec[3]]) as usize;
        o += 20 + 16 * sources + 4 * rec[1] as usize;
    }
    Ok(o == end)
}

/// ff02::`n`.
#[inline(always)]
fn ipv6_link_group(n: u8) -> [u8; 16] {
    let mut a = [0; 16];
    a[0] = 0xff;
    a[1] = 0x02;
    a[15] = n;
    a
}

/// Whether the endpoint of `ifindex` owns `addr`: one of its listed
/// addresses or its link-local one.
#[inline(always)]
fn owns(slot: u32, ifindex: u32, addr: &[u8; 16]) -> bool {
    let owner = local(slot, FAMILY_V6, addr);
    owner.found != 0 && owner.ifindex == ifindex
}

#[inline(always)]
fn is_link_local(addr: &[u8; 16]) -> bool {
    addr[0] == 0xfe && addr[1] & 0xc0 == 0x80
}

#[inline(always)]
fn is_link_local_or_unspecified(addr: &[u8; 16]) -> bool {
    (addr[0] == 0xfe && addr[1] & 0xc0 == 0x80) || *addr == [0; 16]
}

#[inline(always)]
fn v4_addr(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&a);
    out
}

#[inline(always)]
fn active_slot() -> u32 {
    match ACTIVE.get(0) {
        Some(s) if *s == 1 => 1,
        _ => 0,
    }
}

/// An interface's entry in `HW_IFACE_s`.
#[inline(always)]
fn iface_entry(slot: u32, ifindex: u32) -> Option<&'static EndpointInfo> {
    unsafe {
        if slot == 0 {
            IFACE_0.get(&ifindex)
        } else {
            IFACE_1.get(&ifindex)
        }
    }
}

/// The endpoint behind an interface (`HW_IFACE_s`), without its groups,
/// which only step 6 reads (`hw_policy`).
#[inline(always)]
fn iface(slot: u32, ifindex: u32) -> Option<Endpoint> {
    let found = iface_entry(slot, ifindex)?;
    Some(Endpoint {
        endpoint: found.endpoint,
        mac: found.mac,
    })
}

/// The endpoint of the interface a hook runs on, as the steps read it.
#[derive(Clone, Copy)]
struct Endpoint {
    endpoint: u32,
    mac: [u8; 6],
}

impl Endpoint {
    /// The uplink's: none.
    const NONE: Endpoint = Endpoint {
        endpoint: 0,
        mac: [0; 6],
    };
}

#[inline(always)]
fn src_allowed(slot: u32, ifindex: u32, family: u8, addr: &[u8; 16]) -> bool {
    let key = SrcKey {
        ifindex,
        family,
        _pad: [0; 3],
        addr: *addr,
    };
    let found = unsafe { if slot == 0 { SRC_0.get(&key) } else { SRC_1.get(&key) } };
    found.is_some()
}

/// Where an address of this host must come from (`HW_LOCAL`), `found` 0
/// for any other address. (A plain value rather than an `Option`, whose
/// `None` would carry an undefined payload: see `Peers`.)
#[derive(Clone, Copy)]
struct Owner {
    found: u32,
    /// The owner's interface, 0 for the host's own addresses.
    ifindex: u32,
    flags: u32,
}

#[inline(always)]
fn local(slot: u32, family: u8, addr: &[u8; 16]) -> Owner {
    let key = LocalKey {
        family: family as u32,
        addr: *addr,
    };
    let found = unsafe {
        if slot == 0 {
            LOCAL_0.get(&key)
        } else {
            LOCAL_1.get(&key)
        }
    };
    match found {
        Some(a) => Owner {
            found: 1,
            ifindex: a.ifindex,
            flags: a.flags,
        },
        None => Owner {
            found: 0,
            ifindex: 0,
            flags: 0,
        },
    }
}

/// An address's entry in `HW_PEER*`, null when no prefix covers it.
#[inline(always)]
fn peer_entry(slot: u32, family: u8, addr: &[u8; 16]) -> *const PeerInfo {
    let found = if family == FAMILY_V4 {
        let key = Key::new(32, [addr[0], addr[1], addr[2], addr[3]]);
        if slot == 0 {
            PEER4_0.get(&key)
        } else {
            PEER4_1.get(&key)
        }
    } else {
        let key = Key::new(128, *addr);
        if slot == 0 {
            PEER6_0.get(&key)
        } else {
            PEER6_1.get(&key)
        }
    };
    match found {
        Some(info) => info as *const PeerInfo,
        None => core::ptr::null(),
    }
}

/// Whether an address is a local endpoint's or the host's.
#[inline(always)]
fn peer(slot: u32, family: u8, addr: &[u8; 16]) -> Peer {
    let entry = peer_entry(slot, family, addr);
    if entry.is_null() {
        return Peer::NONE;
    }
    unsafe {
        Peer {
            local_endpoint: (*entry).local_endpoint,
            flags: (*entry).flags,
        }
    }
}

/// `peer` for `Peers`, which also leaves the address's labels in
/// `HW_POLICY_SCAN` on `side` (none when no prefix covers it).
#[inline(always)]
fn labelled_peer(slot: u32, family: u8, addr: &[u8; 16], side: u32) -> Peer {
    let Some(q) = POLICY_SCAN.get_ptr_mut(0) else {
        return Peer::NONE;
    };
    unsafe {
        (*q).slot = slot;
        (*q).family = family;
        // The key, written here: copies in `hw_peer` would be calls to
        // `memcpy`, a frame more than Linux 6.1's stack allows.
        let s = (side & 1) as usize;
        if family == FAMILY_V4 {
            let a = [addr[0], addr[1], addr[2], addr[3]];
            (*q).peer4 = Key::new(32, a);
            (*q).cidr4[s].data.addr = a;
        } else {
            (*q).peer6 = Key::new(128, *addr);
            (*q).cidr6[s].data.addr = *addr;
        }
    }
    let found = hw_peer(side);
    if found < 0 {
        return Peer::NONE;
    }
    Peer {
        local_endpoint: found as u32,
        flags: (found >> 32) as u32,
    }
}

/// `labelled_peer`'s lookup of the address in `HW_POLICY_SCAN`: its entry's
/// endpoint and flags (`flags << 32 | local_endpoint`), -1 when no prefix
/// covers it; its labels and (a local endpoint's) groups are copied to the
/// scratch's `side`. A global function, checked once, its copy loops
/// included.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn hw_peer(side: u32) -> i64 {
    let Some(q) = POLICY_SCAN.get_ptr_mut(0) else {
        return -1;
    };
    let q = unsafe { &mut *q };
    let slot = q.slot & 1;
    let labels = if q.family == FAMILY_V4 {
        if slot == 0 {
            PEER4_0.get(&q.peer4)
        } else {
            PEER4_1.get(&q.peer4)
        }
    } else {
        if slot == 0 {
            PEER6_0.get(&q.peer6)
        } else {
            PEER6_1.get(&q.peer6)
        }
    };
    let side = (side & 1) as usize;
    let Some(info) = labels else {
        q.labels[side][0] = 0;
        q.groups[side][0] = 0;
        return -1;
    };
    for j in 0..MAX_PEER_LABELS {
        let label = info.labels[j];
        q.labels[side][j] = label;
        if label == 0 {
            break;
        }
    }
    for i in 0..MAX_GROUPS {
        let group = info.groups.ids[i];
        q.groups[side][i] = group;
        if group == 0 {
            break;
        }
    }
    ((info.flags as i64) << 32) | info.local_endpoint as i64
}

/// The rule that allows `pkt` in direction `dir` for the local endpoint
/// whose groups `owner` names, judged against the other end (the
/// destination for egress, the source for ingress); `peers` must have
/// looked up the ends it reads. For each of the owner's groups: one
/// `HW_POLICY` lookup per label of the other end (its groups, `host`), then
/// the other end's address in the CIDR trie, one lookup per tier (the
/// range tier a short walk when its runs did not fit one entry); the first
/// hit wins. Each lookup's longest match settles the protocol and port, or
/// the address, so overlapping ranges and CIDRs need no splitting.
#[inline(always)]
fn policy(peers: &Peers, owner: GroupsOf, dir: u8, pkt: &Packet) -> Option<u32> {
    let q = POLICY_SCAN.get_ptr_mut(0)?;
    let side = if dir == DIR_EGRESS {
        peers.side_of_dst()
    } else {
        peers.side_of_src()
    };
    let owner = match owner {
        GroupsOf::Hook => GROUPS_OF_HOOK as u32,
        GroupsOf::Src => peers.side_of_src(),
        GroupsOf::Dst => peers.side_of_dst(),
    };
    unsafe {
        (*q).slot = peers.slot;
        (*q).ifindex = peers.ifindex;
        (*q).family = pkt.family;
        (*q).proto = pkt.proto;
        (*q).port = pkt.rule_port();
    }
    let rule = hw_policy(owner, dir as u32, side);
    if rule > 0 { Some(rule as u32) } else { None }
}

/// `policy`'s lookups, for the question in `HW_POLICY_SCAN`: a global
/// function, which the verifier checks once rather than at every path
/// that reaches a decision, its loop over the groups included. Its state
/// lives in the per-CPU map: Linux 6.1 allows the program's frame and this
/// one's 512 bytes together, each rounded up to 32.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn hw_policy(owner: u32, dir: u32, side: u32) -> i64 {
    let Some(q) = POLICY_SCAN.get_ptr_mut(0) else {
        return 0;
    };
    let q = unsafe { &mut *q };
    let slot = q.slot & 1;
    let owner = if owner >= GROUPS_OF_HOOK as u32 {
        // The hook's endpoint: its interface's entry.
        let Some(endpoint) = iface_entry(slot, q.ifindex) else {
            return 0;
        };
        for i in 0..MAX_GROUPS {
            let group = endpoint.groups.ids[i];
            q.groups[GROUPS_OF_HOOK][i] = group;
            if group == 0 {
                break;
            }
        }
        GROUPS_OF_HOOK
    } else {
        owner as usize
    };
    let side = (side & 1) as usize;
    let foreign = foreign_icmp(q.family, q.proto);
    q.key.prefix_len = (size_of::<PolicyKey>() * 8) as u32;
    q.key.data.dir = dir as u8;
    q.key.data.foreign = foreign as u8;
    q.key.data.proto = q.proto;
    q.key.data.port_be = q.port.to_be_bytes();
    // `_tail` stays as the map was created: zero.
    // The lists end at their first 0 (no group or label is 0): a test of
    // the value read, which tells the verifier nothing about the loop's
    // counters, so that every round of the walk is checked once.
    for i in 0..MAX_GROUPS {
        let group = q.groups[owner][i];
        if group == 0 {
            break;
        }
        q.key.data.group = group;
        for j in 0..MAX_PEER_LABELS {
            let label = q.labels[side][j];
            if label == 0 {
                break;
            }
            q.key.data.label = label;
            let found = if q.slot & 1 == 0 {
                POLICY_0.get(&q.key)
            } else {
                POLICY_1.get(&q.key)
            };
            if let Some(v) = found {
                return v.rule as i64;
            }
        }
        // The group and direction are read back from the key: fewer
        // values live across the calls, a smaller frame.
        let rule = hw_cidr(q.key.data.group, q.key.data.dir as u32, side as u32);
        if rule > 0 {
            return rule;
        }
    }
    0
}

/// The CIDR tries' answer for one group (the question in
/// `HW_POLICY_SCAN`, the address that of `side`): the tier of one port,
/// that of every protocol, then the range tier's walk. A global function
/// called by `hw_policy`, so that the verifier checks it once rather than
/// for each group; its frame and `hw_policy`'s are what the programs'
/// frames leave of the 512 bytes.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn hw_cidr(group: u32, dir: u32, side: u32) -> i64 {
    let Some(q) = POLICY_SCAN.get_ptr_mut(0) else {
        return 0;
    };
    let q = unsafe { &mut *q };
    let side = (side & 1) as usize;
    // Few values live across the lookups (the frame is what is left of
    // Linux 6.1's 512 bytes): the rest is read back from the scratch.
    q.cidr_map = (q.slot & 1) | if q.family == FAMILY_V4 { 0 } else { 2 };
    q.cidr_foreign = foreign_icmp(q.family, q.proto) as u8;
    q.cidr4[side].data.group = group;
    q.cidr4[side].data.dir = dir as u8;
    q.cidr6[side].data.group = group;
    q.cidr6[side].data.dir = dir as u8;
    // One port (or ICMP type and code).
    cidr_tier(q, side, TIER_EXACT, q.cidr_foreign, q.proto, q.port);
    if let Some(v) = cidr_entry(q, side) {
        return v.rule as i64;
    }
    // Every protocol.
    cidr_tier(q, side, TIER_ANY, 0, 0, 0);
    if let Some(v) = cidr_entry(q, side) {
        return v.rule as i64;
    }
    // Ranges: each entry lists runs; `next` names the entry that holds the
    // rest of its chain.
    cidr_tier(q, side, TIER_RANGES, q.cidr_foreign, q.proto, 0);
    for _ in 0..MAX_RANGE_STEPS {
        let Some(v) = cidr_entry(q, side) else {
            return 0;
        };
        // The runs end at the first without a rule (ids start at 1): a
        // test of the value read, not of a count (see `hw_policy`).
        for r in 0..MAX_CIDR_RUNS {
            let run = &v.runs[r];
            if run.rule == 0 {
                break;
            }
            if run.first <= q.port && q.port <= run.last {
                return run.rule as i64;
            }
        }
        if v.next == 0 {
            return 0;
        }
        let len = CIDR_FIXED_BITS + (v.next & 0xff) - 1;
        let tier = (v.next >> 8) as u8;
        q.cidr4[side].prefix_len = len;
        q.cidr4[side].data.tier = tier;
        q.cidr6[side].prefix_len = len;
        q.cidr6[side].data.tier = tier;
    }
    0
}

/// Sets the tier's part of `side`'s CIDR keys, the whole address long.
#[inline(always)]
fn cidr_tier(q: &mut PolicyScan, side: usize, tier: u8, foreign: u8, proto: u8, port: u16) {
    let port_be = port.to_be_bytes();
    let k4 = &mut q.cidr4[side];
    k4.prefix_len = CIDR_FIXED_BITS + 32;
    k4.data.tier = tier;
    k4.data.foreign = foreign;
    k4.data.proto = proto;
    k4.data.port_be = port_be;
    let k6 = &mut q.cidr6[side];
    k6.prefix_len = CIDR_FIXED_BITS + 128;
    k6.data.tier = tier;
    k6.data.foreign = foreign;
    k6.data.proto = proto;
    k6.data.port_be = port_be;
}

/// `side`'s key looked up in the CIDR trie of the scratch's slot and
/// family.
#[inline(always)]
fn cidr_entry(q: &PolicyScan, side: usize) -> Option<&'static CidrValue> {
    match q.cidr_map {
        0 => CIDR4_0.get(&q.cidr4[side]),
        1 => CIDR4_1.get(&q.cidr4[side]),
        2 => CIDR6_0.get(&q.cidr6[side]),
        _ => CIDR6_1.get(&q.cidr6[side]),
    }
}

/// Whose groups judge a direction of a flow: the hook's endpoint's, or
/// those of a local endpoint at one of the packet's ends (none for any
/// other address).
#[derive(Clone, Copy)]
enum GroupsOf {
    Hook,
    Src,
    Dst,
}

/// `PolicyScan::groups` of the hook's endpoint.
const GROUPS_OF_HOOK: usize = 2;

/// Step 6's question and the state of its walk (`HW_POLICY_SCAN`, per CPU).
#[repr(C)]
pub struct PolicyScan {
    key: Key<PolicyKey>,
    /// The address `hw_peer` looks up, as the key of its family's trie.
    peer4: Key<[u8; 4]>,
    peer6: Key<[u8; 16]>,
    /// The CIDR tries' keys for the address of each side.
    cidr4: [Key<CidrKey<4>>; 2],
    cidr6: [Key<CidrKey<16>>; 2],
    /// The CIDR trie `hw_policy` looks up: slot | 2 for IPv6.
    cidr_map: u32,
    /// `foreign` of the packet's key in the tiers of one protocol.
    cidr_foreign: u8,
    /// The labels of the packet's two ends, by `Peers` side; a list ends
    /// at its first 0.
    labels: [[u32; MAX_PEER_LABELS]; 2],
    /// The groups of the packet's two ends (a local endpoint's, else
    /// none), by side, then those of the hook's endpoint (from its
    /// interface's entry); a list ends at its first 0.
    groups: [[u32; MAX_GROUPS]; 3],
    slot: u32,
    ifindex: u32,
    family: u8,
    proto: u8,
    port: u16,
}

/// Conntrack key of a packet in its own direction. An echo reply is keyed
/// as the request it answers, so only the reversed lookup can find it.
#[inline(always)]
fn flow_key(pkt: &Packet) -> CtKey {
    let mut key = CtKey {
        src: pkt.src,
        dst: pkt.dst,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    if pkt.proto == parse::IPPROTO_ICMP || pkt.proto == parse::IPPROTO_ICMPV6 {
        let request = match pkt.icmp_type {
            0 => 8,
            129 => 128,
            t => t,
        };
        key.sport = pkt.sport;
        key.dport = request as u16;
    }
    key
}

/// Flows that get a conntrack entry: everything but ICMP other than echo
/// requests.
#[inline(always)]
fn tracked_kind(pkt: &Packet) -> bool {
    if pkt.proto == parse::IPPROTO_ICMP || pkt.proto == parse::IPPROTO_ICMPV6 {
        parse::is_echo_request(pkt.proto, pkt.icmp_type)
    } else {
        true
    }
}

/// Takes one of `owner`'s slots in the table it is charged to (`inbound`:
/// `HW_CT_INBOUND`); `false` when it has none left. The count is not atomic
/// across CPUs: the agent recounts every two seconds, so a race costs at
/// most a few flows over the cap, briefly.
#[inline(always)]
fn reserve_flow(owner: u32, inbound: bool, settings: &Settings) -> bool {
    if owner == 0 {
        return true;
    }
    let (counts, cap) = if inbound {
        (&CT_COUNT_IN, settings.max_inbound_per_endpoint)
    } else {
        (&CT_COUNT, settings.max_flows_per_endpoint)
    };
    match counts.get_ptr_mut(&owner) {
        Some(count) => unsafe {
            if *count >= cap {
                return false;
            }
            *count += 1;
            true
        },
        None => {
            let _ = counts.insert(&owner, &1, 0);
            true
        }
    }
}

/// A live entry for `key` in `table`, or `None` if there is none or it has
/// expired.
#[inline(always)]
fn live(table: &LruHashMap<CtKey, CtEntry>, key: &CtKey, settings: &Settings, now: u64) -> Option<*mut CtEntry> {
    let entry = table.get_ptr_mut(key)?;
    let e = unsafe { &*entry };
    if now.saturating_sub(e.last_seen_ns) > ct_timeout(settings, key.proto, e.flags) {
        return None;
    }
    Some(entry)
}

#[inline(always)]
fn ct_touch(hook: Hook, entry: *mut CtEntry, reply: bool, pkt: &Packet, now: u64, len: usize) {
    let e = unsafe { &mut *entry };
    e.last_seen_ns = now;
    let mut flags = e.flags;
    // Both directions seen: a reply, or for a mid-stream entry (made by a
    // reply) a packet of the allowed direction. The established timeouts
    // apply from then on.
    if reply != (flags & CT_MIDSTREAM != 0) {
        flags |= CT_SEEN_REPLY;
    }
    if pkt.proto == parse::IPPROTO_TCP && pkt.tcp_flags & (parse::TCP_FIN | parse::TCP_RST) != 0 {
        flags |= CT_CLOSING;
    }
    if flags != e.flags {
        e.flags = flags;
    }
    // Each packet is counted once: at the sending endpoint's interface, or
    // at the receiving one when the sender is not local.
    let count = match hook {
        Hook::FromEndpoint => true,
        Hook::ToEndpoint => {
            let sender_local = if reply { CT_REPLY_LOCAL } else { CT_ORIG_LOCAL };
            flags & sender_local == 0
        }
        Hook::Uplink => false,
    };
    if count {
        count_rule(e.rule_egress, len as u64);
        count_rule(e.rule_ingress, len as u64);
    }
}

#[inline(always)]
fn count_rule(rule: u32, bytes: u64) {
    if rule == 0 {
        return;
    }
    if let Some(c) = RULE_STATS.get_ptr_mut(rule) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// A first fragment that passed (by any step) lets the rest of its
/// datagram through.
#[inline(always)]
fn remember_first_fragment(pkt: &Packet, now: u64) {
    if pkt.fragment == Fragment::First {
        let _ = FRAGS.insert(&frag_key(pkt), &now, 0);
    }
}

#[inline(always)]
fn frag_key(pkt: &Packet) -> FragKey {
    FragKey {
        src: pkt.src,
        dst: pkt.dst,
        id: pkt.frag_id,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    }
}
