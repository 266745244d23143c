//! Templated strings of a scenario: paths, header values, bodies.
//!
//! A template is text with `{{ expr }}` holes, parsed once when the scenario is built so a
//! bad expression fails at load time, never in the middle of a run:
//!
//! | expression | renders |
//! | --- | --- |
//! | `name` | a variable of the user (`vars`, or extracted from a response) |
//! | `randint(a, b)` | a random integer in `a..=b` |
//! | `choice(x, y, z)` | one of the items, uniformly |
//! | `uuid()` | a random UUID v4 |
//! | `payload(100KB)` | that many random alphanumeric bytes (drawn once, at build time) |
//! | `user_index` | the simulated user's number, from 0 |
//!
//! ```
//! use loadgen::scenario::template::{Template, Vars};
//!
//! let t = Template::parse("/api/users/{{randint(1, 9)}}?who={{name}}").unwrap();
//! let mut vars = Vars::default();
//! vars.set("name", "ada");
//! let path = t.render(&vars);
//! assert!(path.starts_with("/api/users/") && path.ends_with("?who=ada"));
//! assert_eq!(t.stats_name(), "/api/users/[randint]?who=[name]");
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::Value;

/// The largest payload a template may ask for.
pub const MAX_PAYLOAD: u64 = 64 * 1024 * 1024;

/// A template did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without a matching `}}`.
    #[error("unclosed `{{{{` in {0:?}")]
    Unclosed(String),
    /// An expression that is none of the known forms.
    #[error("unknown template expression {0:?} (expected a variable name, randint(a, b), choice(x, y), uuid(), payload(SIZE) or user_index)")]
    Unknown(String),
    /// The arguments of a function are wrong.
    #[error("bad arguments in {0:?}: {1}")]
    Args(String, &'static str),
}

/// One piece of a template.
#[derive(Debug, Clone)]
enum Segment {
    Text(String),
    Var(String),
    RandInt(i64, i64),
    Choice(Vec<String>),
    Uuid,
    Payload(Arc<str>),
    UserIndex,
}

/// A parsed template (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Template {
    segments: Vec<Segment>,
    source: String,
}

/// Per-user variables, set from `vars` and by `extract`.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    values: Vec<(String, String)>,
    user_index: u64,
}

impl Vars {
    /// Empty variables for user number `index`.
    pub fn for_user(index: u64) -> Self {
        Self {
            values: Vec::new(),
            user_index: index,
        }
    }

    /// Sets (or replaces) a variable.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.values.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.values.push((name.to_owned(), value)),
        }
    }

    /// A variable's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a size such as `512`, `100KB`, `1MiB` (KB and KiB both mean 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "kib" | "k" => 1024,
        "mb" | "mib" | "m" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `n` random alphanumeric characters.
pub fn random_payload(n: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(n)
        .collect()
}

/// A random UUID v4 in its hyphenated form.
pub fn uuid_v4() -> String {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_expr(expr: &str) -> Result<Segment, TemplateError> {
    let e = expr.trim();
    if e == "user_index" {
        return Ok(Segment::UserIndex);
    }
    if e == "uuid" || e == "uuid()" {
        return Ok(Segment::Uuid);
    }
    if is_ident(e) {
        return Ok(Segment::Var(e.to_owned()));
    }
    let Some((func, rest)) = e.split_once('(') else {
        return Err(TemplateError::Unknown(e.to_owned()));
    };
    let Some(args) = rest.trim_end().strip_suffix(')') else {
        return Err(TemplateError::Unknown(e.to_owned()));
    };
    let args: Vec<&str> = args.split(',').map(|a| a.trim()).collect();
    let bad = |why| TemplateError::Args(e.to_owned(), why);
    match func.trim() {
        "randint" => {
            let [a, b] = args.as_slice() else {
                return Err(bad("randint takes two integers"));
            };
            let (a, b) = (
                a.parse::<i64>().map_err(|_| bad("not an integer"))?,
                b.parse::<i64>().map_err(|_| bad("not an integer"))?,
            );
            if a > b {
                return Err(bad("the low bound is above the high bound"));
            }
            Ok(Segment::RandInt(a, b))
        }
        "choice" => {
            let items: Vec<String> = args
                .iter()
                .map(|a| a.trim_matches(|c| c == '"' || c == '\'').to_owned())
                .collect();
            if items.iter().any(String::is_empty) {
                return Err(bad("choice items must not be empty"));
            }
            Ok(Segment::Choice(items))
        }
        "payload" => {
            let [size] = args.as_slice() else {
                return Err(bad("payload takes one size, e.g. payload(100KB)"));
            };
            let n = parse_size(size).ok_or_else(|| bad("not a size (e.g. 512, 100KB, 1MiB)"))?;
            if n > MAX_PAYLOAD {
                return Err(bad("payloads are limited to 64 MiB"));
            }
            let n = usize::try_from(n).map_err(|_| bad("too large"))?;
            Ok(Segment::Payload(random_payload(n).into()))
        }
        "uuid" => Err(bad("uuid takes no arguments")),
        _ => Err(TemplateError::Unknown(e.to_owned())),
    }
}

impl Template {
    /// Parses `source`.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut segments = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            let (text, after) = rest.split_at(open);
            if !text.is_empty() {
                segments.push(Segment::Text(text.to_owned()));
            }
            let after = after.get(2..).unwrap_or_default();
            let close = after
                .find("}}")
                .ok_or_else(|| TemplateError::Unclosed(source.to_owned()))?;
            let (expr, tail) = after.split_at(close);
            segments.push(parse_expr(expr)?);
            rest = tail.get(2..).unwrap_or_default();
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_owned()));
        }
        Ok(Self {
            segments,
            source: source.to_owned(),
        })
    }

    /// The text as written in the scenario.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template has no expression.
    pub fn is_literal(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Text(_)))
    }

    /// The variables this template reads.
    pub fn variables(&self) -> BTreeSet<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Var(v) => Some(v.as_str()),
                _ => None,
            })
            .collect()
    }

    /// A bounded statistics name: every expression becomes `[its name]`.
    pub fn stats_name(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Text(t) => out.push_str(t),
                Segment::Var(v) => {
                    let _ = write!(out, "[{v}]");
                }
                Segment::RandInt(..) => out.push_str("[randint]"),
                Segment::Choice(_) => out.push_str("[choice]"),
                Segment::Uuid => out.push_str("[uuid]"),
                Segment::Payload(_) => out.push_str("[payload]"),
                Segment::UserIndex => out.push_str("[user_index]"),
            }
        }
        out
    }

    /// Renders into `out` (a missing variable renders as nothing; validation rejects
    /// templates that read undeclared variables).
    pub fn render_into(&self, vars: &Vars, out: &mut String) {
        for s in &self.segments {
            match s {
                Segment::Text(t) => out.push_str(t),
                Segment::Var(v) => out.push_str(vars.get(v).unwrap_or_default()),
                Segment::RandInt(a, b) => {
                    let _ = write!(out, "{}", fastrand::i64(*a..=*b));
                }
                Segment::Choice(items) => {
                    if let Some(item) = items.get(fastrand::usize(..items.len())) {
                        out.push_str(item);
                    }
                }
                Segment::Uuid => out.push_str(&uuid_v4()),
                Segment::Payload(p) => out.push_str(p),
                Segment::UserIndex => {
                    let _ = write!(out, "{}", vars.user_index);
                }
            }
        }
    }

    /// Renders to a new string.
    pub fn render(&self, vars: &Vars) -> String {
        let mut out = String::with_capacity(self.source.len() + 16);
        self.render_into(vars, &mut out);
        out
    }

    /// A template that is exactly one `randint(..)` or `user_index` renders to a JSON number.
    fn as_number(&self, vars: &Vars) -> Option<Value> {
        match self.segments.as_slice() {
            [Segment::RandInt(a, b)] => Some(fastrand::i64(*a..=*b).into()),
            [Segment::UserIndex] => Some(vars.user_index.into()),
            _ => None,
        }
    }
}

/// A JSON body whose string leaves are templates.
#[derive(Debug, Clone)]
pub enum JsonTemplate {
    /// A value with no template in it.
    Literal(Value),
    /// A templated string (a lone `randint` renders as a number).
    Str(Template),
    /// An array.
    Array(Vec<JsonTemplate>),
    /// An object.
    Object(Vec<(String, JsonTemplate)>),
}

impl JsonTemplate {
    /// Builds from a TOML value (the scenario's `json = {...}`).
    pub fn from_toml(v: &toml::Value) -> Result<Self, TemplateError> {
        Ok(match v {
            toml::Value::String(s) => {
                let t = Template::parse(s)?;
                if t.is_literal() {
                    Self::Literal(Value::String(s.clone()))
                } else {
                    Self::Str(t)
                }
            }
            toml::Value::Integer(i) => Self::Literal((*i).into()),
            toml::Value::Float(f) => Self::Literal((*f).into()),
            toml::Value::Boolean(b) => Self::Literal((*b).into()),
            toml::Value::Datetime(d) => Self::Literal(d.to_string().into()),
            toml::Value::Array(items) => Self::Array(
                items
                    .iter()
                    .map(Self::from_toml)
                    .collect::<Result<_, _>>()?,
            ),
            toml::Value::Table(t) => Self::Object(
                t.iter()
                    .map(|(k, v)| Ok((k.clone(), Self::from_toml(v)?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
        })
    }

    /// The variables read anywhere in the body.
    pub fn variables(&self) -> BTreeSet<&str> {
        match self {
            Self::Literal(_) => BTreeSet::new(),
            Self::Str(t) => t.variables(),
            Self::Array(items) => items.iter().flat_map(Self::variables).collect(),
            Self::Object(fields) => fields.iter().flat_map(|(_, v)| v.variables()).collect(),
        }
    }

    /// Renders to a JSON value.
    pub fn render(&self, vars: &Vars) -> Value {
        match self {
            Self::Literal(v) => v.clone(),
            Self::Str(t) => t
                .as_number(vars)
                .unwrap_or_else(|| Value::String(t.render(vars))),
            Self::Array(items) => Value::Array(items.iter().map(|i| i.render(vars)).collect()),
            Self::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.render(vars)))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_every_expression() {
        let mut vars = Vars::for_user(7);
        vars.set("token", "abc");
        let t = Template::parse(
            "a{{token}}-{{randint(3,3)}}-{{choice(x)}}-{{user_index}}-{{payload(4)}}",
        )
        .unwrap();
        let out = t.render(&vars);
        assert!(out.starts_with("aabc-3-x-7-"), "{out}");
        assert_eq!(out.len(), "aabc-3-x-7-".len() + 4);
        assert_eq!(t.variables().into_iter().collect::<Vec<_>>(), ["token"]);
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(u.as_bytes()[14], b'4');
    }

    #[test]
    fn rejects_bad_expressions() {
        for bad in [
            "{{",
            "{{ 1abc }}",
            "{{randint(5,1)}}",
            "{{randint(a,1)}}",
            "{{payload(huge)}}",
            "{{nope(1)}}",
            "{{choice(a,,b)}}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} must not parse");
        }
    }

    #[test]
    fn json_numbers_stay_numbers() {
        let v: toml::Value =
            toml::from_str("tokens = \"{{randint(5,5)}}\"\nname = \"t{{user_index}}\"").unwrap();
        let j = JsonTemplate::from_toml(&v).unwrap();
        let out = j.render(&Vars::for_user(2));
        assert_eq!(out, serde_json::json!({"tokens": 5, "name": "t2"}));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100KB"), Some(102_400));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("1GB"), None);
    }
}
