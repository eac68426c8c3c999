//! The CloudEvents envelope (Kafka protocol binding, binary mode) as an AsyncAPI message
//! trait: the headers every choreo message carries, named as `message::headers` writes them.

use serde_json::{Map, Value, json};

use crate::aggregate::extensions;
use crate::message::headers;

/// The key of the trait in `components.messageTraits`.
pub const TRAIT: &str = "cloudEvents";

/// The trait every message of a document applies: the CloudEvents headers.
pub fn message_trait() -> Value {
    let string = |description: &str| json!({"type": "string", "description": description});
    let uuid =
        |description: &str| json!({"type": "string", "format": "uuid", "description": description});
    let mut properties = Map::new();
    let mut add = |name: &str, schema: Value| {
        properties.insert(name.to_owned(), schema);
    };
    add(
        headers::SPEC_VERSION,
        json!({"type": "string", "const": crate::message::SPEC_VERSION,
               "description": "CloudEvents specification version"}),
    );
    add(
        headers::ID,
        string("unique id; a UUID for messages choreo writes, fixed before the first send"),
    );
    add(
        headers::TYPE,
        string("the message name, v{major}.{entity}.{verb}: the AsyncAPI message name"),
    );
    add(
        headers::SOURCE,
        string("the emitting service, e.g. /user-service"),
    );
    add(
        headers::TIME,
        json!({"type": "string", "format": "date-time",
               "description": "when it happened (RFC 3339); projections use it, never the clock"}),
    );
    add(
        headers::SUBJECT,
        string("the entity it is about; equals the Kafka key"),
    );
    add(
        headers::CONTENT_TYPE,
        json!({"type": "string", "enum": [crate::message::JSON, crate::message::AVRO],
               "description": "the payload's media type (no ce_ prefix in the Kafka binding)"}),
    );
    add(
        headers::CORRELATION_ID,
        uuid("extension: the conversation the message belongs to"),
    );
    add(
        headers::CAUSATION_ID,
        uuid("extension: the id of the message that caused it (its own id if none)"),
    );
    add(
        headers::SEQUENCE,
        json!({"type": "string", "pattern": "^[0-9]+$",
               "description": "extension: the aggregate version an event made (events written by a command processor)"}),
    );
    add(
        headers::TRACEPARENT,
        string("W3C trace context, where tracing is on"),
    );
    add(
        &format!("{}{}", headers::CE_PREFIX, extensions::REPLY_TO),
        string(
            "extension on commands: the topic the sender reads replies from ({service}.replies)",
        ),
    );
    add(
        &format!("{}{}", headers::CE_PREFIX, extensions::REPLY_PARTITION),
        json!({"type": "string", "pattern": "^[0-9]+$",
               "description": "extension on commands: the partition of that topic the sender reads"}),
    );
    add(
        &format!("{}{}", headers::CE_PREFIX, extensions::DEADLINE),
        json!({"type": "string", "format": "date-time",
               "description": "extension on commands: after this time the command is rejected as expired"}),
    );
    json!({
        "summary": "CloudEvents 1.0, Kafka protocol binding, binary mode",
        "description": "Attributes are headers (ce_ prefix, content-type unprefixed); the payload is the record value. Structured mode (application/cloudevents+json) is read too.",
        "headers": {
            "type": "object",
            "required": [
                headers::SPEC_VERSION, headers::ID, headers::TYPE, headers::SOURCE,
                headers::TIME, headers::SUBJECT, headers::CONTENT_TYPE,
                headers::CORRELATION_ID, headers::CAUSATION_ID
            ],
            "properties": properties,
        },
        "correlationId": {
            "description": "the conversation",
            "location": format!("$message.header#/{}", headers::CORRELATION_ID),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_required_header_is_described() {
        let t = message_trait();
        let properties = t["headers"]["properties"].as_object().expect("properties");
        for name in t["headers"]["required"].as_array().expect("required") {
            let name = name.as_str().expect("str");
            assert!(properties.contains_key(name), "{name}");
        }
        for name in [
            "ce_sequence",
            "ce_replyto",
            "ce_replypartition",
            "ce_deadline",
        ] {
            assert!(properties.contains_key(name), "{name}");
        }
    }
}
