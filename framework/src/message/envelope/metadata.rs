//! The attributes of a message ([`Metadata`]) and the causation a new one continues.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

/// The attributes of a message: everything but the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Unique id (UUIDv7 for messages choreo creates), fixed before the first send. An event
    /// from another producer whose `ce_id` is not a UUID gets a UUIDv5 of its source and id
    /// ([`event_id`](super::event_id)); the text is kept in `foreign_id`.
    pub id: Uuid,
    /// The `ce_id` as sent, when it is not [`Metadata::id`] in choreo's own form (hyphenated,
    /// lower case): an id from another producer. Written back as `ce_id` when this metadata
    /// is written again (a dead letter, a copy).
    pub foreign_id: Option<String>,
    /// The message name, e.g. `v1.user.signedup` (`ce_type`).
    pub message_type: String,
    /// The emitting service, e.g. `/user-service`.
    pub source: String,
    /// When it happened. Projections use this, never the clock.
    pub time: DateTime<Utc>,
    /// The entity it is about; equals the Kafka key.
    pub subject: String,
    /// The conversation it belongs to.
    pub correlation_id: Uuid,
    /// The message that caused it (its own id when it starts a conversation).
    pub causation_id: Uuid,
    /// The aggregate version, for events written by a command processor.
    pub sequence: Option<u64>,
    /// `application/json` or `application/avro`.
    pub content_type: String,
    /// W3C trace context, where tracing is on.
    pub traceparent: Option<String>,
    /// Other `ce_*` extension attributes, kept as they came (without the `ce_` prefix).
    pub extensions: BTreeMap<String, String>,
}

/// Correlation and causation for a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Causation {
    /// The conversation the new message belongs to.
    pub correlation_id: Uuid,
    /// The id of the message that caused it.
    pub causation_id: Uuid,
}

impl Causation {
    /// Continues the conversation of `cause`: same correlation, caused by it.
    pub fn from_cause(cause: &Metadata) -> Self {
        Self {
            correlation_id: cause.correlation_id,
            causation_id: cause.id,
        }
    }
}

impl From<&Metadata> for Causation {
    fn from(cause: &Metadata) -> Self {
        Self::from_cause(cause)
    }
}

impl Metadata {
    /// Metadata for a new message. Without a `causation`, it starts a conversation: correlation
    /// and causation are its own id.
    pub fn new(
        id: Uuid,
        message_type: impl Into<String>,
        source: impl Into<String>,
        subject: impl Into<String>,
        time: DateTime<Utc>,
        causation: Option<Causation>,
    ) -> Self {
        let causation = causation.unwrap_or(Causation {
            correlation_id: id,
            causation_id: id,
        });
        Self {
            id,
            foreign_id: None,
            message_type: message_type.into(),
            source: source.into(),
            // The wire carries microseconds; truncate now so what we send is what is read.
            time: time.trunc_subsecs(6),
            subject: subject.into(),
            correlation_id: causation.correlation_id,
            causation_id: causation.causation_id,
            sequence: None,
            content_type: crate::message::JSON.to_owned(),
            traceparent: None,
            extensions: BTreeMap::new(),
        }
    }

    /// The `ce_id` exactly as it was sent: for an id that is not a UUID in choreo's own form,
    /// the text from the record; otherwise [`Metadata::id`] hyphenated.
    pub fn cloudevents_id(&self) -> String {
        self.foreign_id
            .clone()
            .unwrap_or_else(|| self.id.hyphenated().to_string())
    }
}
