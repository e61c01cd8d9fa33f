//! Table build, open (validate) and lookup at several sizes.

#![allow(clippy::unwrap_used, reason = "benchmark setup: a failure should stop the run")]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use table::{Headers, Request, Router, encode};

struct H<'a>(&'a [(&'a str, &'a [u8])]);
impl Headers for H<'_> {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }
}

fn build_and_open(c: &mut Criterion) {
    let model = benches::model(5000, 50);
    let settings = benches::settings();
    let mut g = c.benchmark_group("table_5000_routes");
    g.sample_size(20);
    g.bench_function("compile", |b| b.iter(|| black_box(config_sync::compile(&model, &settings))));
    let table = config_sync::compile(&model, &settings).table;
    g.bench_function("encode", |b| b.iter(|| black_box(encode(&table).unwrap())));
    let bytes = encode(&table).unwrap();
    eprintln!(
        "table_5000_routes: {} bytes, {} matches, {} regexes",
        bytes.len(),
        table.matches.len(),
        table.regexes.len()
    );
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("open (validate + compile regexes)", |b| {
        b.iter(|| black_box(Router::open(&bytes, None).unwrap()))
    });
    let previous = Router::open(&bytes, None).unwrap();
    // Every chunk named as the previous generation named it: only the root is checked (a
    // changed route adds its few chunks: `--example compile_steps` measures that).
    g.bench_function("open sharing every chunk of the previous generation", |b| {
        b.iter(|| black_box(Router::open_reusing(&bytes, None, Some(&previous)).unwrap()))
    });
    g.bench_function("deserialize to native (alternative)", |b| {
        b.iter(|| black_box(table::decode(&bytes).unwrap()))
    });
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    for routes in [10usize, 1000, 10000] {
        let model = benches::model(routes, (routes / 100).max(1));
        let table = config_sync::compile(&model, &benches::settings()).table;
        let router = Router::open(&encode(&table).unwrap(), None).unwrap();
        let mut scratch = router.scratch();
        let port = router.port(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080).unwrap();
        let r = routes - 1;
        let host_exact = format!("app{}.example.com", r - r % 4);
        let host_wild = format!("x.zone{}.example.com", (r - r % 4) + 1);
        type Case<'a> = (String, Vec<u8>, Vec<u8>, &'a [(&'a str, &'a [u8])]);
        let cases: Vec<Case<'_>> = vec![
            (host_exact.clone(), format!("/v{}/x", r - r % 5).into_bytes(), b"".to_vec(), &[]),
            (host_wild.clone(), b"/nothing".to_vec(), b"".to_vec(), &[]),
            ("unknown.example".into(), b"/".to_vec(), b"".to_vec(), &[]),
            (host_exact, b"/h2/x".to_vec(), b"v=1".to_vec(), &[("x-tenant", b"t2")]),
        ];
        g.throughput(Throughput::Elements(cases.len() as u64));
        g.bench_with_input(BenchmarkId::new("mixed", routes), &cases, |b, cases| {
            b.iter(|| {
                for (host, path, query, headers) in cases {
                    let req = Request { method: b"GET", path, query, host: host.as_bytes() };
                    black_box(router.route(port, &req, &H(headers), &mut scratch));
                }
            })
        });
    }
    g.finish();
}

fn weighted(c: &mut Criterion) {
    let mut g = c.benchmark_group("weighted_select");
    let weights = [80u32, 15, 5, 0];
    let mut state = vec![0i64; weights.len()];
    g.throughput(Throughput::Elements(1));
    g.bench_function("4 backends", |b| {
        b.iter(|| black_box(table::select::pick(weights.iter().copied(), &mut state)))
    });
    g.finish();
}

criterion_group!(benches, build_and_open, lookup, weighted);
criterion_main!(benches);
