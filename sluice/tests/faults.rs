//! Fault matrix: real lb and config-sync processes against faulty upstreams, hostile file
//! operations and careless manifests. Each test names the defect or risk it keeps fixed.

#![allow(clippy::unwrap_used, reason = "test code: a failure is the report")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

/// What a scripted upstream does with one request: the bytes to answer with at once, and
/// bytes to write unasked after a pause (the misbehaviour under test).
struct Answer {
    now: Vec<u8>,
    later: Option<(Duration, Vec<u8>)>,
}

/// A keep-alive HTTP/1.1 upstream on a loopback port whose answers come from `script`
/// (called with the request method and target; requests must have no body). Connections it
/// accepted are counted.
fn scripted_upstream(
    script: impl Fn(&str, &str) -> Answer + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let script = Arc::new(script);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            count.fetch_add(1, Ordering::Relaxed);
            let script = Arc::clone(&script);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let mut line = head.lines().next().unwrap_or("").split(' ');
                    let (method, target) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
                    let answer = script(method, target);
                    if conn.write_all(&answer.now).is_err() {
                        return;
                    }
                    if let Some((pause, bytes)) = answer.later {
                        std::thread::sleep(pause);
                        let _ = conn.write_all(&bytes);
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn ok(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// lb and config-sync in front of one upstream at `addr`, all requests routed to it.
fn proxy_to(name: &str, addr: SocketAddr, lb_args: &[&str]) -> (Env, u16) {
    let mut env = Env::new(name);
    let port = free_port();
    env.write("gateway.yaml", &gateway(port));
    env.write("svc.yaml", &service("default", "svc", &[addr]));
    env.write("route.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: svc, port: 80}]\n");
    env.config_sync();
    // One core: every request goes through the same pool.
    let mut args = vec!["--cores", "0"];
    args.extend_from_slice(lb_args);
    env.lb(&args);
    env.wait_applied(1);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    (env, port)
}

/// Defect: an upstream that writes a second, unasked response while its connection sits in
/// the pool. Before the fix the next client got that stray response, and every client after
/// it the previous client's answer.
#[test]
fn stray_bytes_on_an_idle_upstream_connection_never_reach_the_next_client() {
    let first = AtomicBool::new(true);
    let (addr, accepted) = scripted_upstream(move |_, target| Answer {
        now: ok(target),
        later: first
            .swap(false, Ordering::Relaxed)
            .then(|| (Duration::from_millis(300), ok("stray"))),
    });
    let (env, port) = proxy_to("stray", addr, &[]);
    assert_eq!(get(port, "h", "/c1", &[]).unwrap().body, b"/c1");
    std::thread::sleep(Duration::from_millis(600));
    for i in 2..=6 {
        let target = format!("/c{i}");
        let r = get(port, "h", &target, &[]).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            target,
            "client {i} got another exchange's response\n{}",
            env.log("lb")
        );
    }
    assert!(accepted.load(Ordering::Relaxed) >= 2, "the dirty connection was not reused");
}

/// Defect (HEAD variant): an app that writes a body after its HEAD response. The next,
/// unrelated request must not fail on those bytes.
#[test]
fn a_body_written_after_a_head_response_does_not_poison_the_pool() {
    let (addr, _) = scripted_upstream(|method, target| {
        if method == "HEAD" {
            Answer {
                now: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(),
                later: Some((Duration::from_millis(100), b"hello".to_vec())),
            }
        } else {
            Answer { now: ok(target), later: None }
        }
    });
    let (env, port) = proxy_to("head-body", addr, &[]);
    for round in 0..3 {
        let mut c = Client::connect(port).unwrap();
        let r = c.send(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(300));
        let r = get(port, "h", "/after", &[]).unwrap();
        assert_eq!(
            (r.status, &r.body[..]),
            (200, &b"/after"[..]),
            "round {round}\n{}",
            env.log("lb")
        );
    }
}

/// Risk: a response whose first chunk is malformed, before any byte went to the client,
/// gets the client a 502 (it used to get an empty reply).
#[test]
fn an_invalid_first_chunk_is_a_502() {
    let (addr, _) = scripted_upstream(|_, _| Answer {
        now: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
            .to_vec(),
        later: None,
    });
    let (_env, port) = proxy_to("bad-chunk", addr, &[]);
    let r = get(port, "h", "/", &[]).unwrap();
    assert_eq!(r.status, 502);
}
