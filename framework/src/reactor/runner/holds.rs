//! Partitions held back by a transiently failing event: paused, rewound to that event, and
//! resumed after a back-off (doubling per failure, 100 ms to 5 s), while the others go on.

use std::collections::HashMap;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::topic_partition_list::TopicPartitionList;

use super::status::{ReactorStatus, lock};
use super::{RETRY, TopicPartition};
use crate::backoff::Backoff;
use crate::error::Result;
use crate::kafka::Record;
use crate::kafka::transaction::{rewind, starts};

/// Partitions held back by a transiently failing event: paused until their back-off ends.
#[derive(Default)]
pub(super) struct Holds {
    /// When each held partition resumes.
    until: HashMap<TopicPartition, std::time::Instant>,
    /// The current back-off of partitions that failed lately (doubles per failure, cleared
    /// by a committed event of that partition).
    backoff: HashMap<TopicPartition, Backoff>,
}

impl Holds {
    /// Holds `tp` back at `offset`: paused for its back-off, listed as retrying with `reason`.
    pub(super) fn hold<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        status: &ReactorStatus,
        tp: TopicPartition,
        offset: i64,
        reason: String,
    ) {
        let delay = self.backoff.entry(tp.clone()).or_insert(RETRY).next();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.topic, tp.partition);
        if let Err(e) = consumer.pause(&tpl) {
            // Not paused: its next records come at once and fail again (still never skipped).
            tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e, "cannot pause a held partition");
        }
        tracing::warn!(topic = %tp.topic, partition = tp.partition, offset, %reason, retry_in = ?delay,
            "transient failure; this partition waits and retries the event, the others go on");
        let mut retrying = lock(&status.inner.retrying);
        retrying.retain(|(t, p, _)| !(*t == tp.topic && *p == tp.partition));
        retrying.push((tp.topic.clone(), tp.partition, reason));
        self.until.insert(tp, std::time::Instant::now() + delay);
    }

    /// Resumes the partitions whose back-off is over.
    pub(super) fn release_due<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        status: &ReactorStatus,
    ) {
        let now = std::time::Instant::now();
        let due: Vec<TopicPartition> = self
            .until
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in due {
            self.until.remove(&tp);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.topic, tp.partition);
            if let Err(e) = consumer.resume(&tpl) {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e, "cannot resume a held partition");
            }
            lock(&status.inner.retrying)
                .retain(|(t, p, _)| !(*t == tp.topic && *p == tp.partition));
        }
    }

    /// Takes the records of held partitions out of a batch (a pause does not empty what was
    /// already fetched) and rewinds those partitions to their first such record: they are
    /// read again once resumed.
    pub(super) fn hold_back<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        batch: Vec<Record>,
    ) -> Result<Vec<Record>> {
        if self.until.is_empty() {
            return Ok(batch);
        }
        let (held, go): (Vec<Record>, Vec<Record>) = batch
            .into_iter()
            .partition(|r| self.until.contains_key(&TopicPartition::of(r)));
        rewind(consumer, &starts(&held))?;
        Ok(go)
    }

    /// Partitions that committed an event are healthy again.
    pub(super) fn succeeded(&mut self, committed: &[TopicPartition]) {
        for tp in committed {
            self.backoff.remove(tp);
        }
    }

    /// Forgets partitions no longer assigned.
    pub(super) fn forget_unassigned(
        &mut self,
        assigned: &HashMap<TopicPartition, u64>,
        status: &ReactorStatus,
    ) {
        self.until.retain(|tp, _| assigned.contains_key(tp));
        self.backoff.retain(|tp, _| assigned.contains_key(tp));
        lock(&status.inner.retrying)
            .retain(|(t, p, _)| assigned.contains_key(&TopicPartition::new(t.as_str(), *p)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KafkaConfig;
    use std::time::Duration;
    use std::time::Instant;

    /// A consumer that never connects (nothing listens on port 1); pausing a partition it
    /// does not own fails, which `hold` logs and goes on.
    fn consumer() -> BaseConsumer {
        KafkaConfig::new("127.0.0.1:1")
            .client_config(&[("group.id", "unit")])
            .create()
            .expect("consumer")
    }

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition::new("user.events", partition)
    }

    #[test]
    fn the_back_off_doubles_per_failure_up_to_five_seconds_until_an_event_commits() {
        let (consumer, status) = (consumer(), ReactorStatus::default());
        let mut holds = Holds::default();
        let mut delays = Vec::new();
        for _ in 0..8 {
            holds.hold(&consumer, &status, tp(0), 7, "down".into());
            delays.push(holds.backoff[&tp(0)].current().as_millis());
        }
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        holds.succeeded(&[tp(0)]);
        holds.hold(&consumer, &status, tp(0), 7, "down".into());
        assert_eq!(holds.backoff[&tp(0)].current(), Duration::from_millis(100));
    }

    #[test]
    fn a_held_partition_is_listed_once_with_its_last_reason_until_released() {
        let (consumer, status) = (consumer(), ReactorStatus::default());
        let mut holds = Holds::default();
        holds.hold(&consumer, &status, tp(0), 7, "first".into());
        holds.hold(&consumer, &status, tp(0), 7, "second".into());
        holds.hold(&consumer, &status, tp(1), 3, "other".into());
        assert_eq!(
            status.retrying(),
            vec![
                ("user.events".to_owned(), 0, "second".to_owned()),
                ("user.events".to_owned(), 1, "other".to_owned()),
            ]
        );
        // Not due yet: nothing released.
        holds.release_due(&consumer, &status);
        assert_eq!(status.retrying().len(), 2);
        // Partition 0's back-off is over.
        holds.until.insert(tp(0), Instant::now());
        holds.release_due(&consumer, &status);
        assert!(!holds.until.contains_key(&tp(0)));
        assert_eq!(
            status.retrying(),
            vec![("user.events".to_owned(), 1, "other".to_owned())]
        );
        // Its back-off stays until one of its events commits.
        assert!(holds.backoff.contains_key(&tp(0)));
    }

    #[test]
    fn partitions_no_longer_assigned_are_forgotten() {
        let (consumer, status) = (consumer(), ReactorStatus::default());
        let mut holds = Holds::default();
        holds.hold(&consumer, &status, tp(0), 7, "down".into());
        holds.hold(&consumer, &status, tp(1), 3, "down".into());
        let assigned = HashMap::from([(tp(1), 1u64)]);
        holds.forget_unassigned(&assigned, &status);
        assert_eq!(holds.until.keys().collect::<Vec<_>>(), [&tp(1)]);
        assert_eq!(holds.backoff.keys().collect::<Vec<_>>(), [&tp(1)]);
        assert_eq!(status.retrying().len(), 1);
        assert_eq!(status.retrying()[0].1, 1);
    }

    #[test]
    fn with_nothing_held_a_batch_goes_through_whole() {
        use rdkafka::message::{OwnedMessage, Timestamp};
        let consumer = consumer();
        let batch: Vec<Record> = (0..3)
            .map(|offset| {
                let message = OwnedMessage::new(
                    None,
                    None,
                    "user.events".into(),
                    Timestamp::NotAvailable,
                    0,
                    offset,
                    None,
                );
                Record::copy(&message, std::sync::Arc::from("user.events"))
            })
            .collect();
        let go = Holds::default()
            .hold_back(&consumer, batch)
            .expect("nothing to rewind");
        assert_eq!(go.iter().map(Record::offset).collect::<Vec<_>>(), [0, 1, 2]);
    }
}
