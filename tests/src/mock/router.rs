//! One request's way through the mock: control requests go to [`super::control`]; every
//! other request is counted, then meets the faults, then the latency rules, then the route
//! table below. Every response leaves with `x-upstream-id`.

use std::sync::Arc;

use http::header::HeaderName;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::{self, MockBody};
use super::state::State;
use super::{control, flagmeter, httpbin, meetings, meetinity, paracle, ws};

/// The header naming which mock answered.
pub const X_UPSTREAM_ID: HeaderName = HeaderName::from_static("x-upstream-id");

/// The most path segments a route has; longer paths are 404 without looking further.
const MAX_SEGMENTS: usize = 6;

/// The error that makes hyper drop the connection without answering (an injected reset).
#[derive(Debug, thiserror::Error)]
#[error("injected connection reset")]
pub(crate) struct InjectedReset;

fn is_control(path: &str) -> bool {
    path.strip_prefix("/_mock")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn is_websocket(path: &str) -> bool {
    path == "/ws"
        || path
            .strip_prefix("/api/meetings/")
            .and_then(|rest| rest.strip_suffix("/ws"))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// Answers one request, or fails it with [`InjectedReset`] so the connection is dropped.
pub(crate) async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, InjectedReset> {
    let start = Instant::now();
    let mut res = if is_control(req.uri().path()) {
        control::handle(&state, req).await
    } else {
        let path = req.uri().path();
        state.stats.record(path);
        match inject_faults(&state, path).await? {
            Some(res) => res,
            None => {
                if let Some(delay) = state.latency.sample(path) {
                    super::timer::sleep(delay).await;
                }
                if let Some(station) = &state.capacity {
                    station.serve().await;
                }
                route(&state, req, start).await
            }
        }
    };
    res.headers_mut()
        .insert(X_UPSTREAM_ID, state.upstream_id.clone());
    Ok(res)
}

/// Applies the faults matching `path` in the order they were added: each adds its latency,
/// then may reset the connection, then may answer with its error status.
async fn inject_faults(
    state: &State,
    path: &str,
) -> Result<Option<Response<MockBody>>, InjectedReset> {
    for fault in state.faults.matching(path) {
        if !fault.added_latency.is_zero() {
            super::timer::sleep(fault.added_latency).await;
        }
        if fault.reset_rate > 0.0 && fastrand::f64() < fault.reset_rate {
            return Err(InjectedReset);
        }
        if fault.error_rate > 0.0 && fastrand::f64() < fault.error_rate {
            let status = StatusCode::from_u16(fault.status)
                .ok()
                .filter(|s| !s.is_informational())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            return Ok(Some(body::json(
                status,
                &serde_json::json!({ "error": "injected fault", "status": status.as_u16() }),
            )));
        }
    }
    Ok(None)
}

/// Splits `/a/b/c/` into `["a", "b", "c"]`; `None` past [`MAX_SEGMENTS`].
fn segments<'a>(path: &'a str, buf: &mut [&'a str; MAX_SEGMENTS]) -> Option<usize> {
    let mut n = 0;
    for segment in path.trim_matches('/').split('/') {
        *buf.get_mut(n)? = segment;
        n += 1;
    }
    Some(n)
}

/// The route table. `HEAD` is routed as `GET` (hyper sends no body for it).
async fn route(state: &State, req: Request<Incoming>, start: Instant) -> Response<MockBody> {
    if is_websocket(req.uri().path()) {
        return if req.method() == Method::GET {
            ws::upgrade(state, req)
        } else {
            body::not_found()
        };
    }
    let (parts, body) = req.into_parts();
    let mut buf = [""; MAX_SEGMENTS];
    let Some(n) = segments(parts.uri.path(), &mut buf) else {
        return body::not_found();
    };
    let segs = buf.get(..n).unwrap_or_default();
    let method = if parts.method == Method::HEAD {
        "GET"
    } else {
        parts.method.as_str()
    };
    match (method, segs) {
        // Meetinity gateway upstreams (seeds 000, 001).
        ("GET", ["health"]) => meetinity::health(),
        ("GET", [".well-known", "jwks.json"]) => meetinity::jwks(state),
        ("GET", ["api", "hello"]) => meetinity::hello(&parts),
        ("POST" | "PUT", ["api", "echo"]) => meetinity::echo(&parts, body),
        ("GET", ["api", "users"]) => meetinity::list_users(state),
        ("POST", ["api", "users"]) => meetinity::create_user(state, body).await,
        ("GET", ["api", "users", id]) => meetinity::get_user(id),
        ("PUT" | "PATCH", ["api", "users", id]) => meetinity::update_user(id, body).await,
        ("GET" | "PUT" | "POST", ["api", "profile"]) => meetinity::profile(&parts, body).await,
        ("POST", ["api", "auth", "session"]) => meetinity::issue_token(state, body, "Bearer").await,

        // FlagMeter (seed 002).
        ("POST", ["api", "events"]) => flagmeter::post_event(state, body).await,
        ("GET", ["api", "usage", tenant]) => {
            flagmeter::get_usage(state, &super::query::decode(tenant, false))
        }

        // Paracle (seed 003).
        ("POST", ["api", "v1", "auth", "token"]) => {
            meetinity::issue_token(state, body, "bearer").await
        }
        ("GET", ["api", "v1", "agents"]) => paracle::list_agents(state),
        ("POST", ["api", "v1", "agents"]) => paracle::create_agent(state, body).await,
        ("POST", ["api", "v1", "agents", "run"]) => paracle::run_agent(state, body, start).await,
        ("GET", ["api", "v1", "agents", id]) => paracle::get_agent(state, id),
        ("GET", ["api", "v1", "workflows"]) => paracle::list_workflows(state),
        ("POST", ["api", "v1", "workflows", "run"]) => {
            paracle::run_workflow(state, body, start).await
        }

        // Meetings (seed 004).
        ("POST", ["api", "meetings"]) => meetings::create(state, body).await,
        ("GET", ["api", "meetings"]) => meetings::list(state, &parts),
        ("GET", ["api", "meetings", id]) => meetings::get(state, id),
        ("POST", ["api", "meetings", id, "join"]) => {
            meetings::join_or_leave(state, id, body, true).await
        }
        ("POST", ["api", "meetings", id, "leave"]) => {
            meetings::join_or_leave(state, id, body, false).await
        }
        ("POST", ["api", "meetings", id, "network-quality"]) => {
            meetings::network_quality(state, id, body).await
        }

        // httpbin-like test endpoints.
        ("GET", ["bytes", n]) => httpbin::bytes(n),
        ("GET" | "POST", ["delay", ms]) => httpbin::delay(ms, body).await,
        (_, ["status", code]) => httpbin::status(code, body).await,
        ("GET", ["headers"]) => httpbin::headers(&parts),
        ("POST" | "PUT", ["upload"]) => httpbin::upload(body).await,
        ("GET", ["cache", secs]) => httpbin::cache(state, secs),
        ("GET", ["response-headers"]) => httpbin::response_headers(&parts),

        _ => body::not_found(),
    }
}
