//! Client-level helpers: the settings choreo gives its producers, reachability checks and
//! the Java clients' partitioner.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};

/// Producer settings choreo insists on; the user's raw properties can still override them.
pub(crate) const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    // librdkafka defaults idempotence off; on, retries cannot duplicate or reorder.
    ("enable.idempotence", "true"),
    ("acks", "all"),
    // The Java clients' partitioner, so every client puts a key on the same partition.
    ("partitioner", "murmur2_random"),
    ("linger.ms", "5"),
];

/// Fails with [`Error::KafkaUnreachable`] unless the cluster answers a metadata request, or
/// with [`Error::KafkaRefused`] when the TLS handshake or the SASL authentication failed, with
/// librdkafka's reason (which never holds the password), not just "transport failure".
pub fn check_reachable(config: &KafkaConfig) -> Result<()> {
    let timeout = config.connect_timeout_value();
    let consumer: BaseConsumer<ConnectErrors> = config
        .client_config(&[(
            "socket.connection.setup.timeout.ms",
            &timeout.as_millis().to_string(),
        )])
        .create_with_context(ConnectErrors::default())
        .map_err(|e| Error::ClientCreate {
            client: "client",
            source: e,
        })?;
    let error = match consumer.fetch_metadata(None, timeout.max(Duration::from_millis(100))) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    // The metadata error says only "transport failure" when the TLS handshake or the SASL
    // authentication failed: the client's error callback, served by polling, has the cause.
    let mut refused = None;
    for _ in 0..2 {
        let _ = consumer.poll(Duration::from_millis(100));
        refused = consumer.context().refused();
        if refused.is_some() {
            break;
        }
    }
    let brokers = config.brokers().to_owned();
    Err(match refused {
        Some(reason) => Error::KafkaRefused { brokers, reason },
        None => Error::KafkaUnreachable {
            brokers,
            reason: error.to_string(),
        },
    })
}

/// [`check_reachable`] off the async threads (its metadata request blocks for up to the
/// connect timeout): for `run` methods and other async callers.
pub async fn check_reachable_async(config: &KafkaConfig) -> Result<()> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || check_reachable(&config))
        .await
        .map_err(|e| Error::TaskFailed {
            task: "the reachability check".into(),
            reason: e.to_string(),
        })?
}

/// Records the first TLS or SASL failure the client reports while [`check_reachable`] waits.
#[derive(Default)]
struct ConnectErrors {
    refused: Mutex<Option<String>>,
}

impl ConnectErrors {
    fn refused(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }
}

impl ClientContext for ConnectErrors {
    fn error(&self, error: KafkaError, reason: &str) {
        // A refused client certificate arrives as a transport failure with an SSL alert.
        let tls_or_sasl = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL) => true,
            Some(RDKafkaErrorCode::BrokerTransportFailure) => reason.contains("SSL"),
            _ => false,
        };
        if tls_or_sasl && let Ok(mut refused) = self.refused.lock() {
            refused.get_or_insert_with(|| format!("{error}: {reason}"));
        }
    }
}

impl ConsumerContext for ConnectErrors {}

/// The partition the Java clients (and librdkafka's `murmur2_random`) choose for a key:
/// `(murmur2(key) & 0x7fffffff) % partitions`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    let hash = murmur2(key) & 0x7fff_ffff;
    (hash % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 (seed 0x9747b28c), as in `org.apache.kafka.common.utils.Utils.murmur2`.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// Settings shared by every client choreo creates, before the user's raw properties.
pub(crate) fn base(config: &KafkaConfig, extra: &[(&str, &str)]) -> ClientConfig {
    config.client_config(extra)
}

/// Settings of a member of a consumer group that subscribes (the consumer runtime, the
/// command processor, reactors): cooperative rebalances, committed transactions only, offsets
/// stored by choreo (never on poll), a 10 s session. Callers add the group and what differs.
pub(crate) const MEMBER_DEFAULTS: &[(&str, &str)] = &[
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("isolation.level", "read_committed"),
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
    ("enable.partition.eof", "false"),
];

/// Settings of a reader that assigns partitions itself (restores, rebuilds, the bus's reply
/// reader, the schema store): it never joins its group (librdkafka wants a `group.id` even for
/// `assign`) and never commits; committed transactions only.
pub(crate) const READER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("isolation.level", "read_committed"),
    ("enable.partition.eof", "false"),
];

/// Settings of a transactional producer (the command processor, reactors), besides its
/// `transactional.id`: idempotent, `acks=all`, transactions that time out after 10 s.
pub(crate) const TRANSACTIONAL_DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("transaction.timeout.ms", "10000"),
];

/// `defaults`, then `extra` (which wins over them), then the user's raw properties.
fn with_defaults(
    config: &KafkaConfig,
    defaults: &[(&str, &str)],
    extra: &[(&str, &str)],
) -> ClientConfig {
    let all: Vec<(&str, &str)> = defaults.iter().chain(extra).copied().collect();
    config.client_config(&all)
}

/// A group member of `group` ([`MEMBER_DEFAULTS`] then `extra`).
pub(crate) fn member(config: &KafkaConfig, group: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut defaults = vec![("group.id", group)];
    defaults.extend_from_slice(MEMBER_DEFAULTS);
    with_defaults(config, &defaults, extra)
}

/// An assigning reader whose (never joined) group is `group` ([`READER_DEFAULTS`] then
/// `extra`).
pub(crate) fn reader(config: &KafkaConfig, group: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut defaults = vec![("group.id", group)];
    defaults.extend_from_slice(READER_DEFAULTS);
    with_defaults(config, &defaults, extra)
}

/// A transactional producer with `transactional.id` = `id` ([`TRANSACTIONAL_DEFAULTS`] then
/// `extra`).
pub(crate) fn transactional(
    config: &KafkaConfig,
    id: &str,
    extra: &[(&str, &str)],
) -> ClientConfig {
    let mut defaults = vec![("transactional.id", id)];
    defaults.extend_from_slice(TRANSACTIONAL_DEFAULTS);
    with_defaults(config, &defaults, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_client_gets_its_defaults_and_the_caller_s_extras_win() {
        let config = KafkaConfig::new("localhost:9092");
        let member = member(&config, "billing", &[("enable.auto.commit", "true")]);
        assert_eq!(member.get("group.id"), Some("billing"));
        assert_eq!(member.get("enable.auto.commit"), Some("true"));
        assert_eq!(member.get("isolation.level"), Some("read_committed"));
        assert_eq!(
            member.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        let reader = reader(&config, "x.rebuild", &[("fetch.wait.max.ms", "10")]);
        assert_eq!(reader.get("group.id"), Some("x.rebuild"));
        assert_eq!(reader.get("enable.auto.commit"), Some("false"));
        assert_eq!(reader.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(reader.get("session.timeout.ms"), None);
        let producer = transactional(&config, "svc-0", &[("linger.ms", "1")]);
        assert_eq!(producer.get("transactional.id"), Some("svc-0"));
        assert_eq!(producer.get("transaction.timeout.ms"), Some("10000"));
        assert_eq!(producer.get("linger.ms"), Some("1"));
    }

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from the Java client's UtilsTest / DefaultPartitionerTest.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }
}
