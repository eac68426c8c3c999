//! A broker restart under a publisher and a consumer group. The test runs a private broker
//! (`scripts/dev-services kafka-up` with its own instance, ports and data), so restarting it
//! disturbs no other test.
//!
//! Every publish is recorded as acknowledged or failed; afterwards a plain consumer and the
//! group's handler must both have every acknowledged event (at-least-once for the handler).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo::kafka::{TopicAdmin, TopicSpec};
use choreo::testing::CounterBumped;
use choreo::{EventHandlers, HandlerError, KafkaConfig, Publisher, Received};
use uuid::Uuid;

use crate::common;

struct PrivateBroker {
    instance: String,
    port: u16,
    controller: u16,
}

impl PrivateBroker {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/dev-services")
    }

    fn run(&self, command: &str) {
        let status = Command::new(Self::script())
            .arg(command)
            .env("CHOREO_KAFKA_INSTANCE", &self.instance)
            .env("CHOREO_KAFKA_PORT", self.port.to_string())
            .env("CHOREO_KAFKA_CONTROLLER_PORT", self.controller.to_string())
            .status()
            .expect("run scripts/dev-services");
        assert!(
            status.success(),
            "scripts/dev-services {command} for the private broker failed: {status}"
        );
    }

    fn dir(&self) -> PathBuf {
        let base = std::env::var("CHOREO_DEV_DIR").map_or_else(
            |_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/choreo"),
            PathBuf::from,
        );
        base.join("instances").join(&self.instance)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.run("kafka-down");
        let _ = std::fs::remove_dir_all(self.dir());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn publish_all(publisher: &Publisher, range: std::ops::Range<usize>) -> (Vec<Uuid>, usize) {
    let events: Vec<CounterBumped> = range
        .map(|i| CounterBumped {
            key: format!("k{}", i % 13),
            amount: i as i64,
            poison: false,
        })
        .collect();
    let mut acked = Vec::new();
    let mut failed = 0;
    for result in futures::future::join_all(events.iter().map(|e| publisher.publish(e))).await {
        match result {
            Ok(delivered) => acked.push(delivered.id),
            Err(_) => failed += 1,
        }
    }
    (acked, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_acknowledged_event() {
    let broker = PrivateBroker {
        instance: format!("restart-{}", &Uuid::new_v4().simple().to_string()[..8]),
        port: free_port(),
        controller: free_port(),
    };
    broker.run("kafka-up");
    let config = KafkaConfig::new(format!("127.0.0.1:{}", broker.port)).namespace("restart");
    let specs = [
        TopicSpec::events("counter", 3, 1).expect("spec"),
        TopicSpec::dead_letters("restart-printer", 1).expect("spec"),
    ]
    .map(|spec| TopicSpec {
        name: config.topic_name(&spec.name),
        ..spec
    });
    TopicAdmin::new(&config)
        .expect("admin")
        .ensure(&specs)
        .await
        .expect("topics");

    let seen: Arc<Mutex<BTreeSet<Uuid>>> = Arc::default();
    let handlers = EventHandlers::new("restart-printer").on({
        let seen = Arc::clone(&seen);
        move |event: Received<CounterBumped>| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().expect("lock").insert(event.meta.id);
                Ok::<_, HandlerError>(())
            }
        }
    });
    let consuming = common::run_handlers(&config, handlers);
    let publisher = Publisher::new(&config, "/restart").expect("publisher");
    let (mut acked, mut failed) = publish_all(&publisher, 0..300).await;

    // Down: sends queue in the client; up again: they are delivered and acknowledged.
    broker.run("kafka-down");
    let during = tokio::spawn({
        let publisher = publisher.clone();
        async move { publish_all(&publisher, 300..600).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.run("kafka-up");
    let (more, more_failed) = during.await.expect("join");
    acked.extend(more);
    failed += more_failed;
    let (more, more_failed) = publish_all(&publisher, 600..900).await;
    acked.extend(more);
    failed += more_failed;
    assert!(
        acked.len() >= 600,
        "the publisher recovered: {} acknowledged, {failed} failed",
        acked.len()
    );

    let acked: BTreeSet<Uuid> = acked.into_iter().collect();
    common::eventually(
        "the group to handle every acknowledged event",
        Duration::from_secs(120),
        || seen.lock().expect("lock").is_superset(&acked),
    )
    .await;
    consuming.stop().await.expect("handlers");

    let in_log: BTreeSet<Uuid> = common::read_all(
        &config,
        &config.topic_name("counter.events"),
        acked.len(),
        Duration::from_secs(30),
        true,
    )
    .iter()
    .map(|r| common::header_map(r)["ce_id"].parse().expect("id"))
    .collect();
    assert!(
        in_log.is_superset(&acked),
        "every acknowledged event is in the log ({} missing)",
        acked.difference(&in_log).count()
    );
}
