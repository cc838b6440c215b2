//! Conntrack housekeeping: expired flows are removed and every endpoint's
//! flow count is recounted, so the per-endpoint cap stays exact despite LRU
//! evictions the programs cannot see.

use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, MapData};
use hostwall_common::{CtEntry, CtKey, ct_timeout};

use super::Agent;
use crate::datapath::stats::monotonic_ns;

impl Agent {
    /// Returns how many expired flows were removed.
    pub fn conntrack_gc(&mut self) -> usize {
        let now = monotonic_ns();
        let settings = self.compiled.settings;
        let Some(map) = self.datapath.ebpf.map_mut("HW_CONNTRACK") else {
            return 0;
        };
        let Ok(mut ct) = HashMap::<&mut MapData, CtKey, CtEntry>::try_from(map) else {
            return 0;
        };
        let mut counts: StdHashMap<u32, u32> = StdHashMap::new();
        let mut expired = Vec::new();
        for (k, v) in ct.iter().filter_map(Result::ok) {
            if now.saturating_sub(v.last_seen_ns) > ct_timeout(&settings, k.proto, v.flags) {
                expired.push(k);
            } else if v.owner != 0 {
                *counts.entry(v.owner).or_default() += 1;
            }
        }
        let removed = expired.iter().filter(|k| ct.remove(k).is_ok()).count();
        let Some(map) = self.datapath.ebpf.map_mut("HW_CT_COUNT") else {
            return removed;
        };
        let Ok(mut count) = HashMap::<&mut MapData, u32, u32>::try_from(map) else {
            return removed;
        };
        let known: Vec<u32> = count.keys().filter_map(Result::ok).collect();
        for owner in known {
            if !counts.contains_key(&owner) {
                let _ = count.remove(&owner);
            }
        }
        for (owner, n) in counts {
            let _ = count.insert(&owner, &n, 0);
        }
        removed
    }
}
