#![no_main]
//! Fuzz target: see `sim::fuzz_targets::plan_input`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sim::fuzz_targets::plan_input(data));
