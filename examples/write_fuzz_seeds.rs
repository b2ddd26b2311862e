//! Write the seed inputs of every fuzz target (VHDX, page-blob server, data path, simulator)
//! into `fuzz/corpus/<target>/seed-<name>`, or under the folder given.
//! Run: `cargo run --example write_fuzz_seeds -- fuzz/corpus`

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let seeds = vhdx::fuzz_targets::seeds()
        .into_iter()
        .chain(pageblob::fuzz_targets::seeds())
        .chain(datapath::fuzz_targets::seeds())
        .chain(sim::fuzz_targets::seeds());
    for (target, name, bytes) in seeds {
        let dir = std::path::Path::new(&root).join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    Ok(())
}
