//! The admin listener: a small HTTP/1.1 server on a thread of its own (never a request core,
//! never a Gateway port; loopback by default) answering `/metrics`, `/ready`, `/config` and
//! `/explain`.
//!
//! One connection at a time, each bounded (8 KiB of head, 2 s to send it, `Connection:
//! close`): it is for a scraper and an operator, and nothing it does can slow a core — the
//! cores' counters are read with plain loads, the table is the immutable one they serve.
//!
//! The address it bound is written to `<segment>.admin` (so `--admin 127.0.0.1:0` can be
//! found). When the address is taken (another lb still draining during an upgrade), it is
//! retried every second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::metrics::{Exposition, Registry, render};

mod config;

/// Largest request head the admin listener reads.
const MAX_HEAD: usize = 8 * 1024;

/// What the admin listener serves from.
#[derive(Debug)]
pub(crate) struct Admin {
    pub exposition: Exposition,
    pub registry: Arc<Registry>,
    pub segment: PathBuf,
    pub draining: Arc<AtomicBool>,
    /// The table the cores were last handed.
    #[allow(clippy::disallowed_types, reason = "the admin and table threads only")]
    pub served: Arc<std::sync::Mutex<Option<Arc<table::Router>>>>,
}

/// Where the admin address of the lb serving `segment` is written.
pub fn address_path(segment: &Path) -> PathBuf {
    let mut p = segment.as_os_str().to_owned();
    p.push(".admin");
    PathBuf::from(p)
}

/// Starts the admin thread.
pub(crate) fn spawn(addr: SocketAddr, admin: Admin) -> std::io::Result<()> {
    std::thread::Builder::new().name("lb-admin".into()).spawn(move || serve(addr, &admin))?;
    Ok(())
}

fn serve(addr: SocketAddr, admin: &Admin) {
    let mut logged = false;
    let listener = loop {
        match TcpListener::bind(addr) {
            Ok(l) => break l,
            Err(e) => {
                if !logged {
                    warn!(%addr, "admin listener: {e}; retrying every second");
                    logged = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let file = address_path(&admin.segment);
    if let Err(e) = std::fs::write(&file, format!("{bound}\n")) {
        warn!(file = %file.display(), "cannot record the admin address: {e}");
    }
    info!(%bound, "admin listener: /metrics /ready /config /explain");
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if let Err(e) = answer(stream, admin) {
                    debug!("admin request: {e}");
                }
            }
            Err(e) => {
                debug!("admin accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A parsed admin request.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    openmetrics: bool,
}

fn answer(mut stream: TcpStream, admin: &Admin) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    let end = loop {
        if let Some(i) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if len == buf.len() {
            return respond(&mut stream, 431, "text/plain", b"request head too large\n", false);
        }
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return respond(&mut stream, 400, "text/plain", b"not UTF-8\n", false);
    };
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    let req = Request { method, path, query, openmetrics };
    route(&mut stream, admin, &req)
}

fn route(stream: &mut TcpStream, admin: &Admin, req: &Request<'_>) -> std::io::Result<()> {
    let head = req.method == "HEAD";
    if req.method != "GET" && !head {
        return respond(stream, 405, "text/plain", b"GET or HEAD only\n", head);
    }
    match req.path {
        "/metrics" => {
            let body = render(&admin.exposition, req.openmetrics);
            let content_type = if req.openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            respond(stream, 200, content_type, body.as_bytes(), head)
        }
        "/ready" => match readiness(admin) {
            Ok(()) => respond(stream, 200, "text/plain", b"ready\n", head),
            Err(why) => respond(stream, 503, "text/plain", format!("{why}\n").as_bytes(), head),
        },
        "/config" => {
            let served = admin.served.lock().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone());
            let body = config::dump(served.as_deref(), &admin.registry, req.query);
            respond(stream, 200, "application/json", body.as_bytes(), head)
        }
        "/explain" => {
            let served = admin.served.lock().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone());
            let Some(router) = served else {
                return respond(stream, 503, "text/plain", b"no table served yet\n", head);
            };
            match explain_query(req.query).and_then(|(q, text)| {
                let doc = crate::explain::explain(&router, &q)?;
                Ok(if text {
                    (crate::explain::to_text(&doc), "text/plain; charset=utf-8")
                } else {
                    (format!("{doc:#}\n"), "application/json")
                })
            }) {
                Ok((body, content_type)) => respond(stream, 200, content_type, body.as_bytes(), head),
                Err(e) => respond(stream, 400, "text/plain", format!("{e}\n").as_bytes(), head),
            }
        }
        "/" => respond(
            stream,
            200,
            "text/plain",
            b"sluice lb admin: /metrics (Prometheus text, OpenMetrics on Accept), /ready, /config, /explain?method=GET&url=https://host/path&header=Name:%20value\n",
            head,
        ),
        _ => respond(stream, 404, "text/plain", b"not found\n", head),
    }
}

/// `/explain`'s parameters: `url` (required), `method`, `header` (repeatable, `Name: value`),
/// `sni`, `address`, `format=text`.
fn explain_query(query: &str) -> Result<(crate::explain::Question, bool), String> {
    let mut q = crate::explain::Question::default();
    let mut text = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)?;
        match name {
            "url" => q.url = value,
            "method" => q.method = value,
            "header" => {
                let (n, v) = value.split_once(':').ok_or("header=Name:value")?;
                q.headers.push((n.trim().to_owned(), v.trim().to_owned()));
            }
            "sni" => q.sni = Some(value),
            "address" => q.local = Some(value.parse().map_err(|e| format!("address: {e}"))?),
            "format" => text = value == "text",
            _ => return Err(format!("unknown parameter {name:?}")),
        }
    }
    if q.url.is_empty() {
        return Err("url=… is required (http://host/path or https://…)".into());
    }
    Ok((q, text))
}

/// Decodes `%XX` and `+` (a form-encoded query value).
fn percent_decode(v: &str) -> Result<String, String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte =
                    hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("bad %-escape")?;
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8".to_owned())
}

/// Ready: every core serves a table and lb is not draining.
fn readiness(admin: &Admin) -> Result<(), String> {
    if admin.draining.load(Ordering::Relaxed) {
        return Err("draining".into());
    }
    let waiting: Vec<String> = admin
        .registry
        .cores
        .iter()
        .enumerate()
        .filter(|(_, c)| c.generation.get() == 0)
        .map(|(i, _)| i.to_string())
        .collect();
    if !waiting.is_empty() {
        return Err(format!("no table served yet on core(s) {}", waiting.join(",")));
    }
    Ok(())
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    stream.write_all(&out)?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Read what the client still sends (a pipelined request) so closing does not reset.
    let mut sink = [0u8; 512];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}
