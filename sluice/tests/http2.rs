//! HTTP/2 from clients, end to end: h2 over TLS (ALPN) and h2c with prior knowledge, with real
//! clients (curl, Python's h2 package for hostile frame sequences), through the same exchange
//! as HTTP/1.

#![allow(clippy::unwrap_used, reason = "test code: a failure is the report")]

mod common;

use std::process::{Command, Output};

use common::pki::Ca;
use common::*;

fn curl(args: &[&str], url: &str) -> Output {
    Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).arg(url).output().unwrap()
}

/// A plain Gateway on a free port with one route to an echo backend.
fn plain_site() -> (Env, u16) {
    let mut env = Env::new("h2c");
    let a = env.echo("default", "svc-a", "svc-a-0");
    let port = free_port();
    env.write("gateway.yaml", &gateway(port));
    env.write("svc.yaml", &service("default", "svc-a", &[a]));
    env.write("route.yaml", &route("a", None, "svc-a"));
    env.start(port, &[]);
    (env, port)
}

#[test]
fn h2c_with_prior_knowledge_is_served_through_the_exchange() {
    let (env, port) = plain_site();
    let url = format!("http://127.0.0.1:{port}/some/path?q=1");
    let out = curl(&["--http2-prior-knowledge", "-i", "-H", "X-Test: one", "-H", "Cookie: a=1", "-H", "Cookie: b=2"], &url);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), env.log("lb"));
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["path"], "/some/path?q=1");
    assert_eq!(json["headers"]["X-Test"][0], "one");
    assert_eq!(json["headers"]["Cookie"][0], "a=1; b=2", "{json}");
    assert_eq!(json["headers"]["X-Forwarded-Proto"][0], "http");
    // HTTP/1.1 on the same port still works.
    let out = curl(&["-i"], &url);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 200"));
}
