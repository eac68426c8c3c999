//! Rebalances: an assignment restores each partition before its commands are handled; a
//! revoke parks the partitions' committed state for a quick reassignment.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::memory::Entry;
use super::{Shared, lock};
use crate::aggregate::Aggregate;
use crate::kafka::consumer::forward_log;

/// State of revoked partitions: aggregates, the events offset they reflect, when parked.
pub(super) type ParkedState<A> = HashMap<i32, (HashMap<String, Entry<A>>, i64, std::time::Instant)>;

/// How long a revoked partition's state is kept for a quick reassignment.
pub(super) const PARKED_FOR: Duration = Duration::from_secs(60);

/// Drops parked state older than `max_age`: the memory of partitions that did not come back is
/// returned on time, not at the next revoke (the processing loop calls this about once a
/// second). Returns how many partitions' state it dropped.
pub(super) fn expire_parked<A: Aggregate>(shared: &Shared<A>, max_age: Duration) -> usize {
    let mut parked = lock(&shared.parked);
    let before = parked.len();
    parked.retain(|_, (_, _, at)| at.elapsed() < max_age);
    before - parked.len()
}

pub(super) struct ProcessorContext<A: Aggregate> {
    pub(super) shared: Arc<Shared<A>>,
}

impl<A: Aggregate> ClientContext for ProcessorContext<A> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }
}

impl<A: Aggregate> ConsumerContext for ProcessorContext<A> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let generation = self.shared.rebalances.fetch_add(1, Ordering::AcqRel) + 1;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assigned(consumer, &partitions, generation);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoked(consumer, tpl, &partitions);
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

impl<A: Aggregate> ProcessorContext<A> {
    /// Restores the newly assigned partitions, then assigns them from where their commands
    /// start; a partition whose restore fails is halted: assigned, but paused.
    fn assigned(&self, consumer: &BaseConsumer<Self>, partitions: &[i32], generation: u64) {
        // Restores run one after another in this callback: every partition of the
        // assignment counts as restoring until its own restore ends.
        self.shared.status.restoring(partitions, true);
        let mut assign = TopicPartitionList::new();
        let mut halted_now = Vec::new();
        for p in partitions {
            match self.restore(consumer, *p) {
                Ok(start) => {
                    let _ = assign.add_partition_offset(&self.shared.commands_topic, *p, start);
                    lock(&self.shared.status.inner.ready).push(*p);
                    lock(&self.shared.assigned_at).insert(*p, generation);
                }
                Err(reason) => {
                    tracing::error!(partition = p, %reason, "partition halted");
                    lock(&self.shared.halted).insert(*p, reason.clone());
                    lock(&self.shared.status.inner.halted).push((*p, reason));
                    let _ =
                        assign.add_partition_offset(&self.shared.commands_topic, *p, Offset::End);
                    halted_now.push(*p);
                }
            }
            // Only now, with p listed as ready or halted: a reader never sees p in
            // neither list.
            self.shared.status.restored(*p);
        }
        if let Err(e) = consumer.incremental_assign(&assign) {
            self.fail(format!("incremental_assign failed: {e}"));
        }
        // Halted partitions stay assigned (the group needs an owner) but paused.
        let mut pause = TopicPartitionList::new();
        for p in halted_now {
            pause.add_partition(&self.shared.commands_topic, p);
        }
        if pause.count() > 0 {
            let _ = consumer.pause(&pause);
        }
        self.update_count();
    }

    /// Forgets the revoked partitions (their state parked) and unassigns them.
    fn revoked(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, partitions: &[i32]) {
        // No transaction is open here: we never poll inside one. The revoked
        // partitions' committed state is parked with the events offset it reflects,
        // so a quick reassignment (a rolling restart of another instance, say) only
        // reads what was written meanwhile.
        self.park(partitions);
        lock(&self.shared.halted).retain(|p, _| !partitions.contains(p));
        lock(&self.shared.status.inner.ready).retain(|p| !partitions.contains(p));
        lock(&self.shared.assigned_at).retain(|p, _| !partitions.contains(p));
        lock(&self.shared.since_snapshot).retain(|p, _| !partitions.contains(p));
        lock(&self.shared.status.inner.halted).retain(|(p, _)| !partitions.contains(p));
        for p in partitions {
            self.shared.status.restored(*p);
        }
        let _ = consumer.resume(tpl);
        if let Err(e) = consumer.incremental_unassign(tpl) {
            tracing::error!(error = %e, "incremental_unassign failed");
        }
        self.update_count();
    }

    fn fail(&self, reason: String) {
        tracing::error!(%reason, "command processor stopping");
        lock(&self.shared.fatal).get_or_insert(reason);
        self.shared.shutdown.trigger();
    }

    /// Moves the committed state of revoked partitions aside, tagged with the events offset it
    /// reflects (halted partitions' state is incomplete and dropped); drops parked state older
    /// than [`PARKED_FOR`].
    fn park(&self, partitions: &[i32]) {
        let shared = &self.shared;
        let since = lock(&shared.since_snapshot);
        let halted = lock(&shared.halted);
        let mut state = lock(&shared.state);
        let mut parked = lock(&shared.parked);
        parked.retain(|_, (_, _, at)| at.elapsed() < PARKED_FOR);
        for p in partitions {
            let entries: HashMap<String, Entry<A>> = state
                .extract_if(|(q, _), _| q == p)
                .map(|((_, id), entry)| (id, entry))
                .collect();
            if let (Some((_, last)), false) = (since.get(p), halted.contains_key(p)) {
                parked.insert(*p, (entries, last + 1, std::time::Instant::now()));
            }
        }
    }

    /// Parked state of `p` if it is recent and its offset lies within the log.
    pub(super) fn unpark(
        &self,
        p: i32,
        low: i64,
        end: i64,
    ) -> Option<(HashMap<String, Entry<A>>, i64)> {
        let (entries, offset, at) = lock(&self.shared.parked).remove(&p)?;
        if at.elapsed() >= PARKED_FOR || offset < low || offset > end {
            return None;
        }
        self.shared
            .status
            .inner
            .parked_reused
            .fetch_add(1, Ordering::Relaxed);
        Some((entries, offset))
    }

    pub(super) fn update_count(&self) {
        let n = lock(&self.shared.state).len() as u64;
        self.shared
            .status
            .inner
            .aggregates
            .store(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::processor::test_support::{Tally, shared};

    fn context_with_state() -> ProcessorContext<Tally> {
        let context = ProcessorContext {
            shared: Arc::new(shared()),
        };
        let mut state = lock(&context.shared.state);
        for (p, id) in [(0, "a"), (0, "b"), (1, "c"), (2, "d")] {
            let entry = Entry {
                state: Tally { total: 1 },
                version: 1,
                ..Entry::default()
            };
            state.insert((p, id.to_owned()), entry);
        }
        drop(state);
        context
    }

    #[test]
    fn a_revoked_partition_is_parked_with_the_offset_after_its_last_event() {
        let context = context_with_state();
        let shared = &context.shared;
        lock(&shared.since_snapshot).extend([(0, (3, 41)), (1, (0, 9)), (2, (0, 5))]);
        lock(&shared.halted).insert(1, "gap".into());
        context.park(&[0, 1]);

        let state = lock(&shared.state);
        assert_eq!(state.keys().collect::<Vec<_>>(), vec![&(2, "d".to_owned())]);
        drop(state);
        let parked = lock(&shared.parked);
        assert_eq!(
            parked.len(),
            1,
            "a halted partition's state is incomplete: dropped"
        );
        let (entries, offset, _) = &parked[&0];
        assert_eq!(*offset, 42);
        let mut ids: Vec<&String> = entries.keys().collect();
        ids.sort();
        assert_eq!(ids, vec!["a", "b"]);
    }

    #[test]
    fn parked_state_is_taken_back_once_if_its_offset_is_within_the_log() {
        let context = context_with_state();
        let shared = &context.shared;
        lock(&shared.since_snapshot).extend([(0, (3, 41)), (2, (0, 5))]);
        context.park(&[0, 2]);

        let (entries, offset) = context.unpark(0, 0, 50).expect("parked");
        assert_eq!((entries.len(), offset), (2, 42));
        assert!(context.unpark(0, 0, 50).is_none(), "taken once");
        assert_eq!(shared.status.parked_reused(), 1);
        // events[2] was recreated meanwhile: it ends before the parked offset.
        assert!(context.unpark(2, 0, 3).is_none());
        assert!(lock(&shared.parked).is_empty());
        assert_eq!(shared.status.parked_reused(), 1);
    }

    #[test]
    fn parked_state_expires_on_time_without_another_revoke() {
        let context = context_with_state();
        let shared = &context.shared;
        lock(&shared.since_snapshot).extend([(0, (3, 41)), (2, (0, 5))]);
        context.park(&[0, 2]);
        assert_eq!(expire_parked(shared, PARKED_FOR), 0, "fresh state stays");
        assert_eq!(lock(&shared.parked).len(), 2);
        assert_eq!(expire_parked(shared, Duration::ZERO), 2, "old state goes");
        assert!(lock(&shared.parked).is_empty());
        assert!(context.unpark(0, 0, 50).is_none());
    }

    #[test]
    fn the_aggregate_count_follows_the_committed_state() {
        let context = context_with_state();
        context.update_count();
        assert_eq!(context.shared.status.aggregates_in_memory(), 4);
    }
}
