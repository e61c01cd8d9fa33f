//! What running Sluice as a service needs around the components: readiness checks for probes,
//! systemd's readiness notification, the seccomp profile lb runs under in containers, and
//! `sluice explain`.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use table::shm::{SegmentReader, applied_path, read_applied};

/// The OCI seccomp profile for lb (io_uring allowed), built into the binary so the DaemonSet's
/// init container can install the one that matches the image.
pub(crate) const SECCOMP_PROFILE: &str = include_str!("../../deploy/seccomp/sluice-io-uring.json");

/// `Ok` when lb serves a table on every core (`published`: when config-sync has published one);
/// otherwise what is missing.
pub(crate) fn ready(table: &Path, published: bool) -> Result<(), String> {
    if published {
        let reader = SegmentReader::open(table).map_err(|e| format!("{}: {e}", table.display()))?;
        return match reader.published() {
            Ok(0) => Err(format!("{}: no table published yet", table.display())),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{}: {e}", table.display())),
        };
    }
    let path = applied_path(table);
    let applied = read_applied(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    match applied.min() {
        0 => Err(format!("{}: a core serves no table yet", path.display())),
        _ => Ok(()),
    }
}

/// Prints the seccomp profile, or writes it to `to` (atomically; parent folders created).
pub(crate) fn seccomp_profile(to: Option<&Path>) -> Result<(), String> {
    let Some(to) = to else {
        print!("{SECCOMP_PROFILE}");
        return Ok(());
    };
    let fail = |e: std::io::Error| format!("{}: {e}", to.display());
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = to.with_extension("json.tmp");
    std::fs::write(&tmp, SECCOMP_PROFILE).map_err(fail)?;
    std::fs::rename(&tmp, to).map_err(fail)
}

/// When systemd started us with `Type=notify` (`NOTIFY_SOCKET` set), a thread that waits until
/// `ready()` holds and then tells systemd `READY=1`. Without the variable, nothing.
pub(crate) fn notify_systemd_when(ready: impl Fn() -> bool + Send + 'static) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from) else { return };
    let spawned = std::thread::Builder::new().name("sd-notify".into()).spawn(move || {
        while !ready() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = sd_notify(&socket, "READY=1") {
            tracing::warn!("systemd readiness notification failed: {e}");
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("systemd readiness notification: {e}");
    }
}

/// Sends one notification datagram (`@name` is an abstract socket, as systemd may use).
fn sd_notify(socket: &Path, message: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let name = socket.as_os_str().as_encoded_bytes();
    if let Some(abstract_name) = name.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
        sock.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        sock.send_to(message.as_bytes(), socket)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_reaches_the_socket() {
        let dir = std::env::temp_dir().join(format!("sd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        sd_notify(&path, "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn profile_allows_io_uring_and_denies_by_default() {
        let p: serde_json::Value = serde_json::from_str(SECCOMP_PROFILE).unwrap();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        let allowed: Vec<&str> = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["action"] == "SCMP_ACT_ALLOW")
            .flat_map(|s| s["names"].as_array().unwrap().iter().filter_map(|n| n.as_str()))
            .collect();
        for needed in ["io_uring_setup", "io_uring_enter", "io_uring_register", "sched_setaffinity"]
        {
            assert!(allowed.contains(&needed), "{needed} missing");
        }
        for never in ["mount", "ptrace", "bpf", "kexec_load", "init_module"] {
            assert!(!allowed.contains(&never), "{never} must stay blocked");
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ExplainArgs {
    /// The request: `'GET https://shop.example/cart?x=1'`, or a URL alone (GET).
    request: String,
    /// A request field, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Explain against the table lb serves (this segment).
    #[arg(long, conflicts_with = "manifests", env = "SLUICE_TABLE")]
    table: Option<PathBuf>,
    /// Explain against a manifests folder, compiled here as config-sync would.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// On https: the server name the client sends (default: the URL's host).
    #[arg(long)]
    sni: Option<String>,
    /// The address the connection arrives on (default: the first the table binds on the port).
    #[arg(long)]
    address: Option<std::net::IpAddr>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `sluice explain`.
pub(crate) fn explain(a: &ExplainArgs) -> Result<(), String> {
    let router = match (&a.manifests, &a.table) {
        (Some(dir), _) => {
            let mut source = config_sync::FileSource::new(dir);
            source
                .scan(&std::collections::BTreeSet::new())
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            let settings = config_sync::Settings {
                controller_name: config_sync::DEFAULT_CONTROLLER_NAME.to_owned(),
                default_address: None,
                address_pool: None,
                address_usable: None,
                bind_failures: Default::default(),
                last_good: Default::default(),
            };
            let compiled = config_sync::compile(source.model(), &settings);
            let bytes = table::encode(&compiled.table).map_err(|e| e.to_string())?;
            table::Router::open(&bytes, None).map_err(|e| e.to_string())?
        }
        (None, table) => {
            let path = table.clone().unwrap_or_else(|| PathBuf::from(crate::DEFAULT_TABLE));
            let reader =
                SegmentReader::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            loop {
                match reader.open_router(None) {
                    Ok(Some(router)) => break router,
                    Ok(None) => return Err(format!("{}: no table published yet", path.display())),
                    Err(table::shm::ReadError::Busy) => continue,
                    Err(e) => return Err(format!("{}: {e}", path.display())),
                }
            }
        }
    };
    let (method, url) = match a.request.split_once(' ') {
        Some((m, u)) => (m.trim().to_owned(), u.trim().to_owned()),
        None => ("GET".to_owned(), a.request.trim().to_owned()),
    };
    let headers = a
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("{h:?}: a header is `Name: value`"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let q = lb::explain::Question { method, url, headers, local: a.address, sni: a.sni.clone() };
    let doc = lb::explain::explain(&std::sync::Arc::new(router), &q)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?);
    } else {
        print!("{}", lb::explain::to_text(&doc));
    }
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct StatusArgs {
    /// The folder config-sync writes status to (`--status-dir`; `sluice up` prints its own).
    #[arg(long, env = "SLUICE_STATUS_DIR")]
    status_dir: PathBuf,
    /// Only objects with a condition that is not healthy.
    #[arg(long)]
    problems: bool,
}

/// `sluice status`: every object's conditions from the status folder, as a table.
pub(crate) fn status(a: &StatusArgs) -> Result<(), String> {
    let mut files = Vec::new();
    collect_yaml(&a.status_dir, &mut files)
        .map_err(|e| format!("{}: {e}", a.status_dir.display()))?;
    files.sort();
    let order = |kind: &str| match kind {
        "GatewayClass" => 0,
        "Gateway" => 1,
        _ => 2,
    };
    let mut rows: Vec<(usize, [String; 4], bool)> = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let doc: serde_json::Value = match serde_yaml_ng::from_str(&text) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{}: not a status document: {e}", file.display());
                continue;
            }
        };
        let kind = doc["kind"].as_str().unwrap_or("?").to_owned();
        let ns = doc["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        let name = doc["metadata"]["name"].as_str().unwrap_or("?").to_owned();
        let status = &doc["status"];
        let (own, own_ok) = conditions(&status["conditions"]);
        let mut sub = Vec::new();
        for l in status["listeners"].as_array().into_iter().flatten() {
            let (c, ok) = conditions(&l["conditions"]);
            let routes = l["attachedRoutes"].as_u64().unwrap_or(0);
            sub.push((
                format!("  listener {}", l["name"].as_str().unwrap_or("?")),
                format!("attachedRoutes={routes} {c}"),
                ok,
            ));
        }
        for p in status["parents"].as_array().into_iter().flatten() {
            let r = &p["parentRef"];
            let parent = format!(
                "  parent {}{}{}",
                r["namespace"].as_str().map(|n| format!("{n}/")).unwrap_or_default(),
                r["name"].as_str().unwrap_or("?"),
                r["sectionName"].as_str().map(|s| format!("/{s}")).unwrap_or_default()
            );
            let (c, ok) = conditions(&p["conditions"]);
            sub.push((parent, c, ok));
        }
        let healthy = own_ok && sub.iter().all(|(_, _, ok)| *ok);
        if a.problems && healthy {
            continue;
        }
        let k = order(&kind);
        rows.push((k, [kind.clone(), ns.clone(), name.clone(), own], own_ok));
        for (what, c, ok) in sub {
            rows.push((k, [String::new(), String::new(), what, c], ok));
        }
    }
    // Kinds in dependency order, each object followed by its listeners or parents.
    let mut blocks: Vec<Vec<(usize, [String; 4], bool)>> = Vec::new();
    for row in rows {
        if row.1[0].is_empty() {
            if let Some(b) = blocks.last_mut() {
                b.push(row);
            }
        } else {
            blocks.push(vec![row]);
        }
    }
    blocks.sort_by_key(|b| b[0].0);
    let header = ["KIND", "NAMESPACE", "NAME", "CONDITIONS"];
    let mut width = header.map(str::len);
    for b in &blocks {
        for (_, cols, _) in b {
            for (w, c) in width.iter_mut().zip(cols) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cols: [&str; 4], ok: bool| {
        let mark = if ok { " " } else { "!" };
        format!(
            "{mark} {:w0$}  {:w1$}  {:w2$}  {}",
            cols[0],
            cols[1],
            cols[2],
            cols[3],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2]
        )
    };
    println!("{}", line(header, true));
    for b in &blocks {
        for (_, cols, ok) in b {
            println!("{}", line([&cols[0], &cols[1], &cols[2], &cols[3]], *ok));
        }
    }
    if blocks.is_empty() {
        println!(
            "(no {}status in {})",
            if a.problems { "problem " } else { "" },
            a.status_dir.display()
        );
    }
    Ok(())
}

/// `Type=Status` for each condition (the reason too when it is not healthy), and whether all
/// are healthy.
fn conditions(list: &serde_json::Value) -> (String, bool) {
    let mut all_ok = true;
    let mut parts = Vec::new();
    for c in list.as_array().into_iter().flatten() {
        let kind = c["type"].as_str().unwrap_or("?");
        let status = c["status"].as_str().unwrap_or("?");
        let healthy = config_sync::condition_healthy(kind, status);
        all_ok &= healthy;
        if healthy {
            parts.push(format!("{kind}={status}"));
        } else {
            parts.push(format!("{kind}={status}({})", c["reason"].as_str().unwrap_or("")));
        }
    }
    (parts.join(" "), all_ok)
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_yaml(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    Ok(())
}
