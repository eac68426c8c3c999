//! The identity of a partition inside choreo's transactional runtimes and rebuilds.
//!
//! The consumer runtime keys its partitions by `(Arc<str>, i32)` instead (cloned per record on
//! its hot path, where a shared topic name saves an allocation), and public status structs and
//! `PartitionLogic::start_offsets` keep their `(String, i32)` tuples (public API).

use std::fmt;

use super::record::Record;

/// A topic and one of its partitions; shown (and debug-printed) as `topic[partition]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TopicPartition {
    /// The topic's name.
    pub(crate) topic: String,
    /// The partition's number.
    pub(crate) partition: i32,
}

impl TopicPartition {
    /// `topic[partition]`.
    pub(crate) fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }

    /// The partition `record` came from.
    pub(crate) fn of(record: &Record) -> Self {
        Self::new(record.topic(), record.partition())
    }

    /// As the `(topic, partition)` tuple of the public status structs.
    pub(crate) fn to_tuple(&self) -> (String, i32) {
        (self.topic.clone(), self.partition)
    }
}

impl fmt::Debug for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_as_topic_and_partition_in_brackets() {
        let tp = TopicPartition::new("user.events", 3);
        assert_eq!(tp.to_string(), "user.events[3]");
        assert_eq!(format!("{:?}", [&tp]), "[user.events[3]]");
        assert_eq!(tp.to_tuple(), ("user.events".to_owned(), 3));
    }
}
