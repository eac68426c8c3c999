//! The publisher: idempotent, acks=all, the Java clients' partitioner, many sends in flight.
//!
//! After a fatal error of its producer the publisher builds a new one (see
//! [`super::renewing`]): the failed sends are reported to their callers, never resent.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};

use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureRecord, Producer};

use uuid::Uuid;

use crate::backoff::Backoff;
use crate::codec;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::message::{Causation, Metadata};

use super::client::PRODUCER_DEFAULTS;
use super::renewing::RenewingProducer;
use crate::error::{PublishError, PublishErrorKind};

/// Sends of one record by `publish` before it reports a retriable failure: the first, and two
/// more with the same id after 100 ms and 400 ms.
pub const PUBLISH_ATTEMPTS: u32 = 3;

/// The wait before each resend: 100 ms, then 400 ms (times 4 per try), with jitter.
const RESEND: Backoff =
    Backoff::doubling(Duration::from_millis(100), Duration::from_millis(1600)).times(4);

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The message id (`ce_id`) it was sent with.
    pub id: Uuid,
    /// The partition it landed in.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
}

/// A record ready to send, with its id fixed: sending it again after a failure reuses the id,
/// so consumers can recognise the retry.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The topic to send to.
    pub topic: String,
    /// An explicit partition; `None` lets the partitioner choose by key.
    pub partition: Option<i32>,
    /// The record key: the subject (readers reject a record whose key differs from it).
    pub key: String,
    /// The encoded payload: the record value.
    pub payload: Vec<u8>,
    /// Private: the headers are built from it once, so it cannot change afterwards.
    meta: Metadata,
    headers: OwnedHeaders,
    header_bytes: usize,
}

impl Outgoing {
    /// A record from metadata and an encoded payload. The key is the subject.
    pub fn new(topic: impl Into<String>, meta: Metadata, payload: Vec<u8>) -> Self {
        let (headers, header_bytes) = meta.to_headers_sized();
        Self {
            topic: topic.into(),
            partition: None,
            key: meta.subject.clone(),
            payload,
            meta,
            headers,
            header_bytes,
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
        self.key.len() + self.payload.len() + self.header_bytes
    }
}

/// Publishes events. Cheap to clone; every clone shares one producer.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    /// The idempotent producer, replaced after a fatal error.
    producer: Arc<RenewingProducer>,
    source: String,
    config: KafkaConfig,
    max_message_bytes: usize,
    queue_timeout: Duration,
    /// Where Avro writer schemas are registered before their first record.
    schemas: crate::kafka::SchemaStore,
    /// Namespaced topic per event type: derived once, not per message.
    topics: std::sync::RwLock<std::collections::HashMap<&'static str, Arc<str>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // librdkafka purges what is still queued when the producer is destroyed.
        if let Err(e) = self.producer.current().flush(Duration::from_secs(10)) {
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
        Self::build(config, source)
    }

    /// The publisher without the reachability check (librdkafka connects lazily).
    fn build(config: &KafkaConfig, source: impl Into<String>) -> Result<Self> {
        let client = config.client_config(PRODUCER_DEFAULTS);
        let max_message_bytes = client
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        let producer = Arc::new(RenewingProducer::new(client, "publisher")?);
        Ok(Self {
            inner: Arc::new(Inner {
                producer,
                source: source.into(),
                config: config.clone(),
                max_message_bytes,
                queue_timeout: Duration::from_secs(30),
                schemas: crate::kafka::SchemaStore::new(config),
                topics: Default::default(),
            }),
        })
    }

    /// The `ce_source` of what this publisher emits.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Publishes an event that starts a conversation. A retriable failure (a timeout, a
    /// producer replaced after a fatal error) is retried here with the same id, up to
    /// [`PUBLISH_ATTEMPTS`] sends in all; an error returned is final for this id. A caller that
    /// must retry further without a second id uses [`Publisher::prepare`] and
    /// [`Publisher::send`] instead: calling `publish` again mints a new id.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Delivered, PublishError> {
        self.publish_with(event, None).await
    }

    /// Publishes an event caused by another message (same correlation id, causation = its id);
    /// retried like [`Publisher::publish`].
    pub async fn publish_caused_by<E: Event>(
        &self,
        event: &E,
        cause: impl Into<Causation>,
    ) -> Result<Delivered, PublishError> {
        self.publish_with(event, Some(cause.into())).await
    }

    /// The hot path: headers straight from borrowed fields, no owned `Metadata`, the topic
    /// cached per type, the headers moved (not copied) into the producer.
    async fn publish_with<E: Event>(
        &self,
        event: &E,
        causation: Option<Causation>,
    ) -> Result<Delivered, PublishError> {
        let () = E::VALID;
        let topic = self.topic_of::<E>();
        let id = Uuid::now_v7();
        let error = |kind, reason: String| PublishError {
            kind,
            topic: topic.to_string(),
            message_id: id,
            reason,
        };
        let subject = event.subject();
        // A const per type: the JSON path pays nothing for Avro.
        let (content_type, payload) = if E::AVRO_SCHEMA.is_none() {
            let payload = codec::encode_json(E::NAME, event)
                .map_err(|e| error(PublishErrorKind::Encode, e.to_string()))?;
            (codec::JSON, payload)
        } else {
            let encoded = crate::event::encode_event(event)
                .map_err(|e| error(PublishErrorKind::Encode, e.to_string()))?;
            self.ensure_registered(E::NAME, encoded.1.as_slice(), E::AVRO_SCHEMA)
                .await
                .map_err(|e| error(registration_error_kind(&e), e.to_string()))?;
            encoded
        };
        let causation = causation.unwrap_or(Causation {
            correlation_id: id,
            causation_id: id,
        });
        let time = Utc::now().trunc_subsecs(6);
        let (headers, header_bytes) = crate::message::core_headers(
            id,
            None,
            E::NAME,
            &self.inner.source,
            &subject,
            time,
            content_type,
            causation,
            9,
        );
        let size = subject.len() + payload.len() + header_bytes;
        if size > self.inner.max_message_bytes {
            return Err(error(
                PublishErrorKind::TooLarge,
                format!(
                    "the record has {size} bytes, message.max.bytes is {}",
                    self.inner.max_message_bytes
                ),
            ));
        }
        let record = FutureRecord::to(&topic)
            .key(subject.as_bytes())
            .payload(&payload)
            .headers(headers);
        match self.produce(record).await {
            Ok((partition, offset)) => Ok(Delivered {
                id,
                partition,
                offset,
            }),
            Err((PublishErrorKind::Retriable, reason)) => {
                // The same record again (same id and time): the retry a caller would otherwise
                // make with a new id, and so a duplicate its consumers could not recognise.
                let mut meta = Metadata::new(
                    id,
                    E::NAME,
                    self.inner.source.as_str(),
                    subject,
                    time,
                    Some(causation),
                );
                content_type.clone_into(&mut meta.content_type);
                let out = Outgoing::new(topic.to_string(), meta, payload);
                self.send_again(&out, error(PublishErrorKind::Retriable, reason))
                    .await
            }
            Err((kind, reason)) => Err(error(kind, reason)),
        }
    }

    /// Sends `out` again after `failed`, a retriable failure, up to [`PUBLISH_ATTEMPTS`] in all,
    /// with a short back-off; the last failure is returned.
    async fn send_again(
        &self,
        out: &Outgoing,
        mut failed: PublishError,
    ) -> Result<Delivered, PublishError> {
        for attempt in 1..PUBLISH_ATTEMPTS {
            tokio::time::sleep(RESEND.delay(attempt - 1)).await;
            tracing::warn!(id = %out.meta.id, topic = %out.topic, attempt, reason = %failed.reason,
                "publish failed; sending the same record again");
            match self.send(out).await {
                Ok(delivered) => return Ok(delivered),
                Err(e) if e.is_retriable() => failed = e,
                Err(e) => return Err(e),
            }
        }
        Err(failed)
    }

    /// Builds the record with a fresh UUIDv7 id, without sending it.
    pub fn prepare<E: Event>(
        &self,
        event: &E,
        causation: Option<Causation>,
    ) -> Result<Outgoing, PublishError> {
        // The name was checked at compile time (E::VALID): no parsing per message.
        let () = E::VALID;
        let name = E::NAME;
        let id = Uuid::now_v7();
        let mut meta = Metadata::new(
            id,
            name,
            self.inner.source.as_str(),
            event.subject(),
            Utc::now(),
            causation,
        );
        let topic = self.topic_of::<E>().to_string();
        let (content_type, payload) =
            crate::event::encode_event(event).map_err(|e| PublishError {
                kind: PublishErrorKind::Encode,
                topic: topic.clone(),
                message_id: id,
                reason: e.to_string(),
            })?;
        content_type.clone_into(&mut meta.content_type);
        Ok(Outgoing::new(topic, meta, payload))
    }

    /// The namespaced topic of an event type, cached per type.
    fn topic_of<E: Event>(&self) -> Arc<str> {
        let cached = self
            .inner
            .topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(E::NAME)
            .cloned();
        cached.unwrap_or_else(|| {
            let topic: Arc<str> = Arc::from(self.inner.config.topic_name(&E::topic()));
            self.inner
                .topics
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(E::NAME, Arc::clone(&topic));
            topic
        })
    }

    /// Sends a prepared record and resolves to where it landed. Call it for many records at
    /// once (e.g. with `futures::future::join_all`): sends do not wait for each other. Sending
    /// the same `Outgoing` again after a failure reuses its id.
    pub async fn send(&self, out: &Outgoing) -> Result<Delivered, PublishError> {
        if out.meta.content_type == codec::AVRO {
            self.ensure_registered(&out.meta.message_type, &out.payload, None)
                .await
                .map_err(|e| PublishError {
                    kind: registration_error_kind(&e),
                    topic: out.topic.clone(),
                    message_id: out.meta.id,
                    reason: e.to_string(),
                })?;
        }
        self.deliver(out, out.headers.clone()).await
    }

    /// Registers the writer schema of an Avro payload in the schema store before its first
    /// record is sent (readers elsewhere must be able to find it). Once per schema and type.
    /// `declared`: the type's schema text, when known (else the one this process knows under
    /// the payload's fingerprint).
    async fn ensure_registered(
        &self,
        message_type: &str,
        payload: &[u8],
        declared: Option<&str>,
    ) -> Result<()> {
        let (fingerprint, _) =
            codec::avro::split_header(payload).map_err(|reason| Error::SchemaInvalid {
                message_type: message_type.to_owned(),
                reason,
            })?;
        if self.inner.schemas.is_registered(message_type, fingerprint) {
            return Ok(());
        }
        let text = match declared {
            Some(text) => text.to_owned(),
            None => codec::avro::known(fingerprint)
                .ok_or_else(|| Error::SchemaUnknown {
                    message_type: message_type.to_owned(),
                    fingerprint,
                })?
                .text
                .clone(),
        };
        self.inner
            .schemas
            .register(message_type, &text)
            .await
            .map(|_| ())
    }

    async fn deliver(
        &self,
        out: &Outgoing,
        headers: OwnedHeaders,
    ) -> Result<Delivered, PublishError> {
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
            .headers(headers);
        if let Some(partition) = out.partition {
            record = record.partition(partition);
        }
        let (partition, offset) = self
            .produce(record)
            .await
            .map_err(|(kind, reason)| error(kind, reason))?;
        Ok(Delivered {
            id: out.meta.id,
            partition,
            offset,
        })
    }

    /// Sends one record; a fatal producer error replaces the producer first (see
    /// [`RenewingProducer::send`]).
    async fn produce(
        &self,
        record: FutureRecord<'_, [u8], Vec<u8>>,
    ) -> Result<(i32, i64), (PublishErrorKind, String)> {
        self.inner
            .producer
            .send(record, self.inner.queue_timeout)
            .await
    }

    /// Producers replaced after a fatal error since this publisher was created.
    pub fn producer_replacements(&self) -> u64 {
        self.inner.producer.replacements()
    }

    /// Waits until everything sent so far is acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner
            .producer
            .current()
            .flush(timeout)
            .map_err(|e| Error::kafka("flush", e))
    }
}

/// A schema the store refuses (incompatible, invalid) will be refused again: fatal. The store
/// not answering (a timeout, a broker move) may pass: retriable.
fn registration_error_kind(error: &Error) -> PublishErrorKind {
    match error {
        Error::Config(_)
        | Error::ClientCreate { .. }
        | Error::TopicRefused { .. }
        | Error::SchemaInvalid { .. }
        | Error::SchemaUnknown { .. }
        | Error::SchemaIncompatible { .. } => PublishErrorKind::Fatal,
        _ => PublishErrorKind::Retriable,
    }
}
