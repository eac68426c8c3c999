//! Event payloads: each event type encoded with its declared codec, and decoded to it.

use crate::codec::{self, AVRO, JSON, avro};
use crate::message::{EnvelopeError, Metadata};

use super::Event;

/// The content type an event type is written with: Avro when it declares a schema.
pub fn content_type_of<E: Event>() -> &'static str {
    if E::AVRO_SCHEMA.is_some() { AVRO } else { JSON }
}

/// Encodes an event with its type's codec; returns the content type and the payload.
pub fn encode_event<E: Event>(event: &E) -> Result<(&'static str, Vec<u8>), EnvelopeError> {
    match E::AVRO_SCHEMA {
        None => Ok((JSON, codec::encode_json(E::NAME, event)?)),
        Some(text) => {
            let schema = avro::declared(E::NAME, text)?;
            Ok((AVRO, avro::encode(E::NAME, &schema, event)?))
        }
    }
}

/// Decodes an event of type `E` according to its `content-type`; an Avro payload is resolved
/// from its writer's schema to `E`'s declared schema.
pub fn decode_event<E: Event>(meta: &Metadata, payload: Option<&[u8]>) -> Result<E, EnvelopeError> {
    codec::decode_with(meta, payload, E::AVRO_SCHEMA)
}
