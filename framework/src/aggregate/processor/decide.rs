//! Command decisions: what one command adds to its transaction (events, a reply, a dead
//! letter) and to its aggregate's state in the overlay.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::Consumer;
use uuid::Uuid;

use super::memory::{Entry, Remembered};
use super::{Key, Shared, lock};
use crate::aggregate::extensions;
use crate::aggregate::reply::{EventRef, Outcome, REPLY_TYPE};
use crate::aggregate::{Aggregate, Rejection};
use crate::event::{CommandSet, EventSet};
use crate::kafka::consumer::panic_message;
use crate::kafka::transaction::TxRecord;
use crate::kafka::{Keep, Record, dead_letter_parts, partition_for_key};
use crate::message::Metadata;

/// A reply waiting for the offsets of its command's events.
pub(super) struct PendingReply {
    pub(super) topic: String,
    pub(super) partition: i32,
    /// The aggregate the command was for (where its outcome is remembered).
    pub(super) aggregate: Key,
    pub(super) meta: Metadata,
    /// Indices into the batch's events, or the final outcome.
    pub(super) events: Vec<usize>,
    pub(super) outcome: Option<Outcome>,
}

/// What a batch's decisions produce, in the order they were decided.
#[derive(Default)]
pub(super) struct Outputs {
    /// Events to write, with where each lands (offsets filled in once written).
    pub(super) events: Vec<(TxRecord, EventRef)>,
    pub(super) replies: Vec<PendingReply>,
    pub(super) dead: Vec<TxRecord>,
}

/// Decides one command into the overlay and the batch's outputs.
pub(super) fn decide_one<A: Aggregate>(
    shared: &Shared<A>,
    committed: &HashMap<Key, Entry<A>>,
    overlay: &mut HashMap<Key, Entry<A>>,
    record: &Record,
    now: DateTime<Utc>,
    set_aside: Option<&(u32, String)>,
    out: &mut Outputs,
) {
    let p = record.partition();
    if let Some((refusals @ 2.., reason)) = set_aside {
        // Its rejection reply or its dead letter was refused too: only a dead letter now,
        // cut further each time.
        // The first refusal was of its events or reply, the second of its rejection; later
        // ones of its dead letters.
        let keep = Keep::after(refusals - 2);
        let reason = format!("a record of this command was refused by Kafka: {reason}");
        out.dead
            .push(dead_letter_kept(shared, record, &reason, now, keep));
        return;
    }
    let (meta, data) = match Metadata::open(record) {
        Ok(opened) => (opened.meta, opened.payload),
        Err(e) => {
            // Without valid headers there is no reply address: the dead letter is the answer.
            out.dead.push(dead_letter(
                shared,
                record,
                &format!("undecodable command envelope: {e}"),
                now,
            ));
            return;
        }
    };
    let deciding = Deciding {
        shared,
        record,
        meta,
        now,
    };
    let Some(command) = deciding.admit(data.as_deref(), out) else {
        return;
    };
    let key: Key = (p, deciding.meta.subject.clone());
    let entry = overlay
        .entry(key.clone())
        .or_insert_with(|| committed.get(&key).cloned().unwrap_or_default());
    if let Some((_, reason)) = set_aside {
        deciding.set_aside(entry, reason, out);
        return;
    }
    if deciding.answer_retry(entry, out) || deciding.past_deadline(out) {
        return;
    }
    deciding.decide(entry, &command, out);
}

/// A command's events, staged: not in the entry or the batch yet.
struct Staged<A> {
    /// The entry after the events.
    entry: Entry<A>,
    /// The events as records to write, with where each lands.
    events: Vec<(TxRecord, EventRef)>,
    /// Their indices among the batch's events.
    indices: Vec<usize>,
}

/// One command being decided: its record, its envelope and the batch's time.
struct Deciding<'a, A: Aggregate> {
    shared: &'a Shared<A>,
    record: &'a Record,
    meta: Metadata,
    now: DateTime<Utc>,
}

impl<A: Aggregate> Deciding<'_, A> {
    /// The command, if it can be decided here: its reply address exists, it arrived on its
    /// key's partition, and it decodes to one of the aggregate's commands. Otherwise it is
    /// dead-lettered (and rejected, when a reply can be sent).
    fn admit(&self, data: Option<&[u8]>, out: &mut Outputs) -> Option<A::Command> {
        let (shared, meta, p) = (self.shared, &self.meta, self.record.partition());
        if let Err(reason) = check_reply_address(shared, meta) {
            // No reply can be sent (producing to it would fail the whole transaction): the
            // command goes to the dead letters undecided.
            out.dead.push(self.dead_letter(&reason));
            return None;
        }
        let expected = partition_for_key(meta.subject.as_bytes(), shared.partitions);
        if expected != p {
            let reason = format!(
                "command for {} arrived on partition {p}, but murmur2 puts that key on {expected}: the sender's partitioner \
                 differs from the Java clients'",
                meta.subject
            );
            self.refuse("wrong_partition", reason, out);
            return None;
        }
        match A::Command::decode(meta, data) {
            Ok(Some(command)) => Some(command),
            Ok(None) => {
                let reason = format!("this processor does not handle {}", meta.message_type);
                self.refuse("unknown_command", reason, out);
                None
            }
            Err(e) => {
                self.refuse("bad_command", e.to_string(), out);
                None
            }
        }
    }

    /// A command set aside because a record it made was refused for its content.
    fn set_aside(&self, entry: &mut Entry<A>, reason: &str, out: &mut Outputs) {
        let meta = &self.meta;
        if entry.recent.iter().any(|(id, _)| *id == meta.id) {
            // A retry whose answer (the first outcome) was refused: that outcome stands, so
            // nothing is remembered over it; the retry goes to the dead letters unanswered.
            let reason =
                format!("the answer to this retried command was refused by Kafka: {reason}");
            out.dead.push(self.dead_letter(&reason));
            return;
        }
        // An event or the reply it made was refused for its content (too large, invalid):
        // deciding it again would make the same. Rejected, remembered (a retry gets this
        // answer), and dead-lettered; the aggregate is unchanged.
        let rejection = Rejection::new(
            "output_refused",
            format!("an event or the reply of this command was refused by Kafka: {reason}"),
        );
        out.dead.push(self.dead_letter(&rejection.to_string()));
        self.reject(entry, rejection, out);
    }

    /// Answers a retry (a command id the aggregate remembers) and returns true; false for a
    /// command seen for the first time.
    fn answer_retry(&self, entry: &Entry<A>, out: &mut Outputs) -> bool {
        let (meta, p) = (&self.meta, self.record.partition());
        let Some((_, first)) = entry.recent.iter().rev().find(|(id, _)| *id == meta.id) else {
            return false;
        };
        // A retry: answer with the first outcome (even past its deadline), decide nothing.
        // When the first copy was accepted in this very batch, its events' offsets are known
        // only once they are written: answer with the same events, like the first copy.
        let key = (p, meta.subject.clone());
        if let Some(original) =
            out.replies.iter().rev().find(|r| {
                r.outcome.is_none() && r.meta.causation_id == meta.id && r.aggregate == key
            })
        {
            let events = original.events.clone();
            out.replies.push(self.reply(None, events));
            return true;
        }
        out.replies.push(self.reply(
            Some(first.outcome(&self.shared.events_topic, p)),
            Vec::new(),
        ));
        true
    }

    /// Rejects a command whose deadline has passed (or is not a time) and returns true.
    fn past_deadline(&self, out: &mut Outputs) -> bool {
        let Some(deadline) = self.meta.extensions.get(extensions::DEADLINE) else {
            return false;
        };
        match DateTime::parse_from_rfc3339(deadline) {
            Ok(deadline) if deadline.with_timezone(&Utc) < self.now => {
                out.replies.push(self.reply(
                    Some(rejected(
                        "expired",
                        format!("the command's deadline {deadline} has passed"),
                    )),
                    Vec::new(),
                ));
                true
            }
            Ok(_) => false,
            Err(e) => {
                let reason = format!("header ce_deadline is not RFC 3339: {e}");
                self.refuse("bad_command", reason, out);
                true
            }
        }
    }

    /// Asks the aggregate; its events are staged into the entry and the batch's events only
    /// if every one encodes and applies.
    fn decide(&self, entry: &mut Entry<A>, command: &A::Command, out: &mut Outputs) {
        let decided = std::panic::catch_unwind(AssertUnwindSafe(|| entry.state.decide(command)))
            .unwrap_or_else(|panic| {
                Err(Rejection::new(
                    "internal_error",
                    format!("decide panicked: {}", panic_message(&*panic)),
                ))
            });
        let staged =
            decided.and_then(|new_events| self.stage(entry, &new_events, out.events.len()));
        match staged {
            Err(rejection) => self.reject(entry, rejection, out),
            Ok(mut staged) => {
                out.events.append(&mut staged.events);
                staged
                    .entry
                    .remember(self.meta.id, Remembered::Accepted(Vec::new()));
                *entry = staged.entry;
                out.replies.push(self.reply(None, staged.indices));
            }
        }
    }

    /// `new_events` staged (this command's start at index `first` of the batch's events),
    /// or the rejection when one cannot be encoded or applied.
    fn stage(
        &self,
        entry: &Entry<A>,
        new_events: &[A::Event],
        first: usize,
    ) -> Result<Staged<A>, Rejection> {
        let (shared, meta, p) = (self.shared, &self.meta, self.record.partition());
        let mut indices = Vec::with_capacity(new_events.len());
        // This command's events: written only if every one encodes and applies, so a
        // failure halfway leaves no event in the log and the sequence where it was.
        let mut own: Vec<(TxRecord, EventRef)> = Vec::with_capacity(new_events.len());
        let mut staged = entry.clone();
        for (i, event) in new_events.iter().enumerate() {
            let failed = |why: String| {
                Rejection::new(
                    "internal_error",
                    format!("event {i} of {}: {why}", new_events.len()),
                )
            };
            let payload = event
                .encode()
                .map_err(|e| failed(format!("cannot be encoded: {e}")))?;
            staged.version += 1;
            let applied = std::panic::catch_unwind(AssertUnwindSafe(|| staged.state.apply(event)));
            if let Err(panic) = applied {
                return Err(failed(format!(
                    "apply panicked: {}",
                    panic_message(&*panic)
                )));
            }
            let mut event_meta = Metadata::new(
                // Derived from the command id: a retried transaction emits the same ids.
                Uuid::new_v5(&meta.id, format!("event/{i}").as_bytes()),
                event.message_type(),
                shared.source.as_str(),
                meta.subject.as_str(),
                self.now,
                Some(crate::Causation::from_cause(meta)),
            );
            event_meta.sequence = Some(staged.version);
            event
                .content_type()
                .clone_into(&mut event_meta.content_type);
            let pending = TxRecord {
                topic: shared.events_topic.clone(),
                partition: Some(p),
                key: Some(meta.subject.clone().into_bytes()),
                payload: Some(payload),
                headers: event_meta.to_headers(),
            };
            indices.push(first + own.len());
            own.push((
                pending,
                EventRef {
                    message_type: event.message_type().to_owned(),
                    topic: shared.events_topic.clone(),
                    partition: p,
                    offset: -1,
                    sequence: staged.version,
                },
            ));
        }
        Ok(Staged {
            entry: staged,
            events: own,
            indices,
        })
    }

    /// Rejects the command: remembered (a retry gets this answer) and replied.
    fn reject(&self, entry: &mut Entry<A>, rejection: Rejection, out: &mut Outputs) {
        entry.remember(self.meta.id, Remembered::Rejected(rejection.clone()));
        out.replies
            .push(self.reply(Some(Outcome::Rejected { rejection }), Vec::new()));
    }

    /// Dead-letters the command and rejects it with `code` (nothing remembered).
    fn refuse(&self, code: &str, reason: String, out: &mut Outputs) {
        out.dead.push(self.dead_letter(&reason));
        out.replies
            .push(self.reply(Some(rejected(code, reason)), Vec::new()));
    }

    /// The reply to this command: a final `outcome`, or (`None`) the outcome of the batch's
    /// events at `event_indices` once they are written.
    fn reply(&self, outcome: Option<Outcome>, event_indices: Vec<usize>) -> PendingReply {
        let meta = &self.meta;
        let topic = meta
            .extensions
            .get(extensions::REPLY_TO)
            .cloned()
            .unwrap_or_default();
        let partition = meta
            .extensions
            .get(extensions::REPLY_PARTITION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut reply_meta = Metadata::new(
            Uuid::new_v5(&meta.id, b"reply"),
            REPLY_TYPE,
            self.shared.source.as_str(),
            meta.subject.as_str(),
            self.now,
            Some(crate::Causation::from_cause(meta)),
        );
        // The deadline judged: a sender retrying with the same id tells this answer from
        // the answer to its own attempt.
        if let Some(deadline) = meta.extensions.get(extensions::DEADLINE) {
            reply_meta
                .extensions
                .insert(extensions::DEADLINE.into(), deadline.clone());
        }
        PendingReply {
            topic,
            partition,
            aggregate: (self.record.partition(), meta.subject.clone()),
            meta: reply_meta,
            events: event_indices,
            outcome,
        }
    }

    fn dead_letter(&self, reason: &str) -> TxRecord {
        dead_letter(self.shared, self.record, reason, self.now)
    }
}

fn rejected(code: &str, message: String) -> Outcome {
    Outcome::Rejected {
        rejection: Rejection::new(code, message),
    }
}

fn dead_letter<A: Aggregate>(
    shared: &Shared<A>,
    record: &Record,
    reason: &str,
    now: DateTime<Utc>,
) -> TxRecord {
    dead_letter_kept(shared, record, reason, now, Keep::All)
}

fn dead_letter_kept<A: Aggregate>(
    shared: &Shared<A>,
    record: &Record,
    reason: &str,
    now: DateTime<Utc>,
    keep: Keep,
) -> TxRecord {
    let (headers, key, payload) = dead_letter_parts(record, keep, reason, now, &shared.group);
    TxRecord {
        topic: shared.dlq_topic.clone(),
        partition: Some(0),
        key,
        payload,
        headers,
    }
}

/// A command's reply address (`ce_replyto`, `ce_replypartition`) must name an existing
/// partition: producing to a missing one would fail every transaction that holds it.
fn check_reply_address<A: Aggregate>(shared: &Shared<A>, meta: &Metadata) -> Result<(), String> {
    let Some(topic) = meta
        .extensions
        .get(extensions::REPLY_TO)
        .filter(|t| !t.is_empty())
    else {
        return Ok(()); // fire and forget
    };
    let partition: i32 = meta
        .extensions
        .get(extensions::REPLY_PARTITION)
        .map_or(Ok(0), |v| v.parse())
        .map_err(|_| {
            format!(
                "ce_replypartition {:?} is not a number",
                meta.extensions.get(extensions::REPLY_PARTITION)
            )
        })?;
    let known = lock(&shared.reply_topics).get(topic).copied();
    let count = match known {
        Some(count) => count,
        None => {
            let metadata = shared
                .restore
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(|e| format!("cannot look the reply topic {topic} up: {e}"))?;
            let count = metadata
                .topics()
                .first()
                .filter(|t| t.error().is_none())
                .map_or(0, |t| t.partitions().len() as i32);
            if count > 0 {
                lock(&shared.reply_topics).insert(topic.clone(), count);
            }
            count
        }
    };
    if partition < 0 || partition >= count {
        return Err(format!(
            "the reply address {topic}[{partition}] does not exist ({topic} has {count} partitions)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{OwnedMessage, Timestamp};

    use super::*;
    use crate::aggregate::processor::test_support::{
        EVENTS_TOPIC, REPLY_TOPIC, Tally, add, add_meta, key_on, record, shared,
    };
    use crate::kafka::{RecordHeaders, dlq_headers};

    /// One batch being decided against a committed state.
    struct Batch {
        shared: Shared<Tally>,
        committed: HashMap<Key, Entry<Tally>>,
        overlay: HashMap<Key, Entry<Tally>>,
        out: Outputs,
    }

    impl Batch {
        fn new() -> Self {
            Self {
                shared: shared(),
                committed: HashMap::new(),
                overlay: HashMap::new(),
                out: Outputs::default(),
            }
        }

        fn decide(&mut self, record: &Record) {
            self.decide_set_aside(record, None);
        }

        fn decide_set_aside(&mut self, record: &Record, set_aside: Option<&(u32, String)>) {
            decide_one(
                &self.shared,
                &self.committed,
                &mut self.overlay,
                record,
                Utc::now(),
                set_aside,
                &mut self.out,
            );
        }

        fn entry(&self, meta: &Metadata, p: i32) -> &Entry<Tally> {
            self.overlay
                .get(&(p, meta.subject.clone()))
                .expect("the command's aggregate is in the overlay")
        }

        /// The code of each reply that is a rejection, `accepted` for the others.
        fn reply_codes(&self) -> Vec<String> {
            self.out
                .replies
                .iter()
                .map(|r| match &r.outcome {
                    Some(Outcome::Rejected { rejection }) => rejection.code.clone(),
                    _ => "accepted".to_owned(),
                })
                .collect()
        }

        fn dead_reasons(&self) -> Vec<String> {
            self.out.dead.iter().map(dead_reason).collect()
        }
    }

    fn dead_reason(letter: &TxRecord) -> String {
        let headers = RecordHeaders::from_owned(&letter.headers);
        let error = headers
            .last(dlq_headers::ERROR)
            .flatten()
            .unwrap_or_default();
        String::from_utf8_lossy(error).into_owned()
    }

    /// The envelope of a record about to be written.
    fn written(record: &TxRecord) -> Metadata {
        let message = OwnedMessage::new(
            record.payload.clone(),
            record.key.clone(),
            record.topic.clone(),
            Timestamp::NotAvailable,
            record.partition.unwrap_or(-1),
            0,
            Some(record.headers.clone()),
        );
        Metadata::from_record(&message).expect("a valid envelope")
    }

    fn rejection(reply: &PendingReply) -> &Rejection {
        match &reply.outcome {
            Some(Outcome::Rejected { rejection }) => rejection,
            other => panic!("not a rejection: {other:?}"),
        }
    }

    #[test]
    fn an_accepted_command_stages_its_events_and_a_reply_waiting_for_their_offsets() {
        let mut batch = Batch::new();
        let key = key_on(0);
        let meta = add_meta(&key);
        batch.decide(&add(&meta, 5, 2, 0, 7));

        assert!(batch.out.dead.is_empty());
        assert_eq!(batch.out.events.len(), 2);
        for (i, (pending, at)) in batch.out.events.iter().enumerate() {
            let sequence = i as u64 + 1;
            assert_eq!(
                (pending.topic.as_str(), pending.partition),
                (EVENTS_TOPIC, Some(0))
            );
            assert_eq!(pending.key.as_deref(), Some(key.as_bytes()));
            let event = written(pending);
            assert_eq!(
                event.id,
                Uuid::new_v5(&meta.id, format!("event/{i}").as_bytes())
            );
            assert_eq!(event.message_type, "v1.tally.added");
            assert_eq!(event.source, "/tally-service");
            assert_eq!(event.sequence, Some(sequence));
            assert_eq!(
                (event.causation_id, event.correlation_id),
                (meta.id, meta.correlation_id)
            );
            assert_eq!(
                (at.topic.as_str(), at.partition, at.offset, at.sequence),
                (EVENTS_TOPIC, 0, -1, sequence),
                "where it lands is known once written"
            );
        }

        let [reply] = &batch.out.replies[..] else {
            panic!("one reply");
        };
        assert!(reply.outcome.is_none(), "the outcome waits for the offsets");
        assert_eq!(reply.events, vec![0, 1]);
        assert_eq!((reply.topic.as_str(), reply.partition), (REPLY_TOPIC, 1));
        assert_eq!(reply.aggregate, (0, key.clone()));
        assert_eq!(reply.meta.id, Uuid::new_v5(&meta.id, b"reply"));
        assert_eq!(reply.meta.causation_id, meta.id);
        assert_eq!(reply.meta.message_type, REPLY_TYPE);

        let entry = batch.entry(&meta, 0);
        assert_eq!((entry.state.total, entry.version), (10, 2));
        assert!(matches!(
            entry.recent.back(),
            Some((id, Remembered::Accepted(events))) if *id == meta.id && events.is_empty()
        ));
        assert!(batch.committed.is_empty(), "only the overlay changes");
    }

    #[test]
    fn a_command_builds_on_the_ones_before_it_in_the_batch() {
        let mut batch = Batch::new();
        let key = key_on(1);
        let (first, second) = (add_meta(&key), add_meta(&key));
        batch.decide(&add(&first, 2, 1, 1, 0));
        batch.decide(&add(&second, 3, 1, 1, 1));
        let sequences: Vec<u64> = batch.out.events.iter().map(|(_, at)| at.sequence).collect();
        assert_eq!(sequences, vec![1, 2]);
        assert_eq!(batch.out.replies[1].events, vec![1]);
        let entry = batch.entry(&second, 1);
        assert_eq!(
            (entry.state.total, entry.version, entry.recent.len()),
            (5, 2, 2)
        );
    }

    #[test]
    fn a_rejection_is_remembered_and_answered() {
        let mut batch = Batch::new();
        let meta = add_meta(&key_on(0));
        batch.decide(&add(&meta, 0, 1, 0, 0));
        assert!(batch.out.events.is_empty() && batch.out.dead.is_empty());
        assert_eq!(batch.reply_codes(), vec!["zero"]);
        let entry = batch.entry(&meta, 0);
        assert_eq!(entry.version, 0);
        assert!(matches!(
            entry.recent.back(),
            Some((id, Remembered::Rejected(r))) if *id == meta.id && r.code == "zero"
        ));
    }

    #[test]
    fn a_panic_in_decide_is_an_internal_error() {
        let mut batch = Batch::new();
        let meta = add_meta(&key_on(0));
        batch.decide(&add(&meta, 13, 1, 0, 0));
        let rejection = rejection(&batch.out.replies[0]);
        assert_eq!(rejection.code, "internal_error");
        assert!(
            rejection.message.contains("decide panicked: unlucky"),
            "{rejection}"
        );
        assert!(batch.out.events.is_empty());
    }

    #[test]
    fn an_event_that_cannot_be_applied_writes_none_of_the_commands_events() {
        let mut batch = Batch::new();
        let meta = add_meta(&key_on(0));
        batch.decide(&add(&meta, 666, 2, 0, 0));
        let rejection = rejection(&batch.out.replies[0]);
        assert_eq!(rejection.code, "internal_error");
        assert!(
            rejection
                .message
                .starts_with("event 0 of 2: apply panicked: cursed"),
            "{rejection}"
        );
        assert!(batch.out.events.is_empty());
        let entry = batch.entry(&meta, 0);
        assert_eq!((entry.state.total, entry.version), (0, 0));
        assert!(matches!(
            entry.recent.back(),
            Some((_, Remembered::Rejected(_)))
        ));
    }

    #[test]
    fn a_retry_of_a_committed_command_gets_the_first_outcome_and_decides_nothing() {
        let mut batch = Batch::new();
        let key = key_on(1);
        let meta = add_meta(&key);
        let first = Outcome::Accepted {
            events: vec![EventRef {
                message_type: "v1.tally.added".into(),
                topic: EVENTS_TOPIC.into(),
                partition: 1,
                offset: 42,
                sequence: 1,
            }],
        };
        let mut entry = Entry {
            state: Tally { total: 4 },
            version: 1,
            ..Entry::default()
        };
        entry.remember(meta.id, Remembered::from(first.clone()));
        batch.committed.insert((1, key.clone()), entry);

        batch.decide(&add(&meta, 4, 1, 1, 9));
        assert!(batch.out.events.is_empty() && batch.out.dead.is_empty());
        assert_eq!(batch.out.replies[0].outcome, Some(first));
        let entry = batch.entry(&meta, 1);
        assert_eq!(
            (entry.state.total, entry.version, entry.recent.len()),
            (4, 1, 1)
        );
    }

    #[test]
    fn a_retry_in_the_same_batch_is_answered_with_the_first_copys_events() {
        let mut batch = Batch::new();
        let meta = add_meta(&key_on(0));
        batch.decide(&add(&meta, 1, 2, 0, 0));
        batch.decide(&add(&meta, 1, 2, 0, 1));
        assert_eq!(batch.out.events.len(), 2, "decided once");
        let [first, retry] = &batch.out.replies[..] else {
            panic!("two replies");
        };
        assert!(first.outcome.is_none() && retry.outcome.is_none());
        assert_eq!(retry.events, first.events);
        assert_eq!(batch.entry(&meta, 0).recent.len(), 1);
    }

    #[test]
    fn a_retry_gets_the_first_outcome_even_past_its_deadline() {
        let mut batch = Batch::new();
        let meta = add_meta(&key_on(0));
        batch.decide(&add(&meta, 0, 1, 0, 0));
        let mut late = meta.clone();
        late.extensions
            .insert(extensions::DEADLINE.into(), "2000-01-01T00:00:00Z".into());
        batch.decide(&add(&late, 0, 1, 0, 1));
        assert_eq!(batch.reply_codes(), vec!["zero", "zero"]);
    }

    #[test]
    fn a_command_on_the_wrong_partition_is_dead_lettered_and_rejected() {
        let mut batch = Batch::new();
        let meta = add_meta(&key_on(1));
        batch.decide(&add(&meta, 1, 1, 0, 3));
        assert_eq!(batch.reply_codes(), vec!["wrong_partition"]);
        let [letter] = &batch.out.dead[..] else {
            panic!("one dead letter");
        };
        assert_eq!(
            (letter.topic.as_str(), letter.partition),
            ("tally-service.dlq", Some(0))
        );
        assert!(
            dead_reason(letter).contains("arrived on partition 0, but murmur2 puts that key on 1")
        );
        assert!(batch.overlay.is_empty() && batch.out.events.is_empty());
    }

    #[test]
    fn a_command_this_aggregate_does_not_handle_is_dead_lettered_and_rejected() {
        let mut batch = Batch::new();
        let mut meta = add_meta(&key_on(0));
        meta.message_type = "v1.tally.reset".into();
        batch.decide(&record("tally.commands", &meta, Some(b"{}".to_vec()), 0, 0));
        assert_eq!(batch.reply_codes(), vec!["unknown_command"]);
        assert_eq!(
            batch.dead_reasons(),
            vec!["this processor does not handle v1.tally.reset"]
        );
    }

    #[test]
    fn an_undecodable_command_is_dead_lettered_and_rejected() {
        let mut batch = Batch::new();
        let meta = add_meta(&key_on(0));
        batch.decide(&record("tally.commands", &meta, Some(b"{".to_vec()), 0, 0));
        assert_eq!(batch.reply_codes(), vec!["bad_command"]);
        assert_eq!(batch.out.dead.len(), 1);
    }

    #[test]
    fn a_record_without_an_envelope_is_only_dead_lettered() {
        let mut batch = Batch::new();
        let bare = OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            "tally.commands".into(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        );
        batch.decide(&Record::copy(&bare, "tally.commands".into()));
        assert!(batch.out.replies.is_empty());
        let reasons = batch.dead_reasons();
        assert!(
            reasons[0].starts_with("undecodable command envelope"),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_reply_address_that_does_not_exist_is_only_dead_lettered() {
        let mut batch = Batch::new();
        let mut meta = add_meta(&key_on(0));
        meta.extensions
            .insert(extensions::REPLY_PARTITION.into(), "5".into());
        batch.decide(&add(&meta, 1, 1, 0, 0));
        meta.extensions
            .insert(extensions::REPLY_PARTITION.into(), "x".into());
        batch.decide(&add(&meta, 1, 1, 0, 1));
        assert!(batch.out.replies.is_empty() && batch.out.events.is_empty());
        let reasons = batch.dead_reasons();
        assert_eq!(
            reasons[0],
            format!(
                "the reply address {REPLY_TOPIC}[5] does not exist ({REPLY_TOPIC} has 2 partitions)"
            )
        );
        assert!(reasons[1].contains("is not a number"), "{reasons:?}");
    }

    #[test]
    fn a_command_without_a_reply_address_is_decided_and_its_reply_not_sent() {
        let mut batch = Batch::new();
        let mut meta = add_meta(&key_on(0));
        meta.extensions.clear();
        batch.decide(&add(&meta, 1, 1, 0, 0));
        assert_eq!(batch.out.events.len(), 1);
        assert_eq!(batch.out.replies[0].topic, "", "fire and forget");
    }

    #[test]
    fn an_expired_command_is_rejected_and_not_remembered() {
        let mut batch = Batch::new();
        let mut meta = add_meta(&key_on(0));
        let deadline = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
        meta.extensions
            .insert(extensions::DEADLINE.into(), deadline.clone());
        batch.decide(&add(&meta, 1, 1, 0, 0));
        assert_eq!(batch.reply_codes(), vec!["expired"]);
        assert!(batch.out.dead.is_empty() && batch.out.events.is_empty());
        assert_eq!(
            batch.out.replies[0]
                .meta
                .extensions
                .get(extensions::DEADLINE),
            Some(&deadline),
            "the reply names the deadline it judged"
        );
        assert!(
            batch.entry(&meta, 0).recent.is_empty(),
            "a retry in time is decided"
        );
    }

    #[test]
    fn a_command_before_its_deadline_is_decided() {
        let mut batch = Batch::new();
        let mut meta = add_meta(&key_on(0));
        let deadline = (Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
        meta.extensions
            .insert(extensions::DEADLINE.into(), deadline);
        batch.decide(&add(&meta, 1, 1, 0, 0));
        assert_eq!(batch.out.events.len(), 1);
    }

    #[test]
    fn a_deadline_that_is_not_a_time_is_a_bad_command() {
        let mut batch = Batch::new();
        let mut meta = add_meta(&key_on(0));
        meta.extensions
            .insert(extensions::DEADLINE.into(), "tomorrow".into());
        batch.decide(&add(&meta, 1, 1, 0, 0));
        assert_eq!(batch.reply_codes(), vec!["bad_command"]);
        assert!(batch.dead_reasons()[0].starts_with("header ce_deadline is not RFC 3339"));
    }

    #[test]
    fn a_command_whose_output_was_refused_is_rejected_remembered_and_dead_lettered() {
        let mut batch = Batch::new();
        let meta = add_meta(&key_on(0));
        let aside = (1, "message too large".to_owned());
        batch.decide_set_aside(&add(&meta, 1, 1, 0, 0), Some(&aside));
        assert!(batch.out.events.is_empty());
        let rejection = rejection(&batch.out.replies[0]).clone();
        assert_eq!(rejection.code, "output_refused");
        assert!(rejection.message.ends_with("message too large"));
        assert_eq!(batch.dead_reasons(), vec![rejection.to_string()]);
        assert!(matches!(
            batch.entry(&meta, 0).recent.back(),
            Some((_, Remembered::Rejected(r))) if *r == rejection
        ));
    }

    #[test]
    fn a_retry_whose_answer_was_refused_is_only_dead_lettered_and_the_first_outcome_stands() {
        let mut batch = Batch::new();
        let key = key_on(0);
        let meta = add_meta(&key);
        let mut entry = Entry::<Tally>::default();
        entry.remember(meta.id, Remembered::Accepted(Vec::new()));
        batch.committed.insert((0, key), entry);
        let aside = (1, "message too large".to_owned());
        batch.decide_set_aside(&add(&meta, 1, 1, 0, 0), Some(&aside));
        assert!(batch.out.replies.is_empty());
        assert!(
            batch.dead_reasons()[0].starts_with("the answer to this retried command was refused")
        );
        assert!(matches!(
            batch.entry(&meta, 0).recent.back(),
            Some((_, Remembered::Accepted(_)))
        ));
    }

    #[test]
    fn a_command_refused_again_is_only_dead_lettered_cut_further_each_time() {
        let meta = add_meta(&key_on(0));
        let command = add(&meta, 1, 1, 0, 0);
        let letter = |refusals: u32| {
            let mut batch = Batch::new();
            batch.decide_set_aside(&command, Some(&(refusals, "too large".to_owned())));
            assert!(batch.out.replies.is_empty() && batch.overlay.is_empty());
            let [letter] = &batch.out.dead[..] else {
                panic!("one dead letter");
            };
            assert_eq!(
                dead_reason(letter),
                "a record of this command was refused by Kafka: too large"
            );
            letter.clone()
        };
        let has_original_headers = |letter: &TxRecord| {
            RecordHeaders::from_owned(&letter.headers)
                .last("ce_id")
                .is_some()
        };
        let whole = letter(2);
        assert_eq!(whole.payload.as_deref(), command.payload());
        assert!(has_original_headers(&whole));
        assert!(has_original_headers(&letter(3)));
        assert!(!has_original_headers(&letter(4)), "the minimal form");
    }
}
