//! Acting on one partition of the consumer: seeking it, halting it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::PartitionLogic;
use super::context::RuntimeContext;
use super::shared::{Shared, Tp};

/// Seeks one partition; the error, if the call or the partition failed.
pub(super) fn seek_one<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    key: &Tp,
    offset: Offset,
) -> std::result::Result<(), String> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&key.0, key.1, offset)
        .map_err(|e| e.to_string())?;
    // seek_partitions reports per-partition failures inside the returned list.
    match consumer.seek_partitions(tpl, Duration::from_secs(10)) {
        Err(e) => Err(e.to_string()),
        Ok(list) => list
            .elements()
            .iter()
            .find_map(|e| e.error().err().map(|e| e.to_string()))
            .map_or(Ok(()), Err),
    }
}

/// Halts a partition for the life of the process: its task stops, it is paused and listed
/// in the status with the reason.
pub(super) fn halt_partition<L: PartitionLogic>(
    shared: &Shared<L>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
    key: &Tp,
    reason: String,
) {
    tracing::error!(topic = %key.0, partition = key.1, %reason, "partition halted");
    let mut state = shared.state();
    if let Some(handle) = state.workers.get_mut(key) {
        handle.halted = true;
        handle.stop.store(true, Ordering::Release);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&key.0, key.1);
        if let Err(e) = consumer.pause(&tpl) {
            tracing::warn!(error = %e, "cannot pause halted partition");
        }
        handle.paused = true;
    }
    shared
        .settings
        .status
        .lock()
        .halted
        .push((key.0.to_string(), key.1, reason.clone()));
    state.halted.push((key.0.to_string(), key.1, reason));
}
