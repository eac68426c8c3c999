//! Projections against real Kafka and Postgres: exactly-once effects, dead letters,
//! rebalances, rebuilds, read-your-writes. The checker is independent of choreo's read path:
//! it reads the topic with a plain rdkafka consumer and folds it itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use choreo::kafka::{TopicAdmin, TopicSpec};
use choreo::message::Received;
use choreo::projection::{ApplyError, Projection, RebuildOptions, rebuild, wait_for};
use choreo::testing::{CounterBumped, CounterProjection};
use choreo::{KafkaConfig, ProjectionRunner, Publisher, Shutdown};
use rdkafka::Message;
use sqlx::PgPool;

use crate::common;

pub const PROJECTION: &str = "counters.v1";

/// Topic `counter.events` and the projection's dead-letter topic, in the test's namespace.
pub async fn topics(config: &KafkaConfig, partitions: i32) -> String {
    let events = TopicSpec::events("counter", partitions, 1).expect("spec");
    let events = TopicSpec {
        name: config.topic_name(&events.name),
        ..events
    };
    let name = events.name.clone();
    let dlq = TopicSpec::dead_letters(PROJECTION, 1).expect("spec");
    let dlq = TopicSpec {
        name: config.topic_name(&dlq.name),
        ..dlq
    };
    TopicAdmin::new(config)
        .expect("admin")
        .ensure(&[events, dlq])
        .await
        .expect("topics");
    name
}

/// Where a [`Held`] projection stops: its `at`-th batch waits, inside its transaction, until
/// the test lets it go on. A test acts (an outage, a stolen lock, live events) while that
/// batch is surely in flight and the run surely unfinished, however fast the machine is.
pub struct Gate {
    at: usize,
    batches: AtomicUsize,
    reached: tokio::sync::Notify,
    released: tokio::sync::Notify,
}

impl Gate {
    /// A gate at the `at`-th batch (1 is the first).
    pub fn at(at: usize) -> Arc<Self> {
        Arc::new(Self {
            at,
            batches: AtomicUsize::new(0),
            reached: tokio::sync::Notify::new(),
            released: tokio::sync::Notify::new(),
        })
    }

    /// Waits until the batch is held.
    pub async fn reached(&self) {
        tokio::time::timeout(Duration::from_secs(90), self.reached.notified())
            .await
            .unwrap_or_else(|_| panic!("batch {} was never applied", self.at));
    }

    /// Lets the held batch go on.
    pub fn release(&self) {
        self.released.notify_one();
    }
}

/// The drill projection (same name, version, tables and fold as [`CounterProjection`]),
/// held once at its gate.
pub struct Held(pub Arc<Gate>);

impl Projection for Held {
    type Events = CounterBumped;
    const NAME: &'static str = CounterProjection::NAME;
    const VERSION: u32 = CounterProjection::VERSION;

    fn schema_sql(&self) -> &'static str {
        CounterProjection.schema_sql()
    }

    async fn apply(
        &self,
        conn: &mut sqlx::PgConnection,
        events: &[Received<CounterBumped>],
    ) -> Result<(), ApplyError> {
        let gate = &self.0;
        if gate.batches.fetch_add(1, Ordering::AcqRel) + 1 == gate.at {
            gate.reached.notify_one();
            gate.released.notified().await;
        }
        CounterProjection.apply(conn, events).await
    }
}

/// The live checkpoints of the projection on `topic`: (partition, next offset).
pub async fn live_checkpoints(pool: &PgPool, topic: &str) -> Vec<(i32, i64)> {
    sqlx::query_as(
        "SELECT partition, next_offset FROM choreo_meta.checkpoints \
         WHERE projection = $1 AND slot = 'live' AND topic = $2 ORDER BY 1",
    )
    .bind(PROJECTION)
    .bind(topic)
    .fetch_all(pool)
    .await
    .expect("checkpoints")
}

/// Whether a live checkpoint of `topic` moved past `ends` (end offsets by partition).
pub async fn applied_past(pool: &PgPool, topic: &str, ends: &[i64]) -> bool {
    live_checkpoints(pool, topic)
        .await
        .iter()
        .any(|(p, next)| *next > ends[*p as usize])
}

pub fn bump(i: usize) -> CounterBumped {
    CounterBumped {
        key: format!("k{}", i % 37),
        amount: (i % 11) as i64 + 1,
        poison: false,
    }
}

pub async fn publish(publisher: &Publisher, range: std::ops::Range<usize>) {
    let events: Vec<CounterBumped> = range.map(bump).collect();
    for result in futures::future::join_all(events.iter().map(|e| publisher.publish(e))).await {
        result.expect("publish");
    }
}

/// What the view must hold: a fold of the topic as a plain consumer reads it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fold {
    pub totals: BTreeMap<String, (i64, i32)>,
    pub offsets: Vec<(i32, i64)>,
}

pub fn fold(config: &KafkaConfig, topic: &str, expected: usize) -> Fold {
    let records = common::read_all(config, topic, expected, Duration::from_secs(30), true);
    assert_eq!(records.len(), expected, "the checker read the whole topic");
    let mut out = Fold::default();
    for record in records {
        let headers = common::header_map(&record);
        if headers.get("ce_type").map(String::as_str) != Some("v1.counter.bumped") {
            continue;
        }
        let Some(Ok(event)) = record
            .payload()
            .map(serde_json::from_slice::<CounterBumped>)
        else {
            continue;
        };
        if event.poison || record.key() != Some(event.key.as_bytes()) {
            continue;
        }
        let entry = out.totals.entry(event.key.clone()).or_default();
        entry.0 += event.amount;
        entry.1 += 1;
        out.offsets.push((record.partition(), record.offset()));
    }
    out.offsets.sort_unstable();
    out
}

/// What the view holds; panics if an offset was applied more than once.
pub async fn view(pool: &PgPool, schema: &str) -> Fold {
    let totals: Vec<(String, i64, i32)> = sqlx::query_as(&format!(
        "SELECT key, total, events FROM {schema}.totals ORDER BY key"
    ))
    .fetch_all(pool)
    .await
    .expect("totals");
    let applications: Vec<(i32, i64, i32)> = sqlx::query_as(&format!(
        "SELECT partition, \"offset\", times FROM {schema}.applications ORDER BY 1, 2"
    ))
    .fetch_all(pool)
    .await
    .expect("applications");
    let twice: Vec<_> = applications
        .iter()
        .filter(|(_, _, times)| *times != 1)
        .collect();
    assert!(
        twice.is_empty(),
        "offsets applied more than once (each must land in exactly one committed batch): {twice:?}"
    );
    Fold {
        totals: totals.into_iter().map(|(k, t, n)| (k, (t, n))).collect(),
        offsets: applications.into_iter().map(|(p, o, _)| (p, o)).collect(),
    }
}

fn start_runner(
    config: &KafkaConfig,
    pool: &PgPool,
) -> common::Running<choreo::Result<choreo::kafka::RunSummary>, choreo::kafka::ConsumerStatus> {
    common::run_projection(
        config,
        pool,
        ProjectionRunner::new(Arc::new(CounterProjection)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_equals_a_fold_of_the_log_and_poison_is_dead_lettered_and_recorded() {
    let config = common::kafka("proj-live");
    let topic = topics(&config, 3).await;
    let (_, pool) = common::fresh_database("proj_live").await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    publish(&publisher, 0..200).await;
    // Poison: the projection's CHECK constraint rejects it. Undecodable: bad JSON.
    publisher
        .publish(&CounterBumped {
            key: "k1".into(),
            amount: 5,
            poison: true,
        })
        .await
        .expect("poison");
    let good = publisher.prepare(&bump(1), None).expect("prepare");
    let broken = choreo::kafka::Outgoing::new(
        good.topic.clone(),
        good.meta().clone(),
        b"{not json".to_vec(),
    );
    publisher.send(&broken).await.expect("broken payload");
    publish(&publisher, 200..300).await;

    let task = start_runner(&config, &pool);
    let status = task.status().clone();
    common::wait_caught_up(
        &pool,
        &config,
        PROJECTION,
        &topic,
        3,
        Duration::from_secs(60),
    )
    .await;
    let summary = task.stop().await.expect("run");
    assert!(
        summary.halted.is_empty() && status.halted().is_empty(),
        "{:?}",
        summary.halted
    );

    assert_eq!(
        view(&pool, "counters_v1").await,
        fold(&config, &topic, 302),
        "the view equals the fold, row by row"
    );
    let recorded: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_type, error FROM choreo_meta.dead_letters WHERE consumer = $1 ORDER BY id",
    )
    .bind(PROJECTION)
    .fetch_all(&pool)
    .await
    .expect("dead letters");
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert!(
        recorded
            .iter()
            .any(|(_, e)| e.contains("check constraint") || e.contains("violates")),
        "{recorded:?}"
    );
    assert!(
        recorded
            .iter()
            .any(|(_, e)| e.contains("undecodable payload")),
        "{recorded:?}"
    );
    let dlq = config.topic_name(&format!("{PROJECTION}.dlq"));
    assert_eq!(
        common::read_all(&config, &dlq, 2, Duration::from_secs(20), true).len(),
        2,
        "both on the dead-letter topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_joining_and_leaving_while_events_flow_apply_each_offset_exactly_once() {
    let config = common::kafka("proj-rebalance");
    let topic = topics(&config, 6).await;
    let (_, pool) = common::fresh_database("proj_rebalance").await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    // Events flow (paced) through every join and leave: at least 30 rounds, and on until the
    // membership changes are done, however long they take.
    let changes_done = Arc::new(AtomicBool::new(false));
    let producing = tokio::spawn({
        let (publisher, changes_done) = (publisher.clone(), Arc::clone(&changes_done));
        async move {
            let mut round = 0;
            while round < 30 || !changes_done.load(Ordering::Acquire) {
                publish(&publisher, round * 100..round * 100 + 100).await;
                round += 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            round * 100
        }
    });
    let a = start_runner(&config, &pool);
    let status_a = a.status().clone();
    let (db, events) = (&pool, &topic);
    common::eventually_async(
        "A to apply events",
        Duration::from_secs(60),
        move || async move { !live_checkpoints(db, events).await.is_empty() },
    )
    .await;
    let b = start_runner(&config, &pool);
    let status_b = b.status().clone();
    common::eventually(
        "B to take partitions from A",
        Duration::from_secs(60),
        || {
            let (pa, pb) = (status_a.assigned().len(), status_b.assigned().len());
            pa > 0 && pb > 0 && pa + pb == 6
        },
    )
    .await;
    a.stop().await.expect("run a");
    let c = start_runner(&config, &pool);
    let status_c = c.status().clone();
    common::eventually(
        "C to take partitions from B",
        Duration::from_secs(60),
        || {
            let (pb, pc) = (status_b.assigned().len(), status_c.assigned().len());
            pb > 0 && pc > 0 && pb + pc == 6
        },
    )
    .await;
    changes_done.store(true, Ordering::Release);
    let published = producing.await.expect("producer");
    common::wait_caught_up(
        &pool,
        &config,
        PROJECTION,
        &topic,
        6,
        Duration::from_secs(60),
    )
    .await;
    b.shutdown().trigger();
    c.shutdown().trigger();
    b.stop().await.expect("run b");
    c.stop().await.expect("run c");
    assert_eq!(
        view(&pool, "counters_v1").await,
        fold(&config, &topic, published)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_beyond_the_end_of_the_log_halts_the_partition_with_a_clear_error() {
    let config = common::kafka("proj-range");
    let topic = topics(&config, 2).await;
    let (_, pool) = common::fresh_database("proj_range").await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    publish(&publisher, 0..20).await;
    sqlx::query("INSERT INTO choreo_meta.checkpoints (projection, slot, topic, partition, next_offset) VALUES ($1, 'live', $2, 0, 100000)")
        .bind(PROJECTION)
        .bind(&topic)
        .execute(&pool)
        .await
        .expect("plant a checkpoint from another life of the topic");
    let task = start_runner(&config, &pool);
    let status = task.status().clone();
    common::eventually("partition 0 to halt", Duration::from_secs(30), || {
        !status.halted().is_empty()
    })
    .await;
    let halted = status.halted();
    assert_eq!(halted.len(), 1, "{halted:?}");
    assert_eq!(halted[0].1, 0, "only partition 0 halts");
    assert!(
        halted[0].2.contains("beyond the log end") && halted[0].2.contains("100000"),
        "{}",
        halted[0].2
    );
    assert!(!status.is_ready());
    let summary = task.stop().await.expect("run");
    assert_eq!(summary.halted.len(), 1);
    let checkpoint: i64 = sqlx::query_scalar(
        "SELECT next_offset FROM choreo_meta.checkpoints WHERE projection = $1 AND partition = 0",
    )
    .bind(PROJECTION)
    .fetch_one(&pool)
    .await
    .expect("checkpoint");
    assert_eq!(checkpoint, 100000, "a halted partition is left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_live_events_arrive_swaps_in_a_view_equal_to_the_fold() {
    let config = common::kafka("proj-rebuild");
    let topic = topics(&config, 3).await;
    let (_, pool) = common::fresh_database("proj_rebuild").await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    publish(&publisher, 0..3000).await;
    let live = start_runner(&config, &pool);
    common::wait_caught_up(
        &pool,
        &config,
        PROJECTION,
        &topic,
        3,
        Duration::from_secs(60),
    )
    .await;
    // Damage the live view, as a bug would: the rebuild must replace it with the truth.
    sqlx::query("UPDATE counters_v1.totals SET total = -1")
        .execute(&pool)
        .await
        .expect("damage");
    let ends = common::end_offsets(&config, &topic, 3);

    let producing = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            for round in 0..10 {
                publish(&publisher, 3000 + round * 100..3000 + round * 100 + 100).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // The rebuild's first batch waits until live events have arrived and been applied live:
    // they surely come while it runs.
    let gate = Gate::at(1);
    let rebuilding = tokio::spawn({
        let (config, pool, gate) = (config.clone(), pool.clone(), Arc::clone(&gate));
        async move {
            rebuild(
                Arc::new(Held(gate)),
                &config,
                &pool,
                RebuildOptions::default(),
            )
            .await
        }
    });
    gate.reached().await;
    common::eventually_async(
        "live events applied while the rebuild runs",
        Duration::from_secs(60),
        || applied_past(&pool, &topic, &ends),
    )
    .await;
    gate.release();
    let report = rebuilding.await.expect("join").expect("rebuild");
    assert!(report.records >= 3000, "{report}");
    assert!(
        report
            .to_string()
            .contains("swapped into schema counters_v1"),
        "{report}"
    );
    producing.await.expect("producer");
    common::wait_caught_up(
        &pool,
        &config,
        PROJECTION,
        &topic,
        3,
        Duration::from_secs(60),
    )
    .await;
    live.stop().await.expect("run");
    assert_eq!(
        view(&pool, "counters_v1").await,
        fold(&config, &topic, 4000),
        "the swapped-in view equals the fold"
    );
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'counters_v1%' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("schemas");
    assert_eq!(
        schemas,
        vec!["counters_v1".to_owned()],
        "shadow renamed, old copy dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_returns_once_the_view_has_passed_the_offsets_of_a_write() {
    let config = common::kafka("proj-wait");
    let topic = topics(&config, 2).await;
    let (_, pool) = common::fresh_database("proj_wait").await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    let delivered = publisher.publish(&bump(7)).await.expect("publish");
    let offsets = vec![(topic.clone(), delivered.partition, delivered.offset)];
    // Not running yet: the wait times out with a clear error.
    let err = wait_for(&pool, PROJECTION, &offsets, Duration::from_millis(300))
        .await
        .expect_err("no runner");
    assert!(matches!(err, choreo::Error::Timeout { .. }), "{err}");
    let task = start_runner(&config, &pool);
    wait_for(&pool, PROJECTION, &offsets, Duration::from_secs(30))
        .await
        .expect("read your writes");
    let total: i64 = sqlx::query_scalar("SELECT total FROM counters_v1.totals WHERE key = 'k7'")
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(
        total,
        bump(7).amount,
        "the write is visible once wait_for returned"
    );
    task.stop().await.expect("run");
}

/// A transactional producer: what command processors and reactors write with.
fn transactional_producer(config: &KafkaConfig) -> rdkafka::producer::BaseProducer {
    use rdkafka::producer::Producer;
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", config.brokers())
        .set("transactional.id", common::unique("txn"))
        .create()
        .expect("producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    producer
}

/// Copies `records` into `topic` (same partitions), `per_transaction` records per Kafka
/// transaction: every transaction leaves a commit marker after its records.
fn copy_in_transactions(
    producer: &rdkafka::producer::BaseProducer,
    topic: &str,
    records: &[rdkafka::message::OwnedMessage],
    per_transaction: usize,
) {
    use rdkafka::producer::{BaseRecord, Producer};
    for chunk in records.chunks(per_transaction) {
        producer.begin_transaction().expect("begin");
        for r in chunk {
            let mut out = BaseRecord::<[u8], [u8]>::to(topic)
                .partition(r.partition())
                .payload(r.payload().unwrap_or_default());
            if let Some(key) = r.key() {
                out = out.key(key);
            }
            if let Some(headers) = r.headers() {
                out = out.headers(headers.clone());
            }
            while let Err((_, back)) = producer.send(out) {
                producer.poll(Duration::from_millis(10));
                out = back;
            }
        }
        producer
            .commit_transaction(Duration::from_secs(30))
            .expect("commit");
    }
}

/// Caught up on a transactional log: a checkpoint is the last record + 1, which is the
/// final commit marker's offset (the end - 1).
async fn caught_up_in_transactions(pool: &PgPool, config: &KafkaConfig, topic: &str) {
    let targets: Vec<i64> = common::end_offsets(config, topic, 3)
        .into_iter()
        .map(|end| end - 1)
        .collect();
    common::wait_checkpoints(pool, PROJECTION, topic, &targets, Duration::from_secs(60)).await;
}

/// A rebuild over a transactional log that must read a second pass: its first pass ends at
/// the log end, where the consumer has passed the final commit markers while the shadow
/// checkpoints stop before them; then the live view moves ahead before the swap (a held row
/// lock on one live checkpoint keeps the swap waiting while more transactions arrive). The
/// second pass must go on from the checkpoints and swap in a view equal to the fold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_over_a_transactional_log_reads_a_second_pass_and_swaps_in_the_fold() {
    let source = common::kafka("txn-source");
    let source_topic = topics(&source, 3).await;
    let publisher = Publisher::new(&source, "/drill").expect("publisher");
    publish(&publisher, 0..3600).await;
    let records = common::read_all(&source, &source_topic, 3600, Duration::from_secs(30), true);
    assert_eq!(records.len(), 3600);
    let config = common::kafka("txn-rebuild");
    let topic = topics(&config, 3).await;
    let producer = transactional_producer(&config);
    // A Kafka transaction takes ~100 ms here: few and large ones.
    // Every sixth record comes later (spread over the partitions: the reader returns them
    // partition by partition).
    let (history, rest): (Vec<_>, Vec<_>) =
        records.iter().enumerate().partition(|(i, _)| i % 6 != 0);
    let history: Vec<_> = history.into_iter().map(|(_, r)| r.clone()).collect();
    copy_in_transactions(&producer, &topic, &history, 100);
    let (_, pool) = common::fresh_database("txn_rebuild").await;

    let live = start_runner(&config, &pool);
    caught_up_in_transactions(&pool, &config, &topic).await;

    // Hold partition 0's live checkpoint: the swap will wait for it.
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query(
        "SELECT 1 FROM choreo_meta.checkpoints WHERE projection = $1 AND slot = 'live' AND partition = 0 FOR UPDATE",
    )
    .bind(PROJECTION)
    .execute(&mut *holder)
    .await
    .expect("lock a live checkpoint");
    let task = tokio::spawn({
        let (config, pool) = (config.clone(), pool.clone());
        async move {
            rebuild(
                Arc::new(CounterProjection),
                &config,
                &pool,
                RebuildOptions::default(),
            )
            .await
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE%'",
        )
        .fetch_one(&pool)
        .await
        .expect("activity");
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && !task.is_finished(),
            "the swap never waited for the held checkpoint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // More transactions on partitions 1 and 2, applied live meanwhile.
    let later: Vec<_> = rest
        .into_iter()
        .map(|(_, r)| r.clone())
        .filter(|r| r.partition() != 0)
        .collect();
    let before = common::end_offsets(&config, &topic, 3);
    copy_in_transactions(&producer, &topic, &later, 100);
    let ends = common::end_offsets(&config, &topic, 3);
    assert!(ends[1] > before[1] && ends[2] > before[2]);
    // The swap waits for the held row at most its lock_timeout (10 s): the live view must
    // move ahead before then, which the rebuild ending first would show.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = live_checkpoints(&pool, &topic).await;
        if rows
            .iter()
            .any(|(p, next)| *p > 0 && *next > before[*p as usize])
        {
            break;
        }
        assert!(
            !task.is_finished(),
            "the swap stopped waiting before the live view moved ahead: {rows:?}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the live view did not move ahead: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.rollback().await.expect("release");

    let report = task
        .await
        .expect("join")
        .expect("a rebuild over a transactional log");
    assert!(
        report.records > 3000,
        "it read the later transactions: {report}"
    );
    caught_up_in_transactions(&pool, &config, &topic).await;
    live.stop().await.expect("run");
    let expected = history.len() + later.len();
    assert_eq!(
        view(&pool, "counters_v1").await,
        fold(&config, &topic, expected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_reads_its_redrive_topic_in_the_namespace() {
    let config = common::kafka("proj-redrive");
    topics(&config, 1).await;
    let (_, pool) = common::fresh_database("proj_redrive").await;
    // The topic `choreo dlq redrive` writes to: {namespace}.{projection id}.redrive.
    let admin = TopicAdmin::new(&config).expect("admin");
    let spec = TopicSpec::redrive(PROJECTION, 1).expect("spec");
    admin
        .ensure(std::slice::from_ref(&spec))
        .await
        .expect("redrive topic");
    let redrive = admin.full_name(&spec.name);
    assert!(redrive.starts_with(config.topic_namespace().expect("namespace")));

    let task = start_runner(&config, &pool);
    let status = task.status().clone();
    common::eventually(
        "the redrive topic to be assigned",
        Duration::from_secs(60),
        || status.assigned().iter().any(|(topic, _)| *topic == redrive),
    )
    .await;
    // A record fed back as the redrive does it: the original event, on the redrive topic.
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    let out = publisher
        .prepare(
            &CounterBumped {
                key: "redriven".into(),
                amount: 7,
                poison: false,
            },
            None,
        )
        .expect("prepare");
    let fed_back =
        choreo::kafka::Outgoing::new(redrive.clone(), out.meta().clone(), out.payload.clone());
    publisher
        .send(&fed_back)
        .await
        .expect("send to the redrive topic");
    common::eventually_async(
        "the redriven event in the view",
        Duration::from_secs(60),
        || {
            let pool = pool.clone();
            async move {
                view(&pool, "counters_v1")
                    .await
                    .totals
                    .get("redriven")
                    .is_some_and(|(total, _)| *total == 7)
            }
        },
    )
    .await;
    task.stop().await.expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_namespace_in_the_same_database_is_refused_and_the_first_keeps_its_view() {
    let first = common::kafka("proj-ns-first");
    let second = common::kafka("proj-ns-second");
    let (_, pool) = common::fresh_database("proj_ns").await;
    let topic = topics(&first, 2).await;
    topics(&second, 2).await;
    let publisher = Publisher::new(&first, "/drill").expect("publisher");
    publish(&publisher, 0..40).await;
    publish(
        &Publisher::new(&second, "/drill").expect("publisher"),
        1000..1010,
    )
    .await;

    // The first namespace's runner claims the projection and applies its log.
    let task = start_runner(&first, &pool);
    common::wait_caught_up(
        &pool,
        &first,
        PROJECTION,
        &topic,
        2,
        Duration::from_secs(60),
    )
    .await;

    // The second namespace's runner, rebuild and reset are refused, naming both namespaces:
    // they would apply into the same view, and a swap would drop the first's checkpoints.
    let refused = |what: &str, result: choreo::Result<()>| match result {
        Err(choreo::Error::Config(message)) => {
            for ns in [&first, &second] {
                let ns = ns.topic_namespace().expect("namespace");
                assert!(message.contains(ns), "{what}: {message}");
            }
        }
        other => panic!("{what} under the second namespace: {other:?}"),
    };
    let runner = ProjectionRunner::new(Arc::new(CounterProjection));
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        runner.run(&second, &pool, Shutdown::new()),
    )
    .await
    .expect("the second namespace's runner returns at once, refused, instead of running");
    refused("run", run.map(|_| ()));
    refused(
        "rebuild",
        rebuild(
            Arc::new(CounterProjection),
            &second,
            &pool,
            RebuildOptions {
                progress: false,
                ..RebuildOptions::default()
            },
        )
        .await
        .map(|_| ()),
    );
    refused(
        "reset",
        choreo::projection::reset(&CounterProjection, &pool, &second).await,
    );

    // The first namespace still owns its view, which equals the fold of its own log only,
    // and rebuilds it.
    assert_eq!(view(&pool, "counters_v1").await, fold(&first, &topic, 40));
    rebuild(
        Arc::new(CounterProjection),
        &first,
        &pool,
        RebuildOptions {
            progress: false,
            ..RebuildOptions::default()
        },
    )
    .await
    .expect("rebuild under the owning namespace");
    assert_eq!(view(&pool, "counters_v1").await, fold(&first, &topic, 40));
    task.stop().await.expect("run");
}
