//! How large each map is, and how it grows.
//!
//! Two kinds of map depend on the policy's size. The LPM tries (policy,
//! CIDR and peer tries) allocate an entry when it is written: their
//! capacities are ceilings that cost nothing until used. The hash maps and
//! arrays indexed by interface, address and rule (`HW_IFACE_s`,
//! `HW_SRC_s`, `HW_LOCAL_s`, `HW_CT_COUNT`, `HW_CT_COUNT_IN`,
//! `HW_RULE_STATS`, `HW_RULE_KEYS`, `HW_RULE_IDS`) are allocated whole
//! when created: they are sized from the policy with headroom, and when a
//! policy outgrows one the agent creates larger maps and swaps them in
//! with its programs (`Agent::grow`). Only `--max-map-memory` bounds them.

use hostwall_common::{MAX_PEER_ENTRIES, MAX_POLICY_ENTRIES};

use crate::compile::Compiled;
use crate::policy::Policy;

/// The capacities maps of the growable kinds start at.
const MIN_INTERFACES: u32 = 64;
const MIN_SRC: u32 = 256;
const MIN_LOCAL: u32 = 256;
const MIN_RULES: u32 = 1024;

/// The largest capacity a growable map takes, whatever the memory ceiling.
pub const CEILING: u32 = 1 << 24;

/// Capacities of the maps that depend on the policy's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `HW_POLICY_s` and each of `HW_CIDR4_s`/`HW_CIDR6_s` (LPM): rule
    /// entries (`--policy-entries`).
    pub policy: u32,
    /// `HW_PEER4_s`/`HW_PEER6_s` (LPM): prefixes and addresses per family
    /// (`--peer-entries`).
    pub peer: u32,
    /// `HW_IFACE_s`, `HW_CT_COUNT`, `HW_CT_COUNT_IN`: endpoint and
    /// quarantined interfaces.
    pub interfaces: u32,
    /// `HW_SRC_s`: (interface, source address) pairs.
    pub src: u32,
    /// `HW_LOCAL_s`: addresses of the host and its endpoints.
    pub local: u32,
    /// `HW_RULE_STATS`, `HW_RULE_KEYS`, `HW_RULE_IDS`: rule slots (slot 0
    /// is none).
    pub rules: u32,
    /// Kernel memory all maps together may take, both slots full.
    pub max_memory: u64,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            policy: MAX_POLICY_ENTRIES,
            peer: MAX_PEER_ENTRIES,
            interfaces: MIN_INTERFACES,
            src: MIN_SRC,
            local: MIN_LOCAL,
            rules: MIN_RULES,
            max_memory: super::memory::DEFAULT_MAX_MAP_MEMORY,
        }
    }
}

impl MapSizes {
    /// The capacities the eBPF object declares: those of maps loaded
    /// without pins (packet tests, benchmarks).
    pub fn of_object() -> MapSizes {
        use hostwall_common::{MAX_ENDPOINT_INTERFACES, MAX_LOCAL_ENTRIES, MAX_RULES, MAX_SRC_ENTRIES};
        MapSizes {
            interfaces: MAX_ENDPOINT_INTERFACES,
            src: MAX_SRC_ENTRIES,
            local: MAX_LOCAL_ENTRIES,
            rules: MAX_RULES,
            ..MapSizes::default()
        }
    }
}

/// What a compiled policy needs of the growable maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub interfaces: usize,
    pub src: usize,
    pub local: usize,
    /// The highest rule slot used, plus one.
    pub rules: usize,
}

impl Needs {
    pub fn of(c: &Compiled) -> Needs {
        Needs {
            interfaces: c.endpoints.len(),
            src: c.src.len(),
            local: c.local.len(),
            rules: c.rules.iter().map(|(slot, _)| *slot as usize).max().unwrap_or(0) + 1,
        }
    }

    /// An estimate from the policy alone, before anything is compiled: its
    /// rules, and its local endpoints with their addresses.
    pub fn estimate(policy: &Policy, node: &str) -> Needs {
        let rules: usize = policy.groups.values().map(|g| g.ingress.len() + g.egress.len()).sum();
        let local: Vec<_> = policy.endpoints.iter().filter(|e| e.is_local(node)).collect();
        let addresses: usize = local.iter().map(|e| e.addresses.len()).sum();
        Needs {
            interfaces: local.len(),
            src: addresses,
            // The host's own addresses besides.
            local: addresses + 16,
            rules: rules + 1,
        }
    }
}

/// `HW_IFACE` of `HW_IFACE_1`: the name without its slot.
fn slotless(name: &str) -> &str {
    name.strip_suffix("_0")
        .or_else(|| name.strip_suffix("_1"))
        .unwrap_or(name)
}

/// A capacity for `needed` entries with room to double: the next power
/// of two of twice as many, at least `min`.
fn headroom(needed: usize, min: u32) -> u32 {
    let twice = needed.saturating_mul(2).clamp(1, CEILING as usize);
    (twice.next_power_of_two() as u32).clamp(min, CEILING)
}

impl MapSizes {
    /// These sizes, with the growable maps sized for `needs` with headroom.
    pub fn for_needs(self, needs: &Needs) -> MapSizes {
        MapSizes {
            interfaces: headroom(needs.interfaces, MIN_INTERFACES),
            src: headroom(needs.src, MIN_SRC),
            local: headroom(needs.local, MIN_LOCAL),
            rules: headroom(needs.rules, MIN_RULES),
            ..self
        }
    }

    /// The sizes the maps must grow to for `needs`, or `None` when they
    /// fit it already. Maps that fit keep their size, the others get
    /// headroom; none shrinks.
    pub fn to_fit(&self, needs: &Needs) -> Option<MapSizes> {
        let grow = |have: u32, needed: usize, min: u32| {
            if needed <= have as usize {
                have
            } else {
                headroom(needed, min)
            }
        };
        let grown = MapSizes {
            interfaces: grow(self.interfaces, needs.interfaces, MIN_INTERFACES),
            src: grow(self.src, needs.src, MIN_SRC),
            local: grow(self.local, needs.local, MIN_LOCAL),
            rules: grow(self.rules, needs.rules, MIN_RULES),
            ..*self
        };
        (grown != *self).then_some(grown)
    }

    /// The capacity map `name` has at these sizes.
    pub fn capacity(&self, name: &str) -> Option<u32> {
        let mut sizes = *self;
        sizes.field(name).map(|c| *c)
    }

    /// The field that sizes map `name` (any slot's).
    fn field(&mut self, name: &str) -> Option<&mut u32> {
        Some(match slotless(name) {
            "HW_POLICY" | "HW_CIDR4" | "HW_CIDR6" => &mut self.policy,
            "HW_PEER4" | "HW_PEER6" => &mut self.peer,
            "HW_IFACE" | "HW_CT_COUNT" | "HW_CT_COUNT_IN" => &mut self.interfaces,
            "HW_SRC" => &mut self.src,
            "HW_LOCAL" => &mut self.local,
            "HW_RULE_STATS" | "HW_RULE_KEYS" | "HW_RULE_IDS" => &mut self.rules,
            _ => return None,
        })
    }

    /// Whether `name` is an LPM trie, whose capacity costs nothing until
    /// used.
    pub fn lpm(name: &str) -> bool {
        matches!(
            slotless(name),
            "HW_POLICY" | "HW_CIDR4" | "HW_CIDR6" | "HW_PEER4" | "HW_PEER6"
        )
    }

    /// These sizes with each capacity that `pinned` reports for a map
    /// (name, capacity) taken from there: pinned maps keep theirs.
    pub fn with_pinned(mut self, pinned: impl IntoIterator<Item = (&'static str, u32)>) -> MapSizes {
        for (name, capacity) in pinned {
            if let Some(field) = self.field(name) {
                *field = capacity;
            }
        }
        self
    }

    /// The maps whose capacity differs between `self` and `other`.
    pub fn differing<'a>(&self, other: &MapSizes, names: &'a [&'a str]) -> Vec<&'a str> {
        names
            .iter()
            .copied()
            .filter(|n| self.capacity(n) != other.capacity(n))
            .collect()
    }

    /// The compiler's limits: the LPM tries' capacities, and for the maps
    /// that grow the ceiling.
    pub fn limits(&self) -> crate::compile::Limits {
        crate::compile::Limits {
            policy_entries: self.policy as usize,
            peer_entries: self.peer as usize,
            src_entries: CEILING as usize,
            local_entries: CEILING as usize,
            interfaces: CEILING as usize,
            rules: CEILING as usize - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growable_maps_get_twice_what_is_needed_rounded_up_and_never_shrink() {
        let start = MapSizes::default().for_needs(&Needs {
            interfaces: 3,
            src: 6,
            local: 20,
            rules: 3_001,
        });
        assert_eq!(
            (start.interfaces, start.src, start.local, start.rules),
            (MIN_INTERFACES, MIN_SRC, MIN_LOCAL, 8_192)
        );
        let fits = Needs {
            interfaces: 64,
            src: 10,
            local: 10,
            rules: 8_192,
        };
        assert_eq!(start.to_fit(&fits), None, "what fits grows nothing");
        let grown = start
            .to_fit(&Needs {
                interfaces: 65,
                src: 1,
                local: 1,
                rules: 9_000,
            })
            .expect("65 interfaces and 9000 rule slots outgrow the maps");
        assert_eq!((grown.interfaces, grown.rules), (256, 32_768));
        assert_eq!(
            (grown.src, grown.local),
            (start.src, start.local),
            "what fits keeps its size"
        );
        assert_eq!(grown.policy, start.policy);
        assert_eq!(
            grown.differing(&start, &super::super::MAPS),
            [
                "HW_IFACE_0",
                "HW_IFACE_1",
                "HW_RULE_STATS",
                "HW_RULE_KEYS",
                "HW_RULE_IDS",
                "HW_CT_COUNT",
                "HW_CT_COUNT_IN"
            ]
        );
    }

    #[test]
    fn every_map_of_a_growable_kind_has_a_capacity_and_pins_override_requests() {
        let s = MapSizes::default();
        for name in [
            "HW_IFACE_1",
            "HW_SRC_0",
            "HW_LOCAL_1",
            "HW_CT_COUNT_IN",
            "HW_RULE_IDS",
            "HW_CIDR6_0",
        ] {
            assert!(s.capacity(name).is_some(), "{name}");
        }
        assert_eq!(s.capacity("HW_CONNTRACK"), None, "conntrack never grows");
        let pinned = s.with_pinned([("HW_RULE_STATS", 4096), ("HW_SRC_1", 512), ("HW_CONNTRACK", 7)]);
        assert_eq!((pinned.rules, pinned.src), (4096, 512));
        assert_eq!(pinned.interfaces, s.interfaces);
    }
}
