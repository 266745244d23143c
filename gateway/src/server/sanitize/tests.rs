#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn policy(extra: &str) -> EdgePolicy {
    let text = format!(
        r#"
        [server]
        strip_request_headers = ["X-Internal-Token"]
        {extra}
        [auth.a]
        forward_claims = {{ sub = "X-User-Id", roles = "X-User-Roles" }}
        [[auth.a.keys]]
        algorithms = ["HS256"]
        secret_env = "UNUSED"
        [auth.b]
        forward_claims = {{ sub = "x-user-id", tenant = "X-Tenant" }}
        [[auth.b.keys]]
        algorithms = ["HS256"]
        secret_env = "UNUSED"
        "#
    );
    EdgePolicy::new(&Config::from_toml(&text).unwrap())
}

fn trusting(cidr: &str) -> EdgePolicy {
    policy(&format!("[rate_limit]\ntrusted_proxies = [\"{cidr}\"]"))
}

fn req(lines: &[(&str, &str)]) -> Request<()> {
    let mut r = Request::get("/x").body(()).unwrap();
    for (k, v) in lines {
        r.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    r
}

fn peer() -> ClientAddr {
    ClientAddr::new("192.0.2.7:5000".parse().unwrap())
}

fn run(r: &mut Request<()>, p: &EdgePolicy) -> Result<RequestContext, GatewayError> {
    sanitize(r, &peer(), p, &HeaderValue::from_static("id-1"))
}

fn refused(r: &mut Request<()>, p: &EdgePolicy) -> &'static str {
    match run(r, p) {
        Err(GatewayError::BadRequest(m)) => m,
        other => panic!("expected a 400, got {other:?}"),
    }
}

fn names(r: &Request<()>) -> Vec<&str> {
    r.headers().keys().map(HeaderName::as_str).collect()
}

#[test]
fn the_order_is_fixed() {
    assert_eq!(
        ORDER,
        [
            Step::Host,
            Step::Authorization,
            Step::Upgrade,
            Step::Connection,
            Step::Identity,
            Step::Forwarding,
        ]
    );
}

// Each test below fails if two adjacent steps swap.

#[test]
fn host_is_judged_before_authorization() {
    let mut r = req(&[
        ("host", "a"),
        ("host", "b"),
        ("authorization", "Bearer 1"),
        ("authorization", "Bearer 2"),
    ]);
    assert_eq!(refused(&mut r, &policy("")), "more than one Host header");
}

#[test]
fn a_duplicate_authorization_is_refused_even_when_connection_names_it() {
    // Authorization before Connection: stripping first would hide it.
    let mut r = req(&[
        ("host", "a"),
        ("connection", "authorization"),
        ("authorization", "Bearer 1"),
        ("authorization", "Bearer 2"),
    ]);
    assert_eq!(
        refused(&mut r, &policy("")),
        "more than one Authorization header"
    );
}

#[test]
fn the_upgrade_is_noted_before_connection_removes_its_headers() {
    let mut r = req(&[
        ("host", "a"),
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "k"),
    ]);
    let c = run(&mut r, &policy("")).unwrap();
    assert!(c.websocket());
    assert_eq!(r.headers()["upgrade"], "websocket");
    assert!(r.headers().get("connection").is_none());
    assert_eq!(r.headers()["sec-websocket-key"], "k");
}

#[test]
fn forwarding_reads_what_connection_stripping_left() {
    // Connection before Forwarding: a trusted peer's Connection-named
    // X-Forwarded-For was meant for this hop only and is not believed.
    let p = trusting("192.0.2.0/24");
    let mut r = req(&[
        ("host", "a"),
        ("connection", "x-forwarded-for"),
        ("x-forwarded-for", "203.0.113.9"),
    ]);
    let c = run(&mut r, &p).unwrap();
    assert_eq!(c.client_ip(), peer().addr.ip());
    assert_eq!(c.forwarded_for(), "192.0.2.7");
}

#[test]
fn host_rules() {
    let p = policy("");
    assert_eq!(refused(&mut req(&[]), &p), "missing Host header");
    let long = "a".repeat(256);
    assert_eq!(
        refused(&mut req(&[("host", &long)]), &p),
        "invalid Host header"
    );
    for bad in [
        "",
        "a b",
        "user@host",
        "a:b",
        "a:123456",
        "a:70000",
        "[zz]",
        "[::1",
        "a/b",
        "a%zz",
    ] {
        assert_eq!(
            refused(&mut req(&[("host", bad)]), &p),
            "invalid Host header",
            "{bad:?}"
        );
    }
    for good in [
        "a",
        "api.example.com:8080",
        "127.0.0.1",
        "[::1]:80",
        "a%41b",
        &"a".repeat(255),
    ] {
        assert!(run(&mut req(&[("host", good)]), &p).is_ok(), "{good:?}");
    }
    // HTTP/1.0 may omit Host.
    let mut r = req(&[]);
    *r.version_mut() = Version::HTTP_10;
    assert!(run(&mut r, &p).is_ok());
}

#[test]
fn an_absolute_form_authority_wins_over_host() {
    let p = policy("");
    let mut r = Request::get("http://api.example.com:8080/x")
        .header("host", "evil.example")
        .body(())
        .unwrap();
    run(&mut r, &p).unwrap();
    assert_eq!(r.headers()["host"], "api.example.com:8080");
    // HTTP/1.1 still has to send Host (RFC 9112 §3.2).
    let mut r = Request::get("http://api.example.com/x").body(()).unwrap();
    assert_eq!(refused(&mut r, &p), "missing Host header");
    // HTTP/2 :authority (in the URI) is enough, and also wins.
    let mut r = Request::get("http://api.example.com/x")
        .version(Version::HTTP_2)
        .body(())
        .unwrap();
    run(&mut r, &p).unwrap();
    assert_eq!(r.headers()["host"], "api.example.com");
    let mut r = Request::get("http://u@api.example.com/x")
        .header("host", "api.example.com")
        .body(())
        .unwrap();
    assert_eq!(refused(&mut r, &p), "invalid authority in the target");
}

#[test]
fn connection_named_and_hop_by_hop_headers_are_removed_but_host() {
    let mut r = req(&[
        ("host", "a"),
        (
            "connection",
            "close, X-Request-Id, X-User-Id, Host, Content-Length",
        ),
        ("content-length", "0"),
        ("x-request-id", "client"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("proxy-authorization", "Basic x"),
        ("proxy-connection", "keep-alive"),
        ("trailer", "x"),
        ("x-kept", "1"),
    ]);
    run(&mut r, &policy("")).unwrap();
    let mut left = names(&r);
    left.sort_unstable();
    assert_eq!(left, ["content-length", "host", "x-kept"]);
}

#[test]
fn h2c_and_other_upgrades_are_never_kept() {
    let p = policy("");
    for (upgrade, method) in [("h2c", "GET"), ("websocket", "POST"), ("TLS/1.2", "GET")] {
        let mut r = req(&[
            ("host", "a"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", upgrade),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ]);
        *r.method_mut() = method.parse().unwrap();
        let c = run(&mut r, &p).unwrap();
        assert!(!c.websocket(), "{upgrade} {method}");
        assert_eq!(names(&r), ["host"], "{upgrade} {method}");
    }
    // HTTP2-Settings without Connection naming it: still dropped.
    let mut r = req(&[("host", "a"), ("http2-settings", "x")]);
    run(&mut r, &p).unwrap();
    assert_eq!(names(&r), ["host"]);
    // Upgrade without Connection: upgrade is no handshake.
    let mut r = req(&[("host", "a"), ("upgrade", "websocket")]);
    assert!(!run(&mut r, &p).unwrap().websocket());
    assert_eq!(names(&r), ["host"]);
    // A list naming websocket keeps only websocket.
    let mut r = req(&[
        ("host", "a"),
        ("connection", "upgrade"),
        ("upgrade", "h2c, WebSocket"),
    ]);
    assert!(run(&mut r, &p).unwrap().websocket());
    assert_eq!(r.headers()["upgrade"], "websocket");
}

#[test]
fn identity_headers_of_every_provider_and_the_list_are_removed() {
    let p = policy("");
    assert_eq!(
        p.stripped()
            .iter()
            .map(HeaderName::as_str)
            .collect::<Vec<_>>(),
        ["x-internal-token", "x-tenant", "x-user-id", "x-user-roles"]
    );
    let mut r = req(&[
        ("host", "a"),
        ("x-user-id", "admin"),
        ("x-user-id", "root"),
        ("X-User-Roles", "admin"),
        ("x-tenant", "t"),
        ("x-internal-token", "s"),
        ("x-user-idx", "kept"),
    ]);
    run(&mut r, &p).unwrap();
    assert_eq!(names(&r), ["host", "x-user-idx"]);
}

const FORWARDED: [(&str, &str); 7] = [
    ("host", "a"),
    ("forwarded", "for=6.6.6.6;proto=https"),
    ("x-real-ip", "6.6.6.6"),
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-host", "evil"),
    ("x-forwarded-port", "443"),
    ("x-forwarded-proto", "https"),
];

#[test]
fn an_untrusted_peers_forwarding_headers_are_removed() {
    let mut r = req(&FORWARDED);
    let c = run(&mut r, &trusting("10.0.0.0/8")).unwrap();
    assert_eq!(names(&r), ["host"]);
    assert_eq!(c.client_ip(), peer().addr.ip());
    assert_eq!(c.forwarded_for(), "192.0.2.7");
    assert!(!c.trusted_peer());
    assert_eq!(c.request_id(), "id-1");
}

#[test]
fn a_trusted_peers_are_kept_and_its_forwarded_for_lines_resolved() {
    let mut r = req(&FORWARDED);
    r.headers_mut()
        .append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
    let c = run(&mut r, &trusting("192.0.2.0/24")).unwrap();
    let mut left = names(&r);
    left.sort_unstable();
    assert_eq!(
        left,
        [
            "forwarded",
            "host",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-forwarded-proto",
            "x-real-ip",
        ]
    );
    assert!(c.trusted_peer());
    assert_eq!(c.client_ip().to_string(), "203.0.113.9");
    assert_eq!(c.forwarded_for(), "203.0.113.9, 192.0.2.7");
}

#[test]
fn a_plain_request_is_left_alone() {
    let mut r = req(&[("host", "a"), ("accept", "*/*"), ("user-agent", "t")]);
    let c = run(&mut r, &policy("")).unwrap();
    assert_eq!(names(&r), ["host", "accept", "user-agent"]);
    assert!(!c.websocket());
}

#[test]
fn strip_request_headers_are_validated() {
    let text = r#"
        [server]
        strip_request_headers = ["X-Ok", "bad name", "Host"]
        [upstreams.u]
        endpoints = ["127.0.0.1:1"]
        [[routes]]
        name = "r"
        prefix = "/"
        upstream = "u"
        "#;
    let errs = crate::config::validate::validate(&Config::from_toml(text).unwrap())
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("server.strip_request_headers[1]"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("server.strip_request_headers[2]"),
        "{errs:?}"
    );
}
