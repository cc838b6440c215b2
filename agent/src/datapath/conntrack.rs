//! The two conntrack tables as the agent sees them: `HW_CONNTRACK` (flows
//! local endpoints opened) and `HW_CT_INBOUND` (flows others opened
//! towards them), each with its per-endpoint count. Listing, flushing,
//! revalidation, garbage collection and upgrades all read them through
//! here.

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use hostwall_common::{CtEntry, CtKey};

/// One of the two tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// `HW_CONNTRACK`: counted against `max_per_endpoint`.
    Opened,
    /// `HW_CT_INBOUND`: counted against `max_inbound_per_endpoint`.
    Inbound,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Opened, Table::Inbound];

    pub const fn map(self) -> &'static str {
        match self {
            Table::Opened => "HW_CONNTRACK",
            Table::Inbound => "HW_CT_INBOUND",
        }
    }

    /// The map holding each owner's entry count.
    pub const fn count_map(self) -> &'static str {
        match self {
            Table::Opened => "HW_CT_COUNT",
            Table::Inbound => "HW_CT_COUNT_IN",
        }
    }

    pub const fn capacity(self) -> u32 {
        match self {
            Table::Opened => hostwall_common::MAX_CONNTRACK_ENTRIES,
            Table::Inbound => hostwall_common::MAX_CONNTRACK_INBOUND_ENTRIES,
        }
    }

    /// How `hostwall conntrack list` names the table.
    pub const fn name(self) -> &'static str {
        match self {
            Table::Opened => "opened",
            Table::Inbound => "inbound",
        }
    }
}

/// A tracked flow as stored.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub table: Table,
    pub key: CtKey,
    pub entry: CtEntry,
}

impl Flow {
    /// The tuple of the flow the rules allowed, in its allowed direction.
    pub fn allowed(&self) -> CtKey {
        self.key.oriented(self.entry.flags)
    }
}

fn table(ebpf: &Ebpf, t: Table) -> Option<HashMap<&MapData, CtKey, CtEntry>> {
    HashMap::try_from(ebpf.map(t.map())?).ok()
}

fn table_mut(ebpf: &mut Ebpf, t: Table) -> Option<HashMap<&mut MapData, CtKey, CtEntry>> {
    HashMap::try_from(ebpf.map_mut(t.map())?).ok()
}

/// Every tracked flow of both tables (expired ones included).
pub fn flows(ebpf: &Ebpf) -> Vec<Flow> {
    let mut out = Vec::new();
    for t in Table::ALL {
        if let Some(m) = table(ebpf, t) {
            out.extend(
                m.iter()
                    .filter_map(Result::ok)
                    .map(|(key, entry)| Flow { table: t, key, entry }),
            );
        }
    }
    out
}

/// Entries in one table.
pub fn len(ebpf: &Ebpf, t: Table) -> usize {
    table(ebpf, t).map(|m| m.keys().count()).unwrap_or(0)
}

/// The rule slots (`CtEntry::rule_egress`, `rule_ingress`) tracked flows
/// name.
pub fn rule_slots(ebpf: &Ebpf) -> std::collections::BTreeSet<u32> {
    flows(ebpf)
        .iter()
        .flat_map(|f| [f.entry.rule_egress, f.entry.rule_ingress])
        .filter(|s| *s != 0)
        .collect()
}

/// Removes `doomed`; returns how many were there.
pub fn remove(ebpf: &mut Ebpf, doomed: &[Flow]) -> usize {
    let mut removed = 0;
    for t in Table::ALL {
        if let Some(mut m) = table_mut(ebpf, t) {
            removed += doomed
                .iter()
                .filter(|f| f.table == t && m.remove(&f.key).is_ok())
                .count();
        }
    }
    removed
}

/// Writes `flow` into its table; `false` if the kernel refused.
pub fn insert(ebpf: &mut Ebpf, flow: &Flow) -> bool {
    table_mut(ebpf, flow.table).is_some_and(|mut m| m.insert(&flow.key, &flow.entry, 0).is_ok())
}

/// Whether `key` is in `t`.
pub fn contains(ebpf: &Ebpf, t: Table, key: &CtKey) -> bool {
    table(ebpf, t).is_some_and(|m| m.get(key, 0).is_ok())
}

/// The per-owner counts of `t` as the programs keep them.
pub fn counts(ebpf: &Ebpf, t: Table) -> std::collections::HashMap<u32, u32> {
    let Some(map) = ebpf.map(t.count_map()) else {
        return Default::default();
    };
    let Ok(m) = HashMap::<&MapData, u32, u32>::try_from(map) else {
        return Default::default();
    };
    m.iter().filter_map(Result::ok).collect()
}

/// Sets the per-owner counts of `t` to `counted` (the flows found in the
/// table), plus whatever the programs added since `before` was read: flows
/// made while the table was being walked may or may not have been found,
/// so a count errs high until the next recount, never low. Owners with
/// nothing are removed.
pub fn set_counts(
    ebpf: &mut Ebpf,
    t: Table,
    before: &std::collections::HashMap<u32, u32>,
    counted: &std::collections::HashMap<u32, u32>,
) {
    let now = counts(ebpf, t);
    let Some(map) = ebpf.map_mut(t.count_map()) else {
        return;
    };
    let Ok(mut m) = HashMap::<&mut MapData, u32, u32>::try_from(map) else {
        return;
    };
    let owners: std::collections::BTreeSet<u32> = now.keys().chain(counted.keys()).copied().collect();
    for owner in owners {
        let added = now
            .get(&owner)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(&owner).copied().unwrap_or(0));
        let n = counted.get(&owner).copied().unwrap_or(0).saturating_add(added);
        if n == 0 {
            let _ = m.remove(&owner);
        } else {
            let _ = m.insert(&owner, &n, 0);
        }
    }
}
