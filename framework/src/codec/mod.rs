//! Payload codecs: JSON (serde) and Avro (single-object encoding), chosen per event type, read
//! per record by its `content-type` header, so JSON and Avro events share a topic.
//!
//! - [`avro`]: the single-object format, the process-wide schema table, compatibility checks.
//! - `avro_de`: the direct decoder, an Avro datum straight into a serde type (the hot path).
//! - [`store`]: the schema store, where writers register their schemas before the first write
//!   and readers look up the schemas of fingerprints they do not know.
//! - [`upcast`]: old versions become the newest before user code sees them.

pub mod avro;
mod avro_de;
pub mod store;
pub mod upcast;

pub use store::{SchemaStore, StoredSchema};
pub use upcast::Upcasters;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::message::{EnvelopeError, Event, Metadata};

/// The JSON content type.
pub const JSON: &str = "application/json";
/// The Avro content type (single-object encoding).
pub const AVRO: &str = "application/avro";

/// The codec a payload is in, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Avro,
}

/// The media type of a content type, without its parameters (`application/json; charset=utf-8`
/// is `application/json`).
pub(crate) fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

fn format_of(content_type: &str) -> Option<Format> {
    let media_type = media_type(content_type);
    let lower = media_type.to_ascii_lowercase();
    // `application/vnd.acme.order+json` and `text/json`, as other producers send, are JSON.
    if lower == JSON || lower == "text/json" || (lower.ends_with("+json") && lower.contains('/')) {
        Some(Format::Json)
    } else if lower == AVRO {
        Some(Format::Avro)
    } else {
        None
    }
}

/// Whether a content type is JSON (`application/json`, `text/json`, `…+json`, with parameters).
pub(crate) fn is_json(content_type: &str) -> bool {
    format_of(content_type) == Some(Format::Json)
}

/// Encodes a payload as JSON.
pub fn encode_json<T: Serialize>(
    message_type: &str,
    payload: &T,
) -> Result<Vec<u8>, EnvelopeError> {
    serde_json::to_vec(payload).map_err(|e| EnvelopeError::Encode {
        event_type: message_type.to_owned(),
        reason: e.to_string(),
    })
}

/// The content type an event type is written with: Avro when it declares a schema.
pub fn content_type_of<E: Event>() -> &'static str {
    if E::AVRO_SCHEMA.is_some() { AVRO } else { JSON }
}

/// Encodes an event with its type's codec; returns the content type and the payload.
pub fn encode_event<E: Event>(event: &E) -> Result<(&'static str, Vec<u8>), EnvelopeError> {
    match E::AVRO_SCHEMA {
        None => Ok((JSON, encode_json(E::NAME, event)?)),
        Some(text) => {
            let schema = avro::declared(E::NAME, text)?;
            Ok((AVRO, avro::encode(E::NAME, &schema, event)?))
        }
    }
}

/// Decodes a payload according to its `content-type`, with no reader schema (an Avro payload
/// is read as its writer wrote it and mapped onto `T` by field name).
pub fn decode<T: DeserializeOwned>(
    meta: &Metadata,
    payload: Option<&[u8]>,
) -> Result<T, EnvelopeError> {
    decode_with(meta, payload, None)
}

/// Decodes an event of type `E` according to its `content-type`; an Avro payload is resolved
/// from its writer's schema to `E`'s declared schema.
pub fn decode_event<E: Event>(meta: &Metadata, payload: Option<&[u8]>) -> Result<E, EnvelopeError> {
    decode_with(meta, payload, E::AVRO_SCHEMA)
}

fn decode_with<T: DeserializeOwned>(
    meta: &Metadata,
    payload: Option<&[u8]>,
    reader_schema: Option<&'static str>,
) -> Result<T, EnvelopeError> {
    let payload = payload.ok_or(EnvelopeError::MissingPayload)?;
    let bad = |reason: String| EnvelopeError::Payload {
        event_type: meta.message_type.clone(),
        content_type: meta.content_type.clone(),
        reason,
    };
    match format_of(&meta.content_type) {
        Some(Format::Json) => {
            serde_json::from_slice(payload).map_err(|e| {
                // An Avro payload labelled JSON: say so rather than "expected value at 1:1".
                if payload.starts_with(&avro::MAGIC) {
                    bad(format!(
                        "{e}; the payload starts with the Avro single-object marker C3 01: \
                         its content-type should be {AVRO}"
                    ))
                } else {
                    bad(e.to_string())
                }
            })
        }
        Some(Format::Avro) => {
            let reader = reader_schema
                .map(|text| avro::declared(&meta.message_type, text))
                .transpose()?;
            avro::decode(
                &meta.message_type,
                &meta.content_type,
                payload,
                reader.as_deref(),
            )
        }
        None => Err(EnvelopeError::ContentType(meta.content_type.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_other_producers_send_are_json() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "text/json",
            "application/vnd.acme.order+json",
        ] {
            assert!(is_json(json), "{json}");
        }
        for other in [
            "text/plain",
            "application/avro",
            "+json",
            "application/jsonx",
        ] {
            assert!(!is_json(other), "{other}");
        }
        assert_eq!(format_of("application/avro"), Some(Format::Avro));
    }
}
