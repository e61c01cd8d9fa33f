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
            let compiled = config_sync::compile(&source.model().0, &settings);
            let bytes = table::encode(&compiled.table).map_err(|e| e.to_string())?;
            table::Router::open(&bytes, None).map_err(|e| e.to_string())?
        }
        (None, table) => {
            let path = table.clone().unwrap_or_else(|| PathBuf::from(crate::DEFAULT_TABLE));
            let reader =
                SegmentReader::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let snap = loop {
                match reader.read() {
                    Ok(Some(s)) => break s,
                    Ok(None) => return Err(format!("{}: no table published yet", path.display())),
                    Err(table::shm::ReadError::Busy) => continue,
                    Err(e) => return Err(format!("{}: {e}", path.display())),
                }
            };
            table::Router::open(&snap.bytes, Some(snap.generation)).map_err(|e| e.to_string())?
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
