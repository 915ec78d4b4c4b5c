//! Why a message ended in the dead-letter queue.

use std::fmt;

/// Why a message ended in the dead-letter queue; written to [`crate::props::DLQ_REASON`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The payload could not be decoded into the task's payload type (or was not valid input).
    DecodeError,
    /// The payload is larger than the worker accepts.
    PayloadTooLarge,
    /// The sender's token was missing, malformed, wrongly signed, expired, or held no permitted role.
    Forbidden,
    /// The sender's principal did not have enough credits.
    InsufficientCredits,
    /// The handler returned a permanent error.
    PermanentError,
    /// Every attempt failed with a retryable error (including timeouts and panics).
    RetriesExhausted,
}

impl DeadLetterReason {
    /// Every reason, for metrics that pre-register one series each.
    pub const ALL: [DeadLetterReason; 6] = [
        DeadLetterReason::DecodeError,
        DeadLetterReason::PayloadTooLarge,
        DeadLetterReason::Forbidden,
        DeadLetterReason::InsufficientCredits,
        DeadLetterReason::PermanentError,
        DeadLetterReason::RetriesExhausted,
    ];

    /// The snake_case name used in properties, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::DecodeError => "decode_error",
            DeadLetterReason::PayloadTooLarge => "payload_too_large",
            DeadLetterReason::Forbidden => "forbidden",
            DeadLetterReason::InsufficientCredits => "insufficient_credits",
            DeadLetterReason::PermanentError => "permanent_error",
            DeadLetterReason::RetriesExhausted => "retries_exhausted",
        }
    }

    /// Parses the name written by [`Self::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for reason in DeadLetterReason::ALL {
            assert_eq!(DeadLetterReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(DeadLetterReason::parse("nope"), None);
    }
}
