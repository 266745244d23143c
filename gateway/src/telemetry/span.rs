//! The gateway's own span pipeline: a finished span is one [`SpanRecord`]
//! (ids, times, a few attributes whose keys are static), pushed into a
//! bounded queue and exported in batches by one thread.
//!
//! It replaces the OpenTelemetry SDK's span objects and batch processor,
//! which cost about 9,500 instructions per traced request on the request
//! path (a `Vec<KeyValue>` of owned strings per span, a `Context`, the
//! tracer provider's scope checks, `SpanData` conversions and drops) and
//! 9,000 on the export thread (callgrind, one worker, every request traced:
//! `tests/bench/instructions.sh`). Here a span's attribute values borrow
//! what the request already holds: a route name or pool name is an
//! `Arc<str>` clone, the request id and `User-Agent` are `HeaderValue`
//! clones (reference counted), the path is the request URI's clone, the
//! client address is formatted only when the batch is encoded.
//!
//! The queue is `max_queue_size` spans; when it is full (a slow or dead
//! collector), spans are dropped and counted
//! (`gateway_trace_spans_dropped_total`), requests never wait. The export
//! thread sends a batch when it has `max_export_batch_size` spans or when
//! `scheduled_delay` has passed, and on shutdown exports what is queued.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use http::{HeaderValue, Uri};

use super::otlp::OtlpExporter;
use super::trace::ExportCounters;

/// `SpanKind` of OTLP (`opentelemetry.proto.trace.v1.Span.SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `SPAN_KIND_SERVER` (2).
    Server = 2,
    /// `SPAN_KIND_CLIENT` (3).
    Client = 3,
}

/// An attribute value; text is borrowed from the request where it can be.
#[derive(Debug, Clone)]
pub enum AttrValue {
    /// A constant.
    Static(&'static str),
    /// A shared name (route, pool).
    Shared(Arc<str>),
    /// Text built for the span.
    Owned(Box<str>),
    /// A header's value (checked to be visible ASCII when added).
    Header(HeaderValue),
    /// The path of a request URI.
    Path(Uri),
    /// An address, formatted when encoded.
    Ip(IpAddr),
    /// An integer.
    Int(i64),
}

impl AttrValue {
    /// The value as text (`None` for an integer).
    pub fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        Some(match self {
            Self::Static(s) => Cow::Borrowed(*s),
            Self::Shared(s) => Cow::Borrowed(&**s),
            Self::Owned(s) => Cow::Borrowed(&**s),
            Self::Header(h) => String::from_utf8_lossy(h.as_bytes()),
            Self::Path(u) => Cow::Borrowed(u.path()),
            Self::Ip(ip) => Cow::Owned(ip.to_string()),
            Self::Int(_) => return None,
        })
    }
}

/// A span's name: a constant, or `METHOD route` put together when encoded.
#[derive(Debug, Clone)]
pub enum SpanName {
    /// A constant (a CLIENT span's method).
    Static(&'static str),
    /// `{method} {route}` (a SERVER span).
    MethodRoute(&'static str, Arc<str>),
}

/// A span event with one attribute (the middleware decisions).
#[derive(Debug, Clone)]
pub struct Event {
    /// Event name.
    pub name: &'static str,
    /// When, in nanoseconds since the Unix epoch.
    pub time: u64,
    /// The attribute's key.
    pub key: &'static str,
    /// The attribute's value.
    pub value: &'static str,
}

/// A span's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SpanStatus {
    /// `STATUS_CODE_UNSET`.
    #[default]
    Unset,
    /// `STATUS_CODE_ERROR` with its message.
    Error(std::borrow::Cow<'static, str>),
}

/// One span, as exported.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Trace id (never all zero).
    pub trace_id: [u8; 16],
    /// Span id (never all zero).
    pub span_id: [u8; 8],
    /// The parent's span id; all zero for a root span.
    pub parent_span_id: [u8; 8],
    /// The parent came from another process (a client's `traceparent`).
    pub parent_remote: bool,
    /// The W3C `tracestate` in its header form, when the trace has one.
    pub trace_state: Option<Arc<str>>,
    /// Server or client.
    pub kind: Kind,
    /// Name.
    pub name: SpanName,
    /// Start, in nanoseconds since the Unix epoch.
    pub start: u64,
    /// End, in nanoseconds since the Unix epoch (0 until ended).
    pub end: u64,
    /// Attributes (keys are semantic-convention names).
    pub attrs: Vec<(&'static str, AttrValue)>,
    /// Events.
    pub events: Vec<Event>,
    /// Status.
    pub status: SpanStatus,
}

impl SpanRecord {
    /// Ends the span now and moves it out (`self` is left empty).
    pub fn take_ended(&mut self) -> SpanRecord {
        self.end = now_nanos();
        SpanRecord {
            attrs: std::mem::take(&mut self.attrs),
            events: std::mem::take(&mut self.events),
            trace_state: self.trace_state.take(),
            status: std::mem::take(&mut self.status),
            name: std::mem::replace(&mut self.name, SpanName::Static("")),
            ..*self
        }
    }

    /// Sets `key` (replacing an earlier value, as an SDK span does).
    pub fn set(&mut self, key: &'static str, value: AttrValue) {
        match self.attrs.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((key, value)),
        }
    }
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

enum Msg {
    Span(SpanRecord),
    /// Export everything queued, answer, stop.
    Shutdown(mpsc::SyncSender<()>),
}

/// The queue and its export thread.
#[derive(Debug)]
pub struct Pipeline {
    tx: SyncSender<Msg>,
    counters: ExportCounters,
    /// A full queue was logged (once per run of drops).
    dropping: AtomicBool,
    /// Spans in the queue; the thread is woken when it reaches a batch.
    queued: Arc<AtomicUsize>,
    max_batch: usize,
    /// The export thread, to wake (`unpark`) and join.
    waker: std::thread::Thread,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Span(_) => "Span",
            Self::Shutdown(_) => "Shutdown",
        })
    }
}

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

impl Pipeline {
    /// Starts the export thread.
    pub fn start(
        exporter: OtlpExporter,
        settings: BatchSettings,
        counters: ExportCounters,
    ) -> std::io::Result<Arc<Self>> {
        let (tx, rx) = mpsc::sync_channel(settings.max_queue_size.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let thread_counters = counters.clone();
        let thread_queued = queued.clone();
        let thread = std::thread::Builder::new()
            .name("gateway-otlp".into())
            .spawn(move || {
                export_loop(&exporter, &rx, settings, &thread_counters, &thread_queued);
            })?;
        Ok(Arc::new(Self {
            tx,
            counters,
            dropping: AtomicBool::new(false),
            queued,
            max_batch: settings.max_export_batch_size.max(1),
            waker: thread.thread().clone(),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Queues an ended span, or drops it (counted) when the queue is full.
    /// The export thread is not woken per span (a wake is a system call
    /// and a context switch): only when a batch is ready, else its timer.
    pub fn push(&self, span: SpanRecord) {
        self.counters.ended.inc();
        match self.tx.try_send(Msg::Span(span)) {
            Ok(()) => {
                if self.queued.fetch_add(1, Ordering::Relaxed) + 1 == self.max_batch {
                    self.waker.unpark();
                }
                if self.dropping.load(Ordering::Relaxed) {
                    self.dropping.store(false, Ordering::Relaxed);
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.inc();
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the span export queue is full (collector slow or down); spans are dropped"
                    );
                }
            }
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
                    self.waker.unpark();
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        self.waker.unpark();
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

fn export_loop(
    exporter: &OtlpExporter,
    rx: &mpsc::Receiver<Msg>,
    settings: BatchSettings,
    counters: &ExportCounters,
    queued: &AtomicUsize,
) {
    // A bare current-thread runtime to await the exporter: its HTTP client
    // runs on a runtime of its own (`super::trace::ExportClient`).
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        tracing::error!("cannot start the span export executor; traces are not exported");
        return;
    };
    let max_batch = settings.max_export_batch_size.max(1);
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(max_batch);
    let export = |batch: &mut Vec<SpanRecord>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match rt.block_on(exporter.export(batch)) {
            Ok(()) => {
                counters.exported.inc_by(n);
            }
            Err(e) => {
                counters.failed.inc_by(n);
                counters.errors.inc();
                tracing::debug!(error = %e, spans = n, "trace export failed; spans dropped");
            }
        }
        batch.clear();
    };
    let mut deadline = Instant::now() + settings.scheduled_delay;
    loop {
        let now = Instant::now();
        if now < deadline && queued.load(Ordering::Relaxed) < max_batch {
            // Woken early by `push` (a batch is ready) or `shutdown`.
            std::thread::park_timeout(deadline - now);
        }
        loop {
            match rx.try_recv() {
                Ok(Msg::Span(s)) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    batch.push(s);
                    if batch.len() >= max_batch {
                        export(&mut batch);
                    }
                }
                Ok(Msg::Shutdown(done)) => {
                    while let Ok(Msg::Span(s)) = rx.try_recv() {
                        batch.push(s);
                        if batch.len() >= max_batch {
                            export(&mut batch);
                        }
                    }
                    export(&mut batch);
                    let _ = done.send(());
                    return;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    export(&mut batch);
                    return;
                }
            }
        }
        if Instant::now() >= deadline {
            export(&mut batch);
            deadline = Instant::now() + settings.scheduled_delay;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> SpanRecord {
        SpanRecord {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            parent_span_id: [0; 8],
            parent_remote: false,
            trace_state: None,
            kind: Kind::Server,
            name: SpanName::Static("GET"),
            start: 1,
            end: 2,
            attrs: Vec::new(),
            events: Vec::new(),
            status: SpanStatus::Unset,
        }
    }

    /// A collector that accepts and never answers holds the export thread
    /// in its first export: the queue (1 span) fills and the rest are
    /// dropped and counted, without `push` ever waiting.
    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = crate::config::TracingConfig {
            enabled: true,
            endpoint: format!("http://{}/v1/traces", hung.local_addr().unwrap()),
            export_timeout: Duration::from_millis(1500),
            ..Default::default()
        };
        let client = super::super::trace::ExportClient::new(&cfg).unwrap();
        let exporter = OtlpExporter::new(&cfg, client).unwrap();
        let counters = ExportCounters::default();
        let p = Pipeline::start(
            exporter,
            BatchSettings {
                max_queue_size: 1,
                max_export_batch_size: 1,
                scheduled_delay: Duration::from_secs(3600),
            },
            counters.clone(),
        )
        .unwrap();
        p.push(span());
        // The thread has taken the first span into its (hanging) export.
        let deadline = Instant::now() + Duration::from_secs(30);
        while hung.accept().is_err() && Instant::now() < deadline {}
        let started = Instant::now();
        for _ in 0..50 {
            p.push(span());
        }
        assert!(started.elapsed() < Duration::from_secs(1), "push waited");
        assert_eq!(counters.ended.get(), 51);
        assert_eq!(counters.dropped.get(), 49, "one exporting, one queued");
    }

    #[test]
    fn ids_are_never_zero_and_set_replaces() {
        for _ in 0..1000 {
            assert_ne!(new_trace_id(), [0; 16]);
            assert_ne!(new_span_id(), [0; 8]);
        }
        let mut s = span();
        s.set("error.type", AttrValue::Static("a"));
        s.set("http.response.status_code", AttrValue::Int(200));
        s.set("error.type", AttrValue::Static("b"));
        assert_eq!(s.attrs.len(), 2);
        assert_eq!(s.attrs[0].1.text().as_deref(), Some("b"));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(AttrValue::Ip(ip).text().as_deref(), Some("10.0.0.1"));
        let uri: Uri = "/a/b?secret=1".parse().unwrap();
        assert_eq!(AttrValue::Path(uri).text().as_deref(), Some("/a/b"));
        let ended = s.take_ended();
        assert!(ended.end >= ended.start && ended.attrs.len() == 2);
        assert!(s.attrs.is_empty());
    }
}
