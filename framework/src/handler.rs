//! Event handlers in consumer groups: at-least-once, in order per partition.
//!
//! ```no_run
//! # use choreo::{Event, EventHandlers, HandlerError, KafkaConfig, Received, Shutdown};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct UserSignedUp { email: String }
//! # impl Event for UserSignedUp { const NAME: &'static str = "v1.user.signedup";
//! #     fn subject(&self) -> String { self.email.clone() } }
//! # async fn run() -> choreo::Result<()> {
//! EventHandlers::new("welcome-printer")
//!     .on(|event: Received<UserSignedUp>| async move {
//!         println!("{} signed up", event.payload.email);
//!         Ok::<_, HandlerError>(())
//!     })
//!     .run(&KafkaConfig::from_env()?, Shutdown::on_signals())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! A handler returns `Ok`, a [`HandlerError::Transient`] (retried with back-off, never
//! skipped; the partition is paused while polling continues) or a [`HandlerError::Poison`]
//! (the record goes to `{group}.dlq` with the reason, and the partition moves on). An error
//! that says neither (`?` on an `anyhow::Error`: [`HandlerError::Unclassified`]) is retried
//! for [`RETRY_UNCLASSIFIED_FOR`], then halts the partition. While a record is retried the
//! partition shows in `ConsumerStatus::retrying` with the last error and since when. A record
//! that cannot be decoded goes to the dead letters too. A panic in a handler is caught and
//! treated as poison.
//!
//! The config's namespace prefixes the group like the topics: `welcome-printer` under the
//! namespace `staging` is the consumer group `staging.welcome-printer`, with dead letters in
//! `staging.welcome-printer.dlq` and redriven records read from
//! `staging.welcome-printer.redrive` (the CLI's `choreo dlq` takes that full group name).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use tracing::Instrument;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::event::{Event, EventSet};
use crate::kafka::SchemaStore;
use crate::kafka::consumer::panic_message;
use crate::kafka::{
    Batch, ConsumerRuntime, ConsumerSettings, DeadLetterWriter, PartitionControl, PartitionLogic,
    PartitionWorker, Record, RunSummary, StartOffset, WorkerOutcome,
};
use crate::message::topics;
use crate::message::{EnvelopeError, Metadata, Origin, Received};
use crate::shutdown::Shutdown;

/// How a handler failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// Worth retrying (a database or network hiccup). Retried with back-off, never skipped.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Will never succeed for this message (a business rule, bad data): dead-lettered, and the
    /// partition moves on. The same word as `ReactError::Poison` and `ApplyError::Poison`.
    #[error("poison: {0:#}")]
    Poison(anyhow::Error),
    /// An error that did not say whether it is worth retrying (what `?` on an `anyhow::Error`
    /// gives). Retried like a transient one, but only for
    /// [`EventHandlers::retry_unclassified_for`] (5 minutes by default): then the partition
    /// halts with it, so a bug is neither retried forever nor skipped.
    #[error("unclassified: {0:#}")]
    Unclassified(anyhow::Error),
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn transient(error: impl Into<anyhow::Error>) -> Self {
        Self::Transient(error.into())
    }

    /// [`HandlerError::Poison`]: this record can never be handled; dead-letter it.
    pub fn poison(error: impl Into<anyhow::Error>) -> Self {
        Self::Poison(error.into())
    }

    /// The earlier name of [`HandlerError::poison`].
    #[deprecated(note = "use HandlerError::poison (the word reactors and projections use)")]
    pub fn permanent(error: impl Into<anyhow::Error>) -> Self {
        Self::poison(error)
    }
}

/// `?` on an `anyhow::Error` retries for a while, then halts: when in doubt, never skip, and
/// never wait forever on what may be a bug.
impl From<anyhow::Error> for HandlerError {
    fn from(error: anyhow::Error) -> Self {
        Self::Unclassified(error)
    }
}

/// How long an unclassified error is retried before its partition halts.
pub const RETRY_UNCLASSIFIED_FOR: Duration = Duration::from_secs(300);

/// What to do with a message type nobody registered (including a future major version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownTypes {
    /// Skip it: the consumer declares it ignores types it does not know.
    Skip,
    /// Send it to `{group}.dlq` (the default).
    DeadLetter,
    /// Halt the partition until an operator intervenes.
    Halt,
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;
/// A record whose payload could not be decoded, with what the route was given back (a schema
/// refresh may let a second attempt succeed). Boxed: the error path is rare, the `Ok` path
/// stays small.
type Undecoded = Box<(Metadata, Origin, EnvelopeError)>;
/// Decodes a record and starts its handler.
type Route =
    Arc<dyn Fn(Metadata, Option<&[u8]>, Origin) -> Result<HandlerFuture, Undecoded> + Send + Sync>;

/// A set of event handlers that run together in one consumer group.
pub struct EventHandlers {
    group: String,
    routes: HashMap<String, Route>,
    /// Types with a handler of their own (the other routes are older versions, upcast).
    exact: BTreeSet<String>,
    topics: BTreeSet<String>,
    unknown: UnknownTypes,
    settings: Option<ConsumerSettings>,
    error: Option<Error>,
    retry_unclassified_for: Duration,
}

impl std::fmt::Debug for EventHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHandlers")
            .field("group", &self.group)
            .field("types", &self.routes.keys().collect::<Vec<_>>())
            .field("topics", &self.topics)
            .field("unknown", &self.unknown)
            .finish()
    }
}

impl EventHandlers {
    /// Handlers in the consumer group `group` (instances with the same group share the
    /// partitions). Give the name without the namespace: [`EventHandlers::run`] prefixes the
    /// config's namespace, as it does for the topics.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            routes: HashMap::new(),
            exact: BTreeSet::new(),
            topics: BTreeSet::new(),
            unknown: UnknownTypes::DeadLetter,
            settings: None,
            error: None,
            retry_unclassified_for: RETRY_UNCLASSIFIED_FOR,
        }
    }

    /// Handles events of type `E`; subscribes to `E`'s topic.
    pub fn on<E, F, Fut>(mut self, handler: F) -> Self
    where
        E: Event,
        F: Fn(Received<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let name = E::name();
        if !self.exact.insert(name.as_str().to_owned()) {
            self.error.get_or_insert(Error::Config(format!(
                "{name} has two handlers in group {}",
                self.group
            )));
            return self;
        }
        self.topics.insert(E::topic());
        let handler = Arc::new(handler);
        let route: Route = Arc::new(
            move |meta: Metadata, payload: Option<&[u8]>, origin: Origin| {
                // `EventSet::decode` reads `E` itself and, through its upcasters, its older
                // versions, which arrive here as `E`.
                let event: E = match <E as EventSet>::decode(&meta, payload) {
                    Ok(Some(event)) => event,
                    Ok(None) => {
                        let error = EnvelopeError::Payload {
                            event_type: meta.message_type.clone(),
                            content_type: meta.content_type.clone(),
                            reason: format!(
                                "routed to the handler of {} but not one of its versions",
                                E::NAME
                            ),
                        };
                        return Err(Box::new((meta, origin, error)));
                    }
                    Err(error) => return Err(Box::new((meta, origin, error))),
                };
                let handler = Arc::clone(&handler);
                Ok(Box::pin(async move {
                    handler(Received {
                        meta,
                        payload: event,
                        origin,
                    })
                    .await
                }) as HandlerFuture)
            },
        );
        // Older versions go to this handler too, unless they have a handler of their own.
        for old in E::upcasters().names() {
            if let Some(entity) = old.split('.').nth(1) {
                self.topics.insert(topics::events(entity));
            }
            if !self.exact.contains(old) {
                self.routes.insert(old.to_owned(), Arc::clone(&route));
            }
        }
        self.routes.insert(name.as_str().to_owned(), route);
        self
    }

    /// Also subscribes to `topic` (under the config's namespace; its types are handled if registered, else per
    /// [`EventHandlers::unknown_types`]).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.insert(topic.into());
        self
    }

    /// What to do with types no handler is registered for.
    pub fn unknown_types(mut self, policy: UnknownTypes) -> Self {
        self.unknown = policy;
        self
    }

    /// Adjusts the consumer settings (batch size, queue bounds, raw properties...).
    pub fn configure(mut self, adjust: impl FnOnce(ConsumerSettings) -> ConsumerSettings) -> Self {
        let base = self
            .settings
            .take()
            .unwrap_or_else(|| ConsumerSettings::new(self.group.clone(), Vec::new()));
        self.settings = Some(adjust(base));
        self
    }

    /// What the consumer owns while it runs (assigned and halted partitions).
    pub fn status(&mut self) -> crate::kafka::ConsumerStatus {
        let settings = self
            .settings
            .get_or_insert_with(|| ConsumerSettings::new(self.group.clone(), Vec::new()));
        settings.status.clone()
    }

    /// How long a record whose handler fails with [`HandlerError::Unclassified`] (a `?` on an
    /// `anyhow::Error`) is retried before its partition halts ([`RETRY_UNCLASSIFIED_FOR`] by
    /// default). [`HandlerError::Transient`] is retried for as long as it takes.
    pub fn retry_unclassified_for(mut self, limit: Duration) -> Self {
        self.retry_unclassified_for = limit;
        self
    }

    /// The group name as given, without the namespace that [`EventHandlers::run`] prefixes.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Joins the group and handles events until `shutdown` fires; then finishes the batch in
    /// hand, commits, leaves the group.
    pub async fn run(self, config: &KafkaConfig, shutdown: Shutdown) -> Result<RunSummary> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.topics.is_empty() {
            return Err(Error::Config(format!(
                "group {} has no handlers",
                self.group
            )));
        }
        let mut settings = self
            .settings
            .unwrap_or_else(|| ConsumerSettings::new(self.group.clone(), Vec::new()));
        // The namespace isolates the group (and its dead-letter and redrive topics) like the
        // topics, by the rule projections, reactors and processors follow: two stacks sharing
        // a broker under different namespaces never share a group or its dead letters.
        settings.group_id = config.topic_name(&self.group);
        settings.topics = self.topics.iter().map(|t| config.topic_name(t)).collect();
        settings.commit_offsets = true;
        settings
            .required_topics
            .push(topics::dead_letters(&settings.group_id));
        settings.optional_topics = vec![topics::redrive(&settings.group_id)];
        let logic = Arc::new(HandlerLogic {
            routes: Arc::new(self.routes),
            unknown: self.unknown,
            retry_unclassified_for: self.retry_unclassified_for,
            dead_letters: DeadLetterWriter::new(config, &settings.group_id)?,
            schemas: SchemaStore::new(config),
        });
        ConsumerRuntime::run(config, settings, logic, shutdown).await
    }
}

struct HandlerLogic {
    routes: Arc<HashMap<String, Route>>,
    unknown: UnknownTypes,
    retry_unclassified_for: Duration,
    dead_letters: DeadLetterWriter,
    schemas: SchemaStore,
}

impl PartitionLogic for HandlerLogic {
    type Worker = HandlerWorker;

    async fn start_offsets(&self, partitions: &[(String, i32)]) -> Result<Vec<StartOffset>> {
        Ok(vec![StartOffset::Committed; partitions.len()])
    }

    fn worker(&self, _topic: &str, _partition: i32) -> HandlerWorker {
        HandlerWorker {
            routes: Arc::clone(&self.routes),
            unknown: self.unknown,
            retry_unclassified_for: self.retry_unclassified_for,
            dead_letters: self.dead_letters.clone(),
            schemas: self.schemas.clone(),
        }
    }
}

struct HandlerWorker {
    routes: Arc<HashMap<String, Route>>,
    unknown: UnknownTypes,
    retry_unclassified_for: Duration,
    dead_letters: DeadLetterWriter,
    schemas: SchemaStore,
}

/// What became of one record.
enum Step {
    Done,
    Retry(HandlerError),
    DeadLetter(String),
    Halt(String),
}

impl HandlerWorker {
    async fn handle(&self, record: &Record) -> Step {
        let (meta, payload) = match Metadata::open(record) {
            Ok(opened) => (opened.meta, opened.payload),
            Err(e) => return Step::DeadLetter(format!("undecodable envelope: {e}")),
        };
        let Some(route) = self.routes.get(&meta.message_type) else {
            return match self.unknown {
                UnknownTypes::Skip => Step::Done,
                UnknownTypes::DeadLetter => {
                    Step::DeadLetter(format!("no handler for type {}", meta.message_type))
                }
                UnknownTypes::Halt => Step::Halt(format!(
                    "no handler for type {} at offset {}",
                    meta.message_type,
                    record.offset()
                )),
            };
        };
        let origin = Origin {
            topic: record.topic().to_owned(),
            partition: record.partition(),
            offset: record.offset(),
        };
        let span = tracing::debug_span!("handle", id = %meta.id, r#type = %meta.message_type,
            subject = %meta.subject, topic = %origin.topic, partition = origin.partition, offset = origin.offset);
        let future = match route(meta, payload.as_deref(), origin) {
            Ok(future) => future,
            Err(undecoded) if undecoded.2.halts() => {
                let (meta, origin, e) = *undecoded;
                // An unknown writer schema: read the store again (a newer writer registers
                // before it writes), then try once more.
                let asked = std::time::Instant::now();
                if let Err(refresh) = self.schemas.refresh_if_older(asked).await {
                    return Step::Retry(HandlerError::transient(anyhow::anyhow!(
                        "{e}; refreshing the schema store failed: {refresh}"
                    )));
                }
                match route(meta, payload.as_deref(), origin) {
                    Ok(future) => future,
                    Err(again) if again.2.halts() => {
                        return Step::Halt(format!("offset {}: {}", record.offset(), again.2));
                    }
                    Err(again) => {
                        return Step::DeadLetter(format!("undecodable payload: {}", again.2));
                    }
                }
            }
            Err(undecoded) => {
                return Step::DeadLetter(format!("undecodable payload: {}", undecoded.2));
            }
        };
        match AssertUnwindSafe(future.instrument(span))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => Step::Done,
            Ok(Err(HandlerError::Poison(e))) => {
                Step::DeadLetter(format!("handler rejected it: {e:#}"))
            }
            Ok(Err(transient)) => Step::Retry(transient),
            Err(panic) => Step::DeadLetter(format!("handler panicked: {}", panic_message(&*panic))),
        }
    }
}

impl PartitionWorker for HandlerWorker {
    async fn process(&mut self, batch: Batch, control: &PartitionControl) -> WorkerOutcome {
        let mut next_offset = None;
        for record in &batch {
            // Revoked or shutting down: stop between records and report what is done, so a
            // clean rebalance commits it instead of redelivering the whole batch.
            if control.stopping() {
                return WorkerOutcome::Processed { next_offset };
            }
            let mut attempt = 0u32;
            let first_failure = std::time::Instant::now();
            let reason = loop {
                match self.handle(record).await {
                    Step::Done => break None,
                    // Records handled before it in this batch are redelivered after a restart:
                    // at-least-once.
                    Step::Halt(reason) => return WorkerOutcome::Halt(reason),
                    Step::Retry(error) => {
                        let failing_for = first_failure.elapsed();
                        if matches!(error, HandlerError::Unclassified(_))
                            && failing_for >= self.retry_unclassified_for
                        {
                            control.recovered();
                            return WorkerOutcome::Halt(format!(
                                "offset {}: still failing after {failing_for:.0?} ({attempt} retries) \
                                 with an error not marked transient or poison: {error}",
                                record.offset()
                            ));
                        }
                        tracing::warn!(topic = control.topic(), partition = control.partition(), offset = record.offset(),
                            attempt, %error, "handler failed; retrying");
                        control.retrying(&error.to_string());
                        if !control.backoff(attempt).await {
                            return WorkerOutcome::Processed { next_offset };
                        }
                        attempt += 1;
                    }
                    Step::DeadLetter(reason) => break Some(reason),
                }
            };
            if attempt > 0 {
                control.recovered();
            }
            if let Some(reason) = reason {
                tracing::warn!(topic = control.topic(), partition = control.partition(), offset = record.offset(),
                    %reason, "dead-lettering record");
                // Retry only the write (the handler's effects must not run again); a write that
                // can never succeed halts the partition rather than skipping the record.
                let mut attempt = 0u32;
                loop {
                    match self.dead_letters.write(record, &reason, Utc::now()).await {
                        Ok(_) => break,
                        Err(e) if e.is_retriable() => {
                            tracing::warn!(error = %e, "writing the dead letter failed; retrying");
                            if !control.backoff(attempt).await {
                                return WorkerOutcome::Processed { next_offset };
                            }
                            attempt += 1;
                        }
                        Err(e) => {
                            return WorkerOutcome::Halt(format!(
                                "cannot dead-letter offset {} ({reason}): {e}",
                                record.offset()
                            ));
                        }
                    }
                }
            }
            next_offset = Some(record.offset() + 1);
        }
        WorkerOutcome::Processed { next_offset }
    }
}
