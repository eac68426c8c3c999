//! Connecting to PostgreSQL with a clear error when it is not there, and choreo's own schema.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::PostgresConfig;
use crate::error::{Error, Result};

/// The framework's migrations (the `choreo-migrations` crate, `migrations/` at the workspace
/// top), embedded at build time.
pub use choreo_migrations::MIGRATOR;

/// Opens a pool and checks that the database answers.
pub async fn connect(config: &PostgresConfig) -> Result<PgPool> {
    let unreachable = |reason: String| Error::PostgresUnreachable {
        target: config.redacted_url(),
        reason,
    };
    let options: PgConnectOptions = config.url().parse().map_err(|e: sqlx::Error| {
        Error::Config(format!("database URL {}: {e}", config.redacted_url()))
    })?;
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections_value())
        .acquire_timeout(config.connect_timeout_value())
        .connect_with(options)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(pool)
}

/// Connects and applies choreo's migrations (idempotent; concurrent callers wait on advisory
/// locks). Their bookkeeping is `choreo_meta._sqlx_migrations`, apart from the application's
/// own `_sqlx_migrations`, so both `sqlx migrate` runs work in one database.
pub async fn connect_and_migrate(config: &PostgresConfig) -> Result<PgPool> {
    let pool = connect(config).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Applies choreo's migrations on one connection of `pool`.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut conn = pool.acquire().await.map_err(|e| Error::Postgres {
        op: "acquire",
        source: e,
    })?;
    // On a connection: `Migrator::run(&pool)` trips a higher-ranked lifetime error (its
    // future is not provably `Send`) once it sits inside a spawned task.
    choreo_migrations::run(&mut conn).await?;
    Ok(())
}

/// Quotes an identifier we validated ourselves (`[a-z][a-z0-9_]*`).
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// SQLSTATE of a database error, if it is one.
pub(crate) fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}
