//! The byte form of a cache [`Entry`] in the shared (Redis) tier, as pure
//! functions. Redis content is not trusted: decoding checks every length,
//! header name, value and status, and fails with `None` rather than panic.
//!
//! Layout (big-endian): magic `GWC1`, written-at (Unix ms), age then (ms),
//! status, ttl / stale-while-revalidate / stale-if-error (ms), the `Vary`
//! names with the request values the variant was stored for, the response
//! headers, then the body. The age is carried as wall-clock time so a
//! replica reading the entry later reports a true `Age`.

use std::time::Duration;

use bytes::{BufMut, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::policy::Storable;
use super::store::Entry;

const MAGIC: &[u8; 4] = b"GWC1";

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Encodes `e` as seen at `now` (its age) and `now_unix_ms` (wall clock).
pub fn encode(e: &Entry, now: Instant, now_unix_ms: u64) -> Vec<u8> {
    let headers: usize = e
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 6)
        .sum();
    let mut out = Vec::with_capacity(64 + headers + e.body.len());
    out.put_slice(MAGIC);
    out.put_u64(now_unix_ms);
    out.put_u64(ms(e.age(now)));
    out.put_u16(e.status.as_u16());
    out.put_u64(ms(e.life.ttl));
    out.put_u64(ms(e.life.stale_while_revalidate));
    out.put_u64(ms(e.life.stale_if_error));
    out.put_u16(u16::try_from(e.life.vary.len()).unwrap_or(u16::MAX));
    for (name, value) in e.life.vary.iter().zip(&e.vary_values).take(u16::MAX.into()) {
        put_short(&mut out, name.as_str().as_bytes());
        match value {
            Some(v) => {
                out.put_u8(1);
                put_long(&mut out, v.as_bytes());
            }
            None => out.put_u8(0),
        }
    }
    out.put_u32(u32::try_from(e.headers.len()).unwrap_or(u32::MAX));
    for (k, v) in &e.headers {
        put_short(&mut out, k.as_str().as_bytes());
        put_long(&mut out, v.as_bytes());
    }
    out.put_slice(&e.body);
    out
}

fn put_short(out: &mut Vec<u8>, b: &[u8]) {
    let b = b.get(..usize::from(u16::MAX)).unwrap_or(b);
    out.put_u16(u16::try_from(b.len()).unwrap_or(u16::MAX));
    out.put_slice(b);
}

fn put_long(out: &mut Vec<u8>, b: &[u8]) {
    out.put_u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
    out.put_slice(b);
}

/// Decodes an entry written by [`encode`], aged by the wall-clock time
/// since it was written (never negative); `None` for anything malformed.
pub fn decode(bytes: Bytes, now: Instant, now_unix_ms: u64) -> Option<Entry> {
    let mut r = Reader(&bytes);
    if r.take(4)? != MAGIC {
        return None;
    }
    let written = r.u64()?;
    let age_then = r.u64()?;
    let status = StatusCode::from_u16(r.u16()?).ok()?;
    // Redis content is not trusted: lifetimes are clamped like the wire's.
    let ttl = lifetime(r.u64()?);
    let stale_while_revalidate = lifetime(r.u64()?);
    let stale_if_error = lifetime(r.u64()?);
    let n_vary = r.u16()?;
    let mut vary = Vec::new();
    let mut vary_values = Vec::new();
    for _ in 0..n_vary {
        vary.push(HeaderName::from_bytes(r.short()?).ok()?);
        vary_values.push(match r.u8()? {
            0 => None,
            1 => Some(HeaderValue::from_bytes(r.long()?).ok()?),
            _ => return None,
        });
    }
    let n_headers = r.u32()?;
    let mut headers = HeaderMap::new();
    for _ in 0..n_headers {
        let k = HeaderName::from_bytes(r.short()?).ok()?;
        let v = HeaderValue::from_bytes(r.long()?).ok()?;
        // More distinct names than a `HeaderMap` holds (2^15) is corrupt,
        // not a panic (`append` would panic).
        headers.try_append(k, v).ok()?;
    }
    let consumed = bytes.len() - r.0.len();
    let body = bytes.slice(consumed..);
    let age = lifetime(age_then.saturating_add(now_unix_ms.saturating_sub(written)));
    // Aged by moving the store time back; when the monotonic clock cannot
    // go back that far, the whole seconds go to `initial_age` instead.
    let (stored, initial_age) = match now.checked_sub(age) {
        Some(t) => (t, 0),
        None => (now, age.as_secs()),
    };
    Some(Entry {
        status,
        headers,
        body,
        stored,
        initial_age,
        life: Storable {
            ttl,
            stale_while_revalidate,
            stale_if_error,
            vary,
        },
        vary_values,
    })
}

/// The time left until `e` is unusable even stale, at `now` (the Redis
/// expiry of its copy); zero when it already is.
pub fn remaining_life(e: &Entry, now: Instant) -> Duration {
    let l = &e.life;
    l.ttl
        .saturating_add(l.stale_while_revalidate.max(l.stale_if_error))
        .saturating_sub(e.age(now))
}

/// A duration read from Redis, in ms, clamped to
/// [`MAX_DELTA_SECONDS`](super::policy::MAX_DELTA_SECONDS).
fn lifetime(ms: u64) -> Duration {
    Duration::from_millis(ms.min(super::policy::MAX_DELTA_SECONDS.saturating_mul(1000)))
}

/// A cursor that fails instead of reading past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(*self.take(1)?.first()?)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn short(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n.into())
    }
    fn long(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn entry(now: Instant) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        Entry {
            status: StatusCode::NOT_FOUND,
            headers,
            body: Bytes::from_static(b"hello body"),
            stored: now,
            initial_age: 3,
            life: Storable {
                ttl: Duration::from_secs(30),
                stale_while_revalidate: Duration::from_secs(5),
                stale_if_error: Duration::from_secs(60),
                vary: vec![
                    HeaderName::from_static("accept-language"),
                    HeaderName::from_static("accept"),
                ],
            },
            vary_values: vec![Some(HeaderValue::from_static("fr")), None],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn more_distinct_header_names_than_a_header_map_holds_is_corrupt() {
        let now = Instant::now();
        let mut e = entry(now);
        e.headers.clear();
        e.body = Bytes::new();
        let mut raw = encode(&e, now, 0);
        let n: u32 = 40_000;
        let at = raw.len() - 4;
        raw[at..].copy_from_slice(&n.to_be_bytes());
        for i in 0..n {
            let name = format!("h{i}");
            put_short(&mut raw, name.as_bytes());
            put_long(&mut raw, b"v");
        }
        assert!(decode(Bytes::from(raw), now, 0).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn round_trips_and_ages_by_the_wall_clock_in_between() {
        tokio::time::advance(Duration::from_secs(100)).await;
        let now = Instant::now();
        let e = entry(now);
        let bytes = Bytes::from(encode(&e, now, 1_000_000));
        // Read 2.5 s later on another replica.
        let d = decode(bytes, now, 1_002_500).unwrap();
        assert_eq!(d.status, e.status);
        assert_eq!(d.headers, e.headers);
        assert_eq!(d.body, e.body);
        assert_eq!(d.life, e.life);
        assert_eq!(d.vary_values, e.vary_values);
        assert_eq!(d.age(now), Duration::from_millis(5_500));
        // 30 + max(5, 60) s of life, 5.5 s used.
        assert_eq!(remaining_life(&d, now), Duration::from_millis(84_500));
    }

    #[tokio::test(start_paused = true)]
    async fn anything_malformed_is_none_never_a_panic() {
        let now = Instant::now();
        let good = encode(&entry(now), now, 5);
        assert!(decode(Bytes::from(good.clone()), now, 5).is_some());
        // Every truncation inside the head fails cleanly (the body is the
        // rest, so cutting into it only shortens it).
        let head_len = good.len() - b"hello body".len();
        for n in 0..head_len {
            assert!(
                decode(Bytes::copy_from_slice(&good[..n]), now, 5).is_none(),
                "{n}"
            );
        }
        assert!(decode(Bytes::from_static(b"GWC2"), now, 5).is_none());
        // A clock that went backwards does not make the age negative.
        let d = decode(Bytes::from(good), now, 0).unwrap();
        assert_eq!(d.age(now), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn extreme_lifetimes_from_redis_never_panic() {
        let now = Instant::now();
        let mut e = entry(now);
        e.initial_age = u64::MAX;
        e.life.ttl = Duration::MAX;
        e.life.stale_while_revalidate = Duration::MAX;
        e.life.stale_if_error = Duration::MAX;
        let bytes = encode(&e, now, u64::MAX);
        let _ = remaining_life(&e, now);
        // Every lifetime field set to u64::MAX ms, the age too.
        let mut raw = bytes.clone();
        for at in [12, 22, 30, 38] {
            raw[at..at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        }
        let d = decode(Bytes::from(raw), now, 0).unwrap();
        let _ = d.freshness(now);
        let _ = remaining_life(&d, now);
        let _ = d.age(now);
    }

    proptest::proptest! {
        /// Whatever Redis holds, decoding returns or says `None`; it never
        /// panics (arbitrary bytes, and valid encodings with bytes replaced).
        #[test]
        fn decoding_untrusted_bytes_never_panics(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            edits in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 0..8),
            now_ms in proptest::prelude::any::<u64>(),
        ) {
            let now = Instant::now();
            let _ = decode(Bytes::from(junk.clone()), now, now_ms);
            let mut magic = MAGIC.to_vec();
            magic.extend_from_slice(&junk);
            let _ = decode(Bytes::from(magic), now, now_ms);
            let mut good = encode(&entry(now), now, 5);
            for (i, b) in edits {
                let n = good.len();
                if let Some(x) = good.get_mut(i % n) {
                    *x = b;
                }
            }
            let _ = decode(Bytes::from(good), now, now_ms);
        }
    }
}
