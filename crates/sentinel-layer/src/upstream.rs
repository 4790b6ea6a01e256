//! How the inner service reports a failed attempt.
//!
//! The layer needs to tell a connection failure from a timeout: the
//! first counts against the provider, the second against the model, and a
//! timeout on the last attempt answers 504 `upstream_timeout` instead of
//! 502 `upstream_failed`. An inner service says which it was by failing
//! with an [`UpstreamError`]; other errors are classified from their source
//! chain (`io::ErrorKind::TimedOut`, tokio's and tower's elapsed-timeout
//! errors are timeouts, `io` connection errors are connection failures) and
//! otherwise count as model failures.
//!
//! # Example
//!
//! ```
//! use sentinel_layer::{UpstreamError, UpstreamErrorKind};
//!
//! let err = UpstreamError::timeout("no first byte within 30 s");
//! assert_eq!(err.kind(), UpstreamErrorKind::Timeout);
//! ```

use std::error::Error;
use std::fmt;
use std::io;

/// A boxed error, as tower passes them around.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// What kind of failure an attempt ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamErrorKind {
    /// The provider could not be reached (refused, reset, DNS, TLS).
    Connect,
    /// The upstream did not answer in time.
    Timeout,
    /// Any other failure before a response head arrived.
    Other,
}

/// A failed attempt, before any response head.
#[derive(Debug)]
pub struct UpstreamError {
    kind: UpstreamErrorKind,
    source: Option<BoxError>,
}

impl UpstreamError {
    /// A connection failure.
    pub fn connect(source: impl Into<BoxError>) -> Self {
        Self::with(UpstreamErrorKind::Connect, source)
    }

    /// A timeout.
    pub fn timeout(source: impl Into<BoxError>) -> Self {
        Self::with(UpstreamErrorKind::Timeout, source)
    }

    /// Any other failure.
    pub fn other(source: impl Into<BoxError>) -> Self {
        Self::with(UpstreamErrorKind::Other, source)
    }

    fn with(kind: UpstreamErrorKind, source: impl Into<BoxError>) -> Self {
        UpstreamError {
            kind,
            source: Some(source.into()),
        }
    }

    /// What kind of failure it was.
    pub fn kind(&self) -> UpstreamErrorKind {
        self.kind
    }

    /// Classifies any error of an inner service.
    pub fn classify(error: BoxError) -> Self {
        let error = match error.downcast::<UpstreamError>() {
            Ok(e) => return *e,
            Err(e) => e,
        };
        let kind = kind_of(&*error);
        Self::with(kind, error)
    }
}

fn kind_of(error: &(dyn Error + 'static)) -> UpstreamErrorKind {
    let mut current: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::TimedOut => return UpstreamErrorKind::Timeout,
                io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::NotConnected
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable => return UpstreamErrorKind::Connect,
                // A custom error inside: look at it (its `source` skips it).
                _ => match io.get_ref() {
                    Some(inner) => {
                        current = Some(inner);
                        continue;
                    }
                    None => return UpstreamErrorKind::Other,
                },
            }
        }
        if e.is::<tokio::time::error::Elapsed>() || e.is::<tower::timeout::error::Elapsed>() {
            return UpstreamErrorKind::Timeout;
        }
        if let Some(u) = e.downcast_ref::<UpstreamError>() {
            return u.kind;
        }
        current = e.source();
    }
    UpstreamErrorKind::Other
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            UpstreamErrorKind::Connect => "the upstream could not be reached",
            UpstreamErrorKind::Timeout => "the upstream timed out",
            UpstreamErrorKind::Other => "the upstream request failed",
        };
        f.write_str(what)
    }
}

impl Error for UpstreamError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_type_and_source_chain() {
        let boxed: BoxError = Box::new(UpstreamError::connect("refused"));
        assert_eq!(
            UpstreamError::classify(boxed).kind(),
            UpstreamErrorKind::Connect
        );
        let io: BoxError = Box::new(io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(
            UpstreamError::classify(io).kind(),
            UpstreamErrorKind::Timeout
        );
        let io: BoxError = Box::new(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            UpstreamError::classify(io).kind(),
            UpstreamErrorKind::Connect
        );
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(
            UpstreamError::classify(elapsed).kind(),
            UpstreamErrorKind::Timeout
        );
        let wrapped: BoxError = Box::new(io::Error::other(UpstreamError::timeout("slow")));
        assert_eq!(
            UpstreamError::classify(wrapped).kind(),
            UpstreamErrorKind::Timeout
        );
        let other: BoxError = "boom".into();
        assert_eq!(
            UpstreamError::classify(other).kind(),
            UpstreamErrorKind::Other
        );
    }
}
