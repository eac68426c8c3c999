//! How a consumer joins its group, and the librdkafka settings that follow from it.

use std::time::Duration;

use rdkafka::ClientConfig;

use super::ConsumerStatus;
use crate::config::KafkaConfig;
use crate::message::topics;

/// How a consumer joins its group and sizes its queues.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The consumer group (`group.id`).
    pub group_id: String,
    /// The topics subscribed to.
    pub topics: Vec<String>,
    /// `isolation.level=read_committed` (skip aborted transactions). On by default.
    pub read_committed: bool,
    /// Store and commit group offsets (plain handlers); projections keep theirs in Postgres.
    pub commit_offsets: bool,
    /// `auto.offset.reset` for partitions without a committed offset.
    pub auto_offset_reset: String,
    /// Most records handed to a partition task at once.
    pub max_batch: usize,
    /// Records queued for one partition before it is paused.
    pub high_water: usize,
    /// Bytes (records in memory) queued for one partition before it is paused, whatever
    /// their count: 5,000 records of 1 MB would otherwise hold 5 GB.
    pub high_water_bytes: usize,
    /// How long a revoke waits for a partition task to finish its batch before aborting it.
    pub revoke_timeout: Duration,
    /// Extra librdkafka consumer properties (they win over choreo's).
    pub properties: Vec<(String, String)>,
    /// Updated by the runtime as partitions come and go.
    pub status: ConsumerStatus,
    /// Topics subscribed only if they exist: `{group}.redrive`, where `choreo dlq redrive`
    /// feeds this group's dead letters back to it (and to no one else).
    pub optional_topics: Vec<String>,
    /// Topics that must exist besides the subscribed ones (the dead-letter topic): checked
    /// at start so a missing one is a clear error, not an auto-created topic or a stuck retry.
    pub required_topics: Vec<String>,
}

impl ConsumerSettings {
    /// Settings for `group_id` reading `topics`: read committed, offsets committed, from the
    /// earliest record when the group has none, batches of up to 500, paused at 5,000 queued,
    /// 30 s for a revoke; `{group}.redrive` subscribed when it exists.
    pub fn new(group_id: impl Into<String>, topics: Vec<String>) -> Self {
        let group_id = group_id.into();
        Self {
            group_id: group_id.clone(),
            topics,
            read_committed: true,
            commit_offsets: true,
            auto_offset_reset: "earliest".into(),
            max_batch: 500,
            high_water: 5_000,
            high_water_bytes: 64 << 20,
            revoke_timeout: Duration::from_secs(30),
            properties: Vec::new(),
            status: ConsumerStatus::default(),
            required_topics: Vec::new(),
            optional_topics: vec![topics::redrive(&group_id)],
        }
    }

    /// Adds a librdkafka consumer property (it wins over choreo's).
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }
}

/// The librdkafka configuration of the runtime's consumer: choreo's defaults for a group
/// member, then the settings' own properties, which win.
pub(super) fn client_config(config: &KafkaConfig, settings: &ConsumerSettings) -> ClientConfig {
    let read_committed = if settings.read_committed {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    // Offsets are stored by the runtime after the worker finished (never on poll), and
    // committed by librdkafka every second.
    let mut client = crate::kafka::client::member(
        config,
        &settings.group_id,
        &[
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("auto.offset.reset", settings.auto_offset_reset.as_str()),
            ("isolation.level", read_committed),
        ],
    );
    for (key, value) in &settings.properties {
        client.set(key, value);
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_settings_commit_read_committed_and_subscribe_the_redrive_topic_if_present() {
        let settings = ConsumerSettings::new("billing", vec!["user.events".into()]);
        assert!(settings.read_committed && settings.commit_offsets);
        assert_eq!(settings.auto_offset_reset, "earliest");
        assert_eq!((settings.max_batch, settings.high_water), (500, 5_000));
        assert_eq!(settings.revoke_timeout, Duration::from_secs(30));
        assert_eq!(settings.optional_topics, ["billing.redrive"]);
        assert!(settings.required_topics.is_empty() && settings.properties.is_empty());
        let settings = settings.property("fetch.min.bytes", "1").property("a", "b");
        assert_eq!(
            settings.properties,
            [
                ("fetch.min.bytes".to_owned(), "1".to_owned()),
                ("a".to_owned(), "b".to_owned())
            ]
        );
    }

    #[test]
    fn the_client_is_a_cooperative_member_that_stores_offsets_itself() {
        let config = KafkaConfig::new("localhost:9092");
        let settings = ConsumerSettings::new("billing", vec!["user.events".into()]);
        let client = client_config(&config, &settings);
        for (key, value) in [
            ("bootstrap.servers", "localhost:9092"),
            ("group.id", "billing"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "false"),
        ] {
            assert_eq!(client.get(key), Some(value), "{key}");
        }
    }

    #[test]
    fn the_settings_properties_win_over_choreo_and_the_kafka_config() {
        let config = KafkaConfig::new("localhost:9092")
            .property("session.timeout.ms", "20000")
            .property("fetch.max.bytes", "1000");
        let mut settings =
            ConsumerSettings::new("billing", Vec::new()).property("session.timeout.ms", "45000");
        settings.read_committed = false;
        settings.auto_offset_reset = "latest".into();
        let client = client_config(&config, &settings);
        assert_eq!(client.get("session.timeout.ms"), Some("45000"));
        assert_eq!(client.get("fetch.max.bytes"), Some("1000"));
        assert_eq!(client.get("isolation.level"), Some("read_uncommitted"));
        assert_eq!(client.get("auto.offset.reset"), Some("latest"));
    }
}
