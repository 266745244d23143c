//! [`AuthLayer`], [`Auth`] and their [`ResponseFuture`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service, ServiceExt};

use super::error::AuthError;
use super::verify::{has_role, roles, scopes, Checked, Claims, Verifier};
use crate::body::Body;
use crate::config::{AuthMode, RouteAuthConfig};
use crate::error::BoxError;

/// What a verified token says about its bearer, put in the request's
/// extensions once auth admitted the request. Layers below (the rate
/// limiter's `subject` key, telemetry) read this instead of the token.
///
/// Only a verified token produces one: a request without it is anonymous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim.
    pub subject: Arc<str>,
    /// The `roles` claim (a list, or one space-separated string); empty
    /// when absent.
    pub roles: Vec<Box<str>>,
}

/// The whole verified claim set of a request's token, in its extensions,
/// only on routes whose header rules use `{claim.NAME}` placeholders (see
/// [`RoutePolicy::keep_claims`]); other routes pay nothing for it.
#[derive(Debug, Clone)]
pub struct VerifiedClaims(pub Arc<Claims>);

/// One route's auth policy, built at config load.
#[derive(Debug)]
pub struct RoutePolicy {
    verifier: Arc<Verifier>,
    mode: AuthMode,
    scopes: Vec<String>,
    roles: Vec<String>,
    keep_claims: bool,
}

impl RoutePolicy {
    /// The policy of a route using `verifier`.
    pub fn new(verifier: Arc<Verifier>, cfg: &RouteAuthConfig) -> Self {
        Self {
            verifier,
            mode: cfg.mode,
            scopes: cfg.scopes.clone(),
            roles: cfg.roles.clone(),
            keep_claims: false,
        }
    }

    /// Also put the verified claims in the request's extensions
    /// ([`VerifiedClaims`]), for the route's header rules.
    #[must_use]
    pub fn keep_claims(mut self, on: bool) -> Self {
        self.keep_claims = on;
        self
    }

    fn authorize(&self, claims: &Claims) -> Result<(), AuthError> {
        if !self.scopes.is_empty() {
            let granted = scopes(claims);
            if !self.scopes.iter().all(|s| granted.contains(&s.as_str())) {
                return Err(AuthError::Forbidden("a required scope is missing"));
            }
        }
        if !self.roles.is_empty() && !self.roles.iter().any(|r| has_role(claims, r)) {
            return Err(AuthError::Forbidden("a required role is missing"));
        }
        Ok(())
    }

    /// Authorizes and decorates the request with the claims.
    fn admit<B>(&self, req: &mut Request<B>, claims: &Claims) -> Result<(), AuthError> {
        self.authorize(claims)?;
        let h = req.headers_mut();
        for (claim, header) in &self.verifier.forward {
            let value = match claims.get(claim) {
                Some(serde_json::Value::String(s)) => HeaderValue::from_str(s).ok(),
                Some(serde_json::Value::Array(a)) => {
                    let parts: Vec<&str> = a.iter().filter_map(|v| v.as_str()).collect();
                    HeaderValue::from_str(&parts.join(" ")).ok()
                }
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    HeaderValue::from_str(&v.to_string()).ok()
                }
                _ => None,
            };
            if let Some(v) = value {
                h.insert(header.clone(), v);
            }
        }
        if let Some(serde_json::Value::String(sub)) = claims.get("sub") {
            let subject: Arc<str> = Arc::from(sub.as_str());
            let roles = roles(claims).into_iter().map(Box::from).collect();
            req.extensions_mut().insert(Identity { subject, roles });
        }
        if self.keep_claims {
            req.extensions_mut()
                .insert(VerifiedClaims(Arc::new(claims.clone())));
        }
        Ok(())
    }
}

/// Applies a [`RoutePolicy`]; see the module docs.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    policy: Arc<RoutePolicy>,
}

impl AuthLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: RoutePolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The auth middleware.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    policy: Arc<RoutePolicy>,
}

/// The bearer token of a request: `Ok(None)` when there is no
/// `Authorization` at all. Any credential that is present must be one bearer
/// token, in every mode: a second `Authorization` line (the edge refuses
/// those with 400; this is the layer's own guarantee) or another scheme is
/// refused, so the upstream never receives a credential auth did not verify.
fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(AuthError::Invalid("more than one Authorization header"));
    }
    v.to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .map(Some)
        .ok_or(AuthError::Missing)
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

pin_project! {
    /// The future of [`Auth`].
    #[project = Proj]
    pub enum ResponseFuture<F> {
        /// Admitted: the inner service's future.
        Inner { #[pin] fut: F },
        /// Refused without calling the inner service.
        Refused { err: Option<AuthError> },
        /// Waiting for a JWKS refresh (unknown `kid`), then the inner service.
        Refreshing { fut: BoxFuture },
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner { fut } => fut.poll(cx).map_err(Into::into),
            Proj::Refused { err } => Poll::Ready(Err(err
                .take()
                .unwrap_or(AuthError::Invalid("polled after completion"))
                .into())),
            Proj::Refreshing { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<S> Service<Request<Body>> for Auth<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let p = &self.policy;
        // Claim headers come only from a verified token, never the client.
        for (_, header) in &p.verifier.forward {
            req.headers_mut().remove(header);
        }
        if p.mode == AuthMode::Off {
            return ResponseFuture::Inner {
                fut: self.inner.call(req),
            };
        }
        // Optional mode admits a request with no credential at all, as
        // anonymous; a credential that is present must verify (401 otherwise,
        // as in required mode), so an invalid one is never forwarded.
        let checked = match bearer(req.headers()) {
            Ok(None) if p.mode == AuthMode::Optional => {
                return ResponseFuture::Inner {
                    fut: self.inner.call(req),
                }
            }
            Ok(None) => Err(AuthError::Missing),
            Ok(Some(token)) => p.verifier.check(token),
            Err(e) => Err(e),
        };
        match checked {
            Ok(Checked::Valid(claims)) => match p.admit(&mut req, &claims) {
                Ok(()) => ResponseFuture::Inner {
                    fut: self.inner.call(req),
                },
                Err(e) => ResponseFuture::Refused { err: Some(e) },
            },
            Ok(Checked::UnknownKid(kid)) => {
                // Cold path: copy the token (read again, as checked above)
                // only here; take the service that was made ready, leave a
                // clone.
                let token = bearer(req.headers())
                    .ok()
                    .flatten()
                    .unwrap_or_default()
                    .to_owned();
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let policy = self.policy.clone();
                ResponseFuture::Refreshing {
                    fut: Box::pin(async move {
                        let claims = policy.verifier.check_refreshed(&token, &kid).await?;
                        policy.admit(&mut req, &claims)?;
                        inner.oneshot(req).await.map_err(Into::into)
                    }),
                }
            }
            Err(e) => ResponseFuture::Refused { err: Some(e) },
        }
    }
}

#[cfg(test)]
mod tests;
