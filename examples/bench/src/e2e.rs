//! `e2e-latency`: publish -> read model committed, p99 at a fixed open-loop rate (1k events/s
//! by default), measured from each event's scheduled send time to the arrival of a Postgres
//! NOTIFY sent inside the transaction that wrote its row (a notification is delivered only
//! when that transaction commits).
//!
//! - framework: `Publisher` -> `ProjectionRunner` whose `apply` inserts the batch with one
//!   UNNEST statement and `SELECT pg_notify('bench_e2e_f', <the events' seq numbers>)`;
//! - baseline: a raw producer (the publisher's config, same linger) -> a raw `BaseConsumer`
//!   on a thread of its own, polling batches the way the framework does (up to 1000, the
//!   first poll waiting up to 100 ms) -> one transaction per batch: the same UNNEST insert,
//!   an offset row per partition, and `pg_notify('bench_e2e_b', ...)`.
//!
//! One listener connection (`PgListener`) records when each notification arrives. Both
//! pipelines run for the whole benchmark in one fresh database; only the load alternates.
//! Each side first gets a short unmeasured warm-up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use choreo::kafka::TopicSpec;
use choreo::postgres::connect_and_migrate;
use choreo::{
    ApplyError, PostgresConfig, Projection, ProjectionRunner, Publisher, Received, Shutdown,
};
use chrono::{DateTime, Utc};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgListener;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use uuid::Uuid;

use crate::data::{self, Dataset, RawRecord, ReadingRecorded};
use crate::latency::{self, Latencies};
use crate::offsets;
use crate::{PARTITIONS, Setup, Side};

const FRAMEWORK_CHANNEL: &str = "bench_e2e_f";
const BASELINE_CHANNEL: &str = "bench_e2e_b";
/// Seq numbers per NOTIFY: payloads must stay under Postgres' 8000 bytes (a seq is at most 8
/// digits and a comma here).
const NOTIFY_CHUNK: usize = 800;
/// Most records per baseline batch: the projection runner's `max_batch`.
const BATCH: usize = 1000;

/// The framework side: one row per event, and a notification per batch.
#[derive(Debug)]
pub struct LatencyProjection;

impl Projection for LatencyProjection {
    type Events = ReadingRecorded;
    const NAME: &'static str = "bench_e2e";
    const VERSION: u32 = 1;

    fn schema_sql(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS readings (
             seq bigint PRIMARY KEY,
             meter_id text NOT NULL,
             site text NOT NULL,
             watts bigint NOT NULL,
             time timestamptz NOT NULL
         );"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Received<ReadingRecorded>],
    ) -> Result<(), ApplyError> {
        let rows = Rows::new(events.iter().map(|e| (&e.payload, e.meta.time)));
        rows.insert(conn, INSERT_FRAMEWORK).await?;
        notify(conn, FRAMEWORK_CHANNEL, &rows.seqs).await?;
        Ok(())
    }
}

const INSERT_FRAMEWORK: &str = "INSERT INTO readings (seq, meter_id, site, watts, time) \
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[])";
const INSERT_BASELINE: &str = "INSERT INTO baseline_readings (seq, meter_id, site, watts, time) \
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[])";
const BASELINE_SCHEMA: &str = "CREATE TABLE baseline_readings (
         seq bigint PRIMARY KEY,
         meter_id text NOT NULL,
         site text NOT NULL,
         watts bigint NOT NULL,
         time timestamptz NOT NULL
     );
     CREATE TABLE baseline_offsets (
         topic text NOT NULL,
         partition integer NOT NULL,
         next_offset bigint NOT NULL,
         PRIMARY KEY (topic, partition)
     );";

/// A batch as UNNEST columns.
#[derive(Default)]
struct Rows<'a> {
    seqs: Vec<i64>,
    meters: Vec<&'a str>,
    sites: Vec<&'a str>,
    watts: Vec<i64>,
    times: Vec<DateTime<Utc>>,
}

impl<'a> Rows<'a> {
    fn new(events: impl Iterator<Item = (&'a ReadingRecorded, DateTime<Utc>)>) -> Self {
        let mut rows = Rows::default();
        for (event, time) in events {
            rows.seqs.push(i64::try_from(event.seq).unwrap_or(i64::MAX));
            rows.meters.push(&event.meter_id);
            rows.sites.push(&event.site);
            rows.watts
                .push(i64::try_from(event.watts).unwrap_or(i64::MAX));
            rows.times.push(time);
        }
        rows
    }

    async fn insert(&self, conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::query(sql)
            .bind(&self.seqs)
            .bind(&self.meters)
            .bind(&self.sites)
            .bind(&self.watts)
            .bind(&self.times)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// `pg_notify(channel, 'seq,seq,...')`, in chunks that fit a notification.
async fn notify(conn: &mut PgConnection, channel: &str, seqs: &[i64]) -> Result<(), sqlx::Error> {
    for chunk in seqs.chunks(NOTIFY_CHUNK) {
        let payload = chunk
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// When each seq was due (set by the load) and when its notification arrived (set by the
/// listener).
#[derive(Default)]
struct Clock {
    due: HashMap<u64, Instant>,
    arrived: HashMap<u64, Instant>,
    /// Notifications per channel: about one per committed transaction (a batch of more
    /// than [`NOTIFY_CHUNK`] events sends several).
    notifications: HashMap<String, u64>,
}

type SharedClock = Arc<Mutex<Clock>>;

fn lock(clock: &SharedClock) -> std::sync::MutexGuard<'_, Clock> {
    clock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub async fn run(
    setup: &Setup,
    created: &mut Vec<String>,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<String> {
    let baseline_topic = format!("{}.baseline.events", setup.namespace);
    let dlq = TopicSpec::dead_letters(
        &setup.config.topic_name(&format!(
            "{}.v{}",
            LatencyProjection::NAME,
            LatencyProjection::VERSION
        )),
        1,
    )?;
    let specs = [
        TopicSpec::events(&format!("{}.baseline", setup.namespace), PARTITIONS, 1)?,
        dlq,
    ];
    created.extend(specs.iter().map(|s| s.name.clone()));
    setup
        .admin
        .ensure(&specs)
        .await
        .context("creating the e2e topics")?;

    let base_url = std::env::var("CHOREO_DATABASE_URL")
        .unwrap_or_else(|_| choreo::config::DEFAULT_DATABASE_URL.to_owned());
    let mut admin = PgConnection::connect(&base_url)
        .await
        .context("connecting to Postgres")?;
    let database = format!("bench_{}", &Uuid::new_v4().simple().to_string()[..12]);
    admin
        .execute(format!("CREATE DATABASE {database}").as_str())
        .await
        .with_context(|| format!("creating database {database}"))?;
    let url = crate::rebuild::database_url(&base_url, &database);
    let outcome = measure(setup, &url, &baseline_topic, rate, seconds).await;
    if let Err(e) = admin
        .execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
        .await
    {
        eprintln!("warning: could not drop database {database}: {e}");
    }
    outcome
}

async fn measure(
    setup: &Setup,
    url: &str,
    baseline_topic: &str,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<String> {
    let pool = connect_and_migrate(&PostgresConfig::new(url))
        .await
        .context("migrating the benchmark database")?;
    pool.execute(BASELINE_SCHEMA).await?;
    let per_round = (rate * seconds as f64).round() as u64;
    println!(
        "  open loop at {rate:.0} events/s, {seconds} s ({per_round} events) per round and side, latency from the scheduled send time to the NOTIFY of the committing transaction"
    );

    let clock: SharedClock = Arc::default();
    let mut listener = PgListener::connect_with(&pool)
        .await
        .context("connecting the listener")?;
    listener
        .listen_all([FRAMEWORK_CHANNEL, BASELINE_CHANNEL])
        .await?;
    let listening = {
        let clock = Arc::clone(&clock);
        // Runs until aborted; ends early only with an error.
        tokio::spawn(async move {
            loop {
                let notification = match listener.recv().await {
                    Ok(notification) => notification,
                    Err(e) => return anyhow::Error::from(e).context("the listener failed"),
                };
                let now = Instant::now();
                let mut clock = lock(&clock);
                *clock
                    .notifications
                    .entry(notification.channel().to_owned())
                    .or_default() += 1;
                for seq in notification.payload().split(',') {
                    match seq.parse::<u64>() {
                        Ok(seq) => {
                            clock.arrived.entry(seq).or_insert(now);
                        }
                        Err(e) => {
                            return anyhow::anyhow!(
                                "a notification on {} with a bad seq {seq:?}: {e}",
                                notification.channel()
                            );
                        }
                    }
                }
            }
        })
    };

    let shutdown = Shutdown::new();
    let runner = ProjectionRunner::new(Arc::new(LatencyProjection));
    let runner_status = runner.status();
    let framework = {
        let (config, pool, shutdown) = (setup.config.clone(), pool.clone(), shutdown.clone());
        tokio::spawn(async move { runner.run(&config, &pool, shutdown).await })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let assigned = Arc::new(AtomicBool::new(false));
    let baseline = {
        let consumer = Baseline {
            brokers: setup.brokers.clone(),
            group: format!("{}.baseline-e2e", setup.namespace),
            topic: baseline_topic.to_owned(),
            url: url.to_owned(),
        };
        let (stop, assigned) = (Arc::clone(&stop), Arc::clone(&assigned));
        std::thread::Builder::new()
            .name("baseline-e2e".into())
            .spawn(move || consumer.run(&stop, &assigned))
            .context("starting the baseline consumer")?
    };

    let outcome = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while runner_status.assigned().len() < PARTITIONS as usize
            || !assigned.load(Ordering::Acquire)
        {
            anyhow::ensure!(!framework.is_finished(), "the projection runner stopped");
            anyhow::ensure!(!baseline.is_finished(), "the baseline consumer stopped");
            anyhow::ensure!(
                Instant::now() < deadline,
                "the consumers were not assigned within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let dataset = Dataset::new()?;
        let publisher =
            Publisher::new(&setup.config, data::SOURCE).context("creating the publisher")?;
        let producer = crate::publish::baseline_producer(&setup.brokers)?;
        let load = Load {
            dataset: &dataset,
            publisher: &publisher,
            producer: &producer,
            baseline_topic,
            clock: &clock,
            rate,
        };
        let warmup = (rate as u64).max(100);
        load.side(Side::Framework, 0..warmup).await?;
        load.side(Side::Baseline, warmup..2 * warmup).await?;

        let mut framework = Latencies::default();
        let mut baseline = Latencies::default();
        for round in 0..setup.rounds {
            for (k, side) in Side::order(round).into_iter().enumerate() {
                let base = 2 * warmup + (2 * u64::from(round) + k as u64) * per_round;
                let (measured, transactions) = load.side(side, base..base + per_round).await?;
                println!(
                    "  round {}: {:<9} {} ({transactions} transactions, {:.1} events each)",
                    round + 1,
                    side.label(),
                    latency::describe(&measured),
                    measured.len() as f64 / transactions.max(1) as f64
                );
                match side {
                    Side::Framework => framework.extend(&measured),
                    Side::Baseline => baseline.extend(&measured),
                }
            }
        }
        anyhow::Ok((framework, baseline))
    }
    .await;
    shutdown.trigger();
    stop.store(true, Ordering::Release);
    // A listener that ended early explains missing notifications better than the timeout.
    let listener_failure = if listening.is_finished() {
        listening.await.ok()
    } else {
        listening.abort();
        None
    };
    if let Some(e) = listener_failure {
        return Err(e);
    }
    let summary = framework.await.context("joining the projection runner")?;
    let baseline_stopped = tokio::task::spawn_blocking(move || baseline.join())
        .await
        .context("joining the baseline consumer")?
        .map_err(|_| anyhow::anyhow!("the baseline consumer panicked"))?;
    let (framework, baseline) = outcome?;
    let summary = summary.context("the projection runner failed")?;
    anyhow::ensure!(
        summary.halted.is_empty(),
        "partitions halted: {:?}",
        summary.halted
    );
    baseline_stopped.context("the baseline consumer failed")?;
    check_rows(&pool, framework.len(), baseline.len()).await?;
    pool.close().await;

    let (f, b) = (framework.quantile_ms(0.99), baseline.quantile_ms(0.99));
    println!(
        "  over {} events per side: p50 framework {:.1} ms, baseline {:.1} ms; target p99 <= baseline + 10 ms ({:.1} ms)",
        framework.len(),
        framework.quantile_ms(0.5),
        baseline.quantile_ms(0.5),
        b + 10.0
    );
    Ok(format!(
        "e2e-latency: framework_p99={f:.1}ms baseline_p99={b:.1}ms ratio={:.2}",
        f / b.max(1e-9)
    ))
}

/// Every measured event has its row (plus the warm-ups'), on both sides.
async fn check_rows(pool: &PgPool, framework: usize, baseline: usize) -> anyhow::Result<()> {
    let f: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_e2e_v1.readings")
        .fetch_one(pool)
        .await?;
    let b: i64 = sqlx::query_scalar("SELECT count(*) FROM baseline_readings")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        usize::try_from(f)? >= framework && usize::try_from(b)? >= baseline,
        "rows: framework {f} for {framework} measured events, baseline {b} for {baseline}"
    );
    Ok(())
}

/// The open-loop publisher of both sides.
struct Load<'a> {
    dataset: &'a Dataset,
    publisher: &'a Publisher,
    producer: &'a FutureProducer,
    baseline_topic: &'a str,
    clock: &'a SharedClock,
    rate: f64,
}

impl Load<'_> {
    /// Publishes events `range` (their seq numbers) at the rate, then waits for every
    /// notification; returns each event's latency from its due time, and how many
    /// notifications (about: transactions) the side's pipeline sent meanwhile.
    async fn side(
        &self,
        side: Side,
        range: std::ops::Range<u64>,
    ) -> anyhow::Result<(Vec<Duration>, u64)> {
        let channel = match side {
            Side::Framework => FRAMEWORK_CHANNEL,
            Side::Baseline => BASELINE_CHANNEL,
        };
        let notified = |clock: &Clock| clock.notifications.get(channel).copied().unwrap_or(0);
        let before = notified(&lock(self.clock));
        let first = range.start;
        let n = range.end - range.start;
        latency::open_loop(self.rate, n, |i, due| {
            let event = self.dataset.event(first + i);
            lock(self.clock).due.insert(event.seq, due);
            async move {
                match side {
                    Side::Framework => {
                        self.publisher.publish(&event).await?;
                    }
                    Side::Baseline => {
                        let record = RawRecord::new(&event)?;
                        self.producer
                            .send(
                                FutureRecord::to(self.baseline_topic)
                                    .key(record.key.as_bytes())
                                    .payload(&record.payload)
                                    .headers(record.headers),
                                Duration::from_secs(30),
                            )
                            .await
                            .map_err(|(e, _)| anyhow::anyhow!("baseline send failed: {e}"))?;
                    }
                }
                // Acknowledged; the latency that counts is the notification's.
                Ok(Instant::now())
            }
        })
        .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let clock = lock(self.clock);
                let missing = range
                    .clone()
                    .filter(|s| !clock.arrived.contains_key(s))
                    .count();
                if missing == 0 {
                    let latencies = range
                        .clone()
                        .map(|s| clock.arrived[&s].saturating_duration_since(clock.due[&s]))
                        .collect();
                    return Ok((latencies, notified(&clock).saturating_sub(before)));
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{missing} of {n} {} events were not committed within 60 s of the last send",
                    side.label()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The hand-written pipeline's consumer side.
struct Baseline {
    brokers: String,
    group: String,
    topic: String,
    url: String,
}

/// A decoded record of the baseline.
struct Decoded {
    partition: i32,
    offset: i64,
    event: ReadingRecorded,
    time: DateTime<Utc>,
}

impl Baseline {
    /// Blocking: polls on this thread, runs the Postgres work on a runtime of its own.
    fn run(&self, stop: &AtomicBool, assigned: &AtomicBool) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the baseline runtime")?;
        let mut conn = runtime
            .block_on(PgConnection::connect(&self.url))
            .context("connecting the baseline")?;
        // The projection runner's consumer settings (ConsumerSettings defaults).
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("enable.partition.eof", "false")
            .create()
            .context("creating the baseline consumer")?;
        consumer.subscribe(&[&self.topic])?;
        let mut batch: Vec<Decoded> = Vec::with_capacity(BATCH);
        while !stop.load(Ordering::Acquire) {
            batch.clear();
            let mut timeout = Duration::from_millis(100);
            while batch.len() < BATCH {
                match consumer.poll(timeout) {
                    Some(Ok(message)) => batch.push(decode(&message)?),
                    Some(Err(e)) => {
                        eprintln!("baseline consumer error: {e}");
                        break;
                    }
                    None => break,
                }
                timeout = Duration::ZERO;
            }
            if !assigned.load(Ordering::Relaxed)
                && consumer.assignment().map(|a| a.count()).unwrap_or(0) == PARTITIONS as usize
            {
                assigned.store(true, Ordering::Release);
            }
            if batch.is_empty() {
                continue;
            }
            runtime.block_on(apply(&mut conn, &self.topic, &batch))?;
        }
        Ok(())
    }
}

fn decode(message: &BorrowedMessage<'_>) -> anyhow::Result<Decoded> {
    let event: ReadingRecorded =
        serde_json::from_slice(message.payload().unwrap_or_default()).context("payload")?;
    let time = message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "ce_time"))
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        .context("ce_time header")?
        .with_timezone(&Utc);
    Ok(Decoded {
        partition: message.partition(),
        offset: message.offset(),
        event,
        time,
    })
}

async fn apply(conn: &mut PgConnection, topic: &str, batch: &[Decoded]) -> anyhow::Result<()> {
    let rows = Rows::new(batch.iter().map(|d| (&d.event, d.time)));
    let mut tx = conn.begin().await?;
    rows.insert(&mut tx, INSERT_BASELINE).await?;
    offsets::store(
        &mut tx,
        topic,
        batch.iter().map(|d| (d.partition, d.offset)),
    )
    .await?;
    notify(&mut tx, BASELINE_CHANNEL, &rows.seqs).await?;
    tx.commit().await?;
    Ok(())
}
