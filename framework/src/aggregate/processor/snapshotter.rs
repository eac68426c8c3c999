//! Snapshots of a partition's aggregates: written to Postgres every N events, loaded by a
//! restore so it reads only the partition's tail (the store itself is `aggregate::snapshot`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::memory::{Entry, Remembered};
use super::rebalance::ProcessorContext;
use super::{CommandProcessor, Shared, lock};
use crate::aggregate::Aggregate;
use crate::aggregate::snapshot::{self, Loaded, SnapshotSettings, StoredAggregate};

/// Serializes a partition's aggregates (id, entry) into a snapshot body; the events topic and
/// partition complete the remembered outcomes.
type EncodeEntries<A> = fn(&[(&String, &Entry<A>)], &str, i32) -> Result<Vec<u8>, String>;
/// Reads a snapshot body back.
type DecodeEntries<A> = fn(&[u8]) -> Result<Vec<(String, Entry<A>)>, String>;

/// Snapshot settings with the aggregate's (de)serialization, fixed where `A: Serialize`.
pub(super) struct Snapshotter<A> {
    pub(super) settings: SnapshotSettings,
    encode: EncodeEntries<A>,
    decode: DecodeEntries<A>,
}

// Not derived: `A` need not be `Clone` for function pointers to be.
impl<A> Clone for Snapshotter<A> {
    fn clone(&self) -> Self {
        Self {
            settings: self.settings.clone(),
            encode: self.encode,
            decode: self.decode,
        }
    }
}

fn encode_entries<A: Serialize>(
    entries: &[(&String, &Entry<A>)],
    topic: &str,
    partition: i32,
) -> Result<Vec<u8>, String> {
    let stored: Vec<StoredAggregate<&A>> = entries
        .iter()
        .map(|(id, entry)| StoredAggregate {
            id: (*id).clone(),
            version: entry.version,
            state: &entry.state,
            // Only accepted outcomes, as a restore from the log rebuilds them: a restore from
            // a snapshot must give the same state as one from the first event.
            recent: entry
                .recent
                .iter()
                .filter(|(_, outcome)| matches!(outcome, Remembered::Accepted(_)))
                .map(|(id, outcome)| (*id, outcome.outcome(topic, partition)))
                .collect(),
        })
        .collect();
    snapshot::encode(&stored)
}

fn decode_entries<A: DeserializeOwned>(body: &[u8]) -> Result<Vec<(String, Entry<A>)>, String> {
    Ok(snapshot::decode::<A>(body)?
        .into_iter()
        .map(|stored| {
            (
                stored.id,
                Entry {
                    state: stored.state,
                    version: stored.version,
                    recent: stored
                        .recent
                        .into_iter()
                        .map(|(id, outcome)| (id, Remembered::from(outcome)))
                        .collect(),
                },
            )
        })
        .collect())
}

impl<A: Aggregate + Serialize + DeserializeOwned> CommandProcessor<A> {
    /// Snapshots each partition's aggregates to Postgres every `settings.every_events`
    /// events, so a restore reads only the tail of the partition. Without it, a restore
    /// reads every event of the partition.
    pub fn snapshots(mut self, settings: SnapshotSettings) -> Self {
        self.snapshots = Some(Snapshotter {
            settings,
            encode: encode_entries::<A>,
            decode: decode_entries::<A>,
        });
        self
    }
}

impl<A: Aggregate> ProcessorContext<A> {
    /// The aggregates of the latest usable snapshot of `p` and where to read on from; no
    /// aggregates and `low` without one. An unusable snapshot is ignored with a warning.
    pub(super) fn load_snapshot(
        &self,
        p: i32,
        low: i64,
        end: i64,
    ) -> (HashMap<String, Entry<A>>, i64) {
        let shared = &self.shared;
        let Some(snapshots) = &shared.snapshots else {
            return (HashMap::new(), low);
        };
        // A cache: a database that does not answer quickly means a restore from the log.
        let loaded = shared
            .handle
            // The timer is made inside the runtime: block_on's thread has no runtime context.
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    snapshot::load(&snapshots.settings.pool, &shared.events_topic, p),
                )
                .await
            })
            .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
        let unusable = |reason: String| {
            tracing::warn!(partition = p, %reason, "snapshot ignored; restoring from the beginning of the events");
            (HashMap::new(), low)
        };
        let loaded = match loaded {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return (HashMap::new(), low),
            Err(e) => return unusable(format!("cannot read it: {e}")),
        };
        let span = (&shared.events_topic[..], p, low, end);
        match usable(
            &loaded,
            span,
            snapshots.settings.state_version,
            snapshots.decode,
        ) {
            Ok(list) => {
                shared
                    .status
                    .inner
                    .snapshots_loaded
                    .fetch_add(1, Ordering::Relaxed);
                (list.into_iter().collect(), loaded.events_offset)
            }
            Err(reason) => unusable(reason),
        }
    }
}

/// The aggregates of a loaded snapshot, or why it cannot be used: another format or state
/// version, an offset outside `topic[p]`'s `low..end`, or a corrupt body.
fn usable<A>(
    loaded: &Loaded,
    (topic, p, low, end): (&str, i32, i64, i64),
    state_version: i32,
    decode: DecodeEntries<A>,
) -> Result<Vec<(String, Entry<A>)>, String> {
    if loaded.format != snapshot::FORMAT {
        return Err(format!(
            "format {} (this build reads {})",
            loaded.format,
            snapshot::FORMAT
        ));
    }
    if loaded.state_version != state_version {
        return Err(format!(
            "state version {} (the processor declares {})",
            loaded.state_version, state_version
        ));
    }
    if loaded.events_offset < low || loaded.events_offset > end {
        return Err(format!(
            "it continues at offset {} but {topic}[{p}] spans {low}..{end} (recreated or truncated?)",
            loaded.events_offset
        ));
    }
    decode(&loaded.body).map_err(|e| format!("corrupt body: {e}"))
}

/// Serializes partition `p`'s committed aggregates here (they reflect every event before
/// `events_offset`) and writes them to Postgres in the background; a failed write only costs
/// a longer restore.
pub(super) fn take_snapshot<A: Aggregate>(shared: &Arc<Shared<A>>, p: i32, events_offset: i64) {
    let Some(snapshots) = &shared.snapshots else {
        return;
    };
    let (body, aggregates) = {
        let state = lock(&shared.state);
        let entries: Vec<(&String, &Entry<A>)> = state
            .iter()
            .filter(|((q, _), _)| *q == p)
            .map(|((_, id), entry)| (id, entry))
            .collect();
        (
            (snapshots.encode)(&entries, &shared.events_topic, p),
            entries.len(),
        )
    };
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(partition = p, error = %e, "cannot serialize a snapshot");
            return;
        }
    };
    let pool = snapshots.settings.pool.clone();
    let version = snapshots.settings.state_version;
    let topic = shared.events_topic.clone();
    let status = shared.status.clone();
    shared.handle.spawn(async move {
        match snapshot::store(&pool, &topic, p, version, events_offset, aggregates, body).await {
            Ok(()) => {
                status
                    .inner
                    .snapshots_written
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cannot store a snapshot; the next restore reads more events");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use serde::Deserialize;
    use uuid::Uuid;

    use super::*;
    use crate::aggregate::Rejection;
    use crate::aggregate::processor::memory::Landed;
    use crate::aggregate::reply::Outcome;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Counter {
        total: i64,
    }

    fn landed(offset: i64, sequence: u64) -> Landed {
        Landed {
            message_type: Arc::from("v1.counter.bumped"),
            offset,
            sequence,
        }
    }

    fn entry(total: i64, version: u64, recent: Vec<(Uuid, Remembered)>) -> Entry<Counter> {
        Entry {
            state: Counter { total },
            version,
            recent: VecDeque::from(recent),
        }
    }

    fn outcomes(entry: &Entry<Counter>) -> Vec<(Uuid, Outcome)> {
        entry
            .recent
            .iter()
            .map(|(id, remembered)| (*id, remembered.outcome("counter.events", 2)))
            .collect()
    }

    #[test]
    fn a_body_decodes_to_the_entries_it_was_encoded_from() {
        let (a1, a2) = (Uuid::new_v4(), Uuid::new_v4());
        let first = entry(
            5,
            3,
            vec![
                (a1, Remembered::Accepted(vec![landed(10, 1), landed(11, 2)])),
                (a2, Remembered::Accepted(vec![landed(14, 3)])),
            ],
        );
        let second = entry(-1, 1, Vec::new());
        let (one, two) = ("one".to_owned(), "two".to_owned());
        let body = encode_entries(&[(&one, &first), (&two, &second)], "counter.events", 2)
            .expect("encodes");
        let mut decoded = decode_entries::<Counter>(&body).expect("decodes");
        decoded.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(decoded.len(), 2);
        let (id, back) = &decoded[0];
        assert_eq!(id, "one");
        assert_eq!((&back.state, back.version), (&first.state, 3));
        assert_eq!(outcomes(back), outcomes(&first));
        let (id, back) = &decoded[1];
        assert_eq!(id, "two");
        assert_eq!(
            (&back.state, back.version, back.recent.len()),
            (&second.state, 1, 0)
        );
    }

    #[test]
    fn a_body_keeps_only_accepted_outcomes_as_a_restore_from_the_log_would() {
        let (accepted, rejected) = (Uuid::new_v4(), Uuid::new_v4());
        let entry = entry(
            1,
            1,
            vec![
                (accepted, Remembered::Accepted(vec![landed(0, 1)])),
                (
                    rejected,
                    Remembered::Rejected(Rejection::new("too_big", "over the limit")),
                ),
            ],
        );
        let id = "one".to_owned();
        let body = encode_entries(&[(&id, &entry)], "counter.events", 2).expect("encodes");
        let decoded = decode_entries::<Counter>(&body).expect("decodes");
        let ids: Vec<Uuid> = decoded[0].1.recent.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![accepted]);
    }

    #[test]
    fn a_corrupt_body_does_not_decode() {
        assert!(decode_entries::<Counter>(b"{not json").is_err());
        assert!(decode_entries::<Counter>(br#"[{"id":"x"}]"#).is_err());
    }

    fn loaded(format: i32, state_version: i32, events_offset: i64, body: &[u8]) -> Loaded {
        Loaded {
            format,
            state_version,
            events_offset,
            body: body.to_vec(),
        }
    }

    #[test]
    fn a_snapshot_is_usable_only_in_this_format_state_version_and_log_span() {
        let id = "one".to_owned();
        let body = encode_entries(&[(&id, &entry(7, 2, Vec::new()))], "counter.events", 0)
            .expect("encodes");
        let span = ("counter.events", 0, 10, 20);
        let check = |l: &Loaded| usable(l, span, 3, decode_entries::<Counter>);

        let entries = check(&loaded(snapshot::FORMAT, 3, 15, &body)).expect("usable");
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].1.state.total, entries[0].1.version), (7, 2));
        // Both ends of the span are places a restore can continue from.
        assert!(check(&loaded(snapshot::FORMAT, 3, 10, &body)).is_ok());
        assert!(check(&loaded(snapshot::FORMAT, 3, 20, &body)).is_ok());

        let why = check(&loaded(snapshot::FORMAT + 1, 3, 15, &body))
            .err()
            .expect("unusable");
        assert!(why.starts_with("format "), "{why}");
        let why = check(&loaded(snapshot::FORMAT, 2, 15, &body))
            .err()
            .expect("unusable");
        assert!(why.starts_with("state version 2"), "{why}");
        let why = check(&loaded(snapshot::FORMAT, 3, 9, &body))
            .err()
            .expect("unusable");
        assert!(why.contains("counter.events[0] spans 10..20"), "{why}");
        assert!(check(&loaded(snapshot::FORMAT, 3, 21, &body)).is_err());
        let why = check(&loaded(snapshot::FORMAT, 3, 15, b"["))
            .err()
            .expect("unusable");
        assert!(why.starts_with("corrupt body"), "{why}");
    }
}
