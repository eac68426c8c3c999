//! One Kafka transaction per batch: the outputs of every event reacted to, the dead letters
//! of those that could not be, and the input offsets with fresh consumer group metadata.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::react::{Reaction, dead_letter, react_one};
use super::rebalance::ReactorContext;
use super::set_aside::{Position, SetAside, position};
use super::{Shared, TopicPartition};
use crate::failpoint;
use crate::kafka::transaction::{
    TxError, TxRecord, await_deliveries, classify, classify_commit, send, send_offsets, sole_input,
};
use crate::kafka::{Keep, Record};
use crate::reactor::Reactor;

/// How a batch's transaction ended.
#[derive(Default)]
pub(super) struct Ended {
    /// Shutting down: the index of the first record not handled (none after it was).
    pub(super) stopped_at: Option<usize>,
    /// Partitions held back: the offset of the event that failed transiently, and why.
    pub(super) held: HashMap<TopicPartition, (i64, String)>,
    /// Partitions with events in the committed transaction.
    pub(super) committed: Vec<TopicPartition>,
    /// Set-aside inputs whose dead letters this transaction wrote.
    pub(super) settled: Vec<Position>,
}

/// What a batch puts in its transaction.
#[derive(Default)]
struct Staged {
    records: Vec<TxRecord>,
    /// The batch index of the input each staged record comes from.
    origins: Vec<usize>,
    /// Per partition, the offset to commit: past its last event handled.
    next: HashMap<TopicPartition, i64>,
    reacted: u64,
    dead: u64,
}

/// One transaction: react to the batch's events in order, produce their outputs and dead
/// letters, commit them with the input offsets. A partition whose event fails transiently is
/// left out from that event on (held); the others go on.
pub(super) fn run_transaction<R: Reactor>(
    shared: &Arc<Shared<R>>,
    consumer: &BaseConsumer<ReactorContext<R>>,
    producer: &FutureProducer,
    batch: &[Record],
    set_aside: &SetAside,
) -> Result<Ended, TxError> {
    producer
        .begin_transaction()
        .map_err(|e| classify("begin_transaction", &e))?;
    let mut ended = Ended::default();
    let staged = stage(shared, batch, set_aside, &mut ended);
    if staged.next.is_empty() {
        // Nothing handled (every partition's first event failed transiently): nothing to
        // commit.
        producer
            .abort_transaction(Duration::from_secs(30))
            .map_err(|e| classify("abort_transaction", &e))?;
        return Ok(ended);
    }
    commit(shared, consumer, producer, &staged)?;
    let status = &shared.status.inner;
    status.reacted.fetch_add(staged.reacted, Ordering::Relaxed);
    status
        .dead_lettered
        .fetch_add(staged.dead, Ordering::Relaxed);
    status.transactions.fetch_add(1, Ordering::Relaxed);
    ended.committed = staged.next.into_keys().collect();
    Ok(ended)
}

/// Reacts to the batch's events in order (or dead-letters those set aside) and stages what
/// they produce; `ended` learns where it stopped and which partitions are held.
fn stage<R: Reactor>(
    shared: &Shared<R>,
    batch: &[Record],
    set_aside: &SetAside,
    ended: &mut Ended,
) -> Staged {
    let mut staged = Staged::default();
    for (i, record) in batch.iter().enumerate() {
        if shared.shutdown.is_triggered() {
            ended.stopped_at = Some(i);
            break;
        }
        let tp = TopicPartition::of(record);
        if ended.held.contains_key(&tp) {
            continue;
        }
        let at = position(record);
        if let Some((refusals, reason)) = set_aside.get(&at) {
            // Its output, or then its dead letter, was refused: a smaller dead letter each time.
            // The first refusal was of its outputs; later ones of its dead letters.
            let keep = Keep::after(refusals.saturating_sub(1));
            let reason = format!("an output of this event was refused by Kafka: {reason}");
            staged
                .records
                .push(dead_letter(shared, record, &reason, keep));
            staged.origins.push(i);
            ended.settled.push(at);
            staged.dead += 1;
            staged.next.insert(tp, record.offset() + 1);
            continue;
        }
        match react_one(shared, record) {
            Reaction::Done(outputs) => {
                staged.origins.extend(std::iter::repeat_n(i, outputs.len()));
                staged.records.extend(outputs);
                staged.reacted += 1;
            }
            Reaction::Skipped => {}
            Reaction::DeadLetter(reason) => {
                tracing::warn!(reactor = R::NAME, topic = record.topic(), partition = record.partition(),
                    offset = record.offset(), %reason, "event sent to the dead letters");
                staged
                    .records
                    .push(dead_letter(shared, record, &reason, Keep::All));
                staged.origins.push(i);
                staged.dead += 1;
            }
            Reaction::Retry(reason) => {
                ended.held.insert(tp, (record.offset(), reason));
                continue;
            }
        }
        staged.next.insert(tp, record.offset() + 1);
    }
    staged
}

/// Produces the staged records, sends the input offsets and commits.
fn commit<R: Reactor>(
    shared: &Shared<R>,
    consumer: &BaseConsumer<ReactorContext<R>>,
    producer: &FutureProducer,
    staged: &Staged,
) -> Result<(), TxError> {
    let origin = |k: usize| staged.origins.get(k).copied().unwrap_or(usize::MAX);
    let deliveries: Vec<_> = staged
        .records
        .iter()
        .enumerate()
        .map(|(k, r)| send(producer, r).map_err(|e| e.for_input(origin(k))))
        .collect::<Result<_, _>>()?;
    failpoint::hit("reactor.after_produce");
    await_deliveries(
        &shared.handle,
        deliveries,
        sole_input(&staged.origins),
        "produce output",
    )?;
    let mut tpl = TopicPartitionList::new();
    for (tp, offset) in &staged.next {
        let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset));
    }
    send_offsets(consumer, producer, &tpl)?;
    failpoint::hold("reactor.before_commit");
    failpoint::hit("reactor.before_commit");
    producer
        .commit_transaction(Duration::from_secs(30))
        .map_err(|e| classify_commit(&e))
}
