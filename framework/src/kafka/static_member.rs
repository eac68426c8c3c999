//! Static group members (`group.instance.id`) and what a runtime does when the broker fences
//! one.
//!
//! The command processor and reactors join their groups as static members, so a restarted
//! instance gets its partitions back without a rebalance. The broker fences a static member
//! (`FENCED_INSTANCE_ID`, fatal to librdkafka's consumer) when a JoinGroup with its instance id
//! comes from a member id it does not know. That has two causes:
//! - **another process** with the same identity (two instances given one ordinal). The newer
//!   one must win and the older stop, or the two fence each other forever.
//! - **the member itself.** A JoinGroup sent again while the group coordinator moved (a broker
//!   restart) can be processed twice, and the later one fences the consumer that sent both.
//!   The three-node cluster tests saw it after a leader was killed.
//!
//! The group cannot tell them apart (a replaced static member keeps its predecessor's client
//! id and host in the group's description), but the transactional id can: another instance
//! with our identity initialised our transactional id before it joined, which fenced our
//! producer. So after a fence the runtime asks the transaction coordinator, with our
//! producer, to add offsets to a transaction it then aborts ([`probe_producer`]): fenced → the
//! other instance is newer, and this one stops (`Error::Fenced`); otherwise it rejoins with a
//! new consumer and producer, at most [`MAX_REJOINS`] times within [`REJOIN_WINDOW`] (past
//! that it stops, as before).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::errors::{TxError, classify};
use crate::error::{Error, Result};

/// The `runtime` of the [`Error::Fenced`] a fenced consumer ends its loop with.
pub(crate) const FENCED_CONSUMER: &str = "consumer (static member)";

/// Rejoins after a fence allowed within [`REJOIN_WINDOW`].
pub(crate) const MAX_REJOINS: usize = 3;

/// The window [`MAX_REJOINS`] counts in.
pub(crate) const REJOIN_WINDOW: Duration = Duration::from_secs(600);

/// Whether a runtime's loop ended because its consumer was fenced as a static member (and
/// [`probe_producer`] found its producer not fenced).
pub(crate) fn is_fenced_consumer(error: &Error) -> bool {
    matches!(error, Error::Fenced { runtime, .. } if runtime == FENCED_CONSUMER)
}

/// After the consumer was fenced as a static member (`fenced`): whether `producer` was fenced
/// too. It opens a transaction, adds an offset of `topic` (partition 0, the beginning) to it
/// and aborts it, so nothing is committed. `PRODUCER_FENCED` → another instance initialised
/// our transactional id: the error to stop with. Anything else → `fenced` as it was (the
/// runtime may rejoin).
pub(crate) fn probe_producer<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    producer: &FutureProducer,
    topic: &str,
    fenced: Error,
) -> Error {
    if !is_fenced_consumer(&fenced) {
        return fenced;
    }
    let Some(metadata) = consumer.group_metadata() else {
        return fenced;
    };
    if producer.begin_transaction().is_err() {
        return fenced;
    }
    let mut offsets = TopicPartitionList::new();
    if offsets
        .add_partition_offset(topic, 0, Offset::Offset(0))
        .is_err()
    {
        let _ = producer.abort_transaction(Duration::from_secs(30));
        return fenced;
    }
    let probed = producer.send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(30));
    let _ = producer.abort_transaction(Duration::from_secs(30));
    match probed
        .as_ref()
        .map_err(|e| classify("send_offsets_to_transaction", e))
    {
        Err(TxError::Fenced(reason)) => Error::Fenced {
            runtime: "transactional producer".into(),
            reason: format!(
                "{reason}; the consumer was fenced as a static member too: another instance \
                 with this identity started (two instances given one ordinal), and it goes on"
            ),
        },
        _ => fenced,
    }
}

/// The rejoins of one runtime, for the limit.
#[derive(Debug, Default)]
pub(crate) struct Rejoins {
    at: VecDeque<Instant>,
}

impl Rejoins {
    /// Counts a rejoin now; false when [`MAX_REJOINS`] already happened within the window.
    fn allow(&mut self, now: Instant) -> bool {
        while self
            .at
            .front()
            .is_some_and(|t| now.duration_since(*t) >= REJOIN_WINDOW)
        {
            self.at.pop_front();
        }
        if self.at.len() >= MAX_REJOINS {
            return false;
        }
        self.at.push_back(now);
        true
    }

    /// After the consumer was fenced by a join of its own (`fenced`, its producer not
    /// fenced): the reason to rejoin, or past the limit the error to stop with.
    pub(crate) fn after_fence(&mut self, fenced: Error) -> Result<String> {
        let Error::Fenced { runtime, reason } = fenced else {
            return Err(fenced);
        };
        if !self.allow(Instant::now()) {
            return Err(Error::Fenced {
                runtime,
                reason: format!(
                    "{reason}; fenced {} times within {} s while no other instance holds this \
                     identity: stopping",
                    MAX_REJOINS + 1,
                    REJOIN_WINDOW.as_secs()
                ),
            });
        }
        Ok(format!(
            "{reason}; the producer is not fenced, so no other instance holds this identity \
             (a join of this member's the coordinator processed twice): rejoining with new \
             clients"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fenced() -> Error {
        Error::Fenced {
            runtime: FENCED_CONSUMER.into(),
            reason: "fenced".into(),
        }
    }

    #[test]
    fn rejoins_are_limited_within_the_window() {
        let mut rejoins = Rejoins::default();
        let start = Instant::now();
        for _ in 0..MAX_REJOINS {
            assert!(rejoins.allow(start));
        }
        assert!(!rejoins.allow(start + Duration::from_secs(1)));
        assert!(
            rejoins.allow(start + REJOIN_WINDOW),
            "the window moved past the first rejoins"
        );
    }

    #[test]
    fn past_the_limit_a_fence_stops_the_runtime() {
        let mut rejoins = Rejoins::default();
        for _ in 0..MAX_REJOINS {
            let why = rejoins.after_fence(fenced()).expect("a rejoin");
            assert!(why.contains("rejoining"), "{why}");
        }
        match rejoins.after_fence(fenced()) {
            Err(Error::Fenced { runtime, reason }) => {
                assert_eq!(runtime, FENCED_CONSUMER);
                assert!(reason.contains("stopping"), "{reason}");
            }
            other => panic!("expected a stop, got {other:?}"),
        }
    }

    #[test]
    fn only_a_consumer_fence_counts() {
        let producer = Error::Fenced {
            runtime: "transactional producer".into(),
            reason: "fenced".into(),
        };
        assert!(is_fenced_consumer(&fenced()));
        assert!(!is_fenced_consumer(&producer));
    }
}
