//! Why a request was not authenticated or not authorized.

/// An authentication (401) or authorization (403) failure. The messages are
/// fixed strings: they go to the client in `error_description` and must not
/// echo token contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer token on a route that requires one.
    #[error("a bearer token is required")]
    Missing,
    /// The token is malformed, expired, badly signed or not for us.
    #[error("{0}")]
    Invalid(&'static str),
    /// The token is valid but lacks a required scope or role.
    #[error("{0}")]
    Forbidden(&'static str),
}

impl AuthError {
    /// The `WWW-Authenticate` challenge (RFC 6750) for this failure.
    pub fn challenge(&self) -> String {
        match self {
            Self::Missing => r#"Bearer realm="gateway""#.to_owned(),
            Self::Invalid(d) => {
                format!(r#"Bearer error="invalid_token", error_description="{d}""#)
            }
            Self::Forbidden(d) => {
                format!(r#"Bearer error="insufficient_scope", error_description="{d}""#)
            }
        }
    }
}
