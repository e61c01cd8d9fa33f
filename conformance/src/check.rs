//! One case's expectation against one response, with the suite's comparison rules
//! (`CompareRoundTrip`): backend fields only on 200, header names case-insensitive, multiple
//! values joined with `,`, pod names matched by prefix.

use serde_json::Value;

use crate::http::Response;

/// Fields of an expectation this runner does not check yet; a case using one fails with the
/// field named rather than passing unchecked.
const UNCHECKED: &[&str] = &["tcp_echo", "invariant"];

/// Every expectation field this runner checks (or, for `note` and `note_unchecked`, knows to be
/// prose). A field outside this list and [`UNCHECKED`] fails the case with the field named: a
/// vector format that grows must never pass unchecked.
const CHECKED: &[&str] = &[
    "status",
    "not_status",
    "grpc_code",
    "fully_qualified_method_seen_by_backend",
    "backend",
    "backend_from_header",
    "namespace",
    "path_seen_by_backend",
    "host_seen_by_backend",
    "method_seen_by_backend",
    "headers_seen_by_backend",
    "absent_headers_seen_by_backend",
    "sni_seen_by_backend",
    "client_cert_seen_by_backend",
    "response_headers",
    "response_header_any_of",
    "response_headers_ignore_whitespace",
    "absent_response_headers",
    "answered_by_gateway",
    "redirect",
    "repeat",
    "mirrored_to",
    "websocket_echo",
    "tls_request_fails",
    "tls_connection_rejected",
    "note",
    "note_unchecked",
];

/// The first field of `expect` the runner does not know, if any.
pub fn unknown_field(expect: &Value) -> Option<&str> {
    expect
        .as_object()?
        .keys()
        .map(String::as_str)
        .find(|k| !CHECKED.contains(k) && !UNCHECKED.contains(k))
}

/// `Ok` when `resp` meets `expect`; otherwise the first mismatch as "expected …, got …".
pub fn response(
    expect: &Value,
    request_path: &str,
    request_scheme: &str,
    resp: &Response,
) -> Result<(), String> {
    if let Some(field) = UNCHECKED.iter().find(|f| expect.get(**f).is_some()) {
        return Err(format!("the runner cannot check `{field}` yet"));
    }
    if let Some(field) = unknown_field(expect) {
        return Err(format!("the runner does not know the expectation field `{field}`"));
    }
    if let Some(want) = expect.get("grpc_code").and_then(Value::as_str) {
        // gRPC answers are HTTP 200; the outcome is `grpc-status` (in trailers, or in the
        // head of a trailers-only answer).
        let code = resp.header("grpc-status").and_then(|c| c.trim().parse::<u32>().ok());
        let got = code.map_or("none", echo::grpc::code_name);
        if resp.status != 200 || got != want {
            return Err(format!(
                "expected gRPC status {want}, got HTTP {} grpc-status {got}",
                resp.status
            ));
        }
        if want != "OK" {
            return Ok(());
        }
        if let Some(method) = expect.get("fully_qualified_method_seen_by_backend") {
            let echo: Value = serde_json::from_slice(&resp.body)
                .map_err(|_| "expected the echo's gRPC answer, got no message".to_owned())?;
            if echo.get("path") != Some(method) {
                return Err(format!(
                    "expected the backend to see method {method}, got {}",
                    echo["path"]
                ));
            }
        }
        return backend(expect, resp);
    }
    if let Some(not) = expect.get("not_status").and_then(Value::as_u64) {
        if u64::from(resp.status) == not {
            return Err(format!("expected any status but {not}, got {not}"));
        }
        return Ok(());
    }
    match expect.get("status") {
        Some(Value::Number(n)) if n.as_u64() != Some(u64::from(resp.status)) => {
            return Err(format!("expected status {n}, got {}", resp.status));
        }
        Some(Value::Array(any))
            if !any.iter().any(|s| s.as_u64() == Some(u64::from(resp.status))) =>
        {
            return Err(format!("expected status in {any:?}, got {}", resp.status));
        }
        _ => {}
    }
    let squeeze =
        expect.get("response_headers_ignore_whitespace").and_then(Value::as_bool) == Some(true);
    let same = |got: &str, want: &str| {
        if squeeze {
            got.split_whitespace().collect::<String>()
                == want.split_whitespace().collect::<String>()
        } else {
            got == want
        }
    };
    if let Some(headers) = expect.get("response_header_any_of").and_then(Value::as_object) {
        for (name, any) in headers {
            let got = resp.header(name);
            if !strings(Some(any)).any(|want| got.as_deref().is_some_and(|g| same(g, want))) {
                return Err(format!("expected response header {name} in {any}, got {got:?}"));
            }
        }
    }
    if let Some(headers) = expect.get("response_headers").and_then(Value::as_object) {
        for (name, want) in headers {
            let want = want.as_str().unwrap_or_default();
            match resp.header(name) {
                Some(got) if same(&got, want) => {}
                got => {
                    return Err(format!("expected response header {name}: {want:?}, got {got:?}"));
                }
            }
        }
    }
    for name in strings(expect.get("absent_response_headers")) {
        if let Some(got) = resp.header(name) {
            return Err(format!("expected no response header {name}, got {got:?}"));
        }
    }
    if let Some(redirect) = expect.get("redirect") {
        redirect_matches(redirect, request_path, request_scheme, resp)?;
    }
    if expect.get("answered_by_gateway").and_then(Value::as_bool) == Some(true) {
        // The gateway's own answer: anything but the echo backend's JSON.
        let echoed = serde_json::from_slice::<Value>(&resp.body)
            .is_ok_and(|v| v.get("pod").is_some() && v.get("path").is_some());
        if echoed {
            return Err("expected the gateway to answer, got the echo backend's reply".into());
        }
        return Ok(());
    }
    if resp.status == 200 || resp.status == 204 {
        backend(expect, resp)?;
    }
    Ok(())
}

fn strings(v: Option<&Value>) -> impl Iterator<Item = &str> {
    v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
}

fn backend(expect: &Value, resp: &Response) -> Result<(), String> {
    let fields = [
        "path_seen_by_backend",
        "host_seen_by_backend",
        "method_seen_by_backend",
        "headers_seen_by_backend",
        "absent_headers_seen_by_backend",
        "namespace",
        "backend",
        "backend_from_header",
        "sni_seen_by_backend",
        "client_cert_seen_by_backend",
    ];
    if !fields.iter().any(|f| expect.get(*f).is_some()) {
        return Ok(());
    }
    let echo: Value = serde_json::from_slice(&resp.body).map_err(|e| {
        format!(
            "expected the echo backend's JSON, got {} bytes that are not JSON ({e})",
            resp.body.len()
        )
    })?;
    let got = |field: &str| echo.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
    for (field, echoed) in [
        ("path_seen_by_backend", "path"),
        ("host_seen_by_backend", "host"),
        ("method_seen_by_backend", "method"),
        ("namespace", "namespace"),
    ] {
        if let Some(want) = expect.get(field).and_then(Value::as_str)
            && got(echoed) != want
        {
            return Err(format!("expected backend {echoed} {want:?}, got {:?}", got(echoed)));
        }
    }
    if let Some(want) = expect.get("backend").and_then(Value::as_str)
        && !got("pod").starts_with(want)
    {
        return Err(format!("expected a pod of {want}, got pod {:?}", got("pod")));
    }
    let seen = |name: &str| -> Option<String> {
        let headers = echo.get("headers")?.as_object()?;
        let (_, v) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
        let values: Vec<&str> = v.as_array()?.iter().filter_map(Value::as_str).collect();
        Some(values.join(","))
    };
    if let Some(headers) = expect.get("headers_seen_by_backend").and_then(Value::as_object) {
        for (name, want) in headers {
            let want = want.as_str().unwrap_or_default();
            match seen(name) {
                Some(got) if got == want => {}
                got => {
                    return Err(format!("expected backend to see {name}: {want:?}, got {got:?}"));
                }
            }
        }
    }
    // The backend saw this header exactly once, and the answering pod belongs to the Service
    // it names (per-backend header edits reached the backend that was chosen).
    if let Some(name) = expect.get("backend_from_header").and_then(Value::as_str) {
        let headers = echo.get("headers").and_then(Value::as_object);
        let values: Vec<&str> = headers
            .into_iter()
            .flatten()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.as_array().into_iter().flatten().filter_map(Value::as_str))
            .collect();
        match values.as_slice() {
            [one] if got("pod").starts_with(one) => {}
            _ => {
                return Err(format!(
                    "expected one {name} header naming the answering pod {:?}, got {values:?}",
                    got("pod")
                ));
            }
        }
    }
    for name in strings(expect.get("absent_headers_seen_by_backend")) {
        if let Some(got) = seen(name) {
            return Err(format!("expected backend not to see {name}, got {got:?}"));
        }
    }
    backend_tls(expect, &echo)
}

/// What the backend's TLS connection saw (the echo's `tls` block; absent on plain HTTP):
/// `sni_seen_by_backend` is the server name the gateway sent upstream;
/// `client_cert_seen_by_backend` is `true`/`false` (whether the gateway presented a client
/// certificate) or a PEM certificate that must be the one it presented.
fn backend_tls(expect: &Value, echo: &Value) -> Result<(), String> {
    let tls = echo.get("tls");
    if let Some(want) = expect.get("sni_seen_by_backend") {
        let Some(want) = want.as_str() else {
            return Err(format!("sni_seen_by_backend must be a string, got {want}"));
        };
        let got = tls.and_then(|t| t.get("serverName")).and_then(Value::as_str);
        if tls.is_none() {
            return Err(format!(
                "expected the backend to see SNI {want:?} over TLS, got plain HTTP"
            ));
        }
        if got != Some(want) {
            return Err(format!("expected the backend to see SNI {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = expect.get("client_cert_seen_by_backend") {
        let presented: Vec<String> = tls
            .and_then(|t| t.get("peerCertificates"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(pem_body)
            .collect();
        match want {
            Value::Bool(b) if *b != presented.is_empty() => {}
            Value::Bool(b) => {
                return Err(format!(
                    "expected the backend {} a client certificate, got {} certificate(s)",
                    if *b { "to see" } else { "not to see" },
                    presented.len()
                ));
            }
            Value::String(pem) if presented.first() == Some(&pem_body(pem)) => {}
            Value::String(_) => {
                return Err(format!(
                    "expected the backend to see the given client certificate, got {} certificate(s) that differ",
                    presented.len()
                ));
            }
            other => {
                return Err(format!(
                    "client_cert_seen_by_backend must be a bool or a PEM string, got {other}"
                ));
            }
        }
    }
    Ok(())
}

/// The base64 body of a PEM certificate, whatever its line breaks.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).flat_map(|l| l.trim().chars()).collect()
}

fn redirect_matches(
    want: &Value,
    request_path: &str,
    request_scheme: &str,
    resp: &Response,
) -> Result<(), String> {
    if !(300..400).contains(&resp.status) {
        return Err(format!("expected a redirect, got status {}", resp.status));
    }
    let location = resp.header("location").ok_or("expected a Location header, got none")?;
    let (scheme, rest) = match location.split_once("://") {
        Some((s, r)) => (s.to_owned(), r.to_owned()),
        None => (request_scheme.to_owned(), location.clone()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_owned(), rest[i..].to_owned()),
        None => (rest.clone(), String::new()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h.to_owned(), p.to_owned()),
        _ => (authority.clone(), String::new()),
    };
    let want_scheme = want.get("scheme").and_then(Value::as_str).unwrap_or(request_scheme);
    if scheme != want_scheme {
        return Err(format!("expected redirect scheme {want_scheme}, got {location}"));
    }
    if let Some(h) = want.get("host").and_then(Value::as_str)
        && host != h
    {
        return Err(format!("expected redirect host {h}, got {location}"));
    }
    match want.get("port") {
        Some(p) => {
            let p = p
                .as_u64()
                .map(|p| p.to_string())
                .or_else(|| p.as_str().map(str::to_owned))
                .unwrap_or_default();
            if port != p {
                return Err(format!("expected redirect port {p}, got {location}"));
            }
        }
        None => {
            let default = if want_scheme == "https" { "443" } else { "80" };
            if !(port.is_empty() || port == default) {
                return Err(format!(
                    "expected no port or {default} in the redirect, got {location}"
                ));
            }
        }
    }
    let want_path = want.get("path").and_then(Value::as_str).unwrap_or(request_path);
    if path != want_path {
        return Err(format!("expected redirect path {want_path}, got {location}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_unknown_expectation_field_is_named_not_ignored() {
        assert_eq!(unknown_field(&json!({"status": 200, "backend": "b", "note": "x"})), None);
        assert_eq!(
            unknown_field(&json!({"status": 200, "trailers_seen": {}})),
            Some("trailers_seen")
        );
        assert_eq!(unknown_field(&json!({"grpc_code": 0})), None, "known, reported as unchecked");
    }

    #[test]
    fn backend_tls_fields_are_checked_against_the_echo_tls_block() {
        let reply = |tls: Value| Response {
            status: 200,
            headers: vec![],
            body: serde_json::to_vec(&json!({"path": "/", "pod": "b-0", "tls": tls})).unwrap(),
        };
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\nAAAA\n-----END CERTIFICATE-----\n";
        let tls = reply(json!({"serverName": "abc.example.com", "peerCertificates": [pem]}));
        let ok = |expect: Value, resp: &Response| response(&expect, "/", "https", resp);
        assert_eq!(
            ok(json!({"status": 200, "sni_seen_by_backend": "abc.example.com"}), &tls),
            Ok(())
        );
        assert!(ok(json!({"status": 200, "sni_seen_by_backend": "other"}), &tls).is_err());
        assert_eq!(ok(json!({"status": 200, "client_cert_seen_by_backend": true}), &tls), Ok(()));
        let same = "-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----";
        assert_eq!(ok(json!({"status": 200, "client_cert_seen_by_backend": same}), &tls), Ok(()));
        assert!(ok(json!({"status": 200, "client_cert_seen_by_backend": false}), &tls).is_err());
        // A plain backend connection saw no SNI and no certificate.
        let plain = Response {
            status: 200,
            headers: vec![],
            body: serde_json::to_vec(&json!({"path": "/", "pod": "b-0"})).unwrap(),
        };
        let e = ok(json!({"status": 200, "sni_seen_by_backend": "abc.example.com"}), &plain);
        assert!(e.unwrap_err().contains("plain HTTP"));
        assert_eq!(
            ok(json!({"status": 200, "client_cert_seen_by_backend": false}), &plain),
            Ok(())
        );
        assert!(ok(json!({"status": 200, "client_cert_seen_by_backend": 3}), &plain).is_err());
    }
}
