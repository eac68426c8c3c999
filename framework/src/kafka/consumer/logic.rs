//! What the part built on the runtime provides: where partitions start and who processes
//! their records.

use std::future::Future;

use super::{PartitionControl, Record};
use crate::error::Result;

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
    Processed {
        /// The offset to read next; `None` stores nothing.
        next_offset: Option<i64>,
    },
    /// Discard what is queued and read again from this offset.
    Seek(i64),
    /// Stop this partition (paused until the process restarts); the reason is logged and
    /// returned in the [`RunSummary`](super::RunSummary).
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
