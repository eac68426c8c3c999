//! Interop with the official CloudEvents SDKs (issue 11 §2): choreo's records read by the
//! Python and Java SDKs' Kafka bindings, and the SDKs' events (binary and structured mode)
//! applied by a choreo projection and handled by a reactor.
//!
//! The SDK programs live in `framework/tests/interop/` and are installed by
//! `scripts/interop-setup` (`eval "$(scripts/interop-setup)"` sets `CHOREO_INTEROP_PYTHON`
//! and `CHOREO_INTEROP_JAR`; `scripts/test` does it). Without them these tests fail, never
//! skip.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use choreo::kafka::{Outgoing, TopicAdmin, TopicSpec};
use choreo::projection::{ApplyError, Projection};
use choreo::reactor::{Outputs, ReactError, Reactor, ReactorRunner};
use choreo::{Causation, KafkaConfig, Metadata, ProjectionRunner, Publisher, Received};
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common;

/// The event both directions use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InteropRecorded {
    pub key: String,
    pub n: i64,
    pub note: String,
}

impl choreo::Event for InteropRecorded {
    const NAME: &'static str = "v1.interop.recorded";
    fn subject(&self) -> String {
        self.key.clone()
    }
}

/// The id exactly as the producer sent it (`ce_id`, or `id` in structured mode).
///
/// The id exactly as the producer sent it (for a non-UUID `ce_id`, `meta.id` is a UUIDv5
/// derived from source and id).
fn cloudevents_id(meta: &Metadata) -> String {
    meta.cloudevents_id()
}

// ------------------------------------------------------------------------ the SDK programs

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Sdk {
    Python,
    Java,
}

impl Sdk {
    const ALL: [Sdk; 2] = [Sdk::Python, Sdk::Java];

    fn name(self) -> &'static str {
        match self {
            Sdk::Python => "python",
            Sdk::Java => "java",
        }
    }

    /// The program's command line up to its subcommand.
    fn command(self) -> Command {
        match self {
            Sdk::Python => {
                let python = setup_var("CHOREO_INTEROP_PYTHON");
                let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/interop/python/cloudevents_interop.py");
                assert!(script.is_file(), "{} is missing", script.display());
                let mut command = Command::new(python);
                command.arg(script);
                command
            }
            Sdk::Java => {
                let jar = setup_var("CHOREO_INTEROP_JAR");
                let mut command = Command::new("java");
                command.arg("-jar").arg(jar);
                command
            }
        }
    }

    /// Runs the program to its end (blocking); returns its stdout, panics with its stderr if
    /// it failed or outlived `timeout`.
    fn run(self, config: &KafkaConfig, args: &[String], timeout: Duration) -> String {
        let mut command = self.command();
        command
            .args(args)
            .env("CHOREO_KAFKA_BROKERS", config.brokers())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("{} {}", self.name(), args.join(" "));
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {} program ({shown}): {e}", self.name()));
        // Drain both pipes on threads, so a chatty program never blocks on a full pipe.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_string(&mut text);
                }
                text
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{shown}: still running after {timeout:?}; stderr:\n{}",
                    stderr.join().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        assert!(
            status.success(),
            "{shown}: {status}\nstdout:\n{out}\nstderr:\n{err}"
        );
        out
    }

    /// `consume`: the first `count` records of `topic` as this SDK's CloudEvents.
    fn consume(self, config: &KafkaConfig, topic: &str, count: usize) -> Vec<Value> {
        let args: Vec<String> = [
            "consume",
            "--topic",
            topic,
            "--count",
            &count.to_string(),
            "--timeout",
            "60",
        ]
        .map(str::to_owned)
        .into();
        self.run(config, &args, Duration::from_secs(90))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("{}: a line that is not JSON ({e}): {l}", self.name())
                })
            })
            .collect()
    }
}

/// A variable `scripts/interop-setup` prints; panics with the way to get it.
fn setup_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: the interop tests need the CloudEvents SDK programs; run \
             `eval \"$(scripts/interop-setup)\"` first (scripts/test does)"
        ),
    }
}

/// Fails the test at once, with the way out, when the SDK programs are not set up.
fn require_setup() {
    setup_var("CHOREO_INTEROP_PYTHON");
    setup_var("CHOREO_INTEROP_JAR");
}

/// Runs `work` for both SDKs at once, each on a blocking thread.
async fn for_both_sdks<T: Send + 'static>(
    work: impl Fn(Sdk) -> T + Send + Sync + 'static,
) -> BTreeMap<Sdk, T> {
    let work = Arc::new(work);
    let tasks: Vec<_> = Sdk::ALL
        .into_iter()
        .map(|sdk| {
            let work = Arc::clone(&work);
            (sdk, tokio::task::spawn_blocking(move || work(sdk)))
        })
        .collect();
    let mut out = BTreeMap::new();
    for (sdk, task) in tasks {
        out.insert(sdk, task.await.expect("SDK program thread"));
    }
    out
}

fn rfc3339(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("not an RFC 3339 time ({e}): {text}"))
        .with_timezone(&Utc)
}

// ------------------------------------------------------------------------ choreo → SDKs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choreo_events_are_read_by_the_python_and_java_sdks_with_every_attribute() {
    require_setup();
    let config = common::kafka("interop-out");
    let topic = common::create_events_topic(&config, "interop", 3).await;
    let publisher = Publisher::new(&config, "/interop-test").expect("publisher");

    // Three events: one that starts a conversation; one that continues another with every
    // optional attribute choreo writes (sequence, trace context, an extension); one with
    // non-ASCII text in its subject and data.
    let events = [
        InteropRecorded {
            key: "k-plain".into(),
            n: 1,
            note: "plain".into(),
        },
        InteropRecorded {
            key: "k-full".into(),
            n: 2,
            note: "every attribute".into(),
        },
        InteropRecorded {
            key: "k-ünïcode ✓".into(),
            n: 3,
            note: "naïve café ✓".into(),
        },
    ];
    let mut sent: Vec<(Metadata, InteropRecorded)> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let causation = (i > 0).then(|| Causation {
            correlation_id: Uuid::now_v7(),
            causation_id: Uuid::now_v7(),
        });
        let prepared = publisher.prepare(event, causation).expect("prepare");
        let mut meta = prepared.meta().clone();
        if i == 1 {
            meta.sequence = Some(7);
            meta.traceparent =
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
            meta.extensions.insert("tenant".into(), "acme".into());
        }
        if i == 2 {
            meta.extensions.insert("region".into(), "eu-west".into());
        }
        let out = Outgoing::new(
            prepared.topic.clone(),
            meta.clone(),
            prepared.payload.clone(),
        );
        publisher.send(&out).await.expect("send");
        sent.push((meta, event.clone()));
    }

    let read = {
        let (config, topic) = (config.clone(), topic.clone());
        for_both_sdks(move |sdk| sdk.consume(&config, &topic, events.len())).await
    };

    for (sdk, lines) in &read {
        let sdk = sdk.name();
        assert_eq!(
            lines.len(),
            sent.len(),
            "{sdk} read every record: {lines:#?}"
        );
        let by_id: BTreeMap<&str, &Value> = lines
            .iter()
            .map(|l| (l["attributes"]["id"].as_str().expect("id"), l))
            .collect();
        for (meta, event) in &sent {
            let id = meta.id.to_string();
            let line = by_id
                .get(id.as_str())
                .unwrap_or_else(|| panic!("{sdk} did not read {id}: {lines:#?}"));
            assert_eq!(line["mode"], "binary", "{sdk}: {line}");
            assert_eq!(line["key"], json!(meta.subject), "{sdk}: key = subject");

            // Every attribute, as the SDK's CloudEvent has it.
            let mut attributes = line["attributes"].as_object().expect("attributes").clone();
            let time = attributes.remove("time").expect("time");
            assert_eq!(
                rfc3339(time.as_str().expect("time is a string")),
                meta.time,
                "{sdk} {id}: time"
            );
            if let Some(key) = attributes.remove("partitionkey") {
                // The Python SDK hands the record key to the event as this extension.
                assert_eq!(key, json!(meta.subject), "{sdk}: partitionkey");
            }
            let mut want = json!({
                "specversion": "1.0",
                "id": id,
                "source": "/interop-test",
                "type": "v1.interop.recorded",
                "subject": meta.subject,
                "datacontenttype": "application/json",
                "correlationid": meta.correlation_id.to_string(),
                "causationid": meta.causation_id.to_string(),
            });
            if let Some(sequence) = meta.sequence {
                want["sequence"] = json!(format!("{sequence:020}"));
            }
            for (name, value) in &meta.extensions {
                want[name] = json!(value);
            }
            assert_eq!(
                Value::Object(attributes),
                want,
                "{sdk} {id}: every attribute (traceparent is a plain header, not one)"
            );
            assert_eq!(
                line["data"],
                serde_json::to_value(event).expect("json"),
                "{sdk} {id}: data"
            );
        }
    }
    // The starting event is its own correlation and cause.
    let first = &sent[0].0;
    assert_eq!(
        (first.correlation_id, first.causation_id),
        (first.id, first.id)
    );
}

// ------------------------------------------------------------------------ SDKs → choreo

/// The view the SDKs' events are applied to: one row per event with its attributes.
#[derive(Debug, Default, Clone, Copy)]
struct InteropView;

const VIEW: &str = "interop_view.v1";

impl Projection for InteropView {
    type Events = InteropRecorded;
    const NAME: &'static str = "interop_view";
    const VERSION: u32 = 1;

    fn schema_sql(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS received (
             cloudevents_id text PRIMARY KEY,
             event_id uuid NOT NULL,
             event_type text NOT NULL,
             source text NOT NULL,
             subject text NOT NULL,
             time timestamptz NOT NULL,
             content_type text NOT NULL,
             correlation_id uuid NOT NULL,
             causation_id uuid NOT NULL,
             extensions jsonb NOT NULL,
             payload jsonb NOT NULL,
             partition integer NOT NULL,
             \"offset\" bigint NOT NULL
         )"
    }

    async fn apply(
        &self,
        conn: &mut sqlx::PgConnection,
        events: &[Received<InteropRecorded>],
    ) -> Result<(), ApplyError> {
        for e in events {
            let extensions = serde_json::to_string(&e.meta.extensions)
                .map_err(|err| ApplyError::Poison(err.into()))?;
            let payload =
                serde_json::to_string(&e.payload).map_err(|err| ApplyError::Poison(err.into()))?;
            // A plain INSERT: a second application of an event would violate the key.
            sqlx::query(
                "INSERT INTO received VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, $12, $13)",
            )
            .bind(cloudevents_id(&e.meta))
            .bind(e.meta.id)
            .bind(&e.meta.message_type)
            .bind(&e.meta.source)
            .bind(&e.meta.subject)
            .bind(e.meta.time)
            .bind(&e.meta.content_type)
            .bind(e.meta.correlation_id)
            .bind(e.meta.causation_id)
            .bind(extensions)
            .bind(payload)
            .bind(e.origin.partition)
            .bind(e.origin.offset)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// What a projection row or a reactor saw of one event.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    cloudevents_id: String,
    event_id: Uuid,
    event_type: String,
    source: String,
    subject: String,
    time: DateTime<Utc>,
    content_type: String,
    correlation_id: Uuid,
    causation_id: Uuid,
    extensions: BTreeMap<String, String>,
    payload: InteropRecorded,
    partition: i32,
    offset: i64,
}

impl Seen {
    fn of(e: &Received<InteropRecorded>) -> Self {
        Seen {
            cloudevents_id: cloudevents_id(&e.meta),
            event_id: e.meta.id,
            event_type: e.meta.message_type.clone(),
            source: e.meta.source.clone(),
            subject: e.meta.subject.clone(),
            time: e.meta.time,
            content_type: e.meta.content_type.clone(),
            correlation_id: e.meta.correlation_id,
            causation_id: e.meta.causation_id,
            extensions: e.meta.extensions.clone(),
            payload: e.payload.clone(),
            partition: e.origin.partition,
            offset: e.origin.offset,
        }
    }
}

/// A reactor that remembers what it handled (by `ce_id`; a redelivery replaces the entry).
#[derive(Debug, Default)]
struct InteropSink {
    seen: Arc<Mutex<BTreeMap<String, Seen>>>,
}

impl Reactor for InteropSink {
    type Events = InteropRecorded;
    const NAME: &'static str = "interop-sink";

    async fn react(
        &self,
        event: &Received<InteropRecorded>,
        _out: &mut Outputs<'_>,
    ) -> Result<(), ReactError> {
        let seen = Seen::of(event);
        self.seen
            .lock()
            .expect("lock")
            .insert(seen.cloudevents_id.clone(), seen);
        Ok(())
    }
}

/// One event an SDK wrote, and what choreo must make of it.
#[derive(Debug, Clone)]
struct Case {
    sdk: Sdk,
    mode: &'static str,
    id: String,
    key: String,
    /// `None`: only the required attributes (id, source, type, specversion) and the data.
    full: Option<Full>,
    payload: InteropRecorded,
}

#[derive(Debug, Clone)]
struct Full {
    time: DateTime<Utc>,
    correlation_id: Uuid,
    causation_id: Uuid,
}

const SDK_TYPE: &str = "v1.interop.recorded";
const TENANT: &str = "acme";

impl Case {
    fn source(&self) -> String {
        format!("/interop/{}", self.sdk.name())
    }

    fn produce_args(&self, topic: &str) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "produce".into(),
            "--topic".into(),
            topic.into(),
            "--mode".into(),
            self.mode.into(),
            "--key".into(),
            self.key.clone(),
            "--id".into(),
            self.id.clone(),
            "--source".into(),
            self.source(),
            "--type".into(),
            SDK_TYPE.into(),
            "--data".into(),
            serde_json::to_string(&self.payload).expect("json"),
        ];
        if let Some(full) = &self.full {
            args.extend([
                "--subject".into(),
                self.key.clone(),
                "--time".into(),
                full.time
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "--datacontenttype".into(),
                "application/json".into(),
                "--ext".into(),
                format!("correlationid={}", full.correlation_id),
                "--ext".into(),
                format!("causationid={}", full.causation_id),
                "--ext".into(),
                format!("tenant={TENANT}"),
            ]);
            if self.mode == "structured" {
                // The data as bytes: data_base64 in the JSON event.
                args.push("--data-base64".into());
            }
        }
        args
    }
}

/// Per SDK: binary and structured mode, each once with only the required attributes and a
/// non-UUID id, once with every attribute.
fn cases() -> Vec<Case> {
    let run = &Uuid::new_v4().simple().to_string()[..8];
    let mut out = Vec::new();
    let mut n = 0;
    for sdk in Sdk::ALL {
        for mode in ["binary", "structured"] {
            for full in [false, true] {
                n += 1;
                let label = format!(
                    "{}-{mode}-{}",
                    sdk.name(),
                    if full { "full" } else { "minimal" }
                );
                out.push(Case {
                    sdk,
                    mode,
                    id: if full {
                        Uuid::new_v4().to_string()
                    } else {
                        format!("{label}:{run}")
                    },
                    key: format!("key-{label}"),
                    full: full.then(|| Full {
                        time: Utc
                            .with_ymd_and_hms(2026, 11, 26, 10, 0, n)
                            .single()
                            .expect("time")
                            + chrono::Duration::microseconds(123_456),
                        correlation_id: Uuid::new_v4(),
                        causation_id: Uuid::new_v4(),
                    }),
                    payload: InteropRecorded {
                        key: format!("key-{label}"),
                        n: i64::from(n),
                        note: format!("written by the {} SDK, {mode} mode", sdk.name()),
                    },
                });
            }
        }
    }
    out
}

/// `{namespace}.{group}.dlq` and, for reactors, `{namespace}.{group}.redrive`.
async fn consumer_topics(config: &KafkaConfig) -> (String, String) {
    let specs: Vec<TopicSpec> = [
        TopicSpec::dead_letters(VIEW, 1).expect("spec"),
        TopicSpec::dead_letters(InteropSink::NAME, 1).expect("spec"),
        TopicSpec::redrive(InteropSink::NAME, 1).expect("spec"),
    ]
    .into_iter()
    .map(|spec| TopicSpec {
        name: config.topic_name(&spec.name),
        ..spec
    })
    .collect();
    let names = (specs[0].name.clone(), specs[1].name.clone());
    TopicAdmin::new(config)
        .expect("admin")
        .ensure(&specs)
        .await
        .expect("topics");
    names
}

/// `(ce_id or structured id, reason)` of every dead letter in `dlq`.
fn dead_letters(config: &KafkaConfig, dlq: &str) -> Vec<(String, String)> {
    // An empty partition has end offset 0; otherwise read what is there (transaction markers
    // count in the end offset, so that read ends on its timeout).
    let end = common::end_offsets(config, dlq, 1)[0];
    if end == 0 {
        return Vec::new();
    }
    common::read_all(config, dlq, end as usize, Duration::from_secs(10), true)
        .iter()
        .map(|record| {
            let h = common::header_map(record);
            let id = h.get("ce_id").cloned().unwrap_or_else(|| {
                record
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                    .and_then(|v| v["id"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "<no id>".into())
            });
            (id, h.get("choreo_dlq_error").cloned().unwrap_or_default())
        })
        .collect()
}

// Waits for the reader changes of issue 11 (binary mode with optional attributes and any
// ce_id, structured mode): until they are merged the minimal and structured events go to the
// dead letters and this test fails, naming each with the reader's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_events_in_binary_and_structured_mode_reach_a_projection_and_a_reactor() {
    require_setup();
    let config = common::kafka("interop-in");
    let topic = common::create_events_topic(&config, "interop", 3).await;
    let (view_dlq, sink_dlq) = consumer_topics(&config).await;
    let (_, pool) = common::fresh_database("interop_in").await;

    // Each SDK writes its four events (the two programs at once).
    let cases = cases();
    let produced = {
        let (config, topic, cases) = (config.clone(), topic.clone(), cases.clone());
        for_both_sdks(move |sdk| {
            cases
                .iter()
                .filter(|c| c.sdk == sdk)
                .map(|c| {
                    let out = sdk.run(&config, &c.produce_args(&topic), Duration::from_secs(60));
                    let line: Value = serde_json::from_str(out.trim())
                        .unwrap_or_else(|e| panic!("{}: produce printed {out:?}: {e}", c.id));
                    let partition = line["partition"].as_i64().expect("partition") as i32;
                    let offset = line["offset"].as_i64().expect("offset");
                    (c.id.clone(), (partition, offset))
                })
                .collect::<Vec<_>>()
        })
        .await
    };
    let positions: BTreeMap<String, (i32, i64)> = produced.into_values().flatten().collect();
    assert_eq!(positions.len(), cases.len());

    // The records as a plain consumer sees them: the record timestamps, which stand in for
    // ce_time where the event has none.
    let records = common::read_all(&config, &topic, cases.len(), Duration::from_secs(30), true);
    assert_eq!(
        records.len(),
        cases.len(),
        "every SDK record is in the topic"
    );
    let timestamps: BTreeMap<(i32, i64), DateTime<Utc>> = records
        .iter()
        .map(|r| {
            let millis = r.timestamp().to_millis().expect("record timestamp");
            (
                (r.partition(), r.offset()),
                Utc.timestamp_millis_opt(millis).single().expect("time"),
            )
        })
        .collect();

    // A projection and a reactor read them.
    let projection =
        common::run_projection(&config, &pool, ProjectionRunner::new(Arc::new(InteropView)));
    let projection_status = projection.status().clone();
    let sink = InteropSink::default();
    let handled = Arc::clone(&sink.seen);
    let reactor = common::run_reactor(&config, ReactorRunner::new(sink, "interop-test", 0));
    let reactor_status = reactor.status().clone();
    common::wait_caught_up(&pool, &config, VIEW, &topic, 3, Duration::from_secs(90)).await;
    common::eventually(
        "the reactor to handle or dead-letter every event",
        Duration::from_secs(90),
        || reactor_status.reacted() + reactor_status.dead_lettered() >= cases.len() as u64,
    )
    .await;
    // Both stopped at once.
    projection.shutdown().trigger();
    reactor.shutdown().trigger();
    projection.stop().await.expect("projection run");
    reactor.stop().await.expect("reactor run");

    // Nothing dead-lettered or halted: the reasons name what the reader refused.
    let rejected_by_view = dead_letters(&config, &view_dlq);
    let rejected_by_sink = dead_letters(&config, &sink_dlq);
    assert!(
        rejected_by_view.is_empty() && rejected_by_sink.is_empty(),
        "SDK events were dead-lettered\n  projection: {rejected_by_view:#?}\n  reactor: {rejected_by_sink:#?}"
    );
    assert_eq!(reactor_status.dead_lettered(), 0);
    assert!(
        projection_status.halted().is_empty(),
        "{:?}",
        projection_status.halted()
    );
    let recorded: Vec<(String,)> =
        sqlx::query_as("SELECT error FROM choreo_meta.dead_letters WHERE consumer = $1")
            .bind(VIEW)
            .fetch_all(&pool)
            .await
            .expect("dead letters");
    assert!(recorded.is_empty(), "{recorded:?}");

    // The view: one row per event, with the attributes choreo must make of it.
    type Row = (
        String,
        Uuid,
        String,
        String,
        String,
        DateTime<Utc>,
        String,
        Uuid,
        Uuid,
        String,
        String,
        i32,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT cloudevents_id, event_id, event_type, source, subject, time, content_type, \
         correlation_id, causation_id, extensions::text, payload::text, partition, \"offset\" \
         FROM interop_view_v1.received",
    )
    .fetch_all(&pool)
    .await
    .expect("view rows");
    let applied: BTreeMap<String, Seen> = rows
        .into_iter()
        .map(|r| {
            let seen = Seen {
                cloudevents_id: r.0,
                event_id: r.1,
                event_type: r.2,
                source: r.3,
                subject: r.4,
                time: r.5,
                content_type: r.6,
                correlation_id: r.7,
                causation_id: r.8,
                extensions: serde_json::from_str(&r.9).expect("extensions"),
                payload: serde_json::from_str(&r.10).expect("payload"),
                partition: r.11,
                offset: r.12,
            };
            (seen.cloudevents_id.clone(), seen)
        })
        .collect();
    let handled = handled.lock().expect("lock").clone();

    let want_ids: BTreeSet<String> = cases.iter().map(|c| c.id.clone()).collect();
    for (what, seen) in [("projection", &applied), ("reactor", &handled)] {
        assert_eq!(
            seen.keys().cloned().collect::<BTreeSet<_>>(),
            want_ids,
            "the {what} got every SDK event by its ce_id"
        );
        for case in &cases {
            let got = &seen[&case.id];
            let (partition, offset) = positions[&case.id];
            let what = format!("{what}, {} {} {}", case.sdk.name(), case.mode, case.id);
            assert_eq!(
                (got.partition, got.offset),
                (partition, offset),
                "{what}: origin"
            );
            assert_eq!(got.event_type, SDK_TYPE, "{what}: type");
            assert_eq!(got.source, case.source(), "{what}: source");
            assert_eq!(
                got.subject, case.key,
                "{what}: subject (the record key when ce_subject is absent)"
            );
            assert_eq!(
                got.content_type, "application/json",
                "{what}: content type (application/json when absent)"
            );
            assert_eq!(got.payload, case.payload, "{what}: the data is the payload");
            match &case.full {
                Some(full) => {
                    assert_eq!(
                        got.event_id.to_string(),
                        case.id,
                        "{what}: a UUID ce_id is the id"
                    );
                    assert_eq!(got.time, full.time, "{what}: time");
                    assert_eq!(
                        (got.correlation_id, got.causation_id),
                        (full.correlation_id, full.causation_id),
                        "{what}: correlation and causation"
                    );
                    assert_eq!(
                        got.extensions,
                        BTreeMap::from([("tenant".to_owned(), TENANT.to_owned())]),
                        "{what}: extensions"
                    );
                }
                None => {
                    assert_eq!(
                        got.time,
                        timestamps[&(partition, offset)],
                        "{what}: time (the record timestamp when ce_time is absent)"
                    );
                    assert_eq!(
                        (got.correlation_id, got.causation_id),
                        (got.event_id, got.event_id),
                        "{what}: correlation and causation default to the event's own id"
                    );
                    assert!(
                        got.extensions.is_empty(),
                        "{what}: no extensions: {:?}",
                        got.extensions
                    );
                }
            }
        }
    }
    // Ids derived from non-UUID ce_ids are stable and distinct.
    let derived: BTreeSet<Uuid> = applied.values().map(|s| s.event_id).collect();
    assert_eq!(derived.len(), cases.len(), "distinct ids");
    for (id, seen) in &applied {
        assert_eq!(
            handled[id].event_id, seen.event_id,
            "projection and reactor derive the same id for {id}"
        );
    }
}
