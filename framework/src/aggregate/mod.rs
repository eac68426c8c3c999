//! Event-sourced aggregates whose log of record is Kafka (ARCHITECTURE.md, "Command processing").
//!
//! An [`Aggregate`] is pure: `decide` holds every business rule and returns events or a
//! [`Rejection`]; `apply` only folds events into state. The [`CommandProcessor`] is the
//! single writer of `{entity}.events`: one owner per partition (a consumer group over
//! `{entity}.commands`), restoring each partition from its events before handling any of
//! its commands, and writing events, the reply and the command offsets in one Kafka
//! transaction. The [`CommandBus`] sends commands and waits for their replies.

mod bus;
mod processor;
mod reply;
mod snapshot;

pub use bus::{CommandBus, SendOptions};
pub use processor::{CommandProcessor, ProcessorStatus};
pub use reply::{EventRef, Outcome, REPLY_TYPE, Reply, extensions};
pub use snapshot::SnapshotSettings;

use serde::{Deserialize, Serialize};

use crate::event::{CommandSet, EventSet};

/// A consistency boundary: the state of one entity (one user, one account), rebuilt from its
/// events.
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    /// The commands it decides on.
    type Command: CommandSet;
    /// The events it emits and is rebuilt from.
    type Event: EventSet;

    /// Business rules: the events a command leads to, or why it is refused. Pure: no I/O,
    /// no clock (a command carries what it needs).
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Rejection>;

    /// Folds an event into the state. No rules here: an event is a fact.
    fn apply(&mut self, event: &Self::Event);
}

/// A business refusal, sent back to the caller. Not an error of the system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "asyncapi", derive(schemars::JsonSchema))]
#[error("{code}: {message}")]
pub struct Rejection {
    /// Machine-readable, e.g. `email_taken`.
    pub code: String,
    /// For humans.
    pub message: String,
}

impl Rejection {
    /// A rejection with its machine-readable `code` and its text for humans.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}
