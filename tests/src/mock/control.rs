//! The control endpoints under `/_mock` (the table is in the [module docs](super)).

use std::sync::atomic::Ordering::Relaxed;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::body::{self, json, read_json, MockBody};
use super::options::{Fault, LatencyRule, LatencyRuleSpec};
use super::state::State;

fn fault_json(fault: &Fault, now: Instant) -> Value {
    json!({
        "path_prefix": fault.path_prefix,
        "error_rate": fault.error_rate,
        "status": fault.status,
        "added_latency": humantime::format_duration(fault.added_latency).to_string(),
        "reset_rate": fault.reset_rate,
        "remaining": fault
            .until
            .map(|until| humantime::format_duration(until.saturating_duration_since(now)).to_string()),
    })
}

fn faults_json(state: &State) -> Value {
    let now = Instant::now();
    let faults: Vec<Value> = state
        .faults
        .list()
        .iter()
        .map(|f| fault_json(f, now))
        .collect();
    json!({ "faults": faults })
}

fn latency_json(state: &State) -> Value {
    let rules: Vec<Value> = state
        .latency
        .list()
        .iter()
        .map(|r| json!({ "path_prefix": r.path_prefix, "dist": r.dist.to_string() }))
        .collect();
    json!({ "latency": rules })
}

/// Answers one control request.
pub(crate) async fn handle(state: &State, req: Request<Incoming>) -> Response<MockBody> {
    let path = req.uri().path().trim_end_matches('/');
    let route = path.strip_prefix("/_mock").unwrap_or(path).to_owned();
    match (req.method().clone(), route.as_str()) {
        (Method::GET, "/faults") => json(StatusCode::OK, &faults_json(state)),
        (Method::POST, "/faults") => match read_json::<Fault>(req.into_body()).await {
            Ok(fault) => {
                state.faults.add(fault);
                json(StatusCode::CREATED, &faults_json(state))
            }
            Err(res) => res,
        },
        (Method::DELETE, "/faults") => {
            state.faults.clear();
            json(StatusCode::OK, &faults_json(state))
        }
        (Method::GET, "/latency") => json(StatusCode::OK, &latency_json(state)),
        (Method::POST, "/latency") => match read_json::<LatencyRuleSpec>(req.into_body()).await {
            Ok(spec) => match LatencyRule::try_from(spec) {
                Ok(rule) => {
                    state.latency.set(rule);
                    json(StatusCode::CREATED, &latency_json(state))
                }
                Err(e) => body::error(StatusCode::BAD_REQUEST, &e.to_string()),
            },
            Err(res) => res,
        },
        (Method::DELETE, "/latency") => {
            state.latency.clear();
            json(StatusCode::OK, &latency_json(state))
        }
        (Method::GET, "/stats") => json(
            StatusCode::OK,
            &json!({ "total": state.stats.total(), "paths": state.stats.snapshot() }),
        ),
        (Method::POST, "/reset") => {
            state.reset();
            json(StatusCode::OK, &json!({ "reset": true }))
        }
        (Method::POST, "/jwks/rotate") => {
            state.jwks_rotated.store(true, Relaxed);
            json(StatusCode::OK, &json!({ "rotated": true }))
        }
        (Method::DELETE, "/jwks/rotate") => {
            state.jwks_rotated.store(false, Relaxed);
            json(StatusCode::OK, &json!({ "rotated": false }))
        }
        _ => body::not_found(),
    }
}
