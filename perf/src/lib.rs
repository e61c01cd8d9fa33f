//! perf: Sluice's latency-benchmarking tools. `load` is an open/closed-loop HTTP/1.1 load
//! generator with coordinated-omission correction and hdrhistogram reports; `report` turns
//! outcomes into summaries, JSON and percentile-spectrum plots.
//!
//! It runs on the same io_uring runtime as lb (compio, one pinned thread per CPU), so the load
//! side is at least as cheap per request as the proxy under test.

pub mod compare;
pub mod load;
pub mod propagation;
pub mod report;
pub mod tls;

use std::net::{SocketAddr, ToSocketAddrs};

/// Splits `http://host:port/path` into the address, the Host value and the path.
pub fn parse_url(url: &str) -> Result<(SocketAddr, String, String, bool), String> {
    let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return Err(format!("{url}: only http:// and https:// URLs")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let default_port = if https { 443 } else { 80 };
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    Ok((addr, authority.to_owned(), path.to_owned(), https))
}

/// Encodes a request.
pub fn request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}
