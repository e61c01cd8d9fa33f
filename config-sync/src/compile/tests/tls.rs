//! HTTPS listeners: certificate references, their conditions, the table's TLS ports.

use super::*;

/// A self-signed certificate for `names`, as (chain PEM, key PEM).
fn cert(names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let c = rcgen::generate_simple_self_signed(names).unwrap();
    (c.cert.pem(), c.key_pair.serialize_pem())
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("      {l}\n")).collect()
}

fn secret(ns: &str, name: &str, (crt, key): &(String, String)) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n",
        indent(crt),
        indent(key)
    )
}

fn https_gateway(name: &str, port: u16, refs: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: infra}}\nspec:\n  gatewayClassName: sluice\n  listeners:\n  - name: https\n    port: {port}\n    protocol: HTTPS\n    allowedRoutes: {{namespaces: {{from: All}}}}\n    tls: {{certificateRefs: [{refs}]}}\n---\n"
    )
}

fn listener(c: &Compiled, gateway: &str, index: usize, t: &str) -> (String, String, String) {
    let ObjectStatus::Gateway(s) =
        &*c.status[&ObjectId { kind: Kind::Gateway, key: Key::new("infra", gateway) }].1
    else {
        panic!("no Gateway status")
    };
    let l = &s.listeners.as_ref().unwrap()[index];
    let c = l.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn run(extra: &str, settings: &Settings) -> (Compiled, Router) {
    let c = compile(&model(extra), settings);
    let router = Router::open(&encode(&c.table).unwrap(), None).unwrap();
    (c, router)
}

#[test]
fn a_valid_secret_makes_a_tls_port_with_its_certificate() {
    let pem = cert(&["example.com"]);
    let extra = secret("infra", "site", &pem) + &https_gateway("tls", 8443, "{name: site}");
    let (c, router) = run(&extra, &settings());
    assert_eq!(listener(&c, "tls", 0, "ResolvedRefs").0, "True");
    assert_eq!(listener(&c, "tls", 0, "Programmed").0, "True");
    let t = router.table();
    let port = router.port(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443).unwrap();
    assert!(port.tls.is_some());
    assert_eq!(t.certificates.len(), 1);
    assert_eq!(t.certificates[0].name.as_str(), "infra/site");
    let l = router.listener_for(port, b"example.com").unwrap();
    assert_eq!(t.listeners[l as usize].certificates.len(), 1);
    // The plain port of the base Gateway stays plain.
    assert!(router.port(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080).unwrap().tls.is_none());
    // What the next compilation keeps if the Secret goes bad.
    assert!(c.last_good.contains_key(&Key::new("infra", "site")));
    // Keys are never in Debug output.
    let debug = format!("{:?}", c.table.certificates);
    assert!(debug.contains("<redacted>") && !debug.contains("key: ["), "{debug}");
}

#[test]
fn bad_references_get_the_spec_reasons() {
    let pem = cert(&["example.com"]);
    let malformed = "apiVersion: v1\nkind: Secret\nmetadata: {name: malformed, namespace: infra}\ntype: kubernetes.io/tls\ndata: {tls.crt: SGVsbG8gd29ybGQK, tls.key: SGVsbG8gd29ybGQK}\n---\n";
    let other = cert(&["other.example"]);
    let mismatched = secret("infra", "mismatched", &(pem.0.clone(), other.1));
    let opaque = "apiVersion: v1\nkind: Secret\nmetadata: {name: opaque, namespace: infra}\ntype: Opaque\nstringData: {tls.crt: x, tls.key: y}\n---\n";
    let cases = [
        ("missing", "{name: nonexistent}", "InvalidCertificateRef", "not found"),
        (
            "group",
            "{group: wrong.example.io, kind: Secret, name: site}",
            "InvalidCertificateRef",
            "not supported",
        ),
        ("kind", "{kind: WrongKind, name: site}", "InvalidCertificateRef", "not supported"),
        ("malformed", "{name: malformed}", "InvalidCertificateRef", "PEM"),
        ("mismatched", "{name: mismatched}", "InvalidCertificateRef", "not usable"),
        ("opaque", "{name: opaque}", "InvalidCertificateRef", "type Opaque"),
        ("crossns", "{name: site, namespace: apps}", "RefNotPermitted", "ReferenceGrant"),
    ];
    let mut extra = secret("infra", "site", &pem) + &secret("apps", "site", &pem) + malformed;
    extra += &mismatched;
    extra += opaque;
    for (i, (name, refs, _, _)) in cases.iter().enumerate() {
        extra += &https_gateway(name, 9000 + i as u16, refs);
    }
    let (c, router) = run(&extra, &settings());
    for (i, (name, _, reason, message)) in cases.iter().enumerate() {
        let (status, got, text) = listener(&c, name, 0, "ResolvedRefs");
        assert_eq!((status.as_str(), got.as_str()), ("False", *reason), "{name}: {text}");
        assert!(text.contains(message), "{name}: {text}");
        assert!(!text.contains("PRIVATE KEY"), "{name}: {text}");
        let programmed = listener(&c, name, 0, "Programmed");
        assert_eq!((programmed.0.as_str(), programmed.1.as_str()), ("False", "Invalid"), "{name}");
        // The port is there (lb binds it) but this listener has no certificate: handshakes
        // for it fail.
        let port = router.port(IpAddr::V4(Ipv4Addr::LOCALHOST), 9000 + i as u16).unwrap();
        let l = router.listener_for(port, b"example.com").unwrap();
        assert!(router.table().listeners[l as usize].certificates.is_empty(), "{name}");
    }
}

#[test]
fn a_reference_grant_permits_a_secret_in_another_namespace() {
    let pem = cert(&["example.com"]);
    let grant = |to_name: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: apps}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}}]\n  to: [{{group: '', kind: Secret{to_name}}}]\n---\n"
        )
    };
    let base =
        secret("apps", "site", &pem) + &https_gateway("tls", 8443, "{name: site, namespace: apps}");
    for (to, ok) in [("", true), (", name: site", true), (", name: other", false)] {
        let (c, _) = run(&(base.clone() + &grant(to)), &settings());
        let resolved = listener(&c, "tls", 0, "ResolvedRefs");
        assert_eq!(resolved.0 == "True", ok, "grant to{to}: {resolved:?}");
    }
    // A grant for HTTPRoutes does not cover Gateways.
    let wrong = "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: apps}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]\n  to: [{group: '', kind: Secret}]\n---\n";
    let (c, _) = run(&(base + wrong), &settings());
    assert_eq!(listener(&c, "tls", 0, "ResolvedRefs").1, "RefNotPermitted");
}

#[test]
fn a_secret_gone_bad_keeps_its_last_valid_certificate_and_a_deleted_one_does_not() {
    let pem = cert(&["example.com"]);
    let gw = https_gateway("tls", 8443, "{name: site}");
    let mut s = settings();
    let (good, _) = run(&(secret("infra", "site", &pem) + &gw), &s);
    s.last_good = good.last_good.clone();
    let broken = "apiVersion: v1\nkind: Secret\nmetadata: {name: site, namespace: infra}\ntype: kubernetes.io/tls\nstringData: {tls.crt: garbage, tls.key: garbage}\n---\n";
    let (c, router) = run(&(broken.to_owned() + &gw), &s);
    let (status, reason, message) = listener(&c, "tls", 0, "ResolvedRefs");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidCertificateRef"));
    assert!(message.contains("last valid certificate"), "{message}");
    assert_eq!(listener(&c, "tls", 0, "Programmed").0, "True");
    assert_eq!(router.table().certificates.len(), 1);
    assert_eq!(router.table().certificates[0].chain, good.table.certificates[0].chain);
    // Deleted: not served any more.
    let (c, router) = run(&gw, &s);
    assert_eq!(listener(&c, "tls", 0, "Programmed").0, "False");
    assert!(router.table().certificates.is_empty());
    assert!(c.last_good.is_empty());
}

#[test]
fn http_and_https_on_one_port_conflict() {
    let pem = cert(&["example.com"]);
    // The base Gateway serves HTTP on 8080.
    let extra = secret("infra", "site", &pem) + &https_gateway("tls", 8080, "{name: site}");
    let (c, router) = run(&extra, &settings());
    let (status, reason, _) = listener(&c, "tls", 0, "Conflicted");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "ProtocolConflict"));
    assert!(router.port(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080).unwrap().tls.is_none());
}

#[test]
fn passthrough_on_an_https_listener_is_refused() {
    let pem = cert(&["example.com"]);
    let gw = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: tls, namespace: infra}\nspec:\n  gatewayClassName: sluice\n  listeners:\n  - {name: https, port: 8443, protocol: HTTPS, tls: {mode: Passthrough}}\n---\n";
    let (c, router) = run(&(secret("infra", "site", &pem) + gw), &settings());
    assert_eq!(listener(&c, "tls", 0, "Accepted").1, "UnsupportedValue");
    assert!(router.port(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443).is_none());
}
