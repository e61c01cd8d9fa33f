//! Request-head parsing.

#![allow(clippy::unwrap_used, reason = "benchmark setup: a failure should stop the run")]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lb::http1::parse::{Limits, MAX_HEADERS, parse};

fn heads(c: &mut Criterion) {
    let small = b"GET /api/v1/users?id=42 HTTP/1.1\r\nHost: demo.example\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n".to_vec();
    let browser = b"GET /static/app.js HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\nAccept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nReferer: https://www.example.com/\r\nConnection: keep-alive\r\nCookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\nCache-Control: no-cache\r\n\r\n".to_vec();
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse_head");
    for (name, raw) in [("small", small), ("browser", browser)] {
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                black_box(parse(black_box(&raw), &mut fields, &limits).unwrap());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, heads);
criterion_main!(benches);
