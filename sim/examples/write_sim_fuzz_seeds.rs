//! Write the seed inputs of the data path's and the simulator's fuzz targets into
//! `fuzz/corpus/<target>/` (or the folder given); the VHDX targets' seeds come from
//! `cargo run -p vhdx --features testing --example write_fuzz_seeds`.
//! Run: `cargo run -p sim --example write_sim_fuzz_seeds -- fuzz/corpus` (named apart from the
//! vhdx example: two examples of one workspace with one name collide in `target/`)

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let seeds = datapath::fuzz_targets::seeds()
        .into_iter()
        .chain(sim::fuzz_targets::seeds());
    for (target, name, bytes) in seeds {
        let dir = std::path::Path::new(&root).join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    Ok(())
}
