//! Reactors (ARCHITECTURE.md, "Reactors"): services that act on events (send the welcome email) and
//! announce what they did, or issue commands, without anyone calling them.
//!
//! A [`Reactor`] declares the event types it reacts to and, per event, does its outside
//! effect and stages its outputs in [`Outputs`]. The [`ReactorRunner`] puts the outputs of a
//! batch and the batch's input offsets in one Kafka transaction, so outputs are exactly-once
//! inside Kafka: a crash before the commit redelivers the inputs and emits the same outputs
//! again (their ids are derived from the cause: UUIDv5 of the cause id, the reactor name and
//! the output's index), a crash after it never repeats them.
//!
//! The outside effect itself cannot join a Kafka transaction: it is at-least-once. The
//! [`Inbox`] makes a redelivery skip an effect that was already done (a row per event id in
//! Postgres, written once the effect succeeded); an effect on Postgres can write the row in
//! its own transaction and so happen exactly once. An effect that succeeds but crashes before
//! its inbox row is written happens twice: give the outside system the event id as an
//! idempotency key where it takes one.

mod inbox;
mod runner;

pub use inbox::Inbox;
pub use runner::{ReactorRunner, ReactorStatus, StartFrom};

use std::future::Future;

use chrono::Utc;
use rdkafka::message::OwnedHeaders;
use uuid::Uuid;

use crate::config::KafkaConfig;
use crate::event::{Command, Event};
use crate::kafka::transaction::TxRecord;
use crate::message::{Causation, Metadata, Received};

/// Acts on events: the effect plus outputs staged in [`Outputs`].
pub trait Reactor: Send + Sync + 'static {
    /// The event types it reacts to; other types in their topics are skipped by declaration.
    type Events: crate::event::EventSet;

    /// `[a-z][a-z0-9-]*`: names the consumer group, the transactional ids
    /// (`{name}-{ordinal}`) and the dead letters (`{name}.dlq`).
    const NAME: &'static str;

    /// Reacts to one event. Outputs staged in `out` are produced in the batch's transaction;
    /// an error discards them (a transient error retries the event, a poison one sends it to
    /// the dead letters).
    fn react(
        &self,
        event: &Received<Self::Events>,
        out: &mut Outputs<'_>,
    ) -> impl Future<Output = Result<(), ReactError>> + Send;
}

/// How reacting to an event failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReactError {
    /// Try again later (the mail server is down, a connection dropped). Never skipped.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// This event can never be handled: it goes to `{reactor}.dlq` and later events go on.
    #[error("poison event: {0:#}")]
    Poison(anyhow::Error),
}

impl From<sqlx::Error> for ReactError {
    /// Database trouble is transient unless it is about the data (SQLSTATE classes 22, 23,
    /// and a value over a limit, 54000/54001).
    fn from(error: sqlx::Error) -> Self {
        let code = crate::postgres::sqlstate(&error).unwrap_or_default();
        if crate::postgres::is_data_error(&code) {
            ReactError::Poison(error.into())
        } else {
            ReactError::Transient(error.into())
        }
    }
}

/// The outputs of reacting to one event, produced in the batch's transaction.
#[derive(Debug)]
pub struct Outputs<'a> {
    reactor: &'static str,
    source: &'a str,
    cause: &'a Metadata,
    config: &'a KafkaConfig,
    records: Vec<TxRecord>,
}

impl<'a> Outputs<'a> {
    /// Borrows what it needs from the runner and the input: nothing is copied per event.
    pub(crate) fn new(
        reactor: &'static str,
        source: &'a str,
        cause: &'a Metadata,
        config: &'a KafkaConfig,
    ) -> Self {
        Self {
            reactor,
            source,
            cause,
            config,
            records: Vec::new(),
        }
    }

    /// The id the next output gets: derived from the cause, so a retry emits the same id.
    fn next_id(&self) -> Uuid {
        let name = format!("{}/{}", self.reactor, self.records.len());
        Uuid::new_v5(&self.cause.id, name.as_bytes())
    }

    fn meta(&self, id: Uuid, message_type: &str, subject: String) -> Metadata {
        let mut meta = Metadata::new(
            id,
            message_type,
            self.source,
            subject,
            Utc::now(),
            Some(Causation::from_cause(self.cause)),
        );
        meta.traceparent.clone_from(&self.cause.traceparent);
        meta
    }

    fn stage(&mut self, topic: String, meta: &Metadata, payload: Vec<u8>) {
        let headers: OwnedHeaders = meta.to_headers();
        self.records.push(TxRecord {
            topic,
            // The producer's partitioner: murmur2 of the key, like every choreo client.
            partition: None,
            key: Some(meta.subject.clone().into_bytes()),
            payload: Some(payload),
            headers,
        });
    }

    /// Announces an event on its topic (`{entity}.events`), caused by the input event.
    /// Returns its id.
    pub fn event<E: Event>(&mut self, event: &E) -> Result<Uuid, ReactError> {
        let () = E::VALID;
        let id = self.next_id();
        let payload =
            crate::codec::encode_json(E::NAME, event).map_err(|e| ReactError::Poison(e.into()))?;
        let meta = self.meta(id, E::NAME, event.subject());
        self.stage(self.config.topic_name(&E::topic()), &meta, payload);
        Ok(id)
    }

    /// Sends a command to its topic (`{entity}.commands`) without waiting for a reply, caused
    /// by the input event. Returns its id (the processor answers a redelivery as a duplicate).
    pub fn command<C: Command>(&mut self, command: &C) -> Result<Uuid, ReactError> {
        let () = C::VALID;
        let id = self.next_id();
        let payload = crate::codec::encode_json(C::NAME, command)
            .map_err(|e| ReactError::Poison(e.into()))?;
        let meta = self.meta(id, C::NAME, command.subject());
        self.stage(self.config.topic_name(&C::topic()), &meta, payload);
        Ok(id)
    }

    /// How many outputs are staged.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub(crate) fn into_records(self) -> Vec<TxRecord> {
        self.records
    }
}

/// Checks a reactor name where it is declared.
pub(crate) fn check_name(name: &str) -> crate::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 60
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(crate::Error::Config(format!(
            "reactor name {name:?} must be [a-z][a-z0-9-]* and at most 60 characters"
        )))
    }
}
