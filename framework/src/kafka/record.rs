//! A consumed record, owned, laid out for the consume hot path.
//!
//! `rdkafka`'s `detach()` allocates for the key, the payload, the topic name and every header
//! (a librdkafka header list copy): some fifteen allocations per record, freed again on
//! another thread. A `Record` takes three: key and payload in one buffer, header names and
//! values in another plus their index; the topic is a shared `Arc<str>`.

use std::sync::Arc;

use rdkafka::Message;
use rdkafka::message::{BorrowedHeaders, OwnedHeaders};

use super::raw_headers;
use crate::message::{RawHeader, WireRecord};

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
    pub fn copy<M>(message: &M, topic: Arc<str>) -> Self
    where
        M: Message,
        M::Headers: AsBorrowedHeaders,
    {
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
            let h = h.borrowed();
            let mut out = RecordHeaders {
                buf: Vec::new(),
                entries: Vec::new(),
            };
            for header in raw_headers::iter(h) {
                out.push(header.name, header.value);
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

    /// The topic it was read from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic, shared.
    pub fn topic_arc(&self) -> &Arc<str> {
        &self.topic
    }

    /// The partition it was read from.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Its offset in that partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The record's timestamp in milliseconds since the epoch, if it has one.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// The key; `None` for a null key.
    pub fn key(&self) -> Option<&[u8]> {
        self.key_len.map(|len| &self.data[..len])
    }

    /// The value; `None` for a null value (a tombstone).
    pub fn payload(&self) -> Option<&[u8]> {
        let start = self.key_len.unwrap_or(0);
        self.payload_len.map(|len| &self.data[start..start + len])
    }

    /// About how many bytes this record holds in memory: key, payload, headers and the
    /// bookkeeping around them. What queues are bounded by, besides their record count.
    pub fn size_in_memory(&self) -> usize {
        let headers = self.headers.as_ref().map_or(0, |h| {
            h.buf.len() + h.entries.len() * std::mem::size_of::<Entry>()
        });
        std::mem::size_of::<Self>() + self.data.len() + headers
    }

    /// The headers; `None` when the record has none.
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

impl RecordHeaders {
    /// How many headers there are.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// The headers in order, names and values as the bytes they came as.
    pub fn iter(&self) -> impl Iterator<Item = RawHeader<'_>> {
        self.entries.iter().map(|entry| RawHeader {
            name: self
                .buf
                .get(entry.name_start..entry.name_end)
                .unwrap_or_default(),
            value: entry
                .value_end
                .map(|end| self.buf.get(entry.name_end..end).unwrap_or_default()),
        })
    }

    /// The value of the last header called `name` (`Some(None)` for a null value).
    pub fn last(&self, name: &str) -> Option<Option<&[u8]>> {
        self.iter()
            .filter(|h| h.name == name.as_bytes())
            .last()
            .map(|h| h.value)
    }

    /// Headers from pairs, for tests and tools.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>) -> Self {
        let mut out = RecordHeaders {
            buf: Vec::new(),
            entries: Vec::new(),
        };
        for (name, value) in pairs {
            out.push(name, value);
        }
        out
    }

    /// A copy of headers choreo built (e.g. [`Metadata::to_headers`](crate::Metadata::to_headers)).
    pub fn from_owned(headers: &OwnedHeaders) -> Self {
        let mut out = RecordHeaders {
            buf: Vec::new(),
            entries: Vec::new(),
        };
        for header in raw_headers::iter(headers.as_borrowed()) {
            out.push(header.name, header.value);
        }
        out
    }

    /// These headers as librdkafka headers, names byte for byte.
    pub fn to_owned_headers(&self) -> OwnedHeaders {
        self.iter().fold(
            OwnedHeaders::new_with_capacity(self.count()),
            |out, header| raw_headers::push(out, header.name, header.value),
        )
    }

    fn push(&mut self, name: &[u8], value: Option<&[u8]>) {
        let name_start = self.buf.len();
        self.buf.extend_from_slice(name);
        let name_end = self.buf.len();
        let value_end = value.map(|v| {
            self.buf.extend_from_slice(v);
            self.buf.len()
        });
        self.entries.push(Entry {
            name_start,
            name_end,
            value_end,
        });
    }
}

/// The header lists a [`Record`] can be copied from (a consumed message's or an owned one's).
pub trait AsBorrowedHeaders {
    /// The headers as librdkafka's borrowed list.
    fn borrowed(&self) -> &BorrowedHeaders;
}

impl AsBorrowedHeaders for BorrowedHeaders {
    fn borrowed(&self) -> &BorrowedHeaders {
        self
    }
}

impl AsBorrowedHeaders for OwnedHeaders {
    fn borrowed(&self) -> &BorrowedHeaders {
        self.as_borrowed()
    }
}

/// A consumed message read in place (no copy), header names as bytes.
impl<M> WireRecord for M
where
    M: Message,
    M::Headers: AsBorrowedHeaders,
{
    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }

    fn value(&self) -> Option<&[u8]> {
        Message::payload(self)
    }

    fn timestamp_millis(&self) -> Option<i64> {
        self.timestamp().to_millis()
    }

    fn raw_headers(&self) -> impl Iterator<Item = RawHeader<'_>> {
        self.headers()
            .into_iter()
            .flat_map(|h| raw_headers::iter(h.borrowed()))
    }
}

impl WireRecord for Record {
    fn key(&self) -> Option<&[u8]> {
        Record::key(self)
    }

    fn value(&self) -> Option<&[u8]> {
        self.payload()
    }

    fn timestamp_millis(&self) -> Option<i64> {
        self.timestamp
    }

    fn raw_headers(&self) -> impl Iterator<Item = RawHeader<'_>> {
        self.headers.iter().flat_map(RecordHeaders::iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedMessage, Timestamp};

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
        let all: Vec<RawHeader<'_>> = h.iter().collect();
        assert_eq!(h.count(), 2);
        assert_eq!(all[0].name, b"ce_id");
        assert_eq!(all[0].value, Some(&b"x"[..]));
        assert_eq!(all[1].value, None);
        let bare = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, None);
        let record = Record::copy(&bare, Arc::from("t"));
        assert!(record.key().is_none() && record.payload().is_none() && record.headers().is_none());
    }
}
