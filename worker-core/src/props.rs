//! Names of the message properties the framework reads and writes. All start with `wr-` so that they
//! never collide with an application's own properties.

/// The stable, logical id of a message: set when it is first published (or first seen), kept across
/// retries, redeliveries and DLQ replay. Idempotency keys on it.
pub const MESSAGE_ID: &str = "wr-message-id";
/// The attempt this delivery is, starting at 1. Absent means 1.
pub const ATTEMPT: &str = "wr-attempt";
/// The signed token that carries the sender's principal and roles.
pub const AUTH_TOKEN: &str = "wr-auth-token";
/// The task the message was enqueued for.
pub const TASK: &str = "wr-task";
/// When the message was first enqueued, in milliseconds since the Unix epoch.
pub const ENQUEUED_AT: &str = "wr-enqueued-at";
/// Where to publish the handler's serialized result, if the sender wants it.
pub const REPLY_TO: &str = "wr-reply-to";

/// On a DLQ copy: why it was dead-lettered (see [`crate::DeadLetterReason`]).
pub const DLQ_REASON: &str = "wr-dlq-reason";
/// On a DLQ copy: the last error, sanitized and bounded in length.
pub const DLQ_ERROR: &str = "wr-dlq-error";
/// On a DLQ copy: how many attempts were made.
pub const DLQ_ATTEMPTS: &str = "wr-dlq-attempts";
/// On a DLQ copy: the topic the message was consumed from.
pub const DLQ_ORIGINAL_TOPIC: &str = "wr-dlq-original-topic";
/// On a DLQ copy: the broker's id of the delivery that was dead-lettered.
pub const DLQ_ORIGINAL_MESSAGE_ID: &str = "wr-dlq-original-message-id";
/// On a DLQ copy: the task that gave up on it.
pub const DLQ_TASK: &str = "wr-dlq-task";
/// On a DLQ copy: the consumer (worker) name that gave up on it.
pub const DLQ_CONSUMER: &str = "wr-dlq-consumer";
/// On a DLQ copy: when it was dead-lettered, RFC 3339 in UTC.
pub const DLQ_TIME: &str = "wr-dlq-time";
/// On a DLQ copy: the principal (token subject) the worker verified for the message, if it verified
/// one. The token itself ([`AUTH_TOKEN`]) is never kept on a copy.
pub const DLQ_PRINCIPAL: &str = "wr-dlq-principal";

/// Every property name the framework owns.
pub const ALL: [&str; 15] = [
    MESSAGE_ID,
    ATTEMPT,
    AUTH_TOKEN,
    TASK,
    ENQUEUED_AT,
    REPLY_TO,
    DLQ_REASON,
    DLQ_ERROR,
    DLQ_ATTEMPTS,
    DLQ_ORIGINAL_TOPIC,
    DLQ_ORIGINAL_MESSAGE_ID,
    DLQ_TASK,
    DLQ_CONSUMER,
    DLQ_TIME,
    DLQ_PRINCIPAL,
];
