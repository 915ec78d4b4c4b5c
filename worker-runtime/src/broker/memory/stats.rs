//! Snapshots for tests, examples and summaries: what a topic holds and how far each subscription is.

use worker_core::ConsumerType;

/// A snapshot of one topic, from [`super::MemoryBroker::stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicStats {
    /// Messages published to the topic since it was created.
    pub published: u64,
    /// Messages retained: what [`super::MemoryBrokerOptions::max_retained_per_topic`] bounds.
    pub retained: usize,
    /// Messages waiting for their delivery time.
    pub delayed: usize,
    /// Each subscription.
    pub subscriptions: Vec<SubscriptionStats>,
}

/// A snapshot of one subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// The subscription's name.
    pub name: String,
    /// How its consumers share messages.
    pub consumer_type: ConsumerType,
    /// Consumers attached now.
    pub consumers: usize,
    /// Messages it has not acknowledged: not yet delivered, delivered and unacknowledged, or
    /// delayed.
    pub backlog: usize,
    /// Deliveries its consumers hold unacknowledged.
    pub unacked: usize,
}
