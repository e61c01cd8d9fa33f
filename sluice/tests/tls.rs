//! TLS termination end to end with real clients (curl, `openssl s_client`, Python's `ssl`):
//! certificates chosen by SNI, 421 across listeners, ALPN, versions, resumption across cores,
//! plain HTTP to an HTTPS port, rotation under load, and a handshake flood.

#![allow(clippy::unwrap_used, reason = "test code: a failure is the report")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::pki::{Ca, Leaf, secret};
use common::*;

/// An HTTPS Gateway on `port`: listener `default` (no hostname, certificate `site`) and
/// listener `second` (second.example.org, certificate `second`); a route on each.
struct Site {
    env: Env,
    port: u16,
    ca: PathBuf,
    ca_pki: Ca,
}

fn https_gateway(port: u16, listeners: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: sluice}}\nspec: {{controllerName: sluice.dev/gateway-controller}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: sluice\n  listeners:\n{}",
        listeners.replace("PORT", &port.to_string())
    )
}

const LISTENERS: &str = "  - {name: default, protocol: HTTPS, port: PORT, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{name: site}]}}\n  - {name: second, protocol: HTTPS, port: PORT, hostname: second.example.org, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{name: second}]}}\n";

fn site(lb_args: &[&str]) -> Site {
    let mut env = Env::new("tls");
    let a = env.echo("default", "svc-a", "svc-a-0");
    let b = env.echo("default", "svc-b", "svc-b-0");
    let ca_pki = Ca::new("Sluice test CA");
    let ca = ca_pki.write(&env.dir, "ca.pem");
    let port = free_port();
    env.write("gateway.yaml", &https_gateway(port, LISTENERS));
    env.write(
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            secret("default", "site", &ca_pki.leaf(&["example.org", "*.wild.org"])),
            secret("default", "second", &ca_pki.leaf(&["second.example.org"]))
        ),
    );
    env.write(
        "svc.yaml",
        &format!("{}---\n{}", service("default", "svc-a", &[a]), service("default", "svc-b", &[b])),
    );
    env.write(
        "routes.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: a}\nspec:\n  parentRefs: [{name: gw, sectionName: default}]\n  rules:\n  - backendRefs: [{name: svc-a, port: 80}]\n  - matches: [{path: {value: /to-https}}]\n    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: b}\nspec:\n  parentRefs: [{name: gw, sectionName: second}]\n  rules:\n  - backendRefs: [{name: svc-b, port: 80}]\n",
    );
    env.start(port, lb_args);
    Site { env, port, ca, ca_pki }
}

fn curl(site: &Site, host: &str, path: &str, extra: &[&str]) -> Output {
    let url = format!("https://{host}:{}{path}", site.port);
    let resolve = format!("{host}:{}:127.0.0.1", site.port);
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve", &resolve, "--cacert"])
        .arg(&site.ca)
        .args(extra)
        .arg(&url)
        .output()
        .unwrap()
}

/// Runs a Python program with `ssl`; its stdout.
fn python(program: &str, args: &[&str]) -> String {
    let out = Command::new("python3").arg("-c").arg(program).args(args).output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn openssl(port: u16, args: &[&str]) -> String {
    let mut child = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Route `a`: everything on Gateway `gw` to svc-a.
const ROUTE_A: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: a}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: svc-a, port: 80}]\n";

/// One request over Python's `ssl` with this SNI and Host; prints the status line.
const ONE_REQUEST: &str = r#"
import socket, ssl, sys
port, ca, sni, host = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname=sni) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
print(data.split(b"\r\n", 1)[0].decode())
"#;

#[test]
fn curl_gets_https_with_the_certificate_its_sni_selects() {
    let site = site(&[]);
    let out = curl(&site, "example.org", "/hello", &["-i"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        site.env.log("lb")
    );
    // curl offers h2 first over TLS; HTTP/1.1 is checked with --http1.1 below.
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["pod"], "svc-a-0");
    assert_eq!(json["headers"]["X-Forwarded-Proto"][0], "https", "{json}");
    assert!(json["headers"]["Forwarded"][0].as_str().unwrap().ends_with("proto=https"), "{json}");
    let out = curl(&site, "example.org", "/hello", &["-i", "--http1.1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The other listener's hostname, its own certificate and routes.
    let out = curl(&site, "second.example.org", "/", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pod"], "svc-b-0");
    // A wildcard name of the default listener's certificate.
    let out = curl(&site, "a.wild.org", "/", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // openssl sees the certificate for each server name.
    let second = openssl(site.port, &["-servername", "second.example.org"]);
    assert!(
        second.contains("CN = second.example.org") || second.contains("CN=second.example.org"),
        "{second}"
    );
    let first = openssl(site.port, &["-servername", "example.org"]);
    assert!(first.contains("CN = example.org") || first.contains("CN=example.org"), "{first}");
    // No server name: the listener without hostname.
    let none = openssl(site.port, &["-noservername"]);
    assert!(none.contains("CN = example.org") || none.contains("CN=example.org"), "{none}");
    // lb's /config shows the certificates by name and count, never a key or any DER blob.
    let (status, config) = site.env.admin_get("/config", "");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&config).unwrap();
    let certs = doc["table"]["certificates"].as_array().unwrap();
    assert!(!certs.is_empty(), "{config}");
    for c in certs {
        assert!(c.get("key").is_none(), "a key in /config: {c}");
        assert!(c["chain"].as_u64().unwrap() >= 1, "{c}");
        assert!(c["name"].as_str().unwrap().starts_with("default/"), "{c}");
    }
    fn longest_array(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => {
                a.iter().map(longest_array).max().unwrap_or(0).max(a.len())
            }
            serde_json::Value::Object(o) => o.values().map(longest_array).max().unwrap_or(0),
            _ => 0,
        }
    }
    assert!(longest_array(&doc) < 64, "a byte blob serialised in /config");
    assert!(!config.contains("PRIVATE KEY"));
}

#[test]
fn host_of_another_listener_is_misdirected_and_redirects_know_https() {
    let site = site(&[]);
    let port = site.port.to_string();
    let ca = site.ca.to_str().unwrap();
    let status = |sni: &str, host: &str| python(ONE_REQUEST, &[&port, ca, sni, host]);
    assert!(status("example.org", "example.org").starts_with("HTTP/1.1 200"));
    assert!(status("second.example.org", "second.example.org").starts_with("HTTP/1.1 200"));
    // Host of the second listener through the default listener's certificate, and back.
    assert!(status("example.org", "second.example.org").starts_with("HTTP/1.1 421"));
    assert!(status("second.example.org", "example.org").starts_with("HTTP/1.1 421"));
    // A host no listener names belongs to the default listener: no 421 there.
    assert!(status("example.org", "unknown.example.org").starts_with("HTTP/1.1 200"));
    assert!(status("second.example.org", "unknown.example.org").starts_with("HTTP/1.1 421"));
    // A redirect to https keeps the default port out of Location when it is 443, and says
    // https with this listener's port otherwise.
    let out = curl(&site, "example.org", "/to-https", &["-i"]);
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.contains("location: https://example.org/to-https"), "{text}");
}

#[test]
fn alpn_versions_and_alerts() {
    let site = site(&[]);
    // h2 preferred, http/1.1 kept; a protocol we do not speak is refused (alert 120).
    let both = openssl(site.port, &["-servername", "example.org", "-alpn", "http/1.1,h2"]);
    assert!(both.contains("ALPN protocol: h2"), "{both}");
    let h1_only = openssl(site.port, &["-servername", "example.org", "-alpn", "http/1.1"]);
    assert!(h1_only.contains("ALPN protocol: http/1.1"), "{h1_only}");
    let other = openssl(site.port, &["-servername", "example.org", "-alpn", "spdy/3"]);
    assert!(
        other.contains("no application protocol") || other.contains("alert number 120"),
        "{other}"
    );
    let tls12 = openssl(site.port, &["-servername", "example.org", "-tls1_2"]);
    assert!(tls12.contains("Protocol  : TLSv1.2") || tls12.contains("TLSv1.2"), "{tls12}");
    assert!(tls12.contains("ECDHE"), "only ECDHE suites: {tls12}");
    let tls13 = openssl(site.port, &["-servername", "example.org", "-tls1_3"]);
    assert!(tls13.contains("TLSv1.3"), "{tls13}");
    let old = openssl(
        site.port,
        &["-servername", "example.org", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
    );
    assert!(
        old.contains("alert")
            || old.contains("no protocols available")
            || old.contains("wrong version"),
        "TLS 1.1 must fail: {old}"
    );
    // A non-AEAD TLS 1.2 suite is refused.
    let cbc = openssl(
        site.port,
        &["-servername", "example.org", "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"],
    );
    assert!(cbc.contains("alert") || cbc.contains("handshake failure"), "CBC must fail: {cbc}");
    // Failed handshakes are logged at debug level only.
    assert!(!site.env.log("lb").contains("handshake failed"), "{}", site.env.log("lb"));
}

#[test]
fn no_server_name_without_a_default_listener_fails_the_handshake() {
    let mut env = Env::new("tls-nodefault");
    let a = env.echo("default", "svc-a", "svc-a-0");
    let ca = Ca::new("Sluice test CA");
    let port = free_port();
    env.write(
        "gateway.yaml",
        &https_gateway(port, "  - {name: only, protocol: HTTPS, port: PORT, hostname: only.example.org, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{name: only}]}}\n"),
    );
    env.write("secrets.yaml", &secret("default", "only", &ca.leaf(&["only.example.org"])));
    env.write("svc.yaml", &service("default", "svc-a", &[a]));
    env.write("route.yaml", ROUTE_A);
    env.start(port, &[]);
    let ok = openssl(port, &["-servername", "only.example.org"]);
    assert!(ok.contains("CN = only.example.org") || ok.contains("CN=only.example.org"), "{ok}");
    for args in [&["-noservername"][..], &["-servername", "other.example.org"][..]] {
        let out = openssl(port, args);
        assert!(out.contains("alert"), "{args:?}: {out}");
        assert!(!out.contains("CN = only.example.org"), "{args:?}: {out}");
    }
}

#[test]
fn plain_http_to_an_https_port_gets_a_400_that_says_so() {
    let site = site(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", site.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("HTTPS"), "{answer}");
    // Random bytes get a clean close (an alert at most), never a hang.
    let mut s = TcpStream::connect(("127.0.0.1", site.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5]).unwrap();
    s.write_all(&[0u8; 2000]).unwrap();
    let mut rest = Vec::new();
    let r = s.read_to_end(&mut rest);
    assert!(
        r.is_ok() || matches!(r.as_ref().unwrap_err().kind(), std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    assert!(rest.len() < 64, "at most an alert: {rest:?}");
}

/// Resumes one session many times (new connections spread over lb's cores by SO_REUSEPORT);
/// prints "reused" per connection.
const RESUME: &str = r#"
import socket, ssl, sys
port, ca, version = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
if version == "1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
session = None
for i in range(12):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="example.org", session=session) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data[:100]
            if i > 0:
                print("reused" if s.session_reused else "full")
            session = s.session
"#;

#[test]
fn sessions_resume_on_every_core_with_tls13_and_tls12_tickets() {
    let site = site(&["--cores", "all"]);
    let port = site.port.to_string();
    let ca = site.ca.to_str().unwrap();
    for version in ["1.3", "1.2"] {
        let out = python(RESUME, &[&port, ca, version]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 11, "{out}");
        assert!(lines.iter().all(|l| *l == "reused"), "TLS {version}: {out}");
    }
}

#[test]
fn certificate_rotation_under_load_fails_no_request() {
    let site = site(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // A keep-alive connection made before the rotation keeps working; new connections
    // (curl, one per request) see whichever certificate is current, and both are trusted.
    let loaders: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            let (port, ca) = (site.port, site.ca.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let out = Command::new("curl")
                        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
                        .args(["--resolve", &format!("example.org:{port}:127.0.0.1"), "--cacert"])
                        .arg(&ca)
                        .arg(format!("https://example.org:{port}/"))
                        .output()
                        .unwrap();
                    if out.stdout == b"200" {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "failed: {} {}",
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A keep-alive connection opened before the rotation.
    let mut established = keepalive_client(&site);
    assert_eq!(ask(&mut established), "200");
    let before = openssl(site.port, &["-servername", "example.org", "-showcerts"]);
    let generation = site.env.applied();
    let rotated = site.ca_pki.leaf(&["example.org", "*.wild.org", "rotated.example.org"]);
    site.env.write(
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            secret("default", "site", &rotated),
            secret("default", "second", &site.ca_pki.leaf(&["second.example.org"]))
        ),
    );
    site.env.wait_applied(generation + 1);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    let after = openssl(site.port, &["-servername", "example.org", "-showcerts"]);
    let leaf_of = |text: &str| -> String {
        let start = text.find("-----BEGIN CERTIFICATE-----").unwrap();
        let end = text[start..].find("-----END CERTIFICATE-----").unwrap();
        text[start..start + end].to_owned()
    };
    assert_ne!(leaf_of(&before), leaf_of(&after), "new handshakes use the new certificate");
    assert_eq!(ask(&mut established), "200", "an established connection keeps going");
    let _ = established.kill();
    let rotated_body: String = rotated.cert.lines().filter(|l| !l.starts_with("-----")).collect();
    let after_body: String = leaf_of(&after).lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(after_body, rotated_body);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{} ok", ok.load(Ordering::Relaxed));
    assert!(ok.load(Ordering::Relaxed) > 10);
}

#[test]
fn a_handshake_flood_leaves_established_and_plaintext_clients_served() {
    let mut site = site(&["--cores", "0", "--max-handshakes", "16", "--handshake-timeout", "2s"]);
    // A plaintext Gateway beside it.
    let plain_port = free_port();
    let echo = site.env.echo("default", "svc-p", "svc-p-0");
    site.env.write("plain-svc.yaml", &service("default", "svc-p", &[echo]));
    site.env.write(
        "plain.yaml",
        &format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: plain, namespace: default}}\nspec:\n  gatewayClassName: sluice\n  listeners:\n  - {{name: http, protocol: HTTP, port: {plain_port}, allowedRoutes: {{namespaces: {{from: All}}}}}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: p}}\nspec:\n  parentRefs: [{{name: plain}}]\n  rules:\n  - backendRefs: [{{name: svc-p, port: 80}}]\n"),
    );
    wait_listening(format!("127.0.0.1:{plain_port}").parse().unwrap());
    // An established TLS keep-alive client (Python), asked to make a request per line.
    let mut established = keepalive_client(&site);
    assert_eq!(ask(&mut established), "200");
    // The flood: connections that start a handshake (a partial ClientHello) and stall, far
    // more than the cap.
    let flood: Vec<TcpStream> = (0..200)
        .filter_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", site.port)).ok()?;
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]).ok()?;
            Some(s)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        assert_eq!(ask(&mut established), "200", "established TLS client during the flood");
        let r = get(plain_port, "x", "/", &[]).unwrap();
        assert_eq!(r.status, 200, "plaintext client during the flood");
    }
    // The stalled handshakes time out (2 s); new TLS clients are served again.
    drop(flood);
    let start = Instant::now();
    loop {
        let out = curl(&site, "example.org", "/", &["-o", "/dev/null", "-w", "%{http_code}"]);
        if out.stdout == b"200" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "TLS never recovered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ask(&mut established), "200");
    let _ = established.kill();
}

/// Starts a [`KEEPALIVE`] client on `site` (one TLS connection, kept open).
fn keepalive_client(site: &Site) -> std::process::Child {
    Command::new("python3")
        .arg("-c")
        .arg(KEEPALIVE)
        .args([&site.port.to_string(), site.ca.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Asks a [`KEEPALIVE`] client for one request; its status code.
fn ask(child: &mut std::process::Child) -> String {
    let stdin = child.stdin.as_mut().unwrap();
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    let mut line = Vec::new();
    let out = child.stdout.as_mut().unwrap();
    let mut byte = [0u8];
    while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// A TLS keep-alive client: one request per line on stdin, prints each status code.
const KEEPALIVE: &str = r#"
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="example.org")
f = s.makefile("rb")
for _ in sys.stdin:
    s.sendall(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n")
    status = f.readline().split()[1].decode()
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    f.read(length)
    print(status, flush=True)
"#;

#[test]
fn client_certificates_are_verified_and_passed_on_in_xfcc_or_the_fields_a_rule_chooses() {
    let mut env = Env::new("tls-mtls");
    let a = env.echo("default", "svc-a", "svc-a-0");
    let server_ca = Ca::new("Sluice server CA");
    let ca_file = server_ca.write(&env.dir, "ca.pem");
    let client_ca = Ca::new("Sluice client CA");
    let other_ca = Ca::new("Some other CA");
    let (strict, fallback) = (free_port(), free_port());
    let indent = |pem: &str| -> String { pem.lines().map(|l| format!("    {l}\n")).collect() };
    env.write(
        "gateway.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: sluice}}\nspec: {{controllerName: sluice.dev/gateway-controller}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: client-ca, namespace: default}}\ndata:\n  ca.crt: |\n{}---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: sluice\n  tls:\n    frontend:\n      default:\n        validation:\n          caCertificateRefs: [{{group: '', kind: ConfigMap, name: client-ca}}]\n      perPort:\n      - port: {fallback}\n        tls:\n          validation:\n            mode: AllowInsecureFallback\n            caCertificateRefs: [{{group: '', kind: ConfigMap, name: client-ca}}]\n  listeners:\n  - {{name: strict, protocol: HTTPS, port: {strict}, allowedRoutes: {{namespaces: {{from: All}}}}, tls: {{certificateRefs: [{{name: site}}]}}}}\n  - {{name: fallback, protocol: HTTPS, port: {fallback}, allowedRoutes: {{namespaces: {{from: All}}}}, tls: {{certificateRefs: [{{name: site}}]}}}}\n",
            indent(&client_ca.pem)
        ),
    );
    env.write("secrets.yaml", &secret("default", "site", &server_ca.leaf(&["example.org"])));
    env.write("svc.yaml", &service("default", "svc-a", &[a]));
    // Rule /chosen picks its own fields (two ClientCertificateHeader filters) instead of XFCC.
    env.write("route.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: a}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: svc-a, port: 80}]\n  - matches: [{path: {value: /chosen}}]\n    filters:\n    - {type: ExtensionRef, extensionRef: {group: gateway.sluice.dev, kind: ClientCertificateHeader, name: subject}}\n    - {type: ExtensionRef, extensionRef: {group: gateway.sluice.dev, kind: ClientCertificateHeader, name: rfc9440}}\n    backendRefs: [{name: svc-a, port: 80}]\n---\n\
         apiVersion: gateway.sluice.dev/v1alpha1\nkind: ClientCertificateHeader\nmetadata: {name: subject}\nspec: {header: X-Client-Subject, value: Subject}\n---\n\
         apiVersion: gateway.sluice.dev/v1alpha1\nkind: ClientCertificateHeader\nmetadata: {name: rfc9440}\nspec: {header: Client-Cert, value: Certificate}\n");
    env.start(strict, &[]);
    wait_listening(format!("127.0.0.1:{fallback}").parse().unwrap());
    let write_pair = |name: &str, leaf: &Leaf| -> (PathBuf, PathBuf) {
        let (c, k) = (env.dir.join(format!("{name}.crt")), env.dir.join(format!("{name}.key")));
        std::fs::write(&c, &leaf.cert).unwrap();
        std::fs::write(&k, &leaf.key).unwrap();
        (c, k)
    };
    let good = write_pair("good", &client_ca.leaf(&["alice.example"]));
    let bad = write_pair("bad", &other_ca.leaf(&["mallory.example"]));
    let request_at = |port: u16, path: &str, cert: Option<&(PathBuf, PathBuf)>| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &format!("example.org:{port}:127.0.0.1"),
            "--cacert",
        ])
        .arg(&ca_file)
        // A client that tries to claim a certificate it does not have.
        .args(["-H", "X-Forwarded-Client-Cert: Hash=forged;Subject=\"CN=admin\""])
        .args(["-H", "X-Client-Subject: CN=admin", "-H", "Client-Cert: :Zm9yZ2Vk:"]);
        if let Some((c, k)) = cert {
            cmd.arg("--cert").arg(c).arg("--key").arg(k);
        }
        let out = cmd.arg(format!("https://example.org:{port}{path}")).output().unwrap();
        (
            out.status.success(),
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .unwrap_or(serde_json::Value::Null),
        )
    };
    let request = |port: u16, cert: Option<&(PathBuf, PathBuf)>| request_at(port, "/", cert);
    let xfcc = |json: &serde_json::Value| {
        json["headers"]["X-Forwarded-Client-Cert"][0].as_str().map(str::to_owned)
    };
    // Strict: a certificate from the CA is required; its identity reaches the backend.
    let (ok, json) = request(strict, Some(&good));
    assert!(ok, "{}", env.log("lb"));
    let field = xfcc(&json).expect("X-Forwarded-Client-Cert");
    assert!(
        field.starts_with("Hash=") && field.contains("Subject=\"CN=alice.example\""),
        "{field}"
    );
    assert!(!field.contains("forged"), "{field}");
    assert!(!request(strict, None).0, "no client certificate must fail on a strict port");
    assert!(!request(strict, Some(&bad)).0, "a certificate from another CA must fail");
    // Insecure fallback: everyone is served; only a verified certificate is passed on, and the
    // client's own field never is.
    let (ok, json) = request(fallback, Some(&good));
    assert!(ok);
    assert!(xfcc(&json).is_some_and(|f| f.contains("CN=alice.example")), "{json}");
    for cert in [None, Some(&bad)] {
        let (ok, json) = request(fallback, cert);
        assert!(ok, "fallback serves clients without a valid certificate");
        assert_eq!(xfcc(&json), None, "{json}");
    }
    let status = env.status_file("gateway", "default", "gw");
    assert!(status.contains("InsecureFrontendValidationMode"), "{status}");
    // The rule's own fields: the subject, and the certificate as RFC 9440 says (the PEM body
    // is the DER in base64); no XFCC there, and never the client's values.
    let header = |json: &serde_json::Value, name: &str| {
        json["headers"][name]
            .as_array()
            .map(|v| v.iter().map(|x| x.to_string()).collect::<Vec<_>>())
    };
    let (ok, json) = request_at(strict, "/chosen", Some(&good));
    assert!(ok, "{}", env.log("lb"));
    assert_eq!(
        header(&json, "X-Client-Subject"),
        Some(vec!["\"CN=alice.example\"".into()]),
        "{json}"
    );
    let pem = std::fs::read_to_string(&good.0).unwrap();
    let der_base64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(header(&json, "Client-Cert"), Some(vec![format!("\":{der_base64}:\"")]), "{json}");
    assert_eq!(xfcc(&json), None, "{json}");
    for cert in [None, Some(&bad)] {
        let (ok, json) = request_at(fallback, "/chosen", cert);
        assert!(ok);
        assert_eq!(header(&json, "X-Client-Subject"), None, "{json}");
        assert_eq!(header(&json, "Client-Cert"), None, "{json}");
    }
}

#[test]
fn rsa_and_ecdsa_certificates_for_one_name_are_chosen_by_the_clients_signature_schemes() {
    let mut env = Env::new("tls-rsa-ecdsa");
    let a = env.echo("default", "svc-a", "svc-a-0");
    let ca = Ca::new("Sluice test CA");
    let ecdsa = ca.leaf(&["dual.example"]);
    let rsa_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let rsa = ca.sign(&["dual.example"], &rsa_key);
    let port = free_port();
    env.write(
        "gateway.yaml",
        &https_gateway(port, "  - {name: dual, protocol: HTTPS, port: PORT, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{name: rsa}, {name: ecdsa}]}}\n"),
    );
    env.write(
        "secrets.yaml",
        &format!("{}---\n{}", secret("default", "rsa", &rsa), secret("default", "ecdsa", &ecdsa)),
    );
    env.write("svc.yaml", &service("default", "svc-a", &[a]));
    env.write("route.yaml", ROUTE_A);
    env.start(port, &[]);
    // A client that can verify both gets ECDSA (listed second, preferred: cheaper handshakes).
    let both = openssl(port, &["-servername", "dual.example"]);
    assert!(both.contains("Server public key is 256 bit"), "{both}");
    // Only RSA signatures: the RSA certificate.
    let rsa_only =
        openssl(port, &["-servername", "dual.example", "-sigalgs", "rsa_pss_rsae_sha256"]);
    assert!(rsa_only.contains("Server public key is 2048 bit"), "{rsa_only}");
    let ecdsa_only =
        openssl(port, &["-servername", "dual.example", "-sigalgs", "ecdsa_secp256r1_sha256"]);
    assert!(ecdsa_only.contains("Server public key is 256 bit"), "{ecdsa_only}");
}

#[test]
fn the_echo_backend_serves_https_and_reports_the_connection() {
    let env = Env::new("echo-tls");
    let ca = Ca::new("Sluice test CA");
    let leaf = ca.leaf(&["backend.example"]);
    let write_pair = |name: &str, leaf: &Leaf| -> (PathBuf, PathBuf) {
        let (c, k) = (env.dir.join(format!("{name}.crt")), env.dir.join(format!("{name}.key")));
        std::fs::write(&c, &leaf.cert).unwrap();
        std::fs::write(&k, &leaf.key).unwrap();
        (c, k)
    };
    let (crt, key) = write_pair("echo", &leaf);
    let ca_file = ca.write(&env.dir, "ca.pem");
    let client_ca = Ca::new("Sluice client CA");
    let client_ca_file = client_ca.write(&env.dir, "client-ca.pem");
    let client = write_pair("client", &client_ca.leaf(&["lb.example"]));
    let (plain, tls) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args(["echo", "--listen", &format!("127.0.0.1:{plain}"), "--pod", "echo-0"])
        .args(["--tls-listen", &format!("127.0.0.1:{tls}"), "--tls-cert"])
        .arg(&crt)
        .arg("--tls-key")
        .arg(&key)
        .arg("--tls-client-ca")
        .arg(&client_ca_file)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(format!("127.0.0.1:{tls}").parse().unwrap());
    let get = |cert: Option<&(PathBuf, PathBuf)>| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &format!("backend.example:{tls}:127.0.0.1"),
            "--cacert",
        ])
        .arg(&ca_file);
        if let Some((c, k)) = cert {
            cmd.arg("--cert").arg(c).arg("--key").arg(k);
        }
        cmd.arg(format!("https://backend.example:{tls}/x")).output().unwrap()
    };
    let (anonymous, with_cert) = (get(None), get(Some(&client)));
    let _ = child.kill();
    let _ = child.wait();
    assert!(anonymous.status.success(), "{}", String::from_utf8_lossy(&anonymous.stderr));
    let json: serde_json::Value = serde_json::from_slice(&anonymous.stdout).unwrap();
    assert_eq!(json["pod"], "echo-0");
    assert_eq!(json["path"], "/x");
    assert_eq!(json["tls"]["version"], "TLSv1.3", "{json}");
    assert_eq!(json["tls"]["serverName"], "backend.example", "{json}");
    assert_eq!(json["tls"]["negotiatedProtocol"], "http/1.1", "{json}");
    assert!(json["tls"]["cipherSuite"].as_str().unwrap().starts_with("TLS_AES_"), "{json}");
    assert!(json["tls"].get("peerCertificates").is_none(), "{json}");
    // A client certificate from the CA given: verified, and reported as the upstream echo does.
    assert!(with_cert.status.success(), "{}", String::from_utf8_lossy(&with_cert.stderr));
    let json: serde_json::Value = serde_json::from_slice(&with_cert.stdout).unwrap();
    let sent = std::fs::read_to_string(&client.0).unwrap();
    let reported = json["tls"]["peerCertificates"][0].as_str().unwrap_or_default();
    let body = |pem: &str| pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
    assert_eq!(body(reported), body(&sent), "{json}");
}

/// A chunked upload over TLS whose answer streams back while it goes on (echo's `/stream`,
/// in lock step): lb reads the client's records and writes its own on the same TLS
/// connection at once, each direction at its own pace.
#[test]
fn a_chunked_upload_over_tls_and_its_answer_stream_at_once() {
    let site = site(&[]);
    let config = site.ca_pki.client_config();
    let name = rustls::pki_types::ServerName::try_from("example.org").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", site.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let head = b"POST /stream HTTP/1.1\r\nHost: example.org\r\nTransfer-Encoding: chunked\r\n\r\n";
    let big = vec![b'z'; 100_000];
    let chunks: Vec<&[u8]> = vec![b"one", &big, b"three"];
    let raw = chunked_lock_step(&mut tls, head, &chunks, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n{}", site.env.log("lb")));
    assert!(raw.starts_with(b"HTTP/1.1 200 "), "{:?}", String::from_utf8_lossy(&raw[..64]));
}
