//! Rebalances: an assignment starts its partitions where they should start, a revoke lets
//! their tasks finish and commits their offsets before the partitions go.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::context::RuntimeContext;
use super::partition::halt_partition;
use super::reports::handle_report;
use super::shared::WorkerHandle;
use super::shared::{Shared, Tp};
use super::start_lookup::wait_for_start;
use super::worker::spawn_worker;
use super::{PartitionLogic, StartOffset};

impl<L: PartitionLogic> ConsumerContext for RuntimeContext<L> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                tracing::error!(group = %self.shared.settings.group_id, error = ?other, "rebalance error; releasing the assignment");
                if let Ok(assigned) = consumer.assignment() {
                    self.revoke(consumer, &mut assigned.clone());
                }
            }
        }
    }
}

impl<L: PartitionLogic> RuntimeContext<L> {
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let shared = &self.shared;
        let partitions: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        tracing::info!(group = %shared.settings.group_id, ?partitions, "partitions assigned");
        let offsets = self.start_offsets(&partitions);
        let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let mut assign = TopicPartitionList::with_capacity(partitions.len());
        let mut halt = Vec::new();
        let mut waiting: Vec<Tp> = Vec::new();
        {
            let mut state = shared.state();
            for (i, (topic, partition)) in partitions.iter().enumerate() {
                let key: Tp = (Arc::from(topic.as_str()), *partition);
                let offset = match &offsets {
                    Ok(offsets) => {
                        let start = offsets.get(i).cloned().unwrap_or(StartOffset::Committed);
                        let (offset, halt_reason) = assign_offset(start);
                        if let Some(reason) = halt_reason {
                            halt.push((key.clone(), reason));
                        }
                        offset
                    }
                    Err(_) => {
                        // At the log start rather than the committed offset: the fetcher then
                        // starts at once (no offset fetch, no auto.offset.reset), so the seek
                        // that starts the partition later is accepted. Nothing is dispatched
                        // until then.
                        waiting.push(key.clone());
                        Offset::Beginning
                    }
                };
                if let Err(e) = assign.add_partition_offset(topic, *partition, offset) {
                    tracing::error!(%topic, partition, error = %e, "cannot set start offset");
                }
                match spawn_worker(shared, key.clone(), generation) {
                    Ok(handle) => {
                        state.workers.insert(key, handle);
                    }
                    Err(reason) => {
                        drop(state);
                        shared.fail(reason);
                        state = shared.state();
                    }
                }
            }
        }
        {
            let mut status = shared.settings.status.lock();
            status.assigned.extend(partitions.iter().cloned());
            status.joined = true;
        }
        // Exactly one incremental_assign, with the offsets in it; no seek afterwards.
        if let Err(e) = consumer.incremental_assign(&assign) {
            shared.fail(format!("incremental_assign failed: {e}"));
        }
        // An application pause survives unassign/reassign in librdkafka: a partition paused
        // by flow control when it was revoked would come back paused forever.
        if let Err(e) = consumer.resume(&assign) {
            tracing::warn!(error = %e, "resuming newly assigned partitions failed");
        }
        for (key, reason) in halt {
            halt_partition(shared, consumer, &key, reason);
        }
        if let Err(e) = &offsets {
            tracing::warn!(group = %shared.settings.group_id, error = %e, partitions = ?waiting,
                "start offsets unavailable; the partitions wait, paused, and the lookup goes on in the background");
            for key in &waiting {
                wait_for_start(shared, consumer, key, &e.to_string());
            }
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let shared = &self.shared;
        let lost = consumer.assignment_lost();
        let revoked: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        tracing::info!(group = %shared.settings.group_id, partitions = ?revoked, lost, "partitions revoked");
        if lost {
            // A drill holds here a zombie that has not learnt yet that its partitions are
            // gone, while its partition tasks go on.
            crate::failpoint::hold("consumer.revoke_lost");
        }
        // Tell the tasks to stop after their batch and wait for them, so their offsets are
        // stored before we commit and give the partitions away. A lost assignment is already
        // owned by someone else: stop at once.
        let mut waiting = stop_tasks(shared, &revoked);
        let timeout = if lost {
            Duration::ZERO
        } else {
            shared.settings.revoke_timeout
        };
        wait_for_tasks(shared, consumer, &mut waiting, timeout, lost);
        abort_busy_tasks(shared, &mut waiting, lost);
        drop(waiting);
        if shared.settings.commit_offsets && !lost {
            commit_stored(shared, consumer, &revoked);
        }
        forget(shared, &revoked);
        // Leave no application pause behind (see assign).
        let _ = consumer.resume(tpl);
        if let Err(e) = consumer.incremental_unassign(tpl) {
            tracing::error!(error = %e, "incremental_unassign failed");
        }
    }
}

/// Where an assigned partition is placed in `incremental_assign` for the logic's answer, and
/// the reason when the answer is to halt it (assigned at the committed offset, then halted).
fn assign_offset(start: StartOffset) -> (Offset, Option<String>) {
    match start {
        StartOffset::Committed => (Offset::Stored, None),
        StartOffset::Beginning => (Offset::Beginning, None),
        StartOffset::At(o) => (Offset::Offset(o), None),
        StartOffset::Halt(reason) => (Offset::Stored, Some(reason)),
    }
}

/// Takes the revoked partitions' tasks out of the state and tells them to stop after their
/// batch (their queues close).
fn stop_tasks<L: PartitionLogic>(shared: &Shared<L>, revoked: &[Tp]) -> HashMap<Tp, WorkerHandle> {
    let mut waiting: HashMap<Tp, WorkerHandle> = HashMap::new();
    let mut state = shared.state();
    for key in revoked {
        if let Some(mut handle) = state.workers.remove(key) {
            handle.stop.store(true, Ordering::Release);
            handle.tx = None;
            waiting.insert(key.clone(), handle);
        }
    }
    waiting
}

/// Applies reports until every task in `waiting` has exited or `timeout` has passed.
fn wait_for_tasks<L: PartitionLogic>(
    shared: &Shared<L>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
    waiting: &mut HashMap<Tp, WorkerHandle>,
    timeout: Duration,
    lost: bool,
) {
    let deadline = Instant::now() + timeout;
    while waiting.values().any(|h| !h.exited) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let report = {
            let rx = shared
                .reports_rx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            rx.recv_timeout(left)
        };
        match report {
            Ok(report) => handle_report(shared, consumer, report, waiting, lost),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// Aborts the tasks that have not exited, waiting (bounded) for each abort.
fn abort_busy_tasks<L: PartitionLogic>(
    shared: &Shared<L>,
    waiting: &mut HashMap<Tp, WorkerHandle>,
    lost: bool,
) {
    for (key, handle) in waiting {
        if !handle.exited
            && let Some(task) = handle.task.take()
        {
            tracing::warn!(topic = %key.0, partition = key.1, lost, "partition task still busy; aborting it (its batch is not committed and will be redelivered)");
            task.abort();
            // Wait (bounded) until the abort took effect, so the aborted task does not run on
            // while the partition belongs to someone else.
            let _ = shared
                .handle
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
        }
    }
}

/// Commits, synchronously, the offsets stored for the revoked partitions.
fn commit_stored<L: PartitionLogic>(
    shared: &Shared<L>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
    revoked: &[Tp],
) {
    let mut commit = TopicPartitionList::new();
    {
        let state = shared.state();
        for key in revoked {
            if let Some(offset) = state.stored.get(key) {
                let _ = commit.add_partition_offset(&key.0, key.1, Offset::Offset(*offset));
            }
        }
    }
    if commit.count() > 0
        && let Err(e) = consumer.commit(&commit, CommitMode::Sync)
    {
        tracing::warn!(error = %e, "committing offsets of revoked partitions failed; the next owner may see some records again");
    }
}

/// Drops the revoked partitions' stored offsets and takes them out of the status: assigned,
/// waiting and halted alike (a halted partition that moved to another member no longer keeps
/// this one from being ready; the run's summary still lists the halt). When the runtime is
/// stopping, halts stay in the status: it then says why the run had partitions halted.
fn forget<L: PartitionLogic>(shared: &Shared<L>, revoked: &[Tp]) {
    let mut state = shared.state();
    for key in revoked {
        state.stored.remove(key);
    }
    let gone = |t: &str, p: i32| revoked.iter().any(|(rt, rp)| **rt == *t && *rp == p);
    let mut status = shared.settings.status.lock();
    status.assigned.retain(|(t, p)| !gone(t, *p));
    status.waiting.retain(|(t, p, _)| !gone(t, *p));
    if !shared.stopping() {
        status.halted.retain(|(t, p, _)| !gone(t, *p));
    }
    status.retrying.retain(|(t, p, _, _)| !gone(t, *p));
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use super::*;
    use crate::kafka::consumer::{Batch, ConsumerSettings, PartitionControl, WorkerOutcome};
    use crate::shutdown::Shutdown;

    struct Idle;

    impl PartitionLogic for Idle {
        type Worker = Idle;

        fn start_offsets(
            &self,
            partitions: &[(String, i32)],
        ) -> impl Future<Output = crate::error::Result<Vec<StartOffset>>> + Send {
            let n = partitions.len();
            async move { Ok(vec![StartOffset::Committed; n]) }
        }

        fn worker(&self, _topic: &str, _partition: i32) -> Idle {
            Idle
        }
    }

    impl crate::kafka::consumer::PartitionWorker for Idle {
        async fn process(&mut self, _batch: Batch, _control: &PartitionControl) -> WorkerOutcome {
            WorkerOutcome::Processed { next_offset: None }
        }
    }

    #[tokio::test]
    async fn a_revoked_partition_leaves_the_status_halted_or_not() {
        let settings = ConsumerSettings::new("g", vec!["t".into()]);
        let status = settings.status.clone();
        let shutdown = Shutdown::new();
        let shared = Shared::new(
            std::sync::Arc::new(Idle),
            settings,
            shutdown.clone(),
            Duration::from_secs(1),
        );
        {
            let mut inner = status.lock();
            inner.joined = true;
            inner
                .assigned
                .extend([("t".to_owned(), 0), ("t".to_owned(), 1)]);
            inner.halted.push(("t".to_owned(), 0, "poison".to_owned()));
            inner
                .waiting
                .push(("t".to_owned(), 1, "no database".to_owned()));
        }
        shared
            .state()
            .halted
            .push(("t".to_owned(), 0, "poison".to_owned()));
        assert!(!status.is_ready());
        forget(&shared, &[(std::sync::Arc::from("t"), 0)]);
        assert!(status.halted().is_empty(), "the halt moved away with p0");
        assert_eq!(status.assigned(), [("t".to_owned(), 1)]);
        assert!(!status.is_ready(), "p1 still waits");
        forget(&shared, &[(std::sync::Arc::from("t"), 1)]);
        assert!(
            status.is_ready(),
            "nothing of this member is halted or waiting"
        );
        assert_eq!(
            shared.state().halted.len(),
            1,
            "the run's summary keeps the halt"
        );
        // Revoked as the runtime stops: the status keeps saying why it had a halt.
        status
            .lock()
            .halted
            .push(("t".to_owned(), 2, "poison".to_owned()));
        shutdown.trigger();
        forget(&shared, &[(std::sync::Arc::from("t"), 2)]);
        assert_eq!(status.halted().len(), 1);
    }

    #[test]
    fn the_logic_answer_becomes_the_assigned_offset() {
        assert_eq!(
            assign_offset(StartOffset::Committed),
            (Offset::Stored, None)
        );
        assert_eq!(
            assign_offset(StartOffset::Beginning),
            (Offset::Beginning, None)
        );
        assert_eq!(
            assign_offset(StartOffset::At(17)),
            (Offset::Offset(17), None)
        );
        assert_eq!(
            assign_offset(StartOffset::Halt("checkpoint beyond the log".into())),
            (Offset::Stored, Some("checkpoint beyond the log".to_owned()))
        );
    }
}
