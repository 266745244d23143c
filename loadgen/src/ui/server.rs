//! The UI's HTTP endpoints on loadgen's own listener:
//!
//! | method, path | what |
//! |---|---|
//! | `GET /` | the page, with this process's token |
//! | `GET /api/state` | the session's view ([`Session::view`]) as JSON |
//! | `POST /api/start` | start a run ([`super::control::StartForm`] as JSON) |
//! | `POST /api/change` | change the user count or arrival rate ([`super::control::ChangeForm`]) |
//! | `POST /api/stop` | stop the run |
//! | `GET /download/FILE` | a report file of the last finished run |
//!
//! CSRF and DNS rebinding: on a loopback listener every request's `Host` must be the
//! listener's own (`127.0.0.1:PORT`, `localhost:PORT`, `[::1]:PORT`), so a page of another
//! site that rebinds its name to 127.0.0.1 gets 421 and never reads the token; every `POST`
//! must carry the token in `X-Loadgen-Token` (a custom header: a cross-site form cannot
//! set it and a cross-site `fetch` needs a CORS preflight, which is never granted) and, when
//! it has an `Origin`, one naming the same host.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::control::Session;

/// Most bytes of a request body.
const MAX_BODY: usize = 16 * 1024;
/// The token header.
pub const TOKEN_HEADER: &str = "x-loadgen-token";

/// Who may talk to the UI.
#[derive(Debug)]
struct Guard {
    token: String,
    /// `Host` values accepted; `None`: any (a listener on a non-loopback address).
    hosts: Option<Vec<String>>,
}

/// 128 random bits, hex: from the OS, or (without `/dev/urandom`) from the clock and pid.
fn new_token() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !from_os {
        fastrand::seed(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()),
        );
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Guard {
    fn new(addr: SocketAddr) -> Self {
        let port = addr.port();
        let hosts = addr.ip().is_loopback().then(|| {
            vec![
                addr.to_string(),
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("[::1]:{port}"),
            ]
        });
        Self {
            token: new_token(),
            hosts,
        }
    }

    /// Why `req` is refused, or `None`.
    fn refuse<B>(&self, req: &Request<B>) -> Option<(StatusCode, &'static str)> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if let Some(hosts) = &self.hosts {
            if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
                return Some((StatusCode::MISDIRECTED_REQUEST, "unexpected Host"));
            }
        }
        if req.method() == Method::POST {
            let token = req
                .headers()
                .get(TOKEN_HEADER)
                .and_then(|t| t.to_str().ok())
                .unwrap_or_default();
            if token != self.token {
                return Some((StatusCode::FORBIDDEN, "missing or wrong X-Loadgen-Token"));
            }
            if let Some(origin) = req.headers().get(header::ORIGIN) {
                let expected = format!("http://{host}");
                if origin.to_str().ok() != Some(expected.as_str()) {
                    return Some((StatusCode::FORBIDDEN, "cross-origin request"));
                }
            }
        }
        None
    }
}

fn respond(status: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    let h = res.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(kind) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    res
}

fn json_error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        "application/json",
        serde_json::json!({ "error": msg }).to_string(),
    )
}

/// Reads a JSON body (bounded) into `T`.
async fn form<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, String> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    if body.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_str("{}").map_err(|e| e.to_string());
    }
    serde_json::from_slice(&body).map_err(|e| format!("bad JSON: {e}"))
}

fn done(r: Result<(), String>) -> Response<Full<Bytes>> {
    match r {
        Ok(()) => respond(StatusCode::OK, "application/json", "{\"ok\":true}"),
        Err(e) => json_error(StatusCode::CONFLICT, &e),
    }
}

async fn handle(
    session: Arc<Session>,
    guard: Arc<Guard>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if let Some((status, why)) = guard.refuse(&req) {
        return json_error(status, why);
    }
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/") => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            super::page::render(&guard.token, session.scenario_name()),
        ),
        (Method::GET, "/api/state") => respond(
            StatusCode::OK,
            "application/json",
            session.view().to_string(),
        ),
        (Method::POST, "/api/start") => match form(req).await {
            Ok(f) => done(session.start(&f)),
            Err(e) => json_error(StatusCode::BAD_REQUEST, &e),
        },
        (Method::POST, "/api/change") => match form(req).await {
            Ok(f) => done(session.change(&f)),
            Err(e) => json_error(StatusCode::BAD_REQUEST, &e),
        },
        (Method::POST, "/api/stop") => done(session.stop()),
        (Method::GET, p) if p.starts_with("/download/") => {
            let name = p.trim_start_matches("/download/");
            match session.download(name) {
                Some(bytes) => {
                    let kind = if name.ends_with(".csv") {
                        "text/csv; charset=utf-8"
                    } else if name.ends_with(".html") {
                        "text/html; charset=utf-8"
                    } else {
                        "application/json"
                    };
                    let mut res = respond(StatusCode::OK, kind, bytes);
                    if let Ok(v) =
                        header::HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
                    {
                        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
                    }
                    res
                }
                None => json_error(StatusCode::NOT_FOUND, "no such report (has a run ended?)"),
            }
        }
        (_, "/" | "/api/state" | "/api/start" | "/api/change" | "/api/stop") => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => json_error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serves the UI on `listener` until the future is dropped.
pub async fn serve(listener: TcpListener, session: Arc<Session>) {
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: the UI listener has no address: {e}");
            return;
        }
    };
    let guard = Arc::new(Guard::new(addr));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a UI connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (session, guard) = (Arc::clone(&session), Arc::clone(&guard));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (session, guard) = (Arc::clone(&session), Arc::clone(&guard));
                async move { Ok::<_, Infallible>(handle(session, guard, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(method: Method, host: &str, token: Option<&str>, origin: Option<&str>) -> Request<()> {
        let mut b = Request::builder()
            .method(method)
            .uri("/api/stop")
            .header("host", host);
        if let Some(t) = token {
            b = b.header(TOKEN_HEADER, t);
        }
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_guard_wants_the_listener_host_and_the_token_on_posts() {
        let g = Guard::new("127.0.0.1:8089".parse().unwrap());
        let t = g.token.clone();
        assert_eq!(t.len(), 32);
        assert!(g
            .refuse(&req(Method::GET, "127.0.0.1:8089", None, None))
            .is_none());
        assert!(g
            .refuse(&req(Method::GET, "localhost:8089", None, None))
            .is_none());
        let rebound = g.refuse(&req(Method::GET, "evil.example:8089", None, None));
        assert_eq!(rebound.map(|r| r.0), Some(StatusCode::MISDIRECTED_REQUEST));
        let no_token = g.refuse(&req(Method::POST, "127.0.0.1:8089", None, None));
        assert_eq!(no_token.map(|r| r.0), Some(StatusCode::FORBIDDEN));
        let wrong = g.refuse(&req(Method::POST, "127.0.0.1:8089", Some("00"), None));
        assert_eq!(wrong.map(|r| r.0), Some(StatusCode::FORBIDDEN));
        assert!(g
            .refuse(&req(
                Method::POST,
                "127.0.0.1:8089",
                Some(&t),
                Some("http://127.0.0.1:8089")
            ))
            .is_none());
        let cross = g.refuse(&req(
            Method::POST,
            "127.0.0.1:8089",
            Some(&t),
            Some("http://evil.example"),
        ));
        assert_eq!(cross.map(|r| r.0), Some(StatusCode::FORBIDDEN));
    }
}
