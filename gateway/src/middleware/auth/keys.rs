//! Verification keys: static ones from config, and a JWKS cache.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use crate::client::{self, ClientSettings, ColdClient};
use crate::config::{AuthKeyConfig, JwksConfig};

/// One verification key and the algorithms it may verify.
#[derive(Clone)]
pub struct Key {
    /// Matched against the token's `kid`, when set.
    pub kid: Option<Arc<str>>,
    /// The allow-list: a token whose `alg` is not here is rejected.
    pub algorithms: Vec<Algorithm>,
    /// The key material.
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    // Never print key material (HMAC secrets are keys).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Parses an algorithm list (`["RS256", "ES256"]`); never empty on success.
pub fn parse_algorithms(list: &[String]) -> Result<Vec<Algorithm>, String> {
    if list.is_empty() {
        return Err("at least one algorithm is required".into());
    }
    list.iter()
        .map(|a| {
            Algorithm::from_str(a).map_err(|_| {
                format!("unknown algorithm {a:?} (HS256/384/512, RS*, PS*, ES256/384, EdDSA)")
            })
        })
        .collect()
}

impl Key {
    /// Loads one static key (see [`load_static`]).
    pub fn load(cfg: &AuthKeyConfig) -> Result<Self, String> {
        load_static(cfg)
    }
}

/// Loads one static key. Reads the environment or files: called by
/// validation (which reports the error with its key path) and at build.
pub fn load_static(cfg: &AuthKeyConfig) -> Result<Key, String> {
    let algorithms = parse_algorithms(&cfg.algorithms)?;
    let sources = [
        cfg.secret_env.is_some(),
        cfg.secret_file.is_some(),
        cfg.pem_file.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err("set exactly one of secret_env, secret_file, pem_file".into());
    }
    let secret = cfg.secret_env.is_some() || cfg.secret_file.is_some();
    if secret && !algorithms.iter().all(|a| is_hmac(*a)) {
        return Err("a secret can only verify HS256, HS384 or HS512".into());
    }
    let key = if let Some(var) = &cfg.secret_env {
        let secret = std::env::var(var)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("environment variable {var:?} is not set"))?;
        hmac_key(&algorithms, secret.as_bytes())?
    } else if let Some(path) = &cfg.secret_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        hmac_key(&algorithms, text.trim_end_matches(['\r', '\n']).as_bytes())?
    } else if let Some(path) = &cfg.pem_file {
        if algorithms.iter().any(|a| is_hmac(*a)) {
            return Err("HMAC algorithms cannot be used with a public key".into());
        }
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        pem_key(&algorithms, &pem)?
    } else {
        return Err("no key source".into());
    };
    Ok(Key {
        kid: cfg.kid.as_deref().map(Arc::from),
        algorithms,
        key,
    })
}

fn hmac_key(algorithms: &[Algorithm], secret: &[u8]) -> Result<DecodingKey, String> {
    if !algorithms.iter().all(|a| is_hmac(*a)) {
        return Err("a secret can only verify HS256, HS384 or HS512".into());
    }
    // RFC 7518 §3.2: a key of the same size as the hash output or larger.
    // A key allowed several HMAC algorithms must be long enough for each.
    if let Some((alg, min)) = algorithms
        .iter()
        .map(|a| (*a, hmac_min_len(*a)))
        .max_by_key(|(_, n)| *n)
    {
        if secret.len() < min {
            return Err(format!(
                "the HMAC secret is {} bytes; {alg:?} needs at least {min} (RFC 7518 §3.2)",
                secret.len()
            ));
        }
    }
    Ok(DecodingKey::from_secret(secret))
}

/// The shortest HMAC secret RFC 7518 §3.2 allows: the hash output size.
fn hmac_min_len(a: Algorithm) -> usize {
    match a {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

fn pem_key(algorithms: &[Algorithm], pem: &[u8]) -> Result<DecodingKey, String> {
    use jsonwebtoken::AlgorithmFamily as F;
    let family = algorithms.first().map(|a| a.family());
    if algorithms.iter().any(|a| Some(a.family()) != family) {
        return Err("all algorithms of one key must be of one family".into());
    }
    let key = match family {
        Some(F::Rsa) => DecodingKey::from_rsa_pem(pem),
        Some(F::Ec) => DecodingKey::from_ec_pem(pem),
        Some(F::Ed) => DecodingKey::from_ed_pem(pem),
        _ => return Err("no public-key algorithm".into()),
    };
    key.map_err(|e| format!("invalid PEM public key: {e}"))
}

/// A JWKS document kept fresh: fetched at start, on an interval, and on an
/// unknown `kid` at most once per `min_refresh_interval`. Fetched with the
/// cold-path client ([`crate::client`]): `https://` (system roots plus the
/// optional `ca_file`), or `http://` to a loopback host; bounded by
/// `timeout` and [`client::MAX_JWKS_BODY`]; redirects are not followed.
#[derive(Debug)]
pub struct Jwks {
    provider: Arc<str>,
    url: http::Uri,
    algorithms: Vec<Algorithm>,
    min_refresh: Duration,
    /// Period of the background refresh.
    pub refresh_interval: Duration,
    keys: ArcSwap<HashMap<Arc<str>, Arc<Key>>>,
    /// Single flight: one fetch at a time; also records the last attempt.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    client: ColdClient,
}

impl Jwks {
    /// What is wrong with `cfg`, as (key under `jwks`, message) pairs: the
    /// URL rule, the algorithms, the CA bundle. Reads `ca_file`; never
    /// connects. Validation and [`Jwks::new`] share it.
    pub fn check(cfg: &JwksConfig) -> Vec<(&'static str, String)> {
        let mut errs = Vec::new();
        if let Err(m) = client::check_url(&cfg.url, client::JWKS_HTTPS_REASON) {
            errs.push(("url", m));
        }
        match parse_algorithms(&cfg.algorithms) {
            Ok(a) if a.iter().any(|a| is_hmac(*a)) => errs.push((
                "algorithms",
                "JWKS keys are public keys: HMAC algorithms are not allowed".into(),
            )),
            Ok(_) => {}
            Err(m) => errs.push(("algorithms", m)),
        }
        if let Some(path) = &cfg.ca_file {
            if let Err(m) = client::load_ca_file(path) {
                errs.push(("ca_file", m));
            }
        }
        errs
    }

    /// A cache for provider `provider`'s `cfg` (validated), with its client;
    /// empty until the first fetch.
    pub fn new(provider: &str, cfg: &JwksConfig) -> Result<Self, String> {
        if let Some((key, m)) = Self::check(cfg).into_iter().next() {
            return Err(format!("jwks.{key}: {m}"));
        }
        let url = client::check_url(&cfg.url, client::JWKS_HTTPS_REASON)?;
        let algorithms = parse_algorithms(&cfg.algorithms)?;
        let client = ColdClient::new(&ClientSettings {
            connect_timeout: cfg.timeout,
            timeout: cfg.timeout,
            max_body: client::MAX_JWKS_BODY,
            ca_file: cfg.ca_file.clone(),
        })
        .map_err(|m| format!("jwks.ca_file: {m}"))?;
        Ok(Self {
            provider: Arc::from(provider),
            url,
            algorithms,
            min_refresh: cfg.min_refresh_interval,
            refresh_interval: cfg.refresh_interval,
            keys: ArcSwap::from_pointee(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            client,
        })
    }

    /// The cached key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<Arc<Key>> {
        self.keys.load().get(kid).cloned()
    }

    /// Number of cached keys.
    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    /// Whether no key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fetches now (the periodic refresh).
    pub async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_store().await;
    }

    /// For an unknown `kid`: waits for a fetch in flight, else fetches if
    /// the last fetch is older than `min_refresh_interval`; then looks again.
    pub async fn refresh_for(&self, kid: &str) -> Option<Arc<Key>> {
        let mut last = self.last_fetch.lock().await;
        if let Some(k) = self.get(kid) {
            return Some(k);
        }
        let now = Instant::now();
        if last.is_some_and(|t| now.saturating_duration_since(t) < self.min_refresh) {
            return None;
        }
        *last = Some(now);
        self.fetch_and_store().await;
        drop(last);
        self.get(kid)
    }

    async fn fetch_and_store(&self) {
        // The client bounds the whole fetch by `timeout` and the body by
        // MAX_JWKS_BODY.
        match self.fetch().await {
            Ok(set) => {
                let keys = self.compile(&set);
                tracing::debug!(provider = %self.provider, url = %self.url, keys = keys.len(), "JWKS refreshed");
                self.keys.store(Arc::new(keys));
            }
            Err(e) => tracing::warn!(
                provider = %self.provider,
                url = %self.url,
                error = %e,
                "JWKS fetch failed; tokens with a kid not cached are refused until a fetch succeeds"
            ),
        }
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let resp = self
            .client
            .get(&self.url)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if status.is_redirection() {
            let to = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return Err(format!(
                "status {status}, redirect to {to:?} not followed: configure the final URL"
            ));
        }
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        serde_json::from_slice(resp.body()).map_err(|e| format!("invalid JWKS: {e}"))
    }

    /// Keys with a `kid`, each allowed the configured algorithms that fit
    /// its type (and only its own `alg` when the JWK names one).
    fn compile(&self, set: &JwkSet) -> HashMap<Arc<str>, Arc<Key>> {
        let mut out = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.as_deref() else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                tracing::warn!(kid, "unusable JWK skipped");
                continue;
            };
            let named = jwk
                .common
                .key_algorithm
                .and_then(|ka| Algorithm::from_str(&ka.to_string()).ok());
            let algorithms: Vec<Algorithm> = self
                .algorithms
                .iter()
                .copied()
                .filter(|a| a.family() == key.family() && named.is_none_or(|n| n == *a))
                .collect();
            if algorithms.is_empty() {
                continue;
            }
            let kid: Arc<str> = Arc::from(kid);
            out.insert(
                kid.clone(),
                Arc::new(Key {
                    kid: Some(kid),
                    algorithms,
                    key,
                }),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, Validation};

    // Throw-away test keys (openssl genpkey), never used anywhere else.
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEILz+61QiasQtxmYUejt1yOpLZMhpLikiBbC++ukn5m1i\n-----END PRIVATE KEY-----\n";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEASXd4aMQXVsIXSBm8/oUObHjSuJqxodc88bLfPVmI9Ho=\n-----END PUBLIC KEY-----\n";
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgbAqaB0EFbsdXyl2Q\nP+p7zKXR3OuBqGWqUB82J5uCYhmhRANCAAQRQ4xtqcKedDw+quHJHfR44coX0rMR\nTl5UOcSkcdfGfSVJ8uejubDwx2Hh1x4kATOJ7/wvahAk1MKQ7gdLOgL3\n-----END PRIVATE KEY-----\n";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEUOMbanCnnQ8PqrhyR30eOHKF9Kz\nEU5eVDnEpHHXxn0lSfLno7mw8Mdh4dceJAEzie/8L2oQJNTCkO4HSzoC9w==\n-----END PUBLIC KEY-----\n";

    fn pem_cfg(name: &str, pem: &str, algs: &[&str]) -> AuthKeyConfig {
        let path = std::env::temp_dir().join(format!("gw-{name}-{}.pem", std::process::id()));
        std::fs::write(&path, pem).unwrap();
        AuthKeyConfig {
            kid: None,
            algorithms: algs.iter().map(|a| (*a).to_owned()).collect(),
            secret_env: None,
            secret_file: None,
            pem_file: Some(path),
        }
    }

    fn roundtrip(key: &Key, alg: Algorithm, private: &EncodingKey) {
        let claims = serde_json::json!({ "sub": "x", "exp": 4_000_000_000u64 });
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, private).unwrap();
        let v = Validation::new(alg);
        jsonwebtoken::decode::<serde_json::Value>(&token, &key.key, &v).unwrap();
    }

    #[test]
    fn ed25519_and_ec_public_keys_verify_their_tokens() {
        let ed = load_static(&pem_cfg("ed", ED_PUBLIC, &["EdDSA"])).unwrap();
        roundtrip(
            &ed,
            Algorithm::EdDSA,
            &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        );
        let ec = load_static(&pem_cfg("ec", EC_PUBLIC, &["ES256"])).unwrap();
        roundtrip(
            &ec,
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        );
    }

    fn secret_cfg(name: &str, secret: &str, algs: &[&str]) -> AuthKeyConfig {
        let path = std::env::temp_dir().join(format!("gw-{name}-{}.secret", std::process::id()));
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        AuthKeyConfig {
            kid: None,
            algorithms: algs.iter().map(|a| (*a).to_owned()).collect(),
            secret_env: None,
            secret_file: Some(path),
            pem_file: None,
        }
    }

    #[test]
    fn hmac_secrets_are_at_least_the_hash_output_size() {
        let s32 = "k".repeat(32);
        let s48 = "k".repeat(48);
        let s64 = "k".repeat(64);
        assert!(load_static(&secret_cfg("h256", &s32, &["HS256"])).is_ok());
        let e = load_static(&secret_cfg("h256s", &s32[..31], &["HS256"])).unwrap_err();
        assert!(e.contains("31 bytes; HS256 needs at least 32"), "{e}");
        // Sixteen bytes (the old floor) no longer pass.
        assert!(load_static(&secret_cfg("h16", &s32[..16], &["HS256"])).is_err());
        let e = load_static(&secret_cfg("h384", &s32, &["HS384"])).unwrap_err();
        assert!(e.contains("HS384 needs at least 48"), "{e}");
        assert!(load_static(&secret_cfg("h384ok", &s48, &["HS384"])).is_ok());
        // The longest requirement of the key's algorithms applies.
        let e = load_static(&secret_cfg("hmix", &s48, &["HS256", "HS512"])).unwrap_err();
        assert!(e.contains("HS512 needs at least 64"), "{e}");
        assert!(load_static(&secret_cfg("hmixok", &s64, &["HS256", "HS512"])).is_ok());
        // The message never shows the secret.
        assert!(!e.contains("kkkk"));
    }

    #[test]
    fn key_material_and_algorithms_must_agree() {
        let err = |c: AuthKeyConfig| load_static(&c).unwrap_err();
        assert!(err(pem_cfg("hs", EC_PUBLIC, &["HS256"])).contains("HMAC"));
        assert!(err(pem_cfg("mix", EC_PUBLIC, &["ES256", "RS256"])).contains("one family"));
        assert!(err(pem_cfg("bad", "not a pem", &["RS256"])).contains("invalid PEM"));
        assert!(err(pem_cfg("none", EC_PUBLIC, &["none"])).contains("unknown algorithm"));
        let mut both = pem_cfg("two", EC_PUBLIC, &["ES256"]);
        both.secret_env = Some("X".into());
        assert!(err(both).contains("exactly one"));
        // Debug never shows key material.
        let k = load_static(&pem_cfg("dbg", EC_PUBLIC, &["ES256"])).unwrap();
        assert!(!format!("{k:?}").contains("MFkw"));
    }
}
