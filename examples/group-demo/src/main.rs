//! A consumer group sharing the work: two instances of one group split the partitions of
//! `order.events`; when one leaves, the other takes over without losing an event.
//!
//! Run with: `scripts/demo` (it starts Kafka, then runs the steps below), or by hand:
//!
//! ```text
//! cargo run -p group-demo -- setup
//! cargo run -p group-demo -- consume --instance a   # in one terminal
//! cargo run -p group-demo -- consume --instance b   # in another
//! cargo run -p group-demo -- publish --count 12
//! ```

use std::time::Duration;

use anyhow::Context;
use choreo::kafka::{TopicAdmin, TopicSpec};
use choreo::{Event, EventHandlers, HandlerError, KafkaConfig, Publisher, Received, Shutdown};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

const GROUP: &str = "order-printer";
const PARTITIONS: i32 = 6;

/// An order was placed: a past-tense fact, keyed by the order id.
#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: String,
    customer: String,
    amount_cents: u64,
}

impl Event for OrderPlaced {
    const NAME: &'static str = "v1.order.placed";
    fn subject(&self) -> String {
        self.order_id.clone()
    }
}

#[derive(Parser)]
#[command(about = "choreo demo: a consumer group sharing the partitions of order.events")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create order.events (6 partitions) and the group's dead-letter topic.
    Setup,
    /// Run one instance of the `order-printer` group until SIGTERM / ctrl-c.
    Consume {
        #[arg(long)]
        instance: String,
    },
    /// Publish orders.
    Publish {
        #[arg(long, default_value_t = 12)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        first: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber_init();
    let cli = Cli::parse();
    let config = KafkaConfig::from_env()?;
    match cli.command {
        Cmd::Setup => setup(&config).await,
        Cmd::Consume { instance } => consume(&config, instance).await,
        Cmd::Publish { count, first } => publish(&config, first, count).await,
    }
}

fn tracing_subscriber_init() {
    // Quiet by default; RUST_LOG=info shows the runtime's own account of rebalances.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn setup(config: &KafkaConfig) -> anyhow::Result<()> {
    let events = TopicSpec::events("order", PARTITIONS, 1)?;
    let events = TopicSpec {
        name: config.topic_name(&events.name),
        ..events
    };
    let dlq = TopicSpec::dead_letters(&config.topic_name(GROUP), 1)?;
    let states = TopicAdmin::new(config)?
        .ensure(&[events.clone(), dlq.clone()])
        .await?;
    for (spec, state) in [events, dlq].iter().zip(states) {
        println!(
            "topic {:<32} {} partition(s)  {:?}",
            spec.name, spec.partitions, state
        );
    }
    Ok(())
}

async fn consume(config: &KafkaConfig, instance: String) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals();
    let mut handlers = EventHandlers::new(config.topic_name(GROUP));
    let status = handlers.status();
    let tag = format!("[instance {instance}]");
    let watcher = tokio::spawn({
        let (tag, shutdown) = (tag.clone(), shutdown.clone());
        async move {
            let mut last = Vec::new();
            while !shutdown.is_triggered() {
                let now: Vec<i32> = status.assigned().into_iter().map(|(_, p)| p).collect();
                if now != last {
                    println!("{tag} owns partitions {now:?}");
                    last = now;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    println!("{tag} joining consumer group {GROUP}");
    let handler_tag = tag.clone();
    let summary = handlers
        .on(move |order: Received<OrderPlaced>| {
            let tag = handler_tag.clone();
            async move {
                println!(
                    "{tag} partition {} offset {:>3}: {} placed by {} ({}.{:02})",
                    order.origin.partition,
                    order.origin.offset,
                    order.payload.order_id,
                    order.payload.customer,
                    order.payload.amount_cents / 100,
                    order.payload.amount_cents % 100
                );
                Ok::<_, HandlerError>(())
            }
        })
        .run(config, shutdown)
        .await
        .context("the consumer stopped")?;
    watcher.abort();
    println!(
        "{tag} left the group cleanly (offsets committed); halted partitions: {}",
        summary.halted.len()
    );
    Ok(())
}

async fn publish(config: &KafkaConfig, first: u64, count: u64) -> anyhow::Result<()> {
    let publisher = Publisher::new(config, "/group-demo")?;
    let orders: Vec<OrderPlaced> = (first..first + count)
        .map(|i| OrderPlaced {
            order_id: format!("order-{i:04}"),
            customer: ["ada", "grace", "linus", "barbara"][(i % 4) as usize].to_owned(),
            amount_cents: 1_000 + i * 137,
        })
        .collect();
    // All sends in flight at once; each resolves to its partition and offset.
    let results = futures::future::join_all(orders.iter().map(|o| publisher.publish(o))).await;
    let mut per_partition = [0u32; PARTITIONS as usize];
    for result in results {
        let delivered = result?;
        per_partition[delivered.partition as usize] += 1;
    }
    println!("published {count} orders; per partition: {per_partition:?}");
    Ok(())
}
