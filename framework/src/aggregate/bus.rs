//! The command bus: send commands, and wait for their replies.
//!
//! Each bus reads one partition of `{service}.replies`, assigned directly (no group) at its
//! end *before* the first send, so no reply can slip past it. Replies are matched on their
//! causation id (= the command id); a reply for another instance sharing the partition is
//! ignored. Retrying a send with the same command id is safe: the processor answers a
//! duplicate with its first outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::processor::lock;
use super::reply::{Outcome, REPLY_TYPE, Reply};
use crate::aggregate::extensions;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::event::CommandSet;
use crate::kafka::client;
use crate::kafka::{Outgoing, Publisher};
use crate::message::topics;
use crate::message::{Causation, Kind, MessageName, Metadata, Tense};

/// Per-send options.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// The command id; choose it (e.g. from an idempotency key) to make retries safe. A new
    /// UUIDv7 when absent.
    pub id: Option<Uuid>,
    /// After this instant the processor rejects the command instead of deciding it.
    pub deadline: Option<DateTime<Utc>>,
    /// The message that caused this command (same correlation id).
    pub causation: Option<Causation>,
}

/// Per command id, every call waiting for its reply (a double submit waits twice), with the
/// token that lets each call remove only itself; replies carry the deadline they judged.
type Waiters = Arc<Mutex<HashMap<Uuid, Vec<(u64, ReplySender)>>>>;
type ReplySender = mpsc::UnboundedSender<(Reply, Option<String>)>;

/// Distinguishes the calls waiting on one command id.
static NEXT_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sends commands and waits for replies. Cheap to clone.
#[derive(Clone)]
pub struct CommandBus {
    publisher: Publisher,
    config: KafkaConfig,
    reply_topic: String,
    reply_partition: i32,
    waiters: Waiters,
    stop: Arc<AtomicBool>,
    /// Why the reply reader ended, once it has (a panic is a bug, but it must not leave
    /// every later `send_and_wait` to time out in silence).
    reader_failed: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBus")
            .field("reply_topic", &self.reply_topic)
            .field("reply_partition", &self.reply_partition)
            .finish_non_exhaustive()
    }
}

impl Drop for CommandBus {
    fn drop(&mut self) {
        // The last clone stops the reply reader.
        if Arc::strong_count(&self.stop) == 1 {
            self.stop.store(true, Ordering::Release);
        }
    }
}

impl CommandBus {
    /// A bus for `service`: replies come to `{service}.replies` (which must exist), on
    /// `reply_partition` (e.g. the instance's ordinal modulo the partition count).
    pub async fn new(config: &KafkaConfig, service: &str, reply_partition: i32) -> Result<Self> {
        // Publisher::new checks the cluster with a blocking metadata request: off the async
        // threads.
        let publisher = {
            let (config, source) = (config.clone(), format!("/{service}"));
            tokio::task::spawn_blocking(move || Publisher::new(&config, source))
                .await
                .map_err(|e| Error::TaskFailed {
                    task: "creating the bus's publisher".into(),
                    reason: e.to_string(),
                })??
        };
        let reply_topic = config.topic_name(&topics::replies(service));
        let admin = crate::kafka::TopicAdmin::new(config)?;
        let description = admin
            .describe(&reply_topic)
            .await?
            .ok_or_else(|| Error::TopicMissing(reply_topic.clone()))?;
        if reply_partition < 0 || reply_partition >= description.partitions {
            return Err(Error::Config(format!(
                "reply partition {reply_partition} does not exist: {reply_topic} has {} partitions",
                description.partitions
            )));
        }
        let consumer: BaseConsumer = client::reader(config, &format!("{reply_topic}.reader"), &[])
            .create()
            .map_err(|e| Error::ClientCreate {
                client: "consumer",
                source: e,
            })?;
        let (topic, partition) = (reply_topic.clone(), reply_partition);
        // Position the reader at the end now, before any send: a reply cannot come earlier.
        let consumer = tokio::task::spawn_blocking(move || -> Result<BaseConsumer> {
            let (_, end) = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .map_err(|e| Error::kafka("fetch watermarks", e))?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition, Offset::Offset(end))
                .map_err(|e| Error::kafka("assign", e))?;
            consumer
                .assign(&tpl)
                .map_err(|e| Error::kafka("assign", e))?;
            Ok(consumer)
        })
        .await
        .map_err(|e| Error::TaskFailed {
            task: "reply reader set-up".into(),
            reason: e.to_string(),
        })??;
        let waiters: Waiters = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let reader_failed: Arc<Mutex<Option<String>>> = Arc::default();
        let (thread_waiters, thread_stop, thread_failed) = (
            Arc::clone(&waiters),
            Arc::clone(&stop),
            Arc::clone(&reader_failed),
        );
        std::thread::Builder::new()
            .name(format!("choreo-replies-{service}"))
            .spawn(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    read_replies(consumer, Arc::clone(&thread_waiters), thread_stop);
                }));
                if let Err(panic) = outcome {
                    let reason = format!(
                        "the reply reader panicked: {}",
                        crate::kafka::consumer::panic_message(&*panic)
                    );
                    tracing::error!(%reason, "command bus reply reader stopped");
                    // Under the waiters' lock, which a call holds while it checks and
                    // registers: every call learns it now (its channel closes, or it sees the
                    // failure before registering), none waits for its timeout.
                    let mut waiters = lock(&thread_waiters);
                    *lock(&thread_failed) = Some(reason);
                    waiters.clear();
                }
            })
            .map_err(|e| Error::TaskFailed {
                task: "starting the reply reader".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            publisher,
            config: config.clone(),
            reply_topic,
            reply_partition,
            waiters,
            stop,
            reader_failed,
        })
    }

    /// Why the reply reader stopped, if it did: `send_and_wait` fails at once from then on.
    pub fn reader_error(&self) -> Option<String> {
        lock(&self.reader_failed).clone()
    }

    /// Sends a command; returns its id once the broker has it.
    pub async fn send<C: CommandSet>(&self, command: &C, options: SendOptions) -> Result<Uuid> {
        let out = self.prepare(command, &options)?;
        self.publisher.send(&out).await?;
        Ok(out.meta().id)
    }

    /// Sends a command and waits for its reply (accepted with its events and their offsets, or
    /// rejected), or fails with [`Error::Timeout`].
    pub async fn send_and_wait<C: CommandSet>(
        &self,
        command: &C,
        options: SendOptions,
        timeout: Duration,
    ) -> Result<Reply> {
        let out = self.prepare(command, &options)?;
        let id = out.meta().id;
        let own_deadline = out.meta().extensions.get(extensions::DEADLINE).cloned();
        // The timeout covers the send too (librdkafka would otherwise retry a send for
        // minutes while the broker is away).
        let give_up = tokio::time::Instant::now() + timeout;
        let timed_out = || Error::Timeout {
            what: format!("the reply to command {id}"),
            after: timeout,
        };
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Registered before the send: the reply cannot arrive unobserved. A stopped reader is
        // checked under the same lock it takes to clear the waiters.
        {
            let mut waiters = lock(&self.waiters);
            if let Some(reason) = self.reader_error() {
                return Err(Error::ReplyReaderStopped { reason });
            }
            waiters.entry(id).or_default().push((token, tx));
        }
        let result = async {
            match tokio::time::timeout_at(give_up, self.publisher.send(&out)).await {
                Ok(sent) => sent?,
                Err(_) => return Err(timed_out()),
            };
            loop {
                match tokio::time::timeout_at(give_up, rx.recv()).await {
                    // "expired" for another attempt with this id (a retry carries a new
                    // deadline, and the processor echoes the one it judged): not ours.
                    Ok(Some((reply, echoed)))
                        if is_expired(&reply) && echoed.is_some() && echoed != own_deadline =>
                    {
                        continue;
                    }
                    Ok(Some((reply, _))) => break Ok(reply),
                    Ok(None) => {
                        break Err(Error::ReplyReaderStopped {
                            reason: self.reader_error().unwrap_or_else(|| "it ended".into()),
                        });
                    }
                    Err(_) => break Err(timed_out()),
                }
            }
        }
        .await;
        let mut waiters = self
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(calls) = waiters.get_mut(&id) {
            calls.retain(|(t, _)| *t != token);
            if calls.is_empty() {
                waiters.remove(&id);
            }
        }
        drop(waiters);
        result
    }

    fn prepare<C: CommandSet>(&self, command: &C, options: &SendOptions) -> Result<Outgoing> {
        let name = MessageName::parse(command.message_type(), Kind::Command, Tense::Unchecked)?;
        let id = options.id.unwrap_or_else(Uuid::now_v7);
        let mut meta = Metadata::new(
            id,
            name.as_str(),
            self.publisher.source(),
            command.subject_of(),
            Utc::now(),
            options.causation,
        );
        meta.extensions
            .insert(extensions::REPLY_TO.into(), self.reply_topic.clone());
        meta.extensions.insert(
            extensions::REPLY_PARTITION.into(),
            self.reply_partition.to_string(),
        );
        if let Some(deadline) = options.deadline {
            meta.extensions.insert(
                extensions::DEADLINE.into(),
                deadline.to_rfc3339_opts(SecondsFormat::Millis, true),
            );
        }
        let payload = command.encode()?;
        let topic = self.config.topic_name(&topics::commands(name.entity()));
        Ok(Outgoing::new(topic, meta, payload))
    }
}

/// Whether the reply says the command expired before it was decided.
fn is_expired(reply: &Reply) -> bool {
    matches!(&reply.outcome, Outcome::Rejected { rejection } if rejection.code == "expired")
}

fn read_replies(consumer: BaseConsumer, waiters: Waiters, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let record = match result {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(error = %e, "reply reader error");
                continue;
            }
        };
        let (meta, data) = match Metadata::open(&record) {
            Ok(opened) if opened.meta.message_type == REPLY_TYPE => (opened.meta, opened.payload),
            Ok(opened) => {
                tracing::warn!(r#type = %opened.meta.message_type, "not a reply on the replies topic; ignored");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, offset = record.offset(), "undecodable reply ignored");
                continue;
            }
        };
        let Some(calls) = waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&meta.causation_id)
            .cloned()
        else {
            continue; // another instance's, or a caller that gave up
        };
        match data.as_deref().map(serde_json::from_slice::<Outcome>) {
            Some(Ok(outcome)) => {
                let reply = Reply {
                    command_id: meta.causation_id,
                    subject: meta.subject.clone(),
                    outcome,
                };
                let echoed = meta.extensions.get(extensions::DEADLINE).cloned();
                for (_, call) in calls {
                    let _ = call.send((reply.clone(), echoed.clone()));
                }
            }
            _ => tracing::warn!(command = %meta.causation_id, "reply with an undecodable outcome"),
        }
    }
}
