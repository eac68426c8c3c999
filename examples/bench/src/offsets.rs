//! The hand-written baselines' offset rows (`baseline_offsets`): each partition's next offset,
//! written in the batch's own transaction, as a consumer that keeps its offsets in Postgres does.

use sqlx::PgConnection;

const UPDATE_OFFSETS: &str = "INSERT INTO baseline_offsets (topic, partition, next_offset) \
     SELECT $1, p, o FROM UNNEST($2::int[], $3::bigint[]) AS t(p, o) \
     ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset";

/// Moves each partition's row past the last of its `(partition, offset)` records.
pub async fn store(
    conn: &mut PgConnection,
    topic: &str,
    records: impl IntoIterator<Item = (i32, i64)>,
) -> sqlx::Result<()> {
    let mut next: Vec<(i32, i64)> = Vec::new();
    for (partition, offset) in records {
        match next.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, o)) => *o = (*o).max(offset + 1),
            None => next.push((partition, offset + 1)),
        }
    }
    let partitions: Vec<i32> = next.iter().map(|n| n.0).collect();
    let offsets: Vec<i64> = next.iter().map(|n| n.1).collect();
    sqlx::query(UPDATE_OFFSETS)
        .bind(topic)
        .bind(&partitions)
        .bind(&offsets)
        .execute(conn)
        .await?;
    Ok(())
}
