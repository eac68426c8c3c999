//! The reacting loop, on the reactor's own thread: collect a batch, run its transaction, and
//! deal with how it ended (held partitions, set-aside inputs, transaction errors).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::holds::Holds;
use super::rebalance::ReactorContext;
use super::set_aside::{SetAside, note_refusal, position};
use super::status::lock;
use super::transaction::{Ended, run_transaction};
use super::{RETRY, Shared, TopicPartition};
use crate::error::{Error, Result};
use crate::kafka::Record;
use crate::kafka::transaction::{
    self, TxError, abort_and_rewind, check_consumer, collect_batch, rewind, starts,
};
use crate::reactor::Reactor;

/// The reactor thread's Kafka clients: the producer is replaced when a transaction's outcome
/// is unknown.
pub(super) struct Clients<'a, R: Reactor> {
    pub(super) consumer: &'a BaseConsumer<ReactorContext<R>>,
    pub(super) producer: &'a mut FutureProducer,
    pub(super) make_producer: &'a dyn Fn() -> Result<FutureProducer>,
}

/// Producer replacements in a row (no commit between them) before the reactor gives up.
const MAX_REPLACEMENTS: u32 = 5;

pub(super) fn reacting_loop<R: Reactor>(
    shared: &Arc<Shared<R>>,
    clients: Clients<'_, R>,
    sources: &[String],
    max_batch: usize,
) -> Result<()> {
    let Clients {
        consumer,
        producer,
        make_producer,
    } = clients;
    // Fences any earlier producer with our transactional id and aborts its open transaction.
    producer
        .init_transactions(Duration::from_secs(30))
        .map_err(|e| Error::kafka("init_transactions", e))?;
    let topics: Vec<&str> = sources.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| Error::kafka("subscribe", e))?;
    // After an aborted transaction every turn waits, longer per abort, until one commits.
    let mut backoff = RETRY;
    let mut delay = Duration::ZERO;
    let mut holds = Holds::default();
    let mut set_aside = SetAside::new();
    // Transactions still to run with a single input: the broker refused a request of a
    // transaction that held several, and only one at a time says which input it was.
    let mut isolate = 0usize;
    // Producer replacements since the last committed transaction.
    let mut replacements = 0u32;
    while !shared.shutdown.is_triggered() {
        if !delay.is_zero() {
            shared.handle.block_on(async {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shared.shutdown.wait() => {}
                }
            });
        }
        holds.release_due(consumer, &shared.status);
        let size = if isolate > 0 { 1 } else { max_batch };
        let Some(batch) = next_batch(shared, consumer, &mut holds, size)? else {
            continue;
        };
        isolate = isolate.saturating_sub(1);
        let failed = match run_transaction(shared, consumer, producer, &batch, &set_aside) {
            Ok(ended) => {
                backoff.reset();
                delay = Duration::ZERO;
                replacements = 0;
                settle(shared, consumer, &mut holds, &mut set_aside, &batch, ended)?;
                continue;
            }
            Err(failed) => failed,
        };
        // An abort that fails leaves the outcome unknown too: replace the producer.
        let unknown = match failed {
            TxError::Refused {
                reason,
                input: Some(index),
            } if index < batch.len() => {
                // Sending that output again cannot succeed: the input that made it goes to the
                // dead letters instead when the batch runs again, at once.
                let at = position(&batch[index]);
                tracing::warn!(reactor = R::NAME, topic = %at.0, partition = at.1, offset = at.2, %reason,
                    "an output was refused for its content; its input will be dead-lettered");
                let aborted = abort_and_rewind(producer, consumer, &batch, &reason);
                if let Some(why) = note_refusal(&mut set_aside, &at, &reason) {
                    holds.hold(
                        consumer,
                        &shared.status,
                        TopicPartition::new(at.0, at.1),
                        at.2,
                        why,
                    );
                }
                unknown_after_abort(aborted)?
            }
            TxError::Refused {
                reason,
                input: None,
            } => {
                tracing::warn!(reactor = R::NAME, %reason, events = batch.len(),
                    "the broker refused a record of this transaction; running its events one per transaction to find which");
                isolate = batch.len();
                unknown_after_abort(abort_and_rewind(producer, consumer, &batch, &reason))?
            }
            TxError::Abortable(reason) | TxError::Refused { reason, .. } => {
                tracing::warn!(reactor = R::NAME, %reason, "transaction aborted; rewinding");
                delay = backoff.next();
                unknown_after_abort(abort_and_rewind(producer, consumer, &batch, &reason))?
            }
            TxError::Fenced(reason) => {
                tracing::error!(reactor = R::NAME, %reason, "fenced by a newer instance with the same transactional id; stopping");
                return Err(Error::Fenced {
                    runtime: format!("reactor {}", R::NAME),
                    reason,
                });
            }
            TxError::Fatal(reason) => Some(reason),
        };
        if let Some(reason) = unknown {
            replacements += 1;
            replace_producer::<R>(
                consumer,
                producer,
                make_producer,
                &batch,
                &reason,
                replacements,
            )?;
            shared
                .status
                .inner
                .producer_replacements
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// `None` when the abort went through; the reason when it failed in a way that leaves the
/// transaction's outcome unknown (fencing still stops the reactor).
fn unknown_after_abort(aborted: Result<()>) -> Result<Option<String>> {
    match aborted {
        Ok(()) => Ok(None),
        Err(Error::AbortFailed { after, source }) => Ok(Some(format!(
            "abort_transaction failed ({source}) after: {after}"
        ))),
        Err(other) => Err(other),
    }
}

/// After a transaction whose outcome is unknown (`reason`; a commit that timed out, a broker
/// lost mid-transaction), the `replacements`th in a row. A new producer with the same
/// transactional id fences the old one, so its transaction is then committed or aborted for
/// good; the batch's partitions go back to the group's committed offsets (read once that is
/// settled), and the batch runs again with the same derived output ids, or not at all if it
/// had committed.
fn replace_producer<R: Reactor>(
    consumer: &BaseConsumer<ReactorContext<R>>,
    producer: &mut FutureProducer,
    make_producer: &dyn Fn() -> Result<FutureProducer>,
    batch: &[Record],
    reason: &str,
    replacements: u32,
) -> Result<()> {
    // A producer fenced by another instance with our identity may report only an epoch
    // error; its join has then fenced our consumer too, which ends the loop instead (a new
    // producer would fence that instance back).
    check_consumer(consumer)?;
    tracing::warn!(reactor = R::NAME, %reason, replacements,
        "transaction outcome unknown; replacing the producer and going on from the committed offsets");
    transaction::replace_producer(
        producer,
        make_producer,
        reason,
        replacements,
        MAX_REPLACEMENTS,
    )?;
    let mut back = starts(batch);
    let mut asked = TopicPartitionList::new();
    for tp in back.keys() {
        asked
            .add_partition(&tp.topic, tp.partition)
            .set_offset(Offset::Invalid)
            .ok();
    }
    let committed = transaction::committed_patiently(consumer, &asked, Duration::from_secs(120))
        .map_err(|e| Error::ReplacementFailed {
            step: "reading the committed offsets".into(),
            reason: format!("{e} (after a transaction failed: {reason})"),
        })?;
    for element in committed.elements() {
        // No committed offset: the batch's first record is where this group starts.
        if let Offset::Offset(at) = element.offset() {
            back.insert(
                TopicPartition::new(element.topic(), element.partition()),
                at,
            );
        }
    }
    rewind(consumer, &back)
}

/// Polls up to `size` records and takes out those of held partitions. `None`: nothing to run
/// this turn (nothing came, or a rebalance ran meanwhile and the batch was rewound).
fn next_batch<R: Reactor>(
    shared: &Shared<R>,
    consumer: &BaseConsumer<ReactorContext<R>>,
    holds: &mut Holds,
    size: usize,
) -> Result<Option<Vec<Record>>> {
    let before = shared.rebalances.load(Ordering::Acquire);
    let (batch, error) = collect_batch(consumer, size, Duration::from_millis(100));
    if let Some(e) = error {
        tracing::warn!(reactor = R::NAME, error = %e, "consumer error");
    }
    if let Some(reason) = lock(&shared.fatal).clone() {
        return Err(Error::Stopped {
            runtime: format!("reactor {}", R::NAME),
            reason,
        });
    }
    check_consumer(consumer)?;
    if shared.rebalances.load(Ordering::Acquire) != before {
        // Partitions revoked meanwhile are no longer ours to hold (their pause was
        // lifted when they were assigned again, if they were).
        holds.forget_unassigned(&lock(&shared.assigned_at), &shared.status);
    }
    let batch = holds.hold_back(consumer, batch)?;
    if batch.is_empty() {
        return Ok(None);
    }
    if shared.rebalances.load(Ordering::Acquire) != before {
        // A rebalance ran while the batch was collected: its records may belong to
        // partitions we lost. Handle none; rewind the partitions we kept throughout.
        let kept: Vec<&Record> = {
            let at = lock(&shared.assigned_at);
            batch
                .iter()
                .filter(|r| at.get(&TopicPartition::of(r)).is_some_and(|g| *g <= before))
                .collect()
        };
        rewind(consumer, &starts(kept))?;
        return Ok(None);
    }
    Ok(Some(batch))
}

/// After a commit: set-aside inputs written off, the partitions not handled rewound (the
/// rest of the batch when shutting down, held ones to their failed event), held partitions
/// paused for their back-off.
fn settle<R: Reactor>(
    shared: &Shared<R>,
    consumer: &BaseConsumer<ReactorContext<R>>,
    holds: &mut Holds,
    set_aside: &mut SetAside,
    batch: &[Record],
    ended: Ended,
) -> Result<()> {
    for settled in &ended.settled {
        set_aside.remove(settled);
    }
    let mut back: HashMap<TopicPartition, i64> = HashMap::new();
    if let Some(at) = ended.stopped_at {
        // Shutting down: the rest of the batch comes again to the next owner.
        back = starts(&batch[at..]);
    }
    for (tp, (offset, _)) in &ended.held {
        back.insert(tp.clone(), *offset);
    }
    rewind(consumer, &back)?;
    holds.succeeded(&ended.committed);
    if !shared.shutdown.is_triggered() {
        for (tp, (offset, reason)) in ended.held {
            holds.hold(consumer, &shared.status, tp, offset, reason);
        }
    }
    Ok(())
}
