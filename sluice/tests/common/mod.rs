//! Test harness: real `sluice` processes (config-sync, lb, echo backends) on loopback, a
//! manifests folder per test, and a small blocking HTTP/1.1 client.

#![allow(dead_code, unreachable_pub, reason = "each test binary uses a different part")]
#![allow(clippy::unwrap_used, reason = "test harness: a failure is the report")]

pub mod apiserver;
pub mod pki;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A free loopback port (bound, then released: good enough on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Processes and folders of one test; everything is stopped and removed on drop.
pub struct Env {
    pub dir: PathBuf,
    pub manifests: PathBuf,
    pub status: PathBuf,
    pub table: PathBuf,
    pub children: Vec<(String, Child)>,
    pub logs: PathBuf,
}

impl Env {
    pub fn new(name: &str) -> Env {
        let id = format!("{}-{}-{name}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(format!("sluice-test-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        Env {
            status: dir.join("status"),
            table: PathBuf::from(format!("/dev/shm/sluice-test-{id}/table")),
            manifests,
            dir,
            children: Vec::new(),
            logs,
        }
    }

    fn spawn(&mut self, name: &str, args: &[&str]) {
        self.spawn_env(name, args, &[]);
    }

    fn spawn_env(&mut self, name: &str, args: &[&str], env: &[(&str, &str)]) {
        self.spawn_program(name, BIN, args, env);
    }

    /// Runs `program` (e.g. a wrapper such as `prlimit … -- sluice`) as process `name`.
    pub fn spawn_program(
        &mut self,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) {
        let log = std::fs::File::create(self.logs.join(format!("{name}.log"))).unwrap();
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((name.to_owned(), child));
    }

    /// Starts an echo backend for `service` (pod name `pod`) on a free port.
    pub fn echo(&mut self, namespace: &str, service: &str, pod: &str) -> SocketAddr {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        self.spawn(
            &format!("echo-{pod}"),
            &[
                "echo",
                "--listen",
                &addr.to_string(),
                "--namespace",
                namespace,
                "--service",
                service,
                "--pod",
                pod,
            ],
        );
        wait_listening(addr);
        addr
    }

    pub fn config_sync(&mut self) {
        self.config_sync_env(&[]);
    }

    /// config-sync in Kubernetes mode against `kubeconfig`, as process `name`, publishing to
    /// `table` (the Env's own table when `None`).
    pub fn config_sync_kube(
        &mut self,
        name: &str,
        kubeconfig: &Path,
        identity: &str,
        table: Option<&Path>,
    ) {
        let t = table.map_or_else(|| self.table.clone(), Path::to_path_buf);
        self.spawn_env(
            name,
            &[
                "config-sync",
                "--kubernetes",
                "--table",
                t.to_str().unwrap(),
                "--default-address",
                "127.0.0.1",
                "--identity",
                identity,
                "--lease-namespace",
                "sluice-system",
                "--lease-duration",
                "2",
                "--admin",
                "127.0.0.1:0",
            ],
            &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        );
    }

    /// lb with extra environment (e.g. `NOTIFY_SOCKET`).
    pub fn lb_env(&mut self, env: &[(&str, &str)]) {
        let t = self.table.clone();
        self.lb_with("lb", &t, &[], env);
    }

    /// config-sync (file mode) with extra environment.
    pub fn config_sync_env(&mut self, env: &[(&str, &str)]) {
        let (m, t, s) = (self.manifests.clone(), self.table.clone(), self.status.clone());
        let args = [
            "config-sync",
            "--manifests",
            m.to_str().unwrap(),
            "--table",
            t.to_str().unwrap(),
            "--status-dir",
            s.to_str().unwrap(),
            "--default-address",
            "127.0.0.1",
            "--admin",
            "127.0.0.1:0",
        ];
        self.spawn_env("config-sync", &args, env);
    }

    /// lb on another table segment, as process `name`.
    pub fn lb_on(&mut self, name: &str, table: &Path) {
        self.lb_with(name, table, &[], &[]);
    }

    pub fn lb(&mut self, extra: &[&str]) {
        let t = self.table.clone();
        self.lb_with("lb", &t, extra, &[]);
    }

    /// lb on `table` as process `name`; its admin listener on a port of its own choosing
    /// (written to `<table>.admin`) unless `extra` names one.
    fn lb_with(&mut self, name: &str, table: &Path, extra: &[&str], env: &[(&str, &str)]) {
        let mut args =
            vec!["lb", "--table", table.to_str().unwrap(), "--bind-address", "127.0.0.1"];
        if !extra.contains(&"--admin") {
            args.extend_from_slice(&["--admin", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        self.spawn_env(name, &args, env);
    }

    /// The address lb's admin listener bound (waits for it).
    pub fn admin_addr(&self) -> SocketAddr {
        self.bound_admin(&lb::admin::address_path(&self.table), "lb")
    }

    /// The address written to `file` by the admin listener of process `name` (waits for it).
    fn bound_admin(&self, file: &Path, name: &str) -> SocketAddr {
        let start = Instant::now();
        loop {
            if let Some(addr) =
                std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok())
            {
                return addr;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no admin address\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// GET `target` from lb's admin listener, with extra request fields: status and body.
    pub fn admin_get(&self, target: &str, fields: &str) -> (u16, String) {
        admin_request(self.admin_addr(), target, fields)
    }

    /// GET `target` from config-sync's admin listener: status and body.
    pub fn config_sync_admin_get(&self, target: &str) -> (u16, String) {
        let file = config_sync::admin_address_path(&self.table);
        admin_request(self.bound_admin(&file, "config-sync"), target, "")
    }

    /// Waits (up to 20 s) until lb's metric sample `key` (`name{labels}` as exposed) reaches
    /// `at_least`, so a test can act once lb has really seen what it sent.
    pub fn wait_metric(&self, key: &str, at_least: f64) {
        let start = Instant::now();
        loop {
            let (_, text) = self.admin_get("/metrics", "");
            let v = text
                .lines()
                .filter_map(|l| l.rsplit_once(' '))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.parse::<f64>().ok());
            if v.is_some_and(|v| v >= at_least) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{key} never reached {at_least}: {v:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to the process started as `name`.
    pub fn signal(&self, name: &str, signal: rustix::process::Signal) {
        for (n, c) in &self.children {
            if n == name
                && let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32)
            {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    }

    /// Sends SIGTERM to the process started as `name`.
    pub fn terminate(&self, name: &str) {
        self.signal(name, rustix::process::Signal::TERM);
    }

    /// Waits up to `limit` for `name` to exit; its exit code, `None` if it is still running.
    pub fn wait_exit(&mut self, name: &str, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            for (n, c) in &mut self.children {
                if n == name
                    && let Ok(Some(status)) = c.try_wait()
                {
                    return Some(status.code().unwrap_or(-1));
                }
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill(&mut self, name: &str) {
        for (n, c) in &mut self.children {
            if n == name {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.children.retain(|(n, _)| n != name);
    }

    /// The usual single-service setup: Gateway `gw` on a free port (returned), Service
    /// `default/svc` over `endpoints`, and route `r` sending every request to it.
    pub fn one_service(&self, endpoints: &[SocketAddr]) -> u16 {
        let port = free_port();
        self.write("gateway.yaml", &gateway(port));
        self.write("svc.yaml", &service("default", "svc", endpoints));
        self.write("route.yaml", &route("r", None, "svc"));
        port
    }

    /// Starts config-sync and lb (with `lb_args`) and waits until lb serves the first table on
    /// `port`.
    pub fn start(&mut self, port: u16, lb_args: &[&str]) {
        self.config_sync();
        self.lb(lb_args);
        self.wait_applied(1);
        wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    }

    pub fn write(&self, file: &str, content: &str) {
        let path = self.manifests.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Write then rename, as editors and kubectl-style tools do, so a reader never sees half.
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// Generation every lb core serves (0 before the first table).
    pub fn applied(&self) -> u64 {
        table::shm::read_applied(&table::shm::applied_path(&self.table))
            .map(|a| a.min())
            .unwrap_or(0)
    }

    /// Waits until every lb core serves at least `generation`.
    pub fn wait_applied(&self, generation: u64) {
        let start = Instant::now();
        while self.applied() < generation {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "lb never applied generation {generation}\n{}",
                self.log("lb")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn status_file(&self, kind: &str, ns: &str, name: &str) -> String {
        std::fs::read_to_string(self.status.join(kind).join(ns).join(format!("{name}.yaml")))
            .unwrap_or_default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("SLUICE_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        if let Some(d) = self.table.parent() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// GET `target` from an admin listener at `addr`: status and body.
pub fn admin_request(addr: SocketAddr, target: &str, fields: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: admin\r\n{fields}\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let Some((resp, _)) = parse_response(&raw, false).unwrap() else {
        panic!("not a whole response: {}", String::from_utf8_lossy(&raw));
    };
    (resp.status, String::from_utf8_lossy(&resp.body).into_owned())
}

pub fn wait_listening(addr: SocketAddr) {
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "{addr} never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// GatewayClass + Gateway (one HTTP listener on `port`, routes from all namespaces).
pub fn gateway(port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: sluice}}\nspec: {{controllerName: sluice.dev/gateway-controller}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: sluice\n  listeners:\n  - {{name: http, protocol: HTTP, port: {port}, allowedRoutes: {{namespaces: {{from: All}}}}}}\n"
    )
}

/// An HTTPRoute `name` in `default` on Gateway `gw`: requests under `prefix` (all when
/// `None`) go to Service `service` port 80.
pub fn route(name: &str, prefix: Option<&str>, service: &str) -> String {
    let matches =
        prefix.map_or(String::new(), |p| format!("  - matches: [{{path: {{value: {p}}}}}]\n  "));
    let dash = if prefix.is_some() { "  " } else { "  - " };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{matches}{dash}backendRefs: [{{name: {service}, port: 80}}]\n"
    )
}

/// A Service with one EndpointSlice over `endpoints`.
pub fn service(ns: &str, name: &str, endpoints: &[SocketAddr]) -> String {
    let port = endpoints.first().map_or(1, |e| e.port());
    let eps: String = endpoints
        .iter()
        .map(|e| {
            assert_eq!(e.port(), port, "one port per service in these tests");
            format!("- addresses: ['{}']\n", e.ip())
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n{eps}"
    )
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The echo backend's pod, or the status when the answer was not from a backend.
    pub fn pod(&self) -> String {
        match self.json().get("pod").and_then(|p| p.as_str()) {
            Some(p) => p.to_owned(),
            None => format!("status {}", self.status),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A keep-alive client connection.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(port: u16) -> std::io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Client { stream, buf: Vec::new() })
    }

    /// The socket itself (for tests that go past HTTP, e.g. after an upgrade).
    pub fn raw(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn send(&mut self, raw: &[u8]) -> std::io::Result<Response> {
        self.stream.write_all(raw)?;
        self.read_response(raw.starts_with(b"HEAD "))
    }

    pub fn get(
        &mut self,
        host: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        self.request("GET", host, target, headers, b"")
    }

    pub fn request(
        &mut self,
        method: &str,
        host: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
        for (n, v) in headers {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        raw.push_str("\r\n");
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    pub fn read_response(&mut self, head_request: bool) -> std::io::Result<Response> {
        loop {
            if let Some((resp, used)) = parse_response(&self.buf, head_request)? {
                self.buf.drain(..used);
                if (100..200).contains(&resp.status) {
                    continue;
                }
                return Ok(resp);
            }
            self.fill()?;
        }
    }
}

/// One request on a fresh connection.
pub fn get(
    port: u16,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    Client::connect(port)?.get(host, target, headers)
}

/// Parses one complete response at the start of `buf`: `Ok(None)` when incomplete.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
) -> std::io::Result<Option<(Response, usize)>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut fields = [httparse_header(); 64];
    let mut r = httparse::Response::new(&mut fields);
    let head_len = match r.parse(buf).map_err(|e| bad(&e.to_string()))? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = r.code.unwrap_or(0);
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let find =
        |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    let rest = &buf[head_len..];
    let bodiless = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let (body, used) = if bodiless {
        (Vec::new(), 0)
    } else if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        match dechunk(rest) {
            Some(v) => v,
            None => return Ok(None),
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = len.trim().parse().map_err(|_| bad("content-length"))?;
        if rest.len() < len {
            return Ok(None);
        }
        (rest[..len].to_vec(), len)
    } else {
        // Close-delimited: complete only at EOF; the callers here never need it.
        return Ok(None);
    };
    Ok(Some((Response { status, headers, body }, head_len + used)))
}

fn httparse_header() -> httparse::Header<'static> {
    httparse::EMPTY_HEADER
}

/// Decodes a complete chunked body: `(body, bytes used)`, `None` when incomplete.
pub fn dechunk(mut b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let start = b.len();
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let e = b.windows(2).position(|w| w == b"\r\n")?;
                b = &b[e + 2..];
                if e == 0 {
                    return Some((out, start - b.len()));
                }
            }
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Skips a test (with a visible message) when `../shared` is not next to the project.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: {} not found (tests over ../shared data run only where it exists)",
            dir.display()
        );
        None
    }
}

/// Full duplex over HTTP/1.1 in lock step: writes `head` (a request with a chunked body), then
/// each of `chunks` as one chunk, waiting (within `each`) until the response's chunks hold
/// everything sent so far before sending the next — a proxy that buffered either direction
/// stalls it — then the last chunk and the rest of the response. Returns the raw response.
pub fn chunked_lock_step<S: Read + Write>(
    s: &mut S,
    head: &[u8],
    chunks: &[&[u8]],
    each: Duration,
) -> Result<Vec<u8>, String> {
    let io = |e: std::io::Error| e.to_string();
    s.write_all(head).map_err(io)?;
    let (mut received, mut expected) = (Vec::new(), Vec::new());
    for (i, chunk) in chunks.iter().enumerate() {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        s.write_all(&framed).and_then(|()| s.flush()).map_err(io)?;
        expected.extend_from_slice(chunk);
        let want = expected.clone();
        let what = format!("echo of chunk {i}");
        read_until(s, &mut received, &|r| chunked_payload(r).1 == want, &what, each)?;
    }
    s.write_all(b"0\r\n\r\n").and_then(|()| s.flush()).map_err(io)?;
    read_until(s, &mut received, &|r| chunked_payload(r).0, "the last chunk", each)?;
    Ok(received)
}

/// Reads into `received` until `done` says so, within `each`.
fn read_until<S: Read>(
    s: &mut S,
    received: &mut Vec<u8>,
    done: &dyn Fn(&[u8]) -> bool,
    what: &str,
    each: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    while !done(received) {
        let seen = || String::from_utf8_lossy(received).into_owned();
        if start.elapsed() > each {
            return Err(format!("{what}: nothing within {each:?}: {:?}", seen()));
        }
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).map_err(|e| format!("{what}: {e}"))?;
        if n == 0 {
            return Err(format!("closed at {what}: {:?}", seen()));
        }
        received.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// A chunked HTTP/1 response read so far: whether its last chunk came, and the payload of
/// the complete chunks.
pub fn chunked_payload(raw: &[u8]) -> (bool, Vec<u8>) {
    let Some(head) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (false, Vec::new());
    };
    let (mut rest, mut payload) = (&raw[head + 4..], Vec::new());
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&rest[..eol]);
        let Ok(size) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        if size == 0 {
            return (true, payload);
        }
        let Some(data) = rest.get(eol + 2..eol + 2 + size + 2) else { break };
        payload.extend_from_slice(&data[..size]);
        rest = &rest[eol + 2 + size + 2..];
    }
    (false, payload)
}
