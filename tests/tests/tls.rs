//! HTTPS termination (`[server.tls]`) through the real gateway binary, with
//! real clients: curl (HTTP/1.1 and HTTP/2), `openssl s_client` (SNI, ALPN,
//! mTLS), a tokio-rustls loop of new connections while a certificate is
//! replaced on disk, the redirect listener, HSTS and `gateway check`.
//! Certificates are made here with rcgen into temp files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::harness::{bin, free_port, temp_dir, tool, GatewayProcess, WAIT};
use e2e::mock::{MockOptions, MockUpstream};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A test CA that issues server and client certificates.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new(cn: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    /// A certificate for `names` with CN `cn`, valid for `days` from now;
    /// (cert PEM, its key).
    fn issue(&self, cn: &str, names: &[&str], client: bool, days: u64) -> (String, KeyPair) {
        let mut p =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        p.not_before = epoch + (now - Duration::from_secs(3600));
        p.not_after = epoch + (now + Duration::from_secs(days * 86_400));
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key)
    }

    fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, &self.pem).unwrap();
        p
    }
}

/// Writes `tag.pem` and `tag.key` into `dir`; their paths.
fn write_pair(dir: &Path, tag: &str, cert: &str, key: &KeyPair) -> (PathBuf, PathBuf) {
    let c = dir.join(format!("{tag}.pem"));
    let k = dir.join(format!("{tag}.key"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// `a.test`'s certificate, issued by `ca` for 90 days and written into
/// `dir` with its key.
fn a_test_pair(ca: &Ca, dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = ca.issue("a.test", &["a.test"], false, 90);
    write_pair(dir, "server", &cert, &key)
}

fn pair_line(c: &Path, k: &Path) -> String {
    format!(
        "{{ cert_file = \"{}\", key_file = \"{}\" }}",
        c.display(),
        k.display()
    )
}

/// A config with `[server.tls]` = `tls`, a route `/headers` with HSTS and
/// a catch-all without, both to `up`; access log of every request.
fn config_text(up: SocketAddr, tls: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [server.tls]\n{tls}\n\
         [upstreams.up]\nendpoints = [\"{up}\"]\n\
         [[routes]]\nname = \"secure\"\nprefix = \"/headers\"\nupstream = \"up\"\n\
         hsts = {{ max_age = \"365d\", include_subdomains = true }}\n\
         [[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"up\"\n\
         [telemetry.access_log]\nenabled = true\nsample_ratio = 1.0\n"
    )
}

fn spawn(dir: &Path, text: &str) -> GatewayProcess {
    let file = dir.join("gateway.toml");
    std::fs::write(&file, text).unwrap();
    GatewayProcess::spawn(Some(&file), &[])
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Out {
    let out = cmd.output().unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// curl to `https://{host}:{port}{path}` resolved to 127.0.0.1, trusting
/// `ca`; prints `%{http_code} %{http_version}` after the body.
fn curl(host: &str, port: u16, path: &str, ca: &Path, extra: &[&str]) -> Out {
    run(Command::new(tool("curl", "curl"))
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}")))
}

/// The last line curl printed: `code version`.
fn code_version(o: &Out) -> (String, String) {
    let last = o.stdout.lines().last().unwrap_or_default().to_owned();
    let (c, v) = last.split_once(' ').unwrap_or((&last, ""));
    (c.to_owned(), v.to_owned())
}

fn s_client(port: u16, args: &[&str]) -> Out {
    let mut cmd = Command::new(tool("openssl", "openssl"));
    cmd.args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(std::process::Stdio::null());
    run(&mut cmd)
}

async fn metrics(admin: SocketAddr) -> String {
    let client = e2e::harness::client();
    e2e::harness::metrics_text(&client, admin).await
}

fn value(text: &str, series: &str) -> f64 {
    e2e::harness::sample(text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_over_http1_and_h2_with_sni_alpn_hsts_and_the_access_log() {
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = temp_dir("tls-basic");
    let ca = Ca::new("test ca");
    let ca_file = ca.write(&dir);
    let (ca_cert, ca_key) = ca.issue("a.test", &["a.test"], false, 90);
    let (cb_cert, cb_key) = ca.issue("b.test", &["b.test", "*.b.test"], false, 90);
    let (a_c, a_k) = write_pair(&dir, "a", &ca_cert, &ca_key);
    let (b_c, b_k) = write_pair(&dir, "b", &cb_cert, &cb_key);
    let tls = format!(
        "certificates = [{}, {}]\n",
        pair_line(&a_c, &a_k),
        pair_line(&b_c, &b_k)
    );
    let gw = spawn(&dir, &config_text(up.addr(), &tls));
    let port = gw.addr.port();

    // HTTP/1.1 and HTTP/2 over TLS, each with the right certificate (curl
    // verifies the name against the CA's certificate).
    let h1 = curl("a.test", port, "/headers", &ca_file, &["--http1.1"]);
    assert!(h1.ok, "{}", h1.stderr);
    assert_eq!(
        code_version(&h1),
        ("200".into(), "1.1".into()),
        "{}",
        h1.stdout
    );
    let h2 = curl(
        "www.b.test",
        port,
        "/headers",
        &ca_file,
        &["--http2", "-D", "-"],
    );
    assert!(h2.ok, "{}", h2.stderr);
    assert_eq!(
        code_version(&h2),
        ("200".into(), "2".into()),
        "{}",
        h2.stdout
    );

    // HSTS on the route that asks, over TLS; not on the other route.
    assert!(
        h2.stdout
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000; includesubdomains"),
        "{}",
        h2.stdout
    );
    let other = curl("a.test", port, "/status/200", &ca_file, &["-D", "-"]);
    assert!(other.ok, "{}", other.stderr);
    assert!(
        !other
            .stdout
            .to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{}",
        other.stdout
    );

    // openssl picks the certificate by SNI; no SNI gets the first one.
    let ca_s = ca_file.to_str().unwrap();
    for (sni, cn) in [
        ("a.test", "a.test"),
        ("b.test", "b.test"),
        ("x.b.test", "b.test"),
    ] {
        let o = s_client(port, &["-servername", sni, "-CAfile", ca_s]);
        assert!(
            o.stdout.contains(&format!("subject=CN = {cn}")),
            "{sni}: {}",
            o.stdout
        );
        assert!(
            o.stdout.contains("Verify return code: 0 (ok)"),
            "{}",
            o.stdout
        );
    }
    let o = s_client(port, &["-noservername"]);
    assert!(o.stdout.contains("subject=CN = a.test"), "{}", o.stdout);
    // ALPN.
    let o = s_client(port, &["-servername", "a.test", "-alpn", "h2"]);
    assert!(o.stdout.contains("ALPN protocol: h2"), "{}", o.stdout);
    let o = s_client(port, &["-servername", "a.test", "-alpn", "http/1.1"]);
    assert!(o.stdout.contains("ALPN protocol: http/1.1"), "{}", o.stdout);

    // The access log has the protocol, TLS version and ALPN.
    e2e::harness::wait_until("the access log of the h2 request", || async {
        gw.logs.lock().unwrap().iter().map(|l| no_ansi(l)).any(|l| {
            l.contains("route=secure")
                && l.contains("protocol=HTTP/2.0")
                && l.contains("tls_version=\"TLSv1.3\"")
                && l.contains("alpn=\"h2\"")
        })
    })
    .await;

    // Plaintext HTTP on the HTTPS port: a failed handshake, counted.
    let plain = run(Command::new(tool("curl", "curl"))
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/headers")));
    assert!(!plain.ok);
    let m = metrics(gw.admin).await;
    assert!(
        value(
            &m,
            "gateway_tls_handshake_failures_total{reason=\"bad_message\"}"
        ) >= 1.0,
        "{m}"
    );
    let expiry = value(
        &m,
        "gateway_tls_certificate_expiry_seconds{name=\"b.test\"}",
    );
    assert!(
        (88.0 * 86_400.0..=90.0 * 86_400.0).contains(&expiry),
        "{expiry}: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_certificates_are_required_when_configured() {
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = temp_dir("tls-mtls");
    let ca = Ca::new("test ca");
    let ca_file = ca.write(&dir);
    let (s_c, s_k) = a_test_pair(&ca, &dir);
    let (cc, ck) = ca.issue("client one", &[], true, 90);
    let (c_c, c_k) = write_pair(&dir, "client", &cc, &ck);
    let rogue = Ca::new("rogue ca");
    let (rc, rk) = rogue.issue("intruder", &[], true, 90);
    let (r_c, r_k) = write_pair(&dir, "rogue", &rc, &rk);
    let tls = format!(
        "certificates = [{}]\nclient_ca_file = \"{}\"\nclient_auth = \"required\"\n",
        pair_line(&s_c, &s_k),
        ca_file.display()
    );
    let gw = spawn(&dir, &config_text(up.addr(), &tls));
    let port = gw.addr.port();

    let none = curl("a.test", port, "/headers", &ca_file, &[]);
    assert!(
        !none.ok,
        "no client certificate was accepted: {}",
        none.stdout
    );
    let m = metrics(gw.admin).await;
    assert!(
        value(
            &m,
            "gateway_tls_handshake_failures_total{reason=\"client_certificate_required\"}"
        ) >= 1.0,
        "{m}"
    );

    let (cs, ks) = (c_c.to_str().unwrap(), c_k.to_str().unwrap());
    let good = curl(
        "a.test",
        port,
        "/headers",
        &ca_file,
        &["--cert", cs, "--key", ks],
    );
    assert!(good.ok, "{}", good.stderr);
    assert_eq!(code_version(&good).0, "200");

    let (cs, ks) = (r_c.to_str().unwrap(), r_k.to_str().unwrap());
    let bad = curl(
        "a.test",
        port,
        "/headers",
        &ca_file,
        &["--cert", cs, "--key", ks],
    );
    assert!(!bad.ok, "a certificate of another CA was accepted");
    let m = metrics(gw.admin).await;
    assert!(
        value(
            &m,
            "gateway_tls_handshake_failures_total{reason=\"bad_certificate\"}"
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_version_decides_whether_a_tls12_client_gets_in() {
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = temp_dir("tls-versions");
    let ca = Ca::new("test ca");
    let ca_file = ca.write(&dir);
    let (s_c, s_k) = a_test_pair(&ca, &dir);

    let tls12 = format!("certificates = [{}]\n", pair_line(&s_c, &s_k));
    let gw = spawn(&dir, &config_text(up.addr(), &tls12));
    let o = curl(
        "a.test",
        gw.addr.port(),
        "/headers",
        &ca_file,
        &["--tls-max", "1.2"],
    );
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(code_version(&o).0, "200");
    let o = s_client(gw.addr.port(), &["-servername", "a.test", "-tls1_2"]);
    assert!(o.stdout.contains("Protocol  : TLSv1.2"), "{}", o.stdout);
    drop(gw);

    let dir13 = temp_dir("tls-versions13");
    let tls13 = format!(
        "certificates = [{}]\nmin_version = \"1.3\"\n",
        pair_line(&s_c, &s_k)
    );
    let gw = spawn(&dir13, &config_text(up.addr(), &tls13));
    let o = curl(
        "a.test",
        gw.addr.port(),
        "/headers",
        &ca_file,
        &["--tls-max", "1.2"],
    );
    assert!(!o.ok, "a TLS 1.2 client got in with min_version 1.3");
    let o = curl("a.test", gw.addr.port(), "/headers", &ca_file, &[]);
    assert!(o.ok, "{}", o.stderr);
    let m = metrics(gw.admin).await;
    assert!(
        value(
            &m,
            "gateway_tls_handshake_failures_total{reason=\"protocol_version\"}"
        ) >= 1.0,
        "{m}"
    );
}

/// A log line without its colour escapes.
fn no_ansi(l: &str) -> String {
    let mut out = String::with_capacity(l.len());
    let mut chars = l.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A rustls client config trusting `ca_pem`.
fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Full handshakes only: a resumed session shows the certificate of the
    // session it resumes, not the one served now.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// One request on a new TLS connection; the CN of the certificate served.
async fn one_request(cfg: Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or("no certificate")?;
    tls.write_all(b"GET /headers HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    tls.read_to_end(&mut resp)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if !resp.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "answer: {}",
            String::from_utf8_lossy(&resp[..resp.len().min(200)])
        ));
    }
    Ok(common_name(&der))
}

/// The CN written by rcgen (a UTF8String after the CN OID).
fn common_name(der: &[u8]) -> String {
    for cn in ["a.test v1", "a.test v2", "a.test v3"] {
        if der.windows(cn.len()).any(|w| w == cn.as_bytes()) {
            return cn.to_owned();
        }
    }
    "unknown".into()
}

/// Points `dir/..data` at `dir/version` with one atomic rename, as
/// Kubernetes updates a Secret volume.
fn swap_data(dir: &Path, version: &str) {
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_replaced_on_disk_apply_to_new_handshakes_without_a_failed_request() {
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = temp_dir("tls-reload");
    let ca = Ca::new("test ca");
    let ca_file = ca.write(&dir);
    // A Secret volume: tls.crt -> ..data/tls.crt, ..data -> v1.
    let secret = dir.join("secret");
    for (v, cn) in [("v1", "a.test v1"), ("v2", "a.test v2")] {
        let d = secret.join(v);
        std::fs::create_dir_all(&d).unwrap();
        let (c, k) = ca.issue(cn, &["a.test"], false, 90);
        std::fs::write(d.join("tls.crt"), c).unwrap();
        std::fs::write(d.join("tls.key"), k.serialize_pem()).unwrap();
    }
    // v3: the certificate of a new pair with the key of another.
    let d3 = secret.join("v3");
    std::fs::create_dir_all(&d3).unwrap();
    let (c3, _) = ca.issue("a.test v3", &["a.test"], false, 90);
    std::fs::write(d3.join("tls.crt"), c3).unwrap();
    std::fs::write(
        d3.join("tls.key"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    swap_data(&secret, "v1");
    for f in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), secret.join(f)).unwrap();
    }
    let tls = format!(
        "certificates = [{}]\nwatch_interval = \"200ms\"\n",
        pair_line(&secret.join("tls.crt"), &secret.join("tls.key"))
    );
    let gw = spawn(&dir, &config_text(up.addr(), &tls));
    let addr = gw.addr;
    let cfg = client_config(&std::fs::read_to_string(&ca_file).unwrap());

    // Four loops of new connections, one request each, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::new(Mutex::new(String::new()));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failures, seen, cfg) = (
            stop.clone(),
            ok.clone(),
            failures.clone(),
            seen.clone(),
            cfg.clone(),
        );
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(WAIT, one_request(cfg.clone(), addr)).await {
                    Ok(Ok(cn)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        *seen.lock().unwrap() = cn;
                    }
                    Ok(Err(e)) => failures.lock().unwrap().push(e),
                    Err(_) => failures.lock().unwrap().push("timed out".into()),
                }
            }
        }));
    }
    let cn_now = || seen.lock().unwrap().clone();
    e2e::harness::wait_until("requests served with v1", || async {
        cn_now() == "a.test v1" && ok.load(Ordering::Relaxed) > 20
    })
    .await;

    // Rotate: new handshakes get v2 within a bounded wait.
    swap_data(&secret, "v2");
    let before = ok.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + WAIT;
    while cn_now() != "a.test v2" {
        if tokio::time::Instant::now() >= deadline {
            let logs = gw.logs.lock().unwrap().clone();
            panic!("new handshakes never saw v2; logs: {logs:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e2e::harness::wait_until("more requests after the rotation", || async {
        ok.load(Ordering::Relaxed) > before + 50
    })
    .await;

    // A bad pair: logged with its file, v2 keeps serving.
    swap_data(&secret, "v3");
    e2e::harness::wait_until("the rejected reload is logged", || async {
        gw.logs.lock().unwrap().iter().map(|l| no_ansi(l)).any(|l| {
            l.contains("TLS reload rejected")
                && l.contains("tls.key")
                && l.contains("does not match")
        })
    })
    .await;
    let after_bad = ok.load(Ordering::Relaxed);
    e2e::harness::wait_until("requests after the bad replacement", || async {
        ok.load(Ordering::Relaxed) > after_bad + 50
    })
    .await;
    assert_eq!(cn_now(), "a.test v2", "a bad pair replaced the good one");

    stop.store(true, Ordering::Relaxed);
    for l in loops {
        tokio::time::timeout(WAIT, l).await.unwrap().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failures.len(),
        ok.load(Ordering::Relaxed) + failures.len() as u64
    );
    let m = metrics(gw.admin).await;
    assert!(
        value(&m, "gateway_tls_reloads_total{result=\"success\"}") >= 1.0,
        "{m}"
    );
    assert!(
        value(&m, "gateway_tls_reloads_total{result=\"failure\"}") >= 1.0,
        "{m}"
    );

    // SIGHUP reloads them too (v3 is still bad: counted as a failure of
    // the config reload, the certificates unchanged; back to v1: applied).
    swap_data(&secret, "v1");
    e2e::harness::wait_until("v1 served again", || async {
        matches!(
            one_request(cfg.clone(), addr).await.as_deref(),
            Ok("a.test v1")
        )
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let successes = value(
        &metrics(gw.admin).await,
        "gateway_tls_reloads_total{result=\"success\"}",
    );
    gw.signal("HUP");
    e2e::harness::wait_until("SIGHUP reloads the certificates", || async {
        value(
            &metrics(gw.admin).await,
            "gateway_tls_reloads_total{result=\"success\"}",
        ) >= successes + 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h2load_over_tls_has_no_failed_request() {
    let Some(h2load) = e2e::harness::find_tool("h2load") else {
        eprintln!("h2load not installed (nghttp2-client): skipped");
        return;
    };
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = temp_dir("tls-h2load");
    let ca = Ca::new("test ca");
    let (s_c, s_k) = a_test_pair(&ca, &dir);
    let tls = format!("certificates = [{}]\n", pair_line(&s_c, &s_k));
    let gw = spawn(&dir, &config_text(up.addr(), &tls));
    let o = run(Command::new(h2load)
        .args(["-n", "2000", "-c", "8", "-m", "4"])
        .arg(format!("https://127.0.0.1:{}/headers", gw.addr.port())));
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("2000 succeeded, 0 failed"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("Application protocol: h2"),
        "{}",
        o.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_redirect_listener_answers_308_to_https() {
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = temp_dir("tls-redirect");
    let ca = Ca::new("test ca");
    let (s_c, s_k) = a_test_pair(&ca, &dir);
    let rport = free_port();
    let tls = format!(
        "certificates = [{}]\nredirect_listen = \"127.0.0.1:{rport}\"\n",
        pair_line(&s_c, &s_k)
    );
    let gw = spawn(&dir, &config_text(up.addr(), &tls));
    let o = run(Command::new(tool("curl", "curl"))
        .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-D", "-"])
        .arg("--resolve")
        .arg(format!("a.test:{rport}:127.0.0.1"))
        .arg(format!("http://a.test:{rport}/headers/x?q=1&r=2")));
    assert!(o.ok, "{}", o.stderr);
    let head = o.stdout.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 308"), "{}", o.stdout);
    assert!(
        head.contains(&format!(
            "location: https://a.test:{}/headers/x?q=1&r=2",
            gw.addr.port()
        )),
        "{}",
        o.stdout
    );
    assert!(!head.contains("strict-transport-security"), "{}", o.stdout);
    drop(gw);
    // Behind a load balancer mapping 443: `redirect_port` (443: no port).
    let rport = free_port();
    let tls = format!(
        "certificates = [{}]\nredirect_listen = \"127.0.0.1:{rport}\"\nredirect_port = 443\n",
        pair_line(&s_c, &s_k)
    );
    let dir = temp_dir("tls-redirect443");
    let _gw = spawn(&dir, &config_text(up.addr(), &tls));
    let o = run(Command::new(tool("curl", "curl"))
        .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-D", "-"])
        .args(["-H", "Host: a.test:80"])
        .arg(format!("http://127.0.0.1:{rport}/")));
    assert!(
        o.stdout
            .to_ascii_lowercase()
            .contains("location: https://a.test/\r\n"),
        "{}",
        o.stdout
    );
    // An invalid Host is refused, not reflected.
    let o = run(Command::new(tool("curl", "curl"))
        .args(["-sS", "--max-time", "10", "-H", "Host: evil.test/x@y"])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{rport}/")));
    assert!(o.stdout.ends_with("400"), "{}", o.stdout);
    assert!(o.stdout.contains("request_id"), "{}", o.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_hsts_on_plaintext_responses() {
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = temp_dir("tls-plain-hsts");
    let text = config_text(up.addr(), "").replace("[server.tls]\n\n", "");
    let gw = spawn(&dir, &text);
    let o = run(Command::new(tool("curl", "curl"))
        .args(["-sS", "--max-time", "10", "-D", "-", "-o", "/dev/null"])
        .arg(format!("http://{}/headers", gw.addr)));
    assert!(o.ok, "{}", o.stderr);
    assert!(o.stdout.starts_with("HTTP/1.1 200"), "{}", o.stdout);
    assert!(
        !o.stdout
            .to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{}",
        o.stdout
    );
}

fn check(file: &Path) -> (Option<i32>, String) {
    let out = Command::new(bin("gateway"))
        .arg("check")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn gateway_check_validates_pairs_and_expiry() {
    let dir = temp_dir("tls-check");
    let ca = Ca::new("test ca");
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // Key of another pair: exit 2 naming the key path.
    let (c, _) = ca.issue("a.test", &["a.test"], false, 90);
    let (_, other) = ca.issue("b.test", &["b.test"], false, 90);
    let (cf, kf) = write_pair(&dir, "mismatch", &c, &other);
    let file = dir.join("mismatch.toml");
    std::fs::write(
        &file,
        config_text(up, &format!("certificates = [{}]\n", pair_line(&cf, &kf))),
    )
    .unwrap();
    let (code, out) = check(&file);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("server.tls.certificates[0].key_file"), "{out}");
    assert!(out.contains("does not match"), "{out}");

    // Expiring in 3 days: valid, with a warning.
    let (c, k) = ca.issue("soon.test", &["soon.test"], false, 3);
    let (cf, kf) = write_pair(&dir, "soon", &c, &k);
    let file = dir.join("soon.toml");
    std::fs::write(
        &file,
        config_text(up, &format!("certificates = [{}]\n", pair_line(&cf, &kf))),
    )
    .unwrap();
    let (code, out) = check(&file);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("warning"), "{out}");
    assert!(out.contains("soon.test"), "{out}");
    assert!(
        out.contains("expires in 2days") || out.contains("expires in 3days"),
        "{out}"
    );

    // Relative paths are relative to the config file.
    let file = dir.join("relative.toml");
    std::fs::write(
        &file,
        config_text(
            up,
            "certificates = [{ cert_file = \"soon.pem\", key_file = \"soon.key\" }]\n",
        ),
    )
    .unwrap();
    let (code, out) = check(&file);
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateways_own_error_answers_carry_hsts_and_cors_too() {
    // A route timeout's 504 and a 503 with no healthy endpoint are rendered
    // at the edge, not by the route's stack: they go over the same TLS
    // connection to the same page, so HSTS and the CORS policy apply.
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = temp_dir("tls-errors");
    let ca = Ca::new("test ca");
    let ca_file = ca.write(&dir);
    let (c, k) = a_test_pair(&ca, &dir);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [server.tls]\ncertificates = [{}]\n\
         [upstreams.up]\nendpoints = [\"{}\"]\n\
         [upstreams.gone]\nendpoints = [\"127.0.0.1:9\"]\n\
         [upstreams.gone.circuit_breaker]\nconsecutive_failures = 1\n\
         [[routes]]\nname = \"slow\"\nprefix = \"/delay\"\nupstream = \"up\"\ntimeout = \"300ms\"\n\
         hsts = {{ max_age = \"365d\" }}\n\
         cors = {{ allow_origins = [\"https://app.example\"] }}\n\
         [[routes]]\nname = \"gone\"\nprefix = \"/gone\"\nupstream = \"gone\"\n\
         hsts = {{ max_age = \"365d\" }}\n",
        pair_line(&c, &k),
        up.addr()
    );
    let gw = spawn(&dir, &text);
    let port = gw.addr.port();
    let slow = curl(
        "a.test",
        port,
        "/delay/3000",
        &ca_file,
        &["-D", "-", "-H", "Origin: https://app.example"],
    );
    assert_eq!(code_version(&slow).0, "504", "{}", slow.stdout);
    let head = slow.stdout.to_ascii_lowercase();
    assert!(
        head.contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    for _ in 0..3 {
        let gone = curl("a.test", port, "/gone", &ca_file, &["-D", "-"]);
        let code = code_version(&gone).0;
        assert!(code == "502" || code == "503", "{}", gone.stdout);
        assert!(
            gone.stdout
                .to_ascii_lowercase()
                .contains("strict-transport-security:"),
            "{}",
            gone.stdout
        );
    }
}
