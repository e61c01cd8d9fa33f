//! Shared fixtures for the benchmarks: synthetic Gateway API configurations of a given size,
//! compiled by the real config-sync pipeline.

use std::fmt::Write;

use config_sync::{Model, parse_document};
use serde::Deserialize;

/// A model with `routes` HTTPRoutes spread over `namespaces` namespaces, mixing exact hosts,
/// wildcard hosts, path prefixes, exact paths, header matches and regexes.
pub fn model(routes: usize, namespaces: usize) -> Model {
    let mut y = String::new();
    y.push_str("apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: sluice}\nspec: {controllerName: sluice.dev/gateway-controller}\n---\n");
    y.push_str("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: sluice\n  listeners:\n  - {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n---\n");
    for ns in 0..namespaces {
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: ns{ns}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-1, namespace: ns{ns}, labels: {{kubernetes.io/service-name: svc}}}}\naddressType: IPv4\nports: [{{name: http, port: 3000}}]\nendpoints: [{{addresses: [10.0.{}.{}]}}]\n---\n",
            ns / 250,
            ns % 250 + 1
        );
    }
    for r in 0..routes {
        let ns = r % namespaces;
        let host = match r % 4 {
            0 => format!("app{r}.example.com"),
            1 => format!("'*.zone{r}.example.com'"),
            2 => format!("api{}.example.com", r / 4),
            _ => format!("app{}.example.com", r - 3),
        };
        let m = match r % 5 {
            0 => format!("{{path: {{type: PathPrefix, value: /v{r}}}}}"),
            1 => format!("{{path: {{type: Exact, value: /exact/{r}}}}}"),
            2 => format!(
                "{{path: {{type: PathPrefix, value: /h{r}}}, headers: [{{name: x-tenant, value: t{r}}}]}}"
            ),
            3 => format!("{{path: {{type: RegularExpression, value: '/re{r}/[0-9]+'}}}}"),
            _ => format!(
                "{{path: {{type: PathPrefix, value: /q{r}}}, queryParams: [{{name: v, value: '{r}'}}], method: GET}}"
            ),
        };
        let _ = write!(
            y,
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{r}, namespace: ns{ns}}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  hostnames: [{host}]\n  rules:\n  - matches: [{m}]\n    backendRefs: [{{name: svc, port: 80, weight: 3}}, {{name: svc, port: 80, weight: 1}}]\n---\n"
        );
    }
    let mut model = Model::default();
    for de in serde_yaml_ng::Deserializer::from_str(&y) {
        let Ok(v) = serde_json::Value::deserialize(de) else { continue };
        for o in parse_document(v).into_iter().flatten().flatten() {
            model.insert(o);
        }
    }
    model
}

/// Compile settings for the fixtures.
pub fn settings() -> config_sync::Settings {
    config_sync::Settings {
        controller_name: "sluice.dev/gateway-controller".into(),
        default_address: None,
        address_pool: None,
        address_usable: None,
        bind_failures: Default::default(),
        last_good: Default::default(),
    }
}
