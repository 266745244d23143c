//! JWKS and OTLP over HTTPS through the gateway's one cold-path client
//! (`gateway/src/client.rs`), against servers behind a CA made by the test
//! (rcgen): the real `mock-upstream` binary serving its JWKS with
//! `--tls-cert/--tls-key`, and a TLS OTLP collector. curl (`--cacert`) is
//! the independent client that issues tokens and rotates the mock's keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use e2e::harness::{
    self, bin, client, config, metrics_text, poll_until, sample, send, start_gateway, temp_dir,
    GatewayProcess, TestClient, WAIT,
};
use e2e::mock::{MockOptions, MockTls, MockUpstream};
use e2e::otlp::OtlpReceiver;
use http::Request;
use http_body_util::Full;

/// A CA and a server certificate for `localhost` and `127.0.0.1`, as PEM
/// files in a fresh directory.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    tls: MockTls,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = temp_dir(tag);
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "jwks_tls test CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let write = |name: &str, pem: String| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        let ca = write("ca.pem", ca.pem());
        let tls = MockTls {
            cert: write("server.pem", leaf.pem()),
            key: write("server.key", key.serialize_pem()),
        };
        Self { dir, ca, tls }
    }
}

/// The `mock-upstream` binary serving HTTPS on a free port, killed on drop.
struct TlsMock {
    child: Child,
    addr: SocketAddr,
    ca: PathBuf,
}

impl TlsMock {
    fn spawn(pki: &Pki) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
            .args(["--listen", "127.0.0.1:0", "--workers", "1", "--tls-cert"])
            .arg(&pki.tls.cert)
            .arg("--tls-key")
            .arg(&pki.tls.key)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mock-upstream spawns");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(WAIT)
            .expect("mock-upstream reports its address");
        let addr = line
            .strip_prefix("mock-upstream listening on ")
            .expect("listening line")
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            ca: pki.ca.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// curl --cacert: (status, HTTP version, body).
    fn curl(&self, method: &str, path: &str, json: Option<&str>) -> (u16, String, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "-X", method, "--cacert"])
            .arg(&self.ca)
            .args(["-w", "\n%{http_code} %{http_version}"]);
        if let Some(body) = json {
            cmd.args(["-H", "content-type: application/json", "-d", body]);
        }
        let out = cmd.arg(self.url(path)).output().expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {method} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, tail) = text.rsplit_once('\n').unwrap();
        let (code, version) = tail.split_once(' ').unwrap();
        (code.parse().unwrap(), version.to_owned(), body.to_owned())
    }

    /// An RS256 token signed with `kid`, issued by the mock over HTTPS.
    fn token(&self, kid: &str) -> String {
        let body = format!(r#"{{"username":"ada","password":"pw","kid":"{kid}"}}"#);
        let (status, _, text) = self.curl("POST", "/api/auth/session", Some(&body));
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }

    /// Requests the mock received for its JWKS.
    fn jwks_hits(&self) -> u64 {
        let (status, _, text) = self.curl("GET", "/_mock/stats", None);
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["paths"]["/.well-known/jwks.json"].as_u64().unwrap_or(0)
    }
}

impl Drop for TlsMock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A provider whose JWKS is `jwks_url` (with `ca_file` when given) and a
/// route `/headers` that requires its tokens, to `upstream` (plain HTTP).
fn auth_toml(jwks_url: &str, ca_file: Option<&Path>, upstream: SocketAddr) -> String {
    let ca = ca_file.map_or(String::new(), |p| {
        format!("ca_file = {:?}", p.display().to_string())
    });
    format!(
        r#"
        [auth.idp]
        issuers = ["mock-upstream"]
        audiences = ["meetinity"]
        [auth.idp.jwks]
        url = "{jwks_url}"
        {ca}
        algorithms = ["RS256"]
        min_refresh_interval = "200ms"
        timeout = "5s"
        [upstreams.plain]
        endpoints = ["{upstream}"]
        [[routes]]
        name = "headers"
        prefix = "/headers"
        upstream = "plain"
        auth = {{ provider = "idp" }}
        "#
    )
}

async fn get_with_token(c: &TestClient, gw: SocketAddr, token: &str) -> harness::Got {
    let req = Request::get(format!("http://{gw}/headers"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::default())
        .unwrap();
    send(c, req).await
}

#[tokio::test]
async fn jwks_over_https_with_the_configured_ca_verifies_tokens_and_follows_rotation() {
    harness::init_logs();
    let pki = Pki::new("jwks-tls-ok");
    let idp = TlsMock::spawn(&pki);
    // curl, an independent client, sees the mock's TLS and its ALPN.
    let (status, version, _) = idp.curl("GET", "/.well-known/jwks.json", None);
    assert_eq!((status, version.as_str()), (200, "2"), "HTTP/2 over TLS");
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let gw = start_gateway(config(
        "",
        &auth_toml(&idp.url("/.well-known/jwks.json"), Some(&pki.ca), up.addr()),
    ))
    .await;
    let c = client();

    let rs1 = idp.token("rs-1");
    let got = get_with_token(&c, gw.proxy_addr, &rs1).await;
    assert_eq!(got.status(), 200, "{:?}", got.body);
    assert!(
        idp.jwks_hits() >= 1,
        "the gateway fetched the JWKS over HTTPS"
    );

    // rs-2 is not published yet: refused after the unknown-kid refresh.
    let rs2 = idp.token("rs-2");
    assert_eq!(get_with_token(&c, gw.proxy_addr, &rs2).await.status(), 401);

    // The issuer rotates; the next unknown-kid refresh (at most one per
    // 200 ms) picks rs-2 up over HTTPS.
    let (status, _, text) = idp.curl("POST", "/_mock/jwks/rotate", None);
    assert!((200..300).contains(&status), "{status} {text}");
    poll_until("a token signed with the rotated-in key passes", || async {
        (get_with_token(&c, gw.proxy_addr, &rs2).await.status() == 200).then_some(())
    })
    .await;
    assert_eq!(get_with_token(&c, gw.proxy_addr, &rs1).await.status(), 200);
    gw.shutdown();
    gw.wait().await;
}

#[tokio::test]
async fn without_the_ca_the_jwks_fetch_fails_verification_tokens_are_refused_and_it_is_logged() {
    harness::init_logs();
    let pki = Pki::new("jwks-tls-noca");
    let idp = TlsMock::spawn(&pki);
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    // The real binary, for its logs; system roots only.
    let file = pki.dir.join("gateway.toml");
    std::fs::write(
        &file,
        auth_toml(&idp.url("/.well-known/jwks.json"), None, up.addr()),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(Some(&file), &[]);
    let c = client();
    let rs1 = idp.token("rs-1");
    let got = get_with_token(&c, gw.addr, &rs1).await;
    assert_eq!(got.status(), 401, "{:?}", got.body);
    assert!(
        got.header("www-authenticate").contains("invalid_token"),
        "{:?}",
        got.head
    );
    let line = poll_until("the failed fetch is logged", || async {
        let logs = gw.logs.lock().unwrap();
        logs.iter()
            .find(|l| l.contains("JWKS fetch failed") && l.contains("UnknownIssuer"))
            .cloned()
    })
    .await;
    // (The log may carry ANSI colours around field names.)
    assert!(line.contains("provider") && line.contains("idp"), "{line}");
    assert!(line.contains("TLS verification failed"), "{line}");
    // The handshake failed: the mock never received a JWKS request.
    assert_eq!(idp.jwks_hits(), 0);
}

#[test]
fn gateway_check_refuses_plain_http_jwks_and_otlp_to_remote_hosts() {
    let dir = temp_dir("jwks-tls-check");
    let check = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        let out = Command::new(bin("gateway"))
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let route = "[upstreams.u]\nendpoints = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\n";
    let (code, text) = check(
        "remote-http.toml",
        &format!(
            "[auth.idp.jwks]\nurl = \"http://idp.example.com/.well-known/jwks.json\"\n\
             [telemetry.tracing]\nenabled = true\nendpoint = \"http://collector.example.com:4318/v1/traces\"\n{route}"
        ),
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("auth.idp.jwks.url: http:// is only allowed to a loopback address; identity providers serve JWKS over https"),
        "{text}"
    );
    assert!(
        text.contains("telemetry.tracing.endpoint: http:// is only allowed to a loopback address"),
        "{text}"
    );
    // A CA bundle that is not one is named too.
    std::fs::write(dir.join("not-a-ca.pem"), "hello\n").unwrap();
    let (code, text) = check(
        "bad-ca.toml",
        &format!(
            "[auth.idp.jwks]\nurl = \"https://idp.example.com/jwks\"\nca_file = \"not-a-ca.pem\"\n{route}"
        ),
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("auth.idp.jwks.ca_file: "), "{text}");
    assert!(text.contains("no CERTIFICATE block"), "{text}");
    // https anywhere, http to loopback, and a relative ca_file (next to the
    // config) pass; check never connects.
    let pki = Pki::new("jwks-tls-check-ca");
    std::fs::copy(&pki.ca, dir.join("idp-ca.pem")).unwrap();
    let (code, text) = check(
        "good.toml",
        &format!(
            "[auth.idp.jwks]\nurl = \"https://idp.example.com/jwks\"\nca_file = \"idp-ca.pem\"\n\
             [auth.local.jwks]\nurl = \"http://127.0.0.1:8081/jwks\"\n\
             [telemetry.tracing]\nenabled = true\nendpoint = \"https://collector.example.com:4318/v1/traces\"\nca_file = \"idp-ca.pem\"\n{route}"
        ),
    );
    assert_eq!(code, Some(0), "{text}");
}

fn tracing_config(rx: &OtlpReceiver, ca: Option<&Path>, upstream: SocketAddr) -> gateway::Config {
    let ca = ca.map_or(String::new(), |p| {
        format!("ca_file = {:?}", p.display().to_string())
    });
    config(
        "",
        &format!(
            r#"
            [telemetry.tracing]
            enabled = true
            endpoint = "{}"
            {ca}
            headers = {{ authorization = "Bearer otlp-test-secret" }}
            sample_ratio = 1.0
            scheduled_delay = "20ms"
            export_timeout = "2s"
            [upstreams.plain]
            endpoints = ["{upstream}"]
            [[routes]]
            name = "all"
            prefix = "/"
            upstream = "plain"
            "#,
            rx.endpoint()
        ),
    )
}

#[tokio::test]
async fn otlp_over_https_reaches_a_tls_collector_with_the_ca_and_not_without_it() {
    harness::init_logs();
    let pki = Pki::new("otlp-tls");
    let rx = OtlpReceiver::start_tls(&pki.tls).await;
    assert!(rx.endpoint().starts_with("https://127.0.0.1:"));
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let c = client();

    let gw = start_gateway(tracing_config(&rx, Some(&pki.ca), up.addr())).await;
    assert_eq!(
        harness::get(&c, gw.proxy_addr, "/api/hello").await.status(),
        200
    );
    let spans = poll_until("spans at the TLS collector", || async {
        let s = rx.spans();
        (s.len() >= 2).then_some(s)
    })
    .await;
    assert!(spans.iter().all(|s| s.service == "gateway"));
    assert_eq!(
        rx.authorization().as_deref(),
        Some("Bearer otlp-test-secret")
    );
    gw.shutdown();
    gw.wait().await;

    // Without the CA: every export fails verification and is counted; the
    // collector never gets one.
    let before = rx.requests();
    let gw = start_gateway(tracing_config(&rx, None, up.addr())).await;
    assert_eq!(
        harness::get(&c, gw.proxy_addr, "/api/hello").await.status(),
        200
    );
    poll_until("a failed export counted", || async {
        let m = metrics_text(&c, gw.admin_addr).await;
        (sample(&m, "gateway_trace_export_errors_total").unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;
    assert_eq!(rx.requests(), before);
    gw.shutdown();
    gw.wait().await;
}

#[tokio::test]
async fn a_stalled_tls_collector_cannot_hold_shutdown_past_shutdown_timeout() {
    harness::init_logs();
    // Accepts TCP and never answers the TLS handshake.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stall.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stall.accept().await {
            held.push(s);
        }
    });
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let gw = start_gateway(config(
        "",
        &format!(
            r#"
            [telemetry.tracing]
            enabled = true
            endpoint = "https://127.0.0.1:{}/v1/traces"
            sample_ratio = 1.0
            scheduled_delay = "20ms"
            export_timeout = "10s"
            shutdown_timeout = "500ms"
            [upstreams.plain]
            endpoints = ["{}"]
            [[routes]]
            name = "all"
            prefix = "/"
            upstream = "plain"
            "#,
            addr.port(),
            up.addr()
        ),
    ))
    .await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            harness::get(&c, gw.proxy_addr, "/api/hello").await.status(),
            200
        );
    }
    // Let the first export start and hang in the handshake.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::SystemTime::now();
    gw.shutdown();
    tokio::time::timeout(WAIT, gw.wait()).await.unwrap();
    let took = started.elapsed().unwrap();
    // shutdown_timeout (+ the gateway's 500 ms margin and drain), far from
    // the 10 s an export may take.
    assert!(
        took < std::time::Duration::from_secs(4),
        "shutdown took {took:?}"
    );
}
