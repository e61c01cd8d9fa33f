//! The exposition: every core's counters summed at scrape time and written by the
//! `prometheus-client` encoder from a custom collector (OpenMetrics text), or converted to the
//! Prometheus text format (0.0.4) for scrapers that do not ask for OpenMetrics.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::{BUCKETS_US, CLASSES, CoreMetrics, Counter, Registry, TLS_FAILURES, Traffic, Upstream};

/// Labels of one series.
type Labels = Vec<(&'static str, String)>;

/// Finds a series' traffic counters in one core's metrics.
type TrafficOf<'a> = Box<dyn Fn(&CoreMetrics) -> Option<&Traffic> + 'a>;

/// Finds a series' upstream counters in one core's metrics.
type UpstreamOf<'a> = Box<dyn Fn(&CoreMetrics) -> Option<&Upstream> + 'a>;

/// The registry the admin thread encodes.
#[derive(Debug)]
pub(crate) struct Exposition(prometheus_client::registry::Registry);

impl Exposition {
    pub(crate) fn new(source: Arc<Registry>) -> Exposition {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Source(source)));
        Exposition(registry)
    }
}

/// Renders the metrics: OpenMetrics text when `openmetrics`, else Prometheus text 0.0.4.
pub(crate) fn render(exposition: &Exposition, openmetrics: bool) -> String {
    let mut out = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, &exposition.0).is_err() {
        return String::new();
    }
    if openmetrics { out } else { to_prometheus_text(&out) }
}

/// OpenMetrics → Prometheus text: a counter family's HELP and TYPE name its `_total` series,
/// `# UNIT` and `# EOF` go.
fn to_prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        open.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find(|p| line.starts_with(p));
        if let Some(prefix) = meta {
            let rest = &line[prefix.len()..];
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                let _ = writeln!(out, "{prefix}{name}_total {tail}");
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[derive(Debug)]
struct Source(Arc<Registry>);

/// Sums one value over every core.
fn sum(cores: &[Arc<CoreMetrics>], f: impl Fn(&CoreMetrics) -> u64) -> u64 {
    cores.iter().map(|c| f(c)).fold(0, u64::wrapping_add)
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        if labels.is_empty() {
            family.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        } else {
            family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, i64)>,
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        if labels.is_empty() {
            family.encode_gauge(&v)?;
        } else {
            family.encode_family(&labels)?.encode_gauge(&v)?;
        }
    }
    Ok(())
}

/// A traffic dimension (listeners, or route rules): its live series and how to find them.
struct Dimension<'a> {
    prefix: &'static str,
    what: &'static str,
    series: Vec<(Labels, TrafficOf<'a>)>,
}

fn traffic(
    enc: &mut DescriptorEncoder<'_>,
    cores: &[Arc<CoreMetrics>],
    dim: &Dimension<'_>,
) -> std::fmt::Result {
    let value = |get: &dyn Fn(&CoreMetrics) -> Option<&Traffic>, f: &dyn Fn(&Traffic) -> u64| {
        sum(cores, |c| get(c).map_or(0, f))
    };
    let name = |n: &str| format!("sluice_{}_{n}", dim.prefix);
    counter(
        enc,
        &name("requests"),
        &format!("Requests finished, by {}", dim.what),
        dim.series.iter().map(|(l, get)| {
            (l.clone(), value(get.as_ref(), &|t| t.responses.iter().map(Counter::get).sum()))
        }),
    )?;
    counter(
        enc,
        &name("responses"),
        &format!(
            "Responses by {} and status class (class \"none\": the exchange ended without a response)",
            dim.what
        ),
        dim.series.iter().flat_map(|(l, get)| {
            CLASSES.iter().enumerate().map(move |(i, class)| {
                let mut labels = l.clone();
                labels.push(("class", (*class).to_owned()));
                let v = value(get.as_ref(), &|t| t.responses.get(i).map_or(0, Counter::get));
                (labels, v)
            })
        }),
    )?;
    counter(
        enc,
        &name("request_bytes"),
        &format!("Request bytes received (head and body), by {}", dim.what),
        dim.series.iter().map(|(l, get)| (l.clone(), value(get.as_ref(), &|t| t.bytes_in.get()))),
    )?;
    counter(
        enc,
        &name("response_bytes"),
        &format!("Response bytes sent (head and body), by {}", dim.what),
        dim.series.iter().map(|(l, get)| (l.clone(), value(get.as_ref(), &|t| t.bytes_out.get()))),
    )?;
    let histogram_name = name("request_duration_seconds");
    let mut family = enc.encode_descriptor(
        &histogram_name,
        &format!("Time from a request's first byte to the end of its response, by {}", dim.what),
        None,
        MetricType::Histogram,
    )?;
    for (labels, get) in &dim.series {
        let mut counts = [0u64; BUCKETS_US.len() + 1];
        let mut sum_us = 0u64;
        for core in cores {
            if let Some(t) = get(core) {
                for (c, b) in counts.iter_mut().zip(t.duration.buckets.iter()) {
                    *c += b.get();
                }
                sum_us = sum_us.wrapping_add(t.duration.sum_us.get());
            }
        }
        // The encoder sums the buckets itself; +Inf is `f64::MAX` to it.
        let buckets: Vec<(f64, u64)> = counts
            .iter()
            .enumerate()
            .map(|(i, &c)| (BUCKETS_US.get(i).map_or(f64::MAX, |&us| us as f64 / 1e6), c))
            .collect();
        family.encode_family(labels)?.encode_histogram::<NoLabelSet>(
            sum_us as f64 / 1e6,
            counts.iter().sum(),
            &buckets,
            None,
        )?;
    }
    Ok(())
}

/// The upstream families, for all upstreams (`labels` empty) or per Service.
fn upstream(
    enc: &mut DescriptorEncoder<'_>,
    cores: &[Arc<CoreMetrics>],
    prefix: &str,
    series: &[(Labels, UpstreamOf<'_>)],
) -> std::fmt::Result {
    type Field = fn(&Upstream) -> &Counter;
    let fields: [(&str, &str, Field); 7] = [
        ("attempts", "Requests sent (or tried) to an upstream, retries included", |u| &u.attempts),
        ("connect_failures", "Upstream connections that could not be opened", |u| {
            &u.connect_failures
        }),
        ("timeouts", "Upstream attempts that timed out", |u| &u.timeouts),
        ("resets", "Upstream connections closed or reset before the response was complete", |u| {
            &u.resets
        }),
        ("retries", "Requests sent again by a route's retry policy", |u| &u.retries),
        ("pool_hits", "Attempts on a pooled (or multiplexed) connection", |u| &u.pool_hits),
        ("pool_misses", "Attempts that opened a new connection", |u| &u.pool_misses),
    ];
    for (name, help, field) in fields {
        counter(
            enc,
            &format!("{prefix}_{name}"),
            help,
            series.iter().map(|(labels, get)| {
                (labels.clone(), sum(cores, |c| get(c).map_or(0, |u| field(u).get())))
            }),
        )?;
    }
    Ok(())
}

impl Collector for Source {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let registry = &self.0;
        let cores = &registry.cores;
        let names = match registry.names.lock() {
            Ok(n) => n,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut listeners = Dimension { prefix: "http", what: "listener", series: Vec::new() };
        for (slot, name) in names.listeners.live() {
            listeners.series.push((
                vec![("listener", name.clone())],
                Box::new(move |c: &CoreMetrics| c.listeners.get(slot)),
            ));
        }
        listeners.series.push((
            vec![("listener", String::new())],
            Box::new(|c: &CoreMetrics| Some(&c.unmatched)),
        ));
        traffic(&mut enc, cores, &listeners)?;
        if names.detail.routes {
            let mut routes = Dimension { prefix: "route", what: "route rule", series: Vec::new() };
            for (slot, (route, rule)) in names.routes.live() {
                routes.series.push((
                    vec![("route", route.clone()), ("rule", rule.to_string())],
                    Box::new(move |c: &CoreMetrics| c.routes.get(slot)),
                ));
            }
            traffic(&mut enc, cores, &routes)?;
        }
        let all: UpstreamOf<'_> = Box::new(|c| Some(&c.upstream));
        upstream(&mut enc, cores, "sluice_upstream", &[(Vec::new(), all)])?;
        if names.detail.backends {
            let series: Vec<(Labels, UpstreamOf<'_>)> = names
                .backends
                .live()
                .map(|(slot, name)| {
                    let get: UpstreamOf<'_> = Box::new(move |c| c.backends.get(slot));
                    (vec![("backend", name.clone())], get)
                })
                .collect();
            upstream(&mut enc, cores, "sluice_backend", &series)?;
        }
        drop(names);
        let one = |f: fn(&CoreMetrics) -> u64| [(Vec::new(), sum(cores, f))];
        let level = |f: fn(&CoreMetrics) -> u64| [(Vec::new(), sum(cores, f) as i64)];
        counter(
            &mut enc,
            "sluice_connections_accepted",
            "Client connections accepted",
            one(|c| c.connections_accepted.get()),
        )?;
        gauge(
            &mut enc,
            "sluice_connections_active",
            "Client connections open",
            level(|c| c.connections_active.get()),
        )?;
        gauge(
            &mut enc,
            "sluice_requests_active",
            "Exchanges in progress",
            level(|c| c.requests_active.get()),
        )?;
        counter(
            &mut enc,
            "sluice_http2_connections",
            "Client connections that spoke HTTP/2",
            one(|c| c.h2_connections.get()),
        )?;
        counter(
            &mut enc,
            "sluice_http2_streams",
            "HTTP/2 streams served",
            one(|c| c.h2_streams.get()),
        )?;
        counter(
            &mut enc,
            "sluice_http2_abusive_connections",
            "HTTP/2 connections sent GOAWAY ENHANCE_YOUR_CALM for resetting most of their streams",
            one(|c| c.h2_abusive.get()),
        )?;
        counter(
            &mut enc,
            "sluice_tls_handshakes",
            "TLS handshakes completed",
            one(|c| c.tls.handshakes.get()),
        )?;
        counter(
            &mut enc,
            "sluice_tls_resumed",
            "TLS handshakes that resumed a session",
            one(|c| c.tls.resumed.get()),
        )?;
        counter(
            &mut enc,
            "sluice_tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            TLS_FAILURES.iter().enumerate().map(|(i, reason)| {
                let v = sum(cores, |c| c.tls.failures.get(i).map_or(0, Counter::get));
                (vec![("reason", (*reason).to_owned())], v)
            }),
        )?;
        gauge(
            &mut enc,
            "sluice_table_generation",
            "Table generation each core serves",
            cores
                .iter()
                .enumerate()
                .map(|(i, c)| (vec![("core", i.to_string())], c.generation.get() as i64)),
        )?;
        counter(
            &mut enc,
            "sluice_table_swaps",
            "Tables swapped in, over all cores",
            one(|c| c.swaps.get()),
        )?;
        let table = &registry.table;
        counter(
            &mut enc,
            "sluice_table_validated",
            "Table generations validated and handed to the cores",
            [(Vec::new(), table.validated.get())],
        )?;
        counter(
            &mut enc,
            "sluice_table_refused",
            "Table generations refused by validation (the last good table stays)",
            [(Vec::new(), table.refused.get())],
        )?;
        gauge(
            &mut enc,
            "sluice_table_bytes",
            "Size of the table served",
            [(Vec::new(), table.last_size.get() as i64)],
        )?;
        counter(
            &mut enc,
            "sluice_buffer_ring_empty",
            "Reads that found the core's buffer ring empty and used a heap buffer",
            one(|c| c.ring_empty.get()),
        )?;
        counter(
            &mut enc,
            "sluice_mirror_dropped",
            "Mirror copies dropped because too many were in flight",
            one(|c| c.mirrors_dropped.get()),
        )?;
        counter(
            &mut enc,
            "sluice_access_log_records",
            "Access-log records handed to the writer",
            one(|c| c.access_log_written.get()),
        )?;
        counter(
            &mut enc,
            "sluice_access_log_dropped",
            "Access-log records dropped because the writer fell behind (requests never wait for it)",
            one(|c| c.access_log_dropped.get()),
        )?;
        gauge(
            &mut enc,
            "sluice_draining",
            "1 while lb drains (listeners closed, requests in flight finishing)",
            [(Vec::new(), i64::from(cores.iter().any(|c| c.draining.get() != 0)))],
        )?;
        gauge(&mut enc, "sluice_cores", "Cores serving", [(Vec::new(), cores.len() as i64)])?;
        gauge(
            &mut enc,
            "sluice_uptime_seconds",
            "Seconds since lb started",
            [(Vec::new(), registry.started.elapsed().as_secs() as i64)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counter_series() {
        let open = "# HELP a_x Things.\n# TYPE a_x counter\na_x_total 3\n# HELP g G.\n# TYPE g gauge\n# UNIT g seconds\ng 1\n# EOF\n";
        let text = to_prometheus_text(open);
        assert_eq!(
            text,
            "# HELP a_x_total Things.\n# TYPE a_x_total counter\na_x_total 3\n# HELP g G.\n# TYPE g gauge\ng 1\n"
        );
    }
}
