//! Reading the counters: from the agent's own maps, or from the maps it
//! pinned (for `hostwall stats`).

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};
use hostwall_common::{Counter, DropReason, PassReason};
use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ReasonCount {
    pub code: u32,
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub drops: Vec<ReasonCount>,
    pub passes: Vec<ReasonCount>,
    /// `rules[id]`: (packets, bytes) of rule `id` (index 0 unused).
    pub rules: Vec<(u64, u64)>,
}

impl Stats {
    pub fn drops_for(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|r| r.code == reason as u32)
            .map(|r| r.packets)
            .unwrap_or(0)
    }
}

fn sum(map: &PerCpuArray<MapData, Counter>, index: u32) -> (u64, u64) {
    match map.get(&index, 0) {
        Ok(values) => values.iter().fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes)),
        Err(_) => (0, 0),
    }
}

fn open(dir: &Path, name: &str) -> Result<PerCpuArray<MapData, Counter>, StatsError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| StatsError::Open {
        path: path.clone(),
        source,
    })?;
    PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|source| StatsError::Open { path, source })
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("opening pinned map {path} (is the agent running with this --bpffs?)")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Reads the counters pinned under `dir`; `rules` is how many rule ids to
/// read (0 for none).
pub fn read_pinned(dir: &Path, rules: u32) -> Result<Stats, StatsError> {
    let drops = open(dir, "HW_DROPS")?;
    let passes = open(dir, "HW_PASSES")?;
    let mut stats = Stats::default();
    for r in DropReason::ALL {
        let (packets, bytes) = sum(&drops, r as u32);
        stats.drops.push(ReasonCount {
            code: r as u32,
            reason: r.name(),
            packets,
            bytes,
        });
    }
    for r in PassReason::ALL {
        let (packets, bytes) = sum(&passes, r as u32);
        stats.passes.push(ReasonCount {
            code: r as u32,
            reason: r.name(),
            packets,
            bytes,
        });
    }
    if rules > 0 {
        let rule_map = open(dir, "HW_RULE_STATS")?;
        stats.rules = (0..=rules).map(|i| sum(&rule_map, i)).collect();
    }
    Ok(stats)
}
