//! Starting the runtime: topics checked, the consumer built, the poll thread run to the end.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::oneshot;

use super::context::RuntimeContext;
use super::poll::poll_loop;
use super::shared::Shared;
use super::{ConsumerSettings, PartitionLogic, panic_message, settings, start_lookup};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;

/// What a finished run leaves behind.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Partitions halted during the run, with the reason.
    pub halted: Vec<(String, i32, String)>,
    /// How many times partitions were assigned to this member (1 in a calm run).
    pub assignments: u64,
}

/// Runs a [`PartitionLogic`] in a consumer group until shutdown.
#[derive(Debug)]
pub struct ConsumerRuntime;

/// Stops the poll thread if the `run` future is dropped before it finished.
struct AbandonGuard<L: PartitionLogic> {
    shared: Arc<Shared<L>>,
    finished: bool,
}

impl<L: PartitionLogic> Drop for AbandonGuard<L> {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.abandoned.store(true, Ordering::Release);
        }
    }
}

impl ConsumerRuntime {
    /// Joins the group and runs until `shutdown` fires (or a fatal error), then drains: tasks
    /// finish their batch, offsets are committed, the member leaves the group.
    pub async fn run<L: PartitionLogic>(
        config: &KafkaConfig,
        settings: ConsumerSettings,
        logic: Arc<L>,
        shutdown: Shutdown,
    ) -> Result<RunSummary> {
        crate::kafka::check_reachable_async(config).await?;
        let subscription = subscription(config, &settings).await?;
        let client = settings::client_config(config, &settings);
        let start_offsets_budget = start_lookup::start_offsets_budget(&client);
        let shared = Arc::new(Shared::new(logic, settings, shutdown, start_offsets_budget));
        let consumer: BaseConsumer<RuntimeContext<L>> = client
            .create_with_context(RuntimeContext {
                shared: Arc::clone(&shared),
            })
            .map_err(|e| Error::ClientCreate {
                client: "consumer",
                source: e,
            })?;
        let topics: Vec<&str> = subscription.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| Error::kafka("subscribe", e))?;

        let mut guard = AbandonGuard {
            shared: Arc::clone(&shared),
            finished: false,
        };
        let done_rx = spawn_poll_thread(&shared, consumer)?;
        let finished = done_rx.await;
        guard.finished = true;
        shared.settings.status.lock().joined = false;
        let state = shared.state();
        match (&state.fatal, finished) {
            (Some(reason), _) => Err(Error::Stopped {
                runtime: format!("consumer group {}", shared.settings.group_id),
                reason: reason.clone(),
            }),
            (None, Err(_)) => Err(Error::TaskFailed {
                task: "the poll thread".into(),
                reason: "it ended without a result".into(),
            }),
            (None, Ok(())) => Ok(RunSummary {
                halted: state.halted.clone(),
                assignments: shared.generation.load(Ordering::Acquire),
            }),
        }
    }
}

/// The topics to subscribe: the settings' topics, which must exist (as must the required
/// ones), and the optional ones that exist.
async fn subscription(config: &KafkaConfig, settings: &ConsumerSettings) -> Result<Vec<String>> {
    let admin = crate::kafka::TopicAdmin::new(config)?;
    for topic in settings.topics.iter().chain(&settings.required_topics) {
        if admin.describe(topic).await?.is_none() {
            return Err(Error::TopicMissing(topic.clone()));
        }
    }
    let mut subscription = settings.topics.clone();
    for topic in &settings.optional_topics {
        if admin.describe(topic).await?.is_some() {
            subscription.push(topic.clone());
        }
    }
    Ok(subscription)
}

/// Runs [`poll_loop`] on the thread `choreo-poll-{group}`, which owns the consumer; the
/// receiver resolves when the thread is done (a panic in it fails the run).
fn spawn_poll_thread<L: PartitionLogic>(
    shared: &Arc<Shared<L>>,
    consumer: BaseConsumer<RuntimeContext<L>>,
) -> Result<oneshot::Receiver<()>> {
    let (done_tx, done_rx) = oneshot::channel();
    let thread_shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name(format!("choreo-poll-{}", shared.settings.group_id))
        .spawn(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                poll_loop(&thread_shared, &consumer);
                drop(consumer);
            }));
            if let Err(panic) = outcome {
                thread_shared.fail(format!(
                    "the poll thread panicked: {}",
                    panic_message(&*panic)
                ));
            }
            let _ = done_tx.send(());
        })
        .map_err(|e| Error::TaskFailed {
            task: "starting the poll thread".into(),
            reason: e.to_string(),
        })?;
    Ok(done_rx)
}
