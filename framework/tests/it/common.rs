//! Shared test set-up: real Kafka and Postgres (never mocks), unique names per test.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use choreo::kafka::{TopicAdmin, TopicSpec};
use choreo::{KafkaConfig, PostgresConfig, Shutdown};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// The Kafka config for tests: `CHOREO_KAFKA_BROKERS` or the dev broker, in a namespace of
/// its own so every test has its own topics. Panics with instructions when Kafka is down.
pub fn kafka(test: &str) -> KafkaConfig {
    // RUST_LOG=info shows the runtime's account of a failing test.
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let base = KafkaConfig::from_env().expect("kafka config");
    assert!(
        base.brokers()
            .split(',')
            .all(|b| b.starts_with("127.") || b.starts_with("localhost") || b.starts_with("[::1]")),
        "tests send traffic only to loopback addresses; CHOREO_KAFKA_BROKERS={}",
        base.brokers()
    );
    if let Err(e) =
        choreo::kafka::check_reachable(&base.clone().connect_timeout(Duration::from_secs(5)))
    {
        panic!(
            "integration tests need a running Kafka: {e}\n  start it with: scripts/dev-services up"
        );
    }
    base.namespace(unique(test))
}

/// The Postgres config for tests; panics with instructions when Postgres is down.
#[allow(dead_code)]
pub async fn postgres() -> PostgresConfig {
    let config = PostgresConfig::from_env().expect("postgres config");
    if let Err(e) = choreo::postgres::connect(&config).await {
        panic!(
            "integration tests need a running PostgreSQL: {e}\n  start it with: scripts/dev-services up"
        );
    }
    config
}

/// `t-{test}-{random}`: unique per run.
pub fn unique(test: &str) -> String {
    format!(
        "t-{test}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub async fn create_events_topic(config: &KafkaConfig, entity: &str, partitions: i32) -> String {
    let spec = TopicSpec::events(entity, partitions, 1).expect("spec");
    let spec = TopicSpec {
        name: config.topic_name(&spec.name),
        ..spec
    };
    let name = spec.name.clone();
    TopicAdmin::new(config)
        .expect("admin")
        .ensure(&[spec])
        .await
        .expect("create topic");
    name
}

/// Creates the dead-letter topic of `group` (a name without the namespace) under the test's
/// namespace, as handlers, projections and reactors name it: `{namespace}.{group}.dlq`.
pub async fn create_dlq(config: &KafkaConfig, group: &str) -> String {
    let spec = TopicSpec::dead_letters(&config.topic_name(group), 1).expect("spec");
    let name = spec.name.clone();
    TopicAdmin::new(config)
        .expect("admin")
        .ensure(&[spec])
        .await
        .expect("create dlq");
    name
}

/// Creates the topics of `specs`; the admin puts their names in the config's namespace.
#[allow(dead_code)]
pub async fn ensure_topics(config: &KafkaConfig, specs: Vec<TopicSpec>) {
    TopicAdmin::new(config)
        .expect("admin")
        .ensure(&specs)
        .await
        .expect("topics");
}

/// Reads a whole topic with a plain rdkafka consumer (no choreo code on the read path): waits
/// until `expected` records arrived (they may still be on their way) or `timeout` passed,
/// then reads on to the end of the log as it is at that moment, so a checker also sees
/// records beyond the expected count (a duplicate must not hide behind the count). The end
/// is the log's end offset (the last stable offset when `read_committed`), not a quiet spell:
/// nothing already written is missed, however slow the machine; `expected` 0 reads just
/// what is there.
pub fn read_all(
    config: &KafkaConfig,
    topic: &str,
    expected: usize,
    timeout: Duration,
    read_committed: bool,
) -> Vec<OwnedMessage> {
    // The config's security settings and raw properties, none of choreo's client code.
    let consumer: BaseConsumer = config
        .client_config(&[
            ("group.id", &unique("reader")),
            ("enable.auto.commit", "false"),
            (
                "isolation.level",
                if read_committed {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            ),
        ])
        .create()
        .expect("raw consumer");
    let deadline = Instant::now() + timeout;
    // Assigned directly (no group to join), every partition from its beginning.
    let partitions = loop {
        let count = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()
            .and_then(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| t.partitions().len() as i32)
            })
            .unwrap_or(0);
        if count > 0 {
            break count;
        }
        assert!(Instant::now() < deadline, "topic {topic} not found");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            out.push(message.detach());
        }
    }
    // Then on to the end as it is now.
    let watermarks: Vec<(i64, i64)> = (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
        })
        .collect();
    let ends: Vec<i64> = watermarks.iter().map(|(_, high)| *high).collect();
    let reached = |consumer: &BaseConsumer| {
        let position = consumer.position().expect("position");
        (0..partitions).all(|p| {
            let (low, end) = watermarks[p as usize];
            let at = position
                .find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .unwrap_or(-1);
            // An empty partition has no position to reach.
            end <= low || at >= end
        })
    };
    let read_to_end = Instant::now() + Duration::from_secs(60);
    let mut check = true;
    loop {
        if check && reached(&consumer) {
            break out;
        }
        assert!(
            Instant::now() < read_to_end,
            "could not read {topic} to its end {ends:?}"
        );
        // position() is a round trip to librdkafka's thread: asked only when a record may be
        // a partition's last or nothing came (a commit marker may be all that is left).
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let end = ends.get(message.partition() as usize).copied().unwrap_or(0);
                check = message.offset() + 1 >= end;
                out.push(message.detach());
            }
            _ => check = true,
        }
    }
}

/// Headers of a raw record as text.
/// Names that are not UTF-8 are shown lossily (rdkafka's own reader would panic on them).
pub fn header_map(message: &OwnedMessage) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    if let Some(headers) = message.headers() {
        for h in choreo::kafka::RecordHeaders::from_owned(headers).iter() {
            map.insert(
                String::from_utf8_lossy(h.name).into_owned(),
                h.value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default(),
            );
        }
    }
    map
}

/// Waits until `check` holds, polling every 50 ms.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the async `check` holds, polling every 50 ms.
#[allow(dead_code)]
pub async fn eventually_async<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A runtime spawned on a `Shutdown` of its own, with its status handle (`S`, `()` when the
/// test needs none). `stop` triggers the shutdown and returns the run's result; `finished`
/// waits for a run that ends by itself. Dropped without either (a failed assertion), it
/// triggers the shutdown, so nothing keeps running after the test.
pub struct Running<T, S = ()> {
    shutdown: Shutdown,
    task: Option<tokio::task::JoinHandle<T>>,
    status: S,
}

impl<T: Send + 'static> Running<T> {
    /// Spawns `run(shutdown)` on a new `Shutdown`.
    pub fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        Running::spawn_with((), run)
    }
}

#[allow(dead_code)]
impl<T: Send + 'static, S> Running<T, S> {
    /// Spawns `run(shutdown)` on a new `Shutdown`, holding `status` (the runtime's status
    /// handle, taken before `run`).
    pub fn spawn_with<F, Fut>(status: S, run: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let shutdown = Shutdown::new();
        let task = tokio::spawn(run(shutdown.clone()));
        Self {
            shutdown,
            task: Some(task),
            status,
        }
    }
}

#[allow(dead_code)]
impl<T, S> Running<T, S> {
    /// The runtime's status handle.
    pub fn status(&self) -> &S {
        &self.status
    }

    /// The run's shutdown signal.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Triggers the shutdown and returns the run's result (panics if the run panicked).
    pub async fn stop(mut self) -> T {
        self.shutdown.trigger();
        self.join().await
    }

    /// Waits for the run to end without triggering its shutdown (a run that stops by itself).
    pub async fn finished(mut self) -> T {
        self.join().await
    }

    async fn join(&mut self) -> T {
        self.task
            .take()
            .expect("a run is joined once")
            .await
            .expect("the run panicked")
    }
}

impl<T, S> Drop for Running<T, S> {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Runs `processor` until stopped, holding its status.
#[allow(dead_code)]
pub fn run_processor<A: choreo::aggregate::Aggregate>(
    config: &KafkaConfig,
    processor: choreo::aggregate::CommandProcessor<A>,
) -> Running<choreo::Result<()>, choreo::aggregate::ProcessorStatus> {
    let config = config.clone();
    Running::spawn_with(processor.status(), move |shutdown| async move {
        processor.run(&config, shutdown).await
    })
}

/// Runs `runner` until stopped, holding its status.
#[allow(dead_code)]
pub fn run_reactor<R: choreo::reactor::Reactor>(
    config: &KafkaConfig,
    runner: choreo::reactor::ReactorRunner<R>,
) -> Running<choreo::Result<()>, choreo::reactor::ReactorStatus> {
    let config = config.clone();
    Running::spawn_with(runner.status(), move |shutdown| async move {
        runner.run(&config, shutdown).await
    })
}

/// Runs `runner` on `pool` until stopped, holding its status.
#[allow(dead_code)]
pub fn run_projection<P: choreo::Projection>(
    config: &KafkaConfig,
    pool: &sqlx::PgPool,
    runner: choreo::ProjectionRunner<P>,
) -> Running<choreo::Result<choreo::kafka::RunSummary>, choreo::kafka::ConsumerStatus> {
    let (config, pool) = (config.clone(), pool.clone());
    Running::spawn_with(runner.status(), move |shutdown| async move {
        runner.run(&config, &pool, shutdown).await
    })
}

/// Runs `handlers` until stopped, holding their status.
#[allow(dead_code)]
pub fn run_handlers(
    config: &KafkaConfig,
    mut handlers: choreo::EventHandlers,
) -> Running<choreo::Result<choreo::kafka::RunSummary>, choreo::kafka::ConsumerStatus> {
    let config = config.clone();
    Running::spawn_with(handlers.status(), move |shutdown| async move {
        handlers.run(&config, shutdown).await
    })
}

/// The event most tests publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserSignedUp {
    pub user_id: String,
    pub email: String,
    pub name: String,
}

impl choreo::Event for UserSignedUp {
    const NAME: &'static str = "v1.user.signedup";
    fn subject(&self) -> String {
        self.email.clone()
    }
}

pub fn signup(i: usize) -> UserSignedUp {
    UserSignedUp {
        user_id: format!("u-{i}"),
        email: format!("user{i}@example.com"),
        name: format!("User {i}"),
    }
}

/// A database of its own for one test, with choreo's migrations applied (dropped by nobody:
/// names are unique per run; `scripts/test` drops those of earlier runs).
#[allow(dead_code)]
pub async fn fresh_database(test: &str) -> (String, sqlx::PgPool) {
    let config = empty_database(test).await;
    let pool = choreo::postgres::connect_and_migrate(&config)
        .await
        .expect("migrate fresh database");
    (config.url_with_secret().to_owned(), pool)
}

/// A new, empty database of its own for one test.
#[allow(dead_code)]
pub async fn empty_database(test: &str) -> PostgresConfig {
    let admin = postgres().await;
    let pool = choreo::postgres::connect(&admin).await.expect("connect");
    let name = unique(test).replace('-', "_");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .expect("create database");
    pool.close().await;
    let url = std::env::var("CHOREO_DATABASE_URL")
        .unwrap_or_else(|_| choreo::config::DEFAULT_DATABASE_URL.to_owned());
    let base = url
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .expect("database URL has a path");
    PostgresConfig::new(format!("{base}/{name}")).max_connections(8)
}

/// End offsets (high watermarks) of every partition of `topic`.
#[allow(dead_code)]
pub fn end_offsets(config: &KafkaConfig, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = config.client_config(&[]).create().expect("consumer");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

/// Waits until the projection's live checkpoints reached the end of every partition.
#[allow(dead_code)]
pub async fn wait_caught_up(
    pool: &sqlx::PgPool,
    config: &KafkaConfig,
    projection: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) {
    let ends = end_offsets(config, topic, partitions);
    wait_checkpoints(pool, projection, topic, &ends, timeout).await;
}

/// Waits until the projection's live checkpoint of each partition `p` of `topic` reached
/// `targets[p]`.
#[allow(dead_code)]
pub async fn wait_checkpoints(
    pool: &sqlx::PgPool,
    projection: &str,
    topic: &str,
    targets: &[i64],
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM choreo_meta.checkpoints WHERE projection = $1 AND slot = 'live' AND topic = $2",
        )
        .bind(projection)
        .bind(topic)
        .fetch_all(pool)
        .await
        .expect("checkpoints");
        let done = targets.iter().enumerate().all(|(p, target)| {
            rows.iter()
                .any(|(rp, next)| *rp as usize == p && next >= target)
        });
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "projection {projection} did not reach {targets:?} in {timeout:?}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
