//! Grouped acknowledgements: handlers hand their acks to one flusher per subscription, which sends
//! whatever has accumulated as one `ack` call. Under load that is one broker round trip per many
//! messages; when idle, an ack goes out at once.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use worker_core::{MessageId, Subscription};

/// The most acks sent in one call.
const MAX_ACK_BATCH: usize = 4096;

/// Where handlers send the ids of deliveries to acknowledge.
#[derive(Clone)]
pub(crate) struct AckSender(mpsc::UnboundedSender<MessageId>);

impl AckSender {
    /// Queues one ack. Returns false if the flusher is gone (the id is then redelivered later,
    /// which at-least-once allows).
    pub fn ack(&self, id: MessageId) -> bool {
        self.0.send(id).is_ok()
    }
}

/// Starts the flusher of one subscription. It ends, after flushing everything queued, once every
/// [`AckSender`] is dropped.
pub(crate) fn start_ack_flusher(
    subscription: Arc<dyn Subscription>,
    task: &'static str,
) -> (AckSender, JoinHandle<()>) {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let flusher = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_ACK_BATCH);
        while receiver.recv_many(&mut batch, MAX_ACK_BATCH).await > 0 {
            let ids = std::mem::replace(&mut batch, Vec::with_capacity(MAX_ACK_BATCH));
            let count = ids.len();
            if let Err(error) = subscription.ack(ids).await {
                // The messages will be redelivered and handled again: at least once still holds.
                tracing::warn!(task, count, %error, "acknowledging deliveries failed; they will be redelivered");
            }
        }
    });
    (AckSender(sender), flusher)
}
