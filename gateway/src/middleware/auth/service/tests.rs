#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};

use super::*;
use crate::config::{AuthKeyConfig, AuthProviderConfig};

const SECRET: &str = "unit-test-secret-0123456789";

fn provider() -> AuthProviderConfig {
    let dir = std::env::temp_dir().join(format!("gw-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // One file per call: tests run in parallel.
    static N: AtomicUsize = AtomicUsize::new(0);
    let file = dir.join(format!("secret-{}", N.fetch_add(1, Ordering::SeqCst)));
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    AuthProviderConfig {
        issuers: vec!["iss-a".into()],
        audiences: vec!["aud-a".into()],
        leeway: std::time::Duration::from_secs(5),
        keys: vec![AuthKeyConfig {
            kid: None,
            algorithms: vec!["HS256".into()],
            secret_env: None,
            secret_file: Some(file),
            pem_file: None,
        }],
        jwks: None,
        forward_claims: [("sub".to_owned(), "x-user-id".to_owned())].into(),
    }
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn token(alg: jsonwebtoken::Algorithm, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn good() -> serde_json::Value {
    serde_json::json!({"sub": "u1", "iss": "iss-a", "aud": "aud-a", "exp": now() + 60, "scope": "read write", "roles": ["user"]})
}

type Stub = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// An inner service that counts calls and echoes `x-user-id` back.
fn stub(hits: Arc<AtomicUsize>) -> Stub {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
        hits.fetch_add(1, Ordering::SeqCst);
        let mut resp = Response::new(Body::Empty);
        if let Some(v) = req.headers().get("x-user-id") {
            resp.headers_mut().insert("x-user-id", v.clone());
        }
        async move { Ok::<_, BoxError>(resp) }
    }))
}

fn svc(mode: AuthMode, scopes: &[&str]) -> (Auth<Stub>, Arc<AtomicUsize>) {
    let verifier = Arc::new(Verifier::new("t", &provider()).unwrap());
    let cfg = RouteAuthConfig {
        provider: "t".into(),
        mode,
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        roles: vec![],
    };
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = AuthLayer::new(RoutePolicy::new(verifier, &cfg));
    (layer.layer(stub(hits.clone())), hits)
}

fn req(token: Option<&str>) -> Request<Body> {
    let mut b = Request::get("/x").header("x-user-id", "spoofed");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::Empty).unwrap()
}

async fn run(s: &mut Auth<Stub>, r: Request<Body>) -> Result<Response<Body>, AuthError> {
    s.ready()
        .await
        .unwrap()
        .call(r)
        .await
        .map_err(|e| *e.downcast::<AuthError>().expect("an AuthError"))
}

#[tokio::test(start_paused = true)]
async fn a_valid_token_passes_with_its_subject_and_no_spoofed_header() {
    let (mut s, hits) = svc(AuthMode::Required, &["read"]);
    let resp = run(
        &mut s,
        req(Some(&token(jsonwebtoken::Algorithm::HS256, good()))),
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["x-user-id"], "u1");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn bad_tokens_never_reach_the_inner_service() {
    let (mut s, hits) = svc(AuthMode::Required, &["read"]);
    let mut expired = good();
    expired["exp"] = (now() - 3600).into();
    let mut wrong_iss = good();
    wrong_iss["iss"] = "evil".into();
    let mut wrong_aud = good();
    wrong_aud["aud"] = "other".into();
    let mut future = good();
    future["nbf"] = (now() + 3600).into();
    let none = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(good().to_string().as_bytes())
    );
    let cases = [
        (None, AuthError::Missing),
        (
            Some(token(jsonwebtoken::Algorithm::HS256, expired)),
            AuthError::Invalid("token expired"),
        ),
        (
            Some(token(jsonwebtoken::Algorithm::HS256, wrong_iss)),
            AuthError::Invalid("wrong issuer"),
        ),
        (
            Some(token(jsonwebtoken::Algorithm::HS256, wrong_aud)),
            AuthError::Invalid("wrong audience"),
        ),
        (
            Some(token(jsonwebtoken::Algorithm::HS256, future)),
            AuthError::Invalid("token not yet valid"),
        ),
        // The key allows HS256 only.
        (
            Some(token(jsonwebtoken::Algorithm::HS384, good())),
            AuthError::Invalid("no key for this algorithm"),
        ),
        (
            Some(none),
            AuthError::Invalid("malformed token or unsupported alg"),
        ),
        (
            Some("garbage".into()),
            AuthError::Invalid("malformed token or unsupported alg"),
        ),
    ];
    for (t, want) in cases {
        assert_eq!(run(&mut s, req(t.as_deref())).await.unwrap_err(), want);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn missing_scope_is_forbidden() {
    let (mut s, hits) = svc(AuthMode::Required, &["admin"]);
    let err = run(
        &mut s,
        req(Some(&token(jsonwebtoken::Algorithm::HS256, good()))),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AuthError::Forbidden(_)));
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn optional_admits_anonymous_but_not_bad_tokens() {
    let (mut s, hits) = svc(AuthMode::Optional, &[]);
    let resp = run(&mut s, req(None)).await.unwrap();
    // The client's copy of the claim header was removed.
    assert!(resp.headers().get("x-user-id").is_none());
    assert!(run(&mut s, req(Some("nope"))).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

fn base64_url(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, x)| n | u32::from(*x) << (16 - 8 * i));
        for i in 0..=c.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
