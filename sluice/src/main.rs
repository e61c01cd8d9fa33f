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

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a thread-per-core io_uring L7 load balancer and Gateway API implementation"
)]
struct Cli {
    /// Log lines as `text` (coloured only when stderr is a terminal) or `json` (one object
    /// per line, for journald, `kubectl logs` and log shippers). Children of `up` inherit it.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// The option value that selects it (what `up` passes to its children).
    fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
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
    /// Make one unary call of the echo's gRPC service (`GrpcEcho`, the Gateway API
    /// conformance service) over h2c and print the outcome: the quickstart's gRPC check.
    GrpcCall(GrpcCallArgs),
    /// Say where a request would go and why: the listener, every candidate rule in precedence
    /// order with the first condition that failed, the winning rule, its filters and backends,
    /// and the answer — computed by lb's own lookup and decision code.
    Explain(ops::ExplainArgs),
    /// Print every object's status conditions from config-sync's status folder (file mode),
    /// one line per object and per listener or parent; `!` marks what is not healthy.
    Status(ops::StatusArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct GrpcCallArgs {
    /// Where to connect (a cleartext listener).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The `:authority` to send.
    #[arg(long, default_value = "grpc.example")]
    authority: String,
    /// The method: `Echo`, `EchoTwo`, `EchoThree` (of `GrpcEcho`), or a whole
    /// `/package.Service/Method` path.
    #[arg(default_value = "Echo")]
    method: String,
    /// Metadata to send, `name: value` (repeatable).
    #[arg(long, short = 'm')]
    metadata: Vec<String>,
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
pub(crate) const DEFAULT_TABLE: &str = "/dev/shm/sluice/table";

#[derive(clap::Args, Debug, Clone)]
struct LbArgs {
    /// Shared-memory table segment written by config-sync.
    #[arg(long, default_value = DEFAULT_TABLE, env = "SLUICE_TABLE")]
    table: PathBuf,
    /// CPUs to run on, one pinned core each: `all`, or ids and ranges (`0,2-3`).
    #[arg(long, default_value = "all")]
    cores: String,
    /// Address to bind for Gateways that name no address.
    #[arg(long, default_value_t = lb::defaults::BIND_ADDRESS)]
    bind_address: IpAddr,
    /// From a request's first byte to its complete head. Durations take a unit (`10s`,
    /// `500ms`, `2m`, `1h`; a bare number is seconds), from 1ms to 7d; 0 is refused (no
    /// timeout means an unbounded wait).
    #[arg(long, default_value_t = Span(lb::defaults::REQUEST_HEADER), value_parser = timeout)]
    header_timeout: Span,
    /// How long an idle client connection is kept.
    #[arg(long, default_value_t = Span(lb::defaults::KEEP_ALIVE), value_parser = timeout)]
    keepalive_timeout: Span,
    /// To connect to an upstream.
    #[arg(long, default_value_t = Span(lb::defaults::CONNECT), value_parser = timeout)]
    connect_timeout: Span,
    /// To wait for an upstream's response (head, and between body reads).
    #[arg(long, default_value_t = Span(lb::defaults::UPSTREAM), value_parser = timeout)]
    upstream_timeout: Span,
    /// Between reads of a request body, and for each write to a client or upstream.
    #[arg(long, default_value_t = Span(lb::defaults::BODY), value_parser = timeout)]
    body_timeout: Span,
    /// An upgraded connection (WebSocket) in which neither side sent a byte is closed.
    #[arg(long, default_value_t = Span(lb::defaults::TUNNEL), value_parser = timeout)]
    tunnel_timeout: Span,
    /// A TLS handshake, from accept to its end.
    #[arg(long, default_value_t = Span(lb::defaults::HANDSHAKE), value_parser = timeout)]
    handshake_timeout: Span,
    /// TLS handshakes in progress per core; a connection beyond is closed at once (a
    /// handshake flood costs bounded CPU and memory; established connections are not
    /// affected).
    #[arg(long, default_value_t = lb::defaults::MAX_HANDSHAKES)]
    max_handshakes: usize,
    /// Most client connections lb holds open at once (split evenly over the cores); when
    /// reached, accepting pauses until some close. Default: half the file-descriptor limit
    /// (less a reserve), since each client may need an upstream connection too.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Proxies in front of lb whose X-Forwarded-* and Forwarded fields are trusted. 0 (an
    /// edge): a client's are replaced by lb's own; more: they are kept and lb appends the peer.
    #[arg(long, default_value_t = 0)]
    trusted_hops: u32,
    /// Request fields whose name contains `_` (backends that fold `_` into `-` would read
    /// `X_Forwarded_For` as `X-Forwarded-For`): `reject` (400), `drop`, or `allow`.
    #[arg(long, default_value = "reject", value_parser = underscores)]
    underscore_headers: lb::http1::parse::Underscores,
    /// Largest request head, bytes.
    #[arg(long, default_value_t = lb::defaults::MAX_HEAD)]
    max_head: usize,
    /// Most request header fields.
    #[arg(long, default_value_t = lb::defaults::MAX_HEADERS)]
    max_headers: usize,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = lb::defaults::MAX_BODY)]
    max_body: u64,
    /// Buffers in each core's provided-buffer ring.
    #[arg(long, default_value_t = lb::defaults::RING_BUFFERS)]
    ring_buffers: u16,
    /// Size of each ring buffer, bytes.
    #[arg(long, default_value_t = lb::defaults::RING_BUFFER_LEN)]
    ring_buffer_len: usize,
    /// How long requests in flight get to finish after SIGTERM/SIGINT (listeners close at
    /// once); 0 exits at once.
    #[arg(long, default_value_t = Span(lb::defaults::DRAIN), value_parser = duration)]
    drain_timeout: Span,
    /// Do not offer HTTP/2 to clients (no ALPN `h2`; the h2c preface gets a 505).
    #[arg(long)]
    no_http2: bool,
    /// HTTP/2: streams a client may have open on one connection.
    #[arg(long, default_value_t = lb::H2Limits::default().max_streams)]
    h2_max_concurrent_streams: u32,
    /// HTTP/2: receive window per stream, bytes (how much one stream may send unread).
    #[arg(long, default_value_t = lb::H2Limits::default().stream_window)]
    h2_stream_window: u32,
    /// HTTP/2: receive window per connection, bytes.
    #[arg(long, default_value_t = lb::H2Limits::default().connection_window)]
    h2_connection_window: u32,
    /// HTTP/2: largest header list a client may send (HPACK-decoded), bytes; beyond: 431.
    #[arg(long, default_value_t = lb::H2Limits::default().max_header_list)]
    h2_max_header_list: u32,
    /// The admin listener (`/metrics`, `/ready`, `/config`): an address (keep it on
    /// loopback or a private network; port 0 picks one, written to `<table>.admin`), or `off`.
    #[arg(long, default_value = "127.0.0.1:9901", value_parser = admin_address)]
    admin: AdminAddress,
    /// Metrics: also series per route rule (requests, responses, bytes, duration). Off by
    /// default: with thousands of routes they are thousands of series.
    #[arg(long)]
    metrics_routes: bool,
    /// Metrics: also upstream series per Service (attempts, failures, retries, pool use).
    #[arg(long)]
    metrics_backends: bool,
    /// Access log (JSON lines): `off`, `stdout`, or a file (appended to; reopened on SIGHUP,
    /// for logrotate). Written by a thread of its own; records a core cannot hand over in
    /// time are dropped and counted, never waited for.
    #[arg(long, default_value = "off")]
    access_log: String,
    /// Access log: fraction of the records passing the filters that are written (0 to 1).
    #[arg(long, default_value_t = 1.0)]
    access_log_sample: f64,
    /// Access log: only exchanges with at least this status (or slower than
    /// `--access-log-slower-than`, or without a response); 0: all.
    #[arg(long, default_value_t = 0)]
    access_log_min_status: u16,
    /// Access log: exchanges at least this slow are logged whatever their status.
    #[arg(long, value_parser = timeout)]
    access_log_slower_than: Option<Span>,
    /// `X-Request-Id`: `generate` (a client's is passed on; one is made when it sent none),
    /// `replace` (always lb's own), or `off`. Logged with each request.
    #[arg(long, default_value = "generate", value_parser = request_ids)]
    request_id: lb::RequestIds,
    /// W3C trace context: `propagate` (`traceparent`/`tracestate` passed on and logged) or
    /// `start` (also a new `traceparent` for requests without one).
    #[arg(long, default_value = "propagate", value_parser = trace_context)]
    trace_context: lb::TraceContext,
}

fn request_ids(text: &str) -> Result<lb::RequestIds, String> {
    match text {
        "generate" => Ok(lb::RequestIds::Generate),
        "replace" => Ok(lb::RequestIds::Replace),
        "off" => Ok(lb::RequestIds::Off),
        _ => Err(format!("{text:?}: generate, replace or off")),
    }
}

fn trace_context(text: &str) -> Result<lb::TraceContext, String> {
    match text {
        "propagate" => Ok(lb::TraceContext::Propagate),
        "start" => Ok(lb::TraceContext::Start),
        _ => Err(format!("{text:?}: propagate or start")),
    }
}

/// `--admin`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
struct AdminAddress(Option<SocketAddr>);

fn admin_address(text: &str) -> Result<AdminAddress, String> {
    if text == "off" {
        return Ok(AdminAddress(None));
    }
    text.parse()
        .map(|a| AdminAddress(Some(a)))
        .map_err(|e| format!("{text:?}: {e} (an address such as 127.0.0.1:9901, or off)"))
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
    /// Kubernetes mode: how long a Lease holder stays leader without renewing.
    #[arg(long, default_value_t = Span(config_sync::DEFAULT_LEASE_DURATION), value_parser = timeout)]
    lease_duration: Span,
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
    #[arg(long, value_parser = config_sync::AddressPool::parse)]
    address_pool: Option<config_sync::AddressPool>,
    /// File mode: a manifest written in place is read once its writer closes it, or after this
    /// many milliseconds of quiet (at most ten times as long); renamed, removed and closed
    /// files are read at once.
    #[arg(long, default_value_t = 2)]
    debounce_ms: u64,
    /// The admin listener (`/metrics`, `/ready`): an address (port 0 picks one, written to
    /// `<table>.config-sync.admin`), or `off`.
    #[arg(long, default_value = "127.0.0.1:9902", value_parser = admin_address)]
    admin: AdminAddress,
}

#[derive(clap::Args, Debug, Clone)]
struct EchoArgs {
    /// Address to listen on (HTTP/1.1, and h2c for connections that start with the HTTP/2
    /// preface, where `application/grpc` requests reach the conformance gRPC service).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// More addresses served the same way (the upstream echo's h2c port 3001).
    #[arg(long)]
    also_listen: Vec<SocketAddr>,
    /// Namespace reported in replies.
    #[arg(long, env = "NAMESPACE", default_value = "")]
    namespace: String,
    /// Service reported in replies.
    #[arg(long, env = "SERVICE_NAME", default_value = "")]
    service: String,
    /// Pod reported in replies.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod: String,
    /// Also serve HTTPS here (the upstream echo's port 8443), with `--tls-cert` and
    /// `--tls-key`; replies then carry the connection's `tls` facts.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) for `--tls-listen`.
    #[arg(long, env = "TLS_SERVER_CERT")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) for `--tls-listen`.
    #[arg(long, env = "TLS_SERVER_PRIVKEY")]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM) for client certificates on `--tls-listen`: asked for and verified if
    /// given (a client without one is still served), reported in `tls.peerCertificates`.
    #[arg(long, env = "TLS_CLIENT_CACERTS", requires = "tls_listen")]
    tls_client_ca: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            // The h2 codec warns once per misbehaving client connection (a rapid-reset flood):
            // lb answers those itself and logs them at debug, so the codec speaks only of
            // errors unless RUST_LOG asks for more.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,h2=error")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        // Colour codes only for a person at a terminal: in files, journald and `kubectl logs`
        // they are noise that breaks grep.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    let result = match cli.command {
        Command::Up(args) => up::run(&args, cli.log_format.name()),
        Command::Lb(args) => run_lb(args),
        Command::ConfigSync(args) => run_config_sync(args),
        Command::Echo(args) => run_echo(args),
        Command::Ready(args) => ops::ready(&args.table, args.published),
        Command::SeccompProfile(args) => ops::seccomp_profile(args.write.as_deref()),
        Command::GrpcCall(args) => grpc_call(&args),
        Command::Explain(args) => ops::explain(&args),
        Command::Status(args) => ops::status(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice grpc-call`: prints the gRPC status and, on OK, what the backend saw; fails unless
/// the status is OK.
fn grpc_call(a: &GrpcCallArgs) -> Result<(), String> {
    let path = if a.method.starts_with('/') {
        a.method.clone()
    } else {
        format!("/{}/{}", echo::grpc::SERVICE, a.method)
    };
    let mut metadata = Vec::new();
    for m in &a.metadata {
        let (name, value) =
            m.split_once(':').ok_or_else(|| format!("metadata {m:?} is not `name: value`"))?;
        metadata.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let timeout = Duration::from_secs(10);
    let call = echo::grpc_client::call(a.addr, &a.authority, &path, &metadata, timeout)?;
    let code = call.code.ok_or("the answer has no grpc-status")?;
    let name = echo::grpc::code_name(code);
    println!("grpc-status: {code} {name} {}", call.message);
    if let Some(seen) = &call.assertions {
        println!(
            "backend saw {} for {} (pod {}, namespace {})",
            seen.fully_qualified_method, seen.authority, seen.pod, seen.namespace
        );
    }
    if code == 0 { Ok(()) } else { Err(format!("gRPC status {name}")) }
}

fn underscores(text: &str) -> Result<lb::http1::parse::Underscores, String> {
    use lb::http1::parse::Underscores;
    match text {
        "reject" => Ok(Underscores::Reject),
        "drop" => Ok(Underscores::Drop),
        "allow" => Ok(Underscores::Allow),
        _ => Err(format!("{text:?}: use reject, drop or allow")),
    }
}

/// Longest duration any option takes.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses a duration: a decimal number and a unit (`ms`, `s`, `m`, `h`, `d`); a bare number is
/// seconds. Between 0 and 7 days; `inf`, `NaN`, negative and unitless garbage are refused.
fn duration(text: &str) -> Result<Span, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => return Err(format!("{text:?}: unknown unit {other:?} (use ms, s, m, h or d)")),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 10s, 2m, 1h)"))?;
    let secs = n * scale;
    if !(0.0..=MAX_DURATION.as_secs_f64()).contains(&secs) {
        return Err(format!("{text:?}: durations go from 0 to 7d"));
    }
    Ok(Span(Duration::from_secs_f64(secs)))
}

/// A duration option's value: parsed by [`duration`], shown in `--help` in the same syntax, so
/// the defaults printed are lb's own (`lb::defaults`), not a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span(Duration);

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => write!(f, "0s"),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

/// A timeout: a [`duration`] of at least 1 ms. 0 is refused rather than read as "none": an
/// unbounded wait is how connections pile up.
fn timeout(text: &str) -> Result<Span, String> {
    let d = duration(text)?;
    if d.0 < Duration::from_millis(1) {
        return Err(format!("{text:?}: a timeout must be at least 1ms (there is no 'never')"));
    }
    Ok(d)
}

fn run_lb(a: LbArgs) -> Result<(), String> {
    // Before lb starts any thread.
    lb::fix_mmap_threshold();
    let cpus = lb::parse_cpus(&a.cores)?;
    let mut settings = lb::Settings { bind_address: a.bind_address, ..Default::default() };
    settings.timeouts = lb::Timeouts {
        request_header: a.header_timeout.0,
        keep_alive: a.keepalive_timeout.0,
        connect: a.connect_timeout.0,
        upstream: a.upstream_timeout.0,
        body: a.body_timeout.0,
        tunnel: a.tunnel_timeout.0,
        handshake: a.handshake_timeout.0,
    };
    settings.max_handshakes = a.max_handshakes.max(1);
    settings.max_connections = a.max_connections;
    settings.trusted_hops = a.trusted_hops;
    settings.limits.underscores = a.underscore_headers;
    settings.limits.max_head = a.max_head;
    settings.limits.max_headers = a.max_headers.min(lb::http1::parse::MAX_HEADERS);
    settings.limits.max_body = a.max_body;
    settings.buffers.ring_buffers = a.ring_buffers;
    settings.buffers.ring_buffer_len = a.ring_buffer_len;
    settings.h2 = lb::H2Limits {
        enabled: !a.no_http2,
        max_streams: a.h2_max_concurrent_streams.max(1),
        // RFC 9113 §6.5.2: windows up to 2^31-1; below the 64 KiB default a client's first
        // flight stalls.
        stream_window: a.h2_stream_window.clamp(65_535, (1 << 31) - 1),
        connection_window: a.h2_connection_window.clamp(65_535, (1 << 31) - 1),
        max_header_list: a.h2_max_header_list.max(1024),
        ..lb::H2Limits::default()
    };
    let table = a.table.clone();
    ops::notify_systemd_when(move || ops::ready(&table, false).is_ok());
    let drain = a.drain_timeout.0;
    let metrics = lb::MetricsDetail { routes: a.metrics_routes, backends: a.metrics_backends };
    let admin = a.admin.0;
    if !(0.0..=1.0).contains(&a.access_log_sample) {
        return Err(format!("--access-log-sample {}: a fraction from 0 to 1", a.access_log_sample));
    }
    let log = lb::LogConfig {
        target: match a.access_log.as_str() {
            "off" => lb::LogTarget::Off,
            "stdout" | "-" => lb::LogTarget::Stdout,
            path => lb::LogTarget::File(path.into()),
        },
        sample: a.access_log_sample,
        min_status: a.access_log_min_status,
        slower_than: a.access_log_slower_than.map(|s| s.0),
        request_ids: a.request_id,
        trace: a.trace_context,
    };
    lb::run(lb::Config { table: a.table, cpus, settings, drain, admin, metrics, log })
        .map_err(|e| e.to_string())
}

fn run_config_sync(a: ConfigSyncArgs) -> Result<(), String> {
    let table = a.table.clone();
    ops::notify_systemd_when(move || ops::ready(&table, true).is_ok());
    let source = if a.kubernetes {
        let identity = a.identity.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| format!("config-sync-{}", std::process::id()))
        });
        config_sync::Source::Kubernetes(config_sync::KubeOptions {
            lease_namespace: a.lease_namespace,
            lease_name: a.lease_name,
            identity,
            lease_duration: a.lease_duration.0,
        })
    } else {
        config_sync::Source::Files { manifests: a.manifests.clone().unwrap_or_default() }
    };
    let config = config_sync::Config {
        source,
        table: a.table,
        status_dir: a.status_dir,
        controller_name: a.controller_name,
        default_address: a.default_address,
        address_pool: a.address_pool,
        debounce: Duration::from_millis(a.debounce_ms.max(1)),
        rescan: Duration::from_secs(5),
        admin: a.admin.0,
    };
    config_sync::run(&config).map_err(|e| e.to_string())
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
    if let (Some(addr), Some(cert), Some(key)) = (a.tls_listen, &a.tls_cert, &a.tls_key) {
        let config = echo_tls_config(cert, key, a.tls_client_ca.as_deref())?;
        let tls = TcpListener::bind(addr).map_err(|e| format!("echo: bind {addr}: {e}"))?;
        let identity = identity.clone();
        std::thread::spawn(move || {
            if let Err(e) = echo::serve_tls(&tls, identity, &config) {
                tracing::error!("echo HTTPS: {e}");
            }
        });
    }
    for addr in a.also_listen {
        let more = TcpListener::bind(addr).map_err(|e| format!("echo: bind {addr}: {e}"))?;
        let identity = identity.clone();
        std::thread::spawn(move || {
            if let Err(e) = echo::serve(&more, identity) {
                tracing::error!("echo on {addr}: {e}");
            }
        });
    }
    echo::serve(&listener, identity).map_err(|e| e.to_string())
}

/// The echo's HTTPS configuration: the certificate and key from PEM files, TLS 1.3 and 1.2,
/// ALPN `http/1.1`; with `client_ca`, client certificates verified if given.
fn echo_tls_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in
                CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder.with_single_cert(chain, key).map_err(|e| format!("echo certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_refuse_nonsense() {
        let d = |t| duration(t).map(|s| s.0);
        assert_eq!(d("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(d("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        for bad in ["inf", "NaN", "-1", "-1s", "1e3", "5 parsecs", "", "s", "8d", "1.2.3s"] {
            assert!(duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(timeout("0").unwrap_err().contains("at least 1ms"));
        assert!(timeout("0.0001").is_err());
        assert_eq!(timeout("1ms"), Ok(Span(Duration::from_millis(1))));
    }

    #[test]
    fn defaults_print_in_the_syntax_they_parse_in() {
        for d in [lb::defaults::REQUEST_HEADER, lb::defaults::TUNNEL, lb::defaults::KEEP_ALIVE] {
            assert_eq!(duration(&Span(d).to_string()), Ok(Span(d)));
        }
        assert_eq!(Span(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(Span(Duration::from_secs(90)).to_string(), "90s");
        assert_eq!(Span(Duration::from_secs(120)).to_string(), "2m");
    }
}
