#![no_main]
//! Fuzz target: see `vhdx::fuzz_targets::log_replay`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| vhdx::fuzz_targets::log_replay(data));
