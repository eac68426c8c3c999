//! The duplicate memory: each aggregate's state with the outcomes of its recent commands, so
//! a retried command gets the first outcome instead of being decided again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::lock;
use crate::aggregate::Rejection;
use crate::aggregate::reply::{EventRef, Outcome};

/// How many recent command ids each aggregate remembers (duplicates get the first outcome).
const RECENT_COMMANDS: usize = 64;

/// One aggregate's state on this processor.
#[derive(Clone)]
pub(super) struct Entry<A> {
    pub(super) state: A,
    pub(super) version: u64,
    /// Recent command ids and their outcome, oldest first.
    pub(super) recent: VecDeque<(Uuid, Remembered)>,
}

/// A remembered outcome, compact: it is kept for up to [`RECENT_COMMANDS`] commands of every
/// aggregate in memory, so its events leave out what the entry already implies (the events
/// topic and the partition) and share their type names.
#[derive(Clone, Debug)]
pub(super) enum Remembered {
    Accepted(Vec<Landed>),
    Rejected(Rejection),
}

/// Where an accepted command's event landed (its topic and partition are the entry's own).
#[derive(Clone, Debug)]
pub(super) struct Landed {
    pub(super) message_type: Arc<str>,
    pub(super) offset: i64,
    pub(super) sequence: u64,
}

impl Remembered {
    /// The outcome as replies carry it.
    pub(super) fn outcome(&self, topic: &str, partition: i32) -> Outcome {
        match self {
            Self::Accepted(events) => Outcome::Accepted {
                events: events
                    .iter()
                    .map(|e| EventRef {
                        message_type: e.message_type.to_string(),
                        topic: topic.to_owned(),
                        partition,
                        offset: e.offset,
                        sequence: e.sequence,
                    })
                    .collect(),
            },
            Self::Rejected(rejection) => Outcome::Rejected {
                rejection: rejection.clone(),
            },
        }
    }
}

impl From<Outcome> for Remembered {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Accepted { events } => Self::Accepted(
                events
                    .into_iter()
                    .map(|e| Landed {
                        message_type: intern(&e.message_type),
                        offset: e.offset,
                        sequence: e.sequence,
                    })
                    .collect(),
            ),
            Outcome::Rejected { rejection } => Self::Rejected(rejection),
        }
    }
}

/// One shared copy of each event type name (a handful per aggregate, remembered for every
/// event of every aggregate).
pub(super) fn intern(name: &str) -> Arc<str> {
    static NAMES: std::sync::OnceLock<Mutex<std::collections::HashSet<Arc<str>>>> =
        std::sync::OnceLock::new();
    let mut names = lock(NAMES.get_or_init(Default::default));
    if let Some(known) = names.get(name) {
        return Arc::clone(known);
    }
    let fresh: Arc<str> = Arc::from(name);
    names.insert(Arc::clone(&fresh));
    fresh
}

impl<A: Default> Default for Entry<A> {
    fn default() -> Self {
        Self {
            state: A::default(),
            version: 0,
            recent: VecDeque::new(),
        }
    }
}

impl<A> Entry<A> {
    pub(super) fn remember(&mut self, id: Uuid, outcome: Remembered) {
        if self.recent.len() >= RECENT_COMMANDS {
            self.recent.pop_front();
        }
        self.recent.push_back((id, outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn landed(message_type: &str, offset: i64, sequence: u64) -> Landed {
        Landed {
            message_type: intern(message_type),
            offset,
            sequence,
        }
    }

    #[test]
    fn remembers_outcomes_oldest_first() {
        let mut entry = Entry::<u32>::default();
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        entry.remember(first, Remembered::Accepted(vec![landed("v1.t.done", 7, 1)]));
        entry.remember(
            second,
            Remembered::Rejected(Rejection::new("no", "not now")),
        );
        let ids: Vec<Uuid> = entry.recent.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![first, second]);
        assert!(matches!(entry.recent[1].1, Remembered::Rejected(ref r) if r.code == "no"));
        // Remembering changes neither the state nor the version.
        assert_eq!((entry.state, entry.version), (0, 0));
    }

    #[test]
    fn keeps_only_the_most_recent_commands() {
        let mut entry = Entry::<()>::default();
        let ids: Vec<Uuid> = (0..RECENT_COMMANDS + 6).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            entry.remember(*id, Remembered::Accepted(Vec::new()));
        }
        assert_eq!(entry.recent.len(), RECENT_COMMANDS);
        let kept: Vec<Uuid> = entry.recent.iter().map(|(id, _)| *id).collect();
        assert_eq!(kept, ids[6..], "the oldest six are forgotten");
    }

    #[test]
    fn an_accepted_outcome_names_its_events_in_the_entrys_topic_and_partition() {
        let remembered = Remembered::Accepted(vec![
            landed("v1.account.opened", 41, 1),
            landed("v1.account.deposited", 42, 2),
        ]);
        assert_eq!(
            remembered.outcome("account.events", 3),
            Outcome::Accepted {
                events: vec![
                    EventRef {
                        message_type: "v1.account.opened".into(),
                        topic: "account.events".into(),
                        partition: 3,
                        offset: 41,
                        sequence: 1,
                    },
                    EventRef {
                        message_type: "v1.account.deposited".into(),
                        topic: "account.events".into(),
                        partition: 3,
                        offset: 42,
                        sequence: 2,
                    },
                ],
            }
        );
    }

    #[test]
    fn an_accepted_outcome_whose_offsets_are_not_known_yet_names_no_events() {
        // What a command accepted in the open transaction remembers until its reply is made.
        assert_eq!(
            Remembered::Accepted(Vec::new()).outcome("account.events", 0),
            Outcome::Accepted { events: Vec::new() }
        );
    }

    #[test]
    fn a_rejection_is_remembered_as_it_was() {
        let rejection = Rejection::new("not_open", "the account is not open");
        let remembered = Remembered::from(Outcome::Rejected {
            rejection: rejection.clone(),
        });
        assert_eq!(
            remembered.outcome("account.events", 1),
            Outcome::Rejected { rejection }
        );
    }

    #[test]
    fn from_an_outcome_keeps_offsets_and_sequences_and_shares_type_names() {
        let event = |offset, sequence| EventRef {
            message_type: "v1.account.deposited".into(),
            topic: "account.events".into(),
            partition: 2,
            offset,
            sequence,
        };
        let outcome = Outcome::Accepted {
            events: vec![event(10, 4), event(11, 5)],
        };
        let Remembered::Accepted(events) = Remembered::from(outcome.clone()) else {
            panic!("an accepted outcome is remembered as accepted");
        };
        assert_eq!(
            events
                .iter()
                .map(|e| (e.offset, e.sequence))
                .collect::<Vec<_>>(),
            vec![(10, 4), (11, 5)]
        );
        assert!(Arc::ptr_eq(
            &events[0].message_type,
            &events[1].message_type
        ));
        assert!(Arc::ptr_eq(
            &events[0].message_type,
            &intern("v1.account.deposited")
        ));
        // Back to what a reply carries: the same outcome.
        assert_eq!(
            Remembered::Accepted(events).outcome("account.events", 2),
            outcome
        );
    }
}
