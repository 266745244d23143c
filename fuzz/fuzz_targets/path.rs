//! The edge's path normaliser; asserts the normal-form invariants.
//! The harness is `gateway::fuzzing::path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::path(data));
