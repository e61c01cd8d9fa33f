//! Table pickup latency: publishes a table into a segment that a running lb reads, and spins on
//! lb's applied file until every core serves the new generation.
//!
//! ```sh
//! cargo build --release -p sluice
//! cargo run --release -p benches --example pickup -- target/release/sluice 200 5000
//! ```
//! Arguments: the sluice binary, rounds, routes in the table, and `whole` to publish every chunk
//! anew each round (as a table without reusable chunks; otherwise one Service changes: one
//! chunk and the root). Prints min/median/p99/max and the bytes written per round.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a measurement tool: fail loudly")]

use std::process::Command;
use std::time::{Duration, Instant};

use table::shm::{SegmentWriter, applied_path, read_applied};

fn main() {
    let mut args = std::env::args().skip(1);
    let bin = args.next().unwrap_or_else(|| "target/release/sluice".into());
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let routes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let whole = args.next().as_deref() == Some("whole");
    let dir = format!("/dev/shm/sluice-pickup-{}", std::process::id());
    let segment = std::path::PathBuf::from(format!("{dir}/table"));
    let mut writer = SegmentWriter::open(&segment).unwrap();
    let mut lb = Command::new(&bin)
        .args(["lb", "--table", segment.to_str().unwrap(), "--bind-address", "127.0.0.1"])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start lb");
    let model = benches::model(routes, (routes / 100).max(1));
    let mut table = config_sync::compile(&model, &benches::settings()).table;
    // Keep lb's listener on a free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for p in &mut table.ports {
        p.port = port;
    }
    let applied = applied_path(&segment);
    let mut samples = Vec::new();
    let mut encoder = table::build::Encoder::default();
    let mut written = 0;
    for round in 0..=rounds {
        let generation = writer.generation() + 1;
        // A different service name each round: a real change, same shape.
        if let Some(s) = table.services.get_mut(0) {
            s.name = format!("svc-{round}");
        }
        if whole {
            encoder.forget();
        }
        let start = Instant::now();
        writer.discard();
        let mut root = encoder.encode(&table, generation, &mut writer).unwrap();
        table::build::stamp_generation(&mut root, generation).unwrap();
        writer.publish(generation, &root).unwrap();
        written = root.len() + encoder.last.bytes;
        loop {
            if read_applied(&applied).is_ok_and(|a| a.min() >= generation) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "lb did not apply {generation}");
            std::thread::sleep(Duration::from_micros(10));
        }
        // Round 0 includes lb's start-up and listener binding: not a pickup.
        if round > 0 {
            samples.push(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = lb.kill();
    let _ = lb.wait();
    let _ = std::fs::remove_dir_all(&dir);
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "table pickup (encode, publish, lb intake), {routes} routes ({} bytes, {written} written a round), {} rounds: min {:?} median {:?} p99 {:?} max {:?}",
        table::encode(&table).unwrap().len(),
        samples.len(),
        samples[0],
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    );
}
