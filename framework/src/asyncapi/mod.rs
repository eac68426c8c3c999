//! A service's asynchronous API as a contract: its [AsyncAPI 3.0] document, built from the
//! declarations the service runs with, and the check that a new version of a document breaks
//! no message of the old one ([`check()`], rules in [`mod@check`]).
//!
//! ```
//! use choreo::asyncapi::AsyncApi;
//!
//! #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
//! struct UserSignedUp { user_id: String, email: String }
//!
//! impl choreo::Event for UserSignedUp {
//!     const NAME: &'static str = "v1.user.signedup";
//!     fn subject(&self) -> String { self.email.clone() }
//! }
//!
//! let document = AsyncApi::new("user-service", "1.0.0")
//!     .event::<UserSignedUp>()
//!     .topic(choreo::TopicSpec::events("user", 6, 3).unwrap())
//!     .sends::<UserSignedUp>("user-service")
//!     .build()
//!     .unwrap();
//! assert_eq!(document["asyncapi"], "3.0.0");
//! assert_eq!(document["channels"]["user_events"]["bindings"]["kafka"]["partitions"], 6);
//! ```
//!
//! Two kinds of declaration go in:
//!
//! - **payload schemas**, one per message type: [`AsyncApi::event`] and [`AsyncApi::command`]
//!   (JSON Schema derived with `schemars`, so the type derives `schemars::JsonSchema`; the
//!   Avro schema instead when the event declares `AVRO_SCHEMA`), [`AsyncApi::avro_event`]
//!   (Avro types that do not derive it);
//! - **what the service does**, from the framework's own declarations: [`AsyncApi::processor`]
//!   (an aggregate's commands, events and replies), [`AsyncApi::command_bus`],
//!   [`AsyncApi::projection`], [`AsyncApi::reactor`], and the plain [`AsyncApi::sends`] /
//!   [`AsyncApi::receives`]; [`AsyncApi::topic`] adds a topic's partitions and replicas.
//!
//! [`AsyncApi::build`] fails when a message some operation uses has no schema.
//!
//! [AsyncAPI 3.0]: https://www.asyncapi.com/docs/reference/specification/v3.0.0

pub mod check;
mod cloudevents;
mod document;
mod schema;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::aggregate::{Aggregate, Outcome, REPLY_TYPE};
use crate::event::{Command, CommandSet, Event, EventSet};
use crate::kafka::TopicSpec;
use crate::message::topics;
use crate::projection::{Projection, projection_id};
use crate::reactor::Reactor;

pub use check::{Problem, check};
pub use cloudevents::{TRAIT as CLOUDEVENTS_TRAIT, message_trait};
pub use schema::{AVRO_SCHEMA_FORMAT, PayloadSchema};

/// The AsyncAPI version of the documents.
pub const ASYNCAPI_VERSION: &str = "3.0.0";
/// The version of the Kafka bindings used in the documents.
pub const KAFKA_BINDING_VERSION: &str = "0.5.0";

/// What a message is, as the document's `x-choreo-kind` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A past-tense fact in `{entity}.events`.
    Event,
    /// A present-tense request in `{entity}.commands`.
    Command,
    /// `v1.command.answered`, in the sender's `{service}.replies`.
    Reply,
}

impl MessageKind {
    /// `event`, `command` or `reply`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Command => "command",
            Self::Reply => "reply",
        }
    }
}

/// Why a document could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the AsyncAPI document of {title} is incomplete:\n  {}", problems.join("\n  "))]
pub struct AsyncApiError {
    /// The document's title (the service).
    pub title: String,
    /// One line per problem.
    pub problems: Vec<String>,
}

/// Where a receiver sends the reply to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReplyTo {
    /// The sender's own `{service}.replies` (the command bus).
    Topic(String),
    /// Whatever the command's `ce_replyto` names (the command processor).
    Header,
}

/// One send or receive of messages on one topic.
#[derive(Debug, Clone)]
struct Operation {
    /// The service part or consumer group doing it.
    actor: String,
    send: bool,
    topic: String,
    messages: Vec<String>,
    /// The consumer group of a receive.
    group: Option<String>,
    reply: Option<ReplyTo>,
}

/// A message type's declaration.
#[derive(Debug, Clone)]
struct Declared {
    kind: MessageKind,
    schema: Result<PayloadSchema, String>,
}

/// The builder of a service's AsyncAPI 3.0 document (see the [module](self) documentation).
#[derive(Debug, Clone)]
pub struct AsyncApi {
    title: String,
    version: String,
    description: Option<String>,
    messages: BTreeMap<String, Declared>,
    topics: BTreeMap<String, TopicSpec>,
    operations: Vec<Operation>,
}

impl AsyncApi {
    /// The document of the service `title` (its name, e.g. `user-service`) at `version`.
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
            description: None,
            messages: BTreeMap::new(),
            topics: BTreeMap::new(),
            operations: Vec::new(),
        }
    }

    /// The document's description (`info.description`, Markdown).
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    fn declare(
        mut self,
        name: &str,
        kind: MessageKind,
        schema: Result<PayloadSchema, String>,
    ) -> Self {
        self.messages
            .insert(name.to_owned(), Declared { kind, schema });
        self
    }

    /// The payload schema of event `E`: its Avro schema if it declares one (that is what is on
    /// the wire), else the JSON Schema `schemars` derives.
    pub fn event<E: Event + schemars::JsonSchema>(self) -> Self {
        let schema = match E::AVRO_SCHEMA {
            Some(text) => PayloadSchema::avro(text),
            None => Ok(PayloadSchema::json::<E>()),
        };
        self.declare(E::name().as_str(), MessageKind::Event, schema)
    }

    /// The payload schema of an Avro event `E` that does not derive `JsonSchema`; building
    /// fails if `E` declares no `AVRO_SCHEMA`.
    pub fn avro_event<E: Event>(self) -> Self {
        let schema = match E::AVRO_SCHEMA {
            Some(text) => PayloadSchema::avro(text),
            None => Err("declared with avro_event but has no AVRO_SCHEMA".to_owned()),
        };
        self.declare(E::name().as_str(), MessageKind::Event, schema)
    }

    /// The payload schema of command `C` (commands are JSON).
    pub fn command<C: Command + schemars::JsonSchema>(self) -> Self {
        self.declare(
            C::name().as_str(),
            MessageKind::Command,
            Ok(PayloadSchema::json::<C>()),
        )
    }

    /// A topic as the service declares it: its partitions and replicas go into the channel's
    /// Kafka binding.
    pub fn topic(mut self, spec: TopicSpec) -> Self {
        self.topics.insert(spec.name.clone(), spec);
        self
    }

    /// Several topics (see [`AsyncApi::topic`]).
    pub fn topics(self, specs: impl IntoIterator<Item = TopicSpec>) -> Self {
        specs.into_iter().fold(self, Self::topic)
    }

    fn operation(mut self, operation: Operation) -> Self {
        self.operations.push(operation);
        self
    }

    /// `actor` (a service or a reactor) writes the events of `S` to their `{entity}.events`.
    pub fn sends<S: EventSet>(mut self, actor: &str) -> Self {
        for (topic, messages) in by_topic(S::names().iter().map(|n| n.as_str().to_owned())) {
            self = self.operation(Operation {
                actor: actor.to_owned(),
                send: true,
                topic,
                messages,
                group: None,
                reply: None,
            });
        }
        self
    }

    /// Consumer group `group` reads the events of `S` (and the older versions they are
    /// upcast from) from their `{entity}.events`.
    pub fn receives<S: EventSet>(mut self, group: &str) -> Self {
        let names = S::names()
            .iter()
            .map(|n| n.as_str().to_owned())
            .chain(S::upcast_names().into_iter().map(str::to_owned))
            .collect::<Vec<_>>();
        for (topic, messages) in by_topic(names) {
            self = self.operation(Operation {
                actor: group.to_owned(),
                send: false,
                topic,
                messages,
                group: Some(group.to_owned()),
                reply: None,
            });
        }
        self
    }

    /// A projection: its group (`{name}.v{version}`) reads its events.
    pub fn projection<P: Projection>(self) -> Self {
        self.receives::<P::Events>(&projection_id::<P>())
    }

    /// A reactor: its group (`R::NAME`) reads its events. What it writes is declared with
    /// [`AsyncApi::sends`] (`Outputs` are not part of the type).
    pub fn reactor<R: Reactor>(self) -> Self {
        self.receives::<R::Events>(R::NAME)
    }

    /// The command processor of `A` in `service` (as `CommandProcessor::new(service, entity,
    /// ..)`): reads `{entity}.commands` in group `service`, writes `A`'s events to
    /// `{entity}.events`, and replies `v1.command.answered` where each command's
    /// `ce_replyto` says.
    pub fn processor<A: Aggregate>(mut self, service: &str, entity: &str) -> Self {
        self = self.with_reply();
        let commands = A::Command::names()
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        self = self.operation(Operation {
            actor: service.to_owned(),
            send: false,
            topic: topics::commands(entity),
            messages: commands,
            group: Some(service.to_owned()),
            reply: Some(ReplyTo::Header),
        });
        let events = A::Event::names()
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        self.operation(Operation {
            actor: service.to_owned(),
            send: true,
            topic: topics::events(entity),
            messages: events,
            group: None,
            reply: None,
        })
    }

    /// A `CommandBus` of `service` sending the commands of `C` to their `{entity}.commands`
    /// and reading the replies from `{service}.replies`.
    pub fn command_bus<C: CommandSet>(mut self, service: &str) -> Self {
        self = self.with_reply();
        let mut by_entity: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in C::names() {
            by_entity
                .entry(topics::commands(name.entity()))
                .or_default()
                .push(name.as_str().to_owned());
        }
        for (topic, messages) in by_entity {
            self = self.operation(Operation {
                actor: service.to_owned(),
                send: true,
                topic,
                messages,
                group: None,
                reply: Some(ReplyTo::Topic(topics::replies(service))),
            });
        }
        self
    }

    fn with_reply(self) -> Self {
        self.declare(
            REPLY_TYPE,
            MessageKind::Reply,
            Ok(PayloadSchema::json::<Outcome>()),
        )
    }

    /// The AsyncAPI 3.0.0 document; an error lists every message an operation uses without
    /// a declared schema and every schema that could not be read.
    pub fn build(&self) -> Result<Value, AsyncApiError> {
        document::render(self)
    }
}

/// Event names grouped by their `{entity}.events` topic (names are checked
/// `v{N}.{entity}.{verb}`).
fn by_topic(names: impl IntoIterator<Item = String>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in names {
        let entity = name.split('.').nth(1).unwrap_or_default().to_owned();
        let messages = out.entry(topics::events(&entity)).or_default();
        if !messages.contains(&name) {
            messages.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests;
