//! Postgres going away under a projection and under a rebuild: every connection of the
//! test's database is terminated and new ones are refused for a while (what a Postgres
//! restart looks like to a client), while batches are in flight. Afterwards the view must
//! equal the fold of the log, each offset applied once.

use std::sync::Arc;
use std::time::Duration;

use choreo::projection::{RebuildOptions, rebuild};
use choreo::testing::CounterProjection;
use choreo::{ProjectionRunner, Publisher};

use crate::common;
use crate::projections::{Gate, Held, PROJECTION, fold, publish, topics, view};

/// Events the rebuilds below read, in batches of at most 200: at least 30 batches, of which
/// the tenth is held.
const EVENTS: usize = 6000;

/// Postgres going away for one database: new connections refused, the open ones terminated;
/// back when [`Outage::end`] allows connections again.
struct Outage {
    admin: sqlx::PgPool,
    database: String,
}

impl Outage {
    /// Refuses new connections to `database` and terminates the open ones. When this
    /// returns, the database is down.
    async fn begin(database: &str) -> Self {
        let admin = choreo::postgres::connect(&common::postgres().await)
            .await
            .expect("admin connection");
        sqlx::query(&format!(
            "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
        ))
        .execute(&admin)
        .await
        .expect("refuse connections");
        let killed: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(database)
        .fetch_all(&admin)
        .await
        .expect("terminate");
        assert!(!killed.is_empty(), "connections were open to terminate");
        Self {
            admin,
            database: database.to_owned(),
        }
    }

    async fn end(self) {
        sqlx::query(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.database
        ))
        .execute(&self.admin)
        .await
        .expect("allow connections");
    }
}

/// How long the outages below last: only long enough for the runners' retries to meet a
/// refused database (what they do meanwhile is not timed; the checks wait on conditions).
/// How long an outage refuses connections. Not a wait for anything: the gates order the
/// runtime into the outage (a held batch is released only once it began), and the tests then
/// wait on conditions (caught up, the rebuild's report).
const DOWN: Duration = Duration::from_secs(3);

fn database_of(url: &str) -> String {
    url.rsplit('/').next().expect("database name").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_projection_survives_postgres_dropping_every_connection() {
    let config = common::kafka("outage-live");
    let topic = topics(&config, 3).await;
    let (url, pool) = common::fresh_database("outage_live").await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    publish(&publisher, 0..3000).await;
    // The fifth batch is held in its transaction: the outage lands while it is in flight,
    // with the log not yet caught up.
    let gate = Gate::at(5);
    let runner = ProjectionRunner::new(Arc::new(Held(Arc::clone(&gate)))).configure(|mut s| {
        s.max_batch = 50;
        s
    });
    let projection = common::run_projection(&config, &pool, runner);
    gate.reached().await;
    let down = Outage::begin(&database_of(&url)).await;
    gate.release();
    tokio::time::sleep(DOWN).await;
    down.end().await;
    publish(&publisher, 3000..6000).await;
    common::wait_caught_up(
        &pool,
        &config,
        PROJECTION,
        &topic,
        3,
        Duration::from_secs(90),
    )
    .await;
    let summary = projection.stop().await.expect("runner");
    assert!(
        summary.halted.is_empty(),
        "nothing halted: {:?}",
        summary.halted
    );
    assert_eq!(
        view(&pool, "counters_v1").await,
        fold(&config, &topic, 6000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_survives_postgres_dropping_every_connection_mid_way() {
    let config = common::kafka("outage-rebuild");
    let topic = topics(&config, 3).await;
    let (url, pool) = common::fresh_database("outage_rebuild").await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    publish(&publisher, 0..EVENTS).await;
    // The tenth batch is held in its transaction, so the outage lands mid-way (batches
    // committed, one in flight, more to come), however fast the machine is.
    let gate = Gate::at(10);
    let task = tokio::spawn({
        let (config, pool, gate) = (config.clone(), pool.clone(), Arc::clone(&gate));
        async move {
            let options = RebuildOptions {
                batch_size: 200,
                ..RebuildOptions::default()
            };
            rebuild(Arc::new(Held(gate)), &config, &pool, options).await
        }
    });
    gate.reached().await;
    assert!(!task.is_finished(), "the rebuild waits at its held batch");
    let down = Outage::begin(&database_of(&url)).await;
    gate.release();
    tokio::time::sleep(DOWN).await;
    down.end().await;
    let report = task
        .await
        .expect("join")
        .expect("the rebuild survives the outage");
    assert_eq!(report.records, EVENTS as u64, "{report}");
    assert_eq!(
        view(&pool, "counters_v1").await,
        fold(&config, &topic, EVENTS)
    );
}

/// A partition assigned while Postgres is down cannot learn its start offset (the checkpoint).
/// It must wait, paused, and start once the database is back: not halt until a restart, and
/// not start anywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_assigned_during_an_outage_waits_and_starts_when_postgres_is_back() {
    let config = common::kafka("outage-assign");
    let topic = topics(&config, 3).await;
    let (url, pool) = common::fresh_database("outage_assign").await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    publish(&publisher, 0..3000).await;
    // max.poll.interval.ms 10 s: the rebalance callback tries the lookup for 5 s, then leaves
    // it to the background.
    let start = || {
        let runner = ProjectionRunner::new(Arc::new(CounterProjection))
            .configure(|s| s.property("max.poll.interval.ms", "10000"));
        common::run_projection(&config, &pool, runner)
    };
    let (a, b) = (start(), start());
    let (status_a, status_b) = (a.status().clone(), b.status().clone());
    common::eventually(
        "both members own partitions",
        Duration::from_secs(30),
        || {
            let (a, b) = (status_a.assigned().len(), status_b.assigned().len());
            a > 0 && b > 0 && a + b == 3
        },
    )
    .await;
    common::wait_caught_up(
        &pool,
        &config,
        PROJECTION,
        &topic,
        3,
        Duration::from_secs(60),
    )
    .await;

    // Postgres goes away until A has shown it waits; B leaves meanwhile, so A is assigned
    // B's partitions while their checkpoints cannot be read.
    let down = Outage::begin(&database_of(&url)).await;
    b.stop().await.expect("b stops");
    publish(&publisher, 3000..6000).await;
    common::eventually(
        "A waits for the start offsets of B's partitions",
        Duration::from_secs(20),
        || status_a.assigned().len() == 3 && !status_a.waiting().is_empty() && !status_a.is_ready(),
    )
    .await;
    assert!(
        status_a.halted().is_empty(),
        "nothing halts for an outage: {:?}",
        status_a.halted()
    );
    let waiting = status_a.waiting();
    assert!(
        waiting.iter().all(|(_, _, reason)| !reason.is_empty()),
        "each waiting partition shows why: {waiting:?}"
    );
    down.end().await;

    common::wait_caught_up(
        &pool,
        &config,
        PROJECTION,
        &topic,
        3,
        Duration::from_secs(90),
    )
    .await;
    assert!(status_a.waiting().is_empty(), "{:?}", status_a.waiting());
    assert!(status_a.is_ready());
    let summary = a.stop().await.expect("a");
    assert!(
        summary.halted.is_empty(),
        "nothing halted: {:?}",
        summary.halted
    );
    assert_eq!(
        view(&pool, "counters_v1").await,
        fold(&config, &topic, 6000)
    );
}

/// The rebuild's advisory lock lives on one connection. When that connection dies and another
/// session takes the lock meanwhile, the rebuild must not swap: it stops with a clear error
/// and the live view stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_that_lost_its_lock_to_another_session_does_not_swap() {
    let config = common::kafka("outage-lock");
    topics(&config, 3).await;
    let (_url, pool) = common::fresh_database("outage_lock").await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    publish(&publisher, 0..EVENTS).await;
    // The tenth batch is held until the lock has changed hands: the rebuild is surely mid-way.
    let gate = Gate::at(10);
    let task = tokio::spawn({
        let (config, pool, gate) = (config.clone(), pool.clone(), Arc::clone(&gate));
        async move {
            let options = RebuildOptions {
                batch_size: 200,
                ..RebuildOptions::default()
            };
            rebuild(Arc::new(Held(gate)), &config, &pool, options).await
        }
    });
    gate.reached().await;
    // Another session ends the lock holder's backend and takes the lock in its place.
    let mut other = pool.acquire().await.expect("connection");
    let ended: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_locks \
         WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&mut *other)
    .await
    .expect("terminate the lock holder");
    assert_eq!(ended, vec![(true,)], "one session held the rebuild lock");
    let taken: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('choreo.rebuild.' || $1))")
            .bind(PROJECTION)
            .fetch_one(&mut *other)
            .await
            .expect("take the lock");
    assert!(taken, "the lock is free once its session ended");
    assert!(!task.is_finished(), "the rebuild waits at its held batch");
    gate.release();
    let error = task
        .await
        .expect("join")
        .expect_err("a rebuild without its lock must not swap");
    assert!(
        matches!(error, choreo::Error::RebuildLockLost { .. }),
        "{error}"
    );
    // Nothing ran live: the live view is the empty one the rebuild found.
    let live = view(&pool, "counters_v1").await;
    assert!(
        live.totals.is_empty() && live.offsets.is_empty(),
        "the live view was not replaced"
    );
    // The shadow kept what it applied, for the next run to resume.
    assert!(!view(&pool, "counters_v1__shadow").await.offsets.is_empty());
    drop(other);
}
