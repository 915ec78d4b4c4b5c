//! The keys the attributes accept: their names, aliases and an example of each.

/// A key of `#[pulsar_io_task]` / `#[pulsar_db_task]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Topic,
    DlqTopic,
    Subscription,
    RateLimit,
    RateWindow,
    MaxRetries,
    Backoff,
    RetryDelay,
    MaxDelay,
    Jitter,
    Timeout,
    Concurrency,
    ReceiverQueueSize,
    ConsumerType,
    InitialPosition,
    MaxPayloadBytes,
    PermissionRoles,
    CreditType,
    CreditAmount,
    CircuitFailures,
    CircuitFailureRate,
    CircuitMinCalls,
    CircuitWindow,
    CircuitCooldown,
    CircuitProbes,
    RateLimitScope,
    IdempotencyWindow,
}

impl Key {
    /// Every key, in the order the documentation lists them.
    pub const ALL: [Key; 27] = [
        Key::Topic,
        Key::DlqTopic,
        Key::Subscription,
        Key::RateLimit,
        Key::RateWindow,
        Key::MaxRetries,
        Key::Backoff,
        Key::RetryDelay,
        Key::MaxDelay,
        Key::Jitter,
        Key::Timeout,
        Key::Concurrency,
        Key::ReceiverQueueSize,
        Key::ConsumerType,
        Key::InitialPosition,
        Key::MaxPayloadBytes,
        Key::PermissionRoles,
        Key::CreditType,
        Key::CreditAmount,
        Key::CircuitFailures,
        Key::CircuitFailureRate,
        Key::CircuitMinCalls,
        Key::CircuitWindow,
        Key::CircuitCooldown,
        Key::CircuitProbes,
        Key::RateLimitScope,
        Key::IdempotencyWindow,
    ];

    /// The key's name, which is also the name `TaskConfig::validate` reports it under.
    pub fn name(self) -> &'static str {
        match self {
            Key::Topic => "topic",
            Key::DlqTopic => "dlq_topic",
            Key::Subscription => "subscription",
            Key::RateLimit => "rate_limit",
            Key::RateWindow => "rate_window",
            Key::MaxRetries => "max_retries",
            Key::Backoff => "backoff",
            Key::RetryDelay => "retry_delay",
            Key::MaxDelay => "max_delay",
            Key::Jitter => "jitter",
            Key::Timeout => "timeout",
            Key::Concurrency => "concurrency",
            Key::ReceiverQueueSize => "receiver_queue_size",
            Key::ConsumerType => "consumer_type",
            Key::InitialPosition => "initial_position",
            Key::MaxPayloadBytes => "max_payload_bytes",
            Key::PermissionRoles => "permission_roles",
            Key::CreditType => "credit_type",
            Key::CreditAmount => "credit_amount",
            Key::CircuitFailures => "circuit_failures",
            Key::CircuitFailureRate => "circuit_failure_rate",
            Key::CircuitMinCalls => "circuit_min_calls",
            Key::CircuitWindow => "circuit_window",
            Key::CircuitCooldown => "circuit_cooldown",
            Key::CircuitProbes => "circuit_probes",
            Key::RateLimitScope => "rate_limit_scope",
            Key::IdempotencyWindow => "idempotency_window",
        }
    }

    /// Other names accepted for the key.
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Key::Timeout => &["task_timeout"],
            _ => &[],
        }
    }

    /// How the key is written (in backticks), shown when its value has the wrong form.
    pub fn example(self) -> &'static str {
        match self {
            Key::Topic => "`topic = \"persistent://tenant/namespace/name\"`",
            Key::DlqTopic => "`dlq_topic = \"persistent://tenant/namespace/name-dlq\"`",
            Key::Subscription => "`subscription = \"my-subscription\"`",
            Key::RateLimit => "`rate_limit = 500`",
            Key::RateWindow => "`rate_window = 60` or `rate_window = \"1m\"`",
            Key::MaxRetries => "`max_retries = 3`",
            Key::Backoff => "`backoff = 2` or `backoff = 1.5`",
            Key::RetryDelay => "`retry_delay = 1` or `retry_delay = \"500ms\"`",
            Key::MaxDelay => "`max_delay = 600` or `max_delay = \"10m\"`",
            Key::Jitter => "`jitter = 0.1`",
            Key::Timeout => "`timeout = 30` or `timeout = \"500ms\"`",
            Key::Concurrency => "`concurrency = 8`",
            Key::ReceiverQueueSize => "`receiver_queue_size = 1000`",
            Key::ConsumerType => "`consumer_type = \"key_shared\"`",
            Key::InitialPosition => "`initial_position = \"latest\"`",
            Key::MaxPayloadBytes => "`max_payload_bytes = 1048576`",
            Key::PermissionRoles => "`permission_roles = [\"db_writer\"]`",
            Key::CreditType => "`credit_type = \"db_credits\"`",
            Key::CreditAmount => "`credit_amount = 2`",
            Key::CircuitFailures => "`circuit_failures = 5`",
            Key::CircuitFailureRate => "`circuit_failure_rate = 0.5`",
            Key::CircuitMinCalls => "`circuit_min_calls = 20`",
            Key::CircuitWindow => "`circuit_window = 60` or `circuit_window = \"1m\"`",
            Key::CircuitCooldown => "`circuit_cooldown = 30` or `circuit_cooldown = \"30s\"`",
            Key::CircuitProbes => "`circuit_probes = 1`",
            Key::RateLimitScope => "`rate_limit_scope = \"global\"`",
            Key::IdempotencyWindow => "`idempotency_window = \"24h\"`",
        }
    }

    /// Whether only `#[pulsar_db_task]` accepts the key.
    pub fn db_only(self) -> bool {
        matches!(
            self,
            Key::PermissionRoles | Key::CreditType | Key::CreditAmount
        )
    }

    /// The key written as `name`, by its name or an alias.
    pub fn lookup(name: &str) -> Option<Key> {
        Key::ALL
            .into_iter()
            .find(|key| key.name() == name || key.aliases().contains(&name))
    }

    /// The key `TaskConfig::validate` calls `name`.
    pub fn from_config_key(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|key| key.name() == name)
    }

    /// The valid key names closest to `name`, for "did you mean" hints.
    pub fn suggest(name: &str, db: bool) -> Option<&'static str> {
        Key::ALL
            .into_iter()
            .filter(|key| db || !key.db_only())
            .flat_map(|key| std::iter::once(key.name()).chain(key.aliases().iter().copied()))
            .map(|candidate| (edit_distance(name, candidate), candidate))
            .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(1))
            .min_by_key(|(distance, _)| *distance)
            .map(|(_, candidate)| candidate)
    }

    /// The list of valid keys for an error message.
    pub fn list(db: bool) -> String {
        Key::ALL
            .into_iter()
            .filter(|key| db || !key.db_only())
            .flat_map(|key| std::iter::once(key.name()).chain(key.aliases().iter().copied()))
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The Levenshtein distance between two short ASCII-ish strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            let deletion = previous[j + 1] + 1;
            let insertion = current[j] + 1;
            current.push(substitution.min(deletion).min(insertion));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_names_and_aliases() {
        assert_eq!(Key::lookup("topic"), Some(Key::Topic));
        assert_eq!(Key::lookup("task_timeout"), Some(Key::Timeout));
        assert_eq!(Key::lookup("tpoic"), None);
        for key in Key::ALL {
            assert_eq!(Key::from_config_key(key.name()), Some(key));
        }
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(Key::suggest("topc", false), Some("topic"));
        assert_eq!(Key::suggest("max_retry", false), Some("max_retries"));
        assert_eq!(Key::suggest("credit_amont", false), None);
        assert_eq!(Key::suggest("credit_amont", true), Some("credit_amount"));
        assert_eq!(Key::suggest("colour", true), None);
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("topic", "topic"), 0);
        assert_eq!(edit_distance("topc", "topic"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
