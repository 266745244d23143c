//! A real Prometheus (Debian's package) for the tests that check what it
//! reads from the gateway: started on a free port with a config of the
//! test's, queried over its HTTP API, killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;

use crate::harness::{free_port, TestClient};

/// A running Prometheus; killed when dropped.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:PORT` of its HTTP API.
    pub addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `bin` with `config` (YAML) written into `dir` (its storage
    /// too) and `extra` arguments (e.g. `--enable-feature=...`).
    ///
    /// # Panics
    /// When the config cannot be written or the process not started.
    #[allow(clippy::expect_used)]
    pub fn start(bin: &Path, dir: &Path, config: &str, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir).expect("prometheus dir");
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).expect("prometheus.yml written");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Self {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    /// The JSON answer of `GET /api/v1/PATH_AND_QUERY`, `None` while it
    /// does not answer (bounded: 5 s).
    pub async fn api(&self, c: &TestClient, path_and_query: &str) -> Option<Value> {
        get_json(c, &format!("http://{}/api/v1/{path_and_query}", self.addr)).await
    }

    /// The answer to the instant query `expr`.
    pub async fn query(&self, c: &TestClient, expr: &str) -> Option<Value> {
        self.api(c, &format!("query?query={}", urlencode(expr)))
            .await
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET url` as JSON, `None` on any failure (bounded: 5 s).
pub async fn get_json(c: &TestClient, url: &str) -> Option<Value> {
    let req = Request::get(url).body(Full::new(Bytes::new())).ok()?;
    let got = tokio::time::timeout(Duration::from_secs(5), c.request(req))
        .await
        .ok()?
        .ok()?;
    let body = http_body_util::BodyExt::collect(got.into_body())
        .await
        .ok()?
        .to_bytes();
    serde_json::from_slice(&body).ok()
}
