#![no_main]
//! Fuzz target: see `sim::fuzz_targets::scenario`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sim::fuzz_targets::scenario(data));
