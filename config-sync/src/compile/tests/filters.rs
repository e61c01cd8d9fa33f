//! Filters: what compiles into actions, and what is refused with a reason.

use super::*;

#[test]
fn redirects_compile_and_bad_ones_are_refused() {
    let parent = "{name: gw, namespace: infra, sectionName: http}";
    let ok = route(
        "r",
        "apps",
        parent,
        "",
        "  - matches: [{path: {type: PathPrefix, value: /old}}]\n    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]\n    backendRefs: [{name: svc, port: 80}]",
    );
    let c = build(&ok);
    assert_eq!(accepted(&c, "apps", "r"), vec!["Accepted".to_owned()]);
    assert_eq!(action_targets(&c, 8080, "/old/x"), vec![(0, "redirect 301".to_owned())]);
    // ReplacePrefixMatch on an Exact match, and a status that is not a redirect.
    for (name, rule) in [
        (
            "exact",
            "  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]",
        ),
        ("status", "  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]"),
    ] {
        let c = build(&route(name, "apps", parent, "", rule));
        assert_eq!(accepted(&c, "apps", name), vec!["UnsupportedValue".to_owned()], "{name}");
    }
}

#[test]
fn header_modifiers_may_not_touch_framing_or_host() {
    let parent = "{name: gw, namespace: infra, sectionName: http}";
    for (name, filter) in [
        (
            "cl",
            "{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: Content-Length, value: '0'}]}}",
        ),
        (
            "host",
            "{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: host, value: x}]}}",
        ),
        (
            "te",
            "{type: RequestHeaderModifier, requestHeaderModifier: {remove: [Transfer-Encoding]}}",
        ),
        (
            "expect",
            "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: Expect, value: x}]}}",
        ),
    ] {
        let rules = format!("  - filters: [{filter}]\n    {TO_SVC}");
        let c = build(&route(name, "apps", parent, "", &rules));
        assert_eq!(accepted(&c, "apps", name), vec!["UnsupportedValue".to_owned()], "{name}");
    }
    let ok = format!(
        "  - filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-A, value: b}}]}}}}]\n    {TO_SVC}"
    );
    assert_eq!(
        accepted(&build(&route("ok", "apps", parent, "", &ok)), "apps", "ok"),
        vec!["Accepted"]
    );
}

#[test]
fn gateway_api_durations() {
    assert_eq!(parse_duration_ms("500ms"), Some(500));
    assert_eq!(parse_duration_ms("1h2m3s4ms"), Some(3_723_004));
    assert_eq!(parse_duration_ms("0s"), Some(0));
    for bad in ["", "1", "1d", "1.5s", "123456s", "1s1s1s1s1s", "-1s", "1 s"] {
        assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
    }
}

/// The action a request to the `http` listener matches.
fn matched_action(c: &Compiled2, path: &str, f: impl FnOnce(&table::format::ArchivedAction)) {
    let p = c.router.port(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080).unwrap();
    let req = Request { method: b"GET", path: path.as_bytes(), query: b"", host: b"h" };
    match c.router.route(p, &req, &H(&[]), &mut c.router.scratch()) {
        Route::Matched { action, .. } => f(action),
        _ => panic!("{path} matched nothing"),
    }
}

#[test]
fn mirrors_cors_and_retries_compile_and_bad_ones_are_refused() {
    let parent = "{name: gw, namespace: infra, sectionName: http}";
    let ok = route(
        "r",
        "apps",
        parent,
        "",
        "  - matches: [{path: {value: /m}}]\n    filters:\n    - {type: RequestMirror, requestMirror: {backendRef: {name: svc, port: 80}, fraction: {numerator: 1, denominator: 4}}}\n    - {type: RequestMirror, requestMirror: {backendRef: {name: missing, port: 80}}}\n    - {type: CORS, cors: {allowOrigins: ['https://*.Example.com', 'http://a.test:8080'], allowMethods: [GET], maxAge: 60}}\n    retry: {codes: [503], attempts: 3, backoff: 100ms}\n    backendRefs: [{name: svc, port: 80}]",
    );
    let c = build(&ok);
    assert_eq!(accepted(&c, "apps", "r"), vec!["Accepted".to_owned()]);
    // The missing mirror is dropped and reported; the rest of the rule still serves.
    let refs = &route_conditions(&c, "apps", "r")[0];
    assert!(refs.contains(&("ResolvedRefs".into(), "False".into(), "BackendNotFound".into())));
    matched_action(&c, "/m", |a| {
        assert_eq!(a.mirrors.len(), 1);
        assert_eq!(a.mirrors[0].per_million, 250_000);
        let cors = a.cors.as_ref().unwrap();
        let origins: Vec<&str> = cors.origins.iter().map(|o| o.as_str()).collect();
        assert_eq!(origins, ["https://*.example.com:443", "http://a.test:8080"]);
        assert_eq!((cors.max_age.to_native(), cors.credentials), (60, false));
        assert_eq!(a.retry.attempts, 3);
        assert_eq!(a.retry.backoff_ms, 100);
        assert_eq!(a.retry.codes.iter().map(|c| c.to_native()).collect::<Vec<_>>(), [503]);
    });
    for (name, rule) in [
        (
            "both",
            "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: svc, port: 80}, percent: 5, fraction: {numerator: 1}}}]",
        ),
        // (`percent: 101` and retry code 200 never get here: the CRD's maximum and minimum
        // refuse them at admission, `limits`.)
        ("origin", "  - filters: [{type: CORS, cors: {allowOrigins: ['ftp://x.example']}}]"),
        ("methods", "  - filters: [{type: CORS, cors: {allowMethods: ['*', GET]}}]"),
        ("backoff", "  - retry: {backoff: soon}\n    backendRefs: [{name: svc, port: 80}]"),
    ] {
        let c = build(&route(name, "apps", parent, "", rule));
        assert_eq!(accepted(&c, "apps", name), vec!["UnsupportedValue".to_owned()], "{name}");
    }
}

#[test]
fn origins_normalise_to_scheme_host_port() {
    assert_eq!(normalize_origin("*").as_deref(), Some("*"));
    assert_eq!(normalize_origin("HTTPS://Foo.com").as_deref(), Some("https://foo.com:443"));
    assert_eq!(normalize_origin("http://foo.com:81").as_deref(), Some("http://foo.com:81"));
    assert_eq!(normalize_origin("http://*").as_deref(), Some("http://*:80"));
    for bad in ["foo.com", "ws://foo.com", "http://foo.com:0", "http://a..b", "http://"] {
        assert_eq!(normalize_origin(bad), None, "{bad}");
    }
}

#[test]
fn client_certificate_header_filters_choose_the_field_and_unresolved_ones_answer_500() {
    let parent = "{name: gw, namespace: infra, sectionName: http}";
    let filter = "apiVersion: gateway.sluice.dev/v1alpha1\nkind: ClientCertificateHeader\nmetadata: {name: subject, namespace: apps}\nspec: {header: X-Client-Subject, value: Subject}\n---\n";
    let ext = |name: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: /{name}}}}}]\n    filters: [{{type: ExtensionRef, extensionRef: {{group: gateway.sluice.dev, kind: ClientCertificateHeader, name: {name}}}}}]\n    {TO_SVC}"
        )
    };
    let rules = format!("{}\n{}", ext("subject"), ext("missing"));
    let c = build(&(filter.to_owned() + &route("r", "apps", parent, "", &rules)));
    // Accepted (the kind is known), ResolvedRefs False for the missing object.
    assert_eq!(accepted(&c, "apps", "r"), vec!["Accepted".to_owned()]);
    let conds = &route_conditions(&c, "apps", "r")[0];
    let resolved = conds.iter().find(|c| c.0 == "ResolvedRefs").unwrap();
    assert_eq!((resolved.1.as_str(), resolved.2.as_str()), ("False", "FilterNotFound"));
    // The resolved rule forwards, with its field, and removes a client's field of that name.
    assert_eq!(action_targets(&c, 8080, "/subject")[0].1, "apps/svc:80 127.0.0.1:3000");
    let p = c.router.port(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080).unwrap();
    let req = Request { method: b"GET", path: b"/subject", query: b"", host: b"x" };
    let Route::Matched { action, .. } = c.router.route(p, &req, &H(&[]), &mut c.router.scratch())
    else {
        panic!("no match")
    };
    let chosen = &action.client_cert_headers;
    assert_eq!(chosen.len(), 1);
    assert_eq!(chosen[0].name.as_str(), "X-Client-Subject");
    assert!(matches!(chosen[0].value, table::format::ArchivedClientCertValue::Subject));
    assert!(action.request_headers.remove.iter().any(|n| n.as_str() == "X-Client-Subject"));
    // The unresolved filter is not skipped: its requests get a 500.
    assert_eq!(action_targets(&c, 8080, "/missing"), vec![(0, "respond 500".to_owned())]);
    // Another group's kind is not something Sluice can run.
    let foreign = "  - filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Auth, name: a}}]\n    backendRefs: [{name: svc, port: 80}]";
    let c = build(&route("f", "apps", parent, "", foreign));
    assert_eq!(accepted(&c, "apps", "f"), vec!["UnsupportedValue".to_owned()]);
}

#[test]
fn client_certificate_header_objects_are_checked_at_admission() {
    let doc = |spec: &str| {
        let text = format!(
            "apiVersion: gateway.sluice.dev/v1alpha1\nkind: ClientCertificateHeader\nmetadata: {{name: h, namespace: apps}}\nspec: {spec}\n"
        );
        let v: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        parse_document(v).into_iter().next().unwrap().map_err(Box::new)
    };
    let ok = doc("{header: Client-Cert, value: Certificate}").unwrap().unwrap();
    assert_eq!(ok.id().to_string(), "ClientCertificateHeader apps/h");
    assert!(doc("{header: X-Cert}").is_ok(), "value defaults to XFCC");
    for (spec, field) in [
        ("{header: 'Bad Name'}", " field spec.header"),
        ("{header: Content-Length}", " field spec.header"),
        ("{header: X-A, value: Pem}", " field spec.value"),
        ("{header: X-A, valeu: Subject}", " field spec"),
        ("{}", " field spec"),
    ] {
        let e = doc(spec).unwrap_err();
        assert!(e.field.starts_with(field), "{spec}: {e}");
    }
}
