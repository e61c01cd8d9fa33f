//! `sluice up`: everything for one manifests folder, as child processes of this one —
//! config-sync in file mode, lb, and an echo backend for every loopback endpoint of the
//! EndpointSlices labelled `sluice.dev/demo-backend: echo`. Prints what to curl once lb serves
//! the first table; stops everything on Ctrl-C or when a child dies.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use config_sync::FileSource;
use config_sync::Model;

/// Label that asks `sluice up` to start echo backends for an EndpointSlice's endpoints.
pub(crate) const DEMO_LABEL: &str = "sluice.dev/demo-backend";

#[derive(clap::Args, Debug)]
pub(crate) struct UpArgs {
    /// Folder of manifests.
    #[arg(long, default_value = "deploy/examples/quickstart")]
    manifests: PathBuf,
    /// Address lb binds for Gateways that name none.
    #[arg(long, default_value = "127.0.0.1")]
    listen_address: IpAddr,
    /// Shared-memory table segment (default: a fresh one under /dev/shm).
    #[arg(long)]
    table: Option<PathBuf>,
    /// Where config-sync writes object status (default: a temporary folder).
    #[arg(long)]
    status_dir: Option<PathBuf>,
    /// CPUs for lb (`all`, or ids and ranges).
    #[arg(long, default_value = "all")]
    cores: String,
    /// Do not start echo backends.
    #[arg(long)]
    no_demo_backends: bool,
    /// A `kubernetes.io/tls` Secret (`namespace/name`) that HTTPS listeners reference and the
    /// folder lacks gets a self-signed demo certificate, made now (never stored in the
    /// repository), written to `generated/` in the folder (0600) and removed on exit.
    #[arg(long, default_value = "default/demo-tls")]
    demo_certificate: String,
}

pub(crate) fn run(args: &UpArgs, log_format: &str) -> Result<(), String> {
    let manifests = find_manifests(&args.manifests)?;
    let run_dir = std::env::temp_dir().join(format!("sluice-up-{}", std::process::id()));
    let table = args.table.clone().unwrap_or_else(|| {
        PathBuf::from(format!("/dev/shm/sluice-up-{}/table", std::process::id()))
    });
    let status_dir = args.status_dir.clone().unwrap_or_else(|| run_dir.join("status"));
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;

    let mut source = FileSource::new(&manifests);
    source.scan(&BTreeSet::new()).map_err(|e| format!("{}: {e}", manifests.display()))?;
    let model = source.model().clone();
    let demo_tls = demo_certificate(&model, &manifests, &run_dir, &args.demo_certificate)?;
    let (model, ca) = match &demo_tls {
        Some(d) => {
            let mut source = FileSource::new(&manifests);
            source.scan(&BTreeSet::new()).map_err(|e| format!("{}: {e}", manifests.display()))?;
            (source.model().clone(), Some(d.ca.clone()))
        }
        None => (model, None),
    };

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| e.to_string())?;
    }
    let mut children = Children::default();
    if !args.no_demo_backends {
        for backend in demo_backends(&model) {
            let child = Command::new(&exe)
                .arg("echo")
                .args(["--log-format", log_format])
                .arg("--listen")
                .arg(backend.addr.to_string())
                .args(["--namespace", &backend.namespace, "--service", &backend.service])
                .args(["--pod", &backend.pod])
                .spawn()
                .map_err(|e| format!("starting echo backend: {e}"))?;
            children.push("echo", child);
        }
    }
    let child = Command::new(&exe)
        .arg("config-sync")
        .args(["--log-format", log_format])
        .arg("--manifests")
        .arg(&manifests)
        .arg("--table")
        .arg(&table)
        .arg("--status-dir")
        .arg(&status_dir)
        .arg("--default-address")
        .arg(args.listen_address.to_string())
        .spawn()
        .map_err(|e| format!("starting config-sync: {e}"))?;
    children.push("config-sync", child);
    let child = Command::new(&exe)
        .arg("lb")
        .args(["--log-format", log_format])
        .arg("--table")
        .arg(&table)
        .arg("--bind-address")
        .arg(args.listen_address.to_string())
        .arg("--cores")
        .arg(&args.cores)
        .spawn()
        .map_err(|e| format!("starting lb: {e}"))?;
    children.push("lb", child);

    let applied = table::shm::applied_path(&table);
    let started = Instant::now();
    let mut announced = false;
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        if let Some(name) = children.exited() {
            break Err(format!("{name} exited; stopping"));
        }
        if !announced {
            let ready = table::shm::read_applied(&applied).is_ok_and(|a| a.min() > 0);
            if ready {
                announce(&model, &manifests, &status_dir, args.listen_address, ca.as_deref());
                announced = true;
            } else if started.elapsed() > Duration::from_secs(30) {
                eprintln!("sluice: lb has not applied a table after 30 s; see the logs above");
                announced = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    children.stop();
    if let Some(d) = &demo_tls {
        let _ = std::fs::remove_file(&d.secret);
        let _ = std::fs::remove_dir(d.secret.parent().unwrap_or(Path::new("/nonexistent")));
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    if args.table.is_none()
        && let Some(dir) = table.parent()
    {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// The folder as given, or the quickstart next to this crate's sources (so the README command
/// works from any directory of a checkout).
fn find_manifests(given: &Path) -> Result<PathBuf, String> {
    if given.is_dir() {
        return Ok(given.to_owned());
    }
    let beside_sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(given);
    if given.is_relative() && beside_sources.is_dir() {
        return Ok(beside_sources);
    }
    Err(format!("manifests folder {} not found", given.display()))
}

/// The demo certificate `up` made: the Secret file it wrote and the CA to trust.
#[derive(Debug)]
struct DemoTls {
    secret: PathBuf,
    ca: PathBuf,
}

/// Makes the demo certificate when an HTTPS listener references `wanted` (`namespace/name`)
/// and the folder has no such Secret: a CA (its certificate in `run_dir`, for curl) and a
/// leaf for every hostname the folder's listeners and routes name, plus `localhost`.
fn demo_certificate(
    model: &Model,
    manifests: &Path,
    run_dir: &Path,
    wanted: &str,
) -> Result<Option<DemoTls>, String> {
    let Some((ns, name)) = wanted.split_once('/') else {
        return Err(format!("--demo-certificate {wanted:?}: expected namespace/name"));
    };
    let referenced = model.gateways.values().any(|gw| {
        let gw_ns = gw.metadata.namespace.as_deref().unwrap_or("default");
        gw.spec.listeners.iter().filter_map(|l| l.tls.as_ref()).any(|t| {
            t.certificate_refs
                .iter()
                .flatten()
                .any(|r| r.name == name && r.namespace.as_deref().unwrap_or(gw_ns) == ns)
        })
    });
    let present = model.secrets.keys().any(|k| k.namespace == ns && k.name == name);
    if !referenced || present {
        return Ok(None);
    }
    let mut names: BTreeSet<String> = BTreeSet::from(["localhost".to_owned()]);
    for gw in model.gateways.values() {
        names.extend(gw.spec.listeners.iter().filter_map(|l| l.hostname.clone()));
    }
    for r in model.http_routes.values() {
        names.extend(r.spec.hostnames.iter().flatten().cloned());
    }
    let err = |e: rcgen::Error| format!("making the demo certificate: {e}");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Sluice demo CA (sluice up)");
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let mut leaf =
        rcgen::CertificateParams::new(names.into_iter().collect::<Vec<_>>()).map_err(err)?;
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "Sluice demo (sluice up)");
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = leaf.signed_by(&key, &ca, &ca_key).map_err(err)?;
    std::fs::create_dir_all(run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    let ca_path = run_dir.join("demo-ca.pem");
    std::fs::write(&ca_path, ca.pem()).map_err(|e| format!("{}: {e}", ca_path.display()))?;
    let indent = |pem: &str| -> String { pem.lines().map(|l| format!("    {l}\n")).collect() };
    let secret = format!(
        "# Made by `sluice up` for this run (a self-signed demo certificate); removed when it stops.\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&cert.pem()),
        indent(&key.serialize_pem())
    );
    let dir = manifests.join("generated");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!("{name}.yaml"));
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(secret.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "sluice: made a self-signed demo certificate for Secret {ns}/{name} ({}; trust {} to verify it)",
        path.display(),
        ca_path.display()
    );
    Ok(Some(DemoTls { secret: path, ca: ca_path }))
}

#[derive(Debug)]
struct DemoBackend {
    addr: SocketAddr,
    namespace: String,
    service: String,
    pod: String,
}

/// Loopback endpoints of the EndpointSlices labelled for demo backends.
fn demo_backends(model: &Model) -> Vec<DemoBackend> {
    let mut out: Vec<DemoBackend> = Vec::new();
    for slice in model.endpoint_slices.values() {
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        if labels.get(DEMO_LABEL).map(String::as_str) != Some("echo") {
            continue;
        }
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        let service = labels.get("kubernetes.io/service-name").cloned().unwrap_or_default();
        for (i, endpoint) in slice.endpoints.iter().enumerate() {
            let pod = endpoint
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_else(|| format!("{service}-{i}"));
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else { continue };
                if !ip.is_loopback() {
                    continue;
                }
                for port in slice.ports.iter().flatten().filter_map(|p| p.port) {
                    let Ok(port) = u16::try_from(port) else { continue };
                    let addr = SocketAddr::new(ip, port);
                    if out.iter().any(|b| b.addr == addr) {
                        continue;
                    }
                    out.push(DemoBackend {
                        addr,
                        namespace: namespace.clone(),
                        service: service.clone(),
                        pod: pod.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Prints what to curl, derived from the compiled table — what lb will actually do — rather than
/// from the manifests: a route that did not attach, a hostname no listener accepts, or a rule
/// whose backends are invalid shows as it behaves (absent, or answered by lb).
fn announce(model: &Model, manifests: &Path, status: &Path, listen: IpAddr, ca: Option<&Path>) {
    let settings = config_sync::Settings {
        controller_name: config_sync::DEFAULT_CONTROLLER_NAME.to_owned(),
        default_address: Some(listen),
        address_pool: None,
        address_usable: None,
        bind_failures: Default::default(),
        last_good: Default::default(),
    };
    let compiled = config_sync::compile(model, &settings);
    let lines = hints(&compiled.table, listen, ca);
    let tries = if lines.is_empty() {
        "  (no route is attached to a listener: see the status files for why)".to_owned()
    } else {
        lines.join("\n")
    };
    eprintln!(
        "\nSluice is up. Try:\n{tries}\n\nThe reply's \"pod\" field names the backend that served it. Edit the files in\n{} and routing changes within milliseconds, no restart. Status per object: {}\nlb's metrics and served table: curl http://127.0.0.1:9901/metrics, /config\nCtrl-C stops everything.\n",
        manifests.display(),
        status.display()
    );
}

/// Most hint lines printed (a large folder would otherwise scroll the useful part away).
const MAX_HINTS: usize = 24;

/// One curl line per (port, effective hostname, rule match) of the table, with the rule's
/// real outcome.
fn hints(t: &table::Table, listen: IpAddr, ca: Option<&Path>) -> Vec<String> {
    use table::format::{ActionKind, BackendTarget, HostIndex, PathMatch, ValueMatch};
    let targets = |h: &HostIndex| -> Vec<u32> {
        let mut v: Vec<u32> =
            h.exact.iter().chain(&h.wildcard).map(|e| e.target).chain(h.any).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let mut lines = Vec::new();
    let mut seen = BTreeSet::new();
    for port in &t.ports {
        let addr = SocketAddr::new(port.address.map_or(listen, |a| a.ip()), port.port);
        for l in targets(&port.listeners) {
            let Some(listener) = t.listeners.get(l as usize) else { continue };
            for v in targets(&listener.vhosts) {
                let Some(vhost) = t.vhosts.get(v as usize) else { continue };
                let host = match vhost.hostname.as_str() {
                    "" => "example.com".to_owned(),
                    h => h.replacen('*', "anything", 1),
                };
                for &m in &vhost.matches {
                    let Some(m) = t.matches.get(m as usize) else { continue };
                    let Some(action) = t.actions.get(m.action as usize) else { continue };
                    let path = match &m.path {
                        PathMatch::Exact(p) | PathMatch::Prefix(p) => p.clone(),
                        PathMatch::Regex(_) => continue,
                    };
                    let mut args = String::new();
                    if let Some(method) = &m.method {
                        args.push_str(&format!(" -X {method}"));
                    }
                    for h in &m.headers {
                        let ValueMatch::Exact(value) = &h.value else { continue };
                        args.push_str(&format!(" -H '{}: {value}'", h.name));
                    }
                    let query: Vec<String> = m
                        .query
                        .iter()
                        .filter_map(|q| match &q.value {
                            ValueMatch::Exact(v) => Some(format!("{}={v}", q.name)),
                            ValueMatch::Regex(_) => None,
                        })
                        .collect();
                    let query = if query.is_empty() {
                        String::new()
                    } else {
                        format!("?{}", query.join("&"))
                    };
                    let outcome = match &action.kind {
                        ActionKind::Forward { backends, .. } => {
                            let live: Vec<_> = backends.iter().filter(|b| b.weight > 0).collect();
                            let weight = |w: u32| {
                                if live.len() > 1 {
                                    format!(" (weight {w})")
                                } else {
                                    String::new()
                                }
                            };
                            let shares: Vec<String> = live
                                .iter()
                                .map(|b| match &b.target {
                                    BackendTarget::Service(s) => {
                                        let name = t
                                            .services
                                            .get(*s as usize)
                                            .map_or("?", |s| s.name.as_str());
                                        format!("{name}{}", weight(b.weight))
                                    }
                                    BackendTarget::Status(code) => {
                                        format!(
                                            "{code} from lb: invalid backend{}",
                                            weight(b.weight)
                                        )
                                    }
                                })
                                .collect();
                            if shares.is_empty() {
                                "500 from lb: no backend has weight".to_owned()
                            } else {
                                shares.join(", ")
                            }
                        }
                        ActionKind::Respond { status } => format!("{status} from lb"),
                        ActionKind::Redirect { status, .. } => format!("{status} redirect from lb"),
                    };
                    // A gRPC method (a GRPCRoute's exact `/package.Service/Method` to an HTTP/2
                    // backend): our own client, curl cannot frame gRPC.
                    let h2c = |b: &table::format::WeightedBackend| match b.target {
                        BackendTarget::Service(s) => t
                            .services
                            .get(s as usize)
                            .is_some_and(|s| s.protocol == table::format::UpstreamProtocol::H2c),
                        BackendTarget::Status(_) => false,
                    };
                    let grpc = matches!(&m.path, PathMatch::Exact(p) if grpc_method(p))
                        && matches!(&action.kind, ActionKind::Forward { backends, .. }
                            if backends.iter().any(h2c));
                    let line = match (&port.tls, ca) {
                        _ if grpc && port.tls.is_some() => continue,
                        _ if grpc => format!(
                            "  sluice grpc-call --addr {addr} --authority {host} {path}\n      → {outcome}"
                        ),
                        (Some(_), Some(ca)) => format!(
                            "  curl --cacert {} --resolve '{host}:{}:{}'{args} 'https://{host}:{}{path}{query}'\n      → {outcome}",
                            ca.display(),
                            addr.port(),
                            addr.ip(),
                            addr.port()
                        ),
                        (Some(_), None) => format!(
                            "  curl -k --resolve '{host}:{}:{}'{args} 'https://{host}:{}{path}{query}'\n      → {outcome}",
                            addr.port(),
                            addr.ip(),
                            addr.port()
                        ),
                        (None, _) => format!(
                            "  curl -H 'Host: {host}'{args} 'http://{addr}{path}{query}'\n      → {outcome}"
                        ),
                    };
                    if seen.insert(line.clone()) {
                        lines.push(line);
                    }
                }
            }
        }
    }
    if lines.len() > MAX_HINTS {
        let more = lines.len() - MAX_HINTS;
        lines.truncate(MAX_HINTS);
        lines.push(format!("  … and {more} more"));
    }
    lines
}

/// Whether a path is a gRPC method: `/package.Service/Method`.
fn grpc_method(path: &str) -> bool {
    let mut parts = path.strip_prefix('/').unwrap_or("").split('/');
    let ident =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    matches!((parts.next(), parts.next(), parts.next()), (Some(s), Some(m), None)
        if s.contains('.') && s.split('.').all(ident) && ident(m))
}

#[derive(Default)]
struct Children {
    list: Vec<(&'static str, Child)>,
}

impl Children {
    fn push(&mut self, name: &'static str, child: Child) {
        self.list.push((name, child));
    }

    fn exited(&mut self) -> Option<&'static str> {
        for (name, child) in &mut self.list {
            if !matches!(child.try_wait(), Ok(None)) {
                return Some(name);
            }
        }
        None
    }

    fn stop(&mut self) {
        for (_, child) in &mut self.list {
            // SIGTERM lets config-sync stop cleanly; the others exit on it too.
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for (_, child) in &mut self.list {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
