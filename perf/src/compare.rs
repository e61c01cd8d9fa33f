//! Side-by-side benchmark: nginx, HAProxy and Sluice proxying to the same upstream, each pinned
//! to CPU 0 with one worker; the upstream (nginx returning a fixed body) and the load generator
//! share CPU 1. Rounds are interleaved (every proxy once per round) and medians reported.
//!
//! Measured per proxy: closed-loop req/s (64 connections); p50/p99/p99.9 at a fixed rate of 60 %
//! of nginx's closed-loop median; proxy CPU µs per request (utime+stime from /proc for all of
//! the proxy's processes, every thread included, io_uring workers too); user-space instructions
//! per request (callgrind, counters zeroed after warm-up, over a fixed number of requests);
//! memory per idle keep-alive client connection (RSS delta over 1,000 idle connections).

mod h2;
mod logs;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::load::{Plan, run};
use crate::report::{Series, Summary, spectrum_svg};

/// Options of a comparison run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `sluice` binary.
    pub sluice: PathBuf,
    /// Where `benchmarks.md` and the plot go.
    pub out: PathBuf,
    /// Interleaved rounds.
    pub rounds: usize,
    /// Seconds of each measured run.
    pub seconds: f64,
    /// Connections for the closed and open loops.
    pub connections: usize,
    /// Idle connections for the memory figure.
    pub idle: usize,
    /// Requests counted under callgrind (0: skip).
    pub callgrind_requests: u64,
    /// Another `sluice` binary (e.g. the commit before a change), measured in the same rounds
    /// as a fourth proxy, "Sluice (baseline)".
    pub baseline: Option<PathBuf>,
    /// Run the TLS comparison instead (handshakes, resumption, HTTPS keep-alive, idle TLS
    /// connections); its section of `benchmarks.md` is replaced, the rest kept.
    pub tls: bool,
    /// Run the HTTP/2 comparison instead (h2load, h2 over TLS and h2c); its section of
    /// `benchmarks.md` is replaced, the rest kept.
    pub h2: bool,
    /// Run the access-log comparison instead (each proxy without and with an access log); its
    /// section of `benchmarks.md` is replaced, the rest kept.
    pub access_logs: bool,
}

/// The proxies compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    /// nginx, one worker, proxy_pass with upstream keepalive.
    Nginx,
    /// HAProxy, one thread, http-reuse always.
    Haproxy,
    /// Sluice: lb on one core, config-sync beside it.
    Sluice,
    /// The same, from the `--baseline` binary.
    Baseline,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Nginx => "nginx",
            Proxy::Haproxy => "HAProxy",
            Proxy::Sluice => "Sluice",
            Proxy::Baseline => "Sluice (baseline)",
        }
    }

    /// Its folder name under the work directory.
    fn slug(self) -> &'static str {
        match self {
            Proxy::Nginx => "nginx",
            Proxy::Haproxy => "haproxy",
            Proxy::Sluice => "sluice",
            Proxy::Baseline => "baseline",
        }
    }
}

const PROXY_CPU: &str = "0";
const LOAD_CPU: usize = 1;

struct Running {
    children: Vec<Child>,
    /// Processes whose CPU and memory count for the proxy.
    pids: Vec<u32>,
    port: u16,
    /// The valgrind process, when under callgrind.
    valgrind: Option<u32>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.children {
            signal(c.id(), rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

struct Bench {
    opts: Options,
    work: PathBuf,
    upstream_port: u16,
    /// The server certificate every proxy serves in the TLS comparison (ECDSA P-256, made at
    /// start): (certificate PEM, key PEM).
    cert: Option<(String, String)>,
    /// In the HTTP/2 comparison: how the proxies are reached.
    h2: Option<h2::H2Mode>,
    /// In the HTTP/2 comparison: the gRPC upstream (our echo's gRPC service over h2c).
    grpc_upstream: Option<(u16, Running)>,
    /// In the access-log comparison: proxies started now write an access log to a file.
    logging: std::cell::Cell<bool>,
    _upstream: Running,
}

/// A fixed-rate p50 above this (µs) means the proxy did not keep up with the offered rate.
const FELL_BEHIND_P50_US: f64 = 10_000.0;

/// Per-proxy results.
#[derive(Debug, Default, Clone)]
struct Figures {
    rps: Vec<f64>,
    cpu_us: Vec<f64>,
    /// The same closed loop driven by wrk (`-t1`), interleaved with sluice-perf's rounds.
    wrk_rps: Vec<f64>,
    wrk_cpu_us: Vec<f64>,
    /// Voluntary context switches of the proxy (it went to sleep waiting for I/O) per 100
    /// requests, under each load generator: how many requests one wake-up serves.
    sleeps: Vec<f64>,
    wrk_sleeps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    p999: Vec<f64>,
    open_errors: u64,
    closed_errors: u64,
    idle_bytes: Option<f64>,
    instructions: Option<f64>,
    histogram: Option<Histogram<u64>>,
}

/// Runs the whole comparison and writes the report. Returns the report text.
pub fn compare(opts: &Options) -> Result<String, String> {
    ensure_installed(&[
        ("nginx", "nginx"),
        ("haproxy", "haproxy"),
        ("valgrind", "valgrind"),
        ("taskset", "util-linux"),
        ("wrk", "wrk"),
    ])?;
    raise_fd_limit();
    let work = std::env::temp_dir().join(format!("sluice-compare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let upstream_port = free_port();
    let upstream = start_upstream(&work, upstream_port)?;
    if opts.tls || opts.h2 {
        let mut bench = Bench {
            opts: opts.clone(),
            work: work.clone(),
            upstream_port,
            cert: Some(bench_certificate()?),
            h2: None,
            grpc_upstream: None,
            logging: Default::default(),
            _upstream: upstream,
        };
        let report = if opts.h2 {
            ensure_installed(&[("h2load", "nghttp2-client")])?;
            bench.grpc_upstream = Some(h2::start_grpc_upstream(&work, &opts.sluice)?);
            bench.compare_h2()
        } else {
            bench.compare_tls()
        };
        let _ = std::fs::remove_dir_all(&work);
        return report;
    }
    let bench = Bench {
        opts: opts.clone(),
        work: work.clone(),
        upstream_port,
        cert: None,
        h2: None,
        grpc_upstream: None,
        logging: Default::default(),
        _upstream: upstream,
    };
    if opts.access_logs {
        let report = bench.compare_access_logs();
        let _ = std::fs::remove_dir_all(&work);
        return report;
    }
    let mut figures: Vec<(Proxy, Figures)> = [Proxy::Nginx, Proxy::Haproxy, Proxy::Sluice]
        .into_iter()
        .chain(opts.baseline.as_ref().map(|_| Proxy::Baseline))
        .map(|p| (p, Figures::default()))
        .collect();

    for round in 0..opts.rounds {
        for (proxy, f) in &mut figures {
            for wrk in [false, true] {
                let r = bench.start(*proxy, false)?;
                let (rps, cpu, errors, slept) =
                    if wrk { bench.closed_loop_wrk(&r)? } else { bench.closed_loop(&r)? };
                eprintln!(
                    "round {} {:>8}: {rps:>8.0} req/s, {cpu:>6.2} µs CPU/request{}, errors {errors}",
                    round + 1,
                    proxy.name(),
                    if wrk { " (wrk)" } else { "" }
                );
                let (rps_v, cpu_v, sleeps_v) = if wrk {
                    (&mut f.wrk_rps, &mut f.wrk_cpu_us, &mut f.wrk_sleeps)
                } else {
                    (&mut f.rps, &mut f.cpu_us, &mut f.sleeps)
                };
                rps_v.push(rps);
                cpu_v.push(cpu);
                sleeps_v.push(slept);
                f.closed_errors += errors;
            }
        }
    }
    let nginx_rps = median(&figures[0].1.rps);
    let rate = (0.6 * nginx_rps).round().max(100.0);
    for round in 0..opts.rounds {
        for (proxy, f) in &mut figures {
            let r = bench.start(*proxy, false)?;
            let (summary, histogram) = bench.open_loop(&r, rate)?;
            let l = &summary.latency_us;
            eprintln!(
                "round {} {:>8}: at {rate:.0} req/s p50 {:.0} µs p99 {:.0} µs p99.9 {:.0} µs, errors {}",
                round + 1,
                proxy.name(),
                l.p50,
                l.p99,
                l.p999,
                summary.errors.total()
            );
            f.p50.push(l.p50);
            f.p99.push(l.p99);
            f.p999.push(l.p999);
            f.open_errors += summary.errors.total();
            match &mut f.histogram {
                Some(h) => {
                    let _ = h.add(&histogram);
                }
                None => f.histogram = Some(histogram),
            }
        }
    }
    for (proxy, f) in &mut figures {
        let r = bench.start(*proxy, false)?;
        f.idle_bytes = Some(bench.idle_memory(&r)?);
        eprintln!(
            "{:>8}: {:.0} bytes per idle connection",
            proxy.name(),
            f.idle_bytes.unwrap_or(0.0)
        );
    }
    if opts.callgrind_requests > 0 {
        for (proxy, f) in &mut figures {
            let r = bench.start(*proxy, true)?;
            f.instructions = bench.instructions(&r, *proxy)?;
            eprintln!(
                "{:>8}: {:.0} user-space instructions per request",
                proxy.name(),
                f.instructions.unwrap_or(f64::NAN)
            );
        }
    }
    let report = bench.report(&figures, rate)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(report)
}

impl Bench {
    fn start(&self, proxy: Proxy, callgrind: bool) -> Result<Running, String> {
        let port = free_port();
        let dir = self.work.join(format!("{}-{port}", proxy.slug()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut cmd_prefix: Vec<String> = vec!["taskset".into(), "-c".into(), PROXY_CPU.into()];
        if callgrind {
            cmd_prefix.extend([
                "valgrind".into(),
                "--tool=callgrind".into(),
                format!("--callgrind-out-file={}/callgrind.out", dir.display()),
            ]);
        }
        let running = match proxy {
            Proxy::Nginx => {
                let conf = dir.join("nginx.conf");
                let tls = self.write_cert(&dir)?;
                let conf_text = nginx_proxy_conf(&dir, port, self.upstream_port, callgrind);
                let conf_text = self.grpc_nginx(conf_text);
                let conf_text = if self.logging.get() {
                    conf_text.replace(
                        "access_log off;",
                        &format!(
                            "{}\n  access_log {}/access.log sluicejson buffer=64k flush=1s;",
                            logs::NGINX_FORMAT,
                            dir.display()
                        ),
                    )
                } else {
                    conf_text
                };
                // nginx 1.22 (Debian 12): `http2` is a listen parameter.
                let http2 = if self.h2.is_some() { " http2" } else { "" };
                let conf_text = match &tls {
                    Some((crt, key, _)) => conf_text.replace(
                        &format!("listen 127.0.0.1:{port};"),
                        &format!(
                            "listen 127.0.0.1:{port} ssl{http2};\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.2 TLSv1.3;",
                            crt.display(),
                            key.display()
                        ),
                    ),
                    None => conf_text.replace(
                        &format!("listen 127.0.0.1:{port};"),
                        &format!("listen 127.0.0.1:{port}{http2};"),
                    ),
                };
                std::fs::write(&conf, conf_text).map_err(|e| e.to_string())?;
                let child = spawn(
                    &cmd_prefix,
                    &[
                        "nginx",
                        "-c",
                        conf.to_str().unwrap_or_default(),
                        "-p",
                        dir.to_str().unwrap_or_default(),
                    ],
                    &dir.join("stderr.log"),
                )?;
                let main = child.id();
                Running {
                    pids: vec![main],
                    valgrind: callgrind.then_some(main),
                    children: vec![child],
                    port,
                }
            }
            Proxy::Haproxy => {
                let conf = dir.join("haproxy.cfg");
                let tls = self.write_cert(&dir)?;
                let conf_text = self.grpc_haproxy(haproxy_conf(port, self.upstream_port));
                let conf_text = if self.logging.get() {
                    // To stdout, which `spawn` sends to the proxy's log file.
                    conf_text
                        .replace("global\n", "global\n  log stdout format raw local0\n")
                        .replace("defaults\n", "defaults\n  log global\n  option httplog\n")
                } else {
                    conf_text
                };
                let alpn = if self.h2.is_some() { "h2,http/1.1" } else { "http/1.1" };
                let conf_text = match &tls {
                    Some((_, _, combined)) => conf_text.replace(
                        &format!("bind 127.0.0.1:{port}\n"),
                        &format!(
                            "bind 127.0.0.1:{port} ssl crt {} alpn {alpn}\n",
                            combined.display()
                        ),
                    ),
                    None if self.h2.is_some() => conf_text.replace(
                        &format!("bind 127.0.0.1:{port}\n"),
                        &format!("bind 127.0.0.1:{port} proto h2\n"),
                    ),
                    None => conf_text,
                };
                std::fs::write(&conf, conf_text).map_err(|e| e.to_string())?;
                let child = spawn(
                    &cmd_prefix,
                    &["haproxy", "-db", "-f", conf.to_str().unwrap_or_default()],
                    &dir.join("stderr.log"),
                )?;
                let main = child.id();
                Running {
                    pids: vec![main],
                    valgrind: callgrind.then_some(main),
                    children: vec![child],
                    port,
                }
            }
            Proxy::Sluice | Proxy::Baseline => {
                let manifests = dir.join("manifests");
                std::fs::create_dir_all(&manifests).map_err(|e| e.to_string())?;
                let text = self.grpc_sluice(sluice_manifests(port, self.upstream_port));
                let text = match &self.cert {
                    Some((crt, key)) => {
                        let indent = |pem: &str| -> String {
                            pem.lines().map(|l| format!("    {l}\n")).collect()
                        };
                        text.replace(
                            &format!("listeners: [{{name: http, port: {port}, protocol: HTTP}}]"),
                            &format!("listeners: [{{name: https, port: {port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: bench-tls}}]}}}}]"),
                        ) + &format!(
                            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: bench-tls, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
                            indent(crt),
                            indent(key)
                        )
                    }
                    None => text,
                };
                std::fs::write(manifests.join("bench.yaml"), text).map_err(|e| e.to_string())?;
                let table = PathBuf::from(format!(
                    "/dev/shm/sluice-compare-{}-{port}/table",
                    std::process::id()
                ));
                let binary = match (proxy, &self.opts.baseline) {
                    (Proxy::Baseline, Some(b)) => b,
                    _ => &self.opts.sluice,
                };
                let sluice = binary.to_str().unwrap_or_default().to_owned();
                let cs = spawn(
                    &["taskset".into(), "-c".into(), LOAD_CPU.to_string()],
                    &[
                        &sluice,
                        "config-sync",
                        "--manifests",
                        manifests.to_str().unwrap_or_default(),
                        "--table",
                        table.to_str().unwrap_or_default(),
                    ],
                    &dir.join("config-sync.log"),
                )?;
                let access_log = dir.join("access.log");
                let mut args = vec![
                    sluice.as_str(),
                    "lb",
                    "--table",
                    table.to_str().unwrap_or_default(),
                    "--cores",
                    "0",
                    "--bind-address",
                    "127.0.0.1",
                ];
                if self.logging.get() {
                    args.extend(["--access-log", access_log.to_str().unwrap_or_default()]);
                }
                let lb = spawn(&cmd_prefix, &args, &dir.join("lb.log"))?;
                let (cs_pid, lb_pid) = (cs.id(), lb.id());
                Running {
                    pids: vec![lb_pid, cs_pid],
                    valgrind: callgrind.then_some(lb_pid),
                    children: vec![lb, cs],
                    port,
                }
            }
        };
        let mut running = running;
        let ready = if let Some(mode @ (h2::H2Mode::Cleartext | h2::H2Mode::Grpc)) = self.h2 {
            self.wait_ready_h2(&running, mode)
        } else if self.cert.is_some() {
            wait_ready_tls(running.port, 20)
        } else {
            wait_ready(running.port, if callgrind { 120 } else { 20 })
        };
        ready.map_err(|e| {
            format!("{} did not come up: {e} (logs in {})", proxy.name(), dir.display())
        })?;
        if proxy == Proxy::Nginx && !callgrind {
            // nginx forks its worker: count master and workers.
            running.pids.extend(children_of(running.pids[0]));
        }
        Ok(running)
    }

    /// Writes the TLS certificate for nginx and HAProxy into `dir`: (certificate, key,
    /// certificate and key in one file); `None` outside the TLS comparison.
    fn write_cert(&self, dir: &Path) -> Result<Option<(PathBuf, PathBuf, PathBuf)>, String> {
        let Some((crt, key)) = &self.cert else { return Ok(None) };
        let paths = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("combined.pem"));
        for (path, text) in
            [(&paths.0, crt.clone()), (&paths.1, key.clone()), (&paths.2, format!("{crt}{key}"))]
        {
            std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(Some(paths))
    }

    fn plan(&self, port: u16, rate: Option<f64>, seconds: f64, connections: usize) -> Plan {
        Plan {
            target: SocketAddr::from(([127, 0, 0, 1], port)),
            request: crate::request("GET", "bench.example", "/", &[], b""),
            head_request: false,
            connections,
            cpus: vec![LOAD_CPU],
            duration: Duration::from_secs_f64(seconds),
            warmup: Duration::ZERO,
            max_requests: None,
            rate,
            timeout: Duration::from_secs(5),
            tls: None,
            fresh_connections: false,
        }
    }

    /// req/s, CPU µs per request, errors, proxy sleeps per 100 requests.
    fn closed_loop(&self, r: &Running) -> Result<(f64, f64, u64, f64), String> {
        // Warm-up run, not measured: connections and pools are established.
        run(&self.plan(r.port, None, 2.0, self.opts.connections)).map_err(|e| e.to_string())?;
        let (before, slept) = (cpu_seconds(&r.pids), sleeps(&r.pids));
        let o = run(&self.plan(r.port, None, self.opts.seconds, self.opts.connections))
            .map_err(|e| e.to_string())?;
        let cpu = cpu_seconds(&r.pids) - before;
        let n = o.completed.max(1) as f64;
        let slept = (sleeps(&r.pids) - slept) as f64 * 100.0 / n;
        let s = Summary::of(&o);
        Ok((s.requests_per_second, cpu * 1e6 / n, o.errors.total(), slept))
    }

    /// The closed loop driven by wrk instead: one thread, the same connections, the same CPU.
    /// req/s, CPU µs per request, errors (non-2xx responses and socket errors), proxy sleeps
    /// per 100 requests.
    fn closed_loop_wrk(&self, r: &Running) -> Result<(f64, f64, u64, f64), String> {
        self.wrk(r.port, 2.0)?;
        let (before, slept) = (cpu_seconds(&r.pids), sleeps(&r.pids));
        let (requests, seconds, errors) = self.wrk(r.port, self.opts.seconds)?;
        let cpu = cpu_seconds(&r.pids) - before;
        let n = requests.max(1) as f64;
        let slept = (sleeps(&r.pids) - slept) as f64 * 100.0 / n;
        Ok((requests as f64 / seconds, cpu * 1e6 / n, errors, slept))
    }

    /// Runs wrk against `port`: requests completed, seconds, errors.
    fn wrk(&self, port: u16, seconds: f64) -> Result<(u64, f64, u64), String> {
        let out = Command::new("taskset")
            .args(["-c", &LOAD_CPU.to_string(), "wrk", "-t1"])
            .arg(format!("-c{}", self.opts.connections))
            .arg(format!("-d{}s", seconds.ceil() as u64))
            .args(["-H", "Host: bench.example"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .map_err(|e| format!("wrk: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))
    }

    fn open_loop(&self, r: &Running, rate: f64) -> Result<(Summary, Histogram<u64>), String> {
        let mut plan =
            self.plan(r.port, Some(rate), self.opts.seconds + 2.0, self.opts.connections);
        plan.warmup = Duration::from_secs(2);
        let o = run(&plan).map_err(|e| e.to_string())?;
        Ok((Summary::of(&o), o.histogram.clone()))
    }

    /// Bytes of proxy RSS per idle keep-alive client connection.
    fn idle_memory(&self, r: &Running) -> Result<f64, String> {
        // Warm the proxy and its upstream pool first, so the delta is the connections alone.
        run(&self.plan(r.port, None, 1.0, 16)).map_err(|e| e.to_string())?;
        // lb returns a burst's freed buffers to the kernel once the burst has been over for a
        // second (`Spare::tick`); measuring before that let the trim land inside the window
        // and gave a negative figure (-0.89 KiB, 2026-11-29). Wait it out.
        std::thread::sleep(Duration::from_millis(2500));
        let before = rss_bytes(&r.pids);
        let mut conns = Vec::with_capacity(self.opts.idle);
        for _ in 0..self.opts.idle {
            let mut s = TcpStream::connect(("127.0.0.1", r.port)).map_err(|e| e.to_string())?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: bench.example\r\n\r\n")
                .map_err(|e| e.to_string())?;
            read_one_response(&mut s)?;
            conns.push(s);
        }
        std::thread::sleep(Duration::from_secs(1));
        let after = rss_bytes(&r.pids);
        drop(conns);
        Ok((after as f64 - before as f64) / self.opts.idle as f64)
    }

    /// User-space instructions per request under callgrind.
    fn instructions(&self, r: &Running, proxy: Proxy) -> Result<Option<f64>, String> {
        let Some(pid) = r.valgrind else { return Ok(None) };
        let n = self.opts.callgrind_requests;
        let mut warm = self.plan(r.port, None, 300.0, 4);
        warm.max_requests = Some(200);
        run(&warm).map_err(|e| e.to_string())?;
        callgrind_control("-z", pid)?;
        let mut plan = self.plan(r.port, None, 600.0, 4);
        plan.max_requests = Some(n);
        let o = run(&plan).map_err(|e| e.to_string())?;
        if o.completed < n {
            return Err(format!(
                "{}: only {} of {n} requests under callgrind",
                proxy.name(),
                o.completed
            ));
        }
        callgrind_control("-d", pid)?;
        std::thread::sleep(Duration::from_millis(500));
        // The dump after zeroing is the newest `callgrind.out.<pid>.N` file.
        let dir = self.work.join(format!("{}-{}", proxy.slug(), r.port));
        let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
        for e in std::fs::read_dir(&dir).map_err(|e| e.to_string())?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("callgrind.out") && name != "callgrind.out" {
                let t = e.metadata().and_then(|m| m.modified()).map_err(|e| e.to_string())?;
                if newest.as_ref().is_none_or(|(nt, _)| t > *nt) {
                    newest = Some((t, e.path()));
                }
            }
        }
        let (_, file) = newest
            .ok_or_else(|| format!("{}: no callgrind dump in {}", proxy.name(), dir.display()))?;
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        let total: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .ok_or_else(|| format!("no summary in {}", file.display()))?;
        Ok(Some(total / n as f64))
    }

    fn report(&self, figures: &[(Proxy, Figures)], rate: f64) -> Result<String, String> {
        let base = &figures[0].1;
        let ratio = |v: f64, b: f64| if b > 0.0 { format!("{:.2}×", v / b) } else { "–".into() };
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmarks: Sluice beside nginx and HAProxy\n");
        let _ = writeln!(
            md,
            "Written by `sluice-perf compare` ({}). Medians of {} interleaved rounds; ratios are against nginx measured in the same run on the same machine. These VMs are noisy: read ratios, not absolute numbers.\n",
            utc_now(),
            self.opts.rounds
        );
        let baseline = figures.get(3).map(|(_, f)| f);
        let names: Vec<&str> = figures.iter().map(|(p, _)| p.name()).collect();
        let (extra_head, extra_rule) =
            if baseline.is_some() { (" Sluice / baseline |", "---|") } else { ("", "") };
        let _ = writeln!(
            md,
            "| | {} | Sluice / nginx |{extra_head}\n|---|{}---|{extra_rule}",
            names.join(" | "),
            "---|".repeat(names.len())
        );
        let row = |name: &str,
                   get: &dyn Fn(&Figures) -> Option<f64>,
                   fmt: &dyn Fn(f64) -> String| {
            let cells: Vec<String> =
                figures.iter().map(|(_, f)| get(f).map_or("–".into(), fmt)).collect();
            let against = |b: Option<&Figures>| match (get(&figures[2].1), b.and_then(get)) {
                (Some(s), Some(b)) => ratio(s, b),
                _ => "–".into(),
            };
            let mut line = format!("| {name} | {} | {} |", cells.join(" | "), against(Some(base)));
            if baseline.is_some() {
                line.push_str(&format!(" {} |", against(baseline)));
            }
            line.push('\n');
            line
        };
        md.push_str(&row(
            &format!("req/s, closed loop, {} connections", self.opts.connections),
            &|f| Some(median(&f.rps)),
            &|v| format!("{v:.0}"),
        ));
        md.push_str(&row("proxy CPU µs per request", &|f| Some(median(&f.cpu_us)), &|v| {
            format!("{v:.2}")
        }));
        md.push_str(&row(
            &format!("req/s, closed loop, {} connections, wrk -t1", self.opts.connections),
            &|f| Some(median(&f.wrk_rps)),
            &|v| format!("{v:.0}"),
        ));
        md.push_str(&row(
            "proxy CPU µs per request, wrk -t1",
            &|f| Some(median(&f.wrk_cpu_us)),
            &|v| format!("{v:.2}"),
        ));
        md.push_str(&row(&format!("p50 at {rate:.0} req/s"), &|f| Some(median(&f.p50)), &fmt_us));
        md.push_str(&row(&format!("p99 at {rate:.0} req/s"), &|f| Some(median(&f.p99)), &fmt_us));
        md.push_str(&row(
            &format!("p99.9 at {rate:.0} req/s"),
            &|f| Some(median(&f.p999)),
            &fmt_us,
        ));
        md.push_str(&row(
            "user-space instructions per request (callgrind)",
            &|f| f.instructions,
            &|v| format!("{v:.0}"),
        ));
        md.push_str(&row(
            &format!("memory per idle keep-alive connection ({} connections)", self.opts.idle),
            &|f| f.idle_bytes,
            &|v| format!("{:.2} KiB", v / 1024.0),
        ));
        let errs: Vec<String> = figures
            .iter()
            .map(|(p, f)| format!("{} {} / {}", p.name(), f.closed_errors, f.open_errors))
            .collect();
        let _ =
            writeln!(md, "\nErrors (closed loop / fixed rate, all rounds): {}.\n", errs.join(", "));
        // A proxy that cannot sustain the offered rate builds a queue: its latency then measures
        // the queue (up to the run's length), not the proxy. Say so rather than let a ratio of
        // 0.01× pass for a latency result.
        for (p, f) in figures {
            let behind: Vec<String> = f
                .p50
                .iter()
                .enumerate()
                .filter(|(_, p50)| **p50 > FELL_BEHIND_P50_US)
                .map(|(i, _)| (i + 1).to_string())
                .collect();
            if !behind.is_empty() {
                let _ = writeln!(
                    md,
                    "{} fell behind the fixed rate in round(s) {} (p50 over {} ms): those rounds measure a queue, not the proxy's latency; compare the other rounds below.\n",
                    p.name(),
                    behind.join(", "),
                    FELL_BEHIND_P50_US / 1000.0
                );
            }
        }
        let _ = writeln!(
            md,
            "All rounds:\n\n| proxy | req/s | CPU µs/request | req/s (wrk) | CPU µs/request (wrk) | p50 µs | p99 µs | p99.9 µs |\n|---|---|---|---|---|---|---|---|"
        );
        for (p, f) in figures {
            let list = |v: &[f64], d: usize| {
                v.iter().map(|x| format!("{x:.d$}")).collect::<Vec<_>>().join(" · ")
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                p.name(),
                list(&f.rps, 0),
                list(&f.cpu_us, 2),
                list(&f.wrk_rps, 0),
                list(&f.wrk_cpu_us, 2),
                list(&f.p50, 0),
                list(&f.p99, 0),
                list(&f.p999, 0)
            );
        }
        let _ = writeln!(md, "\n### Two load generators\n");
        let sleeps_of = |v: &Vec<f64>| median(v);
        let line: Vec<String> = figures
            .iter()
            .map(|(p, f)| {
                format!(
                    "{} {:.1} → {:.1} sleeps and {:.2} → {:.2} µs per request",
                    p.name(),
                    sleeps_of(&f.sleeps),
                    sleeps_of(&f.wrk_sleeps),
                    median(&f.cpu_us),
                    median(&f.wrk_cpu_us)
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "The closed loop is driven by two clients, each with one thread on CPU 1, {} keep-alive connections and the same {}-byte request (`GET /`, `Host: bench.example`). `sluice-perf` runs its connections on one io_uring: every connection whose response arrived gets its next request in the same `io_uring_enter`, so requests reach the proxy in bursts. `wrk -t1` runs them on epoll with one `write` per request as each response is read, so requests arrive spread out. A proxy's cost per event-loop turn (an `io_uring_enter` for Sluice, an `epoll_wait` and its bookkeeping for nginx and HAProxy) is shared by however many requests that turn finds; bursts make it cheaper per request, more so for the proxy whose turn costs more. The \"sleeps per 100 requests\" rows count the proxy's voluntary context switches (it blocked with nothing to do): near zero means the proxy was never idle under that client, and the difference then shows in CPU per request, not in sleeps. This run, sluice-perf → wrk: {}. Both figures are honest; they describe different arrivals. Claims about CPU per request quote the less favourable of the two for Sluice.\n",
            self.opts.connections,
            crate::request("GET", "bench.example", "/", &[], b"").len(),
            line.join("; ")
        );
        let svg_name = "benchmarks-latency.svg";
        let series: Vec<Series> = figures
            .iter()
            .filter_map(|(p, f)| f.histogram.as_ref().map(|h| Series::from_histogram(p.name(), h)))
            .collect();
        let svg = spectrum_svg(
            &format!(
                "Latency at {rate:.0} req/s (open loop, {} connections, all rounds)",
                self.opts.connections
            ),
            &series,
        );
        std::fs::write(self.opts.out.join(svg_name), svg).map_err(|e| e.to_string())?;
        let _ = writeln!(md, "\n![latency percentile spectrum]({svg_name})\n");
        let _ = writeln!(md, "## Method\n");
        let _ = writeln!(md, "- Machine: {}.", machine());
        let _ = writeln!(md, "- Versions: {}.", versions(&self.opts.sluice));
        let _ = writeln!(
            md,
            "- Layout: each proxy pinned to CPU 0 with one worker (nginx `worker_processes 1`, HAProxy `nbthread 1`, Sluice `lb --cores 0`; Sluice's config-sync idles on CPU 1). The upstream (nginx, one worker, `return 200 \"ok\"`) and the load generator (`sluice-perf`, one io_uring thread) share CPU 1. One proxy runs at a time; each measurement starts it afresh."
        );
        let _ = writeln!(
            md,
            "- req/s and CPU: closed loop, {} keep-alive connections, 2 s warm-up then {} s measured; CPU is utime+stime of every proxy process and thread (from `/proc/<pid>/stat`, io_uring workers included) over the measured run, divided by completed requests. Each round measures every proxy twice, once driven by `sluice-perf` (one io_uring thread) and once by `wrk -t1` (epoll), the proxy started afresh for each; the two load generators differ in how requests arrive, which changes CPU per request — see \"Two load generators\" below.",
            self.opts.connections, self.opts.seconds
        );
        let _ = writeln!(
            md,
            "- Latency: open loop at 60 % of nginx's median closed-loop req/s ({rate:.0} req/s), {} connections, 2 s warm-up then {} s, latency from the scheduled send time (coordinated-omission corrected).",
            self.opts.connections, self.opts.seconds
        );
        let _ = writeln!(
            md,
            "- Instructions: the proxy under `valgrind --tool=callgrind` on CPU 0; 200 warm-up requests, counters zeroed, then {} requests on 4 connections; total instructions of the dump divided by the requests. Counts are user-space only (valgrind sees no kernel work), repeatable for a given binary.",
            self.opts.callgrind_requests
        );
        let _ = writeln!(
            md,
            "- Idle memory: after a warm-up, RSS of the proxy's processes before and after opening {} keep-alive connections that each completed one request and then idle for 1 s.",
            self.opts.idle
        );
        let _ = writeln!(
            md,
            "- On this 2-core layout the load side (generator and upstream on one CPU) caps req/s near 1.2× nginx, so CPU and instructions per request are the efficiency figures that matter.\n"
        );
        let _ = writeln!(
            md,
            "Rerun: `cargo build --release -p sluice -p perf && target/release/sluice-perf compare --sluice target/release/sluice --out docs` (installs nginx, HAProxy and valgrind from Debian packages if missing; about 10 minutes).\n"
        );
        let _ = writeln!(
            md,
            "### Configurations\n\nnginx:\n```nginx\n{}```\n\nHAProxy:\n```\n{}```\n\nSluice manifests:\n```yaml\n{}```",
            nginx_proxy_conf(Path::new("<dir>"), 8080, 9000, false),
            haproxy_conf(8080, 9000),
            sluice_manifests(8080, 9000)
        );
        // The TLS and HTTP/2 sections (`--tls`, `--h2`) are measured on their own: keep them.
        let path = self.opts.out.join("benchmarks.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let kept: String = [(TLS_BEGIN, TLS_END), h2::SECTION, logs::SECTION]
            .into_iter()
            .filter_map(|(begin, end)| match (old.find(begin), old.find(end)) {
                (Some(a), Some(b)) if b > a => Some(format!("\n{}\n", &old[a..b + end.len()])),
                _ => None,
            })
            .collect();
        std::fs::write(&path, format!("{md}{kept}")).map_err(|e| e.to_string())?;
        Ok(md)
    }
}

/// wrk's summary: `N requests in 8.00s, …`, plus `Non-2xx or 3xx responses: N` and
/// `Socket errors: connect a, read b, write c, timeout d` when there were any.
fn parse_wrk(text: &str) -> Option<(u64, f64, u64)> {
    let line = text.lines().find(|l| l.contains(" requests in "))?;
    let mut words = line.split_whitespace();
    let requests: u64 = words.next()?.parse().ok()?;
    let seconds = words.nth(2)?.trim_end_matches(',');
    let seconds: f64 = match seconds.strip_suffix("ms") {
        Some(ms) => ms.parse::<f64>().ok()? / 1000.0,
        None => seconds.strip_suffix('s')?.parse().ok()?,
    };
    let mut errors = 0;
    for l in text.lines().map(str::trim) {
        if let Some(n) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(list) = l.strip_prefix("Socket errors:") {
            errors += list
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some((requests, seconds, errors))
}

fn fmt_us(v: f64) -> String {
    if v >= 1000.0 { format!("{:.2} ms", v / 1000.0) } else { format!("{v:.0} µs") }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() { 0.0 } else { s[s.len() / 2] }
}

fn spawn(prefix: &[String], args: &[&str], log: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let mut all: Vec<String> = prefix.to_vec();
    all.extend(args.iter().map(|s| (*s).to_owned()));
    Command::new(&all[0])
        .args(&all[1..])
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", all.join(" ")))
}

fn start_upstream(work: &Path, port: u16) -> Result<Running, String> {
    let dir = work.join("upstream");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let conf = dir.join("nginx.conf");
    let text = format!(
        "worker_processes 1;\ndaemon off;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\nworker_rlimit_nofile 65536;\nevents {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\"; }} }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(&conf, text).map_err(|e| e.to_string())?;
    let child = spawn(
        &["taskset".into(), "-c".into(), LOAD_CPU.to_string()],
        &["nginx", "-c", conf.to_str().unwrap_or_default(), "-p", dir.to_str().unwrap_or_default()],
        &dir.join("stderr.log"),
    )?;
    let r = Running { pids: vec![child.id()], children: vec![child], port, valgrind: None };
    wait_ready(port, 20).map_err(|e| format!("upstream nginx: {e}"))?;
    Ok(r)
}

fn nginx_proxy_conf(dir: &Path, port: u16, upstream: u16, single_process: bool) -> String {
    format!(
        "worker_processes 1;\n{}daemon off;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\nworker_rlimit_nofile 65536;\nevents {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  upstream backend {{ server 127.0.0.1:{upstream}; keepalive 256; keepalive_requests 10000000; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        if single_process { "master_process off;\n" } else { "" },
        d = dir.display()
    )
}

fn haproxy_conf(port: u16, upstream: u16) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 8000\n\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  timeout http-keep-alive 300s\n  http-reuse always\n\nfrontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\nbackend be\n  server up 127.0.0.1:{upstream}\n"
    )
}

fn sluice_manifests(port: u16, upstream: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: sluice}}\nspec: {{controllerName: sluice.dev/gateway-controller}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: bench, namespace: default}}\nspec:\n  gatewayClassName: sluice\n  listeners: [{{name: http, port: {port}, protocol: HTTP}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: bench, namespace: default}}\nspec:\n  parentRefs: [{{name: bench}}]\n  hostnames: [bench.example]\n  rules: [{{backendRefs: [{{name: upstream, port: 80}}]}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: upstream, namespace: default}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: upstream-1, namespace: default, labels: {{kubernetes.io/service-name: upstream}}}}\naddressType: IPv4\nports: [{{name: http, port: {upstream}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
    )
}

fn wait_ready(port: u16, seconds: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if s.write_all(b"GET / HTTP/1.1\r\nHost: bench.example\r\nConnection: close\r\n\r\n")
                .is_ok()
            {
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                if out.starts_with(b"HTTP/1.1 200") {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no 200 on port {port} within {seconds} s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_one_response(s: &mut TcpStream) -> Result<(), String> {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
            && buf.len() >= end + 4 + 2
        {
            return Ok(());
        }
    }
}

fn cpu_seconds(pids: &[u32]) -> f64 {
    let tick = 100.0; // USER_HZ on Linux.
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command name (which may contain spaces) start after ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / tick)
        })
        .sum()
}

/// Voluntary context switches of every thread of `pids` (times a thread blocked: in
/// io_uring_enter, epoll_wait, a read).
fn sleeps(pids: &[u32]) -> u64 {
    let mut total = 0;
    for p in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for t in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(t.path().join("status")) else { continue };
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn rss_bytes(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum::<u64>()
        * 1024
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn callgrind_control(flag: &str, pid: u32) -> Result<(), String> {
    let out = Command::new("callgrind_control")
        .arg(flag)
        .arg(pid.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("callgrind_control {flag} {pid}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn ensure_installed(tools: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(cmd, _)| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {cmd}"))
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {} from Debian packages", missing.join(", "));
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}",
            missing.join(" ")
        ))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok { Ok(()) } else { Err(format!("could not install {}", missing.join(", "))) }
}

fn raise_fd_limit() {
    if let Some(max) = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit { current: Some(max.min(65536)), maximum: Some(max) },
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(0, |a| a.port())
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|_| format!("{cmd}: not found"))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} × {cpu}, {}", first_line("uname", &["-sr"]))
}

fn versions(sluice: &Path) -> String {
    let rev = first_line("git", &["rev-parse", "--short", "HEAD"]);
    format!(
        "{} ({rev}), {}, {}, {}",
        first_line(sluice.to_str().unwrap_or("sluice"), &["--version"]),
        first_line("nginx", &["-v"]),
        first_line("haproxy", &["-v"]),
        first_line("valgrind", &["--version"])
    )
}

fn utc_now() -> String {
    first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_summaries_parse() {
        let text = "Running 8s test @ http://127.0.0.1:1/\n  1 threads and 64 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     2.01ms  300.00us   9.00ms   90.00%\n    Req/Sec    31.9k     1.2k   34.0k    70.00%\n  254321 requests in 8.00s, 30.12MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  31790.12\nTransfer/sec:      3.76MB\n";
        assert_eq!(parse_wrk(text), Some((254321, 8.0, 7)));
        assert_eq!(parse_wrk("  10 requests in 500.00ms, 1KB read\n"), Some((10, 0.5, 0)));
        assert_eq!(parse_wrk("connection refused"), None);
    }
}

/// The TLS comparison's figures for one proxy.
#[derive(Debug, Default, Clone)]
struct TlsFigures {
    /// New connection per request, no resumption: connections/s and proxy CPU µs each.
    full_rate: Vec<f64>,
    full_cpu_us: Vec<f64>,
    /// The same with session resumption (tickets).
    resumed_rate: Vec<f64>,
    resumed_cpu_us: Vec<f64>,
    /// Share of the resumed runs' handshakes that did resume.
    resumed_share: Vec<f64>,
    /// HTTPS keep-alive: req/s and proxy CPU µs per request.
    keepalive_rps: Vec<f64>,
    keepalive_cpu_us: Vec<f64>,
    errors: u64,
    idle_bytes: Option<f64>,
}

/// Connections for the handshake runs: enough to keep one proxy core busy.
const HANDSHAKE_CONNECTIONS: usize = 16;

/// An ECDSA P-256 certificate for `bench.example` (self-signed, made per run).
fn bench_certificate() -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let params = rcgen::CertificateParams::new(vec!["bench.example".to_owned()])
        .map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Waits until `port` answers one HTTPS request with a 200.
fn wait_ready_tls(port: u16, seconds: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let config = crate::tls::client_config(false)?;
    loop {
        let plan = Plan {
            target: SocketAddr::from(([127, 0, 0, 1], port)),
            request: crate::request("GET", "bench.example", "/", &[], b""),
            head_request: false,
            connections: 1,
            cpus: vec![LOAD_CPU],
            duration: Duration::from_secs(2),
            warmup: Duration::ZERO,
            max_requests: Some(1),
            rate: None,
            timeout: Duration::from_secs(2),
            tls: Some((std::sync::Arc::clone(&config), "bench.example".into())),
            fresh_connections: true,
        };
        if run(&plan).is_ok_and(|o| o.statuses.get(&200) == Some(&1)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no HTTPS 200 on port {port} within {seconds} s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Bench {
    fn tls_plan(
        &self,
        port: u16,
        connections: usize,
        resume: bool,
        fresh: bool,
    ) -> Result<Plan, String> {
        let mut plan = self.plan(port, None, self.opts.seconds, connections);
        plan.tls = Some((crate::tls::client_config(resume)?, "bench.example".into()));
        plan.fresh_connections = fresh;
        Ok(plan)
    }

    /// One measured closed-loop run: (rate per second, proxy CPU µs per request, errors,
    /// resumed share of handshakes).
    fn tls_run(
        &self,
        r: &Running,
        connections: usize,
        resume: bool,
        fresh: bool,
    ) -> Result<(f64, f64, u64, f64), String> {
        let mut warm = self.tls_plan(r.port, connections, resume, fresh)?;
        warm.duration = Duration::from_secs(2);
        run(&warm).map_err(|e| e.to_string())?;
        let plan = self.tls_plan(r.port, connections, resume, fresh)?;
        let before = cpu_seconds(&r.pids);
        let o = run(&plan).map_err(|e| e.to_string())?;
        let cpu = cpu_seconds(&r.pids) - before;
        let n = o.completed.max(1) as f64;
        let (all, resumed) = o.handshakes;
        let share = if all == 0 { 0.0 } else { resumed as f64 / all as f64 };
        Ok((Summary::of(&o).requests_per_second, cpu * 1e6 / n, o.errors.total(), share))
    }

    /// Bytes of proxy RSS per idle TLS keep-alive connection (each made one request).
    fn tls_idle_memory(&self, r: &Running) -> Result<f64, String> {
        self.tls_run(r, 16, false, false)?;
        std::thread::sleep(Duration::from_millis(2500));
        let config = crate::tls::client_config(false)?;
        let before = rss_bytes(&r.pids);
        let mut conns = Vec::with_capacity(self.opts.idle);
        for _ in 0..self.opts.idle {
            let tcp = TcpStream::connect(("127.0.0.1", r.port)).map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::try_from("bench.example")
                .map_err(|e| e.to_string())?;
            let conn = rustls::ClientConnection::new(std::sync::Arc::clone(&config), name)
                .map_err(|e| e.to_string())?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            s.write_all(b"GET / HTTP/1.1\r\nHost: bench.example\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let _ = s.sock.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !(buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"ok")) {
                let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            conns.push(s);
        }
        std::thread::sleep(Duration::from_secs(1));
        let after = rss_bytes(&r.pids);
        drop(conns);
        Ok((after as f64 - before as f64) / self.opts.idle as f64)
    }

    fn compare_tls(&self) -> Result<String, String> {
        let proxies = [Proxy::Nginx, Proxy::Haproxy, Proxy::Sluice];
        let mut figures: Vec<(Proxy, TlsFigures)> =
            proxies.iter().map(|p| (*p, TlsFigures::default())).collect();
        for round in 0..self.opts.rounds {
            for (proxy, f) in &mut figures {
                for (kind, connections, resume, fresh) in [
                    ("full handshakes", HANDSHAKE_CONNECTIONS, false, true),
                    ("resumed", HANDSHAKE_CONNECTIONS, true, true),
                    ("keep-alive", self.opts.connections, false, false),
                ] {
                    let r = self.start(*proxy, false)?;
                    let (rate, cpu, errors, share) =
                        self.tls_run(&r, connections, resume, fresh)?;
                    eprintln!(
                        "round {} {:>8} {kind:>15}: {rate:>8.0}/s, {cpu:>7.2} µs CPU each, errors {errors}{}",
                        round + 1,
                        proxy.name(),
                        if resume {
                            format!(", {:.0} % resumed", share * 100.0)
                        } else {
                            String::new()
                        }
                    );
                    f.errors += errors;
                    match (resume, fresh) {
                        (false, true) => {
                            f.full_rate.push(rate);
                            f.full_cpu_us.push(cpu);
                        }
                        (true, _) => {
                            f.resumed_rate.push(rate);
                            f.resumed_cpu_us.push(cpu);
                            f.resumed_share.push(share);
                        }
                        (false, false) => {
                            f.keepalive_rps.push(rate);
                            f.keepalive_cpu_us.push(cpu);
                        }
                    }
                }
            }
        }
        for (proxy, f) in &mut figures {
            let r = self.start(*proxy, false)?;
            f.idle_bytes = Some(self.tls_idle_memory(&r)?);
            eprintln!(
                "{:>8}: {:.0} bytes per idle TLS connection",
                proxy.name(),
                f.idle_bytes.unwrap_or(0.0)
            );
        }
        let section = self.tls_report(&figures);
        let path = self.opts.out.join("benchmarks.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, splice_section(&old, &section, TLS_BEGIN, TLS_END))
            .map_err(|e| e.to_string())?;
        Ok(section)
    }

    fn tls_report(&self, figures: &[(Proxy, TlsFigures)]) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "{TLS_BEGIN}\n## TLS\n");
        let _ = writeln!(
            md,
            "Written by `sluice-perf compare --tls` ({}). Medians of {} interleaved rounds, ratios against nginx in the same run. Same certificate for every proxy: ECDSA P-256, self-signed for `bench.example`, made for the run. The client (sluice-perf, rustls, one io_uring thread on CPU 1 beside the upstream) speaks TLS 1.3 with X25519 only and skips certificate verification, so its own cost stays low and every proxy does the same work: X25519 + ECDSA P-256 signature per full handshake.\n",
            utc_now(),
            self.opts.rounds
        );
        let nginx = &figures[0].1;
        let sluice = &figures[2].1;
        let ratio = |s: f64, b: f64| if b > 0.0 { format!("{:.2}×", s / b) } else { "–".into() };
        let _ =
            writeln!(md, "| | nginx | HAProxy | Sluice | Sluice / nginx |\n|---|---|---|---|---|");
        let row = |md: &mut String,
                   name: &str,
                   get: &dyn Fn(&TlsFigures) -> Option<f64>,
                   fmt: &dyn Fn(f64) -> String,
                   invert: bool| {
            let cells: Vec<String> =
                figures.iter().map(|(_, f)| get(f).map_or("–".into(), fmt)).collect();
            let r = match (get(sluice), get(nginx)) {
                (Some(s), Some(n)) if invert => ratio(n, s),
                (Some(s), Some(n)) => ratio(s, n),
                _ => "–".into(),
            };
            let _ = writeln!(md, "| {name} | {} | {r} |", cells.join(" | "));
        };
        let per_core =
            |cpu: &[f64]| -> Option<f64> { (!cpu.is_empty()).then(|| 1e6 / median(cpu)) };
        row(
            &mut md,
            "full TLS 1.3 handshakes per second per core (1e6 / CPU µs per new connection)",
            &|f| per_core(&f.full_cpu_us),
            &|v| format!("{v:.0}"),
            false,
        );
        row(
            &mut md,
            "proxy CPU µs per new connection (full handshake + one request)",
            &|f| (!f.full_cpu_us.is_empty()).then(|| median(&f.full_cpu_us)),
            &|v| format!("{v:.1}"),
            false,
        );
        row(
            &mut md,
            &format!("new connections per second, {HANDSHAKE_CONNECTIONS} clients (load-bound)"),
            &|f| (!f.full_rate.is_empty()).then(|| median(&f.full_rate)),
            &|v| format!("{v:.0}"),
            false,
        );
        row(
            &mut md,
            "resumed handshakes per second per core",
            &|f| per_core(&f.resumed_cpu_us),
            &|v| format!("{v:.0}"),
            false,
        );
        row(
            &mut md,
            "proxy CPU µs per resumed connection",
            &|f| (!f.resumed_cpu_us.is_empty()).then(|| median(&f.resumed_cpu_us)),
            &|v| format!("{v:.1}"),
            false,
        );
        row(
            &mut md,
            "share of handshakes that resumed",
            &|f| (!f.resumed_share.is_empty()).then(|| median(&f.resumed_share) * 100.0),
            &|v| format!("{v:.0} %"),
            false,
        );
        row(
            &mut md,
            &format!("HTTPS keep-alive req/s, {} connections", self.opts.connections),
            &|f| (!f.keepalive_rps.is_empty()).then(|| median(&f.keepalive_rps)),
            &|v| format!("{v:.0}"),
            false,
        );
        row(
            &mut md,
            "HTTPS keep-alive proxy CPU µs per request",
            &|f| (!f.keepalive_cpu_us.is_empty()).then(|| median(&f.keepalive_cpu_us)),
            &|v| format!("{v:.2}"),
            false,
        );
        row(
            &mut md,
            &format!("memory per idle TLS keep-alive connection ({} connections)", self.opts.idle),
            &|f| f.idle_bytes,
            &|v| format!("{:.2} KiB", v / 1024.0),
            false,
        );
        let errs: Vec<String> =
            figures.iter().map(|(p, f)| format!("{} {}", p.name(), f.errors)).collect();
        let _ = writeln!(md, "\nErrors (all TLS runs): {}.\n", errs.join(", "));
        let _ = writeln!(
            md,
            "All rounds (full handshake CPU µs · resumed CPU µs · keep-alive CPU µs):\n"
        );
        for (p, f) in figures {
            let list =
                |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                md,
                "- {}: {} · {} · {}",
                p.name(),
                list(&f.full_cpu_us),
                list(&f.resumed_cpu_us),
                list(&f.keepalive_cpu_us)
            );
        }
        let _ = writeln!(
            md,
            "\nMethod: for each proxy and round, the proxy is started afresh with TLS on its listener (nginx `listen … ssl` with `ssl_protocols TLSv1.2 TLSv1.3`, session tickets on by default; HAProxy `bind … ssl crt … alpn http/1.1`; Sluice an HTTPS Gateway listener with the certificate in a Secret); upstream plain HTTP as in the table above. Handshake runs: {HANDSHAKE_CONNECTIONS} client connections, each request on a new TCP+TLS connection (2 s warm-up, then {} s); per-core rates are 1e6 divided by the proxy's CPU µs per connection, which includes the one proxied request. Resumed runs keep each client's tickets (TLS 1.3 PSK with ECDHE). Keep-alive: {} connections. Idle memory: RSS delta over {} TLS connections that each completed one request.\n\nRerun: `target/release/sluice-perf compare --tls --sluice target/release/sluice --out docs`.\n{TLS_END}",
            self.opts.seconds, self.opts.connections, self.opts.idle
        );
        md
    }
}

const TLS_BEGIN: &str = "<!-- tls: written by sluice-perf compare --tls -->";
const TLS_END: &str = "<!-- /tls -->";

/// `old` with its section between `begin` and `end` replaced by `section` (appended when it
/// has none).
fn splice_section(old: &str, section: &str, begin: &str, end: &str) -> String {
    match (old.find(begin), old.find(end)) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{}{}", &old[..a], section.trim_end(), &old[b + end.len()..])
        }
        _ => format!("{}\n\n{}\n", old.trim_end(), section.trim_end()),
    }
}
