//! The processing loop on the processor's own thread: polls batches of commands, runs each in
//! a transaction, and handles what a failed transaction needs (a rewind, setting a command
//! aside, a new producer, or stopping).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};

use super::rebalance::{PARKED_FOR, ProcessorContext, expire_parked};
use super::restore::restore_owned;
use super::transaction::{SetAside, run_transaction};
use super::{Shared, lock};
use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::kafka::Record;
use crate::kafka::transaction::{
    self, TxError, abort_and_rewind, check_consumer, collect_batch, rewind, starts,
};

/// Producer replacements in a row (no commit between them) before the processor gives up:
/// an error that survives a fresh producer and a restore is not going away.
const MAX_REPLACEMENTS: u32 = 5;

/// Refusals of one command's records before its partition halts: its events or reply, its
/// dead letter whole, cut, and minimal.
const MAX_REFUSALS: u32 = 4;

pub(super) fn processing_loop<A: Aggregate>(
    shared: &Arc<Shared<A>>,
    consumer: &BaseConsumer<ProcessorContext<A>>,
    producer: &mut FutureProducer,
    make_producer: &dyn Fn() -> Result<FutureProducer>,
    max_batch: usize,
) -> Result<()> {
    // Fences any earlier producer with our transactional id and aborts its open transaction.
    producer
        .init_transactions(Duration::from_secs(30))
        .map_err(|e| Error::kafka("init_transactions", e))?;
    consumer
        .subscribe(&[&shared.commands_topic])
        .map_err(|e| Error::kafka("subscribe", e))?;
    // Producer replacements since the last committed transaction.
    let mut replacements = 0u32;
    let mut set_aside = SetAside::new();
    // Transactions still to run with a single command: the broker refused a request of a
    // transaction that held several, and only one at a time says which command it was.
    let mut isolate = 0usize;
    let mut expired_at = Instant::now();
    while !shared.shutdown.is_triggered() {
        if expired_at.elapsed() >= Duration::from_secs(1) {
            expire_parked(shared, PARKED_FOR);
            expired_at = Instant::now();
        }
        let before = shared.rebalances.load(Ordering::Acquire);
        let size = if isolate > 0 { 1 } else { max_batch };
        let (batch, error) = collect_batch(consumer, size, Duration::from_millis(100));
        match error {
            Some(e @ KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                return Err(Error::Stopped {
                    runtime: "command processor".into(),
                    reason: format!("command consumer: {e} (auto.offset.reset=error)"),
                });
            }
            Some(e) => tracing::warn!(error = %e, "command consumer error"),
            None => {}
        }
        if let Some(reason) = lock(&shared.fatal).clone() {
            return Err(Error::Stopped {
                runtime: "command processor".into(),
                reason,
            });
        }
        check_consumer(consumer)?;
        if batch.is_empty() {
            continue;
        }
        if shared.rebalances.load(Ordering::Acquire) != before {
            rewind_after_rebalance(shared, consumer, &batch, before)?;
            continue;
        }
        isolate = isolate.saturating_sub(1);
        match run_transaction(shared, consumer, producer, &batch, &set_aside) {
            Ok(settled) => {
                replacements = 0;
                for at in settled {
                    set_aside.remove(&at);
                }
            }
            Err(TxError::Refused {
                reason,
                input: Some(index),
            }) if index < batch.len() => {
                let at = (batch[index].partition(), batch[index].offset());
                tracing::warn!(partition = at.0, offset = at.1, %reason,
                    "a record of this command was refused for its content; the command is set aside");
                abort_and_rewind(producer, consumer, &batch, &reason)?;
                count_refusal(shared, &mut set_aside, at, &reason);
            }
            Err(TxError::Refused {
                reason,
                input: None,
            }) => {
                tracing::warn!(%reason, commands = batch.len(),
                    "the broker refused a record of this transaction; running its commands one per transaction to find which");
                abort_and_rewind(producer, consumer, &batch, &reason)?;
                isolate = batch.len();
            }
            Err(TxError::Abortable(reason) | TxError::Refused { reason, .. }) => {
                tracing::warn!(%reason, "transaction aborted; rewinding to the last committed commands");
                abort_and_rewind(producer, consumer, &batch, &reason)?;
            }
            Err(TxError::Fenced(reason)) => {
                // Another instance owns our transactional id now: stop, never recreate (two
                // instances sharing an id would fence each other forever).
                tracing::error!(%reason, "fenced by a newer instance with the same transactional id; stopping");
                return Err(Error::Fenced {
                    runtime: "command processor".into(),
                    reason,
                });
            }
            Err(TxError::Fatal(reason)) => {
                replacements += 1;
                replace_producer(
                    shared,
                    consumer,
                    producer,
                    make_producer,
                    &reason,
                    replacements,
                )?;
            }
        }
    }
    Ok(())
}

/// A rebalance ran inside poll while `batch` was collected: its records may belong to
/// partitions we lost, or predate a restore. Decide nothing on them. Partitions we kept
/// throughout are rewound (their records were consumed); partitions (re)assigned meanwhile
/// already start at their committed offset.
fn rewind_after_rebalance<A: Aggregate>(
    shared: &Shared<A>,
    consumer: &BaseConsumer<ProcessorContext<A>>,
    batch: &[Record],
    before: u64,
) -> Result<()> {
    let kept: Vec<&Record> = {
        let assigned_at = lock(&shared.assigned_at);
        batch
            .iter()
            .filter(|r| {
                assigned_at
                    .get(&r.partition())
                    .is_some_and(|g| *g <= before)
            })
            .collect()
    };
    rewind(consumer, &starts(kept))
}

/// Counts a refusal of the command at `at` (partition, offset); past [`MAX_REFUSALS`] its
/// partition halts.
fn count_refusal<A: Aggregate>(
    shared: &Shared<A>,
    set_aside: &mut SetAside,
    at: (i32, i64),
    reason: &str,
) {
    let entry = set_aside.entry(at).or_insert((0, String::new()));
    entry.0 += 1;
    reason.clone_into(&mut entry.1);
    if entry.0 > MAX_REFUSALS {
        // Even the minimal dead letter was refused: the dead-letter topic cannot
        // take it (its max.message.bytes, or compaction). Halt this partition
        // with the reason rather than loop; the others go on.
        let why = format!(
            "even the minimal dead letter of the command at offset {} was refused \
             ({reason}): check the dead-letter topic's max.message.bytes and \
             cleanup.policy, then restart",
            at.1
        );
        tracing::error!(partition = at.0, %why, "partition halted");
        lock(&shared.halted).insert(at.0, why.clone());
        lock(&shared.status.inner.halted).push((at.0, why));
        lock(&shared.status.inner.ready).retain(|p| *p != at.0);
        set_aside.remove(&at);
    }
}

/// After a transaction whose outcome is unknown (`reason`), the `replacements`th in a row.
fn replace_producer<A: Aggregate>(
    shared: &Arc<Shared<A>>,
    consumer: &BaseConsumer<ProcessorContext<A>>,
    producer: &mut FutureProducer,
    make_producer: &dyn Fn() -> Result<FutureProducer>,
    reason: &str,
    replacements: u32,
) -> Result<()> {
    // The outcome is unknown: the commit may land later (librdkafka lacks
    // KIP-890). A new producer with our transactional id fences the old one (its
    // transaction is then either committed or aborted for good), and a restore
    // rebuilds the state and the command positions from what was committed.
    // A producer fenced by another instance with our identity may report only an epoch
    // error; its join has then fenced our consumer too, which ends the loop instead (a new
    // producer would fence that instance back).
    check_consumer(consumer)?;
    tracing::warn!(%reason, replacements, "transaction outcome unknown; replacing the producer and restoring every partition");
    transaction::replace_producer(
        producer,
        make_producer,
        reason,
        replacements,
        MAX_REPLACEMENTS,
    )?;
    restore_owned(shared, consumer)?;
    shared
        .status
        .inner
        .producer_restarts
        .fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::processor::test_support::shared;

    #[test]
    fn a_command_refused_past_every_form_of_its_dead_letter_halts_its_partition() {
        let shared = shared();
        lock(&shared.status.inner.ready).extend([0, 1]);
        let mut set_aside = SetAside::new();
        for refusal in 1..=MAX_REFUSALS {
            count_refusal(
                &shared,
                &mut set_aside,
                (1, 7),
                &format!("refusal {refusal}"),
            );
            assert_eq!(set_aside[&(1, 7)], (refusal, format!("refusal {refusal}")));
        }
        assert!(lock(&shared.halted).is_empty());

        count_refusal(&shared, &mut set_aside, (1, 7), "still too large");
        assert!(set_aside.is_empty());
        let why = lock(&shared.halted)[&1].clone();
        assert!(
            why.starts_with("even the minimal dead letter of the command at offset 7 was refused (still too large)"),
            "{why}"
        );
        assert_eq!(shared.status.halted(), vec![(1, why)]);
        assert_eq!(shared.status.ready_partitions(), vec![0]);
    }
}
