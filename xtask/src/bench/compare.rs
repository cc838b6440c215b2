//! The eBPF object of this build against an earlier revision's (the
//! baseline, see `baseline.rs`), through BPF_PROG_TEST_RUN as in
//! `progrun.rs`: the same frames, the same compiled policy written by the
//! same slot code into both objects, measured interleaved.
//!
//! Per family, both objects are loaded fresh and given the policy, three
//! times over (where maps and entries land in memory shifts one load's
//! costs); the rounds are spread over the loads. Each round runs the
//! baseline and then this build (the order alternates from round to
//! round), and the median of all rounds is kept.
//! Before it is timed, a case must take its path in both objects: the
//! program passes the frame and the `HW_PASSES` counter of the expected
//! reason moves; every timed run is checked the same way (the counter must
//! move by the number of runs).
//!
//! Cases, for TCP, UDP and ICMP echo. Flows `client` opens to `server`
//! (two local endpoints, so each packet meets two hooks):
//!
//! - established: a packet of a tracked flow in its opening direction (an
//!   ACK after a SYN, a second datagram, a second echo request), at the
//!   sender's hook (`client`'s `FromEndpoint`) and at the receiver's
//!   (`server`'s `ToEndpoint`).
//! - reply: the flow's reply (an ACK, a datagram, an echo reply from
//!   `server`) at the receiver's hook (`client`'s `ToEndpoint`) and at the
//!   sender's (`server`'s `FromEndpoint`).
//! - new flow: a SYN, a datagram, an echo request the rules allow, at the
//!   sender's hook. The measured slot's timeout for a flow without reply
//!   (`tcp_other`, `udp`, `icmp`) is set to zero, so each run finds the
//!   entry the previous run made expired and takes the whole new-flow path.
//!
//! Flows a remote endpoint (`fleet-0`, another node) opens to `server`,
//! which meet only `server`'s hooks: established and new at its
//! `ToEndpoint`, the reply at its `FromEndpoint`.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context as _, bail};
use aya::maps::{MapData, PerCpuArray};
use hostwall_common::{CT_ORIG_LOCAL, CT_REPLY_LOCAL, Counter, PassReason, Settings, ct_timeout};
use hostwall_tests::hostwall::datapath::{Datapath, PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT};

use super::baseline::Object;
use super::policy::{self, CLIENT, ENDPOINTS, LOAD_PORT, SERVER, UDP_PORT};
use super::progrun::{self, TC_ACT_UNSPEC, frame};
use super::{Plan, median};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A packet of a tracked flow in its opening direction, at the
    /// sender's hook.
    Established,
    /// The same packet at the receiver's hook.
    EstablishedReceived,
    /// A reply of a tracked flow, at the receiver's hook.
    Reply,
    /// The same reply at the sender's hook.
    ReplySent,
    /// The first packet of a flow the rules allow.
    New,
    /// Of a flow a remote endpoint opened: in its opening direction, at the
    /// receiver's hook.
    RemoteEstablished,
    /// Its reply, at the sender's hook.
    RemoteReply,
    /// Its first packet, at the receiver's hook.
    RemoteNew,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    Echo,
}

pub const L4S: [L4; 3] = [L4::Tcp, L4::Udp, L4::Echo];

impl L4 {
    pub fn name(self) -> &'static str {
        match self {
            L4::Tcp => "TCP",
            L4::Udp => "UDP",
            L4::Echo => "ICMP echo",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub kind: Kind,
    pub l4: L4,
}

const fn case(kind: Kind, l4: L4) -> Case {
    Case { kind, l4 }
}

pub const KINDS: [Kind; 8] = [
    Kind::Established,
    Kind::Reply,
    Kind::New,
    Kind::EstablishedReceived,
    Kind::ReplySent,
    Kind::RemoteEstablished,
    Kind::RemoteReply,
    Kind::RemoteNew,
];

/// Every kind for TCP, UDP and ICMP echo.
pub const CASES: [Case; 3 * KINDS.len()] = {
    let mut out = [case(Kind::New, L4::Tcp); 3 * KINDS.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = case(KINDS[i / 3], L4S[i % 3]);
        i += 1;
    }
    out
};

impl Case {
    pub fn name(self) -> String {
        let l4 = self.l4.name();
        match self.kind {
            Kind::Established => format!("established {l4} (sender's hook)"),
            Kind::EstablishedReceived => format!("established {l4} (receiver's hook)"),
            Kind::Reply => format!("reply {l4} (receiver's hook)"),
            Kind::ReplySent => format!("reply {l4} (sender's hook)"),
            Kind::New => format!("new {l4} flow"),
            Kind::RemoteEstablished => format!("from remote: established {l4}"),
            Kind::RemoteReply => format!("from remote: reply {l4}"),
            Kind::RemoteNew => format!("from remote: new {l4} flow"),
        }
    }

    /// The highest cost of this build over the baseline's that the goal
    /// allows.
    pub fn goal(self) -> f64 {
        match self.kind {
            Kind::New | Kind::RemoteNew => 1.20,
            _ => 1.10,
        }
    }

    pub fn is_new(self) -> bool {
        matches!(self.kind, Kind::New | Kind::RemoteNew)
    }

    fn want(self) -> PassReason {
        match self.kind {
            Kind::Established | Kind::EstablishedReceived | Kind::RemoteEstablished => PassReason::Established,
            Kind::Reply | Kind::ReplySent | Kind::RemoteReply => PassReason::Reply,
            Kind::New | Kind::RemoteNew => PassReason::NewAllowed,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub case: Case,
    pub v6: bool,
    /// ns per packet of each round: the baseline's, this build's.
    pub old: Vec<f64>,
    pub new: Vec<f64>,
}

impl Sample {
    pub fn old_ns(&self) -> f64 {
        median(&mut self.old.clone())
    }

    pub fn new_ns(&self) -> f64 {
        median(&mut self.new.clone())
    }

    pub fn ratio(&self) -> f64 {
        self.new_ns() / self.old_ns()
    }

    pub fn met(&self) -> bool {
        self.ratio() <= self.case.goal()
    }
}

#[derive(Clone, Debug)]
pub struct Results {
    /// The baseline as named on the command line, its commit (in full and
    /// abbreviated) and subject.
    pub revision: String,
    pub commit: String,
    pub short: String,
    pub subject: String,
    /// What this build's object was built from.
    pub current: String,
    pub repeat: u32,
    pub rounds: usize,
    pub rules: usize,
    pub endpoints: usize,
    pub samples: Vec<Sample>,
}

pub fn run(root: &Path, plan: &Plan, baseline: Object) -> anyhow::Result<Results> {
    let plan = plan.clone();
    let current = current_build(root);
    // As in `progrun.rs`: the interfaces the programs are run for exist in a
    // namespace of the measuring thread's own.
    std::thread::spawn(move || {
        progrun::private_netns()?;
        measure_all(&plan, &baseline, current)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the comparison thread panicked"))?
}

/// HEAD, and whether the datapath's sources differ from it.
fn current_build(root: &Path) -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain", "--", "ebpf", "common"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("the working tree (HEAD {head} with uncommitted changes in ebpf/ or common/)")
            } else {
                format!("the working tree (HEAD {head}, ebpf/ and common/ as committed)")
            }
        }
        None => "the working tree".into(),
    }
}

fn measure_all(plan: &Plan, baseline: &Object, current: String) -> anyhow::Result<Results> {
    let mut compiled = progrun::test_run_policy(plan, plan.compare_rules, true)?;
    // The new-flow cases insert a flow per run; the caps are not measured.
    compiled.settings.max_flows_per_endpoint = u32::MAX;
    compiled.settings.max_inbound_per_endpoint = u32::MAX;
    let ifindex = |iface| hostwall_tests::hostwall::host::ifindex(iface).with_context(|| format!("interface {iface}"));
    let ifindices = (ifindex(CLIENT.iface)?, ifindex(SERVER.iface)?);
    let mut out = Results {
        revision: plan.baseline.clone(),
        commit: baseline.commit.clone(),
        short: baseline.short.clone(),
        subject: baseline.subject.clone(),
        current,
        repeat: plan.compare_repeat,
        rounds: plan.compare_rounds,
        rules: plan.compare_rules,
        endpoints: plan.remote_endpoints + ENDPOINTS.len(),
        samples: Vec::new(),
    };
    // Where each object's maps and entries land in memory moves its costs
    // by a few percent, the same way for every round of one load: the
    // rounds are spread over several fresh loads of both objects.
    let loads = LOADS.min(plan.compare_rounds).max(1);
    for v6 in [false, true] {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let mut samples: Vec<Sample> = CASES
            .iter()
            .map(|&case| Sample {
                case,
                v6,
                old: Vec::new(),
                new: Vec::new(),
            })
            .collect();
        for load in 0..loads {
            let rounds = (load..plan.compare_rounds).step_by(loads).count();
            let mut dps = [
                Datapath::load_object_unpinned(baseline.bytes())
                    .with_context(|| format!("loading the eBPF object of {}", baseline.short))?,
                Datapath::load_unpinned().context("loading this build's eBPF object")?,
            ];
            for dp in &mut dps {
                dp.slots.apply(&compiled)?;
            }
            let stock = compiled.settings;
            for (i, &case) in CASES.iter().enumerate() {
                let probe = Probe::new(case, v6, ifindices, 41_000 + i as u16);
                if case.is_new() {
                    compiled.settings = expire_new_flows(&stock, probe.proto)?;
                    for dp in &mut dps {
                        dp.slots.apply(&compiled)?;
                    }
                }
                for (dp, which) in dps.iter().zip(OBJECTS) {
                    probe
                        .prepare(dp)
                        .with_context(|| format!("{} ({fam}) in {which}", case.name()))?;
                }
                let sample = &mut samples[i];
                for round in 0..rounds {
                    let order = if (load + round) % 2 == 0 { [0, 1] } else { [1, 0] };
                    for o in order {
                        let ns = probe
                            .measure(&dps[o], plan.compare_repeat)
                            .with_context(|| format!("{} ({fam}) in {}", case.name(), OBJECTS[o]))?;
                        if o == 0 { &mut sample.old } else { &mut sample.new }.push(ns);
                    }
                }
                if case.is_new() {
                    compiled.settings = stock;
                    for dp in &mut dps {
                        dp.slots.apply(&compiled)?;
                    }
                }
            }
        }
        for sample in samples {
            println!(
                "  {fam} {:<36} {:>6.1} ns -> {:>6.1} ns  {:.3}×  (rounds: {} | {})",
                sample.case.name(),
                sample.old_ns(),
                sample.new_ns(),
                sample.ratio(),
                rounds_text(&sample.old),
                rounds_text(&sample.new),
            );
            out.samples.push(sample);
        }
    }
    Ok(out)
}

/// Fresh loads of both objects per family, the rounds spread over them.
pub const LOADS: usize = 3;

const OBJECTS: [&str; 2] = ["the baseline object", "this build's object"];

fn rounds_text(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" ")
}

/// `stock` with the timeout of a flow that has seen no reply set to zero
/// for `proto`: checked against `ct_timeout`, the definition both objects
/// judge entries by.
fn expire_new_flows(stock: &Settings, proto: u8) -> anyhow::Result<Settings> {
    let mut s = *stock;
    match proto {
        6 => s.tcp_other_ns = 0,
        17 => s.udp_ns = 0,
        _ => s.icmp_ns = 0,
    }
    // The flags of a new flow between two local endpoints, and from a
    // remote one.
    for flags in [CT_ORIG_LOCAL | CT_REPLY_LOCAL, CT_REPLY_LOCAL] {
        if ct_timeout(&s, proto, flags) != 0 || ct_timeout(stock, proto, flags) == 0 {
            bail!("protocol {proto}: the zeroed timeout is not the one a flow without reply lives by");
        }
    }
    Ok(s)
}

/// One case's frames for one family.
struct Probe {
    case: Case,
    proto: u8,
    /// Sent first, once, through the opener's hook (`client`'s
    /// `FromEndpoint`, or `server`'s `ToEndpoint` for a remote opener), on
    /// that interface: opens the flow.
    opener: Option<(&'static str, u32, u32, Vec<u8>)>,
    /// The measured program, its interface, the interface the packet
    /// entered the host by (its sender's, or 0 from the host's stack as a
    /// remote sender's is here), and the frame.
    program: &'static str,
    ifindex: u32,
    arrived_on: u32,
    frame: Vec<u8>,
}

impl Probe {
    /// `ifindices`: `client`'s and `server`'s interfaces.
    fn new(case: Case, v6: bool, ifindices: (u32, u32), port: u16) -> Probe {
        let (client, server) = ifindices;
        let remote = matches!(case.kind, Kind::RemoteEstablished | Kind::RemoteReply | Kind::RemoteNew);
        // `c` opens the flow to `s`.
        let (r4, r6) = policy::remote_endpoint(0);
        let (c, s): (IpAddr, IpAddr) = match (v6, remote) {
            (false, false) => (CLIENT.v4().into(), SERVER.v4().into()),
            (true, false) => (CLIENT.v6().into(), SERVER.v6().into()),
            (false, true) => (r4.into(), SERVER.v4().into()),
            (true, true) => (r6.into(), SERVER.v6().into()),
        };
        let (request, reply) = if v6 { (128, 129) } else { (8, 0) };
        let proto = match case.l4 {
            L4::Tcp => 6,
            L4::Udp => 17,
            L4::Echo if v6 => 58,
            L4::Echo => 1,
        };
        // The packet that opens the flow, and the same flow's next packet in
        // either direction.
        let (open, forward, back) = match case.l4 {
            L4::Tcp => (
                frame::tcp(c, s, port, LOAD_PORT, frame::SYN),
                frame::tcp(c, s, port, LOAD_PORT, frame::ACK),
                frame::tcp(s, c, LOAD_PORT, port, frame::ACK),
            ),
            L4::Udp => (
                frame::udp(c, s, port, UDP_PORT),
                frame::udp(c, s, port, UDP_PORT),
                frame::udp(s, c, UDP_PORT, port),
            ),
            L4::Echo => (
                frame::icmp_id(c, s, request, port),
                frame::icmp_id(c, s, request, port),
                frame::icmp_id(s, c, reply, port),
            ),
        };
        let opener = if remote {
            (PROG_TO_ENDPOINT, server, 0, open.clone())
        } else {
            (PROG_FROM_ENDPOINT, client, client, open.clone())
        };
        let (opener, program, ifindex, arrived_on, frame) = match case.kind {
            Kind::Established => (Some(opener), PROG_FROM_ENDPOINT, client, client, forward),
            Kind::EstablishedReceived => (Some(opener), PROG_TO_ENDPOINT, server, client, forward),
            Kind::Reply => (Some(opener), PROG_TO_ENDPOINT, client, server, back),
            Kind::ReplySent => (Some(opener), PROG_FROM_ENDPOINT, server, server, back),
            Kind::New => (None, PROG_FROM_ENDPOINT, client, client, open),
            Kind::RemoteEstablished => (Some(opener), PROG_TO_ENDPOINT, server, 0, forward),
            Kind::RemoteReply => (Some(opener), PROG_FROM_ENDPOINT, server, server, back),
            Kind::RemoteNew => (None, PROG_TO_ENDPOINT, server, 0, open),
        };
        Probe {
            case,
            proto,
            opener,
            program,
            ifindex,
            arrived_on,
            frame,
        }
    }

    /// Opens the flow and checks that the frame takes the case's path: a
    /// new flow twice, since the second run would find the first run's entry
    /// if it had not expired.
    fn prepare(&self, dp: &Datapath) -> anyhow::Result<()> {
        if let Some((program, ifindex, arrived_on, open)) = &self.opener {
            run_checked(dp, program, *ifindex, *arrived_on, open, 1, PassReason::NewAllowed)
                .context("opening the flow")?;
        }
        let checks = if self.case.is_new() { 2 } else { 1 };
        for _ in 0..checks {
            run_checked(
                dp,
                self.program,
                self.ifindex,
                self.arrived_on,
                &self.frame,
                1,
                self.case.want(),
            )?;
        }
        Ok(())
    }

    /// Mean ns per run over `repeat` runs, each of which must take the
    /// case's path.
    fn measure(&self, dp: &Datapath, repeat: u32) -> anyhow::Result<f64> {
        run_checked(
            dp,
            self.program,
            self.ifindex,
            self.arrived_on,
            &self.frame,
            repeat,
            self.case.want(),
        )
    }
}

/// Runs `frame` `repeat` times; every run must pass it for `want`.
fn run_checked(
    dp: &Datapath,
    program: &str,
    ifindex: u32,
    arrived_on: u32,
    frame: &[u8],
    repeat: u32,
    want: PassReason,
) -> anyhow::Result<f64> {
    let before = passes(dp, want)?;
    let (ret, ns) = progrun::run_once(dp, program, ifindex, arrived_on, frame, repeat)?;
    let counted = passes(dp, want)? - before;
    if ret != TC_ACT_UNSPEC {
        bail!("{program} returned {ret} where the benchmark expects a pass");
    }
    if counted != u64::from(repeat) {
        bail!("{program} passed {counted} of {repeat} runs as {}", want.name());
    }
    Ok(ns)
}

/// Packets `HW_PASSES` counted for `reason`, over all CPUs.
fn passes(dp: &Datapath, reason: PassReason) -> anyhow::Result<u64> {
    let map = dp.ebpf.map("HW_PASSES").context("the object has no HW_PASSES")?;
    let counters: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map)?;
    Ok(counters.get(&(reason as u32), 0)?.iter().map(|c| c.packets).sum())
}
