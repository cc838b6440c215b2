//! What changes between two policies: rules and endpoints added and
//! removed, as an operator reviews them.

use serde::Serialize;

use super::model::*;
use super::write::rule_flow;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
pub struct RuleChange {
    pub group: String,
    pub direction: &'static str,
    pub rule: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PolicyDiff {
    pub rules_added: Vec<RuleChange>,
    pub rules_removed: Vec<RuleChange>,
    pub endpoints_added: Vec<String>,
    pub endpoints_removed: Vec<String>,
    pub endpoints_changed: Vec<String>,
    pub groups_added: Vec<String>,
    pub groups_removed: Vec<String>,
    pub prefix_lists_changed: Vec<String>,
    pub settings_changed: bool,
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        *self == PolicyDiff::default()
    }

    /// What changed, item by item, for logs: `+rule web egress {proto:
    /// tcp, ...}; -endpoint db`, at most `max` items and how many more.
    pub fn details(&self, max: usize) -> String {
        let mut items: Vec<String> = Vec::new();
        let mut more = 0usize;
        let mut push = |item: &dyn Fn() -> String| {
            if items.len() < max {
                items.push(item());
            } else {
                more += 1;
            }
        };
        for (sign, list) in [("+", &self.rules_added), ("-", &self.rules_removed)] {
            for r in list {
                push(&|| format!("{sign}rule {} {} {}", r.group, r.direction, r.rule));
            }
        }
        for (sign, what, list) in [
            ("+", "endpoint", &self.endpoints_added),
            ("-", "endpoint", &self.endpoints_removed),
            ("~", "endpoint", &self.endpoints_changed),
            ("+", "group", &self.groups_added),
            ("-", "group", &self.groups_removed),
            ("~", "prefix list", &self.prefix_lists_changed),
        ] {
            for name in list {
                push(&|| format!("{sign}{what} {name}"));
            }
        }
        if self.settings_changed {
            push(&|| "~settings".to_string());
        }
        let mut text = items.join("; ");
        if more > 0 {
            text.push_str(&format!("; and {more} more"));
        }
        text
    }

    /// One line for logs: "+2 rules, -1 rule, +1 endpoint".
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let mut count = |n: usize, sign: &str, what: &str| {
            if n > 0 {
                parts.push(format!("{sign}{n} {what}{}", if n == 1 { "" } else { "s" }));
            }
        };
        count(self.rules_added.len(), "+", "rule");
        count(self.rules_removed.len(), "-", "rule");
        count(self.endpoints_added.len(), "+", "endpoint");
        count(self.endpoints_removed.len(), "-", "endpoint");
        count(self.endpoints_changed.len(), "~", "endpoint");
        count(self.groups_added.len(), "+", "group");
        count(self.groups_removed.len(), "-", "group");
        count(self.prefix_lists_changed.len(), "~", "prefix list");
        if self.settings_changed {
            parts.push("settings changed".into());
        }
        if parts.is_empty() {
            "no changes".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A rule where it stands; compared as written, formatted only when it
/// is reported (formatting every rule of a large policy costs more than
/// the comparison).
#[derive(Clone, PartialEq, Eq, Hash)]
struct RuleAt<'a> {
    group: &'a str,
    direction: &'static str,
    key: &'static str,
    rule: &'a Rule,
}

impl RuleAt<'_> {
    fn change(self) -> RuleChange {
        RuleChange {
            group: self.group.to_string(),
            direction: self.direction,
            rule: rule_flow(self.rule, self.key),
        }
    }
}

fn rules_of(p: &Policy) -> Vec<RuleAt<'_>> {
    let mut out = Vec::new();
    for (name, g) in &p.groups {
        for (direction, rules, key) in [("ingress", &g.ingress, "from"), ("egress", &g.egress, "to")] {
            for rule in rules {
                out.push(RuleAt {
                    group: name,
                    direction,
                    key,
                    rule,
                });
            }
        }
    }
    out
}

/// Multiset difference `a - b`, in the order of `a`.
fn minus<T: Eq + std::hash::Hash + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    let mut rest: std::collections::HashMap<&T, usize> = std::collections::HashMap::new();
    for y in b {
        *rest.entry(y).or_default() += 1;
    }
    let mut out = Vec::new();
    for x in a {
        match rest.get_mut(x) {
            Some(n) if *n > 0 => *n -= 1,
            _ => out.push(x.clone()),
        }
    }
    out
}

pub fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    let (old_rules, new_rules) = (rules_of(old), rules_of(new));
    let mut d = PolicyDiff {
        rules_added: minus(&new_rules, &old_rules).into_iter().map(RuleAt::change).collect(),
        rules_removed: minus(&old_rules, &new_rules).into_iter().map(RuleAt::change).collect(),
        settings_changed: old.settings != new.settings,
        ..Default::default()
    };
    for e in &new.endpoints {
        match old.endpoints.iter().find(|o| o.name == e.name) {
            None => d.endpoints_added.push(e.name.clone()),
            Some(o) if o != e => d.endpoints_changed.push(e.name.clone()),
            Some(_) => {}
        }
    }
    for o in &old.endpoints {
        if !new.endpoints.iter().any(|e| e.name == o.name) {
            d.endpoints_removed.push(o.name.clone());
        }
    }
    d.groups_added = new
        .groups
        .keys()
        .filter(|k| !old.groups.contains_key(*k))
        .cloned()
        .collect();
    d.groups_removed = old
        .groups
        .keys()
        .filter(|k| !new.groups.contains_key(*k))
        .cloned()
        .collect();
    let names: std::collections::BTreeSet<&String> = old.prefix_lists.keys().chain(new.prefix_lists.keys()).collect();
    d.prefix_lists_changed = names
        .into_iter()
        .filter(|n| old.prefix_lists.get(*n) != new.prefix_lists.get(*n))
        .cloned()
        .collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_str;

    #[test]
    fn reports_rules_and_endpoints() {
        let a = parse_str(
            "version: 1\ngroups:\n  g:\n    ingress:\n      - {proto: tcp, ports: 1, from: [host]}\nendpoints:\n  - {name: a, addresses: [\"10.0.0.1\"], groups: [g]}\n",
            "a",
        )
        .unwrap();
        let b = parse_str(
            "version: 1\ngroups:\n  g:\n    ingress:\n      - {proto: tcp, ports: 2, from: [host]}\nendpoints:\n  - {name: a, addresses: [\"10.0.0.2\"], groups: [g]}\n  - {name: b, addresses: []}\n",
            "b",
        )
        .unwrap();
        let d = diff(&a, &b);
        assert_eq!(d.rules_added.len(), 1);
        assert_eq!(d.rules_removed.len(), 1);
        assert_eq!(d.rules_added[0].rule, "{proto: tcp, ports: 2, from: [host]}");
        assert_eq!(d.endpoints_added, vec!["b"]);
        assert_eq!(d.endpoints_changed, vec!["a"]);
        assert_eq!(d.summary(), "+1 rule, -1 rule, +1 endpoint, ~1 endpoint");
        assert!(diff(&b, &b).is_empty());
    }
}
