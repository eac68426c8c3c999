//! `consume`: `choreo::EventHandlers` (consume, decode the envelope and the JSON payload)
//! against a raw `BaseConsumer` reading the same topic (payload and headers touched, nothing
//! decoded). Every round reads the whole topic in a fresh consumer group; the clock starts at
//! the first message and stops at the last, so the group join is not counted.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use choreo::kafka::TopicSpec;
use choreo::{EventHandlers, HandlerError, Publisher, Received, Shutdown};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};

use crate::data::{self, Dataset, ReadingRecorded};
use crate::publish::framework_sends;
use crate::{CpuClock, Round, Setup, Side};

pub async fn run(setup: &Setup, created: &mut Vec<String>) -> anyhow::Result<Vec<Round>> {
    fill(setup).await?;
    // Generous: a side that stalls fails the run instead of hanging it.
    let limit = Duration::from_secs(60 + setup.events / 5_000);
    let mut rounds = Vec::new();
    for round in 0..setup.rounds {
        for side in Side::order(round) {
            let base = format!("{}-{round}", side.label());
            // Named as choreo names a handler group: under the run's namespace (both sides,
            // so neither joins a group the other left offsets in).
            let group = setup.config.topic_name(&base);
            if side == Side::Framework {
                // Handlers insist on their dead-letter topic; it stays empty here.
                let dlq = TopicSpec::dead_letters(&group, 1)?;
                created.push(dlq.name.clone());
                setup
                    .admin
                    .ensure(&[dlq])
                    .await
                    .with_context(|| format!("creating {group}.dlq"))?;
            }
            let cpu = CpuClock::start();
            let elapsed = match side {
                Side::Framework => framework_round(setup, &base, limit).await?,
                Side::Baseline => {
                    let brokers = setup.brokers.clone();
                    let topic = setup.topic.clone();
                    let events = setup.events;
                    // Its own named thread, like the framework's poll thread (and told
                    // apart from it in a profile).
                    let thread = std::thread::Builder::new()
                        .name("baseline-poll".into())
                        .spawn(move || baseline_round(&brokers, &topic, &group, events, limit))
                        .context("starting the baseline consumer thread")?;
                    tokio::task::spawn_blocking(move || thread.join())
                        .await
                        .context("waiting for the baseline consumer thread")?
                        .map_err(|_| anyhow::anyhow!("the baseline consumer thread panicked"))??
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

/// Publishes the events every round reads (with the framework's publisher; not timed).
pub async fn fill(setup: &Setup) -> anyhow::Result<()> {
    let dataset = Dataset::new()?;
    let publisher =
        Publisher::new(&setup.config, data::SOURCE).context("creating the publisher")?;
    let started = Instant::now();
    framework_sends(&publisher, &dataset, 0..setup.events, setup.window).await?;
    publisher.flush(Duration::from_secs(60))?;
    println!(
        "  filled {} with {} events in {:.1} s",
        setup.topic,
        setup.events,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Counts handled events and stops the handlers at the last one.
#[derive(Debug)]
struct Progress {
    target: u64,
    handled: AtomicU64,
    clock: Instant,
    /// Nanoseconds since `clock` at the first and the last event.
    first: AtomicU64,
    last: AtomicU64,
    shutdown: Shutdown,
}

impl Progress {
    fn handled(&self, event: &Received<ReadingRecorded>) {
        // Use the decoded payload, so decoding is not optimised away.
        black_box((event.payload.seq, event.payload.meter_id.len()));
        let n = self.handled.fetch_add(1, Ordering::AcqRel) + 1;
        if n == 1 {
            self.first.store(self.now(), Ordering::Release);
        }
        if n == self.target {
            self.last.store(self.now(), Ordering::Release);
            self.shutdown.trigger();
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

async fn framework_round(setup: &Setup, group: &str, limit: Duration) -> anyhow::Result<Duration> {
    let shutdown = Shutdown::new();
    let progress = Arc::new(Progress {
        target: setup.events,
        handled: AtomicU64::new(0),
        clock: Instant::now(),
        first: AtomicU64::new(0),
        last: AtomicU64::new(0),
        shutdown: shutdown.clone(),
    });
    let counter = Arc::clone(&progress);
    let handlers = EventHandlers::new(group).on(move |event: Received<ReadingRecorded>| {
        counter.handled(&event);
        std::future::ready(Ok::<_, HandlerError>(()))
    });
    let watchdog = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            shutdown.trigger();
        })
    };
    let summary = handlers.run(&setup.config, shutdown).await;
    watchdog.abort();
    let summary = summary.context("the event handlers failed")?;
    anyhow::ensure!(
        summary.halted.is_empty(),
        "partitions halted: {:?}",
        summary.halted
    );
    let handled = progress.handled.load(Ordering::Acquire);
    anyhow::ensure!(
        handled >= setup.events,
        "the framework handled {handled} of {} events within {limit:?}",
        setup.events
    );
    let first = progress.first.load(Ordering::Acquire);
    let last = progress.last.load(Ordering::Acquire);
    Ok(Duration::from_nanos(last.saturating_sub(first)))
}

/// Reads what a hand-written consumer would look at: key, payload and every header.
fn touch(message: &BorrowedMessage<'_>) -> u64 {
    let bytes = |b: &[u8]| b.len() as u64 + b.first().map_or(0, |&x| u64::from(x));
    let mut sum = message.key().map_or(0, bytes) + message.payload().map_or(0, bytes);
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            sum += bytes(header.key.as_bytes()) + header.value.map_or(0, bytes);
        }
    }
    sum
}

/// A fresh group reading the whole topic with a `BaseConsumer` polled in a loop.
fn baseline_round(
    brokers: &str,
    topic: &str,
    group: &str,
    target: u64,
    limit: Duration,
) -> anyhow::Result<Duration> {
    // The framework's consumer settings (kafka/consumer/settings.rs), minus what only it needs.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the baseline consumer")?;
    consumer
        .subscribe(&[topic])
        .context("subscribing the baseline consumer")?;
    let deadline = Instant::now() + limit;
    let mut first: Option<Instant> = None;
    let mut seen = 0u64;
    let mut checksum = 0u64;
    while seen < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the baseline read {seen} of {target} events within {limit:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                first.get_or_insert_with(Instant::now);
                checksum = checksum.wrapping_add(touch(&message));
                seen += 1;
            }
            Some(Err(e)) => eprintln!("baseline consumer error: {e}"),
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |t| t.elapsed());
    black_box(checksum);
    Ok(elapsed)
}
