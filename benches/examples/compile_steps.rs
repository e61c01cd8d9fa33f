//! Where a config change's time goes in config-sync at a given size: compile and encode of the
//! whole table, repeated, with per-step medians. Run under `perf record` to see inside them.
//!
//! ```sh
//! cargo run --release -p benches --example compile_steps -- 5000 20
//! cargo run --release -p benches --example compile_steps -- path/to/manifests 20
//! ```
//! Arguments: routes (the benches fixture) or a manifests folder, rounds, and `incremental` to
//! repeat only the compilation after one change (the others run once).

#![allow(clippy::unwrap_used, reason = "a measurement tool: fail loudly")]

use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "5000".into());
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    // `incremental`: only the compilations after one change (for a profile of just those).
    let only_incremental = args.next().as_deref() == Some("incremental");
    let model = match what.parse() {
        Ok(routes) => benches::model(routes, 50),
        Err(_) => {
            let mut source = config_sync::FileSource::new(std::path::Path::new(&what));
            source.scan(&Default::default()).unwrap();
            source.model().clone()
        }
    };
    let routes = model.http_routes.len();
    let settings = benches::settings();
    let (mut compile, mut encode, mut incremental) = (Vec::new(), Vec::new(), Vec::new());
    let (mut open, mut previous) = (Vec::new(), None);
    let (mut encode_reusing, mut spare_bytes) = (Vec::new(), None);
    let mut bytes = 0;
    for _ in 0..if only_incremental { 1 } else { rounds } {
        let t = Instant::now();
        let compiled = config_sync::compile(&model, &settings);
        compile.push(t.elapsed());
        let t = Instant::now();
        let encoded = table::encode(&compiled.table).unwrap();
        encode.push(t.elapsed());
        // As config-sync's publisher does: into the bytes of a table it no longer needs.
        let t = Instant::now();
        let spare =
            table::build::encode_into(&compiled.table, spare_bytes.take().unwrap_or_default());
        encode_reusing.push(t.elapsed());
        spare_bytes = spare.ok();
        bytes = encoded.len();
        // What lb does with each generation: validate and open, reusing the compiled regexes of
        // the table it serves (without the copy out of the segment or the swap on each core).
        let t = Instant::now();
        let router = table::Router::open_reusing(encoded, Some(0), previous.as_ref()).unwrap();
        open.push(t.elapsed());
        previous = Some(router);
    }
    // One route changed between compilations (a new object, as a source delivers it), the
    // others replayed.
    let mut model = model;
    let mut kept = config_sync::Incremental::default();
    let first = kept.compile(&model, &settings);
    kept.keep(first.table);
    let keys: Vec<_> = model.http_routes.keys().cloned().collect();
    let mut reuse = Default::default();
    for round in 0..rounds {
        let key = &keys[round * 7919 % keys.len()];
        let mut route = (*model.http_routes[key]).clone();
        route.metadata.generation = Some(round as i64 + 2);
        model.http_routes.insert(key.clone(), std::sync::Arc::new(route));
        let t = Instant::now();
        let compiled = kept.compile(&model, &settings);
        incremental.push(t.elapsed());
        reuse = kept.last();
        kept.keep(compiled.table);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "{routes} routes, {bytes} bytes: compile {:?}, after one route changed {:?} ({reuse:?}), encode {:?} (into a spare buffer {:?}), open {:?} (medians of {rounds})",
        median(&mut compile),
        median(&mut incremental),
        median(&mut encode),
        median(&mut encode_reusing),
        median(&mut open)
    );
}
