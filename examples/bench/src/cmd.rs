//! What the command benchmarks (`commands`, `send-wait`, `restore`, `failover`) share: the
//! benchmark aggregate (a meter keyed over the dataset's 100k meters), its topics, commands
//! enveloped by hand, and the hand-written transactional loop the framework is measured
//! against.
//!
//! Topics, under a namespace `ns`: `ns.reading.commands` and `ns.reading.events` (the
//! processor's), `ns.bench.replies` (where every command asks to be answered),
//! `ns.meters.dlq` (the processor's dead letters, empty in a clean run), and the baseline's
//! own `ns.baseline.commands` (where a raw client sends it commands) and `ns.baseline.events`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use choreo::aggregate::{
    Aggregate, CommandProcessor, EventRef, Outcome, ProcessorStatus, Rejection,
};
use choreo::kafka::{TopicAdmin, TopicSpec, partition_for_key};
use choreo::{Command, Event, KafkaConfig, Shutdown};
use chrono::{SecondsFormat, Utc};
use futures::{StreamExt, stream};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::PARTITIONS;
use crate::data::{self, Dataset, ReadingRecorded};

/// The aggregate's entity: topics `reading.commands` and `reading.events`.
pub const ENTITY: &str = "reading";
/// The processor's service name: its consumer group and dead-letter topic.
pub const SERVICE: &str = "meters";
/// The senders' service: `bench.replies`.
pub const REPLIES: &str = "bench";
/// Partitions of the replies topic.
pub const REPLY_PARTITIONS: i32 = 6;
/// Commands per transaction, on both sides (the processor's default `max_batch`).
pub const BATCH: usize = 100;
/// The processor's transactional producer lingers this long (`linger.ms` in aggregate/processor/);
/// the baseline's does too.
pub const TX_LINGER_MS: &str = "1";
/// `ce_type` of replies (`choreo::aggregate::REPLY_TYPE`).
const REPLY_TYPE: &str = choreo::aggregate::REPLY_TYPE;

/// Record a reading: the benchmark command, carrying the same ~200-byte payload as the event
/// it leads to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordReading {
    pub meter_id: String,
    pub seq: u64,
    pub watts: u64,
    pub site: String,
    pub note: String,
}

impl Command for RecordReading {
    const NAME: &'static str = "v1.reading.record";
    fn subject(&self) -> String {
        self.meter_id.clone()
    }
}

impl From<ReadingRecorded> for RecordReading {
    fn from(e: ReadingRecorded) -> Self {
        Self {
            meter_id: e.meter_id,
            seq: e.seq,
            watts: e.watts,
            site: e.site,
            note: e.note,
        }
    }
}

impl RecordReading {
    /// The event accepting it emits (both sides emit exactly this).
    pub fn recorded(&self) -> ReadingRecorded {
        ReadingRecorded {
            meter_id: self.meter_id.clone(),
            seq: self.seq,
            watts: self.watts,
            site: self.site.clone(),
            note: self.note.clone(),
        }
    }
}

/// A meter: how many readings it has, and the last one. Every reading is accepted, so every
/// command writes one event and one reply on both sides.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    pub readings: u64,
    pub last_seq: u64,
    pub watts: u64,
}

impl Aggregate for Meter {
    type Command = RecordReading;
    type Event = ReadingRecorded;

    fn decide(&self, command: &RecordReading) -> Result<Vec<ReadingRecorded>, Rejection> {
        Ok(vec![command.recorded()])
    }

    fn apply(&mut self, event: &ReadingRecorded) {
        self.readings += 1;
        self.last_seq = event.seq;
        self.watts = event.watts;
    }
}

/// The topics of the command benchmarks under `namespace`.
#[derive(Debug, Clone)]
pub struct Topics {
    pub commands: String,
    pub events: String,
    pub replies: String,
    pub baseline_commands: String,
    pub baseline_events: String,
}

impl Topics {
    pub fn new(namespace: &str) -> Self {
        Self {
            commands: format!("{namespace}.{ENTITY}.commands"),
            events: format!("{namespace}.{ENTITY}.events"),
            replies: format!("{namespace}.{REPLIES}.replies"),
            baseline_commands: format!("{namespace}.baseline.commands"),
            baseline_events: format!("{namespace}.baseline.events"),
        }
    }

    /// Creates them (and the dead-letter topics of `services`), adding every name to
    /// `created` so the run deletes them at the end.
    pub async fn create(
        &self,
        admin: &TopicAdmin,
        namespace: &str,
        services: &[String],
        created: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let mut specs = vec![
            TopicSpec::commands(&format!("{namespace}.{ENTITY}"), PARTITIONS, 1)?,
            TopicSpec::events(&format!("{namespace}.{ENTITY}"), PARTITIONS, 1)?,
            TopicSpec::replies(&format!("{namespace}.{REPLIES}"), REPLY_PARTITIONS, 1)?,
            TopicSpec::commands(&format!("{namespace}.baseline"), PARTITIONS, 1)?,
            TopicSpec::events(&format!("{namespace}.baseline"), PARTITIONS, 1)?,
        ];
        for service in services {
            specs.push(TopicSpec::dead_letters(
                &format!("{namespace}.{service}"),
                1,
            )?);
        }
        for spec in &specs {
            if !created.contains(&spec.name) {
                created.push(spec.name.clone());
            }
        }
        admin
            .ensure(&specs)
            .await
            .with_context(|| format!("creating the command topics of {namespace}"))?;
        Ok(())
    }
}

/// The 9 CloudEvents headers plus `extra` (`ce_replyto`, `ce_sequence`, ...), written by hand
/// as a client without the framework would.
pub fn raw_headers(
    id: &str,
    message_type: &str,
    subject: &str,
    causation: Option<(&str, &str)>,
    time: &str,
    extra: &[(&str, &str)],
) -> OwnedHeaders {
    let (correlation, causation) = causation.unwrap_or((id, id));
    let mut headers = OwnedHeaders::new_with_capacity(9 + extra.len());
    for (key, value) in [
        ("ce_specversion", "1.0"),
        ("ce_id", id),
        ("ce_type", message_type),
        ("ce_source", data::SOURCE),
        ("ce_time", time),
        ("ce_subject", subject),
        ("content-type", "application/json"),
        ("ce_correlationid", correlation),
        ("ce_causationid", causation),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}

/// A command enveloped by hand: key, explicit partition (murmur2, as the processor checks),
/// JSON payload, and headers asking for a reply on `replies[reply_partition]`.
#[derive(Debug)]
pub struct RawCommand {
    pub id: Uuid,
    pub key: String,
    pub partition: i32,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

impl RawCommand {
    pub fn new(
        command: &RecordReading,
        reply_topic: &str,
        reply_partition: i32,
    ) -> anyhow::Result<Self> {
        let id = Uuid::now_v7();
        let mut id_buf = Uuid::encode_buffer();
        let id_text = id.hyphenated().encode_lower(&mut id_buf);
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let reply_partition_text = reply_partition.to_string();
        let headers = raw_headers(
            id_text,
            RecordReading::NAME,
            &command.meter_id,
            None,
            &time,
            &[
                ("ce_replyto", reply_topic),
                ("ce_replypartition", &reply_partition_text),
            ],
        );
        Ok(Self {
            id,
            key: command.meter_id.clone(),
            partition: partition_for_key(command.meter_id.as_bytes(), PARTITIONS),
            payload: serde_json::to_vec(command)?,
            headers,
        })
    }

    pub fn record<'a>(&'a self, topic: &'a str) -> FutureRecord<'a, String, Vec<u8>> {
        FutureRecord::to(topic)
            .key(&self.key)
            .partition(self.partition)
            .payload(&self.payload)
            .headers(self.headers.clone())
    }
}

/// The producer settings of the framework's publisher (`PRODUCER_DEFAULTS`), for the raw
/// clients that send commands.
pub fn command_producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .context("creating the command producer")
}

/// Writes commands `range` of the dataset to `topics.commands` (not timed), with at most
/// `window` sends in flight; their replies go to `topics.replies`, spread over its partitions.
pub async fn preload(
    producer: &FutureProducer,
    topics: &Topics,
    dataset: &Dataset,
    range: std::ops::Range<u64>,
    window: usize,
) -> anyhow::Result<()> {
    let mut sends = stream::iter(range)
        .map(|i| {
            let command = RecordReading::from(dataset.event(i));
            async move {
                let reply_partition = i32::try_from(i % REPLY_PARTITIONS as u64).unwrap_or(0);
                let raw = RawCommand::new(&command, &topics.replies, reply_partition)?;
                producer
                    .send(raw.record(&topics.commands), Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("preloading a command failed: {e}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(window);
    while let Some(result) = sends.next().await {
        result?;
    }
    Ok(())
}

/// Starts a command processor of [`Meter`] for `service` (ordinal `ordinal`) on the
/// namespace of `config`.
pub fn start_processor(
    config: &KafkaConfig,
    service: &str,
    ordinal: u32,
    shutdown: &Shutdown,
) -> (tokio::task::JoinHandle<choreo::Result<()>>, ProcessorStatus) {
    let processor =
        CommandProcessor::<Meter>::new(service, ENTITY, ordinal, PARTITIONS).max_batch(BATCH);
    let status = processor.status();
    let (config, shutdown) = (config.clone(), shutdown.clone());
    (
        tokio::spawn(async move { processor.run(&config, shutdown).await }),
        status,
    )
}

/// Waits until the processor has restored every partition; fails on a halted partition, an
/// ended processor or after `limit`.
pub async fn wait_ready(
    status: &ProcessorStatus,
    task: &tokio::task::JoinHandle<choreo::Result<()>>,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if status.ready_partitions().len() == PARTITIONS as usize {
            return Ok(Instant::now());
        }
        let halted = status.halted();
        anyhow::ensure!(
            halted.is_empty(),
            "the processor halted partitions: {halted:?}"
        );
        anyhow::ensure!(
            !task.is_finished(),
            "the processor stopped before it was ready"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "the processor was not ready within {limit:?} (ready: {:?})",
            status.ready_partitions()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The committed offsets of a consumer group on the commands topic, summed: how many
/// commands it has finished (the topic is written without transactions, so offsets count
/// records).
pub struct GroupProgress {
    consumer: BaseConsumer,
    topic: String,
}

impl GroupProgress {
    pub fn new(brokers: &str, group: &str, topic: &str) -> anyhow::Result<Self> {
        // Never subscribes: it only asks the coordinator for the group's offsets.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .context("creating the offset watcher")?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
        })
    }

    /// Blocking: one OffsetFetch round trip.
    pub fn committed(&self) -> anyhow::Result<u64> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .context("fetching committed offsets")?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => u64::try_from(o).unwrap_or(0),
                _ => 0,
            })
            .sum())
    }

    /// Waits (polling every 10 ms) until `target` commands are committed; returns when it saw
    /// that. `alive` is checked on every poll so a side that died fails the wait.
    pub async fn wait_for(
        self: &std::sync::Arc<Self>,
        target: u64,
        limit: Duration,
        mut alive: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            let this = std::sync::Arc::clone(self);
            let done = tokio::task::spawn_blocking(move || this.committed()).await??;
            if done >= target {
                return Ok(Instant::now());
            }
            alive()?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "{done} of {target} commands committed within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What the hand-written loop reports while it runs.
#[derive(Debug, Default)]
pub struct LoopProgress {
    /// When it first owned every partition.
    pub assigned: Mutex<Option<Instant>>,
    /// Commands committed so far.
    pub committed: AtomicU64,
}

/// The hand-written baseline: a consumer group over the commands topic and a transactional
/// producer. Per polled batch (at most [`BATCH`] commands, the first poll waiting up to
/// 100 ms, as the processor polls): begin; for each command decode the envelope and payload,
/// bump the meter's sequence, produce the event to the command's partition; wait for the
/// events' offsets (the replies carry them, as the framework's do); produce each reply and
/// wait for those too; send the offsets with fresh group metadata; commit. Any transaction
/// error ends the loop (a benchmark, not a service).
///
/// Waiting for the replies before committing is deliberate: leaving them to the flush inside
/// `commit_transaction` made every commit about 100 ms slower here (about 800 commands/s
/// instead of 4k), so a careful hand-written loop waits, as the processor does.
#[derive(Debug, Clone)]
pub struct BaselineLoop {
    pub brokers: String,
    pub group: String,
    pub commands_topic: String,
    pub events_topic: String,
    pub transactional_id: String,
}

/// A command as the baseline reads it.
struct Decoded<'a> {
    id: &'a str,
    correlation: &'a str,
    subject: &'a str,
    reply_topic: &'a str,
    reply_partition: i32,
    command: RecordReading,
}

fn decode<'a>(message: &'a BorrowedMessage<'a>) -> anyhow::Result<Decoded<'a>> {
    let headers = message.headers().context("a command without headers")?;
    let (mut id, mut correlation, mut subject, mut reply_topic, mut reply_partition) =
        (None, None, None, None, None);
    for header in headers.iter() {
        let value = || std::str::from_utf8(header.value.unwrap_or_default()).ok();
        match header.key {
            "ce_id" => id = value(),
            "ce_correlationid" => correlation = value(),
            "ce_subject" => subject = value(),
            "ce_replyto" => reply_topic = value(),
            "ce_replypartition" => reply_partition = value().and_then(|v| v.parse().ok()),
            _ => {}
        }
    }
    let command: RecordReading =
        serde_json::from_slice(message.payload().unwrap_or_default()).context("command payload")?;
    Ok(Decoded {
        id: id.context("ce_id")?,
        correlation: correlation.context("ce_correlationid")?,
        subject: subject.context("ce_subject")?,
        reply_topic: reply_topic.context("ce_replyto")?,
        reply_partition: reply_partition.context("ce_replypartition")?,
        command,
    })
}

impl BaselineLoop {
    /// Runs until `stop`. Blocking: call it on a thread of its own; `handle` waits for
    /// delivery reports.
    pub fn run(
        &self,
        handle: &tokio::runtime::Handle,
        stop: &AtomicBool,
        progress: &LoopProgress,
    ) -> anyhow::Result<()> {
        // The processor's consumer settings (aggregate/processor/), except that a fresh
        // group simply starts at the beginning.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("group.instance.id", &self.transactional_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("enable.partition.eof", "false")
            .create()
            .context("creating the baseline command consumer")?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("transactional.id", &self.transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("transaction.timeout.ms", "10000")
            .set("linger.ms", TX_LINGER_MS)
            .create()
            .context("creating the baseline transactional producer")?;
        producer
            .init_transactions(Duration::from_secs(30))
            .context("init_transactions")?;
        consumer
            .subscribe(&[&self.commands_topic])
            .context("subscribing the baseline")?;
        let mut sequences: HashMap<String, u64> = HashMap::new();
        let mut batch = Vec::with_capacity(BATCH);
        let mut assigned = false;
        while !stop.load(Ordering::Acquire) {
            batch.clear();
            let mut timeout = Duration::from_millis(100);
            while batch.len() < BATCH {
                match consumer.poll(timeout) {
                    Some(Ok(message)) => batch.push(message),
                    Some(Err(e)) => {
                        eprintln!("baseline command consumer error: {e}");
                        break;
                    }
                    None => break,
                }
                timeout = Duration::ZERO;
            }
            if !assigned {
                let owned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
                if owned == PARTITIONS as usize {
                    assigned = true;
                    *progress
                        .assigned
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
                }
            }
            if batch.is_empty() {
                continue;
            }
            self.transaction(handle, &consumer, &producer, &batch, &mut sequences)?;
            progress
                .committed
                .fetch_add(batch.len() as u64, Ordering::AcqRel);
        }
        Ok(())
    }

    fn transaction(
        &self,
        handle: &tokio::runtime::Handle,
        consumer: &BaseConsumer,
        producer: &FutureProducer,
        batch: &[BorrowedMessage<'_>],
        sequences: &mut HashMap<String, u64>,
    ) -> anyhow::Result<()> {
        producer.begin_transaction().context("begin_transaction")?;
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut decoded = Vec::with_capacity(batch.len());
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut next: HashMap<i32, i64> = HashMap::new();
        let mut replies = Vec::with_capacity(batch.len());
        for message in batch {
            let command = decode(message)?;
            let sequence = sequences.entry(command.subject.to_owned()).or_default();
            *sequence += 1;
            let payload = serde_json::to_vec(&command.command.recorded())?;
            let event_id = Uuid::now_v7().hyphenated().to_string();
            let sequence_text = format!("{sequence:020}");
            let headers = raw_headers(
                &event_id,
                ReadingRecorded::NAME,
                command.subject,
                Some((command.correlation, command.id)),
                &time,
                &[("ce_sequence", &sequence_text)],
            );
            let record = FutureRecord::to(&self.events_topic)
                .partition(message.partition())
                .key(command.subject)
                .payload(&payload)
                .headers(headers);
            deliveries.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| anyhow::anyhow!("producing an event: {e}"))?,
            );
            decoded.push((command, *sequence));
            next.insert(message.partition(), message.offset() + 1);
        }
        for (delivery, (command, sequence)) in deliveries.into_iter().zip(&decoded) {
            let (partition, offset) = handle
                .block_on(delivery)
                .map_err(|_| anyhow::anyhow!("event delivery cancelled"))?
                .map(|d| (d.partition, d.offset))
                .map_err(|(e, _)| anyhow::anyhow!("event delivery failed: {e}"))?;
            let outcome = Outcome::Accepted {
                events: vec![EventRef {
                    message_type: ReadingRecorded::NAME.to_owned(),
                    topic: self.events_topic.clone(),
                    partition,
                    offset,
                    sequence: *sequence,
                }],
            };
            let payload = serde_json::to_vec(&outcome)?;
            let reply_id = Uuid::now_v7().hyphenated().to_string();
            let headers = raw_headers(
                &reply_id,
                REPLY_TYPE,
                command.subject,
                Some((command.correlation, command.id)),
                &time,
                &[],
            );
            let record = FutureRecord::to(command.reply_topic)
                .partition(command.reply_partition)
                .key(command.subject)
                .payload(&payload)
                .headers(headers);
            replies.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| anyhow::anyhow!("producing a reply: {e}"))?,
            );
        }
        for delivery in replies {
            handle
                .block_on(delivery)
                .map_err(|_| anyhow::anyhow!("reply delivery cancelled"))?
                .map_err(|(e, _)| anyhow::anyhow!("reply delivery failed: {e}"))?;
        }
        let mut offsets = TopicPartitionList::new();
        for (p, o) in &next {
            offsets.add_partition_offset(&self.commands_topic, *p, Offset::Offset(*o))?;
        }
        let metadata = consumer
            .group_metadata()
            .context("no consumer group metadata")?;
        producer
            .send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(30))
            .context("send_offsets_to_transaction")?;
        producer
            .commit_transaction(Duration::from_secs(30))
            .context("commit_transaction")?;
        Ok(())
    }
}

/// A running baseline loop on its own thread.
pub struct RunningLoop {
    stop: std::sync::Arc<AtomicBool>,
    pub progress: std::sync::Arc<LoopProgress>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl RunningLoop {
    pub fn start(baseline: BaselineLoop) -> anyhow::Result<Self> {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let progress = std::sync::Arc::new(LoopProgress::default());
        let handle = tokio::runtime::Handle::current();
        let (thread_stop, thread_progress) = (
            std::sync::Arc::clone(&stop),
            std::sync::Arc::clone(&progress),
        );
        let thread = std::thread::Builder::new()
            .name("baseline-commands".into())
            .spawn(move || baseline.run(&handle, &thread_stop, &thread_progress))
            .context("starting the baseline loop thread")?;
        Ok(Self {
            stop,
            progress,
            thread: Some(thread),
        })
    }

    /// Fails if the loop ended (it only ends on an error before `stop`).
    pub fn check(&self) -> anyhow::Result<()> {
        match &self.thread {
            Some(t) if t.is_finished() => Err(anyhow::anyhow!("the baseline loop stopped")),
            _ => Ok(()),
        }
    }

    /// Stops the loop and returns its outcome.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("joining the baseline loop")?
            .map_err(|_| anyhow::anyhow!("the baseline loop panicked"))?
    }

    /// When the loop first owned every partition, once it has.
    pub fn assigned(&self) -> Option<Instant> {
        *self
            .progress
            .assigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for RunningLoop {
    fn drop(&mut self) {
        // Dropped after a failure elsewhere: do not leave the thread running.
        self.stop.store(true, Ordering::Release);
    }
}
