//! Write the builder's seed inputs into `fuzz/corpus/<target>/` (or the folder given).
//! Run: `cargo run -p vhdx --features testing --example write_fuzz_seeds -- fuzz/corpus`

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    for (target, name, bytes) in vhdx::fuzz_targets::seeds() {
        let dir = std::path::Path::new(&root).join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    Ok(())
}
