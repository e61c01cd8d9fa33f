//! `/config`: the table the cores serve, as JSON — its generation, each core's generation, and
//! the whole compiled table (listeners by `namespace/gateway/listener`, every rule's action
//! with the `namespace/name` of the route and the rule's index it came from, Services with
//! their endpoints). Certificates and CA bundles appear as counts; private keys never
//! (`table::format` does not serialise them).
//!
//! `?summary` leaves out the table and gives its sizes instead (quick on large tables).

use serde_json::{Value, json};

use crate::metrics::Registry;

pub(super) fn dump(served: Option<&table::Router>, registry: &Registry, query: &str) -> String {
    let cores: Vec<u64> = registry.cores.iter().map(|c| c.generation.get()).collect();
    let Some(router) = served else {
        return json!({ "generation": null, "cores": cores, "table": null }).to_string() + "\n";
    };
    let t = router.table();
    let summary = query.split('&').any(|p| p == "summary");
    let table = if summary {
        json!({
            "bytes": router.size(),
            "ports": t.ports.len(),
            "listeners": t.listeners.len(),
            "virtual_hosts": t.vhosts.len.to_native(),
            "matches": t.matches.len.to_native(),
            "actions": t.actions.len.to_native(),
            "services": t.services.len.to_native(),
            "regexes": t.regexes.len.to_native(),
            "certificates": t.certificates.len(),
        })
    } else {
        match router.to_native() {
            Ok(native) => serde_json::to_value(&native).unwrap_or(Value::Null),
            Err(e) => json!({ "error": e.to_string() }),
        }
    };
    let doc = json!({ "generation": router.generation(), "cores": cores, "table": table });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}
