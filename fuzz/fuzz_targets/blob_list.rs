#![no_main]
//! Fuzz target: see `pageblob::fuzz_targets::blob_list`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pageblob::fuzz_targets::blob_list(data));
