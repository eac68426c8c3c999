//! The benchmarks' dataset (README, Benchmarks): ~200-byte JSON events, keys spread over
//! 100k aggregates, and the CloudEvents-like headers a hand-written client would attach.

use choreo::Event;
use chrono::{SecondsFormat, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How many aggregates (distinct keys) the events are spread over.
pub const AGGREGATES: u64 = 100_000;
/// Target size of one JSON payload, in bytes.
pub const PAYLOAD_BYTES: usize = 200;
/// `ce_source` of everything the benchmarks publish, on both sides.
pub const SOURCE: &str = "/bench";

/// A meter reading was recorded: the benchmark event, keyed by the meter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadingRecorded {
    pub meter_id: String,
    pub seq: u64,
    pub watts: u64,
    pub site: String,
    pub note: String,
}

impl Event for ReadingRecorded {
    const NAME: &'static str = "v1.reading.recorded";
    fn subject(&self) -> String {
        self.meter_id.clone()
    }
}

/// Builds event `i` of a run; every side builds its events the same way.
#[derive(Debug, Clone)]
pub struct Dataset {
    note: String,
}

impl Dataset {
    /// Pads the `note` field so that a typical payload is [`PAYLOAD_BYTES`] long.
    pub fn new() -> anyhow::Result<Self> {
        let mut dataset = Self {
            note: String::new(),
        };
        let bare = serde_json::to_vec(&dataset.event(500_000))?.len();
        dataset.note = "x".repeat(PAYLOAD_BYTES.saturating_sub(bare));
        Ok(dataset)
    }

    /// Event `i`. Consecutive events go to scattered aggregates (7919 is prime, so `i * 7919`
    /// runs through all 100k aggregates once per 100k events).
    pub fn event(&self, i: u64) -> ReadingRecorded {
        let aggregate = i.wrapping_mul(7919) % AGGREGATES;
        ReadingRecorded {
            meter_id: format!("meter-{aggregate:06}"),
            seq: i,
            watts: i % 10_000,
            site: format!("site-{:02}", aggregate % 64),
            note: self.note.clone(),
        }
    }
}

/// A record as a hand-written client would build it: the JSON payload, the key, and the 9
/// CloudEvents attribute headers of the binary-mode binding (the same names and values the
/// framework writes).
#[derive(Debug)]
pub struct RawRecord {
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

impl RawRecord {
    pub fn new(event: &ReadingRecorded) -> anyhow::Result<Self> {
        let payload = serde_json::to_vec(event)?;
        let id = Uuid::now_v7().hyphenated().to_string();
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut headers = OwnedHeaders::new_with_capacity(9);
        for (key, value) in [
            ("ce_specversion", "1.0"),
            ("ce_id", id.as_str()),
            ("ce_type", ReadingRecorded::NAME),
            ("ce_source", SOURCE),
            ("ce_time", time.as_str()),
            ("ce_subject", event.meter_id.as_str()),
            ("content-type", "application/json"),
            // A conversation starter: correlation and causation are its own id.
            ("ce_correlationid", id.as_str()),
            ("ce_causationid", id.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        Ok(Self {
            key: event.meter_id.clone(),
            payload,
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_about_200_bytes_and_keys_cover_the_aggregates() {
        let dataset = Dataset::new().expect("dataset");
        for i in [0, 7, 99_999, 500_000, 999_999] {
            let len = serde_json::to_vec(&dataset.event(i)).expect("json").len();
            assert!((190..=210).contains(&len), "event {i}: {len} bytes");
        }
        let keys: std::collections::HashSet<String> =
            (0..AGGREGATES).map(|i| dataset.event(i).meter_id).collect();
        assert_eq!(keys.len() as u64, AGGREGATES);
    }
}
