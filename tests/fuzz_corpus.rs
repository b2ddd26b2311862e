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
fn datapath_seeds_run_through_every_target() {
    let seeds = datapath::fuzz_targets::seeds();
    for (target, _, bytes) in &seeds {
        datapath::fuzz_targets::run(target, bytes);
    }
    // Every record seed decodes: the seeds are valid inputs.
    assert!(seeds.iter().any(|(t, _, _)| *t == "slot_record"));
}

#[test]
fn pageblob_seeds_run_through_every_target() {
    let seeds = pageblob::fuzz_targets::seeds();
    for target in pageblob::fuzz_targets::TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| *t == target),
            "no seed for {target}"
        );
    }
    for (target, _, bytes) in &seeds {
        pageblob::fuzz_targets::run(target, bytes);
    }
}

#[test]
fn simulator_seeds_run_through_every_target() {
    let seeds = sim::fuzz_targets::seeds();
    for target in sim::fuzz_targets::TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| *t == target),
            "no seed for {target}"
        );
    }
    for (target, _, bytes) in &seeds {
        sim::fuzz_targets::run(target, bytes);
    }
}

#[test]
fn committed_regressions_and_local_corpus_replay_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for folder in ["regressions", "corpus"] {
        for target in TARGETS
            .iter()
            .chain(datapath::fuzz_targets::TARGETS.iter())
            .chain(pageblob::fuzz_targets::TARGETS.iter())
            .chain(sim::fuzz_targets::TARGETS.iter())
            .copied()
        {
            let dir = root.join(folder).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let bytes = std::fs::read(&f).unwrap();
                if TARGETS.contains(&target) {
                    run(target, &bytes);
                } else if pageblob::fuzz_targets::TARGETS.contains(&target) {
                    pageblob::fuzz_targets::run(target, &bytes);
                } else if sim::fuzz_targets::TARGETS.contains(&target) {
                    sim::fuzz_targets::run(target, &bytes);
                } else {
                    datapath::fuzz_targets::run(target, &bytes);
                }
                replayed += 1;
            }
        }
    }
    eprintln!("replayed {replayed} corpus files");
    assert!(
        replayed > 0,
        "nothing replayed: fuzz/regressions/ holds the inputs of the bugs fuzzing found"
    );
}
