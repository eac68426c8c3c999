//! Reset: the live view emptied and started over (development only).

use sqlx::PgPool;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::postgres::quote_ident;
use crate::projection::runner::{create_schema, setup};
use crate::projection::{Projection, live_schema, projection_id};

/// Drops the live view and its checkpoints and recreates it empty (development only: stop
/// the live runners first; they would halt on the missing checkpoint). Refused when the view
/// serves another topic namespace than `kafka`'s.
pub async fn reset<P: Projection>(
    projection: &P,
    pool: &PgPool,
    kafka: &KafkaConfig,
) -> Result<()> {
    let id = projection_id::<P>();
    let live = live_schema::<P>();
    let pg = |op| move |e| Error::Postgres { op, source: e };
    setup(projection, pool, kafka).await?;
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
    let namespace = kafka.topic_namespace().unwrap_or("");
    create_schema(pool, projection, &live, Some(namespace)).await
}
