//! The schema store: every Avro writer schema, registered before the first record that uses
//! it, looked up by fingerprint by readers that meet a schema they do not know.
//!
//! # Where it lives: a compacted Kafka topic, `choreo.schemas`
//!
//! One partition, `cleanup.policy=compact`, key `{message type}/{fingerprint}`, value a small
//! JSON document (`type`, `fingerprint`, `schema`: the schema text as declared). We chose a
//! topic over a Postgres table because:
//!
//! - every part that writes or reads Avro already has Kafka, and only some have Postgres
//!   (publishers, event handlers, command processors and the `choreo` CLI need no database):
//!   the store adds no dependency to any of them;
//! - the schemas travel with the log they describe: whatever copies or mirrors the cluster's
//!   topics (MirrorMaker, a backup) copies the schemas too, and a log without its schemas
//!   is unreadable;
//! - any client in any language can read it (the records are plain JSON), as with the
//!   envelope itself.
//!
//! Compaction cannot lose a schema: a key is derived from the schema's content, so the only
//! record compaction removes is an identical, older registration of the same key. The costs:
//! a refresh reads the whole topic (thousands of schemas at most, read in milliseconds), and
//! a registration is a produce that waits for `acks=all`.
//!
//! Readers keep every schema they have seen in a process-wide table (see
//! [`crate::codec::avro`]); the store is read only at start and when a record names a fingerprint
//! nobody here knows. If the refresh does not find it either, the partition halts with
//! [`crate::message::EnvelopeError::UnknownSchema`]: the writer is usually newer than this
//! reader and registered its schema somewhere this reader cannot see, and skipping its records
//! would silently drop every one of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode as Code;
use serde::{Deserialize, Serialize};

use crate::codec::avro::{self, AvroSchema, Incompatibility};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::kafka::read_to_end::{Patience, ReadError, read_to_end};

/// The store's topic (under the config's namespace, if any).
pub const TOPIC: &str = "choreo.schemas";

/// How long a refresh may take to read the store to its end.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A schema as the store holds it.
#[derive(Debug, Clone)]
pub struct StoredSchema {
    /// The message type it was registered for (`v1.user.signedup`).
    pub message_type: String,
    /// The writer schema, parsed.
    pub schema: Arc<AvroSchema>,
}

impl StoredSchema {
    /// The writer fingerprint records carry in their header.
    pub fn fingerprint(&self) -> u64 {
        self.schema.fingerprint
    }
}

/// The value of a store record.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    #[serde(rename = "type")]
    message_type: String,
    /// Hex, as in error messages and `choreo schemas list`; checked against the schema.
    fingerprint: String,
    schema: String,
}

/// Registers and looks up Avro writer schemas. Cheap to clone; clones share one producer and
/// one view of the store.
#[derive(Clone)]
pub struct SchemaStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    topic: String,
    /// Created on the first registration: readers never need one.
    producer: Mutex<Option<FutureProducer>>,
    /// What the last refresh read, in store order.
    stored: Mutex<Vec<StoredSchema>>,
    /// Registrations done by this store: fingerprint -> (type, schema text) (checked per Avro
    /// record sent, so looked up without allocating).
    registered: Mutex<HashMap<u64, Vec<(String, String)>>>,
    /// One refresh or registration at a time; callers that waited reuse a fresh result.
    busy: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for SchemaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaStore")
            .field("topic", &self.inner.topic)
            .finish_non_exhaustive()
    }
}

impl SchemaStore {
    /// The store of the cluster (and namespace) `config` points at. Connects lazily.
    pub fn new(config: &KafkaConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                topic: config.topic_name(TOPIC),
                producer: Mutex::new(None),
                stored: Mutex::new(Vec::new()),
                registered: Mutex::new(HashMap::new()),
                busy: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The store's topic name.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// Reads the whole store, makes every schema in it known to this process and returns how
    /// many there are.
    pub async fn refresh(&self) -> Result<usize> {
        let mut busy = self.inner.busy.lock().await;
        self.refresh_locked(&mut busy).await
    }

    /// Refreshes unless another caller finished a refresh after `since`; for readers that
    /// met an unknown fingerprint at the same time (one read of the store serves them all).
    pub async fn refresh_if_older(&self, since: Instant) -> Result<usize> {
        let mut busy = self.inner.busy.lock().await;
        if let Some(done) = *busy
            && done > since
        {
            return Ok(self.lock_stored().len());
        }
        self.refresh_locked(&mut busy).await
    }

    async fn refresh_locked(&self, busy: &mut Option<Instant>) -> Result<usize> {
        let config = self.inner.config.clone();
        let topic = self.inner.topic.clone();
        let values = tokio::task::spawn_blocking(move || read_all(&config, &topic))
            .await
            .map_err(|e| Error::TaskFailed {
                task: "schema store read task".into(),
                reason: e.to_string(),
            })??;
        let mut stored = Vec::with_capacity(values.len());
        for (offset, value) in values {
            match parse_record(&value) {
                Ok(found) => {
                    avro::remember(Arc::clone(&found.schema));
                    stored.push(found);
                }
                // Someone wrote garbage into the store. Every schema that is there is still
                // usable; the bad record is reported, and a record that needs it halts.
                Err(reason) => tracing::warn!(
                    topic = %self.inner.topic, offset, %reason,
                    "ignoring an unreadable schema store record"
                ),
            }
        }
        let count = stored.len();
        *self.lock_stored() = stored;
        *busy = Some(Instant::now());
        Ok(count)
    }

    /// Every schema in the store (read afresh), in registration order.
    pub async fn list(&self) -> Result<Vec<StoredSchema>> {
        self.refresh().await?;
        Ok(self.lock_stored().clone())
    }

    /// Checks a new schema for `message_type` against every stored version of that type in
    /// both directions (see [`avro::check_compatibility`]); empty means compatible.
    pub async fn check(&self, message_type: &str, schema: &str) -> Result<Vec<Incompatibility>> {
        let new = AvroSchema::parse(schema).map_err(|e| Error::SchemaInvalid {
            message_type: message_type.to_owned(),
            reason: e.to_string(),
        })?;
        self.refresh().await?;
        Ok(avro::check_compatibility(
            &new,
            &self.versions_of(message_type),
        ))
    }

    /// Registers `schema` as a writer schema of `message_type`, after checking it against the
    /// stored versions; idempotent. Returns the fingerprint.
    pub async fn register(&self, message_type: &str, schema: &str) -> Result<u64> {
        let new = Arc::new(AvroSchema::parse(schema).map_err(|e| Error::SchemaInvalid {
            message_type: message_type.to_owned(),
            reason: e.to_string(),
        })?);
        // Same type and same text: done (the same fingerprint with other defaults is not).
        let done = self
            .lock_registered()
            .get(&new.fingerprint)
            .is_some_and(|found| {
                found
                    .iter()
                    .any(|(t, text)| t == message_type && *text == new.text)
            });
        if done {
            return Ok(new.fingerprint);
        }
        let mut busy = self.inner.busy.lock().await;
        self.refresh_locked(&mut busy).await?;
        let versions = self.versions_of(message_type);
        // Checked even when the fingerprint is stored already: the canonical form (and so the
        // fingerprint) leaves defaults out, and a default decides whether old data can be read.
        let problems = avro::check_compatibility(&new, &versions);
        if !problems.is_empty() {
            return Err(Error::SchemaIncompatible {
                message_type: message_type.to_owned(),
                fingerprint: new.fingerprint,
                problems: problems.iter().map(ToString::to_string).collect(),
            });
        }
        if !versions.iter().any(|v| v.fingerprint == new.fingerprint) {
            self.write(message_type, &new).await?;
            self.lock_stored().push(StoredSchema {
                message_type: message_type.to_owned(),
                schema: Arc::clone(&new),
            });
        }
        avro::remember(Arc::clone(&new));
        self.lock_registered()
            .entry(new.fingerprint)
            .or_default()
            .push((message_type.to_owned(), new.text.clone()));
        Ok(new.fingerprint)
    }

    /// Whether this store already registered `fingerprint` for `message_type` (no I/O).
    pub fn is_registered(&self, message_type: &str, fingerprint: u64) -> bool {
        self.lock_registered()
            .get(&fingerprint)
            .is_some_and(|found| found.iter().any(|(t, _)| t == message_type))
    }

    fn versions_of(&self, message_type: &str) -> Vec<Arc<AvroSchema>> {
        self.lock_stored()
            .iter()
            .filter(|s| s.message_type == message_type)
            .map(|s| Arc::clone(&s.schema))
            .collect()
    }

    async fn write(&self, message_type: &str, schema: &AvroSchema) -> Result<()> {
        self.ensure_topic().await?;
        let producer = {
            let mut slot = self
                .inner
                .producer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match &*slot {
                Some(p) => p.clone(),
                None => {
                    let p: FutureProducer = self
                        .inner
                        .config
                        .client_config(&[("enable.idempotence", "true"), ("acks", "all")])
                        .create()
                        .map_err(|e| Error::ClientCreate {
                            client: "producer",
                            source: e,
                        })?;
                    *slot = Some(p.clone());
                    p
                }
            }
        };
        let fingerprint = format!("{:016x}", schema.fingerprint);
        let key = format!("{message_type}/{fingerprint}");
        let value = serde_json::to_vec(&Record {
            message_type: message_type.to_owned(),
            fingerprint,
            schema: schema.text.clone(),
        })
        .map_err(|e| Error::SchemaInvalid {
            message_type: message_type.to_owned(),
            reason: format!("schema record: {e}"),
        })?;
        producer
            .send(
                FutureRecord::to(&self.inner.topic)
                    .key(key.as_bytes())
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| Error::kafka("register schema", e))?;
        tracing::info!(topic = %self.inner.topic, %key, "registered Avro schema");
        Ok(())
    }

    /// Creates the store's topic if it is missing: one partition (one order), compacted.
    async fn ensure_topic(&self) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .inner
            .config
            .client_config(&[])
            .create()
            .map_err(|e| Error::ClientCreate {
                client: "admin",
                source: e,
            })?;
        // -1: the broker's default.replication.factor (KIP-464).
        let topic = NewTopic::new(&self.inner.topic, 1, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| Error::kafka("create the schema store topic", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, Code::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::TopicRefused {
                        action: "create",
                        topic,
                        code,
                    });
                }
            }
        }
        Ok(())
    }

    fn lock_stored(&self) -> std::sync::MutexGuard<'_, Vec<StoredSchema>> {
        self.inner
            .stored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_registered(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<(String, String)>>> {
        self.inner
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Parses a store record and checks that its fingerprint is the schema's.
fn parse_record(value: &[u8]) -> std::result::Result<StoredSchema, String> {
    let record: Record =
        serde_json::from_slice(value).map_err(|e| format!("not a schema record: {e}"))?;
    let schema = AvroSchema::parse(&record.schema)?;
    let computed = format!("{:016x}", schema.fingerprint);
    if !record.fingerprint.eq_ignore_ascii_case(&computed) {
        return Err(format!(
            "the record says fingerprint {}, the schema's is {computed}",
            record.fingerprint
        ));
    }
    Ok(StoredSchema {
        message_type: record.message_type,
        schema: Arc::new(schema),
    })
}

/// Reads every record of the store's one partition, from the start to the end as it was
/// when the read began. Blocking: run it off the async threads.
fn read_all(config: &KafkaConfig, topic: &str) -> Result<Vec<(i64, Vec<u8>)>> {
    // Assigned, never subscribed: no group membership, no committed offsets.
    let consumer: BaseConsumer = super::client::reader(
        config,
        "choreo-schema-store-reader",
        &[("enable.auto.offset.store", "false")],
    )
    .create()
    .map_err(|e| Error::ClientCreate {
        client: "consumer",
        source: e,
    })?;
    let (low, high) = match consumer.fetch_watermarks(topic, 0, READ_TIMEOUT) {
        Ok(marks) => marks,
        // No store yet: nothing was ever registered.
        Err(KafkaError::MetadataFetch(Code::UnknownPartition | Code::UnknownTopicOrPartition))
        | Err(KafkaError::MetadataFetch(Code::UnknownTopic)) => return Ok(Vec::new()),
        Err(e) if is_unknown_topic(&e) => return Ok(Vec::new()),
        Err(e) => return Err(Error::kafka("read the schema store", e)),
    };
    if high <= low {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let read = read_to_end(
        &consumer,
        (topic, 0),
        (low, high),
        Patience::Total(READ_TIMEOUT),
        |message| {
            if let Some(value) = message.payload() {
                out.push((message.offset(), value.to_vec()));
            }
            Ok::<_, std::convert::Infallible>(())
        },
    );
    match read {
        Ok(_) => Ok(out),
        Err(ReadError::Assign(e) | ReadError::Poll(e)) => {
            Err(Error::kafka("read the schema store", e))
        }
        Err(ReadError::Stalled { at }) => Err(Error::Timeout {
            what: format!("reading the schema store {topic} (at {at} of {high})"),
            after: READ_TIMEOUT,
        }),
        Err(ReadError::Record(never)) => match never {},
    }
}

fn is_unknown_topic(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition)
    )
}
