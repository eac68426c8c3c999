//! A process for fault drills (integration tests start it, kill it at failpoints with
//! `CHOREO_FAILPOINT=<name>[@n]`, stop it with SIGSTOP, and restart it):
//!
//! - `choreo-drill project`: runs the drill projection's live view until SIGTERM.
//! - `choreo-drill rebuild [--fresh] [--batch N]`: rebuilds it and prints the summary line.
//! - `choreo-drill process ORDINAL PARTITIONS`: runs the drill aggregate's command processor
//!   (service `bank`, entity `account`) until SIGTERM.
//! - `choreo-drill react ORDINAL`: runs the drill reactor (`echo`, on `counter.events`) until
//!   SIGTERM.
//! - `choreo-drill publish COUNT`: publishes COUNT `v1.counter.bumped` events at once, sends
//!   the failed ones again (same ids), prints one line per failure and a summary.
//!
//! Settings come from `CHOREO_KAFKA_BROKERS`, `CHOREO_TOPIC_NAMESPACE`, `CHOREO_DATABASE_URL`.

use std::sync::Arc;

use anyhow::Context;
use choreo::aggregate::CommandProcessor;
use choreo::projection::{RebuildOptions, rebuild};
use choreo::reactor::ReactorRunner;
use choreo::testing::account::Account;
use choreo::testing::echo::EchoReactor;
use choreo::testing::{CounterBumped, CounterProjection};
use choreo::{KafkaConfig, PostgresConfig, ProjectionRunner, Publisher, Shutdown};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kafka = KafkaConfig::from_env()?;
    if args.first().map(String::as_str) == Some("process") {
        let ordinal: u32 = args
            .get(1)
            .and_then(|a| a.parse().ok())
            .context("ORDINAL")?;
        let partitions: i32 = args
            .get(2)
            .and_then(|a| a.parse().ok())
            .context("PARTITIONS")?;
        let processor = CommandProcessor::<Account>::new("bank", "account", ordinal, partitions);
        let status = processor.status();
        processor
            .run(&kafka, Shutdown::on_signals())
            .await
            .context("command processor")?;
        println!("stopped; producer restarts: {}", status.producer_restarts());
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("publish-each") {
        let count: usize = args.get(1).and_then(|a| a.parse().ok()).context("COUNT")?;
        return publish_each(&kafka, count).await;
    }
    if args.first().map(String::as_str) == Some("publish") {
        let count: usize = args.get(1).and_then(|a| a.parse().ok()).context("COUNT")?;
        return publish(&kafka, count).await;
    }
    let pool = choreo::postgres::connect_and_migrate(&PostgresConfig::from_env()?).await?;
    match args.first().map(String::as_str) {
        Some("project") => {
            let runner = ProjectionRunner::new(Arc::new(CounterProjection));
            let summary = runner
                .run(&kafka, &pool, Shutdown::on_signals())
                .await
                .context("projection runner")?;
            println!("stopped; halted: {:?}", summary.halted);
        }
        Some("react") => {
            let ordinal: u32 = args
                .get(1)
                .and_then(|a| a.parse().ok())
                .context("ORDINAL")?;
            EchoReactor::setup(&pool).await?;
            let runner =
                ReactorRunner::new(EchoReactor::new(pool.clone()), "drill", ordinal).max_batch(20);
            runner
                .run(&kafka, Shutdown::on_signals())
                .await
                .context("reactor")?;
            println!("stopped");
        }
        Some("rebuild") => {
            let batch_size = args
                .iter()
                .position(|a| a == "--batch")
                .and_then(|i| args.get(i + 1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(RebuildOptions::default().batch_size);
            let options = RebuildOptions {
                fresh: args.iter().any(|a| a == "--fresh"),
                batch_size,
                ..RebuildOptions::default()
            };
            let report = rebuild(Arc::new(CounterProjection), &kafka, &pool, options)
                .await
                .context("rebuild")?;
            println!("{report}");
        }
        _ => anyhow::bail!(
            "usage: choreo-drill project | rebuild [--fresh] | process ORDINAL PARTITIONS | react ORDINAL | publish COUNT"
        ),
    }
    Ok(())
}

/// Publishes `count` events concurrently, then each failed one once more with its id.
/// `publish` one event at a time, as the README's first example does: a retriable failure is
/// retried inside `publish` with the same id.
async fn publish_each(kafka: &KafkaConfig, count: usize) -> anyhow::Result<()> {
    let publisher = Publisher::new(kafka, "/drill")?;
    let mut failed = 0;
    for i in 0..count {
        let event = CounterBumped {
            key: format!("k-{}", i % 4),
            amount: 1,
            poison: false,
        };
        if let Err(e) = publisher.publish(&event).await {
            println!(
                "failed {} retriable={} {}",
                e.message_id,
                e.is_retriable(),
                e.reason
            );
            failed += 1;
        }
    }
    println!(
        "published {count}; failed {failed}; producer replacements {}",
        publisher.producer_replacements()
    );
    Ok(())
}

async fn publish(kafka: &KafkaConfig, count: usize) -> anyhow::Result<()> {
    let publisher = Publisher::new(kafka, "/drill")?;
    let events: Vec<_> = (0..count)
        .map(|i| CounterBumped {
            key: format!("k-{}", i % 4),
            amount: 1,
            poison: false,
        })
        .map(|event| publisher.prepare(&event, None))
        .collect::<Result<_, _>>()?;
    let results = futures::future::join_all(events.iter().map(|out| publisher.send(out))).await;
    let mut failed = Vec::new();
    for (out, result) in events.iter().zip(results) {
        if let Err(e) = result {
            println!(
                "failed {} retriable={} {}",
                out.meta().id,
                e.is_retriable(),
                e.reason
            );
            failed.push(out);
        }
    }
    let mut resent = 0;
    for out in &failed {
        publisher
            .send(out)
            .await
            .context("sending a failed record again")?;
        resent += 1;
    }
    println!(
        "sent {count}; failed {}; resent {resent}; producer replacements {}",
        failed.len(),
        publisher.producer_replacements()
    );
    Ok(())
}
