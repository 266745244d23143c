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
use crate::client::{self, ClientError, Conn, CookieJar, Target};
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
    /// The request budget, if any.
    pub budget: Option<Budget>,
}

/// Stop levels of a user's stop signal.
pub mod stop {
    /// Keep going.
    pub const RUN: u8 = 0;
    /// Stop after the current task (scale-down).
    pub const SOFT: u8 = 1;
    /// Stop now: abandon the request in flight (end of the run).
    pub const HARD: u8 = 2;
}

/// How a request or task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Success.
    Ok,
    /// Recorded as a failure.
    Failed,
    /// Not sent or abandoned: the run is over or the budget is spent.
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
            let out = self.exec(shared, req, None, stop, on_start).await;
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
        let mut intended = intended;
        for req in &task.steps {
            match self.exec(shared, req, intended.take(), stop, true).await {
                Outcome::Ok => {}
                other => return other,
            }
        }
        Outcome::Ok
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

    /// Sends one request and records it. `abortable`: a hard stop abandons it unrecorded.
    async fn exec(
        &mut self,
        shared: &Shared,
        req: &Request,
        intended: Option<Instant>,
        stop: &mut watch::Receiver<u8>,
        abortable: bool,
    ) -> Outcome {
        if abortable && *stop.borrow() >= stop::HARD {
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
        let call = self.call(shared.addr, req, http_req, keep_alive);
        let res = if abortable {
            tokio::select! {
                r = tokio::time::timeout(timeout, call) => r,
                _ = stop.wait_for(|s| *s >= stop::HARD) => return Outcome::Stopped,
            }
        } else {
            tokio::time::timeout(timeout, call).await
        };
        let elapsed = start.elapsed();
        let res = res.unwrap_or(Err(ClientError::Timeout(timeout)));
        let (verdict, bytes) = match res {
            Err(e) => {
                self.conn.close();
                (Err(e.to_string()), 0)
            }
            Ok((status, headers, bytes, raw)) => {
                if shared
                    .scenario
                    .classes
                    .get(self.class)
                    .is_some_and(|c| c.cookies)
                {
                    self.jar.store(&headers);
                }
                let mut body = Body::new(&raw);
                let mut verdict =
                    checks::judge(status, elapsed, &mut body, &req.expect, &req.checks);
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
                (verdict, bytes)
            }
        };
        let error = verdict.err();
        shared
            .recorder
            .record(req.stat, elapsed, bytes, req.checks.len(), error.as_deref());
        if error.is_some() {
            Outcome::Failed
        } else {
            Outcome::Ok
        }
    }

    /// The network part: status, headers, body size and (when needed) the body.
    async fn call(
        &mut self,
        addr: SocketAddr,
        req: &Request,
        http_req: HttpRequest<Full<Bytes>>,
        keep_alive: bool,
    ) -> Result<(u16, http::HeaderMap, u64, Vec<u8>), ClientError> {
        if req.websocket {
            let status = client::websocket_handshake(addr, http_req).await?;
            return Ok((status, http::HeaderMap::new(), 0, Vec::new()));
        }
        let fresh = req.new_connection || !keep_alive;
        if fresh {
            self.conn.close();
        }
        let res = self.conn.send(addr, http_req).await?;
        let (parts, body) = res.into_parts();
        let (n, raw) = client::read_body(body, req.needs_body()).await?;
        if fresh {
            self.conn.close();
        }
        Ok((parts.status.as_u16(), parts.headers, n, raw))
    }
}
