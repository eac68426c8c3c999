//! Rebuild (replay), blue/green: fill a shadow schema from the beginning of the log while the
//! live view keeps serving, then swap it in with one transaction.
//!
//! 1. One rebuild per projection at a time: a session advisory lock, checked again before the
//!    swap (a lost connection loses it: it is taken again, or the rebuild stops if another
//!    rebuild has it).
//! 2. The shadow schema `{live}__shadow` gets the projection's tables and checkpoints of its
//!    own (slot `shadow`), starting at the log start. A killed rebuild leaves them behind and
//!    the next run resumes from them (or discards them with `fresh`).
//! 3. Partitions are assigned directly (no consumer group), dealt out over a few lanes (a
//!    consumer and a connection each), and applied with the same batch transaction as the
//!    live runner, so the shadow equals what the live view would be. Lanes run concurrently,
//!    as the live runner's partitions do: one lane polls and decodes while another waits for
//!    Postgres, and Postgres works on more than one core.
//! 4. Caught up with the end offsets, one transaction locks the live checkpoints; if the
//!    shadow has passed every one of them, it renames the schemas and makes the shadow
//!    checkpoints the live ones. Live runners then fail their next compare-and-set, re-read
//!    the checkpoint and seek: no event is applied twice or skipped. If the live view moved
//!    ahead meanwhile, the rebuild reads on and tries again.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sqlx::{Connection, PgPool};

use super::batch::{self, PartsOutcome, Target};
use super::checkpoint::{self, Slot};
use super::runner::{create_schema, setup};
use super::{Projection, live_schema, projection_id};
use crate::codec::SchemaStore;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::kafka::{DeadLetterWriter, Record};
use crate::message::EventSet;
use crate::postgres::quote_ident;

/// How to rebuild.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Discard a shadow left by a killed rebuild instead of resuming it.
    pub fresh: bool,
    /// Print a progress line (events/s, ETA) to stderr.
    pub progress: bool,
    /// Most records per transaction.
    pub batch_size: usize,
    /// How many consumers, each with its own Postgres connection, share the partitions
    /// (at most one per partition). Batches of different lanes apply concurrently, as the
    /// live runner's partitions do.
    pub lanes: usize,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            fresh: false,
            progress: false,
            batch_size: 5_000,
            lanes: 4,
        }
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    pub projection: String,
    /// Records read in this run (a resumed rebuild counts only what it read).
    pub records: u64,
    pub dead_lettered: u64,
    pub elapsed: Duration,
    pub resumed: bool,
    /// The schema the rebuilt view now serves from.
    pub schema: String,
}

impl std::fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "rebuilt {}: {} records in {:.1}s ({:.0} records/s), {} dead-lettered{}; swapped into schema {}",
            self.projection,
            self.records,
            secs,
            self.records as f64 / secs,
            self.dead_lettered,
            if self.resumed {
                ", resumed from a previous run"
            } else {
                ""
            },
            self.schema
        )
    }
}

/// Rebuilds the projection's view from the log and swaps it in.
pub async fn rebuild<P: Projection>(
    projection: Arc<P>,
    kafka: &KafkaConfig,
    pool: &PgPool,
    options: RebuildOptions,
) -> Result<RebuildReport> {
    let started = Instant::now();
    let id = projection_id::<P>();
    setup(&*projection, pool).await?;

    // One rebuild at a time: a session lock on a connection held until we return.
    let mut lock = RebuildLock::take(pool, &id)
        .await?
        .ok_or_else(|| Error::Config(format!("a rebuild of {id} is already running")))?;
    let result = run(projection, kafka, pool, &options, started, &mut lock).await;
    lock.release().await;
    result
}

/// The advisory lock that keeps rebuilds of a projection one at a time. It lives on one
/// connection; when that connection is lost (Postgres restarted, a proxy timed out), so is
/// the lock, and [`RebuildLock::keep`] takes it again or says who has it.
struct RebuildLock {
    pool: PgPool,
    id: String,
    /// Detached from the pool: if the rebuild is dropped half-way, the connection closes and
    /// the lock goes with it, instead of going back to the pool still held.
    conn: sqlx::PgConnection,
}

impl RebuildLock {
    /// The lock, or `None` when another session holds it.
    async fn take(pool: &PgPool, id: &str) -> Result<Option<Self>> {
        let pg = |op| move |e| Error::Postgres { op, source: e };
        let mut conn = pool.acquire().await.map_err(pg("acquire"))?.detach();
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('choreo.rebuild.' || $1))")
                .bind(id)
                .fetch_one(&mut conn)
                .await
                .map_err(pg("advisory lock"))?;
        Ok(locked.then(|| Self {
            pool: pool.clone(),
            id: id.to_owned(),
            conn,
        }))
    }

    /// Makes sure the lock is still held: a live connection still holds its session lock; a
    /// lost one is replaced and the lock taken again, unless another rebuild took it
    /// meanwhile (an error: stop, and run again once that one is done).
    async fn keep(&mut self) -> Result<()> {
        if sqlx::query("SELECT 1")
            .execute(&mut self.conn)
            .await
            .is_ok()
        {
            return Ok(());
        }
        tracing::warn!(projection = %self.id, "the rebuild lock's connection was lost; taking the lock again");
        match Self::take(&self.pool, &self.id).await? {
            Some(fresh) => {
                *self = fresh;
                Ok(())
            }
            None => Err(Error::Runtime(format!(
                "rebuild of {}: lost its lock, and another rebuild holds it now; run it again to resume",
                self.id
            ))),
        }
    }

    async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext('choreo.rebuild.' || $1))")
            .bind(&self.id)
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}

async fn run<P: Projection>(
    projection: Arc<P>,
    kafka: &KafkaConfig,
    pool: &PgPool,
    options: &RebuildOptions,
    started: Instant,
    rebuild_lock: &mut RebuildLock,
) -> Result<RebuildReport> {
    let id = projection_id::<P>();
    let live = live_schema::<P>();
    let shadow = format!("{live}__shadow");
    let pg = |op| move |e| Error::Postgres { op, source: e };

    let existing: Option<String> =
        sqlx::query_scalar("SELECT shadow_schema FROM choreo_meta.rebuilds WHERE projection = $1")
            .bind(&id)
            .fetch_optional(pool)
            .await
            .map_err(pg("read rebuilds"))?;
    let schema_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&shadow)
            .fetch_one(pool)
            .await
            .map_err(pg("find shadow"))?;
    let resumed = existing.is_some() && schema_exists && !options.fresh;
    if !resumed {
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote_ident(&shadow)
        ))
        .execute(pool)
        .await
        .map_err(pg("drop old shadow"))?;
        sqlx::query(
            "DELETE FROM choreo_meta.checkpoints WHERE projection = $1 AND slot = 'shadow'",
        )
        .bind(&id)
        .execute(pool)
        .await
        .map_err(pg("clear shadow checkpoints"))?;
        create_schema(pool, &*projection, &shadow, false).await?;
        sqlx::query(
            "INSERT INTO choreo_meta.rebuilds (projection, shadow_schema) VALUES ($1, $2) \
             ON CONFLICT (projection) DO UPDATE SET shadow_schema = $2, started_at = now()",
        )
        .bind(&id)
        .bind(&shadow)
        .execute(pool)
        .await
        .map_err(pg("record rebuild"))?;
    }

    // Partitions, assigned directly at the shadow checkpoints (created at the log start).
    let consumer = rebuild_consumer(kafka, &id)?;
    let topics: Vec<String> = P::Events::topics()
        .iter()
        .map(|t| kafka.topic_name(t))
        .collect();
    // Dead letters redriven to the live view are part of it: the rebuild reads them too.
    let redrive = format!("{}.redrive", kafka.topic_name(&id));
    let partitions = {
        let c = Arc::clone(&consumer);
        tokio::task::spawn_blocking(move || -> Result<Vec<(String, i32)>> {
            let mut out = Vec::new();
            for topic in topics.iter().chain(std::iter::once(&redrive)) {
                let metadata = c
                    .fetch_metadata(Some(topic), Duration::from_secs(10))
                    .map_err(|e| Error::kafka("fetch metadata", e))?;
                let count = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map_or(0, |t| t.partitions().len());
                if count == 0 && *topic == redrive {
                    continue;
                }
                if count == 0 {
                    return Err(Error::TopicMissing(topic.clone()));
                }
                out.extend((0..count as i32).map(|p| (topic.clone(), p)));
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Runtime(format!("metadata task failed: {e}")))??
    };

    // Lanes: the partitions dealt out over a few consumers, each applying its own batches on
    // its own connection. While one lane waits for Postgres, another polls and decodes, and
    // Postgres works on more than one core.
    // At most one lane per partition, and no more than the pool can serve beside the lock's
    // connection and one spare (more would only queue for connections).
    let pool_room = (pool.options().get_max_connections() as usize).saturating_sub(2);
    let lane_count = options
        .lanes
        .min(pool_room)
        .clamp(1, partitions.len().max(1));
    let mut lanes: Vec<Lane> = Vec::with_capacity(lane_count);
    for i in 0..lane_count {
        let consumer = if i == 0 {
            Arc::clone(&consumer)
        } else {
            rebuild_consumer(kafka, &id)?
        };
        lanes.push(Lane {
            consumer,
            checkpoints: HashMap::new(),
            reached: HashMap::new(),
        });
    }
    drop(consumer);
    let mut conn = pool.acquire().await.map_err(pg("acquire"))?;
    let mut assignments: Vec<TopicPartitionList> =
        (0..lane_count).map(|_| TopicPartitionList::new()).collect();
    for (i, (topic, partition)) in partitions.iter().enumerate() {
        let lane = i % lane_count;
        let (low, _) = watermarks(&lanes[lane].consumer, topic, *partition).await?;
        let start = checkpoint::init(&mut conn, &id, Slot::Shadow, topic, *partition, low)
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
        lanes[lane]
            .checkpoints
            .insert((topic.clone(), *partition), start);
        lanes[lane]
            .reached
            .insert((topic.clone(), *partition), start);
    }
    drop(conn);
    for (lane, assignment) in lanes.iter().zip(&assignments) {
        lane.consumer
            .assign(assignment)
            .map_err(|e| Error::kafka("assign", e))?;
    }

    let dead_letters = DeadLetterWriter::new(kafka, &kafka.topic_name(&id))?;
    let schemas = SchemaStore::new(kafka);
    let target = Target {
        projection: &id,
        slot: Slot::Shadow,
        schema: &shadow,
        dead_letters: &dead_letters,
        schemas: &schemas,
    };
    let progress = std::sync::Mutex::new(Progress::new(options.progress, &id));
    let mut records = 0u64;
    let mut dead_lettered = 0u64;
    loop {
        // Read up to the end offsets (last stable offsets) as they are now.
        let mut ends: Vec<HashMap<(String, i32), i64>> = Vec::with_capacity(lanes.len());
        let mut left = 0u64;
        for lane in &lanes {
            let mut lane_ends = HashMap::new();
            for (key, position) in &lane.reached {
                let end = watermarks(&lane.consumer, &key.0, key.1).await?.1;
                left += (end - position).max(0) as u64;
                lane_ends.insert(key.clone(), end);
            }
            ends.push(lane_ends);
        }
        lock(&progress).add_total(left);
        let reads = lanes.iter_mut().zip(&ends).map(|(lane, ends)| {
            lane.read_to(
                ends,
                pool,
                &*projection,
                &target,
                options.batch_size,
                &progress,
            )
        });
        for (read, dead) in futures::future::try_join_all(reads).await? {
            records += read;
            dead_lettered += dead;
        }
        // The swap must not race another rebuild: it runs on the lock's own connection, so it
        // commits only while the session holding the lock is alive.
        rebuild_lock.keep().await?;
        failpoint::hit("rebuild.before_swap");
        if swap(&mut rebuild_lock.conn, &id, &live, &shadow).await? {
            break;
        }
        tracing::info!(projection = %id, "the live view moved ahead of the shadow; reading on before swapping");
    }
    lock(&progress).finish();
    // The old copy is no longer referenced; dropping it may wait for readers, so best effort.
    let old = format!("{live}__old");
    if let Err(e) = sqlx::query(&format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        quote_ident(&old)
    ))
    .execute(pool)
    .await
    {
        tracing::warn!(error = %e, schema = %old, "could not drop the replaced view yet; drop it later");
    }
    Ok(RebuildReport {
        projection: id,
        records,
        dead_lettered,
        elapsed: started.elapsed(),
        resumed,
        schema: live,
    })
}

/// The swap transaction, on the connection holding the rebuild lock. False when the live
/// view is ahead of the shadow somewhere.
async fn swap(conn: &mut sqlx::PgConnection, id: &str, live: &str, shadow: &str) -> Result<bool> {
    let pg = |op| move |e| Error::Postgres { op, source: e };
    let mut tx = conn.begin().await.map_err(pg("begin"))?;
    sqlx::query("SELECT set_config('lock_timeout', '10s', true)")
        .execute(&mut *tx)
        .await
        .map_err(pg("lock_timeout"))?;
    // Locking the live checkpoints stops live runners from committing until we are done.
    let live_rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT topic, partition, next_offset FROM choreo_meta.checkpoints WHERE projection = $1 AND slot = 'live' FOR UPDATE",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await
    .map_err(pg("lock live checkpoints"))?;
    let shadow_rows: HashMap<(String, i32), i64> = sqlx::query_as::<_, (String, i32, i64)>(
        "SELECT topic, partition, next_offset FROM choreo_meta.checkpoints WHERE projection = $1 AND slot = 'shadow'",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await
    .map_err(pg("read shadow checkpoints"))?
    .into_iter()
    .map(|(t, p, o)| ((t, p), o))
    .collect();
    for (topic, partition, live_next) in &live_rows {
        if shadow_rows
            .get(&(topic.clone(), *partition))
            .is_none_or(|s| s < live_next)
        {
            tx.rollback().await.map_err(pg("rollback"))?;
            return Ok(false);
        }
    }
    let old = format!("{live}__old");
    for statement in [
        format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&old)),
        format!(
            "ALTER SCHEMA {} RENAME TO {}",
            quote_ident(live),
            quote_ident(&old)
        ),
        format!(
            "ALTER SCHEMA {} RENAME TO {}",
            quote_ident(shadow),
            quote_ident(live)
        ),
    ] {
        sqlx::query(&statement)
            .execute(&mut *tx)
            .await
            .map_err(pg("swap schemas"))?;
    }
    sqlx::query("DELETE FROM choreo_meta.checkpoints WHERE projection = $1 AND slot = 'live'")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(pg("drop live checkpoints"))?;
    sqlx::query("UPDATE choreo_meta.checkpoints SET slot = 'live', updated_at = now() WHERE projection = $1 AND slot = 'shadow'")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(pg("promote shadow checkpoints"))?;
    sqlx::query("DELETE FROM choreo_meta.rebuilds WHERE projection = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(pg("finish rebuild"))?;
    sqlx::query("UPDATE choreo_meta.projections SET rebuilt_at = now() WHERE projection = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(pg("mark rebuilt"))?;
    failpoint::hit("rebuild.before_swap_commit");
    tx.commit().await.map_err(pg("commit swap"))?;
    Ok(true)
}

/// Drops the live view and its checkpoints and recreates it empty (development only: stop
/// the live runners first; they would halt on the missing checkpoint).
pub async fn reset<P: Projection>(projection: &P, pool: &PgPool) -> Result<()> {
    let id = projection_id::<P>();
    let live = live_schema::<P>();
    let pg = |op| move |e| Error::Postgres { op, source: e };
    setup(projection, pool).await?;
    let mut tx = pool.begin().await.map_err(pg("begin"))?;
    for schema in [
        live.clone(),
        format!("{live}__shadow"),
        format!("{live}__old"),
    ] {
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote_ident(&schema)
        ))
        .execute(&mut *tx)
        .await
        .map_err(pg("drop schema"))?;
    }
    for table in ["checkpoints", "rebuilds"] {
        sqlx::query(&format!(
            "DELETE FROM choreo_meta.{table} WHERE projection = $1"
        ))
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(pg("reset"))?;
    }
    sqlx::query("DELETE FROM choreo_meta.dead_letters WHERE consumer = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(pg("reset"))?;
    tx.commit().await.map_err(pg("commit"))?;
    create_schema(pool, projection, &live, true).await
}

/// A consumer over some of the partitions.
///
/// Two offsets per partition, which differ in a transactional log: `checkpoints` is the
/// shadow checkpoint (the last applied record + 1), what the next batch's compare-and-set
/// expects; `reached` is how far the consumer has read, past commit markers and aborted
/// records, what decides whether the lane is at the end. Expecting the consumer position
/// would fail the compare-and-set one offset past every final commit marker.
struct Lane {
    consumer: Arc<BaseConsumer>,
    checkpoints: HashMap<(String, i32), i64>,
    reached: HashMap<(String, i32), i64>,
}

impl Lane {
    /// Applies batches until every partition of the lane reaches `ends`. Returns the records
    /// read and the dead letters written.
    async fn read_to<P: Projection>(
        &mut self,
        ends: &HashMap<(String, i32), i64>,
        pool: &PgPool,
        projection: &P,
        target: &Target<'_>,
        batch_size: usize,
        progress: &std::sync::Mutex<Progress>,
    ) -> Result<(u64, u64)> {
        let id = target.projection;
        let mut records = 0u64;
        let mut dead_lettered = 0u64;
        let mut idle_since = Instant::now();
        while ends
            .iter()
            .any(|(k, end)| self.reached.get(k).is_some_and(|p| p < end))
        {
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
            let mut by_partition: Vec<((String, i32), Vec<Record>)> = Vec::new();
            for record in polled {
                let key = (record.topic().to_owned(), record.partition());
                match by_partition.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, list)) => list.push(record),
                    None => by_partition.push((key, vec![record])),
                }
            }
            // One transaction for the whole polled batch: a compare-and-set per partition,
            // one apply, one commit.
            let count: u64 = by_partition.iter().map(|(_, list)| list.len() as u64).sum();
            let mut attempt = 0u32;
            let mut transient_since: Option<Instant> = None;
            let mut backoff = Duration::ZERO;
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
                        dead_lettered += poisoned as u64;
                        break;
                    }
                    Ok(PartsOutcome::Conflict { part, checkpoint }) => {
                        // Only a second rebuild could move a shadow checkpoint, and the
                        // advisory lock excludes that; go on from where it is.
                        let key = &by_partition[part].0;
                        let now = checkpoint.unwrap_or(parts[part].expected);
                        if now < parts[part].expected {
                            // Moved back: another rebuild (its advisory lock is on a
                            // connection that can be lost) reset it. Applying the records in
                            // hand would skip the offsets in between: stop; run it again.
                            return Err(Error::Runtime(format!(
                                "rebuild of {id}: the shadow checkpoint of {}[{}] moved back from {} to {now}; \
                                 is another rebuild running? run it again to resume",
                                key.0, key.1, parts[part].expected
                            )));
                        }
                        tracing::warn!(
                            partition = key.1,
                            now,
                            "shadow checkpoint moved; re-reading"
                        );
                        self.advance(key, now);
                        attempt += 1;
                        if attempt > 20 {
                            return Err(Error::Runtime(format!(
                                "rebuild of {id}: shadow checkpoints keep moving"
                            )));
                        }
                    }
                    Ok(PartsOutcome::Halt(reason)) => {
                        let key = &by_partition[0].0;
                        return Err(Error::Halted {
                            topic: key.0.clone(),
                            partition: key.1,
                            reason,
                        });
                    }
                    Err(batch::Transient(reason)) => {
                        // Postgres restarting, a lost connection, a deadlock: retried with
                        // back-off for a while (never skipped), then a clear error; the next
                        // run resumes from the shadow checkpoints.
                        let waited = transient_since.get_or_insert_with(Instant::now).elapsed();
                        if waited > TRANSIENT_BUDGET {
                            return Err(Error::Runtime(format!(
                                "rebuild of {id} kept failing for {waited:?}: {reason} (run it again to resume)"
                            )));
                        }
                        backoff =
                            (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                        tracing::warn!(%reason, retry_in = ?backoff, "rebuild batch failed transiently; retrying");
                        tokio::time::sleep(backoff).await;
                        // The outcome may be unknown (a connection lost at COMMIT): take the
                        // checkpoints as they are now, or try again later if that fails too.
                        match read_shadow_checkpoints(pool, id, &by_partition).await {
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
                }
            }
            records += count;
            refresh_positions(&self.consumer, &mut self.reached);
            lock(progress).advance(self.offsets().saturating_sub(before), count);
        }
        Ok((records, dead_lettered))
    }

    /// The shadow checkpoint of `key` is now `next`; the lane has read at least that far.
    fn advance(&mut self, key: &(String, i32), next: i64) {
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

/// A consumer for a rebuild: partitions are assigned directly, nothing is committed to Kafka.
fn rebuild_consumer(kafka: &KafkaConfig, id: &str) -> Result<Arc<BaseConsumer>> {
    Ok(Arc::new(
        kafka
            .client_config(&[
                ("group.id", &format!("{id}.rebuild")),
                ("enable.auto.commit", "false"),
                ("isolation.level", "read_committed"),
                ("enable.partition.eof", "false"),
            ])
            .create()
            .map_err(|e| Error::Config(format!("kafka consumer settings rejected: {e}")))?,
    ))
}

/// Locks the shared progress line (a poisoned lock still holds usable counters).
fn lock(progress: &std::sync::Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn watermarks(
    consumer: &Arc<BaseConsumer>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64)> {
    let c = Arc::clone(consumer);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        c.fetch_watermarks(&topic, partition, Duration::from_secs(10))
    })
    .await
    .map_err(|e| Error::Runtime(format!("watermark task failed: {e}")))?
    .map_err(|e| Error::kafka("fetch watermarks", e))
}

/// Polls up to `max` records (waiting at most ~200 ms for the first) off the async threads.
async fn poll_batch(
    consumer: Arc<BaseConsumer>,
    max: usize,
) -> Result<(Arc<BaseConsumer>, Vec<Record>)> {
    tokio::task::spawn_blocking(move || {
        let mut out: Vec<Record> = Vec::with_capacity(max.min(10_000));
        let mut timeout = Duration::from_millis(200);
        while out.len() < max {
            match consumer.poll(timeout) {
                Some(Ok(message)) => {
                    let topic = match out.last() {
                        Some(last) if last.topic() == message.topic() => {
                            Arc::clone(last.topic_arc())
                        }
                        _ => Arc::from(message.topic()),
                    };
                    out.push(Record::copy(&message, topic));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "rebuild consumer error");
                    break;
                }
                None => break,
            }
            timeout = Duration::ZERO;
        }
        (consumer, out)
    })
    .await
    .map(Ok)
    .map_err(|e| Error::Runtime(format!("poll task failed: {e}")))?
}

/// Moves positions forward to the consumer's own (it passes transaction markers).
fn refresh_positions(consumer: &BaseConsumer, positions: &mut HashMap<(String, i32), i64>) {
    if let Ok(list) = consumer.position() {
        for element in list.elements() {
            if let Offset::Offset(o) = element.offset()
                && let Some(p) =
                    positions.get_mut(&(element.topic().to_owned(), element.partition()))
                && o > *p
            {
                *p = o;
            }
        }
    }
}

/// How long a rebuild retries transient database errors before it gives up (resumably).
const TRANSIENT_BUDGET: Duration = Duration::from_secs(300);

/// The shadow checkpoints of the batch's partitions, where they exist.
async fn read_shadow_checkpoints(
    pool: &PgPool,
    id: &str,
    parts: &[((String, i32), Vec<Record>)],
) -> Result<Vec<((String, i32), i64)>> {
    let pg = |op| move |e| Error::Postgres { op, source: e };
    let mut c = pool.acquire().await.map_err(pg("acquire"))?;
    let mut out = Vec::new();
    for (key, _) in parts {
        if let Some(now) = checkpoint::read(&mut c, id, Slot::Shadow, &key.0, key.1)
            .await
            .map_err(pg("read checkpoint"))?
        {
            out.push((key.clone(), now));
        }
    }
    Ok(out)
}

/// The progress line: how far through the log (offsets), records/s, and the ETA from the end
/// offsets.
struct Progress {
    enabled: bool,
    name: String,
    /// Offsets to read, and read so far.
    total: u64,
    done: u64,
    records: u64,
    started: Instant,
    last_print: Instant,
}

impl Progress {
    fn new(enabled: bool, name: &str) -> Self {
        let now = Instant::now();
        Self {
            enabled,
            name: name.to_owned(),
            total: 0,
            done: 0,
            records: 0,
            started: now,
            last_print: now,
        }
    }

    /// More offsets to read (the ends moved since the last pass).
    fn add_total(&mut self, more: u64) {
        self.total = (self.total + more).max(self.done);
    }

    fn advance(&mut self, offsets: u64, records: u64) {
        self.done += offsets;
        self.records += records;
        if self.enabled && self.last_print.elapsed() >= Duration::from_millis(500) {
            self.last_print = Instant::now();
            self.print();
        }
    }

    fn print(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.records as f64 / secs;
        let offset_rate = self.done as f64 / secs;
        let left = self.total.saturating_sub(self.done);
        let eta = if offset_rate > 0.0 {
            left as f64 / offset_rate
        } else {
            0.0
        };
        let pct = if self.total > 0 {
            self.done as f64 * 100.0 / self.total as f64
        } else {
            100.0
        };
        let width = 30usize;
        let filled = ((pct / 100.0) * width as f64) as usize;
        let bar: String = "#".repeat(filled.min(width)) + &"-".repeat(width - filled.min(width));
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\rrebuilding {} [{bar}] {pct:.0}% of the log, {} records, {rate:.0} records/s, ETA {eta:.0}s   ",
            self.name, self.records
        );
        let _ = err.flush();
    }

    fn finish(&mut self) {
        if self.enabled {
            self.print();
            eprintln!();
        }
    }
}
