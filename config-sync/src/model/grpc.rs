//! GRPCRoute, and the HTTPRoute it compiles as.
//!
//! A gRPC call is an HTTP/2 POST to `/<service>/<method>` (the gRPC over HTTP/2 protocol), so
//! everything a GRPCRoute can say has an HTTPRoute counterpart that routes the same requests:
//! method matches become path matches (below), header matches, the filters it allows
//! (RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, ExtensionRef) and backendRefs
//! have the same shape. What differs — the kind in status and ReferenceGrants, precedence
//! (service and method lengths), the HTTPRoute/GRPCRoute hostname conflict and HTTP/2 to every
//! backend — is `compile`'s, which knows which kind it compiles.

use gateway_api::apis::experimental::grpcroutes::{
    GrpcRoute as ApiGrpcRoute, GrpcRouteRulesMatches, GrpcRouteRulesMatchesMethodType,
};
use gateway_api::apis::experimental::httproutes::HttpRoute;
use serde_json::{Value, json};

/// A GRPCRoute as read, with the HTTPRoute it compiles as.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcRoute {
    /// The object.
    pub route: ApiGrpcRoute,
    /// Its rules as an HTTPRoute (same metadata, parentRefs and hostnames).
    pub http: HttpRoute,
}

impl GrpcRoute {
    /// Reads `route` and translates it; `Err` names the field the translation could not take.
    pub(crate) fn new(route: ApiGrpcRoute) -> Result<GrpcRoute, (String, String)> {
        let http = as_http_route(&route)?;
        Ok(GrpcRoute { route, http })
    }

    /// Keeps the translation's metadata in step with the object's (generation set after
    /// parsing).
    pub(crate) fn sync_metadata(&mut self) {
        self.http.metadata = self.route.metadata.clone();
    }
}

/// Characters of service and method in a match, for precedence (the spec: the longest
/// service, then the longest method, then the most header matches).
pub(crate) fn precedence(m: &GrpcRouteRulesMatches) -> (usize, usize, usize) {
    let (service, method) = m.method.as_ref().map_or((0, 0), |m| {
        (m.service.as_deref().map_or(0, str::len), m.method.as_deref().map_or(0, str::len))
    });
    (service, method, m.headers.as_ref().map_or(0, Vec::len))
}

/// The HTTPRoute path match that selects the calls a GRPCRoute method match selects.
///
/// - Exact service and method: the path `/<service>/<method>` exactly;
/// - Exact service only: the prefix `/<service>` (path segments: `/<service>/` and below);
/// - Exact method only: `/[^/]+/<method>` as a regular expression (method names are
///   identifiers, nothing to escape);
/// - RegularExpression: `/(?:<service>)/(?:<method>)`, `[^/]+` for the part not given;
/// - no method match: every path.
fn path_match(m: &GrpcRouteRulesMatches) -> Value {
    let Some(method) = &m.method else { return json!({"type": "PathPrefix", "value": "/"}) };
    let service = method.service.as_deref().filter(|s| !s.is_empty());
    let name = method.method.as_deref().filter(|s| !s.is_empty());
    match method.r#type.clone().unwrap_or(GrpcRouteRulesMatchesMethodType::Exact) {
        GrpcRouteRulesMatchesMethodType::Exact => match (service, name) {
            (Some(s), Some(n)) => json!({"type": "Exact", "value": format!("/{s}/{n}")}),
            (Some(s), None) => json!({"type": "PathPrefix", "value": format!("/{s}")}),
            (None, Some(n)) => json!({"type": "RegularExpression", "value": format!("/[^/]+/{n}")}),
            (None, None) => json!({"type": "PathPrefix", "value": "/"}),
        },
        GrpcRouteRulesMatchesMethodType::RegularExpression => {
            let s = service.unwrap_or("[^/]+");
            let n = name.unwrap_or("[^/]+");
            json!({"type": "RegularExpression", "value": format!("/(?:{s})/(?:{n})")})
        }
    }
}

fn as_http_route(route: &ApiGrpcRoute) -> Result<HttpRoute, (String, String)> {
    let failed = |what: String| ("spec".to_owned(), what);
    let mut v = serde_json::to_value(route).map_err(|e| failed(e.to_string()))?;
    v["kind"] = json!("HTTPRoute");
    if let Some(map) = v.as_object_mut() {
        map.remove("status");
    }
    let rules = route.spec.rules.as_deref().unwrap_or(&[]);
    for (i, rule) in rules.iter().enumerate() {
        let Some(matches) = &rule.matches else { continue };
        let converted: Vec<Value> = matches
            .iter()
            .map(|m| {
                let mut out = json!({"path": path_match(m)});
                if let Some(h) = &m.headers {
                    out["headers"] = serde_json::to_value(h).unwrap_or(Value::Null);
                }
                out
            })
            .collect();
        v["spec"]["rules"][i]["matches"] = Value::Array(converted);
    }
    serde_json::from_value(v).map_err(|e| failed(format!("cannot be compiled: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn route(matches: &str) -> GrpcRoute {
        let doc = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: r, namespace: ns}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [grpc.example]\n  rules:\n  - matches: {matches}\n    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {{add: [{{name: x-a, value: b}}]}}\n    backendRefs: [{{name: svc, port: 8080, weight: 3}}]\n"
        );
        let v: Value = serde_yaml_ng::from_str(&doc).unwrap();
        GrpcRoute::new(serde_json::from_value(v).unwrap()).unwrap()
    }

    fn path(r: &GrpcRoute, i: usize) -> (String, String) {
        let m = &r.http.spec.rules.as_ref().unwrap()[0].matches.as_ref().unwrap()[i];
        let p = m.path.as_ref().unwrap();
        (format!("{:?}", p.r#type.as_ref().unwrap()), p.value.clone().unwrap())
    }

    #[test]
    fn method_matches_become_path_matches() {
        let r = route(
            "[{method: {service: a.B, method: Call}}, {method: {service: a.B}}, {method: {method: Call}}, {method: {type: RegularExpression, service: 'a\\..*', method: 'C.+'}}, {method: {type: RegularExpression, method: 'C.+'}}, {headers: [{name: v, value: '2'}]}]",
        );
        assert_eq!(path(&r, 0), ("Exact".into(), "/a.B/Call".into()));
        assert_eq!(path(&r, 1), ("PathPrefix".into(), "/a.B".into()));
        assert_eq!(path(&r, 2), ("RegularExpression".into(), "/[^/]+/Call".into()));
        assert_eq!(path(&r, 3), ("RegularExpression".into(), "/(?:a\\..*)/(?:C.+)".into()));
        assert_eq!(path(&r, 4), ("RegularExpression".into(), "/(?:[^/]+)/(?:C.+)".into()));
        assert_eq!(path(&r, 5), ("PathPrefix".into(), "/".into()));
        let rule = &r.http.spec.rules.as_ref().unwrap()[0];
        let m5 = &rule.matches.as_ref().unwrap()[5];
        assert_eq!(m5.headers.as_ref().unwrap()[0].name, "v");
        // Everything else carries over.
        assert_eq!(r.http.spec.hostnames.as_ref().unwrap(), &["grpc.example".to_owned()]);
        assert_eq!(rule.backend_refs.as_ref().unwrap()[0].weight, Some(3));
        assert_eq!(rule.filters.as_ref().unwrap().len(), 1);
        assert_eq!(r.http.metadata.name.as_deref(), Some("r"));
    }

    #[test]
    fn precedence_counts_service_method_and_headers() {
        let r = route("[{method: {service: a.B, method: Call}, headers: [{name: v, value: '2'}]}]");
        let m = &r.route.spec.rules.as_ref().unwrap()[0].matches.as_ref().unwrap()[0];
        assert_eq!(precedence(m), (3, 4, 1));
    }
}
