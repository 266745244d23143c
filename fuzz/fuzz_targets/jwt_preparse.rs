//! JWT header pre-parse and verification, raw tokens and signed fuzzed claims.
//! The harness is `gateway::fuzzing::jwt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::jwt(data));
