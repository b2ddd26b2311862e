#![no_main]
//! Fuzz target: see `datapath::fuzz_targets::staging_log`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| datapath::fuzz_targets::staging_log(data));
