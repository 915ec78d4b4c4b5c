//! The broker's topics, found on every publish. They are indexed by a short digest of the scheme
//! and last segment, and confirmed by comparing the whole name: hashing every segment of the name
//! on each publish was a tenth of a publish's cost.

use std::hash::Hasher;
use std::sync::Arc;

use worker_core::Topic;

use super::hash::{FastHasher, FastMap};
use super::topic::TopicShared;

/// Topics by name. Names that share a digest share a bucket.
#[derive(Debug, Default)]
pub(super) struct TopicRegistry {
    by_digest: FastMap<u64, Vec<(Topic, Arc<TopicShared>)>>,
    len: usize,
}

impl TopicRegistry {
    pub(super) fn get(&self, topic: &Topic) -> Option<&Arc<TopicShared>> {
        let bucket = self.by_digest.get(&digest(topic))?;
        bucket.iter().find(|(t, _)| t == topic).map(|(_, s)| s)
    }

    /// The topic, created by `create` on first use.
    pub(super) fn get_or_insert_with(
        &mut self,
        topic: &Topic,
        create: impl FnOnce() -> TopicShared,
    ) -> &Arc<TopicShared> {
        let bucket = self.by_digest.entry(digest(topic)).or_default();
        let index = match bucket.iter().position(|(t, _)| t == topic) {
            Some(index) => index,
            None => {
                bucket.push((topic.clone(), Arc::new(create())));
                self.len += 1;
                bucket.len() - 1
            }
        };
        &bucket[index].1
    }

    /// How many topics exist.
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

/// The scheme and the last segment: what usually tells topics apart, and short to hash.
fn digest(topic: &Topic) -> u64 {
    let mut hasher = FastHasher::default();
    hasher.write_u8(topic.scheme() as u8);
    hasher.write(topic.name().as_bytes());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::topic::Limits;

    fn shared(name: &str) -> TopicShared {
        let limits = Limits {
            max_retained: 10,
            ack_timeout: None,
        };
        TopicShared::new(name.into(), limits)
    }

    #[test]
    fn topics_differing_only_outside_the_digest_stay_apart() {
        let mut registry = TopicRegistry::default();
        let a = Topic::parse("q1/tenant-a/ns/jobs").expect("valid");
        let b = Topic::parse("q1/tenant-b/ns/jobs").expect("valid");
        let first = Arc::clone(registry.get_or_insert_with(&a, || shared("a")));
        let second = Arc::clone(registry.get_or_insert_with(&b, || shared("b")));
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(registry.len(), 2);
        assert!(registry.get(&a).is_some_and(|t| Arc::ptr_eq(t, &first)));
        assert!(registry.get(&b).is_some_and(|t| Arc::ptr_eq(t, &second)));
        let again = registry.get_or_insert_with(&a, || shared("unused"));
        assert!(Arc::ptr_eq(again, &first));
        assert_eq!(registry.len(), 2);
        assert!(registry
            .get(&Topic::parse("q2/tenant-a/ns/jobs").expect("valid"))
            .is_none());
    }
}
