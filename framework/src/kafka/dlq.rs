//! Dead letters: `{group}.dlq`, holding the original key, payload and headers plus where the
//! record came from, why it failed and when. A dead letter is written (and acknowledged)
//! before the failed record's offset is stored, so a crash in between redelivers the record
//! rather than losing it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::client::PRODUCER_DEFAULTS;
use super::consumer::Record;
use super::raw_headers;
use super::record::RecordHeaders;
use super::renewing::RenewingProducer;
use crate::config::KafkaConfig;
use crate::error::Result;
use crate::error::{PublishError, PublishErrorKind};
use crate::message::topics;

/// Header names added to a dead letter.
pub mod dlq_headers {
    /// The topic the failed record was read from.
    pub const TOPIC: &str = "choreo_dlq_topic";
    /// Its partition, in decimal.
    pub const PARTITION: &str = "choreo_dlq_partition";
    /// Its offset, in decimal.
    pub const OFFSET: &str = "choreo_dlq_offset";
    /// Why it failed, at most 4 KiB.
    pub const ERROR: &str = "choreo_dlq_error";
    /// When it was dead-lettered, RFC 3339 in UTC with microseconds.
    pub const TIME: &str = "choreo_dlq_time";
    /// The consumer group that failed on it.
    pub const GROUP: &str = "choreo_dlq_group";
    /// On a dead letter cut to fit (the whole one was refused as too large): the original
    /// payload's length in bytes, and its SHA-256 in hex.
    pub const PAYLOAD_BYTES: &str = "choreo_dlq_payload_bytes";
    /// On a dead letter cut to fit: the original payload's SHA-256, in lower-case hex.
    pub const PAYLOAD_SHA256: &str = "choreo_dlq_payload_sha256";
    /// On a dead letter cut to fit: what was left out (`payload` or `payload,headers,key`).
    pub const CUT: &str = "choreo_dlq_cut";
    /// Prefix shared by all of them (stripped again on redrive).
    pub const PREFIX: &str = "choreo_dlq_";
}

/// Longest error text kept in a dead letter.
const MAX_ERROR_BYTES: usize = 4096;
/// How much of a payload a dead letter cut to fit keeps.
const CUT_PAYLOAD_BYTES: usize = 64 * 1024;
/// How much of a key and of a payload a minimal dead letter keeps.
const CUT_KEY_BYTES: usize = 1024;
const MINIMAL_PAYLOAD_BYTES: usize = 4 * 1024;

/// How much of the original record a dead letter keeps. A dead letter is the original plus a
/// few headers, so one made from a record near the size limit can itself be refused as too
/// large: it is then written again cut, never left to block its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Key, payload and headers as they came.
    All,
    /// The original key and headers, the first 64 KiB of the payload, its length and hash.
    CutPayload,
    /// The first 1 KiB of the key and 4 KiB of the payload, its length and hash; no original
    /// headers.
    Minimal,
}

impl Keep {
    /// The form to write after `refused` dead letters of the same record were refused as too
    /// large: whole, then cut, then minimal.
    pub(crate) fn after(refused: u32) -> Keep {
        match refused {
            0 => Keep::All,
            1 => Keep::CutPayload,
            _ => Keep::Minimal,
        }
    }
}

/// The parts of a dead letter: headers, key, payload.
pub(crate) type LetterParts = (OwnedHeaders, Option<Vec<u8>>, Option<Vec<u8>>);

/// A dead letter of `record` in the form `keep`.
pub(crate) fn dead_letter_parts(
    record: &Record,
    keep: Keep,
    error: &str,
    time: DateTime<Utc>,
    group: &str,
) -> LetterParts {
    let origin = (record.topic(), record.partition(), record.offset());
    let original = if keep == Keep::Minimal {
        None
    } else {
        record.headers()
    };
    let mut headers = dead_letter_headers(original, origin, error, time, group);
    let mut key = record.key().map(<[u8]>::to_vec);
    let mut payload = record.payload().map(<[u8]>::to_vec);
    if keep != Keep::All {
        if let Some(whole) = record.payload() {
            use sha2::Digest as _;
            let hash: String = sha2::Sha256::digest(whole)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let length = whole.len().to_string();
            let cut = if keep == Keep::Minimal {
                "payload,headers,key"
            } else {
                "payload"
            };
            for (name, value) in [
                (dlq_headers::PAYLOAD_BYTES, length.as_str()),
                (dlq_headers::PAYLOAD_SHA256, hash.as_str()),
                (dlq_headers::CUT, cut),
            ] {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value),
                });
            }
            let keep_bytes = if keep == Keep::Minimal {
                MINIMAL_PAYLOAD_BYTES
            } else {
                CUT_PAYLOAD_BYTES
            };
            payload = Some(whole.get(..keep_bytes).unwrap_or(whole).to_vec());
        }
        if keep == Keep::Minimal {
            key = record
                .key()
                .map(|k| k.get(..CUT_KEY_BYTES).unwrap_or(k).to_vec());
        }
    }
    (headers, key, payload)
}

/// A dead letter read back from a `{group}.dlq` topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The consumer group that failed on the record; empty if the header is missing.
    pub group: String,
    /// The topic the record was read from.
    pub topic: String,
    /// Its partition; -1 if the header is missing or unreadable.
    pub partition: i32,
    /// Its offset; -1 if the header is missing or unreadable.
    pub offset: i64,
    /// Why it failed.
    pub error: String,
    /// When it was dead-lettered, as written (RFC 3339).
    pub time: String,
    /// The original key (cut to 1 KiB in a minimal dead letter).
    pub key: Option<Vec<u8>>,
    /// The original payload (cut in a dead letter cut to fit).
    pub payload: Option<Vec<u8>>,
    /// The original headers, without the `choreo_dlq_*` ones; names as bytes, as they came.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The other `choreo_dlq_*` headers, by name: what a letter cut to fit says about the
    /// payload it cut (`choreo_dlq_payload_bytes`, `_payload_sha256`, `_cut`).
    pub cut: Vec<(String, String)>,
}

impl DeadLetter {
    /// Reads the origin and reason from a record of a dead-letter topic.
    pub fn from_record(record: &Record) -> Option<Self> {
        let mut letter = DeadLetter {
            group: String::new(),
            topic: String::new(),
            partition: -1,
            offset: -1,
            error: String::new(),
            time: String::new(),
            key: record.key().map(<[u8]>::to_vec),
            payload: record.payload().map(<[u8]>::to_vec),
            headers: Vec::new(),
            cut: Vec::new(),
        };
        let mut found_origin = false;
        for header in record.headers()?.iter() {
            let text = || {
                header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            match std::str::from_utf8(header.name).unwrap_or_default() {
                dlq_headers::TOPIC => {
                    letter.topic = text();
                    found_origin = true;
                }
                dlq_headers::PARTITION => letter.partition = text().parse().unwrap_or(-1),
                dlq_headers::OFFSET => letter.offset = text().parse().unwrap_or(-1),
                dlq_headers::ERROR => letter.error = text(),
                dlq_headers::TIME => letter.time = text(),
                dlq_headers::GROUP => letter.group = text(),
                // Not the original's: a redrive must not carry them onto the new record.
                name if name.starts_with(dlq_headers::PREFIX) => {
                    letter.cut.push((name.to_owned(), text()));
                }
                _ => letter
                    .headers
                    .push((header.name.to_vec(), header.value.map(<[u8]>::to_vec))),
            }
        }
        found_origin.then_some(letter)
    }
}

/// Writes dead letters for one consumer group.
#[derive(Clone)]
pub struct DeadLetterWriter {
    /// Replaced after a fatal error, like the publisher's (a dead letter that cannot be
    /// written halts its partition; a dead producer would halt them all until a restart).
    producer: Arc<RenewingProducer>,
    group: String,
    topic: String,
}

impl fmt::Debug for DeadLetterWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterWriter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetterWriter {
    /// A writer to `{group}.dlq`.
    pub fn new(config: &KafkaConfig, group: &str) -> Result<Self> {
        let producer = Arc::new(RenewingProducer::new(
            config.client_config(PRODUCER_DEFAULTS),
            "dead_letters",
        )?);
        Ok(Self {
            producer,
            group: group.to_owned(),
            topic: topics::dead_letters(group),
        })
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes `record` with the reason and waits for the broker's acknowledgement. A dead
    /// letter refused as too large is written again with its payload cut (its length and
    /// SHA-256 in headers).
    pub async fn write(
        &self,
        record: &Record,
        error: &str,
        time: DateTime<Utc>,
    ) -> Result<(i32, i64), PublishError> {
        let mut refused = 0;
        loop {
            let keep = Keep::after(refused);
            let (headers, key, payload) = dead_letter_parts(record, keep, error, time, &self.group);
            let mut out: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = &key {
                out = out.key(key);
            }
            if let Some(payload) = &payload {
                out = out.payload(payload);
            }
            match self.producer.send(out, Duration::from_secs(30)).await {
                Ok(at) => return Ok(at),
                Err((PublishErrorKind::TooLarge, reason)) if keep != Keep::Minimal => {
                    tracing::warn!(topic = %self.topic, %reason, ?keep, "dead letter too large; writing it cut");
                    refused += 1;
                }
                Err((kind, reason)) => {
                    return Err(PublishError {
                        kind,
                        topic: self.topic.clone(),
                        message_id: uuid::Uuid::nil(),
                        reason,
                    });
                }
            }
        }
    }
}

/// A dead letter's headers: the original ones, then origin topic/partition/offset, the error
/// (at most 4 KiB), the time and the group. Shared by [`DeadLetterWriter`] and the command
/// processor, which writes its dead letters inside its Kafka transaction.
pub(crate) fn dead_letter_headers(
    original: Option<&RecordHeaders>,
    (topic, partition, offset): (&str, i32, i64),
    error: &str,
    time: DateTime<Utc>,
    group: &str,
) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = original {
        for header in original.iter() {
            // Byte for byte: a name that is not UTF-8 is often why the record is here.
            headers = raw_headers::push(headers, header.name, header.value);
        }
    }
    let mut cut = error.len().min(MAX_ERROR_BYTES);
    while !error.is_char_boundary(cut) {
        cut -= 1;
    }
    let partition = partition.to_string();
    let offset = offset.to_string();
    let time = time.to_rfc3339_opts(SecondsFormat::Micros, true);
    for (key, value) in [
        (dlq_headers::TOPIC, topic),
        (dlq_headers::PARTITION, partition.as_str()),
        (dlq_headers::OFFSET, offset.as_str()),
        (dlq_headers::ERROR, &error[..cut]),
        (dlq_headers::TIME, time.as_str()),
        (dlq_headers::GROUP, group),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;

    #[test]
    fn a_cut_letter_keeps_its_cut_headers_apart_from_the_original_ones() {
        let headers = RecordHeaders::from_pairs([
            (dlq_headers::TOPIC.as_bytes(), Some(&b"user.events"[..])),
            (dlq_headers::PARTITION.as_bytes(), Some(b"2")),
            (dlq_headers::OFFSET.as_bytes(), Some(b"41")),
            (dlq_headers::ERROR.as_bytes(), Some(b"too large")),
            (dlq_headers::PAYLOAD_BYTES.as_bytes(), Some(b"2000000")),
            (dlq_headers::CUT.as_bytes(), Some(b"payload")),
            (b"ce_type", Some(b"v1.user.signedup")),
            (b"\xff", Some(b"foreign")),
        ]);
        let message = OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"k".to_vec()),
            "welcome.dlq".into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(headers.to_owned_headers()),
        );
        let letter = DeadLetter::from_record(&Record::copy(&message, Arc::from("welcome.dlq")))
            .expect("a dead letter");
        assert_eq!(
            (letter.topic.as_str(), letter.partition, letter.offset),
            ("user.events", 2, 41)
        );
        assert_eq!(
            letter.headers,
            vec![
                (b"ce_type".to_vec(), Some(b"v1.user.signedup".to_vec())),
                (b"\xff".to_vec(), Some(b"foreign".to_vec())),
            ],
            "only the original's headers, which a redrive carries over"
        );
        assert_eq!(
            letter.cut,
            vec![
                (dlq_headers::PAYLOAD_BYTES.to_owned(), "2000000".to_owned()),
                (dlq_headers::CUT.to_owned(), "payload".to_owned()),
            ]
        );
    }
}
