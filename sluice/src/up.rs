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
    let (model, _) = source.model();

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
                announce(&model, &manifests, &status_dir, args.listen_address);
                announced = true;
            } else if started.elapsed() > Duration::from_secs(30) {
                eprintln!("sluice: lb has not applied a table after 30 s; see the logs above");
                announced = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    children.stop();
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
fn announce(model: &Model, manifests: &Path, status: &Path, listen: IpAddr) {
    let settings = config_sync::Settings {
        controller_name: config_sync::DEFAULT_CONTROLLER_NAME.to_owned(),
        default_address: Some(listen),
        address_pool: None,
        address_usable: None,
        bind_failures: Default::default(),
        last_good: Default::default(),
    };
    let compiled = config_sync::compile(model, &settings);
    let lines = hints(&compiled.table, listen);
    let tries = if lines.is_empty() {
        "  (no route is attached to a listener: see the status files for why)".to_owned()
    } else {
        lines.join("\n")
    };
    eprintln!(
        "\nSluice is up. Try:\n{tries}\n\nThe reply's \"pod\" field names the backend that served it. Edit the files in\n{} and routing changes within milliseconds, no restart. Status per object: {}\nCtrl-C stops everything.\n",
        manifests.display(),
        status.display()
    );
}

/// Most hint lines printed (a large folder would otherwise scroll the useful part away).
const MAX_HINTS: usize = 24;

/// One curl line per (port, effective hostname, rule match) of the table, with the rule's
/// real outcome.
fn hints(t: &table::Table, listen: IpAddr) -> Vec<String> {
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
                    let line = format!(
                        "  curl -H 'Host: {host}'{args} 'http://{addr}{path}{query}'\n      → {outcome}"
                    );
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
