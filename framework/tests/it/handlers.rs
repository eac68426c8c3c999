//! Event handlers: dead letters for bad input, retries for transient failures.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use choreo::kafka::{RecordHeaders, dlq_headers};
use choreo::{EventHandlers, HandlerError, Publisher, Received, UnknownTypes};
use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common::{self, Running, UserSignedUp, signup};

/// Sends a raw record, as a foreign or broken producer would.
async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: OwnedHeaders,
) {
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("raw send");
}

fn valid_headers(out: &choreo::kafka::Outgoing, skip: &str) -> OwnedHeaders {
    use rdkafka::message::Headers;
    let mut headers = OwnedHeaders::new();
    for h in out.meta().to_headers().iter().filter(|h| h.key != skip) {
        headers = headers.insert(Header {
            key: h.key,
            value: h.value,
        });
    }
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_go_to_the_dead_letter_topic_with_the_reason_and_later_events_are_handled() {
    let config = common::kafka("dlq");
    let topic = common::create_events_topic(&config, "user", 1).await;
    let group = common::unique("dlq-group");
    let dlq = common::create_dlq(&config, &group).await;
    let publisher = Publisher::new(&config, "/test-service").expect("publisher");
    let raw: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", config.brokers())
        .create()
        .expect("producer");

    publisher.publish(&signup(1)).await.expect("good event 1");
    // 1. malformed JSON payload, valid headers
    let out = publisher.prepare(&signup(2), None).expect("prepare");
    send_raw(
        &raw,
        &topic,
        &out.key,
        b"{\"user_id\": 12",
        valid_headers(&out, ""),
    )
    .await;
    // 2. a missing header
    let out = publisher.prepare(&signup(3), None).expect("prepare");
    send_raw(
        &raw,
        &topic,
        &out.key,
        &out.payload,
        valid_headers(&out, "ce_id"),
    )
    .await;
    // 3. a header name that is not UTF-8 (rdkafka's own header reader panics on it)
    let out = publisher.prepare(&signup(4), None).expect("prepare");
    let valid = RecordHeaders::from_owned(&valid_headers(&out, ""));
    let headers = RecordHeaders::from_pairs(
        valid
            .iter()
            .map(|h| (h.name, h.value))
            .chain([(&b"x-\xff\xfe"[..], Some(&b"v"[..]))]),
    )
    .to_owned_headers();
    send_raw(&raw, &topic, &out.key, &out.payload, headers).await;
    // 4. a type nobody handles (a future major version)
    let out = publisher.prepare(&signup(5), None).expect("prepare");
    let mut headers = valid_headers(&out, "ce_type");
    headers = headers.insert(Header {
        key: "ce_type",
        value: Some("v2.user.signedup"),
    });
    send_raw(&raw, &topic, &out.key, &out.payload, headers).await;
    // 5. a key that differs from ce_subject
    let out = publisher.prepare(&signup(6), None).expect("prepare");
    send_raw(
        &raw,
        &topic,
        "someone-else",
        &out.payload,
        valid_headers(&out, ""),
    )
    .await;
    // 6. a handler that rejects permanently, 7. a handler that panics
    publisher.publish(&signup(7)).await.expect("event 7");
    publisher.publish(&signup(8)).await.expect("event 8");
    // later good events
    publisher.publish(&signup(9)).await.expect("good event 9");

    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let runner = Running::spawn({
        let (config, handled, group) = (config.clone(), Arc::clone(&handled), group.clone());
        move |shutdown| async move {
            EventHandlers::new(group)
                .unknown_types(UnknownTypes::DeadLetter)
                .on(move |e: Received<UserSignedUp>| {
                    let handled = Arc::clone(&handled);
                    async move {
                        match e.payload.user_id.as_str() {
                            "u-7" => Err(HandlerError::poison(anyhow::anyhow!("user 7 is banned"))),
                            "u-8" => panic!("handler bug on user 8"),
                            _ => {
                                handled.lock().expect("lock").push(e.payload.user_id);
                                Ok(())
                            }
                        }
                    }
                })
                .run(&config, shutdown)
                .await
        }
    });
    common::eventually("good events handled", Duration::from_secs(30), || {
        handled.lock().expect("lock").len() >= 2
    })
    .await;
    let letters = common::read_all(&config, &dlq, 7, Duration::from_secs(30), true);
    let summary = runner.stop().await.expect("run");
    assert!(summary.halted.is_empty(), "{:?}", summary.halted);
    assert_eq!(
        *handled.lock().expect("lock"),
        vec!["u-1".to_owned(), "u-9".to_owned()]
    );

    assert_eq!(letters.len(), 7, "seven dead letters");
    let reasons: Vec<String> = letters
        .iter()
        .map(|m| {
            let h = common::header_map(m);
            assert_eq!(h[dlq_headers::TOPIC], topic, "origin topic");
            assert_eq!(h[dlq_headers::GROUP], config.topic_name(&group));
            assert!(h.contains_key(dlq_headers::TIME) && h.contains_key(dlq_headers::PARTITION));
            h[dlq_headers::ERROR].clone()
        })
        .collect();
    let offsets: BTreeSet<i64> = letters
        .iter()
        .map(|m| {
            common::header_map(m)[dlq_headers::OFFSET]
                .parse()
                .expect("offset")
        })
        .collect();
    assert_eq!(
        offsets,
        (1..=7).collect(),
        "the origin offsets of the seven bad records"
    );
    for (i, needle) in [
        "payload",
        "ce_id",
        "name that is not UTF-8",
        "no handler for type v2.user.signedup",
        "differs from header ce_subject",
        "user 7 is banned",
        "panicked: handler bug on user 8",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            reasons[i].contains(needle),
            "dead letter {i}: {:?} should mention {needle:?}",
            reasons[i]
        );
    }
    // The original payload and key are kept.
    assert_eq!(letters[0].payload(), Some(&b"{\"user_id\": 12"[..]));
    assert_eq!(letters[4].key(), Some(&b"someone-else"[..]));
    assert!(
        common::header_map(&letters[1]).contains_key("ce_type"),
        "original headers kept"
    );
    // ...byte for byte, the name that is not UTF-8 too.
    let kept = RecordHeaders::from_owned(letters[2].headers().expect("headers"));
    assert_eq!(
        kept.last("x-\u{fffd}\u{fffd}"),
        None,
        "not replaced by a lossy copy"
    );
    assert!(
        kept.iter()
            .any(|h| h.name == b"x-\xff\xfe" && h.value == Some(&b"v"[..])),
        "the raw name is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_longer_than_max_poll_interval_keeps_the_partition_and_then_succeeds() {
    let config = common::kafka("transient");
    common::create_events_topic(&config, "user", 2).await;
    let group = common::unique("transient-group");
    common::create_dlq(&config, &group).await;
    let publisher = Publisher::new(&config, "/test-service").expect("publisher");
    for i in 0..10 {
        publisher.publish(&signup(i)).await.expect("publish");
    }
    // The failures last 14 s from the first attempt (not from the start of the test: the
    // group's join takes longer on a slower machine).
    let first_failure = Arc::new(std::sync::OnceLock::<Instant>::new());
    let attempts = Arc::new(AtomicU32::new(0));
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let runner = Running::spawn({
        let (config, handled, attempts, first_failure) = (
            config.clone(),
            Arc::clone(&handled),
            Arc::clone(&attempts),
            Arc::clone(&first_failure),
        );
        move |shutdown| async move {
            EventHandlers::new(group)
                // max.poll.interval.ms of 7 s: far shorter than the 14 s of failures.
                .configure(|s| {
                    s.property("session.timeout.ms", "6000")
                        .property("max.poll.interval.ms", "7000")
                })
                .on(move |e: Received<UserSignedUp>| {
                    let (handled, attempts, first_failure) = (
                        Arc::clone(&handled),
                        Arc::clone(&attempts),
                        Arc::clone(&first_failure),
                    );
                    async move {
                        let failing = || {
                            first_failure.get_or_init(Instant::now).elapsed()
                                < Duration::from_secs(14)
                        };
                        if e.payload.user_id == "u-0" && failing() {
                            attempts.fetch_add(1, Ordering::Relaxed);
                            return Err(HandlerError::transient(anyhow::anyhow!(
                                "database is down"
                            )));
                        }
                        handled.lock().expect("lock").push(e.payload.user_id);
                        Ok(())
                    }
                })
                .run(&config, shutdown)
                .await
        }
    });
    common::eventually("all ten handled", Duration::from_secs(60), || {
        handled.lock().expect("lock").len() >= 10
    })
    .await;
    let summary = runner.stop().await.expect("run");
    let handled = handled.lock().expect("lock").clone();
    let unique: BTreeSet<&String> = handled.iter().collect();
    assert_eq!(unique.len(), 10, "every event handled: {handled:?}");
    assert_eq!(
        handled.len(),
        10,
        "none twice (the member never lost its partitions): {handled:?}"
    );
    assert!(
        attempts.load(Ordering::Relaxed) >= 5,
        "the failing event was retried with back-off"
    );
    assert_eq!(
        summary.assignments, 1,
        "assigned once: polling continued while the handler retried, so the member was never evicted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_dead_letter_goes_back_to_its_group_and_is_handled() {
    let config = common::kafka("redrive");
    common::create_events_topic(&config, "user", 1).await;
    let group = common::unique("redrive-group");
    common::create_dlq(&config, &group).await;
    // The group id, and so the names of its topics, carry the namespace.
    let group_id = config.topic_name(&group);
    let redrive = choreo::kafka::TopicSpec::new(format!("{group_id}.redrive"), 1, 1).expect("spec");
    choreo::TopicAdmin::new(&config)
        .expect("admin")
        .ensure(&[redrive])
        .await
        .expect("redrive topic");
    let publisher = Publisher::new(&config, "/test-service").expect("publisher");
    publisher.publish(&signup(7)).await.expect("publish");

    // The first attempt rejects user 7 (say, a bug since fixed); the redriven copy succeeds.
    let rejected_once = Arc::new(AtomicU32::new(0));
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let runner = Running::spawn({
        let (config, handled, rejected_once, group) = (
            config.clone(),
            Arc::clone(&handled),
            Arc::clone(&rejected_once),
            group.clone(),
        );
        move |shutdown| async move {
            EventHandlers::new(group)
                .on(move |e: Received<UserSignedUp>| {
                    let (handled, rejected_once) =
                        (Arc::clone(&handled), Arc::clone(&rejected_once));
                    async move {
                        if rejected_once.fetch_add(1, Ordering::SeqCst) == 0 {
                            return Err(HandlerError::poison(anyhow::anyhow!("not yet")));
                        }
                        handled
                            .lock()
                            .expect("lock")
                            .push(format!("{}@{}", e.payload.user_id, e.origin.topic));
                        Ok(())
                    }
                })
                .run(&config, shutdown)
                .await
        }
    });
    let dlq = format!("{group_id}.dlq");
    assert_eq!(
        common::read_all(&config, &dlq, 1, Duration::from_secs(30), true).len(),
        1,
        "dead-lettered first"
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_choreo"))
        .args([
            "--brokers",
            config.brokers(),
            "dlq",
            "redrive",
            &group_id,
            "--all",
        ])
        .status()
        .expect("run choreo dlq redrive");
    assert!(status.success());
    common::eventually(
        "the redriven event to be handled",
        Duration::from_secs(30),
        || !handled.lock().expect("lock").is_empty(),
    )
    .await;
    runner.stop().await.expect("run");
    assert_eq!(
        *handled.lock().expect("lock"),
        vec![format!("u-7@{group_id}.redrive")],
        "handled from the group's own redrive topic"
    );
}

/// The offsets `group_id` committed on `topic`'s partitions, read with a plain rdkafka
/// consumer (`None` for a partition the group never committed).
fn committed(
    config: &choreo::KafkaConfig,
    group_id: &str,
    topic: &str,
    partitions: i32,
) -> Vec<Option<i64>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", config.brokers())
        .set("group.id", group_id)
        .create()
        .expect("raw consumer");
    let mut wanted = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        wanted.add_partition(topic, p);
    }
    let found = consumer
        .committed_offsets(wanted, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| {
            found
                .find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_sharing_a_group_name_keep_their_groups_and_dead_letters_apart() {
    // Two stacks on one broker, each in its own namespace, running handlers of the same name.
    let group = common::unique("shared-group");
    let stacks = [common::kafka("ns-a"), common::kafka("ns-b")];
    let mut topics = Vec::new();
    let mut dlqs = Vec::new();
    for (i, config) in stacks.iter().enumerate() {
        topics.push(common::create_events_topic(config, "user", 2).await);
        // Only the namespaced dead-letter topic exists: a handler that looked for the bare
        // `{group}.dlq` would stop at start with TopicMissing.
        dlqs.push(common::create_dlq(config, &group).await);
        let publisher = Publisher::new(config, "/test-service").expect("publisher");
        // Stack a: users 0..3 and the rejected user 900; stack b: users 10..13 and 901.
        for user in [i * 10, i * 10 + 1, i * 10 + 2, 900 + i] {
            publisher.publish(&signup(user)).await.expect("publish");
        }
    }

    let handled: [Arc<Mutex<BTreeSet<String>>>; 2] = Default::default();
    let runners: Vec<_> = stacks
        .iter()
        .zip(&handled)
        .map(|(config, handled)| {
            let (config, handled, group) = (config.clone(), Arc::clone(handled), group.clone());
            Running::spawn(move |shutdown| async move {
                EventHandlers::new(group)
                    .on(move |e: Received<UserSignedUp>| {
                        let handled = Arc::clone(&handled);
                        async move {
                            if e.payload.user_id.starts_with("u-90") {
                                return Err(HandlerError::poison(anyhow::anyhow!(
                                    "{} is banned",
                                    e.payload.user_id
                                )));
                            }
                            handled.lock().expect("lock").insert(e.payload.user_id);
                            Ok(())
                        }
                    })
                    .run(&config, shutdown)
                    .await
            })
        })
        .collect();
    common::eventually(
        "both stacks handle their events",
        Duration::from_secs(30),
        || handled.iter().all(|h| h.lock().expect("lock").len() >= 3),
    )
    .await;
    // Each stack's letter is written (its rejected event is handled) before they stop.
    for (config, dlq) in stacks.iter().zip(&dlqs) {
        common::read_all(config, dlq, 1, Duration::from_secs(30), true);
    }
    // Both stopped at once.
    for runner in &runners {
        runner.shutdown().trigger();
    }
    for runner in runners {
        let summary = runner.stop().await.expect("run");
        assert!(summary.halted.is_empty(), "{:?}", summary.halted);
    }
    // One letter expected each; read after both stopped, to the end of each dead-letter
    // topic, so a letter of the other stack would show too.
    let letters: Vec<_> = stacks
        .iter()
        .zip(&dlqs)
        .map(|(config, dlq)| common::read_all(config, dlq, 1, Duration::from_secs(30), true))
        .collect();

    for (i, config) in stacks.iter().enumerate() {
        let expected: BTreeSet<String> = (0..3).map(|u| format!("u-{}", i * 10 + u)).collect();
        assert_eq!(
            *handled[i].lock().expect("lock"),
            expected,
            "stack {i} handled its own events only"
        );
        let group_id = config.topic_name(&group);
        assert_eq!(letters[i].len(), 1, "stack {i}: one dead letter, its own");
        let h = common::header_map(&letters[i][0]);
        assert_eq!(h[dlq_headers::GROUP], group_id);
        assert_eq!(h[dlq_headers::TOPIC], topics[i]);
        assert_eq!(
            h[dlq_headers::ERROR],
            format!("handler rejected it: u-{} is banned", 900 + i)
        );
        // The offsets were committed under the namespaced group id, all four records of the
        // stack's topic, and nothing under the bare name.
        let offsets = committed(config, &group_id, &topics[i], 2);
        assert_eq!(
            offsets.iter().flatten().sum::<i64>(),
            4,
            "stack {i} committed its four records as {group_id}: {offsets:?}"
        );
        assert_eq!(
            committed(config, &group, &topics[i], 2),
            vec![None, None],
            "nothing committed under the bare group name"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_not_marked_transient_is_retried_for_a_while_then_halts_its_partition() {
    let config = common::kafka("unclassified");
    common::create_events_topic(&config, "user", 1).await;
    let group = common::unique("unclassified-group");
    common::create_dlq(&config, &group).await;
    let publisher = Publisher::new(&config, "/test-service").expect("publisher");
    publisher.publish(&signup(0)).await.expect("publish");
    let attempts = Arc::new(AtomicU32::new(0));
    let mut handlers = EventHandlers::new(group)
        .retry_unclassified_for(Duration::from_secs(3))
        .on({
            let attempts = Arc::clone(&attempts);
            move |_: Received<UserSignedUp>| {
                let attempts = Arc::clone(&attempts);
                async move {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    // A bug surfacing through `?`: neither transient nor permanent.
                    let value: u32 = "not a number".parse().map_err(anyhow::Error::from)?;
                    let _ = value;
                    Ok(())
                }
            }
        });
    let status = handlers.status();
    let runner = common::run_handlers(&config, handlers);
    // While it is retried, the status says so, with the error and since when.
    common::eventually(
        "the partition to show as retrying",
        Duration::from_secs(60),
        || {
            status
                .retrying()
                .iter()
                .any(|(_, p, reason, _)| *p == 0 && reason.contains("invalid digit"))
        },
    )
    .await;
    assert!(status.is_ready(), "retrying is not halted");
    // Then it halts with the reason, and no longer shows as retrying.
    common::eventually("the partition to halt", Duration::from_secs(60), || {
        !status.halted().is_empty()
    })
    .await;
    let halted = status.halted();
    assert!(
        halted[0].2.contains("not marked transient or poison")
            && halted[0].2.contains("invalid digit"),
        "{halted:?}"
    );
    assert!(status.retrying().is_empty(), "{:?}", status.retrying());
    assert!(!status.is_ready());
    assert!(
        attempts.load(Ordering::Relaxed) >= 2,
        "it was retried first"
    );
    let summary = runner.stop().await.expect("run");
    assert_eq!(summary.halted.len(), 1, "{summary:?}");
}
