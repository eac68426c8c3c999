//! The hostile-input property tier: arbitrary records and payloads through the envelope reader
//! and the payload decoders. No Kafka, no Postgres; runs with the other tests.
//!
//! Properties (each a fixed number of cases per run):
//! - `records_*`: arbitrary records (key, value, timestamp, up to 300 headers whose names and
//!   values are arbitrary bytes, duplicates, `ce_*` headers valid and not, structured mode
//!   with arbitrary or near-valid JSON) never panic in `Metadata::open`, and every rejection
//!   has a reason; librdkafka's header list and choreo's `Record` read the same as the bytes.
//! - `*_round_trip`: events and commands choreo writes (arbitrary valid attributes and
//!   payloads; JSON and Avro; binary and structured mode; an older Avro writer schema) open
//!   and decode to the same metadata and payload.
//! - `payloads_*`: arbitrary payloads (JSON-ish, Avro single objects with the right and the
//!   wrong fingerprint, cut short) through `decode`, `decode_event`, the Avro decoder, the
//!   upcasters and the event and command sets never panic and every error has a reason.
//! - `mutated_*`: valid records with bytes flipped, headers dropped, duplicated, reordered,
//!   values truncated never panic, and every rejection has a reason.
//!
//! The seed: each run prints `props: <property>: N cases, seed S` on stderr (not captured by
//! the test harness). To replay a run, set the seed it printed:
//!
//! ```text
//! CHOREO_PROP_SEED=S cargo test -p choreo --features failpoints,testing --test props
//! ```
//!
//! Without `CHOREO_PROP_SEED` each run takes a new random seed. `CHOREO_PROP_CASES=N`
//! overrides the number of cases of every property (for a longer soak). A failure panics with
//! the seed and proptest's shrunk minimal input. A passing property prints how many records
//! opened and how many decodes succeeded, to show the cases get past the first check.
//!
//! Bugs found are kept at the end as `#[ignore = "bug: ..."]` regression tests (run them with
//! `-- --ignored`); until they are fixed the properties step around them, each place saying so.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use choreo::codec;
use choreo::codec::avro::{self, AvroSchema};
use choreo::event::CommandSet;
use choreo::event::{self, Upcasters};
use choreo::kafka::{Record, RecordHeaders};
use choreo::message::{EnvelopeError, RawHeader, WireRecord, event_id, headers as h};
use choreo::{Causation, Command, Event, EventSet, Metadata};
use chrono::{DateTime, SecondsFormat, Utc};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use rdkafka::message::{OwnedMessage, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The runner: a fixed number of cases, a printed, settable seed.

/// The run's seed: `CHOREO_PROP_SEED` (decimal or `0x` hex), else a random one.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| match std::env::var("CHOREO_PROP_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("CHOREO_PROP_SEED={text:?} is not a u64"))
        }
        Err(_) => {
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            hasher.finish()
        }
    })
}

/// SplitMix64: spreads the run's seed and a property's name over a ChaCha seed.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The ChaCha seed of one property: the run's seed and the property's name (FNV-1a), so each
/// property has its own stream and replays alone.
fn rng_for(seed: u64, name: &str) -> TestRng {
    let mut state = name.bytes().fold(0xCBF2_9CE4_8422_2325_u64, |acc, b| {
        (acc ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    }) ^ seed;
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&splitmix(&mut state).to_le_bytes());
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// What a property's cases came to, counted per test thread (proptest runs the cases of one
/// property on its thread), printed when it passes: evidence that the cases reach past the
/// first check.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    opened: usize,
    not_opened: usize,
    decoded: usize,
    not_decoded: usize,
    /// Errors whose reason says the Avro library panicked (caught by choreo).
    caught_panics: usize,
}

thread_local! {
    static TALLY: std::cell::Cell<Tally> = std::cell::Cell::new(Tally::default());
}

fn tally(count: impl FnOnce(&mut Tally)) {
    TALLY.with(|cell| {
        let mut t = cell.get();
        count(&mut t);
        cell.set(t);
    });
}

/// Runs `test` on `cases` values of `strategy`, seeded from the run's seed; panics with the
/// seed and the shrunk input on a failure (a panic inside `test` is a failure too).
fn property<S>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value) -> TestResult)
where
    S: Strategy,
    S::Value: fmt::Debug,
{
    let seed = seed();
    let cases = std::env::var("CHOREO_PROP_CASES")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(cases);
    // Straight to stderr: the harness captures `eprintln!`, not writes to the handle.
    let _ = writeln!(
        std::io::stderr(),
        "props: {name}: {cases} cases, seed {seed} (replay with CHOREO_PROP_SEED={seed})"
    );
    let config = Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        max_shrink_iters: 4096,
        max_local_rejects: 100_000,
        max_global_rejects: cases.saturating_mul(4),
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng_for(seed, name));
    let started = Instant::now();
    TALLY.with(|cell| cell.set(Tally::default()));
    if let Err(failure) = runner.run(&strategy, test) {
        panic!("property {name} failed (replay with CHOREO_PROP_SEED={seed}): {failure}");
    }
    let t = TALLY.with(std::cell::Cell::get);
    let counts = if t.opened + t.not_opened + t.decoded + t.not_decoded > 0 {
        format!(
            " (records opened {}, refused {}; decodes ok {}, refused {}; Avro library panics \
             caught by choreo {})",
            t.opened, t.not_opened, t.decoded, t.not_decoded, t.caught_panics
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        std::io::stderr(),
        "props: {name}: passed in {:.1?}{counts}",
        started.elapsed()
    );
}

type TestResult = Result<(), TestCaseError>;

/// A rejection must say why: a non-empty message, and no empty reason inside it.
fn reasoned(err: &EnvelopeError) -> TestResult {
    let text = err.to_string();
    prop_assert!(!text.trim().is_empty(), "empty message for {:?}", err);
    let reason: Option<&str> = match err {
        EnvelopeError::BadHeader { reason, .. }
        | EnvelopeError::Structured { reason, .. }
        | EnvelopeError::Payload { reason, .. }
        | EnvelopeError::Encode { reason, .. }
        | EnvelopeError::BadSchema { reason, .. } => Some(reason),
        EnvelopeError::BadHeaderName { reason, .. }
        | EnvelopeError::BadExtension { reason, .. } => Some(reason),
        _ => None,
    };
    if let Some(reason) = reason {
        prop_assert!(!reason.trim().is_empty(), "empty reason in {:?}", err);
    }
    if text.contains("panicked") {
        tally(|t| t.caught_panics += 1);
    }
    Ok(())
}

fn reasoned_result<T>(result: &Result<T, EnvelopeError>) -> TestResult {
    match result {
        Ok(_) => {
            tally(|t| t.decoded += 1);
            Ok(())
        }
        Err(err) => {
            tally(|t| t.not_decoded += 1);
            reasoned(err)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A record as it could come off the wire.

#[derive(Clone, PartialEq, Eq)]
struct Wire {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: Option<i64>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl WireRecord for Wire {
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
    fn timestamp_millis(&self) -> Option<i64> {
        self.timestamp
    }
    fn raw_headers(&self) -> impl Iterator<Item = RawHeader<'_>> {
        self.headers.iter().map(|(name, value)| RawHeader {
            name,
            value: value.as_deref(),
        })
    }
}

/// Bytes as `b"..."` with escapes, so a shrunk input reads.
struct Bytes<'a>(&'a [u8]);

impl fmt::Debug for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(Bytes<'_>, Option<Bytes<'_>>)> = self
            .headers
            .iter()
            .map(|(n, v)| (Bytes(n), v.as_deref().map(Bytes)))
            .collect();
        f.debug_struct("Wire")
            .field("key", &self.key.as_deref().map(Bytes))
            .field("value", &self.value.as_deref().map(Bytes))
            .field("timestamp", &self.timestamp)
            .field("headers", &headers)
            .finish()
    }
}

impl Wire {
    fn from_headers(meta: &Metadata, value: Option<Vec<u8>>, timestamp: Option<i64>) -> Self {
        let headers = RecordHeaders::from_owned(&meta.to_headers())
            .iter()
            .map(|h| (h.name.to_vec(), h.value.map(<[u8]>::to_vec)))
            .collect();
        Wire {
            key: Some(meta.subject.as_bytes().to_vec()),
            value,
            timestamp,
            headers,
        }
    }

    /// The same record as librdkafka holds it (headers written through choreo's byte-name path).
    fn to_message(&self) -> OwnedMessage {
        let headers = RecordHeaders::from_pairs(
            self.headers
                .iter()
                .map(|(name, value)| (name.as_slice(), value.as_deref())),
        );
        OwnedMessage::new(
            self.value.clone(),
            self.key.clone(),
            "props.events".into(),
            self.timestamp
                .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
            0,
            0,
            Some(headers.to_owned_headers()),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The message types under test.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Mood {
    Calm,
    Loud(String),
    Odd { n: i64, tag: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Recorded {
    subject: String,
    amount: i64,
    note: Option<String>,
    tags: Vec<String>,
    attrs: BTreeMap<String, String>,
    mood: Mood,
}
impl Event for Recorded {
    const NAME: &'static str = "v1.prop.recorded";
    fn subject(&self) -> String {
        self.subject.clone()
    }
}

const MEASURED_SCHEMA: &str = r#"{"type":"record","name":"Measured","namespace":"test.prop","fields":[
    {"name":"subject","type":"string"},
    {"name":"count","type":"long"},
    {"name":"small","type":"int"},
    {"name":"flag","type":"boolean"},
    {"name":"ratio","type":"double"},
    {"name":"note","type":["null","string"]},
    {"name":"tags","type":{"type":"array","items":"string"}},
    {"name":"attrs","type":{"type":"map","values":"long"}},
    {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["Alpha","Beta","Gamma"]}},
    {"name":"inner","type":{"type":"record","name":"Inner","fields":[
        {"name":"label","type":"string"},{"name":"n","type":"long"}]}},
    {"name":"extra","type":"string","default":"none"}]}"#;

/// The same record before `extra` was added: an older writer.
const MEASURED_OLD_SCHEMA: &str = r#"{"type":"record","name":"Measured","namespace":"test.prop","fields":[
    {"name":"subject","type":"string"},
    {"name":"count","type":"long"},
    {"name":"small","type":"int"},
    {"name":"flag","type":"boolean"},
    {"name":"ratio","type":"double"},
    {"name":"note","type":["null","string"]},
    {"name":"tags","type":{"type":"array","items":"string"}},
    {"name":"attrs","type":{"type":"map","values":"long"}},
    {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["Alpha","Beta","Gamma"]}},
    {"name":"inner","type":{"type":"record","name":"Inner","fields":[
        {"name":"label","type":"string"},{"name":"n","type":"long"}]}}]}"#;

const MEASURED_V1_SCHEMA: &str = r#"{"type":"record","name":"MeasuredV1","namespace":"test.prop","fields":[
    {"name":"subject","type":"string"},{"name":"count","type":"long"}]}"#;

/// Logical types the direct decoder leaves to `apache-avro` (its shape check runs first).
const EXOTIC_SCHEMA: &str = r#"{"type":"record","name":"Exotic","namespace":"test.prop","fields":[
    {"name":"id","type":{"type":"string","logicalType":"uuid"}},
    {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}},
    {"name":"span","type":{"type":"fixed","name":"Span","size":12,"logicalType":"duration"}},
    {"name":"hash","type":{"type":"fixed","name":"Hash","size":4}},
    {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}},
    {"name":"day","type":{"type":"int","logicalType":"date"}},
    {"name":"any","type":["null","boolean","int","float","bytes","string"]}]}"#;

/// A recursive schema (a linked list): depth is bounded by the payload alone.
const CHAIN_SCHEMA: &str = r#"{"type":"record","name":"Node","namespace":"test.prop","fields":[
    {"name":"v","type":"long"},
    {"name":"next","type":["null","Node"]},
    {"name":"w","type":"long","default":0}]}"#;
const CHAIN_OLD_SCHEMA: &str = r#"{"type":"record","name":"Node","namespace":"test.prop","fields":[
    {"name":"v","type":"long"},
    {"name":"next","type":["null","Node"]}]}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    Alpha,
    Beta,
    Gamma,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Inner {
    label: String,
    n: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Measured {
    subject: String,
    count: i64,
    small: i32,
    flag: bool,
    ratio: f64,
    note: Option<String>,
    tags: Vec<String>,
    attrs: BTreeMap<String, i64>,
    kind: Kind,
    inner: Inner,
    extra: String,
}
impl Event for Measured {
    const NAME: &'static str = "v2.prop.measured";
    const AVRO_SCHEMA: Option<&'static str> = Some(MEASURED_SCHEMA);
    fn subject(&self) -> String {
        self.subject.clone()
    }
    fn upcasters() -> Upcasters<Self> {
        Upcasters::new().from(upcast_v1)
    }
}

/// `Measured` by a writer with the older schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MeasuredOld {
    subject: String,
    count: i64,
    small: i32,
    flag: bool,
    ratio: f64,
    note: Option<String>,
    tags: Vec<String>,
    attrs: BTreeMap<String, i64>,
    kind: Kind,
    inner: Inner,
}
impl Event for MeasuredOld {
    const NAME: &'static str = "v2.prop.measured";
    const AVRO_SCHEMA: Option<&'static str> = Some(MEASURED_OLD_SCHEMA);
    fn subject(&self) -> String {
        self.subject.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MeasuredV1 {
    subject: String,
    count: i64,
}
impl Event for MeasuredV1 {
    const NAME: &'static str = "v1.prop.measured";
    const AVRO_SCHEMA: Option<&'static str> = Some(MEASURED_V1_SCHEMA);
    fn subject(&self) -> String {
        self.subject.clone()
    }
    fn upcasters() -> Upcasters<Self> {
        Upcasters::new().from(|old: Sampled| MeasuredV1 {
            subject: old.subject,
            count: old.samples.len() as i64,
        })
    }
}

/// The oldest version, in JSON: `Sampled` -> `MeasuredV1` -> `Measured`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Sampled {
    subject: String,
    samples: Vec<i64>,
}
impl Event for Sampled {
    const NAME: &'static str = "v1.prop.sampled";
    fn subject(&self) -> String {
        self.subject.clone()
    }
}

choreo::event_set! {
    #[derive(Debug, Clone, PartialEq)]
    enum PropEvent {
        Recorded(Recorded),
        Measured(Measured),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Book {
    subject: String,
    amount: i64,
    memo: Option<String>,
}
impl Command for Book {
    const NAME: &'static str = "v1.prop.book";
    fn subject(&self) -> String {
        self.subject.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cancel {
    subject: String,
    reasons: Vec<String>,
}
impl Command for Cancel {
    const NAME: &'static str = "v1.prop.cancel";
    fn subject(&self) -> String {
        self.subject.clone()
    }
}

choreo::command_set! {
    #[derive(Debug, Clone, PartialEq)]
    enum PropCommand {
        Book(Book),
        Cancel(Cancel),
    }
}

/// Every schema the tier reads, known to the process (as the schema store would make them).
fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let declare = |name: &str, text: &'static str| {
            avro::declared(name, text).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        Schemas {
            measured: declare(Measured::NAME, MEASURED_SCHEMA),
            measured_old: declare(MeasuredOld::NAME, MEASURED_OLD_SCHEMA),
            measured_v1: declare(MeasuredV1::NAME, MEASURED_V1_SCHEMA),
            exotic: declare("v1.prop.exotic", EXOTIC_SCHEMA),
            chain: declare("v2.prop.chained", CHAIN_SCHEMA),
            chain_old: declare("v1.prop.chained", CHAIN_OLD_SCHEMA),
        }
    })
}

struct Schemas {
    measured: Arc<AvroSchema>,
    measured_old: Arc<AvroSchema>,
    measured_v1: Arc<AvroSchema>,
    exotic: Arc<AvroSchema>,
    chain: Arc<AvroSchema>,
    chain_old: Arc<AvroSchema>,
}

impl Schemas {
    fn all(&self) -> [&Arc<AvroSchema>; 6] {
        [
            &self.measured,
            &self.measured_old,
            &self.measured_v1,
            &self.exotic,
            &self.chain,
            &self.chain_old,
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies.

/// Any text, control characters and NUL included.
fn text(max: usize) -> BoxedStrategy<String> {
    proptest::string::string_regex(&format!("(?s).{{0,{max}}}"))
        .expect("regex")
        .boxed()
}

fn nonempty_text(max: usize) -> BoxedStrategy<String> {
    proptest::string::string_regex(&format!("(?s).{{1,{max}}}"))
        .expect("regex")
        .boxed()
}

fn bytes(max: usize) -> BoxedStrategy<Vec<u8>> {
    vec(any::<u8>(), 0..=max).boxed()
}

/// Attribute names either mode reads itself, which an extension must not be called.
const RESERVED: [&str; 14] = [
    "specversion",
    "id",
    "type",
    "source",
    "time",
    "subject",
    "datacontenttype",
    "correlationid",
    "causationid",
    "sequence",
    "traceparent",
    "data",
    "dataschema",
    "data_base64",
];

/// An extension name as CloudEvents allows: lower-case letters and digits, at most 20.
fn extension_name() -> BoxedStrategy<String> {
    "[a-z0-9]{1,20}"
        .prop_filter("reserved attribute", |n| !RESERVED.contains(&n.as_str()))
        .boxed()
}

/// Years 0 to 9999: what RFC 3339 can write (chrono writes later and earlier years as
/// `+10000-...` and `-0001-...`, which no RFC 3339 reader takes back).
const MIN_MICROS: i64 = -62_167_219_200_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;

fn time() -> BoxedStrategy<DateTime<Utc>> {
    prop_oneof![
        4 => MIN_MICROS..=MAX_MICROS,
        1 => Just(0i64),
        1 => 1_700_000_000_000_000i64..1_900_000_000_000_000,
    ]
    .prop_map(|us| DateTime::from_timestamp_micros(us).expect("in range"))
    .boxed()
}

/// A `ce_id` as other producers send it; `None` is choreo's own UUID.
fn foreign_id() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        3 => Just(None),
        2 => nonempty_text(40).prop_map(Some),
        1 => any::<u128>().prop_map(|u| Some(Uuid::from_u128(u).simple().to_string())),
        1 => any::<u128>().prop_map(|u| Some(Uuid::from_u128(u).braced().to_string())),
        1 => any::<u128>().prop_map(|u| Some(Uuid::from_u128(u).hyphenated().to_string().to_uppercase())),
        1 => any::<u128>().prop_map(|u| Some(Uuid::from_u128(u).urn().to_string())),
    ]
    .boxed()
}

/// Valid metadata: what choreo writes (or could, for a foreign id it keeps).
fn metadata(
    message_type: BoxedStrategy<String>,
    content_type: BoxedStrategy<String>,
) -> BoxedStrategy<Metadata> {
    (
        (
            any::<u128>(),
            foreign_id(),
            message_type,
            nonempty_text(32),
            time(),
        ),
        (
            text(32),
            any::<u128>(),
            any::<u128>(),
            option::of(any::<u64>()),
            content_type,
        ),
        (
            option::of(text(60)),
            btree_map(extension_name(), text(24), 0..6),
        ),
    )
        .prop_map(
            |(
                (id, foreign, message_type, source, time),
                (subject, correlation, causation, sequence, content_type),
                (traceparent, extensions),
            )| {
                let mut meta = Metadata::new(
                    Uuid::from_u128(id),
                    message_type,
                    source,
                    subject,
                    time,
                    Some(Causation {
                        correlation_id: Uuid::from_u128(correlation),
                        causation_id: Uuid::from_u128(causation),
                    }),
                );
                if let Some(text) = foreign {
                    meta.id = event_id(&meta.source, &text);
                    meta.foreign_id = (meta.id.hyphenated().to_string() != text).then_some(text);
                }
                meta.sequence = sequence;
                meta.content_type = content_type;
                meta.traceparent = traceparent;
                meta.extensions = extensions;
                meta
            },
        )
        .boxed()
}

fn any_type() -> BoxedStrategy<String> {
    prop_oneof![
        select(vec![
            Recorded::NAME,
            Measured::NAME,
            MeasuredV1::NAME,
            Sampled::NAME,
            Book::NAME,
            Cancel::NAME,
            "v1.prop.exotic",
            "v2.prop.chained",
            "com.example.order.placed",
        ])
        .prop_map(str::to_owned),
        nonempty_text(24),
    ]
    .boxed()
}

fn any_content_type() -> BoxedStrategy<String> {
    prop_oneof![
        4 => select(vec![
            codec::JSON,
            codec::AVRO,
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "text/json",
            "application/vnd.acme.order+json",
            "+json",
            "Application/Avro",
            "application/avro; x=1",
            "text/plain",
            "application/octet-stream",
            ";",
        ])
        .prop_map(str::to_owned),
        1 => nonempty_text(30),
    ]
    .boxed()
}

fn recorded() -> BoxedStrategy<Recorded> {
    let mood = prop_oneof![
        Just(Mood::Calm),
        text(12).prop_map(Mood::Loud),
        (any::<i64>(), option::of(text(8))).prop_map(|(n, tag)| Mood::Odd { n, tag }),
    ];
    (
        text(24),
        any::<i64>(),
        option::of(text(24)),
        vec(text(8), 0..5),
        btree_map(text(8), text(8), 0..4),
        mood,
    )
        .prop_map(|(subject, amount, note, tags, attrs, mood)| Recorded {
            subject,
            amount,
            note,
            tags,
            attrs,
            mood,
        })
        .boxed()
}

fn finite() -> BoxedStrategy<f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        Just(0.0),
        Just(-0.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
    ]
    .boxed()
}

fn measured_old() -> BoxedStrategy<MeasuredOld> {
    let kind = select(vec![Kind::Alpha, Kind::Beta, Kind::Gamma]);
    (
        (
            text(24),
            any::<i64>(),
            any::<i32>(),
            any::<bool>(),
            finite(),
        ),
        (
            option::of(text(24)),
            vec(text(8), 0..5),
            btree_map(text(8), any::<i64>(), 0..4),
            kind,
            (text(8), any::<i64>()),
        ),
    )
        .prop_map(
            |((subject, count, small, flag, ratio), (note, tags, attrs, kind, (label, n)))| {
                MeasuredOld {
                    subject,
                    count,
                    small,
                    flag,
                    ratio,
                    note,
                    tags,
                    attrs,
                    kind,
                    inner: Inner { label, n },
                }
            },
        )
        .boxed()
}

fn measured() -> BoxedStrategy<Measured> {
    (measured_old(), text(12))
        .prop_map(|(old, extra)| Measured {
            subject: old.subject,
            count: old.count,
            small: old.small,
            flag: old.flag,
            ratio: old.ratio,
            note: old.note,
            tags: old.tags,
            attrs: old.attrs,
            kind: old.kind,
            inner: old.inner,
            extra,
        })
        .boxed()
}

fn prop_event() -> BoxedStrategy<PropEvent> {
    prop_oneof![
        recorded().prop_map(PropEvent::Recorded),
        measured().prop_map(PropEvent::Measured),
    ]
    .boxed()
}

fn prop_command() -> BoxedStrategy<PropCommand> {
    prop_oneof![
        (text(24), any::<i64>(), option::of(text(16))).prop_map(|(subject, amount, memo)| {
            PropCommand::Book(Book {
                subject,
                amount,
                memo,
            })
        }),
        (text(24), vec(text(12), 0..4))
            .prop_map(|(subject, reasons)| PropCommand::Cancel(Cancel { subject, reasons })),
    ]
    .boxed()
}

/// Arbitrary JSON, nested a few levels.
fn json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite().prop_map(Value::from),
        text(16).prop_map(Value::String),
        select(vec![
            "1.0",
            "0.3",
            "",
            "2026-11-26T10:00:00Z",
            "not a time",
            "0190a0b0-0000-7000-8000-000000000001",
            "aGk=",
            "%%",
            "application/json",
            "application/avro",
            "text/plain",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(text(8), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Header names: the binding's, near misses, `ce_*` extensions, arbitrary bytes.
fn header_name() -> BoxedStrategy<Vec<u8>> {
    const KNOWN: [&str; 11] = [
        h::SPEC_VERSION,
        h::ID,
        h::TYPE,
        h::SOURCE,
        h::TIME,
        h::SUBJECT,
        h::CORRELATION_ID,
        h::CAUSATION_ID,
        h::SEQUENCE,
        h::CONTENT_TYPE,
        h::TRACEPARENT,
    ];
    prop_oneof![
        4 => select(KNOWN.to_vec()).prop_map(|n| n.as_bytes().to_vec()),
        2 => "ce_[a-z0-9_]{0,10}".prop_map(String::into_bytes),
        2 => bytes(24),
        1 => (select(KNOWN.to_vec()), any::<Index>(), any::<u8>()).prop_map(|(n, i, b)| {
            let mut name = n.as_bytes().to_vec();
            let at = i.index(name.len());
            name[at] = b;
            name
        }),
        1 => select(KNOWN.to_vec()).prop_map(|n| n.to_uppercase().into_bytes()),
        1 => Just(b"ce_".to_vec()),
        1 => Just(Vec::new()),
        1 => Just(b"\xff\xfe".to_vec()),
    ]
    .boxed()
}

/// Header values: plausible attribute values, arbitrary text and bytes, null.
fn header_value() -> BoxedStrategy<Option<Vec<u8>>> {
    let plausible = prop_oneof![
        select(vec![
            "1.0",
            "1.0 ",
            "0.3",
            "",
            "application/json",
            "application/avro",
            "application/cloudevents+json",
            "APPLICATION/CLOUDEVENTS+JSON; charset=utf-8",
            "application/cloudevents-batch+json",
            "application/cloudevents+avro",
            "application/cloudevents",
            "application/cloudeventsx",
            "text/plain",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:00:00.123456+14:00",
            "2026-13-45T99:99:99Z",
            "+10000-01-01T00:00:00Z",
            "-1",
            "18446744073709551616",
            "00000000000000000042",
            "v1.prop.recorded",
            "v2.prop.measured",
        ])
        .prop_map(str::to_owned),
        any::<u128>().prop_map(|u| Uuid::from_u128(u).to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        time().prop_map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, false)),
        text(40),
    ];
    prop_oneof![
        4 => plausible.prop_map(|s| Some(s.into_bytes())),
        2 => bytes(48).prop_map(Some),
        1 => Just(None),
    ]
    .boxed()
}

fn header() -> BoxedStrategy<(Vec<u8>, Option<Vec<u8>>)> {
    (header_name(), header_value()).boxed()
}

fn timestamp() -> BoxedStrategy<Option<i64>> {
    prop_oneof![
        3 => any::<i64>().prop_map(Some),
        1 => Just(None),
        1 => select(vec![-1i64, 0, i64::MIN, i64::MAX, 8_210_298_412_799_999, 8_210_298_412_800_000])
            .prop_map(Some),
    ]
    .boxed()
}

/// A valid event's headers and payload, then `extra` headers mixed in at random places.
fn near_valid_binary() -> BoxedStrategy<Wire> {
    (
        prop_event(),
        metadata(any_type(), any_content_type()),
        prop_oneof![
            2 => Just(Vec::new()),
            2 => vec((any::<Index>(), header()), 1..3),
            1 => vec((any::<Index>(), header()), 3..12),
        ],
        prop_oneof![3 => Just(None), 1 => bytes(64).prop_map(Some)],
        prop_oneof![3 => Just(None), 1 => option::of(bytes(16)).prop_map(Some)],
        timestamp(),
    )
        .prop_map(|(event, meta, extra, value, key, timestamp)| {
            let payload = value.or_else(|| event.encode().ok());
            let mut wire = Wire::from_headers(&meta, payload, timestamp);
            for (at, header) in extra {
                let at = at.index(wire.headers.len() + 1);
                wire.headers.insert(at, header);
            }
            if let Some(key) = key {
                wire.key = key;
            }
            wire
        })
        .boxed()
}

fn structured_content_type() -> BoxedStrategy<Vec<u8>> {
    let json_format = select(vec![
        "application/cloudevents+json",
        "application/cloudevents+json; charset=UTF-8",
        "Application/CloudEvents+JSON",
        " application/cloudevents+json ;",
    ]);
    let other_format = select(vec![
        "application/cloudevents+avro",
        "application/cloudevents-batch+json",
        "application/cloudevents",
        "application/cloudeventsjson",
    ]);
    prop_oneof![6 => json_format, 1 => other_format]
        .prop_map(|s| s.as_bytes().to_vec())
        .boxed()
}

/// A structured-mode CloudEvent (JSON event format) for `meta` with `data`.
fn structured_event(meta: &Metadata, data: Option<&[u8]>, sequence_as_text: bool) -> Value {
    let mut event = serde_json::Map::new();
    let mut put = |name: &str, value: Value| {
        event.insert(name.to_owned(), value);
    };
    put("specversion", "1.0".into());
    put("id", meta.cloudevents_id().into());
    put("type", meta.message_type.clone().into());
    put("source", meta.source.clone().into());
    put(
        "time",
        meta.time
            .to_rfc3339_opts(SecondsFormat::Micros, true)
            .into(),
    );
    put("subject", meta.subject.clone().into());
    put("datacontenttype", meta.content_type.clone().into());
    put("correlationid", meta.correlation_id.to_string().into());
    put("causationid", meta.causation_id.to_string().into());
    if let Some(sequence) = meta.sequence {
        put(
            "sequence",
            if sequence_as_text {
                sequence.to_string().into()
            } else {
                sequence.into()
            },
        );
    }
    if let Some(trace) = &meta.traceparent {
        put("traceparent", trace.clone().into());
    }
    for (name, value) in &meta.extensions {
        put(name, value.clone().into());
    }
    if let Some(data) = data {
        if meta.content_type == codec::JSON {
            let value: Value = serde_json::from_slice(data).expect("JSON payload");
            put("data", value);
        } else {
            use base64::Engine as _;
            put(
                "data_base64",
                base64::engine::general_purpose::STANDARD
                    .encode(data)
                    .into(),
            );
        }
    }
    Value::Object(event)
}

/// Member names of a structured event: attributes, data members, extensions, anything.
fn member_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(RESERVED.to_vec()).prop_map(str::to_owned),
        1 => extension_name(),
        1 => text(8),
    ]
    .boxed()
}

/// An edit of a structured event's members.
#[derive(Debug, Clone)]
enum JsonEdit {
    Remove(Index),
    Set(String, Value),
}

fn json_edit() -> BoxedStrategy<JsonEdit> {
    prop_oneof![
        any::<Index>().prop_map(JsonEdit::Remove),
        (member_name(), json()).prop_map(|(name, value)| JsonEdit::Set(name, value)),
    ]
    .boxed()
}

fn apply_json_edit(event: &mut Value, edit: JsonEdit) {
    let Value::Object(members) = event else {
        return;
    };
    match edit {
        JsonEdit::Remove(at) if !members.is_empty() => {
            let name = members
                .keys()
                .nth(at.index(members.len()))
                .cloned()
                .unwrap_or_default();
            members.remove(&name);
        }
        JsonEdit::Remove(_) => {}
        JsonEdit::Set(name, value) => {
            members.insert(name, value);
        }
    }
}

/// A valid event in structured mode: (metadata, the event, the JSON event format).
fn valid_structured() -> BoxedStrategy<(Metadata, PropEvent, Value)> {
    (
        prop_event(),
        metadata(any_type(), Just(String::new()).boxed()),
        any::<bool>(),
    )
        .prop_map(|(event, mut meta, sequence_as_text)| {
            meta.message_type = event.message_type().to_owned();
            meta.subject = event.subject_of();
            meta.content_type = event.content_type().to_owned();
            let data = event.encode().expect("encodes");
            let value = structured_event(&meta, Some(&data), sequence_as_text);
            (meta, event, value)
        })
        .boxed()
}

/// Structured-mode records: near-valid events edited, arbitrary objects and bytes.
fn structured_record() -> BoxedStrategy<Wire> {
    let edits = prop_oneof![2 => Just(Vec::new()), 1 => vec(json_edit(), 1..4)];
    let edited = (valid_structured(), edits).prop_map(|((meta, _, mut value), edits)| {
        for edit in edits {
            apply_json_edit(&mut value, edit);
        }
        (
            Some(meta.subject.into_bytes()),
            serde_json::to_vec(&value).expect("JSON"),
        )
    });
    let arbitrary = (
        btree_map(member_name(), json(), 0..12),
        option::of(bytes(12)),
    )
        .prop_map(|(members, key)| {
            let value = Value::Object(members.into_iter().collect());
            (key, serde_json::to_vec(&value).expect("JSON"))
        });
    let other = (json(), option::of(bytes(12)))
        .prop_map(|(value, key)| (key, serde_json::to_vec(&value).expect("JSON")));
    let raw = (bytes(128), option::of(bytes(12))).prop_map(|(value, key)| (key, value));
    let value = prop_oneof![4 => edited, 2 => arbitrary, 1 => other, 1 => raw];
    (
        value,
        prop_oneof![7 => Just(None), 1 => any::<Index>().prop_map(Some)],
        structured_content_type(),
        prop_oneof![2 => Just(Vec::new()), 1 => vec((any::<Index>(), header()), 1..4)],
        timestamp(),
        0..8u8,
    )
        .prop_map(
            |((key, value), cut, content_type, extra, timestamp, no_value)| {
                let mut value = Some(value);
                if let (Some(cut), Some(v)) = (cut, value.as_mut()) {
                    v.truncate(cut.index(v.len() + 1));
                }
                if no_value == 0 {
                    value = None;
                }
                let mut headers = vec![(h::CONTENT_TYPE.as_bytes().to_vec(), Some(content_type))];
                for (at, header) in extra {
                    headers.insert(at.index(headers.len() + 1), header);
                }
                Wire {
                    key,
                    value,
                    timestamp,
                    headers,
                }
            },
        )
        .boxed()
}

/// Arbitrary binary-mode records: keys, values, timestamps and 0..300 headers, anything.
fn arbitrary_binary() -> BoxedStrategy<Wire> {
    (
        option::of(bytes(32)),
        option::of(prop_oneof![
            bytes(128),
            json().prop_map(|v| serde_json::to_vec(&v).expect("JSON"))
        ]),
        timestamp(),
        prop_oneof![3 => vec(header(), 0..16), 1 => vec(header(), 0..300)],
    )
        .prop_map(|(key, value, timestamp, headers)| Wire {
            key,
            value,
            timestamp,
            headers,
        })
        .boxed()
}

/// How deep the generated chains (the recursive schema) nest: past both depth limits (the
/// direct decoder's 128, schema resolution's 16; see `avro_resolution_of_a_recursive_type_is_bounded`
/// and `deeply_nested_avro_is_refused`).
const CHAIN_DEPTH: usize = 300;

/// Avro single-object payloads: right and wrong fingerprints, valid data mutated, cut short.
fn avro_payload() -> BoxedStrategy<Vec<u8>> {
    let schemas = schemas();
    let fingerprints: Vec<u64> = schemas.all().iter().map(|s| s.fingerprint).collect();
    let fingerprint = prop_oneof![
        4 => select(fingerprints),
        1 => any::<u64>(),
    ];
    let chain = (
        vec(any::<i64>(), 0..=CHAIN_DEPTH),
        option::of(any::<Index>()),
    )
        .prop_map(|(values, cut)| {
            let mut datum = Vec::new();
            for (i, v) in values.iter().enumerate() {
                zigzag(&mut datum, *v);
                // union index: 1 ("Node") but for the last node, 0 (null)
                datum.push(if i + 1 == values.len() { 0 } else { 2 });
            }
            if let Some(cut) = cut {
                datum.truncate(cut.index(datum.len() + 1));
            }
            datum
        });
    // `02` is both the long 1 and the union branch "Node": a run of them nests a chain.
    let nesting = (bytes(40), 0..=2 * CHAIN_DEPTH).prop_map(|(mut datum, run)| {
        datum.extend(std::iter::repeat_n(0x02u8, run));
        datum
    });
    let datum = prop_oneof![
        3 => bytes(256),
        1 => chain,
        1 => nesting,
    ];
    let framed = (fingerprint, datum).prop_map(|(fingerprint, datum)| {
        let mut payload = avro::MAGIC.to_vec();
        payload.extend_from_slice(&fingerprint.to_le_bytes());
        payload.extend_from_slice(&datum);
        payload
    });
    let encoded = prop_oneof![
        measured().prop_map(|e| event::encode_event(&e).expect("encodes").1),
        measured_old().prop_map(|e| event::encode_event(&e).expect("encodes").1),
        (text(12), any::<i64>()).prop_map(|(subject, count)| {
            event::encode_event(&MeasuredV1 { subject, count })
                .expect("encodes")
                .1
        }),
    ];
    let mutated = (encoded, vec(byte_edit(), 0..4)).prop_map(|(mut payload, edits)| {
        for edit in edits {
            edit.apply(&mut payload);
        }
        payload
    });
    prop_oneof![
        3 => framed,
        3 => mutated,
        1 => bytes(12).prop_map(|tail| [&avro::MAGIC[..], &tail].concat()),
        1 => bytes(10),
    ]
    .boxed()
}

fn zigzag(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
}

/// An edit of a byte string.
#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn byte_edit() -> BoxedStrategy<ByteEdit> {
    prop_oneof![
        (any::<Index>(), 1..=255u8).prop_map(|(i, b)| ByteEdit::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        any::<Index>().prop_map(ByteEdit::Remove),
        any::<Index>().prop_map(ByteEdit::Truncate),
    ]
    .boxed()
}

impl ByteEdit {
    fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            ByteEdit::Flip(at, b) if !bytes.is_empty() => {
                let at = at.index(bytes.len());
                bytes[at] ^= b;
            }
            ByteEdit::Insert(at, b) => bytes.insert(at.index(bytes.len() + 1), *b),
            ByteEdit::Remove(at) if !bytes.is_empty() => {
                bytes.remove(at.index(bytes.len()));
            }
            ByteEdit::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
            _ => {}
        }
    }
}

/// JSON-ish payloads: valid payloads of the tier's types edited, arbitrary JSON, bytes.
fn json_payload() -> BoxedStrategy<Vec<u8>> {
    let valid = prop_oneof![
        recorded().prop_map(|e| serde_json::to_vec(&e).expect("JSON")),
        prop_command().prop_map(|c| c.encode().expect("JSON")),
        (text(12), vec(any::<i64>(), 0..8)).prop_map(|(subject, samples)| {
            serde_json::to_vec(&Sampled { subject, samples }).expect("JSON")
        }),
    ];
    let edited = (valid, vec(byte_edit(), 0..3)).prop_map(|(mut payload, edits)| {
        for edit in edits {
            edit.apply(&mut payload);
        }
        payload
    });
    prop_oneof![
        3 => edited,
        2 => json().prop_map(|v| serde_json::to_vec(&v).expect("JSON")),
        1 => (1..2000usize).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        1 => bytes(128),
    ]
    .boxed()
}

/// A payload for the decoders and the metadata that comes with it.
#[derive(Clone)]
struct PayloadCase {
    message_type: String,
    content_type: String,
    payload: Option<Vec<u8>>,
}

impl fmt::Debug for PayloadCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadCase")
            .field("message_type", &self.message_type)
            .field("content_type", &self.content_type)
            .field("payload", &self.payload.as_deref().map(Bytes))
            .finish()
    }
}

fn payload_case() -> BoxedStrategy<PayloadCase> {
    (
        any_type(),
        any_content_type(),
        prop_oneof![
            4 => avro_payload().prop_map(Some),
            4 => json_payload().prop_map(Some),
            1 => Just(None),
        ],
    )
        .prop_map(|(message_type, content_type, payload)| PayloadCase {
            message_type,
            content_type,
            payload,
        })
        .boxed()
}

/// Every decoder of the framework on one record: none panics, every error has a reason.
fn decode_everything(meta: &Metadata, payload: Option<&[u8]>) -> TestResult {
    reasoned_result(&codec::decode::<Value>(meta, payload))?;
    reasoned_result(&codec::decode::<Recorded>(meta, payload))?;
    reasoned_result(&codec::decode::<Measured>(meta, payload))?;
    reasoned_result(&event::decode_event::<Recorded>(meta, payload))?;
    reasoned_result(&event::decode_event::<Measured>(meta, payload))?;
    reasoned_result(&event::decode_event::<MeasuredOld>(meta, payload))?;
    reasoned_result(&event::decode_event::<MeasuredV1>(meta, payload))?;
    reasoned_result(&event::decode_event::<Sampled>(meta, payload))?;
    if let Some(bytes) = payload {
        let schemas = schemas();
        let (name, content_type) = (meta.message_type.as_str(), meta.content_type.as_str());
        for reader in [
            None,
            Some(&schemas.measured),
            Some(&schemas.measured_v1),
            Some(&schemas.exotic),
            Some(&schemas.chain),
        ] {
            let reader = reader.map(|r| &**r);
            reasoned_result(&avro::decode::<Value>(name, content_type, bytes, reader))?;
        }
        reasoned_result(&avro::decode::<Measured>(
            name,
            content_type,
            bytes,
            Some(&schemas.measured),
        ))?;
        if let Err(reason) = avro::split_header(bytes) {
            prop_assert!(!reason.trim().is_empty(), "split_header gave no reason");
        }
    }
    if let Some(result) = Measured::upcasters().decode(meta, payload) {
        reasoned_result(&result)?;
    }
    if let Some(result) = MeasuredV1::upcasters().decode(meta, payload) {
        reasoned_result(&result)?;
    }
    reasoned_result(&<PropEvent as EventSet>::decode(meta, payload))?;
    reasoned_result(&<Measured as EventSet>::decode(meta, payload))?;
    reasoned_result(&<MeasuredV1 as EventSet>::decode(meta, payload))?;
    reasoned_result(&<PropCommand as CommandSet>::decode(meta, payload))?;
    reasoned_result(&<Book as CommandSet>::decode(meta, payload))?;
    Ok(())
}

/// Opens a record and, when it opens, decodes it every way; every rejection has a reason.
fn open_and_decode(wire: &Wire) -> TestResult {
    match Metadata::open(wire) {
        Ok(opened) => {
            tally(|t| t.opened += 1);
            decode_everything(&opened.meta, opened.payload())
        }
        Err(err) => {
            tally(|t| t.not_opened += 1);
            reasoned(&err)
        }
    }
}

/// The record through librdkafka's header list and choreo's `Record` reads as its bytes do
/// (a header name reads up to its first NUL: librdkafka keeps names NUL-terminated).
fn same_through_librdkafka(wire: &Wire) -> TestResult {
    let message = wire.to_message();
    let mut expected = wire.clone();
    for (name, _) in &mut expected.headers {
        if let Some(nul) = name.iter().position(|&b| b == 0) {
            name.truncate(nul);
        }
    }
    if expected.timestamp == Some(-1) {
        // rdkafka reads a timestamp of -1 as none.
        expected.timestamp = None;
    }
    let direct = Metadata::open(&expected);
    prop_assert_eq!(&Metadata::open(&message), &direct);
    let record = Record::copy(&message, Arc::from("props.events"));
    prop_assert_eq!(&Metadata::open(&record), &direct);
    let read: Vec<(Vec<u8>, Option<Vec<u8>>)> = record
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.name.to_vec(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    prop_assert_eq!(read, expected.headers);
    Ok(())
}

/// The metadata of `event` (its type, subject and content type), written as choreo writes it.
fn with_event(mut meta: Metadata, event: &PropEvent) -> Metadata {
    meta.message_type = event.message_type().to_owned();
    meta.subject = event.subject_of();
    meta.content_type = event.content_type().to_owned();
    meta
}

// ---------------------------------------------------------------------------------------------
// (1) Arbitrary records never panic the envelope reader; every rejection has a reason.

#[test]
fn records_with_arbitrary_headers_never_panic() {
    property(
        "records_with_arbitrary_headers_never_panic",
        1000,
        prop_oneof![arbitrary_binary(), near_valid_binary()],
        |wire| {
            open_and_decode(&wire)?;
            same_through_librdkafka(&wire)
        },
    );
}

#[test]
fn records_in_structured_mode_never_panic() {
    property(
        "records_in_structured_mode_never_panic",
        1000,
        structured_record(),
        |wire| {
            open_and_decode(&wire)?;
            same_through_librdkafka(&wire)
        },
    );
}

// ---------------------------------------------------------------------------------------------
// (2) What choreo writes, it reads back.

#[test]
fn metadata_round_trips() {
    let content_type = any_content_type()
        .prop_filter("binary mode", |ct| {
            let media = ct.split(';').next().unwrap_or_default().trim();
            !ct.is_empty()
                && !media
                    .to_ascii_lowercase()
                    .starts_with("application/cloudevents")
        })
        .boxed();
    property(
        "metadata_round_trips",
        500,
        (
            metadata(any_type(), content_type),
            timestamp(),
            option::of(bytes(32)),
        ),
        |(meta, timestamp, value)| {
            let wire = Wire::from_headers(&meta, value.clone(), timestamp);
            let opened = Metadata::open(&wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&opened.meta, &meta);
            prop_assert_eq!(opened.payload(), value.as_deref());
            prop_assert_eq!(opened.meta.cloudevents_id(), meta.cloudevents_id());
            same_through_librdkafka(&wire)
        },
    );
}

#[test]
fn events_round_trip_in_binary_mode() {
    property(
        "events_round_trip_in_binary_mode",
        500,
        (
            prop_event(),
            metadata(any_type(), Just(String::new()).boxed()),
            timestamp(),
        ),
        |(event, meta, timestamp)| {
            let meta = with_event(meta, &event);
            let payload = event
                .encode()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let wire = Wire::from_headers(&meta, Some(payload), timestamp);
            let message = wire.to_message();
            let record = Record::copy(&message, Arc::from("props.events"));
            for opened in [
                Metadata::open(&wire),
                Metadata::open(&message),
                Metadata::open(&record),
            ] {
                let opened = opened.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&opened.meta, &meta);
                let decoded = <PropEvent as EventSet>::decode(&opened.meta, opened.payload())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(decoded.as_ref(), Some(&event));
            }
            // Each type alone reads it too.
            let opened = Metadata::open(&wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
            match &event {
                PropEvent::Recorded(e) => {
                    let back = event::decode_event::<Recorded>(&opened.meta, opened.payload())
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(&back, e);
                }
                PropEvent::Measured(e) => {
                    let back = <Measured as EventSet>::decode(&opened.meta, opened.payload())
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(back.as_ref(), Some(e));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn events_round_trip_in_structured_mode() {
    property(
        "events_round_trip_in_structured_mode",
        500,
        (valid_structured(), timestamp()),
        |((meta, event, value), timestamp)| {
            let wire = Wire {
                key: Some(meta.subject.as_bytes().to_vec()),
                value: Some(serde_json::to_vec(&value).expect("JSON")),
                timestamp,
                headers: vec![(
                    h::CONTENT_TYPE.as_bytes().to_vec(),
                    Some(b"application/cloudevents+json; charset=utf-8".to_vec()),
                )],
            };
            let opened = Metadata::open(&wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&opened.meta, &meta);
            let decoded = <PropEvent as EventSet>::decode(&opened.meta, opened.payload())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded.as_ref(), Some(&event));
            Ok(())
        },
    );
}

#[test]
fn older_versions_are_read_as_the_newest() {
    #[derive(Debug, Clone)]
    enum Old {
        Writer(MeasuredOld),
        V1(MeasuredV1),
        Sampled(Sampled),
    }
    let old = prop_oneof![
        measured_old().prop_map(Old::Writer),
        (text(12), any::<i64>())
            .prop_map(|(subject, count)| Old::V1(MeasuredV1 { subject, count })),
        (text(12), vec(any::<i64>(), 0..6))
            .prop_map(|(subject, samples)| Old::Sampled(Sampled { subject, samples })),
    ];
    property(
        "older_versions_are_read_as_the_newest",
        300,
        (old, metadata(any_type(), Just(String::new()).boxed())),
        |(old, mut meta)| {
            let (payload, expected) = match &old {
                Old::Writer(e) => (
                    event::encode_event(e),
                    Measured {
                        subject: e.subject.clone(),
                        count: e.count,
                        small: e.small,
                        flag: e.flag,
                        ratio: e.ratio,
                        note: e.note.clone(),
                        tags: e.tags.clone(),
                        attrs: e.attrs.clone(),
                        kind: e.kind,
                        inner: e.inner.clone(),
                        extra: "none".into(),
                    },
                ),
                Old::V1(e) => (event::encode_event(e), upcast_v1(e.clone())),
                Old::Sampled(e) => (
                    event::encode_event(e),
                    upcast_v1(MeasuredV1 {
                        subject: e.subject.clone(),
                        count: e.samples.len() as i64,
                    }),
                ),
            };
            let (content_type, payload) =
                payload.map_err(|e| TestCaseError::fail(e.to_string()))?;
            meta.message_type = match &old {
                Old::Writer(_) => MeasuredOld::NAME,
                Old::V1(_) => MeasuredV1::NAME,
                Old::Sampled(_) => Sampled::NAME,
            }
            .to_owned();
            meta.subject = expected.subject.clone();
            meta.content_type = content_type.to_owned();
            let wire = Wire::from_headers(&meta, Some(payload), None);
            let opened = Metadata::open(&wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&opened.meta, &meta);
            let via_set = <PropEvent as EventSet>::decode(&opened.meta, opened.payload())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(via_set, Some(PropEvent::Measured(expected.clone())));
            let via_type = <Measured as EventSet>::decode(&opened.meta, opened.payload())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(via_type, Some(expected));
            Ok(())
        },
    );
}

/// `Measured`'s upcaster from v1: the fields v2 added take fixed values.
fn upcast_v1(old: MeasuredV1) -> Measured {
    Measured {
        subject: old.subject,
        count: old.count,
        small: 0,
        flag: false,
        ratio: 0.0,
        note: None,
        tags: Vec::new(),
        attrs: BTreeMap::new(),
        kind: Kind::Alpha,
        inner: Inner {
            label: String::new(),
            n: 0,
        },
        extra: "upcast".into(),
    }
}

#[test]
fn commands_round_trip() {
    property(
        "commands_round_trip",
        300,
        (
            prop_command(),
            metadata(any_type(), Just(String::new()).boxed()),
        ),
        |(command, mut meta)| {
            meta.message_type = command.message_type().to_owned();
            meta.subject = command.subject_of();
            meta.content_type = codec::JSON.to_owned();
            let payload = command
                .encode()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let wire = Wire::from_headers(&meta, Some(payload), None);
            let message = wire.to_message();
            let opened =
                Metadata::open(&message).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&opened.meta, &meta);
            let decoded = <PropCommand as CommandSet>::decode(&opened.meta, opened.payload())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded, Some(command));
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// (3) Arbitrary payloads never panic a decoder; every rejection has a reason.

#[test]
fn payloads_never_panic_the_decoders() {
    property(
        "payloads_never_panic_the_decoders",
        2000,
        (
            payload_case(),
            metadata(any_type(), Just(String::new()).boxed()),
        ),
        |(case, mut meta)| {
            meta.message_type = case.message_type;
            meta.content_type = case.content_type;
            decode_everything(&meta, case.payload.as_deref())
        },
    );
}

#[test]
fn schema_texts_never_panic_the_parser() {
    let texts = [
        MEASURED_SCHEMA,
        MEASURED_OLD_SCHEMA,
        MEASURED_V1_SCHEMA,
        EXOTIC_SCHEMA,
        CHAIN_SCHEMA,
    ];
    let edited = (select(texts.to_vec()), vec(byte_edit(), 1..4)).prop_map(|(text, edits)| {
        let mut bytes = text.as_bytes().to_vec();
        for edit in edits {
            edit.apply(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let strategy = prop_oneof![
        3 => edited,
        2 => json().prop_map(|v| v.to_string()),
        1 => text(64),
    ];
    property(
        "schema_texts_never_panic_the_parser",
        500,
        strategy,
        |text| {
            if let Err(reason) = AvroSchema::parse(&text) {
                prop_assert!(!reason.trim().is_empty(), "no reason for {:?}", text);
            }
            Ok(())
        },
    );
}

#[test]
fn message_names_never_panic_the_checks() {
    use choreo::message::{Kind, MessageName, Tense, check_topic_name};
    let name = prop_oneof![
        "v[0-9]{0,12}\\.[a-z0-9-]{0,6}\\.[a-z]{0,12}",
        "v[1-9][0-9]{0,3}\\.[a-z][a-z0-9-]{0,6}\\.[a-z]{1,8}(ed|up|in|out|over|eed)?",
        text(24),
    ];
    property("message_names_never_panic_the_checks", 1000, name, |name| {
        for kind in [Kind::Event, Kind::Command] {
            for tense in [Tense::Checked, Tense::Unchecked] {
                match MessageName::parse(&name, kind, tense) {
                    Ok(parsed) => prop_assert_eq!(
                        format!("v{}.{}.{}", parsed.major(), parsed.entity(), parsed.verb()),
                        name.clone()
                    ),
                    Err(e) => prop_assert!(!e.rule.trim().is_empty()),
                }
            }
        }
        if let Err(e) = check_topic_name(&name) {
            prop_assert!(!e.rule.trim().is_empty());
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// (4) Valid records, mutated, never panic; every rejection has a reason.

#[derive(Debug, Clone)]
enum Mutation {
    Value(ByteEdit),
    NoValue,
    HeaderName(Index, ByteEdit),
    HeaderValue(Index, ByteEdit),
    NullHeaderValue(Index),
    Drop(Index),
    Duplicate(Index),
    Swap(Index, Index),
    Key(Option<Vec<u8>>),
    KeyEdit(ByteEdit),
    Timestamp(Option<i64>),
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        4 => byte_edit().prop_map(Mutation::Value),
        1 => Just(Mutation::NoValue),
        2 => (any::<Index>(), byte_edit()).prop_map(|(i, e)| Mutation::HeaderName(i, e)),
        3 => (any::<Index>(), byte_edit()).prop_map(|(i, e)| Mutation::HeaderValue(i, e)),
        1 => any::<Index>().prop_map(Mutation::NullHeaderValue),
        2 => any::<Index>().prop_map(Mutation::Drop),
        2 => any::<Index>().prop_map(Mutation::Duplicate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        1 => option::of(bytes(12)).prop_map(Mutation::Key),
        1 => byte_edit().prop_map(Mutation::KeyEdit),
        1 => timestamp().prop_map(Mutation::Timestamp),
    ]
    .boxed()
}

impl Mutation {
    fn apply(self, wire: &mut Wire) {
        let count = wire.headers.len();
        let pick = |i: &Index| (count > 0).then(|| i.index(count));
        match self {
            Mutation::Value(edit) => {
                if let Some(value) = wire.value.as_mut() {
                    edit.apply(value);
                }
            }
            Mutation::NoValue => wire.value = None,
            Mutation::HeaderName(i, edit) => {
                if let Some(at) = pick(&i) {
                    edit.apply(&mut wire.headers[at].0);
                }
            }
            Mutation::HeaderValue(i, edit) => {
                if let Some(at) = pick(&i)
                    && let Some(value) = wire.headers[at].1.as_mut()
                {
                    edit.apply(value);
                }
            }
            Mutation::NullHeaderValue(i) => {
                if let Some(at) = pick(&i) {
                    wire.headers[at].1 = None;
                }
            }
            Mutation::Drop(i) => {
                if let Some(at) = pick(&i) {
                    wire.headers.remove(at);
                }
            }
            Mutation::Duplicate(i) => {
                if let Some(at) = pick(&i) {
                    let header = wire.headers[at].clone();
                    wire.headers.insert(at, header);
                }
            }
            Mutation::Swap(a, b) => {
                if let (Some(a), Some(b)) = (pick(&a), pick(&b)) {
                    wire.headers.swap(a, b);
                }
            }
            Mutation::Key(key) => wire.key = key,
            Mutation::KeyEdit(edit) => {
                if let Some(key) = wire.key.as_mut() {
                    edit.apply(key);
                }
            }
            Mutation::Timestamp(timestamp) => wire.timestamp = timestamp,
        }
    }
}

/// Valid records: events (JSON, Avro) and commands in binary mode, events in structured mode.
fn valid_record() -> BoxedStrategy<Wire> {
    let event = (
        prop_event(),
        metadata(any_type(), Just(String::new()).boxed()),
        timestamp(),
    )
        .prop_map(|(event, meta, timestamp)| {
            let meta = with_event(meta, &event);
            Wire::from_headers(&meta, event.encode().ok(), timestamp)
        });
    let command = (
        prop_command(),
        metadata(any_type(), Just(String::new()).boxed()),
    )
        .prop_map(|(command, mut meta)| {
            meta.message_type = command.message_type().to_owned();
            meta.subject = command.subject_of();
            meta.content_type = codec::JSON.to_owned();
            Wire::from_headers(&meta, command.encode().ok(), None)
        });
    let structured =
        (valid_structured(), timestamp()).prop_map(|((meta, _, value), timestamp)| Wire {
            key: Some(meta.subject.into_bytes()),
            value: Some(serde_json::to_vec(&value).expect("JSON")),
            timestamp,
            headers: vec![(
                h::CONTENT_TYPE.as_bytes().to_vec(),
                Some(b"application/cloudevents+json".to_vec()),
            )],
        });
    prop_oneof![3 => event, 1 => command, 2 => structured].boxed()
}

#[test]
fn mutated_records_never_panic() {
    property(
        "mutated_records_never_panic",
        1000,
        (valid_record(), vec(mutation(), 1..6)),
        |(mut wire, mutations)| {
            for mutation in mutations {
                mutation.apply(&mut wire);
            }
            open_and_decode(&wire)?;
            same_through_librdkafka(&wire)
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Fixed hostile cases: sizes a random search rarely reaches.

/// Huge header counts: a record with 100 000 headers is read (or refused with a reason).
#[test]
fn huge_header_counts_are_read() {
    let event = Recorded {
        subject: "s".into(),
        amount: 1,
        note: None,
        tags: Vec::new(),
        attrs: BTreeMap::new(),
        mood: Mood::Calm,
    };
    let meta = Metadata::new(
        Uuid::now_v7(),
        Recorded::NAME,
        "/props",
        "s",
        Utc::now(),
        None,
    );
    let mut wire = Wire::from_headers(&meta, Some(serde_json::to_vec(&event).expect("JSON")), None);
    let valid = wire.headers.clone();
    for i in 0..100_000u32 {
        wire.headers.push((
            format!("x-{i}").into_bytes(),
            Some(i.to_le_bytes().to_vec()),
        ));
    }
    let opened = Metadata::open(&wire).expect("opens");
    assert_eq!(opened.meta, meta);
    // The same many headers as extensions: each is kept.
    let mut extensions = Wire {
        headers: valid.clone(),
        ..wire.clone()
    };
    for i in 0..20_000u32 {
        extensions
            .headers
            .push((format!("ce_x{i}").into_bytes(), Some(b"v".to_vec())));
    }
    let opened = Metadata::open(&extensions).expect("opens");
    assert_eq!(opened.meta.extensions.len(), 20_000);
    // And 100 000 copies of one attribute: refused, naming it.
    let mut duplicates = Wire {
        headers: valid,
        ..wire
    };
    for _ in 0..100_000 {
        duplicates
            .headers
            .push((h::ID.as_bytes().to_vec(), Some(b"x".to_vec())));
    }
    let err = Metadata::open(&duplicates).expect_err("duplicates");
    assert!(err.to_string().contains(h::ID), "{err}");
}

/// A datum of a recursive schema nested far deeper than the decoder allows, on both paths
/// (its own schema: the direct decoder; an older writer: the resolving one).
#[test]
fn deeply_nested_avro_is_refused() {
    let schemas = schemas();
    let mut datum = Vec::new();
    for _ in 0..100_000 {
        zigzag(&mut datum, 7);
        datum.push(2);
    }
    zigzag(&mut datum, 7);
    datum.push(0);
    for (writer, reader) in [
        (&schemas.chain, None),
        (&schemas.chain_old, Some(&schemas.chain)),
        (&schemas.chain_old, None),
    ] {
        let mut payload = avro::MAGIC.to_vec();
        payload.extend_from_slice(&writer.fingerprint.to_le_bytes());
        payload.extend_from_slice(&datum);
        let err = avro::decode::<Value>(
            "v2.prop.chained",
            codec::AVRO,
            &payload,
            reader.map(|r| &**r),
        )
        .expect_err("too deep");
        assert!(!err.to_string().is_empty());
    }
    // A JSON payload nested as deep: serde_json's own limit.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut meta = Metadata::new(Uuid::nil(), Recorded::NAME, "/props", "s", Utc::now(), None);
    meta.content_type = codec::JSON.to_owned();
    let err = codec::decode::<Value>(&meta, Some(deep.as_bytes())).expect_err("too deep");
    assert!(!err.to_string().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Bugs the properties found, kept as regression tests until they are fixed.

/// `AvroSchema::parse` panics on a schema whose record, enum or fixed name is not a valid Avro
/// name: `apache-avro` 0.21 `Name::parse` unwraps `validate_schema_name` (schema.rs:272).
/// Schema texts come from the schema store topic (`parse_record`), `SchemaStore::check` and
/// `register`, and the `choreo schemas check` command: one bad text panics the reader.
#[test]
fn invalid_avro_names_are_refused_with_a_reason() {
    let mut failures = Vec::new();
    for text in [
        r#"{"type":"record","name":"3","fields":[]}"#,
        r#"{"type":"enum","name":"3","symbols":["A"]}"#,
        r#"{"type":"fixed","name":"3","size":1}"#,
        r#"{"type":"record","name":"R","fields":[{"name":"f","type":{"type":"fixed","name":"a-b","size":1}}]}"#,
    ] {
        match std::panic::catch_unwind(|| AvroSchema::parse(text).map(|_| ())) {
            Ok(Err(reason)) => assert!(!reason.is_empty(), "{text}"),
            Ok(Ok(())) => failures.push(format!("{text}: accepted")),
            Err(_) => failures.push(format!("{text}: AvroSchema::parse panicked")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Schema resolution of a recursive type takes time exponential in the datum's depth, and
/// (debug builds) about 60 KB of stack per level: `apache-avro` 0.21 resolves a union holding a
/// named type by trying each branch (`find_schema_with_known_schemata` resolves a clone of
/// the value, then `resolve_union` resolves it again), so each level resolves its subtree
/// twice. A linked list of 24 nodes (a 60-byte payload) written with an older schema of the
/// type takes ~30 s of CPU in release and ~30 min at 30 nodes; at ~32 nodes a debug build
/// overflows a 2 MiB stack (tokio's worker and std threads) and the process aborts. The
/// decoder's depth limit (128) does not help. A legitimate record does this, not only a
/// hostile one: the partition stalls on it for good.
#[test]
fn avro_resolution_of_a_recursive_type_is_bounded() {
    let schemas = schemas();
    // Node{v: 7, next: Node{...}} `depth` deep, written with the older schema (no `w`).
    let chain = |depth: usize| {
        let mut payload = avro::MAGIC.to_vec();
        payload.extend_from_slice(&schemas.chain_old.fingerprint.to_le_bytes());
        for level in 0..depth {
            zigzag(&mut payload, 7);
            payload.push(if level + 1 == depth { 0 } else { 2 });
        }
        payload
    };
    let cases = [
        (chain(10), true),
        (chain(avro::MAX_RESOLVE_DEPTH + 8), false),
        (chain(300), false),
    ];
    let reader = schemas.chain.clone();
    let (done, finished) = std::sync::mpsc::channel();
    // A thread of the default size, as the consumers run on.
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            for (payload, _) in &cases {
                let outcome =
                    avro::decode::<Value>("v2.prop.chained", codec::AVRO, payload, Some(&reader));
                let _ = done.send(outcome.map(|_| ()).map_err(|e| e.to_string()));
            }
        })
        .expect("thread");
    // The wait only keeps a hang from hanging the run; it measures nothing.
    let wait = std::time::Duration::from_secs(120);
    let short = finished
        .recv_timeout(wait)
        .expect("the short chain is read");
    short.expect("a chain of 10 nodes decodes through resolution");
    for depth in [avro::MAX_RESOLVE_DEPTH + 8, 300] {
        let deep = finished.recv_timeout(wait).expect("the deep chain is read");
        let reason = deep.expect_err("a chain deeper than the resolution limit is refused");
        assert!(
            reason.contains("nest deeper than"),
            "depth {depth}: {reason}"
        );
    }
}
