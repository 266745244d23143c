//! An API gateway with built-in SLO telemetry.
//!
//! A reverse proxy built as a stack of tower middleware on hyper and tokio.
//! The layers and their order are written once, in [`stack`]; the mapping
//! from errors to responses once, in [`error`].

pub mod admin;
#[allow(unsafe_code)] // a GlobalAlloc impl is unsafe by definition; see its SAFETY note
pub mod alloc;
pub mod body;
pub mod cli;
pub mod client;
pub mod config;
pub mod context;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod middleware;
pub mod monitoring;
pub mod path;
pub mod proxy;
pub mod proxy_status;
pub mod request_id;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod stack;
pub mod telemetry;
pub mod timer;
pub mod upstream;

pub use config::Config;
pub use server::{start, Handle};
