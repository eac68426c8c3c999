//! Connecting to PostgreSQL with a clear error when it is not there.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::PostgresConfig;
use crate::error::{Error, Result};

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
