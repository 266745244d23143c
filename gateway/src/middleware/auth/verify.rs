//! Token verification for one provider: key choice, algorithm allow-list,
//! signature and registered claims.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde_json::{Map, Value};

use super::error::AuthError;
use super::keys::{load_static, Jwks, Key};
use crate::config::AuthProviderConfig;

/// The verified claims of a token.
pub type Claims = Map<String, Value>;

/// The largest `leeway` a provider may set (validation refuses more; the
/// verifier clamps to it). It keeps the clock arithmetic of `exp`/`nbf`
/// checks far from any overflow, whatever a token or a config says.
pub const MAX_LEEWAY: Duration = Duration::from_secs(600);

/// Verifies tokens for one `[auth.NAME]` provider. Built once per config.
///
/// Required claims follow the config: `exp` always; `iss` when the provider
/// lists `issuers`, `aud` when it lists `audiences` (present *and* listed);
/// `nbf` is checked when present. A token whose JWS header carries `crit`
/// is refused: we understand no extension (RFC 7515 §4.1.11).
#[derive(Debug)]
pub struct Verifier {
    /// Provider name (for logs).
    pub name: Arc<str>,
    keys: Vec<Arc<Key>>,
    jwks: Option<Arc<Jwks>>,
    /// One validation per algorithm any key allows, built once.
    validations: Vec<(Algorithm, Validation)>,
    /// Claim name → header it is forwarded in.
    pub forward: Vec<(String, HeaderName)>,
}

/// Outcome of the synchronous part of verification.
#[derive(Debug)]
pub enum Checked {
    /// Valid token.
    Valid(Claims),
    /// The `kid` is not cached but the JWKS may know it after a refresh.
    UnknownKid(Arc<str>),
}

impl Verifier {
    /// Compiles a *validated* provider config (reads secrets and PEM files).
    pub fn new(name: &str, cfg: &AuthProviderConfig) -> Result<Self, String> {
        let keys = cfg
            .keys
            .iter()
            .map(|k| load_static(k).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let jwks = cfg
            .jwks
            .as_ref()
            .map(|j| Jwks::new(name, j))
            .transpose()?
            .map(Arc::new);
        let mut algs: Vec<Algorithm> = keys.iter().flat_map(|k| k.algorithms.clone()).collect();
        if let Some(c) = &cfg.jwks {
            algs.extend(super::keys::parse_algorithms(&c.algorithms)?);
        }
        algs.sort_by_key(|a| format!("{a:?}"));
        algs.dedup();
        let validations = algs
            .into_iter()
            .map(|alg| {
                let mut v = Validation::new(alg);
                v.leeway = cfg.leeway.min(MAX_LEEWAY).as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if !cfg.issuers.is_empty() {
                    required.push("iss");
                }
                if !cfg.audiences.is_empty() {
                    required.push("aud");
                }
                v.set_required_spec_claims(&required);
                if cfg.issuers.is_empty() {
                    v.iss = None;
                } else {
                    v.set_issuer(&cfg.issuers);
                }
                if cfg.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&cfg.audiences);
                }
                (alg, v)
            })
            .collect();
        let forward = cfg
            .forward_claims
            .iter()
            .map(|(claim, h)| {
                HeaderName::from_bytes(h.as_bytes())
                    .map(|h| (claim.clone(), h))
                    .map_err(|_| format!("invalid header name {h:?}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: Arc::from(name),
            keys,
            jwks,
            validations,
            forward,
        })
    }

    /// The JWKS cache, if the provider has one.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// Verifies with the keys at hand; says when a JWKS refresh might help.
    pub fn check(&self, token: &str) -> Result<Checked, AuthError> {
        let header = decode_header(token)?;
        let alg = header.alg;
        match header.kid.as_deref() {
            Some(kid) => {
                let key = self
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .cloned()
                    .or_else(|| self.jwks.as_ref().and_then(|j| j.get(kid)));
                match key {
                    Some(k) => self.verify(token, alg, &k).map(Checked::Valid),
                    None if self.jwks.is_some() => Ok(Checked::UnknownKid(Arc::from(kid))),
                    None => Err(AuthError::Invalid("unknown key id")),
                }
            }
            None => {
                // Without a kid, only keys without one that allow this alg.
                let mut last = AuthError::Invalid("no key for this algorithm");
                for k in self
                    .keys
                    .iter()
                    .filter(|k| k.kid.is_none() && k.algorithms.contains(&alg))
                {
                    match self.verify(token, alg, k) {
                        Ok(c) => return Ok(Checked::Valid(c)),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    /// Verifies after a JWKS refresh for an unknown `kid`.
    pub async fn check_refreshed(&self, token: &str, kid: &str) -> Result<Claims, AuthError> {
        let jwks = self
            .jwks
            .as_ref()
            .ok_or(AuthError::Invalid("unknown key id"))?;
        let key = jwks
            .refresh_for(kid)
            .await
            .ok_or(AuthError::Invalid("unknown key id"))?;
        let header = decode_header(token)?;
        self.verify(token, header.alg, &key)
    }

    fn verify(&self, token: &str, alg: Algorithm, key: &Key) -> Result<Claims, AuthError> {
        // The allow-list, before any cryptography: this is what stops
        // algorithm confusion (an HS256 token against an RSA key).
        if !key.algorithms.contains(&alg) {
            return Err(AuthError::Invalid("algorithm not allowed for this key"));
        }
        let v = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(AuthError::Invalid("algorithm not allowed for this key"))?;
        jsonwebtoken::decode::<Claims>(token, &key.key, v)
            .map(|d| d.claims)
            .map_err(|e| AuthError::Invalid(describe(e.kind())))
    }
}

/// The JWS header, refused when it lists critical extensions: we implement
/// none, and RFC 7515 §4.1.11 says a recipient that does not understand one
/// must reject the token. (`jsonwebtoken` parses `crit` but does not act on
/// it.)
fn decode_header(token: &str) -> Result<Header, AuthError> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| AuthError::Invalid("malformed token or unsupported alg"))?;
    if header.crit.is_some() {
        return Err(AuthError::Invalid("unsupported critical header parameter"));
    }
    Ok(header)
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "token expired",
        K::ImmatureSignature => "token not yet valid",
        K::InvalidIssuer => "wrong issuer",
        K::InvalidAudience => "wrong audience",
        K::InvalidSignature => "invalid signature",
        K::InvalidAlgorithm => "algorithm not allowed for this key",
        K::MissingRequiredClaim(_) => "a required claim is missing",
        _ => "malformed token",
    }
}

/// Scopes granted by `scope` (space separated) and `scp` (string or list).
pub fn scopes(claims: &Claims) -> Vec<&str> {
    let mut all = split(claims.get("scope"));
    all.extend(split(claims.get("scp")));
    all
}

fn split(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => s.split_ascii_whitespace().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Roles of the `roles` claim (space separated, or a list).
pub fn roles(claims: &Claims) -> Vec<&str> {
    split(claims.get("roles"))
}

/// Whether the `roles` claim (string or list) holds `role`.
pub fn has_role(claims: &Claims, role: &str) -> bool {
    match claims.get("roles") {
        Some(Value::String(s)) => s.split_ascii_whitespace().any(|r| r == role),
        Some(Value::Array(a)) => a.iter().any(|r| r.as_str() == Some(role)),
        _ => false,
    }
}
