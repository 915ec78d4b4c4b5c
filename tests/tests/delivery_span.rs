//! The span every delivery runs in: off at the default `info` (a span per delivery would cost more
//! than the rest of the path), on with `worker_runtime::delivery=debug`, when a handler's events
//! carry the task, topic, message id and attempt.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::worker_support::RunningWorker;
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer as _;
use worker_runtime::broker::MemoryBroker;
use worker_runtime::prelude::*;
use worker_runtime::worker::{Worker, DELIVERY_SPAN_TARGET};

#[derive(Serialize, Deserialize)]
struct Note {
    id: u32,
}

static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[pulsar_io_task(topic = "persistent://test/span/notes", concurrency = 1)]
async fn take_note(note: Note, ctx: TaskContext) -> Result<(), TaskError> {
    tracing::info!(note = note.id, "handling the note");
    SEEN.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(ctx.message_id().to_owned());
    Ok(())
}

/// A writer appending to a shared buffer.
#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines a worker writes, filtered by `directives`, while it handles one note; and the
/// note's message id.
async fn log_of_one_delivery(directives: &str) -> (String, String) {
    let written = Captured(Arc::new(Mutex::new(Vec::new())));
    let sink = written.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .with_filter(tracing_subscriber::EnvFilter::new(directives)),
    );
    // A current-thread runtime: the worker's tasks all run on this thread, under this subscriber.
    let _default = tracing::subscriber::set_default(subscriber);
    SEEN.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let broker = Arc::new(MemoryBroker::new());
    take_note::enqueue(&*broker, &Note { id: 7 })
        .await
        .expect("enqueue");
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(take_note::task())
            .consumer_name("span-worker"),
    );
    let message_id = loop {
        if let Some(id) = SEEN.lock().unwrap_or_else(|p| p.into_inner()).first() {
            break id.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    worker.stop().await;
    let log = String::from_utf8(written.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .expect("utf-8 log");
    (log, message_id)
}

fn handler_line(log: &str) -> &str {
    log.lines()
        .find(|line| line.contains("handling the note"))
        .unwrap_or_else(|| panic!("the handler's event is logged:\n{log}"))
}

// One test: the note's handler records into one static.
#[tokio::test]
async fn the_delivery_span_is_off_at_info_and_on_with_its_target_at_debug() {
    let (log, _) = log_of_one_delivery("info").await;
    let line = handler_line(&log);
    assert!(
        !line.contains("delivery{"),
        "no delivery span at info: {line}"
    );
    assert!(line.contains("note=7"), "the handler's own fields: {line}");

    let directives = format!("info,{DELIVERY_SPAN_TARGET}=debug");
    let (log, message_id) = log_of_one_delivery(&directives).await;
    let line = handler_line(&log);
    assert!(line.contains("delivery{"), "in the delivery span: {line}");
    assert!(
        line.contains(&format!("message_id=\"{message_id}\"")),
        "the span names message {message_id}: {line}"
    );
    assert!(line.contains("task=\"take_note\""), "and the task: {line}");
    assert!(line.contains("attempt=1"), "and the attempt: {line}");
}
