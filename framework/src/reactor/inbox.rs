//! The inbox: which events a consumer has already done its outside effect for.
//!
//! One row per (consumer, event id) in `choreo_meta.inbox`. Two ways to use it:
//! - [`Inbox::once`] for an effect outside Postgres (an email, an HTTP call): skipped when the
//!   row exists, the row written after the effect succeeded. At-least-once: a crash between
//!   the effect and the row repeats the effect. If the row cannot be written (Postgres
//!   read-only after a failover, a full disk), the effect is remembered in the process and
//!   not repeated while the row write is retried.
//! - [`Inbox::claim`] for an effect in Postgres: a transaction that has inserted the row; the
//!   effect's writes commit with it, so the effect happens exactly once. The transaction has
//!   a `lock_timeout`, so a paused zombie holding the same row cannot block the new owner.
//!
//! Either way, stage the reactor's outputs whether or not the effect ran this time: the
//! Kafka transaction that carried them the first time may have aborted after the effect.

use std::future::Future;

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::ReactError;

/// The inbox of one consumer (usually the reactor's name).
#[derive(Debug, Clone)]
pub struct Inbox {
    pool: PgPool,
    consumer: String,
    /// Effects done whose row is not written yet (the write failed): not repeated.
    unrecorded: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<Uuid>>>,
}

impl Inbox {
    /// The inbox of `consumer` in the database of `pool` (choreo's migrations applied).
    pub fn new(pool: PgPool, consumer: impl Into<String>) -> Self {
        Self {
            pool,
            consumer: consumer.into(),
            unrecorded: Default::default(),
        }
    }

    /// Whether the effect for `event_id` is recorded as done.
    pub async fn is_done(&self, event_id: Uuid) -> Result<bool, sqlx::Error> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM choreo_meta.inbox WHERE consumer = $1 AND event_id = $2",
        )
        .bind(&self.consumer)
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// Records the effect for `event_id` as done (idempotent).
    pub async fn mark_done(&self, event_id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO choreo_meta.inbox (consumer, event_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.consumer)
        .bind(event_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Runs `effect` unless it is recorded as done for `event_id`, then records it. Returns
    /// its result, or `None` when it was skipped. A failed effect is not recorded.
    pub async fn once<T, F>(&self, event_id: Uuid, effect: F) -> Result<Option<T>, ReactError>
    where
        F: Future<Output = Result<T, ReactError>> + Send,
    {
        let unrecorded = || {
            self.unrecorded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if unrecorded().contains(&event_id) {
            // Done earlier in this process; only the row is missing.
            self.mark_done(event_id).await?;
            unrecorded().remove(&event_id);
            return Ok(None);
        }
        if self.is_done(event_id).await? {
            return Ok(None);
        }
        let value = effect.await?;
        if let Err(e) = self.mark_done(event_id).await {
            unrecorded().insert(event_id);
            return Err(e.into());
        }
        Ok(Some(value))
    }

    /// Opens a transaction that claims `event_id`, or `None` when the effect is already done
    /// (or being done by an instance that then commits). Write the effect in the transaction
    /// and commit: the effect and its inbox row land together, exactly once.
    pub async fn claim(
        &self,
        event_id: Uuid,
    ) -> Result<Option<Transaction<'static, Postgres>>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "SELECT set_config('lock_timeout', '5s', true), \
                    set_config('idle_in_transaction_session_timeout', '60s', true)",
        )
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO choreo_meta.inbox (consumer, event_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.consumer)
        .bind(event_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        Ok(Some(tx))
    }
}
