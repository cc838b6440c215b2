//! What the datapath should answer, from the documented semantics: the
//! reference evaluator for the rules (`hostwall::reference`), plus what the
//! README says about the steps around them: identity at the attachment
//! point, the uplink's early checks, and connection tracking (which flows
//! are tracked, how replies match, the timeouts, a TCP packet without SYN
//! admitted as the far side of a flow the rules allow).
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
use hostwall_tests::testrun::{Expect, NODE};

use crate::generate::{ACK, At, FIN, Packet, RST, SYN, Transport};

/// When a run happened: the kernel's clock read falls inside.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

/// A tracked flow as the README describes it: by ports for TCP, UDP and
/// SCTP, by identifier for ICMP echo, by address pair for the rest.
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

/// A tracked flow, under the tuple of the flow the rules allowed.
#[derive(Clone, Copy, Debug)]
struct Entry {
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
    Conntrack,
    Rules,
    /// A TCP packet without SYN, admitted as the reverse of an allowed flow.
    Reverse,
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
}

#[derive(Clone, Copy, Debug)]
enum Update {
    None,
    Touch { id: FlowId, reply: bool, closing: bool },
    Insert { id: FlowId, closing: bool, midstream: bool },
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
    flows: HashMap<FlowId, Entry>,
}

fn is_echo_request(proto: u8, ty: u8) -> bool {
    (proto == 1 && ty == 8) || (proto == 58 && ty == 128)
}

fn is_echo_reply(proto: u8, ty: u8) -> bool {
    (proto == 1 && ty == 0) || (proto == 58 && ty == 129)
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
        }
    }

    /// Forgets every flow (the fixture's conntrack was flushed).
    pub fn forget(&mut self) {
        self.flows.clear();
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

    fn liveness(&self, id: &FlowId, now: Window) -> Liveness {
        let Some(e) = self.flows.get(id) else {
            return Liveness::Expired;
        };
        let timeout = self.timeout(id, e);
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

    /// The flow a packet would be tracked as, in its own direction.
    fn own_id(pkt: &Packet) -> Option<FlowId> {
        let (src, dst) = (pkt.src, pkt.dst);
        match pkt.l4 {
            Transport::Tcp { sport, dport, .. }
            | Transport::Udp { sport, dport }
            | Transport::Sctp { sport, dport } => Some(FlowId::Ports {
                proto: pkt.l4.proto(),
                src,
                dst,
                sport,
                dport,
            }),
            Transport::Icmp { proto, ty, id, .. } if is_echo_request(proto, ty) => {
                Some(FlowId::Echo { proto, src, dst, id })
            }
            Transport::Icmp { .. } => None,
            Transport::Other { proto } => Some(FlowId::Pair { proto, src, dst }),
        }
    }

    /// The flow a packet would be a reply of.
    fn reply_of(pkt: &Packet) -> Option<FlowId> {
        let (src, dst) = (pkt.dst, pkt.src);
        match pkt.l4 {
            Transport::Tcp { sport, dport, .. }
            | Transport::Udp { sport, dport }
            | Transport::Sctp { sport, dport } => Some(FlowId::Ports {
                proto: pkt.l4.proto(),
                src,
                dst,
                sport: dport,
                dport: sport,
            }),
            Transport::Icmp { proto, ty, id, .. } if is_echo_reply(proto, ty) => {
                Some(FlowId::Echo { proto, src, dst, id })
            }
            Transport::Icmp { .. } => None,
            Transport::Other { proto } => Some(FlowId::Pair { proto, src, dst }),
        }
    }

    fn closing(pkt: &Packet) -> bool {
        matches!(pkt.l4, Transport::Tcp { flags, .. } if flags & (FIN | RST) != 0)
    }

    /// A packet that can only open a flow and is never a reply: a TCP SYN
    /// without ACK (SCTP packets here carry no INIT chunk).
    fn opens(pkt: &Packet) -> bool {
        matches!(pkt.l4, Transport::Tcp { flags, .. } if flags & (SYN | ACK) == SYN)
    }

    /// The answer for `pkt`, given which flows are alive.
    fn predict(&self, pkt: &Packet, alive: &dyn Fn(&FlowId) -> bool, prefer_reply: bool) -> (Judgement, Update) {
        let identity = |expect| {
            (
                Judgement {
                    expect,
                    step: Step::Identity,
                    verdict: None,
                    stale: false,
                },
                Update::None,
            )
        };
        // Identity at the attachment point.
        match &pkt.at {
            At::From(iface) => {
                let e = self.endpoint_at(iface);
                if link_local_or_unspecified(pkt.src) {
                    return identity(Expect::Drop(DropReason::Icmpv6Forbidden));
                }
                if !e.addresses.contains(&pkt.src) {
                    return identity(Expect::Drop(DropReason::SpoofedSource));
                }
            }
            At::To(_) => {}
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

        let closing = Model::closing(pkt);
        // Conntrack: the packet's own flow, then the flow it replies to.
        // An echo reply is only ever a reply, an echo request never one.
        let echo_reply = matches!(pkt.l4, Transport::Icmp { proto, ty, .. } if is_echo_reply(proto, ty));
        let echo_request = matches!(pkt.l4, Transport::Icmp { proto, ty, .. } if is_echo_request(proto, ty));
        // Both may be tracked (two flows, one each way); the datapath may
        // find either first, and the model accepts both orders.
        let own = (!echo_reply)
            .then(|| Model::own_id(pkt))
            .flatten()
            .filter(|id| alive(id))
            .map(|id| (id, false));
        let answered = (!echo_request && !Model::opens(pkt))
            .then(|| Model::reply_of(pkt))
            .flatten()
            .filter(|id| alive(id))
            .map(|id| (id, true));
        let found = if prefer_reply {
            answered.or(own)
        } else {
            own.or(answered)
        };
        if let Some((id, reply)) = found {
            return (
                Judgement {
                    expect: Expect::Pass(if reply {
                        PassReason::Reply
                    } else {
                        PassReason::Established
                    }),
                    step: Step::Conntrack,
                    verdict: None,
                    stale: false,
                },
                Update::Touch { id, reply, closing },
            );
        }

        // The rules.
        let stale = (!echo_reply && Model::own_id(pkt).is_some_and(|id| self.flows.contains_key(&id)))
            || (!echo_request && Model::reply_of(pkt).is_some_and(|id| self.flows.contains_key(&id)));
        let origin = match &pkt.at {
            At::From(iface) => Origin::Endpoint(self.endpoint_at(iface).name.clone()),
            _ => Origin::Elsewhere,
        };
        let flow = Model::flow(pkt);
        let verdict = self.reference.judge(&origin, &flow);
        let Some(denial) = verdict.denied.clone() else {
            let update = match Model::own_id(pkt) {
                Some(id) => Update::Insert {
                    id,
                    closing,
                    midstream: false,
                },
                None => Update::None,
            };
            return (
                Judgement {
                    expect: Expect::Pass(PassReason::NewAllowed),
                    step: Step::Rules,
                    verdict: Some(verdict),
                    stale,
                },
                update,
            );
        };
        if let Transport::Tcp { sport, flags, .. } = pkt.l4
            && flags & SYN == 0
            && self.midstream_open
            && matches!(denial, Denial::Egress | Denial::Ingress)
            && let Some(rev) = self.reverse_verdict(pkt, sport)
            && rev.allowed()
        {
            let id = Model::reply_of(pkt).expect("TCP is tracked");
            return (
                Judgement {
                    expect: Expect::Pass(PassReason::NewAllowed),
                    step: Step::Reverse,
                    verdict: Some(rev),
                    stale,
                },
                Update::Insert {
                    id,
                    closing,
                    midstream: true,
                },
            );
        }
        (
            Judgement {
                expect: Expect::Drop(drop_reason(&denial)),
                step: Step::Rules,
                verdict: Some(verdict),
                stale,
            },
            Update::None,
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
        match update {
            Update::None => {}
            Update::Touch { id, reply, closing } => {
                let e = self.flows.get_mut(&id).expect("touched flow is tracked");
                e.last = at;
                // Both directions: a reply of an ordinary entry, a packet of
                // the allowed direction for a mid-stream one.
                e.seen_reply |= reply != e.midstream;
                e.closing |= closing;
            }
            Update::Insert { id, closing, midstream } => {
                self.flows.insert(
                    id,
                    Entry {
                        seen_reply: false,
                        closing,
                        midstream,
                        last: at,
                    },
                );
            }
        }
    }

    /// Judges `pkt`, run in `at`, against what the datapath answered, and
    /// follows the datapath's conntrack. `Err`: no reading of the
    /// semantics gives the datapath's answer.
    pub fn step(&mut self, pkt: &Packet, observed: Expect, at: Window) -> Result<Judgement, Judgement> {
        let consulted: Vec<FlowId> = [Model::own_id(pkt), Model::reply_of(pkt)]
            .into_iter()
            .flatten()
            .collect();
        let unsure: Vec<FlowId> = consulted
            .iter()
            .copied()
            .filter(|id| self.liveness(id, at) == Liveness::Unsure)
            .collect();
        let mut first = None;
        // Every reading of the unsure flows, alive or expired.
        for mask in 0..(1u32 << unsure.len()) {
            let alive = |id: &FlowId| match unsure.iter().position(|u| u == id) {
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
        Transport::Sctp { sport, dport } => Transport::Sctp {
            sport: dport,
            dport: sport,
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
        other @ Transport::Other { .. } => other,
    };
    Packet {
        at,
        src: pkt.dst,
        dst: pkt.src,
        l4,
        aimed: false,
    }
}
