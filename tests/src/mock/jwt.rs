//! JWT issuing (`POST /api/auth/session`, `POST /api/v1/auth/token`) and the JWKS
//! (`GET /.well-known/jwks.json`).
//!
//! HS256 tokens are signed with the configured secret under kid `hs-1`; RS256 tokens with
//! the embedded test key `rs-1`, or `rs-2` when asked for. The JWKS publishes `rs-1`, and
//! `rs-2` too once rotation was switched on, so tests can watch a verifier follow a key
//! rotation. Keys are parsed and the JWKS documents rendered once, at start.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::{Deserialize, Serialize};

use super::keys::{RS1_PRIVATE_KEY_PEM, RS2_PRIVATE_KEY_PEM};

/// `iss` of every token the mock issues.
pub const JWT_ISSUER: &str = "mock-upstream";
/// `aud` of every token the mock issues.
pub const JWT_AUDIENCE: &str = "meetinity";
/// Key id of HS256 tokens.
pub const KID_HS: &str = "hs-1";
/// Key id of the RSA key published from the start.
pub const KID_RS1: &str = "rs-1";
/// Key id of the RSA key published only after rotation.
pub const KID_RS2: &str = "rs-2";

/// Lifetime of a token when the request names none.
const DEFAULT_TTL_SECS: u64 = 3600;
/// Longest lifetime a request may ask for (ten years).
const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;
const DEFAULT_SCOPE: &str = "users:read users:write profile";

/// The body of a token request; only `username` and `password` are required.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenRequest {
    username: Option<String>,
    password: Option<String>,
    alg: Option<String>,
    kid: Option<String>,
    ttl_secs: Option<u64>,
    scope: Option<String>,
    roles: Option<Vec<String>>,
}

/// A token that was issued, with its lifetime in seconds.
#[derive(Debug)]
pub(crate) struct Issued {
    pub(crate) token: String,
    pub(crate) expires_in: u64,
}

/// Why a token request was refused (all are the client's fault: 400).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("username and password are required")]
    MissingCredentials,
    #[error("unsupported alg {0:?}: use HS256 or RS256")]
    Alg(String),
    #[error("unknown kid {0:?} for {1:?}")]
    Kid(String, Algorithm),
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: String,
    iss: &'static str,
    aud: &'static str,
    iat: u64,
    nbf: u64,
    exp: u64,
    scope: &'a str,
    roles: &'a [String],
}

/// The signing keys and the two JWKS documents.
pub(crate) struct JwtKeys {
    hs: EncodingKey,
    rs1: EncodingKey,
    rs2: EncodingKey,
    jwks: Bytes,
    jwks_rotated: Bytes,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys").finish_non_exhaustive()
    }
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The JWK of one embedded RSA key.
fn jwk(kid: &str, pem: &str) -> io::Result<serde_json::Value> {
    let key = RsaPrivateKey::from_pkcs8_pem(pem).map_err(invalid)?;
    let b64 = |n: &rsa::BigUint| URL_SAFE_NO_PAD.encode(n.to_bytes_be());
    Ok(serde_json::json!({
        "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
        "n": b64(key.n()), "e": b64(key.e()),
    }))
}

impl JwtKeys {
    /// Parses the embedded keys and renders both JWKS documents.
    pub(crate) fn new(secret: &str) -> io::Result<Self> {
        let rs1_jwk = jwk(KID_RS1, RS1_PRIVATE_KEY_PEM)?;
        let rs2_jwk = jwk(KID_RS2, RS2_PRIVATE_KEY_PEM)?;
        let jwks =
            serde_json::to_vec(&serde_json::json!({ "keys": [rs1_jwk] })).map_err(invalid)?;
        let jwks_rotated = serde_json::to_vec(&serde_json::json!({ "keys": [rs1_jwk, rs2_jwk] }))
            .map_err(invalid)?;
        Ok(Self {
            hs: EncodingKey::from_secret(secret.as_bytes()),
            rs1: EncodingKey::from_rsa_pem(RS1_PRIVATE_KEY_PEM.as_bytes()).map_err(invalid)?,
            rs2: EncodingKey::from_rsa_pem(RS2_PRIVATE_KEY_PEM.as_bytes()).map_err(invalid)?,
            jwks: jwks.into(),
            jwks_rotated: jwks_rotated.into(),
        })
    }

    /// The JWKS document: `rs-1`, plus `rs-2` once rotated.
    pub(crate) fn jwks(&self, rotated: bool) -> Bytes {
        if rotated {
            self.jwks_rotated.clone()
        } else {
            self.jwks.clone()
        }
    }

    /// Issues a token for a request, or says why not.
    pub(crate) fn issue(&self, req: &TokenRequest) -> Result<Issued, TokenError> {
        let username = match (&req.username, &req.password) {
            (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => u,
            _ => return Err(TokenError::MissingCredentials),
        };
        let alg = match (req.alg.as_deref(), req.kid.as_deref()) {
            (None, Some(KID_RS1 | KID_RS2)) => Algorithm::RS256,
            (None, _) => Algorithm::HS256,
            (Some(a), _) if a.eq_ignore_ascii_case("HS256") => Algorithm::HS256,
            (Some(a), _) if a.eq_ignore_ascii_case("RS256") => Algorithm::RS256,
            (Some(a), _) => return Err(TokenError::Alg(a.to_owned())),
        };
        let (kid, key) = match (alg, req.kid.as_deref()) {
            (Algorithm::HS256, None | Some(KID_HS)) => (KID_HS, &self.hs),
            (Algorithm::RS256, None | Some(KID_RS1)) => (KID_RS1, &self.rs1),
            (Algorithm::RS256, Some(KID_RS2)) => (KID_RS2, &self.rs2),
            (alg, kid) => return Err(TokenError::Kid(kid.unwrap_or_default().to_owned(), alg)),
        };
        let ttl = req.ttl_secs.unwrap_or(DEFAULT_TTL_SECS).min(MAX_TTL_SECS);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let default_roles = [String::from("user")];
        let claims = Claims {
            sub: format!("user-{username}"),
            iss: JWT_ISSUER,
            aud: JWT_AUDIENCE,
            iat: now,
            nbf: now,
            exp: now + ttl,
            scope: req.scope.as_deref().unwrap_or(DEFAULT_SCOPE),
            roles: req.roles.as_deref().unwrap_or(&default_roles),
        };
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        let token = jsonwebtoken::encode(&header, &claims, key)?;
        Ok(Issued {
            token,
            expires_in: ttl,
        })
    }
}
