//! `mock-upstream`: one fast hyper server that plays every service of the seed documents,
//! so each load scenario has a real target behind the gateway.
//!
//! | service | endpoints |
//! | --- | --- |
//! | Meetinity upstreams (seeds 000, 001) | `/health`, `/api/hello`, `/api/echo`, `/api/users[/{id}]`, `/api/profile`, `/api/auth/session`, `/.well-known/jwks.json` |
//! | FlagMeter (seed 002) | `POST /api/events`, `GET /api/usage/{tenant}` |
//! | Paracle (seed 003) | `/api/v1/auth/token`, `/api/v1/agents[/{id}\|/run]`, `/api/v1/workflows[/run]` |
//! | meetings (seed 004) | `/api/meetings[/{id}[/join\|/leave\|/network-quality\|/ws]]`, `/ws` |
//! | httpbin-like | `/bytes/{n}`, `/delay/{ms}`, `/status/{code}`, `/headers`, `/upload`, `/cache/{secs}`, `/response-headers` |
//! | control | `/_mock/...`, below |
//!
//! With [`MockOptions::tls`] (`--tls-cert FILE --tls-key FILE`) every endpoint is served
//! over HTTPS instead (ALPN `h2`, `http/1.1`), e.g. the JWKS behind a test CA.
//!
//! With [`MockOptions::capacity`] (`--capacity N --base-latency 20ms`) it serves N requests
//! at once and queues the rest, so latency rises with its own concurrency (see [`Capacity`]).
//!
//! Every response carries `x-upstream-id`. By default nothing is slow, so a benchmark
//! measures the gateway; [`LatencyRule`]s and [`Fault`]s add delay, errors and connection
//! resets per path prefix, at start or at run time.
//!
//! The control endpoints are never counted in the stats and never faulted:
//!
//! | request | effect |
//! | --- | --- |
//! | `POST /_mock/faults` (fault JSON, see [`Fault`]) | adds a fault, 201 |
//! | `GET /_mock/faults`, `DELETE /_mock/faults` | lists, clears |
//! | `POST /_mock/latency` (`{"path_prefix", "dist"}`) | sets a latency rule, 201 |
//! | `GET /_mock/latency`, `DELETE /_mock/latency` | lists, clears |
//! | `GET /_mock/stats` | `{"total", "paths": {path: n, "other": n}}` |
//! | `POST /_mock/reset` | clears stats, faults, latency rules, JWKS rotation, cache count |
//! | `POST /_mock/jwks/rotate`, `DELETE /_mock/jwks/rotate` | publishes `rs-2` too, or stops |
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use e2e::mock::{MockOptions, MockUpstream};
//!
//! let mock = MockUpstream::start(MockOptions::default()).await?;
//! mock.set_latency("/api/v1/agents/run=lognormal:800ms:4s".parse().map_err(std::io::Error::other)?);
//! println!("listening on {}", mock.addr());
//! mock.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod body;
mod capacity;
mod control;
mod flagmeter;
mod httpbin;
mod jwt;
pub mod keys;
mod meetings;
mod meetinity;
mod options;
mod paracle;
mod query;
mod router;
mod rules;
mod server;
mod state;
mod stats;
mod timer;
mod tls;
mod ws;

pub use capacity::Capacity;
pub use flagmeter::{MAX_FEATURES, MAX_TENANTS};
pub use jwt::{JWT_AUDIENCE, JWT_ISSUER, KID_HS, KID_RS1, KID_RS2};
pub use meetings::{MAX_MEETINGS, MAX_PARTICIPANTS};
pub use options::{Fault, LatencyDist, LatencyRule, MockOptions, ParseError};
pub use paracle::{AGENTS, WORKFLOWS};
pub use router::X_UPSTREAM_ID;
pub use rules::{MAX_FAULTS, MAX_LATENCY_RULES};
pub use server::MockUpstream;
pub use stats::MAX_PATHS;
pub use tls::MockTls;
