//! Admin writes need a bearer token (issue 11, item 7), through the real
//! binary: `POST /cache/purge` without the `[admin]` token is a 401 (403
//! when none is configured), an empty prefix is a 400, reads stay open, and
//! `gateway check` refuses a short token with its key path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use e2e::harness::{bin, temp_dir, GatewayProcess};
use e2e::raw::{raw_request, response, RawUpstream, Step};

const TOKEN: &str = "sec-admin-test-token-0123456789abcdefghij";

/// A gateway with a cached route to a raw upstream and `admin` as its
/// `[admin]` section.
fn gateway(raw: &RawUpstream, admin: &str, env: &[(&str, String)]) -> GatewayProcess {
    let dir = temp_dir("sec-admin");
    std::fs::write(dir.join("admin-token"), format!("{TOKEN}\n")).unwrap();
    let config = format!(
        r#"
{admin}

[upstreams.raw]
endpoints = ["{raw}"]

[[routes]]
name = "cached"
prefix = "/"
upstream = "raw"
cache = {{ ttl = "60s" }}
"#,
        raw = raw.addr,
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    GatewayProcess::spawn(Some(&path), env)
}

async fn admin(
    gw: &GatewayProcess,
    method: &str,
    target: &str,
    auth: Option<&str>,
) -> (u16, String) {
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("authorization: {a}\r\n"));
    }
    req.push_str("content-length: 0\r\n\r\n");
    raw_request(gw.admin, &req).await
}

async fn get(gw: &GatewayProcess, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: api.test\r\nconnection: close\r\n\r\n");
    raw_request(gw.addr, &req).await.1.to_ascii_lowercase()
}

#[tokio::test]
async fn purge_needs_the_admin_token_and_a_prefix() {
    let raw = RawUpstream::start(|_| {
        vec![Step::Write(response(
            200,
            &[("cache-control", "max-age=60")],
            "cached body",
        ))]
    })
    .await;
    let gw = gateway(&raw, "[admin]\ntoken_file = \"admin-token\"", &[]);
    get(&gw, "/items/1").await;
    assert!(get(&gw, "/items/1").await.contains("x-cache: hit"));

    let bearer = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {TOKEN}x");
    let basic = "Basic YWRtaW46YWRtaW4=";
    for (what, auth) in [
        ("no token", None),
        ("wrong token", Some(wrong.as_str())),
        ("a prefix of the token", Some(&bearer[..bearer.len() - 1])),
        ("basic", Some(basic)),
    ] {
        let (status, text) = admin(&gw, "POST", "/cache/purge?prefix=%2F", auth).await;
        assert_eq!(status, 401, "{what}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("www-authenticate: bearer realm=\"gateway-admin\""),
            "{what}: {text}"
        );
        assert!(text.contains("\"error\""), "{what}: {text}");
    }
    // Nothing was purged.
    assert!(get(&gw, "/items/1").await.contains("x-cache: hit"));

    // An empty prefix (or key) would purge everything: refused.
    for q in ["prefix=", "key=", "prefix=&key=%2Fitems%2F1"] {
        let (status, text) = admin(&gw, "POST", &format!("/cache/purge?{q}"), Some(&bearer)).await;
        assert_eq!(status, 400, "{q}: {text}");
    }
    assert!(get(&gw, "/items/1").await.contains("x-cache: hit"));

    // With the token: purged.
    let (status, text) = admin(&gw, "POST", "/cache/purge?prefix=%2Fitems", Some(&bearer)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"purged\":1"), "{text}");
    assert!(get(&gw, "/items/1").await.contains("x-cache: miss"));

    // Reads stay open.
    for path in ["/health", "/ready", "/metrics", "/slo"] {
        let (status, text) = admin(&gw, "GET", path, None).await;
        assert_eq!(status, 200, "{path}: {text}");
    }
}

#[tokio::test]
async fn without_a_configured_token_every_admin_write_is_forbidden() {
    let raw = RawUpstream::ok("x").await;
    let gw = gateway(&raw, "", &[]);
    for auth in [None, Some("Bearer anything-at-all-0123456789abcdefgh")] {
        let (status, text) = admin(&gw, "POST", "/cache/purge?prefix=%2F", auth).await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("admin writes are disabled"), "{text}");
    }
    let (status, _) = admin(&gw, "GET", "/health", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_token_may_come_from_the_environment() {
    let raw = RawUpstream::ok("x").await;
    let gw = gateway(
        &raw,
        "[admin]\ntoken_env = \"GW_SEC_ADMIN_TOKEN\"",
        &[("GW_SEC_ADMIN_TOKEN", TOKEN.to_owned())],
    );
    let bearer = format!("Bearer {TOKEN}");
    let (status, text) = admin(&gw, "DELETE", "/cache/purge?key=%2Fa", Some(&bearer)).await;
    assert_eq!(status, 200, "{text}");
    let (status, _) = admin(&gw, "DELETE", "/cache/purge?key=%2Fa", None).await;
    assert_eq!(status, 401);
}

#[test]
fn check_refuses_short_missing_or_doubled_tokens_with_their_key_path() {
    let dir = temp_dir("sec-admin");
    let write = |name: &str, admin: &str| {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!(
                "{admin}\n[upstreams.u]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\n"
            ),
        )
        .unwrap();
        p
    };
    std::fs::write(dir.join("short"), "0123456789abcdef\n").unwrap();
    let cases = [
        (
            write("env.toml", "[admin]\ntoken_env = \"GW_SEC_ADMIN_SHORT\""),
            "admin.token_env: the admin token is 16 bytes; at least 32 are required",
        ),
        (
            write("file.toml", "[admin]\ntoken_file = \"short\""),
            "admin.token_file: the admin token is 16 bytes; at least 32 are required",
        ),
        (
            write(
                "unset.toml",
                "[admin]\ntoken_env = \"GW_SEC_ADMIN_SURELY_UNSET\"",
            ),
            "admin.token_env: environment variable \"GW_SEC_ADMIN_SURELY_UNSET\" is not set",
        ),
        (
            write(
                "both.toml",
                "[admin]\ntoken_env = \"X\"\ntoken_file = \"short\"",
            ),
            "admin.token_env: set only one of token_env, token_file",
        ),
    ];
    for (path, want) in cases {
        let out = Command::new(bin("gateway"))
            .arg("check")
            .arg(&path)
            .env("GW_SEC_ADMIN_SHORT", "0123456789abcdef")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", path.display());
        assert!(err.contains(want), "{}: {err}", path.display());
        assert!(
            !err.contains("0123456789abcdef"),
            "the token was printed: {err}"
        );
    }
}
