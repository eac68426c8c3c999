//! choreo's migrations beside an application's own `sqlx migrate` in one database, in both
//! orders, and the upgrade of a database whose choreo rows sit in the shared table.
//! The application's migrations (tests/it/app_migrations) reuse choreo's version numbers on
//! purpose: the hardest collision.

use std::path::Path;

use sqlx::migrate::Migrator;
use sqlx::{Connection, PgConnection};

use crate::common::empty_database;

async fn app_migrator() -> Migrator {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/app_migrations");
    Migrator::new(dir)
        .await
        .expect("the application's migrations")
}

async fn connection(config: &choreo::PostgresConfig) -> PgConnection {
    PgConnection::connect(config.url_with_secret())
        .await
        .expect("connect")
}

/// (version, checksum) rows of a migrations table.
async fn rows(conn: &mut PgConnection, table: &str) -> Vec<(i64, Vec<u8>)> {
    sqlx::query_as(&format!(
        "SELECT version, checksum FROM {table} ORDER BY version"
    ))
    .fetch_all(conn)
    .await
    .expect("read a migrations table")
}

fn expected(migrator: &Migrator) -> Vec<(i64, Vec<u8>)> {
    migrator
        .iter()
        .map(|m| (m.version, m.checksum.to_vec()))
        .collect()
}

/// Each table holds exactly its owner's versions, and both sides' tables exist.
async fn check_apart(conn: &mut PgConnection, app: &Migrator) {
    assert_eq!(
        rows(conn, "public._sqlx_migrations").await,
        expected(app),
        "the application's table holds only its own versions"
    );
    assert_eq!(
        rows(conn, "choreo_meta._sqlx_migrations").await,
        expected(&choreo::postgres::MIGRATOR),
        "choreo's table holds only choreo's versions"
    );
    let tables: (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('public.accounts') IS NOT NULL, \
                to_regclass('choreo_meta.snapshots') IS NOT NULL",
    )
    .fetch_one(conn)
    .await
    .expect("look up tables");
    assert_eq!(tables, (true, true), "both schemas are in place");
}

#[tokio::test]
async fn choreo_first_then_the_application_then_both_again() {
    let config = empty_database("migrate-choreo-first").await;
    let app = app_migrator().await;
    let pool = choreo::postgres::connect_and_migrate(&config)
        .await
        .expect("choreo's migrations");
    let mut conn = connection(&config).await;
    app.run_direct(&mut conn)
        .await
        .expect("the application's migrations after choreo's");
    choreo::postgres::migrate(&pool)
        .await
        .expect("choreo's again");
    app.run_direct(&mut conn)
        .await
        .expect("the application's again");
    check_apart(&mut conn, &app).await;
}

#[tokio::test]
async fn the_application_first_then_choreo_then_both_again() {
    let config = empty_database("migrate-app-first").await;
    let app = app_migrator().await;
    let mut conn = connection(&config).await;
    app.run_direct(&mut conn)
        .await
        .expect("the application's migrations");
    let pool = choreo::postgres::connect_and_migrate(&config)
        .await
        .expect("choreo's migrations after the application's");
    app.run_direct(&mut conn)
        .await
        .expect("the application's again");
    choreo::postgres::migrate(&pool)
        .await
        .expect("choreo's again");
    check_apart(&mut conn, &app).await;
    // The pool's connections keep the default search path after migrating.
    let path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&pool)
        .await
        .expect("search path");
    assert!(
        path.contains("public"),
        "search_path after migrating: {path}"
    );
}

#[tokio::test]
async fn a_database_migrated_by_an_earlier_choreo_moves_its_rows_once() {
    let config = empty_database("migrate-upgrade").await;
    let mut conn = connection(&config).await;
    // What earlier versions did: sqlx's migrator straight on the connection, rows in the
    // shared table.
    choreo::postgres::MIGRATOR
        .run_direct(&mut conn)
        .await
        .expect("the earlier layout");
    assert_eq!(
        rows(&mut conn, "public._sqlx_migrations").await,
        expected(&choreo::postgres::MIGRATOR)
    );
    choreo::postgres::connect_and_migrate(&config)
        .await
        .expect("choreo's migrations over the earlier layout (nothing applied twice)");
    assert_eq!(
        rows(&mut conn, "public._sqlx_migrations").await,
        vec![],
        "choreo's rows left the shared table"
    );
    let app = app_migrator().await;
    app.run_direct(&mut conn)
        .await
        .expect("the application's migrations once choreo's rows are gone");
    choreo::postgres::connect_and_migrate(&config)
        .await
        .expect("choreo's again");
    check_apart(&mut conn, &app).await;
}

#[tokio::test]
async fn concurrent_first_runs_all_succeed() {
    let config = empty_database("migrate-concurrent").await;
    let runs = (0..4).map(|_| {
        let config = config.clone();
        tokio::spawn(async move { choreo::postgres::connect_and_migrate(&config).await })
    });
    for run in futures::future::join_all(runs).await {
        run.expect("join").expect("a concurrent first run");
    }
    let mut conn = connection(&config).await;
    assert_eq!(
        rows(&mut conn, "choreo_meta._sqlx_migrations").await,
        expected(&choreo::postgres::MIGRATOR)
    );
}
