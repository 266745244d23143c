//! One simulated user: its variables, cookies and connection, and how it makes one
//! request (render, send, read, judge, extract, record).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http::Request as HttpRequest;
use http_body_util::Full;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::checks::{self, Body};
use crate::client::{self, ClientError, Conn, CookieJar, ReadBody, Target};
use crate::metrics::Recorder;
use crate::scenario::template::Vars;
use crate::scenario::{BodyTemplate, Request, Scenario, Task};

/// A request budget (`--max-requests`): exactly `limit` requests are sent.
#[derive(Debug)]
pub struct Budget {
    issued: AtomicU64,
    limit: u64,
}

impl Budget {
    /// A budget of `limit` requests.
    pub fn new(limit: u64) -> Self {
        Self {
            issued: AtomicU64::new(0),
            limit,
        }
    }

    /// Takes one request from the budget; false when it is spent.
    fn take(&self) -> bool {
        self.issued.fetch_add(1, Relaxed) < self.limit
    }
}

/// What every user of a run shares.
#[derive(Debug)]
pub struct Shared {
    /// The scenario.
    pub scenario: Arc<Scenario>,
    /// The target.
    pub target: Target,
    /// Its resolved address.
    pub addr: SocketAddr,
    /// Where measurements go.
    pub recorder: Recorder,
    /// Default per-request timeout.
    pub timeout: Duration,
    /// Default of the most response-body bytes kept for checks (`--max-body-size`).
    pub max_body: u64,
    /// The request budget, if any.
    pub budget: Option<Budget>,
}

/// Stop levels of a user's stop signal.
pub mod stop {
    /// Keep going.
    pub const RUN: u8 = 0;
    /// Stop after the current task (scale-down, and the end of the run: requests in flight
    /// get the stop timeout to finish).
    pub const SOFT: u8 = 1;
    /// Stop now: the stop timeout ran out; a request still in flight is recorded as a
    /// timeout failure and abandoned.
    pub const HARD: u8 = 2;
}

/// How a request or task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Success.
    Ok,
    /// Recorded as a failure.
    Failed,
    /// Not sent, or cut off (and recorded as a failure) by the hard stop: the run is over
    /// or the budget is spent.
    Stopped,
}

/// One simulated user.
#[derive(Debug)]
pub struct User {
    /// Index of its class.
    pub class: usize,
    vars: Vars,
    jar: CookieJar,
    conn: Conn,
}

impl User {
    /// User number `index` of class `class`, with its `vars` rendered.
    pub fn new(scenario: &Scenario, class: usize, index: u64) -> Self {
        let mut vars = Vars::for_user(index);
        if let Some(c) = scenario.classes.get(class) {
            for (name, t) in &c.vars {
                let v = t.render(&vars);
                vars.set(name, v);
            }
        }
        Self {
            class,
            vars,
            jar: CookieJar::default(),
            conn: Conn::default(),
        }
    }

    /// Runs `on_start` (or `on_stop`) requests in order; stops at the first failure.
    pub async fn lifecycle(
        &mut self,
        shared: &Shared,
        on_start: bool,
        stop: &mut watch::Receiver<u8>,
    ) -> Outcome {
        let scenario = Arc::clone(&shared.scenario);
        let Some(class) = scenario.classes.get(self.class) else {
            return Outcome::Stopped;
        };
        let requests = if on_start {
            &class.on_start
        } else {
            &class.on_stop
        };
        for req in requests {
            let out = self.exec(shared, req, None, stop).await;
            if out != Outcome::Ok {
                if out == Outcome::Failed {
                    let what = if on_start { "on_start" } else { "on_stop" };
                    shared.recorder.exception(&format!(
                        "{} {what}: {} {} failed; the user retries",
                        class.name, req.method, req.name
                    ));
                }
                return out;
            }
        }
        Outcome::Ok
    }

    /// Runs one task; the first request's latency counts from `intended` when given (the
    /// open model's scheduled start).
    pub async fn task(
        &mut self,
        shared: &Shared,
        task: &Task,
        intended: Option<Instant>,
        stop: &mut watch::Receiver<u8>,
    ) -> Outcome {
        // As a Locust task does, a sequence goes on after a failed request (a
        // 429 or a failed check is recorded, and the next step is sent),
        // except when the failed step was to extract values: the steps after
        // it would be sent with them missing, as a Python task stops on the
        // `KeyError` of a failed response's `.json()["token"]`.
        let mut intended = intended;
        let mut outcome = Outcome::Ok;
        for req in &task.steps {
            match self.exec(shared, req, intended.take(), stop).await {
                Outcome::Ok => {}
                Outcome::Failed if req.extract.is_empty() => outcome = Outcome::Failed,
                other => return other,
            }
        }
        outcome
    }

    fn build(&self, shared: &Shared, req: &Request) -> Result<HttpRequest<Full<Bytes>>, String> {
        let class = shared.scenario.classes.get(self.class);
        let mut path = String::with_capacity(shared.target.base_path.len() + 32);
        path.push_str(&shared.target.base_path);
        req.path.render_into(&self.vars, &mut path);
        let (body, json) = match &req.body {
            BodyTemplate::Empty => (Bytes::new(), false),
            BodyTemplate::Text(t) => (Bytes::from(t.render(&self.vars)), false),
            BodyTemplate::Json(j) => (
                Bytes::from(serde_json::to_vec(&j.render(&self.vars)).unwrap_or_default()),
                true,
            ),
            BodyTemplate::Payload(p) => (p.clone(), false),
        };
        let mut http_req = HttpRequest::builder()
            .method(req.method.clone())
            .uri(&path)
            .body(Full::new(body))
            .map_err(|e| format!("bad request {path:?}: {e}"))?;
        let headers = http_req.headers_mut();
        headers.insert(HOST, shared.target.authority.clone());
        if json {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let class_headers = class.map(|c| c.headers.as_slice()).unwrap_or_default();
        for (name, t) in class_headers.iter().chain(&req.headers) {
            let v = t.render(&self.vars);
            let v = HeaderValue::from_str(&v)
                .map_err(|_| format!("header {name}: invalid value {v:?}"))?;
            headers.insert(name.clone(), v);
        }
        if class.is_some_and(|c| c.cookies) {
            self.jar.apply(headers);
        }
        Ok(http_req)
    }

    /// Sends one request and records it. The hard stop (the stop timeout ran out) cuts a
    /// request in flight off and records it as a timeout failure whose latency is the time
    /// it had taken, so a stuck user shows in every count, histogram and threshold.
    async fn exec(
        &mut self,
        shared: &Shared,
        req: &Request,
        intended: Option<Instant>,
        stop: &mut watch::Receiver<u8>,
    ) -> Outcome {
        if *stop.borrow() >= stop::HARD {
            return Outcome::Stopped;
        }
        if shared.budget.as_ref().is_some_and(|b| !b.take()) {
            return Outcome::Stopped;
        }
        let http_req = match self.build(shared, req) {
            Ok(r) => r,
            Err(e) => {
                shared.recorder.exception(&e);
                shared
                    .recorder
                    .record(req.stat, Duration::ZERO, 0, req.checks.len(), Some(&e));
                return Outcome::Failed;
            }
        };
        let keep_alive = shared
            .scenario
            .classes
            .get(self.class)
            .is_none_or(|c| c.keep_alive);
        let start = intended.unwrap_or_else(Instant::now);
        let timeout = req.timeout.unwrap_or(shared.timeout);
        let max_body = req.max_body.unwrap_or(shared.max_body);
        let call = self.call(
            shared.addr,
            shared.target.tls.as_deref(),
            req,
            http_req,
            keep_alive,
            max_body,
        );
        let res = tokio::select! {
            r = tokio::time::timeout(timeout, call) => Some(r),
            Ok(_) = stop.wait_for(|s| *s >= stop::HARD) => None,
        };
        let Some(res) = res else {
            self.conn.close();
            shared
                .recorder
                .record_stopped(req.stat, start.elapsed(), req.checks.len());
            return Outcome::Stopped;
        };
        let elapsed = start.elapsed();
        let res = res.unwrap_or(Err(ClientError::Timeout(timeout)));
        let (verdict, bytes, status) = match res {
            Err(e) => {
                self.conn.close();
                (Err(e.to_string()), 0, None)
            }
            Ok((status, headers, read)) => {
                let ReadBody {
                    bytes,
                    kept: raw,
                    over_limit,
                } = read;
                if shared
                    .scenario
                    .classes
                    .get(self.class)
                    .is_some_and(|c| c.cookies)
                {
                    self.jar.store(&headers);
                }
                let mut body = Body::new(&raw);
                let mut verdict = if over_limit {
                    Err(format!(
                        "check failed: response body over the {} kept for checks (max_body_size); not read further",
                        client::format_size(max_body)
                    ))
                } else {
                    checks::judge(status, elapsed, &mut body, &req.expect, &req.checks)
                };
                if verdict.is_ok() {
                    for (var, path) in &req.extract {
                        match checks::extract(&mut body, path) {
                            Some(v) => self.vars.set(var, v),
                            None => {
                                verdict = Err(format!(
                                    "extract failed: {} not in the response",
                                    path.source()
                                ));
                                break;
                            }
                        }
                    }
                }
                (verdict, bytes, Some(status))
            }
        };
        let error = verdict.err();
        shared.recorder.record_response(
            req.stat,
            status,
            elapsed,
            bytes,
            req.checks.len(),
            error.as_deref(),
        );
        if error.is_some() {
            Outcome::Failed
        } else {
            Outcome::Ok
        }
    }

    /// The network part: status, headers, body size and (when needed) the body, at most
    /// `max_body` bytes of it (past that the connection is closed, the rest never read).
    async fn call(
        &mut self,
        addr: SocketAddr,
        tls: Option<&client::Tls>,
        req: &Request,
        http_req: HttpRequest<Full<Bytes>>,
        keep_alive: bool,
        max_body: u64,
    ) -> Result<(u16, http::HeaderMap, ReadBody), ClientError> {
        if req.websocket {
            let status = client::websocket_handshake(addr, tls, http_req).await?;
            return Ok((status, http::HeaderMap::new(), ReadBody::default()));
        }
        let fresh = req.new_connection || !keep_alive;
        if fresh {
            self.conn.close();
        }
        let res = self.conn.send(addr, tls, http_req).await?;
        let (parts, body) = res.into_parts();
        let read = client::read_body(body, req.needs_body(), max_body).await?;
        if fresh || read.over_limit {
            self.conn.close();
        }
        Ok((parts.status.as_u16(), parts.headers, read))
    }
}
