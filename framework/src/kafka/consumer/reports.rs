//! The partition tasks' reports, applied on the poll thread (or in a revoke, which waits for
//! them).

use std::collections::HashMap;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::PartitionLogic;
use super::context::RuntimeContext;
use super::partition::{halt_partition, seek_one};
use super::shared::{Report, ReportKind, WorkerHandle};
use super::shared::{Shared, Tp};

/// Applies the reports that have come in, without waiting for more.
pub(super) fn drain_reports<L: PartitionLogic>(
    shared: &Shared<L>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
) {
    loop {
        let report = {
            let rx = shared
                .reports_rx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            rx.try_recv()
        };
        match report {
            Ok(report) => handle_report(shared, consumer, report, &mut HashMap::new(), false),
            Err(_) => break,
        }
    }
}

/// Applies a task's report. `revoking` holds the tasks of partitions being revoked right now.
pub(super) fn handle_report<L: PartitionLogic>(
    shared: &Shared<L>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
    report: Report,
    revoking: &mut HashMap<Tp, WorkerHandle>,
    lost: bool,
) {
    let Report {
        key,
        generation,
        kind,
    } = report;
    let mut state = shared.state();
    let current = state
        .workers
        .get(&key)
        .is_some_and(|h| h.generation == generation);
    let being_revoked = revoking
        .get(&key)
        .is_some_and(|h| h.generation == generation);
    if !current && !being_revoked {
        // From a task of an earlier assignment of this partition: stale.
        return;
    }
    match kind {
        ReportKind::Store(offset) => {
            if !shared.settings.commit_offsets || (being_revoked && lost) {
                return;
            }
            let mut tpl = TopicPartitionList::new();
            let _ = tpl.add_partition_offset(&key.0, key.1, Offset::Offset(offset));
            match consumer.store_offsets(&tpl) {
                Ok(()) => {
                    state.stored.insert(key, offset);
                }
                Err(e) => {
                    tracing::warn!(topic = %key.0, partition = key.1, offset, error = %e, "storing offset failed")
                }
            }
        }
        ReportKind::Seek(offset, epoch) => {
            if being_revoked {
                return;
            }
            if let Some(handle) = state.workers.get_mut(&key) {
                handle.epoch = epoch;
            }
            drop(state);
            if let Err(error) = seek_one(consumer, &key, Offset::Offset(offset)) {
                halt_partition(
                    shared,
                    consumer,
                    &key,
                    format!("seek to {offset} failed: {error}"),
                );
            }
        }
        ReportKind::Halt(reason) => {
            if let Some(handle) = revoking.get_mut(&key) {
                handle.exited = true;
            }
            drop(state);
            if current {
                halt_partition(shared, consumer, &key, reason);
            }
        }
        ReportKind::Fatal(reason) => {
            drop(state);
            shared.fail(reason);
        }
        ReportKind::Exited => {
            if let Some(handle) = revoking.get_mut(&key) {
                handle.exited = true;
            }
            if let Some(handle) = state.workers.get_mut(&key) {
                handle.exited = true;
            }
        }
    }
}
