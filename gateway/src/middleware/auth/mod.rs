//! JWT authentication.
//!
//! A provider (`[auth.NAME]`) is compiled once per config into a
//! [`Verifier`]: static keys (HMAC secrets read from the environment or a
//! file, RSA/EC/Ed25519 PEM public keys) and/or a JWKS document fetched at
//! start, refreshed on an interval and on an unknown `kid` (at most once per
//! `min_refresh_interval`, so a flood of made-up `kid`s cannot hammer the
//! issuer). Every key has an allow-list of algorithms: `alg: none` never
//! parses, and a token whose `alg` a key does not allow (an HS256 token
//! "signed" with an RSA public key) is rejected before any signature check.
//!
//! [`AuthLayer`] applies one route's policy: required / optional / off,
//! required scopes and roles (403), claims forwarded as headers after any
//! client-sent copy was removed. Failures are [`AuthError`]s, rendered by
//! `crate::error` as 401 with `WWW-Authenticate: Bearer error="invalid_token"`
//! or 403 with `error="insufficient_scope"`.

mod error;
mod keys;
mod service;
mod verify;

pub use error::AuthError;
pub use keys::{parse_algorithms, Jwks, Key};
pub use service::{Auth, AuthLayer, Identity, ResponseFuture, RoutePolicy, VerifiedClaims};
pub use verify::{Claims, Verifier, MAX_LEEWAY};
