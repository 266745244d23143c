//! A route's `compression = { ... }`: which codings the gateway may apply
//! to its responses, to which content types, from which size, how hard.

use serde::Deserialize;

use super::ByteSize;

/// A content coding the gateway can apply (RFC 9110 8.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// `zstd` (RFC 8878).
    Zstd,
    /// `br` (RFC 7932).
    Br,
    /// `gzip` (RFC 1952).
    Gzip,
}

impl Algorithm {
    /// Every coding, in the default server preference.
    pub const ALL: [Self; 3] = [Self::Zstd, Self::Br, Self::Gzip];

    /// The token in `Accept-Encoding` and `Content-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Br => "br",
            Self::Gzip => "gzip",
        }
    }

    /// A dense index (`0..3`), for per-coding counters.
    pub fn index(self) -> usize {
        match self {
            Self::Zstd => 0,
            Self::Br => 1,
            Self::Gzip => 2,
        }
    }
}

/// How hard to compress: on-the-fly levels, not archive levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionLevel {
    /// Fast enough for every response: gzip 6, br 4, zstd 3 (brotli's own
    /// default, 11, is an archive level, far too slow on the fly).
    #[default]
    Default,
    /// The least CPU: gzip 1, br 0, zstd 1.
    Fastest,
    /// The smallest output, at many times the CPU and (br, zstd) memory:
    /// gzip 9, br 11, zstd 19.
    Best,
}

/// A route's `compression` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteCompressionConfig {
    /// Codings the gateway may apply, in server preference order (used
    /// among those the client weights equally).
    #[serde(default = "defaults::algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Media types compressed: `type/subtype`, `type/*`, `type/*+suffix`
    /// (`application/*+json`) or `*/*`; case-insensitive, parameters such
    /// as `charset` ignored.
    #[serde(default = "defaults::content_types")]
    pub content_types: Vec<String>,
    /// A response that declares a smaller `Content-Length` is sent as is;
    /// one of unknown length (streamed) is compressed.
    #[serde(default = "defaults::min_size")]
    pub min_size: ByteSize,
    /// Compression level.
    #[serde(default)]
    pub level: CompressionLevel,
}

impl Default for RouteCompressionConfig {
    fn default() -> Self {
        Self {
            algorithms: defaults::algorithms(),
            content_types: defaults::content_types(),
            min_size: defaults::min_size(),
            level: CompressionLevel::Default,
        }
    }
}

impl RouteCompressionConfig {
    /// Every problem, as (key under `compression`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.algorithms.is_empty() {
            out.push(("algorithms".into(), "must name at least one coding".into()));
        }
        for (i, a) in self.algorithms.iter().enumerate() {
            if self.algorithms[..i].contains(a) {
                out.push((
                    format!("algorithms[{i}]"),
                    format!("duplicate coding {:?}", a.as_str()),
                ));
            }
        }
        if self.content_types.is_empty() {
            out.push((
                "content_types".into(),
                "must name at least one media type".into(),
            ));
        }
        for (i, t) in self.content_types.iter().enumerate() {
            if let Err(e) = check_media_range(t) {
                out.push((format!("content_types[{i}]"), e));
            }
        }
        out
    }
}

/// A `type/subtype`, `type/*`, `type/*+suffix` or `*/*` pattern.
fn check_media_range(t: &str) -> Result<(), String> {
    let bad =
        || format!("invalid media type {t:?}: expected e.g. \"text/*\" or \"application/json\"");
    let (ty, sub) = t.split_once('/').ok_or_else(bad)?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let sub_ok = token(sub) || sub == "*" || sub.strip_prefix("*+").is_some_and(token);
    if !(token(ty) || ty == "*") || !sub_ok || (ty == "*" && sub != "*") {
        return Err(bad());
    }
    Ok(())
}

mod defaults {
    use super::{Algorithm, ByteSize};

    pub fn algorithms() -> Vec<Algorithm> {
        Algorithm::ALL.to_vec()
    }

    /// Text-like types that compress well; images, audio, video and
    /// archives are compressed already.
    pub fn content_types() -> Vec<String> {
        [
            "text/*",
            "application/json",
            "application/*+json",
            "application/javascript",
            "application/xml",
            "application/*+xml",
            "application/x-ndjson",
            "application/graphql-response+json",
            "application/wasm",
            "image/svg+xml",
            "font/ttf",
            "font/otf",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Below about 1 KiB the coding's framing eats the gain (nginx's
    /// `gzip_min_length` is 20 bytes, Envoy's `min_content_length` 30;
    /// 1 KiB is what Cloudflare and most guides use).
    pub fn min_size() -> ByteSize {
        ByteSize(1024)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_and_problems() {
        let c: RouteCompressionConfig = toml::from_str("").unwrap();
        assert_eq!(c, RouteCompressionConfig::default());
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let c: RouteCompressionConfig = toml::from_str(
            r#"algorithms = ["gzip", "br", "gzip"]
               content_types = ["text/*", "json", "*/json", "*/*", "application/*+json", "a/b c"]
               min_size = "2KiB"
               level = "best""#,
        )
        .unwrap();
        assert_eq!(c.min_size, ByteSize(2048));
        assert_eq!(c.level, CompressionLevel::Best);
        let keys: Vec<String> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "algorithms[2]",
                "content_types[1]",
                "content_types[2]",
                "content_types[5]"
            ]
        );
        let c: RouteCompressionConfig =
            toml::from_str("algorithms = []\ncontent_types = []").unwrap();
        assert_eq!(c.problems().len(), 2);
        assert!(toml::from_str::<RouteCompressionConfig>("algorithms = [\"deflate\"]").is_err());
        assert!(toml::from_str::<RouteCompressionConfig>("level = \"max\"").is_err());
        assert!(toml::from_str::<RouteCompressionConfig>("minsize = 1").is_err());
    }
}
