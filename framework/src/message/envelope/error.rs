//! Why a record is not a valid message, and the byte escaping its messages use.

/// Why a record is not a valid choreo message. Each variant names the header or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {header} is invalid: {reason}")]
    BadHeader {
        header: &'static str,
        reason: String,
    },
    /// A header whose name cannot be read; `index` counts from 0 in the record's order.
    #[error("header #{index} (name {name:?}) has a name that is {reason}")]
    BadHeaderName {
        index: usize,
        name: String,
        reason: &'static str,
    },
    #[error("extension attribute {name} is invalid: {reason}")]
    BadExtension { name: String, reason: &'static str },
    #[error("header ce_specversion is {0:?}; only \"1.0\" is supported")]
    SpecVersion(String),
    /// A structured-mode event whose value is not a CloudEvent in JSON.
    #[error("structured-mode CloudEvent (content-type {content_type}) is invalid: {reason}")]
    Structured {
        content_type: String,
        reason: String,
    },
    #[error("the record key {key:?} differs from header ce_subject {subject:?}")]
    KeyMismatch { key: String, subject: String },
    #[error("content-type {0:?} is not supported (application/json and application/avro are)")]
    ContentType(String),
    #[error("the record has no value (payload)")]
    MissingPayload,
    #[error("payload of {event_type} ({content_type}) cannot be decoded: {reason}")]
    Payload {
        event_type: String,
        content_type: String,
        reason: String,
    },
    #[error("payload of {event_type} cannot be encoded: {reason}")]
    Encode { event_type: String, reason: String },
    /// An Avro payload whose writer schema is in no schema store this process can see: usually
    /// a newer writer this reader has not heard of yet. Halts the partition; never a dead
    /// letter (every later record of that writer would follow it there).
    #[error(
        "payload of {event_type} was written with Avro schema {fingerprint:016x}, which is not \
         in the schema store (a newer writer not registered yet?); halting rather than \
         dead-lettering"
    )]
    UnknownSchema {
        event_type: String,
        fingerprint: u64,
    },
    /// The schema an event type declares does not parse: a bug that would fail every record.
    #[error("the Avro schema declared for {event_type} is invalid: {reason}")]
    BadSchema { event_type: String, reason: String },
}

impl EnvelopeError {
    /// Whether the error halts the partition instead of dead-lettering the record: it is not
    /// about this record but about what the reader knows (a schema it lacks, or its own).
    pub fn halts(&self) -> bool {
        matches!(
            self,
            EnvelopeError::UnknownSchema { .. } | EnvelopeError::BadSchema { .. }
        )
    }
}

/// Bytes for an error message: printable ASCII as is, everything else as `\xNN`, cut at 64.
pub(crate) fn escape_bytes(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let shown = bytes.get(..MAX).unwrap_or(bytes).escape_ascii().to_string();
    if bytes.len() > MAX {
        shown + "..."
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_reader_lacks_halts() {
        let halting = [
            EnvelopeError::UnknownSchema {
                event_type: "t".into(),
                fingerprint: 1,
            },
            EnvelopeError::BadSchema {
                event_type: "t".into(),
                reason: "r".into(),
            },
        ];
        assert!(halting.iter().all(EnvelopeError::halts));
        let dead_lettered = [
            EnvelopeError::MissingHeader("ce_id"),
            EnvelopeError::MissingPayload,
            EnvelopeError::ContentType("text/csv".into()),
            EnvelopeError::Payload {
                event_type: "t".into(),
                content_type: "application/avro".into(),
                reason: "r".into(),
            },
        ];
        assert!(!dead_lettered.iter().any(EnvelopeError::halts));
    }

    #[test]
    fn escaped_bytes_are_printable_and_cut_at_64() {
        assert_eq!(escape_bytes(b"ce_id"), "ce_id");
        assert_eq!(escape_bytes(b"a\xff\x00\n"), "a\\xff\\x00\\n");
        assert_eq!(escape_bytes(&[b'x'; 64]), "x".repeat(64));
        assert_eq!(escape_bytes(&[b'x'; 65]), "x".repeat(64) + "...");
    }
}
