//! Status checks (`status_expectations`) against the status config-sync writes: one YAML file
//! per object under `<status-dir>/<kind>/<namespace>/<name>.yaml`.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// Reads an object's status document, if config-sync wrote one.
pub fn read(dir: &Path, kind: &str, namespace: &str, name: &str) -> Option<Value> {
    let mut p = dir.join(kind);
    if !namespace.is_empty() {
        p.push(namespace);
    }
    p.push(format!("{name}.yaml"));
    let text = std::fs::read_to_string(p).ok()?;
    Value::deserialize(serde_yaml_ng::Deserializer::from_str(&text)).ok()
}

/// `(namespace, name)` of "Gateway ns/name", "ns/name", "/name" or "Gateway ns/name
/// listeners=a,b".
fn object_ref(s: &str) -> (String, String) {
    let s = s.split_whitespace().find(|w| w.contains('/')).unwrap_or(s);
    match s.split_once('/') {
        Some((ns, name)) => (ns.to_owned(), name.to_owned()),
        None => (String::new(), s.to_owned()),
    }
}

fn conditions(v: Option<&Value>) -> Vec<&Value> {
    v.and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
}

/// Whether `have` contains a condition matching `want` (`(any)` matches anything).
fn has_condition(have: &[&Value], want: &Value) -> bool {
    let field =
        |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or_default().to_owned();
    have.iter().any(|c| {
        ["type", "status", "reason"].iter().all(|f| {
            let w = field(want, f);
            w == "(any)" || w.is_empty() || field(c, f) == w
        })
    })
}

fn describe(have: &[&Value]) -> String {
    let parts: Vec<String> = have
        .iter()
        .map(|c| {
            let f = |n: &str| c.get(n).and_then(Value::as_str).unwrap_or_default().to_owned();
            format!("{}={}({})", f("type"), f("status"), f("reason"))
        })
        .collect();
    format!("[{}]", parts.join(" "))
}

const ALL_TRUE: [(&str, &str); 3] =
    [("ResolvedRefs", "True"), ("Accepted", "True"), ("Programmed", "True")];

/// Runs one check; `Ok` when it holds now.
pub fn check(dir: &Path, e: &Value) -> Result<(), String> {
    let name = e.get("check").and_then(Value::as_str).unwrap_or_default();
    let s = |f: &str| e.get(f).and_then(Value::as_str).unwrap_or_default();
    let gateway = || {
        let (ns, n) = object_ref(s("gateway"));
        read(dir, "gateway", &ns, &n).ok_or_else(|| format!("no status for Gateway {ns}/{n}"))
    };
    let route = || {
        let (ns, n) = object_ref(s("route"));
        read(dir, "httproute", &ns, &n).ok_or_else(|| format!("no status for HTTPRoute {ns}/{n}"))
    };
    match name {
        "WaitForGatewayAddress" => {
            let g = gateway()?;
            address(&g).map(drop)
        }
        // Exactly these addresses in status (the suite's placeholders stand for the runner's).
        "GatewayStatusMustHaveAddresses" => {
            let g = gateway()?;
            let got: Vec<&str> = g
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|a| a.get("value").and_then(Value::as_str))
                .collect();
            let want: Vec<&str> = e
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|a| match a {
                    "PLACEHOLDER_USABLE_ADDRS" => crate::manifests::USABLE_ADDRESS,
                    "PLACEHOLDER_UNUSABLE_ADDRS" => crate::manifests::UNUSABLE_ADDRESS,
                    other => other,
                })
                .collect();
            if got == want {
                Ok(())
            } else {
                Err(format!("expected addresses {want:?}, got {got:?}"))
            }
        }
        "GatewayAndHTTPRoutesMustBeAccepted" | "GatewayAndRoutesMustBeAccepted" => {
            let g = gateway()?;
            address(&g)?;
            // "Gateway ns/name listeners=a,b" limits the listener checks to those listeners.
            let only: Option<Vec<&str>> = s("gateway")
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listeners="))
                .map(|l| l.split(',').collect());
            for l in g
                .pointer("/status/listeners")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|l| {
                    let name = l.get("name").and_then(Value::as_str).unwrap_or_default();
                    only.as_ref().is_none_or(|o| o.contains(&name))
                })
            {
                let have = conditions(l.get("conditions"));
                for (t, st) in ALL_TRUE {
                    if !has_condition(&have, &serde_json::json!({"type": t, "status": st})) {
                        return Err(format!(
                            "listener {}: expected {t}={st}, got {}",
                            l.get("name").and_then(Value::as_str).unwrap_or("?"),
                            describe(&have)
                        ));
                    }
                }
            }
            let (gns, gname) = object_ref(s("gateway"));
            for r in e
                .get("routes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let (ns, n) = object_ref(r);
                // The vectors print the route type of GRPCRoute checks as `{}`: the status
                // folder says which kind the named route is (HTTPRoute when both are).
                let grpc_first = s("route_type").contains("GRPCRoute");
                let kinds = if grpc_first {
                    ["grpcroute", "httproute"]
                } else {
                    ["httproute", "grpcroute"]
                };
                let st = kinds
                    .iter()
                    .find_map(|k| read(dir, k, &ns, &n))
                    .ok_or_else(|| format!("no status for HTTPRoute or GRPCRoute {r}"))?;
                let parent = parent_for(&st, &gns, &gname, &ns).ok_or_else(|| {
                    format!("HTTPRoute {r}: no parent status for Gateway {gns}/{gname}")
                })?;
                let have = conditions(parent.get("conditions"));
                if !has_condition(
                    &have,
                    &serde_json::json!({"type": "Accepted", "status": "True", "reason": "Accepted"}),
                ) {
                    return Err(format!(
                        "HTTPRoute {r}: expected Accepted=True(Accepted), got {}",
                        describe(&have)
                    ));
                }
            }
            Ok(())
        }
        "HTTPRouteMustHaveCondition" => {
            let st = route()?;
            let (rns, _) = object_ref(s("route"));
            let (gns, gname) = object_ref(s("parent"));
            let parent = parent_for(&st, &gns, &gname, &rns)
                .ok_or_else(|| format!("no parent status for Gateway {gns}/{gname}"))?;
            let have = conditions(parent.get("conditions"));
            let want = e.get("condition").cloned().unwrap_or_default();
            if has_condition(&have, &want) {
                Ok(())
            } else {
                Err(format!("expected condition {want}, got {}", describe(&have)))
            }
        }
        // The route's status lists exactly these parents (any order): each with the same
        // parentRef (group, kind, name, namespace — which must be written out when
        // `namespace_required`), our controller name, and each expected condition.
        "HTTPRouteMustHaveParents" => {
            let st = route()?;
            let have: Vec<&Value> = st
                .pointer("/status/parents")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let want: Vec<&Value> = e
                .get("parents")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let namespace_required =
                e.get("namespace_required").and_then(Value::as_bool).unwrap_or(false);
            let (route_ns, _) = object_ref(s("route"));
            if have.len() != want.len() {
                return Err(format!(
                    "expected {} parent(s), got {}: {}",
                    want.len(),
                    have.len(),
                    st["status"]["parents"]
                ));
            }
            for w in &want {
                let found = have.iter().any(|h| same_parent(h, w, &route_ns, namespace_required));
                if !found {
                    return Err(format!(
                        "no parent status matching {w}; have {}",
                        st["status"]["parents"]
                    ));
                }
            }
            Ok(())
        }
        "HTTPRouteMustHaveNoAcceptedParents" => {
            let (ns, n) = object_ref(s("route"));
            let Some(st) = read(dir, "httproute", &ns, &n) else { return Ok(()) };
            let parents = st
                .pointer("/status/parents")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match parents.as_slice() {
                [] => Ok(()),
                [p] if has_condition(
                    &conditions(p.get("conditions")),
                    &serde_json::json!({"type": "Accepted", "status": "False"}),
                ) =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "expected no accepted parent, got {} parent(s): {}",
                    parents.len(),
                    Value::Array(parents.clone())
                )),
            }
        }
        "GatewayMustHaveZeroRoutes" => {
            let g = gateway()?;
            let ls = g
                .pointer("/status/listeners")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let attached: Vec<u64> = ls
                .iter()
                .map(|l| l.get("attachedRoutes").and_then(Value::as_u64).unwrap_or(0))
                .collect();
            if attached.iter().all(|a| *a == 0) {
                Ok(())
            } else {
                Err(format!("expected 0 attachedRoutes, got {attached:?}"))
            }
        }
        "GatewayMustHaveCondition" => {
            let g = gateway()?;
            let have = conditions(g.pointer("/status/conditions"));
            let want = e.get("condition").cloned().unwrap_or_default();
            if has_condition(&have, &want) {
                Ok(())
            } else {
                Err(format!("expected Gateway condition {want}, got {}", describe(&have)))
            }
        }
        "GatewayListenerMustHaveConditions" | "GatewayListenersMustHaveConditions" => {
            let g = gateway()?;
            let names: Vec<&str> = match e.get("listener").and_then(Value::as_str) {
                Some(l) => vec![l],
                None => e
                    .get("listeners")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect(),
            };
            for n in names {
                let l = listener(&g, n)?;
                let have = conditions(l.get("conditions"));
                for want in e.get("conditions").and_then(Value::as_array).into_iter().flatten() {
                    if !has_condition(&have, want) {
                        return Err(format!(
                            "listener {n}: expected {want}, got {}",
                            describe(&have)
                        ));
                    }
                }
            }
            Ok(())
        }
        "GatewayStatusMustHaveListeners" => {
            let g = gateway()?;
            let want = e.get("listeners").and_then(Value::as_array).cloned().unwrap_or_default();
            let have = g
                .pointer("/status/listeners")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if want.len() != have.len() {
                return Err(format!(
                    "expected {} listener status(es), got {}",
                    want.len(),
                    have.len()
                ));
            }
            for w in &want {
                let n = w.get("name").and_then(Value::as_str).unwrap_or_default();
                let l = listener(&g, n)?;
                let attached = l.get("attachedRoutes").and_then(Value::as_u64);
                if let Some(a) = w.get("attachedRoutes").and_then(Value::as_u64)
                    && attached != Some(a)
                {
                    return Err(format!(
                        "listener {n}: expected attachedRoutes {a}, got {attached:?}"
                    ));
                }
                let kinds: Vec<&str> = l
                    .get("supportedKinds")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.get("kind")?.as_str())
                    .collect();
                for k in w.get("supportedKinds").and_then(Value::as_array).into_iter().flatten() {
                    let k = k
                        .get("kind")
                        .and_then(Value::as_str)
                        .or_else(|| k.as_str())
                        .unwrap_or_default();
                    if !kinds.contains(&k) {
                        return Err(format!(
                            "listener {n}: expected supportedKinds to include {k}, got {kinds:?}"
                        ));
                    }
                }
                let have = conditions(l.get("conditions"));
                for c in w.get("conditions").and_then(Value::as_array).into_iter().flatten() {
                    if !has_condition(&have, c) {
                        return Err(format!("listener {n}: expected {c}, got {}", describe(&have)));
                    }
                }
            }
            Ok(())
        }
        "GatewayMustHaveLatestConditions"
        | "HTTPRouteMustHaveLatestConditions"
        | "GatewayClassMustHaveLatestConditions" => {
            let kind = match name {
                "GatewayMustHaveLatestConditions" => "gateway",
                "HTTPRouteMustHaveLatestConditions" => "httproute",
                _ => "gatewayclass",
            };
            let (ns, n) = object_ref(s("object"));
            let st =
                read(dir, kind, &ns, &n).ok_or_else(|| format!("no status for {kind} {ns}/{n}"))?;
            let generation = st.pointer("/metadata/generation").and_then(Value::as_i64);
            let mut all: Vec<&Value> = conditions(st.pointer("/status/conditions"));
            for p in st.pointer("/status/parents").and_then(Value::as_array).into_iter().flatten() {
                all.extend(conditions(p.get("conditions")));
            }
            for l in st.pointer("/status/listeners").and_then(Value::as_array).into_iter().flatten()
            {
                all.extend(conditions(l.get("conditions")));
            }
            if all.is_empty() {
                return Err(format!("{kind} {ns}/{n}: no conditions"));
            }
            match all
                .iter()
                .find(|c| c.get("observedGeneration").and_then(Value::as_i64) != generation)
            {
                Some(c) => Err(format!(
                    "{kind} {ns}/{n}: expected observedGeneration {generation:?}, got {c}"
                )),
                None => Ok(()),
            }
        }
        "GWCMustHaveAcceptedConditionAny" => {
            let n = s("gatewayclass");
            let st = read(dir, "gatewayclass", "", n)
                .ok_or_else(|| format!("no status for GatewayClass {n}"))?;
            let have = conditions(st.pointer("/status/conditions"));
            if has_condition(&have, &serde_json::json!({"type": "Accepted"})) {
                Ok(())
            } else {
                Err(format!("expected an Accepted condition, got {}", describe(&have)))
            }
        }
        other => Err(format!("the runner does not check `{other}` yet")),
    }
}

fn address(g: &Value) -> Result<String, String> {
    g.pointer("/status/addresses/0/value")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "Gateway has no address in its status".to_owned())
}

/// The Gateway's first address, once its status has one.
pub fn gateway_address(dir: &Path, namespace: &str, name: &str) -> Option<String> {
    address(&read(dir, "gateway", namespace, name)?).ok()
}

fn listener<'a>(g: &'a Value, name: &str) -> Result<&'a Value, String> {
    g.pointer("/status/listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|l| l.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| format!("no status for listener {name}"))
}

/// Whether a route status parent `have` is the expected `want` (vector keys are the Go field
/// names: `Group`, `Kind`, `Name`, `Namespace`; `controllerName` "(suite controller)" is ours).
fn same_parent(have: &Value, want: &Value, route_ns: &str, namespace_required: bool) -> bool {
    let h = |k: &str| have.get("parentRef").and_then(|r| r.get(k)).and_then(Value::as_str);
    let w = |k: &str| want.get("parentRef").and_then(|r| r.get(k)).and_then(Value::as_str);
    let group = h("group").unwrap_or("gateway.networking.k8s.io");
    let kind = h("kind").unwrap_or("Gateway");
    let namespace = match h("namespace") {
        Some(ns) => ns,
        None if namespace_required => return false,
        None => route_ns,
    };
    let controller = match want.get("controllerName").and_then(Value::as_str) {
        Some("(suite controller)") | None => crate::CONTROLLER,
        Some(c) => c,
    };
    let conds = conditions(have.get("conditions"));
    w("Group").is_none_or(|g| g == group)
        && w("Kind").is_none_or(|k| k == kind)
        && w("Name") == h("name")
        && w("Namespace").is_none_or(|n| n == namespace)
        && have.get("controllerName").and_then(Value::as_str) == Some(controller)
        && conditions(want.get("conditions")).iter().all(|c| has_condition(&conds, c))
}

fn parent_for<'a>(st: &'a Value, gns: &str, gname: &str, route_ns: &str) -> Option<&'a Value> {
    st.pointer("/status/parents").and_then(Value::as_array)?.iter().find(|p| {
        let r = p.get("parentRef");
        let f = |k: &str| r.and_then(|r| r.get(k)).and_then(Value::as_str);
        f("name") == Some(gname) && f("namespace").unwrap_or(route_ns) == gns
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn route_parents_compare_as_a_set_with_namespaces_when_required() {
        let have = json!({
            "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw", "namespace": "infra"},
            "controllerName": crate::CONTROLLER,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}]
        });
        let want = json!({
            "parentRef": {"Group": "gateway.networking.k8s.io", "Kind": "Gateway", "Name": "gw", "Namespace": "infra"},
            "controllerName": "(suite controller)",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "(any)"}]
        });
        assert!(same_parent(&have, &want, "apps", true));
        let mut implicit = have.clone();
        implicit["parentRef"].as_object_mut().unwrap().remove("namespace");
        assert!(!same_parent(&implicit, &want, "infra", true), "namespace must be written out");
        assert!(same_parent(&implicit, &want, "infra", false));
        let mut refused = have.clone();
        refused["conditions"][0]["status"] = json!("False");
        assert!(!same_parent(&refused, &want, "apps", true));
        let mut other = have;
        other["controllerName"] = json!("example.com/other");
        assert!(!same_parent(&other, &want, "apps", true));
    }
}
