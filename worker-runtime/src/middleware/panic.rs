//! Turning a panicking handler into a failed attempt instead of a dead worker.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

/// A handler panicked. Carries the panic's message; the retry policy treats it as a retryable
/// failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("handler panicked: {message}")]
pub struct PanicError {
    message: String,
}

impl PanicError {
    /// Reads the message out of a panic payload (as given by `catch_unwind` or
    /// `tokio::task::JoinError::into_panic`): the `&str` or `String` that `panic!` was given, or
    /// `"non-string panic payload"` for anything else (`std::panic::panic_any`).
    pub fn from_payload(payload: &(dyn Any + Send)) -> Self {
        let message = if let Some(text) = payload.downcast_ref::<&'static str>() {
            (*text).to_owned()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "non-string panic payload".to_owned()
        };
        PanicError { message }
    }

    /// The panic's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Runs `f`, catching a panic raised while it is polled.
///
/// The future is wrapped in `AssertUnwindSafe`: after a panic it is dropped and never polled again,
/// so no broken state it held can be observed through it. State it shares with others (through
/// `Arc<Mutex<…>>` and the like) may still be left half-updated, as with any caught panic. The panic
/// hook still runs, so the panic is printed (or logged) as usual. Panics of tasks `f` spawned are not
/// caught here.
pub async fn catch_panic<F: Future>(f: F) -> Result<F::Output, PanicError> {
    AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|payload| PanicError::from_payload(&*payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_with_a_literal_becomes_an_error() {
        let error = catch_panic(async {
            tokio::task::yield_now().await;
            panic!("boom");
        })
        .await
        .unwrap_err();
        assert_eq!(error.message(), "boom");
        assert_eq!(error.to_string(), "handler panicked: boom");
    }

    #[tokio::test]
    async fn a_formatted_panic_message_is_kept() {
        let row = 7;
        let error = catch_panic(async move {
            if row > 0 {
                panic!("bad row {row}");
            }
        })
        .await
        .unwrap_err();
        assert_eq!(error.message(), "bad row 7");
    }

    #[tokio::test]
    async fn a_non_string_payload_is_named_as_such() {
        let error = catch_panic(async { std::panic::panic_any(17_u32) })
            .await
            .unwrap_err();
        assert_eq!(error.message(), "non-string panic payload");
    }

    #[tokio::test]
    async fn output_passes_through() {
        assert_eq!(catch_panic(async { 5 }).await, Ok(5));
    }
}
