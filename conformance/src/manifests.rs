//! The upstream manifests as a local "cluster": templates filled in, Deployments turned into
//! pods (echo processes on their own loopback addresses) and EndpointSlices synthesised for the
//! Services that select them, as the endpoints controller would.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

/// A pod to run: one replica of a Deployment.
#[derive(Debug, Clone)]
pub struct Pod {
    /// `<deployment>-<n>`, so the pod name starts with the Deployment's name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod template labels.
    pub labels: BTreeMap<String, String>,
    /// Its loopback address.
    pub ip: Ipv4Addr,
    /// Whether it runs as our echo: `echo-basic` in HTTP or gRPC mode (ours serves both: h2c
    /// connections reach the gRPC service), not the TCP mode.
    pub http_echo: bool,
}

/// Reads a manifest file, substituting the suite's template variables.
/// The suite's `UsableNetworkAddresses`: a loopback address nothing else here uses.
pub const USABLE_ADDRESS: &str = "127.3.0.1";
/// The suite's `UnusableNetworkAddresses`: TEST-NET-1 (RFC 5737), never a local address.
pub const UNUSABLE_ADDRESS: &str = "192.0.2.1";

/// RFC 7386 JSON merge patch: objects merge, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in fields {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

pub fn load(path: &Path, class: &str, controller: &str) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = text
        .replace("{GATEWAY_CLASS_NAME}", class)
        .replace("{GATEWAY_CONTROLLER_NAME}", controller)
        .replace("PLACEHOLDER_USABLE_ADDRS", USABLE_ADDRESS)
        .replace("PLACEHOLDER_UNUSABLE_ADDRS", UNUSABLE_ADDRESS);
    let mut out = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = Value::deserialize(de).map_err(|e| format!("{}: {e}", path.display()))?;
        if v.is_object() {
            out.push(v);
        }
    }
    Ok(out)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn labels(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

/// Kind of an object.
pub fn kind(v: &Value) -> &str {
    v.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// `namespace/name` of an object (namespace empty for cluster-scoped ones).
pub fn key(v: &Value) -> (String, String) {
    (
        str_at(v, &["metadata", "namespace"]).unwrap_or("").to_owned(),
        str_at(v, &["metadata", "name"]).unwrap_or("").to_owned(),
    )
}

/// Pods of every Deployment in `objects`, addresses drawn from `next_ip`.
pub fn pods(objects: &[Value], next_ip: &mut impl FnMut() -> Ipv4Addr) -> Vec<Pod> {
    let mut out = Vec::new();
    for d in objects.iter().filter(|o| kind(o) == "Deployment") {
        let (namespace, name) = key(d);
        let namespace = if namespace.is_empty() { "default".to_owned() } else { namespace };
        let replicas = d.pointer("/spec/replicas").and_then(Value::as_u64).unwrap_or(1);
        let template = d.pointer("/spec/template");
        let labels = labels(template.and_then(|t| t.pointer("/metadata/labels")));
        let container = template.and_then(|t| t.pointer("/spec/containers/0"));
        let image = container.and_then(|c| c.get("image")).and_then(Value::as_str).unwrap_or("");
        let env: Vec<&str> = container
            .and_then(|c| c.get("env"))
            .and_then(Value::as_array)
            .map(|e| e.iter().filter_map(|e| e.get("name")?.as_str()).collect())
            .unwrap_or_default();
        let http_echo = image.contains("echo-basic") && !env.contains(&"TCP_ECHO_SERVER");
        for i in 0..replicas {
            out.push(Pod {
                name: format!("{name}-{i}"),
                namespace: namespace.clone(),
                labels: labels.clone(),
                ip: next_ip(),
                http_echo,
            });
        }
    }
    out
}

/// EndpointSlices for the Services in `objects` that select some of `pods`.
pub fn endpoint_slices(objects: &[Value], pods: &[Pod]) -> Vec<Value> {
    let mut out = Vec::new();
    for s in objects.iter().filter(|o| kind(o) == "Service") {
        let (namespace, name) = key(s);
        let namespace = if namespace.is_empty() { "default".to_owned() } else { namespace };
        let selector = labels(s.pointer("/spec/selector"));
        if selector.is_empty() {
            continue;
        }
        let members: Vec<&Pod> = pods
            .iter()
            .filter(|p| {
                p.namespace == namespace && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .collect();
        if members.is_empty() {
            continue;
        }
        let ports: Vec<Value> = s
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| {
                        let target = p
                            .get("targetPort")
                            .and_then(Value::as_u64)
                            .or_else(|| p.get("port").and_then(Value::as_u64))
                            .unwrap_or(0);
                        let mut port = json!({"port": target, "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP"))});
                        for field in ["name", "appProtocol"] {
                            if let Some(v) = p.get(field) {
                                port[field] = v.clone();
                            }
                        }
                        port
                    })
                    .collect()
            })
            .unwrap_or_default();
        let endpoints: Vec<Value> = members
            .iter()
            .map(|p| {
                json!({
                    "addresses": [p.ip.to_string()],
                    "conditions": {"ready": true},
                    "targetRef": {"kind": "Pod", "name": p.name, "namespace": p.namespace},
                })
            })
            .collect();
        out.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-local"),
                "namespace": namespace,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }));
    }
    out
}

/// Fills endpoint-less IPv4 EndpointSlices of a test with the addresses of `pods`, as the
/// suite does for Services without selectors (it patches in the infra-backend-v1 pod IPs).
pub fn fill_manual_slices(objects: &mut [Value], pods: &[&Pod]) {
    for o in objects.iter_mut().filter(|o| kind(o) == "EndpointSlice") {
        let empty = o.get("endpoints").and_then(Value::as_array).is_none_or(Vec::is_empty);
        if empty && o.get("addressType").and_then(Value::as_str) == Some("IPv4") {
            o["endpoints"] = pods
                .iter()
                .map(|p| json!({"addresses": [p.ip.to_string()], "conditions": {"ready": true}}))
                .collect();
        }
    }
}

/// Writes objects as one multi-document YAML file (Deployments are left out: their pods run
/// as processes).
pub fn write(path: &Path, objects: &[Value]) -> Result<(), String> {
    let mut text = String::new();
    for o in objects.iter().filter(|o| kind(o) != "Deployment") {
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(o).map_err(|e| e.to_string())?);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
