//! The consumer runtime every consumer stands on (ARCHITECTURE.md, "Consumer runtime").
//!
//! One `BaseConsumer` is polled on a dedicated thread (not `StreamConsumer`: it serves
//! rebalances inside `recv()` on an executor thread, where blocking deadlocks). Records go,
//! in batches, to one task per assigned partition: order per partition, partitions
//! concurrently. What the tasks do is the [`PartitionWorker`] of the part built on top
//! (event handlers, projections, ...).
//!
//! Why each piece is where it is:
//! - **Rebalances** are handled by our own `ConsumerContext::rebalance`. On assign the start
//!   offsets (from the group, or from Postgres for projections) go into the partition list and
//!   `incremental_assign` is called exactly once, no seek afterwards. On revoke the partition
//!   tasks finish their batch (or abort it) and their offsets are committed *before* the
//!   callback returns, so the next owner starts where this one stopped.
//! - **Backpressure and transient errors**: a task that cannot make progress stops taking
//!   records; when its queue passes a high-water mark the poll thread pauses the partition and
//!   keeps polling, so `max.poll.interval.ms` never evicts the member. It resumes when the
//!   queue drains.
//! - **Offsets** are stored as *last processed + 1* only after the worker reports the batch
//!   done (offsets have gaps: transaction markers), and committed by librdkafka's auto-commit.
//! - **Seeks** (a projection whose compare-and-set failed) bump a per-partition epoch; records
//!   dispatched before the seek carry the old epoch and are discarded by the task.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;

pub use super::record::Record;

/// Records of one partition, in offset order.
pub type Batch = Vec<Record>;

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOffset {
    /// The group's committed offset; `auto.offset.reset` when there is none.
    Committed,
    /// The first retained record.
    Beginning,
    /// An explicit offset (a projection's checkpoint).
    At(i64),
    /// Do not process this partition: it is assigned (the group needs an owner) but halted
    /// with this reason until the process restarts.
    Halt(String),
}

/// What a partition task reports after a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerOutcome {
    /// The batch is done; store `next_offset` (last processed + 1) when given.
    Processed { next_offset: Option<i64> },
    /// Discard what is queued and read again from this offset.
    Seek(i64),
    /// Stop this partition (paused until the process restarts); the reason is logged and
    /// returned in the [`RunSummary`].
    Halt(String),
    /// Stop everything: the runtime shuts down with this error.
    Fatal(String),
}

/// The part built on the runtime: where partitions start and who processes them.
pub trait PartitionLogic: Send + Sync + 'static {
    /// The per-partition processor.
    type Worker: PartitionWorker;

    /// Start offsets for newly assigned partitions, in the order given. Runs on the poll
    /// thread inside the rebalance callback; it may do I/O (Postgres checkpoints).
    fn start_offsets(
        &self,
        partitions: &[(String, i32)],
    ) -> impl Future<Output = Result<Vec<StartOffset>>> + Send;

    /// A processor for a newly assigned partition.
    fn worker(&self, topic: &str, partition: i32) -> Self::Worker;
}

/// Processes the records of one partition, one batch at a time, in order.
pub trait PartitionWorker: Send + 'static {
    /// Processes a batch. Long retries should check [`PartitionControl::stopping`] (or use
    /// [`PartitionControl::backoff`]) so a revoke or shutdown is not held up.
    fn process(
        &mut self,
        batch: Batch,
        control: &PartitionControl,
    ) -> impl Future<Output = WorkerOutcome> + Send;
}

/// Handed to a [`PartitionWorker`]: is the partition being taken away, and a stop-aware
/// back-off.
#[derive(Debug, Clone)]
pub struct PartitionControl {
    stop: Arc<AtomicBool>,
    topic: Arc<str>,
    partition: i32,
}

impl PartitionControl {
    /// True once the partition is being revoked or the runtime shuts down.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps an exponential back-off for retry `attempt` (100 ms doubling to 30 s); returns
    /// false, early, when the partition is stopping.
    pub async fn backoff(&self, attempt: u32) -> bool {
        let delay = Duration::from_millis(100u64.saturating_mul(1 << attempt.min(9)))
            .min(Duration::from_secs(30));
        let deadline = tokio::time::Instant::now() + delay;
        while tokio::time::Instant::now() < deadline {
            if self.stopping() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50).min(delay)).await;
        }
        !self.stopping()
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }
}

/// What a running consumer owns right now: for readiness checks, dashboards and tests.
#[derive(Debug, Clone, Default)]
pub struct ConsumerStatus {
    inner: Arc<Mutex<StatusInner>>,
}

#[derive(Debug, Default)]
struct StatusInner {
    assigned: Vec<(String, i32)>,
    halted: Vec<(String, i32, String)>,
    waiting: Vec<(String, i32, String)>,
    /// In the group: the first assignment (even an empty one) was seen, and the run has not
    /// ended.
    joined: bool,
}

impl ConsumerStatus {
    /// Partitions assigned to this member now.
    pub fn assigned(&self) -> Vec<(String, i32)> {
        let mut out = self.lock().assigned.clone();
        out.sort();
        out
    }

    /// Partitions halted, with the reason.
    pub fn halted(&self) -> Vec<(String, i32, String)> {
        self.lock().halted.clone()
    }

    /// Partitions assigned but not started, with the last error: their start offsets could
    /// not be read yet (the database is down); the runtime keeps asking in the background.
    pub fn waiting(&self) -> Vec<(String, i32, String)> {
        let mut out = self.lock().waiting.clone();
        out.sort();
        out
    }

    /// Ready: in the group (its first assignment seen, not stopped), nothing halted, nothing
    /// waiting for its start offset.
    pub fn is_ready(&self) -> bool {
        let inner = self.lock();
        inner.joined && inner.halted.is_empty() && inner.waiting.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, StatusInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How a consumer joins its group and sizes its queues.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub group_id: String,
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
            revoke_timeout: Duration::from_secs(30),
            properties: Vec::new(),
            status: ConsumerStatus::default(),
            required_topics: Vec::new(),
            optional_topics: vec![format!("{group_id}.redrive")],
        }
    }

    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }
}

/// What a finished run leaves behind.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Partitions halted during the run, with the reason.
    pub halted: Vec<(String, i32, String)>,
    /// How many times partitions were assigned to this member (1 in a calm run).
    pub assignments: u64,
}

/// Runs a [`PartitionLogic`] in a consumer group until shutdown.
#[derive(Debug)]
pub struct ConsumerRuntime;

type Tp = (Arc<str>, i32);

/// A partition task's report to the poll thread. It carries the task's assignment
/// generation, so a report from a task of an earlier assignment of the same partition is
/// ignored rather than applied to the new one.
struct Report {
    key: Tp,
    generation: u64,
    kind: ReportKind,
}

enum ReportKind {
    Store(i64),
    Seek(i64, u64),
    Halt(String),
    Fatal(String),
    Exited,
}

struct Dispatch {
    epoch: u64,
    records: Batch,
}

struct WorkerHandle {
    /// Taken (closing the queue) when the partition is revoked: the task then exits after
    /// its batch instead of waiting for records that will not come.
    tx: Option<mpsc::UnboundedSender<Dispatch>>,
    stop: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Assignment generation when this task was spawned.
    generation: u64,
    /// Bumped by each seek; records fetched before the seek carry an older epoch.
    epoch: u64,
    paused: bool,
    halted: bool,
    /// Assigned while its start offset could not be read: paused, nothing dispatched, until a
    /// background lookup succeeds and seeks it.
    waiting: bool,
    exited: bool,
}

struct State {
    workers: HashMap<Tp, WorkerHandle>,
    /// Last offset stored per partition (what a revoke commits).
    stored: HashMap<Tp, i64>,
    halted: Vec<(String, i32, String)>,
    fatal: Option<String>,
}

struct Shared<L: PartitionLogic> {
    logic: Arc<L>,
    settings: ConsumerSettings,
    handle: Handle,
    state: Mutex<State>,
    reports_tx: std_mpsc::Sender<Report>,
    reports_rx: Mutex<std_mpsc::Receiver<Report>>,
    generation: AtomicU64,
    shutdown: Shutdown,
    /// Set when the `run` future is dropped: stop without touching the caller's signal.
    abandoned: AtomicBool,
    /// How long an assignment retries the logic's start offsets inside the rebalance
    /// callback before it leaves them to a background lookup.
    start_offsets_budget: Duration,
}

impl<L: PartitionLogic> Shared<L> {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way that matters
        // more than stopping; keep going with the data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stopping(&self) -> bool {
        self.shutdown.is_triggered() || self.abandoned.load(Ordering::Acquire)
    }

    fn fail(&self, reason: String) {
        tracing::error!(group = %self.settings.group_id, %reason, "consumer runtime stopping");
        self.state().fatal.get_or_insert(reason);
        self.shutdown.trigger();
    }
}

/// The librdkafka context: our rebalance handling and logs into `tracing`.
struct RuntimeContext<L: PartitionLogic> {
    shared: Arc<Shared<L>>,
}

impl<L: PartitionLogic> ClientContext for RuntimeContext<L> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(group = %self.shared.settings.group_id, %error, reason, "kafka client error");
    }
}

pub(crate) fn forward_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", fac, "{message}");
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

impl<L: PartitionLogic> ConsumerContext for RuntimeContext<L> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                tracing::error!(group = %self.shared.settings.group_id, error = ?other, "rebalance error; releasing the assignment");
                if let Ok(assigned) = consumer.assignment() {
                    self.revoke(consumer, &mut assigned.clone());
                }
            }
        }
    }
}

impl<L: PartitionLogic> RuntimeContext<L> {
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let shared = &self.shared;
        let partitions: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        tracing::info!(group = %shared.settings.group_id, ?partitions, "partitions assigned");
        let offsets = self.start_offsets(&partitions);
        let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let mut assign = TopicPartitionList::with_capacity(partitions.len());
        let mut halt = Vec::new();
        let mut waiting: Vec<Tp> = Vec::new();
        {
            let mut state = shared.state();
            for (i, (topic, partition)) in partitions.iter().enumerate() {
                let key: Tp = (Arc::from(topic.as_str()), *partition);
                let offset = match &offsets {
                    Ok(offsets) => {
                        match offsets.get(i).cloned().unwrap_or(StartOffset::Committed) {
                            StartOffset::Committed => Offset::Stored,
                            StartOffset::Beginning => Offset::Beginning,
                            StartOffset::At(o) => Offset::Offset(o),
                            StartOffset::Halt(reason) => {
                                halt.push((key.clone(), reason));
                                Offset::Stored
                            }
                        }
                    }
                    Err(_) => {
                        // At the log start rather than the committed offset: the fetcher then
                        // starts at once (no offset fetch, no auto.offset.reset), so the seek
                        // that starts the partition later is accepted. Nothing is dispatched
                        // until then.
                        waiting.push(key.clone());
                        Offset::Beginning
                    }
                };
                if let Err(e) = assign.add_partition_offset(topic, *partition, offset) {
                    tracing::error!(%topic, partition, error = %e, "cannot set start offset");
                }
                match spawn_worker(shared, key.clone(), generation) {
                    Ok(handle) => {
                        state.workers.insert(key, handle);
                    }
                    Err(reason) => {
                        drop(state);
                        shared.fail(reason);
                        state = shared.state();
                    }
                }
            }
        }
        {
            let mut status = shared.settings.status.lock();
            status.assigned.extend(partitions.iter().cloned());
            status.joined = true;
        }
        // Exactly one incremental_assign, with the offsets in it; no seek afterwards.
        if let Err(e) = consumer.incremental_assign(&assign) {
            shared.fail(format!("incremental_assign failed: {e}"));
        }
        // An application pause survives unassign/reassign in librdkafka: a partition paused
        // by flow control when it was revoked would come back paused forever.
        if let Err(e) = consumer.resume(&assign) {
            tracing::warn!(error = %e, "resuming newly assigned partitions failed");
        }
        for (key, reason) in halt {
            halt_partition(shared, consumer, &key, reason);
        }
        if let Err(e) = &offsets {
            tracing::warn!(group = %shared.settings.group_id, error = %e, partitions = ?waiting,
                "start offsets unavailable; the partitions wait, paused, and the lookup goes on in the background");
            for key in &waiting {
                wait_for_start(shared, consumer, key, &e.to_string());
            }
        }
    }

    /// Asks the logic for start offsets, retrying I/O failures for a while (a short while:
    /// the callback holds up every other partition of this member). A panic in the logic is an
    /// error, not a dead poll thread.
    fn start_offsets(&self, partitions: &[(String, i32)]) -> Result<Vec<StartOffset>> {
        let shared = &self.shared;
        let deadline = Instant::now() + shared.start_offsets_budget;
        let mut attempt = 0;
        loop {
            // Each attempt is bounded too (a black-holed database would otherwise hold the
            // callback for the pool's whole acquire timeout).
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
            let call = std::panic::catch_unwind(AssertUnwindSafe(|| {
                // The timer is made inside the runtime (this thread is not one of its own).
                shared.handle.block_on(async {
                    tokio::time::timeout(left, shared.logic.start_offsets(partitions)).await
                })
            }));
            let result = match call {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(Error::Runtime(format!(
                    "start offsets not answered within {left:?}"
                ))),
                Err(panic) => Err(Error::Runtime(format!(
                    "start_offsets panicked: {}",
                    panic_message(&*panic)
                ))),
            };
            match result {
                Ok(offsets) => return Ok(offsets),
                Err(e) if Instant::now() < deadline && !shared.stopping() => {
                    tracing::warn!(error = %e, attempt, "start offsets unavailable; retrying");
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200 * attempt.min(10)));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let shared = &self.shared;
        let lost = consumer.assignment_lost();
        let revoked: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        tracing::info!(group = %shared.settings.group_id, partitions = ?revoked, lost, "partitions revoked");
        // Tell the tasks to stop after their batch and wait for them, so their offsets are
        // stored before we commit and give the partitions away. A lost assignment is already
        // owned by someone else: stop at once.
        let mut waiting: HashMap<Tp, WorkerHandle> = HashMap::new();
        {
            let mut state = shared.state();
            for key in &revoked {
                if let Some(mut handle) = state.workers.remove(key) {
                    handle.stop.store(true, Ordering::Release);
                    handle.tx = None;
                    waiting.insert(key.clone(), handle);
                }
            }
        }
        let timeout = if lost {
            Duration::ZERO
        } else {
            shared.settings.revoke_timeout
        };
        let deadline = Instant::now() + timeout;
        while waiting.values().any(|h| !h.exited) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let report = {
                let rx = shared
                    .reports_rx
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                rx.recv_timeout(left)
            };
            match report {
                Ok(report) => handle_report(shared, consumer, report, &mut waiting, lost),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        for (key, handle) in &mut waiting {
            if !handle.exited
                && let Some(task) = handle.task.take()
            {
                tracing::warn!(topic = %key.0, partition = key.1, lost, "partition task still busy; aborting it (its batch is not committed and will be redelivered)");
                task.abort();
                // Wait (bounded) until the abort took effect, so the aborted task does not run on
                // while the partition belongs to someone else.
                let _ = shared
                    .handle
                    .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
            }
        }
        drop(waiting);
        if shared.settings.commit_offsets && !lost {
            let mut commit = TopicPartitionList::new();
            {
                let state = shared.state();
                for key in &revoked {
                    if let Some(offset) = state.stored.get(key) {
                        let _ = commit.add_partition_offset(&key.0, key.1, Offset::Offset(*offset));
                    }
                }
            }
            if commit.count() > 0
                && let Err(e) = consumer.commit(&commit, CommitMode::Sync)
            {
                tracing::warn!(error = %e, "committing offsets of revoked partitions failed; the next owner may see some records again");
            }
        }
        {
            let mut state = shared.state();
            for key in &revoked {
                state.stored.remove(key);
            }
            shared
                .settings
                .status
                .lock()
                .assigned
                .retain(|(t, p)| !revoked.iter().any(|(rt, rp)| **rt == **t && rp == p));
            shared
                .settings
                .status
                .lock()
                .waiting
                .retain(|(t, p, _)| !revoked.iter().any(|(rt, rp)| **rt == **t && rp == p));
        }
        // Leave no application pause behind (see assign).
        let _ = consumer.resume(tpl);
        if let Err(e) = consumer.incremental_unassign(tpl) {
            tracing::error!(error = %e, "incremental_unassign failed");
        }
    }
}

/// How long an assignment retries start offsets inside the rebalance callback.
const START_OFFSETS_IN_CALLBACK: Duration = Duration::from_secs(10);

/// Marks a newly assigned partition as waiting for its start offset: paused, nothing
/// dispatched, shown in the status.
fn wait_for_start<L: PartitionLogic>(
    shared: &Shared<L>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
    key: &Tp,
    reason: &str,
) {
    let mut state = shared.state();
    let Some(handle) = state.workers.get_mut(key) else {
        return;
    };
    handle.waiting = true;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&key.0, key.1);
    if let Err(e) = consumer.pause(&tpl) {
        // Not fatal: records that arrive are not dispatched while the partition waits, and the
        // seek that starts it discards them.
        tracing::warn!(topic = %key.0, partition = key.1, error = %e, "cannot pause a waiting partition");
    }
    handle.paused = true;
    set_waiting(shared, key, reason);
}

/// Shows `key` as waiting, with the last reason.
fn set_waiting<L: PartitionLogic>(shared: &Shared<L>, key: &Tp, reason: &str) {
    let mut status = shared.settings.status.lock();
    status
        .waiting
        .retain(|(t, p, _)| !(**t == *key.0 && *p == key.1));
    status
        .waiting
        .push((key.0.to_string(), key.1, reason.to_owned()));
}

type LookupAnswer = std_mpsc::Receiver<Result<Vec<StartOffset>>>;

/// The wait before the next lookup after `failures` failed ones: 2, 4, then 8 s.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.clamp(1, 3))
}

/// The background lookup of start offsets for partitions that wait for them: one lookup at a
/// time on the async runtime, retried with back-off while it fails, never halting a partition
/// for an outage. Driven by the poll loop.
#[derive(Default)]
struct StartLookup {
    /// The partitions asked for (with their assignment generation) and where the answer comes.
    in_flight: Option<(Vec<(Tp, u64)>, LookupAnswer)>,
    failures: u32,
    next_try: Option<Instant>,
}

impl StartLookup {
    fn step<L: PartitionLogic>(
        &mut self,
        shared: &Arc<Shared<L>>,
        consumer: &BaseConsumer<RuntimeContext<L>>,
    ) {
        if let Some((keys, rx)) = &self.in_flight {
            let result = match rx.try_recv() {
                Err(std_mpsc::TryRecvError::Empty) => return,
                Ok(result) => result,
                Err(std_mpsc::TryRecvError::Disconnected) => Err(Error::Runtime(
                    "the start offset lookup ended without an answer".into(),
                )),
            };
            let keys = keys.clone();
            self.in_flight = None;
            match result {
                Ok(offsets) => {
                    let mut all_started = true;
                    for ((key, generation), offset) in keys.iter().zip(offsets) {
                        all_started &= start_waiting(shared, consumer, key, *generation, offset);
                    }
                    if all_started {
                        self.failures = 0;
                    } else {
                        self.failures += 1;
                        self.next_try = Some(Instant::now() + retry_delay(self.failures));
                    }
                }
                Err(e) => {
                    for (key, _) in &keys {
                        set_waiting(shared, key, &e.to_string());
                    }
                    self.failures += 1;
                    let delay = retry_delay(self.failures);
                    tracing::warn!(group = %shared.settings.group_id, error = %e, retry_in = ?delay,
                        partitions = keys.len(), "start offsets still unavailable; the partitions keep waiting");
                    self.next_try = Some(Instant::now() + delay);
                }
            }
            return;
        }
        if shared.stopping() || self.next_try.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let keys: Vec<(Tp, u64)> = shared
            .state()
            .workers
            .iter()
            .filter(|(_, h)| h.waiting && !h.halted)
            .map(|(k, h)| (k.clone(), h.generation))
            .collect();
        if keys.is_empty() {
            return;
        }
        let partitions: Vec<(String, i32)> =
            keys.iter().map(|(k, _)| (k.0.to_string(), k.1)).collect();
        let logic = Arc::clone(&shared.logic);
        let handle = shared.handle.clone();
        let (tx, rx) = std_mpsc::channel();
        // On a blocking thread: the logic may block (it runs on the poll thread otherwise).
        shared.handle.spawn_blocking(move || {
            use futures::FutureExt;
            let result = handle
                .block_on(AssertUnwindSafe(logic.start_offsets(&partitions)).catch_unwind())
                .unwrap_or_else(|panic| {
                    Err(Error::Runtime(format!(
                        "start_offsets panicked: {}",
                        panic_message(&*panic)
                    )))
                })
                .and_then(|offsets| {
                    if offsets.len() == partitions.len() {
                        Ok(offsets)
                    } else {
                        Err(Error::Runtime(format!(
                            "start_offsets answered {} offsets for {} partitions",
                            offsets.len(),
                            partitions.len()
                        )))
                    }
                });
            let _ = tx.send(result);
        });
        self.in_flight = Some((keys, rx));
    }
}

/// Starts a partition that waited for its start offset: seeks it there and resumes it. A
/// partition revoked (or reassigned) meanwhile is left alone. Returns false when it must go
/// on waiting (the seek or the committed offset failed: local trouble, retried; never a halt).
fn start_waiting<L: PartitionLogic>(
    shared: &Shared<L>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
    key: &Tp,
    generation: u64,
    start: StartOffset,
) -> bool {
    {
        let state = shared.state();
        if !state
            .workers
            .get(key)
            .is_some_and(|h| h.generation == generation && h.waiting && !h.halted)
        {
            return true;
        }
    }
    let reset = shared.settings.auto_offset_reset.as_str();
    let target = match start {
        StartOffset::At(o) => Offset::Offset(o),
        StartOffset::Beginning => Offset::Beginning,
        StartOffset::Halt(reason) => {
            stop_waiting(shared, consumer, key, Some(reason));
            return true;
        }
        StartOffset::Committed => {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&key.0, key.1);
            match consumer.committed_offsets(tpl, Duration::from_secs(10)) {
                Ok(list) => match list.elements().first().map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Offset::Offset(o),
                    _ if reset == "earliest" || reset == "smallest" => Offset::Beginning,
                    _ if reset == "latest" || reset == "largest" => Offset::End,
                    _ => {
                        let reason = format!("no committed offset and auto.offset.reset={reset}");
                        stop_waiting(shared, consumer, key, Some(reason));
                        return true;
                    }
                },
                Err(e) => {
                    set_waiting(
                        shared,
                        key,
                        &format!("cannot read the committed offset: {e}"),
                    );
                    return false;
                }
            }
        }
    };
    if let Err(error) = seek_one(consumer, key, target) {
        tracing::warn!(topic = %key.0, partition = key.1, %error, "seeking a waiting partition to its start failed; retrying");
        set_waiting(shared, key, &format!("seek to {target:?} failed: {error}"));
        return false;
    }
    stop_waiting(shared, consumer, key, None);
    tracing::info!(topic = %key.0, partition = key.1, offset = ?target, "start offset found; partition started");
    true
}

/// Seeks one partition; the error, if the call or the partition failed.
fn seek_one<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    key: &Tp,
    offset: Offset,
) -> std::result::Result<(), String> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&key.0, key.1, offset)
        .map_err(|e| e.to_string())?;
    // seek_partitions reports per-partition failures inside the returned list.
    match consumer.seek_partitions(tpl, Duration::from_secs(10)) {
        Err(e) => Err(e.to_string()),
        Ok(list) => list
            .elements()
            .iter()
            .find_map(|e| e.error().err().map(|e| e.to_string()))
            .map_or(Ok(()), Err),
    }
}

/// Ends a partition's wait: resumed to process from where it was sought, or halted.
fn stop_waiting<L: PartitionLogic>(
    shared: &Shared<L>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
    key: &Tp,
    halt: Option<String>,
) {
    shared
        .settings
        .status
        .lock()
        .waiting
        .retain(|(t, p, _)| !(**t == *key.0 && *p == key.1));
    if let Some(handle) = shared.state().workers.get_mut(key) {
        handle.waiting = false;
        if halt.is_none() {
            handle.paused = false;
        }
    }
    match halt {
        Some(reason) => halt_partition(shared, consumer, key, reason),
        None => {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&key.0, key.1);
            if let Err(e) = consumer.resume(&tpl) {
                tracing::warn!(error = %e, "resuming a partition that waited failed");
            }
        }
    }
}

fn halt_partition<L: PartitionLogic>(
    shared: &Shared<L>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
    key: &Tp,
    reason: String,
) {
    tracing::error!(topic = %key.0, partition = key.1, %reason, "partition halted");
    let mut state = shared.state();
    if let Some(handle) = state.workers.get_mut(key) {
        handle.halted = true;
        handle.stop.store(true, Ordering::Release);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&key.0, key.1);
        if let Err(e) = consumer.pause(&tpl) {
            tracing::warn!(error = %e, "cannot pause halted partition");
        }
        handle.paused = true;
    }
    shared
        .settings
        .status
        .lock()
        .halted
        .push((key.0.to_string(), key.1, reason.clone()));
    state.halted.push((key.0.to_string(), key.1, reason));
}

/// Applies a task's report. `revoking` holds the tasks of partitions being revoked right now.
fn handle_report<L: PartitionLogic>(
    shared: &Shared<L>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
    report: Report,
    revoking: &mut HashMap<Tp, WorkerHandle>,
    lost: bool,
) {
    let Report {
        key,
        generation,
        kind,
    } = report;
    let mut state = shared.state();
    let current = state
        .workers
        .get(&key)
        .is_some_and(|h| h.generation == generation);
    let being_revoked = revoking
        .get(&key)
        .is_some_and(|h| h.generation == generation);
    if !current && !being_revoked {
        // From a task of an earlier assignment of this partition: stale.
        return;
    }
    match kind {
        ReportKind::Store(offset) => {
            if !shared.settings.commit_offsets || (being_revoked && lost) {
                return;
            }
            let mut tpl = TopicPartitionList::new();
            let _ = tpl.add_partition_offset(&key.0, key.1, Offset::Offset(offset));
            match consumer.store_offsets(&tpl) {
                Ok(()) => {
                    state.stored.insert(key, offset);
                }
                Err(e) => {
                    tracing::warn!(topic = %key.0, partition = key.1, offset, error = %e, "storing offset failed")
                }
            }
        }
        ReportKind::Seek(offset, epoch) => {
            if being_revoked {
                return;
            }
            if let Some(handle) = state.workers.get_mut(&key) {
                handle.epoch = epoch;
            }
            drop(state);
            if let Err(error) = seek_one(consumer, &key, Offset::Offset(offset)) {
                halt_partition(
                    shared,
                    consumer,
                    &key,
                    format!("seek to {offset} failed: {error}"),
                );
            }
        }
        ReportKind::Halt(reason) => {
            if let Some(handle) = revoking.get_mut(&key) {
                handle.exited = true;
            }
            drop(state);
            if current {
                halt_partition(shared, consumer, &key, reason);
            }
        }
        ReportKind::Fatal(reason) => {
            drop(state);
            shared.fail(reason);
        }
        ReportKind::Exited => {
            if let Some(handle) = revoking.get_mut(&key) {
                handle.exited = true;
            }
            if let Some(handle) = state.workers.get_mut(&key) {
                handle.exited = true;
            }
        }
    }
}

fn spawn_worker<L: PartitionLogic>(
    shared: &Arc<Shared<L>>,
    key: Tp,
    generation: u64,
) -> Result<WorkerHandle, String> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Dispatch>();
    let stop = Arc::new(AtomicBool::new(false));
    let queued = Arc::new(AtomicUsize::new(0));
    let control = PartitionControl {
        stop: Arc::clone(&stop),
        topic: Arc::clone(&key.0),
        partition: key.1,
    };
    let mut worker =
        std::panic::catch_unwind(AssertUnwindSafe(|| shared.logic.worker(&key.0, key.1))).map_err(
            |panic| {
                format!(
                    "creating the partition worker panicked: {}",
                    panic_message(&*panic)
                )
            },
        )?;
    let reports = shared.reports_tx.clone();
    let task_queued = Arc::clone(&queued);
    let task = shared.handle.spawn(async move {
        let report = |kind| Report {
            key: key.clone(),
            generation,
            kind,
        };
        let mut epoch = 0u64;
        while let Some(dispatch) = rx.recv().await {
            let mut count = dispatch.records.len();
            if control.stopping() {
                task_queued.fetch_sub(count, Ordering::AcqRel);
                break;
            }
            if dispatch.epoch != epoch {
                // Fetched before our last seek took effect: stale.
                task_queued.fetch_sub(count, Ordering::AcqRel);
                continue;
            }
            // Merge what else is queued (same epoch) into one batch: under load a projection
            // then commits fewer, larger transactions.
            let mut records = dispatch.records;
            while records.len() < MAX_MERGED
                && let Ok(more) = rx.try_recv()
            {
                count += more.records.len();
                if more.epoch == epoch {
                    records.extend(more.records);
                }
            }
            let outcome = AssertUnwindSafe(worker.process(records, &control))
                .catch_unwind()
                .await;
            task_queued.fetch_sub(count, Ordering::AcqRel);
            let kind = match outcome {
                Ok(WorkerOutcome::Processed {
                    next_offset: Some(next),
                }) => ReportKind::Store(next),
                Ok(WorkerOutcome::Processed { next_offset: None }) => continue,
                Ok(WorkerOutcome::Seek(offset)) => {
                    epoch += 1;
                    ReportKind::Seek(offset, epoch)
                }
                Ok(WorkerOutcome::Halt(reason)) => ReportKind::Halt(reason),
                Ok(WorkerOutcome::Fatal(reason)) => ReportKind::Fatal(reason),
                Err(panic) => ReportKind::Halt(format!(
                    "partition worker panicked: {}",
                    panic_message(&*panic)
                )),
            };
            let stop_after = matches!(kind, ReportKind::Halt(..) | ReportKind::Fatal(..));
            let _ = reports.send(report(kind));
            if stop_after {
                break;
            }
        }
        let _ = reports.send(report(ReportKind::Exited));
    });
    Ok(WorkerHandle {
        tx: Some(tx),
        stop,
        queued,
        task: Some(task),
        generation,
        epoch: 0,
        paused: false,
        halted: false,
        waiting: false,
        exited: false,
    })
}

/// Most records merged from a partition's queue into one batch.
const MAX_MERGED: usize = 5_000;

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Stops the poll thread if the `run` future is dropped before it finished.
struct AbandonGuard<L: PartitionLogic> {
    shared: Arc<Shared<L>>,
    finished: bool,
}

impl<L: PartitionLogic> Drop for AbandonGuard<L> {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.abandoned.store(true, Ordering::Release);
        }
    }
}

impl ConsumerRuntime {
    /// Joins the group and runs until `shutdown` fires (or a fatal error), then drains: tasks
    /// finish their batch, offsets are committed, the member leaves the group.
    pub async fn run<L: PartitionLogic>(
        config: &KafkaConfig,
        settings: ConsumerSettings,
        logic: Arc<L>,
        shutdown: Shutdown,
    ) -> Result<RunSummary> {
        super::check_reachable(config)?;
        let admin = super::TopicAdmin::new(config)?;
        for topic in settings.topics.iter().chain(&settings.required_topics) {
            if admin.describe(topic).await?.is_none() {
                return Err(Error::TopicMissing(topic.clone()));
            }
        }
        let mut subscription = settings.topics.clone();
        for topic in &settings.optional_topics {
            if admin.describe(topic).await?.is_some() {
                subscription.push(topic.clone());
            }
        }
        let read_committed = if settings.read_committed {
            "read_committed"
        } else {
            "read_uncommitted"
        };
        let mut client = super::client::base(
            config,
            &[
                ("group.id", settings.group_id.as_str()),
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "1000"),
                // Offsets are stored by the runtime after the worker finished, never on poll.
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", settings.auto_offset_reset.as_str()),
                ("isolation.level", read_committed),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
                ("enable.partition.eof", "false"),
            ],
        );
        for (key, value) in &settings.properties {
            client.set(key, value);
        }
        // How long an assignment waits for start offsets inside the rebalance callback (a
        // database restarting): a few seconds, since the callback holds up the member's other
        // partitions; then the partitions wait paused and a background lookup goes on until
        // it succeeds.
        let max_poll = client
            .get("max.poll.interval.ms")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(300_000);
        let start_offsets_budget =
            Duration::from_millis(max_poll / 2).min(START_OFFSETS_IN_CALLBACK);
        let (reports_tx, reports_rx) = std_mpsc::channel();
        let shared = Arc::new(Shared {
            start_offsets_budget,
            logic,
            settings,
            handle: Handle::current(),
            state: Mutex::new(State {
                workers: HashMap::new(),
                stored: HashMap::new(),
                halted: Vec::new(),
                fatal: None,
            }),
            reports_tx,
            reports_rx: Mutex::new(reports_rx),
            generation: AtomicU64::new(0),
            shutdown: shutdown.clone(),
            abandoned: AtomicBool::new(false),
        });
        let consumer: BaseConsumer<RuntimeContext<L>> = client
            .create_with_context(RuntimeContext {
                shared: Arc::clone(&shared),
            })
            .map_err(|e| Error::Config(format!("kafka consumer settings rejected: {e}")))?;
        let topics: Vec<&str> = subscription.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| Error::kafka("subscribe", e))?;

        let mut guard = AbandonGuard {
            shared: Arc::clone(&shared),
            finished: false,
        };
        let (done_tx, done_rx) = oneshot::channel();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("choreo-poll-{}", shared.settings.group_id))
            .spawn(move || {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    poll_loop(&thread_shared, &consumer);
                    drop(consumer);
                }));
                if let Err(panic) = outcome {
                    thread_shared.fail(format!(
                        "the poll thread panicked: {}",
                        panic_message(&*panic)
                    ));
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::Runtime(format!("cannot start the poll thread: {e}")))?;
        let finished = done_rx.await;
        guard.finished = true;
        shared.settings.status.lock().joined = false;
        let state = shared.state();
        match (&state.fatal, finished) {
            (Some(reason), _) => Err(Error::Runtime(reason.clone())),
            (None, Err(_)) => Err(Error::Runtime(
                "the poll thread ended without a result".into(),
            )),
            (None, Ok(())) => Ok(RunSummary {
                halted: state.halted.clone(),
                assignments: shared.generation.load(Ordering::Acquire),
            }),
        }
    }
}

fn poll_loop<L: PartitionLogic>(
    shared: &Arc<Shared<L>>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
) {
    let settings = &shared.settings;
    let mut closing = false;
    let mut last_error_log = Instant::now() - Duration::from_secs(60);
    let mut batches: HashMap<Tp, Vec<Record>> = HashMap::new();
    let mut lookup = StartLookup::default();
    loop {
        if shared.stopping() && !closing {
            tracing::info!(group = %settings.group_id, "shutting down: finishing in-flight batches, committing, leaving the group");
            closing = true;
            // Leaving the group runs our revoke (drain + commit) through the rebalance callback.
            if let Err(e) = consumer.close_queue() {
                tracing::warn!(error = %e, "closing the consumer failed");
                break;
            }
        }
        if closing && consumer.closed() {
            break;
        }
        drain_reports(shared, consumer);
        flow_control(shared, consumer);
        lookup.step(shared, consumer);
        if let Some(reason) = consumer.client().fatal_error() {
            shared.fail(format!("fatal kafka error: {} {}", reason.0, reason.1));
        }

        // The epoch of each partition before polling: records polled now were fetched at or
        // before it, so a seek applied meanwhile (inside a rebalance callback) makes them stale.
        let snapshot: HashMap<Tp, (u64, u64)> = shared
            .state()
            .workers
            .iter()
            .map(|(k, h)| (k.clone(), (h.generation, h.epoch)))
            .collect();
        let mut collected = 0usize;
        let mut last_key: Option<Tp> = None;
        let mut timeout = Duration::from_millis(100);
        while collected < settings.max_batch {
            match consumer.poll(timeout) {
                None => break,
                Some(Ok(message)) => {
                    // Reuse the topic's Arc while records come from the same partition.
                    let key: Tp = match &last_key {
                        Some(k) if &*k.0 == message.topic() && k.1 == message.partition() => {
                            k.clone()
                        }
                        _ => (Arc::from(message.topic()), message.partition()),
                    };
                    last_key = Some(key.clone());
                    let topic = Arc::clone(&key.0);
                    batches
                        .entry(key)
                        .or_default()
                        .push(Record::copy(&message, topic));
                    collected += 1;
                    timeout = Duration::ZERO;
                }
                Some(Err(e)) => {
                    // Errors no retry can fix stop the runtime with the reason, instead of a
                    // member that looks healthy while its partitions go nowhere.
                    if let Some(code) = e.rdkafka_error_code()
                        && matches!(
                            code,
                            RDKafkaErrorCode::TopicAuthorizationFailed
                                | RDKafkaErrorCode::GroupAuthorizationFailed
                                | RDKafkaErrorCode::ClusterAuthorizationFailed
                                | RDKafkaErrorCode::AutoOffsetReset
                                | RDKafkaErrorCode::Fatal
                        )
                    {
                        shared.fail(format!("consumer error no retry can fix: {e}"));
                        break;
                    }
                    if last_error_log.elapsed() > Duration::from_secs(5) {
                        tracing::warn!(group = %settings.group_id, error = %e, "consumer error");
                        last_error_log = Instant::now();
                    }
                    break;
                }
            }
        }
        if collected > 0 {
            dispatch(shared, &mut batches, &snapshot);
        }
    }
    drain_reports(shared, consumer);
}

fn dispatch<L: PartitionLogic>(
    shared: &Shared<L>,
    batches: &mut HashMap<Tp, Vec<Record>>,
    snapshot: &HashMap<Tp, (u64, u64)>,
) {
    let state = shared.state();
    for (key, records) in batches.drain() {
        if records.is_empty() {
            continue;
        }
        let Some(handle) = state.workers.get(&key) else {
            // Revoked meanwhile: not processed, not stored; the next owner reads it.
            continue;
        };
        // Fetched under another assignment or before a seek: stale. Halted: not processed.
        if handle.halted
            || handle.waiting
            || snapshot.get(&key) != Some(&(handle.generation, handle.epoch))
        {
            continue;
        }
        handle.queued.fetch_add(records.len(), Ordering::AcqRel);
        let count = records.len();
        let sent = handle.tx.as_ref().is_some_and(|tx| {
            tx.send(Dispatch {
                epoch: handle.epoch,
                records,
            })
            .is_ok()
        });
        if !sent {
            handle.queued.fetch_sub(count, Ordering::AcqRel);
        }
    }
}

fn drain_reports<L: PartitionLogic>(
    shared: &Shared<L>,
    consumer: &BaseConsumer<RuntimeContext<L>>,
) {
    loop {
        let report = {
            let rx = shared
                .reports_rx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            rx.try_recv()
        };
        match report {
            Ok(report) => handle_report(shared, consumer, report, &mut HashMap::new(), false),
            Err(_) => break,
        }
    }
}

fn flow_control<L: PartitionLogic>(shared: &Shared<L>, consumer: &BaseConsumer<RuntimeContext<L>>) {
    let high = shared.settings.high_water.max(1);
    let mut state = shared.state();
    for (key, handle) in state.workers.iter_mut() {
        if handle.halted || handle.waiting {
            continue;
        }
        let queued = handle.queued.load(Ordering::Acquire);
        let change = if !handle.paused && queued >= high {
            Some(true)
        } else if handle.paused && queued <= high / 4 {
            Some(false)
        } else {
            None
        };
        if let Some(pause) = change {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&key.0, key.1);
            let result = if pause {
                consumer.pause(&tpl)
            } else {
                consumer.resume(&tpl)
            };
            match result {
                Ok(()) => {
                    handle.paused = pause;
                    tracing::debug!(topic = %key.0, partition = key.1, queued, pause, "partition flow control");
                }
                Err(e) => tracing::warn!(error = %e, "pause/resume failed"),
            }
        }
    }
}
