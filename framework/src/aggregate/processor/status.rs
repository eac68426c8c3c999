//! What a running processor reports: partitions ready, restoring and halted, and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::lock;

/// What a running processor reports.
#[derive(Debug, Clone, Default)]
pub struct ProcessorStatus {
    pub(super) inner: Arc<StatusInner>,
}

/// The shared counters and lists; the processor's parts update them directly.
#[derive(Debug, Default)]
pub(super) struct StatusInner {
    pub(super) ready: Mutex<Vec<i32>>,
    pub(super) halted: Mutex<Vec<(i32, String)>>,
    membership: Mutex<Membership>,
    pub(super) aggregates: AtomicU64,
    pub(super) transactions: AtomicU64,
    pub(super) restored_events: AtomicU64,
    pub(super) snapshots_loaded: AtomicU64,
    pub(super) snapshots_written: AtomicU64,
    pub(super) producer_restarts: AtomicU64,
    pub(super) rejoins: AtomicU64,
    pub(super) parked_reused: AtomicU64,
    pub(super) foreign_skipped: AtomicU64,
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

    /// Times the processor rejoined its group with new clients (and restored its partitions)
    /// after its consumer was fenced by a join of its own (no other instance held its id).
    pub fn rejoins(&self) -> u64 {
        self.inner.rejoins.load(Ordering::Relaxed)
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
    pub(super) fn restoring(&self, partitions: &[i32], joined: bool) {
        let mut membership = lock(&self.inner.membership);
        membership.restoring.extend_from_slice(partitions);
        membership.joined |= joined;
    }

    /// `p`'s restore finished (ready or halted), or `p` was revoked.
    pub(super) fn restored(&self, p: i32) {
        lock(&self.inner.membership).restoring.retain(|q| *q != p);
    }

    /// The processor rejoins its group with new clients and state: a partition halted before
    /// is restored again like any other.
    pub(super) fn rejoining(&self) {
        self.inner.rejoins.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.halted).clear();
        lock(&self.inner.ready).clear();
        self.left();
    }

    /// The processor left its group: not ready until a new run joins again.
    pub(super) fn left(&self) {
        *lock(&self.inner.membership) = Membership::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_joined_with_nothing_restoring_or_halted() {
        let status = ProcessorStatus::default();
        assert!(!status.is_ready(), "not ready before the first assignment");
        status.restoring(&[2, 1], true);
        assert!(!status.is_ready());
        assert_eq!(status.restoring_partitions(), vec![1, 2]);
        status.restored(2);
        assert!(!status.is_ready(), "partition 1 is still restoring");
        status.restored(1);
        assert!(status.is_ready());
        assert!(status.restoring_partitions().is_empty());

        // A restore after a producer replacement: not ready meanwhile, still joined after.
        status.restoring(&[1], false);
        assert!(!status.is_ready());
        status.restored(1);
        assert!(status.is_ready());

        lock(&status.inner.halted).push((1, "gap".into()));
        assert!(!status.is_ready(), "a halted partition is not ready");
        assert_eq!(status.halted(), vec![(1, "gap".to_owned())]);
        lock(&status.inner.halted).clear();

        status.left();
        assert!(!status.is_ready(), "not ready after leaving the group");
    }

    #[test]
    fn an_empty_assignment_is_ready() {
        let status = ProcessorStatus::default();
        status.restoring(&[], true);
        assert!(status.is_ready());
    }

    #[test]
    fn ready_partitions_are_sorted() {
        let status = ProcessorStatus::default();
        lock(&status.inner.ready).extend([3, 0, 2]);
        assert_eq!(status.ready_partitions(), vec![0, 2, 3]);
    }
}
