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

/// Whether a SQLSTATE says the statement failed because of the data it was given, so the
/// same data fails again on every try: data exceptions (class 22: a value too long, bad
/// input syntax), integrity violations (class 23) and the limits a single value can exceed
/// (54000 program_limit_exceeded, e.g. an index row larger than a page allows; 54001
/// statement_too_complex, e.g. JSON nested too deep). The other limits of class 54 (too
/// many columns, too many arguments) come from the code, not the data.
pub(crate) fn is_data_error(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23") || code == "54000" || code == "54001"
}

#[cfg(test)]
mod tests {
    use super::is_data_error;

    #[test]
    fn data_errors_are_the_data_and_integrity_classes_and_the_limits_one_value_can_exceed() {
        for code in ["22001", "22P02", "23505", "23503", "54000", "54001"] {
            assert!(is_data_error(code), "{code}");
        }
        for code in [
            "40001", "40P01", "42P01", "42601", "54011", "54023", "08006", "57P01",
        ] {
            assert!(!is_data_error(code), "{code}");
        }
    }
}
