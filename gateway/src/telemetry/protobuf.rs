//! The Prometheus protobuf exposition (`io.prometheus.client.MetricFamily`,
//! length-delimited), served on `/metrics` when the scraper asks for it and
//! `telemetry.native_histograms` is on: the only format in which Prometheus
//! reads native histograms.
//!
//! Every family is rendered once as OpenMetrics text (the registry and the
//! gauges computed at scrape time); this module reads that text back into
//! `MetricFamily` messages and adds the native buckets of the request
//! duration histogram to its series, beside the classic buckets (with their
//! exact SLO edges), so one scrape carries both. The messages are the
//! upstream `metrics.proto` fields this exposition uses, declared with prost.

use bytes::{Bytes, BytesMut};
use prost::Message;

use super::native::{Snapshot, SCHEMA, ZERO_THRESHOLD};

/// The content type of this exposition.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Whether an `Accept` value asks for this exposition.
pub fn accepts(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let mut params = part.split(';').map(str::trim);
        params
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case("application/vnd.google.protobuf"))
            && params.any(|p| p == "proto=io.prometheus.client.MetricFamily")
            && !part.split(';').any(|p| {
                let p = p.trim();
                p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
            })
    })
}

// The messages of metrics.proto (proto2), the fields used here.

#[derive(Clone, PartialEq, Message)]
struct LabelPair {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Gauge {
    #[prost(double, optional, tag = "1")]
    value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
struct Counter {
    #[prost(double, optional, tag = "1")]
    value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
struct Untyped {
    #[prost(double, optional, tag = "1")]
    value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
struct Timestamp {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

#[derive(Clone, PartialEq, Message)]
struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    label: Vec<LabelPair>,
    #[prost(double, optional, tag = "2")]
    value: Option<f64>,
    #[prost(message, optional, tag = "3")]
    timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
struct Bucket {
    #[prost(uint64, optional, tag = "1")]
    cumulative_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    upper_bound: Option<f64>,
    #[prost(message, optional, tag = "3")]
    exemplar: Option<Exemplar>,
}

#[derive(Clone, PartialEq, Message)]
struct BucketSpan {
    #[prost(sint32, optional, tag = "1")]
    offset: Option<i32>,
    #[prost(uint32, optional, tag = "2")]
    length: Option<u32>,
}

#[derive(Clone, PartialEq, Message)]
struct Histogram {
    #[prost(uint64, optional, tag = "1")]
    sample_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    sample_sum: Option<f64>,
    #[prost(message, repeated, tag = "3")]
    bucket: Vec<Bucket>,
    #[prost(sint32, optional, tag = "5")]
    schema: Option<i32>,
    #[prost(double, optional, tag = "6")]
    zero_threshold: Option<f64>,
    #[prost(uint64, optional, tag = "7")]
    zero_count: Option<u64>,
    #[prost(message, repeated, tag = "12")]
    positive_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, packed = "false", tag = "13")]
    positive_delta: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct Metric {
    #[prost(message, repeated, tag = "1")]
    label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    gauge: Option<Gauge>,
    #[prost(message, optional, tag = "3")]
    counter: Option<Counter>,
    #[prost(message, optional, tag = "5")]
    untyped: Option<Untyped>,
    #[prost(message, optional, tag = "7")]
    histogram: Option<Histogram>,
}

#[derive(Clone, PartialEq, Message)]
struct MetricFamily {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    help: Option<String>,
    /// COUNTER = 0, GAUGE = 1, UNTYPED = 3, HISTOGRAM = 4.
    #[prost(int32, optional, tag = "3")]
    r#type: Option<i32>,
    #[prost(message, repeated, tag = "4")]
    metric: Vec<Metric>,
}

const COUNTER: i32 = 0;
const GAUGE: i32 = 1;
const UNTYPED: i32 = 3;
const HISTOGRAM: i32 = 4;

/// One parsed sample line.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
    exemplar: Option<Exemplar>,
}

/// Reads `key="value",...` up to the closing brace; returns the pairs and
/// the rest of the line after the brace.
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(r) = rest.strip_prefix('}') {
            return Some((out, r));
        }
        let eq = rest.find('=')?;
        let name = rest[..eq].trim().to_owned();
        rest = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        out.push((name, value));
        rest = &rest[end + 1..];
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        s => s.parse().ok(),
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (head, exemplar) = match line.split_once(" # ") {
        Some((h, e)) => (h, Some(e)),
        None => (line, None),
    };
    let name_end = head.find(['{', ' '])?;
    let name = head[..name_end].to_owned();
    let (labels, rest) = if head[name_end..].starts_with('{') {
        parse_labels(&head[name_end + 1..])?
    } else {
        (Vec::new(), &head[name_end..])
    };
    let value = parse_value(rest.split_whitespace().next()?)?;
    let exemplar = exemplar.and_then(|e| {
        let (labels, rest) = parse_labels(e.trim_start().strip_prefix('{')?)?;
        let mut parts = rest.split_whitespace();
        let value = parse_value(parts.next()?)?;
        let timestamp = parts
            .next()
            .and_then(|t| t.parse::<f64>().ok())
            .map(|t| Timestamp {
                seconds: t.trunc() as i64,
                nanos: (t.fract() * 1e9) as i32,
            });
        Some(Exemplar {
            label: pairs(labels),
            value: Some(value),
            timestamp,
        })
    });
    Some(Sample {
        name,
        labels,
        value,
        exemplar,
    })
}

fn pairs(labels: Vec<(String, String)>) -> Vec<LabelPair> {
    labels
        .into_iter()
        .map(|(n, v)| LabelPair {
            name: Some(n),
            value: Some(v),
        })
        .collect()
}

/// A family as read from the text.
struct Family {
    name: String,
    help: String,
    kind: String,
    samples: Vec<Sample>,
}

fn families(text: &str) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    let mut help: Option<(String, String)> = None;
    for line in text.lines() {
        if line.starts_with("# EOF") {
            break;
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((
                name.to_owned(),
                text.replace("\\n", "\n").replace("\\\\", "\\"),
            ));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let help = match help.take() {
                Some((n, h)) if n == name => h,
                _ => String::new(),
            };
            out.push(Family {
                name: name.to_owned(),
                help,
                kind: kind.trim().to_owned(),
                samples: Vec::new(),
            });
        } else if line.starts_with('#') || line.trim().is_empty() {
            continue;
        } else if let Some(s) = parse_sample(line) {
            match out.last_mut() {
                Some(f) if s.name.starts_with(&f.name) => f.samples.push(s),
                // A sample without a TYPE line: its own untyped family.
                _ => out.push(Family {
                    name: s.name.clone(),
                    help: String::new(),
                    kind: "unknown".into(),
                    samples: vec![s],
                }),
            }
        }
    }
    out
}

fn same_labels(a: &[(String, String)], b: &[(&'static str, String)]) -> bool {
    a.len() == b.len()
        && b.iter()
            .all(|(n, v)| a.iter().any(|(an, av)| an == n && av == v))
}

/// Encodes the OpenMetrics `text` as delimited `MetricFamily` messages;
/// series of `native_family` get the native buckets of `native` (matched
/// by their label set).
pub fn encode(
    text: &str,
    native_family: &str,
    native: &[(Vec<(&'static str, String)>, Snapshot)],
) -> Bytes {
    let mut buf = BytesMut::with_capacity(text.len() / 2);
    for f in families(text) {
        let mut mf = MetricFamily {
            name: Some(f.name.clone()),
            help: Some(f.help),
            r#type: None,
            metric: Vec::new(),
        };
        match f.kind.as_str() {
            "counter" => {
                mf.r#type = Some(COUNTER);
                mf.name = Some(format!("{}_total", f.name));
                for s in f.samples.into_iter().filter(|s| s.name.ends_with("_total")) {
                    mf.metric.push(Metric {
                        label: pairs(s.labels),
                        counter: Some(Counter {
                            value: Some(s.value),
                        }),
                        ..Default::default()
                    });
                }
            }
            // An OpenMetrics info family is a gauge of 1 named `NAME_info`
            // in this exposition.
            "gauge" | "info" => {
                mf.r#type = Some(GAUGE);
                if f.kind == "info" {
                    mf.name = Some(format!("{}_info", f.name));
                }
                for s in f.samples {
                    mf.metric.push(Metric {
                        label: pairs(s.labels),
                        gauge: Some(Gauge {
                            value: Some(s.value),
                        }),
                        ..Default::default()
                    });
                }
            }
            "histogram" => {
                mf.r#type = Some(HISTOGRAM);
                let with_native = f.name == native_family;
                let mut series: Vec<(Vec<(String, String)>, Histogram)> = Vec::new();
                for s in f.samples {
                    let suffix = &s.name[f.name.len()..];
                    let mut labels = s.labels;
                    let le = labels
                        .iter()
                        .position(|(n, _)| n == "le")
                        .map(|i| labels.remove(i).1);
                    let h = match series.iter().position(|(l, _)| *l == labels) {
                        Some(i) => &mut series[i].1,
                        None => {
                            series.push((labels, Histogram::default()));
                            let last = series.len() - 1;
                            &mut series[last].1
                        }
                    };
                    match (suffix, le) {
                        ("_bucket", Some(le)) => h.bucket.push(Bucket {
                            cumulative_count: Some(s.value as u64),
                            upper_bound: parse_value(&le),
                            exemplar: s.exemplar,
                        }),
                        ("_sum", _) => h.sample_sum = Some(s.value),
                        ("_count", _) => h.sample_count = Some(s.value as u64),
                        _ => {}
                    }
                }
                for (labels, mut h) in series {
                    if with_native {
                        if let Some((_, n)) = native.iter().find(|(l, _)| same_labels(&labels, l)) {
                            add_native(&mut h, n);
                        }
                    }
                    mf.metric.push(Metric {
                        label: pairs(labels),
                        histogram: Some(h),
                        ..Default::default()
                    });
                }
            }
            _ => {
                mf.r#type = Some(UNTYPED);
                for s in f.samples {
                    mf.metric.push(Metric {
                        label: pairs(s.labels),
                        untyped: Some(Untyped {
                            value: Some(s.value),
                        }),
                        ..Default::default()
                    });
                }
            }
        }
        if mf.metric.is_empty() {
            continue;
        }
        // A BytesMut grows: encoding into it cannot run out of room.
        if mf.encode_length_delimited(&mut buf).is_err() {
            continue;
        }
    }
    buf.freeze()
}

fn add_native(h: &mut Histogram, n: &Snapshot) {
    h.schema = Some(SCHEMA);
    h.zero_threshold = Some(ZERO_THRESHOLD);
    h.zero_count = Some(n.zero_count);
    h.positive_span = n
        .spans
        .iter()
        .map(|&(offset, length)| BucketSpan {
            offset: Some(offset),
            length: Some(length),
        })
        .collect();
    h.positive_delta = n.deltas.clone();
    // The native count and sum describe exactly the buckets copied; the
    // classic buckets were read a moment earlier and may trail by the
    // requests finished in between.
    h.sample_count = Some(n.count);
    h.sample_sum = Some(n.sum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::native::NativeHistogram;

    fn decode(mut b: Bytes) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        while !b.is_empty() {
            out.push(MetricFamily::decode_length_delimited(&mut b).unwrap());
        }
        out
    }

    const TEXT: &str = r#"# HELP gateway_requests Requests answered.
# TYPE gateway_requests counter
gateway_requests_total{route="a",method="GET",status="200"} 3
gateway_requests_created{route="a",method="GET",status="200"} 1700000000.0
# HELP gateway_request_duration_seconds Time.
# TYPE gateway_request_duration_seconds histogram
gateway_request_duration_seconds_sum{route="a",method="GET",status_class="2xx"} 3.1
gateway_request_duration_seconds_count{route="a",method="GET",status_class="2xx"} 3
gateway_request_duration_seconds_bucket{le="1.0",route="a",method="GET",status_class="2xx"} 1
gateway_request_duration_seconds_bucket{le="+Inf",route="a",method="GET",status_class="2xx"} 3 # {trace_id="ab\"c"} 1.05 1700000000.5
# HELP gateway_connections Open.
# TYPE gateway_connections gauge
gateway_connections{listener="proxy"} 7
# EOF
"#;

    #[test]
    fn text_families_become_metric_families_with_native_buckets() {
        let h = NativeHistogram::default();
        for v in [1.0, 1.05, 1.05] {
            h.observe(v);
        }
        let labels = vec![
            ("route", "a".to_owned()),
            ("method", "GET".to_owned()),
            ("status_class", "2xx".to_owned()),
        ];
        let fams = decode(encode(
            TEXT,
            "gateway_request_duration_seconds",
            &[(labels, h.snapshot())],
        ));
        assert_eq!(fams.len(), 3);
        assert_eq!(fams[0].name.as_deref(), Some("gateway_requests_total"));
        assert_eq!(fams[0].r#type, Some(COUNTER));
        assert_eq!(fams[0].metric.len(), 1, "_created is not a sample");
        assert_eq!(fams[0].metric[0].counter.as_ref().unwrap().value, Some(3.0));
        let hist = fams[1].metric[0].histogram.as_ref().unwrap();
        assert_eq!(fams[1].r#type, Some(HISTOGRAM));
        assert_eq!(fams[1].metric[0].label.len(), 3, "le is not a series label");
        assert_eq!(hist.bucket.len(), 2);
        assert_eq!(hist.bucket[0].upper_bound, Some(1.0));
        assert_eq!(hist.bucket[1].upper_bound, Some(f64::INFINITY));
        let ex = hist.bucket[1].exemplar.as_ref().unwrap();
        assert_eq!(ex.label[0].value.as_deref(), Some("ab\"c"));
        assert_eq!(ex.value, Some(1.05));
        assert_eq!(hist.schema, Some(3));
        assert_eq!(hist.positive_span.len(), 1);
        assert_eq!(hist.positive_span[0].offset, Some(0));
        assert_eq!(hist.positive_span[0].length, Some(2));
        assert_eq!(hist.positive_delta, vec![1, 1]);
        assert_eq!(hist.sample_count, Some(3));
        assert_eq!(fams[2].metric[0].gauge.as_ref().unwrap().value, Some(7.0));
    }

    #[test]
    fn a_series_without_native_data_keeps_its_classic_buckets_only() {
        let fams = decode(encode(TEXT, "gateway_request_duration_seconds", &[]));
        let hist = fams[1].metric[0].histogram.as_ref().unwrap();
        assert_eq!(hist.schema, None);
        assert_eq!(hist.sample_count, Some(3));
    }

    #[test]
    fn accept_negotiation() {
        // What Prometheus 2.42 sends with --enable-feature=native-histograms.
        assert!(accepts("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"));
        assert!(!accepts(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!accepts(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;q=0"
        ));
        assert!(!accepts("*/*"));
    }
}
