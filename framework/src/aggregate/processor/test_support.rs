//! For the unit tests: a small aggregate, a processor's shared state without a broker, and
//! command and event records as they come off the wire.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Utc};
use rdkafka::ClientConfig;
use rdkafka::message::{OwnedMessage, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Shared, status::ProcessorStatus};
use crate::aggregate::extensions;
use crate::aggregate::{Aggregate, Rejection};
use crate::kafka::{Record, partition_for_key};
use crate::message::Metadata;
use crate::shutdown::Shutdown;

/// Partitions of the test topics.
pub(super) const PARTITIONS: i32 = 2;
pub(super) const EVENTS_TOPIC: &str = "tally.events";
pub(super) const COMMANDS_TOPIC: &str = "tally.commands";
/// A reply topic the processor knows (no broker is asked about it).
pub(super) const REPLY_TOPIC: &str = "sender.replies";

/// Adds `amount` to a tally, `times` times (one event each).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Add {
    pub(super) key: String,
    pub(super) amount: i64,
    pub(super) times: usize,
}

impl crate::Command for Add {
    const NAME: &'static str = "v1.tally.add";
    fn subject(&self) -> String {
        self.key.clone()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Added {
    pub(super) key: String,
    pub(super) amount: i64,
}

impl crate::Event for Added {
    const NAME: &'static str = "v1.tally.added";
    fn subject(&self) -> String {
        self.key.clone()
    }
}

/// Rejects 0, panics deciding 13, panics applying 666.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Tally {
    pub(super) total: i64,
}

impl Aggregate for Tally {
    type Command = Add;
    type Event = Added;

    fn decide(&self, command: &Add) -> Result<Vec<Added>, Rejection> {
        match command.amount {
            0 => Err(Rejection::new("zero", "nothing to add")),
            13 => panic!("unlucky"),
            amount => Ok(vec![
                Added {
                    key: command.key.clone(),
                    amount,
                };
                command.times
            ]),
        }
    }

    fn apply(&mut self, event: &Added) {
        assert!(event.amount != 666, "cursed");
        self.total += event.amount;
    }
}

/// A processor's shared state, as `run` makes it, without a broker: the restore consumer
/// has no servers to talk to, and the reply topic is known already.
pub(super) fn shared() -> Shared<Tally> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    });
    Shared {
        group: "sender".into(),
        source: "/tally-service".into(),
        commands_topic: COMMANDS_TOPIC.into(),
        events_topic: EVENTS_TOPIC.into(),
        dlq_topic: "tally-service.dlq".into(),
        partitions: PARTITIONS,
        state: Mutex::new(HashMap::new()),
        halted: Mutex::new(HashMap::new()),
        status: ProcessorStatus::default(),
        restore: ClientConfig::new()
            .set("group.id", "tally-service.restore")
            .create()
            .expect("a consumer without servers"),
        fatal: Mutex::new(None),
        shutdown: Shutdown::new(),
        stopped: AtomicBool::new(false),
        handle: runtime.handle().clone(),
        rebalances: AtomicU64::new(0),
        assigned_at: Mutex::new(HashMap::new()),
        snapshots: None,
        since_snapshot: Mutex::new(HashMap::new()),
        reply_topics: Mutex::new(HashMap::from([(REPLY_TOPIC.to_owned(), 2)])),
        parked: Mutex::new(HashMap::new()),
    }
}

/// A key murmur2 puts on partition `p`.
pub(super) fn key_on(p: i32) -> String {
    (0..)
        .map(|n| format!("tally-{n}"))
        .find(|key| partition_for_key(key.as_bytes(), PARTITIONS) == p)
        .expect("some key lands on every partition")
}

/// The envelope of an `Add` for `key`, answered to [`REPLY_TOPIC`] partition 1.
pub(super) fn add_meta(key: &str) -> Metadata {
    let mut meta = Metadata::new(
        Uuid::new_v4(),
        <Add as crate::Command>::NAME,
        "/sender",
        key,
        Utc::now(),
        None,
    );
    meta.extensions
        .insert(extensions::REPLY_TO.into(), REPLY_TOPIC.into());
    meta.extensions
        .insert(extensions::REPLY_PARTITION.into(), "1".into());
    meta
}

/// `Add { key, amount, times }` as a consumed command record at `p`@`offset`.
pub(super) fn add(meta: &Metadata, amount: i64, times: usize, p: i32, offset: i64) -> Record {
    let payload = serde_json::to_vec(&Add {
        key: meta.subject.clone(),
        amount,
        times,
    })
    .expect("encodes");
    record(COMMANDS_TOPIC, meta, Some(payload), p, offset)
}

/// A consumed record with `meta`'s headers.
pub(super) fn record(
    topic: &str,
    meta: &Metadata,
    payload: Option<Vec<u8>>,
    p: i32,
    offset: i64,
) -> Record {
    Record::copy(&message(topic, meta, payload, p, offset), Arc::from(topic))
}

/// A message as librdkafka hands it over, with `meta`'s headers.
pub(super) fn message(
    topic: &str,
    meta: &Metadata,
    payload: Option<Vec<u8>>,
    p: i32,
    offset: i64,
) -> OwnedMessage {
    OwnedMessage::new(
        payload,
        Some(meta.subject.clone().into_bytes()),
        topic.into(),
        Timestamp::CreateTime(meta.time.timestamp_millis()),
        p,
        offset,
        Some(meta.to_headers()),
    )
}

/// The event `Added { key, amount }` at sequence `sequence`, caused by `command`, as a
/// consumed record of the events topic.
pub(super) fn added(
    command: &Metadata,
    amount: i64,
    sequence: u64,
    p: i32,
    offset: i64,
    time: DateTime<Utc>,
) -> OwnedMessage {
    let mut meta = Metadata::new(
        Uuid::new_v4(),
        <Added as crate::Event>::NAME,
        "/tally-service",
        command.subject.as_str(),
        time,
        Some(crate::Causation::from_cause(command)),
    );
    meta.sequence = Some(sequence);
    let payload = serde_json::to_vec(&Added {
        key: command.subject.clone(),
        amount,
    })
    .expect("encodes");
    message(EVENTS_TOPIC, &meta, Some(payload), p, offset)
}
