//! The size and range limits of the Gateway API CRD schemas (`maxItems`, `minItems`,
//! `maxLength`, `minLength`, `maximum`, `minimum`), enforced in file mode the way the API
//! server enforces them before an object exists: a 10,000-rule HTTPRoute was accepted from a
//! file, and compiled, although no cluster would ever hand one over.
//!
//! The table in `limits/table.rs` is generated from the upstream CRDs (experimental channel,
//! the version the model parses) by the test `limits_match_the_crds`, which fails with the
//! regenerated table whenever the CRDs in `../shared/gateway-api/crds` say anything else.
//! Checked on the document as parsed (JSON values) before it becomes a typed object, in one
//! walk over the document with the limits arranged as a tree.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::Value;

use crate::model::Kind;

/// One schema node's limits (absent: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limit {
    /// `maxItems`.
    pub max_items: Option<u64>,
    /// `minItems`.
    pub min_items: Option<u64>,
    /// `maxLength` (in characters, as the API server counts).
    pub max_length: Option<u64>,
    /// `minLength`.
    pub min_length: Option<u64>,
    /// `maximum`.
    pub maximum: Option<i64>,
    /// `minimum`.
    pub minimum: Option<i64>,
}

#[path = "limits/table.rs"]
mod table;

/// Checks `doc` (an object of `kind`) against the CRD limits. `Err((field, reason))` names the
/// first field over a limit, in the spec's path notation (`spec.rules[3].matches`).
pub(crate) fn check(kind: Kind, doc: &Value) -> Result<(), (String, String)> {
    let Some(tree) = trees().get(kind.as_str()) else { return Ok(()) };
    let mut path = String::new();
    walk(tree, doc, &mut path)
}

/// Limits arranged by path: a node per schema field, `[]` for array items.
#[derive(Debug, Default)]
struct Node {
    limit: Limit,
    fields: BTreeMap<&'static str, Node>,
    items: Option<Box<Node>>,
}

fn trees() -> &'static BTreeMap<&'static str, Node> {
    static TREES: OnceLock<BTreeMap<&'static str, Node>> = OnceLock::new();
    TREES.get_or_init(|| {
        let mut trees: BTreeMap<&'static str, Node> = BTreeMap::new();
        for (kind, path, limit) in table::LIMITS {
            let mut node = trees.entry(kind).or_default();
            for part in path.split('.') {
                let (name, arrays) = match part.find("[]") {
                    Some(i) => (&part[..i], part[i..].len() / 2),
                    None => (part, 0),
                };
                node = node.fields.entry(name).or_default();
                for _ in 0..arrays {
                    node = node.items.get_or_insert_with(Box::default);
                }
            }
            node.limit = *limit;
        }
        trees
    })
}

fn walk(node: &Node, value: &Value, path: &mut String) -> Result<(), (String, String)> {
    let l = &node.limit;
    let over = |what: &str, n: u64, limit: u64, path: &str| {
        Err((path.to_owned(), format!("{n} {what}, more than the schema's {limit}")))
    };
    let under = |what: &str, n: u64, limit: u64, path: &str| {
        Err((path.to_owned(), format!("{n} {what}, fewer than the schema's {limit}")))
    };
    match value {
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = l.max_items.filter(|&m| n > m) {
                return over("items", n, max, path);
            }
            if let Some(min) = l.min_items.filter(|&m| n < m) {
                return under("items", n, min, path);
            }
            if let Some(item) = &node.items {
                let len = path.len();
                for (i, v) in items.iter().enumerate() {
                    path.push_str(&format!("[{i}]"));
                    walk(item, v, path)?;
                    path.truncate(len);
                }
            }
        }
        Value::String(s) => {
            // Only the count matters: stop counting past the limit (a 64 MiB string).
            let cap =
                l.max_length.map_or(0, |m| m as usize + 1).max(l.min_length.unwrap_or(0) as usize);
            let n = s.chars().take(cap).count() as u64;
            if let Some(max) = l.max_length.filter(|&m| n > m) {
                return Err((path.clone(), format!("longer than the schema's {max} characters")));
            }
            if let Some(min) = l.min_length.filter(|&m| n < m) {
                return under("characters", n, min, path);
            }
        }
        Value::Number(num) => {
            if let Some(v) = num.as_i64() {
                if let Some(max) = l.maximum.filter(|&m| v > m) {
                    return Err((
                        path.clone(),
                        format!("{v} is more than the schema's maximum {max}"),
                    ));
                }
                if let Some(min) = l.minimum.filter(|&m| v < m) {
                    return Err((
                        path.clone(),
                        format!("{v} is less than the schema's minimum {min}"),
                    ));
                }
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let Some(child) = node.fields.get(k.as_str()) else { continue };
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                walk(child, v, path)?;
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
