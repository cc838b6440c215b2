//! What the datapath should answer, from the documented semantics: the
//! reference evaluator for the rules (`hostwall::reference`), plus what the
//! README and SECURITY.md say about the steps around them: identity at the
//! attachment point, the uplink's early checks, fragments, ICMP errors
//! bound to a party of their flow, and connection tracking (which flows are
//! tracked, how replies match and that a packet which can only open a flow
//! is never one, the timeouts, a TCP packet without SYN admitted as the far
//! side of a flow the rules allow while mid-stream admission is open, and
//! the two per-endpoint shares: flows an endpoint opens, flows opened
//! towards it).
//!
//! A flow is its tuple, whichever way it runs (as one TCP connection is
//! both its directions): the model keeps each under its tuple with the
//! direction the rules allowed, apart for flows endpoints open and flows
//! opened towards them (SECURITY.md, 4). It knows nothing of the
//! datapath's keys or lookup order.
//!
//! Conntrack timing: the kernel stamps a flow with `bpf_ktime_get_ns`
//! (CLOCK_MONOTONIC, as `Instant`) somewhere inside the window of the run
//! that touched it. When the windows leave it open whether a flow has
//! expired, both answers are accepted and the model follows the one the
//! datapath gave.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hostwall::policy::{ConntrackTimeouts, Endpoint, Midstream, Policy};
use hostwall::reference::{Denial, Flow, Origin, Reference, Verdict};
use hostwall_common::{DropReason, PassReason};
use hostwall_tests::testrun::{Expect, NODE, UPLINK_IFACE};

use crate::generate::{ACK, At, FIN, Frag, Packet, Quote, RST, SYN, Transport};

/// When a run happened: the kernel's clock read falls inside.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

/// A tracked flow as the README describes it: by ports for TCP, UDP and
/// SCTP, by identifier for ICMP echo, by address pair for the rest; with
/// `src` the end that sorts first (`canonical`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum FlowId {
    Ports {
        proto: u8,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
    },
    Echo {
        proto: u8,
        src: IpAddr,
        dst: IpAddr,
        id: u16,
    },
    Pair {
        proto: u8,
        src: IpAddr,
        dst: IpAddr,
    },
}

/// Where a flow is kept: (opened towards a local endpoint, its tuple).
type Slot = (bool, FlowId);

/// A tracked flow.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The flow the rules allowed runs from the tuple's `dst` to its `src`.
    flipped: bool,
    /// Both directions seen: the established timeouts apply. A mid-stream
    /// entry starts with its replies seen and gets this once a packet of
    /// the allowed direction passes.
    seen_reply: bool,
    closing: bool,
    /// Made by a mid-stream packet (a reply of this flow).
    midstream: bool,
    last: Window,
}

/// Which step decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Identity,
    /// A non-first fragment, by its first fragment.
    Fragment,
    /// An ICMP error related to a tracked flow of its parties.
    Related,
    Conntrack,
    Rules,
    /// A TCP packet without SYN, admitted as the reverse of an allowed flow.
    Reverse,
    /// Allowed, but the endpoint's share of the table is full.
    Share,
}

/// Situations the adversarial test counts, as the model saw them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Notes {
    /// A packet that can only open a flow met a live flow it would be a
    /// reply of.
    pub opens_on_reply: bool,
    /// An ICMP error quoting a live flow, from someone no party of it.
    pub error_from_non_party: bool,
    /// A mid-stream packet (its reverse allowed) while admission is closed.
    pub midstream_closed: bool,
    /// A local endpoint opened a flow while its inbound share was full.
    pub opened_with_inbound_full: bool,
    /// Judged by the rules but never tracked: to a group address, to an
    /// address the receiver does not list, or a local endpoint's packet at
    /// the receiver's interface.
    pub never_tracked: bool,
}

#[derive(Clone, Debug)]
pub struct Judgement {
    pub expect: Expect,
    pub step: Step,
    /// The reference's verdict, when the rules decided.
    pub verdict: Option<Verdict>,
    /// The rules decided although the flow had been tracked: its entry
    /// had expired.
    pub stale: bool,
    pub notes: Notes,
}

/// Which share a new flow is charged to: (flows opened towards the owner,
/// the owner's name).
type Share = (bool, String);

#[derive(Clone, Debug, Default)]
struct Update {
    /// (flow, is a reply, closing)
    touch: Option<(Slot, bool, bool)>,
    /// (flow, runs flipped, closing, mid-stream, share)
    insert: Option<(FlowId, bool, bool, bool, Share)>,
    /// A first fragment that passed.
    fragment: Option<FragId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FragId {
    src: IpAddr,
    dst: IpAddr,
    id: u16,
    proto: u8,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Alive,
    Expired,
    Unsure,
}

pub struct Model<'a> {
    policy: &'a Policy,
    reference: Reference<'a>,
    host: &'a [IpAddr],
    timeouts: ConntrackTimeouts,
    /// Whether mid-stream admission is open (the harness opens the
    /// startup window anew at every apply).
    midstream_open: bool,
    flows: HashMap<Slot, Entry>,
    fragments: HashMap<FragId, Window>,
    /// Flows charged to each share; the agent's recount does not run under
    /// the tests, so they only grow.
    charged: HashMap<Share, u32>,
}

fn is_echo_request(proto: u8, ty: u8) -> bool {
    (proto == 1 && ty == 8) || (proto == 58 && ty == 128)
}

fn is_echo_reply(proto: u8, ty: u8) -> bool {
    (proto == 1 && ty == 0) || (proto == 58 && ty == 129)
}

pub fn is_icmp_error(l4: &Transport) -> bool {
    match *l4 {
        Transport::Icmp { proto: 1, ty, .. } => matches!(ty, 3 | 11 | 12),
        Transport::Icmp { proto: 58, ty, .. } => matches!(ty, 1..=4),
        _ => false,
    }
}

/// Multicast and broadcast destinations.
fn is_group(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_multicast(),
    }
}

fn link_local_or_unspecified(a: IpAddr) -> bool {
    match a {
        IpAddr::V6(v6) => v6.is_unicast_link_local() || v6.is_unspecified(),
        IpAddr::V4(_) => false,
    }
}

pub fn drop_reason(d: &Denial) -> DropReason {
    match d {
        Denial::SpoofedSource => DropReason::SpoofedSource,
        Denial::LocalAddressWrongPath => DropReason::LocalAddressWrongPath,
        Denial::Egress => DropReason::EgressDenied,
        Denial::Ingress => DropReason::IngressDenied,
    }
}

impl<'a> Model<'a> {
    pub fn new(policy: &'a Policy, host: &'a [IpAddr]) -> Model<'a> {
        Model {
            policy,
            reference: Reference {
                policy,
                node: NODE,
                host_addresses: host,
            },
            host,
            timeouts: policy.settings.conntrack.clone(),
            midstream_open: policy.settings.conntrack.midstream != Midstream::Deny,
            flows: HashMap::new(),
            fragments: HashMap::new(),
            charged: HashMap::new(),
        }
    }

    /// Mid-stream admission as the case set it up (a `startup` window that
    /// has passed is closed).
    pub fn set_midstream_open(&mut self, open: bool) {
        self.midstream_open = open;
    }

    /// Forgets every flow, fragment and share (the fixture's conntrack was
    /// flushed).
    pub fn forget(&mut self) {
        self.flows.clear();
        self.fragments.clear();
        self.charged.clear();
    }

    fn local_owner(&self, addr: IpAddr) -> Option<&'a Endpoint> {
        self.policy
            .endpoints
            .iter()
            .find(|e| e.is_local(NODE) && e.addresses.contains(&addr))
    }

    fn endpoint_at(&self, iface: &str) -> &'a Endpoint {
        self.policy
            .endpoints
            .iter()
            .find(|e| e.is_local(NODE) && e.interface.as_deref() == Some(iface))
            .expect("hook on an endpoint's interface")
    }

    pub fn flow(pkt: &Packet) -> Flow {
        let (icmp_type, icmp_code) = match pkt.l4 {
            Transport::Icmp { ty, code, .. } => (ty, code),
            _ => (0, 0),
        };
        Flow {
            src: pkt.src,
            dst: pkt.dst,
            proto: pkt.l4.proto(),
            port: pkt.l4.dport(),
            icmp_type,
            icmp_code,
        }
    }

    fn timeout(&self, id: &FlowId, e: &Entry) -> Duration {
        let t = &self.timeouts;
        let proto = match id {
            FlowId::Ports { proto, .. } | FlowId::Echo { proto, .. } | FlowId::Pair { proto, .. } => *proto,
        };
        match proto {
            // SCTP shares TCP's timeouts; only TCP has FIN and RST.
            6 | 132 if e.closing || !e.seen_reply => t.tcp_other,
            6 | 132 => t.tcp_established,
            17 if e.seen_reply => t.udp_stream,
            17 => t.udp,
            1 | 58 => t.icmp,
            _ => t.other,
        }
    }

    fn liveness(&self, slot: &Slot, now: Window) -> Liveness {
        let Some(e) = self.flows.get(slot) else {
            return Liveness::Expired;
        };
        let timeout = self.timeout(&slot.1, e);
        let least = now.start.saturating_duration_since(e.last.end);
        let most = now.end.saturating_duration_since(e.last.start);
        if most <= timeout {
            Liveness::Alive
        } else if least > timeout {
            Liveness::Expired
        } else {
            Liveness::Unsure
        }
    }

    /// The tuple of `src -> dst` carrying `l4`, in canonical order, and
    /// whether that order runs against the packet. ICMP echo requests and
    /// replies have the tuple of their echo flow; other ICMP has none.
    fn tuple(src: IpAddr, dst: IpAddr, l4: &Transport) -> Option<(FlowId, bool)> {
        let proto = l4.proto();
        let (ends, ports) = match *l4 {
            Transport::Tcp { sport, dport, .. }
            | Transport::Udp { sport, dport }
            | Transport::Sctp { sport, dport, .. } => ((src, dst), Some((sport, dport))),
            Transport::Icmp { proto, ty, .. } if !is_echo_request(proto, ty) && !is_echo_reply(proto, ty) => {
                return None;
            }
            _ => ((src, dst), None),
        };
        let flipped = match ports {
            Some((sport, dport)) => (ends.0, sport) > (ends.1, dport),
            None => ends.0 > ends.1,
        };
        let (a, b) = if flipped { (ends.1, ends.0) } else { ends };
        let id = match (*l4, ports) {
            (_, Some((sport, dport))) => {
                let (sport, dport) = if flipped { (dport, sport) } else { (sport, dport) };
                FlowId::Ports {
                    proto,
                    src: a,
                    dst: b,
                    sport,
                    dport,
                }
            }
            (Transport::Icmp { proto, id, .. }, None) => FlowId::Echo {
                proto,
                src: a,
                dst: b,
                id,
            },
            _ => FlowId::Pair { proto, src: a, dst: b },
        };
        Some((id, flipped))
    }

    fn tuple_of(pkt: &Packet) -> Option<(FlowId, bool)> {
        Model::tuple(pkt.src, pkt.dst, &pkt.l4)
    }

    /// Where the flow of an ICMP error's quoted packet may be kept. Only a
    /// quote of a tracked kind names one (an echo request, not a reply).
    fn quoted_slots(q: &Quote) -> Vec<Slot> {
        if let Transport::Icmp { proto, ty, .. } = q.l4
            && !is_echo_request(proto, ty)
        {
            return Vec::new();
        }
        match Model::tuple(q.src, q.dst, &q.l4) {
            Some((id, _)) => vec![(false, id), (true, id)],
            None => Vec::new(),
        }
    }

    fn closing(pkt: &Packet) -> bool {
        matches!(pkt.l4, Transport::Tcp { flags, .. } if flags & (FIN | RST) != 0)
    }

    /// A packet that can only open a flow and is never a reply: a TCP SYN
    /// without ACK, whatever else it carries, or an SCTP INIT.
    fn opens(pkt: &Packet) -> bool {
        match pkt.l4 {
            Transport::Tcp { flags, .. } => flags & (SYN | ACK) == SYN,
            Transport::Sctp { chunk, .. } => chunk == Some(1),
            _ => false,
        }
    }

    /// Whether an ICMP error at its hook comes from a party of the quoted
    /// packet's flow and goes to that packet's sender (SECURITY.md, 3).
    fn sent_by_a_party(&self, pkt: &Packet, q: &Quote) -> bool {
        if q.src != pkt.dst {
            return false;
        }
        let name = |a: IpAddr| self.local_owner(a).map(|e| e.name.as_str());
        let reporter = match &pkt.at {
            At::From(iface) => Some(self.endpoint_at(iface).name.as_str()),
            At::To(_) | At::ToVia(..) => name(pkt.src),
            At::Uplink => None,
        };
        match reporter {
            Some(r) => name(q.dst) == Some(r),
            None => {
                let sender_ok = match &pkt.at {
                    At::To(iface) | At::ToVia(iface, _) => name(q.src) == Some(self.endpoint_at(iface).name.as_str()),
                    _ => name(q.src).is_some(),
                };
                // The host is reached that way, but only the host's own stack
                // reports on packets to it.
                let far_ok = name(q.dst).is_none()
                    && (!self.host.contains(&q.dst) || (pkt.at != At::Uplink && self.host.contains(&pkt.src)));
                sender_ok && far_ok
            }
        }
    }

    /// Neighbour discovery (SECURITY.md, 5): an advertisement claims only
    /// its sender's addresses, an address of this host only from the way
    /// it belongs to; router advertisements come only from the host's
    /// stack or the uplink, never from an endpoint.
    fn neighbour(&self, pkt: &Packet, ty: u8, target: IpAddr) -> Expect {
        let ok = Expect::Pass(PassReason::Neighbour);
        match (&pkt.at, ty) {
            (At::Uplink, _) => ok,
            (At::From(_), 134) => Expect::Drop(DropReason::Icmpv6Forbidden),
            (At::From(iface), _) if !self.endpoint_at(iface).addresses.contains(&target) => {
                Expect::Drop(DropReason::NdSpoofed)
            }
            (At::From(_), _) => ok,
            (At::To(_), 134) => ok,
            (At::ToVia(_, via), 134) if via == UPLINK_IFACE => ok,
            (At::ToVia(..), 134) => Expect::Drop(DropReason::RouterMessageWrongPath),
            (At::To(_) | At::ToVia(..), _) => {
                let via = match &pkt.at {
                    At::ToVia(_, via) => Some(via.as_str()),
                    _ => None,
                };
                let rightful = match self.local_owner(target) {
                    Some(owner) => via.is_some() && owner.interface.as_deref() == via,
                    None => !self.host.contains(&target) || via.is_none(),
                };
                if rightful {
                    ok
                } else {
                    Expect::Drop(DropReason::NdSpoofed)
                }
            }
        }
    }

    fn origin(&self, pkt: &Packet) -> Origin {
        match &pkt.at {
            At::From(iface) => Origin::Endpoint(self.endpoint_at(iface).name.clone()),
            _ => Origin::Elsewhere,
        }
    }

    /// The share a new flow made at `pkt`'s hook is charged to.
    fn share_of(&self, pkt: &Packet) -> Option<Share> {
        match &pkt.at {
            At::From(iface) => Some((false, self.endpoint_at(iface).name.clone())),
            At::To(iface) | At::ToVia(iface, _) => Some((true, self.endpoint_at(iface).name.clone())),
            At::Uplink => self.local_owner(pkt.dst).map(|e| (true, e.name.clone())),
        }
    }

    fn cap(&self, share: &Share) -> u32 {
        if share.0 {
            self.timeouts.max_inbound_per_endpoint
        } else {
            self.timeouts.max_per_endpoint
        }
    }

    fn full(&self, share: &Share) -> bool {
        self.charged.get(share).copied().unwrap_or(0) >= self.cap(share)
    }

    /// The answer for `pkt`, given which flows are alive.
    fn predict(&self, pkt: &Packet, alive: &dyn Fn(&Slot) -> bool, prefer_reply: bool) -> (Judgement, Update) {
        let mut notes = Notes::default();
        let judged = |expect, step, verdict: Option<Verdict>, stale, notes| Judgement {
            expect,
            step,
            verdict,
            stale,
            notes,
        };
        let identity = |expect| {
            (
                judged(expect, Step::Identity, None, false, Notes::default()),
                Update::default(),
            )
        };
        // The uplink filter passes neighbour discovery to the receiver.
        if matches!(pkt.l4, Transport::Nd { .. }) && pkt.at == At::Uplink {
            return identity(Expect::Pass(PassReason::Neighbour));
        }
        // Identity at the attachment point.
        match &pkt.at {
            At::From(iface) => {
                let e = self.endpoint_at(iface);
                if pkt.foreign_mac {
                    return identity(Expect::Drop(DropReason::MacSpoofed));
                }
                if link_local_or_unspecified(pkt.src) {
                    return identity(Expect::Drop(DropReason::Icmpv6Forbidden));
                }
                if !e.addresses.contains(&pkt.src) {
                    return identity(Expect::Drop(DropReason::SpoofedSource));
                }
            }
            At::To(_) | At::ToVia(..) => {
                // An address of this host comes only the way it belongs
                // to: a local endpoint's through its interface, the host's
                // from its stack.
                let via = match &pkt.at {
                    At::ToVia(_, via) => Some(via.as_str()),
                    _ => None,
                };
                if let Some(owner) = self.local_owner(pkt.src) {
                    if via.is_none() || owner.interface.as_deref() != via {
                        return identity(Expect::Drop(DropReason::LocalAddressWrongPath));
                    }
                } else if self.host.contains(&pkt.src) && via.is_some() {
                    return identity(Expect::Drop(DropReason::HostAddressSpoofed));
                }
            }
            At::Uplink => {
                if self.local_owner(pkt.src).is_some() {
                    return identity(Expect::Drop(DropReason::LocalAddressWrongPath));
                }
                if self.host.contains(&pkt.src) {
                    return identity(Expect::Drop(DropReason::HostAddressSpoofed));
                }
                if self.local_owner(pkt.dst).is_none() {
                    return identity(Expect::Pass(PassReason::NotForEndpoint));
                }
            }
        }

        if let Transport::Nd { ty, target } = pkt.l4 {
            return identity(self.neighbour(pkt, ty, IpAddr::V6(target.into())));
        }

        // Fragments: a later one follows its first.
        let frag_id = |id| FragId {
            src: pkt.src,
            dst: pkt.dst,
            id,
            proto: pkt.l4.proto(),
        };
        if let Frag::Later(id) = pkt.frag {
            // Cases last far less than a first fragment's lifetime (30 s).
            let fresh = self.fragments.contains_key(&frag_id(id));
            let expect = if fresh {
                Expect::Pass(PassReason::Fragment)
            } else {
                Expect::Drop(DropReason::FragmentUntracked)
            };
            return (judged(expect, Step::Fragment, None, false, notes), Update::default());
        }
        let fragment = match pkt.frag {
            Frag::First(id) => Some(frag_id(id)),
            _ => None,
        };
        let passed = |j: Judgement, mut u: Update| {
            if matches!(j.expect, Expect::Pass(_)) {
                u.fragment = fragment;
            }
            (j, u)
        };

        let closing = Model::closing(pkt);
        let icmp_error = is_icmp_error(&pkt.l4);
        // Whether conntrack may know the packet: never for a group
        // destination, and at a receiver's interface only for one of the
        // addresses it lists. A local endpoint's packet at the receiver is
        // never tracked there (its own interface tracks it).
        let receiver = pkt.at.receiver().map(|i| self.endpoint_at(i));
        let direct = match receiver {
            Some(r) => r.addresses.contains(&pkt.dst),
            None => !is_group(pkt.dst),
        };
        let from_local = receiver.is_some() && self.local_owner(pkt.src).is_some();
        let untracked = |mut notes: Notes| {
            notes.never_tracked = true;
            let verdict = match receiver {
                Some(r) => self.reference.ingress(&r.name, &Model::flow(pkt)),
                None => self.reference.judge(&self.origin(pkt), &Model::flow(pkt)),
            };
            let expect = match &verdict.denied {
                None => Expect::Pass(PassReason::NewAllowed),
                Some(_) if icmp_error => Expect::Drop(DropReason::IcmpErrorUntracked),
                Some(d) => Expect::Drop(drop_reason(d)),
            };
            (
                judged(expect, Step::Rules, Some(verdict), false, notes),
                Update::default(),
            )
        };
        if !direct && pkt.at != At::Uplink {
            let (j, u) = untracked(notes);
            return passed(j, u);
        }
        // The uplink filter leaves ICMP errors to the receiver's interface.
        if icmp_error && pkt.at == At::Uplink {
            return (
                judged(
                    Expect::Pass(PassReason::NotForEndpoint),
                    Step::Identity,
                    None,
                    false,
                    notes,
                ),
                Update::default(),
            );
        }
        if icmp_error {
            // ICMP errors: related only from a party of a tracked flow.
            if let Some(q) = &pkt.quote {
                let tracked = Model::quoted_slots(q).iter().any(alive);
                if tracked && self.sent_by_a_party(pkt, q) {
                    return passed(
                        judged(Expect::Pass(PassReason::Related), Step::Related, None, false, notes),
                        Update::default(),
                    );
                }
                notes.error_from_non_party = tracked && q.src == pkt.dst;
            }
        } else {
            // Conntrack: the packet's flow, as flows endpoints opened or as
            // flows opened towards them. An echo request is never a reply, an
            // echo reply never anything else, and a packet that can only open
            // a flow is never a reply. Where both hold the tuple (a flow
            // each way), the datapath may find either first, and the model
            // accepts both orders.
            let echo_reply = matches!(pkt.l4, Transport::Icmp { proto, ty, .. } if is_echo_reply(proto, ty));
            let echo_request = matches!(pkt.l4, Transport::Icmp { proto, ty, .. } if is_echo_request(proto, ty));
            let mut matches = Vec::new();
            if let Some((id, flipped)) = Model::tuple_of(pkt) {
                for inbound in [false, true] {
                    let slot = (inbound, id);
                    let Some(e) = self.flows.get(&slot).filter(|_| alive(&slot)) else {
                        continue;
                    };
                    let reply = flipped != e.flipped;
                    if (echo_request && reply) || (echo_reply && !reply) {
                        continue;
                    }
                    if reply && Model::opens(pkt) {
                        notes.opens_on_reply = true;
                        continue;
                    }
                    matches.push((slot, reply));
                }
            }
            if prefer_reply {
                matches.reverse();
            }
            if let Some(&(slot, reply)) = matches.first() {
                let reason = if reply {
                    PassReason::Reply
                } else {
                    PassReason::Established
                };
                return passed(
                    judged(Expect::Pass(reason), Step::Conntrack, None, false, notes),
                    Update {
                        touch: Some((slot, reply, closing)),
                        ..Update::default()
                    },
                );
            }
        }

        if from_local {
            let (j, u) = untracked(notes);
            return passed(j, u);
        }

        // The rules.
        let tuple = Model::tuple_of(pkt);
        let stale = !icmp_error
            && tuple
                .is_some_and(|(id, _)| self.flows.contains_key(&(false, id)) || self.flows.contains_key(&(true, id)));
        let flow = Model::flow(pkt);
        let verdict = self.reference.judge(&self.origin(pkt), &flow);
        // Tracked kinds: everything but ICMP other than echo requests.
        let tracked = match pkt.l4 {
            Transport::Icmp { proto, ty, .. } => is_echo_request(proto, ty),
            _ => true,
        };
        let (id, step, verdict, midstream) = match verdict.denied.clone() {
            None => (tuple.filter(|_| tracked), Step::Rules, verdict, false),
            Some(_) if icmp_error => {
                return (
                    judged(
                        Expect::Drop(DropReason::IcmpErrorUntracked),
                        Step::Rules,
                        Some(verdict),
                        stale,
                        notes,
                    ),
                    Update::default(),
                );
            }
            Some(denial) => {
                let midstream = match pkt.l4 {
                    Transport::Tcp { sport, flags, .. }
                        if flags & SYN == 0 && matches!(denial, Denial::Egress | Denial::Ingress) =>
                    {
                        self.reverse_verdict(pkt, sport).filter(|rev| rev.allowed())
                    }
                    _ => None,
                };
                notes.midstream_closed = midstream.is_some() && !self.midstream_open;
                match midstream {
                    Some(rev) if self.midstream_open => (tuple, Step::Reverse, rev, true),
                    _ => {
                        return (
                            judged(
                                Expect::Drop(drop_reason(&denial)),
                                Step::Rules,
                                Some(verdict),
                                stale,
                                notes,
                            ),
                            Update::default(),
                        );
                    }
                }
            }
        };
        let mut update = Update::default();
        if let Some((id, flipped)) = id {
            // A tracked kind: charged to a share, which may be full.
            let share = self.share_of(pkt).expect("a hook that judges has a local endpoint");
            if self.full(&share) {
                return (
                    judged(
                        Expect::Drop(DropReason::ConntrackEndpointFull),
                        Step::Share,
                        Some(verdict),
                        stale,
                        notes,
                    ),
                    Update::default(),
                );
            }
            notes.opened_with_inbound_full = !share.0 && self.full(&(true, share.1.clone()));
            // A mid-stream packet is a reply: its flow runs the other way.
            update.insert = Some((id, flipped != midstream, closing, midstream, share));
        }
        passed(
            judged(Expect::Pass(PassReason::NewAllowed), step, Some(verdict), stale, notes),
            update,
        )
    }

    /// The rules for `pkt` travelling the other way, judged as a new flow
    /// from its sender (when that is a local endpoint) or to its receiver.
    fn reverse_verdict(&self, pkt: &Packet, sport: u16) -> Option<Verdict> {
        let origin = match (self.local_owner(pkt.dst), self.local_owner(pkt.src)) {
            (Some(sender), _) => Origin::Endpoint(sender.name.clone()),
            (None, Some(_)) => Origin::Elsewhere,
            (None, None) => return None,
        };
        let flow = Flow {
            src: pkt.dst,
            dst: pkt.src,
            port: sport,
            ..Model::flow(pkt)
        };
        Some(self.reference.judge(&origin, &flow))
    }

    fn apply(&mut self, update: Update, at: Window) {
        if let Some((slot, reply, closing)) = update.touch {
            let e = self.flows.get_mut(&slot).expect("touched flow is tracked");
            e.last = at;
            // Both directions: a reply of an ordinary entry, a packet of the
            // allowed direction for a mid-stream one.
            e.seen_reply |= reply != e.midstream;
            e.closing |= closing;
        }
        if let Some((id, flipped, closing, midstream, share)) = update.insert {
            let slot = (share.0, id);
            *self.charged.entry(share).or_default() += 1;
            self.flows.insert(
                slot,
                Entry {
                    flipped,
                    seen_reply: false,
                    closing,
                    midstream,
                    last: at,
                },
            );
        }
        if let Some(f) = update.fragment {
            self.fragments.insert(f, at);
        }
    }

    /// Judges `pkt`, run in `at`, against what the datapath answered, and
    /// follows the datapath's conntrack. `Err`: no reading of the
    /// semantics gives the datapath's answer.
    pub fn step(&mut self, pkt: &Packet, observed: Expect, at: Window) -> Result<Judgement, Judgement> {
        let mut consulted: Vec<Slot> = match Model::tuple_of(pkt) {
            Some((id, _)) => vec![(false, id), (true, id)],
            None => Vec::new(),
        };
        if let Some(q) = &pkt.quote {
            consulted.extend(Model::quoted_slots(q));
        }
        let mut unsure: Vec<Slot> = consulted
            .iter()
            .copied()
            .filter(|id| self.liveness(id, at) == Liveness::Unsure)
            .collect();
        unsure.dedup();
        let mut first = None;
        // Every reading of the unsure flows, alive or expired.
        for mask in 0..(1u32 << unsure.len()) {
            let alive = |id: &Slot| match unsure.iter().position(|u| u == id) {
                Some(i) => mask & (1 << i) != 0,
                None => self.liveness(id, at) == Liveness::Alive,
            };
            for prefer_reply in [false, true] {
                let (judgement, update) = self.predict(pkt, &alive, prefer_reply);
                if judgement.expect == observed {
                    self.apply(update, at);
                    return Ok(judgement);
                }
                first.get_or_insert(judgement);
            }
        }
        Err(first.expect("at least one reading"))
    }
}

/// The reply to `pkt`: the other way, ports swapped, an echo request
/// answered; `flags` for TCP.
pub fn reply(pkt: &Packet, at: At, flags: u8) -> Packet {
    let l4 = match pkt.l4 {
        Transport::Tcp { sport, dport, .. } => Transport::Tcp {
            sport: dport,
            dport: sport,
            flags,
        },
        Transport::Udp { sport, dport } => Transport::Udp {
            sport: dport,
            dport: sport,
        },
        Transport::Sctp { sport, dport, chunk } => Transport::Sctp {
            sport: dport,
            dport: sport,
            chunk,
        },
        Transport::Icmp { proto, ty, code, id } => Transport::Icmp {
            proto,
            ty: match (proto, ty) {
                (1, 8) => 0,
                (58, 128) => 129,
                _ => ty,
            },
            code,
            id,
        },
        other @ (Transport::Other { .. } | Transport::Nd { .. }) => other,
    };
    Packet {
        at,
        src: pkt.dst,
        dst: pkt.src,
        l4,
        aimed: false,
        frag: Frag::Whole,
        quote: None,
        foreign_mac: false,
    }
}
