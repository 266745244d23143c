#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rustls::pki_types::PrivateKeyDer;

use super::*;

fn settings(ca_file: Option<PathBuf>) -> ClientSettings {
    ClientSettings {
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(10),
        max_body: 1000,
        ca_file,
    }
}

#[test]
fn https_anywhere_http_only_to_loopback() {
    for ok in [
        "https://idp.example.com/.well-known/jwks.json",
        "https://10.0.0.1:8443/keys",
        "http://127.0.0.1:4318/v1/traces",
        "http://127.8.9.10/x",
        "http://localhost:8080/jwks",
        "http://LOCALHOST/jwks",
        "http://[::1]:4318/v1/traces",
    ] {
        assert!(check_url(ok, JWKS_HTTPS_REASON).is_ok(), "{ok}");
    }
    let e = check_url("http://idp.example.com/jwks", JWKS_HTTPS_REASON).unwrap_err();
    assert_eq!(
        e,
        "http:// is only allowed to a loopback address; identity providers serve JWKS over https"
    );
    for bad in [
        "http://10.0.0.1/jwks",
        "http://[::ffff:10.0.0.1]/jwks",
        "http://localhost.evil.example/jwks",
        "http://127.0.0.1.nip.io/jwks",
    ] {
        assert!(
            check_url(bad, "")
                .unwrap_err()
                .starts_with("http:// is only"),
            "{bad}"
        );
    }
    assert!(check_url("ftp://idp/jwks", "")
        .unwrap_err()
        .contains("https://"));
    assert!(check_url("idp/jwks", "").is_err());
    assert!(check_url("https:///jwks", "").is_err());
    assert!(check_url("not a url", "")
        .unwrap_err()
        .contains("invalid URL"));
}

#[test]
fn a_ca_file_must_hold_a_pem_certificate() {
    let dir = std::env::temp_dir().join(format!("gw-client-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.pem");
    assert!(load_ca_file(&missing).unwrap_err().contains("cannot read"));
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "no pem here\n").unwrap();
    assert!(load_ca_file(&empty)
        .unwrap_err()
        .contains("no CERTIFICATE block"));
    let ca = Pki::new();
    let good = dir.join("ca.pem");
    std::fs::write(&good, &ca.ca_pem).unwrap();
    assert_eq!(load_ca_file(&good).unwrap().len(), 1);
    // A client refuses to build with a bad bundle, naming it.
    let e = ColdClient::new(&settings(Some(empty.clone()))).unwrap_err();
    assert!(e.contains("empty.pem"), "{e}");
}

/// A CA and a server certificate for `localhost` and `127.0.0.1`.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new() -> Self {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("gateway unit test CA {}", fastrand::u64(..)),
        );
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        Self {
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        }
    }

    fn ca_file(&self, tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "gw-client-{tag}-{}-{}.pem",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&p, &self.ca_pem).unwrap();
        p
    }
}

/// An HTTPS server (ALPN h2 and http/1.1) with a few test paths; counts
/// requests to `/target`.
struct Server {
    addr: SocketAddr,
    target_hits: Arc<AtomicU64>,
}

async fn https_server(pki: &Pki) -> Server {
    let certs = CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let target_hits = Arc::new(AtomicU64::new(0));
    let hits = target_hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, hits) = (acceptor.clone(), hits.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let hits = hits.clone();
                    async move { Ok::<_, Infallible>(answer(req.uri().path(), req.version(), &hits)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Server { addr, target_hits }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn answer(path: &str, version: http::Version, hits: &AtomicU64) -> Response<TestBody> {
    let full = |s: &'static [u8]| Full::new(Bytes::from_static(s)).boxed();
    match path {
        "/version" => Response::new(Full::new(Bytes::from(format!("{version:?}"))).boxed()),
        "/moved" => Response::builder()
            .status(302)
            .header("location", "/target")
            .body(full(b""))
            .unwrap(),
        "/target" => {
            hits.fetch_add(1, Ordering::Relaxed);
            Response::new(full(b"target"))
        }
        "/declared-big" => Response::new(Full::new(Bytes::from(vec![b'x'; 1001])).boxed()),
        // 4 x 300 bytes, no length declared: only counting catches it.
        "/streamed-big" => {
            let frames = (0..4).map(|_| Ok(Frame::data(Bytes::from(vec![b'y'; 300]))));
            Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        }
        "/stall" => {
            let never = futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
            Response::new(StreamBody::new(never).boxed())
        }
        _ => Response::new(full(b"hello")),
    }
}

#[tokio::test]
async fn trusts_the_configured_ca_speaks_h2_and_bounds_the_answer() {
    let pki = Pki::new();
    let server = https_server(&pki).await;
    let client = ColdClient::new(&settings(Some(pki.ca_file("ok")))).unwrap();
    let url =
        |p: &str| check_url(&format!("https://127.0.0.1:{}{p}", server.addr.port()), "").unwrap();

    let got = client.get(&url("/version")).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.body().as_ref(), b"HTTP/2.0", "ALPN chose h2");
    // By name too (the certificate names localhost).
    let by_name = check_url(&format!("https://localhost:{}/", server.addr.port()), "").unwrap();
    assert_eq!(
        client.get(&by_name).await.unwrap().body().as_ref(),
        b"hello"
    );

    // A redirect is an answer, not followed.
    let moved = client.get(&url("/moved")).await.unwrap();
    assert_eq!(moved.status(), 302);
    assert_eq!(server.target_hits.load(Ordering::Relaxed), 0);

    // The body cap counts bytes, declared or not.
    let e = client.get(&url("/declared-big")).await.unwrap_err();
    assert!(matches!(e, ClientError::TooLarge(1000)), "{e}");
    let e = client.get(&url("/streamed-big")).await.unwrap_err();
    assert!(matches!(e, ClientError::TooLarge(1000)), "{e}");
    // Under the cap: fine.
    assert_eq!(
        client.get(&url("/")).await.unwrap().body().as_ref(),
        b"hello"
    );
}

#[tokio::test]
async fn an_untrusted_certificate_fails_with_a_clear_message() {
    let pki = Pki::new();
    let server = https_server(&pki).await;
    // System roots only: the test CA is not among them.
    let client = ColdClient::new(&settings(None)).unwrap();
    let url = check_url(&format!("https://127.0.0.1:{}/", server.addr.port()), "").unwrap();
    let e = client.get(&url).await.unwrap_err().to_string();
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    assert!(e.contains("TLS verification failed"), "{e}");
    // Another CA does not help either.
    let other = Pki::new();
    let client = ColdClient::new(&settings(Some(other.ca_file("other")))).unwrap();
    let e = client.get(&url).await.unwrap_err().to_string();
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[tokio::test]
async fn the_total_timeout_bounds_a_stalled_answer_and_plain_http_must_stay_local() {
    let pki = Pki::new();
    let server = https_server(&pki).await;
    let mut s = settings(Some(pki.ca_file("stall")));
    s.timeout = Duration::from_millis(300);
    let client = ColdClient::new(&s).unwrap();
    let url = check_url(
        &format!("https://127.0.0.1:{}/stall", server.addr.port()),
        "",
    )
    .unwrap();
    let started = tokio::time::Instant::now();
    let e = client.get(&url).await.unwrap_err();
    assert!(matches!(e, ClientError::Timeout(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The rule holds per request too, whatever built the URL.
    let remote: Uri = "http://192.0.2.1/jwks".parse().unwrap();
    let e = client.get(&remote).await.unwrap_err();
    assert!(matches!(e, ClientError::Url(_)), "{e}");
}

#[test]
fn a_background_runtime_serves_callers_outside_tokio() {
    let bg = BackgroundRuntime::start("gw-test-cold").unwrap();
    // A runtime without I/O or timers, as the OpenTelemetry batch thread
    // has none: the request runs on the background runtime.
    let plain = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let got = plain.block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .unwrap();
        });
        let client = ColdClient::new(&settings(None)).unwrap();
        let url: Uri = format!("http://{addr}/").parse().unwrap();
        bg.run(async move { client.get(&url).await }).await
    });
    let resp = got.unwrap().unwrap();
    assert_eq!(resp.body().as_ref(), b"ok");
    drop(bg);
}
