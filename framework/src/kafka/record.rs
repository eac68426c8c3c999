//! A consumed record, owned, laid out for the consume hot path.
//!
//! `rdkafka`'s `detach()` allocates for the key, the payload, the topic name and every header
//! (a librdkafka header list copy): some fifteen allocations per record, freed again on
//! another thread. A `Record` takes three: key and payload in one buffer, header names and
//! values in another plus their index; the topic is a shared `Arc<str>`.

use std::sync::Arc;

use rdkafka::Message;
use rdkafka::message::{Header, Headers};

/// A consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    /// Key bytes, then payload bytes.
    data: Vec<u8>,
    key_len: Option<usize>,
    payload_len: Option<usize>,
    headers: Option<RecordHeaders>,
}

impl Record {
    /// Copies a record out of librdkafka's buffer; `topic` is shared between records.
    pub fn copy<M: Message>(message: &M, topic: Arc<str>) -> Self {
        let key = message.key();
        let payload = message.payload();
        let mut data =
            Vec::with_capacity(key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len));
        if let Some(key) = key {
            data.extend_from_slice(key);
        }
        if let Some(payload) = payload {
            data.extend_from_slice(payload);
        }
        let headers = message.headers().map(|h| {
            let mut out = RecordHeaders {
                buf: Vec::new(),
                entries: Vec::with_capacity(h.count()),
            };
            for header in h.iter() {
                let name_start = out.buf.len();
                out.buf.extend_from_slice(header.key.as_bytes());
                let name_end = out.buf.len();
                let value = header.value.map(|v| {
                    out.buf.extend_from_slice(v);
                    out.buf.len()
                });
                out.entries.push(Entry {
                    name_start,
                    name_end,
                    value_end: value,
                });
            }
            out
        });
        Self {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            data,
            key_len: key.map(<[u8]>::len),
            payload_len: payload.map(<[u8]>::len),
            headers,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic, shared.
    pub fn topic_arc(&self) -> &Arc<str> {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The record's timestamp in milliseconds since the epoch, if it has one.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    pub fn key(&self) -> Option<&[u8]> {
        self.key_len.map(|len| &self.data[..len])
    }

    pub fn payload(&self) -> Option<&[u8]> {
        let start = self.key_len.unwrap_or(0);
        self.payload_len.map(|len| &self.data[start..start + len])
    }

    pub fn headers(&self) -> Option<&RecordHeaders> {
        self.headers.as_ref()
    }
}

/// The headers of a [`Record`]: names and values in one buffer.
#[derive(Debug, Clone)]
pub struct RecordHeaders {
    buf: Vec<u8>,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    name_start: usize,
    name_end: usize,
    /// End of the value (it starts at `name_end`); `None` for a null value.
    value_end: Option<usize>,
}

impl Headers for RecordHeaders {
    fn count(&self) -> usize {
        self.entries.len()
    }

    fn try_get(&self, idx: usize) -> Option<Header<'_, &[u8]>> {
        let entry = self.entries.get(idx)?;
        // Names came from librdkafka as &str; a failure here would be our own bug.
        let key = std::str::from_utf8(&self.buf[entry.name_start..entry.name_end]).ok()?;
        Some(Header {
            key,
            value: entry.value_end.map(|end| &self.buf[entry.name_end..end]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedHeaders, OwnedMessage, Timestamp};

    #[test]
    fn copies_key_payload_and_headers() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "ce_id",
                value: Some("x"),
            })
            .insert(Header {
                key: "empty",
                value: None::<&[u8]>,
            });
        let message = OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"k".to_vec()),
            "t".into(),
            Timestamp::CreateTime(5),
            2,
            9,
            Some(headers),
        );
        let record = Record::copy(&message, Arc::from("t"));
        assert_eq!(
            (
                record.topic(),
                record.partition(),
                record.offset(),
                record.timestamp()
            ),
            ("t", 2, 9, Some(5))
        );
        assert_eq!(record.key(), Some(&b"k"[..]));
        assert_eq!(record.payload(), Some(&b"{}"[..]));
        let h = record.headers().expect("headers");
        assert_eq!(h.count(), 2);
        assert_eq!(h.get(0).key, "ce_id");
        assert_eq!(h.get(0).value, Some(&b"x"[..]));
        assert_eq!(h.get(1).value, None);
        let bare = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, None);
        let record = Record::copy(&bare, Arc::from("t"));
        assert!(record.key().is_none() && record.payload().is_none() && record.headers().is_none());
    }
}
