//! Snapshots: every N events, a partition's aggregate states go to Postgres
//! (`choreo_meta.snapshots`) with the events offset they reflect, so a restore reads only the
//! tail of the partition.
//!
//! A snapshot is a cache, never the truth: one that cannot be read (corrupt, another format,
//! another state version, or an offset past the end of the log) is ignored with a warning and
//! the partition is restored from the beginning of its events. The body is JSON of the
//! aggregates (id, version, state, recent command ids with their outcomes), so it can be
//! inspected with `psql`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::reply::Outcome;

/// choreo's snapshot layout; bumped when the body's shape changes.
pub(crate) const FORMAT: i32 = 1;

/// How a command processor snapshots its partitions.
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    pub(crate) pool: PgPool,
    pub(crate) every_events: u64,
    pub(crate) state_version: i32,
}

impl SnapshotSettings {
    /// A snapshot of a partition after every `every_events` events written to it, in the
    /// database of `pool` (choreo's migrations applied). `state_version` is the version of
    /// the aggregate's serialized state: bump it when the state type changes incompatibly,
    /// and older snapshots are ignored.
    pub fn new(pool: PgPool, every_events: u64, state_version: i32) -> Self {
        Self {
            pool,
            every_events: every_events.max(1),
            state_version,
        }
    }
}

/// One aggregate in a snapshot body.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredAggregate<S> {
    pub id: String,
    pub version: u64,
    pub state: S,
    pub recent: Vec<(Uuid, Outcome)>,
}

/// A snapshot as read back.
pub(crate) struct Loaded {
    pub format: i32,
    pub state_version: i32,
    pub events_offset: i64,
    pub body: Vec<u8>,
}

pub(crate) fn encode<S: Serialize>(aggregates: &[StoredAggregate<&S>]) -> Result<Vec<u8>, String> {
    serde_json::to_vec(aggregates).map_err(|e| e.to_string())
}

pub(crate) fn decode<S: DeserializeOwned>(body: &[u8]) -> Result<Vec<StoredAggregate<S>>, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

pub(crate) async fn load(
    pool: &PgPool,
    events_topic: &str,
    partition: i32,
) -> Result<Option<Loaded>, sqlx::Error> {
    let row: Option<(i32, i32, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT format, state_version, events_offset, body FROM choreo_meta.snapshots
         WHERE events_topic = $1 AND partition = $2",
    )
    .bind(events_topic)
    .bind(partition)
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map(|(format, state_version, events_offset, body)| Loaded {
            format,
            state_version,
            events_offset,
            body,
        }),
    )
}

/// Stores a snapshot unless a newer one is there already (writes may finish out of order).
pub(crate) async fn store(
    pool: &PgPool,
    events_topic: &str,
    partition: i32,
    state_version: i32,
    events_offset: i64,
    aggregates: usize,
    body: Vec<u8>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO choreo_meta.snapshots
             (events_topic, partition, format, state_version, events_offset, aggregates, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (events_topic, partition) DO UPDATE SET
             format = EXCLUDED.format, state_version = EXCLUDED.state_version,
             events_offset = EXCLUDED.events_offset, aggregates = EXCLUDED.aggregates,
             taken_at = now(), body = EXCLUDED.body
         WHERE snapshots.events_offset < EXCLUDED.events_offset
            OR snapshots.format <> EXCLUDED.format
            OR snapshots.state_version <> EXCLUDED.state_version",
    )
    .bind(events_topic)
    .bind(partition)
    .bind(FORMAT)
    .bind(state_version)
    .bind(events_offset)
    .bind(aggregates as i32)
    .bind(body)
    .execute(pool)
    .await?;
    Ok(())
}
