//! Reactors: one committed output per input event, effects claimed through the inbox, poison
//! events dead-lettered, transient failures retried; and a reactor process killed at its
//! failpoints, which must lose and duplicate nothing (outputs in read_committed, effects).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use choreo::kafka::TopicSpec;
use choreo::reactor::ReactorRunner;
use choreo::testing::CounterBumped;
use choreo::testing::echo::EchoReactor;
use choreo::{KafkaConfig, Publisher};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use uuid::Uuid;

use crate::common;
use crate::process::{drill, stop, wait_exit};

const PARTITIONS: i32 = 3;

/// `counter.events` (input), `echo.events` (output), `echo.dlq`, in the test's namespace.
async fn echo_topics(config: &KafkaConfig) {
    common::ensure_topics(
        config,
        vec![
            TopicSpec::events("counter", PARTITIONS, 1).expect("spec"),
            TopicSpec::events("echo", PARTITIONS, 1).expect("spec"),
            TopicSpec::dead_letters("echo", 1).expect("spec"),
            TopicSpec::redrive("echo", 1).expect("spec"),
        ],
    )
    .await;
}

/// Publishes the events; returns their ids.
async fn publish(config: &KafkaConfig, events: &[CounterBumped]) -> Vec<Uuid> {
    let publisher = Publisher::new(config, "/drill-source").expect("publisher");
    let mut ids = Vec::new();
    for result in futures::future::join_all(events.iter().map(|e| publisher.publish(e))).await {
        ids.push(result.expect("publish").id);
    }
    ids
}

fn bumps(n: usize) -> Vec<CounterBumped> {
    (0..n)
        .map(|i| CounterBumped {
            key: format!("k{}", i % 7),
            amount: i as i64 + 1,
            poison: false,
        })
        .collect()
}

fn outputs(config: &KafkaConfig, expected: usize, committed: bool) -> Vec<OwnedMessage> {
    common::read_all(
        config,
        &config.topic_name("echo.events"),
        expected,
        Duration::from_secs(30),
        committed,
    )
}

/// Committed outputs: exactly one per input id, with the derived id. Returns their count.
fn check_one_output_each(config: &KafkaConfig, inputs: &BTreeSet<Uuid>) -> usize {
    let log = outputs(config, inputs.len(), true);
    let mut per_cause: BTreeMap<Uuid, usize> = BTreeMap::new();
    for record in &log {
        let h = common::header_map(record);
        assert_eq!(h["ce_type"], "v1.echo.recorded");
        let cause: Uuid = h["ce_causationid"].parse().expect("causation id");
        let id: Uuid = h["ce_id"].parse().expect("id");
        assert_eq!(
            id,
            Uuid::new_v5(&cause, b"echo/0"),
            "output ids derive from the cause"
        );
        *per_cause.entry(cause).or_default() += 1;
    }
    assert_eq!(
        per_cause.keys().copied().collect::<BTreeSet<_>>(),
        *inputs,
        "an output for every input, none for anything else"
    );
    assert!(
        per_cause.values().all(|&n| n == 1),
        "each input's output is committed once: {per_cause:?}"
    );
    log.len()
}

/// Effect rows: exactly one per input id.
async fn check_one_effect_each(pool: &sqlx::PgPool, inputs: &BTreeSet<Uuid>) {
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT event_id, count(*) FROM echo_effects GROUP BY event_id")
            .fetch_all(pool)
            .await
            .expect("effects");
    let effects: BTreeMap<Uuid, i64> = rows.into_iter().collect();
    assert_eq!(
        effects.keys().copied().collect::<BTreeSet<_>>(),
        *inputs,
        "an effect for every input"
    );
    assert!(
        effects.values().all(|&n| n == 1),
        "each effect done once: {effects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactor_commits_one_output_per_event_dead_letters_poison_and_retries_transient_failures()
{
    let config = common::kafka("reactor-basic");
    echo_topics(&config).await;
    let (_, pool) = common::fresh_database("reactor_basic").await;
    EchoReactor::setup(&pool).await.expect("setup");
    let mut events = bumps(30);
    events.push(CounterBumped {
        key: "bad".into(),
        amount: 1,
        poison: true,
    });
    events.push(CounterBumped {
        key: "flaky".into(),
        amount: 1,
        poison: false,
    });
    let ids = publish(&config, &events).await;
    let poison_id = ids[30];
    let inputs: BTreeSet<Uuid> = ids.iter().copied().filter(|id| *id != poison_id).collect();

    let runner = ReactorRunner::new(EchoReactor::new(pool.clone()), "drill", 0).max_batch(8);
    let status = runner.status();
    let task = common::run_reactor(&config, runner);
    common::eventually("every event reacted to", Duration::from_secs(60), || {
        status.reacted() >= inputs.len() as u64 && status.dead_lettered() >= 1
    })
    .await;
    task.stop().await.expect("reactor run");

    check_one_output_each(&config, &inputs);
    check_one_effect_each(&pool, &inputs).await;
    let letters = common::read_all(
        &config,
        &config.topic_name("echo.dlq"),
        1,
        Duration::from_secs(20),
        true,
    );
    assert_eq!(letters.len(), 1, "the poison event, once");
    let h = common::header_map(&letters[0]);
    assert_eq!(h["ce_id"], poison_id.to_string(), "the original headers");
    assert!(
        h["choreo_dlq_error"].contains("poison event for bad"),
        "the reason: {}",
        h["choreo_dlq_error"]
    );
    assert_eq!(letters[0].key(), Some(&b"bad"[..]), "the original key");
    // The outputs continue the conversation: correlation of the input, causation = input.
    let first = outputs(&config, inputs.len(), true);
    assert!(first.iter().all(|r| {
        let h = common::header_map(r);
        h["ce_correlationid"] == h["ce_causationid"] && h["ce_source"] == "/drill"
    }));
}

async fn killed_reactor_recovers(test: &str, failpoint: &str) {
    let config = common::kafka(test);
    echo_topics(&config).await;
    let (url, pool) = common::fresh_database(&test.replace('-', "_")).await;
    EchoReactor::setup(&pool).await.expect("setup");
    let ids = publish(&config, &bumps(60)).await;
    let inputs: BTreeSet<Uuid> = ids.into_iter().collect();

    // Batches of at most 20: the first transaction commits, the second dies at the failpoint.
    let mut doomed = drill(
        &config,
        &url,
        &["react", "0"],
        Some(&format!("{failpoint}@2")),
    );
    let status = wait_exit(&mut doomed, Duration::from_secs(90));
    assert!(
        !status.success(),
        "the reactor died at {failpoint}: {status}"
    );
    // Restarted with the same ordinal: it fences the dead one and aborts its transaction.
    let survivor = drill(&config, &url, &["react", "0"], None);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while outputs(&config, inputs.len(), true).len() < inputs.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted reactor did not finish"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop(survivor);

    let committed = check_one_output_each(&config, &inputs);
    check_one_effect_each(&pool, &inputs).await;
    if failpoint == "reactor.before_commit" {
        let everything = outputs(&config, committed + 1, false);
        assert!(
            everything.len() > committed,
            "a read_uncommitted reader sees the aborted transaction's outputs ({} > {committed})",
            everything.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactor_killed_after_producing_its_outputs_loses_and_duplicates_nothing() {
    killed_reactor_recovers("drill-react-produce", "reactor.after_produce").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactor_killed_before_the_kafka_commit_loses_and_duplicates_nothing() {
    killed_reactor_recovers("drill-react-commit", "reactor.before_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactor_started_from_the_end_acts_only_on_later_events_and_keeps_that_start() {
    let config = common::kafka("reactor-end");
    echo_topics(&config).await;
    let (_, pool) = common::fresh_database("reactor_end").await;
    EchoReactor::setup(&pool).await.expect("setup");
    publish(&config, &bumps(10)).await;

    let run = || {
        let runner = ReactorRunner::new(EchoReactor::new(pool.clone()), "drill", 0)
            .start_from(choreo::reactor::StartFrom::End);
        let task = common::run_reactor(&config, runner);
        let status = task.status().clone();
        (task, status)
    };
    let (task, status) = run();
    // The source partitions and the one of `echo.redrive`.
    common::eventually("partitions assigned", Duration::from_secs(30), || {
        status.assigned().len() == PARTITIONS as usize + 1
    })
    .await;
    // Stopped before any transaction: the start positions were committed on assignment.
    task.stop().await.expect("run");
    let later: BTreeSet<Uuid> = publish(&config, &bumps(7)).await.into_iter().collect();
    let (task, status) = run();
    common::eventually(
        "the later events reacted to",
        Duration::from_secs(60),
        || status.reacted() >= later.len() as u64,
    )
    .await;
    task.stop().await.expect("run");
    check_one_output_each(&config, &later);
}

/// An event that keeps failing transiently holds back its own partition only: the events of
/// the other partitions get their outputs meanwhile; once it succeeds, the held partition goes
/// on from that event, and every event has exactly one output and one effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transiently_failing_event_holds_back_only_its_own_partition() {
    let config = common::kafka("reactor-hold");
    echo_topics(&config).await;
    let (_, pool) = common::fresh_database("reactor_hold").await;
    EchoReactor::setup(&pool).await.expect("setup");
    let publisher = Publisher::new(&config, "/drill-source").expect("publisher");
    let stuck = publisher
        .publish(&CounterBumped {
            key: "stuck".into(),
            amount: 1,
            poison: false,
        })
        .await
        .expect("publish");
    let mut inputs: BTreeSet<Uuid> = BTreeSet::from([stuck.id]);
    let mut elsewhere: BTreeSet<Uuid> = BTreeSet::new();
    for result in futures::future::join_all(bumps(60).iter().map(|e| publisher.publish(e))).await {
        let delivered = result.expect("publish");
        inputs.insert(delivered.id);
        if delivered.partition != stuck.partition {
            elsewhere.insert(delivered.id);
        }
    }
    assert!(
        !elsewhere.is_empty() && elsewhere.len() + 1 < inputs.len(),
        "events on the stuck partition and on others"
    );

    let reactor = EchoReactor::new(pool.clone());
    let switch = reactor.stuck_switch();
    let runner = ReactorRunner::new(reactor, "drill", 0).max_batch(8);
    let status = runner.status();
    let task = common::run_reactor(&config, runner);
    // The held partition shows as retrying while it waits out a back-off (between a resume
    // and the next failure it does not): waited for, not sampled once.
    common::eventually(
        "the other partitions' events reacted to while one is held, shown as retrying",
        Duration::from_secs(60),
        || {
            status.reacted() >= elsewhere.len() as u64
                && status
                    .retrying()
                    .iter()
                    .any(|(_, p, reason)| *p == stuck.partition && reason.contains("stuck"))
        },
    )
    .await;
    check_one_output_each(&config, &elsewhere);

    switch.store(false, Ordering::Release);
    common::eventually("every event reacted to", Duration::from_secs(60), || {
        status.reacted() >= inputs.len() as u64
    })
    .await;
    task.stop().await.expect("reactor run");
    check_one_output_each(&config, &inputs);
    check_one_effect_each(&pool, &inputs).await;
}

/// A dead letter fed back with `choreo dlq redrive` reaches the reactor's group (and no one
/// else) through `{group}.redrive` once the bug that refused it is fixed: one output and one
/// effect for it, and a restart does not repeat them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_dead_letter_is_reacted_to_once_the_bug_is_fixed() {
    let config = common::kafka("reactor-redrive");
    echo_topics(&config).await;
    let (_, pool) = common::fresh_database("reactor_redrive").await;
    EchoReactor::setup(&pool).await.expect("setup");
    let mut events = bumps(10);
    events.push(CounterBumped {
        key: "bad".into(),
        amount: 5,
        poison: true,
    });
    let ids = publish(&config, &events).await;
    let inputs: BTreeSet<Uuid> = ids.iter().copied().collect();
    let good: BTreeSet<Uuid> = ids[..10].iter().copied().collect();

    // The bug: poison is refused and dead-lettered.
    let run = |reactor: EchoReactor| {
        let task = common::run_reactor(&config, ReactorRunner::new(reactor, "drill", 0));
        let status = task.status().clone();
        (status, task)
    };
    let (status, task) = run(EchoReactor::new(pool.clone()));
    common::eventually(
        "ten reacted, one dead-lettered",
        Duration::from_secs(60),
        || status.reacted() >= 10 && status.dead_lettered() >= 1,
    )
    .await;
    task.stop().await.expect("reactor run");
    check_one_output_each(&config, &good);

    let group = config.topic_name("echo");
    let letters = common::read_all(
        &config,
        &config.topic_name("echo.dlq"),
        1,
        Duration::from_secs(20),
        true,
    );
    let offset = letters[0].offset().to_string();
    crate::cli::choreo(&config, &["dlq", "redrive", &group, "--offset", &offset]).assert_ok();

    // The fix: the same reactor accepts it now; the redriven copy comes through the group's
    // redrive topic.
    let fixed = EchoReactor::new(pool.clone());
    fixed.poison_switch().store(false, Ordering::Release);
    let (status, task) = run(fixed);
    common::eventually(
        "the redriven event reacted to",
        Duration::from_secs(60),
        || status.reacted() >= 1,
    )
    .await;
    task.stop().await.expect("reactor run");
    check_one_output_each(&config, &inputs);
    check_one_effect_each(&pool, &inputs).await;

    // A restart reads nothing again (the redrive topic's offsets were committed with it).
    // Proven by markers behind everything read so far, on the redrive topic and on every
    // source partition: once the restarted reactor has reacted to them, it has read past
    // whatever came before, and reacted to nothing else.
    let again = EchoReactor::new(pool.clone());
    again.poison_switch().store(false, Ordering::Release);
    let (status, task) = run(again);
    let markers = publish_markers(&config).await;
    common::eventually("the markers reacted to", Duration::from_secs(60), || {
        status.reacted() >= markers.len() as u64
    })
    .await;
    task.stop().await.expect("reactor run");
    assert_eq!(
        status.reacted(),
        markers.len() as u64,
        "nothing reacted to twice, only the markers"
    );
    let everything: BTreeSet<Uuid> = inputs.union(&markers).copied().collect();
    check_one_output_each(&config, &everything);
    check_one_effect_each(&pool, &everything).await;
}

/// Marker events: one on `echo.redrive` and one on every partition of `counter.events`.
/// Returns their ids.
async fn publish_markers(config: &KafkaConfig) -> BTreeSet<Uuid> {
    let publisher = Publisher::new(config, "/drill-source").expect("publisher");
    let mut ids = BTreeSet::new();
    let mut covered = BTreeSet::new();
    for j in 0.. {
        if covered.len() == PARTITIONS as usize {
            break;
        }
        assert!(j < 10_000, "markers never covered every partition");
        let delivered = publisher
            .publish(&CounterBumped {
                key: format!("marker-{j}"),
                amount: 1,
                poison: false,
            })
            .await
            .expect("marker");
        covered.insert(delivered.partition);
        ids.insert(delivered.id);
    }
    let marker = publisher
        .prepare(
            &CounterBumped {
                key: "marker-redrive".into(),
                amount: 1,
                poison: false,
            },
            None,
        )
        .expect("prepare");
    let redriven = choreo::kafka::Outgoing::new(
        config.topic_name("echo.redrive"),
        marker.meta().clone(),
        marker.payload.clone(),
    );
    ids.insert(publisher.send(&redriven).await.expect("redrive marker").id);
    ids
}
