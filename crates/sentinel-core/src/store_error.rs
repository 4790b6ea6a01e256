//! The error of an operation on an outside store (Redis): the session
//! store of `sentinel-layer` and the tier-config store of `sentinel-zion`
//! share it.

use std::fmt;

/// A store operation failed (Redis unreachable, timed out, ...): a session
/// store's or the tier-config store's.
/// The cause, when there is one, is kept as the source.
#[derive(Debug, Clone)]
pub struct StoreError {
    message: String,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// An error with `message`, which must hold no secret.
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
            source: None,
        }
    }

    /// An error with `message` and its cause (neither may hold a secret).
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError {
            message: message.into(),
            source: Some(std::sync::Arc::new(source)),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
