//! Static members fenced (`kafka/static_member.rs`). A processor whose consumer is fenced by
//! a join with its instance id while nothing took its transactional id (what a join of its
//! own that the coordinator processed twice looks like) rejoins and goes on. One fenced by
//! another instance with its identity (which initialised the transactional id first) stops
//! as fenced.
//!
//! The fence is made here by a plain consumer joining the group with the processor's
//! `group.instance.id`, and for the second case a plain producer initialising its
//! `transactional.id` first.

use std::time::Duration;

use choreo::KafkaConfig;
use choreo::aggregate::{CommandBus, SendOptions};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};

use crate::aggregates::{PARTITIONS, accepted, bank_topics, open, start, wait_ready};
use crate::common;

/// Instance 0's identity: both its `group.instance.id` and its `transactional.id`.
fn identity(config: &KafkaConfig) -> String {
    format!("{}-0", config.topic_name("bank"))
}

/// A plain consumer that joins the processor's group as `instance`, which fences the
/// processor's consumer; polled until it is assigned partitions or fenced itself.
fn join_as(config: &KafkaConfig, instance: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", config.brokers())
        .set("group.id", config.topic_name("bank"))
        .set("group.instance.id", instance)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&config.topic_name("account.commands")])
        .expect("subscribe");
    for _ in 0..100 {
        let _ = consumer.poll(Duration::from_millis(100));
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        if assigned > 0 || consumer.client().fatal_error().is_some() {
            break;
        }
    }
    consumer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_fenced_by_a_join_of_its_own_rejoins_and_goes_on() {
    let config = common::kafka("static-own");
    bank_topics(&config).await;
    let processor = start(&config, 0);
    let status = processor.status().clone();
    wait_ready(&status, PARTITIONS as usize).await;
    let intruder = tokio::task::spawn_blocking({
        let config = config.clone();
        move || join_as(&config, &identity(&config))
    })
    .await
    .expect("join");
    common::eventually(
        "the processor to rejoin with new clients",
        Duration::from_secs(60),
        || status.rejoins() == 1,
    )
    .await;
    wait_ready(&status, PARTITIONS as usize).await;
    assert!(!processor.is_finished(), "the processor goes on");
    let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
    let reply = bus
        .send_and_wait(
            &open("after"),
            SendOptions::default(),
            Duration::from_secs(30),
        )
        .await
        .expect("the rejoined processor answers");
    assert!(accepted(&reply), "{reply:?}");
    drop(intruder);
    processor.stop().await.expect("the processor ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_fenced_by_another_instance_with_its_identity_stops_as_fenced() {
    let config = common::kafka("static-twin");
    bank_topics(&config).await;
    let processor = start(&config, 0);
    let status = processor.status().clone();
    wait_ready(&status, PARTITIONS as usize).await;
    // Another instance with the same identity: it initialises the transactional id (which
    // fences the processor's producer), then joins.
    let twin = tokio::task::spawn_blocking({
        let config = config.clone();
        move || {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", config.brokers())
                .set("transactional.id", identity(&config))
                .create()
                .expect("producer");
            producer
                .init_transactions(Duration::from_secs(30))
                .expect("init_transactions");
            (producer, join_as(&config, &identity(&config)))
        }
    })
    .await
    .expect("join");
    let outcome = tokio::time::timeout(Duration::from_secs(60), processor.finished())
        .await
        .expect("the processor stops");
    let error = outcome.expect_err("it stops with an error");
    assert!(
        matches!(&error, choreo::Error::Fenced { runtime, .. } if runtime == "transactional producer"),
        "stops as fenced by the other instance: {error}"
    );
    assert_eq!(status.rejoins(), 0, "it never rejoined");
    drop(twin);
}
