//! The consumer's rebalance callbacks: assigned partitions start at the committed offsets
//! (or at their current end with `StartFrom::End`), revoked ones are let go. Both run
//! between polls, never inside a transaction.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::status::lock;
use super::{Shared, StartFrom, TopicPartition};
use crate::kafka::consumer::forward_log;
use crate::reactor::Reactor;

pub(super) struct ReactorContext<R: Reactor> {
    pub(super) shared: Arc<Shared<R>>,
}

impl<R: Reactor> ClientContext for ReactorContext<R> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }
}

impl<R: Reactor> ConsumerContext for ReactorContext<R> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let shared = &self.shared;
        let partitions: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| TopicPartition::new(e.topic(), e.partition()))
            .collect();
        let generation = shared.rebalances.fetch_add(1, Ordering::AcqRel) + 1;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                assign(shared, consumer, tpl, &partitions, generation);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                revoke(shared, consumer, tpl, &partitions);
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

/// Takes newly assigned partitions; a failure stops the reactor (through `fatal`).
fn assign<R: Reactor>(
    shared: &Shared<R>,
    consumer: &BaseConsumer<ReactorContext<R>>,
    tpl: &mut TopicPartitionList,
    partitions: &[TopicPartition],
    generation: u64,
) {
    // The committed offsets (stable ones: read_committed) are where we start.
    if shared.start == StartFrom::End
        && let Err(reason) = start_new_partitions_at_end(shared, consumer, tpl)
    {
        // Guessing (auto.offset.reset) could skip the redrive topic's letters or
        // start a new partition after events that arrived before us: stop, and
        // let a restart try again.
        tracing::error!(%reason, "cannot place new partitions; stopping");
        lock(&shared.fatal).get_or_insert(reason);
        shared.shutdown.trigger();
        return;
    }
    if let Err(e) = consumer.incremental_assign(tpl) {
        tracing::error!(error = %e, "incremental_assign failed");
        lock(&shared.fatal).get_or_insert(format!("incremental_assign failed: {e}"));
        shared.shutdown.trigger();
        return;
    }
    // A pause survives unassign/reassign in librdkafka: a partition held back
    // when it was revoked would come back paused.
    if let Err(e) = consumer.resume(tpl) {
        tracing::warn!(error = %e, "resuming newly assigned partitions failed");
    }
    let mut at = lock(&shared.assigned_at);
    for tp in partitions {
        at.insert(tp.clone(), generation);
    }
    *lock(&shared.status.inner.assigned) = at.keys().map(TopicPartition::to_tuple).collect();
    tracing::info!(reactor = R::NAME, ?partitions, "partitions assigned");
}

/// Lets revoked partitions go.
fn revoke<R: Reactor>(
    shared: &Shared<R>,
    consumer: &BaseConsumer<ReactorContext<R>>,
    tpl: &TopicPartitionList,
    partitions: &[TopicPartition],
) {
    // No transaction is open here: we never poll inside one.
    if let Err(e) = consumer.incremental_unassign(tpl) {
        tracing::error!(error = %e, "incremental_unassign failed");
    }
    let mut at = lock(&shared.assigned_at);
    at.retain(|tp, _| !partitions.contains(tp));
    *lock(&shared.status.inner.assigned) = at.keys().map(TopicPartition::to_tuple).collect();
    tracing::info!(reactor = R::NAME, ?partitions, "partitions revoked");
}

/// `StartFrom::End` for partitions the group never committed: their current end, committed
/// at once, so an owner that dies before its first transaction does not make the next one
/// start at a later end and skip what arrived in between.
fn start_new_partitions_at_end<R: Reactor>(
    shared: &Shared<R>,
    consumer: &BaseConsumer<ReactorContext<R>>,
    tpl: &mut TopicPartitionList,
) -> std::result::Result<(), String> {
    let committed = consumer
        .committed_offsets(tpl.clone(), Duration::from_secs(30))
        .map_err(|e| format!("cannot read the committed offsets: {e}"))?;
    let mut first = TopicPartitionList::new();
    for element in committed.elements() {
        if matches!(element.offset(), Offset::Offset(_)) {
            continue;
        }
        let (topic, partition) = (element.topic(), element.partition());
        if topic == shared.redrive {
            // Every owner without a commit starts it at the beginning: nothing to commit.
            if let Some(mut e) = tpl.find_partition(topic, partition) {
                let _ = e.set_offset(Offset::Beginning);
            }
            continue;
        }
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(30)) {
            Ok((_, end)) => {
                let _ = first.add_partition_offset(topic, partition, Offset::Offset(end));
                if let Some(mut e) = tpl.find_partition(topic, partition) {
                    let _ = e.set_offset(Offset::Offset(end));
                }
            }
            Err(e) => return Err(format!("cannot read the end of {topic}[{partition}]: {e}")),
        }
    }
    if first.count() > 0 {
        if let Err(e) = consumer.commit(&first, rdkafka::consumer::CommitMode::Sync) {
            tracing::warn!(error = %e, "cannot commit the first positions");
        }
        tracing::info!(reactor = R::NAME, group = %shared.group, "new partitions start at their current end");
    }
    Ok(())
}
