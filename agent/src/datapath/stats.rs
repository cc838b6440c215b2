//! Counters and fill levels, read from the maps.

use std::collections::HashMap;

use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use hostwall_common::{Counter, DropReason, PassReason};
use serde::Serialize;

use crate::api::replies::MapFill;
use crate::compile::Compiled;
use crate::daemon::Agent;
use crate::datapath::conntrack::{self, Table};

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct ReasonCount {
    pub code: u32,
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Default, Clone, Serialize, schemars::JsonSchema)]
pub struct ConntrackTotals {
    pub entries: usize,
    pub capacity: u32,
    /// Flows inserted since the maps were created.
    pub inserted: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub drops: Vec<ReasonCount>,
    pub passes: Vec<ReasonCount>,
    /// rule id -> (packets, bytes)
    #[serde(skip)]
    pub rules: HashMap<u32, (u64, u64)>,
    /// `HW_CONNTRACK`: flows local endpoints opened.
    pub conntrack: ConntrackTotals,
    /// `HW_CT_INBOUND`: flows opened towards local endpoints.
    pub inbound: ConntrackTotals,
}

fn sum(map: &PerCpuArray<&MapData, Counter>, index: u32) -> (u64, u64) {
    match map.get(&index, 0) {
        Ok(values) => values.iter().fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes)),
        Err(_) => (0, 0),
    }
}

fn counters<'a>(ebpf: &'a Ebpf, name: &str) -> Option<PerCpuArray<&'a MapData, Counter>> {
    PerCpuArray::try_from(ebpf.map(name)?).ok()
}

pub fn read(ebpf: &Ebpf, compiled: &Compiled) -> Stats {
    let mut stats = Stats::default();
    if let Some(drops) = counters(ebpf, "HW_DROPS") {
        for r in DropReason::ALL {
            let (packets, bytes) = sum(&drops, r as u32);
            stats.drops.push(ReasonCount {
                code: r as u32,
                reason: r.name(),
                packets,
                bytes,
            });
        }
    }
    if let Some(passes) = counters(ebpf, "HW_PASSES") {
        for r in PassReason::ALL {
            let (packets, bytes) = sum(&passes, r as u32);
            stats.passes.push(ReasonCount {
                code: r as u32,
                reason: r.name(),
                packets,
                bytes,
            });
        }
    }
    if let Some(rules) = counters(ebpf, "HW_RULE_STATS") {
        for (id, _) in &compiled.rules {
            stats.rules.insert(*id, sum(&rules, *id));
        }
    }
    stats.conntrack.capacity = Table::Opened.capacity();
    stats.conntrack.entries = conntrack::len(ebpf, Table::Opened);
    stats.inbound.capacity = Table::Inbound.capacity();
    stats.inbound.entries = conntrack::len(ebpf, Table::Inbound);
    if let Some(ev) = ebpf
        .map("HW_CT_EVENTS")
        .and_then(|m| PerCpuArray::<&MapData, u64>::try_from(m).ok())
    {
        stats.conntrack.inserted = ev.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
        stats.inbound.inserted = ev.get(&1, 0).map(|v| v.iter().sum()).unwrap_or(0);
    }
    stats
}

/// Entries and capacity of the maps of the active policy slot and of
/// conntrack.
pub fn fill_levels(agent: &Agent) -> Vec<MapFill> {
    let fill = |map: &str, entries: usize, capacity: u32| MapFill {
        map: map.to_string(),
        entries,
        capacity: u64::from(capacity),
    };
    let mut out: Vec<MapFill> = agent
        .datapath
        .slots
        .fill()
        .into_iter()
        .map(|(map, entries, capacity)| fill(map, entries, capacity))
        .collect();
    let s = read(&agent.datapath.ebpf, &agent.compiled);
    out.push(fill("HW_CONNTRACK", s.conntrack.entries, s.conntrack.capacity));
    out.push(fill("HW_CT_INBOUND", s.inbound.entries, s.inbound.capacity));
    out.push(fill(
        "HW_RULE_STATS",
        agent.compiled.rules.len(),
        agent.datapath.slots.sizes().rules - 1,
    ));
    out
}

/// Adds the rule counters of `from` (an `HW_RULE_STATS` its programs no
/// longer count in) to `to`'s.
pub fn add_rule_counters(from: &aya::maps::Map, to: &mut aya::Ebpf) {
    let Some(map) = to.map_mut("HW_RULE_STATS") else {
        return;
    };
    let (Ok(from), Ok(mut to)) = (
        PerCpuArray::<&MapData, Counter>::try_from(from),
        PerCpuArray::<&mut MapData, Counter>::try_from(map),
    ) else {
        return;
    };
    for id in 0..from.len().min(to.len()) {
        let (Ok(old), Ok(new)) = (from.get(&id, 0), to.get(&id, 0)) else {
            continue;
        };
        if old.iter().all(|c| c.packets == 0) {
            continue;
        }
        let sum: Vec<Counter> = old
            .iter()
            .zip(new.iter())
            .map(|(o, n)| Counter {
                packets: o.packets + n.packets,
                bytes: o.bytes + n.bytes,
            })
            .collect();
        if let Ok(values) = PerCpuValues::try_from(sum) {
            let _ = to.set(id, values, 0);
        }
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
