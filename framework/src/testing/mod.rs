//! Test support (feature `testing`): given/when/then for aggregates without Kafka; the drill
//! projection and drill aggregate used by fault drills, which record enough to check
//! exactly-once claims against an independent fold of the log; and the dev services as tests
//! reach them (brokers, a database of a test's own, waiting on a condition).

pub mod account;
pub mod echo;
mod given;
mod services;

pub use given::{Given, Then, given};
pub use services::{brokers, create_database, database_url, eventually};

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::message::Received;
use crate::projection::{ApplyError, Projection};

/// The event the drills publish: a key, a value, and a flag that makes it poison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterBumped {
    /// The counter it bumps: the subject.
    pub key: String,
    /// How much it adds to the counter.
    pub amount: i64,
    /// `true` makes the drill projection reject it (a CHECK constraint): a poison event.
    #[serde(default)]
    pub poison: bool,
}

impl crate::Event for CounterBumped {
    const NAME: &'static str = "v1.counter.bumped";
    fn subject(&self) -> String {
        self.key.clone()
    }
}

/// Sums `amount` per key and counts how often each offset was applied: a double application
/// shows as `applications.times > 1`, a loss as a missing offset.
#[derive(Debug, Default, Clone, Copy)]
pub struct CounterProjection;

impl Projection for CounterProjection {
    type Events = CounterBumped;
    const NAME: &'static str = "counters";
    const VERSION: u32 = 1;

    fn schema_sql(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS totals (
             key text PRIMARY KEY,
             total bigint NOT NULL,
             events integer NOT NULL,
             last_time timestamptz NOT NULL
         );
         CREATE TABLE IF NOT EXISTS applications (
             partition integer NOT NULL,
             \"offset\" bigint NOT NULL,
             times integer NOT NULL,
             poison boolean NOT NULL DEFAULT false CHECK (NOT poison),
             PRIMARY KEY (partition, \"offset\")
         );"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Received<CounterBumped>],
    ) -> Result<(), ApplyError> {
        // Batch upserts with UNNEST; a key may repeat in a batch, so totals are collapsed per
        // key first ("cannot affect row a second time" otherwise).
        let mut per_key: std::collections::BTreeMap<
            &str,
            (i64, i32, chrono::DateTime<chrono::Utc>),
        > = Default::default();
        for e in events {
            let entry = per_key
                .entry(e.payload.key.as_str())
                .or_insert((0, 0, e.meta.time));
            entry.0 += e.payload.amount;
            entry.1 += 1;
            entry.2 = entry.2.max(e.meta.time);
        }
        let partitions: Vec<i32> = events.iter().map(|e| e.origin.partition).collect();
        let offsets: Vec<i64> = events.iter().map(|e| e.origin.offset).collect();
        let poison: Vec<bool> = events.iter().map(|e| e.payload.poison).collect();
        sqlx::query(
            "INSERT INTO applications (partition, \"offset\", times, poison) \
             SELECT p, o, 1, x FROM UNNEST($1::int[], $2::bigint[], $3::bool[]) AS t(p, o, x) \
             ON CONFLICT (partition, \"offset\") DO UPDATE SET times = applications.times + 1",
        )
        .bind(&partitions)
        .bind(&offsets)
        .bind(&poison)
        .execute(&mut *conn)
        .await?;
        let keys: Vec<&str> = per_key.keys().copied().collect();
        let totals: Vec<i64> = per_key.values().map(|v| v.0).collect();
        let counts: Vec<i32> = per_key.values().map(|v| v.1).collect();
        let times: Vec<chrono::DateTime<chrono::Utc>> = per_key.values().map(|v| v.2).collect();
        sqlx::query(
            "INSERT INTO totals (key, total, events, last_time) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::int[], $4::timestamptz[]) \
             ON CONFLICT (key) DO UPDATE SET total = totals.total + EXCLUDED.total, \
                 events = totals.events + EXCLUDED.events, \
                 last_time = GREATEST(totals.last_time, EXCLUDED.last_time)",
        )
        .bind(&keys)
        .bind(&totals)
        .bind(&counts)
        .bind(&times)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
