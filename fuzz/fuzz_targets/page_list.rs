#![no_main]
//! Fuzz target: see `pageblob::fuzz_targets::page_list`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pageblob::fuzz_targets::page_list(data));
