//! The short fault suite (`tests/reliability/run.sh --short`) against the debug binaries
//! that `cargo build --workspace --bins` builds: every scenario runs, every correctness bar
//! holds (latency bars are reported only in short mode). About 90 s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use e2e::harness;
use e2e::reliability::SCENARIOS;

#[test]
fn the_short_fault_suite_holds_every_bar() {
    let bin = harness::bin("reliability");
    let dir = bin.parent().unwrap().to_path_buf();
    let out = harness::temp_dir("reliability-ci").join("results.json");
    let run = Command::new(&bin)
        .arg("--short")
        .arg("--bin-dir")
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("the reliability runner starts");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    eprintln!("{stdout}");
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&out)
            .unwrap_or_else(|e| panic!("no results ({e}); stderr:\n{stderr}")),
    )
    .unwrap();
    let rows = doc["scenarios"].as_array().unwrap();
    let ran: Vec<&str> = rows
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = SCENARIOS.iter().copied().filter(|s| *s != "soak").collect();
    assert_eq!(
        ran, expected,
        "every scenario but the soak runs in short mode"
    );
    for r in rows {
        let name = &r["scenario"];
        assert!(r["error"].is_null(), "{name} could not run: {}", r["error"]);
        assert!(r["sent"].as_u64().unwrap() > 0, "{name} sent nothing");
        assert_eq!(
            r["unexpected"], 0,
            "{name}: requests failed that should not have"
        );
        for b in r["bars"].as_array().unwrap() {
            assert!(
                b["held"] == true || b["binding"] == false,
                "{name} missed {}: {}",
                b["what"],
                b["measured"]
            );
        }
    }
    assert_eq!(doc["passed"], true);
    assert!(
        run.status.success(),
        "exit {:?}; stderr:\n{stderr}",
        run.status
    );
}
