//! Which of our publishes the broker has confirmed, matched from rumqttc's events.
//!
//! rumqttc's `AsyncClient::publish` returns once the request is queued, and the packet id it assigns
//! appears only in the event loop's `Outgoing::Publish(pkid)` event. rumqttc takes requests from its
//! channel in order and reports each with exactly one `Outgoing::Publish(pkid)` (sent) or
//! `Outgoing::AwaitAck(pkid)` (that id is still in flight: the publish waits, and goes out with a
//! later `Outgoing::Publish(pkid)` once the id is acknowledged). So the requests we queued, kept in the
//! same order, pair up with those events; PUBACK (QoS 1) and PUBREC then PUBCOMP (QoS 2) resolve
//! them by packet id. Anything that does not fit this picture is reported as [`Desync`], and the
//! connection is then dropped and everything unconfirmed resent, rather than guessed at.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use worker_core::BrokerError;

/// What the broker said about a publish it accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Confirmed {
    /// Our local sequence number of the publish.
    pub id: u64,
    /// False when the broker reported that no subscription matched, so the message went nowhere.
    pub routed: bool,
}

/// How one publish ends.
pub(crate) type Outcome = Result<Confirmed, BrokerError>;

/// One publish that the broker has not confirmed yet.
pub(crate) struct Entry {
    /// Local sequence number: publish order.
    pub id: u64,
    /// MQTT topic.
    pub topic: String,
    /// QoS it is published with.
    pub qos: QoS,
    /// Raw payload.
    pub payload: Bytes,
    /// User properties.
    pub properties: PublishProperties,
    /// Where the outcome goes; closed once the caller stopped waiting.
    pub reply: oneshot::Sender<Outcome>,
    /// The slot this publish holds in the bounded buffer, released when it ends.
    pub _permit: Option<OwnedSemaphorePermit>,
    /// QoS 2 only: PUBREC arrived, PUBCOMP is awaited.
    pub released: bool,
}

impl Entry {
    fn resolve(self, outcome: Result<bool, BrokerError>) {
        let id = self.id;
        let _ = self
            .reply
            .send(outcome.map(|routed| Confirmed { id, routed }));
    }
}

/// The events did not match the requests we queued; the connection's bookkeeping cannot be trusted.
#[derive(Debug, thiserror::Error)]
#[error("publish tracking lost step: {0}")]
pub(crate) struct Desync(pub &'static str);

/// Publishes by stage: waiting for a connection, queued in the current one, in flight by packet id.
#[derive(Default)]
pub(crate) struct Tracker {
    /// Not handed to any connection yet; sent when the next connection opens.
    pub unsent: VecDeque<Entry>,
    /// Handed to the current connection's request channel, packet id not known yet (in order).
    queued: VecDeque<Entry>,
    /// Sent, awaiting acknowledgement, by packet id. More than one only while a collision waits.
    inflight: HashMap<u16, VecDeque<Entry>>,
    /// The packet id whose next `Outgoing::Publish` is a collided publish finally going out.
    collided: Option<u16>,
}

impl Tracker {
    /// Records that `entry` was put into the current connection's request channel.
    pub fn queued(&mut self, entry: Entry) {
        self.queued.push_back(entry);
    }

    /// `Outgoing::Publish(pkid)`: the next queued request went out (or a collided one finally did).
    pub fn on_sent(&mut self, pkid: u16) -> Result<(), Desync> {
        if pkid != 0 && self.collided == Some(pkid) {
            self.collided = None;
            return Ok(());
        }
        let entry = self
            .queued
            .pop_front()
            .ok_or(Desync("a publish went out that was never queued"))?;
        match (pkid, entry.qos) {
            // QoS 0 is done once written: the broker never answers it.
            (0, QoS::AtMostOnce) => {
                entry.resolve(Ok(true));
                Ok(())
            }
            (0, _) | (_, QoS::AtMostOnce) => {
                self.queued.push_front(entry);
                Err(Desync("packet id and QoS of a sent publish disagree"))
            }
            (pkid, _) => {
                self.inflight.entry(pkid).or_default().push_back(entry);
                Ok(())
            }
        }
    }

    /// `Outgoing::AwaitAck(pkid)`: the next queued request got an id that is still in flight.
    pub fn on_collision(&mut self, pkid: u16) -> Result<(), Desync> {
        let entry = self
            .queued
            .pop_front()
            .ok_or(Desync("a publish collided that was never queued"))?;
        if entry.qos == QoS::AtMostOnce || self.collided.is_some() {
            self.queued.push_front(entry);
            return Err(Desync("unexpected collision"));
        }
        self.inflight.entry(pkid).or_default().push_back(entry);
        self.collided = Some(pkid);
        Ok(())
    }

    /// PUBACK: ends the oldest QoS 1 publish in flight under `pkid`.
    pub fn on_puback(&mut self, pkid: u16, outcome: Result<bool, BrokerError>) -> bool {
        self.take(pkid, |e| e.qos == QoS::AtLeastOnce)
            .map(|entry| entry.resolve(outcome))
            .is_some()
    }

    /// PUBREC: a QoS 2 publish is stored; a failure ends it at once.
    pub fn on_pubrec(&mut self, pkid: u16, outcome: Result<(), BrokerError>) -> bool {
        let is_unreleased = |e: &Entry| e.qos == QoS::ExactlyOnce && !e.released;
        match outcome {
            Ok(()) => match self
                .inflight
                .get_mut(&pkid)
                .and_then(|queue| queue.iter_mut().find(|e| is_unreleased(e)))
            {
                Some(entry) => {
                    entry.released = true;
                    true
                }
                None => false,
            },
            Err(error) => self
                .take(pkid, is_unreleased)
                .map(|entry| entry.resolve(Err(error)))
                .is_some(),
        }
    }

    /// PUBCOMP: ends the released QoS 2 publish in flight under `pkid`.
    pub fn on_pubcomp(&mut self, pkid: u16, outcome: Result<bool, BrokerError>) -> bool {
        self.take(pkid, |e| e.qos == QoS::ExactlyOnce && e.released)
            .map(|entry| entry.resolve(outcome))
            .is_some()
    }

    fn take(&mut self, pkid: u16, matches: impl Fn(&Entry) -> bool) -> Option<Entry> {
        let queue = self.inflight.get_mut(&pkid)?;
        let index = queue.iter().position(matches)?;
        let entry = queue.remove(index);
        if queue.is_empty() {
            self.inflight.remove(&pkid);
        }
        entry
    }

    /// The connection ended: everything unconfirmed waits for the next one, in publish order. Entries
    /// whose caller stopped waiting (and was told so) are dropped, releasing their slots.
    pub fn requeue(&mut self) {
        let mut all: Vec<Entry> = self.unsent.drain(..).collect();
        all.extend(self.queued.drain(..));
        all.extend(self.inflight.drain().flat_map(|(_, queue)| queue));
        self.collided = None;
        all.retain(|entry| !entry.reply.is_closed());
        all.sort_by_key(|entry| entry.id);
        for mut entry in all {
            entry.released = false;
            self.unsent.push_back(entry);
        }
    }

    /// Ends every publish with an error (the publisher is shutting down).
    pub fn fail_all(&mut self, error: impl Fn() -> BrokerError) {
        self.requeue();
        for entry in self.unsent.drain(..) {
            entry.resolve(Err(error()));
        }
    }

    /// How many publishes are not confirmed yet.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.unsent.len()
            + self.queued.len()
            + self.inflight.values().map(VecDeque::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, qos: QoS) -> (Entry, oneshot::Receiver<Outcome>) {
        let (reply, rx) = oneshot::channel();
        let entry = Entry {
            id,
            topic: "t/ns/q".into(),
            qos,
            payload: Bytes::from_static(b"x"),
            properties: PublishProperties::default(),
            reply,
            _permit: None,
            released: false,
        };
        (entry, rx)
    }

    fn confirmed(rx: &mut oneshot::Receiver<Outcome>) -> Option<u64> {
        match rx.try_recv() {
            Ok(Ok(c)) => Some(c.id),
            _ => None,
        }
    }

    #[test]
    fn qos1_and_qos0_resolve_in_the_order_rumqttc_reports() {
        let mut tracker = Tracker::default();
        let (a, mut ra) = entry(1, QoS::AtLeastOnce);
        let (b, mut rb) = entry(2, QoS::AtMostOnce);
        let (c, mut rc) = entry(3, QoS::AtLeastOnce);
        tracker.queued(a);
        tracker.queued(b);
        tracker.queued(c);
        tracker.on_sent(1).unwrap();
        tracker.on_sent(0).unwrap();
        assert_eq!(confirmed(&mut rb), Some(2));
        tracker.on_sent(2).unwrap();
        assert!(tracker.on_puback(2, Ok(true)));
        assert_eq!(confirmed(&mut rc), Some(3));
        assert_eq!(confirmed(&mut ra), None);
        assert!(tracker.on_puback(1, Ok(true)));
        assert_eq!(confirmed(&mut ra), Some(1));
        assert!(
            !tracker.on_puback(1, Ok(true)),
            "an unknown ack resolves nothing"
        );
        assert_eq!(tracker.len(), 0);
    }

    #[test]
    fn qos2_resolves_on_pubcomp_not_pubrec() {
        let mut tracker = Tracker::default();
        let (a, mut ra) = entry(1, QoS::ExactlyOnce);
        tracker.queued(a);
        tracker.on_sent(7).unwrap();
        assert!(tracker.on_pubrec(7, Ok(())));
        assert_eq!(confirmed(&mut ra), None);
        assert!(tracker.on_pubcomp(7, Ok(true)));
        assert_eq!(confirmed(&mut ra), Some(1));
    }

    #[test]
    fn a_collided_publish_waits_for_its_id_and_resolves_second() {
        let mut tracker = Tracker::default();
        let (a, mut ra) = entry(1, QoS::AtLeastOnce);
        let (b, mut rb) = entry(2, QoS::AtLeastOnce);
        tracker.queued(a);
        tracker.queued(b);
        tracker.on_sent(5).unwrap();
        tracker.on_collision(5).unwrap();
        assert!(tracker.on_puback(5, Ok(true)));
        tracker.on_sent(5).unwrap(); // the collided publish goes out now
        assert_eq!(confirmed(&mut ra), Some(1));
        assert_eq!(confirmed(&mut rb), None);
        assert!(tracker.on_puback(5, Ok(true)));
        assert_eq!(confirmed(&mut rb), Some(2));
    }

    #[test]
    fn a_qos1_ack_never_ends_a_qos2_publish_under_the_same_id() {
        let mut tracker = Tracker::default();
        let (a, mut ra) = entry(1, QoS::ExactlyOnce);
        let (b, mut rb) = entry(2, QoS::AtLeastOnce);
        tracker.queued(a);
        tracker.queued(b);
        tracker.on_sent(3).unwrap();
        tracker.on_pubrec(3, Ok(()));
        tracker.on_sent(3).unwrap();
        assert!(tracker.on_puback(3, Ok(true)));
        assert_eq!(confirmed(&mut rb), Some(2));
        assert_eq!(confirmed(&mut ra), None);
        assert!(tracker.on_pubcomp(3, Ok(true)));
        assert_eq!(confirmed(&mut ra), Some(1));
    }

    #[test]
    fn events_that_do_not_fit_are_a_desync() {
        let mut tracker = Tracker::default();
        assert!(tracker.on_sent(1).is_err());
        let (a, _ra) = entry(1, QoS::AtLeastOnce);
        tracker.queued(a);
        assert!(
            tracker.on_sent(0).is_err(),
            "QoS 1 cannot go out without an id"
        );
        assert_eq!(tracker.len(), 1);
    }

    #[test]
    fn requeue_keeps_publish_order_and_drops_abandoned_callers() {
        let mut tracker = Tracker::default();
        let (a, _ra) = entry(1, QoS::AtLeastOnce);
        let (b, rb) = entry(2, QoS::AtLeastOnce);
        let (c, _rc) = entry(3, QoS::ExactlyOnce);
        tracker.queued(a);
        tracker.queued(b);
        tracker.queued(c);
        tracker.on_sent(9).unwrap();
        tracker.on_sent(4).unwrap();
        tracker.on_sent(2).unwrap();
        tracker.on_pubrec(2, Ok(()));
        drop(rb);
        tracker.requeue();
        let ids: Vec<(u64, bool)> = tracker.unsent.iter().map(|e| (e.id, e.released)).collect();
        assert_eq!(ids, vec![(1, false), (3, false)]);
    }

    #[test]
    fn fail_all_tells_every_caller() {
        let mut tracker = Tracker::default();
        let (a, mut ra) = entry(1, QoS::AtLeastOnce);
        tracker.queued(a);
        tracker.fail_all(|| BrokerError::Closed("mqtt"));
        assert!(matches!(ra.try_recv(), Ok(Err(BrokerError::Closed(_)))));
    }
}
