//! Every shipped config is valid, `local.toml` is the embedded default, and
//! `gateway check` keeps its exit-code contract.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

fn deploy_config(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/config")
        .join(name)
}

#[test]
fn local_toml_is_the_embedded_default() {
    let local = std::fs::read_to_string(deploy_config("local.toml")).unwrap();
    assert_eq!(
        local,
        gateway::config::DEFAULT_TOML,
        "deploy/config/local.toml drifted from the embedded default"
    );
}

#[test]
fn every_shipped_config_checks_ok() {
    for name in [
        "local.toml",
        "meetinity.toml",
        "flagmeter.toml",
        "paracle.toml",
        "meetings.toml",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("check")
            .arg(deploy_config(name))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": ok ("), "{stdout}");
    }
}

#[test]
fn check_reports_every_error_with_key_paths_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("gateway-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[upstreams.users]
endpoints = ["127.0.0.1:1"]
[[routes]]
name = "a"
prefix = "/a"
upstream = "users"
[[routes]]
name = "b"
prefix = "/b"
upstream = "users"
[[routes]]
name = "c"
prefix = "/c"
upstream = "userz"
timeout = "0s"
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[2].upstream: unknown upstream \"userz\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[2].timeout: must be greater than 0"),
        "{stderr}"
    );

    std::fs::write(&bad, "[server]\nlisten = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listen"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check")
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn serve_refuses_an_invalid_config_with_exit_2() {
    let dir = std::env::temp_dir().join(format!("gateway-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"nope\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes[0].upstream"));
}
