//! Payload codecs: JSON (serde) and Avro (single-object encoding), chosen per event type, read
//! per record by its `content-type` header, so JSON and Avro events share a topic.
//!
//! - [`avro`]: the single-object format, the process-wide schema table, compatibility checks.
//! - `avro_de`: the direct decoder, an Avro datum straight into a serde type (the hot path).

pub mod avro;
mod avro_de;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::message::{AVRO, JSON};
use crate::message::{EnvelopeError, Format, Metadata, format_of};

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

/// Decodes a payload according to its `content-type`, with no reader schema (an Avro payload
/// is read as its writer wrote it and mapped onto `T` by field name).
pub fn decode<T: DeserializeOwned>(
    meta: &Metadata,
    payload: Option<&[u8]>,
) -> Result<T, EnvelopeError> {
    decode_with(meta, payload, None)
}

/// Decodes a payload according to its `content-type`; an Avro payload is resolved from its
/// writer's schema to `reader_schema` when one is given.
pub fn decode_with<T: DeserializeOwned>(
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
