//! The live runner: a consumer group `{name}.v{version}` whose partition tasks apply batches
//! with the compare-and-set of [`super::batch`].

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::PgPool;

use super::batch::{self, Outcome, Target};
use super::checkpoint::{self, Slot};
use super::{Projection, live_schema, projection_id};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::event::EventSet;
use crate::kafka::SchemaStore;
use crate::kafka::{
    Batch, ConsumerRuntime, ConsumerSettings, ConsumerStatus, DeadLetterWriter, PartitionControl,
    PartitionLogic, PartitionWorker, RunSummary, StartOffset, WorkerOutcome,
};
use crate::message::topics;
use crate::shutdown::Shutdown;

/// Runs a projection's live view in its consumer group until shutdown.
pub struct ProjectionRunner<P: Projection> {
    projection: Arc<P>,
    settings: ConsumerSettings,
}

impl<P: Projection> std::fmt::Debug for ProjectionRunner<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("projection", &projection_id::<P>())
            .finish_non_exhaustive()
    }
}

impl<P: Projection> ProjectionRunner<P> {
    /// A runner in the group `{name}.v{version}` (namespaced when it runs), reading batches of
    /// up to 1000 records.
    pub fn new(projection: Arc<P>) -> Self {
        let mut settings = ConsumerSettings::new(projection_id::<P>(), Vec::new());
        // Projections keep their position in Postgres; the group offsets stored too are only
        // for Kafka's own lag tools.
        settings.read_committed = true;
        settings.max_batch = 1000;
        Self {
            projection,
            settings,
        }
    }

    /// Adjusts the consumer settings (batch size, raw properties...).
    pub fn configure(mut self, adjust: impl FnOnce(ConsumerSettings) -> ConsumerSettings) -> Self {
        self.settings = adjust(self.settings);
        self
    }

    /// What the runner owns while it runs.
    pub fn status(&self) -> ConsumerStatus {
        self.settings.status.clone()
    }

    /// Creates the view's schema and tables if needed, then applies events until `shutdown`.
    pub async fn run(
        self,
        kafka: &KafkaConfig,
        pool: &PgPool,
        shutdown: Shutdown,
    ) -> Result<RunSummary> {
        super::check_name(P::NAME)?;
        setup(&*self.projection, pool, kafka).await?;
        let topics: Vec<String> = P::Events::topics()
            .iter()
            .map(|t| kafka.topic_name(t))
            .collect();
        let mut settings = self.settings;
        settings.topics = topics;
        // The namespace isolates the group (and its dead-letter topic) like the topics.
        settings.group_id = kafka.topic_name(&projection_id::<P>());
        settings
            .required_topics
            .push(topics::dead_letters(&settings.group_id));
        // Where `choreo dlq redrive` feeds dead letters back: named after the namespaced group.
        settings.optional_topics = vec![topics::redrive(&settings.group_id)];
        let watermarks: BaseConsumer = kafka
            .client_config(&[("isolation.level", "read_committed")])
            .create()
            .map_err(|e| Error::ClientCreate {
                client: "consumer",
                source: e,
            })?;
        let logic = Arc::new(RunnerLogic {
            projection: self.projection,
            pool: pool.clone(),
            id: projection_id::<P>(),
            schema: live_schema::<P>(),
            dead_letters: DeadLetterWriter::new(kafka, &settings.group_id)?,
            schemas: SchemaStore::new(kafka),
            watermarks,
        });
        ConsumerRuntime::run(kafka, settings, logic, shutdown).await
    }
}

/// Registers the projection under the namespace of `kafka` (refused when another namespace
/// holds it) and creates its live schema and tables (idempotent, serialized across instances
/// by an advisory lock).
pub(crate) async fn setup<P: Projection>(
    projection: &P,
    pool: &PgPool,
    kafka: &KafkaConfig,
) -> Result<()> {
    super::check_name(P::NAME)?;
    crate::postgres::migrate(pool).await?;
    let namespace = kafka.topic_namespace().unwrap_or("");
    create_schema(pool, projection, &live_schema::<P>(), Some(namespace)).await
}

/// Creates `schema` with the projection's tables. With `owner` (a topic namespace, `""` for
/// none), records the projection as serving that namespace, or fails if it serves another.
pub(crate) async fn create_schema<P: Projection>(
    pool: &PgPool,
    projection: &P,
    schema: &str,
    owner: Option<&str>,
) -> Result<()> {
    let pg = |op| move |e| Error::Postgres { op, source: e };
    let mut tx = pool.begin().await.map_err(pg("begin"))?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('choreo.setup.' || $1))")
        .bind(projection_id::<P>())
        .execute(&mut *tx)
        .await
        .map_err(pg("lock"))?;
    sqlx::query(&format!(
        "CREATE SCHEMA IF NOT EXISTS {}",
        crate::postgres::quote_ident(schema)
    ))
    .execute(&mut *tx)
    .await
    .map_err(pg("create schema"))?;
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(crate::postgres::quote_ident(schema))
        .execute(&mut *tx)
        .await
        .map_err(pg("set search_path"))?;
    // Several statements: the simple query protocol (an unprepared &str) runs them all.
    sqlx::Executor::execute(&mut *tx, projection.schema_sql())
        .await
        .map_err(pg("projection schema_sql"))?;
    if let Some(namespace) = owner {
        register::<P>(&mut tx, schema, namespace).await?;
    }
    tx.commit().await.map_err(pg("commit"))?;
    Ok(())
}

/// Records the projection as serving `namespace` (claiming a row that serves none yet), or
/// refuses: a view, its checkpoints, rebuild lock and dead-letter rows are named by the
/// projection alone, so two namespaces in one database would apply into one view and a swap
/// in either would drop the other's checkpoints.
async fn register<P: Projection>(
    tx: &mut sqlx::PgConnection,
    schema: &str,
    namespace: &str,
) -> Result<()> {
    let pg = |op| move |e| Error::Postgres { op, source: e };
    let id = projection_id::<P>();
    let serves: Option<String> = sqlx::query_scalar(
        "INSERT INTO choreo_meta.projections (projection, name, version, live_schema, namespace) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (projection) DO UPDATE SET namespace = COALESCE(projections.namespace, EXCLUDED.namespace) \
         RETURNING namespace",
    )
    .bind(&id)
    .bind(P::NAME)
    .bind(P::VERSION as i32)
    .bind(schema)
    .bind(namespace)
    .fetch_one(&mut *tx)
    .await
    .map_err(pg("register projection"))?;
    match serves {
        Some(serves) if serves != namespace => Err(Error::Config(format!(
            "projection {id} in this database serves the topic namespace {}, not {}: a view, its \
             checkpoints and its rebuild lock belong to one namespace. Give each namespace a \
             database of its own (CHOREO_DATABASE_URL)",
            shown(&serves),
            shown(namespace)
        ))),
        _ => Ok(()),
    }
}

/// A namespace as an operator reads it: quoted, or "none".
fn shown(namespace: &str) -> String {
    if namespace.is_empty() {
        "none (no CHOREO_TOPIC_NAMESPACE)".to_owned()
    } else {
        format!("{namespace:?}")
    }
}

struct RunnerLogic<P: Projection> {
    projection: Arc<P>,
    pool: PgPool,
    id: String,
    schema: String,
    dead_letters: DeadLetterWriter,
    schemas: SchemaStore,
    watermarks: BaseConsumer,
}

impl<P: Projection> PartitionLogic for RunnerLogic<P> {
    type Worker = RunnerWorker<P>;

    /// Start at the Postgres checkpoint (created at the log start when there is none: a new
    /// view is built from the beginning). A checkpoint outside [log start, end] halts.
    // Boxed as `dyn Future + Send`, borrowing only `self`: proving `Send` here with concrete
    // lifetimes avoids the higher-ranked lifetime errors sqlx's executor bounds cause when the
    // compiler must prove it for every lifetime (rust-lang/rust#64552).
    fn start_offsets<'s>(
        &'s self,
        partitions: &[(String, i32)],
    ) -> impl std::future::Future<Output = Result<Vec<StartOffset>>> + Send {
        let partitions = partitions.to_vec();
        let boxed: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Vec<StartOffset>>> + Send + 's>,
        > = Box::pin(async move { self.start_offsets_inner(&partitions).await });
        boxed
    }

    fn worker(&self, _topic: &str, _partition: i32) -> RunnerWorker<P> {
        RunnerWorker {
            projection: Arc::clone(&self.projection),
            pool: self.pool.clone(),
            id: self.id.clone(),
            schema: self.schema.clone(),
            dead_letters: self.dead_letters.clone(),
            schemas: self.schemas.clone(),
            expected: None,
        }
    }
}

impl<P: Projection> RunnerLogic<P> {
    async fn start_offsets_inner(&self, partitions: &[(String, i32)]) -> Result<Vec<StartOffset>> {
        let mut conn = self.pool.acquire().await.map_err(|e| Error::Postgres {
            op: "acquire",
            source: e,
        })?;
        let mut out = Vec::with_capacity(partitions.len());
        for (topic, partition) in partitions {
            // Runs on the poll thread (inside the rebalance callback), so blocking is fine.
            let (low, high) = self
                .watermarks
                .fetch_watermarks(topic, *partition, Duration::from_secs(10))
                .map_err(|e| Error::kafka("fetch watermarks", e))?;
            let stored = checkpoint::init(&mut conn, &self.id, Slot::Live, topic, *partition, low)
                .await
                .map_err(|e| Error::Postgres {
                    op: "init checkpoint",
                    source: e,
                })?;
            out.push(if stored < low {
                StartOffset::Halt(format!(
                    "checkpoint {stored} of {} is before the log start {low}: retention deleted events this view never saw; \
                     rebuild it from a complete log or reset it",
                    self.id
                ))
            } else if stored > high {
                StartOffset::Halt(format!(
                    "checkpoint {stored} of {} is beyond the log end {high}: was the topic recreated? rebuild or reset the view",
                    self.id
                ))
            } else {
                StartOffset::At(stored)
            });
        }
        Ok(out)
    }
}

struct RunnerWorker<P: Projection> {
    projection: Arc<P>,
    pool: PgPool,
    id: String,
    schema: String,
    dead_letters: DeadLetterWriter,
    schemas: SchemaStore,
    /// The checkpoint as this task last saw it.
    expected: Option<i64>,
}

impl<P: Projection> PartitionWorker for RunnerWorker<P> {
    // Boxed for the same reason as `start_offsets`.
    fn process<'s>(
        &'s mut self,
        batch: Batch,
        control: &PartitionControl,
    ) -> impl std::future::Future<Output = WorkerOutcome> + Send {
        let control = control.clone();
        let boxed: std::pin::Pin<Box<dyn std::future::Future<Output = WorkerOutcome> + Send + 's>> =
            Box::pin(async move { self.process_inner(batch, &control).await });
        boxed
    }
}

impl<P: Projection> RunnerWorker<P> {
    async fn process_inner(&mut self, batch: Batch, control: &PartitionControl) -> WorkerOutcome {
        let target = Target {
            projection: &self.id,
            slot: Slot::Live,
            schema: &self.schema,
            dead_letters: &self.dead_letters,
            schemas: &self.schemas,
        };
        let mut attempt = 0u32;
        loop {
            let expected = match self.expected {
                Some(expected) => expected,
                None => match self.pool.acquire().await {
                    Ok(mut conn) => match checkpoint::read(
                        &mut conn,
                        &self.id,
                        Slot::Live,
                        control.topic(),
                        control.partition(),
                    )
                    .await
                    {
                        Ok(Some(value)) => value,
                        Ok(None) => {
                            return WorkerOutcome::Halt(format!(
                                "checkpoint of {} disappeared (reset while running?)",
                                self.id
                            ));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the checkpoint failed; retrying");
                            if !control.backoff(attempt).await {
                                return WorkerOutcome::Processed { next_offset: None };
                            }
                            attempt += 1;
                            continue;
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "no database connection; retrying");
                        if !control.backoff(attempt).await {
                            return WorkerOutcome::Processed { next_offset: None };
                        }
                        attempt += 1;
                        continue;
                    }
                },
            };
            self.expected = Some(expected);
            match batch::apply(&self.pool, &*self.projection, &target, expected, &batch).await {
                Ok(Outcome::Committed { next, .. }) => {
                    self.expected = Some(next);
                    return WorkerOutcome::Processed {
                        next_offset: Some(next),
                    };
                }
                Ok(Outcome::Nothing) => return WorkerOutcome::Processed { next_offset: None },
                Ok(Outcome::Conflict {
                    checkpoint: Some(now),
                }) => {
                    // Another writer (a zombie's successor, a rebuild swap) moved it: not an
                    // error. Read on from where the view really is.
                    tracing::info!(projection = %self.id, partition = control.partition(), expected, now,
                        "checkpoint moved by another writer; seeking");
                    self.expected = Some(now);
                    return WorkerOutcome::Seek(now);
                }
                Ok(Outcome::Conflict { checkpoint: None }) => {
                    return WorkerOutcome::Halt(format!(
                        "checkpoint of {} disappeared (reset while running?)",
                        self.id
                    ));
                }
                Ok(Outcome::Halt(reason)) => return WorkerOutcome::Halt(reason),
                Err(batch::Transient(reason)) => {
                    tracing::warn!(projection = %self.id, partition = control.partition(), %reason, attempt,
                        "batch failed transiently; retrying the whole transaction");
                    // Re-read the checkpoint on the next attempt: the outcome may be unknown.
                    self.expected = None;
                    if !control.backoff(attempt).await {
                        return WorkerOutcome::Processed { next_offset: None };
                    }
                    attempt += 1;
                }
            }
        }
    }
}
