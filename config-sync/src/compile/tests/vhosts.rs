//! Virtual hosts of a listener, checked against the rule rather than the code: the table's
//! order (exact names, wildcards, the catch-all; longest first, then by name), each name's
//! fallback (the longest wildcard whose suffix covers it, else the catch-all) and the host
//! index.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::super::assemble::build_vhosts;

/// Names over a few labels, so that wildcards cover some of them.
fn hostname() -> impl Strategy<Value = String> {
    let label = prop::sample::select(vec!["a", "b", "c", "example"]);
    (prop::collection::vec(label, 1..4), 0..4u8).prop_map(|(labels, kind)| match kind {
        0 => String::new(),
        1 => format!("*.{}", labels.join(".")),
        _ => labels.join("."),
    })
}

/// The fallback by definition: the longest `*.suffix` in `names` whose `.suffix` is a proper
/// suffix of the name (of a wildcard's own suffix), else the catch-all.
fn fallback_by_definition(name: &str, names: &[String]) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let base = name.strip_prefix("*.").unwrap_or(name);
    let wildcard = names
        .iter()
        .filter_map(|w| Some((w, w.strip_prefix('*')?)))
        .filter(|(_, suffix)| base.len() > suffix.len() && base.ends_with(suffix))
        .max_by_key(|(_, suffix)| suffix.len())
        .map(|(w, _)| w.clone());
    wildcard.or_else(|| names.iter().find(|n| n.is_empty()).cloned())
}

proptest! {
    #[test]
    fn virtual_hosts_follow_the_rule(names in prop::collection::btree_set(hostname(), 1..40)) {
        let hosts: BTreeMap<String, Vec<_>> = names.iter().map(|n| (n.clone(), Vec::new())).collect();
        // Two virtual hosts of an earlier listener before these: positions are offset.
        let earlier = table::format::VirtualHost { hostname: "x".into(), matches: Vec::new(), fallback: None };
        let (mut vhosts, mut matches) = (table::Paged::from(vec![earlier; 2]), table::Paged::new());
        let index = build_vhosts(hosts, &mut vhosts, &mut matches, &mut []);
        let built: Vec<String> = vhosts[2..].iter().map(|v| v.hostname.clone()).collect();
        let mut expected: Vec<String> = names.iter().cloned().collect();
        expected.sort_by_key(|n| {
            let rank = if n.is_empty() { 2 } else if n.starts_with("*.") { 1 } else { 0 };
            (rank, std::cmp::Reverse(n.len()), n.clone())
        });
        prop_assert_eq!(&built, &expected);
        for (i, v) in vhosts.iter().enumerate().skip(2) {
            let fallback = v.fallback.map(|f| vhosts[f as usize].hostname.clone());
            prop_assert_eq!(&fallback, &fallback_by_definition(&v.hostname, &built), "{}", v.hostname);
            prop_assert!(v.fallback.is_none_or(|f| f as usize > i), "fallbacks point forward");
        }
        let position = |n: &str| (vhosts.iter().skip(2).position(|v| v.hostname == n).unwrap() + 2) as u32;
        prop_assert_eq!(index.any, names.contains("").then(|| position("")));
        for e in &index.exact {
            prop_assert_eq!(e.target, position(&e.host));
        }
        for e in &index.wildcard {
            prop_assert_eq!(e.target, position(&format!("*{}", e.host)));
        }
        let indexed = index.exact.len() + index.wildcard.len() + usize::from(index.any.is_some());
        prop_assert_eq!(indexed, names.len());
    }
}
