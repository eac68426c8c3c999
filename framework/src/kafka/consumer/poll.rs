//! The poll thread: polls the consumer, copies records into per-partition batches and
//! dispatches them to the partition tasks; between polls it applies reports, pauses and
//! resumes partitions (flow control) and drives the background start lookup.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::TopicPartitionList;

use super::context::RuntimeContext;
use super::reports::drain_reports;
use super::shared::Dispatch;
use super::shared::{Shared, Tp};
use super::start_lookup::StartLookup;
use super::{PartitionLogic, Record};

/// The poll thread's loop, until the consumer has left the group (or could not).
pub(super) fn poll_loop<L: PartitionLogic>(
    shared: &Arc<Shared<L>>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
) {
    let settings = &shared.settings;
    let mut closing = false;
    let mut last_error_log = Instant::now() - Duration::from_secs(60);
    let mut batches: HashMap<Tp, Vec<Record>> = HashMap::new();
    let mut lookup = StartLookup::default();
    loop {
        if shared.stopping() && !closing {
            tracing::info!(group = %settings.group_id, "shutting down: finishing in-flight batches, committing, leaving the group");
            closing = true;
            // Leaving the group runs our revoke (drain + commit) through the rebalance callback.
            if let Err(e) = consumer.close_queue() {
                tracing::warn!(error = %e, "closing the consumer failed");
                break;
            }
        }
        if closing && consumer.closed() {
            break;
        }
        drain_reports(shared, consumer);
        flow_control(shared, consumer);
        lookup.step(shared, consumer);
        if let Some(reason) = consumer.client().fatal_error() {
            shared.fail(format!("fatal kafka error: {} {}", reason.0, reason.1));
        }

        // The epoch of each partition before polling: records polled now were fetched at or
        // before it, so a seek applied meanwhile (inside a rebalance callback) makes them stale.
        let snapshot: HashMap<Tp, (u64, u64)> = shared
            .state()
            .workers
            .iter()
            .map(|(k, h)| (k.clone(), (h.generation, h.epoch)))
            .collect();
        let collected = poll_batch(shared, consumer, &mut batches, &mut last_error_log);
        if collected > 0 {
            dispatch(shared, &mut batches, &snapshot);
        }
    }
    drain_reports(shared, consumer);
}

/// Polls up to `max_batch` records into `batches` per partition (waiting up to 100 ms for
/// the first) and returns how many. Stops at the first error; one no retry can fix fails the
/// runtime.
fn poll_batch<L: PartitionLogic>(
    shared: &Shared<L>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
    batches: &mut HashMap<Tp, Vec<Record>>,
    last_error_log: &mut Instant,
) -> usize {
    let settings = &shared.settings;
    let mut collected = 0usize;
    let mut last_key: Option<Tp> = None;
    let mut timeout = Duration::from_millis(100);
    while collected < settings.max_batch {
        match consumer.poll(timeout) {
            None => break,
            Some(Ok(message)) => {
                // Reuse the topic's Arc while records come from the same partition.
                let key: Tp = match &last_key {
                    Some(k) if &*k.0 == message.topic() && k.1 == message.partition() => k.clone(),
                    _ => (Arc::from(message.topic()), message.partition()),
                };
                last_key = Some(key.clone());
                let topic = Arc::clone(&key.0);
                batches
                    .entry(key)
                    .or_default()
                    .push(Record::copy(&message, topic));
                collected += 1;
                timeout = Duration::ZERO;
            }
            Some(Err(e)) => {
                // Errors no retry can fix stop the runtime with the reason, instead of a
                // member that looks healthy while its partitions go nowhere.
                if let Some(code) = e.rdkafka_error_code()
                    && matches!(
                        code,
                        RDKafkaErrorCode::TopicAuthorizationFailed
                            | RDKafkaErrorCode::GroupAuthorizationFailed
                            | RDKafkaErrorCode::ClusterAuthorizationFailed
                            | RDKafkaErrorCode::AutoOffsetReset
                            | RDKafkaErrorCode::Fatal
                    )
                {
                    shared.fail(format!("consumer error no retry can fix: {e}"));
                    break;
                }
                if last_error_log.elapsed() > Duration::from_secs(5) {
                    tracing::warn!(group = %settings.group_id, error = %e, "consumer error");
                    *last_error_log = Instant::now();
                }
                break;
            }
        }
    }
    collected
}

/// Hands each partition's records to its task, unless they are stale (fetched under an
/// earlier assignment or before a seek) or the partition is halted or waiting.
fn dispatch<L: PartitionLogic>(
    shared: &Shared<L>,
    batches: &mut HashMap<Tp, Vec<Record>>,
    snapshot: &HashMap<Tp, (u64, u64)>,
) {
    let state = shared.state();
    for (key, records) in batches.drain() {
        if records.is_empty() {
            continue;
        }
        let Some(handle) = state.workers.get(&key) else {
            // Revoked meanwhile: not processed, not stored; the next owner reads it.
            continue;
        };
        // Fetched under another assignment or before a seek: stale. Halted: not processed.
        if handle.halted
            || handle.waiting
            || snapshot.get(&key) != Some(&(handle.generation, handle.epoch))
        {
            continue;
        }
        let count = records.len();
        let bytes = records.iter().map(Record::size_in_memory).sum();
        handle.queued.add(count, bytes);
        let sent = handle.tx.as_ref().is_some_and(|tx| {
            tx.send(Dispatch {
                epoch: handle.epoch,
                records,
                bytes,
            })
            .is_ok()
        });
        if !sent {
            handle.queued.sub(count, bytes);
        }
    }
}

/// Pauses a partition whose queue reached the high-water mark and resumes it once the queue
/// is down to a quarter of that; the poll thread polls on either way.
fn flow_control<L: PartitionLogic>(shared: &Shared<L>, consumer: &BaseConsumer<RuntimeContext<L>>) {
    let high = shared.settings.high_water.max(1);
    let high_bytes = shared.settings.high_water_bytes.max(1);
    let mut state = shared.state();
    for (key, handle) in state.workers.iter_mut() {
        if handle.halted || handle.waiting {
            continue;
        }
        let (queued, bytes) = handle.queued.load();
        if let Some(pause) = flow_change(handle.paused, (queued, bytes), (high, high_bytes)) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&key.0, key.1);
            let result = if pause {
                consumer.pause(&tpl)
            } else {
                consumer.resume(&tpl)
            };
            match result {
                Ok(()) => {
                    handle.paused = pause;
                    tracing::debug!(topic = %key.0, partition = key.1, queued, bytes, pause, "partition flow control");
                }
                Err(e) => tracing::warn!(error = %e, "pause/resume failed"),
            }
        }
    }
}

/// Whether a partition with `queued` (records, bytes) is paused (`Some(true)`) or resumed
/// (`Some(false)`) now, given whether it `paused` already and the high-water marks: paused
/// when either reaches its mark, resumed once both are down to a quarter of theirs.
fn flow_change(paused: bool, queued: (usize, usize), high: (usize, usize)) -> Option<bool> {
    let (records, bytes) = queued;
    let (high_records, high_bytes) = high;
    if !paused && (records >= high_records || bytes >= high_bytes) {
        Some(true)
    } else if paused && records <= high_records / 4 && bytes <= high_bytes / 4 {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1 << 20;
    /// Marks: 5,000 records or 64 MB.
    const HIGH: (usize, usize) = (5_000, 64 * MB);

    #[test]
    fn a_partition_pauses_at_the_high_water_mark_and_resumes_at_a_quarter() {
        assert_eq!(flow_change(false, (4_999, MB), HIGH), None);
        assert_eq!(flow_change(false, (5_000, MB), HIGH), Some(true));
        assert_eq!(flow_change(true, (5_000, MB), HIGH), None, "paused already");
        assert_eq!(flow_change(true, (1_251, MB), HIGH), None);
        assert_eq!(flow_change(true, (1_250, MB), HIGH), Some(false));
        assert_eq!(flow_change(false, (0, 0), HIGH), None, "running already");
        assert_eq!(flow_change(false, (1, 0), (1, 1)), Some(true));
        assert_eq!(flow_change(true, (0, 0), (1, 1)), Some(false));
    }

    #[test]
    fn large_records_pause_a_partition_by_their_bytes_whatever_their_count() {
        // 64 records of 1 MB: far under the record mark, at the byte mark.
        assert_eq!(flow_change(false, (63, 63 * MB), HIGH), None);
        assert_eq!(flow_change(false, (64, 64 * MB), HIGH), Some(true));
        // Resumed only once the bytes are down to a quarter too.
        assert_eq!(flow_change(true, (17, 17 * MB), HIGH), None);
        assert_eq!(flow_change(true, (16, 16 * MB), HIGH), Some(false));
    }
}
