//! The state the poll thread, the rebalance callbacks and the partition tasks share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::{Batch, ConsumerSettings, PartitionLogic};
use crate::shutdown::Shutdown;

/// A partition: topic and number.
pub(super) type Tp = (Arc<str>, i32);

/// The partition tasks and what the run leaves behind, under one lock.
pub(super) struct State {
    pub(super) workers: HashMap<Tp, WorkerHandle>,
    /// Last offset stored per partition (what a revoke commits).
    pub(super) stored: HashMap<Tp, i64>,
    pub(super) halted: Vec<(String, i32, String)>,
    pub(super) fatal: Option<String>,
}

/// What the poll thread, the rebalance callbacks and the partition tasks share.
pub(super) struct Shared<L: PartitionLogic> {
    pub(super) logic: Arc<L>,
    pub(super) settings: ConsumerSettings,
    pub(super) handle: Handle,
    state: Mutex<State>,
    pub(super) reports_tx: std_mpsc::Sender<Report>,
    pub(super) reports_rx: Mutex<std_mpsc::Receiver<Report>>,
    pub(super) generation: AtomicU64,
    shutdown: Shutdown,
    /// Set when the `run` future is dropped: stop without touching the caller's signal.
    pub(super) abandoned: AtomicBool,
    /// How long an assignment retries the logic's start offsets inside the rebalance
    /// callback before it leaves them to a background lookup.
    pub(super) start_offsets_budget: Duration,
}

impl<L: PartitionLogic> Shared<L> {
    /// Shared state for a run that has not started: no partitions, generation 0. Needs a
    /// Tokio runtime (its handle runs the partition tasks).
    pub(super) fn new(
        logic: Arc<L>,
        settings: ConsumerSettings,
        shutdown: Shutdown,
        start_offsets_budget: Duration,
    ) -> Self {
        let (reports_tx, reports_rx) = std_mpsc::channel();
        Self {
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
            shutdown,
            abandoned: AtomicBool::new(false),
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way that matters
        // more than stopping; keep going with the data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn stopping(&self) -> bool {
        self.shutdown.is_triggered() || self.abandoned.load(Ordering::Acquire)
    }

    pub(super) fn fail(&self, reason: String) {
        tracing::error!(group = %self.settings.group_id, %reason, "consumer runtime stopping");
        self.state().fatal.get_or_insert(reason);
        self.shutdown.trigger();
    }
}

/// A partition task's report to the poll thread. It carries the task's assignment
/// generation, so a report from a task of an earlier assignment of the same partition is
/// ignored rather than applied to the new one.
pub(super) struct Report {
    pub(super) key: Tp,
    pub(super) generation: u64,
    pub(super) kind: ReportKind,
}

/// What a task reports: an offset to store, a seek (to the offset, under a new epoch), a
/// halt, a fatal error, or that it has exited.
pub(super) enum ReportKind {
    Store(i64),
    Seek(i64, u64),
    Halt(String),
    Fatal(String),
    Exited,
}

/// Records the poll thread hands a task, with the epoch they were fetched under.
pub(super) struct Dispatch {
    pub(super) epoch: u64,
    pub(super) records: Batch,
    /// The records' bytes in memory, as counted into `Queued`.
    pub(super) bytes: usize,
}

/// What a partition task has been handed and not yet finished: records and their bytes in
/// memory (`Record::size_in_memory`). The poll thread pauses the partition when either is high.
#[derive(Debug, Default)]
pub(super) struct Queued {
    pub(super) records: AtomicUsize,
    pub(super) bytes: AtomicUsize,
}

impl Queued {
    pub(super) fn add(&self, records: usize, bytes: usize) {
        self.records.fetch_add(records, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    pub(super) fn sub(&self, records: usize, bytes: usize) {
        self.records.fetch_sub(records, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// (records, bytes) now.
    pub(super) fn load(&self) -> (usize, usize) {
        (
            self.records.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }
}

/// The poll thread's handle on a partition task.
pub(super) struct WorkerHandle {
    /// Taken (closing the queue) when the partition is revoked: the task then exits after
    /// its batch instead of waiting for records that will not come.
    pub(super) tx: Option<mpsc::UnboundedSender<Dispatch>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) queued: Arc<Queued>,
    pub(super) task: Option<tokio::task::JoinHandle<()>>,
    /// Assignment generation when this task was spawned.
    pub(super) generation: u64,
    /// Bumped by each seek; records fetched before the seek carry an older epoch.
    pub(super) epoch: u64,
    pub(super) paused: bool,
    pub(super) halted: bool,
    /// Assigned while its start offset could not be read: paused, nothing dispatched, until a
    /// background lookup succeeds and seeks it.
    pub(super) waiting: bool,
    pub(super) exited: bool,
}
