//! The command processor: the single writer of an entity's events.
//!
//! Everything runs on one dedicated thread that owns the command consumer and the
//! transactional producer: rebalance callbacks (and so restores) run inside `poll`, and a
//! transaction is never open while we poll, so a revoke never meets an open transaction.
//! Transactions and flushes stay off the async threads.
//!
//! Per batch of polled commands, one Kafka transaction holds: the events (explicit partition
//! = the command's partition, `ce_sequence` = aggregate version, causation = command id), the
//! replies to the senders' reply partitions, dead letters, and the command offsets with fresh
//! consumer group metadata. Changed aggregate states live in an overlay merged only on
//! commit, so an aborted transaction leaves no trace in memory either.
//!
//! Errors: an abortable transaction error aborts and rewinds the consumer to the batch start;
//! fencing (another instance with our transactional id) stops this processor cleanly and
//! never recreates it; any other transaction error has an unknown outcome (a timed-out commit
//! may still land later): a fresh producer with the same transactional id fences the old one,
//! then every owned partition is restored from what was committed.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;

use crate::kafka::{Keep, Record, dead_letter_parts};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::reply::{EventRef, Outcome, REPLY_TYPE};
use super::snapshot::{self, SnapshotSettings, StoredAggregate};
use super::{Aggregate, Rejection};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::kafka::consumer::{forward_log, panic_message};
use crate::kafka::partition_for_key;
use crate::kafka::transaction::{
    TxError, TxRecord, abort_and_rewind, await_deliveries, check_consumer, classify,
    classify_commit, collect_batch, rewind, send, sole_input, starts,
};
use crate::message::{CommandSet, EventSet, Metadata, WireRecord};
use crate::shutdown::Shutdown;

/// Producer replacements in a row (no commit between them) before the processor gives up:
/// an error that survives a fresh producer and a restore is not going away.
const MAX_REPLACEMENTS: u32 = 5;

/// How many recent command ids each aggregate remembers (duplicates get the first outcome).
const RECENT_COMMANDS: usize = 64;

/// What a running processor reports.
#[derive(Debug, Clone, Default)]
pub struct ProcessorStatus {
    inner: Arc<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    ready: Mutex<Vec<i32>>,
    halted: Mutex<Vec<(i32, String)>>,
    membership: Mutex<Membership>,
    aggregates: AtomicU64,
    transactions: AtomicU64,
    restored_events: AtomicU64,
    snapshots_loaded: AtomicU64,
    snapshots_written: AtomicU64,
    producer_restarts: AtomicU64,
    parked_reused: AtomicU64,
    foreign_skipped: AtomicU64,
}

impl ProcessorStatus {
    /// Partitions restored and being handled.
    pub fn ready_partitions(&self) -> Vec<i32> {
        let mut out = lock(&self.inner.ready).clone();
        out.sort_unstable();
        out
    }

    /// Partitions assigned whose restore has not finished yet (commands for them wait).
    pub fn restoring_partitions(&self) -> Vec<i32> {
        let mut out = lock(&self.inner.membership).restoring.clone();
        out.sort_unstable();
        out
    }

    /// Partitions halted (restore found a gap or an unknown event, ...), with the reason.
    pub fn halted(&self) -> Vec<(i32, String)> {
        lock(&self.inner.halted).clone()
    }

    /// Ready for traffic: the processor has joined its group (its first assignment was
    /// handled, even an empty one: an instance with no partitions can still send commands to
    /// the others), no assigned partition is still restoring, and nothing is halted. False
    /// before the run starts and after it ends: a readiness probe sends no traffic to an
    /// instance that cannot answer yet.
    pub fn is_ready(&self) -> bool {
        let membership = lock(&self.inner.membership);
        membership.joined && membership.restoring.is_empty() && lock(&self.inner.halted).is_empty()
    }

    /// Aggregates held in memory (the memory bound is this times the state size).
    pub fn aggregates_in_memory(&self) -> u64 {
        self.inner.aggregates.load(Ordering::Relaxed)
    }

    /// Committed transactions so far.
    pub fn transactions(&self) -> u64 {
        self.inner.transactions.load(Ordering::Relaxed)
    }

    /// Events read by restores so far (a snapshot shortens this to the partition's tail).
    pub fn restored_events(&self) -> u64 {
        self.inner.restored_events.load(Ordering::Relaxed)
    }

    /// Restores that started from a snapshot.
    pub fn snapshots_loaded(&self) -> u64 {
        self.inner.snapshots_loaded.load(Ordering::Relaxed)
    }

    /// Snapshots written.
    pub fn snapshots_written(&self) -> u64 {
        self.inner.snapshots_written.load(Ordering::Relaxed)
    }

    /// Restores that started from the state parked when the partition was revoked.
    pub fn parked_reused(&self) -> u64 {
        self.inner.parked_reused.load(Ordering::Relaxed)
    }

    /// Records in the events log that this processor did not write (no valid envelope, or no
    /// `ce_sequence`), skipped by restores: another producer wrote into the aggregate's log.
    pub fn foreign_records_skipped(&self) -> u64 {
        self.inner.foreign_skipped.load(Ordering::Relaxed)
    }

    /// Producers replaced after a transaction with an unknown outcome.
    pub fn producer_restarts(&self) -> u64 {
        self.inner.producer_restarts.load(Ordering::Relaxed)
    }
}

/// Where the processor stands in its group. One lock for both fields, so a reader never sees
/// "joined" without the partitions that assignment is still restoring.
#[derive(Debug, Default)]
struct Membership {
    /// The first assignment (even an empty one) was handled, and the processor has not
    /// stopped since.
    joined: bool,
    /// Partitions assigned (or being restored again after a producer replacement) whose
    /// restore has not finished: commands for them wait.
    restoring: Vec<i32>,
}

impl ProcessorStatus {
    /// Partitions about to be restored: the instance cannot answer for them until
    /// [`ProcessorStatus::restored`]. `joined` marks the first assignment handled; it is set
    /// with the partitions still restoring, so readiness waits for them too.
    fn restoring(&self, partitions: &[i32], joined: bool) {
        let mut membership = lock(&self.inner.membership);
        membership.restoring.extend_from_slice(partitions);
        membership.joined |= joined;
    }

    /// `p`'s restore finished (ready or halted), or `p` was revoked.
    fn restored(&self, p: i32) {
        lock(&self.inner.membership).restoring.retain(|q| *q != p);
    }

    /// The processor left its group: not ready until a new run joins again.
    fn left(&self) {
        *lock(&self.inner.membership) = Membership::default();
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs an aggregate's command processing in a consumer group.
pub struct CommandProcessor<A: Aggregate> {
    service: String,
    entity: String,
    ordinal: u32,
    partitions: i32,
    max_batch: usize,
    status: ProcessorStatus,
    snapshots: Option<Snapshotter<A>>,
}

/// Serializes a partition's aggregates (id, entry) into a snapshot body; the events topic and
/// partition complete the remembered outcomes.
type EncodeEntries<A> = fn(&[(&String, &Entry<A>)], &str, i32) -> Result<Vec<u8>, String>;
/// Reads a snapshot body back.
type DecodeEntries<A> = fn(&[u8]) -> Result<Vec<(String, Entry<A>)>, String>;

/// Snapshot settings with the aggregate's (de)serialization, fixed where `A: Serialize`.
struct Snapshotter<A> {
    settings: SnapshotSettings,
    encode: EncodeEntries<A>,
    decode: DecodeEntries<A>,
}

fn encode_entries<A: Serialize>(
    entries: &[(&String, &Entry<A>)],
    topic: &str,
    partition: i32,
) -> Result<Vec<u8>, String> {
    let stored: Vec<StoredAggregate<&A>> = entries
        .iter()
        .map(|(id, entry)| StoredAggregate {
            id: (*id).clone(),
            version: entry.version,
            state: &entry.state,
            // Only accepted outcomes, as a restore from the log rebuilds them: a restore from
            // a snapshot must give the same state as one from the first event.
            recent: entry
                .recent
                .iter()
                .filter(|(_, outcome)| matches!(outcome, Remembered::Accepted(_)))
                .map(|(id, outcome)| (*id, outcome.outcome(topic, partition)))
                .collect(),
        })
        .collect();
    snapshot::encode(&stored)
}

fn decode_entries<A: DeserializeOwned>(body: &[u8]) -> Result<Vec<(String, Entry<A>)>, String> {
    Ok(snapshot::decode::<A>(body)?
        .into_iter()
        .map(|stored| {
            (
                stored.id,
                Entry {
                    state: stored.state,
                    version: stored.version,
                    recent: stored
                        .recent
                        .into_iter()
                        .map(|(id, outcome)| (id, Remembered::from(outcome)))
                        .collect(),
                },
            )
        })
        .collect())
}

impl<A: Aggregate + Serialize + DeserializeOwned> CommandProcessor<A> {
    /// Snapshots each partition's aggregates to Postgres every `settings.every_events`
    /// events, so a restore reads only the tail of the partition. Without it, a restore
    /// reads every event of the partition.
    pub fn snapshots(mut self, settings: SnapshotSettings) -> Self {
        self.snapshots = Some(Snapshotter {
            settings,
            encode: encode_entries::<A>,
            decode: decode_entries::<A>,
        });
        self
    }
}

impl<A: Aggregate> std::fmt::Debug for CommandProcessor<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandProcessor")
            .field("service", &self.service)
            .field("entity", &self.entity)
            .field("ordinal", &self.ordinal)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> CommandProcessor<A> {
    /// The processor of `service` (its consumer group) for `entity` (topics
    /// `{entity}.commands` and `{entity}.events`, both with `partitions` partitions).
    /// `ordinal` is this instance's stable number (0, 1, ...): `transactional.id` and
    /// `group.instance.id` are `{group}-{ordinal}`, so a restarted instance fences its own
    /// dangling transaction at once. Two live instances with one ordinal fence each other:
    /// the older one stops.
    pub fn new(
        service: impl Into<String>,
        entity: impl Into<String>,
        ordinal: u32,
        partitions: i32,
    ) -> Self {
        Self {
            service: service.into(),
            entity: entity.into(),
            ordinal,
            partitions,
            max_batch: 100,
            status: ProcessorStatus::default(),
            snapshots: None,
        }
    }

    /// Most commands per transaction.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    pub fn status(&self) -> ProcessorStatus {
        self.status.clone()
    }

    /// Runs until `shutdown` (or fencing, or an unrecoverable error).
    pub async fn run(self, kafka: &KafkaConfig, shutdown: Shutdown) -> Result<()> {
        crate::kafka::check_reachable(kafka)?;
        let group = kafka.topic_name(&self.service);
        let commands_topic = kafka.topic_name(&format!("{}.commands", self.entity));
        let events_topic = kafka.topic_name(&format!("{}.events", self.entity));
        let dlq_topic = format!("{group}.dlq");
        let admin = crate::kafka::TopicAdmin::new(kafka)?;
        for topic in [&commands_topic, &events_topic] {
            match admin.describe(topic).await? {
                None => return Err(Error::TopicMissing(topic.clone())),
                Some(d) if d.partitions != self.partitions => {
                    return Err(Error::TopicMismatch {
                        topic: topic.clone(),
                        mismatch: format!(
                            "it has {} partitions, the processor declares {}; commands and events of an entity \
                             must share the declared count (aggregates would be split otherwise)",
                            d.partitions, self.partitions
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        if admin.describe(&dlq_topic).await?.is_none() {
            return Err(Error::TopicMissing(dlq_topic));
        }
        // Avro: register our writer schemas before the first event is written, and learn the
        // stored ones before restore reads the log (restore runs on a thread that cannot wait
        // for the store; an event whose schema is still unknown there halts its partition).
        let schemas = crate::codec::SchemaStore::new(kafka);
        for (name, schema) in A::Event::avro_schemas() {
            schemas.register(name, schema).await?;
        }
        if !A::Event::avro_schemas().is_empty() || !A::Event::upcast_names().is_empty() {
            schemas.refresh().await?;
        }
        let identity = format!("{group}-{}", self.ordinal);
        let shared = Arc::new(Shared::<A> {
            group: group.clone(),
            source: format!("/{}", self.service),
            commands_topic,
            events_topic,
            dlq_topic,
            partitions: self.partitions,
            state: Mutex::new(HashMap::new()),
            halted: Mutex::new(HashMap::new()),
            status: self.status.clone(),
            // librdkafka wants a group.id even for assign(); this one never joins or commits.
            restore: kafka
                .client_config(&[
                    ("group.id", &format!("{group}.restore")),
                    ("enable.auto.commit", "false"),
                    ("isolation.level", "read_committed"),
                    ("enable.partition.eof", "false"),
                    // Restores read history, partition after partition: a fetch that waits
                    // for new data at the end of one (500 ms by default) would delay the
                    // first fetch of the next.
                    ("fetch.wait.max.ms", "10"),
                ])
                .create()
                .map_err(|e| Error::Config(format!("kafka consumer settings rejected: {e}")))?,
            fatal: Mutex::new(None),
            shutdown: shutdown.clone(),
            stopped: AtomicBool::new(false),
            handle: tokio::runtime::Handle::current(),
            rebalances: AtomicU64::new(0),
            assigned_at: Mutex::new(HashMap::new()),
            snapshots: self.snapshots,
            since_snapshot: Mutex::new(HashMap::new()),
            reply_topics: Mutex::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
        });
        let consumer: BaseConsumer<ProcessorContext<A>> = kafka
            .client_config(&[
                ("group.id", group.as_str()),
                ("group.instance.id", identity.as_str()),
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("isolation.level", "read_committed"),
                // Lost group offsets must not replay every retained command.
                ("auto.offset.reset", "error"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
                ("enable.partition.eof", "false"),
            ])
            .create_with_context(ProcessorContext {
                shared: Arc::clone(&shared),
            })
            .map_err(|e| Error::Config(format!("kafka consumer settings rejected: {e}")))?;
        let producer_config = kafka.client_config(&[
            ("transactional.id", identity.as_str()),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("transaction.timeout.ms", "10000"),
            ("linger.ms", "1"),
        ]);
        let make_producer = move || -> Result<FutureProducer> {
            producer_config
                .create()
                .map_err(|e| Error::Config(format!("kafka producer settings rejected: {e}")))
        };
        let mut producer = make_producer()?;
        let max_batch = self.max_batch;
        let (done_tx, done_rx) = oneshot::channel();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("choreo-commands-{identity}"))
            .spawn(move || {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    processing_loop(
                        &thread_shared,
                        &consumer,
                        &mut producer,
                        &make_producer,
                        max_batch,
                    )
                }));
                let result = match outcome {
                    Ok(result) => result,
                    Err(panic) => Err(Error::Runtime(format!(
                        "command processor panicked: {}",
                        panic_message(&*panic)
                    ))),
                };
                // Leave the group; the revoke callback drops the partitions' state.
                thread_shared.stopped.store(true, Ordering::Release);
                // Not ready from here on: closing the consumer can take seconds.
                thread_shared.status.left();
                drop(consumer);
                let _ = producer.flush(Duration::from_secs(10));
                let _ = done_tx.send(result);
            })
            .map_err(|e| Error::Runtime(format!("cannot start the processor thread: {e}")))?;
        done_rx
            .await
            .map_err(|_| Error::Runtime("the processor thread ended without a result".into()))?
    }
}

/// One aggregate's state on this processor.
#[derive(Clone)]
struct Entry<A> {
    state: A,
    version: u64,
    /// Recent command ids and their outcome, oldest first.
    recent: VecDeque<(Uuid, Remembered)>,
}

/// A remembered outcome, compact: it is kept for up to [`RECENT_COMMANDS`] commands of every
/// aggregate in memory, so its events leave out what the entry already implies (the events
/// topic and the partition) and share their type names.
#[derive(Clone, Debug)]
enum Remembered {
    Accepted(Vec<Landed>),
    Rejected(Rejection),
}

/// Where an accepted command's event landed (its topic and partition are the entry's own).
#[derive(Clone, Debug)]
struct Landed {
    message_type: Arc<str>,
    offset: i64,
    sequence: u64,
}

impl Remembered {
    /// The outcome as replies carry it.
    fn outcome(&self, topic: &str, partition: i32) -> Outcome {
        match self {
            Self::Accepted(events) => Outcome::Accepted {
                events: events
                    .iter()
                    .map(|e| EventRef {
                        message_type: e.message_type.to_string(),
                        topic: topic.to_owned(),
                        partition,
                        offset: e.offset,
                        sequence: e.sequence,
                    })
                    .collect(),
            },
            Self::Rejected(rejection) => Outcome::Rejected {
                rejection: rejection.clone(),
            },
        }
    }
}

impl From<Outcome> for Remembered {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Accepted { events } => Self::Accepted(
                events
                    .into_iter()
                    .map(|e| Landed {
                        message_type: intern(&e.message_type),
                        offset: e.offset,
                        sequence: e.sequence,
                    })
                    .collect(),
            ),
            Outcome::Rejected { rejection } => Self::Rejected(rejection),
        }
    }
}

/// One shared copy of each event type name (a handful per aggregate, remembered for every
/// event of every aggregate).
fn intern(name: &str) -> Arc<str> {
    static NAMES: std::sync::OnceLock<Mutex<std::collections::HashSet<Arc<str>>>> =
        std::sync::OnceLock::new();
    let mut names = lock(NAMES.get_or_init(Default::default));
    if let Some(known) = names.get(name) {
        return Arc::clone(known);
    }
    let fresh: Arc<str> = Arc::from(name);
    names.insert(Arc::clone(&fresh));
    fresh
}

impl<A: Default> Default for Entry<A> {
    fn default() -> Self {
        Self {
            state: A::default(),
            version: 0,
            recent: VecDeque::new(),
        }
    }
}

impl<A> Entry<A> {
    fn remember(&mut self, id: Uuid, outcome: Remembered) {
        if self.recent.len() >= RECENT_COMMANDS {
            self.recent.pop_front();
        }
        self.recent.push_back((id, outcome));
    }
}

type Key = (i32, String);

struct Shared<A: Aggregate> {
    group: String,
    source: String,
    commands_topic: String,
    events_topic: String,
    dlq_topic: String,
    partitions: i32,
    /// Committed state per (partition, aggregate id).
    state: Mutex<HashMap<Key, Entry<A>>>,
    /// Partitions halted, with the reason.
    halted: Mutex<HashMap<i32, String>>,
    status: ProcessorStatus,
    /// Reads events partitions during restores (no group, read_committed).
    restore: BaseConsumer,
    fatal: Mutex<Option<String>>,
    shutdown: Shutdown,
    stopped: AtomicBool,
    /// Waits for delivery reports from the processor thread (never an async thread).
    handle: tokio::runtime::Handle,
    /// Bumped by every rebalance callback.
    rebalances: AtomicU64,
    /// The rebalance count when each owned partition was (re)assigned and restored.
    assigned_at: Mutex<HashMap<i32, u64>>,
    snapshots: Option<Snapshotter<A>>,
    /// Per partition: events written since its last snapshot, and the last one's offset.
    since_snapshot: Mutex<HashMap<i32, (u64, i64)>>,
    /// Partition counts of the reply topics seen in commands.
    reply_topics: Mutex<HashMap<String, i32>>,
    /// State of revoked partitions: aggregates, the events offset they reflect, when parked.
    parked: Mutex<ParkedState<A>>,
}

type ParkedState<A> = HashMap<i32, (HashMap<String, Entry<A>>, i64, std::time::Instant)>;

/// How long a revoked partition's state is kept for a quick reassignment.
const PARKED_FOR: Duration = Duration::from_secs(60);

struct ProcessorContext<A: Aggregate> {
    shared: Arc<Shared<A>>,
}

impl<A: Aggregate> ClientContext for ProcessorContext<A> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }
}

impl<A: Aggregate> ConsumerContext for ProcessorContext<A> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let generation = self.shared.rebalances.fetch_add(1, Ordering::AcqRel) + 1;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Restores run one after another in this callback: every partition of the
                // assignment counts as restoring until its own restore ends.
                self.shared.status.restoring(&partitions, true);
                let mut assign = TopicPartitionList::new();
                let mut halted_now = Vec::new();
                for p in &partitions {
                    match self.restore(consumer, *p) {
                        Ok(start) => {
                            let _ =
                                assign.add_partition_offset(&self.shared.commands_topic, *p, start);
                            lock(&self.shared.status.inner.ready).push(*p);
                            lock(&self.shared.assigned_at).insert(*p, generation);
                        }
                        Err(reason) => {
                            tracing::error!(partition = p, %reason, "partition halted");
                            lock(&self.shared.halted).insert(*p, reason.clone());
                            lock(&self.shared.status.inner.halted).push((*p, reason));
                            let _ = assign.add_partition_offset(
                                &self.shared.commands_topic,
                                *p,
                                Offset::End,
                            );
                            halted_now.push(*p);
                        }
                    }
                    // Only now, with p listed as ready or halted: a reader never sees p in
                    // neither list.
                    self.shared.status.restored(*p);
                }
                if let Err(e) = consumer.incremental_assign(&assign) {
                    self.fail(format!("incremental_assign failed: {e}"));
                }
                // Halted partitions stay assigned (the group needs an owner) but paused.
                let mut pause = TopicPartitionList::new();
                for p in halted_now {
                    pause.add_partition(&self.shared.commands_topic, p);
                }
                if pause.count() > 0 {
                    let _ = consumer.pause(&pause);
                }
                self.update_count();
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // No transaction is open here: we never poll inside one. The revoked
                // partitions' committed state is parked with the events offset it reflects,
                // so a quick reassignment (a rolling restart of another instance, say) only
                // reads what was written meanwhile.
                self.park(&partitions);
                lock(&self.shared.halted).retain(|p, _| !partitions.contains(p));
                lock(&self.shared.status.inner.ready).retain(|p| !partitions.contains(p));
                lock(&self.shared.assigned_at).retain(|p, _| !partitions.contains(p));
                lock(&self.shared.since_snapshot).retain(|p, _| !partitions.contains(p));
                lock(&self.shared.status.inner.halted).retain(|(p, _)| !partitions.contains(p));
                for p in &partitions {
                    self.shared.status.restored(*p);
                }
                let _ = consumer.resume(tpl);
                if let Err(e) = consumer.incremental_unassign(tpl) {
                    tracing::error!(error = %e, "incremental_unassign failed");
                }
                self.update_count();
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

impl<A: Aggregate> ProcessorContext<A> {
    fn fail(&self, reason: String) {
        tracing::error!(%reason, "command processor stopping");
        lock(&self.shared.fatal).get_or_insert(reason);
        self.shared.shutdown.trigger();
    }

    /// Moves the committed state of revoked partitions aside, tagged with the events offset it
    /// reflects (halted partitions' state is incomplete and dropped); drops parked state older
    /// than [`PARKED_FOR`].
    fn park(&self, partitions: &[i32]) {
        let shared = &self.shared;
        let since = lock(&shared.since_snapshot);
        let halted = lock(&shared.halted);
        let mut state = lock(&shared.state);
        let mut parked = lock(&shared.parked);
        parked.retain(|_, (_, _, at)| at.elapsed() < PARKED_FOR);
        for p in partitions {
            let entries: HashMap<String, Entry<A>> = state
                .extract_if(|(q, _), _| q == p)
                .map(|((_, id), entry)| (id, entry))
                .collect();
            if let (Some((_, last)), false) = (since.get(p), halted.contains_key(p)) {
                parked.insert(*p, (entries, last + 1, std::time::Instant::now()));
            }
        }
    }

    /// Parked state of `p` if it is recent and its offset lies within the log.
    fn unpark(&self, p: i32, low: i64, end: i64) -> Option<(HashMap<String, Entry<A>>, i64)> {
        let (entries, offset, at) = lock(&self.shared.parked).remove(&p)?;
        if at.elapsed() >= PARKED_FOR || offset < low || offset > end {
            return None;
        }
        self.shared
            .status
            .inner
            .parked_reused
            .fetch_add(1, Ordering::Relaxed);
        Some((entries, offset))
    }

    /// The aggregates of the latest usable snapshot of `p` and where to read on from; no
    /// aggregates and `low` without one. An unusable snapshot is ignored with a warning.
    fn load_snapshot(&self, p: i32, low: i64, end: i64) -> (HashMap<String, Entry<A>>, i64) {
        let shared = &self.shared;
        let Some(snapshots) = &shared.snapshots else {
            return (HashMap::new(), low);
        };
        // A cache: a database that does not answer quickly means a restore from the log.
        let loaded = shared
            .handle
            // The timer is made inside the runtime: block_on's thread has no runtime context.
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    snapshot::load(&snapshots.settings.pool, &shared.events_topic, p),
                )
                .await
            })
            .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
        let unusable = |reason: String| {
            tracing::warn!(partition = p, %reason, "snapshot ignored; restoring from the beginning of the events");
            (HashMap::new(), low)
        };
        let loaded = match loaded {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return (HashMap::new(), low),
            Err(e) => return unusable(format!("cannot read it: {e}")),
        };
        if loaded.format != snapshot::FORMAT {
            return unusable(format!(
                "format {} (this build reads {})",
                loaded.format,
                snapshot::FORMAT
            ));
        }
        if loaded.state_version != snapshots.settings.state_version {
            return unusable(format!(
                "state version {} (the processor declares {})",
                loaded.state_version, snapshots.settings.state_version
            ));
        }
        if loaded.events_offset < low || loaded.events_offset > end {
            return unusable(format!(
                "it continues at offset {} but {}[{p}] spans {low}..{end} (recreated or truncated?)",
                loaded.events_offset, shared.events_topic
            ));
        }
        match (snapshots.decode)(&loaded.body) {
            Ok(list) => {
                shared
                    .status
                    .inner
                    .snapshots_loaded
                    .fetch_add(1, Ordering::Relaxed);
                (list.into_iter().collect(), loaded.events_offset)
            }
            Err(e) => unusable(format!("corrupt body: {e}")),
        }
    }

    fn update_count(&self) {
        let n = lock(&self.shared.state).len() as u64;
        self.shared
            .status
            .inner
            .aggregates
            .store(n, Ordering::Relaxed);
    }

    /// Restores partition `p` (ARCHITECTURE.md, "Command processing"): the stable committed command offset first,
    /// then the end of events[p], then every event up to it. Returns where commands start.
    fn restore(&self, consumer: &BaseConsumer<Self>, p: i32) -> Result<Offset, String> {
        let shared = &self.shared;
        // 1. A read_committed consumer waits out pending transactional offset commits.
        let mut ask = TopicPartitionList::new();
        ask.add_partition(&shared.commands_topic, p);
        let committed = consumer
            .committed_offsets(ask, Duration::from_secs(30))
            .map_err(|e| format!("cannot read the committed command offset: {e}"))?
            .elements()
            .first()
            .map(|e| e.offset())
            .unwrap_or(Offset::Invalid);
        // 2. Only then the end of the events partition (its last stable offset).
        let (low, end) = shared
            .restore
            .fetch_watermarks(&shared.events_topic, p, Duration::from_secs(30))
            .map_err(|e| format!("cannot read the end of {}[{p}]: {e}", shared.events_topic))?;
        // A drill makes restores slow here, so a rebalance arrives while one runs.
        failpoint::stall("command.restore", Duration::from_secs(4));
        // 3. From the latest usable snapshot (or the beginning), read events[p] until
        //    position() reaches the end (a commit marker follows the last event, so last
        //    offset + 1 never equals the end).
        let (mut entries, from) = match self.unpark(p, low, end) {
            Some(parked) => parked,
            None => self.load_snapshot(p, low, end),
        };
        let mut read = 0u64;
        if end > from {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&shared.events_topic, p, Offset::Offset(from))
                .map_err(|e| e.to_string())?;
            shared
                .restore
                .assign(&tpl)
                .map_err(|e| format!("cannot assign {}[{p}]: {e}", shared.events_topic))?;
            let mut idle_since = std::time::Instant::now();
            // position() is a round trip to librdkafka's main thread: ask it only when a
            // record could be the last one or nothing came (a commit marker may be all that
            // is left), not once per record.
            let mut check = true;
            loop {
                if check {
                    let position = shared
                        .restore
                        .position()
                        .ok()
                        .and_then(|l| l.elements().first().map(|e| e.offset()))
                        .and_then(|o| {
                            if let Offset::Offset(o) = o {
                                Some(o)
                            } else {
                                None
                            }
                        })
                        .unwrap_or(from);
                    if position >= end {
                        break;
                    }
                }
                // Near the end only a commit marker may be left: poll briefly, then look at
                // the position again, rather than wait out a long poll per partition.
                let wait = if check {
                    Duration::from_millis(5)
                } else {
                    Duration::from_millis(200)
                };
                match shared.restore.poll(wait) {
                    Some(Ok(record)) if record.offset() >= end => {
                        // Past the end taken above: not part of this restore.
                        break;
                    }
                    Some(Ok(record)) => {
                        idle_since = std::time::Instant::now();
                        read += 1;
                        check = record.offset() + 1 >= end;
                        if !apply_restored::<A, _>(&mut entries, &record, &shared.events_topic)? {
                            shared
                                .status
                                .inner
                                .foreign_skipped
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Err(e)) => {
                        return Err(format!("reading {}[{p}] failed: {e}", shared.events_topic));
                    }
                    None => {
                        check = true;
                        if idle_since.elapsed() > Duration::from_secs(30) {
                            return Err(format!(
                                "restore of {}[{p}] stalled before {end}",
                                shared.events_topic
                            ));
                        }
                    }
                }
            }
            let _ = shared.restore.unassign();
        }
        // Where commands start. Without a committed offset we may only start at the
        // beginning if no event was ever committed (aborted transactions leave offsets
        // behind but no events): replaying retained commands on top of existing events could
        // repeat them, so an operator decides.
        let start = match committed {
            Offset::Offset(o) => Offset::Offset(o),
            _ if entries.is_empty() => Offset::Beginning,
            _ => {
                return Err(format!(
                    "{}[{p}] has no committed offset for group {} but {}[{p}] holds committed events: replaying every \
                     retained command could repeat them; an operator must set the group's offset (kafka-consumer-groups \
                     --reset-offsets) before this partition is handled",
                    shared.commands_topic, shared.group, shared.events_topic
                ));
            }
        };
        let restored = entries.len();
        {
            let mut state = lock(&shared.state);
            state.retain(|(q, _), _| *q != p);
            state.extend(entries.into_iter().map(|(id, entry)| ((p, id), entry)));
        }
        shared
            .status
            .inner
            .restored_events
            .fetch_add(read, Ordering::Relaxed);
        tracing::info!(
            partition = p,
            aggregates = restored,
            events_read = read,
            from,
            events_end = end,
            ?start,
            "partition restored"
        );
        // A long read is worth a snapshot now: the next restore of p starts here.
        lock(&shared.since_snapshot).insert(p, (read, end - 1));
        if let Some(snapshots) = &shared.snapshots
            && read >= snapshots.settings.every_events
        {
            take_snapshot(shared, p, end);
        }
        Ok(start)
    }
}

/// Folds one restored event into its aggregate; a gap, a duplicate or an unknown type halts.
/// Returns false for a record this processor did not write, which it skips.
fn apply_restored<A: Aggregate, M: Message + WireRecord>(
    entries: &mut HashMap<String, Entry<A>>,
    record: &M,
    topic: &str,
) -> Result<bool, String> {
    // Where, for error messages only (no allocation per event on the happy path).
    let at = Located(topic, record.partition(), record.offset());
    let opened = match Metadata::open(record) {
        Ok(opened) if opened.meta.sequence.is_some() => opened,
        other => {
            // The processor writes a valid envelope with ce_sequence on every event, so this
            // came from another producer: it is no part of any aggregate's history (the log's
            // consumers dead-letter or handle it). Skipped, not a halt: one foreign record
            // must not stop the single writer of the log.
            let reason = match other {
                Err(e) => e.to_string(),
                Ok(_) => "no ce_sequence".to_owned(),
            };
            tracing::warn!(at = %at, %reason, "a record this processor did not write is in its events log; the restore skips it");
            return Ok(false);
        }
    };
    let meta = opened.meta;
    let event = A::Event::decode(&meta, opened.payload.as_deref())
        .map_err(|e| format!("undecodable event at {at}: {e}"))?
        .ok_or_else(|| {
            format!(
                "unknown event type {} at {at}: this processor cannot rebuild the aggregate",
                meta.message_type
            )
        })?;
    let sequence = meta
        .sequence
        .ok_or_else(|| format!("event at {at} has no ce_sequence"))?;
    if !entries.contains_key(&meta.subject) {
        entries.insert(meta.subject.clone(), Entry::default());
    }
    let Some(entry) = entries.get_mut(&meta.subject) else {
        return Err(format!(
            "aggregate {} vanished during restore",
            meta.subject
        ));
    };
    if sequence != entry.version + 1 {
        return Err(format!(
            "sequence of {} jumps from {} to {sequence} at {at}: the log is not contiguous",
            meta.subject, entry.version
        ));
    }
    std::panic::catch_unwind(AssertUnwindSafe(|| entry.state.apply(&event)))
        .map_err(|panic| format!("apply panicked at {at}: {}", panic_message(&*panic)))?;
    entry.version = sequence;
    let landed = Landed {
        message_type: intern(&meta.message_type),
        offset: record.offset(),
        sequence,
    };
    // Rebuild the duplicate memory from the causation ids (the command ids).
    match entry.recent.back_mut() {
        Some((id, Remembered::Accepted(events))) if *id == meta.causation_id => events.push(landed),
        _ => entry.remember(meta.causation_id, Remembered::Accepted(vec![landed])),
    }
    Ok(true)
}

/// A reply waiting for the offsets of its command's events.
struct PendingReply {
    topic: String,
    partition: i32,
    /// The aggregate the command was for (where its outcome is remembered).
    aggregate: Key,
    meta: Metadata,
    /// Indices into the batch's events, or the final outcome.
    events: Vec<usize>,
    outcome: Option<Outcome>,
}

/// Commands whose event, reply or dead letter the broker refused for its content (too large,
/// invalid), by (partition, offset): how many times, and the last reason. When the batch runs
/// again such a command is rejected and dead-lettered instead of decided, then only
/// dead-lettered, then with its payload cut, so one command never blocks its partition.
type SetAside = HashMap<(i32, i64), (u32, String)>;

/// Refusals of one command's records before its partition halts: its events or reply, its
/// dead letter whole, cut, and minimal.
const MAX_REFUSALS: u32 = 4;

fn processing_loop<A: Aggregate>(
    shared: &Arc<Shared<A>>,
    consumer: &BaseConsumer<ProcessorContext<A>>,
    producer: &mut FutureProducer,
    make_producer: &dyn Fn() -> Result<FutureProducer>,
    max_batch: usize,
) -> Result<()> {
    // Fences any earlier producer with our transactional id and aborts its open transaction.
    producer
        .init_transactions(Duration::from_secs(30))
        .map_err(|e| Error::kafka("init_transactions", e))?;
    consumer
        .subscribe(&[&shared.commands_topic])
        .map_err(|e| Error::kafka("subscribe", e))?;
    // Producer replacements since the last committed transaction.
    let mut replacements = 0u32;
    let mut set_aside = SetAside::new();
    // Transactions still to run with a single command: the broker refused a request of a
    // transaction that held several, and only one at a time says which command it was.
    let mut isolate = 0usize;
    while !shared.shutdown.is_triggered() {
        let before = shared.rebalances.load(Ordering::Acquire);
        let size = if isolate > 0 { 1 } else { max_batch };
        let (batch, error) = collect_batch(consumer, size, Duration::from_millis(100));
        match error {
            Some(e @ KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                return Err(Error::Runtime(format!(
                    "command consumer: {e} (auto.offset.reset=error)"
                )));
            }
            Some(e) => tracing::warn!(error = %e, "command consumer error"),
            None => {}
        }
        if let Some(reason) = lock(&shared.fatal).clone() {
            return Err(Error::Runtime(reason));
        }
        check_consumer(consumer)?;
        if batch.is_empty() {
            continue;
        }
        if shared.rebalances.load(Ordering::Acquire) != before {
            // A rebalance ran inside poll while this batch was collected: its records may
            // belong to partitions we lost, or predate a restore. Decide nothing on them.
            // Partitions we kept throughout are rewound (their records were consumed);
            // partitions (re)assigned meanwhile already start at their committed offset.
            let kept: Vec<&Record> = {
                let assigned_at = lock(&shared.assigned_at);
                batch
                    .iter()
                    .filter(|r| {
                        assigned_at
                            .get(&r.partition())
                            .is_some_and(|g| *g <= before)
                    })
                    .collect()
            };
            rewind(consumer, &starts(kept))?;
            continue;
        }
        isolate = isolate.saturating_sub(1);
        match run_transaction(shared, consumer, producer, &batch, &set_aside) {
            Ok(settled) => {
                replacements = 0;
                for at in settled {
                    set_aside.remove(&at);
                }
            }
            Err(TxError::Refused {
                reason,
                input: Some(index),
            }) if index < batch.len() => {
                let at = (batch[index].partition(), batch[index].offset());
                tracing::warn!(partition = at.0, offset = at.1, %reason,
                    "a record of this command was refused for its content; the command is set aside");
                abort_and_rewind(producer, consumer, &batch, &reason)?;
                let entry = set_aside.entry(at).or_insert((0, String::new()));
                entry.0 += 1;
                entry.1.clone_from(&reason);
                if entry.0 > MAX_REFUSALS {
                    // Even the minimal dead letter was refused: the dead-letter topic cannot
                    // take it (its max.message.bytes, or compaction). Halt this partition
                    // with the reason rather than loop; the others go on.
                    let why = format!(
                        "even the minimal dead letter of the command at offset {} was refused \
                         ({reason}): check the dead-letter topic's max.message.bytes and \
                         cleanup.policy, then restart",
                        at.1
                    );
                    tracing::error!(partition = at.0, %why, "partition halted");
                    lock(&shared.halted).insert(at.0, why.clone());
                    lock(&shared.status.inner.halted).push((at.0, why));
                    lock(&shared.status.inner.ready).retain(|p| *p != at.0);
                    set_aside.remove(&at);
                }
            }
            Err(TxError::Refused {
                reason,
                input: None,
            }) => {
                tracing::warn!(%reason, commands = batch.len(),
                    "the broker refused a record of this transaction; running its commands one per transaction to find which");
                abort_and_rewind(producer, consumer, &batch, &reason)?;
                isolate = batch.len();
            }
            Err(TxError::Abortable(reason) | TxError::Refused { reason, .. }) => {
                tracing::warn!(%reason, "transaction aborted; rewinding to the last committed commands");
                abort_and_rewind(producer, consumer, &batch, &reason)?;
            }
            Err(TxError::Fenced(reason)) => {
                // Another instance owns our transactional id now: stop, never recreate (two
                // instances sharing an id would fence each other forever).
                tracing::error!(%reason, "fenced by a newer instance with the same transactional id; stopping");
                return Err(Error::Runtime(format!("fenced: {reason}")));
            }
            Err(TxError::Fatal(reason)) => {
                // The outcome is unknown: the commit may land later (librdkafka lacks
                // KIP-890). A new producer with our transactional id fences the old one (its
                // transaction is then either committed or aborted for good), and a restore
                // rebuilds the state and the command positions from what was committed.
                replacements += 1;
                if replacements > MAX_REPLACEMENTS {
                    return Err(Error::Runtime(format!(
                        "transactions keep failing with unknown outcomes ({reason}); stopping after {MAX_REPLACEMENTS} producer replacements"
                    )));
                }
                tracing::warn!(%reason, replacements, "transaction outcome unknown; replacing the producer and restoring every partition");
                std::thread::sleep(Duration::from_millis(500) * replacements);
                let fresh = make_producer()?;
                fresh
                    .init_transactions(Duration::from_secs(30))
                    .map_err(|e| {
                        Error::Runtime(format!(
                            "transaction failed ({reason}), and a new producer could not take over: {e}"
                        ))
                    })?;
                drop(std::mem::replace(producer, fresh));
                restore_owned(shared, consumer)?;
                shared
                    .status
                    .inner
                    .producer_restarts
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

fn run_transaction<A: Aggregate>(
    shared: &Arc<Shared<A>>,
    consumer: &BaseConsumer<ProcessorContext<A>>,
    producer: &FutureProducer,
    batch: &[Record],
    set_aside: &SetAside,
) -> Result<Vec<(i32, i64)>, TxError> {
    producer
        .begin_transaction()
        .map_err(|e| classify("begin_transaction", &e))?;
    let now = Utc::now();
    // The batch index of the command each event, reply and dead letter comes from.
    let (mut event_origin, mut reply_origin, mut dead_origin) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut settled = Vec::new();
    let mut overlay: HashMap<Key, Entry<A>> = HashMap::new();
    let mut events: Vec<(TxRecord, EventRef)> = Vec::new();
    let mut replies: Vec<PendingReply> = Vec::new();
    let mut dead: Vec<TxRecord> = Vec::new();
    let mut next_offsets: HashMap<i32, i64> = HashMap::new();
    {
        let halted = lock(&shared.halted);
        let committed = lock(&shared.state);
        for (index, record) in batch.iter().enumerate() {
            let p = record.partition();
            if halted.contains_key(&p) {
                continue;
            }
            let aside = set_aside.get(&(p, record.offset()));
            if aside.is_some() {
                settled.push((p, record.offset()));
            }
            decide_one(
                shared,
                &committed,
                &mut overlay,
                record,
                now,
                aside,
                &mut events,
                &mut replies,
                &mut dead,
            );
            event_origin.resize(events.len(), index);
            reply_origin.resize(replies.len(), index);
            dead_origin.resize(dead.len(), index);
            next_offsets.insert(p, record.offset() + 1);
        }
    }
    // Events first: their offsets go into the replies.
    let origin = |of: &[usize], k: usize| of.get(k).copied().unwrap_or(usize::MAX);
    let deliveries: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(k, (pending, _))| {
            send(producer, pending).map_err(|e| e.for_input(origin(&event_origin, k)))
        })
        .collect::<Result<_, _>>()?;
    // The command every record comes from, if one (a refusal names it only then).
    let sole = sole_input(event_origin.iter().chain(&reply_origin).chain(&dead_origin));
    let offsets = await_deliveries(&shared.handle, deliveries, sole, "produce event")?;
    for (i, (partition, offset)) in offsets.iter().enumerate() {
        events[i].1.partition = *partition;
        events[i].1.offset = *offset;
    }
    // Replies and dead letters, with the command each answers or dead-letters.
    let mut reply_deliveries = Vec::new();

    for (k, reply) in replies.iter_mut().enumerate() {
        let outcome = match reply.outcome.take() {
            Some(outcome) => outcome,
            None => Outcome::Accepted {
                events: reply.events.iter().map(|&i| events[i].1.clone()).collect(),
            },
        };
        // Remember the outcome of a command accepted now with its final offsets (duplicates
        // get exactly this). Only from such a reply: a duplicate's answer, or a rejection
        // (remembered when decided), must not write over it.
        if !reply.events.is_empty()
            && let Some(entry) = overlay.get_mut(&reply.aggregate)
            && let Some(remembered) = entry
                .recent
                .iter_mut()
                .rev()
                .find(|(id, _)| *id == reply.meta.causation_id)
        {
            remembered.1 = Remembered::from(outcome.clone());
        }
        if reply.topic.is_empty() {
            continue;
        }
        let payload = serde_json::to_vec(&outcome)
            .map_err(|e| TxError::Fatal(format!("encode reply: {e}")))?;
        let pending = TxRecord {
            topic: reply.topic.clone(),
            partition: Some(reply.partition),
            key: Some(reply.meta.subject.clone().into_bytes()),
            payload: Some(payload),
            headers: reply.meta.to_headers(),
        };
        let input = origin(&reply_origin, k);
        reply_deliveries.push(send(producer, &pending).map_err(|e| e.for_input(input))?);
    }
    for (k, letter) in dead.iter().enumerate() {
        let input = origin(&dead_origin, k);
        reply_deliveries.push(send(producer, letter).map_err(|e| e.for_input(input))?);
    }
    failpoint::hit("command.after_produce");
    await_deliveries(&shared.handle, reply_deliveries, sole, "produce reply")?;
    let mut tpl = TopicPartitionList::new();
    for (p, next) in &next_offsets {
        let _ = tpl.add_partition_offset(&shared.commands_topic, *p, Offset::Offset(*next));
    }
    // Fresh group metadata for every transaction (the generation may have moved).
    let metadata = consumer
        .group_metadata()
        .ok_or_else(|| TxError::Abortable("no consumer group metadata".into()))?;
    producer
        .send_offsets_to_transaction(&tpl, &metadata, Duration::from_secs(30))
        .map_err(|e| classify("send_offsets_to_transaction", &e))?;
    failpoint::hit("command.before_commit");
    producer
        .commit_transaction(Duration::from_secs(30))
        .map_err(|e| classify_commit(&e))?;
    if failpoint::inject("command.commit_unknown") {
        // A drill: the commit went through, but this processor acts as if its outcome were
        // unknown (what a timed-out commit looks like).
        return Err(TxError::Fatal("injected: commit outcome unknown".into()));
    }
    // Committed: merge the overlay.
    {
        let mut committed = lock(&shared.state);
        committed.extend(overlay);
        shared
            .status
            .inner
            .aggregates
            .store(committed.len() as u64, Ordering::Relaxed);
    }
    shared
        .status
        .inner
        .transactions
        .fetch_add(1, Ordering::Relaxed);
    // Per partition: the last event written (what parked state and snapshots reflect) and
    // how many since the last snapshot.
    let mut due = Vec::new();
    {
        let mut since = lock(&shared.since_snapshot);
        for (partition, offset) in &offsets {
            let entry = since.entry(*partition).or_insert((0, -1));
            entry.0 += 1;
            entry.1 = entry.1.max(*offset);
        }
        if let Some(snapshots) = &shared.snapshots {
            for (partition, (count, last)) in since.iter_mut() {
                if *count >= snapshots.settings.every_events {
                    due.push((*partition, *last + 1));
                    *count = 0;
                }
            }
        }
    }
    for (partition, events_offset) in due {
        take_snapshot(shared, partition, events_offset);
    }
    Ok(settled)
}

/// Decides one command into the overlay and the batch's outputs.
#[allow(clippy::too_many_arguments)]
fn decide_one<A: Aggregate>(
    shared: &Shared<A>,
    committed: &HashMap<Key, Entry<A>>,
    overlay: &mut HashMap<Key, Entry<A>>,
    record: &Record,
    now: DateTime<Utc>,
    set_aside: Option<&(u32, String)>,
    events: &mut Vec<(TxRecord, EventRef)>,
    replies: &mut Vec<PendingReply>,
    dead: &mut Vec<TxRecord>,
) {
    let p = record.partition();
    if let Some((refusals @ 2.., reason)) = set_aside {
        // Its rejection reply or its dead letter was refused too: only a dead letter now,
        // cut further each time.
        // The first refusal was of its events or reply, the second of its rejection; later
        // ones of its dead letters.
        let keep = Keep::after(refusals - 2);
        let reason = format!("a record of this command was refused by Kafka: {reason}");
        dead.push(dead_letter_kept(shared, record, &reason, now, keep));
        return;
    }
    let (meta, data) = match Metadata::open(record) {
        Ok(opened) => (opened.meta, opened.payload),
        Err(e) => {
            // Without valid headers there is no reply address: the dead letter is the answer.
            dead.push(dead_letter(
                shared,
                record,
                &format!("undecodable command envelope: {e}"),
                now,
            ));
            return;
        }
    };
    let reply_to = |outcome: Option<Outcome>, event_indices: Vec<usize>| {
        let topic = meta.extensions.get("replyto").cloned().unwrap_or_default();
        let partition = meta
            .extensions
            .get("replypartition")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut reply_meta = Metadata::new(
            Uuid::new_v5(&meta.id, b"reply"),
            REPLY_TYPE,
            shared.source.as_str(),
            meta.subject.as_str(),
            now,
            Some(crate::Causation::from_cause(&meta)),
        );
        // The deadline judged: a sender retrying with the same id tells this answer from
        // the answer to its own attempt.
        if let Some(deadline) = meta.extensions.get("deadline") {
            reply_meta
                .extensions
                .insert("deadline".into(), deadline.clone());
        }
        PendingReply {
            topic,
            partition,
            aggregate: (p, meta.subject.clone()),
            meta: reply_meta,
            events: event_indices,
            outcome,
        }
    };
    let reject = |code: &str, message: String| Outcome::Rejected {
        rejection: Rejection::new(code, message),
    };

    if let Err(reason) = check_reply_address(shared, &meta) {
        // No reply can be sent (producing to it would fail the whole transaction): the
        // command goes to the dead letters undecided.
        dead.push(dead_letter(shared, record, &reason, now));
        return;
    }
    let expected = partition_for_key(meta.subject.as_bytes(), shared.partitions);
    if expected != p {
        let reason = format!(
            "command for {} arrived on partition {p}, but murmur2 puts that key on {expected}: the sender's partitioner \
             differs from the Java clients'",
            meta.subject
        );
        dead.push(dead_letter(shared, record, &reason, now));
        replies.push(reply_to(
            Some(reject("wrong_partition", reason)),
            Vec::new(),
        ));
        return;
    }
    let command = match A::Command::decode(&meta, data.as_deref()) {
        Ok(Some(command)) => command,
        Ok(None) => {
            let reason = format!("this processor does not handle {}", meta.message_type);
            dead.push(dead_letter(shared, record, &reason, now));
            replies.push(reply_to(
                Some(reject("unknown_command", reason)),
                Vec::new(),
            ));
            return;
        }
        Err(e) => {
            let reason = e.to_string();
            dead.push(dead_letter(shared, record, &reason, now));
            replies.push(reply_to(Some(reject("bad_command", reason)), Vec::new()));
            return;
        }
    };
    let key: Key = (p, meta.subject.clone());
    let entry = overlay
        .entry(key.clone())
        .or_insert_with(|| committed.get(&key).cloned().unwrap_or_default());
    if let Some((_, reason)) = set_aside
        && entry.recent.iter().any(|(id, _)| *id == meta.id)
    {
        // A retry whose answer (the first outcome) was refused: that outcome stands, so
        // nothing is remembered over it; the retry goes to the dead letters unanswered.
        let reason = format!("the answer to this retried command was refused by Kafka: {reason}");
        dead.push(dead_letter(shared, record, &reason, now));
        return;
    }
    if let Some((_, reason)) = set_aside {
        // An event or the reply it made was refused for its content (too large, invalid):
        // deciding it again would make the same. Rejected, remembered (a retry gets this
        // answer), and dead-lettered; the aggregate is unchanged.
        let rejection = Rejection::new(
            "output_refused",
            format!("an event or the reply of this command was refused by Kafka: {reason}"),
        );
        dead.push(dead_letter(shared, record, &rejection.to_string(), now));
        entry.remember(meta.id, Remembered::Rejected(rejection.clone()));
        replies.push(reply_to(Some(Outcome::Rejected { rejection }), Vec::new()));
        return;
    }
    if let Some((_, first)) = entry.recent.iter().rev().find(|(id, _)| *id == meta.id) {
        // A retry: answer with the first outcome (even past its deadline), decide nothing.
        // When the first copy was accepted in this very batch, its events' offsets are known
        // only once they are written: answer with the same events, like the first copy.
        let key = (p, meta.subject.clone());
        if let Some(original) = replies
            .iter()
            .rev()
            .find(|r| r.outcome.is_none() && r.meta.causation_id == meta.id && r.aggregate == key)
        {
            let events = original.events.clone();
            replies.push(reply_to(None, events));
            return;
        }
        replies.push(reply_to(
            Some(first.outcome(&shared.events_topic, p)),
            Vec::new(),
        ));
        return;
    }
    if let Some(deadline) = meta.extensions.get("deadline") {
        match DateTime::parse_from_rfc3339(deadline) {
            Ok(deadline) if deadline.with_timezone(&Utc) < now => {
                replies.push(reply_to(
                    Some(reject(
                        "expired",
                        format!("the command's deadline {deadline} has passed"),
                    )),
                    Vec::new(),
                ));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let reason = format!("header ce_deadline is not RFC 3339: {e}");
                dead.push(dead_letter(shared, record, &reason, now));
                replies.push(reply_to(Some(reject("bad_command", reason)), Vec::new()));
                return;
            }
        }
    }
    let decided = std::panic::catch_unwind(AssertUnwindSafe(|| entry.state.decide(&command)))
        .unwrap_or_else(|panic| {
            Err(Rejection::new(
                "internal_error",
                format!("decide panicked: {}", panic_message(&*panic)),
            ))
        });
    match decided {
        Err(rejection) => {
            entry.remember(meta.id, Remembered::Rejected(rejection.clone()));
            replies.push(reply_to(Some(Outcome::Rejected { rejection }), Vec::new()));
        }
        Ok(new_events) => {
            let mut indices = Vec::with_capacity(new_events.len());
            // This command's events: written only if every one encodes and applies, so a
            // failure halfway leaves no event in the log and the sequence where it was.
            let mut own: Vec<(TxRecord, EventRef)> = Vec::with_capacity(new_events.len());
            let mut staged = entry.clone();
            for (i, event) in new_events.iter().enumerate() {
                let failed = |why: String| {
                    Rejection::new(
                        "internal_error",
                        format!("event {i} of {}: {why}", new_events.len()),
                    )
                };
                let payload = match event.encode() {
                    Ok(payload) => payload,
                    Err(e) => {
                        let rejection = failed(format!("cannot be encoded: {e}"));
                        entry.remember(meta.id, Remembered::Rejected(rejection.clone()));
                        replies.push(reply_to(Some(Outcome::Rejected { rejection }), Vec::new()));
                        return;
                    }
                };
                staged.version += 1;
                let applied =
                    std::panic::catch_unwind(AssertUnwindSafe(|| staged.state.apply(event)));
                if let Err(panic) = applied {
                    let rejection = failed(format!("apply panicked: {}", panic_message(&*panic)));
                    entry.remember(meta.id, Remembered::Rejected(rejection.clone()));
                    replies.push(reply_to(Some(Outcome::Rejected { rejection }), Vec::new()));
                    return;
                }
                let mut event_meta = Metadata::new(
                    // Derived from the command id: a retried transaction emits the same ids.
                    Uuid::new_v5(&meta.id, format!("event/{i}").as_bytes()),
                    event.message_type(),
                    shared.source.as_str(),
                    meta.subject.as_str(),
                    now,
                    Some(crate::Causation::from_cause(&meta)),
                );
                event_meta.sequence = Some(staged.version);
                event
                    .content_type()
                    .clone_into(&mut event_meta.content_type);
                let pending = TxRecord {
                    topic: shared.events_topic.clone(),
                    partition: Some(p),
                    key: Some(meta.subject.clone().into_bytes()),
                    payload: Some(payload),
                    headers: event_meta.to_headers(),
                };
                indices.push(events.len() + own.len());
                own.push((
                    pending,
                    EventRef {
                        message_type: event.message_type().to_owned(),
                        topic: shared.events_topic.clone(),
                        partition: p,
                        offset: -1,
                        sequence: staged.version,
                    },
                ));
            }
            events.append(&mut own);
            staged.remember(meta.id, Remembered::Accepted(Vec::new()));
            *entry = staged;
            replies.push(reply_to(None, indices));
        }
    }
}

fn dead_letter<A: Aggregate>(
    shared: &Shared<A>,
    record: &Record,
    reason: &str,
    now: DateTime<Utc>,
) -> TxRecord {
    dead_letter_kept(shared, record, reason, now, Keep::All)
}

fn dead_letter_kept<A: Aggregate>(
    shared: &Shared<A>,
    record: &Record,
    reason: &str,
    now: DateTime<Utc>,
    keep: Keep,
) -> TxRecord {
    let (headers, key, payload) = dead_letter_parts(record, keep, reason, now, &shared.group);
    TxRecord {
        topic: shared.dlq_topic.clone(),
        partition: Some(0),
        key,
        payload,
        headers,
    }
}

/// Serializes partition `p`'s committed aggregates here (they reflect every event before
/// `events_offset`) and writes them to Postgres in the background; a failed write only costs
/// a longer restore.
fn take_snapshot<A: Aggregate>(shared: &Arc<Shared<A>>, p: i32, events_offset: i64) {
    let Some(snapshots) = &shared.snapshots else {
        return;
    };
    let (body, aggregates) = {
        let state = lock(&shared.state);
        let entries: Vec<(&String, &Entry<A>)> = state
            .iter()
            .filter(|((q, _), _)| *q == p)
            .map(|((_, id), entry)| (id, entry))
            .collect();
        (
            (snapshots.encode)(&entries, &shared.events_topic, p),
            entries.len(),
        )
    };
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(partition = p, error = %e, "cannot serialize a snapshot");
            return;
        }
    };
    let pool = snapshots.settings.pool.clone();
    let version = snapshots.settings.state_version;
    let topic = shared.events_topic.clone();
    let status = shared.status.clone();
    shared.handle.spawn(async move {
        match snapshot::store(&pool, &topic, p, version, events_offset, aggregates, body).await {
            Ok(()) => {
                status
                    .inner
                    .snapshots_written
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cannot store a snapshot; the next restore reads more events");
            }
        }
    });
}

/// Restores every partition this instance owns, as on assignment, and moves the command
/// consumer to where each restore says commands start (after the producer was replaced).
fn restore_owned<A: Aggregate>(
    shared: &Arc<Shared<A>>,
    consumer: &BaseConsumer<ProcessorContext<A>>,
) -> Result<()> {
    let context = consumer.context();
    let mut owned: Vec<i32> = lock(&shared.assigned_at).keys().copied().collect();
    owned.retain(|p| !lock(&shared.halted).contains_key(p));
    // Commands wait until every owned partition is restored again: not ready meanwhile. On
    // an error the processor stops, and leaving the group clears this.
    shared.status.restoring(&owned, false);
    for p in owned {
        let restored = context.restore(consumer, p);
        shared.status.restored(p);
        match restored {
            Ok(start) => consumer
                .seek(&shared.commands_topic, p, start, Duration::from_secs(10))
                .map_err(|e| {
                    Error::Runtime(format!(
                        "cannot move {}[{p}] to {start:?} after a restore: {e}",
                        shared.commands_topic
                    ))
                })?,
            Err(reason) => {
                // Usually the brokers are struggling (that is how the outcome got lost):
                // stop rather than halt a partition nobody would reassign; a restart restores
                // on assignment, and halts only if the log itself is bad.
                return Err(Error::Runtime(format!(
                    "restore of {}[{p}] after replacing the producer failed: {reason}",
                    shared.commands_topic
                )));
            }
        }
    }
    context.update_count();
    Ok(())
}

/// A command's reply address (`ce_replyto`, `ce_replypartition`) must name an existing
/// partition: producing to a missing one would fail every transaction that holds it.
fn check_reply_address<A: Aggregate>(shared: &Shared<A>, meta: &Metadata) -> Result<(), String> {
    let Some(topic) = meta.extensions.get("replyto").filter(|t| !t.is_empty()) else {
        return Ok(()); // fire and forget
    };
    let partition: i32 = meta
        .extensions
        .get("replypartition")
        .map_or(Ok(0), |v| v.parse())
        .map_err(|_| {
            format!(
                "ce_replypartition {:?} is not a number",
                meta.extensions.get("replypartition")
            )
        })?;
    let known = lock(&shared.reply_topics).get(topic).copied();
    let count = match known {
        Some(count) => count,
        None => {
            let metadata = shared
                .restore
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(|e| format!("cannot look the reply topic {topic} up: {e}"))?;
            let count = metadata
                .topics()
                .first()
                .filter(|t| t.error().is_none())
                .map_or(0, |t| t.partitions().len() as i32);
            if count > 0 {
                lock(&shared.reply_topics).insert(topic.clone(), count);
            }
            count
        }
    };
    if partition < 0 || partition >= count {
        return Err(format!(
            "the reply address {topic}[{partition}] does not exist ({topic} has {count} partitions)"
        ));
    }
    Ok(())
}

/// `topic[partition]@offset`, formatted only when an error needs it.
struct Located<'a>(&'a str, i32, i64);

impl std::fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]@{}", self.0, self.1, self.2)
    }
}
