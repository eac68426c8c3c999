//! Payload codecs. JSON via serde today; the content type travels in the `content-type`
//! header so several codecs can share a topic.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::message::{EnvelopeError, Metadata};

/// The JSON content type.
pub const JSON: &str = "application/json";

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

/// Decodes a payload according to its `content-type`.
pub fn decode<T: DeserializeOwned>(
    meta: &Metadata,
    payload: Option<&[u8]>,
) -> Result<T, EnvelopeError> {
    let payload = payload.ok_or(EnvelopeError::MissingPayload)?;
    // `application/json; charset=utf-8` is JSON too.
    let media_type = meta
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    if !media_type.eq_ignore_ascii_case(JSON) {
        return Err(EnvelopeError::ContentType(meta.content_type.clone()));
    }
    serde_json::from_slice(payload).map_err(|e| EnvelopeError::Payload {
        event_type: meta.message_type.clone(),
        content_type: meta.content_type.clone(),
        reason: e.to_string(),
    })
}
