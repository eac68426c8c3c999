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
//! cargo run -p group-demo -- project                # the order_totals read model in Postgres
//! cargo run -p group-demo -- show
//! cargo run -p group-demo -- projections rebuild order_totals
//! ```

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use choreo::kafka::{TopicAdmin, TopicSpec};
use choreo::projection::live_schema;
use choreo::service::{ProjectionAdmin, ProjectionCommand};
use choreo::{
    ApplyError, Event, EventHandlers, HandlerError, KafkaConfig, PostgresConfig, Projection,
    ProjectionRunner, Publisher, Received, Shutdown,
};
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

/// A read model: orders and revenue per customer, in schema `order_totals_v1`.
struct OrderTotals;

impl Projection for OrderTotals {
    type Events = OrderPlaced;
    const NAME: &'static str = "order_totals";
    const VERSION: u32 = 1;

    fn schema_sql(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS customers (
             customer text PRIMARY KEY,
             orders integer NOT NULL,
             revenue_cents bigint NOT NULL,
             last_order_at timestamptz NOT NULL
         )"
    }

    async fn apply(
        &self,
        conn: &mut sqlx::PgConnection,
        events: &[Received<OrderPlaced>],
    ) -> Result<(), ApplyError> {
        for order in events {
            // The event's own time, never now(): a rebuild must produce the same rows.
            sqlx::query(
                "INSERT INTO customers (customer, orders, revenue_cents, last_order_at)
                 VALUES ($1, 1, $2, $3)
                 ON CONFLICT (customer) DO UPDATE SET orders = customers.orders + 1,
                     revenue_cents = customers.revenue_cents + EXCLUDED.revenue_cents,
                     last_order_at = GREATEST(customers.last_order_at, EXCLUDED.last_order_at)",
            )
            .bind(&order.payload.customer)
            .bind(order.payload.amount_cents as i64)
            .bind(order.meta.time)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
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
    /// Run the order_totals projection (its own consumer group) until SIGTERM / ctrl-c.
    Project,
    /// Print the order_totals read model.
    Show,
    /// Admin commands for this service's projections (rebuild, reset, list).
    #[command(subcommand)]
    Projections(ProjectionCommand),
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
        Cmd::Project => project(&config).await,
        Cmd::Show => show().await,
        Cmd::Projections(command) => {
            let pool = choreo::postgres::connect_and_migrate(&PostgresConfig::from_env()?).await?;
            ProjectionAdmin::new()
                .register(Arc::new(OrderTotals))
                .run(command, &config, &pool)
                .await?;
            Ok(())
        }
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
    // Base names: the admin puts the namespace in front.
    let specs = [
        TopicSpec::events("order", PARTITIONS, 1)?,
        TopicSpec::dead_letters(GROUP, 1)?,
        TopicSpec::dead_letters("order_totals.v1", 1)?,
    ];
    let admin = TopicAdmin::new(config)?;
    let states = admin.ensure(&specs).await?;
    for (spec, state) in specs.iter().zip(states) {
        println!(
            "topic {:<32} {} partition(s)  {:?}",
            admin.full_name(&spec.name),
            spec.partitions,
            state
        );
    }
    Ok(())
}

async fn consume(config: &KafkaConfig, instance: String) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals();
    // The handlers prefix the namespace themselves (the dead-letter topic above has it too).
    let mut handlers = EventHandlers::new(GROUP);
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
    println!("{tag} joining consumer group {}", config.topic_name(GROUP));
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

async fn project(config: &KafkaConfig) -> anyhow::Result<()> {
    let pool = choreo::postgres::connect_and_migrate(&PostgresConfig::from_env()?).await?;
    println!(
        "[projection order_totals] running; the view is schema {}",
        live_schema::<OrderTotals>()
    );
    let summary = ProjectionRunner::new(Arc::new(OrderTotals))
        .run(config, &pool, Shutdown::on_signals())
        .await?;
    println!(
        "[projection order_totals] stopped; halted partitions: {}",
        summary.halted.len()
    );
    Ok(())
}

async fn show() -> anyhow::Result<()> {
    let pool = choreo::postgres::connect(&PostgresConfig::from_env()?).await?;
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(&format!(
        "SELECT customer, orders, revenue_cents FROM {}.customers ORDER BY customer",
        live_schema::<OrderTotals>()
    ))
    .fetch_all(&pool)
    .await?;
    println!("customer   orders   revenue");
    for (customer, orders, cents) in rows {
        println!(
            "{customer:<10} {orders:>6}   {:>6}.{:02}",
            cents / 100,
            cents % 100
        );
    }
    Ok(())
}
