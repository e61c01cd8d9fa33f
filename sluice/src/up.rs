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

use config_sync::model::Model;
use config_sync::watch::FileSource;

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

pub(crate) fn run(args: &UpArgs) -> Result<(), String> {
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

fn announce(model: &Model, manifests: &Path, status: &Path, listen: IpAddr) {
    let mut lines = Vec::new();
    for gw in model.gateways.values() {
        let addr = gw
            .spec
            .addresses
            .iter()
            .flatten()
            .find_map(|a| a.value.as_deref().and_then(|v| v.parse::<IpAddr>().ok()))
            .unwrap_or(listen);
        for l in &gw.spec.listeners {
            let gw_name = gw.metadata.name.as_deref().unwrap_or("");
            for route in model.http_routes.values() {
                let attached = route.spec.parent_refs.iter().flatten().any(|p| p.name == gw_name);
                if !attached {
                    continue;
                }
                let host = route
                    .spec
                    .hostnames
                    .iter()
                    .flatten()
                    .next()
                    .cloned()
                    .or_else(|| l.hostname.clone())
                    .unwrap_or_else(|| "example.com".into())
                    .replace('*', "anything");
                for rule in route.spec.rules.iter().flatten() {
                    let m = rule.matches.iter().flatten().next();
                    let path = m
                        .and_then(|m| m.path.as_ref())
                        .and_then(|p| p.value.clone())
                        .unwrap_or_else(|| "/".into());
                    let headers: String = m
                        .and_then(|m| m.headers.as_ref())
                        .into_iter()
                        .flatten()
                        .map(|h| format!(" -H '{}: {}'", h.name, h.value))
                        .collect();
                    let backends: Vec<String> = rule
                        .backend_refs
                        .iter()
                        .flatten()
                        .map(|b| format!("{} (weight {})", b.name, b.weight.unwrap_or(1)))
                        .collect();
                    lines.push(format!(
                        "  curl -H 'Host: {host}'{headers} http://{}{path}\n      → {}",
                        SocketAddr::new(addr, l.port as u16),
                        backends.join(", ")
                    ));
                }
            }
        }
    }
    eprintln!(
        "\nSluice is up. Try:\n{}\n\nThe reply's \"pod\" field names the backend that served it. Edit the files in\n{} and routing changes within milliseconds, no restart. Status per object: {}\nCtrl-C stops everything.\n",
        lines.join("\n"),
        manifests.display(),
        status.display()
    );
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
