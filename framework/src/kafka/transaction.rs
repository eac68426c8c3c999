//! Kafka transactions as the command processor and reactors use them: records staged for a
//! transaction, how a transactional error is to be handled, and rewinding a consumer to the
//! start of a batch whose transaction did not commit.
//!
//! Both run on a dedicated thread that polls, then opens a transaction, then commits, and
//! never polls while a transaction is open: so a rebalance callback never meets one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

pub(crate) use super::errors::{TxError, classify, classify_commit};
use super::record::Record;
use super::topic_partition::TopicPartition;
use crate::error::{Error, Result};

/// A record produced inside a transaction.
#[derive(Debug, Clone)]
pub(crate) struct TxRecord {
    pub topic: String,
    /// An explicit partition, or `None` for the producer's partitioner (murmur2 of the key).
    pub partition: Option<i32>,
    /// Bytes, not text: a dead letter keeps the original key as it came.
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: OwnedHeaders,
}

/// The one input every record of a transaction comes from, if there is just one.
pub(crate) fn sole_input<'a>(origins: impl IntoIterator<Item = &'a usize>) -> Option<usize> {
    let mut origins = origins.into_iter();
    let first = *origins.next()?;
    origins.all(|o| *o == first).then_some(first)
}

/// Waits for every delivery of a transaction's records. A refusal wins over any other error:
/// once the transaction is abortable, librdkafka purges the records queued after the refused
/// one, and those purges must not hide why. The broker refuses a whole produce request at once
/// (all its records get the refusal), so a refusal names its input only when every record of
/// the transaction came from one (`sole`, see [`sole_input`]); otherwise it names none, and
/// the runtime runs the inputs one per transaction to find it.
pub(crate) fn await_deliveries(
    handle: &tokio::runtime::Handle,
    deliveries: Vec<DeliveryFuture>,
    sole: Option<usize>,
    what: &str,
) -> Result<Vec<(i32, i64)>, TxError> {
    let mut landed = Vec::with_capacity(deliveries.len());
    let mut first: Option<TxError> = None;
    for delivery in deliveries {
        let error = match handle.block_on(delivery) {
            Ok(Ok(delivered)) => {
                landed.push((delivered.partition, delivered.offset));
                continue;
            }
            Ok(Err((e, _))) => classify(what, &e),
            Err(_) => TxError::Abortable(format!("{what}: delivery cancelled")),
        };
        let error = match error {
            TxError::Refused { reason, .. } => TxError::Refused {
                reason,
                input: sole,
            },
            other => other,
        };
        first = match first {
            Some(refused @ TxError::Refused { .. }) => Some(refused),
            Some(_) if matches!(error, TxError::Refused { .. }) => Some(error),
            Some(earlier) => Some(earlier),
            None => Some(error),
        };
    }
    match first {
        Some(error) => Err(error),
        None => Ok(landed),
    }
}

/// Adds the consumed positions `tpl` to the open transaction, with fresh group metadata (the
/// generation may have moved since the last transaction).
pub(crate) fn send_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    producer: &FutureProducer,
    tpl: &TopicPartitionList,
) -> Result<(), TxError> {
    let metadata = consumer
        .group_metadata()
        .ok_or_else(|| TxError::Abortable("no consumer group metadata".into()))?;
    producer
        .send_offsets_to_transaction(tpl, &metadata, Duration::from_secs(30))
        .map_err(|e| classify("send_offsets_to_transaction", &e))
}

/// Hands a staged record to the transactional producer.
pub(crate) fn send(
    producer: &FutureProducer,
    record: &TxRecord,
) -> Result<DeliveryFuture, TxError> {
    let mut out: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(&record.topic).headers(record.headers.clone());
    if let Some(key) = &record.key {
        out = out.key(key);
    }
    if let Some(payload) = &record.payload {
        out = out.payload(payload);
    }
    if let Some(partition) = record.partition {
        out = out.partition(partition);
    }
    producer
        .send_result(out)
        .map_err(|(e, _)| classify("produce", &e))
}

/// Seeks each partition back to the first offset of a batch that did not commit: the last
/// committed position. `first` maps each partition to that offset.
pub(crate) fn rewind<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    first: &HashMap<TopicPartition, i64>,
) -> Result<()> {
    for (tp, offset) in first {
        consumer
            .seek(
                &tp.topic,
                tp.partition,
                Offset::Offset(*offset),
                Duration::from_secs(10),
            )
            .map_err(|e| Error::SeekFailed {
                topic: tp.topic.clone(),
                partition: tp.partition,
                to: format!("offset {offset} (a rewind)"),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

/// The first offset of each partition among `records`, in the shape [`rewind`] takes.
pub(crate) fn starts<'a>(
    records: impl IntoIterator<Item = &'a Record>,
) -> HashMap<TopicPartition, i64> {
    let mut first = HashMap::new();
    for record in records {
        first
            .entry(TopicPartition::new(record.topic(), record.partition()))
            .or_insert(record.offset());
    }
    first
}

/// Polls up to `max` records: the first wait is `linger`, then only what is already there.
/// A consumer error ends the batch early and is handed back. Records are copied with their
/// header names as bytes (never through rdkafka's `Headers::get`, which panics on a name that
/// is not UTF-8).
pub(crate) fn collect_batch<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    max: usize,
    linger: Duration,
) -> (Vec<Record>, Option<KafkaError>) {
    let mut batch = Vec::new();
    let mut topics: Vec<Arc<str>> = Vec::new();
    let mut timeout = linger;
    while batch.len() < max {
        match consumer.poll(timeout) {
            Some(Ok(record)) => {
                use rdkafka::Message as _;
                let topic = match topics.iter().find(|t| ***t == *record.topic()) {
                    Some(topic) => Arc::clone(topic),
                    None => {
                        let topic: Arc<str> = Arc::from(record.topic());
                        topics.push(Arc::clone(&topic));
                        topic
                    }
                };
                batch.push(Record::copy(&record, topic));
            }
            Some(Err(e)) => return (batch, Some(e)),
            None => break,
        }
        timeout = Duration::ZERO;
    }
    (batch, None)
}

/// A consumer fenced as a static member (by a newer instance with our `group.instance.id`, or
/// by a join of its own the coordinator processed twice) or failed fatally ends the loop,
/// rather than linger without partitions; the runtime then decides whether to rejoin
/// (`static_member::after_fence`).
pub(crate) fn check_consumer<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Result<()> {
    match consumer.client().fatal_error() {
        Some((RDKafkaErrorCode::FencedInstanceId, reason)) => Err(Error::Fenced {
            runtime: super::static_member::FENCED_CONSUMER.into(),
            reason,
        }),
        Some((code, reason)) => Err(Error::Stopped {
            runtime: "consumer".into(),
            reason: format!("fatal error ({code}): {reason}"),
        }),
        None => Ok(()),
    }
}

/// After an abortable error: abort the transaction and rewind the consumer to the start of
/// the batch it held.
pub(crate) fn abort_and_rewind<C: ConsumerContext>(
    producer: &FutureProducer,
    consumer: &BaseConsumer<C>,
    batch: &[Record],
    reason: &str,
) -> Result<()> {
    producer
        .abort_transaction(Duration::from_secs(30))
        .map_err(|e| match classify("abort_transaction", &e) {
            // A newer instance took the transactional id while this one aborted.
            TxError::Fenced(fenced) => Error::Fenced {
                runtime: "transactional producer".into(),
                reason: format!("{fenced} (after {reason})"),
            },
            _ => Error::AbortFailed {
                after: reason.to_string(),
                source: e,
            },
        })?;
    rewind(consumer, &starts(batch))
}

/// The committed offsets of `tpl`, asked again while the group coordinator moves (a broker
/// restart: `NotCoordinator`, `CoordinatorLoadInProgress`, a timeout) for up to `patience`,
/// 0.5 s doubling to 5 s apart. A consumer that failed fatally is not asked again.
pub(crate) fn committed_patiently<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
    patience: Duration,
) -> Result<TopicPartitionList, KafkaError> {
    let started = std::time::Instant::now();
    let mut pause =
        crate::backoff::Backoff::doubling(Duration::from_millis(500), Duration::from_secs(5));
    loop {
        let error = match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(committed) => return Ok(committed),
            Err(e) => e,
        };
        if consumer.client().fatal_error().is_some() || started.elapsed() >= patience {
            return Err(error);
        }
        tracing::warn!(%error, "reading committed offsets failed; asking again");
        std::thread::sleep(pause.next());
    }
}

/// Puts a new producer from `make` in place of `producer` after a transaction whose outcome is
/// unknown (`reason`), the `replacements`th in a row (past `max`: `Error::TransactionUnknown`,
/// the runtime stops): it waits 500 ms more per
/// replacement in a row (with jitter), then starts the new producer's transactions, which
/// fences the old one (same transactional id): the old producer's open transaction is then
/// committed or aborted for good, and what was committed can be read back.
pub(crate) fn replace_producer(
    producer: &mut FutureProducer,
    make: &dyn Fn() -> Result<FutureProducer>,
    reason: &str,
    replacements: u32,
    max: u32,
) -> Result<()> {
    if replacements > max {
        return Err(Error::TransactionUnknown(format!(
            "{reason}; outcomes keep being unknown, stopping after {max} producer replacements"
        )));
    }
    let step = Duration::from_millis(500);
    let pause = crate::backoff::Backoff::linear(step, step, step * max);
    std::thread::sleep(pause.delay(replacements.saturating_sub(1)));
    let fresh = make()?;
    fresh
        .init_transactions(Duration::from_secs(30))
        .map_err(|e| Error::ReplacementFailed {
            step: "starting the new producer".into(),
            reason: format!("{e} (after a transaction failed: {reason})"),
        })?;
    drop(std::mem::replace(producer, fresh));
    Ok(())
}
