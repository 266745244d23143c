//! What a mock upstream is told at start and at run time: listen address, identity, JWT
//! secret, latency rules and injected faults.
//!
//! Every type here parses from the strings the CLI and the `/_mock` control endpoints accept
//! (`"lognormal:800ms:4s"`, `"/api/v1=fixed:50ms"`, fault JSON), and rejects bad values when
//! parsed rather than when a request hits them.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// z-score of the 99th percentile of the standard normal distribution.
const Z_P99: f64 = 2.3263;

/// A log-normal sample is clamped to this multiple of its p99, so one unlucky draw cannot
/// park a request for minutes.
const LOGNORMAL_CAP_FACTOR: f64 = 10.0;

/// Options of a [`MockUpstream`](super::MockUpstream).
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Address to bind; port 0 picks a free one (see [`MockUpstream::addr`](super::MockUpstream::addr)).
    pub listen: SocketAddr,
    /// Value of the `x-upstream-id` header on every response.
    pub id: String,
    /// HS256 secret of the JWTs issued by `/api/auth/session` and `/api/v1/auth/token`.
    pub jwt_secret: String,
    /// Latency rules active from the start (none by default: every endpoint answers at once).
    pub latency: Vec<LatencyRule>,
    /// Faults active from the start.
    pub faults: Vec<Fault>,
    /// Serve at most N requests at once, queueing the rest, so latency
    /// rises with concurrency (none by default; see [`super::Capacity`]).
    pub capacity: Option<super::Capacity>,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<super::tls::MockTls>,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            id: "mock".to_owned(),
            jwt_secret: "meetinity-dev-secret-change-me-in-production".to_owned(),
            latency: Vec::new(),
            faults: Vec::new(),
            capacity: None,
            tls: None,
        }
    }
}

/// Why a latency distribution, latency rule or fault did not parse.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The distribution kind is not `fixed`, `uniform` or `lognormal`, or has the wrong
    /// number of parts.
    #[error(
        "bad latency distribution {0:?}: expected fixed:D, uniform:MIN:MAX or lognormal:MEDIAN:P99"
    )]
    Dist(String),
    /// A duration did not parse.
    #[error("bad duration {0:?}: {1}")]
    Duration(String, humantime::DurationError),
    /// The numbers parse but make no sense together (min > max, p99 < median, ...).
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A latency rule is not `PREFIX=DIST`.
    #[error("bad latency rule {0:?}: expected PREFIX=DIST")]
    Rule(String),
    /// A fault is not valid JSON of the expected shape.
    #[error("bad fault: {0}")]
    Fault(#[from] serde_json::Error),
}

fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    humantime::parse_duration(s.trim()).map_err(|e| ParseError::Duration(s.to_owned(), e))
}

/// How long a matching request waits before it is answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LatencyDist {
    /// Always this long.
    Fixed(Duration),
    /// Uniformly between the two bounds.
    Uniform(Duration, Duration),
    /// Log-normal with this median and 99th percentile (LLM-backed calls look like this).
    LogNormal {
        /// 50th percentile.
        median: Duration,
        /// 99th percentile.
        p99: Duration,
    },
}

impl LatencyDist {
    /// Draws one delay from the distribution (using the thread-local `fastrand` generator).
    pub fn sample(&self) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Uniform(lo, hi) => {
                let span = hi.saturating_sub(lo).as_secs_f64();
                lo + Duration::try_from_secs_f64(span * fastrand::f64()).unwrap_or_default()
            }
            Self::LogNormal { median, p99 } => {
                let m = median.as_secs_f64();
                if m <= 0.0 {
                    return Duration::ZERO;
                }
                let sigma = (p99.as_secs_f64() / m).ln() / Z_P99;
                let secs = (m.ln() + sigma * standard_normal()).exp();
                let cap = p99.as_secs_f64() * LOGNORMAL_CAP_FACTOR;
                Duration::try_from_secs_f64(secs.min(cap)).unwrap_or(median)
            }
        }
    }
}

/// One standard normal draw (Box-Muller).
fn standard_normal() -> f64 {
    // 1 - f64() lies in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - fastrand::f64();
    let u2 = fastrand::f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl FromStr for LatencyDist {
    type Err = ParseError;

    /// Parses `fixed:50ms`, `uniform:10ms:30ms` or `lognormal:800ms:4s`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        match parts.as_slice() {
            ["fixed", d] => Ok(Self::Fixed(parse_duration(d)?)),
            ["uniform", lo, hi] => {
                let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
                if lo > hi {
                    return Err(ParseError::Invalid("uniform latency: min > max"));
                }
                Ok(Self::Uniform(lo, hi))
            }
            ["lognormal", median, p99] => {
                let (median, p99) = (parse_duration(median)?, parse_duration(p99)?);
                if median.is_zero() {
                    return Err(ParseError::Invalid("lognormal latency: median must be > 0"));
                }
                if p99 < median {
                    return Err(ParseError::Invalid("lognormal latency: p99 < median"));
                }
                Ok(Self::LogNormal { median, p99 })
            }
            _ => Err(ParseError::Dist(s.to_owned())),
        }
    }
}

impl fmt::Display for LatencyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = humantime::format_duration;
        match *self {
            Self::Fixed(d) => write!(f, "fixed:{}", h(d)),
            Self::Uniform(lo, hi) => write!(f, "uniform:{}:{}", h(lo), h(hi)),
            Self::LogNormal { median, p99 } => write!(f, "lognormal:{}:{}", h(median), h(p99)),
        }
    }
}

/// Adds latency to requests whose path starts with `path_prefix`; the longest matching
/// prefix wins.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyRule {
    /// Path prefix (`""` or `"/"` matches everything).
    pub path_prefix: String,
    /// The delay distribution.
    pub dist: LatencyDist,
}

impl FromStr for LatencyRule {
    type Err = ParseError;

    /// Parses `PREFIX=DIST`, e.g. `/api/v1/agents/run=lognormal:2s:20s`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (prefix, dist) = s
            .rsplit_once('=')
            .ok_or_else(|| ParseError::Rule(s.to_owned()))?;
        Ok(Self {
            path_prefix: prefix.trim().to_owned(),
            dist: dist.parse()?,
        })
    }
}

/// The JSON shape of a latency rule on `POST /_mock/latency`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LatencyRuleSpec {
    #[serde(default)]
    path_prefix: String,
    dist: String,
}

impl TryFrom<LatencyRuleSpec> for LatencyRule {
    type Error = ParseError;

    fn try_from(spec: LatencyRuleSpec) -> Result<Self, Self::Error> {
        Ok(Self {
            path_prefix: spec.path_prefix,
            dist: spec.dist.parse()?,
        })
    }
}

/// An injected failure on requests whose path starts with `path_prefix`.
///
/// Deserializes from
/// `{"path_prefix": "/api", "error_rate": 0.1, "status": 503, "added_latency": "1s",
/// "reset_rate": 0.05, "duration": "60s"}` (every field optional).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "FaultSpec")]
pub struct Fault {
    /// Path prefix; `""` matches every request.
    pub path_prefix: String,
    /// Fraction (0..=1) of matching requests answered with `status`.
    pub error_rate: f64,
    /// Status of the injected error responses (502 unless set; a 1xx also gives 502).
    pub status: u16,
    /// Delay added to every matching request before anything else happens.
    pub added_latency: Duration,
    /// Fraction (0..=1) of matching requests whose connection is dropped without a response
    /// (on HTTP/2, whose stream is reset).
    pub reset_rate: f64,
    /// When the fault stops applying; `None` means never.
    pub until: Option<Instant>,
}

impl Default for Fault {
    fn default() -> Self {
        Self {
            path_prefix: String::new(),
            error_rate: 0.0,
            status: 502,
            added_latency: Duration::ZERO,
            reset_rate: 0.0,
            until: None,
        }
    }
}

impl Fault {
    /// Whether the fault still applies at `now`.
    pub fn is_active(&self, now: Instant) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

impl FromStr for Fault {
    type Err = ParseError;

    /// Parses the fault JSON (see [`Fault`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(serde_json::from_str(s)?)
    }
}

/// The wire shape of a [`Fault`]: durations as strings, `duration` rather than a deadline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    #[serde(default)]
    path_prefix: String,
    #[serde(default)]
    error_rate: f64,
    #[serde(default = "default_fault_status")]
    status: u16,
    #[serde(default)]
    added_latency: Option<String>,
    #[serde(default)]
    reset_rate: f64,
    #[serde(default)]
    duration: Option<String>,
}

fn default_fault_status() -> u16 {
    502
}

impl TryFrom<FaultSpec> for Fault {
    type Error = ParseError;

    fn try_from(spec: FaultSpec) -> Result<Self, Self::Error> {
        if !(0.0..=1.0).contains(&spec.error_rate) {
            return Err(ParseError::Invalid(
                "fault error_rate: must be within 0..=1",
            ));
        }
        if !(0.0..=1.0).contains(&spec.reset_rate) {
            return Err(ParseError::Invalid(
                "fault reset_rate: must be within 0..=1",
            ));
        }
        if !(200..=599).contains(&spec.status) {
            return Err(ParseError::Invalid(
                "fault status: must be within 200..=599",
            ));
        }
        let added_latency = spec
            .added_latency
            .as_deref()
            .map(parse_duration)
            .transpose()?;
        let duration = spec.duration.as_deref().map(parse_duration).transpose()?;
        Ok(Self {
            path_prefix: spec.path_prefix,
            error_rate: spec.error_rate,
            status: spec.status,
            added_latency: added_latency.unwrap_or_default(),
            reset_rate: spec.reset_rate,
            until: duration.map(|d| Instant::now() + d),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Fault, LatencyDist, LatencyRule};

    #[test]
    fn latency_distributions_parse_and_sample() {
        let ms = Duration::from_millis;
        assert_eq!(
            "fixed:50ms".parse::<LatencyDist>().unwrap(),
            LatencyDist::Fixed(ms(50))
        );
        assert_eq!(
            "uniform:10ms:30ms".parse::<LatencyDist>().unwrap(),
            LatencyDist::Uniform(ms(10), ms(30))
        );
        assert_eq!(
            "lognormal:800ms:4s".parse::<LatencyDist>().unwrap(),
            LatencyDist::LogNormal {
                median: ms(800),
                p99: ms(4000)
            }
        );
        for bad in [
            "",
            "fixed",
            "fixed:abc",
            "uniform:30ms:10ms",
            "lognormal:4s:800ms",
            "lognormal:0ms:1s",
            "gauss:1s",
        ] {
            assert!(
                bad.parse::<LatencyDist>().is_err(),
                "{bad:?} must not parse"
            );
        }
        let rule: LatencyRule = "/api/v1/agents/run=lognormal:2s:20s".parse().unwrap();
        assert_eq!(rule.path_prefix, "/api/v1/agents/run");
        assert_eq!(rule.dist.to_string(), "lognormal:2s:20s");
        assert!("no-equals-sign".parse::<LatencyRule>().is_err());

        fastrand::seed(7);
        let uniform = LatencyDist::Uniform(ms(10), ms(30));
        assert!((0..1000)
            .map(|_| uniform.sample())
            .all(|d| (ms(10)..=ms(30)).contains(&d)));
        let dist = LatencyDist::LogNormal {
            median: ms(100),
            p99: ms(1000),
        };
        let mut samples: Vec<Duration> = (0..20_000).map(|_| dist.sample()).collect();
        samples.sort();
        let (median, p99) = (samples[10_000], samples[19_800]);
        assert!((ms(90)..=ms(110)).contains(&median), "median {median:?}");
        assert!((ms(850)..=ms(1150)).contains(&p99), "p99 {p99:?}");
        assert!(
            samples.iter().all(|d| *d <= ms(10_000)),
            "samples are capped at 10 x p99"
        );
    }

    #[test]
    fn faults_parse_from_json() {
        let fault: Fault = r#"{"path_prefix":"/api","error_rate":0.5,"added_latency":"1s","reset_rate":0.1,"duration":"60s"}"#
            .parse()
            .unwrap();
        assert_eq!(
            (fault.status, fault.error_rate, fault.reset_rate),
            (502, 0.5, 0.1)
        );
        assert_eq!(fault.added_latency, Duration::from_secs(1));
        let until = fault.until.unwrap();
        assert!(until > tokio::time::Instant::now() + Duration::from_secs(59));
        assert_eq!("{}".parse::<Fault>().unwrap(), Fault::default());
        for bad in [
            r#"{"error_rate":1.5}"#,
            r#"{"reset_rate":-1}"#,
            r#"{"status":99}"#,
            r#"{"duration":"soon"}"#,
            r#"{"other":1}"#,
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad} must not parse");
        }
    }
}
