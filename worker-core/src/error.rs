//! The error vocabulary: what a broker can fail with, and what a task handler returns.

use std::error::Error as StdError;
use std::fmt;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached, or the connection broke. Usually transient.
    #[error("{backend} connection failed: {message}")]
    Connection {
        /// Which backend.
        backend: &'static str,
        /// What was being done.
        message: String,
        /// The client's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The operation did not finish in time.
    #[error("{backend} {operation} timed out after {millis} ms")]
    Timeout {
        /// Which backend.
        backend: &'static str,
        /// What was being done.
        operation: &'static str,
        /// The limit that passed.
        millis: u64,
    },
    /// The broker refused to store more: a retention bound was reached.
    #[error("topic `{topic}` is full: {retained} messages retained, limit {limit}")]
    Full {
        /// The topic that is full.
        topic: String,
        /// How many messages it retains now.
        retained: usize,
        /// The configured bound.
        limit: usize,
    },
    /// The broker refused this message (too large, invalid properties, …).
    #[error("{backend} rejected the message: {reason}")]
    Rejected {
        /// Which backend.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// The backend cannot do what was asked (a subscription type, delayed delivery, …).
    #[error("{backend} does not support {feature}")]
    Unsupported {
        /// Which backend.
        backend: &'static str,
        /// What it cannot do.
        feature: String,
    },
    /// The broker handle or subscription was closed.
    #[error("the {0} broker or subscription is closed")]
    Closed(&'static str),
    /// Any other failure of the backend, with its cause.
    #[error("{backend}: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What was being done.
        message: String,
        /// The client's error.
        #[source]
        source: Option<BoxError>,
    },
}

impl BrokerError {
    /// Whether trying again later may succeed (connection trouble, timeouts, a full topic).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BrokerError::Connection { .. } | BrokerError::Timeout { .. } | BrokerError::Full { .. }
        )
    }

    /// A [`BrokerError::Backend`] carrying its cause.
    pub fn backend(
        backend: &'static str,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        BrokerError::Backend {
            backend,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A [`BrokerError::Connection`] carrying its cause.
    pub fn connection(
        backend: &'static str,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        BrokerError::Connection {
            backend,
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// Whether a failed task should be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Try again after the backoff delay, until `max_retries` is used up.
    Retryable,
    /// Never try again: dead-letter at once.
    Permanent,
}

/// The error a task handler returns: a cause, and whether it is worth retrying.
///
/// Any `std::error::Error + Send + Sync + 'static` converts into a *retryable* `TaskError` with `?`.
/// Say [`TaskError::permanent`] for failures that no retry can fix (bad data, a business rule).
/// An `anyhow::Error` converts with `.map_err(TaskError::retryable)`.
///
/// Like `anyhow::Error`, `TaskError` does not itself implement `std::error::Error`; that is what lets
/// every error type convert into it.
pub struct TaskError {
    kind: ErrorKind,
    source: BoxError,
}

impl TaskError {
    /// A failure worth retrying.
    pub fn retryable(cause: impl Into<BoxError>) -> Self {
        TaskError {
            kind: ErrorKind::Retryable,
            source: cause.into(),
        }
    }

    /// A failure no retry can fix: the message goes to the dead-letter queue at once.
    pub fn permanent(cause: impl Into<BoxError>) -> Self {
        TaskError {
            kind: ErrorKind::Permanent,
            source: cause.into(),
        }
    }

    /// Whether the failure is retryable or permanent.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the failure is permanent.
    pub fn is_permanent(&self) -> bool {
        self.kind == ErrorKind::Permanent
    }

    /// The underlying cause.
    pub fn cause(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.source
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for TaskError {
    fn from(error: E) -> Self {
        TaskError::retryable(error)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)?;
        let mut next = self.source.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    fn fails() -> Result<(), TaskError> {
        Err(Outer(std::io::Error::other("inner")))?;
        Ok(())
    }

    #[test]
    fn foreign_errors_convert_as_retryable_and_keep_their_chain() {
        let error = fails().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Retryable);
        assert_eq!(error.to_string(), "outer: inner");
    }

    #[test]
    fn permanent_is_permanent() {
        let error = TaskError::permanent("bad row");
        assert!(error.is_permanent());
        assert_eq!(error.to_string(), "bad row");
    }

    #[test]
    fn transient_broker_errors_are_classified() {
        let timeout = BrokerError::Timeout {
            backend: "memory",
            operation: "publish",
            millis: 5,
        };
        assert!(timeout.is_transient());
        assert!(!BrokerError::Closed("memory").is_transient());
    }
}
