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

mod context;
mod control;
mod logic;
mod partition;
mod poll;
mod rebalance;
mod reports;
mod runtime;
mod settings;
mod shared;
mod start_lookup;
mod status;
mod worker;

pub use super::record::Record;
pub(crate) use context::forward_log;
pub use control::PartitionControl;
pub use logic::{Batch, PartitionLogic, PartitionWorker, StartOffset, WorkerOutcome};
pub use runtime::{ConsumerRuntime, RunSummary};
pub use settings::ConsumerSettings;
pub use status::ConsumerStatus;

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_panic_message_is_its_text() {
        let text = std::panic::catch_unwind(|| panic!("plain")).expect_err("panics");
        assert_eq!(panic_message(&*text), "plain");
        let formatted = std::panic::catch_unwind(|| panic!("{}", 5)).expect_err("panics");
        assert_eq!(panic_message(&*formatted), "5");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).expect_err("panics");
        assert_eq!(panic_message(&*other), "non-string panic payload");
    }
}
