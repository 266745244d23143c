//! 10,000 concurrent simulated users with wait times fit in under 500 MB: the real
//! `loadgen` binary (started with a soft open-file limit of 1024, which it must raise
//! itself) runs 10,000 closed-model users against a `mock-upstream` process, and the test
//! samples the generator's peak resident memory (`VmHWM`) from /proc while it runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, mock_upstream, peak_rss_kb, scratch};

const USERS: u64 = 10_000;
const LIMIT_KB: u64 = 500 * 1024;

#[test]
fn ten_thousand_users_with_wait_times_fit_in_500_mb() {
    // mock-upstream holds the other end of every connection: give it (and this process,
    // which it inherits from) room for them.
    loadgen::limits::ensure_open_files(USERS).unwrap_or_else(|e| panic!("{e}"));
    let (_mock, addr) = mock_upstream();

    let dir = scratch("memory");
    let scenario = dir.join("waiters.toml");
    std::fs::write(
        &scenario,
        "name = \"10k\"\n[[user]]\nname = \"Waiter\"\nwait_time = \"between(1s, 2s)\"\n\
         [[user.task]]\nname = \"/api/hello\"\npath = \"/api/hello\"\n",
    )
    .unwrap();
    let summary = dir.join("summary.json");
    // A soft limit of 1024 (the usual default): loadgen must raise it for 10,000 sockets.
    let script = format!(
        "ulimit -Sn 1024 && exec \"$0\" run {} --host http://{addr} --users {USERS} \
         --spawn-rate 5000 --run-time 12s --workers 1 --only-summary --summary-export {}",
        scenario.display(),
        summary.display()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(bin("loadgen"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (out, err) = common::capture(&mut child);
    let start = std::time::SystemTime::now();
    let mut peak = 0;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if let Some(kb) = peak_rss_kb(pid) {
            peak = peak.max(kb);
        }
        if start.elapsed().unwrap_or_default() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen did not finish within 90s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let m = &summary["metrics"];
    let users = m["vus_max"]["value"].as_u64().unwrap();
    let requests = m["http_reqs"]["count"].as_u64().unwrap();
    let failed = m["http_req_failed"]["passes"].as_u64().unwrap_or(0);
    eprintln!(
        "{USERS} users: peak RSS {:.1} MB, {users} users spawned, {requests} requests, {failed} failed",
        peak as f64 / 1024.0
    );
    assert!(peak > 0, "sampled loadgen's memory");
    assert!(
        peak < LIMIT_KB,
        "10,000 users took {:.1} MB (limit 500 MB)",
        peak as f64 / 1024.0
    );
    assert_eq!(users, USERS, "every user was spawned");
    // Each user sends at least once after its wait: at least one request per user.
    assert!(requests >= USERS, "{requests} requests");
    assert!(failed * 100 < requests, "{failed} of {requests} failed");
}
