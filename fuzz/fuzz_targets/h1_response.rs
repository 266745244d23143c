//! Upstream response bytes through the real HTTP/1.1 client (head, framing, chunked decoder).
//! The harness is `gateway::fuzzing::h1_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::h1_response(data));
