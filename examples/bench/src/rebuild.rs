//! `rebuild` and `rebuild-naive`: `choreo::projection::rebuild` of a projection with one
//! upserted row per meter, from offset 0, against hand-written rebuilds of the same view.
//!
//! - `rebuild`: the baseline is a raw `BaseConsumer` assigned every partition from the
//!   beginning, batches of the framework's size, collapsed per key, one UNNEST upsert plus an
//!   offset-row update, one Postgres transaction per batch.
//! - `rebuild-naive`: the baseline is one Postgres transaction per event (BEGIN, upsert,
//!   offset update, COMMIT), timed over a sample of the first events only.
//!
//! Every round works in a fresh database (`bench_<random>`, choreo's migrations applied),
//! dropped after the round; creating it is not timed. Both sides are timed end to end: the
//! framework from the call of `rebuild` to its return (schema set-up and swap included), the
//! baseline from creating its consumer to the last commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use choreo::postgres::connect_and_migrate;
use choreo::projection::{RebuildOptions, rebuild};
use choreo::{ApplyError, PostgresConfig, Projection, Received};
use chrono::{DateTime, Utc};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

use crate::consume::fill;
use crate::data::ReadingRecorded;
use crate::offsets;
use crate::{CpuClock, PARTITIONS, Round, Setup, Side};

/// The framework side: the latest reading and a count per meter.
#[derive(Debug)]
pub struct MeterProjection;

impl Projection for MeterProjection {
    type Events = ReadingRecorded;
    const NAME: &'static str = "bench_meters";
    const VERSION: u32 = 1;

    fn schema_sql(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS meters (
             meter_id text PRIMARY KEY,
             site text NOT NULL,
             last_seq bigint NOT NULL,
             watts bigint NOT NULL,
             readings bigint NOT NULL,
             last_time timestamptz NOT NULL
         );"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Received<ReadingRecorded>],
    ) -> Result<(), ApplyError> {
        let rows = Rows::collapse(events.iter().map(|e| Reading {
            event: &e.payload,
            time: e.meta.time,
        }));
        rows.upsert(conn, UPSERT_FRAMEWORK).await?;
        Ok(())
    }
}

/// Both sides' batch upsert, differing only in the table.
const UPSERT_FRAMEWORK: &str = "INSERT INTO meters \
     (meter_id, site, last_seq, watts, readings, last_time) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::timestamptz[]) \
     ON CONFLICT (meter_id) DO UPDATE SET site = EXCLUDED.site, last_seq = EXCLUDED.last_seq, \
         watts = EXCLUDED.watts, readings = meters.readings + EXCLUDED.readings, \
         last_time = EXCLUDED.last_time";
const UPSERT_BASELINE: &str = "INSERT INTO baseline_meters \
     (meter_id, site, last_seq, watts, readings, last_time) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::timestamptz[]) \
     ON CONFLICT (meter_id) DO UPDATE SET site = EXCLUDED.site, last_seq = EXCLUDED.last_seq, \
         watts = EXCLUDED.watts, readings = baseline_meters.readings + EXCLUDED.readings, \
         last_time = EXCLUDED.last_time";
/// The naive baseline's upsert of one event.
const UPSERT_ONE: &str = "INSERT INTO baseline_meters \
     (meter_id, site, last_seq, watts, readings, last_time) VALUES ($1, $2, $3, $4, 1, $5) \
     ON CONFLICT (meter_id) DO UPDATE SET site = EXCLUDED.site, last_seq = EXCLUDED.last_seq, \
         watts = EXCLUDED.watts, readings = baseline_meters.readings + 1, \
         last_time = EXCLUDED.last_time";
const BASELINE_SCHEMA: &str = "CREATE TABLE baseline_meters (
         meter_id text PRIMARY KEY,
         site text NOT NULL,
         last_seq bigint NOT NULL,
         watts bigint NOT NULL,
         readings bigint NOT NULL,
         last_time timestamptz NOT NULL
     );
     CREATE TABLE baseline_offsets (
         topic text NOT NULL,
         partition integer NOT NULL,
         next_offset bigint NOT NULL,
         PRIMARY KEY (topic, partition)
     );";
const UPDATE_OFFSET: &str = "INSERT INTO baseline_offsets (topic, partition, next_offset) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset";

/// One event as the upsert sees it.
struct Reading<'a> {
    event: &'a ReadingRecorded,
    time: DateTime<Utc>,
}

/// A batch collapsed per key (the last reading of each meter wins; a meter's events are all
/// in one partition, in log order), as UNNEST columns.
#[derive(Default)]
struct Rows<'a> {
    keys: Vec<&'a str>,
    sites: Vec<&'a str>,
    seqs: Vec<i64>,
    watts: Vec<i64>,
    counts: Vec<i64>,
    times: Vec<DateTime<Utc>>,
}

impl<'a> Rows<'a> {
    fn collapse(readings: impl Iterator<Item = Reading<'a>>) -> Self {
        let mut rows = Rows::default();
        let mut index: HashMap<&'a str, usize> = HashMap::new();
        for r in readings {
            let seq = i64::try_from(r.event.seq).unwrap_or(i64::MAX);
            let watts = i64::try_from(r.event.watts).unwrap_or(i64::MAX);
            match index.get(r.event.meter_id.as_str()) {
                Some(&i) => {
                    rows.sites[i] = &r.event.site;
                    rows.seqs[i] = seq;
                    rows.watts[i] = watts;
                    rows.counts[i] += 1;
                    rows.times[i] = r.time;
                }
                None => {
                    index.insert(&r.event.meter_id, rows.keys.len());
                    rows.keys.push(&r.event.meter_id);
                    rows.sites.push(&r.event.site);
                    rows.seqs.push(seq);
                    rows.watts.push(watts);
                    rows.counts.push(1);
                    rows.times.push(r.time);
                }
            }
        }
        rows
    }

    async fn upsert(&self, conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::query(sql)
            .bind(&self.keys)
            .bind(&self.sites)
            .bind(&self.seqs)
            .bind(&self.watts)
            .bind(&self.counts)
            .bind(&self.times)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

pub async fn run(setup: &Setup, naive: bool, sample: u64) -> anyhow::Result<Vec<Round>> {
    fill(setup).await?;
    let base_url = std::env::var("CHOREO_DATABASE_URL")
        .unwrap_or_else(|_| choreo::config::DEFAULT_DATABASE_URL.to_owned());
    let mut admin = PgConnection::connect(&base_url)
        .await
        .context("connecting to Postgres")?;
    let batch_size = RebuildOptions::default().batch_size;
    let sample = sample.min(setup.events);
    if naive {
        println!(
            "  the naive baseline (one transaction per event) is timed over the first {sample} events only"
        );
    }
    let mut rounds = Vec::new();
    for round in 0..setup.rounds {
        for side in Side::order(round) {
            let database = format!("bench_{}", &Uuid::new_v4().simple().to_string()[..12]);
            admin
                .execute(format!("CREATE DATABASE {database}").as_str())
                .await
                .with_context(|| format!("creating database {database}"))?;
            let url = database_url(&base_url, &database);
            let outcome = async {
                let pool = connect_and_migrate(&PostgresConfig::new(url.as_str()))
                    .await
                    .with_context(|| format!("migrating {database}"))?;
                let cpu = CpuClock::start();
                let measured = match side {
                    Side::Framework => {
                        let started = Instant::now();
                        let report = rebuild(
                            Arc::new(MeterProjection),
                            &setup.config,
                            &pool,
                            RebuildOptions {
                                progress: false,
                                ..Default::default()
                            },
                        )
                        .await
                        .context("the framework rebuild failed")?;
                        let elapsed = started.elapsed();
                        let rows: i64 =
                            sqlx::query_scalar("SELECT count(*) FROM bench_meters_v1.meters")
                                .fetch_one(&pool)
                                .await?;
                        check_rows(rows, setup.events, "framework")?;
                        Round {
                            side,
                            events: report.records,
                            elapsed,
                            cpu: cpu.used(),
                        }
                    }
                    Side::Baseline => {
                        let mut conn = pool.acquire().await?;
                        conn.execute(BASELINE_SCHEMA).await?;
                        let (events, elapsed) = if naive {
                            baseline(setup, &mut conn, 1, sample).await?
                        } else {
                            baseline(setup, &mut conn, batch_size, setup.events).await?
                        };
                        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM baseline_meters")
                            .fetch_one(&mut *conn)
                            .await?;
                        check_rows(rows, events, "baseline")?;
                        Round {
                            side,
                            events,
                            elapsed,
                            cpu: cpu.used(),
                        }
                    }
                };
                pool.close().await;
                anyhow::Ok(measured)
            }
            .await;
            if let Err(e) = admin
                .execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
                .await
            {
                eprintln!("warning: could not drop database {database}: {e}");
            }
            let measured = outcome?;
            measured.report(round);
            rounds.push(measured);
        }
    }
    Ok(rounds)
}

/// `base` with its database name replaced.
pub(crate) fn database_url(base: &str, database: &str) -> String {
    let (prefix, rest) = base.rsplit_once('/').unwrap_or((base, ""));
    let query = rest.find('?').map_or("", |i| &rest[i..]);
    format!("{prefix}/{database}{query}")
}

/// Events `0..n` touch `min(n, AGGREGATES)` meters.
fn check_rows(rows: i64, events: u64, side: &str) -> anyhow::Result<()> {
    let expected = events.min(crate::data::AGGREGATES);
    anyhow::ensure!(
        u64::try_from(rows).ok() == Some(expected),
        "{side}: the view has {rows} rows, expected {expected}"
    );
    Ok(())
}

/// A decoded record of the baseline.
struct Decoded {
    partition: i32,
    offset: i64,
    event: ReadingRecorded,
    time: DateTime<Utc>,
}

/// The hand-written rebuild: every partition assigned from its start; batches of at most
/// `batch_size` records (polled the way the framework polls), one transaction each. Stops
/// after `limit` records or at the end offsets. Returns records read and the time taken.
async fn baseline(
    setup: &Setup,
    conn: &mut PgConnection,
    batch_size: usize,
    limit: u64,
) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .set("group.id", format!("{}-baseline-rebuild", setup.namespace))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the baseline consumer")?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0i64;
    for partition in 0..PARTITIONS {
        let (low, high) = consumer
            .fetch_watermarks(&setup.topic, partition, Duration::from_secs(10))
            .context("fetching watermarks")?;
        remaining += high - low;
        assignment.add_partition_offset(&setup.topic, partition, Offset::Offset(low))?;
    }
    consumer.assign(&assignment)?;
    let target = u64::try_from(remaining).unwrap_or(0).min(limit);
    let deadline = Instant::now() + Duration::from_secs(120 + target / 1_000);
    let mut read = 0u64;
    let mut batch: Vec<Decoded> = Vec::with_capacity(batch_size);
    while read < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the baseline read {read} of {target} events in time"
        );
        batch.clear();
        let max = batch_size.min(usize::try_from(target - read).unwrap_or(usize::MAX));
        let mut timeout = Duration::from_millis(200);
        while batch.len() < max {
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
        if batch.is_empty() {
            continue;
        }
        read += batch.len() as u64;
        if batch_size == 1 {
            for record in &batch {
                apply_one(conn, &setup.topic, record).await?;
            }
        } else {
            apply_batch(conn, &setup.topic, &batch).await?;
        }
    }
    Ok((read, started.elapsed()))
}

fn decode(message: &rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<Decoded> {
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

async fn apply_batch(
    conn: &mut PgConnection,
    topic: &str,
    batch: &[Decoded],
) -> anyhow::Result<()> {
    let rows = Rows::collapse(batch.iter().map(|d| Reading {
        event: &d.event,
        time: d.time,
    }));
    let mut tx = conn.begin().await?;
    rows.upsert(&mut tx, UPSERT_BASELINE).await?;
    offsets::store(
        &mut tx,
        topic,
        batch.iter().map(|d| (d.partition, d.offset)),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn apply_one(conn: &mut PgConnection, topic: &str, d: &Decoded) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    sqlx::query(UPSERT_ONE)
        .bind(&d.event.meter_id)
        .bind(&d.event.site)
        .bind(i64::try_from(d.event.seq).unwrap_or(i64::MAX))
        .bind(i64::try_from(d.event.watts).unwrap_or(i64::MAX))
        .bind(d.time)
        .execute(&mut *tx)
        .await?;
    sqlx::query(UPDATE_OFFSET)
        .bind(topic)
        .bind(d.partition)
        .bind(d.offset + 1)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
