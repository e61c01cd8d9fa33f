//! Mirror checks, as the upstream suite does them: every request carries a unique
//! `gateway-api-conformance-request-id`, and a mirror backend received its copy when one of its
//! pods logged `Echoing back request made to <path?query> to client`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// The query parameter the suite tags requests with.
pub const PARAM: &str = "gateway-api-conformance-request-id";

/// A fresh request id.
pub fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{:x}-{n}", std::process::id(), nanos.as_nanos() as u64)
}

/// `path` with the id appended to its query.
pub fn tag(path: &str, id: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{PARAM}={id}")
}

/// One `mirrored_to` entry.
#[derive(Debug, Clone)]
pub struct Target {
    /// Service name the pod names start with.
    pub backend: String,
    /// Namespace of the pods.
    pub namespace: String,
    /// Sampling rate in percent (100: every request).
    pub percent: f64,
}

/// The `mirrored_to` entries of an expectation.
pub fn targets(expect: &Value) -> Vec<Target> {
    expect
        .get("mirrored_to")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|m| Target {
            backend: m.get("backend").and_then(Value::as_str).unwrap_or_default().to_owned(),
            namespace: m.get("namespace").and_then(Value::as_str).unwrap_or_default().to_owned(),
            percent: m.get("percent").and_then(Value::as_f64).unwrap_or(100.0),
        })
        .collect()
}

/// The request ids the pods of `target` logged (`logs` holds `<namespace>-<pod>.log`).
pub fn ids_seen(logs: &Path, target: &Target) -> HashSet<String> {
    let prefix = format!("{}-{}-", target.namespace, target.backend);
    let mut ids = HashSet::new();
    let Ok(dir) = std::fs::read_dir(logs) else { return ids };
    for entry in dir.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        for line in text.lines().filter(|l| l.contains("Echoing back request made to ")) {
            let Some(at) = line.find(&format!("{PARAM}=")) else { continue };
            let id = &line[at + PARAM.len() + 1..];
            let end = id.find(|c: char| c == '&' || c.is_whitespace()).unwrap_or(id.len());
            ids.insert(id[..end].to_owned());
        }
    }
    ids
}

/// Waits up to `wait` for `target` to log the request tagged `id`.
pub fn wait_for(logs: &Path, target: &Target, id: &str, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        if ids_seen(logs, target).contains(id) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "expected a mirrored copy at {}/{} (request id {id}), none logged",
                target.namespace, target.backend
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `count` of `total` sampled at `percent` is within three binomial standard
/// deviations of the expected count; the message says what was expected.
pub fn within_tolerance(count: usize, total: usize, percent: f64) -> Result<(), String> {
    let p = percent / 100.0;
    let expected = total as f64 * p;
    let tolerance = 3.0 * (total as f64 * p * (1.0 - p)).sqrt();
    if (count as f64 - expected).abs() <= tolerance {
        Ok(())
    } else {
        Err(format!(
            "{count} of {total} requests mirrored, expected {expected:.0} ± {tolerance:.0} ({percent}%)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_is_three_sigma() {
        // 500 at 20 %: 100 ± 26.8.
        assert!(within_tolerance(100, 500, 20.0).is_ok());
        assert!(within_tolerance(126, 500, 20.0).is_ok());
        assert!(within_tolerance(127, 500, 20.0).is_err());
        assert!(within_tolerance(0, 500, 20.0).is_err());
    }

    #[test]
    fn ids_are_read_from_pod_logs() {
        let dir = std::env::temp_dir().join(format!("mirror-ids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("ns-svc-v2-0.log"),
            format!(
                "INFO Echoing back request made to /m?{PARAM}=abc to client (1.2.3.4:5)\nother\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("ns-svc-v1-0.log"),
            format!("INFO Echoing back request made to /m?{PARAM}=zzz to client (x)\n"),
        )
        .unwrap();
        let t = Target { backend: "svc-v2".into(), namespace: "ns".into(), percent: 100.0 };
        assert_eq!(ids_seen(&dir, &t), HashSet::from(["abc".to_owned()]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
