//! Conntrack housekeeping: expired flows are removed and every endpoint's
//! flow counts (flows it opened, flows opened towards it) are recounted, so
//! the per-endpoint caps follow LRU evictions the programs cannot see. A
//! flow made while the table is walked is counted once at least (a count
//! may err high until the next recount, never low).

use std::collections::HashMap as StdHashMap;

use hostwall_common::ct_timeout;

use super::Agent;
use crate::datapath::conntrack::{self, Table};
use crate::datapath::stats::monotonic_ns;

impl Agent {
    /// Returns how many expired flows were removed.
    pub fn conntrack_gc(&mut self) -> usize {
        let now = monotonic_ns();
        let settings = self.compiled.settings;
        let ebpf = &mut self.datapath.ebpf;
        let before: Vec<StdHashMap<u32, u32>> = Table::ALL.iter().map(|t| conntrack::counts(ebpf, *t)).collect();
        let mut counts: StdHashMap<Table, StdHashMap<u32, u32>> = StdHashMap::new();
        let mut expired = Vec::new();
        for f in conntrack::flows(ebpf) {
            if now.saturating_sub(f.entry.last_seen_ns) > ct_timeout(&settings, f.key.proto, f.entry.flags) {
                expired.push(f);
            } else if f.entry.owner != 0 {
                *counts.entry(f.table).or_default().entry(f.entry.owner).or_default() += 1;
            }
        }
        let removed = conntrack::remove(ebpf, &expired);
        for (t, before) in Table::ALL.iter().zip(&before) {
            conntrack::set_counts(ebpf, *t, before, &counts.remove(t).unwrap_or_default());
        }
        removed
    }
}
