//! Aggregates on Kafka: command processing with exactly-once transactions, against the real
//! broker. Checks read the events topic with plain rdkafka consumers.

use std::collections::BTreeMap;
use std::time::Duration;

use choreo::KafkaConfig;
use choreo::aggregate::{
    CommandBus, CommandProcessor, Outcome, ProcessorStatus, Reply, SendOptions, SnapshotSettings,
};
use choreo::kafka::{TopicAdmin, TopicSpec, dlq_headers, partition_for_key};
use choreo::testing::account::*;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;

use crate::common::{self, Running};

pub const PARTITIONS: i32 = 3;

/// `account.commands`, `account.events`, `bank.replies`, `bank.dlq` in the test's namespace.
pub async fn bank_topics(config: &KafkaConfig) {
    let mut specs = vec![
        TopicSpec::commands("account", PARTITIONS, 1).expect("spec"),
        TopicSpec::events("account", PARTITIONS, 1).expect("spec"),
        TopicSpec::replies("bank", 2, 1).expect("spec"),
        TopicSpec::dead_letters("bank", 1).expect("spec"),
    ];
    for spec in &mut specs {
        spec.name = config.topic_name(&spec.name);
    }
    TopicAdmin::new(config)
        .expect("admin")
        .ensure(&specs)
        .await
        .expect("topics");
}

/// The account processor of the bank, instance `ordinal`, running until stopped.
pub type Processor = Running<choreo::Result<()>, ProcessorStatus>;

pub fn start(config: &KafkaConfig, ordinal: u32) -> Processor {
    common::run_processor(
        config,
        CommandProcessor::<Account>::new("bank", "account", ordinal, PARTITIONS),
    )
}

pub async fn wait_ready(status: &ProcessorStatus, partitions: usize) {
    common::eventually(
        "the processor to restore its partitions",
        Duration::from_secs(60),
        || status.ready_partitions().len() == partitions,
    )
    .await;
}

pub fn open(account: &str) -> AccountCommand {
    AccountCommand::Open(OpenAccount {
        account: account.into(),
    })
}
pub fn deposit(account: &str, amount: i64) -> AccountCommand {
    AccountCommand::Deposit(Deposit {
        account: account.into(),
        amount,
    })
}
pub fn withdraw(account: &str, amount: i64) -> AccountCommand {
    AccountCommand::Withdraw(Withdraw {
        account: account.into(),
        amount,
    })
}

pub fn accepted(reply: &Reply) -> bool {
    matches!(reply.outcome, Outcome::Accepted { .. })
}

/// The committed events per account, in log order, as (sequence, type, amount, causation).
pub fn committed_events(
    config: &KafkaConfig,
    expected: usize,
    read_committed: bool,
) -> Vec<OwnedMessage> {
    common::read_all(
        config,
        &config.topic_name("account.events"),
        expected,
        Duration::from_secs(20),
        read_committed,
    )
}

/// Per account: sequences must run 1..n; returns the balance a fold of the log gives.
pub fn check_log(records: &[OwnedMessage]) -> BTreeMap<String, i64> {
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut balances: BTreeMap<String, i64> = BTreeMap::new();
    for record in records {
        let h = common::header_map(record);
        let account = h["ce_subject"].clone();
        let sequence: u64 = h["ce_sequence"].parse().expect("sequence");
        let version = versions.entry(account.clone()).or_default();
        assert_eq!(
            sequence,
            *version + 1,
            "{account}: sequences contiguous, no gap, no duplicate"
        );
        *version = sequence;
        let body: serde_json::Value =
            serde_json::from_slice(record.payload().expect("payload")).expect("json");
        let amount = body
            .get("amount")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        let balance = balances.entry(account.clone()).or_default();
        match h["ce_type"].as_str() {
            "v1.account.deposited" => *balance += amount,
            "v1.account.withdrawn" => *balance -= amount,
            _ => {}
        }
        assert!(
            *balance >= 0,
            "{account}: the invariant (balance >= 0) holds in the log"
        );
    }
    balances
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_decided_once_replied_with_offsets_and_duplicates_get_the_first_outcome() {
    let config = common::kafka("agg-basic");
    bank_topics(&config).await;
    let processor = start(&config, 0);
    let status = processor.status().clone();
    wait_ready(&status, PARTITIONS as usize).await;
    let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
    let wait = Duration::from_secs(30);

    let opened = bus
        .send_and_wait(&open("ada"), SendOptions::default(), wait)
        .await
        .expect("reply");
    assert!(accepted(&opened), "{opened:?}");
    let offsets = opened.offsets();
    assert_eq!(offsets.len(), 1);
    assert_eq!(
        offsets[0].1,
        partition_for_key(b"ada", PARTITIONS),
        "events go to the command's partition"
    );
    let dep = SendOptions {
        id: Some(uuid::Uuid::now_v7()),
        ..SendOptions::default()
    };
    let first = bus
        .send_and_wait(&deposit("ada", 100), dep.clone(), wait)
        .await
        .expect("reply");
    assert!(accepted(&first));
    // The client retries with the same id: same outcome, no second event.
    let again = bus
        .send_and_wait(&deposit("ada", 100), dep, wait)
        .await
        .expect("reply");
    assert_eq!(
        again.outcome, first.outcome,
        "a duplicate gets the first outcome, offsets included"
    );
    let refused = bus
        .send_and_wait(&withdraw("ada", 150), SendOptions::default(), wait)
        .await
        .expect("reply");
    match &refused.outcome {
        Outcome::Rejected { rejection } => assert_eq!(rejection.code, "insufficient_funds"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    let expired = SendOptions {
        deadline: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
        ..SendOptions::default()
    };
    let late = bus
        .send_and_wait(&withdraw("ada", 10), expired, wait)
        .await
        .expect("reply");
    assert!(
        matches!(&late.outcome, Outcome::Rejected { rejection } if rejection.code == "expired"),
        "{late:?}"
    );
    let ok = bus
        .send_and_wait(&withdraw("ada", 60), SendOptions::default(), wait)
        .await
        .expect("reply");
    assert!(accepted(&ok));

    let log = committed_events(&config, 3, true);
    assert_eq!(log.len(), 3, "opened, deposited once, withdrawn");
    assert_eq!(check_log(&log)["ada"], 40);
    let causations: Vec<String> = log
        .iter()
        .map(|r| common::header_map(r)["ce_causationid"].clone())
        .collect();
    assert_eq!(
        causations[0],
        opened.command_id.to_string(),
        "causation = the command id"
    );
    processor.stop().await.expect("run");
    assert!(status.transactions() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_in_the_same_batch_keeps_the_first_outcome_with_its_offsets() {
    let config = common::kafka("agg-same-batch");
    bank_topics(&config).await;
    let processor = start(&config, 0);
    let status = processor.status().clone();
    wait_ready(&status, PARTITIONS as usize).await;
    let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
    let wait = Duration::from_secs(30);
    assert!(accepted(
        &bus.send_and_wait(&open("bo"), SendOptions::default(), wait)
            .await
            .expect("open")
    ));
    // The same command id twice, back to back: both copies usually land in one batch.
    let dep = SendOptions {
        id: Some(uuid::Uuid::now_v7()),
        ..SendOptions::default()
    };
    let command = deposit("bo", 7);
    let (a, b) = tokio::join!(
        bus.send(&command, dep.clone()),
        bus.send(&command, dep.clone())
    );
    a.expect("first copy");
    b.expect("second copy");
    // A retry afterwards: the first outcome, with its event's offset (read-your-writes).
    let reply = bus.send_and_wait(&command, dep, wait).await.expect("reply");
    assert!(accepted(&reply), "{reply:?}");
    let offsets = reply.offsets();
    assert_eq!(
        offsets.len(),
        1,
        "one event, named with its offset: {reply:?}"
    );
    assert!(offsets[0].2 >= 0, "a real offset: {offsets:?}");
    processor.stop().await.expect("run");
    let log = committed_events(&config, 2, true);
    assert_eq!(log.len(), 2, "opened, deposited once");
    assert_eq!(check_log(&log)["bo"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_processor_restores_state_from_the_log_before_handling_commands() {
    let config = common::kafka("agg-restore");
    bank_topics(&config).await;
    let bus = CommandBus::new(&config, "bank", 1).await.expect("bus");
    let wait = Duration::from_secs(30);
    let processor = start(&config, 0);
    let status = processor.status().clone();
    wait_ready(&status, PARTITIONS as usize).await;
    for account in ["a", "b", "c", "d"] {
        assert!(accepted(
            &bus.send_and_wait(&open(account), SendOptions::default(), wait)
                .await
                .expect("reply")
        ));
        assert!(accepted(
            &bus.send_and_wait(&deposit(account, 50), SendOptions::default(), wait)
                .await
                .expect("reply")
        ));
    }
    processor.stop().await.expect("run");

    let processor = start(&config, 0);
    let status = processor.status().clone();
    wait_ready(&status, PARTITIONS as usize).await;
    assert_eq!(status.aggregates_in_memory(), 4, "every account restored");
    let refused = bus
        .send_and_wait(&withdraw("a", 60), SendOptions::default(), wait)
        .await
        .expect("reply");
    assert!(!accepted(&refused), "the restored balance (50) decides");
    let ok = bus
        .send_and_wait(&withdraw("a", 50), SendOptions::default(), wait)
        .await
        .expect("reply");
    match &ok.outcome {
        Outcome::Accepted { events } => assert_eq!(events[0].sequence, 3, "the version continues"),
        other => panic!("{other:?}"),
    }
    processor.stop().await.expect("run");
    check_log(&committed_events(&config, 9, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_the_wrong_partition_is_rejected_with_a_reply_and_a_dead_letter() {
    let config = common::kafka("agg-partition");
    bank_topics(&config).await;
    let processor = start(&config, 0);
    let status = processor.status().clone();
    wait_ready(&status, PARTITIONS as usize).await;
    let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
    assert!(accepted(
        &bus.send_and_wait(
            &open("zed"),
            SendOptions::default(),
            Duration::from_secs(30)
        )
        .await
        .expect("open")
    ));

    // A client with another partitioner: the same envelope, sent to the wrong partition.
    let right = partition_for_key(b"zed", PARTITIONS);
    let wrong = (right + 1) % PARTITIONS;
    let publisher = choreo::Publisher::new(&config, "/other-client").expect("publisher");
    let mut meta = choreo::Metadata::new(
        uuid::Uuid::now_v7(),
        "v1.account.deposit",
        "/other-client",
        "zed",
        chrono::Utc::now(),
        None,
    );
    meta.extensions
        .insert("replyto".into(), config.topic_name("bank.replies"));
    meta.extensions.insert("replypartition".into(), "1".into());
    let payload = serde_json::to_vec(&Deposit {
        account: "zed".into(),
        amount: 5,
    })
    .expect("json");
    let out =
        choreo::kafka::Outgoing::new(config.topic_name("account.commands"), meta.clone(), payload)
            .to_partition(wrong);
    publisher.send(&out).await.expect("send");

    // Two replies on the topic: the open's (partition 0) and the refusal (partition 1).
    let replies = common::read_all(
        &config,
        &config.topic_name("bank.replies"),
        2,
        Duration::from_secs(30),
        true,
    );
    let reply = replies
        .iter()
        .find(|r| common::header_map(r)["ce_causationid"] == meta.id.to_string())
        .expect("a reply");
    let outcome: Outcome =
        serde_json::from_slice(reply.payload().expect("payload")).expect("outcome");
    assert!(
        matches!(&outcome, Outcome::Rejected { rejection } if rejection.code == "wrong_partition"),
        "{outcome:?}"
    );
    let letters = common::read_all(
        &config,
        &config.topic_name("bank.dlq"),
        1,
        Duration::from_secs(30),
        true,
    );
    assert_eq!(letters.len(), 1);
    assert!(
        common::header_map(&letters[0])[dlq_headers::ERROR].contains("murmur2"),
        "dead letter names the reason"
    );
    processor.stop().await.expect("run");
    assert_eq!(
        committed_events(&config, 1, true).len(),
        1,
        "the aggregate is untouched: only its open event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_processor_with_the_same_transactional_identity_fences_the_first_which_stops() {
    let config = common::kafka("agg-fence");
    bank_topics(&config).await;
    let first = start(&config, 7);
    wait_ready(first.status(), PARTITIONS as usize).await;
    let second = start(&config, 7);
    // The newcomer's init_transactions fences the first one's producer; the first learns it
    // at its next transaction.
    let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
    let _ = bus
        .send_and_wait(&open("f"), SendOptions::default(), Duration::from_secs(20))
        .await;
    let outcome = tokio::time::timeout(Duration::from_secs(60), first.finished())
        .await
        .expect("the first stops");
    let err = outcome.expect_err("the fenced processor stops with an error");
    assert!(matches!(err, choreo::Error::Fenced { .. }), "{err}");
    wait_ready(second.status(), PARTITIONS as usize).await;
    let reply = bus
        .send_and_wait(&open("g"), SendOptions::default(), Duration::from_secs(30))
        .await
        .expect("the new one answers");
    assert!(accepted(&reply));
    second.stop().await.expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_shorten_restores_and_an_unusable_one_falls_back_to_the_whole_log() {
    let config = common::kafka("agg-snapshots");
    bank_topics(&config).await;
    let (_, pool) = common::fresh_database("agg_snapshots").await;
    let bank = Bank {
        bus: CommandBus::new(&config, "bank", 1).await.expect("bus"),
        config,
        pool,
    };
    let mut events = step_snapshots_are_written(&bank).await;
    step_a_restart_restores_from_the_snapshots(&bank, &mut events).await;
    step_unusable_snapshots_fall_back_to_the_whole_log(&bank, events).await;
}

/// What the snapshot test's steps share.
struct Bank {
    config: KafkaConfig,
    pool: sqlx::PgPool,
    bus: CommandBus,
}

/// Accounts of the snapshot test; a snapshot every 5 events.
const SNAPSHOT_ACCOUNTS: usize = 6;
const SNAPSHOT_EVERY: u64 = 5;
const WAIT: Duration = Duration::from_secs(30);

/// The bank's processor with snapshots in `settings`, and its status.
fn with_snapshots(bank: &Bank, settings: SnapshotSettings) -> (Processor, ProcessorStatus) {
    let processor = common::run_processor(
        &bank.config,
        CommandProcessor::<Account>::new("bank", "account", 0, PARTITIONS).snapshots(settings),
    );
    let status = processor.status().clone();
    (processor, status)
}

/// Opens six accounts and deposits four times into each, snapshots on; returns the number of
/// events written.
async fn step_snapshots_are_written(bank: &Bank) -> u64 {
    let (processor, status) = with_snapshots(
        bank,
        SnapshotSettings::new(bank.pool.clone(), SNAPSHOT_EVERY, 1),
    );
    wait_ready(&status, PARTITIONS as usize).await;
    let accounts: Vec<String> = (0..SNAPSHOT_ACCOUNTS)
        .map(|i| format!("acct-{i}"))
        .collect();
    let mut events = 0u64;
    for round in 0..5 {
        let sends = accounts.iter().map(|a| {
            let command = if round == 0 { open(a) } else { deposit(a, 10) };
            let bus = bank.bus.clone();
            async move {
                bus.send_and_wait(&command, SendOptions::default(), WAIT)
                    .await
            }
        });
        for reply in futures::future::join_all(sends).await {
            assert!(accepted(&reply.expect("reply")));
            events += 1;
        }
    }
    common::eventually("snapshots written", Duration::from_secs(20), || {
        status.snapshots_written() >= 1
    })
    .await;
    processor.stop().await.expect("run");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM choreo_meta.snapshots")
        .fetch_one(&bank.pool)
        .await
        .expect("count");
    assert!(stored >= 1, "snapshot rows in Postgres");
    events
}

/// A restart restores from the snapshots: fewer events read, the same state. Counts the
/// withdrawal it makes into `events`.
async fn step_a_restart_restores_from_the_snapshots(bank: &Bank, events: &mut u64) {
    let (processor, status) = with_snapshots(
        bank,
        SnapshotSettings::new(bank.pool.clone(), SNAPSHOT_EVERY, 1),
    );
    wait_ready(&status, PARTITIONS as usize).await;
    assert!(status.snapshots_loaded() >= 1, "restored from a snapshot");
    assert!(
        status.restored_events() < *events,
        "only the tail is read: {} of {events} events",
        status.restored_events()
    );
    assert_eq!(status.aggregates_in_memory(), SNAPSHOT_ACCOUNTS as u64);
    let refused = bank
        .bus
        .send_and_wait(&withdraw("acct-0", 41), SendOptions::default(), WAIT)
        .await
        .expect("reply");
    assert!(!accepted(&refused), "the balance is 40");
    let ok = bank
        .bus
        .send_and_wait(&withdraw("acct-0", 40), SendOptions::default(), WAIT)
        .await
        .expect("reply");
    match &ok.outcome {
        Outcome::Accepted { events } => assert_eq!(events[0].sequence, 6, "the version continues"),
        other => panic!("{other:?}"),
    }
    *events += 1;
    processor.stop().await.expect("run");
}

/// Corrupt bodies, then another state version: each time the whole log (`events`) is read,
/// same state.
async fn step_unusable_snapshots_fall_back_to_the_whole_log(bank: &Bank, events: u64) {
    sqlx::query("UPDATE choreo_meta.snapshots SET body = 'not json'::bytea")
        .execute(&bank.pool)
        .await
        .expect("corrupt");
    for version in [1, 2] {
        let (processor, status) = with_snapshots(
            bank,
            SnapshotSettings::new(bank.pool.clone(), 1000, version),
        );
        wait_ready(&status, PARTITIONS as usize).await;
        assert_eq!(
            status.snapshots_loaded(),
            0,
            "an unusable snapshot is ignored"
        );
        assert_eq!(status.restored_events(), events, "the whole log is read");
        let refused = bank
            .bus
            .send_and_wait(&withdraw("acct-0", 1), SendOptions::default(), WAIT)
            .await
            .expect("reply");
        assert!(!accepted(&refused), "the balance is 0");
        processor.stop().await.expect("run");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_comes_back_quickly_restores_from_its_parked_state() {
    let config = common::kafka("agg-parked");
    bank_topics(&config).await;
    let bus = CommandBus::new(&config, "bank", 1).await.expect("bus");
    let wait = Duration::from_secs(30);
    let processor_a = start(&config, 0);
    let status_a = processor_a.status();
    wait_ready(status_a, PARTITIONS as usize).await;
    let accounts: Vec<String> = (0..9).map(|i| format!("acct-{i}")).collect();
    for a in &accounts {
        assert!(accepted(
            &bus.send_and_wait(&open(a), SendOptions::default(), wait)
                .await
                .expect("reply")
        ));
        assert!(accepted(
            &bus.send_and_wait(&deposit(a, 30), SendOptions::default(), wait)
                .await
                .expect("reply")
        ));
    }
    // B joins: A gives some partitions away (and parks their state); B leaves again: after
    // the session timeout they come back to A, which only catches up.
    let processor_b = start(&config, 1);
    let status_b = processor_b.status();
    common::eventually(
        "the partitions to be shared",
        Duration::from_secs(60),
        || {
            !status_b.ready_partitions().is_empty()
                && status_a.ready_partitions().len() < PARTITIONS as usize
        },
    )
    .await;
    // B decides on its partitions from a full restore: withdraw 10 from every account.
    for a in &accounts {
        assert!(accepted(
            &bus.send_and_wait(&withdraw(a, 10), SendOptions::default(), wait)
                .await
                .expect("reply")
        ));
    }
    processor_b.stop().await.expect("run b");
    let before = status_a.restored_events();
    common::eventually(
        "A to own every partition again",
        Duration::from_secs(60),
        || status_a.ready_partitions().len() == PARTITIONS as usize,
    )
    .await;
    assert!(status_a.parked_reused() >= 1, "restored from parked state");
    assert!(
        status_a.restored_events() - before <= accounts.len() as u64,
        "only the events written meanwhile were read: {}",
        status_a.restored_events() - before
    );
    // The state is right: 30 - 10 = 20 on every account, whoever wrote what.
    for a in &accounts {
        let refused = bus
            .send_and_wait(&withdraw(a, 21), SendOptions::default(), wait)
            .await
            .expect("reply");
        assert!(!accepted(&refused), "{a}: the balance is 20");
        let ok = bus
            .send_and_wait(&withdraw(a, 20), SendOptions::default(), wait)
            .await
            .expect("reply");
        assert!(accepted(&ok), "{a}: the balance is 20");
    }
    processor_a.stop().await.expect("run a");
    check_log(&committed_events(&config, accounts.len() * 4, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_is_ready_only_once_joined_and_restored_and_no_longer_once_stopped() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, Producer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let config = common::kafka("agg-ready");
    bank_topics(&config).await;
    // A predecessor's transaction that still holds an offset commit for the processor's
    // group on every commands partition, as after a crash mid-transaction: a restore first
    // waits until no such commit is pending, which keeps the partitions restoring here until
    // the test aborts it.
    let group = config.topic_name("bank");
    let commands = config.topic_name("account.commands");
    let predecessor: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", config.brokers())
        .set("transactional.id", common::unique("predecessor"))
        .create()
        .expect("transactional producer");
    predecessor
        .init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    predecessor.begin_transaction().expect("begin");
    let group_member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", config.brokers())
        .set("group.id", &group)
        .create()
        .expect("consumer");
    let mut offsets = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        offsets
            .add_partition_offset(&commands, p, Offset::Offset(0))
            .expect("offset");
    }
    predecessor
        .send_offsets_to_transaction(
            &offsets,
            &group_member.group_metadata().expect("group metadata"),
            Duration::from_secs(30),
        )
        .expect("a pending offset commit");

    let processor = start(&config, 0);
    let status = processor.status().clone();
    assert!(!status.is_ready(), "not ready before joining the group");
    common::eventually(
        "the first assignment, restoring every partition",
        Duration::from_secs(60),
        || status.restoring_partitions().len() == PARTITIONS as usize,
    )
    .await;
    // Joined, nothing halted, but the restores wait: never ready meanwhile.
    for _ in 0..40 {
        assert!(
            !status.is_ready(),
            "ready while restoring {:?}",
            status.restoring_partitions()
        );
        assert!(status.halted().is_empty(), "{:?}", status.halted());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        status.ready_partitions().is_empty(),
        "{:?}",
        status.ready_partitions()
    );

    predecessor
        .abort_transaction(Duration::from_secs(30))
        .expect("abort");
    common::eventually("ready after the restores", Duration::from_secs(60), || {
        status.is_ready()
    })
    .await;
    assert_eq!(status.ready_partitions().len(), PARTITIONS as usize);
    assert!(status.restoring_partitions().is_empty());
    // Ready means it answers.
    let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
    let reply = bus
        .send_and_wait(
            &open("ready"),
            SendOptions::default(),
            Duration::from_secs(30),
        )
        .await
        .expect("reply");
    assert!(accepted(&reply));

    processor.stop().await.expect("run");
    assert!(!status.is_ready(), "not ready once it left the group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_assignment_is_empty_is_ready_once_joined() {
    // One instance more than partitions: one of them joins with nothing to restore. It is
    // still ready (it can send commands to the others), which needs librdkafka to report the
    // empty assignment too.
    let config = common::kafka("agg-empty");
    bank_topics(&config).await;
    let instances: Vec<_> = (0..=PARTITIONS as u32)
        .map(|ordinal| start(&config, ordinal))
        .collect();
    common::eventually(
        "every instance ready and every partition owned, spread out",
        Duration::from_secs(60),
        || {
            // The cooperative assignor may first give one instance two partitions and move
            // one in a later rebalance: wait for the spread state, not the first full one.
            let owned: Vec<usize> = instances
                .iter()
                .map(|i| i.status().ready_partitions().len())
                .collect();
            instances.iter().all(|i| i.status().is_ready())
                && owned.iter().sum::<usize>() == PARTITIONS as usize
                && owned.iter().all(|n| *n <= 1)
        },
    )
    .await;
    let owned: Vec<usize> = instances
        .iter()
        .map(|i| i.status().ready_partitions().len())
        .collect();
    // All stopped at once, as one service would be.
    for instance in &instances {
        instance.shutdown().trigger();
    }
    for instance in instances {
        instance.stop().await.expect("run");
    }
    assert_eq!(
        owned.iter().filter(|n| **n == 0).count(),
        1,
        "one instance owns nothing: {owned:?}"
    );
}
