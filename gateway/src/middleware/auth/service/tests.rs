#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};

use super::*;
use crate::config::{AuthKeyConfig, AuthProviderConfig};

const SECRET: &str = "unit-test-secret-0123456789-abcdef";

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

/// An inner service that counts calls and echoes `x-user-id`, the
/// `Authorization` it received and the [`Identity`] subject back.
fn stub(hits: Arc<AtomicUsize>) -> Stub {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
        hits.fetch_add(1, Ordering::SeqCst);
        let mut resp = Response::new(Body::Empty);
        if let Some(v) = req.headers().get("x-user-id") {
            resp.headers_mut().insert("x-user-id", v.clone());
        }
        if let Some(v) = req.headers().get("authorization") {
            resp.headers_mut().insert("x-seen-authorization", v.clone());
        }
        if let Some(id) = req.extensions().get::<Identity>() {
            let v = format!("{}|{}", id.subject, id.roles.join(","));
            resp.headers_mut()
                .insert("x-identity", HeaderValue::from_str(&v).unwrap());
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

#[tokio::test(start_paused = true)]
async fn claims_the_provider_lists_are_required_and_crit_is_refused() {
    let (mut s, hits) = svc(AuthMode::Required, &[]);
    let mut no_iss = good();
    no_iss.as_object_mut().unwrap().remove("iss");
    let mut no_aud = good();
    no_aud.as_object_mut().unwrap().remove("aud");
    let mut no_exp = good();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut iss_not_a_string = good();
    iss_not_a_string["iss"] = 7.into();
    let missing = AuthError::Invalid("a required claim is missing");
    for claims in [no_iss, no_aud, no_exp, iss_not_a_string] {
        let t = token(jsonwebtoken::Algorithm::HS256, claims);
        assert_eq!(run(&mut s, req(Some(&t))).await.unwrap_err(), missing);
    }
    // `crit` naming anything, even a registered claim, is refused.
    for crit in [vec!["exp".to_owned()], vec!["b64".to_owned()], vec![]] {
        let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
        h.crit = Some(crit);
        let t = jsonwebtoken::encode(&h, &good(), &EncodingKey::from_secret(SECRET.as_bytes()))
            .unwrap();
        assert_eq!(
            run(&mut s, req(Some(&t))).await.unwrap_err(),
            AuthError::Invalid("unsupported critical header parameter")
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn without_issuers_or_audiences_those_claims_are_optional() {
    let mut cfg = provider();
    cfg.issuers.clear();
    cfg.audiences.clear();
    let verifier = Arc::new(Verifier::new("t", &cfg).unwrap());
    let route = RouteAuthConfig {
        provider: "t".into(),
        mode: AuthMode::Required,
        scopes: vec![],
        roles: vec![],
    };
    let hits = Arc::new(AtomicUsize::new(0));
    let mut s = AuthLayer::new(RoutePolicy::new(verifier, &route)).layer(stub(hits.clone()));
    let mut bare = good();
    bare.as_object_mut().unwrap().remove("iss");
    bare.as_object_mut().unwrap().remove("aud");
    let t = token(jsonwebtoken::Algorithm::HS256, bare);
    assert!(run(&mut s, req(Some(&t))).await.is_ok());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn only_the_verified_credential_is_forwarded_with_its_identity() {
    let t = token(jsonwebtoken::Algorithm::HS256, good());
    for mode in [AuthMode::Required, AuthMode::Optional] {
        let (mut s, hits) = svc(mode, &[]);
        let resp = run(&mut s, req(Some(&t))).await.unwrap();
        assert_eq!(
            resp.headers()["x-seen-authorization"],
            format!("Bearer {t}")
        );
        assert_eq!(resp.headers()["x-identity"], "u1|user");
        // Another scheme, two credentials, an empty bearer: never forwarded.
        let basic = Request::get("/x")
            .header("authorization", "Basic dTpw")
            .body(Body::Empty)
            .unwrap();
        assert_eq!(run(&mut s, basic).await.unwrap_err(), AuthError::Missing);
        let two = Request::get("/x")
            .header("authorization", format!("Bearer {t}"))
            .header("authorization", "Bearer forged")
            .body(Body::Empty)
            .unwrap();
        assert_eq!(
            run(&mut s, two).await.unwrap_err(),
            AuthError::Invalid("more than one Authorization header")
        );
        let empty = Request::get("/x")
            .header("authorization", "Bearer  ")
            .body(Body::Empty)
            .unwrap();
        assert_eq!(run(&mut s, empty).await.unwrap_err(), AuthError::Missing);
        assert_eq!(hits.load(Ordering::SeqCst), 1, "{mode:?}");
    }
}

/// A JSON number or an out-of-range stand-in for one, as a token may carry.
fn extreme() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    prop_oneof![
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        Just(serde_json::Value::from(u64::MAX)),
        Just(serde_json::Value::from(i64::MIN)),
        Just(serde_json::json!(1e308)),
        Just(serde_json::json!(-1e308)),
        Just(serde_json::json!("99999999999999999999999")),
        (-100_000i64..100_000).prop_map(|d| serde_json::Value::from(now() + d)),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    /// Extreme `exp`/`nbf`/`iat` and `leeway` never panic, and the outcome is
    /// what saturating arithmetic says: valid iff `exp` is a non-negative
    /// integer-like number not before now - leeway and `nbf`, when present,
    /// not after now + leeway.
    #[test]
    fn extreme_jwt_times_saturate(
        exp in extreme(),
        nbf in proptest::option::of(extreme()),
        iat in extreme(),
        leeway in proptest::prelude::any::<u64>(),
    ) {
        let mut cfg = provider();
        cfg.leeway = std::time::Duration::from_secs(leeway);
        let v = Verifier::new("t", &cfg).unwrap();
        let mut claims = good();
        claims["exp"] = exp.clone();
        claims["iat"] = iat;
        if let Some(n) = &nbf {
            claims["nbf"] = n.clone();
        }
        let t = token(jsonwebtoken::Algorithm::HS256, claims);
        let got = v.check(&t);
        let lee = leeway.min(super::super::verify::MAX_LEEWAY.as_secs());
        let now = u64::try_from(now()).unwrap();
        // jsonwebtoken rounds finite non-negative floats below u64::MAX.
        let time = |x: &serde_json::Value| -> Option<u64> {
            x.as_u64().or_else(|| {
                x.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                    .map(|f| f.round() as u64)
            })
        };
        let exp_ok = time(&exp).is_some_and(|e| e >= now.saturating_sub(lee));
        let nbf_ok = match &nbf {
            None | Some(serde_json::Value::Null) => true,
            Some(n) => time(n).is_some_and(|n| n <= now.saturating_add(lee)),
        };
        // A second may pass between our `now` and the verifier's: only
        // judge values that are not within two seconds of a boundary.
        let near = |x: &serde_json::Value, b: u64| time(x).is_some_and(|t| t.abs_diff(b) <= 2);
        if near(&exp, now.saturating_sub(lee))
            || nbf.as_ref().is_some_and(|n| near(n, now.saturating_add(lee)))
        {
            return Ok(());
        }
        proptest::prop_assert_eq!(
            matches!(got, Ok(Checked::Valid(_))),
            exp_ok && nbf_ok,
            "exp {:?} nbf {:?} leeway {} -> {:?}", exp, nbf, leeway, got
        );
    }
}
