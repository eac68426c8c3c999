//! Hostile and foreign input on the real broker: a header name that is not UTF-8 (rdkafka's
//! own header reader panics on one), events from other producers that carry only what
//! CloudEvents requires or come in structured mode, outputs the broker refuses as too large,
//! and commands whose events cannot all be written. Each runtime must go on: the bad record
//! dead-lettered with its reason and kept byte for byte, later records handled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use choreo::aggregate::{Aggregate, CommandBus, CommandProcessor, Outcome, Rejection, SendOptions};
use choreo::kafka::{RecordHeaders, TopicAdmin, TopicSpec, dlq_headers};
use choreo::message::{Received, event_id};
use choreo::projection::ProjectionRunner;
use choreo::reactor::{Outputs, ReactError, Reactor, ReactorRunner};
use choreo::testing::echo::EchoReactor;
use choreo::testing::{CounterBumped, CounterProjection};
use choreo::{KafkaConfig, Publisher};
use rdkafka::Message;
use rdkafka::message::{OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use crate::aggregates;
use crate::common;

const WAIT: Duration = Duration::from_secs(60);

fn raw_producer(config: &KafkaConfig) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", config.brokers())
        .create()
        .expect("producer")
}

/// Sends one record as another client would, to partition 0.
async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    value: &[u8],
    headers: OwnedHeaders,
) {
    producer
        .send(
            FutureRecord::to(topic)
                .partition(0)
                .key(key)
                .payload(value)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("raw send");
}

/// `headers` plus one whose name is the bytes `\xff\xfe`.
fn with_bad_name(headers: &OwnedHeaders) -> OwnedHeaders {
    let valid = RecordHeaders::from_owned(headers);
    RecordHeaders::from_pairs(
        valid
            .iter()
            .map(|h| (h.name, h.value))
            .chain([(&b"\xff\xfe"[..], Some(&b"foreign"[..]))]),
    )
    .to_owned_headers()
}

fn has_bad_name(record: &OwnedMessage) -> bool {
    record.headers().is_some_and(|h| {
        RecordHeaders::from_owned(h)
            .iter()
            .any(|h| h.name == b"\xff\xfe" && h.value == Some(&b"foreign"[..]))
    })
}

fn bump(key: &str, amount: i64) -> CounterBumped {
    CounterBumped {
        key: key.into(),
        amount,
        poison: false,
    }
}

fn pairs<'a>(list: &'a [(&'a str, &'a str)]) -> OwnedHeaders {
    RecordHeaders::from_pairs(list.iter().map(|(n, v)| (n.as_bytes(), Some(v.as_bytes()))))
        .to_owned_headers()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_records_never_stop_a_projection_or_a_reactor() {
    let config = common::kafka("hostile-consumers");
    common::ensure_topics(
        &config,
        vec![
            TopicSpec::events("counter", 1, 1).expect("spec"),
            TopicSpec::events("echo", 1, 1).expect("spec"),
            TopicSpec::dead_letters("echo", 1).expect("spec"),
            TopicSpec::redrive("echo", 1).expect("spec"),
            TopicSpec::dead_letters("counters.v1", 1).expect("spec"),
        ],
    )
    .await;
    let topic = config.topic_name("counter.events");
    let (_, pool) = common::fresh_database("hostile_consumers").await;
    EchoReactor::setup(&pool).await.expect("setup");
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    let raw = raw_producer(&config);

    publisher.publish(&bump("k1", 1)).await.expect("k1");
    // A valid choreo event with one more header, whose name is not UTF-8.
    let out = publisher.prepare(&bump("bad", 100), None).expect("prepare");
    send_raw(
        &raw,
        &topic,
        out.key.as_bytes(),
        &out.payload,
        with_bad_name(&out.meta().to_headers()),
    )
    .await;
    // An attribute whose value is not UTF-8.
    let out_value = publisher
        .prepare(&bump("bad-value", 100), None)
        .expect("prepare");
    let valid = RecordHeaders::from_owned(&out_value.meta().to_headers());
    let headers = RecordHeaders::from_pairs(valid.iter().map(|h| {
        if h.name == b"ce_source" {
            (h.name, Some(&b"\xc3\x28"[..]))
        } else {
            (h.name, h.value)
        }
    }))
    .to_owned_headers();
    send_raw(
        &raw,
        &topic,
        out_value.key.as_bytes(),
        &out_value.payload,
        headers,
    )
    .await;
    // Another producer, binary mode: only the attributes CloudEvents requires, an id that is
    // not a UUID; the subject is the key, the time the record's.
    send_raw(
        &raw,
        &topic,
        b"m1",
        br#"{"key":"m1","amount":3}"#,
        pairs(&[
            ("ce_specversion", "1.0"),
            ("ce_id", "order-42"),
            ("ce_source", "urn:other-shop"),
            ("ce_type", "v1.counter.bumped"),
        ]),
    )
    .await;
    // Another producer, structured mode.
    let structured = serde_json::json!({
        "specversion": "1.0", "id": "ext-7", "source": "urn:other-shop",
        "type": "v1.counter.bumped", "subject": "s1", "time": "2026-12-01T10:00:00Z",
        "datacontenttype": "application/json", "data": {"key": "s1", "amount": 7}
    });
    send_raw(
        &raw,
        &topic,
        b"s1",
        structured.to_string().as_bytes(),
        pairs(&[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )]),
    )
    .await;
    publisher.publish(&bump("k2", 2)).await.expect("k2");

    let projection = common::run_projection(
        &config,
        &pool,
        ProjectionRunner::new(Arc::new(CounterProjection)),
    );
    let projection_status = projection.status();
    let reactor = common::run_reactor(
        &config,
        ReactorRunner::new(EchoReactor::new(pool.clone()), "drill", 0),
    );
    let reactor_status = reactor.status();
    common::wait_caught_up(&pool, &config, "counters.v1", &topic, 1, WAIT).await;
    common::eventually("the reactor took every event", WAIT, || {
        reactor_status.reacted() >= 4 && reactor_status.dead_lettered() >= 2
    })
    .await;
    assert!(
        projection_status.halted().is_empty(),
        "{:?}",
        projection_status.halted()
    );
    // Both stopped at once.
    projection.shutdown().trigger();
    reactor.shutdown().trigger();
    projection
        .stop()
        .await
        .expect("the projection ran to its shutdown");
    reactor
        .stop()
        .await
        .expect("the reactor ran to its shutdown");

    // The view: every event but the one with the bad header, the foreign ones included.
    let totals: BTreeMap<String, i64> = sqlx::query_as("SELECT key, total FROM counters_v1.totals")
        .fetch_all(&pool)
        .await
        .expect("totals")
        .into_iter()
        .collect();
    let want: BTreeMap<String, i64> = [("k1", 1), ("m1", 3), ("s1", 7), ("k2", 2)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(totals, want);
    // Two dead letters each, naming the header, with the record kept byte for byte.
    for dlq in ["counters.v1.dlq", "echo.dlq"] {
        let letters = common::read_all(&config, &config.topic_name(dlq), 2, WAIT, true);
        assert_eq!(
            letters.len(),
            2,
            "{dlq}: the records with the bad header name and value, once each"
        );
        let reason = &common::header_map(&letters[1])[dlq_headers::ERROR];
        assert!(
            reason.contains("ce_source") && reason.contains("not UTF-8"),
            "{dlq}: {reason}"
        );
        let reason = &common::header_map(&letters[0])[dlq_headers::ERROR];
        assert!(
            reason.contains("header #") && reason.contains("not UTF-8"),
            "{dlq}: {reason}"
        );
        assert!(
            has_bad_name(&letters[0]),
            "{dlq}: the header name kept as bytes"
        );
        assert_eq!(letters[0].payload(), Some(&out.payload[..]));
    }
    // The reactor's outputs continue the foreign events' conversations, by their ids.
    let outputs = common::read_all(&config, &config.topic_name("echo.events"), 4, WAIT, true);
    assert_eq!(outputs.len(), 4, "k1, m1, s1, k2");
    let causes: Vec<String> = outputs
        .iter()
        .map(|r| common::header_map(r)["ce_causationid"].clone())
        .collect();
    for (source, id) in [("urn:other-shop", "order-42"), ("urn:other-shop", "ext-7")] {
        assert!(
            causes.contains(&event_id(source, id).to_string()),
            "an output caused by {id}: {causes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_records_never_stop_a_command_processor_or_the_bus() {
    let config = common::kafka("hostile-commands");
    aggregates::bank_topics(&config).await;
    let processor = aggregates::start(&config, 0);
    let status = processor.status();
    aggregates::wait_ready(status, aggregates::PARTITIONS as usize).await;
    let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
    let raw = raw_producer(&config);
    let key = b"h1";
    let partition = choreo::kafka::partition_for_key(key, aggregates::PARTITIONS);

    // A command with a header name that is not UTF-8, on its right partition.
    let mut meta = choreo::Metadata::new(
        uuid::Uuid::now_v7(),
        "v1.account.open",
        "/other-client",
        "h1",
        chrono::Utc::now(),
        None,
    );
    meta.extensions
        .insert("replyto".into(), config.topic_name("bank.replies"));
    meta.extensions.insert("replypartition".into(), "0".into());
    raw.send(
        FutureRecord::to(&config.topic_name("account.commands"))
            .partition(partition)
            .key(&key[..])
            .payload(&br#"{"account":"h1"}"#[..])
            .headers(with_bad_name(&meta.to_headers())),
        Duration::from_secs(10),
    )
    .await
    .expect("bad command");
    // And a "reply" with one on the partition the bus reads.
    send_raw(
        &raw,
        &config.topic_name("bank.replies"),
        b"x",
        b"{}",
        with_bad_name(&meta.to_headers()),
    )
    .await;

    // Both runtimes go on: the next command is decided and its reply read.
    let reply = bus
        .send_and_wait(&aggregates::open("h1"), SendOptions::default(), WAIT)
        .await
        .expect("a reply");
    assert!(aggregates::accepted(&reply), "{reply:?}");
    assert_eq!(bus.reader_error(), None);
    assert!(status.halted().is_empty(), "{:?}", status.halted());
    let letters = common::read_all(&config, &config.topic_name("bank.dlq"), 1, WAIT, true);
    assert_eq!(letters.len(), 1, "the bad command, once");
    let reason = &common::header_map(&letters[0])[dlq_headers::ERROR];
    assert!(reason.contains("not UTF-8"), "{reason}");
    assert!(has_bad_name(&letters[0]));
    processor
        .stop()
        .await
        .expect("the processor ran to its shutdown");

    // Other producers write into the aggregate's own log: a record with a bad header name and
    // a structured-mode event (no ce_sequence). A restore skips both (the processor wrote
    // neither), it does not halt.
    let events = config.topic_name("account.events");
    raw.send(
        FutureRecord::to(&events)
            .partition(partition)
            .key(&key[..])
            .payload(&br#"{"account":"h1"}"#[..])
            .headers(with_bad_name(&meta.to_headers())),
        Duration::from_secs(10),
    )
    .await
    .expect("foreign record");
    let structured = serde_json::json!({
        "specversion": "1.0", "id": "x-1", "source": "urn:elsewhere",
        "type": "v1.account.deposited", "data": {"account": "h1", "amount": 1000}
    });
    raw.send(
        FutureRecord::to(&events)
            .partition(partition)
            .key(&key[..])
            .payload(structured.to_string().as_bytes())
            .headers(pairs(&[("content-type", "application/cloudevents+json")])),
        Duration::from_secs(10),
    )
    .await
    .expect("foreign event");
    let processor = aggregates::start(&config, 0);
    let status = processor.status();
    aggregates::wait_ready(status, aggregates::PARTITIONS as usize).await;
    assert_eq!(status.foreign_records_skipped(), 2);
    let reply = bus
        .send_and_wait(&aggregates::withdraw("h1", 1), SendOptions::default(), WAIT)
        .await
        .expect("a reply");
    assert!(
        matches!(&reply.outcome, Outcome::Rejected { rejection } if rejection.code == "insufficient_funds"),
        "the foreign deposit is no part of the account: {reply:?}"
    );
    let reply = bus
        .send_and_wait(&aggregates::deposit("h1", 5), SendOptions::default(), WAIT)
        .await
        .expect("a reply");
    assert!(aggregates::accepted(&reply), "{reply:?}");
    assert!(status.halted().is_empty(), "{:?}", status.halted());
    processor
        .stop()
        .await
        .expect("the processor ran to its shutdown");
}

/// What [`BigReactor`] announces: its text is as long as the input's amount says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Announced {
    key: String,
    text: String,
}

impl choreo::Event for Announced {
    const NAME: &'static str = "v1.announcement.made";
    fn subject(&self) -> String {
        self.key.clone()
    }
}

/// Announces each bump with a text of `amount` bytes.
struct BigReactor;

impl Reactor for BigReactor {
    type Events = CounterBumped;
    const NAME: &'static str = "announcer";

    async fn react(
        &self,
        event: &Received<CounterBumped>,
        out: &mut Outputs<'_>,
    ) -> Result<(), ReactError> {
        let len = usize::try_from(event.payload.amount).unwrap_or(0);
        out.event(&Announced {
            key: event.payload.key.clone(),
            text: "x".repeat(len),
        })?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_the_broker_refuses_dead_letters_its_input_and_later_events_go_on() {
    let config = common::kafka("hostile-output");
    common::ensure_topics(
        &config,
        vec![
            TopicSpec::events("counter", 1, 1).expect("spec"),
            TopicSpec::events("announcement", 1, 1).expect("spec"),
            TopicSpec::dead_letters("announcer", 1).expect("spec"),
            TopicSpec::redrive("announcer", 1).expect("spec"),
        ],
    )
    .await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    for (key, len) in [("a", 10), ("huge", 2_000_000), ("b", 20)] {
        publisher.publish(&bump(key, len)).await.expect("publish");
    }
    let reactor = common::run_reactor(&config, ReactorRunner::new(BigReactor, "drill", 0));
    let status = reactor.status();
    common::eventually(
        "the small events reacted to, the huge one set aside",
        WAIT,
        || status.reacted() >= 2 && status.dead_lettered() >= 1,
    )
    .await;
    reactor
        .stop()
        .await
        .expect("the reactor ran to its shutdown");
    let outputs = common::read_all(
        &config,
        &config.topic_name("announcement.events"),
        2,
        WAIT,
        true,
    );
    let keys: Vec<&[u8]> = outputs.iter().filter_map(|r| r.key()).collect();
    assert_eq!(
        keys,
        vec![&b"a"[..], &b"b"[..]],
        "the outputs of a and b, once each"
    );
    let letters = common::read_all(&config, &config.topic_name("announcer.dlq"), 1, WAIT, true);
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].key(),
        Some(&b"huge"[..]),
        "the input, dead-lettered"
    );
    let reason = &common::header_map(&letters[0])[dlq_headers::ERROR];
    assert!(reason.contains("refused"), "{reason}");
}

// A document aggregate whose commands make events as large, as unencodable or as unappliable
// as asked.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Write {
    doc: String,
    /// The text's length.
    size: usize,
    /// Makes a second event that cannot be encoded.
    #[serde(default)]
    unencodable_second: bool,
    /// Makes `apply` panic on the event.
    #[serde(default)]
    panic_in_apply: bool,
}

impl choreo::Command for Write {
    const NAME: &'static str = "v1.doc.write";
    fn subject(&self) -> String {
        self.doc.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Written {
    doc: String,
    text: String,
    #[serde(default)]
    panic_in_apply: bool,
}

impl choreo::Event for Written {
    const NAME: &'static str = "v1.doc.written";
    fn subject(&self) -> String {
        self.doc.clone()
    }
}

/// An event whose encoding always fails (a map with a key JSON cannot have).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Broken {
    doc: String,
    #[serde(default)]
    table: BTreeMap<Vec<u8>, u8>,
}

impl choreo::Event for Broken {
    const NAME: &'static str = "v1.doc.broken";
    fn subject(&self) -> String {
        self.doc.clone()
    }
}

choreo::command_set! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum DocCommand {
        Write(Write),
    }
}

choreo::event_set! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum DocEvent {
        Written(Written),
        Broken(Broken),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Doc {
    writes: u64,
}

impl Aggregate for Doc {
    type Command = DocCommand;
    type Event = DocEvent;

    fn decide(&self, command: &DocCommand) -> Result<Vec<DocEvent>, Rejection> {
        let DocCommand::Write(w) = command;
        let mut events = vec![DocEvent::Written(Written {
            doc: w.doc.clone(),
            text: "x".repeat(w.size),
            panic_in_apply: w.panic_in_apply,
        })];
        if w.unencodable_second {
            events.push(DocEvent::Broken(Broken {
                doc: w.doc.clone(),
                table: [(vec![1], 1)].into_iter().collect(),
            }));
        }
        Ok(events)
    }

    fn apply(&mut self, event: &DocEvent) {
        if let DocEvent::Written(w) = event {
            assert!(!w.panic_in_apply, "apply refuses this event");
            self.writes += 1;
        }
    }
}

fn write(size: usize) -> DocCommand {
    DocCommand::Write(Write {
        doc: "d1".into(),
        size,
        unencodable_second: false,
        panic_in_apply: false,
    })
}

fn rejected(reply: &choreo::aggregate::Reply) -> String {
    match &reply.outcome {
        Outcome::Rejected { rejection } => rejection.code.clone(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_events_cannot_all_be_written_is_rejected_and_leaves_no_trace() {
    let config = common::kafka("hostile-decide");
    common::ensure_topics(
        &config,
        vec![
            TopicSpec::commands("doc", 1, 1).expect("spec"),
            TopicSpec::events("doc", 1, 1).expect("spec"),
            TopicSpec::replies("docs", 1, 1).expect("spec"),
            TopicSpec::dead_letters("docs", 1).expect("spec"),
        ],
    )
    .await;
    let processor =
        common::run_processor(&config, CommandProcessor::<Doc>::new("docs", "doc", 0, 1));
    let status = processor.status();
    aggregates::wait_ready(status, 1).await;
    let bus = CommandBus::new(&config, "docs", 0).await.expect("bus");
    let send = |command: DocCommand, options: SendOptions| {
        let bus = bus.clone();
        async move {
            bus.send_and_wait(&command, options, WAIT)
                .await
                .expect("reply")
        }
    };

    let first = send(write(10), SendOptions::default()).await;
    assert!(aggregates::accepted(&first), "{first:?}");
    // An event over the broker's limit: rejected, remembered, dead-lettered.
    let huge = SendOptions {
        id: Some(uuid::Uuid::now_v7()),
        ..SendOptions::default()
    };
    let reply = send(write(2_000_000), huge.clone()).await;
    assert_eq!(rejected(&reply), "output_refused", "{reply:?}");
    let again = send(write(2_000_000), huge).await;
    assert_eq!(
        rejected(&again),
        "output_refused",
        "a retry gets the first outcome"
    );
    // A second event that cannot be encoded: none of the two is written.
    let half = send(
        DocCommand::Write(Write {
            doc: "d1".into(),
            size: 1,
            unencodable_second: true,
            panic_in_apply: false,
        }),
        SendOptions::default(),
    )
    .await;
    assert_eq!(rejected(&half), "internal_error", "{half:?}");
    // An event `apply` panics on.
    let panics = send(
        DocCommand::Write(Write {
            doc: "d1".into(),
            size: 1,
            unencodable_second: false,
            panic_in_apply: true,
        }),
        SendOptions::default(),
    )
    .await;
    assert_eq!(rejected(&panics), "internal_error", "{panics:?}");
    // The next command gets the next sequence.
    let last = send(write(20), SendOptions::default()).await;
    assert!(aggregates::accepted(&last), "{last:?}");
    assert!(status.halted().is_empty(), "{:?}", status.halted());
    processor
        .stop()
        .await
        .expect("the processor ran to its shutdown");

    let log = common::read_all(&config, &config.topic_name("doc.events"), 2, WAIT, true);
    let sequences: Vec<String> = log
        .iter()
        .map(|r| common::header_map(r)["ce_sequence"].clone())
        .collect();
    assert_eq!(
        sequences,
        vec![format!("{:020}", 1), format!("{:020}", 2)],
        "two events, sequences contiguous"
    );
    let letters = common::read_all(&config, &config.topic_name("docs.dlq"), 1, WAIT, true);
    assert_eq!(letters.len(), 1, "the command whose event was refused");
    assert!(common::header_map(&letters[0])[dlq_headers::ERROR].contains("refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_its_topic_is_written_cut_rather_than_blocking() {
    let config = common::kafka("hostile-cut");
    // Outputs and dead letters may not exceed 100 kB here; the input is ~180 kB (its key is
    // 60 kB, and the key is also in the subject header and the payload). The broker refuses
    // the output, then the whole dead letter, then the one with its payload cut; the minimal
    // one fits.
    let limited = |spec: TopicSpec| {
        let mut spec = spec;
        spec.configs
            .insert("max.message.bytes".into(), "100000".into());
        spec
    };
    common::ensure_topics(
        &config,
        vec![
            TopicSpec::events("counter", 1, 1).expect("spec"),
            limited(TopicSpec::events("announcement", 1, 1).expect("spec")),
            limited(TopicSpec::dead_letters("announcer", 1).expect("spec")),
            TopicSpec::redrive("announcer", 1).expect("spec"),
        ],
    )
    .await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    let big_key = "k".repeat(60_000);
    let sent = publisher
        .prepare(&bump(&big_key, 10), None)
        .expect("prepare");
    publisher.send(&sent).await.expect("the big input");
    publisher.publish(&bump("after", 10)).await.expect("after");

    let reactor = common::run_reactor(&config, ReactorRunner::new(BigReactor, "drill", 0));
    let status = reactor.status();
    common::eventually(
        "the next event reacted to, the big one dead-lettered",
        WAIT,
        || status.reacted() >= 1 && status.dead_lettered() >= 1,
    )
    .await;
    reactor
        .stop()
        .await
        .expect("the reactor ran to its shutdown");

    let letters = common::read_all(&config, &config.topic_name("announcer.dlq"), 1, WAIT, true);
    assert_eq!(letters.len(), 1, "one dead letter");
    let h = common::header_map(&letters[0]);
    assert_eq!(h[dlq_headers::CUT], "payload,headers,key", "{h:?}");
    assert_eq!(
        h[dlq_headers::PAYLOAD_BYTES],
        sent.payload.len().to_string(),
        "the original payload's length"
    );
    assert_eq!(h[dlq_headers::PAYLOAD_SHA256].len(), 64, "a SHA-256 in hex");
    assert!(
        h[dlq_headers::ERROR].contains("refused"),
        "{}",
        h[dlq_headers::ERROR]
    );
    assert_eq!(
        letters[0].key(),
        Some(&big_key.as_bytes()[..1024]),
        "the key's first KiB"
    );
    assert_eq!(
        letters[0].payload(),
        Some(&sent.payload[..4096]),
        "the payload's first 4 KiB"
    );
    assert!(!h.contains_key("ce_subject"), "no original headers");
    let outputs = common::read_all(
        &config,
        &config.topic_name("announcement.events"),
        1,
        WAIT,
        true,
    );
    let keys: Vec<&[u8]> = outputs.iter().filter_map(|r| r.key()).collect();
    assert_eq!(keys, vec![&b"after"[..]], "the next event's output, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_dead_letter_too_large_for_its_topic_is_written_cut() {
    let config = common::kafka("hostile-handler-cut");
    let group = common::unique("cut-group");
    // The dead-letter topic takes records up to 100 kB; the rejected input is ~180 kB (its
    // 60 kB key is also in the subject header and the payload).
    let mut dlq = TopicSpec::dead_letters(&config.topic_name(&group), 1).expect("spec");
    dlq.configs
        .insert("max.message.bytes".into(), "100000".into());
    let dlq_name = dlq.name.clone();
    let mut events = TopicSpec::events("counter", 1, 1).expect("spec");
    events.name = config.topic_name(&events.name);
    TopicAdmin::new(&config)
        .expect("admin")
        .ensure(&[events, dlq])
        .await
        .expect("topics");
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    let big_key = "k".repeat(60_000);
    let mut poison = bump(&big_key, 1);
    poison.poison = true;
    publisher.publish(&poison).await.expect("the big input");
    publisher.publish(&bump("after", 1)).await.expect("after");

    let handled: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let handlers = common::run_handlers(
        &config,
        choreo::EventHandlers::new(group.clone()).on({
            let handled = Arc::clone(&handled);
            move |e: Received<CounterBumped>| {
                let handled = Arc::clone(&handled);
                async move {
                    if e.payload.poison {
                        return Err(choreo::HandlerError::poison(anyhow::anyhow!("poison")));
                    }
                    handled.lock().expect("lock").push(e.payload.key);
                    Ok(())
                }
            }
        }),
    );
    common::eventually("the next event handled", WAIT, || {
        !handled.lock().expect("lock").is_empty()
    })
    .await;
    let letters = common::read_all(&config, &dlq_name, 1, WAIT, true);
    let summary = handlers.stop().await.expect("run");
    assert!(summary.halted.is_empty(), "{:?}", summary.halted);
    assert_eq!(*handled.lock().expect("lock"), vec!["after".to_owned()]);
    assert_eq!(letters.len(), 1, "one dead letter");
    let h = common::header_map(&letters[0]);
    assert_eq!(h[dlq_headers::CUT], "payload,headers,key", "{h:?}");
    assert!(h[dlq_headers::ERROR].contains("poison"), "{h:?}");
    assert_eq!(
        letters[0].key(),
        Some(&big_key.as_bytes()[..1024]),
        "the key's first KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_refusal_in_a_batch_of_several_inputs_dead_letters_only_the_culprit() {
    let config = common::kafka("hostile-blame");
    // The broker refuses outputs over 100 kB (the client would send up to 1 MB): the refusal
    // comes back for the whole produce request, not for the one record, so the reactor must
    // find the culprit among the batch's inputs rather than blame the first.
    let mut outputs_topic = TopicSpec::events("announcement", 1, 1).expect("spec");
    outputs_topic
        .configs
        .insert("max.message.bytes".into(), "100000".into());
    common::ensure_topics(
        &config,
        vec![
            TopicSpec::events("counter", 1, 1).expect("spec"),
            outputs_topic,
            TopicSpec::dead_letters("announcer", 1).expect("spec"),
            TopicSpec::redrive("announcer", 1).expect("spec"),
        ],
    )
    .await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    for (key, len) in [("a", 10), ("b", 10), ("big", 150_000), ("c", 10), ("d", 10)] {
        publisher.publish(&bump(key, len)).await.expect("publish");
    }
    let reactor = common::run_reactor(
        &config,
        ReactorRunner::new(BigReactor, "drill", 0).max_batch(100),
    );
    let status = reactor.status();
    common::eventually("four outputs and one dead letter", WAIT, || {
        status.reacted() >= 4 && status.dead_lettered() >= 1
    })
    .await;
    reactor
        .stop()
        .await
        .expect("the reactor ran to its shutdown");
    let outputs = common::read_all(
        &config,
        &config.topic_name("announcement.events"),
        4,
        WAIT,
        true,
    );
    let keys: Vec<&[u8]> = outputs.iter().filter_map(|r| r.key()).collect();
    assert_eq!(
        keys,
        vec![&b"a"[..], &b"b"[..], &b"c"[..], &b"d"[..]],
        "every other input's output, once, in order"
    );
    let letters = common::read_all(&config, &config.topic_name("announcer.dlq"), 1, WAIT, true);
    assert_eq!(letters.len(), 1, "only the culprit is dead-lettered");
    assert_eq!(letters[0].key(), Some(&b"big"[..]));
}
