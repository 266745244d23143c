//! The processes of a scenario and what is read from them: `mock-upstream` as a process
//! (so it can be killed and restarted on its port), the gateway through
//! [`GatewayProcess`], loadgen runs, `/proc` figures (RSS, open fds) and `/metrics`
//! samples.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::Res;
use crate::harness::{self, GatewayProcess};

/// Open-file limit this process asks for (root may raise the hard limit to it; otherwise
/// the soft limit goes up to the hard one).
pub const NOFILE: u64 = 65_536;

/// The `prlimit` wrapper raising a child's soft open-file limit to the hard limit (when
/// `prlimit` exists and the soft limit is lower).
pub fn wrapper() -> Vec<String> {
    use rustix::process::{getrlimit, Resource};
    let now = getrlimit(Resource::Nofile);
    match (now.current, now.maximum) {
        (Some(soft), Some(hard)) if soft < hard && harness::find_tool("prlimit").is_some() => {
            vec!["prlimit".into(), format!("--nofile={hard}:{hard}")]
        }
        _ => Vec::new(),
    }
}

/// Raises this process's own open-file limit (as far as it may).
pub fn raise_own_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let want = Rlimit {
        current: Some(NOFILE),
        maximum: Some(NOFILE.max(now.maximum.unwrap_or(NOFILE))),
    };
    if setrlimit(Resource::Nofile, want).is_err() {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: now.maximum,
                maximum: now.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(0)
}

/// A `mock-upstream` process, killed on drop.
#[derive(Debug)]
pub struct MockProc {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
    id: String,
}

impl MockProc {
    /// Starts `mock-upstream --id ID` on a free port.
    pub async fn start(id: &str) -> Res<Self> {
        Self::start_on(id, harness::free_port()).await
    }

    /// Starts it on `port` and waits until it accepts connections.
    pub async fn start_on(id: &str, port: u16) -> Res<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let w = wrapper();
        let mut cmd = match w.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(harness::bin("mock-upstream"));
                c
            }
            None => Command::new(harness::bin("mock-upstream")),
        };
        let child = cmd
            .args(["--listen", &addr.to_string(), "--id", id, "--workers", "2"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("mock-upstream does not start: {e}"))?;
        let mut me = Self {
            child,
            addr,
            id: id.to_owned(),
        };
        let deadline = Instant::now() + harness::WAIT;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline || me.child.try_wait().ok().flatten().is_some() {
                return Err(format!("mock-upstream {id} did not listen on {addr}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(me)
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its id (`x-upstream-id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for MockProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the gateway with config file `config` and extra environment, with the raised
/// open-file limit.
pub fn gateway(config: &Path, env: &[(&str, String)]) -> GatewayProcess {
    let w = wrapper();
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let mut env: Vec<(&str, String)> = env.to_vec();
    if !env.iter().any(|(k, _)| *k == "RUST_LOG") {
        env.push(("RUST_LOG", "warn".into()));
    }
    GatewayProcess::spawn_wrapped(&w, Some(config), &env, &[])
}

/// Open file descriptors of process `pid` (entries of `/proc/PID/fd`).
pub fn fds(pid: u32) -> Res<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .map_err(|e| format!("/proc/{pid}/fd: {e}"))
}

/// Resident memory of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Waits (bounded by `within`) for the process to exit; its exit code.
pub async fn wait_exit(child: &mut Child, within: Duration) -> Res<Option<i32>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(s.code());
        }
        if Instant::now() > deadline {
            return Err(format!("the process did not exit within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The plain client for control and admin requests.
pub type PlainClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive client for control and admin requests.
pub fn plain_client() -> PlainClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(conn)
}

/// One request with a body; its status and body, bounded by 10 s.
pub async fn call(
    c: &PlainClient,
    method: http::Method,
    url: &str,
    body: &str,
) -> Res<(u16, Bytes)> {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .map_err(|e| e.to_string())?;
    let fut = async {
        let resp = c.request(req).await.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| format!("{url}: no answer within 10 s"))?
}

/// The gateway's `/metrics` text.
pub async fn metrics(c: &PlainClient, admin: SocketAddr) -> Res<String> {
    let (_, body) = call(c, http::Method::GET, &format!("http://{admin}/metrics"), "").await?;
    String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
}

/// The sum of every sample whose line starts with `prefix` (a family with labels).
pub fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of the first sample whose line starts with `series`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    harness::sample(text, series)
}

/// Requests a mock served (`GET /_mock/stats` total).
pub async fn mock_hits(c: &PlainClient, mock: SocketAddr) -> Res<u64> {
    let (_, body) = call(
        c,
        http::Method::GET,
        &format!("http://{mock}/_mock/stats"),
        "",
    )
    .await?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok(v["total"].as_u64().unwrap_or(0))
}

/// Writes `content` to `path` atomically (write beside, then rename), so a reload never
/// reads half a file.
pub fn write_atomic(path: &Path, content: &str) -> Res<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A loadgen run in the background.
#[derive(Debug)]
pub struct Loadgen {
    child: Child,
    result: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Loadgen {
    /// `loadgen run SCENARIO --host URL ARGS... --result RESULT --only-summary`.
    pub fn start(scenario: &Path, host: &str, args: &[String], result: &Path) -> Res<Self> {
        let log = result.with_extension("log");
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(harness::bin("loadgen"))
            .arg("run")
            .arg(scenario)
            .args(["--host", host, "--only-summary", "--result"])
            .arg(result)
            .args(args)
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("loadgen does not start: {e}"))?;
        Ok(Self {
            child,
            result: result.to_owned(),
            log,
        })
    }

    /// Waits (bounded) for it to end; its result file (loadgen's `RunResult` JSON).
    pub async fn finish(mut self, within: Duration) -> Res<serde_json::Value> {
        let code = wait_exit(&mut self.child, within).await?;
        let text = std::fs::read_to_string(&self.result).map_err(|e| {
            format!(
                "loadgen (exit {code:?}) wrote no result {}: {e}; its output: {}",
                self.result.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| format!("loadgen result: {e}"))
    }
}

impl Drop for Loadgen {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// loadgen's requests and failures of a result.
pub fn loadgen_totals(result: &serde_json::Value) -> (u64, u64) {
    let t = &result["total"];
    (
        t["requests"].as_u64().unwrap_or(0),
        t["failures"].as_u64().unwrap_or(0),
    )
}

/// loadgen's per-second p99 values (ms) of the seconds whose `elapsed` lies in
/// `[from, to)` seconds.
pub fn loadgen_p99s(result: &serde_json::Value, from: f64, to: f64) -> Vec<f64> {
    // Index of 0.99 in loadgen's PERCENTILES (0.5, 0.66, 0.75, 0.8, 0.9, 0.95, 0.98, 0.99, ...).
    const P99: usize = 7;
    result["series"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter(|p| {
                    let e = p["elapsed"].as_f64().unwrap_or(-1.0);
                    e >= from && e < to && p["requests"].as_u64().unwrap_or(0) > 0
                })
                .filter_map(|p| p["percentiles"][P99].as_f64())
                .collect()
        })
        .unwrap_or_default()
}
