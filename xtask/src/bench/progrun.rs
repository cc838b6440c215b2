//! Cost per packet of the real programs, through BPF_PROG_TEST_RUN: the
//! kernel runs the program `repeat` times on one frame and reports the
//! mean time per run.
//!
//! Cases, all at the TC hook of `client`'s interface (a packet sent by an
//! endpoint, judged against its egress and the receiver's ingress):
//!
//! - established: a TCP ACK of a tracked flow (one conntrack hit).
//! - new TCP flow: a SYN the rules allow. Run repeatedly, the first run
//!   would track the flow and the rest would be conntrack hits; so the
//!   measured slot's `tcp_other` timeout (which a flow without a reply
//!   uses) is set to zero: every run finds the entry expired and takes the
//!   whole new-flow path, conntrack insert included.
//! - new ICMP: an ICMP timestamp request (ICMPv6 node information query),
//!   which is never tracked and is judged by the rules packet by packet;
//!   a second view of the rule path with the stock settings.
//! - denied: a SYN the sender's egress allows and the receiver's ingress
//!   denies (the longest path to a drop).

use std::net::IpAddr;
use std::process::Command;

use anyhow::{Context as _, bail};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use hostwall_tests::hostwall::compile::{self, Compiled, HostView};
use hostwall_tests::hostwall::datapath::{Datapath, PROG_FROM_ENDPOINT};
use hostwall_tests::hostwall::policy::parse_str;

use super::Plan;
use super::policy::{self, CLIENT, ENDPOINTS, Fillers, LOAD_PORT, SERVER, Spec};

pub(super) const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;
/// Offset of `ifindex` in `struct __sk_buff` (include/uapi/linux/bpf.h).
const SKB_IFINDEX_OFFSET: usize = 40;
/// Offset of `ingress_ifindex`: the interface a packet entered the host by.
const SKB_INGRESS_IFINDEX_OFFSET: usize = 36;
const SKB_CTX_SIZE: usize = 192;

pub const CASES: [&str; 4] = ["established", "new TCP flow", "new ICMP (untracked)", "denied"];

#[derive(Clone, Debug)]
pub struct Sample {
    pub case: &'static str,
    pub v6: bool,
    pub rules: usize,
    pub ns: f64,
}

#[derive(Clone, Debug)]
pub struct Results {
    pub repeat: u32,
    pub rounds: usize,
    pub endpoints: usize,
    pub samples: Vec<Sample>,
    /// Entries of the policy and peer maps, per rule count.
    pub entries: Vec<(usize, usize, usize)>,
}

impl Results {
    pub fn get(&self, case: &str, v6: bool, rules: usize) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.case == case && s.v6 == v6 && s.rules == rules)
            .map(|s| s.ns)
    }
}

pub fn run(plan: &Plan) -> anyhow::Result<Results> {
    let plan = plan.clone();
    // The programs read `ifindex` from the skb and the interfaces must
    // exist in the caller's namespace: a thread of its own unshares one and
    // creates the endpoints' interfaces there, as the packet tests do.
    std::thread::spawn(move || in_private_netns(&plan))
        .join()
        .map_err(|_| anyhow::anyhow!("the TEST_RUN thread panicked"))?
}

/// Moves the calling thread into a network namespace of its own and
/// creates the endpoints' interfaces there: the programs read `ifindex`
/// from the skb, and BPF_PROG_TEST_RUN wants it to exist.
pub(super) fn private_netns() -> anyhow::Result<()> {
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    for ep in ENDPOINTS {
        let ok = Command::new("ip")
            .args(["link", "add", ep.iface, "type", "veth", "peer", "name"])
            .arg(format!("{}-p", ep.iface))
            .status()?
            .success();
        if !ok {
            bail!("creating {} in the TEST_RUN namespace", ep.iface);
        }
    }
    Ok(())
}

fn in_private_netns(plan: &Plan) -> anyhow::Result<Results> {
    private_netns()?;
    let mut out = Results {
        repeat: plan.progrun_repeat,
        rounds: plan.progrun_rounds,
        endpoints: plan.remote_endpoints + ENDPOINTS.len(),
        samples: Vec::new(),
        entries: Vec::new(),
    };
    for &rules in &plan.progrun_rules {
        let mut compiled = test_run_policy(plan, rules, false)?;
        out.entries.push((
            rules,
            compiled.policy_entries(),
            compiled.peer4.len() + compiled.peer6.len(),
        ));
        // Every measurement starts from freshly loaded maps.
        let mut dp = Datapath::load_unpinned()?;
        compiled.settings.max_flows_per_endpoint = u32::MAX;
        dp.slots.apply(&compiled)?;
        let stock = compiled.settings;
        let ifindex = hostwall_tests::hostwall::host::ifindex(CLIENT.iface).context("the client interface")?;
        for v6 in [false, true] {
            let (src, dst): (IpAddr, IpAddr) = if v6 {
                (CLIENT.v6().into(), SERVER.v6().into())
            } else {
                (CLIENT.v4().into(), SERVER.v4().into())
            };
            for case in CASES {
                let (frame, want_pass) = match case {
                    "established" => {
                        // The SYN tracks the flow; the ACKs are then hits.
                        let syn = frame::tcp(src, dst, 40_000, LOAD_PORT, frame::SYN);
                        expect(&dp, ifindex, &syn, true)?;
                        (frame::tcp(src, dst, 40_000, LOAD_PORT, frame::ACK), true)
                    }
                    "new TCP flow" => (frame::tcp(src, dst, 40_001, LOAD_PORT, frame::SYN), true),
                    "new ICMP (untracked)" => (frame::icmp(src, dst, if v6 { 139 } else { 13 }), true),
                    _ => (frame::tcp(src, dst, 40_002, policy::DENIED_PORT, frame::SYN), false),
                };
                if case == "new TCP flow" {
                    let mut s = stock;
                    s.tcp_other_ns = 0;
                    compiled.settings = s;
                    dp.slots.apply(&compiled)?;
                }
                expect(&dp, ifindex, &frame, want_pass)?;
                let mut rounds: Vec<f64> = (0..plan.progrun_rounds)
                    .map(|_| measure(&dp, ifindex, &frame, plan.progrun_repeat))
                    .collect::<anyhow::Result<_>>()?;
                if case == "new TCP flow" {
                    compiled.settings = stock;
                    dp.slots.apply(&compiled)?;
                }
                let ns = super::median(&mut rounds);
                println!(
                    "  {rules:>6} rules  {:<4} {case:<22} {ns:>7.1} ns",
                    if v6 { "IPv6" } else { "IPv4" }
                );
                out.samples.push(Sample { case, v6, rules, ns });
            }
        }
    }
    Ok(out)
}

/// Runs the TC program `program` `repeat` times on `frame` as if it
/// arrived on `ifindex`: (the last run's return value, mean ns per run).
/// Runs `frame` `repeat` times through `program` on `ifindex`, as a packet
/// that entered the host by `arrived_on` (0: from the host's own stack).
/// The benchmark's policy of `rules` rules for BPF_PROG_TEST_RUN, compiled
/// for this namespace's interfaces (`compare`: with the flows section 6
/// measures).
pub(super) fn test_run_policy(plan: &Plan, rules: usize, compare: bool) -> anyhow::Result<Compiled> {
    let spec = Spec {
        rules,
        fillers: Fillers::Mixed,
        remote_endpoints: plan.remote_endpoints,
        test_run: true,
        compare,
        allow_from: None,
    };
    let p = parse_str(&policy::hostwall_yaml(&spec), "bench.yaml")?;
    // The benchmark's frames carry `frames::SRC_MAC`, whichever endpoint
    // sends them.
    let macs = p
        .endpoints
        .iter()
        .filter_map(|e| e.interface.as_deref().and_then(hostwall_tests::hostwall::host::ifindex))
        .map(|i| (i, hostwall_tests::frames::SRC_MAC))
        .collect();
    let view = HostView {
        node: "bench",
        host_addresses: &[],
        ifindex: &hostwall_tests::hostwall::host::ifindex,
        macs: &macs,
    };
    // Section 6 writes the same policy into an earlier build's object too,
    // which reads the form of its own time.
    Ok(if compare {
        compile::legacy::compile_both(&p, &view)?
    } else {
        compile::compile(&p, &view)?
    })
}

pub(super) fn run_once(
    dp: &Datapath,
    program: &str,
    ifindex: u32,
    arrived_on: u32,
    frame: &[u8],
    repeat: u32,
) -> anyhow::Result<(u32, f64)> {
    let prog: &SchedClassifier = dp
        .ebpf
        .program(program)
        .with_context(|| format!("the TC program {program}"))?
        .try_into()?;
    let mut ctx = [0u8; SKB_CTX_SIZE];
    ctx[SKB_IFINDEX_OFFSET..SKB_IFINDEX_OFFSET + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[SKB_INGRESS_IFINDEX_OFFSET..SKB_INGRESS_IFINDEX_OFFSET + 4].copy_from_slice(&arrived_on.to_ne_bytes());
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.ctx_in = Some(&ctx);
    opts.repeat = repeat;
    let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration.as_nanos() as f64))
}

/// Checks that the case takes the path it is meant to (passes or drops).
fn expect(dp: &Datapath, ifindex: u32, frame: &[u8], pass: bool) -> anyhow::Result<()> {
    let (ret, _) = run_once(dp, PROG_FROM_ENDPOINT, ifindex, ifindex, frame, 1)?;
    let want = if pass { TC_ACT_UNSPEC } else { TC_ACT_SHOT };
    if ret != want {
        bail!("the program returned {ret} where the benchmark expects {want}");
    }
    Ok(())
}

/// Mean ns per run over `repeat` runs.
fn measure(dp: &Datapath, ifindex: u32, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let (_, ns) = run_once(dp, PROG_FROM_ENDPOINT, ifindex, ifindex, frame, repeat)?;
    Ok(ns)
}

/// Ethernet frames (checksums zero: the programs never verify them).
pub(super) mod frame {
    use std::net::IpAddr;

    pub const SYN: u8 = 0x02;
    pub const ACK: u8 = 0x10;

    fn wrap(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
                f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
                f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                f.extend_from_slice(&[proto, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => unreachable!("one family per frame"),
        }
        f.extend_from_slice(l4);
        f
    }

    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        wrap(src, dst, 6, &h)
    }

    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&28u16.to_be_bytes());
        h.extend_from_slice(&[0; 2 + 20]);
        wrap(src, dst, 17, &h)
    }

    pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8) -> Vec<u8> {
        icmp_id(src, dst, ty, 0x1234)
    }

    /// An ICMP or ICMPv6 message of type `ty` with identifier `id` (the
    /// identifier of an echo request or reply).
    pub fn icmp_id(src: IpAddr, dst: IpAddr, ty: u8, id: u16) -> Vec<u8> {
        let proto = if src.is_ipv4() { 1 } else { 58 };
        let mut h = vec![ty, 0];
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&[0, 1]);
        h.extend_from_slice(&[0; 12]);
        wrap(src, dst, proto, &h)
    }
}
