//! Resolution tests: manifests in, table and status out, checked by routing requests through
//! the compiled table exactly as lb would.

use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;
use table::format::{ArchivedActionKind, ArchivedBackendTarget};
use table::{Headers, Request, Route, Router, encode};

use super::attach::intersect;
use super::*;
use crate::model::parse_document;

mod filters;
mod incremental;
mod tls;
mod vhosts;

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice}
spec: {controllerName: sluice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/other}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {team: a}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: sluice
  listeners:
  - name: http
    port: 8080
    protocol: HTTP
    allowedRoutes: {namespaces: {from: All}}
  - name: foo
    port: 8080
    protocol: HTTP
    hostname: foo.example.com
    allowedRoutes: {namespaces: {from: All}}
  - name: selected
    port: 9090
    protocol: HTTP
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: a}}}}
  - name: same
    port: 9191
    protocol: HTTP
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: apps}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: svc-1, namespace: apps, labels: {kubernetes.io/service-name: svc}}
addressType: IPv4
ports: [{name: http, port: 3000}]
endpoints:
- addresses: [127.0.0.1]
- addresses: [127.0.0.2]
  conditions: {ready: false}
"#;

fn model(extra: &str) -> Model {
    let mut m = Model::default();
    let text = format!("{BASE}\n---\n{extra}");
    for de in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = serde_json::Value::deserialize(de).unwrap();
        for o in parse_document(v) {
            if let Some(o) = o.unwrap() {
                m.insert(o);
            }
        }
    }
    m
}

fn settings() -> Settings {
    Settings {
        controller_name: "sluice.dev/gateway-controller".into(),
        default_address: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        address_pool: None,
        address_usable: Some(|ip| ip != IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        bind_failures: Default::default(),
        last_good: Default::default(),
    }
}

struct Compiled2 {
    router: Router,
    status: Statuses,
}

fn build(extra: &str) -> Compiled2 {
    let c = compile(&model(extra), &settings());
    let router = Router::open(&encode(&c.table).unwrap(), None).unwrap();
    Compiled2 { router, status: c.status }
}

struct H<'a>(&'a [(&'a str, &'a str)]);
impl Headers for H<'_> {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_bytes())
    }
}

/// Routes a request and names the result: `route#rule` or `404`/`no-listener`/`no-port`.
fn hit(
    c: &Compiled2,
    port: u16,
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> String {
    let Some(p) = c.router.port(IpAddr::V4(Ipv4Addr::LOCALHOST), port) else {
        return "no-port".into();
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let req = Request {
        method: method.as_bytes(),
        path: path.as_bytes(),
        query: query.as_bytes(),
        host: host.as_bytes(),
    };
    match c.router.route(p, &req, &H(headers), &mut c.router.scratch()) {
        Route::Matched { action, .. } => format!("{}#{}", action.route, action.rule),
        Route::NoRoute { .. } => "404".into(),
        Route::NoListener => "no-listener".into(),
    }
}

fn route_conditions(c: &Compiled2, ns: &str, name: &str) -> Vec<Vec<(String, String, String)>> {
    let id = ObjectId { kind: Kind::HttpRoute, key: Key::new(ns, name) };
    match c.status.get(&id).map(|(_, s)| &**s) {
        Some(ObjectStatus::HttpRoute(s)) => s
            .parents
            .iter()
            .map(|p| {
                p.conditions
                    .iter()
                    .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                    .collect()
            })
            .collect(),
        None => vec![],
        other => panic!("{other:?}"),
    }
}

fn accepted(c: &Compiled2, ns: &str, name: &str) -> Vec<String> {
    route_conditions(c, ns, name)
        .into_iter()
        .map(|conds| {
            let a = conds.iter().find(|c| c.0 == "Accepted").unwrap();
            if a.1 == "True" { "Accepted".into() } else { a.2.clone() }
        })
        .collect()
}

fn route(name: &str, ns: &str, parent: &str, hostnames: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{parent}]\n  hostnames: [{hostnames}]\n  rules:\n{rules}\n---\n"
    )
}

const TO_SVC: &str = "backendRefs: [{name: svc, port: 80}]";

#[test]
fn precedence_follows_the_spec() {
    let rules = format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    {TO_SVC}\n\
         \x20 - matches: [{{path: {{type: PathPrefix, value: /api}}}}]\n    {TO_SVC}\n\
         \x20 - matches: [{{path: {{type: PathPrefix, value: /api/v2/}}}}]\n    {TO_SVC}\n\
         \x20 - matches: [{{path: {{type: Exact, value: /api/v2/x}}}}]\n    {TO_SVC}\n\
         \x20 - matches: [{{path: {{type: PathPrefix, value: /api}}, method: POST}}]\n    {TO_SVC}\n\
         \x20 - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: X-A, value: '1'}}]}}]\n    {TO_SVC}\n\
         \x20 - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: X-A, value: '1'}}, {{name: x-b, value: '2'}}]}}]\n    {TO_SVC}\n\
         \x20 - matches: [{{path: {{type: PathPrefix, value: /api}}, queryParams: [{{name: q, value: '1'}}]}}]\n    {TO_SVC}\n\
         \x20 - matches: [{{path: {{type: RegularExpression, value: '/api/[0-9]+'}}}}]\n    {TO_SVC}\n"
    );
    let c =
        build(&route("r", "apps", "{name: gw, namespace: infra, sectionName: http}", "", &rules));
    assert_eq!(accepted(&c, "apps", "r"), vec!["Accepted"]);
    let h = |m, t, hd: &[(&str, &str)]| hit(&c, 8080, "x.test", m, t, hd);
    assert_eq!(h("GET", "/other", &[]), "apps/r#0");
    assert_eq!(h("GET", "/api", &[]), "apps/r#1");
    assert_eq!(h("GET", "/apix", &[]), "apps/r#0", "prefix is element-wise");
    assert_eq!(h("GET", "/api/v2", &[]), "apps/r#2", "trailing slash of a prefix is ignored");
    assert_eq!(h("GET", "/api/v2/x", &[]), "apps/r#3", "exact beats any prefix");
    assert_eq!(
        h("POST", "/api/z", &[("x-a", "1"), ("x-b", "2")]),
        "apps/r#4",
        "method beats headers"
    );
    assert_eq!(
        h("GET", "/api/z?q=1", &[("x-a", "1"), ("x-b", "2")]),
        "apps/r#6",
        "more headers first"
    );
    assert_eq!(h("GET", "/api/z?q=1", &[("X-A", "1")]), "apps/r#5", "headers beat query params");
    assert_eq!(h("GET", "/api/z?q=1", &[]), "apps/r#7");
    assert_eq!(h("GET", "/api/12", &[]), "apps/r#8", "regex before prefixes");
    assert_eq!(h("GET", "/api/12x", &[]), "apps/r#1", "regex matches the whole path");
}

#[test]
fn ties_go_to_the_oldest_route_then_by_name() {
    let rules = format!("  - {TO_SVC}\n");
    let parent = "{name: gw, namespace: infra, sectionName: http}";
    let old = route("zz-old", "apps", parent, "", &rules)
        .replace("namespace: apps}", "namespace: apps, creationTimestamp: '2020-01-01T00:00:00Z'}");
    let new = route("aa-new", "apps", parent, "", &rules)
        .replace("namespace: apps}", "namespace: apps, creationTimestamp: '2024-01-01T00:00:00Z'}");
    let c = build(&format!("{new}{old}"));
    assert_eq!(hit(&c, 8080, "x", "GET", "/", &[]), "apps/zz-old#0");
    let c = build(&format!(
        "{}{}",
        route("b", "apps", parent, "", &rules),
        route("a", "apps", parent, "", &rules)
    ));
    assert_eq!(hit(&c, 8080, "x", "GET", "/", &[]), "apps/a#0", "then namespace/name");
}

#[test]
fn hostnames_listener_isolation_and_fallback() {
    let rules = format!("  - {TO_SVC}\n");
    let any = "{name: gw, namespace: infra}";
    let c = build(&format!(
        "{}{}{}",
        route("wild", "apps", any, "'*.example.com'", &rules),
        route(
            "exact",
            "apps",
            any,
            "bar.example.com",
            &format!("  - matches: [{{path: {{value: /only}}}}]\n    {TO_SVC}\n")
        ),
        route("plain", "apps", any, "", &rules),
    ));
    // foo.example.com belongs to the `foo` listener: only routes attached there apply. Both
    // `wild` and `plain` intersect to foo.example.com with equal rules: the name breaks the tie.
    assert_eq!(hit(&c, 8080, "foo.example.com", "GET", "/", &[]), "apps/plain#0");
    assert_eq!(hit(&c, 8080, "bar.example.com", "GET", "/only", &[]), "apps/exact#0");
    // Nothing in bar.example.com matches: the wildcard route takes it.
    assert_eq!(hit(&c, 8080, "bar.example.com", "GET", "/", &[]), "apps/wild#0");
    assert_eq!(hit(&c, 8080, "other.test", "GET", "/", &[]), "apps/plain#0");
    assert_eq!(
        hit(&c, 8080, "a.b.example.com", "GET", "/", &[]),
        "apps/wild#0",
        "wildcards cover several labels"
    );
    // Attached to both http and foo listeners (each where hostnames intersect).
    let gw = c.status.get(&ObjectId { kind: Kind::Gateway, key: Key::new("infra", "gw") }).unwrap();
    let ObjectStatus::Gateway(gw) = &*gw.1 else { panic!() };
    let attached: Vec<_> = gw
        .listeners
        .as_ref()
        .unwrap()
        .iter()
        .map(|l| (l.name.as_str(), l.attached_routes))
        .collect();
    assert_eq!(attached, vec![("http", 3), ("foo", 2), ("selected", 3), ("same", 0)]);
}

#[test]
fn attachment_reasons() {
    let rules = format!("  - {TO_SVC}\n");
    let c = build(&format!(
        "{}{}{}{}{}",
        route("no-section", "apps", "{name: gw, namespace: infra, sectionName: nope}", "", &rules),
        route("not-allowed", "apps", "{name: gw, namespace: infra, sectionName: same}", "", &rules),
        route("wrong-port", "apps", "{name: gw, namespace: infra, port: 1234}", "", &rules),
        route(
            "no-host",
            "apps",
            "{name: gw, namespace: infra, sectionName: foo}",
            "other.test",
            &rules
        ),
        route("foreign", "apps", "{name: missing, namespace: infra}", "", &rules),
    ));
    assert_eq!(accepted(&c, "apps", "no-section"), vec!["NoMatchingParent"]);
    assert_eq!(accepted(&c, "apps", "not-allowed"), vec!["NotAllowedByListeners"]);
    assert_eq!(accepted(&c, "apps", "wrong-port"), vec!["NoMatchingParent"]);
    assert_eq!(accepted(&c, "apps", "no-host"), vec!["NoMatchingListenerHostname"]);
    assert!(accepted(&c, "apps", "foreign").is_empty(), "no status for parents that are not ours");
    assert_eq!(hit(&c, 8080, "x", "GET", "/", &[]), "404");
    // Selector listener: namespace labels decide.
    let c = build(&format!(
        "{}{}",
        route(
            "labelled",
            "apps",
            "{name: gw, namespace: infra, sectionName: selected}",
            "",
            &rules
        ),
        route(
            "unlabelled",
            "other",
            "{name: gw, namespace: infra, sectionName: selected}",
            "",
            &rules
        ),
    ));
    assert_eq!(accepted(&c, "apps", "labelled"), vec!["Accepted"]);
    assert_eq!(accepted(&c, "other", "unlabelled"), vec!["NotAllowedByListeners"]);
}

fn action_targets(c: &Compiled2, port: u16, path: &str) -> Vec<(u32, String)> {
    let p = c.router.port(IpAddr::V4(Ipv4Addr::LOCALHOST), port).unwrap();
    let req = Request { method: b"GET", path: path.as_bytes(), query: b"", host: b"x" };
    let Route::Matched { action, .. } = c.router.route(p, &req, &H(&[]), &mut c.router.scratch())
    else {
        panic!("no match")
    };
    match &action.kind {
        ArchivedActionKind::Respond { status } => vec![(0, format!("respond {status}"))],
        ArchivedActionKind::Redirect { status, .. } => vec![(0, format!("redirect {status}"))],
        ArchivedActionKind::Forward { backends, .. } => backends
            .iter()
            .map(|b| {
                let target = match &b.target {
                    ArchivedBackendTarget::Service(s) => {
                        let svc =
                            c.router.service(table::ServiceId(s.to_native())).expect("validated");
                        let eps: Vec<_> =
                            svc.endpoints.iter().map(|e| e.socket_addr().to_string()).collect();
                        format!("{} {}", svc.name, eps.join(","))
                    }
                    ArchivedBackendTarget::Status(s) => format!("status {s}"),
                };
                (b.weight.to_native(), target)
            })
            .collect(),
    }
}

#[test]
fn backend_resolution_and_reasons() {
    let parent = "{name: gw, namespace: infra, sectionName: http}";
    let rules = "  - matches: [{path: {value: /ok}}]\n    backendRefs: [{name: svc, port: 80, weight: 3}, {name: gone, port: 80, weight: 1}]\n\
                 \x20 - matches: [{path: {value: /empty}}]\n";
    let c = build(&route("r", "apps", parent, "", rules));
    assert_eq!(
        action_targets(&c, 8080, "/ok"),
        vec![(3, "apps/svc:80 127.0.0.1:3000".to_owned()), (1, "status 500".to_owned())],
        "not-ready endpoints are left out; the missing backend's share gets 500"
    );
    assert_eq!(action_targets(&c, 8080, "/empty"), vec![(0, "respond 500".to_owned())]);
    let conds = &route_conditions(&c, "apps", "r")[0];
    assert!(
        conds.contains(&("ResolvedRefs".into(), "False".into(), "BackendNotFound".into())),
        "{conds:?}"
    );

    let cross = "  - backendRefs: [{name: svc, namespace: apps, port: 80}]\n";
    let c =
        build(&route("x", "other", "{name: gw, namespace: infra, sectionName: http}", "", cross));
    assert!(route_conditions(&c, "other", "x")[0].contains(&(
        "ResolvedRefs".into(),
        "False".into(),
        "RefNotPermitted".into()
    )));
    assert_eq!(action_targets(&c, 8080, "/"), vec![(1, "status 500".to_owned())]);
    let grant = "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: apps}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: other}]\n  to: [{group: '', kind: Service, name: svc}]\n---\n";
    let c = build(&format!(
        "{grant}{}",
        route("x", "other", "{name: gw, namespace: infra, sectionName: http}", "", cross)
    ));
    assert!(route_conditions(&c, "other", "x")[0].contains(&(
        "ResolvedRefs".into(),
        "True".into(),
        "ResolvedRefs".into()
    )));

    let kind = "  - backendRefs: [{group: example.com, kind: Bucket, name: b}]\n";
    let c = build(&route("k", "apps", parent, "", kind));
    assert!(route_conditions(&c, "apps", "k")[0].contains(&(
        "ResolvedRefs".into(),
        "False".into(),
        "InvalidKind".into()
    )));
}

#[test]
fn foreign_classes_get_nothing() {
    let gw = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: theirs, namespace: infra}\nspec:\n  gatewayClassName: other\n  listeners: [{name: http, port: 7070, protocol: HTTP}]\n---\n";
    let c = build(gw);
    assert!(c.status.keys().all(|id| id.key.name != "theirs" && id.key.name != "other"));
    assert!(c.router.port(IpAddr::V4(Ipv4Addr::LOCALHOST), 7070).is_none());
}

#[test]
fn conflicting_and_unsupported_listeners() {
    let gw = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: two, namespace: infra}\nspec:\n  gatewayClassName: sluice\n  listeners:\n  - {name: dup, port: 8080, protocol: HTTP}\n  - {name: tls, port: 8443, protocol: TLS}\n---\n";
    let c = build(gw);
    let ObjectStatus::Gateway(s) =
        &*c.status[&ObjectId { kind: Kind::Gateway, key: Key::new("infra", "two") }].1
    else {
        panic!()
    };
    let l = s.listeners.as_ref().unwrap();
    let cond = |i: usize, t: &str| {
        let c = l[i].conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.clone(), c.reason.clone())
    };
    assert_eq!(cond(0, "Conflicted"), ("True".into(), "HostnameConflict".into()));
    assert_eq!(cond(1, "Accepted"), ("False".into(), "UnsupportedProtocol".into()));
    assert!(c.router.port(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443).is_none());
}

#[test]
fn intersections() {
    assert_eq!(intersect(None, &[]), vec![""]);
    assert_eq!(intersect(Some("*.example.com"), &[]), vec!["*.example.com"]);
    assert_eq!(intersect(Some("foo.example.com"), &["*.example.com"]), vec!["foo.example.com"]);
    assert_eq!(
        intersect(Some("*.example.com"), &["a.b.example.com", "example.com"]),
        vec!["a.b.example.com"]
    );
    assert_eq!(intersect(Some("*.example.com"), &["*.b.example.com"]), vec!["*.b.example.com"]);
    assert_eq!(intersect(Some("*.b.example.com"), &["*.example.com"]), vec!["*.b.example.com"]);
    assert!(intersect(Some("foo.test"), &["bar.test"]).is_empty());
}

proptest::proptest! {
    /// The indexed conflict lookup answers what a scan of every attached route in order did.
    #[test]
    fn first_overlap_is_the_first_route_a_scan_finds(
        attached in proptest::collection::vec(proptest::collection::vec(0usize..9, 1..3), 0..12),
        new in proptest::collection::vec(0usize..9, 1..3),
    ) {
        const HOSTS: [&str; 9] = [
            "", "a.example.com", "b.example.com", "*.example.com", "x.a.example.com",
            "*.a.example.com", "example.com", "*.com", "other.test",
        ];
        let names = |v: &[usize]| v.iter().map(|&i| HOSTS[i].to_owned()).collect::<Vec<_>>();
        let keys: Vec<Key> = (0..attached.len())
            .map(|i| Key { namespace: "ns".into(), name: format!("r{i}") })
            .collect();
        let mut index = attach::AttachedHosts::default();
        for (key, hosts) in keys.iter().zip(&attached) {
            index.add(key, &names(hosts));
        }
        let new = names(&new);
        let scan = keys.iter().zip(&attached).find(|(_, hosts)| {
            names(hosts).iter().any(|h| new.iter().any(|e| attach::hosts_overlap(h, e)))
        });
        proptest::prop_assert_eq!(index.first_overlap(&new), scan.map(|(k, _)| k));
    }
}

fn gateway_status_addresses(status: &Statuses, name: &str) -> Vec<String> {
    let id = ObjectId { kind: Kind::Gateway, key: Key::new("infra", name) };
    match status.get(&id).map(|(_, s)| &**s) {
        Some(ObjectStatus::Gateway(s)) => {
            s.addresses.iter().flatten().map(|a| a.value.clone()).collect()
        }
        _ => Vec::new(),
    }
}

#[test]
fn address_pool_gives_each_gateway_its_own_stable_address() {
    let gw = |name: &str, extra: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: infra}}\nspec:\n  gatewayClassName: sluice\n{extra}  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n"
        )
    };
    let mut settings = settings();
    settings.address_pool = Some(AddressPool::parse("127.10.0.0/16").unwrap());
    let both = format!(
        "{}---\n{}---\n{}",
        gw("a", ""),
        gw("b", ""),
        gw("s", "  addresses: [{type: IPAddress, value: 127.0.0.9}]\n")
    );
    let c = compile(&model(&both), &settings);
    let a = gateway_status_addresses(&c.status, "a");
    let b = gateway_status_addresses(&c.status, "b");
    assert_eq!(a.len(), 1);
    assert_eq!(b.len(), 1);
    assert_ne!(a, b, "two Gateways on port 80 must not share an address");
    assert!(a[0].starts_with("127.10.") && b[0].starts_with("127.10."), "{a:?} {b:?}");
    // An address entry without a value asks for one.
    let c_empty = compile(&model(&gw("e", "  addresses: [{type: IPAddress}]\n")), &settings);
    assert!(gateway_status_addresses(&c_empty.status, "e")[0].starts_with("127.10."));
    // Static addresses are kept as written.
    assert_eq!(gateway_status_addresses(&c.status, "s"), vec!["127.0.0.9"]);
    // Both are bound: one port entry per address.
    let port80: Vec<_> = c.table.ports.iter().filter(|p| p.port == 80).collect();
    assert_eq!(port80.len(), 3);
    // Removing one Gateway does not move the other.
    let c2 = compile(&model(&gw("b", "")), &settings);
    assert_eq!(gateway_status_addresses(&c2.status, "b"), b);
    // A full pool: the second Gateway falls back to lb's default address.
    settings.address_pool = Some(AddressPool::parse("127.20.0.7/32").unwrap());
    let c3 = compile(&model(&both), &settings);
    let mut got =
        [gateway_status_addresses(&c3.status, "a"), gateway_status_addresses(&c3.status, "b")];
    got.sort();
    assert_eq!(got, [vec!["127.0.0.1".to_owned()], vec!["127.20.0.7".to_owned()]]);
    assert!(AddressPool::parse("10.0.0.0/40").is_err());
    assert!(AddressPool::parse("not-an-ip/8").is_err());
}

fn gateway_accepted(c: &Compiled, name: &str) -> (String, String) {
    let id = ObjectId { kind: Kind::Gateway, key: Key::new("infra", name) };
    match c.status.get(&id).map(|(_, s)| &**s) {
        Some(ObjectStatus::Gateway(s)) => s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Accepted")
            .map(|c| (c.status.clone(), c.reason.clone()))
            .unwrap_or_default(),
        _ => Default::default(),
    }
}

#[test]
fn gateway_acceptance_reasons() {
    let gw = |name: &str, listeners: &str, extra: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: infra}}\nspec:\n  gatewayClassName: sluice\n{extra}  listeners: {listeners}\n---\n"
        )
    };
    let text = [
        gw("none-valid", "[{name: a, port: 81, protocol: UDP}]", ""),
        gw(
            "some-valid",
            "[{name: a, port: 82, protocol: HTTP}, {name: b, port: 83, protocol: UDP}]",
            "",
        ),
        gw(
            "params",
            "[{name: a, port: 84, protocol: HTTP}]",
            "  infrastructure: {parametersRef: {group: example.io, kind: Params, name: p}}\n",
        ),
    ]
    .concat();
    let c = compile(&model(&text), &settings());
    let pair = |s: &str, r: &str| (s.to_owned(), r.to_owned());
    assert_eq!(gateway_accepted(&c, "none-valid"), pair("False", "ListenersNotValid"));
    assert_eq!(gateway_accepted(&c, "some-valid"), pair("True", "ListenersNotValid"));
    assert_eq!(gateway_accepted(&c, "params"), pair("False", "InvalidParameters"));
    assert_eq!(gateway_accepted(&c, "gw"), pair("True", "Accepted"));
    // A rejected Gateway's listeners serve nothing.
    assert!(c.table.ports.iter().all(|p| p.port != 84));
    assert!(c.table.ports.iter().any(|p| p.port == 82));
}

#[test]
fn static_addresses_this_node_cannot_use_are_reported_and_left_out() {
    let gw = |addresses: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: s, namespace: infra}}\nspec:\n  gatewayClassName: sluice\n  addresses: {addresses}\n  listeners: [{{name: http, port: 85, protocol: HTTP}}]\n"
        )
    };
    let condition_of = |c: &Compiled, kind: &str| -> (String, String) {
        let id = ObjectId { kind: Kind::Gateway, key: Key::new("infra", "s") };
        match c.status.get(&id).map(|(_, s)| &**s) {
            Some(ObjectStatus::Gateway(s)) => s
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == kind)
                .map(|c| (c.status.clone(), c.reason.clone()))
                .unwrap(),
            other => panic!("{other:?}"),
        }
    };
    let pair = |s: &str, r: &str| (s.to_owned(), r.to_owned());
    // settings() says 192.0.2.1 is not one of this node's addresses.
    let c = compile(&model(&gw("[{value: 127.0.0.9}, {value: 192.0.2.1}]")), &settings());
    assert_eq!(condition_of(&c, "Accepted"), pair("True", "Accepted"));
    assert_eq!(condition_of(&c, "Programmed"), pair("False", "AddressNotUsable"));
    assert_eq!(gateway_status_addresses(&c.status, "s"), vec!["127.0.0.9"]);
    let bound: Vec<_> =
        c.table.ports.iter().filter(|p| p.port == 85).map(|p| p.address.map(|a| a.ip())).collect();
    assert_eq!(bound, [Some("127.0.0.9".parse().unwrap())], "only the usable address is bound");
    let c = compile(&model(&gw("[{value: 127.0.0.9}]")), &settings());
    assert_eq!(condition_of(&c, "Programmed"), pair("True", "Programmed"));
    let c = compile(&model(&gw("[{type: test/fake, value: x}, {value: 127.0.0.9}]")), &settings());
    assert_eq!(condition_of(&c, "Accepted"), pair("False", "UnsupportedAddress"));
}

#[test]
fn gateway_class_reports_version_and_features() {
    let c = compile(&model(""), &settings());
    let id = ObjectId { kind: Kind::GatewayClass, key: Key::new("", "sluice") };
    let Some(ObjectStatus::GatewayClass(s)) = c.status.get(&id).map(|(_, s)| &**s) else {
        panic!("no GatewayClass status: {:?}", c.status.keys().collect::<Vec<_>>())
    };
    let conditions: Vec<(&str, &str)> =
        s.conditions.iter().flatten().map(|c| (c.type_.as_str(), c.reason.as_str())).collect();
    assert_eq!(conditions, [("Accepted", "Accepted"), ("SupportedVersion", "SupportedVersion")]);
    let features: Vec<&str> =
        s.supported_features.iter().flatten().map(|f| f.name.as_str()).collect();
    assert_eq!(features, SUPPORTED_FEATURES);
    // The other controller's class gets nothing from us.
    let other = ObjectId { kind: Kind::GatewayClass, key: Key::new("", "other") };
    assert!(!c.status.contains_key(&other));
}
