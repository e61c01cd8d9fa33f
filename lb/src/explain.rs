//! `explain`: why a request goes where it goes. Given a method, a URL and fields, it runs the
//! request through the same code lb runs — the table's traced lookup
//! (`Router::route_traced`, the lookup lb uses with tracing compiled away) and
//! `exchange::decide` (every filter, backend selection, lb's refusals) — and reports each
//! step: the port and listener, the virtual hosts looked at, every candidate rule in
//! precedence order with the first condition it failed, the winning rule with its filters and
//! backends, and the verdict (the status lb answers itself, a redirect, or the Service it
//! forwards to). `sluice explain` asks it of a table or a manifests folder; lb's admin
//! listener answers `/explain` with it for the table it serves.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use serde_json::{Value, json};
use table::format::{
    ArchivedAction, ArchivedActionKind, ArchivedBackendTarget, ArchivedHeaderEdits,
    ArchivedHostIndex, ArchivedPathMatch, ArchivedPathRewrite, ArchivedRouteMatch,
    ArchivedValueMatch,
};
use table::lookup::{Failed, MAX_HOST, Trace, normalize_host};
use table::{ActionId, Headers, Router, ServiceId};

use crate::exchange::{self, Decision, Routed};
use crate::upstream::CoreTable;

/// A request to explain.
#[derive(Debug, Clone, Default)]
pub struct Question {
    /// Method (`GET`).
    pub method: String,
    /// `http://host[:port]/path?query` or `https://…`.
    pub url: String,
    /// Request fields, in order.
    pub headers: Vec<(String, String)>,
    /// The address the connection arrives on (which of a port's Gateway addresses); default:
    /// the first the table binds on that port.
    pub local: Option<IpAddr>,
    /// On `https`: the server name (SNI) the client sends; default: the URL's host.
    pub sni: Option<String>,
}

/// The request's fields as the lookup reads them.
struct Fields<'a>(&'a [(String, String)]);

impl Headers for Fields<'_> {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().as_bytes())
    }
}

/// What a traced lookup saw.
#[derive(Default)]
struct Steps {
    listener: Option<u32>,
    vhosts: Vec<u32>,
    candidates: Vec<(u32, Option<Failed>)>,
}

impl Trace for Steps {
    fn listener(&mut self, listener: Option<u32>) {
        self.listener = listener;
    }
    fn vhost(&mut self, vhost: u32) {
        self.vhosts.push(vhost);
    }
    fn candidate(&mut self, index: u32, failed: Option<Failed>) {
        self.candidates.push((index, failed));
    }
}

/// A URL's parts.
struct Url<'a> {
    scheme: &'static str,
    authority: &'a str,
    port: u16,
    path: &'a str,
    query: &'a str,
}

fn parse_url(url: &str) -> Result<Url<'_>, String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = url.strip_prefix("https://") {
        ("https", r)
    } else {
        return Err(format!("{url:?}: an http:// or https:// URL"));
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    if authority.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let explicit = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !p.contains(']') => {
            Some(p.parse::<u16>().map_err(|_| format!("{url:?}: port {p:?} is not a number"))?)
        }
        _ => None,
    };
    let port = explicit.unwrap_or(if scheme == "https" { 443 } else { 80 });
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Url { scheme, authority, port, path: if path.is_empty() { "/" } else { path }, query })
}

/// Explains `q` against `router`.
pub fn explain(router: &Arc<Router>, q: &Question) -> Result<Value, String> {
    let url = parse_url(&q.url)?;
    let method = if q.method.is_empty() { "GET" } else { q.method.as_str() };
    let t = router.table();
    let mut host_buf = [0u8; MAX_HOST];
    let host = normalize_host(url.authority.as_bytes(), &mut host_buf).unwrap_or(b"").to_vec();
    let host_text = String::from_utf8_lossy(&host).into_owned();
    let mut normalized = Vec::new();
    let changed = exchange::path::normalize_path(url.path.as_bytes(), &mut normalized);
    let path = if changed { normalized.as_slice() } else { url.path.as_bytes() };
    let mut doc = json!({
        "request": {
            "method": method,
            "url": q.url,
            "host": host_text,
            "port": url.port,
            "path": String::from_utf8_lossy(path),
            "query": url.query,
        },
        "generation": router.generation(),
    });
    // Which of the table's sockets the connection reaches.
    let local = q.local.or_else(|| {
        t.ports.iter().find(|p| p.port.to_native() == url.port).map(|p| {
            p.address
                .as_ref()
                .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), table::format::ArchivedAddress::ip)
        })
    });
    let Some((local, port)) = local.and_then(|ip| Some((ip, router.port(ip, url.port)?))) else {
        doc["verdict"] = json!({
            "action": "no listener",
            "detail": format!("no Gateway listener on port {}: the connection is refused", url.port),
        });
        return Ok(doc);
    };
    doc["port"] =
        json!({ "port": url.port, "address": local.to_string(), "tls": port.tls.is_some() });
    let fields = Fields(&q.headers);
    let lookup = table::Request {
        method: method.as_bytes(),
        path,
        query: url.query.as_bytes(),
        host: &host,
    };
    let mut steps = Steps::default();
    let mut scratch = router.scratch();
    let _ = router.route_traced(port, &lookup, &fields, &mut scratch, &mut steps);
    doc["listener"] = match steps.listener.and_then(|l| Some((l, t.listeners.get(l as usize)?))) {
        Some((_, l)) => {
            json!({ "name": l.name.as_str(), "chosen_by": chosen_by(&port.listeners, &host) })
        }
        None => Value::Null,
    };
    doc["virtual_hosts"] = steps
        .vhosts
        .iter()
        .filter_map(|&v| router.vhost(v))
        .map(|v| json!(if v.hostname.is_empty() { "(any)" } else { v.hostname.as_str() }))
        .collect();
    let mut winner = None;
    doc["candidates"] = steps
        .candidates
        .iter()
        .filter_map(|&(i, failed)| {
            let m = router.route_match(i)?;
            let action = router.action(ActionId(m.action.to_native()))?;
            if failed.is_none() {
                winner = Some(action);
            }
            Some(json!({
                "route": action.route.as_str(),
                "rule": action.rule.to_native(),
                "match": describe_match(router, m),
                "result": match failed {
                    None => "matched".to_owned(),
                    Some(f) => why_not(router, m, f, method, path, &fields, url.query),
                },
            }))
        })
        .collect();
    doc["rule"] = winner.map_or(Value::Null, |a| describe_action(router, a));
    // The verdict: the same decision lb takes, on a core's fresh view of the table.
    let core_table = CoreTable::new(Arc::clone(router), Arc::default(), Arc::default());
    let sni = q.sni.clone().unwrap_or_else(|| host_text.clone()).to_ascii_lowercase();
    let request = exchange::Request {
        method: method.as_bytes(),
        scheme: url.scheme,
        server_name: (url.scheme == "https").then_some(sni.as_bytes()),
        authority: &host,
        path,
        normalized: changed,
        query: url.query.as_bytes(),
        fields: &fields,
        local: SocketAddr::new(local, url.port),
    };
    let mut routed = Routed::default();
    doc["verdict"] = match exchange::decide(&core_table, &request, &mut routed) {
        Decision::Refuse(r) => json!({
            "action": "refuse",
            "status": r.status(),
            "detail": r.reason(),
        }),
        Decision::Redirect { status, location } => json!({
            "action": "redirect",
            "status": status,
            "location": location,
        }),
        Decision::Preflight(_) => json!({
            "action": "preflight",
            "status": 200,
            "detail": "CORS preflight answered by lb",
        }),
        Decision::Forward(f) => {
            let service = router.service(f.service);
            json!({
                "action": "forward",
                "service": service.map(|s| s.name.as_str()),
                "endpoints": service.map(endpoints).unwrap_or_default(),
                "detail": "the backend answers (lb adds 502/504 on upstream failure)",
            })
        }
    };
    Ok(doc)
}

fn endpoints(s: &table::format::ArchivedService) -> Vec<String> {
    s.endpoints.iter().map(|e| e.socket_addr().to_string()).collect()
}

/// How the listener was chosen (the lookup's own order: exact, longest wildcard, catch-all).
fn chosen_by(index: &ArchivedHostIndex, host: &[u8]) -> String {
    if index.exact.iter().any(|e| e.host.as_bytes() == host) {
        return format!("hostname {}", String::from_utf8_lossy(host));
    }
    for (i, _) in host.iter().enumerate().skip(1).filter(|(_, b)| **b == b'.') {
        if index.wildcard.iter().any(|e| e.host.as_bytes() == &host[i..]) {
            return format!("wildcard *{}", String::from_utf8_lossy(&host[i..]));
        }
    }
    "the listener without a hostname".to_owned()
}

fn value_text(router: &Router, v: &ArchivedValueMatch) -> String {
    match v {
        ArchivedValueMatch::Exact(s) => format!("= {}", s.as_str()),
        ArchivedValueMatch::Regex(i) => format!("~ {}", regex(router, i.to_native())),
    }
}

fn regex(router: &Router, index: u32) -> String {
    router.regex_pattern(index).map_or_else(|| "?".into(), str::to_owned)
}

fn describe_match(router: &Router, m: &ArchivedRouteMatch) -> String {
    let mut parts = vec![match &m.path {
        ArchivedPathMatch::Exact(p) => format!("path Exact {}", p.as_str()),
        ArchivedPathMatch::Prefix(p) => format!("path Prefix {}", p.as_str()),
        ArchivedPathMatch::Regex(r) => {
            format!("path RegularExpression {}", regex(router, r.to_native()))
        }
    }];
    if let Some(method) = m.method.as_ref() {
        parts.push(format!("method {}", method.as_str()));
    }
    for h in m.headers.iter() {
        parts.push(format!("header {} {}", h.name.as_str(), value_text(router, &h.value)));
    }
    for q in m.query.iter() {
        parts.push(format!("query {} {}", q.name.as_str(), value_text(router, &q.value)));
    }
    parts.join(", ")
}

fn why_not(
    router: &Router,
    m: &ArchivedRouteMatch,
    failed: Failed,
    method: &str,
    path: &[u8],
    fields: &Fields<'_>,
    query: &str,
) -> String {
    match failed {
        Failed::Path => format!("path {} does not match", String::from_utf8_lossy(path)),
        Failed::Method => {
            format!("method {method} is not {}", m.method.as_ref().map_or("", |x| x.as_str()))
        }
        Failed::Header { index, absent } => {
            let Some(h) = m.headers.get(index as usize) else { return "a header".into() };
            if absent {
                format!("header {}: absent", h.name.as_str())
            } else {
                let v = fields.first(h.name.as_str()).unwrap_or_default();
                format!(
                    "header {}: {:?} is not {}",
                    h.name.as_str(),
                    String::from_utf8_lossy(v),
                    value_text(router, &h.value)
                )
            }
        }
        Failed::Query { index, absent } => {
            let Some(q) = m.query.get(index as usize) else { return "a query parameter".into() };
            if absent {
                format!("query parameter {}: absent", q.name.as_str())
            } else {
                let v = table::lookup::query_param(query.as_bytes(), q.name.as_bytes())
                    .unwrap_or_default();
                format!(
                    "query parameter {}: {:?} is not {}",
                    q.name.as_str(),
                    String::from_utf8_lossy(v),
                    value_text(router, &q.value)
                )
            }
        }
    }
}

fn edits(e: &ArchivedHeaderEdits) -> Value {
    json!({
        "set": e.set.iter().map(|f| format!("{}: {}", f.name.as_str(), f.value.as_str())).collect::<Vec<_>>(),
        "add": e.add.iter().map(|f| format!("{}: {}", f.name.as_str(), f.value.as_str())).collect::<Vec<_>>(),
        "remove": e.remove.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
    })
}

fn is_empty(e: &ArchivedHeaderEdits) -> bool {
    e.set.is_empty() && e.add.is_empty() && e.remove.is_empty()
}

fn rewrite_text(p: &ArchivedPathRewrite) -> Option<String> {
    match p {
        ArchivedPathRewrite::Keep => None,
        ArchivedPathRewrite::Full(s) => Some(format!("ReplaceFullPath {}", s.as_str())),
        ArchivedPathRewrite::Prefix(s) => Some(format!("ReplacePrefixMatch {}", s.as_str())),
    }
}

fn describe_action(router: &Router, a: &ArchivedAction) -> Value {
    let mut filters = Vec::new();
    if !is_empty(&a.request_headers) {
        filters.push(json!({ "RequestHeaderModifier": edits(&a.request_headers) }));
    }
    if !is_empty(&a.response_headers) {
        filters.push(json!({ "ResponseHeaderModifier": edits(&a.response_headers) }));
    }
    let path = rewrite_text(&a.rewrite.path);
    if a.rewrite.host.is_some() || path.is_some() {
        filters.push(json!({ "URLRewrite": {
            "hostname": a.rewrite.host.as_ref().map(|h| h.as_str()),
            "path": path,
        }}));
    }
    for m in a.mirrors.iter() {
        let service = router.service(ServiceId(m.service.to_native()));
        filters.push(json!({ "RequestMirror": {
            "service": service.map(|s| s.name.as_str()),
            "percent": f64::from(m.per_million.to_native()) / 10_000.0,
        }}));
    }
    if let Some(c) = a.cors.as_ref() {
        filters.push(json!({ "CORS": {
            "allowOrigins": c.origins.iter().map(|o| o.as_str()).collect::<Vec<_>>(),
            "allowCredentials": c.credentials,
        }}));
    }
    if !a.client_cert_headers.is_empty() {
        let names: Vec<&str> = a.client_cert_headers.iter().map(|h| h.name.as_str()).collect();
        filters.push(json!({ "ClientCertificateHeader": names }));
    }
    let kind = match &a.kind {
        ArchivedActionKind::Forward { backends, .. } => {
            let total: u64 = backends.iter().map(|b| u64::from(b.weight.to_native())).sum();
            let shares: Vec<Value> = backends
                .iter()
                .map(|b| {
                    let weight = b.weight.to_native();
                    let share =
                        if total == 0 { 0.0 } else { f64::from(weight) * 100.0 / total as f64 };
                    match &b.target {
                        ArchivedBackendTarget::Service(s) => {
                            let service = router.service(ServiceId(s.to_native()));
                            json!({
                                "service": service.map(|s| s.name.as_str()),
                                "weight": weight,
                                "share_percent": share,
                                "ready_endpoints": service.map(endpoints).unwrap_or_default(),
                            })
                        }
                        ArchivedBackendTarget::Status(st) => json!({
                            "invalid_reference": true,
                            "weight": weight,
                            "share_percent": share,
                            "answers": st.to_native(),
                        }),
                    }
                })
                .collect();
            json!({ "forward": shares })
        }
        ArchivedActionKind::Respond { status } => json!({ "respond": status.to_native() }),
        ArchivedActionKind::Redirect { status, .. } => json!({ "redirect": status.to_native() }),
    };
    let retry = &a.retry;
    json!({
        "route": a.route.as_str(),
        "rule": a.rule.to_native(),
        "filters": filters,
        "backends": kind,
        "timeouts_ms": {
            "request": a.timeouts.request_ms.to_native(),
            "backendRequest": a.timeouts.backend_request_ms.to_native(),
        },
        "retry": (retry.attempts.to_native() > 0).then(|| json!({
            "attempts": retry.attempts.to_native(),
            "codes": retry.codes.iter().map(|c| c.to_native()).collect::<Vec<_>>(),
            "backoff_ms": retry.backoff_ms.to_native(),
        })),
    })
}

/// The explanation as text for a terminal.
pub fn to_text(doc: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let r = &doc["request"];
    let _ = writeln!(
        out,
        "request     {} {}  (table generation {})",
        s(&r["method"]),
        s(&r["url"]),
        doc["generation"]
    );
    if doc["port"].is_object() {
        let p = &doc["port"];
        let _ = writeln!(
            out,
            "port        {} on {}{}",
            p["port"],
            s(&p["address"]),
            if p["tls"] == true { " (TLS)" } else { "" }
        );
    }
    match &doc["listener"] {
        Value::Object(l) => {
            let _ =
                writeln!(out, "listener    {}  (chosen by {})", s(&l["name"]), s(&l["chosen_by"]));
        }
        _ if doc["port"].is_object() => {
            let _ = writeln!(
                out,
                "listener    none: no listener on this port accepts host {}",
                s(&r["host"])
            );
        }
        _ => {}
    }
    if let Some(v) = doc["virtual_hosts"].as_array().filter(|v| !v.is_empty()) {
        let names: Vec<&str> = v.iter().map(s).collect();
        let _ = writeln!(out, "hostnames   {}", names.join(" → "));
    }
    if let Some(c) = doc["candidates"].as_array().filter(|c| !c.is_empty()) {
        let _ = writeln!(out, "candidates  (precedence order)");
        for (i, c) in c.iter().enumerate() {
            let mark = if c["result"] == "matched" { "✓" } else { "✗" };
            let _ = writeln!(
                out,
                "  {:>3}. {mark} {} rule {}  [{}]",
                i + 1,
                s(&c["route"]),
                c["rule"],
                s(&c["match"])
            );
            if c["result"] != "matched" {
                let _ = writeln!(out, "          {}", s(&c["result"]));
            }
        }
    }
    if doc["rule"].is_object() {
        let rule = &doc["rule"];
        let _ = writeln!(out, "rule        {} rule {}", s(&rule["route"]), rule["rule"]);
        for f in rule["filters"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  filter    {f}");
        }
        let backends = &rule["backends"];
        for b in backends["forward"].as_array().into_iter().flatten() {
            let share = format!(
                "weight {} ({:.0}%)",
                b["weight"],
                b["share_percent"].as_f64().unwrap_or(0.0)
            );
            if let Some(status) = b["answers"].as_u64() {
                let _ =
                    writeln!(out, "  backend   invalid reference  {share}  → lb answers {status}");
            } else {
                let eps: Vec<&str> =
                    b["ready_endpoints"].as_array().into_iter().flatten().map(s).collect();
                let eps = if eps.is_empty() {
                    "no ready endpoints (503)".to_owned()
                } else {
                    eps.join(", ")
                };
                let _ = writeln!(out, "  backend   {}  {share}  {eps}", s(&b["service"]));
            }
        }
        if let Some(status) = backends["redirect"].as_u64().or(backends["respond"].as_u64()) {
            let _ = writeln!(out, "  answers   {status}");
        }
    } else if doc["listener"].is_object() && doc["candidates"].as_array().is_none_or(Vec::is_empty)
    {
        let _ = writeln!(
            out,
            "rule        none: no route on this listener names host {}",
            s(&r["host"])
        );
    }
    let v = &doc["verdict"];
    let _ = write!(out, "verdict     {}", s(&v["action"]));
    if let Some(st) = v["status"].as_u64() {
        let _ = write!(out, " {st}");
    }
    if doc["rule"]["backends"]["forward"].as_array().is_some_and(|b| b.len() > 1)
        && v["action"] == "forward"
    {
        let _ = write!(out, " (weighted: a fresh core's first pick; the shares are above)");
    }
    for key in ["service", "location", "detail"] {
        if let Some(x) = v[key].as_str() {
            let _ = write!(out, "  {key}: {x}");
        }
    }
    out.push('\n');
    out
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}
