//! Rule ids and counter slots.
//!
//! A rule's *id* names one (group, direction, match) forever: the rule
//! keeps it across updates and restarts as long as its group, direction,
//! protocol, ports, ICMP match and peers stay the same (its description is
//! not part of it), and no other rule ever gets it, so a removed rule that
//! is added again gets a new one. Ids are 64-bit and given in increasing
//! order.
//!
//! A rule's *slot* is internal: where the datapath counts its packets
//! (`HW_RULE_STATS`) and what tracked flows record as the rules that
//! admitted them. A slot a removed rule leaves is given to a new rule only
//! once no tracked flow names it.
//!
//! Both live in pinned maps so that a restarted agent finds them again:
//! `HW_RULE_KEYS` holds each slot's rule (a hash of what makes it the same
//! rule), `HW_RULE_IDS` each slot's id and, at 0, the next id to give.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::compile::RuleRef;
use crate::policy::{Direction, Policy, Rule, rule_flow};

/// A hash of what makes a rule the same rule: group, direction and match
/// (protocol, ports, ICMP, peers), not its description.
pub fn rule_key(group: &str, direction: Direction, rule: &Rule) -> u64 {
    let matched = Rule {
        description: None,
        ..rule.clone()
    };
    let flow = rule_flow(&matched, "peers");
    // FNV-1a: stable across builds, which std's hasher is not.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group
        .bytes()
        .chain([0])
        .chain(direction.as_str().bytes())
        .chain([0])
        .chain(flow.bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// A slot's rule as the pinned maps hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub slot: u32,
    pub key: u64,
    pub id: u64,
}

#[derive(Clone, Debug, Default)]
pub struct RuleRegistry {
    /// rule key -> (slot, id)
    by_key: HashMap<u64, (u32, u64)>,
    /// slot -> id
    ids: HashMap<u32, u64>,
    /// Slots that rules left and tracked flows may still name, with the
    /// ids of those rules.
    cooling: BTreeMap<u32, u64>,
    /// The id the next new rule gets.
    next_id: u64,
    max: u32,
}

/// The outcome of giving a policy's rules their slots and ids.
#[derive(Clone, Debug, Default)]
pub struct Assignment {
    /// Each rule's slot.
    pub ids: BTreeMap<RuleRef, u32>,
    /// Rules that had no slot: their counters start at zero.
    pub fresh: Vec<Held>,
    /// Slots no rule uses any more.
    pub freed: Vec<u32>,
    /// The registry's next id once this is committed.
    pub next_id: u64,
}

/// Every slot is taken by a rule or named by a tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfSlots {
    pub max: u32,
}

impl RuleRegistry {
    /// `max` is the largest usable slot.
    pub fn new(max: u32) -> RuleRegistry {
        RuleRegistry {
            next_id: 1,
            max,
            ..Default::default()
        }
    }

    /// Rebuilds the registry from the pinned maps' contents: each slot's
    /// rule and id, and the next id (ids of slots that have none, as left
    /// by builds that had no separate ids, are the slots' numbers).
    /// `referenced`: the slots tracked flows name.
    pub fn from_held(
        max: u32,
        held: impl IntoIterator<Item = Held>,
        next_id: u64,
        referenced: &BTreeSet<u32>,
    ) -> RuleRegistry {
        let mut r = RuleRegistry::new(max);
        for h in held {
            if h.slot == 0 || h.slot > max || h.key == 0 {
                continue;
            }
            let id = if h.id == 0 { h.slot as u64 } else { h.id };
            r.by_key.insert(h.key, (h.slot, id));
            r.ids.insert(h.slot, id);
        }
        r.next_id = next_id.max(r.ids.values().max().map_or(1, |m| m + 1));
        // A slot a flow names but no rule holds: the id it had is unknown.
        r.cooling = referenced
            .iter()
            .filter(|s| !r.ids.contains_key(s))
            .map(|s| (*s, 0))
            .collect();
        r
    }

    /// The id of the rule in `slot`.
    pub fn id(&self, slot: u32) -> Option<u64> {
        self.ids.get(&slot).copied()
    }

    /// The id of the rule that admitted a flow naming `slot`: the rule in
    /// it, or the removed rule that held it.
    pub fn admitted_by(&self, slot: u32) -> Option<u64> {
        self.id(slot)
            .or_else(|| self.cooling.get(&slot).copied().filter(|id| *id != 0))
    }

    /// The slot of the rule with id `id`.
    pub fn slot(&self, id: u64) -> Option<u32> {
        self.ids.iter().find(|(_, i)| **i == id).map(|(s, _)| *s)
    }

    /// Forgets the slots rules left that `referenced` (what tracked flows
    /// name now) no longer holds: they may be given again.
    pub fn release_unreferenced(&mut self, referenced: &BTreeSet<u32>) {
        self.cooling.retain(|s, _| referenced.contains(s));
    }

    /// Gives every rule of `policy` a slot and an id, keeping known rules'.
    /// The registry itself changes only through `commit`.
    pub fn assign(&self, policy: &Policy) -> Result<Assignment, OutOfSlots> {
        let mut wanted: Vec<(RuleRef, u64)> = Vec::new();
        for (name, group) in &policy.groups {
            for (direction, rules) in [(Direction::Ingress, &group.ingress), (Direction::Egress, &group.egress)] {
                for (index, rule) in rules.iter().enumerate() {
                    wanted.push((
                        RuleRef {
                            group: name.clone(),
                            direction,
                            index,
                        },
                        rule_key(name, direction, rule),
                    ));
                }
            }
        }
        let keys: BTreeSet<u64> = wanted.iter().map(|(_, k)| *k).collect();
        // Slots of rules this change removes are not free either: tracked
        // flows may name them.
        let mut used: BTreeSet<u32> = self.by_key.values().map(|(slot, _)| *slot).collect();
        let mut out = Assignment {
            next_id: self.next_id,
            ..Default::default()
        };
        let mut given: HashMap<u64, u32> = HashMap::new();
        let mut next = 1u32;
        for (r, key) in wanted {
            let slot = match self.by_key.get(&key).map(|(s, _)| s).or_else(|| given.get(&key)) {
                Some(slot) => *slot,
                None => {
                    while used.contains(&next) || self.cooling.contains_key(&next) {
                        next += 1;
                    }
                    if next > self.max {
                        return Err(OutOfSlots { max: self.max });
                    }
                    used.insert(next);
                    given.insert(key, next);
                    out.fresh.push(Held {
                        slot: next,
                        key,
                        id: out.next_id,
                    });
                    out.next_id += 1;
                    next
                }
            };
            out.ids.insert(r, slot);
        }
        out.freed = self
            .by_key
            .iter()
            .filter(|(k, _)| !keys.contains(k))
            .map(|(_, (slot, _))| *slot)
            .collect();
        out.freed.sort_unstable();
        Ok(out)
    }

    pub fn commit(&mut self, a: &Assignment) {
        self.by_key.retain(|_, (slot, _)| !a.freed.contains(slot));
        for slot in &a.freed {
            if let Some(id) = self.ids.remove(slot) {
                self.cooling.insert(*slot, id);
            }
        }
        for h in &a.fresh {
            self.by_key.insert(h.key, (h.slot, h.id));
            self.ids.insert(h.slot, h.id);
        }
        self.next_id = a.next_id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_str;

    fn policy(rules: &str) -> Policy {
        parse_str(&format!("version: 1\ngroups:\n  g:\n    ingress:\n{rules}"), "t").unwrap()
    }

    fn at(index: usize) -> RuleRef {
        RuleRef {
            group: "g".into(),
            direction: Direction::Ingress,
            index,
        }
    }

    fn id_of(reg: &RuleRegistry, a: &Assignment, index: usize) -> u64 {
        reg.id(a.ids[&at(index)]).unwrap()
    }

    #[test]
    fn surviving_rules_keep_their_ids() {
        let mut reg = RuleRegistry::new(100);
        let a = policy("      - {proto: tcp, ports: 1, from: [host]}\n      - {proto: tcp, ports: 2, from: [host]}\n");
        let first = reg.assign(&a).unwrap();
        reg.commit(&first);
        let (id1, id2) = (id_of(&reg, &first, 0), id_of(&reg, &first, 1));
        // Drop the first rule, add a third: rule "port 2" keeps its id; the
        // third gets a new id and not the first rule's slot, which a
        // tracked flow may still name.
        let b = policy("      - {proto: tcp, ports: 2, from: [host]}\n      - {proto: tcp, ports: 3, from: [host]}\n");
        let second = reg.assign(&b).unwrap();
        assert_eq!(second.freed, vec![first.ids[&at(0)]]);
        assert_eq!(second.fresh.len(), 1);
        assert_ne!(second.ids[&at(1)], first.ids[&at(0)]);
        reg.commit(&second);
        assert_eq!(id_of(&reg, &second, 0), id2);
        let id3 = id_of(&reg, &second, 1);
        assert!(id3 > id2 && id3 != id1);
        assert_eq!(reg.slot(id1), None, "a removed rule's id names nothing");
        // Rebuilt from the maps' contents, the registry agrees.
        let held: Vec<Held> = reg
            .by_key
            .iter()
            .map(|(k, (slot, id))| Held {
                slot: *slot,
                key: *k,
                id: *id,
            })
            .collect();
        let again = RuleRegistry::from_held(100, held, reg.next_id, &BTreeSet::new());
        let same = again.assign(&b).unwrap();
        assert_eq!(same.ids, second.ids);
        assert!(same.fresh.is_empty());
        assert_eq!(again.id(same.ids[&at(1)]), Some(id3));
    }

    #[test]
    fn a_rule_added_again_gets_a_new_id() {
        let mut reg = RuleRegistry::new(100);
        let with =
            policy("      - {proto: tcp, ports: 1, from: [host]}\n      - {proto: tcp, ports: 2, from: [host]}\n");
        let without = policy("      - {proto: tcp, ports: 1, from: [host]}\n");
        let a = reg.assign(&with).unwrap();
        reg.commit(&a);
        let old = id_of(&reg, &a, 1);
        let b = reg.assign(&without).unwrap();
        reg.commit(&b);
        let c = reg.assign(&with).unwrap();
        reg.commit(&c);
        assert!(id_of(&reg, &c, 1) > old);
        assert_eq!(reg.slot(old), None);
    }

    #[test]
    fn descriptions_are_not_part_of_a_rule() {
        let mut reg = RuleRegistry::new(100);
        let a = policy("      - {proto: tcp, ports: 1, from: [host], description: before}\n");
        let first = reg.assign(&a).unwrap();
        reg.commit(&first);
        let b = policy("      - {proto: tcp, ports: 1, from: [host], description: after}\n");
        let second = reg.assign(&b).unwrap();
        assert!(second.fresh.is_empty() && second.freed.is_empty());
        assert_eq!(second.ids, first.ids);
    }

    #[test]
    fn slots_flows_name_are_given_again_only_once_released() {
        let mut reg = RuleRegistry::new(2);
        let one =
            policy("      - {proto: tcp, ports: 1, from: [host]}\n      - {proto: tcp, ports: 2, from: [host]}\n");
        let a = reg.assign(&one).unwrap();
        reg.commit(&a);
        let other =
            policy("      - {proto: tcp, ports: 1, from: [host]}\n      - {proto: tcp, ports: 3, from: [host]}\n");
        assert_eq!(reg.assign(&other).unwrap_err(), OutOfSlots { max: 2 });
        let removed = reg
            .assign(&policy("      - {proto: tcp, ports: 1, from: [host]}\n"))
            .unwrap();
        let gone = reg.id(removed.freed[0]);
        reg.commit(&removed);
        let freed = removed.freed[0];
        assert_eq!(reg.id(freed), None);
        assert_eq!(
            reg.admitted_by(freed),
            gone,
            "flows still show the rule that admitted them"
        );
        assert!(reg.assign(&other).is_err(), "slot {freed} may still be named by a flow");
        reg.release_unreferenced(&BTreeSet::from([freed]));
        assert!(reg.assign(&other).is_err(), "a flow still names slot {freed}");
        reg.release_unreferenced(&BTreeSet::new());
        let c = reg.assign(&other).unwrap();
        assert_eq!(c.fresh[0].slot, freed);
    }

    #[test]
    fn ids_of_earlier_builds_are_their_slots() {
        let held = [Held {
            slot: 7,
            key: 42,
            id: 0,
        }];
        let reg = RuleRegistry::from_held(100, held, 0, &BTreeSet::from([3, 7]));
        assert_eq!(reg.id(7), Some(7));
        assert_eq!(reg.next_id, 8);
        assert_eq!(reg.cooling, BTreeMap::from([(3, 0)]));
    }
}
