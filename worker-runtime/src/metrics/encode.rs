//! Writes every family of the registry, in a fixed order, tasks sorted by name.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use worker_core::DeadLetterReason;

use super::task::TaskCells;
use super::text::{Float, Kind, TextWriter};

/// The exposition of `tasks` for the worker `consumer` (escaped).
pub(super) fn encode(consumer: &str, ready: bool, tasks: &[Arc<TaskCells>]) -> String {
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
        w.sample(
            "worker_messages_received_total",
            &labels,
            t.received.load(Relaxed),
        );
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
            ("ok", t.ok.load(Relaxed)),
            ("retried", t.retried.load(Relaxed)),
            ("dead_lettered", dead_lettered),
            ("forbidden", forbidden),
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
        "worker_handler_duration_seconds",
        Kind::Histogram,
        "Time of one handler attempt.",
    );
    for t in tasks {
        let snapshot = t.handler_duration.snapshot();
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
        let snapshot = t.attempts.snapshot();
        w.histogram("worker_attempts", &[("task", &*t.task)], &snapshot);
    }

    w.family(
        "worker_in_flight",
        Kind::Gauge,
        "Handler attempts running now.",
    );
    for t in tasks {
        w.sample(
            "worker_in_flight",
            &[("task", &*t.task)],
            t.in_flight.load(Relaxed),
        );
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

    w.finish()
}
