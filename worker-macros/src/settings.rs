//! The meaning of the attribute's arguments: each key's value read and checked, then the whole
//! configuration checked with `worker_core::TaskConfig::validate`, the very rules the runtime applies.
//! Every problem becomes an error at the token it is about.

use std::time::Duration;

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::{Expr, Ident};
use worker_core::{
    format_duration, parse_duration, CircuitPolicy, ConsumerType, CreditCost, InitialPosition,
    RateLimit, RateLimitScope, RetryPolicy, TaskConfig, TaskKind, Topic, DEFAULT_RATE_WINDOW,
};

use crate::attr::{self, Arg, Number};
use crate::errors::Errors;
use crate::keys::Key;

/// The keys given in an attribute, each read into the type `TaskConfig` holds it in. A key that was
/// not given (or whose value was wrong) is `None`; the runtime's default then applies.
#[derive(Default)]
pub(crate) struct Settings {
    pub topic: Option<Topic>,
    pub dlq_topic: Option<Topic>,
    pub subscription: Option<String>,
    pub rate_limit: Option<u32>,
    pub rate_window: Option<Duration>,
    pub max_retries: Option<u32>,
    pub backoff: Option<f64>,
    pub retry_delay: Option<Duration>,
    pub max_delay: Option<Duration>,
    pub jitter: Option<f64>,
    pub timeout: Option<Duration>,
    pub concurrency: Option<usize>,
    pub receiver_queue_size: Option<usize>,
    pub consumer_type: Option<ConsumerType>,
    pub initial_position: Option<InitialPosition>,
    pub max_payload_bytes: Option<usize>,
    pub permission_roles: Option<Vec<String>>,
    pub credit_type: Option<String>,
    pub credit_amount: Option<u64>,
    pub circuit_failures: Option<u32>,
    pub circuit_failure_rate: Option<f64>,
    pub circuit_min_calls: Option<u32>,
    pub circuit_window: Option<Duration>,
    pub circuit_cooldown: Option<Duration>,
    pub circuit_probes: Option<u32>,
    pub rate_limit_scope: Option<RateLimitScope>,
    pub idempotency_window: Option<Duration>,
}

impl Settings {
    /// The circuit breaker the keys describe, if a trigger was given.
    pub fn circuit(&self) -> Option<CircuitPolicy> {
        if self.circuit_failures.is_none() && self.circuit_failure_rate.is_none() {
            return None;
        }
        let mut circuit = CircuitPolicy::new(self.circuit_failures, self.circuit_failure_rate);
        circuit.min_calls = self.circuit_min_calls.unwrap_or(circuit.min_calls);
        circuit.window = self.circuit_window.unwrap_or(circuit.window);
        circuit.cooldown = self.circuit_cooldown.unwrap_or(circuit.cooldown);
        circuit.probes = self.circuit_probes.unwrap_or(circuit.probes);
        Some(circuit)
    }
}

/// Where a key was written.
struct Written {
    key: Key,
    ident: Ident,
    value: Expr,
}

/// Reads the arguments of an attribute declaring task `name`, adding every problem to `errors`.
pub(crate) fn read(kind: TaskKind, name: &str, args: Vec<Arg>, errors: &mut Errors) -> Settings {
    let mut reader = Reader {
        kind,
        settings: Settings::default(),
        written: Vec::new(),
        failed: Vec::new(),
        errors,
    };
    for arg in args {
        reader.arg(arg);
    }
    reader.cross_checks();
    reader.validate(name);
    reader.settings
}

struct Reader<'e> {
    kind: TaskKind,
    settings: Settings,
    written: Vec<Written>,
    /// Keys whose value was already reported, so that later checks do not report them again.
    failed: Vec<Key>,
    errors: &'e mut Errors,
}

impl Reader<'_> {
    fn arg(&mut self, arg: Arg) {
        let db = self.kind == TaskKind::Db;
        let name = arg.key.unraw().to_string();
        let Some(key) = Key::lookup(&name) else {
            let hint = match Key::suggest(&name, db) {
                Some(close) => format!("did you mean `{close}`? "),
                None => String::new(),
            };
            self.errors.at(
                arg.key.span(),
                format!("unknown key `{name}`; {hint}valid keys: {}", Key::list(db)),
            );
            return;
        };
        if key.db_only() && !db {
            self.errors.at(
                arg.key.span(),
                format!("`{name}` is only on #[pulsar_db_task]"),
            );
            return;
        }
        if let Some(first) = self.written.iter().find(|w| w.key == key) {
            let message = if first.ident == arg.key {
                format!("repeated key `{name}`")
            } else {
                format!("`{name}` repeats `{}`: they are the same key", first.ident)
            };
            self.errors.at(arg.key.span(), message);
            return;
        }
        if let Err(error) = self.value(key, &name, &arg.value) {
            self.errors.push(error);
            self.failed.push(key);
        }
        self.written.push(Written {
            key,
            ident: arg.key,
            value: arg.value,
        });
    }

    /// Reads one key's value into the settings.
    fn value(&mut self, key: Key, name: &str, value: &Expr) -> syn::Result<()> {
        let v = Value {
            key,
            name,
            expr: value,
        };
        let s = &mut self.settings;
        match key {
            Key::Topic => s.topic = Some(v.topic()?),
            Key::DlqTopic => s.dlq_topic = Some(v.topic()?),
            Key::Subscription => s.subscription = Some(v.string()?),
            Key::RateLimit => s.rate_limit = Some(v.count()?),
            Key::RateWindow => s.rate_window = Some(v.duration()?),
            Key::MaxRetries => s.max_retries = Some(v.count()?),
            Key::Backoff => s.backoff = Some(v.float()?),
            Key::RetryDelay => s.retry_delay = Some(v.duration()?),
            Key::MaxDelay => s.max_delay = Some(v.duration()?),
            Key::Jitter => s.jitter = Some(v.float()?),
            Key::Timeout => s.timeout = Some(v.duration()?),
            Key::Concurrency => s.concurrency = Some(v.count()?),
            Key::ReceiverQueueSize => s.receiver_queue_size = Some(v.count()?),
            Key::ConsumerType => s.consumer_type = Some(v.consumer_type()?),
            Key::InitialPosition => s.initial_position = Some(v.initial_position()?),
            Key::MaxPayloadBytes => s.max_payload_bytes = Some(v.count()?),
            Key::PermissionRoles => s.permission_roles = Some(v.roles()?),
            Key::CreditType => s.credit_type = Some(v.string()?),
            Key::CreditAmount => s.credit_amount = Some(v.count()?),
            Key::CircuitFailures => s.circuit_failures = Some(v.count()?),
            Key::CircuitFailureRate => s.circuit_failure_rate = Some(v.float()?),
            Key::CircuitMinCalls => s.circuit_min_calls = Some(v.count()?),
            Key::CircuitWindow => s.circuit_window = Some(v.duration()?),
            Key::CircuitCooldown => s.circuit_cooldown = Some(v.duration()?),
            Key::CircuitProbes => s.circuit_probes = Some(v.count()?),
            Key::RateLimitScope => s.rate_limit_scope = Some(v.rate_limit_scope()?),
            Key::IdempotencyWindow => s.idempotency_window = Some(v.duration()?),
        }
        Ok(())
    }

    fn written(&self, key: Key) -> Option<&Written> {
        self.written.iter().find(|w| w.key == key)
    }

    /// Checks between keys that `TaskConfig::validate` cannot see.
    fn cross_checks(&mut self) {
        if self.written(Key::Topic).is_none() {
            self.errors.at(
                Span::call_site(),
                format!("missing key `topic`, e.g. {}", Key::Topic.example()),
            );
        }
        let pairs = [
            (
                Key::RateWindow,
                Key::RateLimit,
                "has no effect without `rate_limit`, the messages allowed per window",
            ),
            (
                Key::CreditType,
                Key::CreditAmount,
                "needs `credit_amount`, the credits one message costs",
            ),
            (
                Key::CreditAmount,
                Key::CreditType,
                "needs `credit_type`, the kind of credits charged",
            ),
        ];
        for (present, missing, message) in pairs {
            if let (Some(written), None) = (self.written(present), self.written(missing)) {
                let error = syn::Error::new(written.ident.span(), {
                    format!("`{}` {message}", written.ident)
                });
                self.errors.push(error);
            }
        }
        let triggered = self.written(Key::CircuitFailures).is_some()
            || self.written(Key::CircuitFailureRate).is_some();
        let refinements = [
            Key::CircuitMinCalls,
            Key::CircuitWindow,
            Key::CircuitCooldown,
            Key::CircuitProbes,
        ];
        for key in refinements {
            if let (Some(written), false) = (self.written(key), triggered) {
                let message = format!(
                    "`{}` has no effect without `circuit_failures` or `circuit_failure_rate`, what opens the circuit",
                    written.ident
                );
                self.errors
                    .push(syn::Error::new(written.ident.span(), message));
            }
        }
        for key in [Key::CircuitMinCalls, Key::CircuitWindow] {
            if let (Some(written), None) =
                (self.written(key), self.written(Key::CircuitFailureRate))
            {
                if !triggered {
                    continue;
                }
                let message = format!(
                    "`{}` refines `circuit_failure_rate`, which is not given",
                    written.ident
                );
                self.errors
                    .push(syn::Error::new(written.ident.span(), message));
            }
        }
    }

    /// Checks the values together with the runtime's own validation, reporting each problem at
    /// the value of the key it names.
    fn validate(&mut self, name: &str) {
        // Without a valid topic, the other keys are still checked against a stand-in.
        let topic = self
            .settings
            .topic
            .clone()
            .or_else(|| Topic::parse("q1/t/ns/topic").ok());
        let Some(topic) = topic else {
            return;
        };
        let config = self.model(name, topic);
        let Err(problems) = config.validate() else {
            return;
        };
        let default_retry = RetryPolicy::default();
        for problem in problems {
            let Some(key) = Key::from_config_key(problem.key) else {
                self.errors.at(
                    Span::call_site(),
                    format!("`{}` {}", problem.key, problem.message),
                );
                continue;
            };
            if self.failed.contains(&key) || (key == Key::DlqTopic && self.settings.topic.is_none())
            {
                continue;
            }
            let error = if let Some(written) = self.written(key) {
                let message = format!("`{}` {}", written.ident, problem.message);
                syn::Error::new_spanned(&written.value, message)
            } else if let (Key::MaxDelay, Some(written)) = (key, self.written(Key::RetryDelay)) {
                // Only `retry_delay` was given, and it is longer than the default cap.
                let message = format!(
                    "`retry_delay` {} is longer than the default `max_delay` {}; set `max_delay` too",
                    format_duration(config.retry.retry_delay),
                    format_duration(default_retry.max_delay)
                );
                syn::Error::new_spanned(&written.value, message)
            } else {
                // Any other key that was not written holds its default, valid on its own.
                continue;
            };
            self.errors.push(error);
        }
    }

    /// The configuration the runtime will build, from the values that could be read.
    fn model(&self, name: &str, topic: Topic) -> TaskConfig {
        let s = &self.settings;
        let mut config = TaskConfig::new(name, self.kind, topic);
        if let Some(dlq) = &s.dlq_topic {
            config.dlq_topic = dlq.clone();
        }
        if let Some(subscription) = &s.subscription {
            config.subscription.clone_from(subscription);
        }
        if let Some(messages) = s.rate_limit {
            config.rate_limit = Some(RateLimit {
                messages,
                window: s.rate_window.unwrap_or(DEFAULT_RATE_WINDOW),
            });
        }
        let retry = &mut config.retry;
        retry.max_retries = s.max_retries.unwrap_or(retry.max_retries);
        retry.backoff = s.backoff.unwrap_or(retry.backoff);
        retry.retry_delay = s.retry_delay.unwrap_or(retry.retry_delay);
        retry.max_delay = s.max_delay.unwrap_or(retry.max_delay);
        retry.jitter = s.jitter.unwrap_or(retry.jitter);
        config.timeout = s.timeout.unwrap_or(config.timeout);
        config.concurrency = s.concurrency.unwrap_or(config.concurrency);
        config.receiver_queue_size = s.receiver_queue_size.unwrap_or(config.receiver_queue_size);
        config.max_payload_bytes = s.max_payload_bytes.unwrap_or(config.max_payload_bytes);
        if let Some(roles) = &s.permission_roles {
            config.permission_roles.clone_from(roles);
        }
        if let (Some(credit_type), Some(amount)) = (&s.credit_type, s.credit_amount) {
            config.credits = Some(CreditCost {
                credit_type: credit_type.clone(),
                amount,
            });
        }
        config.circuit = s.circuit();
        config.rate_limit_scope = s.rate_limit_scope.unwrap_or_default();
        config.idempotency_window = s.idempotency_window;
        config
    }
}

/// One value being read, with what is needed to report it.
struct Value<'a> {
    key: Key,
    /// The key as written (an alias stays an alias in messages).
    name: &'a str,
    expr: &'a Expr,
}

impl Value<'_> {
    fn error(&self, message: impl std::fmt::Display) -> syn::Error {
        syn::Error::new_spanned(self.expr, message)
    }

    fn expected(&self, what: &str) -> syn::Error {
        self.error(format!(
            "`{}` expects {what}, e.g. {}",
            self.name,
            self.key.example()
        ))
    }

    fn string(&self) -> syn::Result<String> {
        match attr::as_str(self.expr) {
            Some(lit) => Ok(lit.value()),
            None => Err(self.expected("a string literal")),
        }
    }

    fn topic(&self) -> syn::Result<Topic> {
        Topic::parse(&self.string()?).map_err(|error| self.error(error))
    }

    /// A non-negative integer that fits `T`.
    fn count<T: TryFrom<u64>>(&self) -> syn::Result<T> {
        let Some(Number::Int { negative, lit }) = attr::as_number(self.expr) else {
            return Err(self.expected("an integer literal"));
        };
        if negative {
            return Err(self.error(format!("`{}` cannot be negative", self.name)));
        }
        let too_large = || self.error(format!("`{}` is too large", self.name));
        let value: u64 = lit.base10_parse().map_err(|_| too_large())?;
        T::try_from(value).map_err(|_| too_large())
    }

    /// A number, integer or not, possibly negative.
    fn float(&self) -> syn::Result<f64> {
        let (negative, value) = match attr::as_number(self.expr) {
            Some(Number::Int { negative, lit }) => (negative, lit.base10_parse::<f64>()),
            Some(Number::Float { negative, lit }) => (negative, lit.base10_parse::<f64>()),
            None => return Err(self.expected("a number")),
        };
        let value = value?;
        Ok(if negative { -value } else { value })
    }

    /// Whole seconds as an integer, or a string that `parse_duration` reads.
    fn duration(&self) -> syn::Result<Duration> {
        if let Some(lit) = attr::as_str(self.expr) {
            return parse_duration(&lit.value())
                .map_err(|error| self.error(format!("`{}`: {error}", self.name)));
        }
        match attr::as_number(self.expr) {
            Some(Number::Int { negative: true, .. }) => {
                Err(self.error(format!("`{}` cannot be negative", self.name)))
            }
            Some(Number::Int { lit, .. }) => lit
                .base10_parse::<u64>()
                .ok()
                .and_then(|secs| secs.checked_mul(1000))
                .map(Duration::from_millis)
                .ok_or_else(|| self.error(format!("`{}` is too long", self.name))),
            Some(Number::Float { .. }) => Err(self.error(format!(
                "`{}` takes whole seconds; write fractions with a unit, e.g. \"1500ms\"",
                self.name
            ))),
            None => Err(self.expected("whole seconds or a duration string")),
        }
    }

    fn consumer_type(&self) -> syn::Result<ConsumerType> {
        let text = self.string()?;
        ConsumerType::parse(&text).ok_or_else(|| {
            self.error(format!(
                "`{}` must be one of \"shared\", \"key_shared\", \"failover\" or \"exclusive\", not {:?}",
                self.name, text
            ))
        })
    }

    fn rate_limit_scope(&self) -> syn::Result<RateLimitScope> {
        let text = self.string()?;
        RateLimitScope::parse(&text).ok_or_else(|| {
            self.error(format!(
                "`{}` must be \"worker\" or \"global\", not {:?}",
                self.name, text
            ))
        })
    }

    fn initial_position(&self) -> syn::Result<InitialPosition> {
        let text = self.string()?;
        InitialPosition::parse(&text).ok_or_else(|| {
            self.error(format!(
                "`{}` must be \"latest\" or \"earliest\", not {:?}",
                self.name, text
            ))
        })
    }

    /// A non-empty array of distinct, non-empty string literals.
    fn roles(&self) -> syn::Result<Vec<String>> {
        let Some(elements) = attr::as_array(self.expr) else {
            return Err(self.expected("an array of string literals"));
        };
        let mut errors = Errors::default();
        let mut roles: Vec<String> = Vec::new();
        for element in elements {
            let Some(lit) = attr::as_str(element) else {
                errors.spanned(
                    element,
                    "a role must be a string literal, e.g. \"db_writer\"",
                );
                continue;
            };
            let role = lit.value();
            if role.trim().is_empty() {
                errors.spanned(lit, "a role must not be empty");
            } else if roles.contains(&role) {
                errors.spanned(lit, format!("repeated role {role:?}"));
            } else {
                roles.push(role);
            }
        }
        if let Some(error) = errors.into_error() {
            return Err(error);
        }
        if roles.is_empty() {
            return Err(self.error(format!(
                "`{}` must name at least one role; leave the key out for no role check",
                self.name
            )));
        }
        Ok(roles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_ok(kind: TaskKind, args: &str) -> Settings {
        let args = syn::parse::Parser::parse_str(attr::parse_args, args).expect("valid syntax");
        let mut errors = Errors::default();
        let settings = read(kind, "t", args, &mut errors);
        if let Some(error) = errors.into_error() {
            panic!("unexpected error: {error}");
        }
        settings
    }

    fn read_errors(kind: TaskKind, args: &str) -> Vec<String> {
        let args = syn::parse::Parser::parse_str(attr::parse_args, args).expect("valid syntax");
        let mut errors = Errors::default();
        read(kind, "t", args, &mut errors);
        errors
            .into_error()
            .map(|error| error.into_iter().map(|e| e.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn reads_every_kind_of_value() {
        let s = read_ok(
            TaskKind::Db,
            r#"topic = "q1/a/b/c", rate_limit = 5, rate_window = "2m", backoff = 2,
               jitter = 0, timeout = 7, consumer_type = "exclusive",
               permission_roles = ["r1", "r2"], credit_type = "c", credit_amount = 3,"#,
        );
        assert_eq!(s.topic.map(|t| t.to_string()).as_deref(), Some("q1/a/b/c"));
        assert_eq!(s.rate_limit, Some(5));
        assert_eq!(s.rate_window, Some(Duration::from_secs(120)));
        assert_eq!(s.backoff, Some(2.0));
        assert_eq!(s.jitter, Some(0.0));
        assert_eq!(s.timeout, Some(Duration::from_secs(7)));
        assert_eq!(s.consumer_type, Some(ConsumerType::Exclusive));
        assert_eq!(s.permission_roles, Some(vec!["r1".into(), "r2".into()]));
        assert_eq!(s.credit_type.as_deref(), Some("c"));
        assert_eq!(s.credit_amount, Some(3));
        assert_eq!(s.max_retries, None);
    }

    #[test]
    fn reports_every_problem_once() {
        let errors = read_errors(
            TaskKind::Io,
            r#"max_retries = -1, timeout = 0, credit_type = "c", max_retries = 2"#,
        );
        assert_eq!(
            errors,
            [
                "`max_retries` cannot be negative",
                "`credit_type` is only on #[pulsar_db_task]",
                "repeated key `max_retries`",
                "missing key `topic`, e.g. `topic = \"persistent://tenant/namespace/name\"`",
                "`timeout` must be longer than zero",
            ]
        );
    }

    #[test]
    fn a_missing_topic_does_not_raise_a_dlq_error() {
        let errors = read_errors(TaskKind::Io, r#"dlq_topic = "q1/t/ns/topic""#);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("missing key `topic`"));
    }
}
