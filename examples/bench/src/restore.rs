//! `restore`: a command processor from the assignment of its partitions to ready (every
//! partition restored, `ProcessorStatus::ready_partitions`) over the events topic, against a
//! raw `BaseConsumer` reading and decoding the same partitions and folding them into a map.
//! Snapshots are off (the framework has none yet).
//!
//! The events topic is filled once (not timed) the way the processor writes it: the
//! dataset's events on their key's partition, each with `ce_sequence` (the meter's version)
//! and a distinct causation id. Every framework round is a new consumer group (service
//! `meters-r<round>`) whose command offsets are set to 0 first, as a deployed processor's
//! would be. Its clock starts when the broker reports the group `Stable` (the assignment is
//! handed out then; polled every 2 ms) and stops when every partition is ready; the group
//! join before it is not counted. The baseline's clock runs from creating its consumer to its
//! last record.
//!
//! Memory: the process's resident set (VmRSS) just before the processor starts and once it
//! is ready, per 100k aggregates in memory (`ProcessorStatus::aggregates_in_memory`).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use choreo::aggregate::Aggregate;
use choreo::kafka::partition_for_key;
use choreo::{Event, Shutdown};
use chrono::{SecondsFormat, Utc};
use futures::{StreamExt, stream};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::cmd::{self, Meter, Topics};
use crate::data::{AGGREGATES, Dataset, ReadingRecorded};
use crate::{CpuClock, PARTITIONS, Round, Setup, Side};

pub async fn run(setup: &Setup, created: &mut Vec<String>) -> anyhow::Result<Vec<Round>> {
    let topics = Topics::new(&setup.namespace);
    let services: Vec<String> = (0..setup.rounds).map(service).collect();
    topics
        .create(&setup.admin, &setup.namespace, &services, created)
        .await?;
    let producer = cmd::command_producer(&setup.brokers)?;
    let started = Instant::now();
    fill(&producer, &topics.events, setup.events, setup.window).await?;
    println!(
        "  filled {} with {} events as the processor writes them in {:.1} s",
        topics.events,
        setup.events,
        started.elapsed().as_secs_f64()
    );
    let mut rounds = Vec::new();
    for round in 0..setup.rounds {
        for side in Side::order(round) {
            let cpu = CpuClock::start();
            let elapsed = match side {
                Side::Framework => framework_round(setup, &topics, round)
                    .await
                    .context("framework round")?,
                Side::Baseline => {
                    let (brokers, topic) = (setup.brokers.clone(), topics.events.clone());
                    let expected = setup.events;
                    tokio::task::spawn_blocking(move || baseline_round(&brokers, &topic, expected))
                        .await
                        .context("joining the baseline")?
                        .context("baseline round")?
                }
            };
            let measured = Round {
                side,
                events: setup.events,
                elapsed,
                cpu: cpu.used(),
            };
            measured.report(round);
            rounds.push(measured);
        }
    }
    Ok(rounds)
}

fn service(round: u32) -> String {
    format!("{}-r{round}", cmd::SERVICE)
}

/// Writes events `0..n` as the processor would have: one per accepted command, key =
/// meter, partition by murmur2, `ce_sequence` = the meter's version (event `i` is the
/// `i / AGGREGATES + 1`-th reading of its meter: every block of 100k events touches each meter
/// once), causation = a command id. One idempotent producer sending in order keeps every
/// partition in sequence order.
async fn fill(producer: &FutureProducer, topic: &str, n: u64, window: usize) -> anyhow::Result<()> {
    let dataset = Dataset::new()?;
    let time = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let mut sends = stream::iter(0..n)
        .map(|i| {
            let event = dataset.event(i);
            let time = time.as_str();
            async move {
                let payload = serde_json::to_vec(&event)?;
                let (id, command) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
                let sequence = format!("{:020}", i / AGGREGATES + 1);
                let headers = cmd::raw_headers(
                    &id,
                    ReadingRecorded::NAME,
                    &event.meter_id,
                    Some((&command, &command)),
                    time,
                    &[("ce_sequence", &sequence)],
                );
                let record = FutureRecord::to(topic)
                    .key(&event.meter_id)
                    .partition(partition_for_key(event.meter_id.as_bytes(), PARTITIONS))
                    .payload(&payload)
                    .headers(headers);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("writing an event: {e}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(window);
    while let Some(result) = sends.next().await {
        result?;
    }
    Ok(())
}

async fn framework_round(setup: &Setup, topics: &Topics, round: u32) -> anyhow::Result<Duration> {
    let service = service(round);
    let group = format!("{}.{service}", setup.namespace);
    set_command_offsets(&setup.brokers, &group, &topics.commands)?;
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .create()
        .context("creating the group watcher")?;
    let watcher = Arc::new(watcher);
    let rss_before = rss_bytes();
    let shutdown = Shutdown::new();
    let (task, status) = cmd::start_processor(&setup.config, &service, 0, &shutdown);
    let outcome = async {
        // The assignment: the first time the broker reports the group stable.
        let stable = {
            let (watcher, group) = (Arc::clone(&watcher), group.clone());
            tokio::task::spawn_blocking(move || wait_stable(&watcher, &group))
        };
        let ready = cmd::wait_ready(&status, &task, Duration::from_secs(600)).await?;
        let stable = stable.await.context("joining the group watcher")??;
        // The processor lists a partition as ready before it updates the aggregate count
        // (that happens once the whole assignment is restored): wait for the count.
        let expected = AGGREGATES.min(setup.events);
        let counted = Instant::now() + Duration::from_secs(10);
        while status.aggregates_in_memory() != expected && Instant::now() < counted {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let rss_after = rss_bytes();
        let aggregates = status.aggregates_in_memory();
        anyhow::ensure!(
            aggregates == expected,
            "the processor holds {aggregates} aggregates, expected {expected}"
        );
        if let (Some(before), Some(after)) = (rss_before, rss_after) {
            let delta = after.saturating_sub(before);
            println!(
                "  round {}: framework memory: {aggregates} aggregates in memory, RSS {:.0} -> {:.0} MiB, +{:.1} MiB = {:.1} MiB per 100k aggregates",
                round + 1,
                before as f64 / MIB,
                after as f64 / MIB,
                delta as f64 / MIB,
                delta as f64 / MIB * 100_000.0 / aggregates as f64
            );
        }

        anyhow::Ok(ready.saturating_duration_since(stable))
    }
    .await;
    shutdown.trigger();
    let stopped = task.await.context("joining the processor")?;
    let elapsed = outcome?;
    stopped.context("the command processor failed")?;
    Ok(elapsed)
}

const MIB: f64 = 1024.0 * 1024.0;

/// VmRSS of this process, in bytes.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Commits offset 0 of every commands partition for `group`, as a deployed processor's group
/// would have (without a committed offset, a processor refuses to start on a non-empty
/// events log).
fn set_command_offsets(brokers: &str, group: &str, topic: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the offset writer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Offset(0))?;
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .with_context(|| format!("committing the command offsets of {group}"))
}

/// Polls the group's state until the broker reports it `Stable` with a member.
fn wait_stable(watcher: &BaseConsumer, group: &str) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(list) = watcher.fetch_group_list(Some(group), Duration::from_secs(5))
            && list
                .groups()
                .iter()
                .any(|g| g.state() == "Stable" && !g.members().is_empty())
        {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "group {group} was not stable within 60 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A meter as the baseline folds it.
#[derive(Default)]
struct Folded {
    version: u64,
    state: Meter,
    /// The last command id, as a hand-written processor would keep for duplicates.
    last_command: Option<Uuid>,
}

/// Reads every partition from the start to its end, decoding the envelope fields it needs
/// and the JSON payload, checking each meter's sequence, folding into a map.
fn baseline_round(brokers: &str, topic: &str, expected: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}.baseline-restore"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the baseline consumer")?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0u64;
    for p in 0..PARTITIONS {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .context("fetching watermarks")?;
        remaining += u64::try_from(high - low).unwrap_or(0);
        assignment.add_partition_offset(topic, p, Offset::Offset(low))?;
    }
    anyhow::ensure!(
        remaining == expected,
        "the events topic holds {remaining} records, expected {expected}"
    );
    consumer.assign(&assignment)?;
    let mut meters: HashMap<String, Folded> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120 + expected / 2_000);
    let mut read = 0u64;
    while read < remaining {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the baseline read {read} of {remaining} events in time"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                fold(&mut meters, &message)?;
                read += 1;
            }
            Some(Err(e)) => eprintln!("baseline restore consumer error: {e}"),
            None => {}
        }
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(
        meters.len() as u64 == AGGREGATES.min(expected),
        "the baseline folded {} meters",
        meters.len()
    );
    black_box(meters.values().map(|m| m.state.readings).sum::<u64>());
    Ok(elapsed)
}

fn fold(meters: &mut HashMap<String, Folded>, message: &BorrowedMessage<'_>) -> anyhow::Result<()> {
    let at = || {
        format!(
            "{}[{}]@{}",
            message.topic(),
            message.partition(),
            message.offset()
        )
    };
    let headers = message
        .headers()
        .with_context(|| format!("an event without headers at {}", at()))?;
    let (mut subject, mut sequence, mut causation, mut kind) = (None, None, None, None);
    for header in headers.iter() {
        let value = || std::str::from_utf8(header.value.unwrap_or_default()).ok();
        match header.key {
            "ce_subject" => subject = value(),
            "ce_sequence" => sequence = value().and_then(|v| v.parse::<u64>().ok()),
            "ce_causationid" => causation = value().and_then(|v| Uuid::parse_str(v).ok()),
            "ce_type" => kind = value(),
            _ => {}
        }
    }
    anyhow::ensure!(
        kind == Some(ReadingRecorded::NAME),
        "unexpected event type {kind:?} at {}",
        at()
    );
    let subject = subject.with_context(|| format!("no ce_subject at {}", at()))?;
    anyhow::ensure!(
        message.key() == Some(subject.as_bytes()),
        "key and subject differ at {}",
        at()
    );
    let sequence = sequence.with_context(|| format!("no ce_sequence at {}", at()))?;
    let event: ReadingRecorded = serde_json::from_slice(message.payload().unwrap_or_default())
        .with_context(|| format!("payload at {}", at()))?;
    let meter = meters.entry(subject.to_owned()).or_default();
    anyhow::ensure!(
        sequence == meter.version + 1,
        "{subject}: sequence jumps from {} to {sequence} at {}",
        meter.version,
        at()
    );
    meter.version = sequence;
    meter.state.apply(&event);
    meter.last_command = causation;
    Ok(())
}
