//! Writing metadata as the headers of the binary-mode binding.

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use uuid::Uuid;

use super::{Causation, Metadata, SPEC_VERSION, headers};

/// The nine attributes every message carries, built from borrowed fields (the publish hot
/// path needs no owned [`Metadata`]); returns the headers and their size in bytes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn core_headers(
    id: Uuid,
    foreign_id: Option<&str>,
    message_type: &str,
    source: &str,
    subject: &str,
    time: DateTime<Utc>,
    content_type: &str,
    causation: Causation,
    capacity: usize,
) -> (OwnedHeaders, usize) {
    let mut out = OwnedHeaders::new_with_capacity(capacity);
    let mut size = 0;
    // UUIDs into stack buffers: no heap string per id.
    let (mut id_buf, mut correlation_buf, mut causation_buf) = (
        Uuid::encode_buffer(),
        Uuid::encode_buffer(),
        Uuid::encode_buffer(),
    );
    let id: &str = match foreign_id {
        Some(text) => text,
        None => id.hyphenated().encode_lower(&mut id_buf),
    };
    let correlation: &str = causation
        .correlation_id
        .hyphenated()
        .encode_lower(&mut correlation_buf);
    let causation: &str = causation
        .causation_id
        .hyphenated()
        .encode_lower(&mut causation_buf);
    let time = time.to_rfc3339_opts(SecondsFormat::Micros, true);
    for (key, value) in [
        (headers::SPEC_VERSION, SPEC_VERSION),
        (headers::ID, id),
        (headers::TYPE, message_type),
        (headers::SOURCE, source),
        (headers::TIME, time.as_str()),
        (headers::SUBJECT, subject),
        (headers::CONTENT_TYPE, content_type),
        (headers::CORRELATION_ID, correlation),
        (headers::CAUSATION_ID, causation),
    ] {
        size += key.len() + value.len();
        out = out.insert(Header {
            key,
            value: Some(value),
        });
    }
    (out, size)
}

impl Metadata {
    /// The Kafka headers of the binary-mode binding.
    pub fn to_headers(&self) -> OwnedHeaders {
        self.to_headers_sized().0
    }

    /// The headers and their size in bytes (keys plus values), computed as they are built.
    pub fn to_headers_sized(&self) -> (OwnedHeaders, usize) {
        let (mut out, mut size) = core_headers(
            self.id,
            self.foreign_id.as_deref(),
            &self.message_type,
            &self.source,
            &self.subject,
            self.time,
            &self.content_type,
            Causation {
                correlation_id: self.correlation_id,
                causation_id: self.causation_id,
            },
            11 + self.extensions.len(),
        );
        let mut add = |out: OwnedHeaders, key: &str, value: &str| {
            size += key.len() + value.len();
            out.insert(Header {
                key,
                value: Some(value),
            })
        };
        if let Some(sequence) = self.sequence {
            let padded = format!("{sequence:020}");
            out = add(out, headers::SEQUENCE, &padded);
        }
        if let Some(trace) = &self.traceparent {
            out = add(out, headers::TRACEPARENT, trace);
        }
        for (name, value) in &self.extensions {
            let key = format!("{}{name}", headers::CE_PREFIX);
            out = add(out, &key, value);
        }
        (out, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::RecordHeaders;

    fn meta() -> Metadata {
        let time = DateTime::parse_from_rfc3339("2026-11-26T10:00:00.123456789Z")
            .expect("time")
            .with_timezone(&Utc);
        Metadata::new(
            Uuid::now_v7(),
            "v1.user.signedup",
            "/user-service",
            "ada@example.com",
            time,
            None,
        )
    }

    /// Name and value of each header, as text.
    fn texts(headers: &OwnedHeaders) -> Vec<(String, String)> {
        RecordHeaders::from_owned(headers)
            .iter()
            .map(|h| {
                (
                    String::from_utf8_lossy(h.name).into_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn the_nine_core_headers_come_first_and_the_size_is_their_bytes() {
        let meta = meta();
        let (headers, size) = meta.to_headers_sized();
        let all = texts(&headers);
        let names: Vec<&str> = all.iter().take(9).map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "ce_specversion",
                "ce_id",
                "ce_type",
                "ce_source",
                "ce_time",
                "ce_subject",
                "content-type",
                "ce_correlationid",
                "ce_causationid"
            ]
        );
        assert_eq!(all.len(), 9, "nothing optional was set");
        assert_eq!(all[4].1, "2026-11-26T10:00:00.123456Z", "microseconds, UTC");
        assert_eq!(all[1].1, meta.id.hyphenated().to_string());
        assert_eq!(
            size,
            all.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
        );
    }

    #[test]
    fn optional_attributes_follow_and_count_toward_the_size() {
        let mut meta = meta();
        meta.sequence = Some(7);
        meta.traceparent = Some("00-trace".into());
        meta.foreign_id = Some("A-1".into());
        meta.extensions.insert("replyto".into(), "r".into());
        let (headers, size) = meta.to_headers_sized();
        let all = texts(&headers);
        assert_eq!(all[1], ("ce_id".into(), "A-1".into()), "the id as it came");
        assert_eq!(
            all[9..],
            [
                ("ce_sequence".into(), "00000000000000000007".into()),
                ("traceparent".into(), "00-trace".into()),
                ("ce_replyto".into(), "r".into()),
            ]
        );
        assert_eq!(
            size,
            all.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
        );
        assert_eq!(texts(&meta.to_headers()), all);
    }
}
