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
//! for its content → abort, and the input is dead-lettered when the batch runs again; fenced →
//! stop, never recreate; unknown (a timed-out commit) → stop, and a restart fences the old
//! producer.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use crate::kafka::{Keep, Record, dead_letter_parts};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::oneshot;

use super::{Outputs, ReactError, Reactor};
use crate::codec::SchemaStore;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::kafka::consumer::{forward_log, panic_message};
use crate::kafka::transaction::{
    TxError, TxRecord, abort_and_rewind, await_deliveries, check_consumer, classify,
    classify_commit, collect_batch, rewind, send, sole_input, starts,
};
use crate::message::{EventSet, Metadata, Origin, Received};
use crate::shutdown::Shutdown;

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

/// What a running reactor reports.
#[derive(Debug, Clone, Default)]
pub struct ReactorStatus {
    inner: Arc<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    reacted: AtomicU64,
    dead_lettered: AtomicU64,
    transactions: AtomicU64,
    assigned: Mutex<Vec<(String, i32)>>,
    retrying: Mutex<Vec<(String, i32, String)>>,
}

impl ReactorStatus {
    /// Events reacted to in committed transactions.
    pub fn reacted(&self) -> u64 {
        self.inner.reacted.load(Ordering::Relaxed)
    }

    /// Events sent to the dead letters in committed transactions.
    pub fn dead_lettered(&self) -> u64 {
        self.inner.dead_lettered.load(Ordering::Relaxed)
    }

    /// Partitions held back by an event that failed transiently, with the reason: each waits
    /// for its back-off, then retries that event.
    pub fn retrying(&self) -> Vec<(String, i32, String)> {
        let mut out = lock(&self.inner.retrying).clone();
        out.sort();
        out
    }

    /// Committed transactions.
    pub fn transactions(&self) -> u64 {
        self.inner.transactions.load(Ordering::Relaxed)
    }

    /// The partitions this instance owns now.
    pub fn assigned(&self) -> Vec<(String, i32)> {
        let mut assigned = lock(&self.inner.assigned).clone();
        assigned.sort();
        assigned
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        crate::kafka::check_reachable(kafka)?;
        let group = kafka.topic_name(R::NAME);
        let identity = format!("{group}-{}", self.ordinal);
        let dlq_topic = format!("{group}.dlq");
        // Dead letters fed back with `choreo dlq redrive` come through `{group}.redrive`, read
        // by this group only (never the log of record). It must exist from the start: the
        // members are static (`group.instance.id`), and a static member that rejoins keeps
        // its old assignment, so a topic added to the subscription later would not be read.
        let redrive = format!("{group}.redrive");
        let mut sources: Vec<String> = R::Events::topics()
            .iter()
            .map(|t| kafka.topic_name(t))
            .collect();
        sources.push(redrive.clone());
        let admin = crate::kafka::TopicAdmin::new(kafka)?;
        for topic in sources.iter().chain([&dlq_topic]) {
            if admin.describe(topic).await?.is_none() {
                return Err(Error::TopicMissing(topic.clone()));
            }
        }
        // The static member id names the subscription too: a static member that rejoins with
        // the same id keeps its old assignment (librdkafka's JoinGroup leaves a stable group
        // as it is), so a new source or redrive topic would go unread. A changed subscription
        // joins as a new member instead and the group rebalances (the old member's partitions
        // move once its session times out). The transactional id stays `{group}-{ordinal}`:
        // fencing follows the instance, not its subscription.
        let member = format!("{identity}-{}", subscription_tag(&sources));
        let shared = Arc::new(Shared {
            reactor: Arc::clone(&self.reactor),
            group: group.clone(),
            source: format!("/{}", self.service),
            dlq_topic,
            redrive,
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
        let reset = match self.start {
            StartFrom::Beginning => "earliest",
            StartFrom::End => "latest",
        };
        let consumer: BaseConsumer<ReactorContext<R>> = kafka
            .client_config(&[
                ("group.id", group.as_str()),
                ("group.instance.id", member.as_str()),
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("isolation.level", "read_committed"),
                ("auto.offset.reset", reset),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
                ("enable.partition.eof", "false"),
            ])
            .create_with_context(ReactorContext {
                shared: Arc::clone(&shared),
            })
            .map_err(|e| Error::Config(format!("kafka consumer settings rejected: {e}")))?;
        let producer: FutureProducer = kafka
            .client_config(&[
                ("transactional.id", identity.as_str()),
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("transaction.timeout.ms", "10000"),
                ("linger.ms", "5"),
                // Outputs keyed like every choreo client's: the Java clients' partitioner.
                ("partitioner", "murmur2_random"),
            ])
            .create()
            .map_err(|e| Error::Config(format!("kafka producer settings rejected: {e}")))?;
        let max_batch = self.max_batch;
        let (done_tx, done_rx) = oneshot::channel();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("choreo-reactor-{identity}"))
            .spawn(move || {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    reacting_loop(&thread_shared, &consumer, &producer, &sources, max_batch)
                }));
                let result = match outcome {
                    Ok(result) => result,
                    Err(panic) => Err(Error::Runtime(format!(
                        "reactor {} panicked: {}",
                        R::NAME,
                        panic_message(&*panic)
                    ))),
                };
                thread_shared.stopped.store(true, Ordering::Release);
                drop(consumer);
                let _ = producer.flush(Duration::from_secs(10));
                let _ = done_tx.send(result);
            })
            .map_err(|e| Error::Runtime(format!("cannot start the reactor thread: {e}")))?;
        done_rx
            .await
            .map_err(|_| Error::Runtime("the reactor thread ended without a result".into()))?
    }
}

type TopicPartition = (String, i32);

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

struct ReactorContext<R: Reactor> {
    shared: Arc<Shared<R>>,
}

impl<R: Reactor> ClientContext for ReactorContext<R> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }
}

impl<R: Reactor> ConsumerContext for ReactorContext<R> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let shared = &self.shared;
        let partitions: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let generation = shared.rebalances.fetch_add(1, Ordering::AcqRel) + 1;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // The committed offsets (stable ones: read_committed) are where we start.
                if shared.start == StartFrom::End
                    && let Err(reason) = start_new_partitions_at_end(shared, consumer, tpl)
                {
                    // Guessing (auto.offset.reset) could skip the redrive topic's letters or
                    // start a new partition after events that arrived before us: stop, and
                    // let a restart try again.
                    tracing::error!(%reason, "cannot place new partitions; stopping");
                    lock(&shared.fatal).get_or_insert(reason);
                    shared.shutdown.trigger();
                    return;
                }
                if let Err(e) = consumer.incremental_assign(tpl) {
                    tracing::error!(error = %e, "incremental_assign failed");
                    lock(&shared.fatal).get_or_insert(format!("incremental_assign failed: {e}"));
                    shared.shutdown.trigger();
                    return;
                }
                // A pause survives unassign/reassign in librdkafka: a partition held back
                // when it was revoked would come back paused.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(error = %e, "resuming newly assigned partitions failed");
                }
                let mut at = lock(&shared.assigned_at);
                for tp in &partitions {
                    at.insert(tp.clone(), generation);
                }
                *lock(&shared.status.inner.assigned) = at.keys().cloned().collect();
                tracing::info!(reactor = R::NAME, ?partitions, "partitions assigned");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // No transaction is open here: we never poll inside one.
                if let Err(e) = consumer.incremental_unassign(tpl) {
                    tracing::error!(error = %e, "incremental_unassign failed");
                }
                let mut at = lock(&shared.assigned_at);
                at.retain(|tp, _| !partitions.contains(tp));
                *lock(&shared.status.inner.assigned) = at.keys().cloned().collect();
                tracing::info!(reactor = R::NAME, ?partitions, "partitions revoked");
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

/// `StartFrom::End` for partitions the group never committed: their current end, committed
/// at once, so an owner that dies before its first transaction does not make the next one
/// start at a later end and skip what arrived in between.
fn start_new_partitions_at_end<R: Reactor>(
    shared: &Shared<R>,
    consumer: &BaseConsumer<ReactorContext<R>>,
    tpl: &mut TopicPartitionList,
) -> std::result::Result<(), String> {
    let committed = consumer
        .committed_offsets(tpl.clone(), Duration::from_secs(30))
        .map_err(|e| format!("cannot read the committed offsets: {e}"))?;
    let mut first = TopicPartitionList::new();
    for element in committed.elements() {
        if matches!(element.offset(), Offset::Offset(_)) {
            continue;
        }
        let (topic, partition) = (element.topic(), element.partition());
        if topic == shared.redrive {
            // Every owner without a commit starts it at the beginning: nothing to commit.
            if let Some(mut e) = tpl.find_partition(topic, partition) {
                let _ = e.set_offset(Offset::Beginning);
            }
            continue;
        }
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(30)) {
            Ok((_, end)) => {
                let _ = first.add_partition_offset(topic, partition, Offset::Offset(end));
                if let Some(mut e) = tpl.find_partition(topic, partition) {
                    let _ = e.set_offset(Offset::Offset(end));
                }
            }
            Err(e) => return Err(format!("cannot read the end of {topic}[{partition}]: {e}")),
        }
    }
    if first.count() > 0 {
        if let Err(e) = consumer.commit(&first, rdkafka::consumer::CommitMode::Sync) {
            tracing::warn!(error = %e, "cannot commit the first positions");
        }
        tracing::info!(reactor = R::NAME, group = %shared.group, "new partitions start at their current end");
    }
    Ok(())
}

/// How a batch's transaction ended.
#[derive(Default)]
struct Ended {
    /// Shutting down: the index of the first record not handled (none after it was).
    stopped_at: Option<usize>,
    /// Partitions held back: the offset of the event that failed transiently, and why.
    held: HashMap<TopicPartition, (i64, String)>,
    /// Partitions with events in the committed transaction.
    committed: Vec<TopicPartition>,
    /// Set-aside inputs whose dead letters this transaction wrote.
    settled: Vec<Position>,
}

/// Where an input is: topic, partition, offset.
type Position = (String, i32, i64);

/// Inputs whose outputs the broker refused for their content (too large, invalid): how many
/// times, and the last reason. Such an input is dead-lettered instead of reacted to when the
/// batch runs again, its dead letter cut further at each refusal.
type SetAside = HashMap<Position, (u32, String)>;

/// Refusals of one input's records before its partition waits with back-off: its outputs,
/// its dead letter whole, cut, and minimal.
const MAX_REFUSALS: u32 = 3;

fn position(record: &Record) -> Position {
    (
        record.topic().to_owned(),
        record.partition(),
        record.offset(),
    )
}

fn reacting_loop<R: Reactor>(
    shared: &Arc<Shared<R>>,
    consumer: &BaseConsumer<ReactorContext<R>>,
    producer: &FutureProducer,
    sources: &[String],
    max_batch: usize,
) -> Result<()> {
    // Fences any earlier producer with our transactional id and aborts its open transaction.
    producer
        .init_transactions(Duration::from_secs(30))
        .map_err(|e| Error::kafka("init_transactions", e))?;
    let topics: Vec<&str> = sources.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| Error::kafka("subscribe", e))?;
    let mut backoff = Duration::ZERO;
    let mut holds = Holds::default();
    let mut set_aside = SetAside::new();
    // Transactions still to run with a single input: the broker refused a request of a
    // transaction that held several, and only one at a time says which input it was.
    let mut isolate = 0usize;
    while !shared.shutdown.is_triggered() {
        if !backoff.is_zero() {
            shared.handle.block_on(async {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shared.shutdown.wait() => {}
                }
            });
        }
        holds.release_due(consumer, &shared.status);
        let before = shared.rebalances.load(Ordering::Acquire);
        let size = if isolate > 0 { 1 } else { max_batch };
        let (batch, error) = collect_batch(consumer, size, Duration::from_millis(100));
        if let Some(e) = error {
            tracing::warn!(reactor = R::NAME, error = %e, "consumer error");
        }
        if let Some(reason) = lock(&shared.fatal).clone() {
            return Err(Error::Runtime(reason));
        }
        check_consumer(consumer)?;
        if shared.rebalances.load(Ordering::Acquire) != before {
            // Partitions revoked meanwhile are no longer ours to hold (their pause was
            // lifted when they were assigned again, if they were).
            holds.forget_unassigned(&lock(&shared.assigned_at), &shared.status);
        }
        let batch = holds.hold_back(consumer, batch)?;
        if batch.is_empty() {
            continue;
        }
        if shared.rebalances.load(Ordering::Acquire) != before {
            // A rebalance ran while the batch was collected: its records may belong to
            // partitions we lost. Handle none; rewind the partitions we kept throughout.
            let kept: Vec<&Record> = {
                let at = lock(&shared.assigned_at);
                batch
                    .iter()
                    .filter(|r| {
                        at.get(&(r.topic().to_owned(), r.partition()))
                            .is_some_and(|g| *g <= before)
                    })
                    .collect()
            };
            rewind(consumer, &starts(kept))?;
            continue;
        }
        isolate = isolate.saturating_sub(1);
        match run_transaction(shared, consumer, producer, &batch, &set_aside) {
            Ok(ended) => {
                backoff = Duration::ZERO;
                for settled in &ended.settled {
                    set_aside.remove(settled);
                }
                let mut back: HashMap<TopicPartition, i64> = HashMap::new();
                if let Some(at) = ended.stopped_at {
                    // Shutting down: the rest of the batch comes again to the next owner.
                    back = starts(&batch[at..]);
                }
                for (tp, (offset, _)) in &ended.held {
                    back.insert(tp.clone(), *offset);
                }
                rewind(consumer, &back)?;
                holds.succeeded(&ended.committed);
                if !shared.shutdown.is_triggered() {
                    for (tp, (offset, reason)) in ended.held {
                        holds.hold(consumer, &shared.status, tp, offset, reason);
                    }
                }
            }
            Err(TxError::Refused {
                reason,
                input: Some(index),
            }) if index < batch.len() => {
                // Sending that output again cannot succeed: the input that made it goes to the
                // dead letters instead when the batch runs again, at once.
                let at = position(&batch[index]);
                tracing::warn!(reactor = R::NAME, topic = %at.0, partition = at.1, offset = at.2, %reason,
                    "an output was refused for its content; its input will be dead-lettered");
                abort_and_rewind(producer, consumer, &batch, &reason)?;
                let entry = set_aside.entry(at.clone()).or_insert((0, String::new()));
                entry.0 += 1;
                entry.1.clone_from(&reason);
                if entry.0 > MAX_REFUSALS {
                    // Even the minimal dead letter was refused: the dead-letter topic cannot
                    // take it (its max.message.bytes, or compaction). This partition waits and
                    // tries again with back-off (status: retrying, with the reason); the
                    // others go on.
                    let why = format!(
                        "even the minimal dead letter was refused ({reason}): check the \
                         dead-letter topic's max.message.bytes and cleanup.policy"
                    );
                    holds.hold(consumer, &shared.status, (at.0, at.1), at.2, why);
                }
            }
            Err(TxError::Refused {
                reason,
                input: None,
            }) => {
                tracing::warn!(reactor = R::NAME, %reason, events = batch.len(),
                    "the broker refused a record of this transaction; running its events one per transaction to find which");
                abort_and_rewind(producer, consumer, &batch, &reason)?;
                isolate = batch.len();
            }
            Err(TxError::Abortable(reason) | TxError::Refused { reason, .. }) => {
                tracing::warn!(reactor = R::NAME, %reason, "transaction aborted; rewinding");
                abort_and_rewind(producer, consumer, &batch, &reason)?;
                backoff = (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
            }
            Err(TxError::Fenced(reason)) => {
                tracing::error!(reactor = R::NAME, %reason, "fenced by a newer instance with the same transactional id; stopping");
                return Err(Error::Runtime(format!("fenced: {reason}")));
            }
            Err(TxError::Fatal(reason)) => {
                return Err(Error::Runtime(format!(
                    "transaction failed ({reason}); a timed-out commit may still land, so this reactor stops: \
                     restart it to fence the old producer"
                )));
            }
        }
    }
    Ok(())
}

/// Partitions held back by a transiently failing event: paused until their back-off ends.
#[derive(Default)]
struct Holds {
    /// When each held partition resumes.
    until: HashMap<TopicPartition, std::time::Instant>,
    /// The current back-off of partitions that failed lately (doubles per failure, cleared
    /// by a committed event of that partition).
    backoff: HashMap<TopicPartition, Duration>,
}

impl Holds {
    fn hold<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        status: &ReactorStatus,
        tp: TopicPartition,
        offset: i64,
        reason: String,
    ) {
        let delay = self
            .backoff
            .get(&tp)
            .map_or(Duration::from_millis(100), |d| {
                (*d * 2).min(Duration::from_secs(5))
            });
        self.backoff.insert(tp.clone(), delay);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        if let Err(e) = consumer.pause(&tpl) {
            // Not paused: its next records come at once and fail again (still never skipped).
            tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "cannot pause a held partition");
        }
        tracing::warn!(topic = %tp.0, partition = tp.1, offset, %reason, retry_in = ?delay,
            "transient failure; this partition waits and retries the event, the others go on");
        let mut retrying = lock(&status.inner.retrying);
        retrying.retain(|(t, p, _)| !(*t == tp.0 && *p == tp.1));
        retrying.push((tp.0.clone(), tp.1, reason));
        self.until.insert(tp, std::time::Instant::now() + delay);
    }

    /// Resumes the partitions whose back-off is over.
    fn release_due<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        status: &ReactorStatus,
    ) {
        let now = std::time::Instant::now();
        let due: Vec<TopicPartition> = self
            .until
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in due {
            self.until.remove(&tp);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.0, tp.1);
            if let Err(e) = consumer.resume(&tpl) {
                tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "cannot resume a held partition");
            }
            lock(&status.inner.retrying).retain(|(t, p, _)| !(*t == tp.0 && *p == tp.1));
        }
    }

    /// Takes the records of held partitions out of a batch (a pause does not empty what was
    /// already fetched) and rewinds those partitions to their first such record: they are
    /// read again once resumed.
    fn hold_back<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        batch: Vec<Record>,
    ) -> Result<Vec<Record>> {
        if self.until.is_empty() {
            return Ok(batch);
        }
        let (held, go): (Vec<Record>, Vec<Record>) = batch.into_iter().partition(|r| {
            self.until
                .contains_key(&(r.topic().to_owned(), r.partition()))
        });
        rewind(consumer, &starts(&held))?;
        Ok(go)
    }

    /// Partitions that committed an event are healthy again.
    fn succeeded(&mut self, committed: &[TopicPartition]) {
        for tp in committed {
            self.backoff.remove(tp);
        }
    }

    fn forget_unassigned(
        &mut self,
        assigned: &HashMap<TopicPartition, u64>,
        status: &ReactorStatus,
    ) {
        self.until.retain(|tp, _| assigned.contains_key(tp));
        self.backoff.retain(|tp, _| assigned.contains_key(tp));
        lock(&status.inner.retrying).retain(|(t, p, _)| assigned.contains_key(&(t.clone(), *p)));
    }
}

/// One transaction: react to the batch's events in order, produce their outputs and dead
/// letters, commit them with the input offsets. A partition whose event fails transiently is
/// left out from that event on (held); the others go on.
fn run_transaction<R: Reactor>(
    shared: &Arc<Shared<R>>,
    consumer: &BaseConsumer<ReactorContext<R>>,
    producer: &FutureProducer,
    batch: &[Record],
    set_aside: &SetAside,
) -> Result<Ended, TxError> {
    producer
        .begin_transaction()
        .map_err(|e| classify("begin_transaction", &e))?;
    let mut staged: Vec<TxRecord> = Vec::new();
    // The batch index of the input each staged record comes from.
    let mut origins: Vec<usize> = Vec::new();
    let mut next: HashMap<TopicPartition, i64> = HashMap::new();
    let mut ended = Ended::default();
    let (mut reacted, mut dead) = (0u64, 0u64);
    for (i, record) in batch.iter().enumerate() {
        if shared.shutdown.is_triggered() {
            ended.stopped_at = Some(i);
            break;
        }
        let tp = (record.topic().to_owned(), record.partition());
        if ended.held.contains_key(&tp) {
            continue;
        }
        let at = position(record);
        if let Some((refusals, reason)) = set_aside.get(&at) {
            // Its output, or then its dead letter, was refused: a smaller dead letter each time.
            // The first refusal was of its outputs; later ones of its dead letters.
            let keep = Keep::after(refusals.saturating_sub(1));
            let reason = format!("an output of this event was refused by Kafka: {reason}");
            staged.push(dead_letter(shared, record, &reason, keep));
            origins.push(i);
            ended.settled.push(at);
            dead += 1;
            next.insert(tp, record.offset() + 1);
            continue;
        }
        match react_one(shared, record) {
            Reaction::Done(outputs) => {
                origins.extend(std::iter::repeat_n(i, outputs.len()));
                staged.extend(outputs);
                reacted += 1;
            }
            Reaction::Skipped => {}
            Reaction::DeadLetter(reason) => {
                tracing::warn!(reactor = R::NAME, topic = record.topic(), partition = record.partition(),
                    offset = record.offset(), %reason, "event sent to the dead letters");
                staged.push(dead_letter(shared, record, &reason, Keep::All));
                origins.push(i);
                dead += 1;
            }
            Reaction::Retry(reason) => {
                ended.held.insert(tp, (record.offset(), reason));
                continue;
            }
        }
        next.insert(tp, record.offset() + 1);
    }
    if next.is_empty() {
        // Nothing handled (every partition's first event failed transiently): nothing to
        // commit.
        producer
            .abort_transaction(Duration::from_secs(30))
            .map_err(|e| classify("abort_transaction", &e))?;
        return Ok(ended);
    }
    let origin = |k: usize| origins.get(k).copied().unwrap_or(usize::MAX);
    let deliveries: Vec<_> = staged
        .iter()
        .enumerate()
        .map(|(k, r)| send(producer, r).map_err(|e| e.for_input(origin(k))))
        .collect::<Result<_, _>>()?;
    failpoint::hit("reactor.after_produce");
    await_deliveries(
        &shared.handle,
        deliveries,
        sole_input(&origins),
        "produce output",
    )?;
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in &next {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    // Fresh group metadata for every transaction (the generation may have moved).
    let metadata = consumer
        .group_metadata()
        .ok_or_else(|| TxError::Abortable("no consumer group metadata".into()))?;
    producer
        .send_offsets_to_transaction(&tpl, &metadata, Duration::from_secs(30))
        .map_err(|e| classify("send_offsets_to_transaction", &e))?;
    failpoint::hit("reactor.before_commit");
    producer
        .commit_transaction(Duration::from_secs(30))
        .map_err(|e| classify_commit(&e))?;
    let status = &shared.status.inner;
    status.reacted.fetch_add(reacted, Ordering::Relaxed);
    status.dead_lettered.fetch_add(dead, Ordering::Relaxed);
    status.transactions.fetch_add(1, Ordering::Relaxed);
    ended.committed = next.into_keys().collect();
    Ok(ended)
}

enum Reaction {
    Done(Vec<TxRecord>),
    /// A type the reactor does not declare.
    Skipped,
    DeadLetter(String),
    Retry(String),
}

fn react_one<R: Reactor>(shared: &Shared<R>, record: &Record) -> Reaction {
    let (meta, data) = match Metadata::open(record) {
        Ok(opened) => (opened.meta, opened.payload),
        Err(e) => return Reaction::DeadLetter(format!("envelope: {e}")),
    };
    let mut decoded = R::Events::decode(&meta, data.as_deref());
    if matches!(&decoded, Err(e) if e.halts()) {
        // An unknown writer schema is usually a newer writer, never garbage: read the store
        // again; still unknown, the event waits (retried, like a halt that heals once the
        // schema is there), it is never dead-lettered.
        if let Err(e) = shared
            .handle
            .block_on(shared.schemas.refresh_if_older(std::time::Instant::now()))
        {
            return Reaction::Retry(format!("refreshing the schema store: {e}"));
        }
        decoded = R::Events::decode(&meta, data.as_deref());
    }
    let payload = match decoded {
        Ok(Some(payload)) => payload,
        Ok(None) => return Reaction::Skipped,
        Err(e) if e.halts() => {
            return Reaction::Retry(format!(
                "{}[{}]@{}: {e}",
                record.topic(),
                record.partition(),
                record.offset()
            ));
        }
        Err(e) => return Reaction::DeadLetter(format!("payload: {e}")),
    };
    let received = Received {
        origin: Origin {
            topic: record.topic().to_owned(),
            partition: record.partition(),
            offset: record.offset(),
        },
        meta,
        payload,
    };
    let mut out = Outputs::new(R::NAME, &shared.source, &received.meta, &shared.config);
    let reaction = shared
        .handle
        .block_on(AssertUnwindSafe(shared.reactor.react(&received, &mut out)).catch_unwind());
    match reaction {
        Ok(Ok(())) => Reaction::Done(out.into_records()),
        Ok(Err(ReactError::Transient(e))) => Reaction::Retry(format!("{e:#}")),
        Ok(Err(ReactError::Poison(e))) => Reaction::DeadLetter(format!("rejected: {e:#}")),
        Err(panic) => Reaction::DeadLetter(format!("panicked: {}", panic_message(&*panic))),
    }
}

fn dead_letter<R: Reactor>(
    shared: &Shared<R>,
    record: &Record,
    reason: &str,
    keep: Keep,
) -> TxRecord {
    let (headers, key, payload) =
        dead_letter_parts(record, keep, reason, Utc::now(), &shared.group);
    TxRecord {
        topic: shared.dlq_topic.clone(),
        partition: None,
        key,
        payload,
        headers,
    }
}

/// Eight hex digits that change when the subscribed topics do (FNV-1a over the sorted names).
fn subscription_tag(topics: &[String]) -> String {
    let mut sorted: Vec<&str> = topics.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sorted.join(",").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", hash as u32)
}
