//! One transaction per batch of commands: the events, the replies, the dead letters and the
//! command offsets commit together; the changed states join the committed state only then.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::decide::{Outputs, PendingReply, decide_one};
use super::memory::{Entry, Remembered};
use super::rebalance::ProcessorContext;
use super::snapshotter::take_snapshot;
use super::{Key, Shared, lock};
use crate::aggregate::Aggregate;
use crate::aggregate::reply::{EventRef, Outcome};
use crate::failpoint;
use crate::kafka::Record;
use crate::kafka::transaction::{
    TxError, TxRecord, await_deliveries, classify, classify_commit, send, send_offsets, sole_input,
};

/// Commands whose event, reply or dead letter the broker refused for its content (too large,
/// invalid), by (partition, offset): how many times, and the last reason. When the batch runs
/// again such a command is rejected and dead-lettered instead of decided, then only
/// dead-lettered, then with its payload cut, so one command never blocks its partition.
pub(super) type SetAside = HashMap<(i32, i64), (u32, String)>;

/// Runs `batch` in one transaction; returns the set-aside commands it settled.
pub(super) fn run_transaction<A: Aggregate>(
    shared: &Arc<Shared<A>>,
    consumer: &BaseConsumer<ProcessorContext<A>>,
    producer: &FutureProducer,
    batch: &[Record],
    set_aside: &SetAside,
) -> Result<Vec<(i32, i64)>, TxError> {
    producer
        .begin_transaction()
        .map_err(|e| classify("begin_transaction", &e))?;
    let mut decided = decide_batch(shared, batch, set_aside);
    // Events first: their offsets go into the replies.
    let offsets = produce_events(shared, producer, &mut decided)?;
    produce_answers(shared, producer, &mut decided)?;
    commit(shared, consumer, producer, &decided.next_offsets)?;
    merge_committed(shared, decided.overlay, &offsets);
    Ok(decided.settled)
}

/// A batch decided, before anything is produced.
struct Decided<A> {
    /// Changed aggregate states, merged into the committed state only on commit.
    overlay: HashMap<Key, Entry<A>>,
    out: Outputs,
    /// The batch index of the command each event, reply and dead letter comes from.
    event_origin: Vec<usize>,
    reply_origin: Vec<usize>,
    dead_origin: Vec<usize>,
    /// Set-aside commands this batch handled.
    settled: Vec<(i32, i64)>,
    /// Per partition, the command offset the transaction commits.
    next_offsets: HashMap<i32, i64>,
}

impl<A> Decided<A> {
    /// The command every record comes from, if one (a refusal names it only then).
    fn sole_input(&self) -> Option<usize> {
        sole_input(
            self.event_origin
                .iter()
                .chain(&self.reply_origin)
                .chain(&self.dead_origin),
        )
    }
}

/// The batch index in `of` of the `k`th output (`usize::MAX` if none).
fn origin(of: &[usize], k: usize) -> usize {
    of.get(k).copied().unwrap_or(usize::MAX)
}

/// Decides every command of the batch but those of halted partitions.
fn decide_batch<A: Aggregate>(
    shared: &Shared<A>,
    batch: &[Record],
    set_aside: &SetAside,
) -> Decided<A> {
    let now = Utc::now();
    let mut decided = Decided {
        overlay: HashMap::new(),
        out: Outputs::default(),
        event_origin: Vec::new(),
        reply_origin: Vec::new(),
        dead_origin: Vec::new(),
        settled: Vec::new(),
        next_offsets: HashMap::new(),
    };
    let halted = lock(&shared.halted);
    let committed = lock(&shared.state);
    for (index, record) in batch.iter().enumerate() {
        let p = record.partition();
        if halted.contains_key(&p) {
            continue;
        }
        let aside = set_aside.get(&(p, record.offset()));
        if aside.is_some() {
            decided.settled.push((p, record.offset()));
        }
        decide_one(
            shared,
            &committed,
            &mut decided.overlay,
            record,
            now,
            aside,
            &mut decided.out,
        );
        decided.event_origin.resize(decided.out.events.len(), index);
        decided
            .reply_origin
            .resize(decided.out.replies.len(), index);
        decided.dead_origin.resize(decided.out.dead.len(), index);
        decided.next_offsets.insert(p, record.offset() + 1);
    }
    decided
}

/// Writes the batch's events and fills in where they landed; returns (partition, offset)
/// of each.
fn produce_events<A: Aggregate>(
    shared: &Shared<A>,
    producer: &FutureProducer,
    decided: &mut Decided<A>,
) -> Result<Vec<(i32, i64)>, TxError> {
    let deliveries: Vec<_> = decided
        .out
        .events
        .iter()
        .enumerate()
        .map(|(k, (pending, _))| {
            send(producer, pending).map_err(|e| e.for_input(origin(&decided.event_origin, k)))
        })
        .collect::<Result<_, _>>()?;
    let sole = decided.sole_input();
    let offsets = await_deliveries(&shared.handle, deliveries, sole, "produce event")?;
    for (i, (partition, offset)) in offsets.iter().enumerate() {
        decided.out.events[i].1.partition = *partition;
        decided.out.events[i].1.offset = *offset;
    }
    Ok(offsets)
}

/// Writes the replies (remembering the outcomes of commands accepted now) and the dead
/// letters.
fn produce_answers<A: Aggregate>(
    shared: &Shared<A>,
    producer: &FutureProducer,
    decided: &mut Decided<A>,
) -> Result<(), TxError> {
    // Replies and dead letters, with the command each answers or dead-letters.
    let mut reply_deliveries = Vec::new();

    for (k, reply) in decided.out.replies.iter_mut().enumerate() {
        let outcome = final_outcome(reply, &decided.out.events, &mut decided.overlay);
        if reply.topic.is_empty() {
            continue;
        }
        let payload = serde_json::to_vec(&outcome)
            .map_err(|e| TxError::Fatal(format!("encode reply: {e}")))?;
        let pending = TxRecord {
            topic: reply.topic.clone(),
            partition: Some(reply.partition),
            key: Some(reply.meta.subject.clone().into_bytes()),
            payload: Some(payload),
            headers: reply.meta.to_headers(),
        };
        let input = origin(&decided.reply_origin, k);
        reply_deliveries.push(send(producer, &pending).map_err(|e| e.for_input(input))?);
    }
    for (k, letter) in decided.out.dead.iter().enumerate() {
        let input = origin(&decided.dead_origin, k);
        reply_deliveries.push(send(producer, letter).map_err(|e| e.for_input(input))?);
    }
    failpoint::hit("command.after_produce");
    await_deliveries(
        &shared.handle,
        reply_deliveries,
        decided.sole_input(),
        "produce reply",
    )?;
    Ok(())
}

/// The outcome `reply` carries: the one decided, or (accepted now) its events where they
/// landed, which the aggregate's memory then keeps.
fn final_outcome<A>(
    reply: &mut PendingReply,
    events: &[(TxRecord, EventRef)],
    overlay: &mut HashMap<Key, Entry<A>>,
) -> Outcome {
    let outcome = match reply.outcome.take() {
        Some(outcome) => outcome,
        None => Outcome::Accepted {
            events: reply.events.iter().map(|&i| events[i].1.clone()).collect(),
        },
    };
    // Remember the outcome of a command accepted now with its final offsets (duplicates
    // get exactly this). Only from such a reply: a duplicate's answer, or a rejection
    // (remembered when decided), must not write over it.
    if !reply.events.is_empty()
        && let Some(entry) = overlay.get_mut(&reply.aggregate)
        && let Some(remembered) = entry
            .recent
            .iter_mut()
            .rev()
            .find(|(id, _)| *id == reply.meta.causation_id)
    {
        remembered.1 = Remembered::from(outcome.clone());
    }
    outcome
}

/// Adds the command offsets to the transaction and commits it.
fn commit<A: Aggregate>(
    shared: &Shared<A>,
    consumer: &BaseConsumer<ProcessorContext<A>>,
    producer: &FutureProducer,
    next_offsets: &HashMap<i32, i64>,
) -> Result<(), TxError> {
    let mut tpl = TopicPartitionList::new();
    for (p, next) in next_offsets {
        let _ = tpl.add_partition_offset(&shared.commands_topic, *p, Offset::Offset(*next));
    }
    send_offsets(consumer, producer, &tpl)?;
    failpoint::hold("command.before_commit");
    failpoint::hit("command.before_commit");
    producer
        .commit_transaction(Duration::from_secs(30))
        .map_err(|e| classify_commit(&e))?;
    if failpoint::inject("command.commit_unknown") {
        // A drill: the commit went through, but this processor acts as if its outcome were
        // unknown (what a timed-out commit looks like).
        return Err(TxError::Fatal("injected: commit outcome unknown".into()));
    }
    Ok(())
}

/// After the commit: the overlay joins the committed state, the counters move, and
/// partitions with enough new events are snapshotted.
fn merge_committed<A: Aggregate>(
    shared: &Arc<Shared<A>>,
    overlay: HashMap<Key, Entry<A>>,
    offsets: &[(i32, i64)],
) {
    {
        let mut committed = lock(&shared.state);
        committed.extend(overlay);
        shared
            .status
            .inner
            .aggregates
            .store(committed.len() as u64, Ordering::Relaxed);
    }
    shared
        .status
        .inner
        .transactions
        .fetch_add(1, Ordering::Relaxed);
    let every = shared.snapshots.as_ref().map(|s| s.settings.every_events);
    let due = snapshots_due(&mut lock(&shared.since_snapshot), offsets, every);
    for (partition, events_offset) in due {
        take_snapshot(shared, partition, events_offset);
    }
}

/// Per partition: the last event written (what parked state and snapshots reflect) and
/// how many since the last snapshot. Returns the partitions due a snapshot (every `every`
/// events, if snapshots are on), with the events offset it continues at.
fn snapshots_due(
    since: &mut HashMap<i32, (u64, i64)>,
    offsets: &[(i32, i64)],
    every: Option<u64>,
) -> Vec<(i32, i64)> {
    let mut due = Vec::new();
    for (partition, offset) in offsets {
        let entry = since.entry(*partition).or_insert((0, -1));
        entry.0 += 1;
        entry.1 = entry.1.max(*offset);
    }
    if let Some(every) = every {
        for (partition, (count, last)) in since.iter_mut() {
            if *count >= every {
                due.push((*partition, *last + 1));
                *count = 0;
            }
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::processor::test_support::{Tally, add, add_meta, key_on, shared};

    #[test]
    fn a_batch_is_decided_but_for_halted_partitions_with_the_origin_of_every_output() {
        let shared = shared();
        lock(&shared.halted).insert(1, "gap".into());
        let (a, b) = (add_meta(&key_on(0)), add_meta(&key_on(1)));
        let refused = add_meta(&key_on(0));
        let batch = vec![
            add(&a, 1, 2, 0, 10),
            add(&b, 1, 1, 1, 20),
            add(&refused, 1, 1, 0, 11),
        ];
        let set_aside = SetAside::from([((0, 11), (1, "too large".to_owned()))]);
        let decided = decide_batch(&shared, &batch, &set_aside);

        assert_eq!(decided.event_origin, vec![0, 0]);
        assert_eq!(decided.reply_origin, vec![0, 2]);
        assert_eq!(decided.dead_origin, vec![2]);
        assert_eq!(decided.settled, vec![(0, 11)]);
        assert_eq!(decided.next_offsets, HashMap::from([(0, 12)]));
        assert_eq!(decided.sole_input(), None);
        assert!(!decided.overlay.contains_key(&(1, b.subject.clone())));
    }

    #[test]
    fn the_sole_input_is_the_command_every_output_comes_from() {
        let shared = shared();
        let batch = vec![add(&add_meta(&key_on(1)), 1, 3, 1, 0)];
        let decided = decide_batch(&shared, &batch, &SetAside::new());
        assert_eq!(decided.sole_input(), Some(0));
        assert_eq!(origin(&decided.event_origin, 2), 0);
        assert_eq!(origin(&decided.event_origin, 3), usize::MAX);
    }

    #[test]
    fn an_accepted_reply_names_where_its_events_landed_and_the_memory_keeps_that() {
        let shared = shared();
        let meta = add_meta(&key_on(0));
        let batch = vec![add(&meta, 1, 2, 0, 0), add(&meta, 1, 2, 0, 1)];
        let mut decided = decide_batch(&shared, &batch, &SetAside::new());
        for (k, (_, at)) in decided.out.events.iter_mut().enumerate() {
            at.offset = 100 + k as i64;
        }
        let Decided {
            mut overlay, out, ..
        } = decided;
        let mut replies = out.replies;
        let first = final_outcome(&mut replies[0], &out.events, &mut overlay);
        let Outcome::Accepted { events } = &first else {
            panic!("accepted");
        };
        assert_eq!(
            events
                .iter()
                .map(|e| (e.offset, e.sequence))
                .collect::<Vec<_>>(),
            vec![(100, 1), (101, 2)]
        );
        // The retry in the same batch gets exactly the same.
        assert_eq!(
            final_outcome(&mut replies[1], &out.events, &mut overlay),
            first
        );
        let entry = &overlay[&(0, meta.subject.clone())];
        let [(id, remembered)] = entry.recent.iter().collect::<Vec<_>>()[..] else {
            panic!("one command remembered");
        };
        assert_eq!(*id, meta.id);
        assert_eq!(remembered.outcome(&shared.events_topic, 0), first);
    }

    #[test]
    fn a_decided_outcome_is_carried_as_it_is_and_not_remembered_again() {
        let shared = shared();
        let meta = add_meta(&key_on(0));
        let mut decided = decide_batch(&shared, &[add(&meta, 0, 1, 0, 0)], &SetAside::new());
        let key = (0, meta.subject.clone());
        // What the memory holds for it now stands, whatever the reply says.
        let placeholder = Remembered::Accepted(Vec::new());
        decided
            .overlay
            .get_mut(&key)
            .expect("in the overlay")
            .recent[0]
            .1 = placeholder;
        let outcome = final_outcome(
            &mut decided.out.replies[0],
            &decided.out.events,
            &mut decided.overlay,
        );
        assert!(matches!(outcome, Outcome::Rejected { ref rejection } if rejection.code == "zero"));
        assert!(matches!(
            decided.overlay[&key].recent[0].1,
            Remembered::Accepted(ref events) if events.is_empty()
        ));
    }

    #[test]
    fn a_partition_is_due_a_snapshot_every_so_many_events() {
        let mut since = HashMap::from([(0, (8, 40))]);
        let due = snapshots_due(&mut since, &[(0, 41), (1, 7), (0, 42)], Some(10));
        assert_eq!(due, vec![(0, 43)]);
        assert_eq!(since[&0], (0, 42), "counted again from here");
        assert_eq!(since[&1], (1, 7));
        // Without snapshots the count only grows.
        let due = snapshots_due(&mut since, &[(1, 8)], None);
        assert!(due.is_empty());
        assert_eq!(since[&1], (2, 8));
    }

    #[test]
    fn merging_makes_the_overlay_committed_and_counts_the_transaction() {
        let shared = Arc::new(shared());
        let meta = add_meta(&key_on(1));
        let decided = decide_batch(&shared, &[add(&meta, 3, 1, 1, 0)], &SetAside::new());
        merge_committed(&shared, decided.overlay, &[(1, 5)]);
        let state = lock(&shared.state);
        let entry: &Entry<Tally> = &state[&(1, meta.subject.clone())];
        assert_eq!((entry.state.total, entry.version), (3, 1));
        assert_eq!(shared.status.transactions(), 1);
        assert_eq!(shared.status.aggregates_in_memory(), 1);
        assert_eq!(lock(&shared.since_snapshot)[&1], (1, 5));
    }
}
