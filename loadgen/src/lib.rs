//! Locust-style load generator with HDR latency histograms and SLA verdicts.
//!
//! - [`scenario`]: the TOML scenario format and the Rust builders, validated with key paths.
//! - [`plan`]: closed model, k6-style stages, open model (arrival rates).
//! - [`runner`] drives [`user`]s over [`client`] connections; [`checks`] judge responses.
//! - [`metrics`]: HDR histograms per name and in total, the per-second series.
//! - [`sla`]: thresholds and the verdict; [`report`]: table, CSV, JSON, HTML, JUnit.
//! - [`monitor`]: the generator watches itself and marks unreliable runs; [`limits`]: the
//!   open-file limit raised for one connection per user.
//! - [`merge`]: exact merging of distributed (`--shard`) results; [`crosscheck`]: the
//!   server-side view from the gateway's `/metrics`.
//! - [`cli`] and [`demo`]: the command line; [`ui`]: the live web UI.

pub mod checks;
pub mod cli;
pub mod client;
pub mod crosscheck;
pub mod demo;
pub mod limits;
pub mod merge;
pub mod metrics;
pub mod monitor;
pub mod plan;
pub mod prom;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sla;
pub mod ui;
pub mod user;
