//! Route matching: longest path prefix on segment boundaries, then host, then
//! method. Routes are compiled once per config load; matching allocates
//! nothing.

use http::Method;

use crate::error::GatewayError;

/// A route's matching rules (the part of a route the router needs).
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Path prefix, without a trailing slash unless it is `/`.
    pub prefix: String,
    /// Lower-case host without port; `None` matches any.
    pub host: Option<String>,
    /// Allowed methods; empty matches any.
    pub methods: Vec<Method>,
}

impl Matcher {
    /// Builds a matcher from config values (already validated).
    pub fn new(prefix: &str, host: Option<&str>, methods: &[String]) -> Self {
        let trimmed = prefix.trim_end_matches('/');
        Self {
            prefix: if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.into()
            },
            host: host.map(str::to_ascii_lowercase),
            methods: methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                .collect(),
        }
    }

    /// Whether `path` lies under this prefix (segment boundary aware).
    pub fn matches_path(&self, path: &str) -> bool {
        if self.prefix == "/" {
            return true;
        }
        match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
            None => false,
        }
    }

    fn matches_host(&self, host: Option<&str>) -> bool {
        match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(h)) => strip_port(h).eq_ignore_ascii_case(want),
            (Some(_), None) => false,
        }
    }

    fn matches_method(&self, m: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(m)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// An ordered set of routes, most specific first.
#[derive(Debug)]
pub struct Router<T> {
    routes: Vec<(Matcher, T)>,
}

impl<T> Router<T> {
    /// Orders routes by prefix length (longest first), then host-specific
    /// before host-less, then method-specific before any-method.
    pub fn new(mut routes: Vec<(Matcher, T)>) -> Self {
        routes.sort_by(|(a, _), (b, _)| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
                .then(b.methods.is_empty().cmp(&a.methods.is_empty()).reverse())
        });
        Self { routes }
    }

    /// The route for a request, or why there is none.
    pub fn route(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
    ) -> Result<&T, GatewayError> {
        let mut method_mismatch = false;
        for (m, t) in &self.routes {
            if m.matches_path(path) && m.matches_host(host) {
                if m.matches_method(method) {
                    return Ok(t);
                }
                method_mismatch = true;
            }
        }
        Err(if method_mismatch {
            GatewayError::MethodNotAllowed
        } else {
            GatewayError::NoRoute
        })
    }

    /// Every route, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = &(Matcher, T)> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<&'static str> {
        Router::new(vec![
            (Matcher::new("/", None, &[]), "root"),
            (Matcher::new("/api", None, &[]), "api"),
            (Matcher::new("/api/users/", None, &[]), "users"),
            (
                Matcher::new("/api/users", Some("admin.example.com"), &[]),
                "admin-users",
            ),
            (
                Matcher::new("/api/events", None, &["POST".into()]),
                "events",
            ),
        ])
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let r = router();
        let get = Method::GET;
        assert_eq!(*r.route(&get, None, "/api/users").unwrap(), "users");
        assert_eq!(*r.route(&get, None, "/api/users/7").unwrap(), "users");
        assert_eq!(*r.route(&get, None, "/api/usersX").unwrap(), "api");
        assert_eq!(*r.route(&get, None, "/apix").unwrap(), "root");
        assert_eq!(*r.route(&get, None, "/").unwrap(), "root");
    }

    #[test]
    fn host_specific_routes_win_and_ignore_port_and_case() {
        let r = router();
        let get = Method::GET;
        assert_eq!(
            *r.route(&get, Some("Admin.Example.com:8080"), "/api/users/1")
                .unwrap(),
            "admin-users"
        );
        assert_eq!(
            *r.route(&get, Some("other:80"), "/api/users/1").unwrap(),
            "users"
        );
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn method_mismatch_is_405_and_no_match_is_404() {
        let r = Router::new(vec![(
            Matcher::new("/api/events", None, &["POST".into()]),
            1,
        )]);
        assert!(matches!(
            r.route(&Method::GET, None, "/api/events"),
            Err(GatewayError::MethodNotAllowed)
        ));
        assert!(matches!(
            r.route(&Method::GET, None, "/nope"),
            Err(GatewayError::NoRoute)
        ));
        assert_eq!(*r.route(&Method::POST, None, "/api/events").unwrap(), 1);
        // A more general route still catches the other methods.
        let r = router();
        assert_eq!(*r.route(&Method::GET, None, "/api/events").unwrap(), "api");
    }
}
