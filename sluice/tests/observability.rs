//! Observability end to end: lb's admin listener (`/metrics`, `/ready`, `/config`) after
//! known traffic through real processes, and the size of the default exposition with 5,000
//! HTTPRoutes.

#![allow(clippy::unwrap_used, reason = "tests: a failure is the report")]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Env, free_port, gateway, parse_response, route, service};

/// Samples of a Prometheus text exposition: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(s: &HashMap<String, f64>, key: &str) -> f64 {
    *s.get(key).unwrap_or_else(|| {
        let mut keys: Vec<&String> = s.keys().collect();
        keys.sort();
        panic!("no sample {key} among {keys:#?}")
    })
}

/// Sends `raw` on `stream` and reads one whole response; the bytes of that response.
fn exchange(stream: &mut TcpStream, raw: &[u8]) -> (u16, usize) {
    stream.write_all(raw).unwrap();
    let mut buf = Vec::new();
    loop {
        if let Some((resp, used)) = parse_response(&buf, false).unwrap() {
            assert_eq!(used, buf.len(), "nothing after the response");
            return (resp.status, used);
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits until the metrics satisfy `ok` (lb records an exchange as it ends, which can be just
/// after the client read its last byte).
fn scrape_until(
    scrape: impl Fn() -> (u16, String),
    ok: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let start = Instant::now();
    loop {
        let (status, body) = scrape();
        assert_eq!(status, 200);
        let s = samples(&body);
        if ok(&s) || start.elapsed() > Duration::from_secs(5) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Gateway `gw` on a free port (returned), route `r` (`/app`) to an echo (`default/svc`) and
/// route `gone` (`/dead`) to a Service whose only endpoint refuses connections (a 502 and a
/// connect failure); config-sync and lb not started yet.
fn two_routes(name: &str) -> (Env, u16, std::net::SocketAddr, std::net::SocketAddr) {
    let mut env = Env::new(name);
    let echo = env.echo("default", "svc", "pod-a");
    let port = free_port();
    env.write("gateway.yaml", &gateway(port));
    env.write("svc.yaml", &service("default", "svc", &[echo]));
    let dead = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    env.write("dead.yaml", &service("default", "dead", &[dead]));
    env.write("route.yaml", &route("r", Some("/app"), "svc"));
    env.write("dead-route.yaml", &route("gone", Some("/dead"), "dead"));
    (env, port, echo, dead)
}

#[test]
fn metrics_count_known_traffic_and_the_admin_listener_answers() {
    let (mut env, port, _, _) = two_routes("metrics");
    env.config_sync();
    env.lb(&["--metrics-routes", "--metrics-backends"]);
    env.wait_applied(1);
    common::wait_listening(format!("127.0.0.1:{port}").parse().unwrap());

    let (status, ready) = env.admin_get("/ready", "");
    assert_eq!((status, ready.as_str()), (200, "ready\n"));

    // Known traffic on one keep-alive connection: 5 × 200, a 404 (no rule), a 502 (dead
    // endpoint), then a malformed head (400, no listener: its Host was never read).
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut sent, mut received) = (0usize, 0usize);
    for i in 0..5 {
        let raw = format!("GET /app/{i} HTTP/1.1\r\nHost: shop.example\r\n\r\n");
        let (status, n) = exchange(&mut c, raw.as_bytes());
        assert_eq!(status, 200);
        (sent, received) = (sent + raw.len(), received + n);
    }
    let raw = "GET /nothing HTTP/1.1\r\nHost: shop.example\r\n\r\n";
    let (status, n404) = exchange(&mut c, raw.as_bytes());
    assert_eq!(status, 404);
    let sent_404 = raw.len();
    let raw = "GET /dead HTTP/1.1\r\nHost: shop.example\r\n\r\n";
    let (status, n502) = exchange(&mut c, raw.as_bytes());
    assert_eq!(status, 502);
    let sent_502 = raw.len();
    let mut bad = TcpStream::connect(("127.0.0.1", port)).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (status, _) = exchange(&mut bad, b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n");
    assert_eq!(status, 400);

    let listener = "listener=\"default/gw/http\"";
    let s = scrape_until(
        || env.admin_get("/metrics", ""),
        |s| {
            s.get("sluice_http_requests_total{listener=\"\"}").copied() == Some(1.0)
                && s.get(&format!("sluice_http_requests_total{{{listener}}}")).copied() == Some(7.0)
        },
    );
    let l =
        |name: &str, extra: &str| value(&s, &format!("sluice_http_{name}{{{listener}{extra}}}"));
    assert_eq!(l("requests_total", ""), 7.0);
    assert_eq!(l("responses_total", ",class=\"2xx\""), 5.0);
    assert_eq!(l("responses_total", ",class=\"4xx\""), 1.0);
    assert_eq!(l("responses_total", ",class=\"5xx\""), 1.0);
    assert_eq!(l("responses_total", ",class=\"none\""), 0.0);
    // Bytes: exactly what went over the wire, heads included.
    assert_eq!(l("request_bytes_total", "") as usize, sent + sent_404 + sent_502);
    assert_eq!(l("response_bytes_total", "") as usize, received + n404 + n502);
    assert_eq!(l("request_duration_seconds_count", ""), 7.0);
    let bucket = |le: &str| {
        value(&s, &format!("sluice_http_request_duration_seconds_bucket{{le=\"{le}\",{listener}}}"))
    };
    assert_eq!(bucket("+Inf"), 7.0);
    assert!(l("request_duration_seconds_sum", "") > 0.0);
    // Cumulative buckets: never decreasing, ending at the count.
    let bounds = [
        "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
        "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf",
    ];
    let buckets: Vec<f64> = bounds.iter().map(|b| bucket(b)).collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    // The malformed head: no listener took it.
    assert_eq!(value(&s, "sluice_http_responses_total{listener=\"\",class=\"4xx\"}"), 1.0);
    // Per route rule (opted in): the five 200s on route r, the 502 on route gone.
    let r = "route=\"default/r\",rule=\"0\"";
    assert_eq!(value(&s, &format!("sluice_route_responses_total{{{r},class=\"2xx\"}}")), 5.0);
    let g = "route=\"default/gone\",rule=\"0\"";
    assert_eq!(value(&s, &format!("sluice_route_responses_total{{{g},class=\"5xx\"}}")), 1.0);
    // Upstreams: five attempts to svc (the first opened a connection, the rest reused it),
    // one failed connect to dead.
    assert_eq!(value(&s, "sluice_upstream_attempts_total"), 6.0);
    assert_eq!(value(&s, "sluice_upstream_connect_failures_total"), 1.0);
    let svc = "backend=\"default/svc:80\"";
    assert_eq!(value(&s, &format!("sluice_backend_attempts_total{{{svc}}}")), 5.0);
    assert_eq!(value(&s, &format!("sluice_backend_pool_misses_total{{{svc}}}")), 1.0);
    assert_eq!(value(&s, &format!("sluice_backend_pool_hits_total{{{svc}}}")), 4.0);
    let dead_svc = "backend=\"default/dead:80\"";
    assert_eq!(value(&s, &format!("sluice_backend_connect_failures_total{{{dead_svc}}}")), 1.0);
    assert!(value(&s, "sluice_connections_accepted_total") >= 2.0);
    assert!(value(&s, "sluice_table_generation{core=\"0\"}") >= 1.0);
    assert_eq!(value(&s, "sluice_table_refused_total"), 0.0);
    assert_eq!(value(&s, "sluice_draining"), 0.0);

    // config-sync's own admin listener: its pipeline's figures.
    assert_eq!(env.config_sync_admin_get("/ready").0, 200);
    // What lb serves reaches config-sync through its watcher of lb's applied file, which polls
    // (every 10 ms; once a second after 5 s without lb, as at a slow start): eventually.
    let cs = scrape_until(
        || env.config_sync_admin_get("/metrics"),
        |cs| value(cs, "sluice_config_sync_served_generation") >= 1.0,
    );
    assert!(value(&cs, "sluice_config_sync_runs_total") >= 1.0);
    assert_eq!(value(&cs, "sluice_config_sync_objects{kind=\"HTTPRoute\"}"), 2.0);
    assert_eq!(value(&cs, "sluice_config_sync_objects{kind=\"Service\"}"), 2.0);
    assert!(value(&cs, "sluice_config_sync_publishes_total{result=\"published\"}") >= 1.0);
    assert!(value(&cs, "sluice_config_sync_generation") >= 1.0);
    assert!(value(&cs, "sluice_config_sync_served_generation") >= 1.0, "lb serves it");
    assert!(value(&cs, "sluice_config_sync_status_writes_total{result=\"ok\"}") >= 4.0);
    assert!(value(&cs, "sluice_config_sync_compile_duration_seconds_count") >= 1.0);
    assert_eq!(value(&cs, "sluice_config_sync_leader"), 1.0);

    // Every metric the Grafana dashboard and docs/operations.md name is exposed (opt-in
    // families included: this lb has them on) by lb or config-sync.
    let mut exposed: std::collections::HashSet<String> =
        s.keys().chain(cs.keys()).map(|k| k.split('{').next().unwrap().to_owned()).collect();
    // Families without a series yet (Kubernetes-only ones in file mode) by their TYPE lines.
    let (_, lb_text) = env.admin_get("/metrics", "");
    let (_, cs_text) = env.config_sync_admin_get("/metrics");
    for line in lb_text.lines().chain(cs_text.lines()) {
        if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|t| t.split_once(' ')) {
            exposed.insert(name.to_owned());
            if kind == "counter" {
                exposed.insert(format!("{}_total", name.trim_end_matches("_total")));
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["deploy/monitoring/grafana-dashboard.json", "docs/operations.md"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        // Kubernetes-only families have no series in file mode: `kubernetes.rs` checks them.
        let kube_only = [
            "sluice_config_sync_watch_errors_total",
            "sluice_config_sync_relists_total",
            "sluice_config_sync_events_total",
        ];
        for name in metric_names(&text).into_iter().filter(|n| !kube_only.contains(&n.as_str())) {
            let known = exposed.contains(&name)
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| exposed.contains(&format!("{name}{s}")));
            assert!(known, "{file} names {name}, which neither lb nor config-sync exposes");
        }
    }

    // OpenMetrics when asked for; Prometheus text otherwise.
    let (_, open) = env.admin_get("/metrics", "Accept: application/openmetrics-text\r\n");
    assert!(open.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(open.contains("# TYPE sluice_http_requests counter"));
    let (_, text) = env.admin_get("/metrics", "");
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# TYPE sluice_http_requests_total counter"));

    // /config: the served table, with where each rule came from.
    let (status, config) = env.admin_get("/config", "");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert!(doc["generation"].as_u64().unwrap() >= 1);
    assert!(doc["cores"].as_array().unwrap().iter().all(|g| g.as_u64().unwrap() >= 1));
    let actions = doc["table"]["actions"].as_array().unwrap();
    assert!(actions.iter().any(|a| a["route"] == "default/r" && a["rule"] == 0));
    assert_eq!(doc["table"]["listeners"][0]["name"], "default/gw/http");
    let (_, summary) = env.admin_get("/config?summary", "");
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert!(summary["table"]["bytes"].as_u64().unwrap() > 0);

    // Anything else: 404; not GET: 405.
    assert_eq!(env.admin_get("/nope", "").0, 404);
    let mut s = TcpStream::connect(env.admin_addr()).unwrap();
    s.write_all(b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 405"), "{}", String::from_utf8_lossy(&raw));
}

/// With 5,000 HTTPRoutes the default exposition stays small: its series do not grow with
/// routes (per-route series are opt-in).
#[test]
fn five_thousand_routes_keep_the_default_exposition_small() {
    let mut env = Env::new("metrics-5k");
    let echo = env.echo("default", "svc", "pod-a");
    let port = free_port();
    env.write("gateway.yaml", &gateway(port));
    env.write("svc.yaml", &service("default", "svc", &[echo]));
    let mut routes = String::new();
    for i in 0..5000 {
        routes.push_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [\"h{i}.example\"]\n  rules:\n  - backendRefs: [{{name: svc, port: 80}}]\n---\n"
        ));
    }
    env.write("routes.yaml", &routes);
    env.config_sync();
    env.lb(&[]);
    env.wait_applied(1);
    common::wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    let (_, config) = env.admin_get("/config?summary", "");
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert!(config["table"]["actions"].as_u64().unwrap() >= 5000, "{config}");
    let resp = common::get(port, "h4999.example", "/", &[]).unwrap();
    assert_eq!(resp.status, 200);
    let (_, text) = env.admin_get("/metrics", "");
    let series = samples(&text).len();
    eprintln!("default exposition with 5,000 HTTPRoutes: {series} series, {} bytes", text.len());
    assert!(series <= 1000, "{series} series");
    assert!(series >= 40, "{series} series: the families are there");
}

/// The access log: one JSON line per exchange with the fields operators rely on, failures
/// included; request ids generated when absent (and sent upstream), a client's kept; a trace
/// started for requests without one.
#[test]
fn access_log_records_known_requests_including_failures() {
    let (mut env, port, echo, dead) = two_routes("access-log");
    let log = env.dir.join("access.log");
    let log_arg = log.to_str().unwrap().to_owned();
    env.config_sync();
    env.lb(&["--access-log", &log_arg, "--trace-context", "start"]);
    env.wait_applied(1);
    common::wait_listening(format!("127.0.0.1:{port}").parse().unwrap());

    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let a = common::get(
        port,
        "shop.example",
        "/app/a?x=1",
        &[("User-Agent", "probe/1"), ("traceparent", trace)],
    )
    .unwrap();
    assert_eq!(a.status, 200);
    let b =
        common::get(port, "shop.example", "/app/b", &[("X-Request-Id", "client-id-7")]).unwrap();
    assert_eq!(b.json()["headers"]["X-Request-Id"][0], "client-id-7");
    // lb's id and trace went upstream.
    let made_id = a.json()["headers"]["X-Request-Id"][0].as_str().unwrap().to_owned();
    assert_eq!(made_id.len(), 36, "a UUID: {made_id}");
    assert_eq!(a.json()["headers"]["Traceparent"][0], trace, "a client's trace passes unchanged");
    let started = b.json()["headers"]["Traceparent"][0].as_str().unwrap().to_owned();
    assert_eq!(started.len(), 55, "{started}");
    assert!(started.starts_with("00-") && started.ends_with("-01"), "{started}");
    assert_eq!(common::get(port, "shop.example", "/nothing", &[]).unwrap().status, 404);
    assert_eq!(common::get(port, "shop.example", "/dead", &[]).unwrap().status, 502);
    let mut bad = TcpStream::connect(("127.0.0.1", port)).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(exchange(&mut bad, b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n").0, 400);

    let start = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= 5 || start.elapsed() > Duration::from_secs(10) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let by_path =
        |p: &str| lines.iter().find(|l| l["path"] == p).unwrap_or_else(|| panic!("no {p}"));
    let a = by_path("/app/a?x=1");
    assert_eq!(a["status"], 200);
    assert_eq!(a["method"], "GET");
    assert_eq!(a["authority"], "shop.example");
    assert_eq!(a["protocol"], "HTTP/1.1");
    assert_eq!(a["client"], "127.0.0.1");
    assert_eq!(a["user_agent"], "probe/1");
    assert_eq!(a["traceparent"], trace);
    assert_eq!(a["request_id"], made_id.as_str());
    assert_eq!(a["response_flags"], "-");
    assert_eq!(a["listener"], "default/gw/http");
    assert_eq!(a["route"], "default/r");
    assert_eq!(a["rule"], 0);
    assert_eq!(a["upstream_service"], "default/svc:80");
    assert_eq!(a["upstream_host"], echo.to_string());
    assert!(a["upstream_time_ms"].as_f64().unwrap() >= 0.0);
    assert!(a["duration_ms"].as_f64().unwrap() >= a["upstream_time_ms"].as_f64().unwrap());
    assert!(a["bytes_received"].as_u64().unwrap() > 40);
    assert!(a["bytes_sent"].as_u64().unwrap() > 100);
    assert!(a["start_time"].as_str().unwrap().ends_with('Z'));
    let b = by_path("/app/b");
    assert_eq!(b["request_id"], "client-id-7");
    assert_eq!(b["traceparent"], started.as_str());
    let nr = by_path("/nothing");
    assert_eq!((nr["status"].as_u64(), nr["response_flags"].as_str()), (Some(404), Some("NR")));
    assert!(nr["route"].is_null() && nr["upstream_host"].is_null());
    let uf = by_path("/dead");
    assert_eq!((uf["status"].as_u64(), uf["response_flags"].as_str()), (Some(502), Some("UF")));
    assert_eq!(uf["upstream_host"], dead.to_string());
    let bad = lines.iter().find(|l| l["status"] == 400).unwrap();
    assert_eq!(bad["response_flags"], "DPE");
    assert!(bad["path"].is_null(), "a refused head is not logged as if it were parsed");
    let (_, metrics) = env.admin_get("/metrics", "");
    let s = samples(&metrics);
    assert_eq!(value(&s, "sluice_access_log_records_total"), 5.0);
    assert_eq!(value(&s, "sluice_access_log_dropped_total"), 0.0);

    // logrotate: the file is moved away and lb told with SIGHUP; what follows goes to a new
    // file at the configured path. An HTTP/2 stream is logged as one.
    let rotated = env.dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    env.signal("lb", rustix::process::Signal::HUP);
    let start = Instant::now();
    let line = loop {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "--http2-prior-knowledge", "-H", "Host: shop.example"])
            .arg(format!("http://127.0.0.1:{port}/app/h2"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(300));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("/app/h2")) {
            break serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no record in the reopened file");
    };
    assert_eq!(line["protocol"], "HTTP/2");
    assert_eq!(line["status"], 200);
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(old.lines().count(), 5, "the rotated file keeps what it had: {old}");
}

/// `sluice explain` (on the manifests, and lb's `/explain` on the served table) says what lb
/// does: for every request of a set covering each kind of match, a redirect, an unresolved
/// backend and no route, explain's verdict is lb's actual answer.
#[test]
fn explain_agrees_with_what_lb_does() {
    let mut env = Env::new("explain");
    let a = env.echo("default", "svc-a", "pod-a");
    let b = env.echo("default", "svc-b", "pod-b");
    let port = free_port();
    env.write("gateway.yaml", &gateway(port));
    env.write("svc-a.yaml", &service("default", "svc-a", &[a]));
    env.write("svc-b.yaml", &service("default", "svc-b", &[b]));
    env.write(
        "shop.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: shop, namespace: default}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [shop.example]\n  rules:\n  - matches: [{path: {type: Exact, value: /checkout}, method: POST}]\n    backendRefs: [{name: svc-a, port: 80}]\n  - matches: [{path: {value: /cart}, headers: [{name: X-Beta, value: '1'}]}]\n    backendRefs: [{name: svc-b, port: 80}]\n  - matches: [{path: {value: /cart}}]\n    backendRefs: [{name: svc-a, port: 80}]\n  - matches: [{path: {type: RegularExpression, value: '/items/[0-9]+'}, queryParams: [{name: p, value: x}]}]\n    backendRefs: [{name: svc-b, port: 80}]\n  - matches: [{path: {value: /old}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}}]\n  - matches: [{path: {value: /missing}}]\n    backendRefs: [{name: nowhere, port: 80}]\n",
    );
    env.write(
        "other.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: other, namespace: default}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: ['*.other.example']\n  rules:\n  - backendRefs: [{name: svc-b, port: 80}]\n",
    );
    env.config_sync();
    env.lb(&[]);
    env.wait_applied(1);
    common::wait_listening(format!("127.0.0.1:{port}").parse().unwrap());

    let pod_of = |service: &str| match service {
        "default/svc-a:80" => "pod-a",
        "default/svc-b:80" => "pod-b",
        other => panic!("unexpected service {other}"),
    };
    let requests: &[Probe<'_>] = &[
        ("GET", "shop.example", "/checkout", &[]),
        ("POST", "shop.example", "/checkout", &[]),
        ("GET", "shop.example", "/cart", &[]),
        ("GET", "shop.example", "/cart/items", &[("X-Beta", "1")]),
        ("GET", "shop.example", "/cart", &[("X-Beta", "2")]),
        ("GET", "shop.example", "/cartoon", &[]),
        ("GET", "shop.example", "/CART", &[]),
        ("GET", "shop.example", "/x/../cart", &[]),
        ("GET", "shop.example", "/items/12?p=x", &[]),
        ("GET", "shop.example", "/items/12?p=y", &[]),
        ("GET", "shop.example", "/items/ab?p=x", &[]),
        ("GET", "shop.example", "/old/page?q=1", &[]),
        ("GET", "shop.example", "/missing", &[]),
        ("GET", "a.other.example", "/anything", &[]),
        ("GET", "other.example", "/anything", &[]),
        ("GET", "unknown.example", "/cart", &[]),
        ("GET", "SHOP.example", "/cart", &[]),
    ];
    let manifests = env.manifests.to_str().unwrap().to_owned();
    for &(method, host, target, headers) in requests {
        let url = format!("http://{host}:{port}{target}");
        let mut args =
            vec!["explain".to_owned(), "--manifests".into(), manifests.clone(), "--json".into()];
        for (n, v) in headers {
            args.push("-H".into());
            args.push(format!("{n}: {v}"));
        }
        args.push(format!("{method} {url}"));
        let out = std::process::Command::new(common::BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let explained: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // lb's own /explain, on the table it serves, gives the same verdict and steps.
        let mut query = format!("/explain?method={method}&url={}", encode(&url));
        for (n, v) in headers {
            query.push_str(&format!("&header={}", encode(&format!("{n}: {v}"))));
        }
        let (status, served) = env.admin_get(&query, "");
        assert_eq!(status, 200, "{served}");
        let served: serde_json::Value = serde_json::from_str(&served).unwrap();
        for key in ["verdict", "candidates", "listener", "rule"] {
            assert_eq!(explained[key], served[key], "{method} {url}: {key}");
        }
        // And lb does it.
        let body: &[u8] = if method == "POST" { b"x" } else { b"" };
        let actual = common::Client::connect(port)
            .unwrap()
            .request(method, host, target, headers, body)
            .unwrap();
        let verdict = &explained["verdict"];
        let what = format!("{method} {host}{target} {headers:?}: explain said {verdict}");
        match verdict["action"].as_str().unwrap() {
            "forward" => {
                assert_eq!(actual.status, 200, "{what}");
                assert_eq!(
                    actual.json()["pod"],
                    pod_of(verdict["service"].as_str().unwrap()),
                    "{what}"
                );
            }
            "redirect" => {
                assert_eq!(u64::from(actual.status), verdict["status"].as_u64().unwrap(), "{what}");
                assert_eq!(actual.header("location"), verdict["location"].as_str(), "{what}");
            }
            "refuse" => {
                assert_eq!(u64::from(actual.status), verdict["status"].as_u64().unwrap(), "{what}")
            }
            other => panic!("{what}: {other}"),
        }
    }
    // `sluice status` shows the same folder's conditions, the unresolved backend marked.
    let out = std::process::Command::new(common::BIN)
        .args(["status", "--status-dir", env.status.to_str().unwrap(), "--problems"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shop = text
        .lines()
        .position(|l| l.contains("HTTPRoute") && l.contains(" shop"))
        .unwrap_or_else(|| panic!("{text}"));
    let parent = text.lines().nth(shop + 1).unwrap();
    assert!(
        parent.starts_with('!') && parent.contains("ResolvedRefs=False(BackendNotFound)"),
        "{text}"
    );
    assert!(!text.contains(" other "), "healthy objects are left out with --problems: {text}");

    // The text form names the candidates and why they failed.
    let out = std::process::Command::new(common::BIN)
        .args(["explain", "--manifests", &manifests, "-H", "X-Beta: 2"])
        .arg(format!("GET http://shop.example:{port}/cart"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("header x-beta: \"2\" is not = 1"), "{text}");
    assert!(text.contains("verdict     forward"), "{text}");
    assert!(text.contains("default/shop rule 2"), "{text}");
}

/// Every `sluice_…` metric name in `text` (a `…` name prefix in the docs is skipped).
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("sluice_") {
        let tail = &rest[i..];
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let cut = tail[end..].starts_with('…') || name.ends_with('_');
        if !cut && name != "sluice_" {
            names.push(name.to_owned());
        }
        rest = &tail[end..];
    }
    names.sort();
    names.dedup();
    names
}

/// A request of [`explain_agrees_with_what_lb_does`]: method, host, target, fields.
type Probe<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
