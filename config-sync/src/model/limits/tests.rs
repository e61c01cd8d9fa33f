use super::*;

/// Kinds whose CRDs the table covers, with their CRD files.
const CRDS: [(&str, &str); 5] = [
    ("GatewayClass", "gateway.networking.k8s.io_gatewayclasses.yaml"),
    ("Gateway", "gateway.networking.k8s.io_gateways.yaml"),
    ("HTTPRoute", "gateway.networking.k8s.io_httproutes.yaml"),
    ("GRPCRoute", "gateway.networking.k8s.io_grpcroutes.yaml"),
    ("ReferenceGrant", "gateway.networking.k8s.io_referencegrants.yaml"),
];

/// The version of each kind the model parses (ReferenceGrant: v1beta1).
fn version(kind: &str) -> &'static str {
    if kind == "ReferenceGrant" { "v1beta1" } else { "v1" }
}

fn extract(node: &Value, path: &str, out: &mut Vec<(String, Limit)>) {
    let num = |k: &str| node.get(k).and_then(Value::as_u64);
    let int = |k: &str| node.get(k).and_then(Value::as_i64);
    let limit = Limit {
        max_items: num("maxItems"),
        min_items: num("minItems"),
        max_length: num("maxLength"),
        min_length: num("minLength"),
        maximum: int("maximum"),
        minimum: int("minimum"),
    };
    if limit != Limit::default() && !path.is_empty() {
        out.push((path.to_owned(), limit));
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            // Status is not read from manifests; metadata is checked by the model.
            if path.is_empty() && (k == "status" || k == "metadata") {
                continue;
            }
            let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            extract(v, &p, out);
        }
    }
    if let Some(items) = node.get("items") {
        extract(items, &format!("{path}[]"), out);
    }
}

/// The limits of the CRDs in `shared`, as the table's entries.
fn from_crds(shared: &std::path::Path) -> Vec<(String, String, Limit)> {
    let mut all = Vec::new();
    for (kind, file) in CRDS {
        let path = shared.join("gateway-api/crds/experimental").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let crd: Value = serde_yaml_ng::from_str(&text).unwrap();
        let versions = crd.pointer("/spec/versions").and_then(Value::as_array).unwrap();
        let v = versions
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(version(kind)))
            .unwrap();
        let schema = v.pointer("/schema/openAPIV3Schema").unwrap();
        let mut out = Vec::new();
        extract(schema, "", &mut out);
        all.extend(out.into_iter().map(|(p, l)| (kind.to_owned(), p, l)));
    }
    all
}

fn render(entries: &[(String, String, Limit)]) -> String {
    let opt = |v: Option<u64>| v.map_or("None".to_owned(), |v| format!("Some({v})"));
    let opti = |v: Option<i64>| v.map_or("None".to_owned(), |v| format!("Some({v})"));
    let mut s = String::from(
        "//! Generated from the Gateway API CRDs (experimental channel) by the test\n\
         //! `limits::tests::limits_match_the_crds`; do not edit by hand.\n\n\
         use super::Limit;\n\n\
         /// (kind, path, limits); `[]` stands for the items of an array.\n\
         #[rustfmt::skip]\n\
         pub(super) static LIMITS: &[(&str, &str, Limit)] = &[\n",
    );
    for (kind, path, l) in entries {
        s.push_str(&format!(
            "    (\"{kind}\", \"{path}\", Limit {{ max_items: {}, min_items: {}, max_length: {}, min_length: {}, maximum: {}, minimum: {} }}),\n",
            opt(l.max_items),
            opt(l.min_items),
            opt(l.max_length),
            opt(l.min_length),
            opti(l.maximum),
            opti(l.minimum)
        ));
    }
    s.push_str("];\n");
    s
}

#[test]
fn limits_match_the_crds() {
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    if !shared.join("gateway-api/crds").is_dir() {
        eprintln!("SKIPPED: {} not found; the limits table is not compared", shared.display());
        return;
    }
    let entries = from_crds(&shared);
    let ours: Vec<(String, String, Limit)> =
        table::LIMITS.iter().map(|(k, p, l)| ((*k).to_owned(), (*p).to_owned(), *l)).collect();
    if ours != entries {
        let out = std::env::temp_dir().join("sluice-limits-table.rs");
        std::fs::write(&out, render(&entries)).unwrap();
        panic!(
            "config-sync/src/model/limits/table.rs differs from the CRDs ({} entries there, {} here); \
             the regenerated table is in {}",
            entries.len(),
            ours.len(),
            out.display()
        );
    }
}

fn route(rules: usize) -> Value {
    let rule = serde_json::json!({"backendRefs": [{"name": "svc", "port": 80}]});
    serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"hostnames": ["a.example"], "rules": vec![rule; rules]}
    })
}

#[test]
fn limits_are_enforced_with_the_field_named() {
    assert_eq!(check(Kind::HttpRoute, &route(16)), Ok(()));
    let (field, reason) = check(Kind::HttpRoute, &route(10_000)).unwrap_err();
    assert_eq!(field, "spec.rules");
    assert!(reason.contains("10000 items") && reason.contains("16"), "{reason}");
    let mut r = route(1);
    r["spec"]["hostnames"][0] = Value::String(format!("{}.example", "a".repeat(300)));
    assert_eq!(check(Kind::HttpRoute, &r).unwrap_err().0, "spec.hostnames[0]");
    let mut r = route(1);
    r["spec"]["rules"][0]["backendRefs"][0]["weight"] = 2_000_000.into();
    assert_eq!(check(Kind::HttpRoute, &r).unwrap_err().0, "spec.rules[0].backendRefs[0].weight");
    let mut r = route(1);
    r["spec"]["rules"][0]["matches"] = Value::Array(vec![serde_json::json!({}); 65]);
    assert_eq!(check(Kind::HttpRoute, &r).unwrap_err().0, "spec.rules[0].matches");
    // GRPCRoute has its own schema's limits.
    let mut g = route(1);
    g["kind"] = "GRPCRoute".into();
    g["spec"]["rules"][0]["matches"] =
        serde_json::json!([{"method": {"service": "s".repeat(1025), "method": "M"}}]);
    let (field, reason) = check(Kind::GrpcRoute, &g).unwrap_err();
    assert_eq!(field, "spec.rules[0].matches[0].method.service");
    assert!(reason.contains("1024"), "{reason}");
    g["spec"]["rules"] = Value::Array(vec![serde_json::json!({}); 17]);
    assert_eq!(check(Kind::GrpcRoute, &g).unwrap_err().0, "spec.rules");
    // Kinds without a CRD here are not checked.
    assert_eq!(check(Kind::Service, &route(10_000)), Ok(()));
}
