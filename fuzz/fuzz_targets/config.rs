//! A config file's text through parsing and validation, as `gateway check`.
//! The harness is `gateway::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::config(data));
