//! One batch, one transaction: compare-and-set the checkpoint on the expected offset, apply
//! the events, record the poison ones, advance to last + 1, commit. Shared by the live runner
//! and the rebuild, so both produce the same view from the same events.

use chrono::Utc;
use sqlx::{Connection, PgConnection, PgPool};

use super::checkpoint::{self, Slot};
use super::{ApplyError, Projection};
use crate::event::EventSet;
use crate::failpoint;
use crate::kafka::SchemaStore;
use crate::kafka::{DeadLetterWriter, Record};
use crate::message::{Metadata, Origin, Received};

/// Where a batch goes.
pub(crate) struct Target<'a> {
    /// `{name}.v{version}`: checkpoint key and dead-letter consumer name.
    pub projection: &'a str,
    pub slot: Slot,
    /// The schema `search_path` is set to.
    pub schema: &'a str,
    pub dead_letters: &'a DeadLetterWriter,
    /// Read again when a record names an Avro writer schema this process does not know.
    pub schemas: &'a SchemaStore,
}

/// What became of a batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Committed; the checkpoint is now `next`.
    Committed {
        next: i64,
        applied: usize,
        poisoned: usize,
    },
    /// Nothing to do (every record was below the checkpoint).
    Nothing,
    /// Someone else moved the checkpoint: it is `checkpoint` now.
    Conflict { checkpoint: Option<i64> },
    /// A bug that would poison every event: stop the partition.
    Halt(String),
}

/// A failure worth retrying; the transaction was rolled back (or its outcome resolved).
#[derive(Debug)]
pub(crate) struct Transient(pub String);

impl From<sqlx::Error> for Transient {
    fn from(e: sqlx::Error) -> Self {
        Transient(e.to_string())
    }
}

struct Poison {
    index: usize,
    reason: String,
}

/// The records of one partition in a batch, on top of its checkpoint `expected`.
pub(crate) struct Part<'a> {
    pub expected: i64,
    pub records: &'a [Record],
}

/// What became of a batch of several partitions.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PartsOutcome {
    /// Committed; per part, its new checkpoint (`None`: nothing to apply in it).
    Committed {
        nexts: Vec<Option<i64>>,
        poisoned: usize,
    },
    /// Part `part`'s checkpoint was moved by someone else: it is `checkpoint` now. Nothing
    /// was committed.
    Conflict {
        part: usize,
        checkpoint: Option<i64>,
    },
    /// A bug that would poison every event: stop.
    Halt(String),
}

/// Applies `records` (one partition, in order) on top of checkpoint `expected`.
///
/// Boxed: proving the future `Send` here, with concrete lifetimes, spares every caller the
/// higher-ranked lifetime errors sqlx's executor bounds otherwise cause at `tokio::spawn`.
pub(crate) fn apply<'a, P: Projection>(
    pool: &'a PgPool,
    projection: &'a P,
    target: &'a Target<'a>,
    expected: i64,
    records: &'a [Record],
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Outcome, Transient>> + Send + 'a>> {
    Box::pin(async move {
        let parts = [Part { expected, records }];
        Ok(
            match apply_parts_inner(pool, projection, target, &parts).await? {
                PartsOutcome::Committed { nexts, poisoned } => {
                    match nexts.first().copied().flatten() {
                        Some(next) => Outcome::Committed {
                            next,
                            applied: 0,
                            poisoned,
                        },
                        None => Outcome::Nothing,
                    }
                }
                PartsOutcome::Conflict { checkpoint, .. } => Outcome::Conflict { checkpoint },
                PartsOutcome::Halt(reason) => Outcome::Halt(reason),
            },
        )
    })
}

/// Applies several partitions' records in ONE transaction (a rebuild's polled batch): one
/// compare-and-set per partition, one apply call, one commit.
pub(crate) fn apply_parts<'a, P: Projection>(
    pool: &'a PgPool,
    projection: &'a P,
    target: &'a Target<'a>,
    parts: &'a [Part<'a>],
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<PartsOutcome, Transient>> + Send + 'a>>
{
    Box::pin(apply_parts_inner(pool, projection, target, parts))
}

/// A partition of the batch with work to do.
struct Live {
    part: usize,
    topic: String,
    partition: i32,
    expected: i64,
    next: i64,
}

/// A batch decoded before its transaction.
struct Decoded<'r, E> {
    /// The records at or past their part's checkpoint, in order; `Poison::index` and
    /// `event_records` point into it.
    flat: Vec<&'r Record>,
    live: Vec<Live>,
    events: Vec<Received<E>>,
    /// For each event, the index of its record in `flat`.
    event_records: Vec<usize>,
    poison: Vec<Poison>,
}

/// What decoding a batch found.
enum Decoding<'r, E> {
    Ready(Decoded<'r, E>),
    /// An unknown writer schema even after the store was read again.
    Halt(String),
}

/// One transaction over `parts`: decode, compare-and-set each part's checkpoint, apply, record
/// the poison, commit.
async fn apply_parts_inner<P: Projection>(
    pool: &PgPool,
    projection: &P,
    target: &Target<'_>,
    parts: &[Part<'_>],
) -> Result<PartsOutcome, Transient> {
    let mut nexts: Vec<Option<i64>> = vec![None; parts.len()];
    let Decoded {
        flat,
        mut live,
        events,
        event_records,
        mut poison,
    } = match decode::<P::Events>(target, parts).await? {
        Decoding::Ready(decoded) => decoded,
        Decoding::Halt(reason) => return Ok(PartsOutcome::Halt(reason)),
    };
    if live.is_empty() {
        return Ok(PartsOutcome::Committed { nexts, poisoned: 0 });
    }
    // Same lock order everywhere: two writers never deadlock on checkpoint rows.
    live.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));

    // A drill holds a fetched batch here, before its compare-and-set, while a successor
    // commits the same offsets (the zombie interleaving).
    failpoint::hold("projection.before_cas");
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    if let Some(moved) = claim_checkpoints(&mut tx, target, &live).await? {
        tx.rollback().await?;
        let l = &live[moved];
        let now = checkpoint::read(
            &mut conn,
            target.projection,
            target.slot,
            &l.topic,
            l.partition,
        )
        .await?;
        return Ok(PartsOutcome::Conflict {
            part: l.part,
            checkpoint: now,
        });
    }
    failpoint::hit("projection.after_cas");

    match apply_events(&mut tx, projection, &events, &event_records, &mut poison).await {
        Ok(()) => {}
        Err(ApplyError::Transient(e)) => {
            tx.rollback().await.ok();
            return Err(Transient(format!("{e:#}")));
        }
        Err(ApplyError::Halt(e)) => {
            tx.rollback().await.ok();
            return Ok(PartsOutcome::Halt(format!(
                "projection {} cannot apply events: {e:#}",
                target.projection
            )));
        }
        Err(ApplyError::Poison(e)) => {
            // apply_events isolates poison itself; reaching here is a bug in that logic.
            tx.rollback().await.ok();
            return Err(Transient(format!("unisolated poison: {e:#}")));
        }
    }

    poison.sort_by_key(|p| p.index);
    for p in &poison {
        record_dead_letter(&mut tx, target, flat[p.index], &p.reason).await?;
    }
    // No NOTIFY here: nothing listens (wait_for polls the checkpoints), and a NOTIFY costs a
    // round trip plus a global queue lock at every commit.
    failpoint::hit("projection.before_commit");
    let poisoned = poison.len();
    for l in &live {
        nexts[l.part] = Some(l.next);
    }
    match tx.commit().await {
        Ok(()) => Ok(PartsOutcome::Committed { nexts, poisoned }),
        Err(commit_error) => {
            drop(conn);
            resolve_commit(pool, target, &live[0], commit_error, nexts, poisoned).await
        }
    }
}

/// Decodes the records at or past their part's checkpoint. Outside the transaction: it is
/// pure, and poison found here needs no savepoint.
async fn decode<'r, E: EventSet>(
    target: &Target<'_>,
    parts: &[Part<'r>],
) -> Result<Decoding<'r, E>, Transient> {
    let mut flat: Vec<&Record> = Vec::new();
    let mut live: Vec<Live> = Vec::new();
    let mut events: Vec<Received<E>> = Vec::new();
    let mut event_records: Vec<usize> = Vec::new();
    let mut poison: Vec<Poison> = Vec::new();
    for (part_index, part) in parts.iter().enumerate() {
        let records: Vec<&Record> = part
            .records
            .iter()
            .filter(|r| r.offset() >= part.expected)
            .collect();
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            continue;
        };
        let (topic, partition) = (first.topic().to_owned(), first.partition());
        live.push(Live {
            part: part_index,
            topic: topic.clone(),
            partition,
            expected: part.expected,
            next: last.offset() + 1,
        });
        for record in records {
            let index = flat.len();
            flat.push(record);
            let (meta, payload) = match Metadata::open(record) {
                Ok(opened) => (opened.meta, opened.payload),
                Err(e) => {
                    poison.push(Poison {
                        index,
                        reason: format!("undecodable envelope: {e}"),
                    });
                    continue;
                }
            };
            let mut decoded = E::decode(&meta, payload.as_deref());
            if matches!(&decoded, Err(e) if e.halts()) {
                // An unknown writer schema: a newer writer registers before it writes, so read
                // the store again and retry once; still unknown halts (never a dead letter).
                target
                    .schemas
                    .refresh_if_older(std::time::Instant::now())
                    .await
                    .map_err(|e| Transient(format!("refreshing the schema store: {e}")))?;
                decoded = E::decode(&meta, payload.as_deref());
                if let Err(e) = &decoded
                    && e.halts()
                {
                    return Ok(Decoding::Halt(format!(
                        "{}[{partition}]@{}: {e}",
                        topic,
                        record.offset()
                    )));
                }
            }
            match decoded {
                Ok(Some(payload)) => {
                    let origin = Origin {
                        topic: topic.clone(),
                        partition,
                        offset: record.offset(),
                    };
                    events.push(Received {
                        meta,
                        payload,
                        origin,
                    });
                    event_records.push(index);
                }
                // Not one of the declared types: skipped by declaration.
                Ok(None) => {}
                Err(e) => poison.push(Poison {
                    index,
                    reason: format!("undecodable payload: {e}"),
                }),
            }
        }
    }
    Ok(Decoding::Ready(Decoded {
        flat,
        live,
        events,
        event_records,
        poison,
    }))
}

/// Sets the transaction's timeouts and search path, then compare-and-sets each live part's
/// checkpoint from `expected` to `next`, in `live`'s order. `Some(i)`: `live[i]`'s checkpoint
/// was not at `expected` (the transaction must be rolled back).
async fn claim_checkpoints(
    tx: &mut PgConnection,
    target: &Target<'_>,
    live: &[Live],
) -> Result<Option<usize>, Transient> {
    // A paused zombie must not hold the checkpoint row (or the connection) forever.
    sqlx::query(
        "SELECT set_config('lock_timeout', '10s', true), \
                set_config('idle_in_transaction_session_timeout', '60s', true), \
                set_config('search_path', $1, true)",
    )
    .bind(crate::postgres::quote_ident(target.schema))
    .execute(&mut *tx)
    .await?;
    for (i, l) in live.iter().enumerate() {
        if !checkpoint::compare_and_set(
            &mut *tx,
            target.projection,
            target.slot,
            &l.topic,
            l.partition,
            l.expected,
            l.next,
        )
        .await?
        {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// A failed COMMIT: the connection may have died after the server committed, so the
/// checkpoints say what happened. One transaction: either every part moved to `next` or
/// none did, so the first one tells.
async fn resolve_commit(
    pool: &PgPool,
    target: &Target<'_>,
    first: &Live,
    commit_error: sqlx::Error,
    nexts: Vec<Option<i64>>,
    poisoned: usize,
) -> Result<PartsOutcome, Transient> {
    let mut fresh = pool.acquire().await?;
    match checkpoint::read(
        &mut fresh,
        target.projection,
        target.slot,
        &first.topic,
        first.partition,
    )
    .await?
    {
        Some(now) if now == first.next => Ok(PartsOutcome::Committed { nexts, poisoned }),
        Some(now) if now == first.expected => {
            Err(Transient(format!("commit failed: {commit_error}")))
        }
        now => Ok(PartsOutcome::Conflict {
            part: first.part,
            checkpoint: now,
        }),
    }
}

/// Applies the batch; on a poison error, re-applies event by event under savepoints to find
/// the poison ones (they are added to `poison`), applying the rest.
async fn apply_events<P: Projection>(
    tx: &mut PgConnection,
    projection: &P,
    events: &[Received<P::Events>],
    event_records: &[usize],
    poison: &mut Vec<Poison>,
) -> Result<(), ApplyError> {
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query("SAVEPOINT choreo_batch")
        .execute(&mut *tx)
        .await?;
    match guarded(projection.apply(&mut *tx, events)).await {
        Ok(()) => return Ok(()),
        Err(ApplyError::Poison(_)) => {}
        Err(other) => return Err(other),
    }
    sqlx::query("ROLLBACK TO SAVEPOINT choreo_batch")
        .execute(&mut *tx)
        .await?;
    for (i, event) in events.iter().enumerate() {
        sqlx::query("SAVEPOINT choreo_event")
            .execute(&mut *tx)
            .await?;
        match guarded(projection.apply(&mut *tx, std::slice::from_ref(event))).await {
            Ok(()) => {
                sqlx::query("RELEASE SAVEPOINT choreo_event")
                    .execute(&mut *tx)
                    .await?;
            }
            Err(ApplyError::Poison(e)) => {
                sqlx::query("ROLLBACK TO SAVEPOINT choreo_event")
                    .execute(&mut *tx)
                    .await?;
                poison.push(Poison {
                    index: event_records[i],
                    reason: format!("apply rejected it: {e:#}"),
                });
            }
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

/// Runs user code with panics caught: a panic is a poison event, not a dead process.
async fn guarded(
    future: impl std::future::Future<Output = Result<(), ApplyError>>,
) -> Result<(), ApplyError> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(ApplyError::Poison(anyhow::anyhow!(
            "apply panicked: {}",
            crate::kafka::consumer::panic_message(&*panic)
        ))),
    }
}

/// Dead-letters a record: to `{group}.dlq` (acknowledged) and into `choreo_meta.dead_letters` in
/// the batch transaction, so the skip commits with the checkpoint that moves past it.
async fn record_dead_letter(
    tx: &mut PgConnection,
    target: &Target<'_>,
    record: &Record,
    reason: &str,
) -> Result<(), Transient> {
    // A rebuild (or a retried batch) meets the same poison again: one dead letter is enough.
    let known: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM choreo_meta.dead_letters WHERE consumer = $1 AND topic = $2 AND partition = $3 AND \"offset\" = $4",
    )
    .bind(target.projection)
    .bind(record.topic())
    .bind(record.partition())
    .bind(record.offset())
    .fetch_optional(&mut *tx)
    .await?;
    if known.is_some() {
        return Ok(());
    }
    tracing::warn!(projection = target.projection, topic = record.topic(), partition = record.partition(),
        offset = record.offset(), %reason, "dead-lettering record");
    target
        .dead_letters
        .write(record, reason, Utc::now())
        .await
        .map_err(|e| Transient(format!("writing the dead letter failed: {e}")))?;
    let meta = Metadata::from_record(record).ok();
    sqlx::query(
        "INSERT INTO choreo_meta.dead_letters (consumer, topic, partition, \"offset\", event_id, event_type, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(target.projection)
    .bind(record.topic())
    .bind(record.partition())
    .bind(record.offset())
    .bind(meta.as_ref().map(|m| m.id.to_string()))
    .bind(meta.as_ref().map(|m| m.message_type.clone()))
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;
    use rdkafka::message::{OwnedMessage, Timestamp};
    use uuid::Uuid;

    use super::*;
    use crate::config::KafkaConfig;
    use crate::event::Event;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Renamed {
        user: String,
        name: String,
    }

    impl Event for Renamed {
        const NAME: &'static str = "v1.user.renamed";
        fn subject(&self) -> String {
            self.user.clone()
        }
    }

    /// A record of `message_type` at `offset` of `user.events[0]` with `payload`; without a
    /// type, a record with no envelope at all.
    fn record(offset: i64, message_type: Option<&str>, payload: &[u8]) -> Record {
        let headers = message_type.map(|t| {
            Metadata::new(
                Uuid::now_v7(),
                t,
                "/user-service",
                "ada",
                Utc.timestamp_opt(1_764_000_000, 0).single().expect("time"),
                None,
            )
            .to_headers()
        });
        let message = OwnedMessage::new(
            Some(payload.to_vec()),
            Some(b"ada".to_vec()),
            "user.events".into(),
            Timestamp::CreateTime(1_764_000_000_000),
            0,
            offset,
            headers,
        );
        Record::copy(&message, Arc::from("user.events"))
    }

    #[tokio::test]
    async fn decoding_keeps_records_from_the_checkpoint_on_and_sorts_events_from_poison() {
        // Nothing listens on port 1: neither the dead letters nor the store are used here.
        let kafka = KafkaConfig::new("127.0.0.1:1");
        let dead_letters = DeadLetterWriter::new(&kafka, "users.v1").expect("writer");
        let schemas = SchemaStore::new(&kafka);
        let target = Target {
            projection: "users.v1",
            slot: Slot::Live,
            schema: "users_v1",
            dead_letters: &dead_letters,
            schemas: &schemas,
        };
        let renamed = br#"{"user":"ada","name":"Ada"}"#;
        let first = vec![
            record(3, Some(Renamed::NAME), renamed),
            record(4, Some(Renamed::NAME), renamed),
            record(5, Some(Renamed::NAME), renamed),
            record(6, Some("v1.user.deleted"), b"{}"),
            record(7, None, b"{}"),
            record(8, Some(Renamed::NAME), b"not json"),
        ];
        let behind = vec![record(8, Some(Renamed::NAME), renamed)];
        let parts = [
            Part {
                expected: 5,
                records: &first,
            },
            Part {
                expected: 9,
                records: &behind,
            },
        ];
        let Decoding::Ready(decoded) = decode::<Renamed>(&target, &parts).await.expect("decode")
        else {
            panic!("no halt expected");
        };
        let flat: Vec<i64> = decoded.flat.iter().map(|r| r.offset()).collect();
        assert_eq!(flat, [5, 6, 7, 8], "from the checkpoint on");
        let live: Vec<(usize, i64, i64)> = decoded
            .live
            .iter()
            .map(|l| (l.part, l.expected, l.next))
            .collect();
        assert_eq!(
            live,
            [(0, 5, 9)],
            "the part behind its checkpoint has no work"
        );
        let events: Vec<(i64, &str)> = decoded
            .events
            .iter()
            .map(|e| (e.origin.offset, e.payload.name.as_str()))
            .collect();
        assert_eq!(events, [(5, "Ada")], "another type is skipped");
        assert_eq!(decoded.event_records, [0]);
        let poison: Vec<(usize, &str)> = decoded
            .poison
            .iter()
            .map(|p| (p.index, p.reason.split(':').next().unwrap_or_default()))
            .collect();
        assert_eq!(
            poison,
            [(2, "undecodable envelope"), (3, "undecodable payload")]
        );
    }
}
