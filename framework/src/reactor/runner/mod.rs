//! The reactor runner: one dedicated thread owns the consumer (group = the reactor's name,
//! `read_committed`, static member `group.instance.id` = `{name}-{ordinal}-{subscription tag}`)
//! and a transactional producer (`transactional.id` = `{name}-{ordinal}`).
//!
//! Per polled batch, one Kafka transaction holds the outputs of every event reacted to, the
//! dead letters of events that could not be, and the input offsets with fresh consumer group
//! metadata. A transaction is never open while we poll, so a revoke never meets one.
//!
//! A transient error on an event holds back its partition only: the batch goes on with the
//! other partitions' events and commits them; the failing partition is rewound to the event,
//! paused, and resumed after a back-off (doubling per failure, 100 ms to 5 s): the event is
//! retried, never skipped, and one stuck event does not stop the instance's other partitions.
//! Errors of the transaction itself are handled as in the command processor
//! (ARCHITECTURE.md, "Command processing"): abortable → abort and rewind; an output refused
//! for its content → abort, and the input is dead-lettered when the batch runs again; fenced
//! by another producer → stop, never recreate; unknown (a timed-out commit, an epoch the
//! coordinator bumped) → a new producer, then on from the committed offsets. A consumer fenced
//! as a static member by a join of its own rejoins with new clients
//! (`kafka/static_member.rs`).

mod clients;
mod holds;
mod react;
mod reacting;
mod rebalance;
mod set_aside;
mod status;
mod transaction;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::oneshot;

use super::Reactor;
use crate::backoff::Backoff;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::event::EventSet;
use crate::kafka::SchemaStore;
use crate::kafka::consumer::panic_message;
use crate::kafka::static_member::{Rejoins, is_fenced_consumer, probe_producer};
use crate::message::topics;
use crate::shutdown::Shutdown;
use rebalance::ReactorContext;

pub use status::ReactorStatus;

/// Where a reactor whose group has no committed offsets starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The whole retained history: nothing is missed (the default).
    #[default]
    Beginning,
    /// Only events written after the group first joins: for a reactor deployed later that
    /// must not act on the past (say, not email every user who ever signed up).
    End,
}

/// Runs a [`Reactor`] in its consumer group.
pub struct ReactorRunner<R: Reactor> {
    reactor: Arc<R>,
    service: String,
    ordinal: u32,
    max_batch: usize,
    start: StartFrom,
    status: ReactorStatus,
}

impl<R: Reactor> std::fmt::Debug for ReactorRunner<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorRunner")
            .field("reactor", &R::NAME)
            .field("service", &self.service)
            .field("ordinal", &self.ordinal)
            .field("max_batch", &self.max_batch)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl<R: Reactor> ReactorRunner<R> {
    /// A runner for `reactor` in `service` (the `ce_source` of its outputs). `ordinal` is the
    /// instance's stable number (0, 1, ...): two live instances must never share one, and a
    /// restarted instance keeps its own, so it fences and aborts its predecessor's open
    /// transaction at once.
    pub fn new(reactor: R, service: impl Into<String>, ordinal: u32) -> Self {
        Self {
            reactor: Arc::new(reactor),
            service: service.into(),
            ordinal,
            max_batch: 100,
            start: StartFrom::default(),
            status: ReactorStatus::default(),
        }
    }

    /// The most events per transaction (default 100).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Where to start when the group has no committed offsets (default: the beginning).
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// A handle on what the runner reports.
    pub fn status(&self) -> ReactorStatus {
        self.status.clone()
    }

    /// Runs until `shutdown` (or fencing, or an unrecoverable error).
    pub async fn run(self, kafka: &KafkaConfig, shutdown: Shutdown) -> Result<()> {
        super::check_name(R::NAME)?;
        crate::kafka::check_reachable_async(kafka).await?;
        let group = kafka.topic_name(R::NAME);
        let identity = format!("{group}-{}", self.ordinal);
        let dlq_topic = topics::dead_letters(&group);
        // Dead letters fed back with `choreo dlq redrive` come through `{group}.redrive`, read
        // by this group only (never the log of record). It must exist from the start: the
        // members are static (`group.instance.id`), and a static member that rejoins keeps
        // its old assignment, so a topic added to the subscription later would not be read.
        let redrive = topics::redrive(&group);
        let mut sources: Vec<String> = R::Events::topics()
            .iter()
            .map(|t| kafka.topic_name(t))
            .collect();
        sources.push(redrive.clone());
        check_topics(kafka, &sources, &dlq_topic).await?;
        // The static member id names the subscription too: a static member that rejoins with
        // the same id keeps its old assignment (librdkafka's JoinGroup leaves a stable group
        // as it is), so a new source or redrive topic would go unread. A changed subscription
        // joins as a new member instead and the group rebalances (the old member's partitions
        // move once its session times out). The transactional id stays `{group}-{ordinal}`:
        // fencing follows the instance, not its subscription.
        let member = format!("{identity}-{}", clients::subscription_tag(&sources));
        // A consumer fenced by a join of its own gets new clients (static_member.rs).
        let mut rejoins = Rejoins::default();
        loop {
            let shared = Arc::new(Shared {
                reactor: Arc::clone(&self.reactor),
                group: group.clone(),
                source: format!("/{}", self.service),
                dlq_topic: dlq_topic.clone(),
                redrive: redrive.clone(),
                config: kafka.clone(),
                status: self.status.clone(),
                shutdown: shutdown.clone(),
                handle: tokio::runtime::Handle::current(),
                rebalances: AtomicU64::new(0),
                assigned_at: Mutex::new(HashMap::new()),
                fatal: Mutex::new(None),
                stopped: AtomicBool::new(false),
                start: self.start,
                schemas: SchemaStore::new(kafka),
            });
            let consumer = clients::consumer(kafka, &shared, &member)?;
            let make_producer: MakeProducer = Box::new({
                let (kafka, identity) = (kafka.clone(), identity.clone());
                move || clients::producer(&kafka, &identity)
            });
            let done = spawn_thread(
                &identity,
                shared,
                consumer,
                make_producer,
                sources.clone(),
                self.max_batch,
            )?;
            let ended = done.await.map_err(|_| Error::TaskFailed {
                task: "the reactor thread".into(),
                reason: "it ended without a result".into(),
            })?;
            match ended {
                Err(fenced) if is_fenced_consumer(&fenced) && !shutdown.is_triggered() => {
                    let why = rejoins.after_fence(fenced)?;
                    tracing::warn!(reactor = R::NAME, reason = %why, "rejoining the group");
                    self.status.inner.rejoins.fetch_add(1, Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }
}

/// Fails with [`Error::TopicMissing`] for the first source, or the dead-letter topic, that
/// does not exist.
async fn check_topics(kafka: &KafkaConfig, sources: &[String], dlq_topic: &String) -> Result<()> {
    let admin = crate::kafka::TopicAdmin::new(kafka)?;
    for topic in sources.iter().chain([dlq_topic]) {
        if admin.describe(topic).await?.is_none() {
            return Err(Error::TopicMissing(topic.clone()));
        }
    }
    Ok(())
}

/// Makes the reactor's transactional producer (again, after an unknown outcome).
type MakeProducer = Box<dyn Fn() -> Result<FutureProducer> + Send>;

/// Starts the reactor thread, which owns the consumer and the producer; its result (a panic
/// becomes an error) arrives on the returned channel once it has dropped the consumer and
/// flushed the producer.
fn spawn_thread<R: Reactor>(
    identity: &str,
    shared: Arc<Shared<R>>,
    consumer: BaseConsumer<ReactorContext<R>>,
    make_producer: MakeProducer,
    sources: Vec<String>,
    max_batch: usize,
) -> Result<oneshot::Receiver<Result<()>>> {
    let mut producer = make_producer()?;
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("choreo-reactor-{identity}"))
        .spawn(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let clients = reacting::Clients {
                    consumer: &consumer,
                    producer: &mut producer,
                    make_producer: &*make_producer,
                };
                reacting::reacting_loop(&shared, clients, &sources, max_batch)
            }));
            let result = match outcome {
                Ok(Err(e)) => Err(probe_producer(&consumer, &producer, &sources[0], e)),
                Ok(ok) => ok,
                Err(panic) => Err(Error::Panicked {
                    what: format!("reactor {}", R::NAME),
                    message: panic_message(&*panic),
                }),
            };
            shared.stopped.store(true, Ordering::Release);
            drop(consumer);
            let _ = producer.flush(Duration::from_secs(10));
            let _ = done_tx.send(result);
        })
        .map_err(|e| Error::TaskFailed {
            task: "starting the reactor thread".into(),
            reason: e.to_string(),
        })?;
    Ok(done_rx)
}

use crate::kafka::TopicPartition;

/// The wait after a transient failure (an aborted transaction, an event held back): 100 ms
/// doubling to 5 s per failure in a row, with jitter.
const RETRY: Backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5));

/// What the reactor thread and the rebalance callbacks share.
struct Shared<R: Reactor> {
    reactor: Arc<R>,
    group: String,
    source: String,
    dlq_topic: String,
    /// `{group}.redrive`: read from its beginning even with `StartFrom::End` (every record
    /// in it was put there to be handled).
    redrive: String,
    config: KafkaConfig,
    status: ReactorStatus,
    shutdown: Shutdown,
    /// Runs the reactor's futures from the reactor thread (never an async thread).
    handle: tokio::runtime::Handle,
    /// Bumped by every rebalance callback.
    rebalances: AtomicU64,
    /// The rebalance count when each owned partition was assigned.
    assigned_at: Mutex<HashMap<TopicPartition, u64>>,
    fatal: Mutex<Option<String>>,
    stopped: AtomicBool,
    start: StartFrom,
    /// Writer schemas of Avro events, refreshed when an unknown one turns up.
    schemas: SchemaStore,
}
