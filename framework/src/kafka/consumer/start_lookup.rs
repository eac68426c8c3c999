//! Where a newly assigned partition starts: asked of the logic inside the rebalance callback
//! for a few seconds, then, while that fails, in the background until it answers. Partitions
//! that wait for it are assigned paused and listed in the status.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::context::RuntimeContext;
use super::partition::{halt_partition, seek_one};
use super::shared::{Shared, Tp};
use super::{PartitionLogic, StartOffset, panic_message};
use crate::backoff::Backoff;
use crate::error::{Error, Result};

impl<L: PartitionLogic> RuntimeContext<L> {
    /// Asks the logic for start offsets, retrying I/O failures for a while (a short while:
    /// the callback holds up every other partition of this member). A panic in the logic is an
    /// error, not a dead poll thread.
    pub(super) fn start_offsets(&self, partitions: &[(String, i32)]) -> Result<Vec<StartOffset>> {
        let shared = &self.shared;
        let deadline = Instant::now() + shared.start_offsets_budget;
        let mut backoff = Backoff::linear(
            Duration::from_millis(200),
            Duration::from_millis(200),
            Duration::from_secs(2),
        );
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
                Ok(Err(_)) => Err(Error::Timeout {
                    what: "start offsets".into(),
                    after: left,
                }),
                Err(panic) => Err(Error::Panicked {
                    what: "start_offsets".into(),
                    message: panic_message(&*panic),
                }),
            };
            match result {
                Ok(offsets) => return Ok(offsets),
                Err(e) if Instant::now() < deadline && !shared.stopping() => {
                    let delay = backoff.next();
                    tracing::warn!(error = %e, retry_in = ?delay, "start offsets unavailable; retrying");
                    std::thread::sleep(delay);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// How long an assignment retries start offsets inside the rebalance callback.
const START_OFFSETS_IN_CALLBACK: Duration = Duration::from_secs(10);

/// How long an assignment waits for start offsets inside the rebalance callback (a
/// database restarting): a few seconds, since the callback holds up the member's other
/// partitions; then the partitions wait paused and a background lookup goes on until
/// it succeeds. Half `max.poll.interval.ms` at most.
pub(super) fn start_offsets_budget(client: &ClientConfig) -> Duration {
    let max_poll = client
        .get("max.poll.interval.ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(300_000);
    Duration::from_millis(max_poll / 2).min(START_OFFSETS_IN_CALLBACK)
}

/// Marks a newly assigned partition as waiting for its start offset: paused, nothing
/// dispatched, shown in the status.
pub(super) fn wait_for_start<L: PartitionLogic>(
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

/// The back-off of background lookups: 2, 4, then 8 s (with jitter).
const LOOKUP_RETRY: Backoff = Backoff::doubling(Duration::from_secs(2), Duration::from_secs(8));

/// The wait before the next lookup after `failures` failed ones (the first two wait alike).
fn retry_delay(failures: u32) -> Duration {
    LOOKUP_RETRY.delay(failures.saturating_sub(1))
}

/// The background lookup of start offsets for partitions that wait for them: one lookup at a
/// time on the async runtime, retried with back-off while it fails, never halting a partition
/// for an outage. Driven by the poll loop.
#[derive(Default)]
pub(super) struct StartLookup {
    /// The partitions asked for (with their assignment generation) and where the answer comes.
    in_flight: Option<(Vec<(Tp, u64)>, LookupAnswer)>,
    failures: u32,
    next_try: Option<Instant>,
}

impl StartLookup {
    /// One turn of the poll loop: takes the answer of the lookup in flight if it came, or
    /// starts the next lookup when partitions wait and the back-off has passed.
    pub(super) fn step<L: PartitionLogic>(
        &mut self,
        shared: &Arc<Shared<L>>,
        consumer: &BaseConsumer<RuntimeContext<L>>,
    ) {
        if let Some((keys, rx)) = &self.in_flight {
            let result = match rx.try_recv() {
                Err(std_mpsc::TryRecvError::Empty) => return,
                Ok(result) => result,
                Err(std_mpsc::TryRecvError::Disconnected) => Err(Error::TaskFailed {
                    task: "the start offset lookup".into(),
                    reason: "it ended without an answer".into(),
                }),
            };
            let keys = keys.clone();
            self.in_flight = None;
            self.answered(shared, consumer, &keys, result);
            return;
        }
        if shared.stopping() || self.next_try.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.ask(shared);
    }

    /// Starts the partitions the answer is for, or keeps them waiting and backs off.
    fn answered<L: PartitionLogic>(
        &mut self,
        shared: &Arc<Shared<L>>,
        consumer: &BaseConsumer<RuntimeContext<L>>,
        keys: &[(Tp, u64)],
        result: Result<Vec<StartOffset>>,
    ) {
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
                for (key, _) in keys {
                    set_waiting(shared, key, &e.to_string());
                }
                self.failures += 1;
                let delay = retry_delay(self.failures);
                tracing::warn!(group = %shared.settings.group_id, error = %e, retry_in = ?delay,
                    partitions = keys.len(), "start offsets still unavailable; the partitions keep waiting");
                self.next_try = Some(Instant::now() + delay);
            }
        }
    }

    /// Asks the logic, on a blocking thread, for the start offsets of every waiting partition.
    fn ask<L: PartitionLogic>(&mut self, shared: &Arc<Shared<L>>) {
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
                    Err(Error::Panicked {
                        what: "start_offsets".into(),
                        message: panic_message(&*panic),
                    })
                })
                .and_then(|offsets| one_per_partition(offsets, partitions.len()));
            let _ = tx.send(result);
        });
        self.in_flight = Some((keys, rx));
    }
}

/// The logic's answer, if it has one offset per partition asked for.
fn one_per_partition(offsets: Vec<StartOffset>, partitions: usize) -> Result<Vec<StartOffset>> {
    if offsets.len() == partitions {
        Ok(offsets)
    } else {
        Err(Error::StartOffsetsMiscounted {
            answered: offsets.len(),
            asked: partitions,
        })
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
                Ok(list) => {
                    match committed_or_reset(list.elements().first().map(|e| e.offset()), reset) {
                        Ok(offset) => offset,
                        Err(reason) => {
                            stop_waiting(shared, consumer, key, Some(reason));
                            return true;
                        }
                    }
                }
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

/// Where a partition with this committed offset starts under `auto.offset.reset=reset`:
/// the committed offset, else the reset's end of the log; the halt reason when the reset
/// allows neither.
fn committed_or_reset(
    committed: Option<Offset>,
    reset: &str,
) -> std::result::Result<Offset, String> {
    match committed {
        Some(Offset::Offset(o)) => Ok(Offset::Offset(o)),
        _ if reset == "earliest" || reset == "smallest" => Ok(Offset::Beginning),
        _ if reset == "latest" || reset == "largest" => Ok(Offset::End),
        _ => Err(format!("no committed offset and auto.offset.reset={reset}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callback_waits_at_most_ten_seconds_and_half_the_poll_interval() {
        let mut client = ClientConfig::new();
        assert_eq!(start_offsets_budget(&client), Duration::from_secs(10));
        client.set("max.poll.interval.ms", "8000");
        assert_eq!(start_offsets_budget(&client), Duration::from_secs(4));
        client.set("max.poll.interval.ms", "600000");
        assert_eq!(start_offsets_budget(&client), Duration::from_secs(10));
        client.set("max.poll.interval.ms", "soon");
        assert_eq!(start_offsets_budget(&client), Duration::from_secs(10));
    }

    #[test]
    fn background_lookups_back_off_2_4_then_8_seconds() {
        let nominal: Vec<u64> = (0..6u32)
            .map(|n| LOOKUP_RETRY.nominal(n.saturating_sub(1)).as_secs())
            .collect();
        assert_eq!(nominal, [2, 2, 4, 8, 8, 8]);
        for n in 0..6u32 {
            let (delay, most) = (retry_delay(n), LOOKUP_RETRY.nominal(n.saturating_sub(1)));
            assert!(delay <= most && delay >= most * 4 / 5, "{delay:?}");
        }
    }

    #[test]
    fn a_partition_without_a_committed_offset_starts_where_the_reset_says_or_halts() {
        assert_eq!(
            committed_or_reset(Some(Offset::Offset(42)), "error"),
            Ok(Offset::Offset(42))
        );
        for (reset, start) in [
            ("earliest", Offset::Beginning),
            ("smallest", Offset::Beginning),
            ("latest", Offset::End),
            ("largest", Offset::End),
        ] {
            assert_eq!(committed_or_reset(None, reset), Ok(start), "{reset}");
            assert_eq!(
                committed_or_reset(Some(Offset::Invalid), reset),
                Ok(start),
                "{reset}"
            );
        }
        assert_eq!(
            committed_or_reset(None, "error"),
            Err("no committed offset and auto.offset.reset=error".to_owned())
        );
    }

    #[test]
    fn an_answer_needs_one_offset_per_partition() {
        let two = vec![StartOffset::Committed, StartOffset::At(5)];
        assert_eq!(one_per_partition(two.clone(), 2).expect("two"), two);
        let err = one_per_partition(two, 3).expect_err("short");
        assert!(
            matches!(
                err,
                Error::StartOffsetsMiscounted {
                    answered: 2,
                    asked: 3
                }
            ),
            "{err}"
        );
    }
}
