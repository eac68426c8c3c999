//! The mechanisms the mutation check (`scripts/mutants`) found no test for: each test here
//! fails when one of them is removed. A processor or reactor whose producer is fenced inside
//! its transaction (a hold point keeps the transaction open while a successor with the same
//! identity starts) stops as fenced, and its successor goes on; a restore halts a partition
//! whose events log has a gap or a repeat in an aggregate's `ce_sequence`; a command retried
//! after a restart gets the outcome remembered from the log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use choreo::aggregate::{CommandBus, SendOptions};
use choreo::kafka::{TopicSpec, partition_for_key};
use choreo::reactor::ReactorRunner;
use choreo::testing::CounterBumped;
use choreo::testing::echo::EchoReactor;
use choreo::{Publisher, Shutdown};
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use crate::aggregates::{
    PARTITIONS, accepted, bank_topics, check_log, committed_events, deposit, open, start,
    wait_ready,
};
use crate::common;
use crate::drills::tempfile_dir;
use crate::process::{Reaped, drill_command, spawn_watched, wait_exit};

/// One key per partition of a topic with `partitions` partitions, as `{prefix}-{n}`.
fn a_key_per_partition(prefix: &str, partitions: i32) -> Vec<String> {
    (0..partitions)
        .map(|p| {
            (0..)
                .map(|n| format!("{prefix}-{n}"))
                .find(|key| partition_for_key(key.as_bytes(), partitions) == p)
                .expect("a key for every partition")
        })
        .collect()
}

/// One event per key; returns their ids.
async fn publish_round(publisher: &Publisher, keys: &[String], amount: i64) -> BTreeSet<Uuid> {
    let mut ids = BTreeSet::new();
    for key in keys {
        let bump = CounterBumped {
            key: key.clone(),
            amount,
            poison: false,
        };
        ids.insert(publisher.publish(&bump).await.expect("publish").id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_fenced_inside_its_transaction_stops_and_its_successor_goes_on() {
    const POINT: &str = "command.before_commit";
    const HELD: &str = "choreo failpoint command.before_commit: holding";
    const FENCED: &str = "command processor fenced by a newer instance";
    let config = common::kafka("mech-processor-fence");
    bank_topics(&config).await;
    let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
    let wait = Duration::from_secs(30);
    let holds = tempfile_dir("processor-fence");
    let partitions = PARTITIONS.to_string();
    let mut command = drill_command(
        &config,
        "postgres://unused",
        &["process", "7", &partitions],
        None,
    );
    command
        .env("RUST_LOG", "choreo=info")
        .env("CHOREO_FAILPOINT_HOLD", POINT)
        .env("CHOREO_FAILPOINT_HOLD_DIR", &holds);
    let (first, seen) = spawn_watched(command, &[HELD, FENCED]);
    let mut first = Reaped(first);
    let seen = |i: usize| seen[i].load(Ordering::Acquire);
    // The first decides a command and holds its transaction open before the commit.
    let id = Uuid::now_v7();
    let pending = tokio::spawn({
        let bus = bus.clone();
        async move {
            let options = SendOptions {
                id: Some(id),
                ..SendOptions::default()
            };
            bus.send_and_wait(&open("f"), options, Duration::from_secs(120))
                .await
        }
    });
    common::eventually(
        "the first to hold its transaction before the commit",
        Duration::from_secs(90),
        || seen(0) > 0,
    )
    .await;
    // The successor's init_transactions fences the first's producer and aborts its open
    // transaction; it then takes the first's place in the group and restores.
    let second = start(&config, 7);
    wait_ready(second.status(), PARTITIONS as usize).await;
    std::fs::write(holds.join(POINT), b"").expect("release the first");
    let exit = wait_exit(&mut first.0, Duration::from_secs(60));
    assert!(!exit.success(), "the fenced processor stops with an error");
    assert!(
        seen(1) > 0,
        "its commit failed as fenced and it stopped on that, without a new producer (which \
         would fence its successor)"
    );
    // The successor decides the aborted command again, then goes on with new ones.
    let reply = pending.await.expect("join").expect("the successor answers");
    assert!(accepted(&reply), "{reply:?}");
    let reply = bus
        .send_and_wait(&open("g"), SendOptions::default(), wait)
        .await
        .expect("the successor goes on");
    assert!(accepted(&reply), "{reply:?}");
    second.stop().await.expect("the successor was never fenced");
    let log = committed_events(&config, 2, true);
    assert_eq!(log.len(), 2, "f and g opened once each");
    check_log(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactor_fenced_inside_its_transaction_stops_as_fenced_and_its_successor_goes_on() {
    const PARTITIONS: i32 = 3;
    const POINT: &str = "reactor.before_commit";
    const HELD: &str = "choreo failpoint reactor.before_commit: holding";
    const FENCED: &str = "reactor echo fenced by a newer instance";
    const UNKNOWN: &str = "transaction outcome unknown";
    let config = common::kafka("mech-reactor-fence");
    common::ensure_topics(
        &config,
        vec![
            TopicSpec::events("counter", PARTITIONS, 1).expect("spec"),
            TopicSpec::events("echo", PARTITIONS, 1).expect("spec"),
            TopicSpec::dead_letters("echo", 1).expect("spec"),
            TopicSpec::redrive("echo", 1).expect("spec"),
        ],
    )
    .await;
    let (url, pool) = common::fresh_database("mech_reactor_fence").await;
    EchoReactor::setup(&pool).await.expect("setup");
    let keys = a_key_per_partition("k", PARTITIONS);
    let publisher = Publisher::new(&config, "/drill-source").expect("publisher");
    let mut inputs = publish_round(&publisher, &keys, 1).await;

    let holds = tempfile_dir("reactor-fence");
    let mut command = drill_command(&config, &url, &["react", "0"], None);
    command
        .env("RUST_LOG", "choreo=info")
        .env("CHOREO_FAILPOINT_HOLD", POINT)
        .env("CHOREO_FAILPOINT_HOLD_DIR", &holds);
    let (first, seen) = spawn_watched(command, &[HELD, FENCED, UNKNOWN]);
    let mut first = Reaped(first);
    let seen = |i: usize| seen[i].load(Ordering::Acquire);
    common::eventually(
        "the first to hold its transaction before the commit",
        Duration::from_secs(90),
        || seen(0) > 0,
    )
    .await;
    // The successor (same service and ordinal) fences the first's producer, then takes its
    // place in the group.
    let second_stop = Shutdown::new();
    let runner = ReactorRunner::new(EchoReactor::new(pool.clone()), "drill", 0).max_batch(20);
    let second_status = runner.status();
    let second = tokio::spawn({
        let (config, stop) = (config.clone(), second_stop.clone());
        async move { runner.run(&config, stop).await }
    });
    common::eventually("the successor joins", Duration::from_secs(60), || {
        !second_status.assigned().is_empty()
    })
    .await;
    std::fs::write(holds.join(POINT), b"").expect("release the first");
    let exit = wait_exit(&mut first.0, Duration::from_secs(60));
    assert!(!exit.success(), "the fenced reactor stops with an error");
    assert!(
        seen(1) > 0 && seen(2) == 0,
        "its commit failed as fenced and it says so, not that the outcome is unknown (whose \
         advice, a restart, would fence its successor)"
    );
    inputs.extend(publish_round(&publisher, &keys, 2).await);

    // The successor reacts to every event, those of the aborted transaction included.
    let echo = config.topic_name("echo.events");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while common::read_all(&config, &echo, inputs.len(), Duration::from_secs(5), true).len()
        < inputs.len()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the successor did not react to every event"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    second_stop.trigger();
    second
        .await
        .expect("join")
        .expect("the successor was never fenced");
    let mut per_cause: BTreeMap<Uuid, usize> = BTreeMap::new();
    for record in common::read_all(&config, &echo, inputs.len(), Duration::from_secs(5), true) {
        let cause = common::header_map(&record)["ce_causationid"]
            .parse()
            .expect("causation id");
        *per_cause.entry(cause).or_default() += 1;
    }
    assert_eq!(
        per_cause.keys().copied().collect::<BTreeSet<_>>(),
        inputs,
        "an output for every input"
    );
    assert!(
        per_cause.values().all(|&n| n == 1),
        "each output committed once: {per_cause:?}"
    );
}

/// Writes `record` again to its partition with a fresh `ce_id` and `ce_sequence` set to
/// `sequence`: a write the processor never made (a second writer, a corrupted copy).
async fn forge(producer: &FutureProducer, record: &rdkafka::message::OwnedMessage, sequence: &str) {
    let id = Uuid::now_v7().to_string();
    let mut headers = OwnedHeaders::new();
    for h in record.headers().expect("headers").iter() {
        let value = match h.key {
            "ce_id" => Some(id.as_bytes()),
            "ce_sequence" => Some(sequence.as_bytes()),
            _ => h.value,
        };
        headers = headers.insert(Header { key: h.key, value });
    }
    let key = record.key().expect("key");
    let payload = record.payload().expect("payload");
    producer
        .send(
            FutureRecord::to(record.topic())
                .partition(record.partition())
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("forged record written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_or_a_repeat_in_an_aggregates_sequence_halts_only_its_partition() {
    let config = common::kafka("mech-restore-sequence");
    bank_topics(&config).await;
    let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
    let wait = Duration::from_secs(30);
    // One account per partition: 0 gets a repeat, 1 a gap, 2 stays whole.
    let accounts = a_key_per_partition("acct", PARTITIONS);
    let running = start(&config, 0);
    let status = running.status().clone();
    wait_ready(&status, PARTITIONS as usize).await;
    for account in &accounts {
        let reply = bus
            .send_and_wait(&open(account), SendOptions::default(), wait)
            .await
            .expect("reply");
        assert!(accepted(&reply), "{reply:?}");
    }
    running.stop().await.expect("run");

    let log = committed_events(&config, accounts.len(), true);
    let opened = |p: i32| {
        log.iter()
            .find(|r| r.partition() == p)
            .expect("the account's event")
    };
    let producer: FutureProducer = config.client_config(&[]).create().expect("producer");
    forge(&producer, opened(0), "1").await;
    forge(&producer, opened(1), "3").await;

    let running = start(&config, 0);
    let status = running.status().clone();
    common::eventually(
        "two partitions halted, the third ready",
        Duration::from_secs(60),
        || status.halted().len() == 2 && status.ready_partitions() == vec![2],
    )
    .await;
    let halted: BTreeMap<i32, String> = status.halted().into_iter().collect();
    assert!(
        halted[&0].contains(&format!("{} jumps from 1 to 1", accounts[0])),
        "a repeat: {}",
        halted[&0]
    );
    assert!(
        halted[&1].contains(&format!("{} jumps from 1 to 3", accounts[1])),
        "a gap: {}",
        halted[&1]
    );
    // The whole partition goes on.
    let reply = bus
        .send_and_wait(&deposit(&accounts[2], 5), SendOptions::default(), wait)
        .await
        .expect("reply");
    assert!(accepted(&reply), "{reply:?}");
    running.stop().await.expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_retried_after_a_restart_gets_the_first_outcome_and_is_not_decided_again() {
    let config = common::kafka("mech-restore-memory");
    bank_topics(&config).await;
    let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
    let wait = Duration::from_secs(30);
    let running = start(&config, 0);
    let status = running.status().clone();
    wait_ready(&status, PARTITIONS as usize).await;
    let opened = bus
        .send_and_wait(&open("ada"), SendOptions::default(), wait)
        .await
        .expect("reply");
    assert!(accepted(&opened), "{opened:?}");
    let retry = SendOptions {
        id: Some(Uuid::now_v7()),
        ..SendOptions::default()
    };
    let first = bus
        .send_and_wait(&deposit("ada", 100), retry.clone(), wait)
        .await
        .expect("reply");
    assert!(accepted(&first), "{first:?}");
    running.stop().await.expect("run");

    // The restarted processor knows the command id only from its events log.
    let running = start(&config, 0);
    let status = running.status().clone();
    wait_ready(&status, PARTITIONS as usize).await;
    let again = bus
        .send_and_wait(&deposit("ada", 100), retry, wait)
        .await
        .expect("reply");
    assert_eq!(
        again.outcome, first.outcome,
        "the retry gets the first outcome, offsets included"
    );
    running.stop().await.expect("run");
    let log = committed_events(&config, 2, true);
    assert_eq!(log.len(), 2, "opened, deposited once");
    assert_eq!(check_log(&log)["ada"], 100);
}
