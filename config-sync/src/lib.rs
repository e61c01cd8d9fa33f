//! config-sync: Sluice's control plane. Reads Gateway API objects (from a folder of manifests or
//! the Kubernetes API), resolves them per the spec, compiles one routing table and publishes it
//! to lb through shared memory with a generation number. It also computes every owned object's
//! status.
//!
//! Flow: a source — `files` (find and parse documents, keep the last good) or `kubernetes`
//! (watches, the Lease) — builds a `model` (typed, admission-checked objects), which the one
//! `pipeline` runs through `compile` (resolution, precedence, table), `publish` (segment, lb's
//! applied generation) and `status`.
//!
//! Runs on tokio; it never links compio (lb's runtime), which CI checks.

#![forbid(unsafe_code)]

// In flow order (rustfmt keeps it: `reorder_modules = false`): the two sources, then the one
// pipeline and its stages.
mod files;
mod kubernetes;
mod model;
mod pipeline;
mod compile;
mod publish;
mod status;
mod metrics;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

// What other crates use (sluice's `up`, the benchmarks, the conformance runner).
pub use compile::{
    AddressPool, Compiled, Incremental, Reuse, SUPPORTED_FEATURES, Settings, Statuses, compile,
};
pub use files::FileSource;
pub use kubernetes::KubeOptions;
pub use metrics::address_path as admin_address_path;
pub use model::{Model, parse_document};
pub use status::condition_healthy;

/// How often the segment is checked for damage (deleted, replaced, truncated, scribbled on).
pub const SEGMENT_CHECK: Duration = Duration::from_secs(1);

/// Default `controllerName` of the GatewayClasses Sluice serves.
pub const DEFAULT_CONTROLLER_NAME: &str = "sluice.dev/gateway-controller";

/// How long a Lease holder stays leader without renewing (client-go's default).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// Where the Gateway API objects come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A folder of manifests, read recursively and watched.
    Files {
        /// The folder.
        manifests: PathBuf,
    },
    /// The Kubernetes API server (in-cluster config, or `KUBECONFIG` / `~/.kube/config`).
    Kubernetes(KubeOptions),
}

/// How config-sync runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where objects come from.
    pub source: Source,
    /// Shared-memory segment to publish into.
    pub table: PathBuf,
    /// Where to write one status YAML per object, if anywhere.
    pub status_dir: Option<PathBuf>,
    /// Serve GatewayClasses with this controllerName.
    pub controller_name: String,
    /// The address lb binds when a Gateway names none (reported in Gateway status).
    pub default_address: Option<IpAddr>,
    /// Each Gateway without addresses gets its own address from this range.
    pub address_pool: Option<AddressPool>,
    /// File mode: how long a manifest written in place (and not closed yet) must be quiet
    /// before it is read anyway (at most ten times this); settled files are read at once.
    pub debounce: Duration,
    /// Full rescan interval, a safety net under inotify.
    pub rescan: Duration,
    /// The admin listener (`/metrics`, `/ready`); `None`: none.
    pub admin: Option<std::net::SocketAddr>,
}

/// Errors that stop config-sync.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifests folder cannot be read at start.
    #[error("manifests folder {path}: {source}")]
    Manifests {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The segment cannot be opened.
    #[error("table segment {path}: {source}")]
    Segment {
        /// The segment path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file watcher cannot start.
    #[error("watching {path}: {source}")]
    Watch {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: notify::Error,
    },
    /// The async runtime cannot start.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    /// No Kubernetes client could be configured (no in-cluster config, no kubeconfig).
    #[error("Kubernetes client: {0}")]
    Kubernetes(String),
}

/// Runs config-sync until SIGINT or SIGTERM, reading objects from the configured source.
pub fn run(config: &Config) -> Result<(), Error> {
    if let Some(addr) = config.admin {
        metrics::serve_admin(addr, &config.table, || metrics::metrics().generation.get() > 0);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    match &config.source {
        Source::Files { manifests } => rt.block_on(files::run(config, manifests)),
        Source::Kubernetes(options) => rt.block_on(kubernetes::run(config, options)),
    }
}
