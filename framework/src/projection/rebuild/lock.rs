//! One rebuild per projection at a time: a session advisory lock on a connection of its own.

use sqlx::{Connection, PgPool};

use crate::error::{Error, Result};

/// The advisory lock that keeps rebuilds of a projection one at a time. It lives on one
/// connection; when that connection is lost (Postgres restarted, a proxy timed out), so is
/// the lock, and [`RebuildLock::keep`] takes it again or says who has it.
pub(super) struct RebuildLock {
    pool: PgPool,
    id: String,
    /// Detached from the pool: if the rebuild is dropped half-way, the connection closes and
    /// the lock goes with it, instead of going back to the pool still held.
    pub(super) conn: sqlx::PgConnection,
}

impl RebuildLock {
    /// The lock, or `None` when another session holds it.
    pub(super) async fn take(pool: &PgPool, id: &str) -> Result<Option<Self>> {
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
    pub(super) async fn keep(&mut self) -> Result<()> {
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
            None => Err(Error::RebuildLockLost {
                projection: self.id.clone(),
            }),
        }
    }

    pub(super) async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext('choreo.rebuild.' || $1))")
            .bind(&self.id)
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}
