#![no_main]
//! Fuzz target: see `datapath::fuzz_targets::blob_requests`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| datapath::fuzz_targets::blob_requests(data));
