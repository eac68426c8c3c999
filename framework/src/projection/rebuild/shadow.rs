//! The shadow schema `{live}__shadow`: made (or resumed), swapped in for the live one, and the
//! replaced copy `{live}__old` dropped.

use std::collections::HashMap;

use sqlx::{Connection, PgPool};

use crate::error::{Error, Result};
use crate::failpoint;
use crate::postgres::quote_ident;
use crate::projection::Projection;
use crate::projection::runner::create_schema;

/// Makes the shadow schema ready: kept as a killed rebuild left it (resumed), or made anew
/// with empty tables when there is none or `fresh` asks for it. True when resumed.
pub(super) async fn prepare<P: Projection>(
    pool: &PgPool,
    projection: &P,
    id: &str,
    shadow: &str,
    fresh: bool,
) -> Result<bool> {
    let pg = |op| move |e| Error::Postgres { op, source: e };
    let existing: Option<String> =
        sqlx::query_scalar("SELECT shadow_schema FROM choreo_meta.rebuilds WHERE projection = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(pg("read rebuilds"))?;
    let schema_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(shadow)
            .fetch_one(pool)
            .await
            .map_err(pg("find shadow"))?;
    let resumed = existing.is_some() && schema_exists && !fresh;
    if !resumed {
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote_ident(shadow)
        ))
        .execute(pool)
        .await
        .map_err(pg("drop old shadow"))?;
        sqlx::query(
            "DELETE FROM choreo_meta.checkpoints WHERE projection = $1 AND slot = 'shadow'",
        )
        .bind(id)
        .execute(pool)
        .await
        .map_err(pg("clear shadow checkpoints"))?;
        create_schema(pool, projection, shadow, None).await?;
        sqlx::query(
            "INSERT INTO choreo_meta.rebuilds (projection, shadow_schema) VALUES ($1, $2) \
             ON CONFLICT (projection) DO UPDATE SET shadow_schema = $2, started_at = now()",
        )
        .bind(id)
        .bind(shadow)
        .execute(pool)
        .await
        .map_err(pg("record rebuild"))?;
    }
    Ok(resumed)
}

/// The swap transaction, on the connection holding the rebuild lock. False when the live
/// view is ahead of the shadow somewhere.
pub(super) async fn swap(
    conn: &mut sqlx::PgConnection,
    id: &str,
    live: &str,
    shadow: &str,
) -> Result<bool> {
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

/// Drops the copy the swap replaced. It is no longer referenced; dropping it may wait for
/// readers, so best effort.
pub(super) async fn drop_replaced(pool: &PgPool, live: &str) {
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
}
