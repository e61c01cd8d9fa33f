//! End-to-end tests: config-sync, lb and echo backends as real processes on loopback.

#![allow(clippy::unwrap_used, reason = "test code: a failure is the report")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Three backends, one gateway, routes exercising host, path, header, query and method.
fn routing_env() -> (Env, u16) {
    let mut env = Env::new("routing");
    let a = env.echo("apps", "svc-a", "svc-a-0");
    let b = env.echo("apps", "svc-b", "svc-b-0");
    let c = env.echo("apps", "svc-c", "svc-c-0");
    let port = free_port();
    env.write("gateway.yaml", &gateway(port));
    env.write(
        "services.yaml",
        &format!(
            "{}---\n{}---\n{}",
            service("apps", "svc-a", &[a]),
            service("apps", "svc-b", &[b]),
            service("apps", "svc-c", &[c])
        ),
    );
    env.write(
        "routes.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: main, namespace: apps}
spec:
  parentRefs: [{name: gw, namespace: default}]
  hostnames: [main.example]
  rules:
  - backendRefs: [{name: svc-a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /b}}]
    backendRefs: [{name: svc-b, port: 80}]
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: svc-c, port: 80}]
  - matches: [{headers: [{name: X-Team, value: blue}]}]
    backendRefs: [{name: svc-c, port: 80}]
  - matches: [{path: {value: /q}, queryParams: [{name: v, type: RegularExpression, value: "[0-9]+"}]}]
    backendRefs: [{name: svc-b, port: 80}]
  - matches: [{method: DELETE}]
    backendRefs: [{name: svc-b, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/img/[a-z]+\\.png"}}]
    backendRefs: [{name: svc-c, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other, namespace: apps}
spec:
  parentRefs: [{name: gw, namespace: default}]
  hostnames: ["*.wild.example"]
  rules:
  - backendRefs: [{name: svc-b, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: apps}
spec:
  parentRefs: [{name: gw, namespace: default}]
  hostnames: [broken.example]
  rules:
  - matches: [{path: {value: /missing}}]
    backendRefs: [{name: nope, port: 80}]
  - matches: [{path: {value: /none}}]
"#,
    );
    env.config_sync();
    env.lb(&[]);
    env.wait_applied(1);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    (env, port)
}

#[test]
fn routes_by_host_path_header_query_and_method() {
    let (env, port) = routing_env();
    let pod = |host: &str, target: &str, headers: &[(&str, &str)]| {
        get(port, host, target, headers).unwrap().pod()
    };
    assert_eq!(pod("main.example", "/", &[]), "svc-a-0");
    assert_eq!(
        pod("MAIN.example:1234", "/anything", &[]),
        "svc-a-0",
        "host is case-insensitive, port ignored"
    );
    assert_eq!(pod("main.example", "/b", &[]), "svc-b-0");
    assert_eq!(pod("main.example", "/b/c", &[]), "svc-b-0");
    assert_eq!(pod("main.example", "/bc", &[]), "svc-a-0", "prefixes match whole segments");
    assert_eq!(pod("main.example", "/exact", &[]), "svc-c-0");
    assert_eq!(pod("main.example", "/exact/", &[]), "svc-a-0");
    assert_eq!(
        pod("main.example", "/x", &[("x-team", "blue")]),
        "svc-c-0",
        "header names are case-insensitive"
    );
    assert_eq!(pod("main.example", "/x", &[("X-Team", "red")]), "svc-a-0");
    assert_eq!(pod("main.example", "/q?a=b&v=42", &[]), "svc-b-0");
    assert_eq!(pod("main.example", "/q?v=4x", &[]), "svc-a-0");
    assert_eq!(pod("main.example", "/img/cat.png", &[]), "svc-c-0");
    assert_eq!(
        pod("main.example", "/img/cat.png.bak", &[]),
        "svc-a-0",
        "regex matches the whole path"
    );
    assert_eq!(pod("deep.sub.wild.example", "/", &[]), "svc-b-0");
    assert_eq!(pod("wild.example", "/", &[]), "status 404");
    assert_eq!(pod("unknown.example", "/", &[]), "status 404");
    assert_eq!(pod("broken.example", "/missing", &[]), "status 500", "missing Service: 500");
    assert_eq!(pod("broken.example", "/none", &[]), "status 500", "rule without backends: 500");
    let mut c = Client::connect(port).unwrap();
    assert_eq!(c.request("DELETE", "main.example", "/x", &[], b"").unwrap().pod(), "svc-b-0");
    // The echo saw what a backend should see: Host kept, forwarding headers set, path as sent.
    let r = c.get("main.example", "/b/p?x=1", &[("X-Forwarded-For", "10.1.1.1")]).unwrap();
    let j = r.json();
    assert_eq!(j["host"], "main.example");
    assert_eq!(j["path"], "/b/p?x=1");
    // lb is the edge here (--trusted-hops 0): a client's X-Forwarded-For is replaced.
    assert_eq!(j["headers"]["X-Forwarded-For"][0], "127.0.0.1");
    assert_eq!(j["headers"]["Forwarded"][0], "for=127.0.0.1;host=\"main.example\";proto=http");
    assert_eq!(j["headers"]["X-Forwarded-Proto"][0], "http");
    assert_eq!(j["headers"]["X-Forwarded-Host"][0], "main.example");
    // Bodies are streamed through in both framings.
    let r = c.request("POST", "main.example", "/b", &[], &vec![b'x'; 200_000]).unwrap();
    assert_eq!(r.status, 200);
    let chunked = b"POST /b HTTP/1.1\r\nHost: main.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(c.send(chunked).unwrap().status, 200);
    // Status of the broken route names the reason.
    let status = env.status_file("httproute", "apps", "broken");
    assert!(status.contains("BackendNotFound"), "{status}");
    let status = env.status_file("gateway", "default", "gw");
    assert!(status.contains("attachedRoutes: 3"), "{status}");
}

#[test]
fn weighted_split_within_five_percent() {
    let mut env = Env::new("weights");
    let a = env.echo("default", "heavy", "heavy-0");
    let b = env.echo("default", "light", "light-0");
    let port = free_port();
    env.write("gateway.yaml", &gateway(port));
    env.write(
        "svc.yaml",
        &format!("{}---\n{}", service("default", "heavy", &[a]), service("default", "light", &[b])),
    );
    env.write(
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: split}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: heavy, port: 80, weight: 70}, {name: light, port: 80, weight: 30}, {name: heavy, port: 80, weight: 0}]\n",
    );
    env.config_sync();
    env.lb(&[]);
    env.wait_applied(1);
    // Several connections so that both cores take part.
    let mut heavy = 0;
    let mut total = 0;
    let mut clients: Vec<Client> = (0..8).map(|_| Client::connect(port).unwrap()).collect();
    for i in 0..1000 {
        let n = clients.len();
        let r = clients[i % n].get("any.example", "/", &[]).unwrap();
        assert_eq!(r.status, 200);
        total += 1;
        if r.pod() == "heavy-0" {
            heavy += 1;
        }
    }
    let share = f64::from(heavy) / f64::from(total);
    assert!((share - 0.7).abs() <= 0.05, "heavy got {heavy} of {total}");
}

#[test]
fn route_edit_under_load_drops_nothing_and_is_live_quickly() {
    let mut env = Env::new("edit");
    let a = env.echo("default", "svc", "svc-0");
    let port = free_port();
    env.write("gateway.yaml", &gateway(port));
    env.write("svc.yaml", &service("default", "svc", &[a]));
    let route = |paths: &[&str]| {
        let rules: String = paths
            .iter()
            .map(|p| format!("  - matches: [{{path: {{type: PathPrefix, value: {p}}}}}]\n    backendRefs: [{{name: svc, port: 80}}]\n"))
            .collect();
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{rules}"
        )
    };
    env.write("route.yaml", &route(&["/old"]));
    env.config_sync();
    env.lb(&[]);
    env.wait_applied(1);
    // Clients hammer the existing route while the file changes.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, failures, done) =
                (Arc::clone(&stop), Arc::clone(&failures), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut c = Client::connect(port).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match c.get("x.example", "/old/path", &[]) {
                        Ok(r) if r.status == 200 => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            c = Client::connect(port).unwrap();
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut live = Vec::new();
    for round in 0..10 {
        let new_path = format!("/new{round}");
        let mut paths = vec!["/old".to_owned()];
        paths.extend((0..=round).map(|r| format!("/new{r}")));
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let written = Instant::now();
        env.write("route.yaml", &route(&refs));
        loop {
            let r = get(port, "x.example", &format!("{new_path}/x"), &[]).unwrap();
            if r.status == 200 {
                live.push(written.elapsed());
                break;
            }
            assert_eq!(r.status, 404, "only 404 before the route is live");
            assert!(written.elapsed() < Duration::from_secs(5), "route never went live");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 100, "the load actually ran");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "requests failed during route edits");
    live.sort();
    let median = live[live.len() / 2];
    eprintln!("file write → first 200: {live:?}");
    assert!(
        median < Duration::from_millis(100),
        "median write-to-live {median:?} over 100 ms: {live:?}"
    );
}

#[test]
fn lb_keeps_serving_when_config_sync_dies_and_refuses_bad_tables() {
    let mut env = Env::new("resilience");
    let a = env.echo("default", "svc", "svc-0");
    let port = env.one_service(&[a]);
    env.config_sync();
    env.lb(&[]);
    env.wait_applied(1);
    assert_eq!(get(port, "h", "/", &[]).unwrap().status, 200);

    // A broken manifest does not blank the table.
    env.write("route.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r\n  this is not yaml: [");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(port, "h", "/", &[]).unwrap().status, 200);
    assert!(env.log("config-sync").contains("route.yaml"), "the broken file is named in the log");

    // config-sync dies: lb goes on.
    env.kill("config-sync");
    for _ in 0..20 {
        assert_eq!(get(port, "h", "/", &[]).unwrap().status, 200);
    }
    let served = env.applied();
    let reader = table::shm::SegmentReader::open(&env.table).unwrap();
    let (current, root) =
        (reader.open_router(None).unwrap().unwrap(), reader.read().unwrap().unwrap());

    // Someone writes a table that is well framed (good checksum) but not a valid table.
    let mut writer = table::shm::SegmentWriter::open(&env.table).unwrap();
    let next = writer.generation() + 1;
    writer.publish(next, b"definitely not an rkyv table").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.applied(), served, "lb must not apply a table that fails validation");
    assert!(env.log("lb").contains("table refused"), "{}", env.log("lb"));
    assert_eq!(get(port, "h", "/", &[]).unwrap().status, 200);

    // A real table's root with its end cut off (the archive's root object is at the end):
    // refused.
    let mut cut = root.bytes.to_vec();
    cut.truncate(cut.len() - 24);
    writer.publish(next + 1, &cut).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.applied(), served);
    assert_eq!(get(port, "h", "/", &[]).unwrap().status, 200, "still serving the last good table");
    // A good table after the bad ones is taken again.
    writer.publish_table(next + 2, &current.to_native().unwrap()).unwrap();
    env.wait_applied(next + 2);
    assert_eq!(get(port, "h", "/", &[]).unwrap().status, 200);
}

#[test]
fn config_sync_restart_resumes_and_lb_picks_up() {
    let mut env = Env::new("restart");
    let a = env.echo("default", "svc", "svc-0");
    let port = free_port();
    env.write("gateway.yaml", &gateway(port));
    env.write("svc.yaml", &service("default", "svc", &[a]));
    env.write("route.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {value: /one}}]\n    backendRefs: [{name: svc, port: 80}]\n");
    // lb first: it waits for a table without failing.
    env.lb(&[]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(env.applied(), 0);
    env.config_sync();
    env.wait_applied(1);
    assert_eq!(get(port, "h", "/one", &[]).unwrap().status, 200);
    env.kill("config-sync");
    env.write("route.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {value: /two}}]\n    backendRefs: [{name: svc, port: 80}]\n");
    env.config_sync();
    env.wait_applied(2);
    assert_eq!(get(port, "h", "/two", &[]).unwrap().status, 200);
    assert_eq!(get(port, "h", "/one", &[]).unwrap().status, 404);
}

#[test]
fn listener_ports_open_and_close_with_the_table() {
    let mut env = Env::new("ports");
    let a = env.echo("default", "svc", "svc-0");
    let (p1, p2) = (free_port(), free_port());
    env.write("gateway.yaml", &gateway(p1));
    env.write("svc.yaml", &service("default", "svc", &[a]));
    env.write("route.yaml", &route("r", None, "svc"));
    env.config_sync();
    env.lb(&[]);
    env.wait_applied(1);
    assert_eq!(get(p1, "h", "/", &[]).unwrap().status, 200);
    env.write("gateway.yaml", &gateway(p2));
    env.wait_applied(2);
    wait_listening(format!("127.0.0.1:{p2}").parse().unwrap());
    assert_eq!(get(p2, "h", "/", &[]).unwrap().status, 200);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", p1)).is_ok() {
        assert!(start.elapsed() < Duration::from_secs(5), "old port still open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dead_endpoints_are_skipped_and_slow_upstreams_time_out() {
    let mut env = Env::new("upstream-failures");
    let live = env.echo("default", "svc", "svc-live");
    // An endpoint nobody listens on, on the same port number as the live one: 127.0.0.2 is
    // loopback too, and nothing is bound there.
    let dead: std::net::SocketAddr = format!("127.0.0.2:{}", live.port()).parse().unwrap();
    let port = free_port();
    env.write("gateway.yaml", &gateway(port));
    env.write("svc.yaml", &service("default", "svc", &[dead, live]));
    env.write("route.yaml", &route("r", None, "svc"));
    env.config_sync();
    env.lb(&["--upstream-timeout", "0.5", "--connect-timeout", "1"]);
    env.wait_applied(1);
    let mut c = Client::connect(port).unwrap();
    for _ in 0..10 {
        let r = c.get("h", "/", &[]).unwrap();
        assert_eq!(r.pod(), "svc-live", "connect failures move on to the next endpoint");
    }
    let start = Instant::now();
    let r = c.get("h", "/slow?delay=3s", &[]).unwrap();
    assert_eq!(r.status, 504);
    assert!(start.elapsed() < Duration::from_secs(2), "timed out after {:?}", start.elapsed());
    // The client connection is still usable after a 504 for a request it sent whole.
    assert_eq!(c.get("h", "/", &[]).unwrap().status, 200);
    // Only dead endpoints: 502.
    env.write("svc.yaml", &service("default", "svc", &[dead]));
    env.wait_applied(2);
    assert_eq!(get(port, "h", "/", &[]).unwrap().status, 502);
}

#[test]
fn sluice_up_runs_the_quickstart() {
    let env = Env::new("up");
    // The quickstart with its ports moved to free ones, so the test never collides.
    let quickstart =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/quickstart");
    let (gw_port, v1_port, v2_port) = (free_port(), free_port(), free_port());
    let tls_port = free_port();
    for entry in std::fs::read_dir(&quickstart).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text
            .replace("port: 8080", &format!("port: {gw_port}"))
            .replace("port: 8443", &format!("port: {tls_port}"))
            .replace("9101", &v1_port.to_string())
            .replace("9102", &v2_port.to_string());
        env.write(path.file_name().unwrap().to_str().unwrap(), &text);
    }
    // Hints come from what was compiled: a route that attaches nowhere is not offered, and a
    // rule whose backend does not exist is shown answered by lb.
    env.write(
        "extra.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: ghost, namespace: default}\nspec:\n  parentRefs: [{name: no-such-gateway}]\n  hostnames: [ghost.example]\n  rules: [{backendRefs: [{name: demo-v1, port: 80}]}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: broken, namespace: default}\nspec:\n  parentRefs: [{name: demo}]\n  hostnames: [broken.example]\n  rules: [{backendRefs: [{name: missing-service, port: 80}]}]\n",
    );
    let table = env.dir.join("shm-table");
    let log = std::fs::File::create(env.logs.join("up.log")).unwrap();
    let mut up = std::process::Command::new(BIN)
        .args([
            "up",
            "--manifests",
            env.manifests.to_str().unwrap(),
            "--table",
            table.to_str().unwrap(),
        ])
        .env("NO_COLOR", "1")
        .stderr(log)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !env.log("up").contains("Sluice is up") {
        assert!(start.elapsed() < Duration::from_secs(30), "no announcement:\n{}", env.log("up"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let said = env.log("up");
    assert!(
        said.contains(&format!("curl -H 'Host: demo.example' 'http://127.0.0.1:{gw_port}/split'\n      → default/demo-v1:80 (weight 80), default/demo-v2:80 (weight 20)")),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "-H 'x-version: v2' 'http://127.0.0.1:{gw_port}/'\n      → default/demo-v2:80\n"
        )),
        "{said}"
    );
    assert!(!said.contains("ghost.example"), "an unattached route is offered:\n{said}");
    assert!(
        said.contains(&format!(
            "curl -H 'Host: broken.example' 'http://127.0.0.1:{gw_port}/'\n      → 500 from lb"
        )),
        "{said}"
    );
    assert!(!said.contains('\u{1b}'), "colour codes in a log file:\n{said}");
    let mut pods = std::collections::BTreeMap::new();
    let mut c = Client::connect(gw_port).unwrap();
    for _ in 0..100 {
        *pods.entry(c.get("demo.example", "/split", &[]).unwrap().pod()).or_insert(0) += 1;
    }
    let v2 = pods.get("demo-v2-a").copied().unwrap_or(0);
    assert!((15..=25).contains(&v2), "80/20 split: {pods:?}");
    assert_eq!(c.get("demo.example", "/", &[("X-Version", "v2")]).unwrap().pod(), "demo-v2-a");
    // HTTPS with the demo certificate made for this run: the printed curl line works as is.
    let line = said
        .lines()
        .find(|l| {
            l.contains("curl --cacert")
                && l.contains(&format!("https://demo.example:{tls_port}/split"))
        })
        .unwrap_or_else(|| panic!("no HTTPS hint:\n{said}"));
    let words: Vec<String> =
        line.split_whitespace().skip(1).map(|w| w.trim_matches('\'').to_owned()).collect();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(&words)
        .output()
        .unwrap();
    assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"pod\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // gRPC: the printed `sluice grpc-call` line reaches demo-v2 over h2c; a method no rule
    // names is lb's own UNIMPLEMENTED.
    let line = said
        .lines()
        .find(|l| l.contains("sluice grpc-call") && l.ends_with("GrpcEcho/Echo"))
        .unwrap_or_else(|| panic!("no gRPC hint:\n{said}"));
    let words: Vec<&str> = line.split_whitespace().skip(1).collect();
    let call = |words: &[&str]| std::process::Command::new(BIN).args(words).output().unwrap();
    let out = call(&words);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{line}: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("grpc-status: 0 OK") && text.contains("pod demo-v2-a"), "{text}");
    let three = line.replace("GrpcEcho/Echo", "GrpcEcho/EchoThree");
    let out = call(&three.split_whitespace().skip(1).collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success() && text.starts_with("grpc-status: 12 Unimplemented"), "{text}");
    let generated = env.manifests.join("generated/demo-tls.yaml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&generated).unwrap().permissions().mode() & 0o777, 0o600);
    // Ctrl-C equivalent: everything stops.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&up),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = up.wait().unwrap();
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(std::net::TcpStream::connect(("127.0.0.1", gw_port)).is_err(), "lb stopped with up");
    assert!(std::net::TcpStream::connect(("127.0.0.1", v1_port)).is_err(), "echo stopped with up");
    assert!(!generated.exists(), "the demo key is removed when up stops");
}

#[test]
fn exhausted_buffer_ring_falls_back_to_heap_buffers() {
    let mut env = Env::new("ring");
    let a = env.echo("default", "svc", "svc-0");
    let port = env.one_service(&[a]);
    env.config_sync();
    // Two small ring buffers per core: concurrent pipelined clients run the ring dry, so reads
    // must go to heap buffers (ResourceBusy) without losing or mixing bytes.
    env.lb(&["--ring-buffers", "2", "--ring-buffer-len", "512"]);
    env.wait_applied(1);
    let workers: Vec<_> = (0..8)
        .map(|w| {
            std::thread::spawn(move || {
                let mut c = Client::connect(port).unwrap();
                for i in 0..40 {
                    let body = format!("worker {w} request {i} ").repeat(20);
                    // Two pipelined requests in one write.
                    let one = format!(
                        "POST /p/{w}/{i} HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let two = format!(
                        "GET /g/{w}/{i} HTTP/1.1\r\nHost: h\r\nX-Pad: {}\r\n\r\n",
                        "x".repeat(700)
                    );
                    c.send(format!("{one}{two}").as_bytes())
                        .map(|r| assert_eq!(r.json()["path"], format!("/p/{w}/{i}")))
                        .unwrap();
                    let r = c.read_response(false).unwrap();
                    assert_eq!(r.json()["path"], format!("/g/{w}/{i}"));
                    assert_eq!(r.json()["headers"]["Content-Length"], serde_json::Value::Null);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// A chunked upload to an HTTP/1 backend that answers as it reads (echo's `/stream`): lb
/// relays each echoed chunk while the upload goes on, in lock step — a proxy that sent the
/// whole body before reading the answer would stall here.
#[test]
fn a_chunked_upload_and_its_answer_stream_at_once() {
    let mut env = Env::new("duplex");
    let backend = env.echo("default", "svc", "svc-0");
    let port = env.one_service(&[backend]);
    env.start(port, &[]);
    let mut c = Client::connect(port).unwrap();
    let head = b"POST /stream HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    let big = vec![b'z'; 100_000];
    let chunks: Vec<&[u8]> = vec![b"one", b"two", &big, b"four"];
    let raw = chunked_lock_step(c.raw(), head, &chunks, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n{}", env.log("lb")));
    assert!(raw.starts_with(b"HTTP/1.1 200 "), "{:?}", String::from_utf8_lossy(&raw[..64]));
}

#[test]
fn mirrors_never_hold_up_requests_and_retries_never_replay_a_streamed_body() {
    let mut env = Env::new("mirror-retry");
    let main = env.echo("default", "main", "main-0");
    let copy = env.echo("default", "copy", "copy-0");
    // The same echo again as an h2c Service: its copies go as HTTP/2 streams.
    let h2c_copy = service("default", "copy-h2c", &[copy])
        .replace("port: 80}", "port: 80, appProtocol: kubernetes.io/h2c}");
    // A mirror backend that accepts connections and never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_addr = hole.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hole.incoming().flatten() {
            held.push(s);
        }
    });
    let port = free_port();
    env.write("gateway.yaml", &gateway(port));
    env.write(
        "svc.yaml",
        &format!(
            "{}---\n{}---\n{}---\n{}",
            service("default", "main", &[main]),
            service("default", "copy", &[copy]),
            service("default", "hole", &[hole_addr]),
            h2c_copy
        ),
    );
    env.write(
        "route.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {value: /m}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: hole, port: 80}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: copy, port: 80}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: copy-h2c, port: 80}}}
    backendRefs: [{name: main, port: 80}]
  - matches: [{path: {value: /retry}}]
    retry: {attempts: 2}
    backendRefs: [{name: main, port: 80}]
"#,
    );
    env.config_sync();
    env.lb(&[]);
    env.wait_applied(1);
    let mut c = Client::connect(port).unwrap();
    for i in 0..5 {
        let start = Instant::now();
        let r = c.request("POST", "h", &format!("/m?n={i}"), &[], b"hello").unwrap();
        assert_eq!((r.status, r.pod()), (200, "main-0".to_owned()));
        // The hole never answers its copies; the main request must not wait for them (lb gives
        // a mirror up to 10 s).
        assert!(start.elapsed() < Duration::from_secs(5), "held up for {:?}", start.elapsed());
    }
    let start = Instant::now();
    let copied = |i| {
        let log = env.log("echo-copy-0");
        log.contains(&format!("request made to /m?n={i} to client (127."))
            && log.contains(&format!("request made to /m?n={i} to client (h2c)"))
    };
    while !(0..5).all(copied) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "copies missing:\n{}",
            env.log("echo-copy-0")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The echo backend resets the first attempt of each uuid. A small body is in hand whole
    // and is sent again; a 1 MiB body streamed past lb and cannot be, so the client gets 502.
    let small = c.request("POST", "h", "/retry/a?uuid=small&succeedAfter=1", &[], b"x").unwrap();
    assert_eq!(small.status, 200);
    let big = vec![b'y'; 1 << 20];
    let r = Client::connect(port)
        .unwrap()
        .request("POST", "h", "/retry/b?uuid=big&succeedAfter=1", &[], &big)
        .unwrap();
    assert_eq!(r.status, 502, "a streamed body must not be replayed");
    // The same request again succeeds (its uuid's one failure is used up): the 502 above was
    // the first attempt's, not a retry's.
    let again = Client::connect(port)
        .unwrap()
        .request("POST", "h", "/retry/b?uuid=big&succeedAfter=1", &[], &big)
        .unwrap();
    assert_eq!(again.status, 200);
}

#[test]
fn sigterm_closes_listeners_finishes_requests_in_flight_and_exits() {
    let mut env = Env::new("drain");
    let backend = env.echo("default", "svc", "svc-0");
    let port = env.one_service(&[backend]);
    assert!(!sluice_ready(&env, true), "nothing published yet: not ready");
    env.config_sync();
    env.lb(&["--drain-timeout", "10"]);
    env.wait_applied(1);
    assert!(sluice_ready(&env, false), "lb serves a table: ready");
    assert!(sluice_ready(&env, true), "a table is published: ready");
    // A request that takes 1.5 s is in flight when lb is told to stop.
    let slow = std::thread::spawn(move || get(port, "h", "/slow?delay=1500ms", &[]));
    std::thread::sleep(Duration::from_millis(300));
    env.terminate("lb");
    // New connections are refused soon after.
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(start.elapsed() < Duration::from_secs(3), "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The request in flight still gets its answer, then lb exits cleanly on its own.
    let r = slow.join().unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"), "a draining lb tells the client to go");
    assert_eq!(env.wait_exit("lb", Duration::from_secs(5)), Some(0), "{}", env.log("lb"));
    assert!(env.log("lb").contains("drained; exiting"), "{}", env.log("lb"));
}

fn sluice_ready(env: &Env, published: bool) -> bool {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["ready", "--table", env.table.to_str().unwrap()]);
    if published {
        cmd.arg("--published");
    }
    cmd.status().unwrap().success()
}

#[test]
fn systemd_readiness_is_sent_once_a_table_is_published_and_served() {
    use std::os::unix::net::UnixDatagram;
    let mut env = Env::new("sd-notify");
    let backend = env.echo("default", "svc", "svc-0");
    let port = free_port();
    env.write("gateway.yaml", &gateway(port));
    env.write("svc.yaml", &service("default", "svc", &[backend]));
    let lb_socket = env.dir.join("lb.notify");
    let cs_socket = env.dir.join("config-sync.notify");
    let lb_rx = UnixDatagram::bind(&lb_socket).unwrap();
    let cs_rx = UnixDatagram::bind(&cs_socket).unwrap();
    for s in [&lb_rx, &cs_rx] {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    // lb first: it has no table, so it must not report ready yet.
    env.lb_env(&[("NOTIFY_SOCKET", lb_socket.to_str().unwrap())]);
    lb_rx.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let mut buf = [0u8; 64];
    assert!(lb_rx.recv(&mut buf).is_err(), "lb reported ready without a table");
    env.config_sync_env(&[("NOTIFY_SOCKET", cs_socket.to_str().unwrap())]);
    let n = cs_rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    lb_rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let n = lb_rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert!(env.applied() >= 1, "READY=1 before every core served the table");
}
