//! Test harness: start the gateway in process or as a real process, on
//! ports the OS picks, and talk to it with a plain hyper client. Every wait
//! is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Generous bound for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(20);

/// Installs a compact log subscriber once (RUST_LOG to change the level).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A gateway config with both listeners on free ports; `body` adds
/// upstreams and routes (and may add to `[server]` via `server_extra`).
pub fn config(server_extra: &str, body: &str) -> gateway::Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server_extra}\n{body}"
    );
    let c = gateway::Config::from_toml(&text)
        .unwrap_or_else(|e| panic!("bad test config: {e}\n{text}"));
    gateway::config::validate::validate(&c)
        .unwrap_or_else(|e| panic!("invalid test config: {e}\n{text}"));
    c
}

/// One upstream `name` with `endpoints`, and one catch-all route to it.
pub fn simple(name: &str, endpoints: &[SocketAddr], upstream_extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[upstreams.{name}]\nendpoints = [{}]\n{upstream_extra}\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"{name}\"\n",
        eps.join(", ")
    )
}

/// Starts a gateway in this process.
pub async fn start_gateway(config: gateway::Config) -> gateway::Handle {
    gateway::start(
        config,
        gateway::config::Source::Embedded,
        Default::default(),
    )
    .await
    .expect("gateway starts")
}

/// The plain HTTP client of the tests.
pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive HTTP/1.1 client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A response with its body collected.
#[derive(Debug)]
pub struct Got {
    /// Status and headers.
    pub head: http::response::Parts,
    /// The whole body.
    pub body: Bytes,
}

impl Got {
    /// The status code as a number.
    pub fn status(&self) -> u16 {
        self.head.status.as_u16()
    }

    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.head
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `req` and collects the response, bounded by [`WAIT`].
pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Got {
    let resp: Response<_> = tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("response within the bound")
        .expect("request succeeds at the HTTP level");
    let (head, body) = resp.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body within the bound")
        .expect("body completes")
        .to_bytes();
    Got { head, body }
}

/// `GET http://{addr}{path}`.
pub async fn get(client: &TestClient, addr: SocketAddr, path: &str) -> Got {
    send(
        client,
        Request::get(format!("http://{addr}{path}"))
            .body(Full::default())
            .unwrap(),
    )
    .await
}

/// Waits until `cond` holds, polling every 20 ms, for at most [`WAIT`].
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` every 20 ms until it yields a value, for at most [`WAIT`];
/// `what` names the condition in the panic message.
pub async fn poll_until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin listener's `/metrics` (Prometheus text).
pub async fn metrics_text(client: &TestClient, admin: SocketAddr) -> String {
    String::from_utf8(get(client, admin, "/metrics").await.body.to_vec())
        .expect("metrics are UTF-8")
}

/// The value of the first sample whose line starts with `series`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A fresh directory `gateway-{tag}-{pid}-{random}` under the system temp
/// directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gateway-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `content` written to `name` in a fresh [`temp_dir`]; the file's path.
pub fn temp_file(tag: &str, name: &str, content: &str) -> PathBuf {
    let p = temp_dir(tag).join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// Environment variable naming the directory of the workspace binaries, for
/// programs that do not live in `target/*/deps` (the `reliability` runner).
pub const ENV_BIN_DIR: &str = "E2E_BIN_DIR";

/// Path of a workspace binary built next to the test executable
/// (`scripts/test.sh` builds them first), or in `$E2E_BIN_DIR` when set.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os(ENV_BIN_DIR) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().unwrap();
            exe.parent().and_then(Path::parent).unwrap().to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A gateway running as a real process (for signals and memory).
pub struct GatewayProcess {
    /// The child process.
    pub child: Child,
    /// Proxy listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Lines the process wrote to stderr (its logs), collected in the background.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Runs `gateway serve --config FILE` (or the embedded default) with
    /// both listeners on free ports and extra environment variables.
    pub fn spawn(config: Option<&Path>, env: &[(&str, String)]) -> Self {
        Self::spawn_with_args(config, env, &[])
    }

    /// Like [`GatewayProcess::spawn`], with extra command-line arguments.
    pub fn spawn_with_args(config: Option<&Path>, env: &[(&str, String)], args: &[&str]) -> Self {
        Self::spawn_wrapped(&[], config, env, args)
    }

    /// Like [`GatewayProcess::spawn_with_args`], run through `wrapper`, a
    /// command that execs its last argument in place (so the pid is the
    /// gateway's), e.g. `["prlimit", "--nofile=256:256"]`.
    pub fn spawn_wrapped(
        wrapper: &[&str],
        config: Option<&Path>,
        env: &[(&str, String)],
        args: &[&str],
    ) -> Self {
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(bin("gateway"));
                c
            }
            None => Command::new(bin("gateway")),
        };
        cmd.args(args).arg("serve").arg("--workers").arg("2");
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("gateway spawns");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "gateway did not report its addresses; logs: {:?}",
                logs.lock().unwrap()
            )
        });
        // "gateway listening on A (admin B)"
        let rest = line
            .strip_prefix("gateway listening on ")
            .expect("listening line");
        let (a, b) = rest.split_once(" (admin ").unwrap();
        Self {
            child,
            addr: a.parse().unwrap(),
            admin: b.trim_end_matches(')').parse().unwrap(),
            logs,
        }
    }

    /// Sends a signal (`"TERM"`, `"HUP"`, …) with kill(1), once the process
    /// has installed its handler for it (a signal sent right after the
    /// listening line could otherwise kill it with the default action).
    pub fn signal(&self, sig: &str) {
        if let Some(n) = match sig {
            "HUP" => Some(1),
            "INT" => Some(2),
            "TERM" => Some(15),
            _ => None,
        } {
            let start = std::time::SystemTime::now();
            while !self.catches(n) {
                assert!(
                    start.elapsed().unwrap() < WAIT,
                    "gateway never installed a SIG{sig} handler"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Whether the process has a handler for signal number `n` (SigCgt in
    /// /proc; the process may be gone, then `true` so the kill reports it).
    fn catches(&self, n: u32) -> bool {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
        else {
            return true;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|mask| mask >> (n - 1) & 1 == 1)
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Whether a log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits for the process to exit, bounded; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = std::time::Duration::from_secs(30);
        let start = std::time::SystemTime::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(start.elapsed().unwrap() < deadline, "gateway did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path of an external tool (`promtool`, `amtool`, `prometheus`) on PATH,
/// or `None`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Like [`find_tool`], failing with what to install when it is absent.
pub fn tool(name: &str, package: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!(
            "`{name}` not found on PATH: install Debian's `{package}` package \
             (scripts/test.sh installs it: apt-get install {package})"
        )
    })
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A port that was free a moment ago (for servers that cannot bind port 0
/// and report it, such as `redis-server`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of the test's own on `port` (no persistence), killed
/// on drop.
pub struct RedisServer {
    child: Child,
    /// Its port.
    pub port: u16,
    /// The CA file `redis-cli` verifies with, for a TLS server.
    tls_ca: Option<PathBuf>,
}

impl RedisServer {
    /// Starts it and waits until it accepts connections.
    pub async fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        wait_until("redis-server to listen", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        Self {
            child,
            port,
            tls_ca: None,
        }
    }

    /// Starts one that accepts TLS only (`rediss://`) on `port`, with the
    /// certificate and key files given, and waits until it listens.
    /// Clients need no certificate; `redis-cli` verifies against `ca`.
    pub async fn start_tls(port: u16, cert: &Path, key: &Path, ca: &Path) -> Self {
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &path(cert), "--tls-key-file", &path(key)])
            .args(["--tls-ca-cert-file", &path(ca), "--tls-auth-clients", "no"])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        wait_until("redis-server to listen with TLS", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        Self {
            child,
            port,
            tls_ca: Some(ca.to_owned()),
        }
    }

    /// `redis-cli ARGS` against this server; its `--raw` output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        if let Some(ca) = &self.tls_ca {
            cmd.args(["--tls", "--cacert", ca.to_str().unwrap(), "-h", "localhost"]);
        }
        let out = cmd
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli runs (it comes with redis-server)");
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
