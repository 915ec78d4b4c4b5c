//! Turning pulsar-rs errors into [`BrokerError`]s that say whether trying again can help.

use pulsar::error::{ConnectionError, ConsumerError, ProducerError, ServiceDiscoveryError};
use pulsar::proto::ServerError;
use worker_core::BrokerError;

pub(super) const BACKEND: &str = "pulsar";

/// Whether an error is worth retrying, and how to report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    /// Connection trouble, a broker not ready, a timeout: try again later.
    Transient,
    /// The producer or consumer handle itself is gone: make a new one, then try again.
    HandleLost,
    /// Refused for good (authentication, authorization, a bad topic, a terminated topic, …).
    Permanent,
}

/// How `error` should be handled.
pub(super) fn classify(error: &pulsar::Error) -> Class {
    match error {
        pulsar::Error::Connection(e) => classify_connection(e),
        pulsar::Error::Producer(e) => match e {
            ProducerError::Connection(e) => classify_connection(e),
            ProducerError::Batch(e) => classify(e),
            ProducerError::Closed | ProducerError::Custom(_) => Class::HandleLost,
            ProducerError::Fenced => Class::HandleLost,
            ProducerError::Io(_) | ProducerError::PartialSend(_) => Class::Transient,
        },
        pulsar::Error::Consumer(e) => match e {
            ConsumerError::Connection(e) => classify_connection(e),
            ConsumerError::Closed | ConsumerError::ChannelFull => Class::HandleLost,
            ConsumerError::Io(_) | ConsumerError::MissingPayload(_) => Class::Transient,
            ConsumerError::BuildError => Class::Permanent,
        },
        pulsar::Error::ServiceDiscovery(e) => match e {
            ServiceDiscoveryError::Connection(e) => classify_connection(e),
            ServiceDiscoveryError::Query(kind, _) => classify_server(*kind),
            ServiceDiscoveryError::NotFound => Class::Permanent,
            _ => Class::Transient,
        },
        pulsar::Error::Authentication(_) => Class::Permanent,
        pulsar::Error::Custom(_) | pulsar::Error::Executor => Class::HandleLost,
    }
}

fn classify_connection(error: &ConnectionError) -> Class {
    match error {
        ConnectionError::PulsarError(kind, _) => classify_server(*kind),
        ConnectionError::Authentication(_) => Class::Permanent,
        ConnectionError::Tls(_) | ConnectionError::DnsName(_) | ConnectionError::SocketAddr(_) => {
            Class::Permanent
        }
        _ => Class::Transient,
    }
}

fn classify_server(kind: Option<ServerError>) -> Class {
    match kind {
        Some(
            ServerError::AuthenticationError
            | ServerError::AuthorizationError
            | ServerError::TopicNotFound
            | ServerError::TopicTerminatedError
            | ServerError::InvalidTopicName
            | ServerError::IncompatibleSchema
            | ServerError::NotAllowedError
            | ServerError::UnsupportedVersionError,
        ) => Class::Permanent,
        _ => Class::Transient,
    }
}

/// The [`BrokerError`] for a pulsar-rs error met while doing `what`.
pub(super) fn to_broker_error(what: impl Into<String>, error: pulsar::Error) -> BrokerError {
    let mut message = what.into();
    if let Some(hint) = hint(&error) {
        message.push_str(" (");
        message.push_str(hint);
        message.push(')');
    }
    match classify(&error) {
        Class::Transient => BrokerError::connection(BACKEND, message, error),
        Class::HandleLost | Class::Permanent => BrokerError::backend(BACKEND, message, error),
    }
}

/// What to do about a refusal whose cause is not obvious from the broker's words alone.
fn hint(error: &pulsar::Error) -> Option<&'static str> {
    let text = error.to_string();
    if text.contains("Namespace not found") || text.contains("Tenant not found") {
        // Unlike the other backends, a Pulsar cluster knows only what an operator created.
        return Some(
            "create the topic's tenant and namespace first: `pulsar-admin tenants create TENANT` \
             and `pulsar-admin namespaces create TENANT/NAMESPACE`, or PUT \
             /admin/v2/tenants/TENANT and /admin/v2/namespaces/TENANT/NAMESPACE",
        );
    }
    None
}

/// The error of an operation that did not finish within `limit`.
pub(super) fn timeout(operation: &'static str, limit: std::time::Duration) -> BrokerError {
    BrokerError::Timeout {
        backend: BACKEND,
        operation,
        millis: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_trouble_is_transient_and_refusals_are_permanent() {
        let disconnected = pulsar::Error::Connection(ConnectionError::Disconnected);
        assert_eq!(classify(&disconnected), Class::Transient);
        assert!(to_broker_error("publish", disconnected).is_transient());

        let not_ready = pulsar::Error::Connection(ConnectionError::PulsarError(
            Some(ServerError::ServiceNotReady),
            None,
        ));
        assert_eq!(classify(&not_ready), Class::Transient);

        let denied = pulsar::Error::Connection(ConnectionError::PulsarError(
            Some(ServerError::AuthorizationError),
            Some("no".into()),
        ));
        assert_eq!(classify(&denied), Class::Permanent);
        assert!(!to_broker_error("subscribe", denied).is_transient());

        let closed = pulsar::Error::Producer(ProducerError::Closed);
        assert_eq!(classify(&closed), Class::HandleLost);
    }

    #[test]
    fn a_missing_namespace_says_how_to_create_it() {
        let missing = pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Query(
            Some(ServerError::TopicNotFound),
            Some("Namespace not found".into()),
        ));
        let error = to_broker_error("subscribe to persistent://demo/scale/events", missing);
        assert!(!error.is_transient());
        let text = error.to_string();
        assert!(text.contains("pulsar-admin namespaces create"), "{text}");
    }

    #[test]
    fn timeouts_name_the_operation_and_limit() {
        let error = timeout("publish", std::time::Duration::from_millis(1500));
        assert_eq!(error.to_string(), "pulsar publish timed out after 1500 ms");
        assert!(error.is_transient());
    }
}
