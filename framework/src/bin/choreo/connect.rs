//! The services the CLI talks to, from flags or the environment, and the plain rdkafka clients
//! it builds on them.

use anyhow::Context as _;
use choreo::args::{KafkaArgs, PostgresArgs};
use choreo::{KafkaConfig, PostgresConfig};
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

/// How to reach Kafka and PostgreSQL.
#[derive(Debug)]
pub struct Services {
    pub kafka: KafkaConfig,
    pub postgres: PostgresConfig,
}

impl Services {
    /// The flags (each falls back to its environment variable).
    pub fn new(kafka: &KafkaArgs, postgres: &PostgresArgs) -> anyhow::Result<Self> {
        let kafka = kafka
            .config()
            .context("reading the Kafka settings")?
            .client_id("choreo-cli");
        // The CLI runs one query at a time.
        let postgres = postgres.config().max_connections(2);
        Ok(Self { kafka, postgres })
    }

    /// Fails with the library's "cannot reach Kafka ... start it with" error.
    pub fn check_kafka(&self) -> anyhow::Result<()> {
        choreo::kafka::check_reachable(&self.kafka)?;
        Ok(())
    }

    /// A consumer that reads by direct assignment and never commits. librdkafka refuses
    /// `assign` without a `group.id`, so it gets a throwaway one that never joins or commits.
    pub fn reader(&self) -> anyhow::Result<BaseConsumer> {
        self.check_kafka()?;
        let group = format!("choreo-cli-{}", uuid::Uuid::new_v4().simple());
        self.client(&[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            // Readers see only committed transactions, like every choreo consumer.
            ("isolation.level", "read_committed"),
            // Tells the reader when it has reached the end of a partition.
            ("enable.partition.eof", "true"),
        ])
        .create()
        .context("creating a Kafka consumer")
    }

    /// An idempotent producer: a retried send can neither duplicate nor reorder.
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        self.check_kafka()?;
        self.client(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("partitioner", "murmur2_random"),
        ])
        .create()
        .context("creating a Kafka producer")
    }

    /// Connects to PostgreSQL; the library's error names the URL and how to start it.
    pub async fn database(&self) -> anyhow::Result<PgPool> {
        Ok(choreo::postgres::connect(&self.postgres).await?)
    }

    /// The brokers, then the CLI's `settings`, then the user's raw properties, which win.
    fn client(&self, settings: &[(&str, &str)]) -> ClientConfig {
        self.kafka.client_config(settings)
    }
}
