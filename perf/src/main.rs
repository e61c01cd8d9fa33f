//! `sluice-perf`: load generator and side-by-side benchmark.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use perf::load::{Plan, run};
use perf::report::{Series, Summary, spectrum_svg};

#[derive(Parser, Debug)]
#[command(
    name = "sluice-perf",
    version,
    about = "Latency-benchmarking load generator (open and closed loop, coordinated-omission corrected)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate load against one URL and report throughput and latency.
    Load(LoadArgs),
    /// Side-by-side benchmark of nginx, HAProxy and Sluice; writes benchmarks.md.
    Compare(CompareArgs),
    /// Config propagation at scale; writes propagation.md.
    Propagation(PropagationArgs),
}

#[derive(clap::Args, Debug)]
struct PropagationArgs {
    /// The sluice binary (release build).
    #[arg(long, default_value = "target/release/sluice")]
    sluice: PathBuf,
    /// Routes loaded first.
    #[arg(long, default_value_t = 5000)]
    routes: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    /// Routes added, modified and deleted one at a time.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Then churn: changes per second, a route added and the oldest live one deleted in turn.
    #[arg(long, default_value_t = 100)]
    churn_rate: u32,
    /// Seconds of churn (0: none).
    #[arg(long, default_value_t = 60.0)]
    churn_seconds: f64,
    /// Folder for propagation.md.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// The sluice binary (release build).
    #[arg(long, default_value = "target/release/sluice")]
    sluice: PathBuf,
    /// Folder for benchmarks.md and the latency plot.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// Interleaved rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Connections for the closed and open loops.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Idle connections for the memory figure.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Requests counted under callgrind (0 skips it).
    #[arg(long, default_value_t = 2000)]
    callgrind_requests: u64,
    /// Another sluice binary (the commit before a change) measured in the same rounds.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Run the TLS comparison (handshakes, resumption, HTTPS keep-alive, idle TLS
    /// connections) instead; it replaces only the TLS section of benchmarks.md.
    #[arg(long, conflicts_with = "h2")]
    tls: bool,
    /// Run the HTTP/2 comparison (h2load: h2 over TLS and h2c, 10 connections × 100
    /// streams) instead; it replaces only the HTTP/2 section of benchmarks.md.
    #[arg(long)]
    h2: bool,
    /// Run the access-log comparison (each proxy without and with an access log to a file,
    /// CPU and callgrind instructions per request) instead; it replaces only its section of
    /// benchmarks.md.
    #[arg(long, conflicts_with_all = ["tls", "h2", "baseline"])]
    access_logs: bool,
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// Target, `http://host:port/path` or `https://…` (TLS 1.3, X25519, the host as server
    /// name, no certificate verification).
    url: String,
    /// HTTPS: resume sessions (tickets) on new connections.
    #[arg(long)]
    resume: bool,
    /// A new connection for every request (handshake benchmarks).
    #[arg(long)]
    new_connections: bool,
    /// Keep-alive connections.
    #[arg(short, long, default_value_t = 64)]
    connections: usize,
    /// Seconds to run, warm-up included.
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of warm-up, not recorded.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stop after this many recorded requests.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Open loop at this many requests per second (default: closed loop).
    #[arg(short, long)]
    rate: Option<f64>,
    /// CPUs for the load threads (`0,2-3`).
    #[arg(long, default_value = "0")]
    cpus: String,
    /// Request header, `Name: value` (repeatable). Overrides Host when named Host.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Method.
    #[arg(short, long, default_value = "GET")]
    method: String,
    /// Request body.
    #[arg(long, default_value = "")]
    body: String,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the percentile spectrum as SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(a) => load(&a),
        Command::Compare(a) => perf::compare::compare(&perf::compare::Options {
            sluice: a.sluice.clone(),
            out: a.out.clone(),
            rounds: a.rounds.max(1),
            seconds: a.seconds,
            connections: a.connections.max(1),
            idle: a.idle,
            callgrind_requests: a.callgrind_requests,
            baseline: a.baseline,
            tls: a.tls,
            h2: a.h2,
            access_logs: a.access_logs,
        })
        .map(|report| println!("{report}")),
        Command::Propagation(a) => perf::propagation::run(&perf::propagation::Options {
            sluice: a.sluice.clone(),
            routes: a.routes.max(1),
            namespaces: a.namespaces.max(1),
            changes: a.changes,
            churn_rate: a.churn_rate.max(1),
            churn: Duration::from_secs_f64(a.churn_seconds.max(0.0)),
            out: a.out,
        })
        .map(|report| println!("{report}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-perf: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(a: &LoadArgs) -> Result<(), String> {
    let (target, mut host, path, https) = perf::parse_url(&a.url)?;
    let server_name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h).to_owned();
    let tls = if https { Some((perf::tls::client_config(a.resume)?, server_name)) } else { None };
    let mut headers = Vec::new();
    for h in &a.headers {
        let (k, v) = h.split_once(':').ok_or_else(|| format!("header {h:?} is not Name: value"))?;
        if k.trim().eq_ignore_ascii_case("host") {
            host = v.trim().to_owned();
        } else {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let plan = Plan {
        target,
        request: perf::request(&a.method, &host, &path, &headers, a.body.as_bytes()),
        head_request: a.method == "HEAD",
        connections: a.connections.max(1),
        cpus: lb::parse_cpus(&a.cpus)?,
        duration: Duration::from_secs_f64(a.duration),
        warmup: Duration::from_secs_f64(a.warmup.min(a.duration)),
        max_requests: a.requests,
        rate: a.rate,
        timeout: Duration::from_secs_f64(a.timeout),
        tls,
        fresh_connections: a.new_connections,
    };
    let outcome = run(&plan).map_err(|e| e.to_string())?;
    let summary = Summary::of(&outcome);
    print!("{}", summary.text());
    if plan.tls.is_some() {
        let (all, resumed) = outcome.handshakes;
        println!("  TLS handshakes {all} ({resumed} resumed)");
    }
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &a.svg {
        let svg = spectrum_svg(
            &format!("{} {}", a.method, a.url),
            &[Series::of(&summary.mode, &outcome)],
        );
        std::fs::write(p, svg).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}
