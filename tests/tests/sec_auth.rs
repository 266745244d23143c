//! JWT strictness and rate-limit keys (issue 11, items 4 and 11), through
//! the real binary against a raw-socket upstream that records the exact
//! bytes it receives: claims a provider lists are required, `crit` is
//! refused, short HMAC secrets fail `gateway check`, only the verified
//! credential reaches the upstream, and the shipped meetinity.toml limits a
//! client that rotates `X-Client-Id`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use e2e::harness::{bin, temp_dir, wait_until, workspace, GatewayProcess};
use e2e::raw::{raw_request, response, RawUpstream, Step};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const SECRET: &str = "sec-auth-test-secret-0123456789abcdefghij";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(header: Header, claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn good_claims() -> serde_json::Value {
    serde_json::json!({
        "sub": "alice", "iss": "iss-a", "aud": "aud-a",
        "exp": now() + 600, "nbf": now() - 5, "iat": now(),
    })
}

fn without(claim: &str) -> serde_json::Value {
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove(claim);
    c
}

async fn recording_upstream() -> RawUpstream {
    RawUpstream::start(|_| vec![Step::Write(response(200, &[], "ok"))]).await
}

/// A gateway process whose provider lists issuers and audiences, with a
/// required and an optional route to `raw`.
fn gateway(raw: &RawUpstream) -> GatewayProcess {
    let dir = temp_dir("sec-auth");
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let config = format!(
        r#"
[auth.t]
issuers = ["iss-a"]
audiences = ["aud-a"]
leeway = "5s"
forward_claims = {{ sub = "X-User-Id" }}
[[auth.t.keys]]
algorithms = ["HS256"]
secret_file = "{secret}"

[upstreams.raw]
endpoints = ["{raw}"]

[[routes]]
name = "required"
prefix = "/required"
upstream = "raw"
auth = {{ provider = "t", mode = "required" }}

[[routes]]
name = "optional"
prefix = "/optional"
upstream = "raw"
auth = {{ provider = "t", mode = "optional" }}
"#,
        secret = secret.display(),
        raw = raw.addr,
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    GatewayProcess::spawn(Some(&path), &[])
}

async fn get<V: AsRef<str>>(
    gw: &GatewayProcess,
    path: &str,
    headers: impl IntoIterator<Item = (&'static str, V)>,
) -> (u16, String) {
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: api.test\r\nconnection: close\r\n");
    for (n, v) in headers {
        let v = v.as_ref();
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_request(gw.addr, &req).await
}

#[tokio::test]
async fn claims_the_provider_lists_are_required_and_crit_is_refused() {
    let raw = recording_upstream().await;
    let gw = gateway(&raw);
    let mut crit = Header::new(Algorithm::HS256);
    crit.crit = Some(vec!["exp".into()]);
    let cases = [
        ("no iss", sign(Header::default(), &without("iss"), SECRET)),
        ("no aud", sign(Header::default(), &without("aud"), SECRET)),
        ("no exp", sign(Header::default(), &without("exp"), SECRET)),
        ("crit: [exp]", sign(crit, &good_claims(), SECRET)),
    ];
    for (what, token) in &cases {
        let bearer = format!("Bearer {token}");
        let (status, text) = get(&gw, "/required/x", [("authorization", &bearer)]).await;
        assert_eq!(status, 401, "{what}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("www-authenticate: bearer error=\"invalid_token\""),
            "{what}: {text}"
        );
        assert!(text.contains("\"request_id\""), "{what}: {text}");
    }
    assert!(raw.requests().is_empty(), "{:?}", raw.requests());

    // The same token with every claim the provider lists passes.
    let token = sign(Header::default(), &good_claims(), SECRET);
    let bearer = format!("Bearer {token}");
    let (status, text) = get(&gw, "/required/x", [("authorization", &bearer)]).await;
    assert_eq!(status, 200, "{text}");
    let got = raw.last().unwrap();
    assert_eq!(got.all("authorization"), [bearer.as_str()]);
    assert_eq!(got.all("x-user-id"), ["alice"]);
}

#[tokio::test]
async fn the_upstream_receives_only_the_verified_credential() {
    let raw = recording_upstream().await;
    let gw = gateway(&raw);
    let token = sign(Header::default(), &good_claims(), SECRET);
    let bearer = format!("Bearer {token}");
    let forged = sign(
        Header::default(),
        &good_claims(),
        "another-secret-0123456789abcdefghijkl",
    );
    let forged = format!("Bearer {forged}");

    // Optional mode: anonymous passes with no credential at all...
    let (status, _) = get(&gw, "/optional/anon", Vec::<(&str, &str)>::new()).await;
    assert_eq!(status, 200);
    assert!(raw.last().unwrap().all("authorization").is_empty());
    // ...a credential that does not verify is refused, not forwarded.
    for (what, h) in [
        ("forged bearer", forged.as_str()),
        ("basic", "Basic YWRtaW46YWRtaW4="),
        ("empty bearer", "Bearer"),
    ] {
        for route in ["/optional/x", "/required/x"] {
            let (status, text) = get(&gw, route, [("authorization", h)]).await;
            assert_eq!(status, 401, "{what} on {route}: {text}");
        }
    }
    // Two credentials, the verified one first: refused (400 at the edge, or
    // 401 from auth), never forwarded.
    for route in ["/optional/x", "/required/x"] {
        let (status, text) = get(
            &gw,
            route,
            [("authorization", &bearer), ("authorization", &forged)],
        )
        .await;
        assert!(status == 400 || status == 401, "{route}: {text}");
    }
    assert_eq!(raw.requests().len(), 1, "{:?}", raw.requests());

    // A verified one is forwarded exactly, alone.
    let (status, _) = get(&gw, "/optional/ok", [("authorization", &bearer)]).await;
    assert_eq!(status, 200);
    let got = raw.last().unwrap();
    assert_eq!(got.target, "/optional/ok");
    assert_eq!(got.all("authorization"), [bearer.as_str()]);
}

fn check(config: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin("gateway"));
    cmd.arg("check").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
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
fn short_hmac_secrets_and_long_leeways_fail_check_and_start_up_with_their_key_paths() {
    let dir = temp_dir("sec-auth");
    let path = dir.join("short.toml");
    std::fs::write(
        &path,
        r#"
[auth.t]
[[auth.t.keys]]
algorithms = ["HS256"]
secret_env = "GW_SEC_AUTH_SECRET"
[auth.big]
leeway = "1h"
[[auth.big.keys]]
algorithms = ["HS512"]
secret_env = "GW_SEC_AUTH_SECRET_512"
[upstreams.u]
endpoints = ["127.0.0.1:1"]
[[routes]]
name = "r"
prefix = "/"
upstream = "u"
auth = { provider = "t" }
"#,
    )
    .unwrap();
    // 16 bytes for HS256, 32 for HS512: both below the hash size.
    let env = [
        ("GW_SEC_AUTH_SECRET", "0123456789abcdef"),
        ("GW_SEC_AUTH_SECRET_512", "0123456789abcdef0123456789abcdef"),
    ];
    let (code, text) = check(&path, &env);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("auth.t.keys[0]: the HMAC secret is 16 bytes; HS256 needs at least 32"),
        "{text}"
    );
    assert!(
        text.contains("auth.big.keys[0]: the HMAC secret is 32 bytes; HS512 needs at least 64"),
        "{text}"
    );
    assert!(
        text.contains("auth.big.leeway: must be at most 10m"),
        "{text}"
    );
    assert!(
        !text.contains("0123456789abcdef"),
        "a secret was printed: {text}"
    );

    // Start-up refuses the same config.
    let mut serve = Command::new(bin("gateway"));
    serve
        .args(["serve", "--config"])
        .arg(&path)
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0");
    for (k, v) in env {
        serve.env(k, v);
    }
    let out = serve.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HS256 needs at least 32"));

    // Long enough secrets pass.
    let long = [
        ("GW_SEC_AUTH_SECRET", &"k".repeat(32)[..]),
        ("GW_SEC_AUTH_SECRET_512", &"k".repeat(64)[..]),
    ];
    let fixed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("leeway = \"1h\"", "leeway = \"30s\"");
    std::fs::write(&path, fixed).unwrap();
    let (code, text) = check(&path, &long);
    assert_eq!(code, Some(0), "{text}");
}

/// The shipped meetinity.toml, as an attacker meets it: every upstream is
/// a raw-socket one, Redis is whatever runs locally (or none: each process
/// limits alone). The client's address is unique to this run (the config
/// trusts 127.0.0.1 as a proxy, so the test names it in X-Forwarded-For).
#[tokio::test]
async fn rotating_x_client_id_gets_no_fresh_bucket_with_the_shipped_meetinity_config() {
    let raw = RawUpstream::start(|_| {
        vec![Step::Write(response(
            200,
            &[("content-type", "application/json")],
            "{}",
        ))]
    })
    .await;
    let config = workspace().join("deploy/config/meetinity.toml");
    let gw = GatewayProcess::spawn(Some(&config), &[("GATEWAY_UPSTREAM", raw.addr.to_string())]);
    let admin = gw.admin;
    wait_until("the gateway is ready", || async move {
        raw_request(
            admin,
            "GET /ready HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        )
        .await
        .0 == 200
    })
    .await;
    let me = format!(
        "10.{}.{}.{}",
        fastrand::u8(..),
        fastrand::u8(..),
        fastrand::u8(1..255)
    );

    // Public route (limit 50 per 10 s, keyed on the client address): a new
    // X-Client-Id on every request.
    let statuses = burst(80, |i| {
        let id = format!("rotated-{i}-{}", fastrand::u64(..));
        get(
            &gw,
            "/api/hello",
            vec![("x-forwarded-for", me.clone()), ("x-client-id", id)],
        )
    })
    .await;
    assert_limited(&statuses);

    // Authenticated route (keyed on the subject): neither a new client id
    // nor a new address gives the same user a fresh bucket.
    let secret =
        std::fs::read_to_string(workspace().join("deploy/config/secrets/dev-jwt-secret")).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("hs-1".into());
    let sub = format!("sec-auth-{}-{}", std::process::id(), fastrand::u64(..));
    let claims = serde_json::json!({
        "sub": sub, "iss": "mock-upstream", "aud": "meetinity",
        "exp": now() + 600, "scope": "users:read",
    });
    let bearer = format!("Bearer {}", sign(h, &claims, secret.trim_end()));
    let statuses = burst(80, |i| {
        let ip = format!("172.16.{}.{}", i / 200, i % 200 + 1);
        let id = format!("rotated-{i}");
        get(
            &gw,
            "/api/profile",
            vec![
                ("authorization", bearer.clone()),
                ("x-forwarded-for", ip),
                ("x-client-id", id),
            ],
        )
    })
    .await;
    assert_limited(&statuses);
}

/// Runs `n` requests at once; their statuses, and how long they took.
async fn burst<F, Fut>(n: usize, f: F) -> (Vec<u16>, std::time::Duration)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (u16, String)>,
{
    let start = tokio::time::Instant::now();
    let all = futures_util::future::join_all((0..n).map(f)).await;
    for (s, text) in &all {
        assert!(*s == 200 || *s == 429, "{text}");
    }
    (all.into_iter().map(|(s, _)| s).collect(), start.elapsed())
}

/// 50 per 10 s: at least one request was limited, and no more passed than
/// the burst plus what refilled meanwhile (5/s) plus a margin.
fn assert_limited((statuses, took): &(Vec<u16>, std::time::Duration)) {
    let passed = statuses.iter().filter(|s| **s == 200).count();
    let allowed = 50 + (took.as_secs_f64() * 5.0).ceil() as usize + 2;
    assert!(passed < statuses.len(), "nothing limited: {statuses:?}");
    assert!(
        passed <= allowed,
        "{passed} passed in {took:?}: {statuses:?}"
    );
}
