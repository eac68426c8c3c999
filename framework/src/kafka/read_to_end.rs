//! Reading one partition, assigned directly, from an offset up to an end offset taken before
//! the read (its last stable offset): the processor's restore and the schema store's load.
//!
//! Not used by the other readers, whose loops differ: rebuild lanes read many partitions in
//! batches off the async threads and end on a short idle (the checkpoint comparison at the
//! swap decides correctness); the bus's reply reader never ends; the CLI reader reads many
//! partitions, ends on `enable.partition.eof` and can follow.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// When a read that gets no further gives up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Patience {
    /// After this long without a record.
    Idle(Duration),
    /// After this long in all.
    Total(Duration),
}

/// Why a read ended early.
#[derive(Debug)]
pub(crate) enum ReadError<E> {
    /// The assignment failed.
    Assign(KafkaError),
    /// A poll returned an error.
    Poll(KafkaError),
    /// The patience ran out; `at` is the next offset it was waiting for.
    Stalled {
        /// The next offset expected.
        at: i64,
    },
    /// The caller's handler refused a record.
    Record(E),
}

/// Assigns `topic[partition]` at `from` and hands every record below `end` to `each`, until
/// the consumer's position reaches `end` (a commit marker may follow the last record: the
/// position passes it, the last offset + 1 does not) or a record at or past `end` arrives.
/// Returns how many records were handed over. The partition stays assigned; the caller
/// unassigns it when it wants to.
pub(crate) fn read_to_end<C: ConsumerContext, E>(
    consumer: &BaseConsumer<C>,
    (topic, partition): (&str, i32),
    (from, end): (i64, i64),
    patience: Patience,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> Result<(), E>,
) -> Result<u64, ReadError<E>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(ReadError::Assign)?;
    consumer.assign(&tpl).map_err(ReadError::Assign)?;
    let started = Instant::now();
    let mut idle_since = started;
    let mut next = from;
    let mut read = 0u64;
    // position() is a round trip to librdkafka's main thread: ask it only when a record could
    // be the last one or nothing came (a commit marker may be all that is left), not once per
    // record.
    let mut check = true;
    loop {
        if check && position(consumer, from) >= end {
            return Ok(read);
        }
        let out_of_patience = match patience {
            Patience::Idle(limit) => idle_since.elapsed() > limit,
            Patience::Total(limit) => started.elapsed() > limit,
        };
        if out_of_patience {
            return Err(ReadError::Stalled { at: next });
        }
        // Near the end only a commit marker may be left: poll briefly, then look at the
        // position again, rather than wait out a long poll.
        let wait = if check {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(200)
        };
        match consumer.poll(wait) {
            // Past the end taken before the read: not part of it.
            Some(Ok(record)) if record.offset() >= end => return Ok(read),
            Some(Ok(record)) => {
                idle_since = Instant::now();
                read += 1;
                next = record.offset() + 1;
                check = next >= end;
                each(&record).map_err(ReadError::Record)?;
            }
            Some(Err(e)) => return Err(ReadError::Poll(e)),
            None => check = true,
        }
    }
}

/// Where the consumer will read next on its one assigned partition (`from` while it does not
/// know).
fn position<C: ConsumerContext>(consumer: &BaseConsumer<C>, from: i64) -> i64 {
    consumer
        .position()
        .ok()
        .and_then(|list| list.elements().first().map(|e| e.offset()))
        .and_then(|offset| match offset {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .unwrap_or(from)
}
