//! Checkpoints: the next offset to apply per projection, slot and partition.

use sqlx::{PgConnection, PgPool};

use crate::error::{Error, Result};

/// Which copy of a view a checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The view queries read.
    Live,
    /// A rebuild in progress.
    Shadow,
}

impl Slot {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Slot::Live => "live",
            Slot::Shadow => "shadow",
        }
    }
}

/// One row of `choreo_meta.checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CheckpointRow {
    /// The projection's id, `{name}.v{version}`.
    pub projection: String,
    /// `live` or `shadow` (a rebuild's).
    pub slot: String,
    /// The topic read.
    pub topic: String,
    /// The partition read.
    pub partition: i32,
    /// The offset to read next: last applied + 1.
    pub next_offset: i64,
}

/// All checkpoints (for status displays), ordered.
pub async fn checkpoints(pool: &PgPool) -> Result<Vec<CheckpointRow>> {
    sqlx::query_as(
        "SELECT projection, slot, topic, partition, next_offset FROM choreo_meta.checkpoints \
         ORDER BY projection, slot, topic, partition",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| Error::Postgres {
        op: "read checkpoints",
        source: e,
    })
}

/// The checkpoint of one partition, if there is one.
pub(crate) async fn read(
    conn: &mut PgConnection,
    projection: &str,
    slot: Slot,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT next_offset FROM choreo_meta.checkpoints \
         WHERE projection = $1 AND slot = $2 AND topic = $3 AND partition = $4",
    )
    .bind(projection)
    .bind(slot.as_str())
    .bind(topic)
    .bind(partition)
    .fetch_optional(conn)
    .await
}

/// Creates the checkpoint at `start` unless it exists; returns the stored value.
pub(crate) async fn init(
    conn: &mut PgConnection,
    projection: &str,
    slot: Slot,
    topic: &str,
    partition: i32,
    start: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO choreo_meta.checkpoints (projection, slot, topic, partition, next_offset) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(projection)
    .bind(slot.as_str())
    .bind(topic)
    .bind(partition)
    .bind(start)
    .execute(&mut *conn)
    .await?;
    Ok(read(conn, projection, slot, topic, partition)
        .await?
        .unwrap_or(start))
}

/// Compare-and-set: moves the checkpoint from `expected` to `next`. False when another
/// writer moved it (a zombie, a rebuild swap): the caller re-reads and seeks.
pub(crate) async fn compare_and_set(
    conn: &mut PgConnection,
    projection: &str,
    slot: Slot,
    topic: &str,
    partition: i32,
    expected: i64,
    next: i64,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE choreo_meta.checkpoints SET next_offset = $6, updated_at = now() \
         WHERE projection = $1 AND slot = $2 AND topic = $3 AND partition = $4 AND next_offset = $5",
    )
    .bind(projection)
    .bind(slot.as_str())
    .bind(topic)
    .bind(partition)
    .bind(expected)
    .bind(next)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}
