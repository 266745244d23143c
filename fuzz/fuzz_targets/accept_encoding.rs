//! `Accept-Encoding` negotiation (q-values, `*`, identity, bounds) and the
//! cache's acceptability check. The harness is
//! `gateway::fuzzing::accept_encoding`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::accept_encoding(data));
