//! Shared helpers of loadgen's end-to-end tests: binaries next to the test executable
//! (`cargo build --workspace --bins` builds them), the gateway as a process on free ports,
//! every wait bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Bound on start-up waits.
pub const WAIT: Duration = Duration::from_secs(20);

/// A workspace binary built next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The shipped scenarios directory.
pub fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// A fresh scratch directory under target/.
pub fn scratch(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("loadgen-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `VmHWM` (peak resident set) of a live process, kB.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub line: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns and waits (bounded) for the first stdout line.
pub fn spawn(mut cmd: Command) -> Proc {
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawns");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(WAIT)
        .expect("the process reports its address");
    Proc { child, line }
}

/// `mock-upstream` and the gateway (embedded default config) as processes on free ports:
/// (mock, gateway, mock URL, gateway URL).
pub fn stack() -> (Proc, Proc, String, String) {
    let s = stack_with_admin();
    (s.mock, s.gateway, s.mock_url, s.gateway_url)
}

/// `mock-upstream` (one worker) as a process on a free port, and its `host:port`.
pub fn mock_upstream() -> (Proc, String) {
    let mut mock = Command::new(bin("mock-upstream"));
    mock.args(["--listen", "127.0.0.1:0", "--workers", "1"]);
    let mock = spawn(mock);
    let addr = mock
        .line
        .strip_prefix("mock-upstream listening on ")
        .unwrap()
        .to_owned();
    (mock, addr)
}

/// Waits for `child` to exit; after `limit` it is killed and the test panics
/// naming `what`.
pub fn wait_bounded(child: &mut Child, what: &str, limit: Duration) -> ExitStatus {
    let start = std::time::SystemTime::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed().unwrap_or_default() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes and addresses of [`stack_with_admin`].
pub struct Stack {
    pub mock: Proc,
    pub gateway: Proc,
    pub mock_url: String,
    pub gateway_url: String,
    /// The gateway's admin listener (`/metrics`, `/ready`), `http://ADDR`.
    pub admin_url: String,
}

/// [`stack`], with the gateway's admin address.
pub fn stack_with_admin() -> Stack {
    let (mock, mock_addr) = mock_upstream();
    let mut gw = Command::new(bin("gateway"));
    gw.args(["serve", "--workers", "1"])
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_UPSTREAM", &mock_addr)
        .env("RUST_LOG", "warn");
    let gw = spawn(gw);
    let (addr, admin) = gw
        .line
        .strip_prefix("gateway listening on ")
        .and_then(|r| r.split_once(" (admin "))
        .unwrap();
    let admin = admin.trim_end_matches(')').to_owned();
    let addr = addr.to_owned();
    // Ready: the health checker has seen the upstream.
    let start = std::time::SystemTime::now();
    loop {
        let ok = std::net::TcpStream::connect(&admin)
            .map(|mut s| {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                buf.starts_with("HTTP/1.1 200")
            })
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(
            start.elapsed().unwrap_or_default() < WAIT,
            "gateway not ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Stack {
        mock,
        gateway: gw,
        mock_url: format!("http://{mock_addr}"),
        gateway_url: format!("http://{addr}"),
        admin_url: format!("http://{admin}"),
    }
}

/// What a finished loadgen said.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

fn drain(r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let mut r = r;
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Runs `loadgen ARGS` to completion, bounded.
pub fn loadgen(args: &[&str]) -> Ran {
    let mut child = Command::new(bin("loadgen"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_bounded(
        &mut child,
        &format!("loadgen {args:?}"),
        Duration::from_secs(90),
    );
    Ran {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Reads a child's stdout and stderr to the end on two threads, so a full
/// pipe never stalls it; join the handles for the text.
pub fn capture(
    child: &mut Child,
) -> (
    std::thread::JoinHandle<String>,
    std::thread::JoinHandle<String>,
) {
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    (
        read(Box::new(child.stdout.take().unwrap())),
        read(Box::new(child.stderr.take().unwrap())),
    )
}
