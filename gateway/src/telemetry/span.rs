//! The gateway's own span pipeline. A span is written as OTLP protobuf
//! ([`SpanBuf`]) on the request path, field by field as its facts become
//! known (protobuf fields may come in any order), from what the request
//! holds: no attribute is cloned, counted or formatted into a `String`. An
//! ended span's bytes are appended to its worker thread's batch; a full
//! batch goes to the export thread as one message, which writes the
//! request's head in front of it and POSTs it.
//!
//! It replaced, in turn, the OpenTelemetry SDK (about 9,500 instructions per
//! traced request on the request path and 9,000 on the export thread) and a
//! queue of span structs whose attributes borrowed the request's `Arc`s and
//! header values: those were released on the export thread, so every
//! traced request moved reference counts and freed memory across cores, and
//! a `perf` profile put the per-span queue, the attribute vectors and
//! mimalloc's cross-thread frees at about 2 µs of CPU per request, with the
//! export thread's copying and encoding another 2 µs.
//!
//! Bounds: text attribute values are cut at [`MAX_VALUE_LEN`] bytes (a
//! character boundary), so a span is at most a few KiB. At most
//! `max_queue_size` spans wait for export, plus less than one batch per
//! worker thread being filled; beyond that spans are dropped and counted
//! (`gateway_trace_spans_dropped_total`), requests never wait. The export
//! thread sends a batch when one has `max_export_batch_size` spans, gathers
//! the partial ones every `scheduled_delay`, and on shutdown exports all.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::otlp::{self, OtlpExporter};
use super::trace::ExportCounters;

/// `SpanKind` of OTLP (`opentelemetry.proto.trace.v1.Span.SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `SPAN_KIND_SERVER` (2).
    Server = 2,
    /// `SPAN_KIND_CLIENT` (3).
    Client = 3,
}

/// The longest text attribute value kept, in bytes (OpenTelemetry's
/// attribute value length limit); longer values are cut at a character
/// boundary.
pub const MAX_VALUE_LEN: usize = 1024;

/// The bytes reserved per span when a batch starts (a proxied request's
/// SERVER span is about 400, its CLIENT span about 200).
const TYPICAL_SPAN: usize = 384;

/// The ids that place a span in its trace.
#[derive(Debug, Clone, Copy)]
pub struct SpanIds<'a> {
    /// Trace id (never all zero).
    pub trace_id: &'a [u8; 16],
    /// Span id (never all zero).
    pub span_id: &'a [u8; 8],
    /// The parent's span id; `None` for a root span.
    pub parent: Option<&'a [u8; 8]>,
    /// The parent came from another process (a client's `traceparent`).
    pub parent_remote: bool,
    /// The W3C `tracestate`, when the trace has one.
    pub trace_state: Option<&'a str>,
}

/// One span being written: its `opentelemetry.proto.trace.v1.Span` fields,
/// encoded.
#[derive(Debug)]
pub struct SpanBuf(Vec<u8>);

impl SpanBuf {
    /// A span starting now.
    pub fn start(kind: Kind, ids: SpanIds<'_>) -> Self {
        let mut b = Vec::with_capacity(TYPICAL_SPAN);
        otlp::bytes(&mut b, 1, ids.trace_id);
        otlp::bytes(&mut b, 2, ids.span_id);
        otlp::string(&mut b, 3, ids.trace_state.unwrap_or_default());
        if let Some(parent) = ids.parent {
            otlp::bytes(&mut b, 4, parent);
        }
        otlp::uint(&mut b, 6, kind as u64);
        otlp::fixed64(&mut b, 7, now_nanos());
        // `SpanFlags`: sampled, "has is-remote" (0x100), "is remote" (0x200).
        otlp::fixed32(
            &mut b,
            16,
            0x101 | if ids.parent_remote { 0x200 } else { 0 },
        );
        Self(b)
    }

    /// The span's name, the concatenation of `parts`.
    pub fn name(&mut self, parts: &[&str]) {
        let b = &mut self.0;
        otlp::tag(b, 5, 2);
        otlp::varint(b, parts.iter().map(|p| p.len()).sum::<usize>() as u64);
        for p in parts {
            b.extend_from_slice(p.as_bytes());
        }
    }

    /// A text attribute (cut at [`MAX_VALUE_LEN`] bytes).
    pub fn str(&mut self, key: &'static str, value: &str) {
        str_key_value(&mut self.0, 9, key, value);
    }

    /// A text attribute from bytes that may not be UTF-8 (a header value):
    /// left out unless they are visible ASCII.
    pub fn header(&mut self, key: &'static str, value: &http::HeaderValue) {
        if let Ok(v) = value.to_str() {
            self.str(key, v);
        }
    }

    /// An integer attribute.
    pub fn int(&mut self, key: &'static str, value: i64) {
        // `AnyValue { int_value = 3 }`.
        let any = 1 + otlp::varint_len(value as u64);
        let b = key_value(&mut self.0, 9, key, any);
        b.push(3 << 3);
        otlp::varint(b, value as u64);
    }

    /// An address attribute, formatted without allocating.
    pub fn ip(&mut self, key: &'static str, ip: IpAddr) {
        let mut buf = [0u8; 64];
        let n = match ip {
            IpAddr::V4(v4) => {
                // Dotted decimal by hand: `fmt` costs about 1,000
                // instructions per address.
                let mut n = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[n] = b'.';
                        n += 1;
                    }
                    if octet >= 100 {
                        buf[n] = b'0' + octet / 100;
                        n += 1;
                    }
                    if octet >= 10 {
                        buf[n] = b'0' + octet / 10 % 10;
                        n += 1;
                    }
                    buf[n] = b'0' + octet % 10;
                    n += 1;
                }
                n
            }
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut cur = std::io::Cursor::new(&mut buf[..]);
                let _ = write!(cur, "{v6}");
                usize::try_from(cur.position()).unwrap_or(0)
            }
        };
        self.str(key, std::str::from_utf8(&buf[..n]).unwrap_or_default());
    }

    /// A status code as text (`error.type` of a 5xx): `http`'s static
    /// text of the code, no formatting (codes outside 100-999, which no
    /// parsed response has, are formatted).
    pub fn status_text(&mut self, key: &'static str, status: u16) {
        match http::StatusCode::from_u16(status) {
            Ok(code) => self.str(key, code.as_str()),
            Err(_) => self.str(key, &status.to_string()),
        }
    }

    /// An event now, with one attribute (the middleware decisions).
    pub fn event(&mut self, name: &'static str, key: &'static str, value: &'static str) {
        let time = now_nanos();
        otlp::message(&mut self.0, 11, |b| {
            otlp::fixed64(b, 1, time);
            otlp::string(b, 2, name);
            str_key_value(b, 3, key, value);
        });
    }

    /// Ends the span now: its end time and status (`Some(message)` for an
    /// error), and its encoded bytes.
    pub fn end(mut self, error: Option<&str>) -> Vec<u8> {
        let b = &mut self.0;
        otlp::fixed64(b, 8, now_nanos());
        otlp::message(b, 15, |b| {
            if let Some(message) = error {
                otlp::string(b, 2, truncate(message));
                otlp::uint(b, 3, 2);
            }
        });
        self.0
    }
}

/// A text attribute as message `field` (a span's or an event's
/// `KeyValue`), its value cut at [`MAX_VALUE_LEN`] bytes.
fn str_key_value(b: &mut Vec<u8>, field: u32, key: &str, value: &str) {
    let value = truncate(value).as_bytes();
    // `AnyValue { string_value = 1 }`.
    let any = 1 + otlp::varint_len(value.len() as u64) + value.len();
    let b = key_value(b, field, key, any);
    b.push(1 << 3 | 2);
    otlp::len_bytes(b, value);
}

/// Starts `KeyValue { key = 1, value = 2 }` as message `field`, its
/// `AnyValue` `any` bytes long (lengths known up front: one reservation,
/// nothing moves); the caller writes the `AnyValue`.
fn key_value<'b>(b: &'b mut Vec<u8>, field: u32, key: &str, any: usize) -> &'b mut Vec<u8> {
    let kv =
        1 + otlp::varint_len(key.len() as u64) + key.len() + 1 + otlp::varint_len(any as u64) + any;
    b.reserve(2 + otlp::varint_len(kv as u64) + kv);
    otlp::tag(b, field, 2);
    otlp::varint(b, kv as u64);
    b.push(1 << 3 | 2);
    otlp::len_bytes(b, key.as_bytes());
    b.push(2 << 3 | 2);
    otlp::varint(b, any as u64);
    b
}

/// `s` cut to at most [`MAX_VALUE_LEN`] bytes, at a character boundary.
fn truncate(s: &str) -> &str {
    if s.len() <= MAX_VALUE_LEN {
        return s;
    }
    let mut end = MAX_VALUE_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A random, non-zero trace id.
pub fn new_trace_id() -> [u8; 16] {
    fastrand::u128(1..).to_be_bytes()
}

/// A random, non-zero span id.
pub fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// Encoded spans (`ScopeSpans.spans` fields) after the exporter's head room.
#[derive(Debug, Default)]
struct Batch {
    buf: Vec<u8>,
    spans: usize,
}

enum Msg {
    Batch(Batch),
    /// Export everything queued, answer, stop.
    Shutdown(mpsc::SyncSender<()>),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Batch(_) => "Batch",
            Self::Shutdown(_) => "Shutdown",
        })
    }
}

/// The batch a worker thread fills, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(Mutex<Batch>);

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Queue capacity, in spans.
    pub max_queue_size: usize,
    /// Spans per export request.
    pub max_export_batch_size: usize,
    /// Longest a span waits for its batch.
    pub scheduled_delay: Duration,
}

/// The batches and their export thread.
#[derive(Debug)]
pub struct Pipeline {
    tx: SyncSender<Msg>,
    /// One batch being filled per thread (threads take slots in turn).
    slots: Arc<[Slot]>,
    counters: ExportCounters,
    /// A full queue was logged (once per run of drops).
    dropping: AtomicBool,
    /// Spans in batches handed to the export thread and not yet exported.
    pending: Arc<AtomicUsize>,
    max_queue: usize,
    max_batch: usize,
    /// Bytes a batch keeps free for the request's head.
    head_room: usize,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// This thread's slot number (threads are numbered as they first push).
fn slot_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SLOT: Cell<usize> = const { Cell::new(usize::MAX) });
    SLOT.with(|s| {
        let mut v = s.get();
        if v == usize::MAX {
            v = NEXT.fetch_add(1, Ordering::Relaxed);
            s.set(v);
        }
        v
    })
}

impl Pipeline {
    /// Starts the export thread.
    pub fn start(
        exporter: OtlpExporter,
        settings: BatchSettings,
        counters: ExportCounters,
    ) -> std::io::Result<Arc<Self>> {
        let max_queue = settings.max_queue_size.max(1);
        // Each message holds at least one span.
        let (tx, rx) = mpsc::sync_channel(max_queue + 1);
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        let slots: Arc<[Slot]> = (0..threads.clamp(1, 64) * 2)
            .map(|_| Slot::default())
            .collect();
        let pending = Arc::new(AtomicUsize::new(0));
        let head_room = exporter.head_room();
        let export = Exporter {
            exporter,
            counters: counters.clone(),
            pending: pending.clone(),
            slots: slots.clone(),
        };
        let delay = settings.scheduled_delay;
        let thread = std::thread::Builder::new()
            .name("gateway-otlp".into())
            .spawn(move || export.run(&rx, delay))?;
        Ok(Arc::new(Self {
            tx,
            slots,
            counters,
            dropping: AtomicBool::new(false),
            pending,
            max_queue,
            max_batch: settings.max_export_batch_size.max(1),
            head_room,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Appends an ended span to this thread's batch, or drops it (counted)
    /// when the queue is full. A full batch goes to the export thread.
    pub fn push(&self, span: &[u8]) {
        self.counters.ended.inc();
        let slot = &self.slots[slot_index() % self.slots.len()];
        let full = {
            let mut batch = slot.0.lock().unwrap_or_else(PoisonError::into_inner);
            if self.pending.load(Ordering::Relaxed) + batch.spans >= self.max_queue {
                drop(batch);
                self.dropped(1);
                return;
            }
            if batch.buf.is_empty() {
                // A typical span's size per span, not the first span's: its
                // path and headers are the client's, up to several KiB.
                batch
                    .buf
                    .reserve(self.head_room + TYPICAL_SPAN * self.max_batch.min(1024));
                batch.buf.resize(self.head_room, 0);
            }
            otlp::tag(&mut batch.buf, 2, 2);
            otlp::len_bytes(&mut batch.buf, span);
            batch.spans += 1;
            (batch.spans >= self.max_batch).then(|| std::mem::take(&mut *batch))
        };
        if let Some(batch) = full {
            self.send(batch);
        }
        if self.dropping.load(Ordering::Relaxed) {
            self.dropping.store(false, Ordering::Relaxed);
        }
    }

    fn send(&self, batch: Batch) {
        let n = batch.spans;
        self.pending.fetch_add(n, Ordering::Relaxed);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Batch(batch))
        {
            self.pending.fetch_sub(n, Ordering::Relaxed);
            self.dropped(n);
        }
    }

    fn dropped(&self, n: usize) {
        self.counters.dropped.inc_by(n as u64);
        if !self.dropping.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the span export queue is full (collector slow or down); spans are dropped"
            );
        }
    }

    /// Exports what is queued and stops the thread, waiting at most
    /// `bound`. Blocks: call it from a blocking thread.
    pub fn shutdown(&self, bound: Duration) -> Result<(), &'static str> {
        let deadline = Instant::now() + bound;
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        // The queue may be full: wait for room, within the bound.
        let mut msg = Msg::Shutdown(done_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return Err("the export thread is gone"),
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return Err("the export queue stayed full");
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        match done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(()) => {
                if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
                    let _ = t.join();
                }
                Ok(())
            }
            Err(_) => Err("timed out"),
        }
    }
}

/// The export thread's side.
struct Exporter {
    exporter: OtlpExporter,
    counters: ExportCounters,
    pending: Arc<AtomicUsize>,
    slots: Arc<[Slot]>,
}

impl Exporter {
    fn run(&self, rx: &mpsc::Receiver<Msg>, delay: Duration) {
        // A bare current-thread runtime to await the exporter: its HTTP
        // client runs on a runtime of its own (`super::trace::ExportClient`).
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
            tracing::error!("cannot start the span export executor; traces are not exported");
            return;
        };
        let mut deadline = Instant::now() + delay;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Batch(b)) => self.export(&rt, b, true),
                Ok(Msg::Shutdown(done)) => {
                    while let Ok(Msg::Batch(b)) = rx.try_recv() {
                        self.export(&rt, b, true);
                    }
                    self.gather(&rt);
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.gather(&rt);
                    deadline = Instant::now() + delay;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.gather(&rt);
                    return;
                }
            }
        }
    }

    /// Exports the batches being filled.
    fn gather(&self, rt: &tokio::runtime::Runtime) {
        for slot in self.slots.iter() {
            let batch = std::mem::take(&mut *slot.0.lock().unwrap_or_else(PoisonError::into_inner));
            if batch.spans > 0 {
                self.export(rt, batch, false);
            }
        }
    }

    /// `queued`: the batch came through the queue (counted in `pending`).
    fn export(&self, rt: &tokio::runtime::Runtime, batch: Batch, queued: bool) {
        let n = batch.spans as u64;
        match rt.block_on(self.exporter.export(self.exporter.body(batch.buf))) {
            Ok(()) => {
                self.counters.exported.inc_by(n);
            }
            Err(e) => {
                self.counters.failed.inc_by(n);
                self.counters.errors.inc();
                tracing::debug!(error = %e, spans = n, "trace export failed; spans dropped");
            }
        }
        if queued {
            self.pending.fetch_sub(batch.spans, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exporter(endpoint: String) -> OtlpExporter {
        let cfg = crate::config::TracingConfig {
            enabled: true,
            endpoint,
            service_name: "svc".into(),
            export_timeout: Duration::from_millis(1500),
            ..Default::default()
        };
        let client = super::super::trace::ExportClient::new(&cfg).unwrap();
        OtlpExporter::new(&cfg, client).unwrap()
    }

    fn span() -> Vec<u8> {
        SpanBuf::start(
            Kind::Server,
            SpanIds {
                trace_id: &new_trace_id(),
                span_id: &new_span_id(),
                parent: None,
                parent_remote: false,
                trace_state: None,
            },
        )
        .end(None)
    }

    /// A collector that accepts and never answers holds the export thread
    /// in its first export: the queue (2 spans, one of them exporting)
    /// fills and the rest are dropped and counted, without `push` ever
    /// waiting.
    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let counters = ExportCounters::default();
        let p = Pipeline::start(
            exporter(format!("http://{}/v1/traces", hung.local_addr().unwrap())),
            BatchSettings {
                max_queue_size: 2,
                max_export_batch_size: 1,
                scheduled_delay: Duration::from_secs(3600),
            },
            counters.clone(),
        )
        .unwrap();
        p.push(&span());
        // The thread has taken the first span into its (hanging) export.
        let deadline = Instant::now() + Duration::from_secs(30);
        while hung.accept().is_err() && Instant::now() < deadline {}
        let started = Instant::now();
        for _ in 0..50 {
            p.push(&span());
        }
        assert!(started.elapsed() < Duration::from_secs(1), "push waited");
        assert_eq!(counters.ended.get(), 51);
        assert_eq!(counters.dropped.get(), 49, "one exporting, one queued");
    }

    /// A collector on a thread: answers every POST with 200 and counts
    /// the spans in each request it decodes.
    fn collector() -> (String, Arc<AtomicUsize>) {
        use prost::Message as _;
        use std::io::{BufRead as _, BufReader, Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let spans = Arc::new(AtomicUsize::new(0));
        let seen = spans.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut w = conn;
                    loop {
                        let mut len = 0;
                        loop {
                            let mut line = String::new();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let l = line.to_ascii_lowercase();
                            if let Some(v) = l.strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; len];
                        r.read_exact(&mut body).unwrap();
                        let req = Request::decode(&body[..]).unwrap();
                        let n: usize = req.resource_spans[0].scope_spans[0].spans.len();
                        seen.fetch_add(n, Ordering::SeqCst);
                        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .unwrap();
                    }
                });
            }
        });
        (url, spans)
    }

    /// Threads fill batches of their own; full ones are exported as they
    /// fill, partial ones by the timer or at shutdown: every span is
    /// exported once, none is lost or counted twice.
    #[test]
    fn spans_pushed_from_many_threads_are_all_exported_once() {
        let (url, received) = collector();
        let counters = ExportCounters::default();
        let p = Pipeline::start(
            exporter(url),
            BatchSettings {
                max_queue_size: 100_000,
                max_export_batch_size: 64,
                scheduled_delay: Duration::from_millis(50),
            },
            counters.clone(),
        )
        .unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        p.push(&span());
                        if t == 0 && i % 100 == 0 {
                            // Let the timer gather partial batches too.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        p.shutdown(Duration::from_secs(30)).unwrap();
        assert_eq!(counters.ended.get(), 4000);
        assert_eq!(counters.dropped.get() + counters.failed.get(), 0);
        assert_eq!(counters.exported.get(), 4000);
        assert_eq!(received.load(Ordering::SeqCst), 4000);
        assert_eq!(p.pending.load(Ordering::SeqCst), 0);
    }

    // The subset of the OTLP messages the test reads back, decoded by prost.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Request {
        #[prost(message, repeated, tag = "1")]
        resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Resource {
        #[prost(message, repeated, tag = "1")]
        attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        scope: Option<Scope>,
        #[prost(message, repeated, tag = "2")]
        spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Scope {
        #[prost(string, tag = "1")]
        name: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Span {
        #[prost(bytes = "vec", tag = "1")]
        trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        parent_span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        trace_state: String,
        #[prost(string, tag = "5")]
        name: String,
        #[prost(int32, tag = "6")]
        kind: i32,
        #[prost(fixed64, tag = "7")]
        start: u64,
        #[prost(fixed64, tag = "8")]
        end: u64,
        #[prost(message, repeated, tag = "9")]
        attributes: Vec<KeyValue>,
        #[prost(message, repeated, tag = "11")]
        events: Vec<Event>,
        #[prost(message, optional, tag = "15")]
        status: Option<Status>,
        #[prost(fixed32, tag = "16")]
        flags: u32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct KeyValue {
        #[prost(string, tag = "1")]
        key: String,
        #[prost(message, optional, tag = "2")]
        value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct AnyValue {
        #[prost(string, optional, tag = "1")]
        text: Option<String>,
        #[prost(int64, optional, tag = "3")]
        int: Option<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Event {
        #[prost(string, tag = "2")]
        name: String,
        #[prost(message, repeated, tag = "3")]
        attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Status {
        #[prost(string, tag = "2")]
        message: String,
        #[prost(int32, tag = "3")]
        code: i32,
    }

    fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a AnyValue> {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
    }

    /// Spans written by `SpanBuf`, framed by the exporter's head, decode
    /// as an `ExportTraceServiceRequest`, long values and many spans
    /// (lengths of several varint bytes) included.
    #[test]
    fn written_spans_decode_as_an_export_request() {
        use prost::Message as _;
        let e = exporter("http://127.0.0.1:9/v1/traces".into());
        let long = format!("/{}é", "a".repeat(MAX_VALUE_LEN - 2));
        let mut buf = vec![0; e.head_room()];
        let n = 300;
        for i in 0..n {
            let mut s = SpanBuf::start(
                Kind::Client,
                SpanIds {
                    trace_id: &[7; 16],
                    span_id: &new_span_id(),
                    parent: Some(&[9; 8]),
                    parent_remote: true,
                    trace_state: Some("k=v"),
                },
            );
            s.name(&["GET", " ", "route"]);
            s.str("url.path", &long);
            s.int("http.response.status_code", -5 + i);
            s.ip("client.address", "::1".parse().unwrap());
            s.status_text("error.type", 503);
            s.event("cache", "gateway.cache.result", "hit");
            let bytes = s.end((i == 0).then_some("boom"));
            otlp::tag(&mut buf, 2, 2);
            otlp::len_bytes(&mut buf, &bytes);
        }
        let body = e.body(buf);
        let req = Request::decode(body).unwrap();
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let service = rs.resource.as_ref().unwrap().attributes.iter();
        let service = service.clone().find(|kv| kv.key == "service.name").unwrap();
        assert_eq!(service.value.as_ref().unwrap().text.as_deref(), Some("svc"));
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "gateway");
        assert_eq!(ss.spans.len(), n as usize);
        let s = &ss.spans[1];
        assert_eq!(s.name, "GET route");
        assert_eq!((s.kind, s.flags), (3, 0x301));
        assert_eq!(
            (s.trace_id.as_slice(), s.parent_span_id.as_slice()),
            (&[7; 16][..], &[9; 8][..])
        );
        assert_eq!(s.trace_state, "k=v");
        assert!(s.start > 0 && s.end >= s.start);
        let path = attr(s, "url.path").unwrap().text.as_deref().unwrap();
        assert_eq!(path.len(), MAX_VALUE_LEN - 1, "cut before the 2-byte é");
        assert_eq!(attr(s, "http.response.status_code").unwrap().int, Some(-4));
        assert_eq!(
            attr(s, "client.address").unwrap().text.as_deref(),
            Some("::1")
        );
        assert_eq!(attr(s, "error.type").unwrap().text.as_deref(), Some("503"));
        assert_eq!(s.events[0].name, "cache");
        assert_eq!(
            s.events[0].attributes[0]
                .value
                .as_ref()
                .unwrap()
                .text
                .as_deref(),
            Some("hit")
        );
        assert_eq!(s.status.as_ref().unwrap().code, 0);
        let first = ss.spans[0].status.as_ref().unwrap();
        assert_eq!((first.code, first.message.as_str()), (2, "boom"));
    }

    #[test]
    fn ids_are_never_zero_and_addresses_and_status_codes_are_written_as_text() {
        for _ in 0..1000 {
            assert_ne!(new_trace_id(), [0; 16]);
            assert_ne!(new_span_id(), [0; 8]);
        }
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "127.0.0.1",
            "192.168.100.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut a = SpanBuf(Vec::new());
            a.ip("k", ip);
            let mut b = SpanBuf(Vec::new());
            b.str("k", &ip.to_string());
            assert_eq!(a.0, b.0, "{ip}");
        }
        for code in [0u16, 7, 200, 503, 65535] {
            let mut a = SpanBuf(Vec::new());
            a.status_text("k", code);
            let mut b = SpanBuf(Vec::new());
            b.str("k", &code.to_string());
            assert_eq!(a.0, b.0);
        }
    }
}
