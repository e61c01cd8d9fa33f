//! `sluice`: the one user-facing command. A multi-call binary: each subcommand runs one
//! component in its own process (`lb`, `config-sync`, `echo`), and `up` starts all of them for
//! a manifests folder as child processes of itself.
//!
//! One binary keeps installation and the quickstart simple; separate processes keep the
//! boundary that matters: the `lb` process never starts tokio and `config-sync` never starts
//! compio (the crates enforce it, CI checks it with `cargo tree`).

#![forbid(unsafe_code)]

mod ops;
mod up;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a thread-per-core io_uring L7 load balancer and Gateway API implementation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run everything for a manifests folder: config-sync (file mode), lb, and the demo echo
    /// backends its EndpointSlices ask for. Ctrl-C stops all of them.
    Up(up::UpArgs),
    /// Run the data plane.
    Lb(LbArgs),
    /// Run the control plane in file mode.
    ConfigSync(ConfigSyncArgs),
    /// Run an echo backend.
    Echo(EchoArgs),
    /// Exit 0 when lb serves a table on every core (`--published`: when config-sync has
    /// published one); a readiness probe.
    Ready(ReadyArgs),
    /// Print lb's seccomp profile (io_uring allowed), or write it where a kubelet loads it.
    SeccompProfile(SeccompArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct ReadyArgs {
    /// The table segment.
    #[arg(long, default_value = DEFAULT_TABLE, env = "SLUICE_TABLE")]
    table: PathBuf,
    /// Check config-sync's side: a table is published.
    #[arg(long)]
    published: bool,
}

#[derive(clap::Args, Debug, Clone)]
struct SeccompArgs {
    /// Write the profile to this file instead of printing it.
    #[arg(long)]
    write: Option<PathBuf>,
}

/// Default shared-memory segment.
const DEFAULT_TABLE: &str = "/dev/shm/sluice/table";

#[derive(clap::Args, Debug, Clone)]
struct LbArgs {
    /// Shared-memory table segment written by config-sync.
    #[arg(long, default_value = DEFAULT_TABLE, env = "SLUICE_TABLE")]
    table: PathBuf,
    /// CPUs to run on, one pinned core each: `all`, or ids and ranges (`0,2-3`).
    #[arg(long, default_value = "all")]
    cores: String,
    /// Address to bind for Gateways that name no address.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Seconds from a request's first byte to its complete head.
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds an idle client connection is kept.
    #[arg(long, default_value_t = 60.0)]
    keepalive_timeout: f64,
    /// Seconds to connect to an upstream.
    #[arg(long, default_value_t = 5.0)]
    connect_timeout: f64,
    /// Seconds to wait for an upstream's response (head, and between body reads).
    #[arg(long, default_value_t = 60.0)]
    upstream_timeout: f64,
    /// Largest request head, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_head: usize,
    /// Most request header fields.
    #[arg(long, default_value_t = 100)]
    max_headers: usize,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 1 << 30)]
    max_body: u64,
    /// Buffers in each core's provided-buffer ring.
    #[arg(long, default_value_t = 256)]
    ring_buffers: u16,
    /// Size of each ring buffer, bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    ring_buffer_len: usize,
    /// Seconds requests in flight get to finish after SIGTERM/SIGINT (listeners close at once).
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
}

#[derive(clap::Args, Debug, Clone)]
struct ConfigSyncArgs {
    /// Folder of Gateway API manifests (YAML or JSON, read recursively).
    #[arg(long, required_unless_present = "kubernetes", conflicts_with = "kubernetes")]
    manifests: Option<PathBuf>,
    /// Watch the Kubernetes API instead of a folder (in-cluster config, or KUBECONFIG).
    #[arg(long)]
    kubernetes: bool,
    /// Kubernetes mode: namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "sluice-system")]
    lease_namespace: String,
    /// Kubernetes mode: name of the leader-election Lease.
    #[arg(long, default_value = "sluice-config-sync")]
    lease_name: String,
    /// Kubernetes mode: this replica's identity in the Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Kubernetes mode: seconds a Lease holder stays leader without renewing.
    #[arg(long, default_value_t = 15.0)]
    lease_duration: f64,
    /// Shared-memory table segment to publish into.
    #[arg(long, default_value = DEFAULT_TABLE, env = "SLUICE_TABLE")]
    table: PathBuf,
    /// Write each object's status as YAML under this folder.
    #[arg(long)]
    status_dir: Option<PathBuf>,
    /// Serve GatewayClasses with this controllerName.
    #[arg(long, default_value = config_sync::DEFAULT_CONTROLLER_NAME)]
    controller_name: String,
    /// The address lb binds for Gateways without addresses (reported in their status).
    #[arg(long)]
    default_address: Option<IpAddr>,
    /// Give each Gateway without addresses its own address from this IPv4 range (e.g.
    /// `127.10.0.0/16`), reported in its status, so Gateways can reuse listener ports.
    #[arg(long, value_parser = config_sync::compile::AddressPool::parse)]
    address_pool: Option<config_sync::compile::AddressPool>,
    /// Milliseconds of quiet after a file change before reloading.
    #[arg(long, default_value_t = 2)]
    debounce_ms: u64,
}

#[derive(clap::Args, Debug, Clone)]
struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Namespace reported in replies.
    #[arg(long, env = "NAMESPACE", default_value = "")]
    namespace: String,
    /// Service reported in replies.
    #[arg(long, env = "SERVICE_NAME", default_value = "")]
    service: String,
    /// Pod reported in replies.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Up(args) => up::run(&args),
        Command::Lb(args) => run_lb(args),
        Command::ConfigSync(args) => run_config_sync(args),
        Command::Echo(args) => run_echo(args),
        Command::Ready(args) => ops::ready(&args.table, args.published),
        Command::SeccompProfile(args) => ops::seccomp_profile(args.write.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.001))
}

fn run_lb(a: LbArgs) -> Result<(), String> {
    let cpus = lb::parse_cpus(&a.cores)?;
    let mut settings = lb::Settings { bind_address: a.bind_address, ..Default::default() };
    settings.timeouts = lb::Timeouts {
        request_header: secs(a.header_timeout),
        keep_alive: secs(a.keepalive_timeout),
        connect: secs(a.connect_timeout),
        upstream: secs(a.upstream_timeout),
        ..settings.timeouts
    };
    settings.limits.max_head = a.max_head;
    settings.limits.max_headers = a.max_headers.min(lb::http1::parse::MAX_HEADERS);
    settings.limits.max_body = a.max_body;
    settings.buffers.ring_buffers = a.ring_buffers;
    settings.buffers.ring_buffer_len = a.ring_buffer_len;
    let table = a.table.clone();
    ops::notify_systemd_when(move || ops::ready(&table, false).is_ok());
    let drain = secs(a.drain_timeout);
    lb::run(lb::Config { table: a.table, cpus, settings, drain }).map_err(|e| e.to_string())
}

fn run_config_sync(a: ConfigSyncArgs) -> Result<(), String> {
    let table = a.table.clone();
    ops::notify_systemd_when(move || ops::ready(&table, true).is_ok());
    let config = config_sync::Config {
        manifests: a.manifests.clone().unwrap_or_default(),
        table: a.table,
        status_dir: a.status_dir,
        controller_name: a.controller_name,
        default_address: a.default_address,
        address_pool: a.address_pool,
        debounce: Duration::from_millis(a.debounce_ms.max(1)),
        rescan: Duration::from_secs(5),
    };
    if a.kubernetes {
        let identity = a.identity.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| format!("config-sync-{}", std::process::id()))
        });
        let options = config_sync::kubernetes::KubeOptions {
            lease_namespace: a.lease_namespace,
            lease_name: a.lease_name,
            identity,
            lease_duration: secs(a.lease_duration),
        };
        return config_sync::run_kubernetes(config, options).map_err(|e| e.to_string());
    }
    config_sync::run(config).map_err(|e| e.to_string())
}

fn run_echo(a: EchoArgs) -> Result<(), String> {
    let listener =
        TcpListener::bind(a.listen).map_err(|e| format!("echo: bind {}: {e}", a.listen))?;
    let identity = echo::Identity {
        namespace: a.namespace,
        service: a.service,
        pod: a.pod,
        ingress: String::new(),
    };
    echo::serve(&listener, identity).map_err(|e| e.to_string())
}
