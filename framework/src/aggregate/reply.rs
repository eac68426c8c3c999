//! Replies: what became of a command, sent to the sender's `{service}.replies` partition.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Rejection;

/// `ce_type` of replies.
pub const REPLY_TYPE: &str = "v1.command.answered";

/// The CloudEvents extensions a command carries for its reply (on the wire as `ce_{name}`
/// headers), and a reply echoes.
pub mod extensions {
    /// The topic the sender reads replies from: `{service}.replies`.
    pub const REPLY_TO: &str = "replyto";
    /// The partition of that topic the sender reads.
    pub const REPLY_PARTITION: &str = "replypartition";
    /// RFC 3339 time after which the command is rejected as expired rather than decided.
    pub const DEADLINE: &str = "deadline";
}

/// Where an event of an accepted command landed: enough to wait for a projection to pass it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "asyncapi", derive(schemars::JsonSchema))]
pub struct EventRef {
    /// The event's `ce_type`, such as `v1.user.signedup`.
    pub message_type: String,
    /// The events topic it was written to.
    pub topic: String,
    /// The partition it was written to.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// The aggregate version this event made.
    pub sequence: u64,
}

/// What became of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "asyncapi", derive(schemars::JsonSchema))]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Decided and committed: these events are in the log.
    Accepted {
        /// Where each event landed, in the order they were written.
        events: Vec<EventRef>,
    },
    /// Refused: no event was written.
    Rejected {
        /// Why the command was refused.
        rejection: Rejection,
    },
}

/// A reply as the sender receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The command it answers (the reply's causation id).
    pub command_id: Uuid,
    /// The aggregate it concerns.
    pub subject: String,
    /// What became of the command.
    pub outcome: Outcome,
}

impl Reply {
    /// `(topic, partition, offset)` of each event: what `projection::wait_for` takes.
    pub fn offsets(&self) -> Vec<(String, i32, i64)> {
        match &self.outcome {
            Outcome::Accepted { events } => events
                .iter()
                .map(|e| (e.topic.clone(), e.partition, e.offset))
                .collect(),
            Outcome::Rejected { .. } => Vec::new(),
        }
    }
}
