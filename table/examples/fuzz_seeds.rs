//! Writes seed inputs for the `open_table` fuzz target: the encoded fixture table and a few
//! variants. Random bytes almost never pass rkyv's structural check, so the fuzzer needs valid
//! tables to mutate from.
//!
//! `cargo run -p table --example fuzz_seeds -- table/fuzz/corpus/open_table`

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "table/fuzz/corpus/open_table".into());
    std::fs::create_dir_all(&dir)?;
    let full = table::fixtures::sample();
    let mut empty = full.clone();
    empty.ports.clear();
    let mut no_regex = full.clone();
    no_regex.matches.retain(|m| !matches!(m.path, table::format::PathMatch::Regex(_)));
    for (name, t) in
        [("sample", &full), ("no-ports", &empty), ("default", &table::Table::default())]
    {
        let bytes = table::encode(t).map_err(std::io::Error::other)?;
        std::fs::write(format!("{dir}/{name}.bin"), &bytes)?;
    }
    // no_regex has dangling vhost indices on purpose: a near-miss for the index checks.
    let bytes = table::encode(&no_regex).map_err(std::io::Error::other)?;
    std::fs::write(format!("{dir}/near-miss.bin"), &bytes)?;
    Ok(())
}
