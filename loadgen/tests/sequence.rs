//! A task's `step` sequence goes on after a failed request, as a Locust task
//! does, and stops only when the failed step was to extract values the next
//! steps need. Against mock-upstream's `/status/{code}`, through the runner.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use e2e::mock::{MockOptions, MockUpstream};
use loadgen::client::Target;
use loadgen::metrics::RunResult;
use loadgen::plan::Plan;
use loadgen::runner::{self, RunConfig};
use loadgen::scenario::Scenario;

/// Three steps; the second answers 503 (a failure), with `extract` when asked.
fn scenario(extract: bool) -> Scenario {
    let extract = if extract {
        "extract = { id = \"id\" }"
    } else {
        ""
    };
    let text = format!(
        r#"
name = "sequence"
[[user]]
name = "U"
wait_time = "constant(20ms)"
[[user.task]]
name = "journey"
[[user.task.step]]
name = "first"
path = "/status/200"
[[user.task.step]]
name = "failing"
path = "/status/503"
{extract}
[[user.task.step]]
name = "last"
path = "/status/200"
"#
    );
    Scenario::from_toml(&text).unwrap()
}

async fn run(scenario: Scenario, host: &str) -> RunResult {
    let cfg = RunConfig {
        scenario: Arc::new(scenario),
        classes: vec![0],
        plan: Plan::Closed {
            users: 2,
            spawn_rate: 100.0,
            run_time: Some(Duration::from_secs(2)),
        },
        target: Target::parse(host).unwrap(),
        timeout: Duration::from_secs(10),
        max_body: loadgen::client::DEFAULT_MAX_BODY,
        max_requests: None,
        thresholds: Vec::new(),
        live: false,
        control: None,
        workers: 1,
        stop_timeout: Duration::from_secs(2),
        shard: None,
    };
    tokio::time::timeout(Duration::from_secs(60), runner::run(cfg))
        .await
        .expect("the run ends on time")
        .unwrap()
}

fn count(r: &RunResult, name: &str) -> (u64, u64) {
    r.stats
        .iter()
        .find(|s| s.name == name)
        .map_or((0, 0), |s| (s.requests, s.failures))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_does_not_end_the_journey_unless_it_was_to_extract() {
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let host = format!("http://{}", mock.addr());

    let r = run(scenario(false), &host).await;
    let (first, _) = count(&r, "first");
    let (failing, failed) = count(&r, "failing");
    let (last, last_failed) = count(&r, "last");
    assert!(first >= 10, "{first} journeys started");
    assert_eq!(failed, failing, "every 503 is a failure");
    // Every journey that got past its failing step sent its last one (a
    // journey cut by the end of the run may stop in between).
    assert!(
        last + 2 >= failing && last > 0,
        "the step after a failure was sent: {last} after {failing} failures"
    );
    assert_eq!(last_failed, 0);

    // The failed step was to extract `id`: the journey stops there.
    let r = run(scenario(true), &host).await;
    let (failing, failed) = count(&r, "failing");
    assert!(failing >= 10 && failed == failing, "{failing} {failed}");
    assert_eq!(
        count(&r, "last").0,
        0,
        "no step sent without its extracted value"
    );
}
