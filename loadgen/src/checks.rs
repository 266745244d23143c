//! What turns a response into a success or a failure: the expected statuses, then each
//! check in order (status, a JSON field, "slower than", body text); and taking variables
//! out of JSON responses.

use std::time::Duration;

use serde_json::Value;

/// A dotted path into a JSON document: `data.items.0.id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    segments: Vec<String>,
    source: String,
}

impl JsonPath {
    /// Parses `a.b.0.c`; `None` when empty or with an empty segment.
    pub fn parse(s: &str) -> Option<Self> {
        let segments: Vec<String> = s.split('.').map(str::to_owned).collect();
        if s.is_empty() || segments.iter().any(String::is_empty) {
            return None;
        }
        Some(Self {
            segments,
            source: s.to_owned(),
        })
    }

    /// The path as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The value at this path (array items by index).
    pub fn lookup<'a>(&self, mut v: &'a Value) -> Option<&'a Value> {
        for seg in &self.segments {
            v = match v {
                Value::Object(map) => map.get(seg)?,
                Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v)
    }
}

/// One check of a response.
#[derive(Debug, Clone)]
pub enum Check {
    /// The status must be exactly this.
    Status(u16),
    /// The JSON field must equal the value.
    JsonEquals(JsonPath, Value),
    /// The JSON field must exist (`true`) or be absent (`false`).
    JsonExists(JsonPath, bool),
    /// The response must take no longer than this.
    SlowerThan(Duration),
    /// The body must contain the text.
    BodyContains(String),
}

impl Check {
    /// Whether this check needs the response body.
    pub fn needs_body(&self) -> bool {
        matches!(
            self,
            Self::JsonEquals(..) | Self::JsonExists(..) | Self::BodyContains(_)
        )
    }
}

/// Which statuses are a success before the checks run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Expect {
    /// Below 400 (Locust's rule).
    #[default]
    Below400,
    /// Exactly these (a rate-limit user expects 429 and counts it as success).
    Statuses(Vec<u16>),
}

impl Expect {
    /// Whether `status` is expected.
    pub fn accepts(&self, status: u16) -> bool {
        match self {
            Self::Below400 => status < 400,
            Self::Statuses(list) => list.contains(&status),
        }
    }
}

/// The parsed body, parsed at most once per response.
#[derive(Debug)]
pub struct Body<'a> {
    raw: &'a [u8],
    json: Option<Option<Value>>,
}

impl<'a> Body<'a> {
    /// Wraps raw bytes.
    pub fn new(raw: &'a [u8]) -> Self {
        Self { raw, json: None }
    }

    /// The body as JSON (`None` if it is not).
    pub fn json(&mut self) -> Option<&Value> {
        let raw = self.raw;
        self.json
            .get_or_insert_with(|| serde_json::from_slice(raw).ok())
            .as_ref()
    }
}

/// Judges a response: `Err` holds the failure message, as Locust's failures table shows it.
pub fn judge(
    status: u16,
    elapsed: Duration,
    body: &mut Body<'_>,
    expect: &Expect,
    checks: &[Check],
) -> Result<(), String> {
    let status_checked = checks.iter().any(|c| matches!(c, Check::Status(_)));
    if !status_checked && !expect.accepts(status) {
        return Err(format!("HTTP {status}"));
    }
    for check in checks {
        match check {
            Check::Status(want) => {
                if status != *want
                    && !(matches!(expect, Expect::Statuses(l) if l.contains(&status)))
                {
                    return Err(format!("HTTP {status} (expected {want})"));
                }
            }
            Check::JsonEquals(path, want) => {
                let got = body.json().and_then(|v| path.lookup(v));
                if got != Some(want) {
                    return Err(format!(
                        "check failed: {} is {}, expected {want}",
                        path.source(),
                        got.map_or_else(|| "absent".to_owned(), Value::to_string)
                    ));
                }
            }
            Check::JsonExists(path, want) => {
                let got = body.json().and_then(|v| path.lookup(v)).is_some();
                if got != *want {
                    return Err(format!(
                        "check failed: {} {}",
                        path.source(),
                        if *want { "is absent" } else { "is present" }
                    ));
                }
            }
            Check::SlowerThan(limit) => {
                if elapsed > *limit {
                    return Err(format!(
                        "check failed: slower than {}",
                        humantime::format_duration(*limit)
                    ));
                }
            }
            Check::BodyContains(text) => {
                let found = body
                    .raw
                    .windows(text.len().max(1))
                    .any(|w| w == text.as_bytes());
                if !found {
                    return Err(format!("check failed: body does not contain {text:?}"));
                }
            }
        }
    }
    Ok(())
}

/// The value at `path` as a variable: strings as they are, other JSON as text.
pub fn extract(body: &mut Body<'_>, path: &JsonPath) -> Option<String> {
    match path.lookup(body.json()?)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        v => Some(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn judges_statuses_and_checks() {
        let raw = br#"{"status":"success","items":[{"id":7}]}"#;
        let ms = Duration::from_millis;
        let ok = |status, checks: &[Check], expect: &Expect| {
            judge(status, ms(10), &mut Body::new(raw), expect, checks)
        };
        assert!(ok(200, &[], &Expect::Below400).is_ok());
        assert_eq!(ok(502, &[], &Expect::Below400).unwrap_err(), "HTTP 502");
        assert!(ok(429, &[], &Expect::Statuses(vec![200, 429])).is_ok());
        assert!(ok(201, &[Check::Status(200)], &Expect::Below400).is_err());
        let path = JsonPath::parse("items.0.id").unwrap();
        assert!(ok(
            200,
            &[Check::JsonEquals(path.clone(), 7.into())],
            &Expect::Below400
        )
        .is_ok());
        assert!(ok(200, &[Check::JsonEquals(path, 8.into())], &Expect::Below400).is_err());
        let missing = JsonPath::parse("nope").unwrap();
        assert!(ok(200, &[Check::JsonExists(missing, false)], &Expect::Below400).is_ok());
        assert!(ok(200, &[Check::SlowerThan(ms(5))], &Expect::Below400).is_err());
        assert!(ok(
            200,
            &[Check::BodyContains("success".into())],
            &Expect::Below400
        )
        .is_ok());
        let token = JsonPath::parse("status").unwrap();
        assert_eq!(
            extract(&mut Body::new(raw), &token).as_deref(),
            Some("success")
        );
        assert!(JsonPath::parse("a..b").is_none());
    }
}
