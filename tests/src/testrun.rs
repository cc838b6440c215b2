//! The real eBPF programs run on built frames through BPF_PROG_TEST_RUN: a
//! frame in, the verdict (and the counter that explains it) out. Used by
//! the packet tables (`tests/tests/packets/`) and the differential tests
//! (`tests/tests/differential/`).
//!
//! A [`Fixture`] unshares a network namespace for its thread and creates a
//! veth pair there for every endpoint interface it is given, since the
//! `ifindex` handed to a TC program must exist in the caller's namespace.
//! The programs and maps are loaded unpinned and die with the fixture.

use std::cell::RefCell;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use hostwall::compile::{self, Compiled, HostView};
use hostwall::datapath::conntrack::{self, Table};
use hostwall::datapath::{Datapath, PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT, PROG_UPLINK};
use hostwall::policy::{Policy, parse_str};
use hostwall_common::{Counter, CtEntry, CtKey, DropReason, FragKey, PassReason};

use crate::frames::Frame;

const TC_ACT_UNSPEC: u32 = u32::MAX; // -1
const TC_ACT_SHOT: u32 = 2;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// Offset of `ifindex` in `struct __sk_buff` (include/uapi/linux/bpf.h).
const SKB_IFINDEX_OFFSET: usize = 40;
/// Offset of `ingress_ifindex`, which BPF_PROG_TEST_RUN copies into the skb.
const SKB_INGRESS_IFINDEX_OFFSET: usize = 36;
const SKB_CTX_SIZE: usize = 192;

/// The node name policies are compiled for: endpoints without a node, or
/// with this one, are local.
pub const NODE: &str = "test";

/// A verdict as the programs report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Pass(PassReason),
    Drop(DropReason),
}

/// Where a frame is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook<'a> {
    /// TC ingress of the named endpoint interface (as the policy names it).
    From(&'a str),
    /// TC egress of the named endpoint interface, for a frame that came the
    /// way its source address belongs to: through the interface of the
    /// local endpoint that owns it, else from the host's own stack (the
    /// skb's ingress interface is 0).
    To(&'a str),
    /// TC egress of the named endpoint interface (first) for a frame that
    /// entered the host by the second: another endpoint's interface (as
    /// the policy names it), [`UPLINK_IFACE`], [`PORT_IFACE`] or
    /// [`HOST_STACK`].
    ToVia(&'a str, &'a str),
    /// XDP on the uplink.
    Uplink,
}

/// `frame` with `mac` where it carries [`crate::frames::SRC_MAC`] as its
/// sender's: the Ethernet source, ARP's sender hardware address, and the
/// link-layer address options of neighbour discovery.
fn with_mac(frame: &Frame, mac: [u8; 6]) -> Frame {
    let src = crate::frames::SRC_MAC;
    let mut out = frame.0.clone();
    let mut swap = |at: usize| {
        if out.get(at..at + 6) == Some(&src[..]) {
            out[at..at + 6].copy_from_slice(&mac);
        }
    };
    swap(6);
    match frame.0.get(12..14) {
        Some([0x08, 0x06]) => swap(22),
        Some([0x86, 0xdd]) if frame.0.get(20) == Some(&58) => {
            let fixed = match frame.0.get(54) {
                Some(133) => 8,
                Some(135 | 136) => 24,
                _ => return Frame(out),
            };
            let mut o = 54 + fixed;
            while let Some(&[_, units]) = frame.0.get(o..o + 2).map(|b| <&[u8; 2]>::try_from(b).unwrap()) {
                if units == 0 {
                    break;
                }
                swap(o + 2);
                o += units as usize * 8;
            }
        }
        _ => {}
    }
    Frame(out)
}

/// The fixture's uplink (`HW_UPLINK` names it), for [`Hook::ToVia`].
pub const UPLINK_IFACE: &str = "@uplink";
/// A bridge port of the fixture that is no endpoint, for [`Hook::ToVia`].
pub const PORT_IFACE: &str = "@port";
/// The host's own stack (ingress interface 0), for [`Hook::ToVia`].
pub const HOST_STACK: &str = "@host";

/// The MAC of the fixture's interface `ifindex`. Frames run from an
/// endpoint carry it wherever `frames` wrote [`crate::frames::SRC_MAC`].
pub fn fixture_mac(ifindex: u32) -> [u8; 6] {
    [0x02, 0xa0, 0, 0, (ifindex >> 8) as u8, ifindex as u8]
}

/// Why BPF_PROG_TEST_RUN did not run a frame.
#[derive(Debug)]
pub struct Refused(pub String);

/// (code, packets) of every drop reason, then of every pass reason.
type VerdictCounts = (Vec<(u32, u64)>, Vec<(u32, u64)>);

pub struct Fixture {
    pub dp: Datapath,
    /// The addresses of this host in the applied policy (`HW_LOCAL`).
    local: Vec<(hostwall_common::LocalKey, hostwall_common::LocalAddr)>,
    /// (interface name in the policy, interface created for it, ifindex).
    names: Vec<(String, String, u32)>,
    /// Drop and pass counters (code, packets) after the last run, so that
    /// a run reads them once.
    counters: RefCell<Option<VerdictCounts>>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Fixture {
    /// Loads the programs and applies `yaml`. Endpoint interface names in
    /// the policy are created as veth interfaces in a fresh network
    /// namespace of this thread.
    pub fn new(yaml: &str, host: &[&str]) -> Fixture {
        let policy = parse_str(yaml, "test.yaml").expect("valid policy");
        let interfaces: Vec<&str> = policy.endpoints.iter().filter_map(|e| e.interface.as_deref()).collect();
        let mut f = Fixture::with_interfaces(&interfaces);
        let host: Vec<IpAddr> = host.iter().map(|a| a.parse().unwrap()).collect();
        f.apply(&policy, &host);
        f
    }

    /// Loads the programs with no policy applied, in a fresh network
    /// namespace of this thread that holds a veth interface standing for
    /// each of `interfaces`.
    pub fn with_interfaces(interfaces: &[&str]) -> Fixture {
        Fixture::with_interfaces_loading(interfaces, || Datapath::load_unpinned().expect("load programs"))
    }

    /// [`Fixture::with_interfaces`], with the programs and maps `load`
    /// returns (another object, such as one with a planted bug).
    pub fn with_interfaces_loading(interfaces: &[&str], load: impl FnOnce() -> Datapath) -> Fixture {
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut names: Vec<(String, String, u32)> = Vec::new();
        for iface in interfaces.iter().copied().chain([UPLINK_IFACE, PORT_IFACE]) {
            debug_assert!(iface != HOST_STACK);
            if names.iter().any(|(p, _, _)| p == iface) {
                continue;
            }
            // Interface names are per namespace, but a test thread may be
            // reused: keep them unique anyway.
            let real = format!("hp{n}-{}", &iface[iface.len().saturating_sub(8)..]);
            let peer = format!("hq{n}-{}", names.len());
            let ok = Command::new("ip")
                .args(["link", "add", &real, "type", "veth", "peer", "name", &peer])
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip link add {real}");
            let ifindex = hostwall::host::ifindex(&real).expect("the interface just created exists");
            names.push((iface.to_string(), real, ifindex));
        }
        let mut dp = load();
        let uplink = names.iter().find(|(p, _, _)| p == UPLINK_IFACE).map(|(_, _, i)| *i);
        dp.set_uplink(uplink.expect("the fixture's uplink exists"))
            .expect("writing HW_UPLINK");
        Fixture {
            dp,
            local: Vec::new(),
            names,
            counters: RefCell::new(None),
        }
    }

    /// The ifindex standing for a policy's interface name, if the fixture
    /// created one.
    pub fn resolve(&self, policy_name: &str) -> Option<u32> {
        self.names.iter().find(|(p, _, _)| p == policy_name).map(|(_, _, i)| *i)
    }

    pub fn ifindex(&self, policy_name: &str) -> u32 {
        self.resolve(policy_name).expect("interface in policy")
    }

    /// The MAC of every interface of the fixture ([`fixture_mac`]).
    pub fn macs(&self) -> std::collections::BTreeMap<u32, [u8; 6]> {
        self.names.iter().map(|(_, _, i)| (*i, fixture_mac(*i))).collect()
    }

    /// The MAC of the endpoint behind `iface` (as the policy names it).
    pub fn mac(&self, iface: &str) -> [u8; 6] {
        fixture_mac(self.ifindex(iface))
    }

    /// The link-local address the MAC of `iface`'s endpoint gives it.
    pub fn link_local(&self, iface: &str) -> String {
        std::net::Ipv6Addr::from(compile::eui64_link_local(self.mac(iface))).to_string()
    }

    /// Compiles `policy` for node [`NODE`] with these host addresses.
    pub fn compile(&self, policy: &Policy, host: &[IpAddr]) -> Compiled {
        let resolve = |name: &str| self.resolve(name);
        let macs = self.macs();
        let view = HostView {
            node: NODE,
            host_addresses: host,
            ifindex: &resolve,
            macs: &macs,
        };
        compile::compile(policy, &view).expect("compile")
    }

    pub fn apply(&mut self, policy: &Policy, host: &[IpAddr]) {
        let compiled = self.compile(policy, host);
        self.apply_compiled(&compiled);
    }

    /// Applies `compiled`. Each apply opens the mid-stream window of
    /// `settings.conntrack.midstream: startup` anew, as an agent's start
    /// does.
    pub fn apply_compiled(&mut self, compiled: &Compiled) {
        self.apply_started(compiled, hostwall::datapath::stats::monotonic_ns());
    }

    /// Applies `compiled` as if the agent had started at `started_ns`
    /// (`CLOCK_MONOTONIC`), the start of the mid-stream window.
    pub fn apply_started(&mut self, compiled: &Compiled, started_ns: u64) {
        self.dp.slots.set_started(started_ns);
        self.dp.slots.apply(compiled).expect("apply");
        self.local = compiled.local.clone();
    }

    pub fn counters(&self, map: &str) -> Vec<u64> {
        let m: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(self.dp.ebpf.map(map).unwrap()).unwrap();
        (0..m.len())
            .map(|i| m.get(&i, 0).unwrap().iter().map(|c| c.packets).sum())
            .collect()
    }

    /// Packets counted under each of `codes` in a per-CPU counter array.
    /// Reading only the codes that exist keeps a run to a few lookups.
    fn counts(&self, map: &str, codes: impl Iterator<Item = u32>) -> Vec<(u32, u64)> {
        let m: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(self.dp.ebpf.map(map).unwrap()).unwrap();
        codes
            .map(|i| (i, m.get(&i, 0).unwrap().iter().map(|c| c.packets).sum()))
            .collect()
    }

    fn verdict_counts(&self) -> VerdictCounts {
        (
            self.counts("HW_DROPS", DropReason::ALL.iter().map(|r| *r as u32)),
            self.counts("HW_PASSES", PassReason::ALL.iter().map(|r| *r as u32)),
        )
    }

    /// The flows of both conntrack tables (flows endpoints opened, then
    /// flows opened towards them), each under its tuple in the direction
    /// the rules allowed.
    pub fn conntrack(&self) -> Vec<(CtKey, CtEntry)> {
        conntrack::flows(&self.dp.ebpf)
            .into_iter()
            .map(|f| (f.allowed(), f.entry))
            .collect()
    }

    /// The flows of one conntrack table, as [`Fixture::conntrack`].
    pub fn conntrack_table(&self, table: Table) -> Vec<(CtKey, CtEntry)> {
        conntrack::flows(&self.dp.ebpf)
            .into_iter()
            .filter(|f| f.table == table)
            .map(|f| (f.allowed(), f.entry))
            .collect()
    }

    /// The flows of both conntrack tables, as [`Fixture::conntrack`],
    /// removed from them.
    pub fn take_conntrack(&mut self) -> Vec<(CtKey, CtEntry)> {
        let flows = conntrack::flows(&self.dp.ebpf);
        conntrack::remove(&mut self.dp.ebpf, &flows);
        flows.into_iter().map(|f| (f.allowed(), f.entry)).collect()
    }

    /// Forgets every tracked flow, fragment and per-endpoint flow count, so
    /// that the next frame is judged as if it were the first.
    pub fn flush_conntrack(&mut self) {
        fn clear<K: aya::Pod, V: aya::Pod>(f: &mut Fixture, name: &str) {
            let mut m: HashMap<&mut MapData, K, V> = HashMap::try_from(f.dp.ebpf.map_mut(name).unwrap()).unwrap();
            let keys: Vec<K> = m.keys().filter_map(Result::ok).collect();
            for k in keys {
                let _ = m.remove(&k);
            }
        }
        clear::<CtKey, CtEntry>(self, "HW_CONNTRACK");
        clear::<CtKey, CtEntry>(self, "HW_CT_INBOUND");
        clear::<FragKey, u64>(self, "HW_FRAGS");
        clear::<u32, u32>(self, "HW_CT_COUNT");
        clear::<u32, u32>(self, "HW_CT_COUNT_IN");
    }

    /// Runs `frame` through the program of `hook`; returns the verdict as
    /// seen from its return code and the counter that moved.
    pub fn run(&self, hook: Hook<'_>, frame: &Frame) -> Expect {
        self.try_run(hook, frame)
            .unwrap_or_else(|Refused(e)| panic!("BPF_PROG_TEST_RUN of {} bytes: {e}", frame.0.len()))
    }

    /// [`Fixture::run`], with the kernel's refusal to run a frame (TC
    /// refuses frames whose IP header is incomplete) as an error.
    pub fn try_run(&self, hook: Hook<'_>, frame: &Frame) -> Result<Expect, Refused> {
        let before = self
            .counters
            .borrow_mut()
            .take()
            .unwrap_or_else(|| self.verdict_counts());
        // A frame from an endpoint carries its MAC where it says SRC_MAC.
        let rewritten;
        let frame = match hook {
            Hook::From(iface) => {
                rewritten = with_mac(frame, self.mac(iface));
                &rewritten
            }
            _ => frame,
        };
        let ret = match hook {
            Hook::From(iface) | Hook::To(iface) | Hook::ToVia(iface, _) => {
                let (name, arrived_on) = match hook {
                    Hook::From(_) => (PROG_FROM_ENDPOINT, self.ifindex(iface)),
                    Hook::ToVia(_, HOST_STACK) => (PROG_TO_ENDPOINT, 0),
                    Hook::ToVia(_, via) => (PROG_TO_ENDPOINT, self.ifindex(via)),
                    _ => (PROG_TO_ENDPOINT, self.owner_of_source(frame)),
                };
                let prog: &SchedClassifier = self.dp.ebpf.program(name).unwrap().try_into().unwrap();
                let mut ctx = [0u8; SKB_CTX_SIZE];
                ctx[SKB_IFINDEX_OFFSET..SKB_IFINDEX_OFFSET + 4].copy_from_slice(&self.ifindex(iface).to_ne_bytes());
                ctx[SKB_INGRESS_IFINDEX_OFFSET..SKB_INGRESS_IFINDEX_OFFSET + 4]
                    .copy_from_slice(&arrived_on.to_ne_bytes());
                let mut opts = TestRunOptions::new();
                opts.data_in = Some(&frame.0);
                opts.ctx_in = Some(&ctx);
                let r = prog.test_run(opts).map_err(|e| Refused(e.to_string()))?.return_value;
                match r {
                    TC_ACT_UNSPEC => true,
                    TC_ACT_SHOT => false,
                    other => panic!("unexpected tc return {other}"),
                }
            }
            Hook::Uplink => {
                let prog: &Xdp = self.dp.ebpf.program(PROG_UPLINK).unwrap().try_into().unwrap();
                let mut opts = TestRunOptions::new();
                opts.data_in = Some(&frame.0);
                let r = prog.test_run(opts).map_err(|e| Refused(e.to_string()))?.return_value;
                match r {
                    XDP_PASS => true,
                    XDP_DROP => false,
                    other => panic!("unexpected xdp return {other}"),
                }
            }
        };
        let after = self.verdict_counts();
        let moved = |before: &[(u32, u64)], after: &[(u32, u64)]| -> Vec<u32> {
            before
                .iter()
                .zip(after)
                .filter(|(b, a)| a.1 != b.1)
                .map(|(b, _)| b.0)
                .collect()
        };
        let dropped = moved(&before.0, &after.0);
        let passed = moved(&before.1, &after.1);
        *self.counters.borrow_mut() = Some(after);
        Ok(match (ret, dropped.as_slice(), passed.as_slice()) {
            (true, [], [code]) => Expect::Pass(*PassReason::ALL.iter().find(|r| **r as u32 == *code).unwrap()),
            (false, [code], []) => Expect::Drop(DropReason::from_code(*code).unwrap()),
            other => panic!("return code and counters disagree: {other:?}"),
        })
    }

    /// Mean ns per run of `frame` sent by the endpoint behind `iface`, run
    /// `repeat` times; with the program's verdict (passed or dropped).
    pub fn time_from(&self, iface: &str, frame: &Frame, repeat: u32) -> (bool, f64) {
        let frame = with_mac(frame, self.mac(iface));
        let prog: &SchedClassifier = self.dp.ebpf.program(PROG_FROM_ENDPOINT).unwrap().try_into().unwrap();
        let ifindex = self.ifindex(iface);
        let mut ctx = [0u8; SKB_CTX_SIZE];
        ctx[SKB_IFINDEX_OFFSET..SKB_IFINDEX_OFFSET + 4].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[SKB_INGRESS_IFINDEX_OFFSET..SKB_INGRESS_IFINDEX_OFFSET + 4].copy_from_slice(&ifindex.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame.0);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
        // The counters moved under this call; the next `run` starts afresh.
        *self.counters.borrow_mut() = None;
        (r.return_value == TC_ACT_UNSPEC, r.duration.as_nanos() as f64)
    }

    /// The interface a frame's source address belongs to (0: the host's or
    /// no one's).
    fn owner_of_source(&self, frame: &Frame) -> u32 {
        let f = &frame.0;
        let (family, addr) = match f.get(12..14) {
            Some([0x08, 0x00]) if f.len() >= 30 => (hostwall_common::FAMILY_V4, &f[26..30]),
            Some([0x86, 0xdd]) if f.len() >= 38 => (hostwall_common::FAMILY_V6, &f[22..38]),
            Some([0x08, 0x06]) if f.len() >= 32 => (hostwall_common::FAMILY_V4, &f[28..32]),
            _ => return 0,
        };
        let mut bytes = [0; 16];
        bytes[..addr.len()].copy_from_slice(addr);
        self.local
            .iter()
            .find(|(k, _)| k.family == family as u32 && k.addr == bytes)
            .map_or(0, |(_, a)| a.ifindex)
    }

    /// Runs a table; reports every mismatch with the case that caused it.
    pub fn check(&self, cases: &[(&str, Hook<'_>, Frame, Expect)]) {
        let mut failures = Vec::new();
        for (name, hook, frame, want) in cases {
            let got = self.run(*hook, frame);
            if got != *want {
                failures.push(format!(
                    "{name}: {hook:?} expected {want:?}, got {got:?}\n  frame: {:02x?}",
                    frame.0
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
}
