//! The drill reactor: reacts to every [`CounterBumped`] with an effect in Postgres (a row,
//! claimed through the inbox, so exactly once) and an announcement `v1.echo.recorded` on
//! `echo.events`. Poison events (`poison: true`) are refused while
//! [`EchoReactor::poison_switch`] is on (it starts on); `key` `"flaky"` fails
//! transiently the first `FLAKY_FAILURES` times it is seen by a process; `key` `"stuck"` fails
//! transiently until [`EchoReactor::stuck_switch`] is turned off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use super::CounterBumped;
use crate::message::Received;
use crate::reactor::{Inbox, Outputs, ReactError, Reactor};

/// Transient failures of the `"flaky"` key before it succeeds (per process).
pub const FLAKY_FAILURES: u32 = 3;

/// What the drill reactor announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoRecorded {
    /// The key of the [`CounterBumped`] it answers: the subject.
    pub key: String,
    /// Its amount.
    pub amount: i64,
}

impl crate::Event for EchoRecorded {
    const NAME: &'static str = "v1.echo.recorded";
    fn subject(&self) -> String {
        self.key.clone()
    }
}

/// The drill reactor. Its effect rows live in `echo_effects` (created by [`EchoReactor::setup`]).
#[derive(Debug)]
pub struct EchoReactor {
    /// The reactor's inbox: claims each event id once for the effect.
    pub inbox: Inbox,
    /// The database of `echo_effects` and the inbox.
    pub pool: sqlx::PgPool,
    flaky: AtomicU32,
    stuck: Arc<AtomicBool>,
    refuse_poison: Arc<AtomicBool>,
}

impl EchoReactor {
    /// A reactor writing its effects to `pool`, with the poison and stuck switches on.
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self {
            inbox: Inbox::new(pool.clone(), Self::NAME),
            pool,
            flaky: AtomicU32::new(0),
            stuck: Arc::new(AtomicBool::new(true)),
            refuse_poison: Arc::new(AtomicBool::new(true)),
        }
    }

    /// While on (it starts on), events with `poison: true` are refused as poison; turned
    /// off, they are handled like any other (a fixed bug, for redrive drills).
    pub fn poison_switch(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.refuse_poison)
    }

    /// While on (it starts on), events with key `"stuck"` fail transiently.
    pub fn stuck_switch(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stuck)
    }

    /// Creates the effect table.
    pub async fn setup(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS echo_effects (
                 event_id uuid NOT NULL,
                 key text NOT NULL,
                 amount bigint NOT NULL,
                 done_at timestamptz NOT NULL DEFAULT clock_timestamp()
             )",
        )
        .execute(pool)
        .await?;
        Ok(())
    }
}

impl Reactor for EchoReactor {
    type Events = CounterBumped;
    const NAME: &'static str = "echo";

    async fn react(
        &self,
        event: &Received<CounterBumped>,
        out: &mut Outputs<'_>,
    ) -> Result<(), ReactError> {
        let bump = &event.payload;
        if bump.poison && self.refuse_poison.load(Ordering::Acquire) {
            return Err(ReactError::Poison(anyhow::anyhow!(
                "poison event for {}",
                bump.key
            )));
        }
        if bump.key == "flaky" && self.flaky.fetch_add(1, Ordering::AcqRel) < FLAKY_FAILURES {
            return Err(ReactError::Transient(anyhow::anyhow!(
                "the flaky key fails for now"
            )));
        }
        if bump.key == "stuck" && self.stuck.load(Ordering::Acquire) {
            return Err(ReactError::Transient(anyhow::anyhow!(
                "the stuck key fails until released"
            )));
        }
        // No unique index on event_id: a second effect would show as a second row.
        if let Some(mut tx) = self.inbox.claim(event.meta.id).await? {
            sqlx::query("INSERT INTO echo_effects (event_id, key, amount) VALUES ($1, $2, $3)")
                .bind(event.meta.id)
                .bind(&bump.key)
                .bind(bump.amount)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        out.event(&EchoRecorded {
            key: bump.key.clone(),
            amount: bump.amount,
        })?;
        Ok(())
    }
}
