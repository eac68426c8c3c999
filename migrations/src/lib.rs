//! choreo's PostgreSQL schema (`choreo_meta`), with a migrations table of its own.
//!
//! sqlx keeps applied versions in an unqualified `_sqlx_migrations` table. An application that
//! runs its own `sqlx migrate` in the same database would share that table with choreo, and
//! each side would then find the other's versions "applied but missing" and refuse to run.
//! [`run`] therefore applies choreo's migrations with the session's `search_path` set to
//! `choreo_meta`, so sqlx's bookkeeping lands in `choreo_meta._sqlx_migrations`, and the
//! application's stays where it was.
//!
//! Databases migrated by earlier choreo versions have choreo's rows in the shared table: the
//! first [`run`] moves exactly those rows (same version and checksum) into choreo's table.

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{Connection, PgConnection};

/// The schema that holds choreo's tables and its migrations table.
pub const SCHEMA: &str = "choreo_meta";

/// choreo's migrations: the files in this crate's `sql/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./sql");

/// Serializes the first-run set-up (schema, table, adoption) between processes starting at
/// once; sqlx's own lock covers the migrations that follow. The bytes of "choreo.m".
const SETUP_LOCK: i64 = 0x6368_6f72_656f_2e6d;

/// The shape sqlx gives its migrations table (sqlx-postgres 0.8), so sqlx reads ours as its own.
const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS choreo_meta._sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
)";

/// Applies choreo's migrations on `conn` (idempotent; concurrent callers wait on advisory
/// locks). The session's `search_path` is reset afterwards.
pub async fn run(conn: &mut PgConnection) -> Result<(), MigrateError> {
    set_up(conn).await?;
    sqlx::query("SET search_path TO choreo_meta")
        .execute(&mut *conn)
        .await?;
    let applied = MIGRATOR.run_direct(&mut *conn).await;
    let reset = sqlx::query("RESET search_path").execute(&mut *conn).await;
    applied?;
    reset?;
    Ok(())
}

/// Creates the schema and choreo's migrations table, adopting choreo's rows from a shared
/// `_sqlx_migrations` the first time.
async fn set_up(conn: &mut PgConnection) -> Result<(), MigrateError> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SETUP_LOCK)
        .execute(&mut *tx)
        .await?;
    let has_table: bool =
        sqlx::query_scalar("SELECT to_regclass('choreo_meta._sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut *tx)
            .await?;
    if has_table {
        tx.commit().await?;
        return Ok(());
    }
    // Only a database where choreo's schema already exists can have choreo's rows elsewhere.
    let had_schema: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(SCHEMA)
            .fetch_one(&mut *tx)
            .await?;
    // The table an unqualified `_sqlx_migrations` names for this session: where sqlx put
    // choreo's versions before they had a table of their own.
    let shared: Option<String> = sqlx::query_scalar(
        "SELECT quote_ident(n.nspname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = to_regclass('_sqlx_migrations') AND n.nspname <> $1",
    )
    .bind(SCHEMA)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query("CREATE SCHEMA IF NOT EXISTS choreo_meta")
        .execute(&mut *tx)
        .await?;
    sqlx::query(CREATE_TABLE).execute(&mut *tx).await?;
    if let (true, Some(shared)) = (had_schema, shared) {
        adopt(&mut tx, &shared).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Moves the rows of choreo's migrations (matched by version and checksum) from the shared
/// table `{schema}._sqlx_migrations` into choreo's. Rows of the application stay.
async fn adopt(conn: &mut PgConnection, schema: &str) -> Result<(), MigrateError> {
    let shared = format!("{schema}._sqlx_migrations");
    for migration in MIGRATOR.iter() {
        // Not applied there, or applied under another checksum: nothing moves, sqlx decides.
        sqlx::query(&format!(
            "WITH moved AS (DELETE FROM {shared} WHERE version = $1 AND checksum = $2 AND success \
             RETURNING version, description, installed_on, success, checksum, execution_time) \
             INSERT INTO choreo_meta._sqlx_migrations SELECT * FROM moved ON CONFLICT DO NOTHING"
        ))
        .bind(migration.version)
        .bind(migration.checksum.as_ref())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_migrations_are_the_sql_files_in_order() {
        let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert!(versions.len() >= 2, "{versions:?}");
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(versions[0], 1);
        let first = MIGRATOR.iter().next().map(|m| m.sql.to_string());
        assert!(
            first.is_some_and(|sql| sql.contains("CREATE SCHEMA IF NOT EXISTS choreo_meta")),
            "the first migration creates the schema"
        );
    }
}
