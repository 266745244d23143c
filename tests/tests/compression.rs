//! Response compression through the real gateway: real `curl --compressed`
//! decodes gzip, br and zstd; the content-type allow-list, `min_size`,
//! `no-transform`, already-coded bodies, HEAD and 304 are left alone; the
//! cache keeps one variant per negotiated coding; a streamed response
//! reaches the client, decodable, while the upstream is still stalled.
//!
//! The upstream is a small hyper server here, answering what the query
//! asks for: `ct` content type, `len` body bytes (`?` is a printable
//! pattern), `ce` Content-Encoding, `cc` Cache-Control, `etag` (then
//! `If-None-Match` with it gives 304), `chunked=1` (no Content-Length).
//! `/stream` sends one SSE event, then waits for the test to let it send
//! the second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use e2e::harness::{self, client, config, send, start_gateway, Got, TestClient, WAIT};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

/// The upstream: counts requests, and holds `/stream`'s second event until
/// `release` is notified.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    release: Arc<Notify>,
}

/// `len` bytes of JSON-ish text that compresses well but not trivially.
fn text(len: usize) -> String {
    let mut s = String::with_capacity(len + 64);
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item {}\"}},",
            i * 7919 % 1000
        ));
        i += 1;
    }
    s.truncate(len);
    s
}

async fn upstream() -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (h, r) = (hits.clone(), release.clone());
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (h, r) = (h.clone(), r.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let r = r.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&req, r)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        hits,
        release,
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn answer(req: &Request<hyper::body::Incoming>, release: Arc<Notify>) -> Response<UpBody> {
    if req.uri().path() == "/stream" {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(2);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
                .await;
            release.notified().await;
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: second\n\n"))))
                .await;
        });
        let mut rx = rx;
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        return Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
    }
    let q: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%20", " ").replace("%2B", "+")))
        .collect();
    let len: usize = q.get("len").and_then(|l| l.parse().ok()).unwrap_or(4096);
    let mut b = Response::builder();
    if let Some(etag) = q.get("etag") {
        let etag = format!("\"{etag}\"");
        let inm = req
            .headers()
            .get("if-none-match")
            .and_then(|v| v.to_str().ok());
        if inm.is_some_and(|v| v.trim_start_matches("W/") == etag) {
            return Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header("etag", etag)
                .body(BodyExt::boxed(Full::default()))
                .unwrap();
        }
        b = b.header("etag", etag);
    }
    for (k, h) in [
        ("ct", "content-type"),
        ("ce", "content-encoding"),
        ("cc", "cache-control"),
    ] {
        if let Some(v) = q.get(k) {
            b = b.header(h, v.as_str());
        }
    }
    let body = Bytes::from(text(len));
    if q.get("chunked").is_some_and(|v| v == "1") {
        let stream = futures_util::stream::iter(
            body.chunks(1000)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect::<Vec<_>>(),
        );
        return b.body(BodyExt::boxed(StreamBody::new(stream))).unwrap();
    }
    b.body(BodyExt::boxed(Full::new(body))).unwrap()
}

const COMPRESSION: &str =
    r#"compression = { algorithms = ["zstd", "br", "gzip"], min_size = "1KiB" }"#;

async fn gateway(up: &Upstream, route_extra: &str) -> gateway::Handle {
    harness::init_logs();
    start_gateway(config(
        "",
        &format!(
            r#"
            [cache]
            max_size = "4MiB"
            [upstreams.up]
            endpoints = ["{}"]
            [[routes]]
            name = "zipped"
            prefix = "/"
            upstream = "up"
            {COMPRESSION}
            {route_extra}
            "#,
            up.addr
        ),
    ))
    .await
}

async fn get(
    c: &TestClient,
    gw: &gateway::Handle,
    method: &str,
    path: &str,
    h: &[(&str, &str)],
) -> Got {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.proxy_addr));
    for (k, v) in h {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::default()).unwrap()).await
}

/// What curl got: its dumped headers (lowercase names) and the decoded
/// body.
struct Curl {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Curl {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn curl_bin() -> PathBuf {
    harness::tool("curl", "curl")
}

/// `curl --compressed` (it decodes whatever coding comes back), with
/// `Accept-Encoding: ae` instead of curl's own list when given.
fn curl(gw: &gateway::Handle, path: &str, ae: Option<&str>) -> Curl {
    curl_with(gw, path, ae, &[])
}

/// [`curl`] with more arguments.
fn curl_with(gw: &gateway::Handle, path: &str, ae: Option<&str>, args: &[&str]) -> Curl {
    let dir = harness::temp_dir("compression-curl");
    let headers_file = dir.join("headers");
    let mut cmd = Command::new(curl_bin());
    cmd.args(args);
    cmd.args(["-sS", "--compressed", "--max-time", "20", "-D"])
        .arg(&headers_file);
    if let Some(ae) = ae {
        cmd.arg("-H").arg(format!("Accept-Encoding: {ae}"));
    }
    let out = cmd
        .arg(format!("http://{}{path}", gw.proxy_addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let headers = std::fs::read_to_string(&headers_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let _ = std::fs::remove_dir_all(dir);
    Curl {
        headers,
        body: out.stdout,
    }
}

#[test]
fn curl_decodes_every_coding() {
    let out = Command::new(curl_bin()).arg("-V").output().unwrap();
    let features = String::from_utf8_lossy(&out.stdout).to_lowercase();
    for f in ["libz", "brotli", "zstd"] {
        assert!(features.contains(f), "this curl lacks {f}: {features}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_curl_gets_each_coding_decodes_it_and_it_is_smaller() {
    let up = upstream().await;
    let gw = gateway(&up, "").await;
    let path = "/doc?ct=application/json&len=65536&etag=v1";
    let identity = text(65536).into_bytes();
    // curl's own list (deflate, gzip, br, zstd): the server's first, zstd.
    let r = tokio::task::block_in_place(|| curl(&gw, path, None));
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    assert_eq!(r.body, identity);
    // The same over HTTP/2 (h2c; with prior knowledge curl fails rather
    // than fall back to HTTP/1.1).
    let r = tokio::task::block_in_place(|| {
        curl_with(&gw, path, Some("br"), &["--http2-prior-knowledge"])
    });
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(r.body, identity);
    for (ae, want) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br", "br"),
        ("gzip;q=1, br;q=0.5", "gzip"),
        ("br;q=0, gzip;q=0, zstd;q=0", "identity"),
    ] {
        let r = tokio::task::block_in_place(|| curl(&gw, path, Some(ae)));
        assert_eq!(
            r.header("content-encoding").unwrap_or("identity"),
            want,
            "{ae}"
        );
        assert_eq!(r.body, identity, "{ae}: decoded body");
        assert!(
            r.header("vary")
                .unwrap()
                .to_lowercase()
                .contains("accept-encoding"),
            "{ae}"
        );
        if want == "identity" {
            assert_eq!(r.header("etag"), Some("\"v1\""));
            assert_eq!(r.header("content-length"), Some("65536"));
        } else {
            assert_eq!(r.header("etag"), Some("W/\"v1\""), "{ae}");
            assert_eq!(r.header("content-length"), None, "{ae}");
        }
    }
    // On the wire: much smaller than the identity body.
    let c = client();
    for ae in ["gzip", "br", "zstd"] {
        let got = get(&c, &gw, "GET", path, &[("accept-encoding", ae)]).await;
        assert_eq!(got.header("content-encoding"), ae);
        assert!(
            got.body.len() * 4 < identity.len(),
            "{ae}: {} bytes",
            got.body.len()
        );
        // The figure, for `--nocapture` readers.
        eprintln!("{ae}: {} -> {} bytes", identity.len(), got.body.len());
    }
    // A chunked (unknown length) upstream body is compressed too.
    let r = tokio::task::block_in_place(|| {
        curl(&gw, "/c?ct=text/plain&len=20000&chunked=1", Some("gzip"))
    });
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.body, text(20000).into_bytes());
    // Counted by route and coding.
    let m = harness::metrics_text(&c, gw.admin_addr).await;
    for (enc, at_least) in [("zstd", 2.0), ("gzip", 3.0), ("br", 2.0)] {
        let n = harness::sample(
            &m,
            &format!("gateway_compressed_responses_total{{route=\"zipped\",encoding=\"{enc}\"}}"),
        )
        .unwrap_or(0.0);
        assert!(n >= at_least, "{enc}: {n}\n{m}");
    }
    let bytes = |dir: &str| {
        harness::sample(
            &m,
            &format!(
                "gateway_compression_bytes_total{{route=\"zipped\",encoding=\"br\",direction=\"{dir}\"}}"
            ),
        )
        .unwrap()
    };
    assert!(
        bytes("out") * 4.0 < bytes("in"),
        "in {} out {}",
        bytes("in"),
        bytes("out")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_alone_what_must_not_be_compressed() {
    let up = upstream().await;
    let gw = gateway(&up, "").await;
    let c = client();
    let br = [("accept-encoding", "br, gzip, zstd")];
    // (path, method, Vary: Accept-Encoding expected)
    for (path, method, vary) in [
        // Not on the allow-list.
        ("/a?ct=image/png&len=5000", "GET", false),
        ("/a?len=5000", "GET", false),
        // Under min_size (1 KiB).
        ("/a?ct=application/json&len=1023", "GET", false),
        // no-transform.
        (
            "/a?ct=application/json&len=5000&cc=public,%20no-transform",
            "GET",
            false,
        ),
        // Already coded by the upstream: passed through untouched.
        ("/a?ct=application/json&len=5000&ce=gzip", "GET", false),
        // HEAD: the head as the upstream sent it (plus Vary).
        ("/a?ct=application/json&len=5000", "HEAD", true),
    ] {
        let got = get(&c, &gw, method, path, &br).await;
        assert_eq!(got.status(), 200, "{path}");
        let ce = got.header("content-encoding");
        if path.contains("ce=gzip") {
            assert_eq!(ce, "gzip", "{path}");
            assert_eq!(got.body, text(5000).as_bytes(), "{path}: untouched");
            assert_eq!(got.header("content-length"), "5000");
        } else {
            assert_eq!(ce, "", "{path} {method}");
        }
        assert_eq!(
            got.header("vary").contains("accept-encoding"),
            vary,
            "{path} {method}"
        );
        if method == "GET" && !path.contains("ce=") {
            let len: usize = path
                .split("len=")
                .nth(1)
                .unwrap()
                .split('&')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(got.body, text(len).as_bytes(), "{path}");
        }
    }
    // 304 to a conditional request with the weak ETag of a compressed
    // response: passed through, no body, nothing coded.
    let path = "/e?ct=text/html&len=5000&etag=x7";
    let first = get(&c, &gw, "GET", path, &br).await;
    assert_eq!(first.header("etag"), "W/\"x7\"");
    let again = get(
        &c,
        &gw,
        "GET",
        path,
        &[br[0], ("if-none-match", "W/\"x7\"")],
    )
    .await;
    assert_eq!(again.status(), 304);
    assert_eq!(again.header("content-encoding"), "");
    assert!(again.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_keeps_one_variant_per_negotiated_coding() {
    let up = upstream().await;
    let gw = gateway(&up, r#"cache = { ttl = "60s", max_body = "1MiB" }"#).await;
    let c = client();
    let path = "/v?ct=application/json&len=65536";
    let identity = text(65536).into_bytes();
    let status = |g: &Got| g.header("cache-status").to_owned();
    // (Accept-Encoding, coding served, hit expected)
    for (ae, coding, hit) in [
        (Some("gzip"), "gzip", false),
        (Some("gzip"), "gzip", true),
        (Some("br"), "br", false),
        // Raw headers differ, the negotiated coding is the same: one entry.
        (Some("gzip, deflate, br"), "br", true),
        (Some("br;q=1, gzip"), "br", true),
        (None, "", false),
        (None, "", true),
        (Some("identity"), "", true),
    ] {
        let h: Vec<(&str, &str)> = ae.map(|a| ("accept-encoding", a)).into_iter().collect();
        let got = get(&c, &gw, "GET", path, &h).await;
        assert_eq!(got.header("content-encoding"), coding, "{ae:?}");
        let st = status(&got);
        assert_eq!(st.starts_with("gateway; hit"), hit, "{ae:?}: {st}");
        assert!(got.header("vary").contains("accept-encoding"), "{ae:?}");
        if coding.is_empty() {
            assert_eq!(got.body, identity, "{ae:?}");
        } else {
            assert!(got.body.len() * 4 < identity.len(), "{ae:?}");
        }
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 3, "gzip, br, identity");
    // A real client decodes what the cache serves.
    let r = tokio::task::block_in_place(|| curl(&gw, path, Some("br")));
    assert!(r
        .header("cache-status")
        .unwrap()
        .starts_with("gateway; hit"));
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(r.body, identity);
    // The store holds the coded bytes: three variants weigh little more
    // than the one identity copy.
    let ready = harness::get(&c, gw.admin_addr, "/ready").await.json();
    assert_eq!(ready["cache"]["entries"], 3, "{ready}");
    let bytes = ready["cache"]["bytes"].as_u64().unwrap();
    assert!(bytes < 65536 + 16 * 1024, "{bytes} bytes stored");
    // An unsafe request invalidates every variant.
    let post = get(&c, &gw, "POST", path, &[]).await;
    assert_eq!(post.status(), 200);
    let ready = harness::get(&c, gw.admin_addr, "/ready").await.json();
    assert_eq!(ready["cache"]["entries"], 0, "{ready}");
}

/// The upstream sends one event and stalls: curl prints the first event,
/// decoded, before the upstream sends anything more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_response_arrives_progressively() {
    let up = upstream().await;
    let gw = gateway(&up, "").await;
    for ae in ["gzip", "br", "zstd"] {
        let dir = harness::temp_dir("compression-stream");
        let headers_file = dir.join("headers");
        let mut child = Command::new(curl_bin())
            .args(["-sS", "-N", "--compressed", "--max-time", "30", "-H"])
            .arg(format!("Accept-Encoding: {ae}"))
            .arg("-D")
            .arg(&headers_file)
            .arg(format!("http://{}/stream", gw.proxy_addr))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, async {
            while !got.ends_with(b"data: first\n\n") {
                got.extend(rx.recv().await.expect("curl printed the first event"));
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("{ae}: first event not received while the upstream stalls: {got:?}")
        });
        // The upstream has not sent the second event: curl has only the first.
        assert_eq!(got, b"data: first\n\n", "{ae}");
        let headers = std::fs::read_to_string(&headers_file)
            .unwrap()
            .to_lowercase();
        assert!(
            headers.contains(&format!("content-encoding: {ae}")),
            "{ae}: {headers}"
        );
        up.release.notify_one();
        tokio::time::timeout(WAIT, async {
            while let Some(chunk) = rx.recv().await {
                got.extend(chunk);
            }
        })
        .await
        .expect("curl ends");
        assert_eq!(got, b"data: first\n\ndata: second\n\n", "{ae}");
        let status = tokio::task::block_in_place(|| child.wait()).unwrap();
        assert!(status.success(), "{ae}");
        reader.join().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Bad compression config is refused with the key path.
#[test]
fn bad_config_names_its_key() {
    let text = r#"
        [server]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        [upstreams.up]
        endpoints = ["127.0.0.1:9"]
        [[routes]]
        name = "z"
        prefix = "/"
        upstream = "up"
        compression = { algorithms = ["br", "br"], content_types = ["json"] }
    "#;
    let c = gateway::Config::from_toml(text).unwrap();
    let err = gateway::config::validate::validate(&c)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("routes[0].compression.algorithms[1]: duplicate coding"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].compression.content_types[0]: invalid media type"),
        "{err}"
    );
    let bad = text.replace(r#"["br", "br"]"#, r#"["deflate"]"#);
    let err = gateway::Config::from_toml(&bad).unwrap_err().to_string();
    assert!(
        err.contains("deflate") || err.contains("unknown variant"),
        "{err}"
    );
}
