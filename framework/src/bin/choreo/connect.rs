//! The services the CLI talks to, from flags or the environment, and the plain rdkafka clients
//! it builds on them.

use anyhow::Context as _;
use choreo::{KafkaConfig, PostgresConfig};
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

/// How to reach Kafka and PostgreSQL.
#[derive(Debug)]
pub struct Services {
    pub kafka: KafkaConfig,
    /// `CHOREO_KAFKA_PROPERTIES` once more: `KafkaConfig` keeps its raw properties to itself,
    /// and the CLI's own clients (a group-less consumer, a redrive producer) need the same TLS
    /// and SASL settings as the library's.
    properties: Vec<(String, String)>,
    pub postgres: PostgresConfig,
}

impl Services {
    /// `from_env()` first, then the flags win. (Clap also reads the same variables, so a
    /// value here came from a flag or from the environment.)
    pub fn new(
        brokers: Option<String>,
        database_url: Option<String>,
        namespace: Option<String>,
    ) -> anyhow::Result<Self> {
        let from_env = KafkaConfig::from_env().context("reading the Kafka settings")?;
        let properties = raw_properties();
        let mut kafka = match brokers.filter(|b| !b.trim().is_empty()) {
            // KafkaConfig has no broker setter: rebuild it with the same raw properties.
            Some(brokers) if brokers.trim() != from_env.brokers() => properties
                .iter()
                .fold(KafkaConfig::new(brokers.trim()), |config, (k, v)| {
                    config.property(k, v)
                }),
            _ => from_env,
        };
        if let Some(namespace) = namespace.filter(|n| !n.trim().is_empty()) {
            kafka = kafka.namespace(namespace.trim());
        }
        kafka = kafka.client_id("choreo-cli");

        let mut postgres = PostgresConfig::from_env().context("reading the PostgreSQL settings")?;
        if let Some(url) = database_url.filter(|u| !u.trim().is_empty()) {
            postgres = PostgresConfig::new(url.trim());
        }
        // The CLI runs one query at a time.
        let postgres = postgres.max_connections(2);
        Ok(Self {
            kafka,
            properties,
            postgres,
        })
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
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.kafka.brokers());
        config.set("client.id", "choreo-cli");
        for (key, value) in settings {
            config.set(*key, *value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// `CHOREO_KAFKA_PROPERTIES`: `key=value` pairs separated by `;`. `KafkaConfig::from_env` has
/// already rejected malformed entries, so this reads leniently.
fn raw_properties() -> Vec<(String, String)> {
    std::env::var("CHOREO_KAFKA_PROPERTIES")
        .unwrap_or_default()
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}
