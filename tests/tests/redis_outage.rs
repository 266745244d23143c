//! A Redis outage through the real gateway binary (issue 12, defect 6):
//! after a few failed calls, rate-limit and cache decisions stop waiting
//! for Redis (fast-fail: the `on_error` policy, or memory alone, decides at
//! once), and once Redis is back on the same port the gateway uses it
//! again within about two seconds.
//!
//! The outage is a Redis that does not answer (its process stopped, as in
//! a network partition: connections hang until the timeout), then gone
//! (killed), then a new `redis-server` on the same port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::harness::{self, free_port, GatewayProcess, RedisServer, TestClient};
use e2e::mock::{MockOptions, MockUpstream};
use tokio::time::Instant;

/// The configured Redis timeout (both uses).
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// A decision made without waiting for Redis takes less than this.
const FAST: Duration = Duration::from_millis(50);
/// A request that waited for Redis took at least this.
const SLOW: Duration = Duration::from_millis(400);
/// The shared limit per 60 s (a key lives 6 s in Redis after a request).
/// While Redis is skipped, `fail_open` admits everything: a 429 says
/// Redis decided.
const LIMIT: u32 = 10;
/// Requests sent during the outage, per use.
const DURING: usize = 40;
/// At most this many of them wait for Redis: the 3 that trip fast-fail,
/// and one for slack (probes run in the background and wait for nobody;
/// when probes were made by requests, 6 of 40 waited).
const MAX_SLOW: usize = 4;
/// At least this many of them are answered at once.
const MIN_FAST: usize = 25;
/// The issue's bound on recovery, and the slack a loaded 2-core machine
/// gets on top (a probe's round trip, the reconnect).
const RECOVER: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_millis(1500);

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("gw-e2e:{tag}:{}:{nanos}:", std::process::id())
}

fn redis_pid(r: &RedisServer) -> String {
    r.cli(&["info", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .expect("redis reports its pid")
        .trim()
        .to_owned()
}

fn signal(pid: &str, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid)
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Keys under `prefix` in the Redis on `port` (`None` when it does not
/// answer).
fn keys(port: u16, prefix: &str) -> Option<usize> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--raw", "--scan", "--pattern"])
        .arg(format!("{prefix}*"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).lines().count())
}

/// `GET path` and how long it took; the status.
async fn timed(c: &TestClient, addr: SocketAddr, path: &str) -> (u16, Duration) {
    let t = Instant::now();
    let got = harness::get(c, addr, path).await;
    (got.status(), t.elapsed())
}

async fn metric(c: &TestClient, admin: SocketAddr, series: &str) -> Option<f64> {
    harness::sample(&harness::metrics_text(c, admin).await, series)
}

/// Sends [`DURING`] requests one after another (path `path(i)`) while Redis
/// does not answer; every answer is `want`. Returns (fast, slow, others).
async fn during_outage(
    c: &TestClient,
    addr: SocketAddr,
    what: &str,
    path: impl Fn(usize) -> String,
    want: u16,
) -> (usize, usize, Vec<Duration>) {
    let (mut fast, mut slow, mut all) = (0, 0, Vec::new());
    for i in 0..DURING {
        let (status, took) = timed(c, addr, &path(i)).await;
        assert_eq!(status, want, "{what} #{i}");
        if took < FAST {
            fast += 1;
        } else if took >= SLOW {
            slow += 1;
        }
        all.push(took);
        // Spread over a second or more, so probes happen during it.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total: Duration = all.iter().sum();
    println!(
        "{what}: {DURING} requests during the outage in {total:?}: {fast} under {FAST:?}, \
         {slow} over {SLOW:?}; times {all:?}"
    );
    (fast, slow, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_fast_and_redis_is_used_again_once_back() {
    harness::init_logs();
    let m = MockUpstream::start(MockOptions::default()).await.unwrap();
    let port = free_port();
    let redis = RedisServer::start(port).await;
    let (rl_prefix, cache_prefix) = (unique("outage-rl"), unique("outage-cache"));
    let path = harness::temp_file(
        "redis-outage",
        "gateway.toml",
        &format!(
            r#"
            [rate_limit.redis]
            url = "redis://127.0.0.1:{port}"
            prefix = "{rl_prefix}"
            timeout = "{}ms"
            on_error = "fail_open"
            [cache.redis]
            url = "redis://127.0.0.1:{port}"
            prefix = "{cache_prefix}"
            timeout = "{}ms"
            [upstreams.mock]
            endpoints = ["{}"]
            [[routes]]
            name = "limited"
            prefix = "/headers"
            upstream = "mock"
            rate_limits = [{{ name = "shared", key = "route", limit = {LIMIT}, window = "60s", store = "redis" }}]
            [[routes]]
            name = "cached"
            prefix = "/cache"
            upstream = "mock"
            cache = {{ ttl = "60s" }}
            "#,
            REDIS_TIMEOUT.as_millis(),
            REDIS_TIMEOUT.as_millis(),
            m.addr()
        ),
    );
    let gw = GatewayProcess::spawn(Some(&path), &[]);
    let c = harness::client();

    // Up: both uses write to Redis.
    assert_eq!(timed(&c, gw.addr, "/headers").await.0, 200);
    assert_eq!(timed(&c, gw.addr, "/cache/60?up").await.0, 200);
    harness::wait_until("keys of both uses in redis", || async {
        let (rl, cache) = (keys(port, &rl_prefix), keys(port, &cache_prefix));
        println!("keys: rate limit {rl:?}, cache {cache:?}");
        rl.unwrap_or(0) > 0 && cache.unwrap_or(0) > 0
    })
    .await;
    let up = |u: &str| format!(r#"gateway_redis_up{{use="{u}"}}"#);
    assert_eq!(metric(&c, gw.admin, &up("ratelimit")).await, Some(1.0));
    assert_eq!(metric(&c, gw.admin, &up("cache")).await, Some(1.0));

    // Redis stops answering: each call would wait the whole timeout.
    let pid = redis_pid(&redis);
    signal(&pid, "STOP");
    let (fast, slow, _) = during_outage(&c, gw.addr, "ratelimit", |_| "/headers".into(), 200).await;
    // The first 3 calls fail by timeout, then one probe per interval (100,
    // 200, 400, 800, 1000 ms ...: a handful over the few seconds this
    // takes, more on a loaded machine): everything else at once. Before
    // fast-fail all 40 waited.
    assert!(
        slow <= MAX_SLOW,
        "{slow} of {DURING} rate-limit decisions waited for redis"
    );
    assert!(
        fast >= MIN_FAST,
        "only {fast} of {DURING} rate-limit decisions were fast"
    );
    assert_eq!(metric(&c, gw.admin, &up("ratelimit")).await, Some(0.0));
    let skipped = metric(
        &c,
        gw.admin,
        r#"gateway_redis_fast_failed_total{use="ratelimit"}"#,
    )
    .await;
    assert!(skipped.is_some_and(|n| n >= 20.0), "{skipped:?}");

    // The cache's tier: every miss looked in Redis first.
    let (fast, slow, _) = during_outage(
        &c,
        gw.addr,
        "cache",
        |i| format!("/cache/60?during={i}"),
        200,
    )
    .await;
    assert!(
        slow <= MAX_SLOW,
        "{slow} of {DURING} cache misses waited for redis"
    );
    assert!(
        fast >= MIN_FAST,
        "only {fast} of {DURING} cache misses were fast"
    );
    assert_eq!(metric(&c, gw.admin, &up("cache")).await, Some(0.0));

    // Gone, then back (empty) on the same port.
    signal(&pid, "KILL");
    drop(redis);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let redis = RedisServer::start(port).await;
    let back = Instant::now();
    // Requests keep coming (each use is probed by its own traffic).
    let mut i = 0;
    let (mut rl_at, mut cache_at) = (None, None);
    while rl_at.is_none() || cache_at.is_none() {
        assert!(
            back.elapsed() < harness::WAIT,
            "redis not used again after {:?}",
            back.elapsed()
        );
        i += 1;
        let status = timed(&c, gw.addr, "/headers").await.0;
        assert!(status == 200 || status == 429, "{status}");
        assert_eq!(
            timed(&c, gw.addr, &format!("/cache/60?back={i}")).await.0,
            200
        );
        if rl_at.is_none() && keys(port, &rl_prefix).unwrap_or(0) > 0 {
            rl_at = Some(back.elapsed());
        }
        if cache_at.is_none() && keys(port, &cache_prefix).unwrap_or(0) > 0 {
            cache_at = Some(back.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rl_at, cache_at) = (rl_at.unwrap(), cache_at.unwrap());
    println!("redis used again after: rate limiter {rl_at:?}, cache {cache_at:?}");
    assert!(rl_at < RECOVER + SLACK, "rate limiter back after {rl_at:?}");
    assert!(cache_at < RECOVER + SLACK, "cache back after {cache_at:?}");
    assert_eq!(metric(&c, gw.admin, &up("ratelimit")).await, Some(1.0));
    assert_eq!(metric(&c, gw.admin, &up("cache")).await, Some(1.0));
    // The shared limit is enforced again (fail_open never refuses).
    let mut refused = 0;
    for _ in 0..=LIMIT {
        if timed(&c, gw.addr, "/headers").await.0 == 429 {
            refused += 1;
        }
    }
    assert!(refused >= 1, "redis is not deciding again");
    drop(redis);
}
