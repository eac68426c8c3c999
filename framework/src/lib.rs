//! # choreo
//!
//! Choreographed, event-sourced microservices on Apache Kafka, with read models in
//! PostgreSQL. Services never call each other: they publish facts (past-tense events such as
//! `v1.user.signedup`), react to facts, and keep their own views, rebuilt from the log.
//!
//! ```text
//!  POST /v1/users ─► CommandBus ──v1.user.signup──► user.commands[p]
//!                                                        │ CommandProcessor: one writer per
//!                                                        ▼ partition, one Kafka tx per batch
//!                     reply (events + offsets) ◄── user.events[p]  the log of record
//!                                                        │  consumer groups: one owner per partition
//!                     ┌──────────────────────────────────┼──────────────────────────┐
//!                     ▼                                  ▼                          ▼
//!              ProjectionRunner                 ReactorRunner                EventHandlers
//!              Postgres view + checkpoint       effect (inbox) + outputs     at-least-once
//!              in one PG transaction            + offsets in one Kafka tx
//! ```
//!
//! ## Layout
//!
//! Layers, each knowing only those below it:
//!
//! - [`error`], [`config`]: the error type; typed settings with `from_env()`.
//! - [`message`]: names (`v{major}.{entity}.{verb}`, tense rules), the [`Event`] and
//!   [`Command`] traits, the CloudEvents envelope ([`Metadata`]).
//! - [`codec`]: payload encodings (JSON, Avro with a schema store), upcasting.
//! - [`kafka`]: topics, the [`Publisher`], the consumer runtime, transactions, dead letters.
//! - three wings that do not know each other: [`aggregate`] (command processing, the command
//!   bus, snapshots), [`projection`] (read models, rebuilds), [`reactor`] (effects and
//!   outputs in Kafka transactions, the inbox); and [`handler`] (plain event handlers).
//! - `service`, `args` (feature `cli`, on by default): the admin commands every service gets
//!   (`projections rebuild`, ...) and the settings as clap arguments (`--brokers`, ...).
//! - `asyncapi` (feature `asyncapi`, on by default): a service's AsyncAPI 3.0 document from
//!   its declarations, and the contract check between two versions of it.
//! - [`postgres`], [`shutdown`], [`failpoint`]: the database, the shutdown signal, fault
//!   drills.
//!
//! ## Guarantees
//!
//! | part | guarantee |
//! |---|---|
//! | Publisher | idempotent producer, acks=all, order per key, id fixed before the first send |
//! | Event handlers | at-least-once, in order per partition; offsets stored only after success |
//! | Command processing | exactly-once inside Kafka; duplicates answered with their first outcome |
//! | Projections | exactly-once effect in Postgres, fenced against zombies; rebuild equals live |
//! | Reactors | outputs exactly-once inside Kafka; outside effects at-least-once with an inbox |
//! | Everything | nothing silently dropped: undecodable or rejected records go to `{group}.dlq` |

#![warn(missing_docs)]

pub mod aggregate;
#[cfg(feature = "cli")]
pub mod args;
#[cfg(feature = "asyncapi")]
pub mod asyncapi;
mod backoff;
pub mod codec;
pub mod config;
pub mod error;
pub mod event;
#[doc(hidden)]
pub mod failpoint;
pub mod handler;
pub mod kafka;
pub mod message;
pub mod postgres;
#[cfg(feature = "cli")]
pub mod service;
pub mod shutdown;

pub use config::{KafkaConfig, PostgresConfig};
pub use error::{Error, Result};
pub use event::{Command, Event, EventSet};
pub use handler::{EventHandlers, HandlerError, UnknownTypes};
pub use kafka::{Delivered, Publisher, TopicAdmin, TopicSpec};
pub use message::{Causation, Envelope, Metadata, Origin, Received, Tense};
pub use projection::{ApplyError, Projection, ProjectionRunner};
pub use shutdown::Shutdown;
pub mod projection;
pub mod reactor;
#[cfg(feature = "testing")]
pub mod testing;
