//! FlagMeter (seed 002): `POST /api/events` records token usage per tenant and feature,
//! `GET /api/usage/{tenant}` reads the aggregate back.
//!
//! The store is sharded by tenant so the 80 % write mix of the k6 run does not serialize on
//! one lock, and bounded: at most [`MAX_TENANTS`] tenants and [`MAX_FEATURES`] features per
//! tenant; events past either cap are refused with 429.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::body::{self, json, json_bytes, read_json, MockBody};
use super::state::State;

/// Most tenants tracked.
pub const MAX_TENANTS: usize = 10_000;
/// Most features tracked per tenant.
pub const MAX_FEATURES: usize = 1_000;
/// Longest tenant or feature name accepted.
const MAX_NAME_LEN: usize = 256;
const SHARDS: usize = 16;

/// One usage event.
#[derive(Debug, Deserialize)]
struct Event {
    tenant: String,
    feature: String,
    tokens: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    events: u64,
    tokens: u64,
}

#[derive(Debug, Default)]
struct Tenant {
    totals: Counts,
    features: HashMap<String, Counts>,
}

/// Why an event was not recorded.
#[derive(Debug, Clone, Copy)]
enum Refused {
    Tenants,
    Features,
}

/// Usage per tenant, sharded and bounded.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    tenants: AtomicUsize,
    hasher: RandomState,
    shards: [Mutex<HashMap<String, Tenant>>; SHARDS],
}

impl Usage {
    fn shard(&self, tenant: &str) -> &Mutex<HashMap<String, Tenant>> {
        // The modulo keeps the index below SHARDS, so the truncation loses nothing.
        #[allow(clippy::cast_possible_truncation)]
        let index = (self.hasher.hash_one(tenant) % SHARDS as u64) as usize;
        &self.shards[index]
    }

    fn record(&self, event: Event) -> Result<(), Refused> {
        let mut shard = self
            .shard(&event.tenant)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !shard.contains_key(&event.tenant) {
            if self.tenants.fetch_add(1, Relaxed) >= MAX_TENANTS {
                self.tenants.fetch_sub(1, Relaxed);
                return Err(Refused::Tenants);
            }
            shard.insert(event.tenant.clone(), Tenant::default());
        }
        let Some(tenant) = shard.get_mut(&event.tenant) else {
            return Err(Refused::Tenants);
        };
        let features = tenant.features.len();
        let feature = match tenant.features.get_mut(&event.feature) {
            Some(feature) => feature,
            None if features >= MAX_FEATURES => return Err(Refused::Features),
            None => tenant.features.entry(event.feature).or_default(),
        };
        feature.events += 1;
        feature.tokens = feature.tokens.saturating_add(event.tokens);
        tenant.totals.events += 1;
        tenant.totals.tokens = tenant.totals.tokens.saturating_add(event.tokens);
        Ok(())
    }

    fn report(&self, tenant: &str) -> serde_json::Value {
        let shard = self
            .shard(tenant)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let usage = shard.get(tenant);
        let totals = usage.map(|t| t.totals).unwrap_or_default();
        let features: serde_json::Map<String, serde_json::Value> = usage
            .into_iter()
            .flat_map(|t| t.features.iter())
            .map(|(name, c)| {
                (
                    name.clone(),
                    json!({ "events": c.events, "tokens": c.tokens }),
                )
            })
            .collect();
        json!({
            "tenant": tenant,
            "events": totals.events,
            "total_tokens": totals.tokens,
            "features": features,
        })
    }
}

/// `POST /api/events`: 202 once recorded.
pub(crate) async fn post_event(state: &State, body: Incoming) -> Response<MockBody> {
    let event = match read_json::<Event>(body).await {
        Ok(event) => event,
        Err(res) => return res,
    };
    let bad_name = |s: &str| s.is_empty() || s.len() > MAX_NAME_LEN;
    if bad_name(&event.tenant) || bad_name(&event.feature) {
        return body::error(
            StatusCode::BAD_REQUEST,
            "tenant and feature must be 1..=256 bytes",
        );
    }
    match state.usage.record(event) {
        Ok(()) => json_bytes(
            StatusCode::ACCEPTED,
            Bytes::from_static(br#"{"accepted":true}"#),
        ),
        Err(Refused::Tenants) => body::error(StatusCode::TOO_MANY_REQUESTS, "tenant limit reached"),
        Err(Refused::Features) => body::error(
            StatusCode::TOO_MANY_REQUESTS,
            "feature limit reached for tenant",
        ),
    }
}

/// `GET /api/usage/{tenant}`: the aggregate (zeros for an unknown tenant).
pub(crate) fn get_usage(state: &State, tenant: &str) -> Response<MockBody> {
    json(StatusCode::OK, &state.usage.report(tenant))
}
