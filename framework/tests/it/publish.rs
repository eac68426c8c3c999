//! The publisher and the envelope on the wire.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo::kafka::{Outgoing, PublishErrorKind, partition_for_key};
use choreo::{Causation, EventHandlers, HandlerError, Metadata, Publisher, Received};
use rdkafka::Message;

use crate::common::{self, UserSignedUp, signup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_field_survives_the_round_trip_and_is_plain_cloudevents_on_the_wire() {
    let config = common::kafka("roundtrip");
    let topic = common::create_events_topic(&config, "user", 3).await;
    let publisher = Publisher::new(&config, "/test-service").expect("publisher");

    // Every field set, including sequence, trace context and an extension.
    let event = signup(1);
    let cause = Causation {
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: uuid::Uuid::now_v7(),
    };
    let mut out = publisher.prepare(&event, Some(cause)).expect("prepare");
    let mut meta: Metadata = out.meta().clone();
    meta.sequence = Some(7);
    meta.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    meta.extensions.insert("tenant".into(), "acme".into());
    out = Outgoing::new(out.topic.clone(), meta.clone(), out.payload.clone());
    let delivered = publisher.send(&out).await.expect("send");
    assert_eq!(delivered.id, meta.id);
    assert_eq!(
        delivered.partition,
        partition_for_key(event.email.as_bytes(), 3),
        "murmur2 like the Java client"
    );

    // Through choreo's own decoder.
    let seen: Arc<Mutex<Vec<Received<UserSignedUp>>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let group = common::unique("roundtrip-group");
    common::create_dlq(&config, &group).await;
    let handlers = common::run_handlers(
        &config,
        EventHandlers::new(group).on(move |e: Received<UserSignedUp>| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().expect("lock").push(e);
                Ok::<_, HandlerError>(())
            }
        }),
    );
    common::eventually("the event to be handled", Duration::from_secs(30), || {
        !seen.lock().expect("lock").is_empty()
    })
    .await;
    handlers.stop().await.expect("run");
    let got = seen.lock().expect("lock")[0].clone();
    assert_eq!(got.meta, meta, "every attribute intact");
    assert_eq!(got.payload, event);
    assert_eq!(
        (
            got.origin.topic.as_str(),
            got.origin.partition,
            got.origin.offset
        ),
        (topic.as_str(), delivered.partition, delivered.offset)
    );

    // Through a plain rdkafka consumer: the raw headers are the CloudEvents Kafka binding.
    let raw = common::read_all(&config, &topic, 1, Duration::from_secs(20), true);
    assert_eq!(raw.len(), 1);
    let headers = common::header_map(&raw[0]);
    let id = meta.id.to_string();
    let correlation = cause.correlation_id.to_string();
    let causation = cause.causation_id.to_string();
    for (key, want) in [
        ("ce_specversion", "1.0"),
        ("ce_id", id.as_str()),
        ("ce_type", "v1.user.signedup"),
        ("ce_source", "/test-service"),
        ("ce_subject", "user1@example.com"),
        ("content-type", "application/json"),
        ("ce_correlationid", correlation.as_str()),
        ("ce_causationid", causation.as_str()),
        ("ce_sequence", "00000000000000000007"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("ce_tenant", "acme"),
    ] {
        assert_eq!(
            headers.get(key).map(String::as_str),
            Some(want),
            "header {key}: {headers:?}"
        );
    }
    assert!(
        chrono::DateTime::parse_from_rfc3339(&headers["ce_time"]).is_ok(),
        "ce_time is RFC 3339"
    );
    assert_eq!(
        raw[0].key(),
        Some(&b"user1@example.com"[..]),
        "key = subject"
    );
    let body: serde_json::Value =
        serde_json::from_slice(raw[0].payload().expect("payload")).expect("value is the JSON data");
    assert_eq!(body["email"], "user1@example.com");
    assert!(
        body.get("specversion").is_none(),
        "binary mode: the value is the data, not a structured event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sends_in_flight_each_resolve_to_partition_and_offset() {
    let config = common::kafka("inflight");
    let partitions = 6;
    common::create_events_topic(&config, "user", partitions).await;
    let publisher = Publisher::new(&config, "/test-service").expect("publisher");
    let events: Vec<UserSignedUp> = (0..2000).map(signup).collect();
    let sends = events.iter().map(|e| publisher.publish(e));
    let results = futures::future::join_all(sends).await;
    let mut per_partition = vec![Vec::new(); partitions as usize];
    for (event, result) in events.iter().zip(results) {
        let delivered = result.expect("delivered");
        assert_eq!(
            delivered.partition,
            partition_for_key(event.email.as_bytes(), partitions)
        );
        per_partition[delivered.partition as usize].push(delivered.offset);
    }
    for (p, offsets) in per_partition.iter_mut().enumerate() {
        offsets.sort_unstable();
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(
            *offsets, expected,
            "partition {p}: offsets are distinct and contiguous (idempotent producer)"
        );
    }
    assert!(
        per_partition.iter().filter(|o| !o.is_empty()).count() > 1,
        "keys spread over partitions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_a_typed_error() {
    let config = common::kafka("oversized");
    common::create_events_topic(&config, "user", 1).await;
    let publisher = Publisher::new(&config, "/test-service").expect("publisher");
    let mut event = signup(1);
    event.name = "x".repeat(2_000_000);
    let err = publisher.publish(&event).await.expect_err("too large");
    assert_eq!(err.kind, PublishErrorKind::TooLarge, "{err}");
    assert!(!err.is_retriable());
    assert!(err.to_string().contains("message.max.bytes"), "{err}");
    // The publisher still works afterwards.
    publisher
        .publish(&signup(2))
        .await
        .expect("a normal event still goes through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_missing_topic_is_a_fatal_error_not_an_auto_created_topic() {
    let config = common::kafka("missingtopic");
    let publisher = Publisher::new(&config, "/test-service").expect("publisher");
    let err = publisher.publish(&signup(1)).await.expect_err("no topic");
    assert_eq!(err.kind, PublishErrorKind::Fatal, "{err}");
}
