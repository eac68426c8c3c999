//! The envelope: CloudEvents 1.0 in the Kafka protocol binding, binary mode.
//!
//! Key = subject, value = payload, attributes in `ce_*` headers. Any Kafka client in any
//! language can read and write these records without choreo.

mod attributes;
mod binary;
mod error;
mod foreign_id;
/// Header names of the binding.
pub mod headers;
mod metadata;
mod open;
mod received;
mod structured;
mod write;

pub use error::EnvelopeError;
pub use foreign_id::{FOREIGN_ID_NAMESPACE, event_id};
pub use metadata::{Causation, Metadata};
pub use open::{Opened, RawHeader, WireRecord};
pub use received::{Envelope, Origin, Received};
pub(crate) use write::core_headers;

/// The CloudEvents version we speak.
pub const SPEC_VERSION: &str = "1.0";
