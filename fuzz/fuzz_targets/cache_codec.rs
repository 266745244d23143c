//! The Redis cache entry codec: decode, and encode -> decode round trip.
//! The harness is `gateway::fuzzing::cache_codec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::cache_codec(data));
