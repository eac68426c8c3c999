//! What a running consumer owns right now.

use std::sync::{Arc, Mutex, MutexGuard};

/// What a running consumer owns right now: for readiness checks, dashboards and tests.
#[derive(Debug, Clone, Default)]
pub struct ConsumerStatus {
    inner: Arc<Mutex<StatusInner>>,
}

#[derive(Debug, Default)]
pub(super) struct StatusInner {
    pub(super) assigned: Vec<(String, i32)>,
    pub(super) halted: Vec<(String, i32, String)>,
    pub(super) waiting: Vec<(String, i32, String)>,
    /// Partitions whose worker is retrying a record: the last error and since when.
    pub(super) retrying: Vec<(String, i32, String, std::time::SystemTime)>,
    /// In the group: the first assignment (even an empty one) was seen, and the run has not
    /// ended.
    pub(super) joined: bool,
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

    /// Partitions whose worker keeps failing on a record and retries it, with the last error
    /// and when the retries began. Still ready: nothing is skipped, the partition waits.
    pub fn retrying(&self) -> Vec<(String, i32, String, std::time::SystemTime)> {
        let mut out = self.lock().retrying.clone();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }

    /// Ready: in the group (its first assignment seen, not stopped), nothing halted, nothing
    /// waiting for its start offset.
    pub fn is_ready(&self) -> bool {
        let inner = self.lock();
        inner.joined && inner.halted.is_empty() && inner.waiting.is_empty()
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, StatusInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_joined_with_nothing_halted_or_waiting() {
        let status = ConsumerStatus::default();
        assert!(!status.is_ready(), "not in the group yet");
        status.lock().joined = true;
        assert!(status.is_ready(), "an empty assignment is ready");
        status
            .lock()
            .waiting
            .push(("t".into(), 1, "database down".into()));
        assert!(!status.is_ready());
        status.lock().waiting.clear();
        status.lock().halted.push(("t".into(), 0, "bad".into()));
        assert!(!status.is_ready());
        assert_eq!(status.halted(), [("t".to_owned(), 0, "bad".to_owned())]);
    }

    #[test]
    fn assigned_and_waiting_partitions_are_sorted_and_shared_by_clones() {
        let status = ConsumerStatus::default();
        let seen = status.clone();
        status.lock().assigned.extend([
            ("b".to_owned(), 0),
            ("a".to_owned(), 2),
            ("a".to_owned(), 1),
        ]);
        status.lock().waiting.extend([
            ("a".to_owned(), 2, "x".to_owned()),
            ("a".to_owned(), 1, "y".to_owned()),
        ]);
        assert_eq!(
            seen.assigned(),
            [
                ("a".to_owned(), 1),
                ("a".to_owned(), 2),
                ("b".to_owned(), 0)
            ]
        );
        assert_eq!(
            seen.waiting(),
            [
                ("a".to_owned(), 1, "y".to_owned()),
                ("a".to_owned(), 2, "x".to_owned())
            ]
        );
    }
}
