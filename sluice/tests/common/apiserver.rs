//! An in-test Kubernetes API server: enough of the real protocol for config-sync's client
//! (kube-rs) to run against it unchanged.
//!
//! What it does as the real one does: one resourceVersion counter over all objects; list
//! responses with `metadata.resourceVersion` (items without apiVersion/kind for built-in kinds,
//! with them for custom resources); chunked watch streams of `{"type","object"}` lines with
//! ADDED/MODIFIED/DELETED, BOOKMARK (with `allowWatchBookmarks`) and an ERROR event with a
//! `410 Expired` Status when the requested resourceVersion is older than the compacted history;
//! create/replace/delete with `409` on a stale resourceVersion; `PATCH .../status` with JSON
//! merge patch, changing only status and never `metadata.generation`; `generation` bumped on
//! spec changes; `managedFields` on every object (config-sync must drop them); Lease objects.
//!
//! What it does not do (and the tests therefore do not cover): authentication and
//! authorization (RBAC is checked only by schema, in CI), admission and schema validation of
//! writes, field and label selectors, pagination (`limit` is ignored: every list is one page),
//! server-side apply, strategic merge patch, watch cache semantics beyond a linear history,
//! HTTP/2, TLS.

#![allow(clippy::disallowed_types, reason = "a test server shared by its connection threads")]
#![allow(clippy::expect_used, reason = "test harness: a failure is the report")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A served resource.
#[derive(Debug, Clone, Copy)]
pub struct Res {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl Res {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Custom resources carry apiVersion/kind in list items; built-in kinds do not.
    fn custom(&self) -> bool {
        self.group == "gateway.networking.k8s.io" || self.group == "gateway.sluice.dev"
    }
}

const GW: &str = "gateway.networking.k8s.io";

pub const RESOURCES: &[Res] = &[
    Res {
        group: GW,
        version: "v1",
        plural: "gatewayclasses",
        kind: "GatewayClass",
        namespaced: false,
    },
    Res { group: GW, version: "v1", plural: "gateways", kind: "Gateway", namespaced: true },
    Res { group: GW, version: "v1", plural: "httproutes", kind: "HTTPRoute", namespaced: true },
    Res { group: GW, version: "v1", plural: "grpcroutes", kind: "GRPCRoute", namespaced: true },
    Res {
        group: GW,
        version: "v1beta1",
        plural: "referencegrants",
        kind: "ReferenceGrant",
        namespaced: true,
    },
    Res { group: "", version: "v1", plural: "services", kind: "Service", namespaced: true },
    Res {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    Res { group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false },
    Res {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
    },
    Res { group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true },
    Res {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
    },
    Res { group: "", version: "v1", plural: "configmaps", kind: "ConfigMap", namespaced: true },
    Res {
        group: "gateway.sluice.dev",
        version: "v1alpha1",
        plural: "clientcertificateheaders",
        kind: "ClientCertificateHeader",
        namespaced: true,
    },
];

fn res_of_kind(kind: &str) -> Res {
    *RESOURCES.iter().find(|r| r.kind == kind).unwrap_or_else(|| panic!("unknown kind {kind}"))
}

type ObjKey = (&'static str, String, String);

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    /// (resourceVersion, plural, type, object)
    events: Vec<(u64, &'static str, &'static str, Value)>,
    /// Watches from a resourceVersion at or below this get 410.
    compacted: u64,
    /// Bumped to cut every open watch.
    epoch: u64,
    up: bool,
    /// (path, body) of every status PATCH.
    status_writes: Vec<(String, Value)>,
    lists: usize,
    watches: usize,
    /// (method, path, query) of every request.
    requests: Vec<(String, String, String)>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The server; stops when dropped.
pub struct ApiServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
    }
}

impl ApiServer {
    pub fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let shared = Arc::new(Shared {
            state: Mutex::new(State { up: true, rv: 1, ..State::default() }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(addr, &s));
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(start.elapsed() < Duration::from_secs(5), "API server did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        ApiServer { addr, shared }
    }

    /// A kubeconfig pointing at this server (no credentials: the server checks none).
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Creates or replaces an object (as `kubectl apply` would end up).
    pub fn apply(&self, object: Value) {
        let res = res_of_kind(object["kind"].as_str().unwrap());
        let ns = if res.namespaced {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_owned()
        } else {
            String::new()
        };
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap().to_owned();
        let mut st = self.shared.lock();
        let _ = upsert(&mut st, res, &ns, &name, object, None);
        self.shared.changed.notify_all();
    }

    /// Applies every document of a YAML text.
    pub fn apply_yaml(&self, text: &str) {
        for doc in text.split("\n---") {
            let v: Value = serde_yaml_ng::from_str(doc).unwrap();
            if !v.is_null() {
                self.apply(v);
            }
        }
    }

    /// Sets an object's status as another writer would (a MODIFIED event follows).
    pub fn set_status(&self, kind: &str, ns: &str, name: &str, status: Value) {
        let res = res_of_kind(kind);
        let mut st = self.shared.lock();
        let key = (res.plural, ns.to_owned(), name.to_owned());
        let Some(mut o) = st.objects.get(&key).cloned() else { panic!("no {kind} {ns}/{name}") };
        o["status"] = status;
        st.rv += 1;
        o["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.objects.insert(key, o.clone());
        event(&mut st, res, "MODIFIED", o);
        self.shared.changed.notify_all();
    }

    pub fn delete(&self, kind: &str, ns: &str, name: &str) {
        let res = res_of_kind(kind);
        let mut st = self.shared.lock();
        remove(&mut st, res, ns, name);
        self.shared.changed.notify_all();
    }

    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let res = res_of_kind(kind);
        self.shared.lock().objects.get(&(res.plural, ns.to_owned(), name.to_owned())).cloned()
    }

    /// Every stored object of `kind`.
    pub fn all(&self, kind: &str) -> Vec<Value> {
        let res = res_of_kind(kind);
        let st = self.shared.lock();
        st.objects.iter().filter(|((p, ..), _)| *p == res.plural).map(|(_, o)| o.clone()).collect()
    }

    /// Cuts every open watch connection (clients resume from their last resourceVersion).
    pub fn drop_watches(&self) {
        self.shared.lock().epoch += 1;
        self.shared.changed.notify_all();
    }

    /// Forgets the event history up to a new resourceVersion no client has seen: every watch
    /// resumed from what it had gets 410 and must list again.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.rv += 1;
        st.compacted = st.rv;
        st.events.clear();
        st.epoch += 1;
        self.shared.changed.notify_all();
    }

    /// Takes the server away (connections refused) or brings it back on the same address.
    pub fn set_up(&self, up: bool) {
        let mut st = self.shared.lock();
        st.up = up;
        st.epoch += 1;
        self.shared.changed.notify_all();
    }

    pub fn status_writes(&self) -> Vec<(String, Value)> {
        self.shared.lock().status_writes.clone()
    }

    /// Every request so far: (method, path, query).
    pub fn requests(&self) -> Vec<(String, String, String)> {
        self.shared.lock().requests.clone()
    }

    pub fn counts(&self) -> (usize, usize) {
        let st = self.shared.lock();
        (st.lists, st.watches)
    }
}

pub fn now() -> String {
    // RFC 3339 seconds, as the API server writes creationTimestamp.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let days = secs / 86_400;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

fn event(st: &mut State, res: Res, kind: &'static str, object: Value) {
    let rv = st.rv;
    st.events.push((rv, res.plural, kind, object));
}

/// Creates or replaces; `Err(409 status)` when `expect_rv` does not match.
fn upsert(
    st: &mut State,
    res: Res,
    ns: &str,
    name: &str,
    mut object: Value,
    expect_rv: Option<&str>,
) -> Result<Value, Value> {
    let key = (res.plural, ns.to_owned(), name.to_owned());
    let old = st.objects.get(&key).cloned();
    if let (Some(want), Some(old)) = (expect_rv, &old)
        && old.pointer("/metadata/resourceVersion").and_then(Value::as_str) != Some(want)
    {
        return Err(status_error(
            409,
            "Conflict",
            &format!(
                "the object has been modified; please apply your changes to the latest version ({name})"
            ),
        ));
    }
    st.rv += 1;
    let rv = st.rv;
    object["apiVersion"] = json!(res.api_version());
    object["kind"] = json!(res.kind);
    let meta = object["metadata"].as_object_mut().expect("metadata");
    meta.insert("name".into(), json!(name));
    if res.namespaced {
        meta.insert("namespace".into(), json!(ns));
    }
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    let (uid, created, generation, status) = match &old {
        Some(o) => {
            let spec_changed = o.get("spec") != object.get("spec");
            let g = o.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            (
                o.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                o.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null),
                if spec_changed { g + 1 } else { g },
                o.get("status").cloned(),
            )
        }
        None => (json!(format!("uid-{rv}")), json!(now()), 1, None),
    };
    let meta = object["metadata"].as_object_mut().expect("metadata");
    meta.insert("uid".into(), uid);
    meta.insert("creationTimestamp".into(), created);
    if res.kind != "Lease" {
        meta.insert("generation".into(), json!(generation));
    }
    meta.insert(
        "managedFields".into(),
        json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": res.api_version(), "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]),
    );
    // Status is written only through /status (for kinds that have it).
    if res.kind != "Lease" {
        match status {
            Some(s) => object["status"] = s,
            None => {
                if let Some(o) = object.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    st.objects.insert(key, object.clone());
    event(st, res, if old.is_some() { "MODIFIED" } else { "ADDED" }, object.clone());
    Ok(object)
}

fn remove(st: &mut State, res: Res, ns: &str, name: &str) -> Option<Value> {
    let mut object = st.objects.remove(&(res.plural, ns.to_owned(), name.to_owned()))?;
    st.rv += 1;
    object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
    event(st, res, "DELETED", object.clone());
    Some(object)
}

fn status_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in fields {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn accept_loop(addr: SocketAddr, shared: &Arc<Shared>) {
    let mut listener: Option<TcpListener> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let up = shared.lock().up;
        if !up {
            listener = None;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if listener.is_none() {
            match TcpListener::bind(addr) {
                Ok(l) => {
                    l.set_nonblocking(true).unwrap();
                    listener = Some(l);
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        match listener.as_ref().map(TcpListener::accept) {
            Some(Ok((stream, _))) => {
                let s = Arc::clone(shared);
                std::thread::spawn(move || {
                    let _ = serve(stream, &s);
                });
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Value,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Option<Request>> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
        return Ok(None);
    }
    let header = |n: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(n))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length").and_then(|l| l.trim().parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let target = req.path.unwrap_or("/").to_owned();
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%2F", "/").replace("%3A", ":").replace("%3D", "=")))
        .collect();
    Ok(Some(Request {
        method: req.method.unwrap_or("GET").to_owned(),
        path: path.to_owned(),
        query,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    }))
}

fn respond(stream: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    write!(
        stream,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )
}

/// (resource, namespace, name, status subresource)
fn route(path: &str) -> Option<(Res, String, Option<String>, bool)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] => (ns.to_string(), [&[*plural][..], more].concat()),
        other => (String::new(), other.to_vec()),
    };
    let res = *RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == rest[0])?;
    let name = rest.get(1).map(|s| (*s).to_owned());
    let status = rest.get(2) == Some(&"status");
    Some((res, ns, name, status))
}

fn serve(mut stream: TcpStream, shared: &Arc<Shared>) -> std::io::Result<()> {
    let Some(req) = read_request(&stream)? else { return Ok(()) };
    {
        let query: Vec<String> = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        shared.lock().requests.push((req.method.clone(), req.path.clone(), query.join("&")));
    }
    let Some((res, ns, name, status)) = route(&req.path) else {
        return respond(&mut stream, 404, &status_error(404, "NotFound", "no such path"));
    };
    if req.method == "GET"
        && name.is_none()
        && req.query.get("watch").map(String::as_str) == Some("true")
    {
        return watch(stream, shared, res, &ns, &req);
    }
    let mut st = shared.lock();
    let not_found = || {
        status_error(
            404,
            "NotFound",
            &format!("{} \"{}\" not found", res.plural, name.clone().unwrap_or_default()),
        )
    };
    let (code, body) = match (req.method.as_str(), &name, status) {
        ("GET", None, _) => {
            st.lists += 1;
            let only = name_selector(&req);
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((p, n, name), _)| {
                    *p == res.plural
                        && (ns.is_empty() || *n == ns)
                        && only.as_deref().is_none_or(|o| o == name)
                })
                .map(|(_, o)| {
                    let mut o = o.clone();
                    if !res.custom()
                        && let Some(m) = o.as_object_mut()
                    {
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                    o
                })
                .collect();
            (
                200,
                json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                         "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            )
        }
        ("GET", Some(n), _) => match st.objects.get(&(res.plural, ns, n.clone())) {
            Some(o) => (200, o.clone()),
            None => (404, not_found()),
        },
        ("POST", None, _) => {
            let n = req
                .body
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if st.objects.contains_key(&(res.plural, ns.clone(), n.clone())) {
                (
                    409,
                    status_error(
                        409,
                        "AlreadyExists",
                        &format!("{} \"{n}\" already exists", res.plural),
                    ),
                )
            } else {
                match upsert(&mut st, res, &ns, &n, req.body.clone(), None) {
                    Ok(o) => (201, o),
                    Err(e) => (409, e),
                }
            }
        }
        ("PUT", Some(n), false) => {
            if !st.objects.contains_key(&(res.plural, ns.clone(), n.clone())) {
                (404, not_found())
            } else {
                let want = req
                    .body
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                match upsert(&mut st, res, &ns, n, req.body.clone(), want.as_deref()) {
                    Ok(o) => (200, o),
                    Err(e) => (409, e),
                }
            }
        }
        ("PATCH", Some(n), true) => {
            let key = (res.plural, ns, n.clone());
            match st.objects.get(&key).cloned() {
                None => (404, not_found()),
                Some(mut o) => {
                    let want =
                        req.body.pointer("/metadata/resourceVersion").and_then(Value::as_str);
                    if want.is_some()
                        && want != o.pointer("/metadata/resourceVersion").and_then(Value::as_str)
                    {
                        (409, status_error(409, "Conflict", "the object has been modified"))
                    } else {
                        let patch = req.body.get("status").cloned().unwrap_or(Value::Null);
                        let mut status = o.get("status").cloned().unwrap_or(json!({}));
                        merge_patch(&mut status, &patch);
                        o["status"] = status;
                        st.rv += 1;
                        o["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                        st.objects.insert(key, o.clone());
                        st.status_writes.push((req.path.clone(), req.body.clone()));
                        event(&mut st, res, "MODIFIED", o.clone());
                        (200, o)
                    }
                }
            }
        }
        // A merge patch of a whole object (kube's event recorder raises a series' count so).
        ("PATCH", Some(n), false) => {
            let key = (res.plural, ns, n.clone());
            match st.objects.get(&key).cloned() {
                None => (404, not_found()),
                Some(mut o) => {
                    merge_patch(&mut o, &req.body);
                    st.rv += 1;
                    o["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                    st.objects.insert(key, o.clone());
                    event(&mut st, res, "MODIFIED", o.clone());
                    (200, o)
                }
            }
        }
        ("DELETE", Some(n), false) => match remove(&mut st, res, &ns, n) {
            Some(o) => (200, o),
            None => (404, not_found()),
        },
        _ => (405, status_error(405, "MethodNotAllowed", "not supported by the test server")),
    };
    drop(st);
    shared.changed.notify_all();
    respond(&mut stream, code, &body)
}

fn chunk(stream: &mut TcpStream, line: &Value) -> std::io::Result<()> {
    let text = format!("{line}\n");
    write!(stream, "{:x}\r\n{text}\r\n", text.len())?;
    stream.flush()
}

/// `fieldSelector=metadata.name=<name>` (the only field selector served).
fn name_selector(req: &Request) -> Option<String> {
    req.query.get("fieldSelector")?.strip_prefix("metadata.name=").map(str::to_owned)
}

fn watch(
    mut stream: TcpStream,
    shared: &Arc<Shared>,
    res: Res,
    ns: &str,
    req: &Request,
) -> std::io::Result<()> {
    let from: u64 = req.query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let only = name_selector(req);
    let bookmarks = req.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    let (epoch, expired) = {
        let mut st = shared.lock();
        st.watches += 1;
        (st.epoch, from != 0 && from < st.compacted)
    };
    if expired {
        let e = status_error(410, "Expired", &format!("too old resource version: {from}"));
        chunk(&mut stream, &json!({"type": "ERROR", "object": e}))?;
        return write!(stream, "0\r\n\r\n");
    }
    let start = Instant::now();
    let mut last = from;
    let mut last_bookmark = Instant::now();
    loop {
        let (events, current, cut) = {
            // The history is in resourceVersion order: only what follows `last` is looked at
            // (scanning all of it on every wake of every watch made the server, not the client,
            // the cost of each event at thousands of objects).
            let newer = |events: &[(u64, &'static str, &'static str, Value)]| {
                events.partition_point(|(rv, ..)| *rv <= last)
            };
            let st = shared.lock();
            let pending = newer(&st.events);
            let st = if st.events[pending..].iter().any(|(_, p, ..)| *p == res.plural)
                || st.epoch != epoch
            {
                st
            } else {
                shared
                    .changed
                    .wait_timeout(st, Duration::from_millis(100))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0)
            };
            let events: Vec<(u64, &'static str, Value)> = st.events[newer(&st.events)..]
                .iter()
                .filter(|(_, p, _, o)| {
                    *p == res.plural
                        && (ns.is_empty()
                            || o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
                        && only.as_deref().is_none_or(|n| {
                            o.pointer("/metadata/name").and_then(Value::as_str) == Some(n)
                        })
                })
                .map(|(rv, _, t, o)| (*rv, *t, o.clone()))
                .collect();
            (events, st.rv, st.epoch != epoch || shared.stop.load(Ordering::Relaxed))
        };
        if cut {
            // A dropped connection: no terminating chunk.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        for (rv, t, o) in events {
            chunk(&mut stream, &json!({"type": t, "object": o}))?;
            last = rv;
        }
        if bookmarks && last_bookmark.elapsed() > Duration::from_millis(500) {
            last_bookmark = Instant::now();
            last = last.max(current);
            chunk(
                &mut stream,
                &json!({"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": last.to_string()}}}),
            )?;
        }
        if start.elapsed() > timeout {
            return write!(stream, "0\r\n\r\n");
        }
    }
}
