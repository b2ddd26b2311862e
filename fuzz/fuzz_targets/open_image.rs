#![no_main]
//! Fuzz target: see `vhdx::fuzz_targets::open_image`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| vhdx::fuzz_targets::open_image(data));
