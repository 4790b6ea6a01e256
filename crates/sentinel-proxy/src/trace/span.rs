//! Spans: recorded in memory while they run, handed to the exporter's
//! queue when they end.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use super::Tracer;
use super::context::SpanContext;

/// A server span (one per routed request) or a client span (one per
/// upstream attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    Server,
    Client,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(Arc<str>),
    Static(&'static str),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Static(s)
    }
}

impl From<Arc<str>> for Value {
    fn from(s: Arc<str>) -> Self {
        Value::Str(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s.into())
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Value {
    fn from(n: u32) -> Self {
        Value::Int(i64::from(n))
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// What an ended span hands to the exporter.
#[derive(Debug, Clone)]
pub(crate) struct SpanRecord {
    pub(crate) context: SpanContext,
    pub(crate) parent: Option<[u8; 8]>,
    pub(crate) name: String,
    pub(crate) kind: SpanKind,
    /// Unix nanoseconds.
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) attributes: Vec<(&'static str, Value)>,
    /// Set: the span failed, with this description.
    pub(crate) error: Option<String>,
}

/// A span being recorded; exported when it ends (its drop).
#[derive(Debug)]
pub(crate) struct Span {
    record: SpanRecord,
    started: Instant,
    ended: Option<Instant>,
    tracer: Arc<Tracer>,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Span {
    pub(crate) fn start(
        tracer: Arc<Tracer>,
        context: SpanContext,
        parent: Option<[u8; 8]>,
        name: String,
        kind: SpanKind,
    ) -> Span {
        Span {
            record: SpanRecord {
                context,
                parent,
                name,
                kind,
                start: unix_nanos(SystemTime::now()),
                end: 0,
                attributes: Vec::with_capacity(16),
                error: None,
            },
            started: Instant::now(),
            ended: None,
            tracer,
        }
    }

    /// Sets `key` (a later value replaces an earlier one).
    pub(crate) fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        let value = value.into();
        match self.record.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.record.attributes.push((key, value)),
        }
    }

    /// Names the span.
    pub(crate) fn rename(&mut self, name: String) {
        self.record.name = name;
    }

    /// Marks the span failed, with `error.type` = `kind`.
    pub(crate) fn fail(&mut self, kind: impl Into<Value>, description: impl Into<String>) {
        self.set(super::attr::ERROR_TYPE, kind);
        self.record.error = Some(description.into());
    }

    /// Ends the span now; it is exported when dropped.
    pub(crate) fn end_now(&mut self) {
        if self.ended.is_none() {
            self.ended = Some(Instant::now());
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        let ended = self.ended.unwrap_or_else(Instant::now);
        let took = u64::try_from(ended.saturating_duration_since(self.started).as_nanos())
            .unwrap_or(u64::MAX);
        self.record.end = self.record.start.saturating_add(took);
        let record = SpanRecord {
            attributes: std::mem::take(&mut self.record.attributes),
            name: std::mem::take(&mut self.record.name),
            error: self.record.error.take(),
            ..self.record
        };
        self.tracer.export(record);
    }
}

/// A span several parts of a request write to: the server span, which the
/// response's clock ends and the attempts give their usage. It is exported
/// when the last part lets go.
#[derive(Debug, Clone)]
pub(crate) struct SharedSpan(Arc<Mutex<Span>>);

impl SharedSpan {
    pub(crate) fn new(span: Span) -> Self {
        SharedSpan(Arc::new(Mutex::new(span)))
    }

    /// Runs `f` on the span.
    pub(crate) fn with(&self, f: impl FnOnce(&mut Span)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}
