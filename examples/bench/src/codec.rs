//! `codec`: encode + decode of the benchmark event through choreo's codec, Avro (the
//! "framework" side: single-object encoding with `apache-avro`, the writer schema looked up by
//! fingerprint; the writer's schema is the reader's, so the datum is read straight into the
//! struct by choreo's direct decoder) against JSON (the "baseline" side: choreo's serde_json
//! path, what every event used before Avro). In-process, no Kafka: it measures the codec alone.
//! Rates are round trips (one encode plus one decode) per second.
//!
//! A third, unreported timing puts the direct decode beside `apache-avro`'s `Value` path (the
//! one schema evolution still takes), split into the datum decode (bytes to `Value`) and the
//! `Value` to struct step.

use std::hint::black_box;
use std::time::{Duration, Instant};

use choreo::codec::{self, avro};
use choreo::{Event, Metadata};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::data::{Dataset, ReadingRecorded};
use crate::{CpuClock, Round, Side};

const SCHEMA: &str = r#"{"type":"record","name":"ReadingRecorded","namespace":"bench","fields":[
    {"name":"meter_id","type":"string"},
    {"name":"seq","type":"long"},
    {"name":"watts","type":"long"},
    {"name":"site","type":"string"},
    {"name":"note","type":"string"}]}"#;

/// The benchmark event, written as Avro.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReadingRecordedAvro {
    meter_id: String,
    seq: i64,
    watts: i64,
    site: String,
    note: String,
}

impl Event for ReadingRecordedAvro {
    const NAME: &'static str = "v1.reading.recorded";
    const AVRO_SCHEMA: Option<&'static str> = Some(SCHEMA);
    fn subject(&self) -> String {
        self.meter_id.clone()
    }
}

fn meta(content_type: &str) -> Metadata {
    let id = Uuid::now_v7();
    let mut meta = Metadata::new(
        id,
        ReadingRecorded::NAME,
        "/bench",
        "meter-000001",
        chrono::Utc::now(),
        None,
    );
    content_type.clone_into(&mut meta.content_type);
    meta
}

fn avro_event(e: ReadingRecorded) -> ReadingRecordedAvro {
    ReadingRecordedAvro {
        meter_id: e.meter_id,
        seq: e.seq as i64,
        watts: e.watts as i64,
        site: e.site,
        note: e.note,
    }
}

/// One side's round: encode and decode every event, checking what comes back.
fn round(side: Side, events: &[ReadingRecorded]) -> anyhow::Result<(Duration, Duration, usize)> {
    let (mut encode, mut decode, mut bytes) = (Duration::ZERO, Duration::ZERO, 0usize);
    match side {
        Side::Baseline => {
            let meta = meta(codec::JSON);
            for e in events {
                let t = Instant::now();
                let (_, payload) = choreo::event::encode_event(e)?;
                let t2 = Instant::now();
                let back: ReadingRecorded = choreo::event::decode_event(&meta, Some(&payload))?;
                decode += t2.elapsed();
                encode += t2 - t;
                bytes += payload.len();
                anyhow::ensure!(back.seq == e.seq, "JSON round trip changed the event");
                black_box(back);
            }
        }
        Side::Framework => {
            let meta = meta(codec::AVRO);
            let avro: Vec<ReadingRecordedAvro> = events.iter().cloned().map(avro_event).collect();
            for e in &avro {
                let t = Instant::now();
                let (_, payload) = choreo::event::encode_event(e)?;
                let t2 = Instant::now();
                let back: ReadingRecordedAvro = choreo::event::decode_event(&meta, Some(&payload))?;
                decode += t2.elapsed();
                encode += t2 - t;
                bytes += payload.len();
                anyhow::ensure!(back.seq == e.seq, "Avro round trip changed the event");
                black_box(back);
            }
        }
    }
    Ok((encode, decode, bytes / events.len().max(1)))
}

/// Where the Avro decode time goes: the direct decode, and `apache-avro`'s bytes to `Value`
/// and `Value` to struct.
fn avro_split(events: &[ReadingRecorded]) -> anyhow::Result<(Duration, Duration, Duration)> {
    let schema = avro::declared(ReadingRecordedAvro::NAME, SCHEMA)?;
    let (mut direct, mut datum, mut value) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for e in events.iter().cloned().map(avro_event) {
        let payload = avro::encode(ReadingRecordedAvro::NAME, &schema, &e)?;
        let t = Instant::now();
        let back: ReadingRecordedAvro = avro::decode(
            ReadingRecordedAvro::NAME,
            codec::AVRO,
            &payload,
            Some(&schema),
        )?;
        let t1 = Instant::now();
        black_box(back);
        let v = apache_avro_datum(&schema, &payload)?;
        let t2 = Instant::now();
        let back: ReadingRecordedAvro = choreo_from_value(&v)?;
        value += t2.elapsed();
        datum += t2 - t1;
        direct += t1 - t;
        black_box(back);
    }
    Ok((direct, datum, value))
}

/// The same calls the codec makes, through choreo's re-export of `apache-avro`.
fn apache_avro_datum(schema: &avro::AvroSchema, payload: &[u8]) -> anyhow::Result<AvroValue> {
    let (_, mut datum) = avro::split_header(payload).map_err(anyhow::Error::msg)?;
    Ok(avro::apache_avro::from_avro_datum(
        &schema.schema,
        &mut datum,
        None,
    )?)
}

type AvroValue = avro::apache_avro::types::Value;

fn choreo_from_value(v: &AvroValue) -> anyhow::Result<ReadingRecordedAvro> {
    Ok(avro::apache_avro::from_value(v)?)
}

pub fn run(events: u64, rounds: u32) -> anyhow::Result<Vec<Round>> {
    let dataset = Dataset::new()?;
    let per_round = (events / u64::from(rounds)).max(1);
    let batch: Vec<ReadingRecorded> = (0..per_round).map(|i| dataset.event(i)).collect();
    println!(
        "codec: framework = Avro (single-object, writer schema by fingerprint, direct decode), \
         baseline = JSON (serde_json); both through choreo::codec, encode + decode per event, \
         {per_round} events per round, in process (no Kafka)"
    );
    // Warm-up: parse the schema, fill caches.
    round(Side::Framework, &batch[..batch.len().min(1000)])?;
    round(Side::Baseline, &batch[..batch.len().min(1000)])?;
    let mut out = Vec::new();
    for r in 0..rounds {
        for side in Side::order(r) {
            let cpu = CpuClock::start();
            let (encode, decode, bytes) = round(side, &batch)?;
            let result = Round {
                side,
                events: per_round,
                elapsed: encode + decode,
                cpu: cpu.used(),
            };
            result.report(r);
            println!(
                "           encode {:>9.0}/s, decode {:>9.0}/s, {bytes} bytes/payload",
                per_round as f64 / encode.as_secs_f64().max(1e-9),
                per_round as f64 / decode.as_secs_f64().max(1e-9)
            );
            out.push(result);
        }
    }
    let (direct, datum, value) = avro_split(&batch)?;
    let us = |d: Duration| d.as_secs_f64() * 1e6 / per_round as f64;
    println!(
        "  Avro decode: direct {:.2} us/event; apache-avro path (schema evolution): bytes -> \
         Value {:.2} us/event, Value -> struct {:.2} us/event",
        us(direct),
        us(datum),
        us(value)
    );
    Ok(out)
}
