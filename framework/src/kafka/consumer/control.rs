//! What a partition worker is handed: whether its partition is being taken away, and a
//! stop-aware back-off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::backoff::Backoff;

/// Handed to a [`PartitionWorker`](super::PartitionWorker): is the partition being taken away, and a stop-aware
/// back-off.
#[derive(Debug, Clone)]
pub struct PartitionControl {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    /// Where `retrying` and `recovered` show the partition's retries.
    pub(super) status: super::ConsumerStatus,
}

impl PartitionControl {
    /// Shows in the consumer's status that this partition retries a record: `reason` is the
    /// last error; the time of the first call since the last [`PartitionControl::recovered`]
    /// is kept as "since".
    pub fn retrying(&self, reason: &str) {
        let mut status = self.status.lock();
        let (topic, partition) = (&*self.topic, self.partition);
        match status
            .retrying
            .iter_mut()
            .find(|(t, p, _, _)| t == topic && *p == partition)
        {
            Some(entry) => reason.clone_into(&mut entry.2),
            None => status.retrying.push((
                topic.to_owned(),
                partition,
                reason.to_owned(),
                std::time::SystemTime::now(),
            )),
        }
    }

    /// The record that was retried is done: the partition leaves the status's retrying list.
    pub fn recovered(&self) {
        let (topic, partition) = (&*self.topic, self.partition);
        self.status
            .lock()
            .retrying
            .retain(|(t, p, _, _)| !(t == topic && *p == partition));
    }

    /// True once the partition is being revoked or the runtime shuts down.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps an exponential back-off for retry `attempt` (100 ms doubling to 30 s, with
    /// jitter); returns
    /// false, early, when the partition is stopping.
    pub async fn backoff(&self, attempt: u32) -> bool {
        let delay =
            Backoff::doubling(Duration::from_millis(100), Duration::from_secs(30)).delay(attempt);
        let deadline = tokio::time::Instant::now() + delay;
        while tokio::time::Instant::now() < deadline {
            if self.stopping() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50).min(delay)).await;
        }
        !self.stopping()
    }

    /// The partition's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition's number.
    pub fn partition(&self) -> i32 {
        self.partition
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn control() -> PartitionControl {
        PartitionControl {
            stop: Arc::new(AtomicBool::new(false)),
            topic: Arc::from("t"),
            partition: 3,
            status: super::super::ConsumerStatus::default(),
        }
    }

    #[tokio::test]
    async fn backoff_sleeps_and_says_go_on_unless_stopping() {
        let control = control();
        assert_eq!((control.topic(), control.partition()), ("t", 3));
        let started = Instant::now();
        assert!(control.backoff(0).await);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(!control.stopping());
    }

    #[tokio::test]
    async fn a_stop_ends_a_long_backoff_early() {
        let control = control();
        let revoke = control.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            revoke.stop.store(true, Ordering::Release);
        });
        let started = Instant::now();
        // Attempt 20 is capped at 30 s.
        assert!(!control.backoff(20).await);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(control.stopping());
        let started = Instant::now();
        assert!(!control.backoff(0).await);
        assert!(started.elapsed() < Duration::from_millis(100), "at once");
    }
}
