//! Consumer groups: instances share the partitions; when one leaves, the other takes over.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo::kafka::{ConsumerStatus, RunSummary};
use choreo::{EventHandlers, HandlerError, Publisher, Received};

use crate::common::{self, Running, UserSignedUp, signup};

type Log = Arc<Mutex<Vec<(&'static str, i32, String)>>>;

type Instance = Running<choreo::Result<RunSummary>, ConsumerStatus>;

fn start(config: &choreo::KafkaConfig, group: &str, instance: &'static str, log: &Log) -> Instance {
    let log = Arc::clone(log);
    common::run_handlers(
        config,
        EventHandlers::new(group).on(move |e: Received<UserSignedUp>| {
            let log = Arc::clone(&log);
            async move {
                log.lock()
                    .expect("lock")
                    .push((instance, e.origin.partition, e.payload.user_id));
                Ok::<_, HandlerError>(())
            }
        }),
    )
}

/// Publishes markers (signups `marker-{phase}-{j}`) until every one of the `partitions` has
/// one; returns their user ids. Once every marker is handled, each partition was handled up
/// to its marker: a repeat of anything before it would have come first, so the log of
/// handled events is complete, without waiting out a quiet spell.
async fn markers(publisher: &Publisher, phase: &str, partitions: i32) -> BTreeSet<String> {
    let mut covered = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for j in 0.. {
        if covered.len() == partitions as usize {
            break;
        }
        assert!(j < 10_000, "markers never covered every partition");
        let marker = UserSignedUp {
            user_id: format!("marker-{phase}-{j}"),
            email: format!("marker-{phase}-{j}@example.com"),
            name: "Marker".into(),
        };
        let delivered = publisher.publish(&marker).await.expect("marker");
        covered.insert(delivered.partition);
        ids.insert(marker.user_id);
    }
    ids
}

/// Waits until every id in `ids` was handled.
async fn handled(log: &Log, what: &str, ids: &BTreeSet<String>) {
    common::eventually(what, Duration::from_secs(60), || {
        let log = log.lock().expect("lock");
        let seen: BTreeSet<&str> = log.iter().map(|(_, _, id)| id.as_str()).collect();
        ids.iter().all(|id| seen.contains(id.as_str()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_partitions_and_the_survivor_takes_over_without_loss() {
    let config = common::kafka("groups");
    common::create_events_topic(&config, "user", 6).await;
    let group = common::unique("group");
    common::create_dlq(&config, &group).await;
    let publisher = Publisher::new(&config, "/test-service").expect("publisher");
    let log: Log = Arc::default();
    let a = start(&config, &group, "a", &log);
    let b = start(&config, &group, "b", &log);
    let (status_a, status_b) = (a.status().clone(), b.status().clone());
    common::eventually(
        "both instances to own partitions",
        Duration::from_secs(60),
        || {
            let (pa, pb) = (status_a.assigned(), status_b.assigned());
            !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 6
        },
    )
    .await;

    // Phase 1: both instances running.
    let first: Vec<UserSignedUp> = (0..600).map(signup).collect();
    for result in futures::future::join_all(first.iter().map(|e| publisher.publish(e))).await {
        result.expect("publish");
    }
    let ids: BTreeSet<String> = first.iter().map(|e| e.user_id.clone()).collect();
    handled(&log, "phase 1 handled", &ids).await;
    let phase1_markers = markers(&publisher, "1", 6).await;
    handled(&log, "the phase 1 markers handled", &phase1_markers).await;
    {
        let log = log.lock().expect("lock");
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, _, id) in log.iter() {
            *seen.entry(id.as_str()).or_default() += 1;
        }
        assert_eq!(
            seen.len(),
            600 + phase1_markers.len(),
            "every event handled"
        );
        assert!(
            seen.values().all(|&n| n == 1),
            "each event exactly once in a clean run"
        );
        let by_a: BTreeSet<i32> = log
            .iter()
            .filter(|(i, ..)| *i == "a")
            .map(|(_, p, _)| *p)
            .collect();
        let by_b: BTreeSet<i32> = log
            .iter()
            .filter(|(i, ..)| *i == "b")
            .map(|(_, p, _)| *p)
            .collect();
        assert!(
            !by_a.is_empty() && !by_b.is_empty(),
            "both instances got partitions: a={by_a:?} b={by_b:?}"
        );
    }

    // Phase 2: a leaves (graceful: finishes, commits, leaves the group); b takes over.
    a.stop().await.expect("run a");
    let before = log.lock().expect("lock").len();
    let second: Vec<UserSignedUp> = (600..1200).map(signup).collect();
    for result in futures::future::join_all(second.iter().map(|e| publisher.publish(e))).await {
        result.expect("publish");
    }
    // The takeover is a rebalance after a's leave: give it the time it takes.
    common::eventually(
        "the survivor to own all six partitions",
        Duration::from_secs(30),
        || status_b.assigned().len() == 6,
    )
    .await;
    let ids: BTreeSet<String> = second.iter().map(|e| e.user_id.clone()).collect();
    handled(&log, "phase 2 handled", &ids).await;
    let phase2_markers = markers(&publisher, "2", 6).await;
    handled(&log, "the phase 2 markers handled", &phase2_markers).await;
    b.stop().await.expect("run b");
    let log = log.lock().expect("lock");
    assert!(
        log[before..].iter().all(|(i, ..)| *i == "b"),
        "only the survivor handles after the leave"
    );
    assert_eq!(
        log[before..]
            .iter()
            .filter(|(_, _, id)| phase2_markers.contains(id))
            .count(),
        phase2_markers.len(),
        "each marker handled once"
    );
    // Phase 1's markers stay in: one handled again would be a repeat.
    let phase2: Vec<_> = log[before..]
        .iter()
        .filter(|(_, _, id)| !phase2_markers.contains(id))
        .collect();
    let ids: BTreeSet<&str> = phase2.iter().map(|(_, _, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 600, "nothing lost after the takeover");
    assert_eq!(
        phase2.len(),
        600,
        "nothing handled twice: the leaver committed before giving partitions away"
    );
    let partitions: BTreeSet<i32> = phase2.iter().map(|(_, p, _)| *p).collect();
    assert_eq!(
        partitions.len(),
        6,
        "the survivor handled all six partitions"
    );
}
