//! Per-peer import and export policy: ordered rules with prefix lists (ge/le), community and
//! large-community matches, attribute setters and accept/reject verdicts.
//!
//! A policy is evaluated per prefix over a copy of the path's attributes; the caller interns the
//! result so prefixes that end with the same attributes share one allocation. An empty policy
//! accepts everything unchanged and costs nothing ([`Policy::is_passthrough`]).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::wire::PathAttrs;

/// Final verdict of a policy for one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    #[default]
    Accept,
    Reject,
}

/// One entry of a prefix list: `prefix` covers the route and its length is within `ge..=le`
/// (both default to the prefix's own length, i.e. an exact match).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixMatch {
    pub prefix: IpNet,
    #[serde(default)]
    pub ge: Option<u8>,
    #[serde(default)]
    pub le: Option<u8>,
}

impl PrefixMatch {
    pub fn matches(&self, p: &IpNet) -> bool {
        let own = self.prefix.prefix_len();
        let ge = self.ge.unwrap_or(own);
        let le = self.le.unwrap_or(if self.ge.is_some() {
            p.max_prefix_len()
        } else {
            own
        });
        self.prefix.contains(p) && (ge..=le).contains(&p.prefix_len())
    }
}

/// Conditions of a rule; all given ones must hold (AND). No conditions: matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Match {
    /// Any entry matches (OR).
    pub prefixes: Vec<PrefixMatch>,
    /// Every listed community is present (RFC 1997), as (ASN, value).
    pub communities: Vec<(u16, u16)>,
    /// Every listed large community is present (RFC 8092).
    pub large_communities: Vec<(u32, u32, u32)>,
}

impl Match {
    pub fn matches(&self, prefix: &IpNet, attrs: &PathAttrs) -> bool {
        (self.prefixes.is_empty() || self.prefixes.iter().any(|m| m.matches(prefix)))
            && self.communities.iter().all(|(a, v)| {
                attrs
                    .communities
                    .contains(&(((*a as u32) << 16) | *v as u32))
            })
            && self
                .large_communities
                .iter()
                .all(|c| attrs.large_communities.contains(c))
    }
}

/// Attribute changes applied when a rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetAction {
    LocalPref(u32),
    Med(u32),
    AddCommunity(u16, u16),
    RemoveCommunity(u16, u16),
    AddLargeCommunity(u32, u32, u32),
    /// Prepend our AS this many extra times (export only).
    Prepend(u8),
}

/// A rule: when `when` matches, apply `set`, then stop with `verdict` if given, else go on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Rule {
    pub when: Match,
    pub set: Vec<SetAction>,
    pub verdict: Option<Verdict>,
}

/// An ordered rule list with a default verdict for routes no terminating rule decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub default: Verdict,
}

impl Policy {
    pub fn accept_all() -> Policy {
        Policy::default()
    }
    pub fn reject_all() -> Policy {
        Policy {
            rules: vec![],
            default: Verdict::Reject,
        }
    }
    /// Accepts everything without changes.
    pub fn is_passthrough(&self) -> bool {
        self.rules.is_empty() && self.default == Verdict::Accept
    }

    /// Evaluate for one route. Returns `None` when rejected, else the (possibly changed) attributes
    /// and how many extra prepends were asked for.
    pub fn apply(&self, prefix: &IpNet, attrs: &PathAttrs) -> Option<(Option<PathAttrs>, u8)> {
        if self.is_passthrough() {
            return Some((None, 0));
        }
        let mut changed: Option<PathAttrs> = None;
        let mut prepend = 0u8;
        for rule in &self.rules {
            let cur = changed.as_ref().unwrap_or(attrs);
            if !rule.when.matches(prefix, cur) {
                continue;
            }
            if !rule.set.is_empty() {
                let a = changed.get_or_insert_with(|| attrs.clone());
                for s in &rule.set {
                    apply_set(s, a, &mut prepend);
                }
            }
            match rule.verdict {
                Some(Verdict::Reject) => return None,
                Some(Verdict::Accept) => return Some((changed, prepend)),
                None => {}
            }
        }
        match self.default {
            Verdict::Accept => Some((changed, prepend)),
            Verdict::Reject => None,
        }
    }
}

fn apply_set(s: &SetAction, a: &mut PathAttrs, prepend: &mut u8) {
    match s {
        SetAction::LocalPref(v) => a.local_pref = Some(*v),
        SetAction::Med(v) => a.med = Some(*v),
        SetAction::AddCommunity(x, y) => {
            let c = ((*x as u32) << 16) | *y as u32;
            if !a.communities.contains(&c) {
                a.communities.push(c);
            }
        }
        SetAction::RemoveCommunity(x, y) => {
            let c = ((*x as u32) << 16) | *y as u32;
            a.communities.retain(|v| *v != c);
        }
        SetAction::AddLargeCommunity(g, l1, l2) => {
            if !a.large_communities.contains(&(*g, *l1, *l2)) {
                a.large_communities.push((*g, *l1, *l2));
            }
        }
        SetAction::Prepend(n) => *prepend = prepend.saturating_add(*n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn prefix_list_ge_le() {
        let exact = PrefixMatch {
            prefix: p("10.0.0.0/16"),
            ge: None,
            le: None,
        };
        assert!(exact.matches(&p("10.0.0.0/16")));
        assert!(!exact.matches(&p("10.0.1.0/24")));
        let range = PrefixMatch {
            prefix: p("10.0.0.0/16"),
            ge: Some(24),
            le: Some(26),
        };
        assert!(range.matches(&p("10.0.1.0/24")));
        assert!(range.matches(&p("10.0.1.64/26")));
        assert!(!range.matches(&p("10.0.1.0/27")));
        assert!(!range.matches(&p("10.1.1.0/24")));
        assert!(!range.matches(&p("10.0.0.0/16")));
        let ge_only = PrefixMatch {
            prefix: p("fd00::/48"),
            ge: Some(64),
            le: None,
        };
        assert!(ge_only.matches(&p("fd00::/128")));
        assert!(!ge_only.matches(&p("fd00::/56")));
    }

    #[test]
    fn rules_set_and_reject() {
        let pol = Policy {
            rules: vec![
                Rule {
                    when: Match {
                        communities: vec![(65000, 666)],
                        ..Match::default()
                    },
                    set: vec![],
                    verdict: Some(Verdict::Reject),
                },
                Rule {
                    when: Match {
                        prefixes: vec![PrefixMatch {
                            prefix: p("10.0.0.0/8"),
                            ge: Some(26),
                            le: Some(26),
                        }],
                        ..Match::default()
                    },
                    set: vec![
                        SetAction::LocalPref(200),
                        SetAction::AddLargeCommunity(1, 2, 3),
                    ],
                    verdict: Some(Verdict::Accept),
                },
            ],
            default: Verdict::Reject,
        };
        let attrs = PathAttrs::default();
        let (changed, _) = pol.apply(&p("10.1.2.0/26"), &attrs).expect("accepted");
        let changed = changed.expect("changed");
        assert_eq!(changed.local_pref, Some(200));
        assert_eq!(changed.large_communities, vec![(1, 2, 3)]);
        assert!(
            pol.apply(&p("10.1.2.0/24"), &attrs).is_none(),
            "default reject"
        );
        let black = PathAttrs {
            communities: vec![(65000 << 16) | 666],
            ..PathAttrs::default()
        };
        assert!(pol.apply(&p("10.1.2.0/26"), &black).is_none());
        assert!(Policy::accept_all()
            .apply(&p("10.1.2.0/26"), &attrs)
            .unwrap()
            .0
            .is_none());
    }
}
