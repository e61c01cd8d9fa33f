//! `sluice-perf compare --h2`: HTTP/2 from clients through nginx (`http2` on its listener),
//! HAProxy (`alpn h2` / `proto h2`) and Sluice, each proxying to the same HTTP/1.1 upstream;
//! and gRPC: unary calls over h2c through each (nginx `grpc_pass`, HAProxy `proto h2` to the
//! server, Sluice a GRPCRoute) to the same gRPC upstream, our echo's conformance service.
//! The load generator is nghttp2's h2load on the load CPU (10 connections × 100 concurrent
//! streams), over TLS (ALPN h2) and cleartext (prior knowledge); for gRPC its per-request log
//! gives the latency percentiles.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use std::path::Path;

use std::io::{Read, Write};
use std::net::TcpStream;

use super::{
    Bench, LOAD_CPU, Proxy, Running, cpu_seconds, free_port, median, rss_bytes, spawn,
    splice_section, utc_now,
};

/// The gRPC method every gRPC run calls.
const GRPC_PATH: &str = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo";

const H2_BEGIN: &str = "<!-- h2: written by sluice-perf compare --h2 -->";
const H2_END: &str = "<!-- /h2 -->";

/// Where this comparison's section of benchmarks.md begins and ends (the HTTP/1 run keeps it).
pub(super) const SECTION: (&str, &str) = (H2_BEGIN, H2_END);

/// Connections and streams per connection of every run.
const CONNECTIONS: usize = 10;
const STREAMS: usize = 100;

/// How HTTP/2 reaches the proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum H2Mode {
    /// TLS, ALPN `h2`.
    Tls,
    /// Cleartext with prior knowledge (h2c).
    Cleartext,
    /// gRPC unary calls over h2c, to an h2c gRPC upstream.
    Grpc,
}

/// Starts the gRPC upstream: our echo (its conformance gRPC service over h2c) on the load CPU.
pub(super) fn start_grpc_upstream(work: &Path, sluice: &Path) -> Result<(u16, Running), String> {
    let port = free_port();
    let dir = work.join("grpc-upstream");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(work.join("grpc-request.bin"), echo::grpc::frame(&[]))
        .map_err(|e| e.to_string())?;
    let child = spawn(
        &["taskset".into(), "-c".into(), LOAD_CPU.to_string()],
        &[sluice.to_str().unwrap_or_default(), "echo", "--listen", &format!("127.0.0.1:{port}")],
        &dir.join("stderr.log"),
    )?;
    let running = Running { pids: vec![child.id()], children: vec![child], port, valgrind: None };
    super::wait_ready(port, 20).map_err(|e| format!("gRPC upstream: {e}"))?;
    Ok((port, running))
}

/// One proxy's figures per mode (h2 over TLS, h2c, gRPC): (req/s, CPU µs per request) per
/// round, gRPC latency percentiles (ms) per round, and errors.
#[derive(Debug, Default, Clone)]
struct H2Figures {
    rps: [Vec<f64>; 3],
    cpu_us: [Vec<f64>; 3],
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    /// Bytes of RSS per idle h2c connection (after one request), per round.
    idle_bytes: Vec<f64>,
    errors: u64,
}

/// One h2c request with prior knowledge, as raw frames: the preface, empty SETTINGS, and
/// HEADERS (END_STREAM | END_HEADERS) on stream 1 for `GET http://bench.example/` — HPACK
/// indexed `:method GET`, `:scheme http`, `:path /` and a literal `:authority` (no Huffman).
fn h2c_get() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 13];
    block.extend_from_slice(b"bench.example");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let len = block.len();
    out.extend_from_slice(&[0, 0, len as u8, 1, 0x5, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    out
}

/// Reads frames until stream 1 ends (HEADERS or DATA with END_STREAM), acknowledging the
/// server's SETTINGS on the way.
fn read_h2c_response(s: &mut TcpStream) -> Result<(), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            if kind == 4 && flags & 1 == 0 {
                s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).map_err(|e| e.to_string())?;
            }
            if stream == 1 && (kind == 0 || kind == 1) && flags & 1 == 1 {
                return Ok(());
            }
            if kind == 7 || kind == 3 {
                return Err(format!("h2c: frame type {kind} instead of a response"));
            }
            buf.drain(..9 + len);
        }
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("h2c: closed before the response ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What h2load said: requests per second, requests done, 2xx among them, and requests that
/// failed or errored.
struct Load {
    rps: f64,
    done: u64,
    ok: u64,
    failed: u64,
}

/// The h2load arguments of a gRPC call: a POST with one empty message, and a per-request log.
fn grpc_args(work: &Path, log: &Path) -> Vec<String> {
    let body = work.join("grpc-request.bin");
    let args = ["-d", body.to_str().unwrap_or_default(), "-H", "content-type: application/grpc"];
    let mut out: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    out.extend(["-H".into(), "te: trailers".into(), "--log-file".into()]);
    out.push(log.to_str().unwrap_or_default().to_owned());
    out
}

fn h2load(url: &str, seconds: f64, extra: &[String]) -> Result<Load, String> {
    let duration = format!("{}", seconds.ceil() as u64);
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &LOAD_CPU.to_string(), "h2load", "-c", &CONNECTIONS.to_string()])
        .args(["-m", &STREAMS.to_string(), "-t", "1", "-D", &duration])
        .args(["-H", ":authority: bench.example"])
        .args(extra);
    let out = cmd.arg(url).output().map_err(|e| format!("h2load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_h2load(&text).ok_or_else(|| format!("h2load output not understood:\n{text}"))
}

/// Reads `finished in 5.00s, 51234.40 req/s, …`, `requests: N total, N started, N done, …`
/// and `status codes: N 2xx, …`.
fn parse_h2load(text: &str) -> Option<Load> {
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))?
        .split(", ")
        .find(|p| p.ends_with(" req/s"))?
        .trim_end_matches(" req/s")
        .parse()
        .ok()?;
    let requests = text.lines().find(|l| l.starts_with("requests:"))?;
    let count = |what: &str| -> Option<u64> {
        requests
            .trim_start_matches("requests: ")
            .split(", ")
            .find(|p| p.ends_with(what))?
            .trim_end_matches(what)
            .trim()
            .parse()
            .ok()
    };
    let status = text.lines().find(|l| l.starts_with("status codes:"))?;
    let ok = status.trim_start_matches("status codes: ").split(", ").next()?;
    Some(Load {
        rps,
        done: count(" done")?,
        ok: ok.trim_end_matches(" 2xx").trim().parse().ok()?,
        failed: count(" failed")? + count(" errored")?,
    })
}

/// p50 and p99 (ms) of the request times in an h2load `--log-file` (tab-separated: start µs,
/// status, µs to the end of the response).
fn latencies(log: &Path) -> Result<(f64, f64), String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut us: Vec<u64> =
        text.lines().filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok()).collect();
    if us.is_empty() {
        return Err(format!("{}: no requests logged", log.display()));
    }
    us.sort_unstable();
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Ok((at(0.50), at(0.99)))
}

impl Bench {
    fn h2_url(&self, r: &Running, mode: H2Mode) -> String {
        match mode {
            H2Mode::Tls => format!("https://127.0.0.1:{}/", r.port),
            H2Mode::Cleartext => format!("http://127.0.0.1:{}/", r.port),
            H2Mode::Grpc => format!("http://127.0.0.1:{}{GRPC_PATH}", r.port),
        }
    }

    /// nginx in the gRPC runs: `grpc_pass` to the gRPC upstream, with keep-alive.
    pub(super) fn grpc_nginx(&self, conf: String) -> String {
        let (Some(H2Mode::Grpc), Some((port, _))) = (self.h2, &self.grpc_upstream) else {
            return conf;
        };
        conf.replace(
            "  server {\n",
            &format!("  upstream grpc_backend {{ server 127.0.0.1:{port}; keepalive 256; }}\n  server {{\n"),
        )
        .replace(
            "      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n",
            "      grpc_pass grpc://grpc_backend;\n",
        )
    }

    /// HAProxy in the gRPC runs: HTTP/2 to the gRPC upstream (`proto h2`).
    pub(super) fn grpc_haproxy(&self, conf: String) -> String {
        let (Some(H2Mode::Grpc), Some((port, _))) = (self.h2, &self.grpc_upstream) else {
            return conf;
        };
        let server = format!("  server up 127.0.0.1:{}\n", self.upstream_port);
        conf.replace(&server, &format!("  server up 127.0.0.1:{port} proto h2\n"))
    }

    /// Sluice in the gRPC runs: a GRPCRoute (every call) to the gRPC upstream.
    pub(super) fn grpc_sluice(&self, manifests: String) -> String {
        let (Some(H2Mode::Grpc), Some((port, _))) = (self.h2, &self.grpc_upstream) else {
            return manifests;
        };
        manifests
            .replace("kind: HTTPRoute", "kind: GRPCRoute")
            .replace(&format!("port: {}}}]", self.upstream_port), &format!("port: {port}}}]"))
    }

    /// Waits until h2load gets a 2xx through the proxy (nginx's and HAProxy's h2c listeners
    /// speak nothing else, so the HTTP/1 readiness check cannot be used).
    pub(super) fn wait_ready_h2(&self, r: &Running, mode: H2Mode) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        if mode == H2Mode::Grpc {
            // A real call, answered OK: the proxy's gRPC set-up works, not just its listener.
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], r.port));
            loop {
                let call = echo::grpc_client::call(
                    addr,
                    "bench.example",
                    GRPC_PATH,
                    &[],
                    Duration::from_secs(2),
                );
                match call {
                    Ok(c) if c.code == Some(0) => return Ok(()),
                    _ if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(200))
                    }
                    other => return Err(format!("no gRPC OK on port {}: {other:?}", r.port)),
                }
            }
        }
        loop {
            let out = Command::new("h2load")
                .args(["-n", "1", "-c", "1", "-H", ":authority: bench.example"])
                .arg(self.h2_url(r, mode))
                .output()
                .map_err(|e| format!("h2load: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if parse_h2load(&text).is_some_and(|l| l.ok == 1) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no HTTP/2 200 on port {} within 20 s:\n{text}", r.port));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One measured run after a warm-up: (req/s, proxy CPU µs per request, failed or errored
    /// requests). (h2load's 2xx count can exceed its `done` count at the end of a timed run,
    /// so non-2xx is not `done − 2xx`.)
    fn h2_run(&self, r: &Running, mode: H2Mode) -> Result<Run, String> {
        let url = self.h2_url(r, mode);
        let log = self.work.join("h2load-requests.log");
        let extra = if mode == H2Mode::Grpc { grpc_args(&self.work, &log) } else { Vec::new() };
        h2load(&url, 2.0, &extra)?;
        let before = cpu_seconds(&r.pids);
        let load = h2load(&url, self.opts.seconds, &extra)?;
        let cpu = cpu_seconds(&r.pids) - before;
        let latency = if mode == H2Mode::Grpc { Some(latencies(&log)?) } else { None };
        Ok(Run {
            rps: load.rps,
            cpu_us: cpu * 1e6 / load.done.max(1) as f64,
            failed: load.failed,
            latency,
        })
    }

    /// Bytes of proxy RSS per idle h2c connection that made one request.
    fn h2_idle_memory(&self, r: &Running) -> Result<f64, String> {
        // Warm up with a short load (16 connections, as for HTTP/1), then let lb's post-burst
        // trim (`Spare::tick`) land before measuring.
        h2load(
            &self.h2_url(r, H2Mode::Cleartext),
            1.0,
            &["-c".into(), "16".into(), "-m".into(), "1".into()],
        )
        .map(drop)?;
        std::thread::sleep(Duration::from_millis(2500));
        let before = rss_bytes(&r.pids);
        let request = h2c_get();
        let mut conns = Vec::with_capacity(self.opts.idle);
        for _ in 0..self.opts.idle {
            let mut s = TcpStream::connect(("127.0.0.1", r.port)).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
            s.write_all(&request).map_err(|e| e.to_string())?;
            read_h2c_response(&mut s)?;
            conns.push(s);
        }
        std::thread::sleep(Duration::from_secs(1));
        let after = rss_bytes(&r.pids);
        drop(conns);
        Ok((after as f64 - before as f64) / self.opts.idle as f64)
    }

    pub(super) fn compare_h2(&mut self) -> Result<String, String> {
        let modes = [H2Mode::Tls, H2Mode::Cleartext, H2Mode::Grpc];
        let proxies = [Proxy::Nginx, Proxy::Haproxy, Proxy::Sluice];
        let mut figures: Vec<(Proxy, H2Figures)> =
            proxies.iter().map(|p| (*p, H2Figures::default())).collect();
        let cert = self.cert.take();
        for round in 0..self.opts.rounds {
            for (i, mode) in modes.into_iter().enumerate() {
                self.cert = if mode == H2Mode::Tls { cert.clone() } else { None };
                self.h2 = Some(mode);
                for (proxy, f) in &mut figures {
                    let r = self.start(*proxy, false)?;
                    let run = self.h2_run(&r, mode)?;
                    let latency = run.latency.map_or(String::new(), |(p50, p99)| {
                        format!(", p50 {p50:.2} ms, p99 {p99:.2} ms")
                    });
                    eprintln!(
                        "round {} {:>8} {:>9}: {:>8.0} req/s, {:>6.2} µs CPU/request{latency}, failed {}",
                        round + 1,
                        proxy.name(),
                        mode.name(),
                        run.rps,
                        run.cpu_us,
                        run.failed,
                    );
                    f.rps[i].push(run.rps);
                    f.cpu_us[i].push(run.cpu_us);
                    if let Some((p50, p99)) = run.latency {
                        f.p50_ms.push(p50);
                        f.p99_ms.push(p99);
                    }
                    f.errors += run.failed;
                    if mode == H2Mode::Cleartext {
                        // On a fresh proxy, as for HTTP/1: after the load, memory the 1,000
                        // streams in flight had freed is reused and hides the connections.
                        drop(r);
                        let r = self.start(*proxy, false)?;
                        let idle = self.h2_idle_memory(&r)?;
                        eprintln!(
                            "         {:>8}: {idle:.0} bytes per idle h2c connection",
                            proxy.name()
                        );
                        f.idle_bytes.push(idle);
                    }
                }
            }
        }
        self.h2 = None;
        self.cert = cert;
        let section = self.h2_report(&figures);
        let path = self.opts.out.join("benchmarks.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::create_dir_all(&self.opts.out).map_err(|e| e.to_string())?;
        std::fs::write(&path, splice_section(&old, &section, H2_BEGIN, H2_END))
            .map_err(|e| e.to_string())?;
        Ok(section)
    }

    fn h2_report(&self, figures: &[(Proxy, H2Figures)]) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "{H2_BEGIN}\n## HTTP/2\n");
        let _ = writeln!(
            md,
            "Written by `sluice-perf compare --h2` ({}). Medians of {} interleaved rounds of {} s, ratios against nginx in the same run. Load generator: nghttp2's h2load on CPU 1 (beside the upstream), {CONNECTIONS} connections × {STREAMS} concurrent streams, GET / with `:authority: bench.example`; every proxy forwards to the same HTTP/1.1 upstream with keep-alive.\n",
            utc_now(),
            self.opts.rounds,
            self.opts.seconds
        );
        let _ =
            writeln!(md, "| | nginx | HAProxy | Sluice | Sluice / nginx |\n|---|---|---|---|---|");
        for (i, mode) in
            ["h2 over TLS", "h2c (prior knowledge)", "gRPC unary (h2c)"].into_iter().enumerate()
        {
            for (what, cpu) in [("req/s", false), ("proxy CPU µs per request", true)] {
                let values: Vec<f64> = figures
                    .iter()
                    .map(|(_, f)| median(if cpu { &f.cpu_us[i] } else { &f.rps[i] }))
                    .collect();
                let cells: Vec<String> = values
                    .iter()
                    .map(|v| if cpu { format!("{v:.2}") } else { format!("{v:.0}") })
                    .collect();
                let ratio = if values[0] > 0.0 {
                    format!("{:.2}×", values[2] / values[0])
                } else {
                    "–".into()
                };
                let _ = writeln!(md, "| {mode}: {what} | {} | {ratio} |", cells.join(" | "));
            }
        }
        for (what, pick) in [("p50", 0), ("p99", 1)] {
            let values: Vec<f64> = figures
                .iter()
                .map(|(_, f)| median(if pick == 0 { &f.p50_ms } else { &f.p99_ms }))
                .collect();
            let cells: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
            let ratio = if values[0] > 0.0 {
                format!("{:.2}×", values[2] / values[0])
            } else {
                "–".into()
            };
            let _ = writeln!(
                md,
                "| gRPC unary (h2c): {what} latency, ms | {} | {ratio} |",
                cells.join(" | ")
            );
        }
        let idle: Vec<f64> = figures.iter().map(|(_, f)| median(&f.idle_bytes) / 1024.0).collect();
        let ratio =
            if idle[0] > 0.0 { format!("{:.2}×", idle[2] / idle[0]) } else { "–".into() };
        let _ = writeln!(
            md,
            "| h2c: memory per idle connection ({} connections, one request each), KiB | {} | {ratio} |",
            self.opts.idle,
            idle.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(" | ")
        );
        let errs: Vec<String> =
            figures.iter().map(|(p, f)| format!("{} {}", p.name(), f.errors)).collect();
        let _ = writeln!(md, "\nFailed or errored requests (all runs): {}.\n", errs.join(", "));
        let _ = writeln!(md, "All rounds (CPU µs per request, h2 over TLS · h2c · gRPC):\n");
        for (p, f) in figures {
            let list =
                |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                md,
                "- {}: {} · {} · {}",
                p.name(),
                list(&f.cpu_us[0]),
                list(&f.cpu_us[1]),
                list(&f.cpu_us[2])
            );
        }
        let _ = writeln!(
            md,
            "\nMethod: each proxy started afresh per round and mode, pinned to CPU 0 (nginx: one worker, `listen … ssl http2` / `listen … http2`; HAProxy: one thread, `bind … ssl crt … alpn h2,http/1.1` / `bind … proto h2`; Sluice: lb on one core, an HTTPS or HTTP Gateway listener — HTTP/2 is on by default); TLS 1.3 with the same ECDSA P-256 certificate; a 2 s h2load run first, then the measured one; CPU is the proxy's user+system time over the measured run divided by the requests done. gRPC: h2load POSTs one empty `EchoRequest` per call to `{GRPC_PATH}` (`content-type: application/grpc`, `te: trailers`) over h2c; nginx `grpc_pass` (upstream keep-alive), HAProxy `server … proto h2`, Sluice a GRPCRoute; the upstream is our echo's gRPC service (`sluice echo`, h2c, on CPU 1 beside h2load), the same for all three; latency percentiles from h2load's per-request log of the measured run (time to the end of each response). Idle memory: on a freshly started proxy, after 1 s of h2load with 16 connections and a 2.5 s pause, the proxy's RSS before and after opening that many h2c connections (prior knowledge, raw frames), each of which made one request and then idles for 1 s. h2load counts HTTP statuses, not `grpc-status`: each proxy's set-up is checked with one real call answered OK before its runs.\n\nRerun: `target/release/sluice-perf compare --h2 --sluice target/release/sluice --out docs` (needs h2load: Debian's nghttp2-client).\n{H2_END}"
        );
        md
    }
}

/// One measured run.
struct Run {
    rps: f64,
    cpu_us: f64,
    failed: u64,
    /// gRPC: (p50, p99) ms.
    latency: Option<(f64, f64)>,
}

impl H2Mode {
    fn name(self) -> &'static str {
        match self {
            H2Mode::Tls => "h2 (TLS)",
            H2Mode::Cleartext => "h2c",
            H2Mode::Grpc => "gRPC",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_output_is_read() {
        let text = "starting benchmark...\nfinished in 5.00s, 51234.40 req/s, 2.01MB/s\nrequests: 256172 total, 256172 started, 256170 done, 256170 succeeded, 2 failed, 0 errored, 0 timeout\nstatus codes: 256160 2xx, 0 3xx, 10 4xx, 0 5xx\n";
        let l = parse_h2load(text).unwrap();
        assert!((l.rps - 51234.4).abs() < 0.01);
        assert_eq!((l.done, l.ok, l.failed), (256_170, 256_160, 2));
        assert!(parse_h2load("nothing").is_none());
    }
}
