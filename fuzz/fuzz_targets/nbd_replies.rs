#![no_main]
//! Fuzz target: see `datapath::fuzz_targets::nbd_replies`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| datapath::fuzz_targets::nbd_replies(data));
