//! Replays the fuzz seeds (made by the test image builder), the committed regressions and any
//! local corpus through the fuzz targets' code on the stable toolchain.

use std::path::Path;

use vhdx::fuzz_targets::{run, seeds, TARGETS};

#[test]
fn builder_seeds_run_through_every_target() {
    let seeds = seeds();
    for target in TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| *t == target),
            "no seed for {target}"
        );
    }
    for (target, _, bytes) in &seeds {
        run(target, bytes);
    }
}

#[test]
fn committed_regressions_and_local_corpus_replay_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for folder in ["regressions", "corpus"] {
        for target in TARGETS {
            let dir = root.join(folder).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            files.sort();
            for f in files {
                run(target, &std::fs::read(&f).unwrap());
                replayed += 1;
            }
        }
    }
    eprintln!("replayed {replayed} corpus files");
}
