//! loadgen against an `https://` target (seed 000 runs its staging load tests
//! over HTTPS): the real binary, a TLS server in this test (tokio-rustls +
//! hyper, a certificate for `localhost` signed by a CA made here) that
//! counts requests and records the SNI each handshake sent. Verified against
//! `--cacert`, refused without it (the system's roots do not know the CA:
//! every request fails with a TLS error), and `--insecure` skips the check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{loadgen, scratch};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

struct Server {
    port: u16,
    requests: Arc<AtomicU64>,
    sni: Arc<Mutex<Vec<String>>>,
    ca_pem: String,
}

fn server() -> Server {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "loadgen-test-ca");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicU64::new(0));
    let sni = Arc::new(Mutex::new(Vec::new()));
    let (r, s) = (requests.clone(), sni.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, r, s) = (acceptor.clone(), r.clone(), s.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let name = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                    s.lock().unwrap().push(name);
                    let svc = service_fn(move |_req| {
                        r.fetch_add(1, Ordering::Relaxed);
                        async {
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    });
    Server {
        port,
        requests,
        sni,
        ca_pem: ca_cert.pem(),
    }
}

fn scenario(dir: &std::path::Path) -> String {
    let path = dir.join("https.toml");
    std::fs::write(
        &path,
        r#"
name = "https"
[[user]]
name = "U"
wait_time = "constant(10ms)"
[[user.task]]
name = "hello"
path = "/api/hello"
"#,
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn run(scenario: &str, host: &str, extra: &[&str]) -> common::Ran {
    let mut args = vec![
        "run",
        scenario,
        "--host",
        host,
        "--users",
        "2",
        "--max-requests",
        "40",
        "--run-time",
        "20s",
        "--only-summary",
    ];
    args.extend_from_slice(extra);
    loadgen(&args)
}

#[test]
fn https_targets_are_verified_against_the_ca_given() {
    let s = server();
    let dir = scratch("https");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &s.ca_pem).unwrap();
    let scenario = scenario(&dir);
    let host = format!("https://localhost:{}", s.port);

    // Verified with --cacert: every request answered over TLS.
    let ran = run(&scenario, &host, &["--cacert", ca.to_str().unwrap()]);
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    assert_eq!(s.requests.load(Ordering::Relaxed), 40, "{}", ran.stdout);
    assert!(ran.stdout.contains("Aggregated"), "{}", ran.stdout);
    assert!(
        s.sni.lock().unwrap().iter().all(|n| n == "localhost"),
        "SNI sent: {:?}",
        s.sni.lock().unwrap()
    );

    // The system's roots do not know the test CA: no request reaches the
    // server, each fails with the TLS error.
    let before = s.requests.load(Ordering::Relaxed);
    let ran = run(&scenario, &host, &["--threshold", "error_rate<1%"]);
    assert_eq!(s.requests.load(Ordering::Relaxed), before);
    assert_eq!(ran.code, Some(1), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("TLS handshake error"),
        "the failure names TLS:\n{}",
        ran.stdout
    );

    // --insecure: answered, and said loudly.
    let ran = run(&scenario, &host, &["--insecure"]);
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("NOT verified"), "{}", ran.stderr);
    assert_eq!(s.requests.load(Ordering::Relaxed), before + 40);

    // A --cacert that is not a certificate bundle: a clear error at start.
    let bad = dir.join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let ran = run(&scenario, &host, &["--cacert", bad.to_str().unwrap()]);
    assert_eq!(ran.code, Some(2), "{}\n{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("--cacert"), "{}", ran.stderr);
}
