//! `sluice-perf compare --access-logs`: what an access log costs each proxy. nginx, HAProxy and
//! Sluice run the HTTP/1.1 keep-alive benchmark twice per round, without and with an access
//! log written to a file, interleaved; then each is counted under callgrind both ways (all of
//! the proxy's threads: Sluice's log writer thread included).
//!
//! The logs are what an operator of each would turn on: nginx a JSON `log_format` with the
//! fields Sluice logs (`escape=json`, buffered 64 KiB, flushed every second), HAProxy its
//! `option httplog` line to stdout (a file here), Sluice `--access-log FILE` (JSON lines).

use std::fmt::Write as _;

use super::{Bench, Proxy, median, splice_section, utc_now};

const BEGIN: &str = "<!-- access-logs: written by sluice-perf compare --access-logs -->";
const END: &str = "<!-- /access-logs -->";

/// Where this comparison's section of benchmarks.md begins and ends (the HTTP/1 run keeps it).
pub(super) const SECTION: (&str, &str) = (BEGIN, END);

/// nginx's log format: the fields Sluice's JSON lines carry that nginx has.
pub(super) const NGINX_FORMAT: &str = "log_format sluicejson escape=json '{\"start_time\":\"$time_iso8601\",\"client\":\"$remote_addr:$remote_port\",\"method\":\"$request_method\",\"authority\":\"$host\",\"path\":\"$request_uri\",\"protocol\":\"$server_protocol\",\"status\":$status,\"bytes_in\":$request_length,\"bytes_out\":$bytes_sent,\"duration_ms\":$request_time,\"upstream_host\":\"$upstream_addr\",\"upstream_ms\":\"$upstream_response_time\",\"user_agent\":\"$http_user_agent\",\"request_id\":\"$http_x_request_id\",\"traceparent\":\"$http_traceparent\"}';";

#[derive(Debug, Default)]
struct Figures {
    /// CPU µs per request: [without, with] a log, per round.
    cpu_us: [Vec<f64>; 2],
    /// User-space instructions per request under callgrind: [without, with].
    instructions: [Option<f64>; 2],
    errors: u64,
}

impl Bench {
    pub(super) fn compare_access_logs(&self) -> Result<String, String> {
        let mut figures: Vec<(Proxy, Figures)> = [Proxy::Nginx, Proxy::Haproxy, Proxy::Sluice]
            .into_iter()
            .map(|p| (p, Figures::default()))
            .collect();
        for round in 0..self.opts.rounds {
            for (proxy, f) in &mut figures {
                for logging in [false, true] {
                    self.logging.set(logging);
                    let r = self.start(*proxy, false)?;
                    let (rps, cpu, errors, _) = self.closed_loop(&r)?;
                    eprintln!(
                        "round {} {:>8} log {}: {rps:>8.0} req/s, {cpu:>6.2} µs CPU/request, errors {errors}",
                        round + 1,
                        proxy.name(),
                        if logging { "on " } else { "off" },
                    );
                    f.cpu_us[usize::from(logging)].push(cpu);
                    f.errors += errors;
                }
            }
        }
        if self.opts.callgrind_requests > 0 {
            for (proxy, f) in &mut figures {
                for logging in [false, true] {
                    self.logging.set(logging);
                    let r = self.start(*proxy, true)?;
                    f.instructions[usize::from(logging)] = self.instructions(&r, *proxy)?;
                    eprintln!(
                        "{:>8} log {}: {:.0} user-space instructions per request",
                        proxy.name(),
                        if logging { "on " } else { "off" },
                        f.instructions[usize::from(logging)].unwrap_or(f64::NAN)
                    );
                }
            }
        }
        self.logging.set(false);
        let mut md = String::new();
        let _ = writeln!(md, "{BEGIN}\n## Access logs on: what logging costs each proxy\n");
        let _ = writeln!(
            md,
            "Written by `sluice-perf compare --access-logs` ({}). HTTP/1.1 keep-alive, {} connections, sluice-perf's load generator; each proxy without and with an access log to a file, interleaved, medians of {} rounds; instructions from callgrind over {} requests, every thread of the proxy counted (Sluice's log writer too). nginx logs a JSON `log_format` with the fields Sluice logs (buffered 64 KiB), HAProxy its `option httplog` line, Sluice its JSON lines (`--access-log FILE`, defaults otherwise).\n",
            utc_now(),
            self.opts.connections,
            self.opts.rounds,
            self.opts.callgrind_requests
        );
        let _ = writeln!(
            md,
            "| | CPU µs/request, log off | log on | on / off | instructions/request, log off | log on | on / off |\n|---|---|---|---|---|---|---|"
        );
        let ratio = |on: f64, off: f64| {
            if off > 0.0 { format!("{:.2}×", on / off) } else { "–".into() }
        };
        for (proxy, f) in &figures {
            let (cpu_off, cpu_on) = (median(&f.cpu_us[0]), median(&f.cpu_us[1]));
            let ins = |i: Option<f64>| i.map_or("–".into(), |v| format!("{v:.0}"));
            let ins_ratio = match f.instructions {
                [Some(off), Some(on)] => ratio(on, off),
                _ => "–".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {cpu_off:.2} | {cpu_on:.2} | {} | {} | {} | {ins_ratio} |",
                proxy.name(),
                ratio(cpu_on, cpu_off),
                ins(f.instructions[0]),
                ins(f.instructions[1]),
            );
        }
        let errors: Vec<String> =
            figures.iter().map(|(p, f)| format!("{} {}", p.name(), f.errors)).collect();
        let _ = writeln!(md, "\nErrors over all rounds: {}.\n{END}", errors.join(", "));
        let path = self.opts.out.join("benchmarks.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, splice_section(&old, &md, BEGIN, END)).map_err(|e| e.to_string())?;
        Ok(md)
    }
}
