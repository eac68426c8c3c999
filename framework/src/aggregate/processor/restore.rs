//! Restores: a partition's aggregates rebuilt from its events (after a snapshot or parked
//! state, if usable) before any of its commands is handled.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::memory::{Entry, Landed, Remembered, intern};
use super::rebalance::ProcessorContext;
use super::snapshotter::take_snapshot;
use super::{Shared, lock};
use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::event::EventSet;
use crate::failpoint;
use crate::kafka::consumer::panic_message;
use crate::kafka::read_to_end::{Patience, ReadError, read_to_end};
use crate::message::{Metadata, WireRecord};

impl<A: Aggregate> ProcessorContext<A> {
    /// Restores partition `p` (ARCHITECTURE.md, "Command processing"): the stable committed command offset first,
    /// then the end of events[p], then every event up to it. Returns where commands start.
    pub(super) fn restore(&self, consumer: &BaseConsumer<Self>, p: i32) -> Result<Offset, String> {
        let shared = &self.shared;
        // 1. A read_committed consumer waits out pending transactional offset commits.
        let mut ask = TopicPartitionList::new();
        ask.add_partition(&shared.commands_topic, p);
        let committed =
            crate::kafka::transaction::committed_patiently(consumer, &ask, Duration::from_secs(60))
                .map_err(|e| format!("cannot read the committed command offset: {e}"))?
                .elements()
                .first()
                .map(|e| e.offset())
                .unwrap_or(Offset::Invalid);
        // 2. Only then the end of the events partition (its last stable offset).
        let (low, end) = shared
            .restore
            .fetch_watermarks(&shared.events_topic, p, Duration::from_secs(30))
            .map_err(|e| format!("cannot read the end of {}[{p}]: {e}", shared.events_topic))?;
        // A drill makes restores slow here, so a rebalance arrives while one runs.
        failpoint::stall("command.restore", Duration::from_secs(4));
        // 3. From the latest usable snapshot (or the beginning), read events[p] until
        //    position() reaches the end (a commit marker follows the last event, so last
        //    offset + 1 never equals the end).
        let (mut entries, from) = match self.unpark(p, low, end) {
            Some(parked) => parked,
            None => self.load_snapshot(p, low, end),
        };
        let read = if end > from {
            self.read_events(p, from, end, &mut entries)?
        } else {
            0
        };
        let start = command_start(shared, p, committed, entries.is_empty())?;
        self.install(p, entries, (read, from, end), start);
        Ok(start)
    }

    /// Folds `events[p]` from `from` up to `end` into `entries`; returns how many records
    /// were read.
    fn read_events(
        &self,
        p: i32,
        from: i64,
        end: i64,
        entries: &mut HashMap<String, Entry<A>>,
    ) -> Result<u64, String> {
        let shared = &self.shared;
        let topic = &*shared.events_topic;
        let read = read_to_end(
            &shared.restore,
            (topic, p),
            (from, end),
            Patience::Idle(Duration::from_secs(30)),
            |record| {
                if !apply_restored::<A, _>(entries, record, topic)? {
                    shared
                        .status
                        .inner
                        .foreign_skipped
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            },
        )
        .map_err(|e| match e {
            ReadError::Assign(e) => format!("cannot assign {topic}[{p}]: {e}"),
            ReadError::Poll(e) => format!("reading {topic}[{p}] failed: {e}"),
            ReadError::Stalled { .. } => format!("restore of {topic}[{p}] stalled before {end}"),
            ReadError::Record(reason) => reason,
        })?;
        let _ = shared.restore.unassign();
        Ok(read)
    }

    /// Makes the restored aggregates `p`'s committed state, counts and logs the restore, and
    /// snapshots after a long read.
    fn install(
        &self,
        p: i32,
        entries: HashMap<String, Entry<A>>,
        (read, from, end): (u64, i64, i64),
        start: Offset,
    ) {
        let shared = &self.shared;
        let restored = entries.len();
        {
            let mut state = lock(&shared.state);
            state.retain(|(q, _), _| *q != p);
            state.extend(entries.into_iter().map(|(id, entry)| ((p, id), entry)));
        }
        shared
            .status
            .inner
            .restored_events
            .fetch_add(read, Ordering::Relaxed);
        tracing::info!(
            partition = p,
            aggregates = restored,
            events_read = read,
            from,
            events_end = end,
            ?start,
            "partition restored"
        );
        // A long read is worth a snapshot now: the next restore of p starts here.
        lock(&shared.since_snapshot).insert(p, (read, end - 1));
        if let Some(snapshots) = &shared.snapshots
            && read >= snapshots.settings.every_events
        {
            take_snapshot(shared, p, end);
        }
    }
}

/// Where commands of `p` start. Without a committed offset we may only start at the
/// beginning if no event was ever committed (aborted transactions leave offsets
/// behind but no events): replaying retained commands on top of existing events could
/// repeat them, so an operator decides.
fn command_start<A: Aggregate>(
    shared: &Shared<A>,
    p: i32,
    committed: Offset,
    no_events: bool,
) -> Result<Offset, String> {
    match committed {
        Offset::Offset(o) => Ok(Offset::Offset(o)),
        _ if no_events => Ok(Offset::Beginning),
        _ => Err(format!(
            "{}[{p}] has no committed offset for group {} but {}[{p}] holds committed events: replaying every \
             retained command could repeat them; an operator must set the group's offset (kafka-consumer-groups \
             --reset-offsets) before this partition is handled",
            shared.commands_topic, shared.group, shared.events_topic
        )),
    }
}

/// Folds one restored event into its aggregate; a gap, a duplicate or an unknown type halts.
/// Returns false for a record this processor did not write, which it skips.
fn apply_restored<A: Aggregate, M: Message + WireRecord>(
    entries: &mut HashMap<String, Entry<A>>,
    record: &M,
    topic: &str,
) -> Result<bool, String> {
    // Where, for error messages only (no allocation per event on the happy path).
    let at = Located(topic, record.partition(), record.offset());
    let opened = match Metadata::open(record) {
        Ok(opened) if opened.meta.sequence.is_some() => opened,
        other => {
            // The processor writes a valid envelope with ce_sequence on every event, so this
            // came from another producer: it is no part of any aggregate's history (the log's
            // consumers dead-letter or handle it). Skipped, not a halt: one foreign record
            // must not stop the single writer of the log.
            let reason = match other {
                Err(e) => e.to_string(),
                Ok(_) => "no ce_sequence".to_owned(),
            };
            tracing::warn!(at = %at, %reason, "a record this processor did not write is in its events log; the restore skips it");
            return Ok(false);
        }
    };
    let meta = opened.meta;
    let event = A::Event::decode(&meta, opened.payload.as_deref())
        .map_err(|e| format!("undecodable event at {at}: {e}"))?
        .ok_or_else(|| {
            format!(
                "unknown event type {} at {at}: this processor cannot rebuild the aggregate",
                meta.message_type
            )
        })?;
    let sequence = meta
        .sequence
        .ok_or_else(|| format!("event at {at} has no ce_sequence"))?;
    if !entries.contains_key(&meta.subject) {
        entries.insert(meta.subject.clone(), Entry::default());
    }
    let Some(entry) = entries.get_mut(&meta.subject) else {
        return Err(format!(
            "aggregate {} vanished during restore",
            meta.subject
        ));
    };
    if sequence != entry.version + 1 {
        return Err(format!(
            "sequence of {} jumps from {} to {sequence} at {at}: the log is not contiguous",
            meta.subject, entry.version
        ));
    }
    std::panic::catch_unwind(AssertUnwindSafe(|| entry.state.apply(&event)))
        .map_err(|panic| format!("apply panicked at {at}: {}", panic_message(&*panic)))?;
    entry.version = sequence;
    let landed = Landed {
        message_type: intern(&meta.message_type),
        offset: record.offset(),
        sequence,
    };
    // Rebuild the duplicate memory from the causation ids (the command ids).
    match entry.recent.back_mut() {
        Some((id, Remembered::Accepted(events))) if *id == meta.causation_id => events.push(landed),
        _ => entry.remember(meta.causation_id, Remembered::Accepted(vec![landed])),
    }
    Ok(true)
}

/// Restores every partition this instance owns, as on assignment, and moves the command
/// consumer to where each restore says commands start (after the producer was replaced).
pub(super) fn restore_owned<A: Aggregate>(
    shared: &Arc<Shared<A>>,
    consumer: &BaseConsumer<ProcessorContext<A>>,
) -> Result<()> {
    let context = consumer.context();
    let mut owned: Vec<i32> = lock(&shared.assigned_at).keys().copied().collect();
    owned.retain(|p| !lock(&shared.halted).contains_key(p));
    // Commands wait until every owned partition is restored again: not ready meanwhile. On
    // an error the processor stops, and leaving the group clears this.
    shared.status.restoring(&owned, false);
    for p in owned {
        let restored = context.restore(consumer, p);
        shared.status.restored(p);
        match restored {
            Ok(start) => consumer
                .seek(&shared.commands_topic, p, start, Duration::from_secs(10))
                .map_err(|e| Error::SeekFailed {
                    topic: shared.commands_topic.to_string(),
                    partition: p,
                    to: format!("{start:?} after a restore"),
                    reason: e.to_string(),
                })?,
            Err(reason) => {
                // Usually the brokers are struggling (that is how the outcome got lost):
                // stop rather than halt a partition nobody would reassign; a restart restores
                // on assignment, and halts only if the log itself is bad.
                return Err(Error::ReplacementFailed {
                    step: format!("restore of {}[{p}]", shared.commands_topic),
                    reason: reason.to_string(),
                });
            }
        }
    }
    context.update_count();
    Ok(())
}

/// `topic[partition]@offset`, formatted only when an error needs it.
struct Located<'a>(&'a str, i32, i64);

impl std::fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]@{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use rdkafka::message::{OwnedMessage, Timestamp};
    use uuid::Uuid;

    use super::*;
    use crate::aggregate::processor::test_support::{
        EVENTS_TOPIC, Tally, add_meta, added, message, shared,
    };

    fn apply(
        entries: &mut HashMap<String, Entry<Tally>>,
        record: &OwnedMessage,
    ) -> Result<bool, String> {
        apply_restored::<Tally, _>(entries, record, EVENTS_TOPIC)
    }

    /// The metadata of an event of aggregate `a`, of `message_type` from `source`.
    fn event_meta(
        message_type: &str,
        source: &str,
        causation: Option<crate::Causation>,
    ) -> Metadata {
        Metadata::new(
            Uuid::new_v4(),
            message_type,
            source,
            "a",
            Utc::now(),
            causation,
        )
    }

    /// `v1.tally.added` of 1 on `a` with `meta`, at `offset` of partition 0.
    fn added_one(meta: &Metadata, offset: i64) -> OwnedMessage {
        message(
            EVENTS_TOPIC,
            meta,
            Some(br#"{"key":"a","amount":1}"#.to_vec()),
            0,
            offset,
        )
    }

    #[test]
    fn events_rebuild_the_state_version_and_duplicate_memory() {
        let mut entries = HashMap::new();
        let (first, second) = (add_meta("a"), add_meta("a"));
        let now = Utc::now();
        // The first command made two events, the second one.
        assert_eq!(
            apply(&mut entries, &added(&first, 2, 1, 0, 10, now)),
            Ok(true)
        );
        assert_eq!(
            apply(&mut entries, &added(&first, 3, 2, 0, 11, now)),
            Ok(true)
        );
        assert_eq!(
            apply(&mut entries, &added(&second, 4, 3, 0, 13, now)),
            Ok(true)
        );

        let entry = &entries["a"];
        assert_eq!((entry.state.total, entry.version), (9, 3));
        let recent: Vec<(Uuid, Vec<(i64, u64)>)> = entry
            .recent
            .iter()
            .map(|(id, remembered)| match remembered {
                Remembered::Accepted(events) => {
                    (*id, events.iter().map(|e| (e.offset, e.sequence)).collect())
                }
                Remembered::Rejected(r) => panic!("rejections are not in the log: {r}"),
            })
            .collect();
        assert_eq!(
            recent,
            vec![
                (first.id, vec![(10, 1), (11, 2)]),
                (second.id, vec![(13, 3)])
            ]
        );
    }

    #[test]
    fn aggregates_are_rebuilt_apart() {
        let mut entries = HashMap::new();
        let now = Utc::now();
        assert_eq!(
            apply(&mut entries, &added(&add_meta("a"), 1, 1, 0, 0, now)),
            Ok(true)
        );
        assert_eq!(
            apply(&mut entries, &added(&add_meta("b"), 5, 1, 0, 1, now)),
            Ok(true)
        );
        assert_eq!((entries["a"].state.total, entries["b"].state.total), (1, 5));
    }

    #[test]
    fn a_gap_or_a_repeat_in_the_sequence_halts() {
        let now = Utc::now();
        let meta = add_meta("a");
        let mut entries = HashMap::new();
        let gap = apply(&mut entries, &added(&meta, 1, 2, 0, 5, now)).expect_err("a gap");
        assert_eq!(
            gap,
            format!(
                "sequence of a jumps from 0 to 2 at {EVENTS_TOPIC}[0]@5: the log is not contiguous"
            )
        );
        let mut entries = HashMap::new();
        assert_eq!(
            apply(&mut entries, &added(&meta, 1, 1, 0, 5, now)),
            Ok(true)
        );
        let repeat = apply(&mut entries, &added(&meta, 1, 1, 0, 6, now)).expect_err("a repeat");
        assert!(repeat.contains("jumps from 1 to 1"), "{repeat}");
    }

    #[test]
    fn an_event_whose_apply_panics_halts() {
        let mut entries = HashMap::new();
        let why = apply(
            &mut entries,
            &added(&add_meta("a"), 666, 1, 0, 3, Utc::now()),
        )
        .expect_err("halts");
        assert!(
            why.starts_with(&format!("apply panicked at {EVENTS_TOPIC}[0]@3: ")),
            "{why}"
        );
    }

    #[test]
    fn an_unknown_or_undecodable_event_halts() {
        let command = add_meta("a");
        let mut meta = event_meta(
            "v1.tally.reset",
            "/tally-service",
            Some(crate::Causation::from_cause(&command)),
        );
        meta.sequence = Some(1);
        let mut entries = HashMap::new();
        let why =
            apply(&mut entries, &message(EVENTS_TOPIC, &meta, None, 0, 0)).expect_err("unknown");
        assert!(
            why.starts_with("unknown event type v1.tally.reset"),
            "{why}"
        );

        meta.message_type = "v1.tally.added".into();
        let why = apply(
            &mut entries,
            &message(EVENTS_TOPIC, &meta, Some(b"{".to_vec()), 0, 0),
        )
        .expect_err("undecodable");
        assert!(why.starts_with("undecodable event at"), "{why}");
    }

    #[test]
    fn a_record_this_processor_did_not_write_is_skipped() {
        let mut entries = HashMap::new();
        // No ce_sequence: written by another producer.
        let mut meta = event_meta("v1.tally.added", "/elsewhere", None);
        assert_eq!(apply(&mut entries, &added_one(&meta, 0)), Ok(false));
        // No envelope at all.
        let bare = OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            EVENTS_TOPIC.into(),
            Timestamp::NotAvailable,
            0,
            1,
            None,
        );
        assert_eq!(apply(&mut entries, &bare), Ok(false));
        assert!(entries.is_empty());
        // The aggregate's own events go on from where they were.
        meta.sequence = Some(1);
        assert_eq!(apply(&mut entries, &added_one(&meta, 2)), Ok(true));
    }

    #[test]
    fn commands_start_at_the_committed_offset_or_the_beginning_of_an_empty_log() {
        let shared = shared();
        assert_eq!(
            command_start(&shared, 1, Offset::Offset(17), false),
            Ok(Offset::Offset(17))
        );
        assert_eq!(
            command_start(&shared, 1, Offset::Invalid, true),
            Ok(Offset::Beginning)
        );
        let why =
            command_start(&shared, 1, Offset::Invalid, false).expect_err("an operator decides");
        assert!(
            why.starts_with(
                "tally.commands[1] has no committed offset for group sender but tally.events[1] holds committed events"
            ),
            "{why}"
        );
    }
}
