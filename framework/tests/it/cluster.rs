//! The cluster tier: a three-node Kafka cluster (`scripts/dev-services cluster-up`,
//! replication 3, `min.insync.replicas` 2) loses a node in four ways while a publisher, a
//! projection, a reactor, a command bus and a command processor work at once. After each
//! fault: no acknowledged event lost or written twice, every reactor output committed exactly
//! once, the view equal to a fold of the log read by a plain consumer, every accepted command's
//! events in the log exactly once, every runtime back to work without a restart. Each test
//! prints its figures (`cluster fault ...`).
//!
//! Runs when `CHOREO_CLUSTER_BROKERS` and `CHOREO_CLUSTER_DIR` are set (`scripts/dev-services
//! env --cluster`); with `CHOREO_CLUSTER_REQUIRED=1` (the README's test command) a missing
//! cluster fails the test instead of skipping it. The faults share one cluster, so the tests
//! take turns.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use choreo::aggregate::{CommandBus, CommandProcessor, SendOptions};
use choreo::kafka::TopicSpec;
use choreo::reactor::ReactorRunner;
use choreo::testing::account::Account;
use choreo::testing::echo::EchoReactor;
use choreo::testing::{CounterBumped, CounterProjection};
use choreo::{KafkaConfig, ProjectionRunner, Publisher, Shutdown};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::aggregates::{accepted, check_log, deposit, open};
use crate::common;
use crate::projections::{PROJECTION, fold, view};

const PARTITIONS: i32 = 6;

/// One fault at a time on the shared cluster.
static TURN: Mutex<()> = Mutex::const_new(());

/// The cluster's brokers and the folder of its nodes, or `None` (skipped) when not set up.
fn cluster() -> Option<(String, String)> {
    let brokers = std::env::var("CHOREO_CLUSTER_BROKERS").ok();
    let dir = std::env::var("CHOREO_CLUSTER_DIR").ok();
    match (brokers, dir) {
        (Some(b), Some(d)) if !b.is_empty() => Some((b, d)),
        _ if std::env::var("CHOREO_CLUSTER_REQUIRED").is_ok_and(|v| v == "1") => panic!(
            "CHOREO_CLUSTER_REQUIRED=1 but no cluster: run scripts/dev-services cluster-up and \
             eval \"$(scripts/dev-services env --cluster)\""
        ),
        _ => {
            eprintln!("skipped: no cluster (scripts/dev-services cluster-up)");
            None
        }
    }
}

/// `scripts/dev-services` with `args`, which must succeed; returns its stdout.
fn dev_services(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dev-services");
    let out = Command::new(script)
        .args(args)
        .output()
        .expect("run scripts/dev-services");
    assert!(
        out.status.success(),
        "scripts/dev-services {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A node's process id.
fn node_pid(node: i32) -> String {
    dev_services(&["cluster-node-pid", &node.to_string()])
}

fn signal(node: i32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(node_pid(node))
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} node {node}");
}

/// Partition leaders and in-sync replicas of `topic`, as the cluster describes them.
fn partitions(admin: &BaseConsumer, topic: &str) -> Vec<(i32, Vec<i32>)> {
    admin
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .ok()
        .and_then(|m| {
            m.topics().first().map(|t| {
                t.partitions()
                    .iter()
                    .map(|p| (p.leader(), p.isr().to_vec()))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Whether every partition of `topic` has all three replicas in sync.
fn fully_replicated(admin: &BaseConsumer, topic: &str) -> bool {
    let parts = partitions(admin, topic);
    parts.len() == PARTITIONS as usize && parts.iter().all(|(_, isr)| isr.len() == 3)
}

/// The node leading most partitions of `topic`.
fn busiest_leader(admin: &BaseConsumer, topic: &str) -> i32 {
    let mut count: BTreeMap<i32, usize> = BTreeMap::new();
    for (leader, _) in partitions(admin, topic) {
        *count.entry(leader).or_default() += 1;
    }
    count
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(leader, _)| leader)
        .expect("the topic has leaders")
}

/// The faults.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// kill -9 the node leading the most partitions, then start it again.
    KillLeader,
    /// SIGSTOP a node until it drops out of the in-sync replicas and the groups, then SIGCONT.
    PauseBroker,
    /// Stop and start each node in turn, each back in sync before the next.
    RollingRestart,
    /// kill -9 the active controller, then start it again.
    KillController,
}

/// A publisher that keeps publishing until stopped: the ids the cluster acknowledged, and how
/// many publishes failed (an error returned is allowed during a fault; a lost ack is not).
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<Uuid>, usize)>,
}

impl Load {
    fn start(config: &KafkaConfig) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = Publisher::new(config, "/cluster-load").expect("publisher");
        let task = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let (mut acked, mut failed) = (Vec::new(), 0);
                let mut i = 0usize;
                while !stop.load(Ordering::Acquire) {
                    let batch: Vec<CounterBumped> = (i..i + 20).map(bump).collect();
                    i += 20;
                    let results =
                        futures::future::join_all(batch.iter().map(|e| publisher.publish(e))).await;
                    for result in results {
                        match result {
                            Ok(delivered) => acked.push(delivered.id),
                            Err(_) => failed += 1,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (acked, failed)
            }
        });
        Self { stop, task }
    }

    async fn finish(self) -> (Vec<Uuid>, usize) {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("load task")
    }
}

/// Accounts the command load opens and deposits to.
const ACCOUNTS: usize = 12;

/// A command bus that keeps sending commands until stopped, each waited for; a command that
/// gets no reply is sent again with the same id (the processor answers a retry with the first
/// outcome). Returns the ids of the accepted commands and how many sends got no reply.
struct CommandLoad {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<Uuid>, usize)>,
}

impl CommandLoad {
    async fn start(config: &KafkaConfig) -> Self {
        let bus = CommandBus::new(config, "bank", 0).await.expect("bus");
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let (mut accepted_ids, mut unanswered) = (Vec::new(), 0);
                let mut i = 0usize;
                while !stop.load(Ordering::Acquire) {
                    let account = format!("a{}", i % ACCOUNTS);
                    let command = if i < ACCOUNTS {
                        open(&account)
                    } else {
                        deposit(&account, (i % 5) as i64 + 1)
                    };
                    i += 1;
                    let id = Uuid::now_v7();
                    loop {
                        let options = SendOptions {
                            id: Some(id),
                            ..SendOptions::default()
                        };
                        match bus
                            .send_and_wait(&command, options, Duration::from_secs(20))
                            .await
                        {
                            Ok(reply) => {
                                if accepted(&reply) {
                                    accepted_ids.push(id);
                                }
                                break;
                            }
                            Err(_) => unanswered += 1,
                        }
                    }
                }
                (accepted_ids, unanswered)
            }
        });
        Self { stop, task }
    }

    async fn finish(self) -> (Vec<Uuid>, usize) {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("command load task")
    }
}

/// The account events committed: each accepted command's event exactly once, none for any
/// other command, and per account contiguous sequences. Returns how many events.
fn check_commands(config: &KafkaConfig, accepted_ids: &[Uuid]) -> usize {
    let log = common::read_all(
        config,
        &config.topic_name("account.events"),
        accepted_ids.len(),
        Duration::from_secs(60),
        true,
    );
    check_log(&log);
    let mut per_command: BTreeMap<Uuid, usize> = BTreeMap::new();
    for record in &log {
        let cause: Uuid = common::header_map(record)["ce_causationid"]
            .parse()
            .expect("causation id");
        *per_command.entry(cause).or_default() += 1;
    }
    assert_eq!(
        per_command.keys().copied().collect::<BTreeSet<_>>(),
        accepted_ids.iter().copied().collect::<BTreeSet<_>>(),
        "an event for every accepted command, none for anything else"
    );
    let twice: Vec<_> = per_command.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "commands applied twice: {twice:?}");
    log.len()
}

fn bump(i: usize) -> CounterBumped {
    CounterBumped {
        key: format!("k{}", i % 53),
        amount: (i % 7) as i64 + 1,
        poison: false,
    }
}

/// Runs `fault` under load and checks what the module doc says.
async fn survives(name: &str, fault: Fault) {
    let Some((brokers, _dir)) = cluster() else {
        return;
    };
    let _turn = TURN.lock().await;
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let config = KafkaConfig::new(brokers.clone()).namespace(common::unique(name));
    common::ensure_topics(
        &config,
        vec![
            TopicSpec::events("counter", PARTITIONS, 3).expect("spec"),
            TopicSpec::events("echo", PARTITIONS, 3).expect("spec"),
            TopicSpec::dead_letters("echo", 3).expect("spec"),
            TopicSpec::redrive("echo", 3).expect("spec"),
            TopicSpec::dead_letters(PROJECTION, 3).expect("spec"),
            TopicSpec::redrive(PROJECTION, 3).expect("spec"),
            TopicSpec::commands("account", PARTITIONS, 3).expect("spec"),
            TopicSpec::events("account", PARTITIONS, 3).expect("spec"),
            TopicSpec::replies("bank", 2, 3).expect("spec"),
            TopicSpec::dead_letters("bank", 3).expect("spec"),
        ],
    )
    .await;
    let topic = config.topic_name("counter.events");
    let admin: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin consumer");
    let (_, pool) = common::fresh_database(&format!("cluster_{}", name.replace('-', "_"))).await;
    EchoReactor::setup(&pool).await.expect("echo setup");

    let shutdown = Shutdown::new();
    let projection = ProjectionRunner::new(Arc::new(CounterProjection));
    let projection_status = projection.status();
    let mut projecting = tokio::spawn({
        let (config, pool, shutdown) = (config.clone(), pool.clone(), shutdown.clone());
        async move { projection.run(&config, &pool, shutdown).await }
    });
    let reactor = ReactorRunner::new(EchoReactor::new(pool.clone()), "cluster", 0);
    let reactor_status = reactor.status();
    let mut reacting = tokio::spawn({
        let (config, shutdown) = (config.clone(), shutdown.clone());
        async move { reactor.run(&config, shutdown).await }
    });

    let processor = common::run_processor(
        &config,
        CommandProcessor::<Account>::new("bank", "account", 0, PARTITIONS),
    );
    let processor_status = processor.status().clone();

    let load = Load::start(&config);
    let commands = CommandLoad::start(&config).await;
    common::eventually(
        "every runtime to work before the fault",
        Duration::from_secs(90),
        || {
            reactor_status.reacted() > 100
                && projection_status.is_ready()
                && processor_status.transactions() > 20
        },
    )
    .await;

    let started = Instant::now();
    let reacted_at_fault = reactor_status.reacted();
    let decided_at_fault = processor_status.transactions();
    inject(fault, &admin, &topic).await;
    let fault_took = started.elapsed();
    // Recovered: every runtime ready, the reactor reacting and the processor deciding again
    // after the fault.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = projection_status.is_ready() && processor_status.is_ready();
        let reacted = reactor_status.reacted();
        let decided = processor_status.transactions();
        let replicated = fully_replicated(&admin, &topic);
        if ready
            && reacted > reacted_at_fault + 100
            && decided > decided_at_fault + 20
            && replicated
        {
            break;
        }
        if reacting.is_finished() {
            panic!("{name}: the reactor stopped: {:?}", (&mut reacting).await);
        }
        if processor.is_finished() {
            panic!(
                "{name}: the command processor stopped: {:?}",
                processor.finished().await
            );
        }
        if projecting.is_finished() {
            panic!(
                "{name}: the projection stopped: {:?}",
                (&mut projecting).await
            );
        }
        assert!(
            Instant::now() < deadline,
            "{name}: not recovered after 120 s: projection and processor ready {ready} \
             (projection halted {:?}, retrying {:?}; processor ready partitions {:?}, halted \
             {:?}), reactor reacted {reacted} ({reacted_at_fault} at the fault), processor \
             transactions {decided} ({decided_at_fault} at the fault), partitions (leader, \
             in-sync) {:?}",
            projection_status.halted(),
            projection_status.retrying(),
            processor_status.ready_partitions(),
            processor_status.halted(),
            partitions(&admin, &topic),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let recovered = started.elapsed();
    let (acked, failed) = load.finish().await;
    let (accepted_ids, unanswered) = commands.finish().await;
    let command_events = check_commands(&config, &accepted_ids);

    // The log, read by a plain consumer: every acknowledged event once.
    let log = common::read_all(&config, &topic, acked.len(), Duration::from_secs(60), false);
    let mut in_log: BTreeMap<Uuid, usize> = BTreeMap::new();
    for record in &log {
        let id: Uuid = common::header_map(record)["ce_id"].parse().expect("ce_id");
        *in_log.entry(id).or_default() += 1;
    }
    let lost = acked.iter().filter(|id| !in_log.contains_key(id)).count();
    let duplicated = in_log.values().filter(|&&n| n > 1).count();
    common::wait_caught_up(
        &pool,
        &config,
        PROJECTION,
        &topic,
        PARTITIONS,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        view(&pool, "counters_v1").await,
        fold(&config, &topic, log.len()),
        "{name}: the view equals the fold of the log"
    );
    let inputs: BTreeSet<Uuid> = in_log.keys().copied().collect();
    common::eventually(
        "the reactor to react to every event",
        Duration::from_secs(120),
        || reactor_status.reacted() >= inputs.len() as u64,
    )
    .await;
    let outputs = check_one_output_each(&config, &inputs);
    shutdown.trigger();
    projecting.await.expect("join").expect("projection run");
    reacting.await.expect("join").expect("reactor run");
    let rejoins = (reactor_status.rejoins(), processor_status.rejoins());
    let replacements = (
        reactor_status.producer_replacements(),
        processor_status.producer_restarts(),
    );
    processor.stop().await.expect("processor run");

    println!(
        "cluster fault {name}: acknowledged {}, publish errors {failed}, in the log {}, lost {lost}, \
         duplicated {duplicated}, reactor outputs {outputs}; commands accepted {}, sends without \
         a reply {unanswered}, their events {command_events} (each once); rejoins (reactor, \
         processor) {rejoins:?}, producer replacements {replacements:?}; fault {:.1} s, \
         recovered {:.1} s after it began",
        acked.len(),
        log.len(),
        accepted_ids.len(),
        fault_took.as_secs_f64(),
        recovered.as_secs_f64()
    );
    assert_eq!(lost, 0, "{name}: acknowledged events lost");
    assert_eq!(duplicated, 0, "{name}: events written twice");
}

/// Committed reactor outputs: one per input, none for anything else. Returns their count.
fn check_one_output_each(config: &KafkaConfig, inputs: &BTreeSet<Uuid>) -> usize {
    let log = common::read_all(
        config,
        &config.topic_name("echo.events"),
        inputs.len(),
        Duration::from_secs(60),
        true,
    );
    let mut per_cause: BTreeMap<Uuid, usize> = BTreeMap::new();
    for record in &log {
        let cause: Uuid = common::header_map(record)["ce_causationid"]
            .parse()
            .expect("causation id");
        *per_cause.entry(cause).or_default() += 1;
    }
    assert_eq!(
        per_cause.keys().copied().collect::<BTreeSet<_>>(),
        *inputs,
        "an output for every input, none for anything else"
    );
    let twice: Vec<_> = per_cause.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "outputs committed twice: {twice:?}");
    log.len()
}

/// Injects `fault` and returns once it is over (the nodes are running again).
async fn inject(fault: Fault, admin: &BaseConsumer, topic: &str) {
    match fault {
        Fault::KillLeader => {
            let node = busiest_leader(admin, topic);
            dev_services(&["cluster-node-kill", &node.to_string()]);
            common::eventually(
                "another node to lead every partition",
                Duration::from_secs(60),
                || {
                    let parts = partitions(admin, topic);
                    !parts.is_empty() && parts.iter().all(|(leader, _)| *leader != node)
                },
            )
            .await;
            dev_services(&["cluster-node-up", &node.to_string()]);
        }
        Fault::PauseBroker => {
            let node = busiest_leader(admin, topic);
            signal(node, "STOP");
            common::eventually(
                "the paused node to drop out of the in-sync replicas",
                Duration::from_secs(90),
                || {
                    let parts = partitions(admin, topic);
                    !parts.is_empty()
                        && parts
                            .iter()
                            .all(|(leader, isr)| *leader != node && !isr.contains(&node))
                },
            )
            .await;
            signal(node, "CONT");
        }
        Fault::RollingRestart => {
            for node in 1..=3 {
                dev_services(&["cluster-node-down", &node.to_string()]);
                dev_services(&["cluster-node-up", &node.to_string()]);
                common::eventually(
                    "the restarted node back in sync",
                    Duration::from_secs(120),
                    || fully_replicated(admin, topic),
                )
                .await;
            }
        }
        Fault::KillController => {
            let node: i32 = dev_services(&["cluster-controller"])
                .parse()
                .expect("the active controller's id");
            dev_services(&["cluster-node-kill", &node.to_string()]);
            common::eventually("a new active controller", Duration::from_secs(60), || {
                dev_services(&["cluster-controller"])
                    .parse::<i32>()
                    .is_ok_and(|now| now != node)
            })
            .await;
            dev_services(&["cluster-node-up", &node.to_string()]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_busiest_leader_loses_and_duplicates_nothing() {
    survives("kill-leader", Fault::KillLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_paused_past_the_replica_lag_loses_and_duplicates_nothing() {
    survives("pause-broker", Fault::PauseBroker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_and_duplicates_nothing() {
    survives("rolling-restart", Fault::RollingRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_active_controller_loses_and_duplicates_nothing() {
    survives("kill-controller", Fault::KillController).await;
}
