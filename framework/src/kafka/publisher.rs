//! The publisher: idempotent, acks=all, the Java clients' partitioner, many sends in flight.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode as Code;
use uuid::Uuid;

use crate::codec;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::message::{Causation, Event, Metadata};

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Producer settings choreo insists on; the user's raw properties can still override them.
pub(crate) const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    // librdkafka defaults idempotence off; on, retries cannot duplicate or reorder.
    ("enable.idempotence", "true"),
    ("acks", "all"),
    // The Java clients' partitioner, so every client puts a key on the same partition.
    ("partitioner", "murmur2_random"),
    ("linger.ms", "5"),
];

/// Why a publish failed, and whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishErrorKind {
    /// Try again with the same [`Outgoing`] (same id): a timeout, a full queue, a leader move.
    Retriable,
    /// The producer or the record cannot succeed: a fatal idempotence error, a missing topic,
    /// an authorization failure.
    Fatal,
    /// The record is bigger than `message.max.bytes`.
    TooLarge,
    /// The payload could not be encoded.
    Encode,
}

/// A failed publish.
#[derive(Debug, Clone, thiserror::Error)]
#[error("publishing {message_id} to {topic} failed ({kind:?}): {reason}")]
pub struct PublishError {
    pub kind: PublishErrorKind,
    pub topic: String,
    pub message_id: Uuid,
    pub reason: String,
}

impl PublishError {
    /// Whether sending the same [`Outgoing`] again may succeed.
    pub fn is_retriable(&self) -> bool {
        self.kind == PublishErrorKind::Retriable
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub id: Uuid,
    pub partition: i32,
    pub offset: i64,
}

/// A record ready to send, with its id fixed: sending it again after a failure reuses the id,
/// so consumers can recognise the retry.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    /// An explicit partition; `None` lets the partitioner choose by key.
    pub partition: Option<i32>,
    pub key: String,
    pub payload: Vec<u8>,
    /// Private: the headers are built from it once, so it cannot change afterwards.
    meta: Metadata,
    headers: OwnedHeaders,
}

impl Outgoing {
    /// A record from metadata and an encoded payload. The key is the subject.
    pub fn new(topic: impl Into<String>, meta: Metadata, payload: Vec<u8>) -> Self {
        let headers = meta.to_headers();
        Self {
            topic: topic.into(),
            partition: None,
            key: meta.subject.clone(),
            payload,
            meta,
            headers,
        }
    }

    /// The attributes this record carries.
    pub fn meta(&self) -> &Metadata {
        &self.meta
    }

    /// Sends to an explicit partition.
    pub fn to_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Key, value and header bytes.
    pub fn size(&self) -> usize {
        use rdkafka::message::Headers;
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum();
        self.key.len() + self.payload.len() + headers
    }
}

/// Publishes events. Cheap to clone; every clone shares one producer.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    producer: FutureProducer,
    source: String,
    config: KafkaConfig,
    max_message_bytes: usize,
    queue_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // librdkafka purges what is still queued when the producer is destroyed.
        if let Err(e) = self.producer.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "publisher flush on shutdown did not finish");
        }
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("source", &self.inner.source)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher for the service `source` (e.g. `/user-service`). Fails with a clear error
    /// when Kafka cannot be reached.
    pub fn new(config: &KafkaConfig, source: impl Into<String>) -> Result<Self> {
        super::check_reachable(config)?;
        let client = config.client_config(PRODUCER_DEFAULTS);
        let max_message_bytes = client
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        let producer: FutureProducer = client
            .create()
            .map_err(|e| Error::Config(format!("kafka producer settings rejected: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                producer,
                source: source.into(),
                config: config.clone(),
                max_message_bytes,
                queue_timeout: Duration::from_secs(30),
            }),
        })
    }

    /// The `ce_source` of what this publisher emits.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Publishes an event that starts a conversation.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Delivered, PublishError> {
        self.send(&self.prepare(event, None)?).await
    }

    /// Publishes an event caused by another message (same correlation id, causation = its id).
    pub async fn publish_caused_by<E: Event>(
        &self,
        event: &E,
        cause: impl Into<Causation>,
    ) -> Result<Delivered, PublishError> {
        self.send(&self.prepare(event, Some(cause.into()))?).await
    }

    /// Builds the record with a fresh UUIDv7 id, without sending it.
    pub fn prepare<E: Event>(
        &self,
        event: &E,
        causation: Option<Causation>,
    ) -> Result<Outgoing, PublishError> {
        let name = E::name();
        let id = Uuid::now_v7();
        let meta = Metadata::new(
            id,
            name.as_str(),
            self.inner.source.as_str(),
            event.subject(),
            Utc::now(),
            causation,
        );
        let topic = self.inner.config.topic_name(&E::topic());
        let payload = codec::encode_json(name.as_str(), event).map_err(|e| PublishError {
            kind: PublishErrorKind::Encode,
            topic: topic.clone(),
            message_id: id,
            reason: e.to_string(),
        })?;
        Ok(Outgoing::new(topic, meta, payload))
    }

    /// Sends a prepared record and resolves to where it landed. Call it for many records at
    /// once (e.g. with `futures::future::join_all`): sends do not wait for each other.
    pub async fn send(&self, out: &Outgoing) -> Result<Delivered, PublishError> {
        let error = |kind, reason: String| PublishError {
            kind,
            topic: out.topic.clone(),
            message_id: out.meta.id,
            reason,
        };
        let size = out.size();
        if size > self.inner.max_message_bytes {
            return Err(error(
                PublishErrorKind::TooLarge,
                format!(
                    "the record has {size} bytes, message.max.bytes is {}",
                    self.inner.max_message_bytes
                ),
            ));
        }
        let mut record = FutureRecord::to(&out.topic)
            .key(out.key.as_bytes())
            .payload(&out.payload)
            .headers(out.headers.clone());
        if let Some(partition) = out.partition {
            record = record.partition(partition);
        }
        match self
            .inner
            .producer
            .send(record, self.inner.queue_timeout)
            .await
        {
            Ok(delivery) => Ok(Delivered {
                id: out.meta.id,
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((e, _)) => {
                let kind = self.classify(&e);
                Err(error(kind, e.to_string()))
            }
        }
    }

    /// Waits until everything sent so far is acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner
            .producer
            .flush(timeout)
            .map_err(|e| Error::kafka("flush", e))
    }

    fn classify(&self, error: &KafkaError) -> PublishErrorKind {
        if self.inner.producer.client().fatal_error().is_some() {
            return PublishErrorKind::Fatal;
        }
        classify(error)
    }
}

/// Sorts a produce error into retriable, fatal and too large.
pub(crate) fn classify(error: &KafkaError) -> PublishErrorKind {
    match error.rdkafka_error_code() {
        Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize) => PublishErrorKind::TooLarge,
        Some(
            Code::UnknownTopicOrPartition
            | Code::UnknownTopic
            | Code::UnknownPartition
            | Code::InvalidTopic
            | Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::TransactionalIdAuthorizationFailed
            | Code::InvalidRecord
            | Code::InvalidRequiredAcks
            | Code::Fatal
            | Code::Fenced
            | Code::ProducerFenced
            | Code::OutOfOrderSequenceNumber
            | Code::UnsupportedVersion
            | Code::PurgeQueue
            | Code::PurgeInflight,
        ) => PublishErrorKind::Fatal,
        _ => PublishErrorKind::Retriable,
    }
}
