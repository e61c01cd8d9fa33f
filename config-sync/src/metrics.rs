//! config-sync's metrics and its admin listener (`--admin`, default `127.0.0.1:9902`):
//! `/metrics` (OpenMetrics text) and `/ready` (a table is published).
//! The figures are `prometheus-client`'s own metric types, updated where the pipeline and the
//! sources do the work; nothing here is on lb's request path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::{debug, info, warn};

use crate::model::Model;

/// A label naming an object kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub kind: String,
}

/// A label naming an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub result: String,
}

/// Every figure config-sync exposes.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub runs: Counter,
    pub compile_seconds: Histogram,
    pub reconcile_seconds: Histogram,
    pub objects: Family<KindLabel, Gauge>,
    pub publishes: Family<ResultLabel, Counter>,
    pub generation: Gauge<u64, AtomicU64>,
    pub served_generation: Gauge<u64, AtomicU64>,
    pub table_bytes: Gauge,
    pub status_writes: Family<ResultLabel, Counter>,
    pub watch_errors: Family<KindLabel, Counter>,
    pub relists: Family<KindLabel, Counter>,
    pub leader: Gauge,
    pub events: Family<ResultLabel, Counter>,
    registry: Registry,
}

fn buckets() -> impl Iterator<Item = f64> {
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        .into_iter()
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut m = Metrics {
        runs: Counter::default(),
        compile_seconds: Histogram::new(buckets()),
        reconcile_seconds: Histogram::new(buckets()),
        objects: Family::default(),
        publishes: Family::default(),
        generation: Gauge::default(),
        served_generation: Gauge::default(),
        table_bytes: Gauge::default(),
        status_writes: Family::default(),
        watch_errors: Family::default(),
        relists: Family::default(),
        leader: Gauge::default(),
        events: Family::default(),
        registry: Registry::with_prefix("sluice_config_sync"),
    };
    let r = &mut m.registry;
    r.register("runs", "Pipeline runs (a model compiled after a change)", m.runs.clone());
    r.register(
        "compile_duration_seconds",
        "Time to compile the model into a table and status",
        m.compile_seconds.clone(),
    );
    r.register(
        "reconcile_duration_seconds",
        "Time from a change being read to its table published",
        m.reconcile_seconds.clone(),
    );
    r.register("objects", "Objects in the model, by kind", m.objects.clone());
    r.register(
        "publishes",
        "Table publications (result: published, unchanged, failed)",
        m.publishes.clone(),
    );
    r.register("generation", "The newest table generation published", m.generation.clone());
    r.register(
        "served_generation",
        "The newest generation every lb core serves",
        m.served_generation.clone(),
    );
    r.register("table_bytes", "Size of the newest table published", m.table_bytes.clone());
    r.register(
        "status_writes",
        "Status writes (files or the API server), by result",
        m.status_writes.clone(),
    );
    r.register(
        "watch_errors",
        "Kubernetes watch errors, by kind (each retried with backoff)",
        m.watch_errors.clone(),
    );
    r.register("relists", "Kubernetes watch (re)lists started, by kind", m.relists.clone());
    r.register(
        "leader",
        "1 while this replica holds the Lease (Kubernetes mode; file mode: 1)",
        m.leader.clone(),
    );
    r.register(
        "events",
        "Kubernetes Events on objects with problems (result: published, suppressed by the rate limit, failed)",
        m.events.clone(),
    );
    m
});

/// The metrics.
pub(crate) fn metrics() -> &'static Metrics {
    &METRICS
}

pub(crate) fn kind(kind: &str) -> KindLabel {
    KindLabel { kind: kind.to_owned() }
}

pub(crate) fn result(result: &str) -> ResultLabel {
    ResultLabel { result: result.to_owned() }
}

/// Counts a Kubernetes Event.
pub(crate) fn count_event(outcome: &str) {
    metrics().events.get_or_create(&result(outcome)).inc();
}

/// Counts a status write (a file, or an API server request).
pub(crate) fn count_status_write(ok: bool) {
    metrics().status_writes.get_or_create(&result(if ok { "ok" } else { "failed" })).inc();
}

/// Records the model's object counts.
pub(crate) fn count_objects(model: &Model) {
    let m = metrics();
    for (k, n) in [
        ("GatewayClass", model.gateway_classes.len()),
        ("Gateway", model.gateways.len()),
        ("HTTPRoute", model.http_routes.len()),
        ("GRPCRoute", model.grpc_routes.len()),
        ("ReferenceGrant", model.reference_grants.len()),
        ("Service", model.services.len()),
        ("EndpointSlice", model.endpoint_slices.len()),
        ("Namespace", model.namespaces.len()),
        ("Secret", model.secrets.len()),
        ("ConfigMap", model.config_maps.len()),
        ("ClientCertificateHeader", model.client_cert_headers.len()),
    ] {
        m.objects.get_or_create(&kind(k)).set(n as i64);
    }
}

/// Where the admin address of the config-sync publishing into `segment` is written.
pub fn address_path(segment: &Path) -> PathBuf {
    let mut p = segment.as_os_str().to_owned();
    p.push(".config-sync.admin");
    PathBuf::from(p)
}

/// Starts the admin listener on a thread of its own (retrying every second while the address
/// is taken). `ready` says whether a table has been published.
pub(crate) fn serve_admin(
    addr: SocketAddr,
    segment: &Path,
    ready: impl Fn() -> bool + Send + 'static,
) {
    let file = address_path(segment);
    let spawned = std::thread::Builder::new().name("config-sync-admin".into()).spawn(move || {
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
        // The segment's folder is made by the publisher, maybe after this thread started.
        let mut waited = 0;
        while file.parent().is_some_and(|d| !d.exists()) && waited < 600 {
            std::thread::sleep(Duration::from_millis(50));
            waited += 1;
        }
        if let Err(e) = std::fs::write(&file, format!("{bound}\n")) {
            warn!(file = %file.display(), "cannot record the admin address: {e}");
        }
        info!(%bound, "admin listener: /metrics /ready");
        for stream in listener.incoming().flatten() {
            if let Err(e) = answer(stream, &ready) {
                debug!("admin request: {e}");
            }
        }
    });
    if let Err(e) = spawned {
        warn!("cannot start the admin listener: {e}");
    }
}

/// Reads one request head (≤ 8 KiB, 2 s) and answers it; the connection closes after.
fn answer(mut s: TcpStream, ready: &impl Fn() -> bool) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk)?;
        if n == 0 || head.len() > 8 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let target = text.split(' ').nth(1).unwrap_or("");
    let (status, content_type, body) = match (text.split(' ').next(), target) {
        (Some("GET"), "/metrics") => {
            // OpenMetrics only (Prometheus asks for it first); lb also serves the older text.
            let mut out = String::new();
            let _ = prometheus_client::encoding::text::encode(&mut out, &metrics().registry);
            ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", out)
        }
        (Some("GET"), "/ready") if ready() => ("200 OK", "text/plain", "ready\n".to_owned()),
        (Some("GET"), "/ready") => {
            ("503 Service Unavailable", "text/plain", "no table published yet\n".to_owned())
        }
        (Some("GET"), _) => ("404 Not Found", "text/plain", "/metrics or /ready\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_owned()),
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}
