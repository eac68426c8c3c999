//! One task per assigned partition: it takes the records the poll thread dispatches, in
//! order, hands them to the [`PartitionWorker`] in batches and reports the outcome.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc as std_mpsc;

use futures::FutureExt;
use tokio::sync::mpsc;

use super::shared::{Dispatch, Queued, Report, ReportKind, Shared, Tp, WorkerHandle};
use super::{PartitionControl, PartitionLogic, PartitionWorker, WorkerOutcome, panic_message};

/// Creates the logic's worker for a newly assigned partition and starts its task; the
/// reason when creating the worker panicked.
pub(super) fn spawn_worker<L: PartitionLogic>(
    shared: &Arc<Shared<L>>,
    key: Tp,
    generation: u64,
) -> Result<WorkerHandle, String> {
    let (tx, rx) = mpsc::unbounded_channel::<Dispatch>();
    let stop = Arc::new(AtomicBool::new(false));
    let queued = Arc::new(Queued::default());
    let control = PartitionControl {
        stop: Arc::clone(&stop),
        topic: Arc::clone(&key.0),
        partition: key.1,
        status: shared.settings.status.clone(),
    };
    let worker = std::panic::catch_unwind(AssertUnwindSafe(|| shared.logic.worker(&key.0, key.1)))
        .map_err(|panic| {
            format!(
                "creating the partition worker panicked: {}",
                panic_message(&*panic)
            )
        })?;
    let reports = shared.reports_tx.clone();
    let task_queued = Arc::clone(&queued);
    let task = shared.handle.spawn(run_task(
        worker,
        rx,
        control,
        task_queued,
        reports,
        key,
        generation,
    ));
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

/// The task of one partition: takes dispatches until its queue closes or it is told to stop,
/// merges what is queued into one batch, processes it and reports the outcome; a halt or a
/// fatal error ends it. Its last report is `Exited`.
async fn run_task<W: PartitionWorker>(
    mut worker: W,
    mut rx: mpsc::UnboundedReceiver<Dispatch>,
    control: PartitionControl,
    task_queued: Arc<Queued>,
    reports: std_mpsc::Sender<Report>,
    key: Tp,
    generation: u64,
) {
    let report = |kind| Report {
        key: key.clone(),
        generation,
        kind,
    };
    let mut epoch = 0u64;
    while let Some(dispatch) = rx.recv().await {
        let mut count = dispatch.records.len();
        let mut bytes = dispatch.bytes;
        if control.stopping() {
            task_queued.sub(count, bytes);
            break;
        }
        if dispatch.epoch != epoch {
            // Fetched before our last seek took effect: stale.
            task_queued.sub(count, bytes);
            continue;
        }
        // Merge what else is queued (same epoch) into one batch: under load a projection
        // then commits fewer, larger transactions.
        let mut records = dispatch.records;
        while records.len() < MAX_MERGED
            && let Ok(more) = rx.try_recv()
        {
            count += more.records.len();
            bytes += more.bytes;
            if more.epoch == epoch {
                records.extend(more.records);
            }
        }
        let outcome = AssertUnwindSafe(worker.process(records, &control))
            .catch_unwind()
            .await;
        task_queued.sub(count, bytes);
        let Some(kind) = report_kind(outcome, &mut epoch) else {
            continue;
        };
        let stop_after = matches!(kind, ReportKind::Halt(..) | ReportKind::Fatal(..));
        let _ = reports.send(report(kind));
        if stop_after {
            break;
        }
    }
    let _ = reports.send(report(ReportKind::Exited));
}

/// What to report for a batch's outcome (nothing for a batch done without an offset to
/// store); a seek moves the task to the next `epoch`. A panic halts the partition.
fn report_kind(outcome: std::thread::Result<WorkerOutcome>, epoch: &mut u64) -> Option<ReportKind> {
    Some(match outcome {
        Ok(WorkerOutcome::Processed {
            next_offset: Some(next),
        }) => ReportKind::Store(next),
        Ok(WorkerOutcome::Processed { next_offset: None }) => return None,
        Ok(WorkerOutcome::Seek(offset)) => {
            *epoch += 1;
            ReportKind::Seek(offset, *epoch)
        }
        Ok(WorkerOutcome::Halt(reason)) => ReportKind::Halt(reason),
        Ok(WorkerOutcome::Fatal(reason)) => ReportKind::Fatal(reason),
        Err(panic) => ReportKind::Halt(format!(
            "partition worker panicked: {}",
            panic_message(&*panic)
        )),
    })
}

/// Most records merged from a partition's queue into one batch.
const MAX_MERGED: usize = 5_000;

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::future::Future;
    use std::sync::Mutex;
    use std::time::Duration;

    use rdkafka::message::{OwnedMessage, Timestamp};

    use super::*;
    use crate::error::Result;
    use std::sync::atomic::Ordering;

    use crate::kafka::consumer::Batch;
    use crate::kafka::consumer::{ConsumerSettings, Record, StartOffset};
    use crate::shutdown::Shutdown;

    /// Batches seen (as offsets), shared by the logic and its workers.
    type Seen = Arc<Mutex<Vec<Vec<i64>>>>;

    /// A logic whose worker returns scripted outcomes, one per batch; `None` panics.
    struct Scripted {
        seen: Seen,
        outcomes: Arc<Mutex<VecDeque<Option<WorkerOutcome>>>>,
        broken: bool,
    }

    struct ScriptedWorker {
        seen: Seen,
        outcomes: Arc<Mutex<VecDeque<Option<WorkerOutcome>>>>,
    }

    impl PartitionLogic for Scripted {
        type Worker = ScriptedWorker;

        fn start_offsets(
            &self,
            partitions: &[(String, i32)],
        ) -> impl Future<Output = Result<Vec<StartOffset>>> + Send {
            let n = partitions.len();
            async move { Ok(vec![StartOffset::Committed; n]) }
        }

        fn worker(&self, _topic: &str, _partition: i32) -> ScriptedWorker {
            assert!(!self.broken, "no worker today");
            ScriptedWorker {
                seen: Arc::clone(&self.seen),
                outcomes: Arc::clone(&self.outcomes),
            }
        }
    }

    impl PartitionWorker for ScriptedWorker {
        fn process(
            &mut self,
            batch: Batch,
            _control: &PartitionControl,
        ) -> impl Future<Output = WorkerOutcome> + Send {
            let offsets = batch.iter().map(Record::offset).collect();
            self.seen.lock().expect("seen").push(offsets);
            let next = self.outcomes.lock().expect("outcomes").pop_front();
            async move {
                match next.expect("an outcome for each batch") {
                    Some(outcome) => outcome,
                    None => panic!("boom"),
                }
            }
        }
    }

    fn shared(outcomes: Vec<Option<WorkerOutcome>>) -> (Arc<Shared<Scripted>>, Seen) {
        let seen = Seen::default();
        let logic = Scripted {
            seen: Arc::clone(&seen),
            outcomes: Arc::new(Mutex::new(outcomes.into())),
            broken: false,
        };
        let settings = ConsumerSettings::new("g", vec!["t".into()]);
        let shared = Shared::new(
            Arc::new(logic),
            settings,
            Shutdown::new(),
            Duration::from_secs(1),
        );
        (Arc::new(shared), seen)
    }

    fn key() -> Tp {
        (Arc::from("t"), 0)
    }

    /// Queues records at `offsets` for the task, as the poll thread's dispatch does.
    fn dispatch(handle: &WorkerHandle, epoch: u64, offsets: &[i64]) {
        let records: Batch = offsets
            .iter()
            .map(|offset| {
                let message = OwnedMessage::new(
                    Some(b"{}".to_vec()),
                    Some(b"k".to_vec()),
                    "t".into(),
                    Timestamp::NotAvailable,
                    0,
                    *offset,
                    None,
                );
                Record::copy(&message, Arc::from("t"))
            })
            .collect();
        let bytes = records.iter().map(Record::size_in_memory).sum();
        handle.queued.add(records.len(), bytes);
        let tx = handle.tx.as_ref().expect("open queue");
        assert!(
            tx.send(Dispatch {
                epoch,
                records,
                bytes
            })
            .is_ok()
        );
    }

    async fn next_report<L: PartitionLogic>(shared: &Shared<L>) -> Report {
        for _ in 0..5_000 {
            let report = shared.reports_rx.lock().expect("reports").try_recv();
            if let Ok(report) = report {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("no report within 5 s");
    }

    #[tokio::test]
    async fn queued_dispatches_are_merged_into_one_batch_and_its_offset_reported() {
        let (shared, seen) = shared(vec![Some(WorkerOutcome::Processed {
            next_offset: Some(3),
        })]);
        let handle = spawn_worker(&shared, key(), 7).expect("worker");
        dispatch(&handle, 0, &[0, 1]);
        dispatch(&handle, 0, &[2]);
        let report = next_report(&shared).await;
        assert_eq!((report.key, report.generation), (key(), 7));
        assert!(matches!(report.kind, ReportKind::Store(3)));
        assert_eq!(*seen.lock().expect("seen"), [vec![0, 1, 2]]);
        assert_eq!(handle.queued.load(), (0, 0));
    }

    #[tokio::test]
    async fn after_a_seek_records_of_the_old_epoch_are_dropped() {
        let (shared, seen) = shared(vec![
            Some(WorkerOutcome::Seek(10)),
            Some(WorkerOutcome::Processed {
                next_offset: Some(12),
            }),
        ]);
        let handle = spawn_worker(&shared, key(), 1).expect("worker");
        dispatch(&handle, 0, &[5]);
        assert!(matches!(
            next_report(&shared).await.kind,
            ReportKind::Seek(10, 1)
        ));
        dispatch(&handle, 0, &[6]);
        dispatch(&handle, 1, &[10]);
        dispatch(&handle, 0, &[7]);
        dispatch(&handle, 1, &[11]);
        assert!(matches!(
            next_report(&shared).await.kind,
            ReportKind::Store(12)
        ));
        assert_eq!(*seen.lock().expect("seen"), [vec![5], vec![10, 11]]);
        assert_eq!(handle.queued.load(), (0, 0));
    }

    #[tokio::test]
    async fn a_panicking_worker_halts_its_partition_and_the_task_exits() {
        let (shared, _) = shared(vec![None]);
        let handle = spawn_worker(&shared, key(), 1).expect("worker");
        dispatch(&handle, 0, &[0]);
        let report = next_report(&shared).await;
        assert!(
            matches!(&report.kind, ReportKind::Halt(reason) if reason == "partition worker panicked: boom")
        );
        assert!(matches!(
            next_report(&shared).await.kind,
            ReportKind::Exited
        ));
    }

    #[tokio::test]
    async fn a_fatal_outcome_is_reported_and_ends_the_task() {
        let (shared, _) = shared(vec![Some(WorkerOutcome::Fatal("fenced".into()))]);
        let handle = spawn_worker(&shared, key(), 1).expect("worker");
        dispatch(&handle, 0, &[0]);
        assert!(matches!(
            next_report(&shared).await.kind,
            ReportKind::Fatal(reason) if reason == "fenced"
        ));
        assert!(matches!(
            next_report(&shared).await.kind,
            ReportKind::Exited
        ));
    }

    #[tokio::test]
    async fn a_batch_without_an_offset_reports_nothing_and_a_closed_queue_ends_the_task() {
        let (shared, seen) = shared(vec![Some(WorkerOutcome::Processed { next_offset: None })]);
        let mut handle = spawn_worker(&shared, key(), 1).expect("worker");
        dispatch(&handle, 0, &[4]);
        handle.tx = None;
        assert!(matches!(
            next_report(&shared).await.kind,
            ReportKind::Exited
        ));
        assert_eq!(*seen.lock().expect("seen"), [vec![4]]);
    }

    #[tokio::test]
    async fn a_stopping_task_processes_nothing_more() {
        let (shared, seen) = shared(Vec::new());
        let handle = spawn_worker(&shared, key(), 1).expect("worker");
        handle.stop.store(true, Ordering::Release);
        dispatch(&handle, 0, &[0, 1]);
        assert!(matches!(
            next_report(&shared).await.kind,
            ReportKind::Exited
        ));
        assert!(seen.lock().expect("seen").is_empty());
        assert_eq!(handle.queued.load(), (0, 0));
    }

    #[tokio::test]
    async fn a_worker_that_cannot_be_created_is_an_error_with_the_reason() {
        let broken = Shared::new(
            Arc::new(Scripted {
                seen: Seen::default(),
                outcomes: Arc::default(),
                broken: true,
            }),
            ConsumerSettings::new("g", vec!["t".into()]),
            Shutdown::new(),
            Duration::from_secs(1),
        );
        let err = spawn_worker(&Arc::new(broken), key(), 1)
            .err()
            .expect("no worker");
        assert_eq!(
            err,
            "creating the partition worker panicked: no worker today"
        );
    }
}
