//! What a running reactor reports: counters, owned partitions, partitions retrying.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a running reactor reports.
#[derive(Debug, Clone, Default)]
pub struct ReactorStatus {
    pub(super) inner: Arc<StatusInner>,
}

#[derive(Debug, Default)]
pub(super) struct StatusInner {
    pub(super) reacted: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) transactions: AtomicU64,
    pub(super) producer_replacements: AtomicU64,
    pub(super) rejoins: AtomicU64,
    pub(super) assigned: Mutex<Vec<(String, i32)>>,
    pub(super) retrying: Mutex<Vec<(String, i32, String)>>,
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

    /// Producers replaced after a transaction whose outcome was unknown (a commit that timed
    /// out, a broker lost mid-transaction): the reactor goes on from the committed offsets.
    pub fn producer_replacements(&self) -> u64 {
        self.inner.producer_replacements.load(Ordering::Relaxed)
    }

    /// Times the reactor rejoined its group with new clients after its consumer was fenced
    /// by a join of its own (no other instance held its id).
    pub fn rejoins(&self) -> u64 {
        self.inner.rejoins.load(Ordering::Relaxed)
    }

    /// The partitions this instance owns now.
    pub fn assigned(&self) -> Vec<(String, i32)> {
        let mut assigned = lock(&self.inner.assigned).clone();
        assigned.sort();
        assigned
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
