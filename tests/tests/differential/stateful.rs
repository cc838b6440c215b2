//! Conntrack sequences: the flows of a generated case sent again, answered,
//! answered without having been sent, sent at other hooks, and sometimes
//! left for longer than their timeout; every step checked against the
//! model, whose table follows the datapath's.

use std::time::{Duration, Instant};

use hostwall::policy::Policy;
use hostwall_tests::testrun::{Expect, Fixture, NODE};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::generate::{self, ACK, At, Case, FIN, POOL, Packet, RST, SYN, Transport};
use crate::harness::{Coverage, Facts, Source};
use crate::model::{self, Model, Step, Window};

/// Longer than the short timeouts generated (1 s), far shorter than the
/// long ones (1 h).
const PAUSE: Duration = Duration::from_millis(1100);

#[derive(Clone, Debug)]
pub struct Script {
    pub case: Case,
    steps: Vec<StepSpec>,
    /// Whether this script may pause (few do: the pause is real time).
    may_pause: bool,
}

#[derive(Clone, Copy, Debug)]
struct StepSpec {
    packet: usize,
    reply: bool,
    via: usize,
    flags: u8,
    pause: bool,
}

impl Source for Script {
    fn source(&self) -> String {
        let mut out = format!("// steps (packet, reply, via, flags, pause): {:?}\n", self.steps);
        out.push_str(&self.case.source());
        out
    }
}

pub fn script() -> impl Strategy<Value = Script> {
    let step = (
        any::<usize>(),
        prop::bool::weighted(0.4),
        any::<usize>(),
        prop::sample::select(vec![SYN, SYN | ACK, ACK, ACK, FIN | ACK, RST, 0]),
        prop::bool::weighted(0.08),
    )
        .prop_map(|(packet, reply, via, flags, pause)| StepSpec {
            packet,
            reply,
            via,
            flags,
            pause,
        });
    (
        generate::case(4..=16, true),
        vec(step, 10..=60),
        prop::bool::weighted(0.35),
    )
        .prop_map(|(case, steps, may_pause)| Script { case, steps, may_pause })
}

/// Where a packet between these addresses can be seen: from its sender's
/// interface, at its receiver's, on the uplink.
fn hooks_for(policy: &Policy, pkt: &Packet) -> Vec<At> {
    let iface_of = |addr| {
        policy
            .endpoints
            .iter()
            .find(|e| e.is_local(NODE) && e.addresses.contains(&addr))
            .and_then(|e| e.interface.clone())
            .filter(|i| POOL.contains(&i.as_str()))
    };
    let mut out = Vec::new();
    if let Some(i) = iface_of(pkt.src) {
        out.push(At::From(i));
    }
    if let Some(i) = iface_of(pkt.dst) {
        out.push(At::To(i));
    }
    out.push(At::Uplink);
    out
}

fn with_flags(mut pkt: Packet, flags: u8) -> Packet {
    if let Transport::Tcp { flags: f, .. } = &mut pkt.l4 {
        *f = flags;
    }
    pkt
}

/// Runs the script's steps with conntrack kept between them.
pub fn check(f: &mut Fixture, script: &Script, mut cov: Option<&mut Coverage>) -> Vec<String> {
    let case = &script.case;
    f.flush_conntrack();
    f.apply(&case.policy, &case.host);
    let mut model = Model::new(&case.policy, &case.host);
    let mut problems = Vec::new();
    let mut paused = false;
    let facts = Facts::of(case);
    if let Some(c) = cov.as_deref_mut() {
        c.policies += 1;
    }
    for step in &script.steps {
        if case.packets.is_empty() {
            break;
        }
        let base = &case.packets[step.packet % case.packets.len()];
        let pkt = if step.reply {
            let r = model::reply(base, At::Uplink, step.flags);
            let hooks = hooks_for(&case.policy, &r);
            let at = hooks[step.via % hooks.len()].clone();
            Packet { at, ..r }
        } else {
            let hooks = hooks_for(&case.policy, base);
            // Mostly where the generator put it (which may be a spoofing
            // endpoint's interface), else anywhere it may be seen.
            let at = if step.via % 3 == 0 {
                hooks[step.via / 3 % hooks.len()].clone()
            } else {
                base.at.clone()
            };
            with_flags(Packet { at, ..base.clone() }, step.flags)
        };
        if step.pause && script.may_pause && !paused {
            paused = true;
            std::thread::sleep(PAUSE);
        }
        let start = Instant::now();
        let observed = f.run(pkt.at.hook(), &pkt.frame());
        let window = Window {
            start,
            end: Instant::now(),
        };
        match model.step(&pkt, observed, window) {
            Ok(j) => {
                if let Some(c) = cov.as_deref_mut() {
                    c.record(&facts, case, &pkt, &j);
                    if step.reply && j.step == Step::Rules && matches!(j.expect, Expect::Drop(_)) {
                        c.replies_dropped += 1;
                    }
                }
            }
            Err(j) => problems.push(format!(
                "step {step:?}: {}\n    datapath: {observed:?}, expected {:?} by {:?} (reference: {:?})",
                pkt.source(),
                j.expect,
                j.step,
                j.verdict.map(|v| v.denied),
            )),
        }
    }
    problems
}
