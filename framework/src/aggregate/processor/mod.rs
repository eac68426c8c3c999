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
//!
//! The parts: `status` (what it reports), `memory` (aggregate states and the duplicate
//! memory), `rebalance` (assignments, revokes and parked state), `restore`, `snapshotter`,
//! `processing` (the loop), `transaction` (one batch) and `decide` (one command).

mod decide;
mod memory;
mod processing;
mod rebalance;
mod restore;
mod snapshotter;
mod status;
#[cfg(test)]
mod test_support;
mod transaction;

pub use status::ProcessorStatus;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::oneshot;

use self::memory::Entry;
use self::processing::processing_loop;
use self::rebalance::{ParkedState, ProcessorContext};
use self::snapshotter::Snapshotter;
use super::Aggregate;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::event::EventSet;
use crate::kafka::client;
use crate::kafka::consumer::panic_message;
use crate::kafka::static_member::{Rejoins, is_fenced_consumer, probe_producer};
use crate::message::topics;
use crate::shutdown::Shutdown;

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

    /// What the processor reports while it runs: a shared handle, so take it before `run`.
    pub fn status(&self) -> ProcessorStatus {
        self.status.clone()
    }

    /// Runs until `shutdown` (or fencing, or an unrecoverable error).
    pub async fn run(self, kafka: &KafkaConfig, shutdown: Shutdown) -> Result<()> {
        crate::kafka::check_reachable_async(kafka).await?;
        let group = kafka.topic_name(&self.service);
        let commands_topic = kafka.topic_name(&topics::commands(&self.entity));
        let events_topic = kafka.topic_name(&topics::events(&self.entity));
        let dlq_topic = topics::dead_letters(&group);
        self.check_topics(kafka, [&commands_topic, &events_topic], &dlq_topic)
            .await?;
        learn_schemas::<A>(kafka).await?;
        // A consumer fenced by a join of its own gets new clients (kafka/static_member.rs).
        let mut rejoins = Rejoins::default();
        loop {
            let ended = self
                .run_once(
                    kafka,
                    &shutdown,
                    [&commands_topic, &events_topic, &dlq_topic],
                )
                .await;
            match ended {
                Err(fenced) if is_fenced_consumer(&fenced) && !shutdown.is_triggered() => {
                    let why = rejoins.after_fence(fenced)?;
                    tracing::warn!(reason = %why, "command processor: rejoining the group");
                    self.status.rejoining();
                }
                other => return other,
            }
        }
    }

    /// One membership: new clients and state, until the thread ends.
    async fn run_once(
        &self,
        kafka: &KafkaConfig,
        shutdown: &Shutdown,
        [commands_topic, events_topic, dlq_topic]: [&String; 3],
    ) -> Result<()> {
        let group = kafka.topic_name(&self.service);
        let identity = format!("{group}-{}", self.ordinal);
        let shared = Arc::new(Shared::<A> {
            group: group.clone(),
            source: format!("/{}", self.service),
            commands_topic: commands_topic.clone(),
            events_topic: events_topic.clone(),
            dlq_topic: dlq_topic.clone(),
            partitions: self.partitions,
            state: Mutex::new(HashMap::new()),
            halted: Mutex::new(HashMap::new()),
            status: self.status.clone(),
            restore: restore_consumer(kafka, &group)?,
            fatal: Mutex::new(None),
            shutdown: shutdown.clone(),
            stopped: AtomicBool::new(false),
            handle: tokio::runtime::Handle::current(),
            rebalances: AtomicU64::new(0),
            assigned_at: Mutex::new(HashMap::new()),
            snapshots: self.snapshots.clone(),
            since_snapshot: Mutex::new(HashMap::new()),
            reply_topics: Mutex::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
        });
        let consumer = command_consumer(kafka, &group, &identity, &shared)?;
        let producer_config = client::transactional(kafka, &identity, &[("linger.ms", "1")]);
        let make_producer = move || -> Result<FutureProducer> {
            producer_config.create().map_err(|e| Error::ClientCreate {
                client: "producer",
                source: e,
            })
        };
        let producer = make_producer()?;
        let done = start_thread(
            &identity,
            Arc::clone(&shared),
            consumer,
            producer,
            make_producer,
            self.max_batch,
        )?;
        done.await.map_err(|_| Error::TaskFailed {
            task: "the processor thread".into(),
            reason: "it ended without a result".into(),
        })?
    }

    /// The commands and events topics exist with the declared partition count, and the
    /// dead-letter topic exists.
    async fn check_topics(
        &self,
        kafka: &KafkaConfig,
        topics: [&String; 2],
        dlq_topic: &str,
    ) -> Result<()> {
        let admin = crate::kafka::TopicAdmin::new(kafka)?;
        for topic in topics {
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
        if admin.describe(dlq_topic).await?.is_none() {
            return Err(Error::TopicMissing(dlq_topic.to_owned()));
        }
        Ok(())
    }
}

/// Avro: register our writer schemas before the first event is written, and learn the
/// stored ones before restore reads the log (restore runs on a thread that cannot wait
/// for the store; an event whose schema is still unknown there halts its partition).
async fn learn_schemas<A: Aggregate>(kafka: &KafkaConfig) -> Result<()> {
    let schemas = crate::kafka::SchemaStore::new(kafka);
    for (name, schema) in A::Event::avro_schemas() {
        schemas.register(name, schema).await?;
    }
    if !A::Event::avro_schemas().is_empty() || !A::Event::upcast_names().is_empty() {
        schemas.refresh().await?;
    }
    Ok(())
}

/// Reads events partitions during restores.
fn restore_consumer(kafka: &KafkaConfig, group: &str) -> Result<BaseConsumer> {
    client::reader(
        kafka,
        &format!("{group}.restore"),
        // Restores read history, partition after partition: a fetch that waits for new data
        // at the end of one (500 ms by default) would delay the first fetch of the next.
        &[("fetch.wait.max.ms", "10")],
    )
    .create()
    .map_err(|e| Error::ClientCreate {
        client: "consumer",
        source: e,
    })
}

/// The consumer of the commands topic, the static member `identity` of the processor's group.
fn command_consumer<A: Aggregate>(
    kafka: &KafkaConfig,
    group: &str,
    identity: &str,
    shared: &Arc<Shared<A>>,
) -> Result<BaseConsumer<ProcessorContext<A>>> {
    client::member(
        kafka,
        group,
        &[
            ("group.instance.id", identity),
            // Lost group offsets must not replay every retained command.
            ("auto.offset.reset", "error"),
        ],
    )
    .create_with_context(ProcessorContext {
        shared: Arc::clone(shared),
    })
    .map_err(|e| Error::ClientCreate {
        client: "consumer",
        source: e,
    })
}

/// Starts the processor's thread, which owns the consumer and the producer; its result
/// arrives on the receiver.
fn start_thread<A: Aggregate>(
    identity: &str,
    shared: Arc<Shared<A>>,
    consumer: BaseConsumer<ProcessorContext<A>>,
    mut producer: FutureProducer,
    make_producer: impl Fn() -> Result<FutureProducer> + Send + 'static,
    max_batch: usize,
) -> Result<oneshot::Receiver<Result<()>>> {
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("choreo-commands-{identity}"))
        .spawn(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                processing_loop(&shared, &consumer, &mut producer, &make_producer, max_batch)
            }));
            let result = match outcome {
                Ok(Err(e)) => Err(probe_producer(
                    &consumer,
                    &producer,
                    &shared.commands_topic,
                    e,
                )),
                Ok(ok) => ok,
                Err(panic) => Err(Error::Panicked {
                    what: "command processor".into(),
                    message: panic_message(&*panic),
                }),
            };
            // Leave the group; the revoke callback drops the partitions' state.
            shared.stopped.store(true, Ordering::Release);
            // Not ready from here on: closing the consumer can take seconds.
            shared.status.left();
            drop(consumer);
            let _ = producer.flush(Duration::from_secs(10));
            let _ = done_tx.send(result);
        })
        .map_err(|e| Error::TaskFailed {
            task: "starting the processor thread".into(),
            reason: e.to_string(),
        })?;
    Ok(done_rx)
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
