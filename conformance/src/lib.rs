//! Sluice's Gateway API conformance runner. Reads the upstream manifests and the translated
//! request/status vectors from `../shared` at run time, runs real config-sync, lb and echo
//! processes on loopback, and reports each test as pass, fail (first mismatch) or skip
//! (the feature it needs).
//!
//! The "cluster" is a manifests folder config-sync watches: the base manifests plus one test's
//! at a time. Deployments become echo processes (one per replica, each on its own loopback
//! address, port 3000) and the runner writes the EndpointSlices the endpoints controller would.
//! Each Gateway without addresses gets its own loopback address from config-sync's
//! `--address-pool`; requests go to the address its status reports.

pub mod cases;
pub mod check;
pub mod http;
pub mod manifests;
pub mod mirror;
pub mod pki;
pub mod status;
pub mod upstream_report;
pub mod ws;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use cases::{Case, GatewayRef, Test};
use manifests::{Pod, kind};

/// Features Sluice claims: a test that needs only these must pass. The same list config-sync
/// reports in GatewayClass `status.supportedFeatures`.
pub const CLAIMED: &[&str] = config_sync::SUPPORTED_FEATURES;

/// Where the suite takes the addresses of hand-written EndpointSlices from (its Service-types
/// test patches them with these pods' IPs before sending requests).
const INFRA_NAMESPACE: &str = "gateway-conformance-infra";
const MANUAL_SLICE_BACKEND: &str = "infra-backend-v1-";

/// Public vectors that cannot pass as written, with the upstream source that shows why; each
/// is reported as a skip that says so, and run corrected from `conformance/cases/sluice.json`.
const VECTOR_ERRATA: &[(&str, &str)] = &[(
    "GatewayModifyListeners",
    "the vector lost the two Patch steps of upstream gateway-modify-listeners.go (add listener `http` :80 to gateway-add-listener, then drop `https` from gateway-remove-listener), so its second check expects a listener the manifest never has; run corrected as SluiceGatewayModifyListeners",
)];

/// GatewayClass name the manifests are filled in with.
pub const CLASS: &str = "sluice";
/// Controller name config-sync serves.
pub const CONTROLLER: &str = "sluice.dev/gateway-controller";

/// Runner options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The vector file.
    pub cases: PathBuf,
    /// The folder holding `gateway-api/` (the upstream manifests).
    pub shared: PathBuf,
    /// The sluice binary.
    pub sluice: PathBuf,
    /// Only tests with these names (empty: all).
    pub tests: Vec<String>,
    /// Claimed features (default: [`CLAIMED`]).
    pub features: Vec<String>,
    /// How long a case or status check may take to hold (the suite is eventually consistent).
    pub timeout: Duration,
    /// Keep the work folder.
    pub keep: bool,
    /// Also write the report as Markdown here.
    pub markdown: Option<PathBuf>,
    /// Also write a Gateway API `ConformanceReport` (YAML) here.
    pub report: Option<PathBuf>,
}

/// The Gateway API release the vectors were translated from.
pub const GATEWAY_API_VERSION: &str = "v1.6.1";

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every case and status check held.
    Pass,
    /// The first mismatch.
    Fail(String),
    /// Why it was not run.
    Skip(String),
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cluster {
    opts: Options,
    conformance: PathBuf,
    work: PathBuf,
    manifests: PathBuf,
    status: PathBuf,
    base: Vec<Value>,
    base_pods: Vec<Pod>,
    next_ip: u32,
    pki: pki::Pki,
    _procs: Procs,
}

/// Runs the tests; returns the report text and whether every test of a claimed feature passed.
pub fn run(opts: &Options) -> Result<(String, bool), String> {
    let text = std::fs::read_to_string(&opts.cases)
        .map_err(|e| format!("{}: {e}", opts.cases.display()))?;
    let file = cases::CaseFile::parse(&text)?;
    let conformance = opts.shared.join("gateway-api/conformance");
    if !conformance.join("base/manifests.yaml").is_file() {
        return Err(format!("{}: no base/manifests.yaml (pass --shared)", conformance.display()));
    }
    let selected: Vec<&Test> = file
        .tests
        .iter()
        .filter(|t| opts.tests.is_empty() || opts.tests.contains(&t.test))
        .collect();
    let mut cluster = Cluster::start(opts, conformance)?;
    let mut results: Vec<(&Test, Outcome)> = Vec::new();
    let mut lines = Vec::new();
    for t in selected {
        let started = Instant::now();
        let outcome = match cluster.skip_reason(t) {
            Some(why) => Outcome::Skip(why),
            None => cluster.run_test(t),
        };
        let line = match &outcome {
            Outcome::Pass => format!("PASS {} ({:.1} s)", t.test, started.elapsed().as_secs_f64()),
            Outcome::Fail(why) => format!("FAIL {}: {why}", t.test),
            Outcome::Skip(why) => format!("SKIP {}: {why}", t.test),
        };
        println!("{line}");
        lines.push(line);
        results.push((t, outcome));
    }
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&cluster.work);
    }
    let (summary, ok) = report(&results);
    if let Some(path) = &opts.report {
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let yaml = upstream_report::yaml(&results, &opts.features, &date);
        std::fs::write(path, yaml).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &opts.markdown {
        let mut md = String::from("# Gateway API conformance\n\n");
        let _ = writeln!(
            md,
            "Produced by Sluice's own runner (`sluice-conformance`) over vectors translated from the upstream v1.6.1 suite (`../shared/conformance/cases.json`) and the upstream manifests: real config-sync, lb and echo processes on loopback. Not an upstream conformance report.\n\nClaimed features: {}.\n",
            opts.features.join(", ")
        );
        md.push_str(&summary);
        md.push_str("\n## Tests\n\n");
        for l in &lines {
            let _ = writeln!(md, "- {l}");
        }
        std::fs::write(path, md).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok((summary, ok))
}

fn report(results: &[(&Test, Outcome)]) -> (String, bool) {
    let mut per_feature: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    let mut totals = [0usize; 3];
    for (t, o) in results {
        let slot = match o {
            Outcome::Pass => 0,
            Outcome::Fail(_) => 1,
            Outcome::Skip(_) => 2,
        };
        totals[slot] += 1;
        for f in &t.feature {
            per_feature.entry(f).or_default()[slot] += 1;
        }
    }
    let mut out = String::from("\n| feature | passed | failed | skipped |\n|---|---|---|---|\n");
    for (f, [p, fl, s]) in &per_feature {
        let _ = writeln!(out, "| {f} | {p} | {fl} | {s} |");
    }
    let _ = writeln!(out, "\n{} passed, {} failed, {} skipped", totals[0], totals[1], totals[2]);
    (out, totals[1] == 0)
}

impl Cluster {
    fn start(opts: &Options, conformance: PathBuf) -> Result<Cluster, String> {
        let work = std::env::temp_dir().join(format!("sluice-conformance-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let manifests = work.join("manifests");
        let status = work.join("status");
        for d in [&manifests, &status] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let table =
            PathBuf::from(format!("/dev/shm/sluice-conformance-{}/table", std::process::id()));
        let mut base =
            manifests::load(&conformance.join("base/manifests.yaml"), CLASS, CONTROLLER)?;
        // The suite creates its TLS Secrets and CA ConfigMaps at run time; so does the runner.
        let pki = pki::Pki::new()?;
        base.extend(pki.objects.iter().cloned());
        // The suite creates the GatewayClass it is run with; so does the runner.
        base.push(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": CLASS},
            "spec": {"controllerName": CONTROLLER},
        }));
        let mut cluster = Cluster {
            opts: opts.clone(),
            conformance,
            manifests,
            status,
            base,
            base_pods: Vec::new(),
            next_ip: u32::from(Ipv4Addr::new(127, 1, 0, 1)),
            pki,
            _procs: Procs(Vec::new()),
            work,
        };
        let pods = manifests::pods(&cluster.base.clone(), &mut || cluster_ip(&mut cluster.next_ip));
        let mut procs = cluster.start_pods(&pods)?;
        let mut objects = cluster.base.clone();
        objects.extend(manifests::endpoint_slices(&cluster.base, &pods));
        manifests::write(&cluster.manifests.join("base.yaml"), &objects)?;
        cluster.base_pods = pods;
        let log =
            |name: &str| std::fs::File::create(cluster.work.join(name)).map_err(|e| e.to_string());
        procs.0.push(
            Command::new(&opts.sluice)
                .args(["config-sync", "--manifests"])
                .arg(&cluster.manifests)
                .arg("--table")
                .arg(&table)
                .arg("--status-dir")
                .arg(&cluster.status)
                .args(["--controller-name", CONTROLLER, "--address-pool", "127.10.0.0/16"])
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log("config-sync.log")?)
                .spawn()
                .map_err(|e| format!("start config-sync ({}): {e}", opts.sluice.display()))?,
        );
        procs.0.push(
            Command::new(&opts.sluice)
                .args(["lb", "--table"])
                .arg(&table)
                .args(["--bind-address", "127.0.0.1"])
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log("lb.log")?)
                .spawn()
                .map_err(|e| format!("start lb: {e}"))?,
        );
        cluster._procs = procs;
        Ok(cluster)
    }

    fn start_pods(&self, pods: &[Pod]) -> Result<Procs, String> {
        let mut procs = Procs(Vec::new());
        let logs = self.work.join("pods");
        std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
        for p in pods.iter().filter(|p| p.http_echo) {
            let log = std::fs::File::create(logs.join(format!("{}-{}.log", p.namespace, p.name)))
                .map_err(|e| e.to_string())?;
            procs.0.push(
                Command::new(&self.opts.sluice)
                    .args(["echo", "--listen", &format!("{}:3000", p.ip)])
                    // The upstream echo's h2c port (Services with appProtocol kubernetes.io/h2c).
                    .args(["--also-listen", &format!("{}:3001", p.ip)])
                    .args(["--namespace", &p.namespace, "--pod", &p.name])
                    .env("NO_COLOR", "1")
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .map_err(|e| format!("start echo {}: {e}", p.name))?,
            );
        }
        Ok(procs)
    }

    /// Why a test cannot run here, from what it needs (features, TLS, other schemes).
    fn skip_reason(&self, t: &Test) -> Option<String> {
        if let Some((_, why)) = VECTOR_ERRATA.iter().find(|(name, _)| *name == t.test) {
            return Some(format!("vector incomplete: {why}"));
        }
        // A check written as prose cannot be replayed by a program (reported, not passed).
        if let Some(prose) = t.cases.iter().find_map(|c| c.expect.get("invariant")) {
            return Some(format!("vector states a check in prose only (invariant: {prose})"));
        }
        // The translator marks a step it could not translate with `ERR`: such a vector cannot
        // be replayed as written (it says so; this is not a pass).
        if let Some((i, e)) =
            t.status_expectations.iter().enumerate().find(|(_, e)| e.get("ERR").is_some())
        {
            return Some(format!(
                "vector incomplete: status expectation {} ({}) says ERR {}",
                i + 1,
                str_of(e, "check").unwrap_or("?"),
                e["ERR"]
            ));
        }
        if let Some(f) = t.feature.iter().find(|f| !self.opts.features.iter().any(|c| c == *f)) {
            return Some(format!("feature {f} is not supported"));
        }
        if let Some(c) = t
            .cases
            .iter()
            .find(|c| str_of(&c.request, "scheme").is_some_and(|s| s != "http" && s != "https"))
        {
            return Some(format!(
                "needs {} connections (TLS passthrough is a later issue)",
                str_of(&c.request, "scheme").unwrap_or_default()
            ));
        }
        if let Some(p) = t
            .cases
            .iter()
            .filter_map(|c| str_of(&c.request, "protocol"))
            .find(|p| !matches!(*p, "HTTP/2.0" | "H2C_PRIOR_KNOWLEDGE" | "grpc (h2c)"))
        {
            return Some(format!("needs protocol {p:?}"));
        }
        None
    }

    fn test_objects(&self, t: &Test) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        for m in &t.manifests {
            // `./x.yaml` is a manifest of our own, next to the vector file; anything else is
            // the upstream's, relative to its conformance folder.
            let path = match m.strip_prefix("./") {
                Some(own) => self.opts.cases.parent().unwrap_or(Path::new(".")).join(own),
                None => self.conformance.join(m),
            };
            out.extend(manifests::load(&path, CLASS, CONTROLLER)?);
        }
        Ok(out)
    }

    fn run_test(&mut self, t: &Test) -> Outcome {
        let objects = match self.test_objects(t) {
            Ok(o) => o,
            Err(e) => return Outcome::Fail(e),
        };
        let pods = manifests::pods(&objects, &mut || cluster_ip(&mut self.next_ip));
        let _procs = match self.start_pods(&pods) {
            Ok(p) => p,
            Err(e) => return Outcome::Fail(e),
        };
        let all_pods: Vec<Pod> = self.base_pods.iter().chain(&pods).cloned().collect();
        let mut written = objects.clone();
        let infra_v1: Vec<&Pod> = self
            .base_pods
            .iter()
            .filter(|p| p.namespace == INFRA_NAMESPACE && p.name.starts_with(MANUAL_SLICE_BACKEND))
            .collect();
        manifests::fill_manual_slices(&mut written, &infra_v1);
        written.extend(manifests::endpoint_slices(&objects, &all_pods));
        let file = self.manifests.join("test.yaml");
        if let Err(e) = manifests::write(&file, &written) {
            return Outcome::Fail(e);
        }
        let outcome = self.replay(t, &objects, &mut written, &file);
        let _ = std::fs::remove_file(&file);
        self.wait_gone(&objects);
        outcome
    }

    fn replay(&self, t: &Test, objects: &[Value], written: &mut [Value], file: &Path) -> Outcome {
        for (i, c) in t.cases.iter().enumerate() {
            if let Err(why) = self.case(t, c, objects) {
                return Outcome::Fail(format!(
                    "case {} ({} {}): {why}",
                    i + 1,
                    str_of(&c.request, "host").unwrap_or("-"),
                    str_of(&c.request, "path").unwrap_or("/")
                ));
            }
        }
        // "<each route listed in the test>" stands for the routes of the check before it.
        let mut listed: Vec<Value> = Vec::new();
        let mut expanded: Vec<Value> = Vec::new();
        for e in &t.status_expectations {
            if let Some(routes) = e.get("routes").and_then(Value::as_array) {
                listed.clone_from(routes);
            }
            match e.get("route").and_then(Value::as_str) {
                Some(r) if r.starts_with('<') => expanded.extend(listed.iter().map(|route| {
                    let mut one = e.clone();
                    one["route"] = route.clone();
                    one
                })),
                _ => expanded.push(e.clone()),
            }
        }
        for e in &expanded {
            // `{"check": "Apply", "kind", "object": "ns/name", "merge_patch"}`: change an object
            // of the test (as the Go tests patch one) before the checks after it.
            if e.get("check").and_then(Value::as_str) == Some("Apply") {
                if let Err(why) = apply(e, written, file) {
                    return Outcome::Fail(format!("Apply: {why}"));
                }
                continue;
            }
            let deadline = Instant::now() + self.opts.timeout;
            loop {
                match status::check(&self.status, e) {
                    Ok(()) => break,
                    Err(why) if Instant::now() > deadline => {
                        return Outcome::Fail(format!(
                            "status {}: {why}",
                            e.get("check").and_then(Value::as_str).unwrap_or("?")
                        ));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Outcome::Pass
    }

    /// One case, retried until it holds three times in a row or the timeout passes.
    fn case(&self, t: &Test, c: &Case, objects: &[Value]) -> Result<(), String> {
        let gw = c.gateway.as_ref().or(t.gateway.as_ref()).ok_or("no gateway named")?;
        let deadline = Instant::now() + self.opts.timeout;
        let mut passes = 0;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.attempt(gw, c, objects) {
                Ok(()) => {
                    passes += 1;
                    if passes == 3 {
                        return self.mirror_distribution(t, gw, c, objects);
                    }
                    continue;
                }
                Err(why) => {
                    passes = 0;
                    last = why;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(last)
    }

    fn attempt(&self, gw: &GatewayRef, c: &Case, objects: &[Value]) -> Result<(), String> {
        let ip = status::gateway_address(&self.status, &gw.namespace, &gw.name)
            .ok_or_else(|| format!("Gateway {}/{} has no address yet", gw.namespace, gw.name))?;
        let r = &c.request;
        let scheme = str_of(r, "scheme").unwrap_or("http");
        let port = match c.gateway_port {
            Some(p) => p,
            None => self
                .gateway_port(gw, objects, scheme)
                .ok_or_else(|| format!("the Gateway has no {scheme} listener"))?,
        };
        let addr: SocketAddr =
            format!("{ip}:{port}").parse().map_err(|e| format!("{ip}:{port}: {e}"))?;
        let tls = self.tls_for(r)?;
        let send = |r: &Value, path: &str| send(addr, r, path, tls.as_ref());
        let fails = ["tls_request_fails", "tls_connection_rejected"];
        if let Some(field) = fails.iter().find(|f| c.expect.get(**f) == Some(&Value::Bool(true))) {
            return match send(r, str_of(r, "path").unwrap_or("/")) {
                Err(_) => Ok(()),
                Ok(resp) => Err(format!("expected {field}, got status {}", resp.status)),
            };
        }
        if r.get("websocket").and_then(Value::as_bool) == Some(true) {
            let lines: Vec<&str> = c
                .expect
                .get("websocket_echo")
                .and_then(Value::as_array)
                .map(|l| l.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let url = str_of(r, "url").unwrap_or("ws://gateway/");
            let path =
                url.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]));
            return ws::check(addr, &ip, path.unwrap_or("/"), &ws::messages(&lines)?);
        }
        let path = str_of(r, "path").unwrap_or("/");
        // `repeat: N`: the expectation must hold for N requests in a row.
        let repeat = c.expect.get("repeat").and_then(Value::as_u64).unwrap_or(1).max(1);
        if repeat > 1 {
            let mut once = c.expect.clone();
            if let Some(o) = once.as_object_mut() {
                o.remove("repeat");
            }
            for _ in 0..repeat {
                check::response(&once, path, scheme, &send(r, path)?)?;
            }
            return Ok(());
        }
        if let Some(fresh) = with_fresh_uuid(path) {
            // The retry simulation counts attempts per uuid: every probe needs its own.
            let mut expect = c.expect.clone();
            if let Some(seen) = expect.get("path_seen_by_backend").and_then(Value::as_str) {
                let uuid = query_uuid(&fresh);
                expect["path_seen_by_backend"] = Value::String(substitute_uuid(seen, uuid));
            }
            let resp = send(r, &fresh)?;
            return check::response(&expect, &fresh, scheme, &resp);
        }
        let mirrors = mirror::targets(&c.expect);
        if mirrors.is_empty() {
            let resp = send(r, path)?;
            return check::response(&c.expect, path, scheme, &resp);
        }
        // Mirrors: tag the request (and the path the backend must see) with a fresh id, then
        // look for that id in the mirror backends' logs.
        let id = mirror::request_id();
        let tagged = mirror::tag(path, &id);
        let mut expect = c.expect.clone();
        if let Some(o) = expect.as_object_mut() {
            o.remove("mirrored_to");
            if let Some(seen) = o.get("path_seen_by_backend").and_then(Value::as_str) {
                let seen = mirror::tag(seen, &id);
                o.insert("path_seen_by_backend".into(), Value::String(seen));
            }
        }
        let resp = send(r, &tagged)?;
        check::response(&expect, &tagged, scheme, &resp)?;
        let logs = self.work.join("pods");
        for m in mirrors.iter().filter(|m| m.percent >= 100.0) {
            mirror::wait_for(&logs, m, &id, Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// For mirrors sampled below 100 %, the test's `mirror_distribution`: that many tagged
    /// requests, and the share the mirror backend logged must be within its tolerance (several
    /// rounds allowed, as the suite does).
    fn mirror_distribution(
        &self,
        t: &Test,
        gw: &GatewayRef,
        c: &Case,
        objects: &[Value],
    ) -> Result<(), String> {
        let sampled: Vec<mirror::Target> =
            mirror::targets(&c.expect).into_iter().filter(|m| m.percent < 100.0).collect();
        if sampled.is_empty() {
            return Ok(());
        }
        let dist = t.mirror_distribution.as_ref();
        let number = |field: &str, default: u64| {
            dist.and_then(|d| d.get(field)).and_then(Value::as_u64).unwrap_or(default) as usize
        };
        let (total, concurrency, rounds) =
            (number("total_requests", 500), number("concurrency", 10).max(1), number("retries", 5));
        let ip = status::gateway_address(&self.status, &gw.namespace, &gw.name)
            .ok_or("the Gateway has no address")?;
        let scheme = str_of(&c.request, "scheme").unwrap_or("http");
        let port =
            c.gateway_port.or_else(|| self.gateway_port(gw, objects, scheme)).ok_or("no port")?;
        let tls = self.tls_for(&c.request)?;
        let addr: SocketAddr = format!("{ip}:{port}").parse().map_err(|e| format!("{e}"))?;
        let path = str_of(&c.request, "path").unwrap_or("/");
        let logs = self.work.join("pods");
        let mut last = String::new();
        for _ in 0..rounds.max(1) {
            let ids: Vec<String> = (0..total).map(|_| mirror::request_id()).collect();
            let failed = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|scope| {
                for chunk in ids.chunks(total.div_ceil(concurrency).max(1)) {
                    let failed = &failed;
                    let tls = &tls;
                    scope.spawn(move || {
                        for id in chunk {
                            let ok = send(addr, &c.request, &mirror::tag(path, id), tls.as_ref())
                                .is_ok_and(|r| r.status == 200);
                            if !ok {
                                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            let failed = failed.into_inner();
            if failed > 0 {
                last = format!("{failed} of {total} requests failed");
                continue;
            }
            // Copies are fire-and-forget: give the last ones a moment to land.
            std::thread::sleep(Duration::from_millis(500));
            let verdict = sampled.iter().try_for_each(|m| {
                let seen = mirror::ids_seen(&logs, m);
                let count = ids.iter().filter(|id| seen.contains(*id)).count();
                mirror::within_tolerance(count, total, m.percent)
                    .map_err(|e| format!("{}/{}: {e}", m.namespace, m.backend))
            });
            match verdict {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(format!("mirror distribution: {last}"))
    }

    /// The TLS client for a request: `None` for `http`; for `https`, the vector's server
    /// name (else its host) and client certificate (`Secret <name>` in the infra namespace).
    fn tls_for(&self, r: &Value) -> Result<Option<http::Tls>, String> {
        if str_of(r, "scheme") != Some("https") {
            return Ok(None);
        }
        let sni = str_of(r, "sni").or_else(|| str_of(r, "host")).unwrap_or("example.org");
        let client = match r.get("client_certificate") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                let name = s.strip_prefix("Secret ").unwrap_or(s);
                Some(if name.contains('/') {
                    name.to_owned()
                } else {
                    format!("{INFRA_NAMESPACE}/{name}")
                })
            }
            Some(other) => return Err(format!("client_certificate {other} is not understood")),
        };
        let config = self.pki.client(client.as_deref())?;
        Ok(Some(http::Tls { config, sni: sni.to_owned() }))
    }

    fn gateway_port(&self, gw: &GatewayRef, objects: &[Value], scheme: &str) -> Option<u16> {
        let g = objects.iter().chain(&self.base).find(|o| {
            kind(o) == "Gateway" && manifests::key(o) == (gw.namespace.clone(), gw.name.clone())
        })?;
        let protocol = if scheme == "https" { "HTTPS" } else { "HTTP" };
        g.pointer("/spec/listeners")?
            .as_array()?
            .iter()
            .find(|l| l.get("protocol").and_then(Value::as_str) == Some(protocol))?
            .get("port")?
            .as_u64()
            .map(|p| p as u16)
    }

    /// Waits until config-sync has dropped the status of the test's Gateways and HTTPRoutes,
    /// so the next test does not see them.
    fn wait_gone(&self, objects: &[Value]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for o in objects {
            let dir = match kind(o) {
                "Gateway" => "gateway",
                "HTTPRoute" => "httproute",
                _ => continue,
            };
            let (ns, n) = manifests::key(o);
            while status::read(&self.status, dir, &ns, &n).is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Applies an `Apply` step's merge patch to the object it names and rewrites the manifests.
fn apply(step: &Value, written: &mut [Value], file: &Path) -> Result<(), String> {
    let want_kind = str_of(step, "kind").ok_or("no kind")?;
    let (ns, name) = str_of(step, "object").and_then(|o| o.split_once('/')).ok_or("no object")?;
    let patch = step.get("merge_patch").ok_or("no merge_patch")?.to_string();
    let patch = patch
        .replace("PLACEHOLDER_USABLE_ADDRS", manifests::USABLE_ADDRESS)
        .replace("PLACEHOLDER_UNUSABLE_ADDRS", manifests::UNUSABLE_ADDRESS);
    let patch: Value = serde_json::from_str(&patch).map_err(|e| e.to_string())?;
    let object = written
        .iter_mut()
        .find(|o| kind(o) == want_kind && manifests::key(o) == (ns.to_owned(), name.to_owned()))
        .ok_or_else(|| format!("no {want_kind} {ns}/{name} in the test"))?;
    manifests::merge_patch(object, &patch);
    manifests::write(file, written)
}

/// A `/retry/` path (or one with a `{uuid}` / `<uuid>` placeholder) with a fresh uuid in it;
/// `None` for other paths.
fn with_fresh_uuid(path: &str) -> Option<String> {
    let id = mirror::request_id();
    if path.contains("{uuid}") || path.contains("<uuid>") {
        return Some(substitute_uuid(path, &id));
    }
    if path.starts_with("/retry/") && !path.contains("uuid=") {
        let sep = if path.contains('?') { '&' } else { '?' };
        return Some(format!("{path}{sep}uuid={id}"));
    }
    None
}

fn substitute_uuid(s: &str, id: &str) -> String {
    s.replace("{uuid}", id).replace("<uuid>", id)
}

/// The `uuid` query value of a path.
fn query_uuid(path: &str) -> &str {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    query.split('&').find_map(|kv| kv.strip_prefix("uuid=")).unwrap_or_default()
}

/// Sends the case's request (method, host, headers) with this path.
fn send(
    addr: SocketAddr,
    r: &Value,
    path: &str,
    tls: Option<&http::Tls>,
) -> Result<http::Response, String> {
    let headers: Vec<(String, String)> = r
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter().map(|(n, v)| (n.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
        })
        .unwrap_or_default();
    // gRPC: a unary call of the echo service, with the vector's metadata.
    if let Some(method) = str_of(r, "grpc_method") {
        let metadata: Vec<(String, String)> = r
            .get("metadata")
            .and_then(Value::as_object)
            .map(|h| {
                h.iter()
                    .map(|(n, v)| (n.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let authority = str_of(r, "authority").or(str_of(r, "host"));
        if tls.is_some() {
            return Err("gRPC over TLS is not in the runner yet".into());
        }
        return http::send_grpc(addr, authority, method, &metadata, Duration::from_secs(5));
    }
    // `protocol`: HTTP/2 over TLS (ALPN h2) or cleartext with prior knowledge; HTTP/1.1
    // otherwise.
    let send = match str_of(r, "protocol") {
        Some("HTTP/2.0" | "H2C_PRIOR_KNOWLEDGE") => http::send_h2,
        _ => http::send,
    };
    send(
        addr,
        str_of(r, "method").unwrap_or("GET"),
        str_of(r, "host"),
        path,
        &headers,
        Duration::from_secs(5),
        tls,
    )
}

fn cluster_ip(next: &mut u32) -> Ipv4Addr {
    let ip = Ipv4Addr::from(*next);
    *next += 1;
    ip
}

fn str_of<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(Value::as_str)
}

/// The default `--shared`: `../shared` beside the checkout.
pub fn default_shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}
