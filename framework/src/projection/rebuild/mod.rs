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

mod consumer;
mod lanes;
mod lock;
mod progress;
mod reset;
mod shadow;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::batch::Target;
use super::checkpoint::Slot;
use super::runner::setup;
use super::{Projection, live_schema, projection_id};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::event::EventSet;
use crate::failpoint;
use crate::kafka::DeadLetterWriter;
use crate::kafka::SchemaStore;
use crate::kafka::TopicPartition;
use crate::message::topics;
use lanes::Lane;
use lock::RebuildLock;
use progress::{Progress, lock};

pub use reset::reset;

/// How to rebuild.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Discard a shadow left by a killed rebuild instead of resuming it.
    pub fresh: bool,
    /// Print a progress line (events/s, ETA) to stderr: redrawn in place on a terminal,
    /// otherwise a plain line every few seconds and a last one at the end.
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
    /// The projection's id, `{name}.v{version}`.
    pub projection: String,
    /// Records read in this run (a resumed rebuild counts only what it read).
    pub records: u64,
    /// Records dead-lettered in this run.
    pub dead_lettered: u64,
    /// How long this run took, setup and the swap included.
    pub elapsed: Duration,
    /// Whether it went on from a shadow schema a killed rebuild left behind.
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
    setup(&*projection, pool, kafka).await?;

    // One rebuild at a time: a session lock on a connection held until we return.
    let mut lock = RebuildLock::take(pool, &id)
        .await?
        .ok_or_else(|| Error::RebuildRunning {
            projection: id.to_string(),
        })?;
    let result = run(projection, kafka, pool, &options, started, &mut lock).await;
    lock.release().await;
    result
}

/// The rebuild, under its lock: the shadow made or resumed, then passes over the log until
/// the swap finds the shadow ahead of the live view everywhere.
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
    let resumed = shadow::prepare(pool, &*projection, &id, &shadow, options.fresh).await?;
    let mut lanes = open_lanes::<P>(kafka, pool, &id, options.lanes).await?;

    let dead_letters = DeadLetterWriter::new(kafka, &kafka.topic_name(&id))?;
    let schemas = SchemaStore::new(kafka);
    let target = Target {
        projection: &id,
        slot: Slot::Shadow,
        schema: &shadow,
        dead_letters: &dead_letters,
        schemas: &schemas,
    };
    let progress = Mutex::new(Progress::new(options.progress, &id));
    let mut records = 0u64;
    let mut dead_lettered = 0u64;
    loop {
        let (read, dead) = read_pass(
            &mut lanes,
            pool,
            &*projection,
            &target,
            options.batch_size,
            &progress,
        )
        .await?;
        records += read;
        dead_lettered += dead;
        // The swap must not race another rebuild: it runs on the lock's own connection, so it
        // commits only while the session holding the lock is alive.
        rebuild_lock.keep().await?;
        failpoint::hit("rebuild.before_swap");
        if shadow::swap(&mut rebuild_lock.conn, &id, &live, &shadow).await? {
            break;
        }
        tracing::info!(projection = %id, "the live view moved ahead of the shadow; reading on before swapping");
    }
    lock(&progress).finish();
    shadow::drop_replaced(pool, &live).await;
    Ok(RebuildReport {
        projection: id,
        records,
        dead_lettered,
        elapsed: started.elapsed(),
        resumed,
        schema: live,
    })
}

/// The lanes over every partition of the projection's topics and its redrive topic,
/// assigned directly at the shadow checkpoints (created at the log start).
async fn open_lanes<P: Projection>(
    kafka: &KafkaConfig,
    pool: &PgPool,
    id: &str,
    wanted: usize,
) -> Result<Vec<Lane>> {
    let consumer = consumer::rebuild_consumer(kafka, id)?;
    let topics: Vec<String> = P::Events::topics()
        .iter()
        .map(|t| kafka.topic_name(t))
        .collect();
    // Dead letters redriven to the live view are part of it: the rebuild reads them too.
    let redrive = topics::redrive(&kafka.topic_name(id));
    let partitions = consumer::partitions(&consumer, topics, redrive).await?;
    lanes::open(kafka, pool, id, consumer, &partitions, wanted).await
}

/// One pass: every lane reads, concurrently, up to the end offsets (last stable offsets) as
/// they are when the pass starts. Returns the records read and the dead letters written.
async fn read_pass<P: Projection>(
    lanes: &mut [Lane],
    pool: &PgPool,
    projection: &P,
    target: &Target<'_>,
    batch_size: usize,
    progress: &Mutex<Progress>,
) -> Result<(u64, u64)> {
    let mut ends: Vec<HashMap<TopicPartition, i64>> = Vec::with_capacity(lanes.len());
    let mut left = 0u64;
    for lane in lanes.iter() {
        let (lane_ends, lane_left) = lane.ends().await?;
        left += lane_left;
        ends.push(lane_ends);
    }
    lock(progress).add_total(left);
    let reads = lanes
        .iter_mut()
        .zip(&ends)
        .map(|(lane, ends)| lane.read_to(ends, pool, projection, target, batch_size, progress));
    let (mut records, mut dead_lettered) = (0u64, 0u64);
    for (read, dead) in futures::future::try_join_all(reads).await? {
        records += read;
        dead_lettered += dead;
    }
    Ok((records, dead_lettered))
}
