//! `send-wait`: p99 of `CommandBus::send_and_wait` against a command processor, at a fixed
//! open-loop rate, against a raw client (producer + a reply reader on its own partition)
//! sending the same commands to the hand-written loop of `commands` and waiting for its
//! replies.
//!
//! Both servers run for the whole benchmark on their own commands topics (the processor on
//! `ns.reading.commands`, the loop on `ns.baseline.commands`), so only the load alternates
//! between the sides; the framework's replies come to partition 0 of `ns.bench.replies`, the
//! raw client's to partition 1. Each side first sends a short unmeasured warm-up at the same
//! rate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use choreo::Shutdown;
use choreo::aggregate::{CommandBus, Outcome, SendOptions};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::FutureProducer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::cmd::{self, BaselineLoop, RawCommand, RecordReading, RunningLoop, SERVICE, Topics};
use crate::data::Dataset;
use crate::latency::{self, Latencies};
use crate::{Setup, Side};

/// How long one request may wait for its reply before the run fails.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The raw client's reply partition (the bus reads partition 0).
const RAW_REPLY_PARTITION: i32 = 1;

pub async fn run(
    setup: &Setup,
    created: &mut Vec<String>,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<String> {
    let topics = Topics::new(&setup.namespace);
    topics
        .create(
            &setup.admin,
            &setup.namespace,
            &[SERVICE.to_owned()],
            created,
        )
        .await?;
    let dataset = Dataset::new()?;
    let per_round = (rate * seconds as f64).round() as u64;
    println!(
        "  open loop at {rate:.0} commands/s, {seconds} s ({per_round} commands) per round and side, latency from the scheduled send time"
    );

    let shutdown = Shutdown::new();
    let (task, status) = cmd::start_processor(&setup.config, SERVICE, 0, &shutdown);
    let group = format!("{}.baseline", setup.namespace);
    let server = RunningLoop::start(BaselineLoop {
        brokers: setup.brokers.clone(),
        group: group.clone(),
        commands_topic: topics.baseline_commands.clone(),
        events_topic: topics.baseline_events.clone(),
        transactional_id: format!("{group}-0"),
    })?;
    let outcome = async {
        cmd::wait_ready(&status, &task, Duration::from_secs(60)).await?;
        let bus = CommandBus::new(&setup.config, cmd::REPLIES, 0)
            .await
            .context("creating the command bus")?;
        let client = RawClient::new(&setup.brokers, &topics)?;
        // Both servers warm up (connections, the first transactions) outside the figures.
        let warmup = (rate as u64).max(50);
        framework_load(&bus, &dataset, rate, 0..warmup).await?;
        client.load(&dataset, rate, 0..warmup).await?;

        let mut framework = Latencies::default();
        let mut baseline = Latencies::default();
        for round in 0..setup.rounds {
            let base = warmup + u64::from(round) * per_round;
            let range = base..base + per_round;
            for side in Side::order(round) {
                anyhow::ensure!(!task.is_finished(), "the processor stopped");
                server.check()?;
                let measured = match side {
                    Side::Framework => {
                        let l = framework_load(&bus, &dataset, rate, range.clone()).await?;
                        framework.extend(&l);
                        l
                    }
                    Side::Baseline => {
                        let l = client.load(&dataset, rate, range.clone()).await?;
                        baseline.extend(&l);
                        l
                    }
                };
                println!(
                    "  round {}: {:<9} {}",
                    round + 1,
                    side.label(),
                    latency::describe(&measured)
                );
            }
        }
        client.stop();
        anyhow::Ok((framework, baseline))
    }
    .await;
    shutdown.trigger();
    let stopped = task.await.context("joining the processor")?;
    let server_stopped = server.stop().await;
    let (framework, baseline) = outcome?;
    stopped.context("the command processor failed")?;
    server_stopped.context("the baseline loop failed")?;

    let (f, b) = (framework.quantile_ms(0.99), baseline.quantile_ms(0.99));
    println!(
        "  over {} requests per side: p50 framework {:.1} ms, baseline {:.1} ms; target p99 <= baseline + 10 ms ({:.1} ms)",
        framework.len(),
        framework.quantile_ms(0.5),
        baseline.quantile_ms(0.5),
        b + 10.0
    );
    Ok(format!(
        "send-wait: framework_p99={f:.1}ms baseline_p99={b:.1}ms ratio={:.2}",
        f / b.max(1e-9)
    ))
}

/// `send_and_wait` for commands `range` at `rate`.
async fn framework_load(
    bus: &CommandBus,
    dataset: &Dataset,
    rate: f64,
    range: std::ops::Range<u64>,
) -> anyhow::Result<Vec<std::time::Duration>> {
    let first = range.start;
    latency::open_loop(rate, range.end - range.start, |i, _due| {
        let command = RecordReading::from(dataset.event(first + i));
        async move {
            let reply = bus
                .send_and_wait(&command, SendOptions::default(), REPLY_TIMEOUT)
                .await?;
            let done = Instant::now();
            anyhow::ensure!(
                matches!(reply.outcome, Outcome::Accepted { .. }),
                "command rejected: {:?}",
                reply.outcome
            );
            Ok(done)
        }
    })
    .await
}

type Waiters = Arc<Mutex<HashMap<Uuid, oneshot::Sender<Result<(), String>>>>>;

/// What a hand-written sender does: a producer for the commands, and a thread reading its
/// reply partition (assigned at its end before the first send) that hands each reply to the
/// request waiting for it, matched on the causation id.
struct RawClient {
    producer: FutureProducer,
    topics: Topics,
    waiters: Waiters,
    stop: Arc<AtomicBool>,
}

impl RawClient {
    fn new(brokers: &str, topics: &Topics) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("{}.raw-reader", topics.replies))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false")
            .create()
            .context("creating the raw reply reader")?;
        let (_, end) = consumer
            .fetch_watermarks(
                &topics.replies,
                RAW_REPLY_PARTITION,
                Duration::from_secs(10),
            )
            .context("fetching the reply partition's end")?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topics.replies, RAW_REPLY_PARTITION, Offset::Offset(end))?;
        consumer
            .assign(&tpl)
            .context("assigning the reply partition")?;
        let waiters: Waiters = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_waiters, thread_stop) = (Arc::clone(&waiters), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("raw-replies".into())
            .spawn(move || read_replies(&consumer, &thread_waiters, &thread_stop))
            .context("starting the raw reply reader")?;
        Ok(Self {
            producer: cmd::command_producer(brokers)?,
            topics: topics.clone(),
            waiters,
            stop,
        })
    }

    async fn send_and_wait(&self, command: &RecordReading) -> anyhow::Result<Instant> {
        let raw = RawCommand::new(command, &self.topics.replies, RAW_REPLY_PARTITION)?;
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(raw.id, tx);
        let result = async {
            self.producer
                .send(
                    raw.record(&self.topics.baseline_commands),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("sending a command: {e}"))?;
            match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
                Ok(Ok(Ok(()))) => Ok(Instant::now()),
                Ok(Ok(Err(reason))) => Err(anyhow::anyhow!("{reason}")),
                Ok(Err(_)) => Err(anyhow::anyhow!("the reply reader stopped")),
                Err(_) => Err(anyhow::anyhow!("no reply within {REPLY_TIMEOUT:?}")),
            }
        }
        .await;
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&raw.id);
        result
    }

    async fn load(
        &self,
        dataset: &Dataset,
        rate: f64,
        range: std::ops::Range<u64>,
    ) -> anyhow::Result<Vec<Duration>> {
        let first = range.start;
        latency::open_loop(rate, range.end - range.start, |i, _due| {
            let command = RecordReading::from(dataset.event(first + i));
            async move { self.send_and_wait(&command).await }
        })
        .await
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Drop for RawClient {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_replies(consumer: &BaseConsumer, waiters: &Waiters, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let record = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(e)) => {
                eprintln!("raw reply reader error: {e}");
                continue;
            }
            Some(Ok(record)) => record,
        };
        let causation = record
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "ce_causationid"))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| Uuid::parse_str(v).ok());
        let Some(causation) = causation else {
            eprintln!(
                "raw reply reader: a reply without a valid ce_causationid at offset {}",
                record.offset()
            );
            continue;
        };
        let Some(waiter) = waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&causation)
        else {
            continue; // a warm-up straggler or a request that gave up
        };
        let outcome = match record.payload().map(serde_json::from_slice::<Outcome>) {
            Some(Ok(Outcome::Accepted { .. })) => Ok(()),
            Some(Ok(other)) => Err(format!("command rejected: {other:?}")),
            Some(Err(e)) => Err(format!("undecodable reply: {e}")),
            None => Err("a reply without a payload".to_owned()),
        };
        let _ = waiter.send(outcome);
    }
}
