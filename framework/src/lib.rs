//! # choreo
//!
//! Choreographed, event-sourced microservices on Apache Kafka, with read models in
//! PostgreSQL. Services never call each other: they publish facts (past-tense events such as
//! `v1.user.signedup`), react to facts, and keep their own views, rebuilt from the log.
//!
//! ```text
//!  service A ──publish v1.user.signedup──► user.events[p]  (the log of record, kept forever)
//!                                               │  consumer groups: one owner per partition
//!                         ┌─────────────────────┼─────────────────────┐
//!                         ▼                     ▼                     ▼
//!                  EventHandlers          EventHandlers         (projections, reactors:
//!                  group "email"          group "metrics"        later layers)
//! ```
//!
//! ## Layout
//!
//! Layers, each knowing only those below it:
//!
//! - [`error`], [`config`]: the error type; typed settings with `from_env()`.
//! - [`message`]: names (`v{major}.{entity}.{verb}`, tense rules), the [`Event`] and
//!   [`Command`] traits, the CloudEvents envelope ([`Metadata`]).
//! - [`codec`]: payload encodings (JSON).
//! - [`kafka`]: topics, the [`Publisher`], the consumer runtime, dead letters.
//! - [`handler`]: event handlers in consumer groups ([`EventHandlers`]).
//! - [`postgres`]: connecting to the database.
//! - [`shutdown`], [`failpoint`]: the shutdown signal; fault-drill hooks.
//!
//! ## Guarantees
//!
//! | part | guarantee |
//! |---|---|
//! | Publisher | idempotent producer, acks=all, order per key, id fixed before the first send |
//! | Event handlers | at-least-once, in order per partition; offsets stored only after success |
//! | Everything | nothing silently dropped: undecodable or rejected records go to `{group}.dlq` |

pub mod aggregate;
pub mod codec;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod handler;
pub mod kafka;
pub mod message;
pub mod postgres;
pub mod service;
pub mod shutdown;

pub use config::{KafkaConfig, PostgresConfig};
pub use error::{Error, Result};
pub use handler::{EventHandlers, HandlerError, UnknownTypes};
pub use kafka::{Delivered, Publisher, TopicAdmin, TopicSpec};
pub use message::{
    Causation, Command, Envelope, Event, EventSet, Metadata, Origin, Received, Tense,
};
pub use projection::{ApplyError, Projection, ProjectionRunner};
pub use shutdown::Shutdown;
pub mod projection;
pub mod reactor;
#[cfg(feature = "testing")]
pub mod testing;
