//! Messages on the wire: names (`v{major}.{entity}.{verb}` and the tense rules), the
//! CloudEvents envelope ([`Metadata`]) and content types. The layer below the codecs and the
//! message traits (`crate::event`): it knows neither.

mod content_type;
mod envelope;
mod name;
pub mod topics;

pub use content_type::{AVRO, JSON};
pub(crate) use content_type::{Format, format_of, is_json, media_type};
pub(crate) use envelope::core_headers;
pub use envelope::{
    Causation, Envelope, EnvelopeError, FOREIGN_ID_NAMESPACE, Metadata, Opened, Origin, RawHeader,
    Received, SPEC_VERSION, WireRecord, event_id, headers,
};
pub use name::{IRREGULAR_PAST, Kind, MessageName, NameError, Tense, check, check_topic_name};
