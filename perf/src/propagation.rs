//! Config propagation at scale, after the method of the public gateway-api-bench: with N
//! HTTPRoutes loaded (namespaces × routes per namespace, one file each), add routes one at a
//! time and poll through lb until each answers 200 instead of 404; then modify and delete
//! routes continuously while other traffic flows. Reports write-to-live percentiles, every
//! answer that was neither the old nor the new expected one, RSS of lb and config-sync, table
//! size and compile time.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The sluice binary.
    pub sluice: PathBuf,
    /// Routes loaded before measuring.
    pub routes: usize,
    /// Namespaces they are spread over.
    pub namespaces: usize,
    /// Routes added one at a time (and as many modifications and deletions).
    pub changes: usize,
    /// Then churn: changes per second (alternately a route added and the oldest live one
    /// deleted) ...
    pub churn_rate: u32,
    /// ... for this long (zero: no churn phase).
    pub churn: Duration,
    /// Where to write `propagation.md` (none: print only).
    pub out: Option<PathBuf>,
}

struct Procs {
    children: Vec<Child>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the benchmark; returns the report.
/// Where the generated tables of docs/propagation.md end and the notes a rerun keeps begin.
const NOTES_MARKER: &str = "<!-- notes: kept by sluice-perf propagation -->";

pub fn run(opts: &Options) -> Result<String, String> {
    let work = std::env::temp_dir().join(format!("sluice-propagation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let manifests = work.join("manifests");
    std::fs::create_dir_all(&manifests).map_err(|e| e.to_string())?;
    let table = PathBuf::from(format!("/dev/shm/sluice-propagation-{}/table", std::process::id()));
    let port = free_port();
    let echo_port = free_port();
    let sluice = opts.sluice.to_str().unwrap_or("sluice").to_owned();
    let mut procs = Procs { children: Vec::new() };
    procs.children.push(spawn(
        &sluice,
        &["echo", "--listen", &format!("127.0.0.1:{echo_port}")],
        &work.join("echo.log"),
    )?);

    write(&manifests.join("gateway.yaml"), &gateway(port))?;
    for ns in 0..opts.namespaces {
        write(&manifests.join(format!("ns{ns}/service.yaml")), &service(ns, echo_port))?;
    }
    let per_ns = opts.routes.div_ceil(opts.namespaces.max(1));
    for r in 0..opts.routes {
        let ns = r / per_ns;
        write(
            &manifests.join(format!("ns{ns}/route-{r}.yaml")),
            &route(ns, &format!("r{r}"), &format!("r{r}.ns{ns}.example"), "/"),
        )?;
    }
    let load_started = Instant::now();
    procs.children.push(spawn(
        &sluice,
        &[
            "config-sync",
            "--manifests",
            manifests.to_str().unwrap_or_default(),
            "--table",
            table.to_str().unwrap_or_default(),
        ],
        &work.join("config-sync.log"),
    )?);
    procs.children.push(spawn(
        &sluice,
        &["lb", "--table", table.to_str().unwrap_or_default(), "--bind-address", "127.0.0.1"],
        &work.join("lb.log"),
    )?);
    let last = opts.routes - 1;
    let last_host = format!("r{last}.ns{}.example", last / per_ns);
    wait_status(port, &last_host, "/", 200, Duration::from_secs(120))
        .map_err(|e| format!("initial load: {e}"))?;
    let initial_load = load_started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (cs_pid, lb_pid) = (procs.children[1].id(), procs.children[2].id());
    let rss_cs = rss(cs_pid);
    let rss_lb = rss(lb_pid);
    let table_bytes = segment_table_bytes(&table);

    // Traffic on untouched routes all along, paced at one request per millisecond per client
    // (2,000 req/s): every answer must be 200. Unpaced clients would saturate this 2-core
    // machine and the figures would measure CPU starvation rather than propagation.
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let traffic: Vec<_> = (0..2)
        .map(|t| {
            let (stop, bad, sent) = (Arc::clone(&stop), Arc::clone(&bad), Arc::clone(&sent));
            let hosts: Vec<String> = (0..opts.routes)
                .step_by(97)
                .map(|r| format!("r{r}.ns{}.example", r / per_ns))
                .collect();
            std::thread::spawn(move || {
                let mut c = Conn::new(port);
                let mut i = t;
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let due = started + Duration::from_millis(i as u64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let host = &hosts[i % hosts.len()];
                    i += 1;
                    if c.status(host, "/") != Some(200) {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let mut unexpected = 0u64;
    let mut churn = Churn::default();
    let mut add = Vec::new();
    let mut modify = Vec::new();
    let mut delete = Vec::new();
    for i in 0..opts.changes {
        let ns = i % opts.namespaces.max(1);
        let name = format!("added-{i}");
        let host = format!("{name}.ns{ns}.example");
        let file = manifests.join(format!("ns{ns}/{name}.yaml"));
        // Add: 404 until live, then 200.
        let t = Instant::now();
        write(&file, &route(ns, &name, &host, "/first"))?;
        add.push(poll(port, &host, "/first", 200, &[404], t, &mut unexpected)?);
        // Modify: the route moves from /first to /moved; /moved answers 404 until live.
        let t = Instant::now();
        write(&file, &route(ns, &name, &host, "/moved"))?;
        modify.push(poll(port, &host, "/moved/x", 200, &[404], t, &mut unexpected)?);
        // Delete: 200 until gone, then 404.
        let t = Instant::now();
        std::fs::remove_file(&file).map_err(|e| e.to_string())?;
        delete.push(poll(port, &host, "/moved/x", 404, &[200], t, &mut unexpected)?);
    }
    if !opts.churn.is_zero() {
        let before = count_lines(&work.join("config-sync.log"), "published");
        churn = run_churn(opts, port, &manifests)?;
        churn.publications = count_lines(&work.join("config-sync.log"), "published") - before;
        unexpected += churn.unexpected;
    }
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        let _ = t.join();
    }
    let traffic_bad = bad.load(Ordering::Relaxed);
    let traffic_sent = sent.load(Ordering::Relaxed);
    let rss_cs_after = rss(cs_pid);
    let rss_lb_after = rss(lb_pid);
    // Per-change reloads (one file read, or none for a removal) and lb's intake of each table.
    let reload = median_fields(
        &work.join("config-sync.log"),
        "published",
        Some("files_read=1 "),
        &["micros", "scan_micros", "model_micros", "compile_micros", "publish_micros"],
    );
    let compile_all =
        median_fields(&work.join("config-sync.log"), "published", None, &["compile_micros"])[0];
    let intake = median_fields(&work.join("lb.log"), "table validated", None, &["micros"])[0];
    // After each publication: every object's status compared with the last, changes written.
    let status = median_fields(
        &work.join("config-sync.log"),
        "statuses compared",
        Some("changes="),
        &["micros"],
    )[0];
    drop(procs);
    if std::env::var_os("SLUICE_PERF_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("kept {}", work.display());
    }
    if let Some(dir) = table.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }

    let mut md = String::new();
    let _ = writeln!(md, "# Config propagation\n");
    let _ = writeln!(
        md,
        "Written by `sluice-perf propagation` ({}). {} HTTPRoutes in {} namespaces, one file each, all pointing at one echo backend; lb on every core, config-sync beside it (release builds). Then {} routes added, modified and deleted one at a time while two clients send 1,000 requests a second each to 1 in 97 of the loaded routes. Each change is polled through lb every 200 µs.\n",
        date(),
        opts.routes,
        opts.namespaces,
        opts.changes
    );
    let _ = writeln!(md, "| | p50 | p99 | max |\n|---|---|---|---|");
    latency_rows(
        &mut md,
        [
            ("add: file written → first 200", &mut add),
            ("modify: file written → new path answers 200", &mut modify),
            ("delete: file removed → first 404", &mut delete),
        ],
    );
    if !churn.added.is_empty() {
        let _ = writeln!(
            md,
            "\nChurn: {} changes a second for {:.0} s (a route added, then the oldest live one deleted, in turn; {} changes), with the same background traffic; each change polled through lb until live.\n",
            opts.churn_rate,
            opts.churn.as_secs_f64(),
            churn.added.len() + churn.deleted.len()
        );
        let _ = writeln!(md, "| churn | p50 | p99 | max |\n|---|---|---|---|");
        latency_rows(
            &mut md,
            [
                ("add: file written → first 200", &mut churn.added),
                ("delete: file removed → first 404", &mut churn.deleted),
            ],
        );
        let _ = writeln!(
            md,
            "\nconfig-sync published {} tables during the churn ({:.1} changes per table).",
            churn.publications,
            (churn.added.len() + churn.deleted.len()) as f64 / churn.publications.max(1) as f64
        );
    }
    let _ = writeln!(md, "\n| | |\n|---|---|");
    let _ = writeln!(
        md,
        "| answers other than the old or the new expected status while polling | {unexpected} |"
    );
    let _ = writeln!(
        md,
        "| failed requests of the background traffic | {traffic_bad} of {traffic_sent} |"
    );
    let _ = writeln!(
        md,
        "| initial load of {} routes (start → last route answers) | {} |",
        opts.routes,
        ms(initial_load)
    );
    let _ = writeln!(
        md,
        "| table size | {} |",
        table_bytes.map_or("–".into(), |b| format!("{:.0} KB", b as f64 / 1000.0))
    );
    let us = |m: Option<u64>| m.map_or("–".into(), |m| format!("{:.1} ms", m as f64 / 1000.0));
    let _ = writeln!(
        md,
        "| table compile at {} routes, median over every publication | {} |",
        opts.routes,
        us(compile_all)
    );
    let _ = writeln!(
        md,
        "| config-sync reload after one changed file, median: total (read the file · update the model · compile · encode and publish) | {} ({} · {} · {} · {}) |",
        us(reload[0]),
        us(reload[1]),
        us(reload[2]),
        us(reload[3]),
        us(reload[4])
    );
    let _ = writeln!(
        md,
        "| config-sync status after each publication (compare every object's, write the changed), median | {} |",
        us(status)
    );
    let _ = writeln!(
        md,
        "| lb intake of a table (copy out, validate, open), median | {} |",
        us(intake)
    );
    let _ = writeln!(
        md,
        "| lb RSS at {} routes (after the run) | {:.1} MB ({:.1} MB) |",
        opts.routes,
        rss_lb as f64 / 1e6,
        rss_lb_after as f64 / 1e6
    );
    let _ = writeln!(
        md,
        "| config-sync RSS at {} routes (after the run) | {:.1} MB ({:.1} MB) |",
        opts.routes,
        rss_cs as f64 / 1e6,
        rss_cs_after as f64 / 1e6
    );
    let _ = writeln!(
        md,
        "\nRerun: `cargo build --release -p sluice -p perf && target/release/sluice-perf propagation --sluice target/release/sluice --out docs`."
    );
    if let Some(out) = &opts.out {
        // The analysis below the marker is written by people; a rerun keeps it.
        let path = out.join("propagation.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(at) = old.find(NOTES_MARKER) {
            md.push('\n');
            md.push_str(&old[at..]);
        }
        std::fs::write(path, &md).map_err(|e| e.to_string())?;
    }
    Ok(md)
}

/// A table row per latency set: p50, p99 and max.
fn latency_rows<const N: usize>(md: &mut String, rows: [(&str, &mut Vec<Duration>); N]) {
    for (name, v) in rows {
        v.sort();
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} |",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.99)),
            ms(v.last().copied().unwrap_or_default())
        );
    }
}

/// What the churn phase measured.
#[derive(Debug, Default)]
struct Churn {
    added: Vec<Duration>,
    deleted: Vec<Duration>,
    unexpected: u64,
    publications: usize,
}

/// A change written and not yet seen live.
struct Pending {
    host: String,
    file: PathBuf,
    written: Instant,
    /// 200 for an added route, 404 for a deleted one.
    want: u16,
}

/// Churn: `churn_rate` changes a second on schedule, alternately a route added and the oldest
/// one seen live deleted (another add when none is), while every pending change is probed
/// through lb in turn (one request each per pass) until it is live; the latency of each is
/// from its write to the first answer that shows it.
fn run_churn(opts: &Options, port: u16, manifests: &Path) -> Result<Churn, String> {
    let mut out = Churn::default();
    let interval = Duration::from_secs(1) / opts.churn_rate.max(1);
    let total = (opts.churn.as_secs_f64() * f64::from(opts.churn_rate)) as usize;
    let namespaces = opts.namespaces.max(1);
    let mut pending: Vec<Pending> = Vec::new();
    let mut live: std::collections::VecDeque<(String, PathBuf)> = Default::default();
    let mut conn = Conn::new(port);
    let started = Instant::now();
    let mut done = 0;
    while done < total || !pending.is_empty() {
        if done < total && Instant::now() >= started + interval * done as u32 {
            if done % 2 == 1
                && let Some((host, file)) = live.pop_front()
            {
                std::fs::remove_file(&file).map_err(|e| e.to_string())?;
                pending.push(Pending { host, file, written: Instant::now(), want: 404 });
            } else {
                let ns = done % namespaces;
                let name = format!("churn-{done}");
                let host = format!("{name}.ns{ns}.example");
                let file = manifests.join(format!("ns{ns}/{name}.yaml"));
                write(&file, &route(ns, &name, &host, "/"))?;
                pending.push(Pending { host, file, written: Instant::now(), want: 200 });
            }
            done += 1;
        }
        let mut i = 0;
        while i < pending.len() {
            let p = &pending[i];
            let status = conn.status(&p.host, "/");
            if status == Some(p.want) {
                let p = pending.swap_remove(i);
                let took = p.written.elapsed();
                if p.want == 200 {
                    out.added.push(took);
                    // Only a route seen live is deleted later.
                    live.push_back((p.host, p.file));
                } else {
                    out.deleted.push(took)
                }
                continue;
            }
            let before = if p.want == 200 { 404 } else { 200 };
            if status != Some(before) {
                out.unexpected += 1;
            }
            if p.written.elapsed() > Duration::from_secs(30) {
                return Err(format!("churn: {} never answered {}", p.host, p.want));
            }
            i += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for (_, file) in live {
        let _ = std::fs::remove_file(file);
    }
    Ok(out)
}

/// How many lines of `log` contain `what`.
fn count_lines(log: &Path, what: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains(what)).count()
}

/// Polls until `want`; statuses in `before` are expected meanwhile, anything else counts as
/// unexpected. Returns the time since `t`.
fn poll(
    port: u16,
    host: &str,
    path: &str,
    want: u16,
    before: &[u16],
    t: Instant,
    unexpected: &mut u64,
) -> Result<Duration, String> {
    let mut c = Conn::new(port);
    loop {
        let s = c.status(host, path);
        if s == Some(want) {
            return Ok(t.elapsed());
        }
        if !s.is_some_and(|s| before.contains(&s)) {
            *unexpected += 1;
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err(format!("{host}{path} never answered {want}"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn wait_status(
    port: u16,
    host: &str,
    path: &str,
    want: u16,
    limit: Duration,
) -> Result<(), String> {
    let t = Instant::now();
    let mut c = Conn::new(port);
    while c.status(host, path) != Some(want) {
        if t.elapsed() > limit {
            return Err(format!("{host}{path} did not answer {want} within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A keep-alive client that only reads statuses (responses carry Content-Length).
struct Conn {
    port: u16,
    stream: Option<TcpStream>,
}

impl Conn {
    fn new(port: u16) -> Conn {
        Conn { port, stream: None }
    }

    fn status(&mut self, host: &str, path: &str) -> Option<u16> {
        let s = match self.stream.take() {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                s
            }
        };
        let mut s = s;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut fields);
            if let Ok(httparse::Status::Complete(head)) = r.parse(&buf) {
                let len: usize = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= head + len {
                    let status = r.code;
                    let close = r.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("connection")
                            && h.value.eq_ignore_ascii_case(b"close")
                    });
                    if !close {
                        self.stream = Some(s);
                    }
                    return status;
                }
            }
        }
    }
}

fn gateway(port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: sluice}}\nspec: {{controllerName: sluice.dev/gateway-controller}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: infra}}\nspec:\n  gatewayClassName: sluice\n  listeners: [{{name: http, port: {port}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}]\n"
    )
}

fn service(ns: usize, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: echo, namespace: ns{ns}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: echo-1, namespace: ns{ns}, labels: {{kubernetes.io/service-name: echo}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
    )
}

fn route(ns: usize, name: &str, host: &str, path: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: ns{ns}}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  hostnames: [{host}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    backendRefs: [{{name: echo, port: 80}}]\n"
    )
}

/// Writes through a temporary file and a rename, as kubectl-style tools and editors do.
fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

fn spawn(bin: &str, args: &[&str], log: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{bin}: {e}"))
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn segment_table_bytes(segment: &Path) -> Option<usize> {
    table::shm::SegmentReader::open(segment).ok()?.open_router(None).ok()?.map(|r| r.size())
}

/// The `micros=` of config-sync's last "published" log line.
/// Medians of the given `field=` values (microseconds) over the log lines containing `what`
/// and, when given, `only`.
fn median_fields(log: &Path, what: &str, only: Option<&str>, fields: &[&str]) -> Vec<Option<u64>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    fields
        .iter()
        .map(|field| {
            let prefix = format!("{field}=");
            let mut v: Vec<u64> = text
                .lines()
                .filter(|l| l.contains(what) && only.is_none_or(|o| l.contains(o)))
                .filter_map(|l| {
                    l.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str()))?.parse().ok()
                })
                .collect();
            v.sort_unstable();
            v.get(v.len() / 2).copied()
        })
        .collect()
}

fn pct(v: &[Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(0, |a| a.port())
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
