pub mod harness;
pub mod mock;

pub use mock::{MockOptions, MockUpstream};
pub mod otlp;
pub mod prometheus;
pub mod raw;
pub mod reliability;
