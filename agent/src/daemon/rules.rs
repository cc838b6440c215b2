//! Stable rule ids. A rule keeps its id (and so its counters) across
//! updates as long as its group, direction and content stay the same; the
//! ids live in the pinned `HW_RULE_KEYS` map so a restarted agent finds
//! them again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::compile::RuleRef;
use crate::policy::{Direction, Policy, rule_flow};

/// A hash of what makes a rule the same rule: group, direction, content.
pub fn rule_key(group: &str, direction: Direction, flow: &str) -> u64 {
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

#[derive(Clone, Debug, Default)]
pub struct RuleRegistry {
    /// rule key -> id
    ids: HashMap<u64, u32>,
    max: u32,
}

/// The outcome of giving a policy's rules their ids.
#[derive(Clone, Debug, Default)]
pub struct Assignment {
    pub ids: BTreeMap<RuleRef, u32>,
    /// Ids given to rules that had none: their counters start at zero.
    pub fresh: Vec<(u32, u64)>,
    /// Ids no rule uses any more.
    pub freed: Vec<u32>,
}

impl RuleRegistry {
    /// `max` is the largest usable id.
    pub fn new(max: u32) -> RuleRegistry {
        RuleRegistry {
            ids: HashMap::new(),
            max,
        }
    }

    /// Rebuilds the registry from (id, key) pairs read back from the map.
    pub fn from_keys(max: u32, keys: impl IntoIterator<Item = (u32, u64)>) -> RuleRegistry {
        let ids = keys
            .into_iter()
            .filter(|(id, key)| *id != 0 && *key != 0)
            .map(|(id, key)| (key, id))
            .collect();
        RuleRegistry { ids, max }
    }

    /// Gives every rule of `policy` an id, keeping known rules' ids. The
    /// registry itself changes only through `commit`.
    pub fn assign(&self, policy: &Policy) -> Result<Assignment, u32> {
        let mut wanted: Vec<(RuleRef, u64)> = Vec::new();
        for (name, group) in &policy.groups {
            for (direction, rules, peers) in [
                (Direction::Ingress, &group.ingress, "from"),
                (Direction::Egress, &group.egress, "to"),
            ] {
                for (index, rule) in rules.iter().enumerate() {
                    let key = rule_key(name, direction, &rule_flow(rule, peers));
                    wanted.push((
                        RuleRef {
                            group: name.clone(),
                            direction,
                            index,
                        },
                        key,
                    ));
                }
            }
        }
        let keys: BTreeSet<u64> = wanted.iter().map(|(_, k)| *k).collect();
        let mut used: BTreeSet<u32> = self
            .ids
            .iter()
            .filter(|(k, _)| keys.contains(k))
            .map(|(_, id)| *id)
            .collect();
        let mut out = Assignment::default();
        let mut given: HashMap<u64, u32> = HashMap::new();
        let mut next = 1u32;
        for (r, key) in wanted {
            let id = match self.ids.get(&key).or_else(|| given.get(&key)) {
                Some(id) => *id,
                None => {
                    while used.contains(&next) {
                        next += 1;
                    }
                    if next > self.max {
                        return Err(self.max);
                    }
                    used.insert(next);
                    given.insert(key, next);
                    out.fresh.push((next, key));
                    next
                }
            };
            out.ids.insert(r, id);
        }
        out.freed = self
            .ids
            .iter()
            .filter(|(k, _)| !keys.contains(k))
            .map(|(_, id)| *id)
            .collect();
        out.freed.sort_unstable();
        Ok(out)
    }

    pub fn commit(&mut self, a: &Assignment) {
        self.ids.retain(|_, id| !a.freed.contains(id));
        for (id, key) in &a.fresh {
            self.ids.insert(*key, *id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_str;

    fn policy(rules: &str) -> Policy {
        parse_str(&format!("version: 1\ngroups:\n  g:\n    ingress:\n{rules}"), "t").unwrap()
    }

    #[test]
    fn surviving_rules_keep_their_ids() {
        let mut reg = RuleRegistry::new(100);
        let a = policy("      - {proto: tcp, ports: 1, from: [host]}\n      - {proto: tcp, ports: 2, from: [host]}\n");
        let first = reg.assign(&a).unwrap();
        reg.commit(&first);
        let id_of = |asg: &Assignment, index| {
            asg.ids[&RuleRef {
                group: "g".into(),
                direction: Direction::Ingress,
                index,
            }]
        };
        // Drop the first rule, add a third: rule "port 2" keeps its id.
        let b = policy("      - {proto: tcp, ports: 2, from: [host]}\n      - {proto: tcp, ports: 3, from: [host]}\n");
        let second = reg.assign(&b).unwrap();
        assert_eq!(id_of(&second, 0), id_of(&first, 1));
        assert_eq!(second.freed, vec![id_of(&first, 0)]);
        assert_eq!(second.fresh.len(), 1);
        assert_ne!(id_of(&second, 1), id_of(&second, 0));
        reg.commit(&second);
        // Rebuilt from the map's contents, the registry agrees.
        let keys: Vec<(u32, u64)> = reg.ids.iter().map(|(k, id)| (*id, *k)).collect();
        let again = RuleRegistry::from_keys(100, keys).assign(&b).unwrap();
        assert_eq!(again.ids, second.ids);
        assert!(again.fresh.is_empty());
    }

    #[test]
    fn running_out_of_ids_is_an_error() {
        let reg = RuleRegistry::new(1);
        let p = policy("      - {proto: tcp, ports: 1, from: [host]}\n      - {proto: tcp, ports: 2, from: [host]}\n");
        assert_eq!(reg.assign(&p).unwrap_err(), 1);
    }
}
