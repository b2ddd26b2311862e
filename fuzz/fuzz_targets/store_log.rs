#![no_main]
//! Fuzz target: see `pageblob::fuzz_targets::store_log`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pageblob::fuzz_targets::store_log(data));
