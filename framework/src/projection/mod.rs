//! Projections: read models in PostgreSQL built from the event log, exactly once, rebuilt
//! from history on demand (ARCHITECTURE.md, "Projections" and "Rebuilds").
//!
//! A [`Projection`] declares its name, version, the event types it reads (others are skipped
//! by declaration), the tables it owns (schema-relative DDL) and how a batch of events changes
//! them. The [`ProjectionRunner`] applies batches in one Postgres transaction each, fenced by a
//! compare-and-set on the partition's checkpoint; [`rebuild`] fills a shadow schema from
//! offset 0 and swaps it in atomically while the live view keeps serving.
//!
//! Where a view lives: schema `{name}_v{version}` (e.g. `signups_v1`). Queries name it
//! directly; a rebuild swaps a new copy in under the same name. A new version gets a new
//! schema and builds from the beginning beside the old one (blue/green across versions too).

mod batch;
mod checkpoint;
mod rebuild;
mod runner;
mod wait;

pub use checkpoint::{CheckpointRow, Slot, checkpoints};
pub use rebuild::{RebuildOptions, RebuildReport, rebuild, reset};
pub use runner::ProjectionRunner;
pub use wait::wait_for;

use std::future::Future;

use sqlx::PgConnection;

use crate::event::EventSet;
use crate::message::Received;

/// A read model in PostgreSQL.
///
/// `apply` must be deterministic: it gets each event's time and metadata and never reads the
/// clock (`now()` included), so a rebuild equals the live view. Its SQL is schema-relative
/// (unqualified table names): the runner sets `search_path` to the view's schema, which is
/// how a shadow copy is built beside the live one.
pub trait Projection: Send + Sync + 'static {
    /// The event types it reads; records of other types in its topics are skipped.
    type Events: EventSet;

    /// `[a-z][a-z0-9_]*`, at most 40 characters: names the schema and consumer group.
    const NAME: &'static str;
    /// Bump it when the tables or the meaning of `apply` change: the new version builds a
    /// view of its own from the beginning.
    const VERSION: u32;

    /// Idempotent DDL creating the tables (unqualified names, `CREATE TABLE IF NOT EXISTS`).
    fn schema_sql(&self) -> &'static str;

    /// Applies a batch of events (in log order per partition) inside the batch transaction.
    fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Received<Self::Events>],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;
}

/// How applying events failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Retry the whole transaction later (connection lost, serialization failure, deadlock,
    /// lock timeout). Never skipped.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// This event can never be applied (bad data): it goes to the dead letters, recorded in
    /// the same transaction as the checkpoint that moves past it.
    #[error("poison event: {0:#}")]
    Poison(anyhow::Error),
    /// A bug that would poison every event (undefined table, syntax error): halt the
    /// partition until someone fixes it.
    #[error("halt: {0:#}")]
    Halt(anyhow::Error),
}

impl From<sqlx::Error> for ApplyError {
    /// Sorts database errors by SQLSTATE: errors about the data (classes 22, 23, and a value
    /// over a limit, 54000/54001: an index row too large) are poison, SQL errors (class 42)
    /// halt, the rest (40001/40P01, connection trouble) are transient.
    fn from(error: sqlx::Error) -> Self {
        let code = crate::postgres::sqlstate(&error).unwrap_or_default();
        if crate::postgres::is_data_error(&code) {
            ApplyError::Poison(error.into())
        } else if code.starts_with("42") {
            ApplyError::Halt(error.into())
        } else {
            ApplyError::Transient(error.into())
        }
    }
}

/// The identity of a projection version: `{name}.v{version}`; also its consumer group.
pub fn projection_id<P: Projection>() -> String {
    format!("{}.v{}", P::NAME, P::VERSION)
}

/// The schema holding the live view: `{name}_v{version}`.
pub fn live_schema<P: Projection>() -> String {
    format!("{}_v{}", P::NAME, P::VERSION)
}

/// Checks a projection name where it is declared.
pub(crate) fn check_name(name: &str) -> crate::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(crate::Error::Config(format!(
            "projection name {name:?} must be [a-z][a-z0-9_]* and at most 40 characters (it names a schema)"
        )))
    }
}
