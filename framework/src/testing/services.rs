//! The dev services as tests reach them: the brokers and database from the environment (with
//! the defaults of `scripts/dev-services`), a database of a test's own, and waiting on a
//! condition instead of sleeping.

use std::time::{Duration, Instant};

use crate::PostgresConfig;
use crate::config::{DEFAULT_BROKERS, DEFAULT_DATABASE_URL};

/// What to do when a service is down.
const HOW_TO_START: &str = "start them with `scripts/dev-services up` (or run `scripts/test`)";

/// `CHOREO_KAFKA_BROKERS`, or the dev broker ([`DEFAULT_BROKERS`]).
pub fn brokers() -> String {
    std::env::var("CHOREO_KAFKA_BROKERS").unwrap_or_else(|_| DEFAULT_BROKERS.to_owned())
}

/// `CHOREO_DATABASE_URL`, or the dev database ([`DEFAULT_DATABASE_URL`]).
pub fn database_url() -> String {
    std::env::var("CHOREO_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// Creates the empty database `name` on the server of [`database_url`] and returns its URL.
/// Panics, saying how to start it, when PostgreSQL is not reachable.
pub async fn create_database(name: &str) -> String {
    let url = database_url();
    let admin = crate::postgres::connect(&PostgresConfig::new(&url))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable ({e}): {HOW_TO_START}"));
    sqlx::query(&format!(
        "CREATE DATABASE {}",
        crate::postgres::quote_ident(name)
    ))
    .execute(&admin)
    .await
    .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    admin.close().await;
    let base = url
        .rsplit_once('/')
        .map(|(base, _)| base)
        .unwrap_or_else(|| panic!("the database URL has no path: {url}"));
    format!("{base}/{name}")
}

/// Waits until `check` holds, asking every 200 ms; panics naming `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
