//! Writes every family of the registry, in a fixed order, tasks sorted by name.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use worker_core::DeadLetterReason;

use super::fanout::FanoutCells;
use super::route::RouteCells;
use super::task::{SharedStore, TaskCells};
use super::text::{Float, Kind, TextWriter};

/// The exposition of `tasks` for the worker `consumer` (escaped).
pub(super) fn encode(
    consumer: &str,
    ready: bool,
    tasks: &[Arc<TaskCells>],
    routes: &[Arc<RouteCells>],
    fanout: &[Arc<FanoutCells>],
) -> String {
    let mut w = TextWriter::new();
    let c = consumer;

    w.family(
        "worker_ready",
        Kind::Gauge,
        "1 while the worker is ready to take messages, else 0.",
    );
    w.sample("worker_ready", &[("consumer", c)], u8::from(ready));

    w.family(
        "worker_task_info",
        Kind::Gauge,
        "Always 1; names the topic each task consumes.",
    );
    for t in tasks {
        let labels = [("task", &*t.task), ("topic", &*t.topic), ("consumer", c)];
        w.sample("worker_task_info", &labels, 1);
    }

    w.family(
        "worker_messages_received_total",
        Kind::Counter,
        "Deliveries taken from the broker.",
    );
    for t in tasks {
        let labels = [("task", &*t.task), ("consumer", c)];
        w.sample("worker_messages_received_total", &labels, t.received());
    }

    w.family(
        "worker_messages_total",
        Kind::Counter,
        "Attempts that ended, by outcome: ok, retried, dead_lettered (any reason but forbidden), forbidden.",
    );
    for t in tasks {
        let forbidden = t.dead_letters_of(DeadLetterReason::Forbidden);
        let dead_lettered = DeadLetterReason::ALL
            .into_iter()
            .filter(|r| *r != DeadLetterReason::Forbidden)
            .map(|r| t.dead_letters_of(r))
            .fold(0u64, u64::saturating_add);
        for (outcome, value) in [
            ("ok", t.ok()),
            ("retried", t.retried.load(Relaxed)),
            ("dead_lettered", dead_lettered),
            ("forbidden", forbidden),
            ("duplicate", t.duplicates.load(Relaxed)),
        ] {
            let labels = [("task", &*t.task), ("consumer", c), ("outcome", outcome)];
            w.sample("worker_messages_total", &labels, value);
        }
    }

    w.family(
        "worker_dead_letters_total",
        Kind::Counter,
        "Messages sent to the dead-letter topic, by reason.",
    );
    for t in tasks {
        for reason in DeadLetterReason::ALL {
            let labels = [
                ("task", &*t.task),
                ("consumer", c),
                ("reason", reason.as_str()),
            ];
            w.sample(
                "worker_dead_letters_total",
                &labels,
                t.dead_letters_of(reason),
            );
        }
    }

    w.family(
        "worker_timeouts_total",
        Kind::Counter,
        "Attempts cancelled by the per-attempt timeout.",
    );
    for t in tasks {
        let labels = [("task", &*t.task), ("consumer", c)];
        w.sample("worker_timeouts_total", &labels, t.timeouts.load(Relaxed));
    }

    w.family(
        "worker_panics_total",
        Kind::Counter,
        "Attempts whose handler panicked.",
    );
    for t in tasks {
        let labels = [("task", &*t.task), ("consumer", c)];
        w.sample("worker_panics_total", &labels, t.panics.load(Relaxed));
    }

    w.family(
        "worker_acks_dropped_total",
        Kind::Counter,
        "Acknowledgements given up on after the broker kept failing them; their messages come again.",
    );
    for t in tasks {
        let labels = [("task", &*t.task), ("consumer", c)];
        w.sample(
            "worker_acks_dropped_total",
            &labels,
            t.acks_dropped.load(Relaxed),
        );
    }

    w.family(
        "worker_store_errors_total",
        Kind::Counter,
        "Deliveries that waited because a shared store (the credit ledger, the idempotency store) did not answer.",
    );
    for t in tasks {
        for store in [SharedStore::Credits, SharedStore::Idempotency] {
            let labels = [
                ("task", &*t.task),
                ("consumer", c),
                ("store", store.as_str()),
            ];
            let count = t.store_errors[store as usize].load(Relaxed);
            w.sample("worker_store_errors_total", &labels, count);
        }
    }

    w.family(
        "worker_circuit_state",
        Kind::Gauge,
        "The task's circuit breaker: 0 closed, 1 half-open, 2 open.",
    );
    for t in tasks {
        w.sample(
            "worker_circuit_state",
            &[("task", &*t.task)],
            t.circuit_state.load(Relaxed),
        );
    }

    w.family(
        "worker_circuit_transitions_total",
        Kind::Counter,
        "Transitions of the task's circuit breaker, by the state it moved to.",
    );
    for t in tasks {
        for (to, count) in ["closed", "half_open", "open"]
            .iter()
            .zip(&t.circuit_transitions)
        {
            let labels = [("task", &*t.task), ("to", *to)];
            w.sample(
                "worker_circuit_transitions_total",
                &labels,
                count.load(Relaxed),
            );
        }
    }

    w.family(
        "worker_backlog_messages",
        Kind::Gauge,
        "Messages waiting for the task's subscription, sampled from the broker where it can tell.",
    );
    for t in tasks {
        let backlog = t.backlog.load(Relaxed);
        if backlog >= 0 {
            let subscription = t.subscription.read();
            let labels = [("task", &*t.task), ("subscription", subscription.as_str())];
            w.sample("worker_backlog_messages", &labels, backlog);
        }
    }

    w.family(
        "worker_task_concurrency",
        Kind::Gauge,
        "The task's configured concurrency per worker.",
    );
    for t in tasks {
        w.sample(
            "worker_task_concurrency",
            &[("task", &*t.task)],
            t.concurrency.load(Relaxed),
        );
    }

    w.family(
        "worker_task_timeout_seconds",
        Kind::Gauge,
        "The task's per-attempt timeout.",
    );
    for t in tasks {
        let seconds = t.timeout.load(Relaxed) as f64 / 1e9;
        w.sample(
            "worker_task_timeout_seconds",
            &[("task", &*t.task)],
            Float(seconds),
        );
    }

    w.family(
        "worker_handler_duration_seconds",
        Kind::Histogram,
        "Time of one handler attempt.",
    );
    for t in tasks {
        let snapshot = t.handler_duration();
        w.histogram(
            "worker_handler_duration_seconds",
            &[("task", &*t.task)],
            &snapshot,
        );
    }

    w.family(
        "worker_attempts",
        Kind::Histogram,
        "The attempt number of each handler run (1 for the first).",
    );
    for t in tasks {
        let snapshot = t.attempts();
        w.histogram("worker_attempts", &[("task", &*t.task)], &snapshot);
    }

    w.family(
        "worker_in_flight",
        Kind::Gauge,
        "Handler attempts running now.",
    );
    for t in tasks {
        w.sample("worker_in_flight", &[("task", &*t.task)], t.in_flight());
    }

    w.family(
        "worker_rate_limit_wait_seconds_total",
        Kind::Counter,
        "Time messages spent waiting for the rate limiter.",
    );
    for t in tasks {
        w.sample(
            "worker_rate_limit_wait_seconds_total",
            &[("task", &*t.task)],
            Float(t.rate_limit_wait.seconds()),
        );
    }

    w.family(
        "worker_rate_limit_waits_total",
        Kind::Counter,
        "Messages that had to wait for the rate limiter.",
    );
    for t in tasks {
        w.sample(
            "worker_rate_limit_waits_total",
            &[("task", &*t.task)],
            t.rate_limit_waits.load(Relaxed),
        );
    }

    w.family(
        "worker_credits_charged_total",
        Kind::Counter,
        "Credits charged to senders, by credit type.",
    );
    for t in tasks {
        for (credit_type, total) in t.credits.snapshot() {
            let labels = [("task", &*t.task), ("credit_type", &*credit_type)];
            w.sample("worker_credits_charged_total", &labels, total);
        }
    }

    if !routes.is_empty() {
        encode_routes(&mut w, routes);
    }
    if !fanout.is_empty() {
        encode_fanout(&mut w, fanout);
    }
    w.finish()
}

/// The bridge's families, one series per route.
fn encode_routes(w: &mut TextWriter, routes: &[Arc<RouteCells>]) {
    w.family(
        "bridge_forwarded_total",
        Kind::Counter,
        "Messages a route handed on: ok (the target confirmed) or dead_lettered (to the route's DLQ).",
    );
    for r in routes {
        let ok = [("route", &*r.route), ("status", "ok")];
        w.sample("bridge_forwarded_total", &ok, r.forwarded.load(Relaxed));
        let dead = [("route", &*r.route), ("status", "dead_lettered")];
        w.sample(
            "bridge_forwarded_total",
            &dead,
            r.dead_lettered.load(Relaxed),
        );
    }

    w.family(
        "bridge_forward_latency_seconds",
        Kind::Histogram,
        "From the source's timestamp (or the read) to the target's confirmation.",
    );
    for r in routes {
        let snapshot = r.latency.snapshot();
        w.histogram(
            "bridge_forward_latency_seconds",
            &[("route", &*r.route)],
            &snapshot,
        );
    }

    w.family(
        "bridge_buffered",
        Kind::Gauge,
        "Messages read from the source and not yet confirmed by the target.",
    );
    for r in routes {
        w.sample(
            "bridge_buffered",
            &[("route", &*r.route)],
            r.buffered.load(Relaxed),
        );
    }

    w.family(
        "bridge_target_failures_total",
        Kind::Counter,
        "Publishes to the target that failed and are tried again.",
    );
    for r in routes {
        let labels = [("route", &*r.route)];
        w.sample(
            "bridge_target_failures_total",
            &labels,
            r.target_failures.load(Relaxed),
        );
    }

    w.family(
        "bridge_source_lag",
        Kind::Gauge,
        "Messages waiting in the route's source, where the source can tell.",
    );
    for r in routes {
        let lag = r.source_lag.load(Relaxed);
        if lag >= 0 {
            w.sample("bridge_source_lag", &[("route", &*r.route)], lag);
        }
    }
}

/// The fanout brokers' families, one series per member.
fn encode_fanout(w: &mut TextWriter, members: &[Arc<FanoutCells>]) {
    w.family(
        "fanout_published_total",
        Kind::Counter,
        "Publishes to a member of a fanout broker, by whether the member confirmed them.",
    );
    for m in members {
        let ok = [("broker", &*m.broker), ("status", "ok")];
        w.sample("fanout_published_total", &ok, m.ok.load(Relaxed));
        let failed = [("broker", &*m.broker), ("status", "failed")];
        w.sample("fanout_published_total", &failed, m.failed.load(Relaxed));
    }
    w.family(
        "fanout_buffered",
        Kind::Gauge,
        "Copies waiting for a member of a fanout broker (policy first).",
    );
    for m in members {
        w.sample(
            "fanout_buffered",
            &[("broker", &*m.broker)],
            m.buffered.load(Relaxed),
        );
    }
}
