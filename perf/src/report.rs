//! Reports: a human summary, JSON, and the latency percentile spectrum as an SVG plot (the
//! HdrHistogram style: x is the percentile on a log scale of 1/(1−p), so the tail is visible).

use std::fmt::Write;

use serde::Serialize;

use crate::load::{Errors, Outcome};

/// Percentiles reported.
pub const PERCENTILES: [f64; 6] = [50.0, 90.0, 99.0, 99.9, 99.99, 100.0];

/// The JSON form of an outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `closed` or `open`.
    pub mode: String,
    /// Target rate (open loop).
    pub rate: Option<f64>,
    /// Connections.
    pub connections: usize,
    /// Load threads.
    pub threads: usize,
    /// Recorded window, seconds.
    pub seconds: f64,
    /// Completed requests in the window.
    pub requests: u64,
    /// Completed requests per second.
    pub requests_per_second: f64,
    /// Latency, microseconds.
    pub latency_us: Latency,
    /// Errors by kind.
    pub errors: Errors,
    /// Responses per status code.
    pub statuses: std::collections::BTreeMap<u16, u64>,
}

/// Latency figures, microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Mean.
    pub mean: f64,
    /// 50th percentile.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// 99.99th.
    pub p9999: f64,
    /// Maximum.
    pub max: f64,
}

impl Summary {
    /// Summarises an outcome.
    pub fn of(o: &Outcome) -> Summary {
        let h = &o.histogram;
        let us = |v: u64| v as f64 / 1000.0;
        let secs = o.measured.as_secs_f64().max(1e-9);
        Summary {
            mode: if o.plan.rate.is_some() { "open" } else { "closed" }.into(),
            rate: o.plan.rate,
            connections: o.plan.connections,
            threads: o.plan.cpus.len(),
            seconds: secs,
            requests: o.completed,
            requests_per_second: o.completed as f64 / secs,
            latency_us: Latency {
                mean: h.mean() / 1000.0,
                p50: us(h.value_at_quantile(0.5)),
                p90: us(h.value_at_quantile(0.9)),
                p99: us(h.value_at_quantile(0.99)),
                p999: us(h.value_at_quantile(0.999)),
                p9999: us(h.value_at_quantile(0.9999)),
                max: us(h.max()),
            },
            errors: o.errors.clone(),
            statuses: o.statuses.clone(),
        }
    }

    /// The human summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let mode = match self.rate {
            Some(r) => format!("open loop at {r:.0} req/s (latency from the scheduled send time)"),
            None => "closed loop".into(),
        };
        let _ = writeln!(
            s,
            "{mode}, {} connections on {} threads, {:.1} s recorded",
            self.connections, self.threads, self.seconds
        );
        let _ = writeln!(
            s,
            "  requests   {:>12}   {:.0} req/s",
            self.requests, self.requests_per_second
        );
        let l = &self.latency_us;
        let _ = writeln!(s, "  latency    mean {}", fmt_us(l.mean));
        for (name, v) in [
            ("p50", l.p50),
            ("p90", l.p90),
            ("p99", l.p99),
            ("p99.9", l.p999),
            ("p99.99", l.p9999),
            ("max", l.max),
        ] {
            let _ = writeln!(s, "    {name:<7} {}", fmt_us(v));
        }
        let e = &self.errors;
        let _ = writeln!(
            s,
            "  errors     connect {} · reset {} · timeout {} · non-2xx {} · protocol {}",
            e.connect, e.reset, e.timeout, e.non_2xx, e.protocol
        );
        let statuses: Vec<String> =
            self.statuses.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(s, "  statuses   {}", statuses.join(", "));
        s
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 { format!("{:>9.2} ms", us / 1000.0) } else { format!("{us:>9.1} µs") }
}

/// One line of a spectrum plot: `(percentile, latency µs)` points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend.
    pub name: String,
    /// Points, percentile ascending.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// The percentile spectrum of an outcome.
    pub fn of(name: &str, o: &Outcome) -> Series {
        Series::from_histogram(name, &o.histogram)
    }

    /// The percentile spectrum of a latency histogram (nanoseconds).
    pub fn from_histogram(name: &str, h: &hdrhistogram::Histogram<u64>) -> Series {
        let mut points = Vec::new();
        if h.is_empty() {
            return Series { name: name.into(), points };
        }
        // Dense towards the tail: 1/(1-p) from 1 to 10^6.
        let mut x: f64 = 1.0;
        while x <= 1_000_000.0 {
            let p = 1.0 - 1.0 / x;
            points.push((p * 100.0, h.value_at_quantile(p) as f64 / 1000.0));
            x *= 1.15;
        }
        points.push((100.0, h.max() as f64 / 1000.0));
        Series { name: name.into(), points }
    }
}

/// An SVG plot of latency by percentile for one or more series.
pub fn spectrum_svg(title: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (900.0, 520.0, 80.0, 180.0, 50.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xmax = 6.0; // log10(1/(1-p)) up to 99.9999 %
    let ymax =
        series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0f64, f64::max).max(1.0);
    let ymax = nice_ceiling(ymax);
    let xpos = |p: f64| {
        let frac = (1.0 - p / 100.0).max(1e-6);
        left + ((-frac.log10()).min(xmax) / xmax) * pw
    };
    let ypos = |v: f64| top + ph - (v / ymax) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        escape(title)
    );
    for (label, p) in [
        ("0%", 0.0),
        ("90%", 90.0),
        ("99%", 99.0),
        ("99.9%", 99.9),
        ("99.99%", 99.99),
        ("99.999%", 99.999),
        ("99.9999%", 99.9999),
    ] {
        let x = xpos(p);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            top + ph,
            top + ph + 18.0
        );
    }
    for i in 0..=5 {
        let v = ymax * f64::from(i) / 5.0;
        let y = ypos(v);
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            axis_label(v)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text><text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">latency</text>"#,
        left + pw / 2.0,
        h - 14.0,
        top + ph / 2.0,
        top + ph / 2.0
    );
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
    for (i, series) in series.iter().enumerate() {
        let c = colours[i % colours.len()];
        let pts: Vec<String> =
            series.points.iter().map(|&(p, v)| format!("{:.1},{:.1}", xpos(p), ypos(v))).collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = top + 10.0 + 20.0 * i as f64;
        let _ = write!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            left + pw + 12.0,
            left + pw + 36.0,
            left + pw + 42.0,
            ly + 4.0,
            escape(&series.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn nice_ceiling(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn axis_label(us: f64) -> String {
    if us >= 1000.0 { format!("{:.1} ms", us / 1000.0) } else { format!("{us:.0} µs") }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
