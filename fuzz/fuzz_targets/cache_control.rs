//! Cache-Control / Age parsing, the storage decision and freshness over time.
//! The harness is `gateway::fuzzing::cache_control`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::cache_control(data));
