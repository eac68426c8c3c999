//! `publish`: `choreo::Publisher` against a raw `FutureProducer` with the same producer
//! config, the same payloads and headers, and the same window of sends in flight.

use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::Context;
use choreo::Publisher;
use futures::{StreamExt, stream};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::data::{self, Dataset, RawRecord};
use crate::{CpuClock, Round, Setup, Side};

/// Events each side sends before the timed rounds: connections, metadata and the idempotent
/// producer id are set up outside the measurement.
const WARMUP: u64 = 2_000;
/// How long a send may wait for room in librdkafka's queue (the framework's value).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// The producer config the framework uses (`PRODUCER_DEFAULTS` in `kafka/publisher.rs`).
pub fn baseline_producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .context("creating the baseline producer")
}

pub async fn run(setup: &Setup) -> anyhow::Result<Vec<Round>> {
    let dataset = Dataset::new()?;
    let publisher =
        Publisher::new(&setup.config, data::SOURCE).context("creating the publisher")?;
    let producer = baseline_producer(&setup.brokers)?;

    framework_sends(&publisher, &dataset, 0..WARMUP, setup.window).await?;
    baseline_sends(&producer, &setup.topic, &dataset, 0..WARMUP, setup.window).await?;

    let mut rounds = Vec::new();
    let rounds_n = u64::from(setup.rounds);
    for round in 0..setup.rounds {
        // Both sides send the same events in a round.
        let r = u64::from(round);
        let range = setup.events * r / rounds_n..setup.events * (r + 1) / rounds_n;
        for side in Side::order(round) {
            let events = range.end - range.start;
            let cpu = CpuClock::start();
            let started = Instant::now();
            match side {
                Side::Framework => {
                    framework_sends(&publisher, &dataset, range.clone(), setup.window).await?;
                }
                Side::Baseline => {
                    baseline_sends(
                        &producer,
                        &setup.topic,
                        &dataset,
                        range.clone(),
                        setup.window,
                    )
                    .await?;
                }
            }
            let measured = Round {
                side,
                events,
                elapsed: started.elapsed(),
                cpu: cpu.used(),
            };
            measured.report(round);
            rounds.push(measured);
        }
    }
    // Nothing is left in flight (every send above was awaited); these return at once.
    publisher.flush(Duration::from_secs(30))?;
    producer
        .flush(Duration::from_secs(30))
        .context("flushing the baseline producer")?;
    Ok(rounds)
}

/// Publishes events `range` with at most `window` sends in flight; returns once every one is
/// acknowledged.
pub async fn framework_sends(
    publisher: &Publisher,
    dataset: &Dataset,
    range: Range<u64>,
    window: usize,
) -> anyhow::Result<()> {
    let mut sends = stream::iter(range)
        .map(|i| {
            let event = dataset.event(i);
            async move { publisher.publish(&event).await }
        })
        .buffer_unordered(window);
    while let Some(result) = sends.next().await {
        result.context("framework publish failed")?;
    }
    Ok(())
}

/// The hand-written equivalent: the same events, payloads and headers, the same window.
async fn baseline_sends(
    producer: &FutureProducer,
    topic: &str,
    dataset: &Dataset,
    range: Range<u64>,
    window: usize,
) -> anyhow::Result<()> {
    let mut sends = stream::iter(range)
        .map(|i| {
            let event = dataset.event(i);
            async move {
                let record = RawRecord::new(&event)?;
                let sent = FutureRecord::to(topic)
                    .key(record.key.as_bytes())
                    .payload(&record.payload)
                    .headers(record.headers);
                producer
                    .send(sent, QUEUE_TIMEOUT)
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("baseline send failed: {e}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(window);
    while let Some(result) = sends.next().await {
        result?;
    }
    Ok(())
}
