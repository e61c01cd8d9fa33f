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
    let mut bytes = 0;
    for _ in 0..if only_incremental { 1 } else { rounds } {
        let t = Instant::now();
        let compiled = config_sync::compile(&model, &settings);
        compile.push(t.elapsed());
        let t = Instant::now();
        let encoded = table::encode(&compiled.table).unwrap();
        encode.push(t.elapsed());
        bytes = encoded.len();
        // What lb does with a whole new generation: validate every chunk and open, reusing the
        // compiled regexes of the table it serves (without the copy out of the segment).
        let t = Instant::now();
        let router = table::Router::open_reusing(&encoded, Some(0), None).unwrap();
        open.push(t.elapsed());
        previous = Some(router);
    }
    let _ = previous;
    // One route changed between compilations (a new object, as a source delivers it), the
    // others replayed; then encoded by an encoder that remembers its chunks, and opened
    // sharing the previous generation's chunks, as config-sync and lb do.
    let mut model = model;
    let mut kept = config_sync::Incremental::default();
    let first = kept.compile(&model, &settings);
    let mut store = Memory::default();
    let mut encoder = table::build::Encoder::default();
    let root = encoder.encode(&first.table, 1, &mut store).unwrap();
    let mut last = store.open(root, None);
    kept.keep(first.table);
    let keys: Vec<_> = model.http_routes.keys().cloned().collect();
    let mut reuse = Default::default();
    let (mut encode_one, mut open_one, mut written) = (Vec::new(), Vec::new(), Vec::new());
    let mut in_pipeline = Vec::new();
    // Twice: compiling alone (caches warm), then compile, encode and open one after the other
    // as a change goes through config-sync and lb (each step after the others ran).
    for pass in 0..2 {
        for round in 0..rounds {
            let key = &keys[(pass * rounds + round) * 7919 % keys.len()];
            let mut route = (*model.http_routes[key]).clone();
            route.metadata.generation = Some((pass * rounds + round) as i64 + 2);
            model.http_routes.insert(key.clone(), std::sync::Arc::new(route));
            let t = Instant::now();
            let compiled = kept.compile(&model, &settings);
            reuse = kept.last();
            if pass == 0 {
                incremental.push(t.elapsed());
                kept.keep(compiled.table);
                continue;
            }
            in_pipeline.push(t.elapsed());
            let t = Instant::now();
            let epoch = (pass * rounds + round) as u64 + 2;
            let root = encoder.encode(&compiled.table, epoch, &mut store).unwrap();
            encode_one.push(t.elapsed());
            written.push(root.len() + encoder.last.bytes);
            let t = Instant::now();
            last = store.open(root, Some(&last));
            open_one.push(t.elapsed());
            kept.keep(compiled.table);
        }
    }
    let median_of = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    written.sort();
    println!(
        "{routes} routes, {bytes} bytes: compile {:?}, encode {:?}, open {:?}; after one route changed: compile {:?} alone, {:?} between the others ({reuse:?}), encode {:?} ({} bytes), open {:?} (medians of {rounds})",
        median_of(&mut compile),
        median_of(&mut encode),
        median_of(&mut open),
        median_of(&mut incremental),
        median_of(&mut in_pipeline),
        median_of(&mut encode_one),
        written[written.len() / 2],
        median_of(&mut open_one),
    );
}

/// Chunks in memory, by offset = position.
#[derive(Default)]
struct Memory(Vec<table::AlignedVec<16>>);

impl table::build::Store for Memory {
    fn store(&mut self, bytes: &[u8]) -> std::io::Result<u64> {
        let mut owned = table::AlignedVec::new();
        owned.extend_from_slice(bytes);
        self.0.push(owned);
        Ok(self.0.len() as u64 - 1)
    }

    fn keep(&mut self, _: &table::format::ChunkRef) {}
}

impl Memory {
    fn open(&self, root: table::AlignedVec<16>, previous: Option<&table::Router>) -> table::Router {
        let mut fetch =
            |c: &table::format::ArchivedChunkRef| Ok(self.0[c.offset.to_native() as usize].clone());
        table::Router::open_parts(root, Some(0), previous, &mut fetch).unwrap()
    }
}
