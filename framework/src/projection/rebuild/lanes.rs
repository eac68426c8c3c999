//! Lanes: the partitions dealt out over a few consumers, each applying its own batches on its
//! own connection. While one lane waits for Postgres, another polls and decodes, and Postgres
//! works on more than one core.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sqlx::PgPool;

use super::consumer::{poll_batch, rebuild_consumer, refresh_positions, watermarks};
use super::progress::{Progress, lock};
use crate::backoff::Backoff;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::kafka::Record;
use crate::projection::Projection;
use crate::projection::batch::{self, PartsOutcome, Target};
use crate::projection::checkpoint::{self, Slot};

/// How long a rebuild retries transient database errors before it gives up (resumably).
const TRANSIENT_BUDGET: Duration = Duration::from_secs(300);

/// A topic and partition.
use crate::kafka::TopicPartition;

/// A consumer over some of the partitions.
///
/// Two offsets per partition, which differ in a transactional log: `checkpoints` is the
/// shadow checkpoint (the last applied record + 1), what the next batch's compare-and-set
/// expects; `reached` is how far the consumer has read, past commit markers and aborted
/// records, what decides whether the lane is at the end. Expecting the consumer position
/// would fail the compare-and-set one offset past every final commit marker.
pub(super) struct Lane {
    consumer: Arc<BaseConsumer>,
    checkpoints: HashMap<TopicPartition, i64>,
    reached: HashMap<TopicPartition, i64>,
}

/// Opens the lanes and assigns them their partitions at the shadow checkpoints (created at
/// the log start). `consumer` becomes the first lane's.
pub(super) async fn open(
    kafka: &KafkaConfig,
    pool: &PgPool,
    id: &str,
    consumer: Arc<BaseConsumer>,
    partitions: &[TopicPartition],
    wanted: usize,
) -> Result<Vec<Lane>> {
    let pg = |op| move |e| Error::Postgres { op, source: e };
    // At most one lane per partition, and no more than the pool can serve beside the lock's
    // connection and one spare (more would only queue for connections).
    let pool_room = (pool.options().get_max_connections() as usize).saturating_sub(2);
    let lane_count = lane_count(wanted, pool_room, partitions.len());
    let mut lanes: Vec<Lane> = Vec::with_capacity(lane_count);
    for i in 0..lane_count {
        let consumer = if i == 0 {
            Arc::clone(&consumer)
        } else {
            rebuild_consumer(kafka, id)?
        };
        lanes.push(Lane::new(consumer));
    }
    drop(consumer);
    let mut conn = pool.acquire().await.map_err(pg("acquire"))?;
    let mut assignments: Vec<TopicPartitionList> =
        (0..lane_count).map(|_| TopicPartitionList::new()).collect();
    for (i, tp) in partitions.iter().enumerate() {
        let (topic, partition) = (&tp.topic, &tp.partition);
        let lane = i % lane_count;
        let (low, _) = watermarks(&lanes[lane].consumer, topic, *partition).await?;
        let start = checkpoint::init(&mut conn, id, Slot::Shadow, topic, *partition, low)
            .await
            .map_err(pg("init checkpoint"))?;
        if start < low {
            return Err(Error::Halted {
                topic: topic.clone(),
                partition: *partition,
                reason: format!(
                    "the log starts at {low}, after the shadow checkpoint {start}: events are gone; run with fresh"
                ),
            });
        }
        assignments[lane]
            .add_partition_offset(topic, *partition, Offset::Offset(start))
            .map_err(|e| Error::kafka("assign", e))?;
        lanes[lane].checkpoints.insert(tp.clone(), start);
        lanes[lane].reached.insert(tp.clone(), start);
    }
    drop(conn);
    for (lane, assignment) in lanes.iter().zip(&assignments) {
        lane.consumer
            .assign(assignment)
            .map_err(|e| Error::kafka("assign", e))?;
    }
    Ok(lanes)
}

/// How many lanes: as many as wanted, within the pool's room and one per partition, at least
/// one.
fn lane_count(wanted: usize, pool_room: usize, partitions: usize) -> usize {
    wanted.min(pool_room).clamp(1, partitions.max(1))
}

impl Lane {
    fn new(consumer: Arc<BaseConsumer>) -> Self {
        Self {
            consumer,
            checkpoints: HashMap::new(),
            reached: HashMap::new(),
        }
    }

    /// The end offsets (last stable offsets) of the lane's partitions as they are now, and
    /// how many offsets short of them the lane is.
    pub(super) async fn ends(&self) -> Result<(HashMap<TopicPartition, i64>, u64)> {
        let mut ends = HashMap::new();
        let mut left = 0u64;
        for (key, position) in &self.reached {
            let end = watermarks(&self.consumer, &key.topic, key.partition)
                .await?
                .1;
            left += (end - position).max(0) as u64;
            ends.insert(key.clone(), end);
        }
        Ok((ends, left))
    }

    /// Applies batches until every partition of the lane reaches `ends`. Returns the records
    /// read and the dead letters written.
    pub(super) async fn read_to<P: Projection>(
        &mut self,
        ends: &HashMap<TopicPartition, i64>,
        pool: &PgPool,
        projection: &P,
        target: &Target<'_>,
        batch_size: usize,
        progress: &Mutex<Progress>,
    ) -> Result<(u64, u64)> {
        let mut records = 0u64;
        let mut dead_lettered = 0u64;
        let mut idle_since = Instant::now();
        while self.short_of(ends) {
            let (c, polled) = poll_batch(Arc::clone(&self.consumer), batch_size).await?;
            drop(c);
            let before = self.offsets();
            if polled.is_empty() {
                // Nothing more to fetch although a position is short of its end: transaction
                // markers or aborted records close the gap. The checkpoint comparison at the
                // swap decides correctness; this only ends the wait.
                if idle_since.elapsed() > Duration::from_secs(3) {
                    break;
                }
                refresh_positions(&self.consumer, &mut self.reached);
                lock(progress).advance(self.offsets().saturating_sub(before), 0);
                continue;
            }
            idle_since = Instant::now();
            let by_partition = by_partition(polled);
            let count: u64 = by_partition.iter().map(|(_, list)| list.len() as u64).sum();
            dead_lettered += self
                .apply_polled(&by_partition, pool, projection, target)
                .await?;
            records += count;
            refresh_positions(&self.consumer, &mut self.reached);
            lock(progress).advance(self.offsets().saturating_sub(before), count);
        }
        Ok((records, dead_lettered))
    }

    /// Whether a partition of the lane has not read up to its end in `ends`.
    fn short_of(&self, ends: &HashMap<TopicPartition, i64>) -> bool {
        ends.iter()
            .any(|(k, end)| self.reached.get(k).is_some_and(|p| p < end))
    }

    /// One transaction for the whole polled batch: a compare-and-set per partition, one
    /// apply, one commit; retried until it commits. Returns the dead letters written.
    async fn apply_polled<P: Projection>(
        &mut self,
        by_partition: &[(TopicPartition, Vec<Record>)],
        pool: &PgPool,
        projection: &P,
        target: &Target<'_>,
    ) -> Result<u64> {
        let id = target.projection;
        let mut attempt = 0u32;
        let mut transient_since: Option<Instant> = None;
        let mut backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let parts: Vec<batch::Part<'_>> = by_partition
                .iter()
                .map(|(key, list)| batch::Part {
                    expected: *self.checkpoints.get(key).unwrap_or(&0),
                    records: list,
                })
                .collect();
            match batch::apply_parts(pool, projection, target, &parts).await {
                Ok(PartsOutcome::Committed { nexts, poisoned }) => {
                    for ((key, _), next) in by_partition.iter().zip(nexts) {
                        if let Some(next) = next {
                            self.advance(key, next);
                        }
                    }
                    return Ok(poisoned as u64);
                }
                Ok(PartsOutcome::Conflict { part, checkpoint }) => {
                    let key = &by_partition[part].0;
                    let expected = parts[part].expected;
                    self.conflicted(id, key, expected, checkpoint)?;
                    attempt += 1;
                    if attempt > 20 {
                        return Err(Error::RebuildConflict {
                            projection: id.to_owned(),
                            reason: "shadow checkpoints keep moving".into(),
                        });
                    }
                }
                Ok(PartsOutcome::Halt(reason)) => {
                    let key = &by_partition[0].0;
                    return Err(Error::Halted {
                        topic: key.topic.clone(),
                        partition: key.partition,
                        reason,
                    });
                }
                Err(batch::Transient(reason)) => {
                    // Postgres restarting, a lost connection, a deadlock: retried with
                    // back-off for a while (never skipped), then a clear error; the next
                    // run resumes from the shadow checkpoints.
                    let waited = transient_since.get_or_insert_with(Instant::now).elapsed();
                    if waited > TRANSIENT_BUDGET {
                        return Err(Error::RetriesExhausted {
                            what: format!("rebuild of {id}"),
                            waited,
                            reason,
                        });
                    }
                    let delay = backoff.next();
                    tracing::warn!(%reason, retry_in = ?delay, "rebuild batch failed transiently; retrying");
                    tokio::time::sleep(delay).await;
                    self.resync(pool, id, by_partition).await;
                }
            }
        }
    }

    /// The compare-and-set of `key` found its shadow checkpoint at `checkpoint` instead of
    /// `expected`.
    fn conflicted(
        &mut self,
        id: &str,
        key: &TopicPartition,
        expected: i64,
        checkpoint: Option<i64>,
    ) -> Result<()> {
        // Only a second rebuild could move a shadow checkpoint, and the
        // advisory lock excludes that; go on from where it is.
        let now = checkpoint.unwrap_or(expected);
        if now < expected {
            // Moved back: another rebuild (its advisory lock is on a
            // connection that can be lost) reset it. Applying the records in
            // hand would skip the offsets in between: stop; run it again.
            return Err(Error::RebuildConflict {
                projection: id.to_owned(),
                reason: format!(
                    "the shadow checkpoint of {}[{}] moved back from {} to {now}",
                    key.topic, key.partition, expected
                ),
            });
        }
        tracing::warn!(
            partition = key.partition,
            now,
            "shadow checkpoint moved; re-reading"
        );
        self.advance(key, now);
        Ok(())
    }

    /// After a transient failure the outcome may be unknown (a connection lost at COMMIT):
    /// take the checkpoints as they are now, or try again later if that fails too.
    async fn resync(
        &mut self,
        pool: &PgPool,
        id: &str,
        by_partition: &[(TopicPartition, Vec<Record>)],
    ) {
        match read_shadow_checkpoints(pool, id, by_partition).await {
            Ok(now) => {
                for (key, next) in now {
                    self.advance(&key, next);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the shadow checkpoints yet");
            }
        }
    }

    /// The shadow checkpoint of `key` is now `next`; the lane has read at least that far.
    fn advance(&mut self, key: &TopicPartition, next: i64) {
        self.checkpoints.insert(key.clone(), next);
        let reached = self.reached.entry(key.clone()).or_insert(next);
        *reached = (*reached).max(next);
    }

    /// The sum of how far the lane has read: progress counts offsets, not records (in a
    /// transactional log, commit markers and aborted records take offsets too).
    fn offsets(&self) -> u64 {
        self.reached.values().map(|p| (*p).max(0) as u64).sum()
    }
}

/// A polled batch grouped by partition, partitions in the order they first appear, records
/// in the order polled.
fn by_partition(polled: Vec<Record>) -> Vec<(TopicPartition, Vec<Record>)> {
    let mut by_partition: Vec<(TopicPartition, Vec<Record>)> = Vec::new();
    for record in polled {
        let key = TopicPartition::of(&record);
        match by_partition.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(record),
            None => by_partition.push((key, vec![record])),
        }
    }
    by_partition
}

/// The shadow checkpoints of the batch's partitions, where they exist.
async fn read_shadow_checkpoints(
    pool: &PgPool,
    id: &str,
    parts: &[(TopicPartition, Vec<Record>)],
) -> Result<Vec<(TopicPartition, i64)>> {
    let pg = |op| move |e| Error::Postgres { op, source: e };
    let mut c = pool.acquire().await.map_err(pg("acquire"))?;
    let mut out = Vec::new();
    for (key, _) in parts {
        if let Some(now) = checkpoint::read(&mut c, id, Slot::Shadow, &key.topic, key.partition)
            .await
            .map_err(pg("read checkpoint"))?
        {
            out.push((key.clone(), now));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedMessage, Timestamp};

    fn record(topic: &str, partition: i32, offset: i64) -> Record {
        let message = OwnedMessage::new(
            None,
            None,
            topic.into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        );
        Record::copy(&message, Arc::from(topic))
    }

    fn key(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition::new(topic, partition)
    }

    /// A lane whose consumer never connects (nothing listens on port 1).
    fn lane() -> Lane {
        let kafka = KafkaConfig::new("127.0.0.1:1");
        Lane::new(rebuild_consumer(&kafka, "unit.v1").expect("consumer"))
    }

    #[test]
    fn a_polled_batch_is_grouped_by_partition_in_order() {
        let polled = vec![
            record("a", 0, 5),
            record("a", 1, 7),
            record("a", 0, 6),
            record("b", 0, 1),
            record("a", 1, 8),
        ];
        let grouped: Vec<(TopicPartition, Vec<i64>)> = by_partition(polled)
            .into_iter()
            .map(|(k, list)| (k, list.iter().map(Record::offset).collect()))
            .collect();
        assert_eq!(
            grouped,
            vec![
                (key("a", 0), vec![5, 6]),
                (key("a", 1), vec![7, 8]),
                (key("b", 0), vec![1]),
            ]
        );
    }

    #[test]
    fn lanes_are_at_least_one_and_at_most_one_per_partition_within_the_pool() {
        assert_eq!(lane_count(4, 8, 12), 4);
        assert_eq!(lane_count(4, 2, 12), 2, "the pool's room");
        assert_eq!(lane_count(4, 8, 3), 3, "one per partition");
        assert_eq!(lane_count(4, 0, 12), 1, "a pool without room");
        assert_eq!(lane_count(4, 8, 0), 1, "no partitions");
    }

    #[test]
    fn the_checkpoint_advances_and_the_reached_offset_never_goes_back() {
        let mut lane = lane();
        let k = key("a", 0);
        lane.reached.insert(k.clone(), 10);
        lane.advance(&k, 8);
        assert_eq!(lane.checkpoints[&k], 8);
        assert_eq!(lane.reached[&k], 10, "read past commit markers already");
        lane.advance(&k, 12);
        assert_eq!((lane.checkpoints[&k], lane.reached[&k]), (12, 12));
    }

    #[test]
    fn a_lane_is_short_of_its_ends_until_every_partition_reaches_them() {
        let mut lane = lane();
        lane.reached.insert(key("a", 0), 5);
        lane.reached.insert(key("a", 1), 9);
        let ends = HashMap::from([(key("a", 0), 9), (key("a", 1), 9)]);
        assert!(lane.short_of(&ends));
        assert_eq!(lane.offsets(), 14);
        lane.advance(&key("a", 0), 9);
        assert!(!lane.short_of(&ends));
        assert_eq!(lane.offsets(), 18);
        // A partition of another lane does not keep this one reading.
        let others = HashMap::from([(key("b", 0), 100)]);
        assert!(!lane.short_of(&others));
    }

    #[test]
    fn a_checkpoint_moved_back_stops_the_rebuild_and_one_moved_ahead_is_followed() {
        let mut lane = lane();
        let k = key("a", 0);
        lane.advance(&k, 10);
        let back = lane
            .conflicted("unit.v1", &k, 10, Some(4))
            .expect_err("moved back");
        assert!(
            back.to_string().contains("moved back from 10 to 4"),
            "{back}"
        );
        assert_eq!(lane.checkpoints[&k], 10);
        lane.conflicted("unit.v1", &k, 10, Some(15))
            .expect("moved ahead");
        assert_eq!((lane.checkpoints[&k], lane.reached[&k]), (15, 15));
        // No row read back: go on from where it was expected.
        lane.conflicted("unit.v1", &k, 15, None).expect("no row");
        assert_eq!(lane.checkpoints[&k], 15);
    }
}
