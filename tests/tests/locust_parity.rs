//! Seed 001's Locust suite with real Locust against loadgen (issue 15, "Real Locust
//! parity"): the example configs key their limits on what a real client sends, the
//! load-test overlay differs from `meetinity.toml` only in the address-keyed limits, and
//! `tests/locust/parity.py` runs `tests/locust/locustfile.py` with real Locust and
//! `loadgen/scenarios/meetinity-gateway.toml` with loadgen against fresh gateways with the
//! same config, then tests per-name shares, status classes and failure classes with a
//! chi-square test (docs/LOCUST.md has the figures).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use e2e::harness::{bin, find_tool, workspace};
use gateway::config::{self, Config, Overrides, RateLimitKey, Source};

fn load(name: &str) -> Config {
    let path = workspace().join("deploy/config").join(name);
    config::load(&Source::File(path), &Overrides::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn example_configs_key_limits_on_what_a_real_client_sends() {
    let dir = workspace().join("deploy/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        for route in &load(&name).routes {
            for policy in &route.rate_limits {
                // A header key would count a load tool that sends a per-user header as
                // many clients and the seed's own locustfile (no such header) as one.
                assert!(
                    !matches!(policy.key, RateLimitKey::Header(_)),
                    "{name}: route {} limits by a header ({:?}); key on subject or client_ip",
                    route.name,
                    policy.key
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 4, "only {seen} limits found in {}", dir.display());
}

#[test]
fn the_loadtest_overlay_is_meetinity_with_the_address_limits_raised() {
    let shipped = load("meetinity.toml");
    let mut overlay = load("meetinity-loadtest.toml");
    let mut raised = 0;
    for (o, s) in overlay.routes.iter_mut().zip(&shipped.routes) {
        for (op, sp) in o.rate_limits.iter_mut().zip(&s.rate_limits) {
            if op.key == RateLimitKey::ClientIp {
                // 10,000/s for the one load host that speaks for every simulated user.
                assert!(
                    u128::from(op.limit) * 1000 / op.window.as_millis().max(1) >= 10_000,
                    "route {}: {} per {:?}",
                    o.name,
                    op.limit,
                    op.window
                );
                op.limit = sp.limit;
                raised += 1;
            }
        }
    }
    assert_eq!(raised, 2, "the hello and echo limits");
    assert_eq!(
        overlay, shipped,
        "meetinity-loadtest.toml drifted from meetinity.toml beyond the address-keyed limits"
    );
}

/// `python3` with Locust importable, installing it with pip when missing; `None` (with
/// the reason printed) when Python or pip cannot provide it.
fn python_with_locust() -> Option<std::path::PathBuf> {
    let Some(python) = find_tool("python3") else {
        println!("SKIPPED: python3 not on PATH");
        return None;
    };
    let has = |p: &Path| {
        Command::new(p)
            .args(["-c", "import locust"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(&python) {
        return Some(python);
    }
    let out = run_bounded(
        Command::new(&python).args(["-m", "pip", "install", "--quiet", "locust"]),
        Duration::from_secs(300),
    );
    if has(&python) {
        return Some(python);
    }
    println!("SKIPPED: pip could not install locust: {out}");
    None
}

/// Runs `cmd` to completion or kills it after `limit`; its stdout and stderr.
fn run_bounded(cmd: &mut Command, limit: Duration) -> String {
    let dir = std::env::temp_dir().join(format!("locust-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (o, e) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = cmd
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .unwrap();
    let start = SystemTime::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed().unwrap_or_default() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    format!(
        "status {status:?}\n{}\n{}",
        std::fs::read_to_string(o).unwrap_or_default(),
        std::fs::read_to_string(e).unwrap_or_default()
    )
}

#[test]
fn real_locust_and_loadgen_agree_on_seed_001() {
    let Some(python) = python_with_locust() else {
        return;
    };
    // The binaries of this build: gateway, mock-upstream and loadgen side by side.
    let dir = bin("gateway").parent().unwrap().to_path_buf();
    bin("mock-upstream");
    bin("loadgen");
    let summary = std::env::temp_dir().join(format!("locust-parity-{}.json", std::process::id()));
    // Three phases, each a Locust run and a loadgen run: 12 s + 8 s + 8 s of load per
    // tool (~60 s with start-up), bounded at 5 minutes.
    let out = run_bounded(
        Command::new(python)
            .arg(workspace().join("tests/locust/parity.py"))
            .arg("--bin-dir")
            .arg(&dir)
            .arg("--json")
            .arg(&summary),
        Duration::from_secs(300),
    );
    println!("{out}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap_or_default())
            .unwrap_or_else(|e| panic!("parity.py wrote no summary ({e}):\n{out}"));
    // Each bar on its own, so a failure names it.
    let mix = &json["mix"];
    assert_eq!(mix["config"], "deploy/config/meetinity-loadtest.toml");
    assert_eq!(
        mix["locust_baseline_errors"]["ok"], true,
        "real Locust missed the baseline's errors < 0.1 %:\n{out}"
    );
    let rl = &json["ratelimit"];
    assert_eq!(rl["config"], "deploy/config/meetinity.toml");
    assert!(
        rl["locust_429"]["with_retry_after"].as_u64().unwrap() > 0
            && rl["locust_429"]["without_retry_after"] == 0,
        "the ratelimit preset must see 429 with Retry-After:\n{out}"
    );
    // The locustfile fails a 429 without Retry-After or X-RateLimit-Limit.
    assert_eq!(
        rl["runs"]["locust"]["failures"],
        serde_json::json!({}),
        "the ratelimit preset's 429s must carry the rate-limit headers:\n{out}"
    );
    for phase in ["mix", "ratelimit", "shipped"] {
        for check in [
            "per-name shares",
            "status classes (gateway)",
            "failure classes",
        ] {
            assert_eq!(
                json[phase][check]["ok"], true,
                "{phase}: {check} differ between Locust and loadgen:\n{out}"
            );
        }
    }
    assert_eq!(json["ok"], true, "{out}");
}
