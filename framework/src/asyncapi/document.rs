//! Renders an [`AsyncApi`] declaration as an AsyncAPI 3.0.0 document.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{
    ASYNCAPI_VERSION, AsyncApi, AsyncApiError, KAFKA_BINDING_VERSION, MessageKind, Operation,
    ReplyTo, cloudevents,
};
use crate::aggregate::REPLY_TYPE;
use crate::message::headers;

/// The id of the channel of the replies a processor sends where `ce_replyto` says.
const REPLY_CHANNEL: &str = "replies";

/// An id usable as a key of `channels`, `operations` and `components`: every character but
/// letters, digits, `_` and `-` becomes `_`.
pub fn ident(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn reference(path: &str) -> Value {
    json!({ "$ref": path })
}

/// A channel being assembled: its address and the ids of its messages.
#[derive(Default)]
struct Channel {
    address: Option<String>,
    messages: Vec<String>,
    description: Option<&'static str>,
}

impl Channel {
    fn add(&mut self, messages: &[String]) {
        for m in messages {
            if !self.messages.contains(m) {
                self.messages.push(m.clone());
            }
        }
    }
}

pub fn render(api: &AsyncApi) -> Result<Value, AsyncApiError> {
    let mut problems = Vec::new();
    let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
    let mut operations = Map::new();
    for op in &api.operations {
        let id = ident(&op.topic);
        let channel = channels.entry(id.clone()).or_default();
        channel.address = Some(op.topic.clone());
        channel.add(&op.messages);
        let reply = op.reply.as_ref().map(|to| {
            let (reply_id, address) = match to {
                ReplyTo::Topic(topic) => (ident(topic), Some(topic.clone())),
                ReplyTo::Header => (REPLY_CHANNEL.to_owned(), None),
            };
            let reply_channel = channels.entry(reply_id.clone()).or_default();
            reply_channel.address = address;
            if matches!(to, ReplyTo::Header) {
                reply_channel.description = Some(
                    "The sender's {service}.replies topic, as each command's ce_replyto names it (ce_replypartition: the partition).",
                );
            }
            reply_channel.add(&[REPLY_TYPE.to_owned()]);
            (reply_id, matches!(to, ReplyTo::Header))
        });
        operations.insert(
            ident(&format!(
                "{}.{}.{}",
                op.actor,
                if op.send { "send" } else { "receive" },
                op.topic
            )),
            operation(op, &id, reply),
        );
    }
    let (messages, schemas) = components(api, &channels, &mut problems);
    if !problems.is_empty() {
        return Err(AsyncApiError {
            title: api.title.clone(),
            problems,
        });
    }
    let channels: Map<String, Value> = channels
        .into_iter()
        .map(|(id, channel)| {
            let value = render_channel(api, &channel);
            (id, value)
        })
        .collect();
    let mut info = Map::new();
    info.insert("title".into(), api.title.clone().into());
    info.insert("version".into(), api.version.clone().into());
    if let Some(description) = &api.description {
        info.insert("description".into(), description.clone().into());
    }
    let mut traits = Map::new();
    traits.insert(cloudevents::TRAIT.into(), cloudevents::message_trait());
    let mut components = Map::new();
    components.insert("messages".into(), messages.into());
    if !schemas.is_empty() {
        components.insert("schemas".into(), schemas.into());
    }
    components.insert("messageTraits".into(), traits.into());
    Ok(json!({
        "asyncapi": ASYNCAPI_VERSION,
        "info": info,
        "defaultContentType": crate::message::JSON,
        "channels": channels,
        "operations": operations,
        "components": components,
    }))
}

/// `components.messages` and `components.schemas` for the messages the channels carry; a
/// message without a usable schema is a problem.
fn components(
    api: &AsyncApi,
    channels: &BTreeMap<String, Channel>,
    problems: &mut Vec<String>,
) -> (Map<String, Value>, Map<String, Value>) {
    let mut messages = Map::new();
    let mut schemas = Map::new();
    let used: Vec<&String> = {
        let mut all: Vec<&String> = channels.values().flat_map(|c| &c.messages).collect();
        all.sort();
        all.dedup();
        all
    };
    for name in used {
        let Some(declared) = api.messages.get(name) else {
            problems.push(format!(
                "message {name} is used but has no schema: declare it with .event::<T>(), .avro_event::<T>() or .command::<T>()"
            ));
            continue;
        };
        let schema = match &declared.schema {
            Ok(schema) => schema,
            Err(reason) => {
                problems.push(format!("message {name}: {reason}"));
                continue;
            }
        };
        if let super::PayloadSchema::Json { definitions, .. } = schema {
            for (key, value) in definitions {
                match schemas.get(key) {
                    Some(existing) if existing != value => problems.push(format!(
                        "message {name}: two different types are both named {key} in components.schemas"
                    )),
                    _ => {
                        schemas.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        messages.insert(ident(name), message(name, declared.kind, schema));
    }
    (messages, schemas)
}

fn render_channel(api: &AsyncApi, channel: &Channel) -> Value {
    let messages: Map<String, Value> = channel
        .messages
        .iter()
        .map(|m| {
            let id = ident(m);
            let value = reference(&format!("#/components/messages/{id}"));
            (id, value)
        })
        .collect();
    let mut value = Map::new();
    value.insert(
        "address".into(),
        channel.address.clone().map_or(Value::Null, Value::from),
    );
    value.insert("messages".into(), messages.into());
    if let Some(description) = channel.description {
        value.insert("description".into(), description.into());
    }
    if let Some(topic) = &channel.address {
        let mut kafka = Map::new();
        kafka.insert("topic".into(), topic.clone().into());
        if let Some(spec) = api.topics.get(topic) {
            kafka.insert("partitions".into(), spec.partitions.into());
            kafka.insert("replicas".into(), spec.replication.into());
        }
        kafka.insert("bindingVersion".into(), KAFKA_BINDING_VERSION.into());
        value.insert("bindings".into(), json!({ "kafka": kafka }));
    }
    value.into()
}

fn operation(op: &Operation, channel: &str, reply: Option<(String, bool)>) -> Value {
    let mut value = Map::new();
    value.insert(
        "action".into(),
        if op.send { "send" } else { "receive" }.into(),
    );
    value.insert(
        "channel".into(),
        reference(&format!("#/channels/{channel}")),
    );
    let messages: Vec<Value> = op
        .messages
        .iter()
        .map(|m| reference(&format!("#/channels/{channel}/messages/{}", ident(m))))
        .collect();
    value.insert("messages".into(), messages.into());
    let summary = match (&op.group, op.send) {
        (Some(group), _) => format!("{} reads {} (consumer group {group})", op.actor, op.topic),
        (None, true) => format!("{} writes {}", op.actor, op.topic),
        (None, false) => format!("{} reads {}", op.actor, op.topic),
    };
    value.insert("summary".into(), summary.into());
    if let Some(group) = &op.group {
        value.insert(
            "bindings".into(),
            json!({"kafka": {
                "groupId": {"type": "string", "enum": [group]},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }}),
        );
    }
    if let Some((reply_channel, from_header)) = reply {
        let mut reply = Map::new();
        if from_header {
            reply.insert(
                "address".into(),
                json!({
                    "description": "the topic the command's sender named",
                    "location": format!("$message.header#/{}{}", headers::CE_PREFIX, crate::aggregate::extensions::REPLY_TO),
                }),
            );
        }
        reply.insert(
            "channel".into(),
            reference(&format!("#/channels/{reply_channel}")),
        );
        reply.insert(
            "messages".into(),
            json!([reference(&format!(
                "#/channels/{reply_channel}/messages/{}",
                ident(REPLY_TYPE)
            ))]),
        );
        value.insert("reply".into(), reply.into());
    }
    value.into()
}

fn message(name: &str, kind: MessageKind, schema: &super::PayloadSchema) -> Value {
    let key = match kind {
        MessageKind::Event => {
            "ce_subject: the entity the event is about; picks the partition (murmur2), so one entity's events stay in order"
        }
        MessageKind::Command => {
            "ce_subject: the aggregate the command is for; picks the partition (murmur2) and so its single writer"
        }
        MessageKind::Reply => "ce_subject of the command answered",
    };
    json!({
        "name": name,
        "title": name,
        "contentType": schema.content_type(),
        "traits": [reference(&format!("#/components/messageTraits/{}", cloudevents::TRAIT))],
        "payload": schema.payload(),
        "bindings": {"kafka": {
            "key": {"type": "string", "description": key},
            "bindingVersion": KAFKA_BINDING_VERSION,
        }},
        "x-choreo-kind": kind.as_str(),
    })
}
