//! Fault drills: a projection process killed at failpoints (live and during a rebuild) and
//! a zombie paused past its session timeout. After each, the view must equal an independent
//! fold of the log, with every offset applied in exactly one committed batch.

use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::Duration;

use choreo::{KafkaConfig, Publisher};
use rdkafka::consumer::BaseConsumer;

use crate::common;
use crate::process::{
    Reaped, drill, drill_command, group_members, signal, spawn_watched, stdout_of, stop, wait_exit,
};
use crate::projections::{PROJECTION, applied_past, fold, publish, topics, view};

async fn killed_live_projection_recovers(test: &str, failpoint: &str) {
    let config = common::kafka(test);
    let topic = topics(&config, 3).await;
    let (url, pool) = common::fresh_database(test).await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    publish(&publisher, 0..3000).await;

    let mut doomed = drill(&config, &url, &["project"], Some(&format!("{failpoint}@2")));
    let status = wait_exit(&mut doomed, Duration::from_secs(90));
    assert!(
        !status.success(),
        "the process died at {failpoint}: {status}"
    );
    publish(&publisher, 3000..3500).await;

    let survivor = drill(&config, &url, &["project"], None);
    common::wait_caught_up(
        &pool,
        &config,
        PROJECTION,
        &topic,
        3,
        Duration::from_secs(90),
    )
    .await;
    stop(survivor);
    assert_eq!(
        view(&pool, "counters_v1").await,
        fold(&config, &topic, 3500),
        "after a kill at {failpoint}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_killed_after_the_checkpoint_compare_and_set_resumes_without_loss_or_double_effect()
 {
    killed_live_projection_recovers("drill_cas", "projection.after_cas").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_killed_before_the_postgres_commit_resumes_without_loss_or_double_effect() {
    killed_live_projection_recovers("drill_commit", "projection.before_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rebuild_leaves_the_live_view_untouched_and_the_next_run_resumes_and_swaps() {
    let config = common::kafka("drill-rebuild");
    let topic = topics(&config, 3).await;
    let (url, pool) = common::fresh_database("drill_rebuild").await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    publish(&publisher, 0..4000).await;
    let live = drill(&config, &url, &["project"], None);
    common::wait_caught_up(
        &pool,
        &config,
        PROJECTION,
        &topic,
        3,
        Duration::from_secs(90),
    )
    .await;
    stop(live);
    let before = view(&pool, "counters_v1").await;
    let checkpoints_before: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM choreo_meta.checkpoints WHERE slot = 'live' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("checkpoints");

    // Killed while filling the shadow, then killed inside the swap transaction.
    for failpoint in ["projection.after_cas@2", "rebuild.before_swap_commit"] {
        // Small batches: several transactions, so the kill lands after some committed.
        let mut doomed = drill(
            &config,
            &url,
            &["rebuild", "--batch", "1000"],
            Some(failpoint),
        );
        let status = wait_exit(&mut doomed, Duration::from_secs(90));
        assert!(
            !status.success(),
            "the rebuild died at {failpoint}: {status}"
        );
        assert_eq!(
            view(&pool, "counters_v1").await,
            before,
            "live view untouched after a kill at {failpoint}"
        );
        let checkpoints: Vec<(i32, i64)> =
            sqlx::query_as("SELECT partition, next_offset FROM choreo_meta.checkpoints WHERE slot = 'live' ORDER BY 1")
                .fetch_all(&pool)
                .await
                .expect("checkpoints");
        assert_eq!(
            checkpoints, checkpoints_before,
            "live checkpoints untouched after a kill at {failpoint}"
        );
    }
    let shadow: i64 = sqlx::query_scalar("SELECT count(*) FROM choreo_meta.rebuilds")
        .fetch_one(&pool)
        .await
        .expect("rebuilds");
    assert_eq!(
        shadow, 1,
        "the interrupted rebuild is on record, to be resumed"
    );

    let finished = drill(&config, &url, &["rebuild"], None);
    let output = stdout_of(finished);
    assert!(
        output.contains("resumed from a previous run")
            && output.contains("swapped into schema counters_v1"),
        "{output}"
    );
    assert_eq!(
        view(&pool, "counters_v1").await,
        fold(&config, &topic, 4000),
        "the resumed rebuild equals the fold"
    );
}

/// The interleaving the checkpoint's compare-and-set exists for, driven exactly: a zombie has
/// fetched a batch and is held before its compare-and-set while paused past its session
/// timeout; its successor applies and commits the same offsets; the zombie then goes on with
/// its stale batch before it learns that its partition is gone (its poll thread is held there,
/// as when a zombie cannot reach the brokers but can reach Postgres). Its compare-and-set must
/// find the checkpoint moved (it says so) and apply nothing: each offset once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_going_on_with_a_stale_batch_after_its_successor_committed_applies_nothing() {
    const BATCH_HELD: &str = "choreo failpoint projection.before_cas: holding";
    const REVOKE_HELD: &str = "choreo failpoint consumer.revoke_lost: holding";
    const MOVED: &str = "checkpoint moved by another writer";
    let config = common::kafka("drill-zombie-cas");
    let topic = topics(&config, 1).await;
    let (url, pool) = common::fresh_database("drill_zombie_cas").await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    publish(&publisher, 0..300).await;
    let holds = tempfile_dir("zombie-cas");
    let release = |name: &str| std::fs::write(holds.join(name), b"").expect("release file");

    let mut command = drill_command(&config, &url, &["project"], None);
    command
        .env("RUST_LOG", "choreo=info")
        .env(
            "CHOREO_FAILPOINT_HOLD",
            "projection.before_cas,consumer.revoke_lost",
        )
        .env("CHOREO_FAILPOINT_HOLD_DIR", &holds);
    let (zombie, seen) = spawn_watched(command, &[BATCH_HELD, REVOKE_HELD, MOVED]);
    let zombie = Reaped(zombie);
    let held = |i: usize| seen[i].load(Ordering::Acquire) > 0;
    common::eventually(
        "the zombie to hold its first batch before the compare-and-set",
        Duration::from_secs(90),
        || held(0),
    )
    .await;
    signal(&zombie.0, "STOP");
    assert!(
        !applied_past(&pool, &topic, &[0]).await,
        "nothing applied while the zombie holds the batch"
    );

    // The successor gets the partition once the group drops the zombie, and commits the
    // offsets the zombie holds.
    let _successor = Reaped(drill(&config, &url, &["project"], None));
    common::wait_caught_up(
        &pool,
        &config,
        PROJECTION,
        &topic,
        1,
        Duration::from_secs(90),
    )
    .await;
    // Resumed, the zombie's poll thread finds the assignment lost and is held there; then its
    // batch goes on to the compare-and-set with the checkpoint it read before.
    signal(&zombie.0, "CONT");
    common::eventually(
        "the zombie's poll thread to find its partition lost",
        Duration::from_secs(60),
        || held(1),
    )
    .await;
    release("projection.before_cas");
    common::eventually(
        "the zombie to find its checkpoint moved",
        Duration::from_secs(60),
        || held(2),
    )
    .await;
    release("consumer.revoke_lost");
    assert_eq!(
        view(&pool, "counters_v1").await,
        fold(&config, &topic, 300),
        "each offset applied once; the view equals the fold"
    );
}

/// A new empty directory under the system's temporary directory.
pub(crate) fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("choreo-{}", common::unique(name)));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_paused_past_its_session_timeout_never_double_applies() {
    let config = common::kafka("drill-zombie");
    let topic = topics(&config, 3).await;
    let (url, pool) = common::fresh_database("drill_zombie").await;
    let z = Zombie {
        admin: rdkafka::ClientConfig::new()
            .set("bootstrap.servers", config.brokers())
            .create()
            .expect("admin consumer"),
        group: config.topic_name(PROJECTION),
        publisher: Publisher::new(&config, "/drill").expect("publisher"),
        config,
        topic,
        url,
        pool,
    };
    let (zombie, zombie_member, caught_up) = step_the_zombie_catches_up_alone(&z).await;
    let (successor, producing) =
        step_paused_past_its_session_timeout_it_is_dropped(&z, &zombie, &zombie_member, &caught_up)
            .await;
    step_resumed_it_applies_nothing_twice(&z, zombie, successor, producing).await;
}

/// What the zombie drill's steps share.
struct Zombie {
    config: KafkaConfig,
    topic: String,
    url: String,
    pool: sqlx::PgPool,
    publisher: Publisher,
    /// Describes the projection's group.
    admin: BaseConsumer,
    group: String,
}

/// The zombie-to-be projects the first 1000 events alone; returns it, its member id and the
/// end offsets it caught up to.
async fn step_the_zombie_catches_up_alone(z: &Zombie) -> (Child, String, Vec<i64>) {
    let Zombie {
        config,
        topic,
        url,
        pool,
        publisher,
        admin,
        group,
    } = z;
    publish(publisher, 0..1000).await;
    let zombie = drill(config, url, &["project"], None);
    common::wait_caught_up(pool, config, PROJECTION, topic, 3, Duration::from_secs(90)).await;

    let caught_up = common::end_offsets(config, topic, 3);
    // The zombie's member id, while it is alone in its group.
    let mut zombie_member = String::new();
    common::eventually(
        "the zombie alone in its group",
        Duration::from_secs(60),
        || {
            let (state, members) = group_members(admin, group);
            if state == "Stable" && members.len() == 1 {
                zombie_member.clone_from(&members[0]);
                return true;
            }
            false
        },
    )
    .await;
    (zombie, zombie_member, caught_up)
}

/// While events keep coming, the zombie is paused (SIGSTOP) as it applies the new ones, and a
/// successor starts; the group drops the zombie for it. Returns the successor and the producer.
async fn step_paused_past_its_session_timeout_it_is_dropped(
    z: &Zombie,
    zombie: &Child,
    zombie_member: &str,
    caught_up: &[i64],
) -> (Child, tokio::task::JoinHandle<()>) {
    let producing = tokio::spawn({
        let publisher = z.publisher.clone();
        async move {
            for round in 0..20 {
                publish(&publisher, 1000 + round * 100..1100 + round * 100).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    // Paused while it applies the new events (it has applied some of them).
    let (db, events) = (&z.pool, &z.topic);
    common::eventually_async(
        "the zombie applying the new events",
        Duration::from_secs(60),
        || applied_past(db, events, caught_up),
    )
    .await;
    signal(zombie, "STOP");
    let successor = drill(&z.config, &z.url, &["project"], None);
    // Past the zombie's 10 s session timeout the group drops it and hands its partitions to
    // the successor: resumed only once the broker shows that.
    common::eventually(
        "the group to drop the zombie for the successor",
        Duration::from_secs(90),
        || {
            let (state, members) = group_members(&z.admin, &z.group);
            state == "Stable" && !members.is_empty() && !members.iter().any(|m| m == zombie_member)
        },
    )
    .await;
    (successor, producing)
}

/// Resumed (SIGCONT), the zombie goes on with its stale batch: the view still equals the
/// fold, each offset in exactly one committed batch.
async fn step_resumed_it_applies_nothing_twice(
    z: &Zombie,
    zombie: Child,
    successor: Child,
    producing: tokio::task::JoinHandle<()>,
) {
    signal(&zombie, "CONT");
    producing.await.expect("producer");
    common::wait_caught_up(
        &z.pool,
        &z.config,
        PROJECTION,
        &z.topic,
        3,
        Duration::from_secs(90),
    )
    .await;
    stop(zombie);
    stop(successor);
    assert_eq!(
        view(&z.pool, "counters_v1").await,
        fold(&z.config, &z.topic, 3000),
        "each offset in exactly one committed batch"
    );
}

mod commands {
    //! Command processors killed at their failpoints, and conflicting commands while
    //! instances die and partitions move.

    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use choreo::aggregate::{CommandBus, Outcome, SendOptions};
    use choreo::testing::account::AccountCommand;

    use crate::aggregates::{PARTITIONS, bank_topics, check_log, deposit, open, withdraw};
    use crate::common;
    use crate::process::{drill, drill_watched, signal, stop, wait_exit};

    /// What the `command.restore` failpoint prints when a restore starts stalling.
    const RESTORE_STALLS: &str = "failpoint command.restore: stalling";

    /// Sends every command until each has a reply, retrying with the same id (a client retry).
    async fn send_until_answered(
        bus: &CommandBus,
        commands: &[(uuid::Uuid, AccountCommand)],
        replies: &mut HashMap<uuid::Uuid, Outcome>,
        rounds: usize,
    ) {
        send_until_answered_within(bus, commands, replies, rounds, Duration::from_secs(4)).await;
    }

    /// [`send_until_answered`], each round waiting up to `wait` for the replies.
    async fn send_until_answered_within(
        bus: &CommandBus,
        commands: &[(uuid::Uuid, AccountCommand)],
        replies: &mut HashMap<uuid::Uuid, Outcome>,
        rounds: usize,
        wait: Duration,
    ) {
        for _ in 0..rounds {
            let pending: Vec<_> = commands
                .iter()
                .filter(|(id, _)| !replies.contains_key(id))
                .collect();
            if pending.is_empty() {
                return;
            }
            let sends = pending.iter().map(|(id, command)| {
                bus.send_and_wait(
                    command,
                    SendOptions {
                        id: Some(*id),
                        ..SendOptions::default()
                    },
                    wait,
                )
            });
            for ((id, _), result) in pending.iter().zip(futures::future::join_all(sends).await) {
                if let Ok(reply) = result {
                    replies.insert(*id, reply.outcome);
                }
            }
        }
    }

    /// Every accepted command's events are in the committed log exactly once; nothing else is.
    fn check_exactly_once(
        config: &choreo::KafkaConfig,
        replies: &HashMap<uuid::Uuid, Outcome>,
    ) -> usize {
        let accepted_ids: BTreeSet<String> = replies
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Accepted { .. }))
            .map(|(id, _)| id.to_string())
            .collect();
        let log = crate::aggregates::committed_events(config, accepted_ids.len(), true);
        check_log(&log);
        let mut per_command: BTreeMap<String, usize> = BTreeMap::new();
        for record in &log {
            *per_command
                .entry(common::header_map(record)["ce_causationid"].clone())
                .or_default() += 1;
        }
        assert_eq!(
            per_command.keys().cloned().collect::<BTreeSet<_>>(),
            accepted_ids,
            "the log holds exactly the accepted commands"
        );
        assert!(
            per_command.values().all(|&n| n == 1),
            "each accepted command's event appears once"
        );
        log.len()
    }

    async fn killed_processor_recovers(test: &str, failpoint: &str) {
        let config = common::kafka(test);
        bank_topics(&config).await;
        let url = "postgres://unused";
        let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
        let accounts: Vec<String> = (0..6).map(|i| format!("acct-{i}")).collect();
        let mut commands: Vec<(uuid::Uuid, AccountCommand)> = accounts
            .iter()
            .map(|a| (uuid::Uuid::now_v7(), open(a)))
            .collect();
        for round in 0..5 {
            for a in &accounts {
                commands.push((uuid::Uuid::now_v7(), deposit(a, 10 + round)));
            }
        }
        let mut replies: HashMap<uuid::Uuid, Outcome> = HashMap::new();

        // A first process commits the opens (sent once, with time to answer however long
        // the start takes: no copy is left over) and stops. The doomed one restores them and
        // dies at the failpoint of its first transaction: the deposits, whatever the batches.
        let partitions = PARTITIONS.to_string();
        let first = drill(&config, url, &["process", "0", &partitions], None);
        send_until_answered_within(
            &bus,
            &commands[..accounts.len()],
            &mut replies,
            1,
            Duration::from_secs(90),
        )
        .await;
        assert_eq!(replies.len(), accounts.len(), "the opens answered");
        stop(first);
        let mut doomed = drill(
            &config,
            url,
            &["process", "0", &partitions],
            Some(failpoint),
        );
        send_until_answered(&bus, &commands, &mut replies, 1).await;
        let status = wait_exit(&mut doomed, Duration::from_secs(60));
        assert!(
            !status.success(),
            "the processor died at {failpoint}: {status}"
        );
        // Restarted with the same ordinal: it fences the dead one's transaction and restores.
        let survivor = drill(
            &config,
            url,
            &["process", "0", &PARTITIONS.to_string()],
            None,
        );
        send_until_answered(&bus, &commands, &mut replies, 20).await;
        assert_eq!(
            replies.len(),
            commands.len(),
            "every command answered in the end"
        );
        assert!(
            replies
                .values()
                .all(|o| matches!(o, Outcome::Accepted { .. })),
            "opens and deposits are all accepted"
        );
        stop(survivor);

        let committed = check_exactly_once(&config, &replies);
        let everything = crate::aggregates::committed_events(&config, committed + 1, false);
        assert!(
            everything.len() > committed,
            "a read_uncommitted reader sees the aborted transaction's events ({} > {committed}): aborts did happen",
            everything.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_processor_killed_between_producing_events_and_sending_offsets_loses_and_duplicates_nothing()
     {
        killed_processor_recovers("drill-cmd-produce", "command.after_produce").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_with_an_unknown_outcome_replaces_the_producer_restores_and_goes_on() {
        let config = common::kafka("drill-cmd-unknown");
        bank_topics(&config).await;
        let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
        let accounts: Vec<String> = (0..6).map(|i| format!("acct-{i}")).collect();
        let mut commands: Vec<(uuid::Uuid, AccountCommand)> = accounts
            .iter()
            .map(|a| (uuid::Uuid::now_v7(), open(a)))
            .collect();
        for round in 0..4 {
            for a in &accounts {
                commands.push((uuid::Uuid::now_v7(), deposit(a, 5 + round)));
            }
        }
        let mut replies: HashMap<uuid::Uuid, Outcome> = HashMap::new();
        // The second committed transaction is treated as if its commit had timed out.
        let mut processor = drill(
            &config,
            "postgres://unused",
            &["process", "0", &PARTITIONS.to_string()],
            Some("command.commit_unknown@2"),
        );
        send_until_answered(&bus, &commands[..accounts.len()], &mut replies, 3).await;
        for round in 0..4 {
            let end = accounts.len() * (round + 2);
            send_until_answered(&bus, &commands[..end], &mut replies, 10).await;
        }
        assert_eq!(replies.len(), commands.len(), "every command answered");
        assert!(
            replies
                .values()
                .all(|o| matches!(o, Outcome::Accepted { .. })),
            "all accepted"
        );
        assert!(
            processor.try_wait().expect("try_wait").is_none(),
            "the processor kept running"
        );
        signal(&processor, "TERM");
        let status = wait_exit(&mut processor, Duration::from_secs(60));
        assert!(status.success(), "graceful stop: {status}");
        let mut out = String::new();
        std::io::Read::read_to_string(processor.stdout.as_mut().expect("stdout"), &mut out)
            .expect("stdout");
        assert!(
            out.contains("producer restarts: 1"),
            "the producer was replaced once: {out}"
        );
        // Sequences contiguous per account and each command's event once: the restore after
        // the unknown outcome picked up exactly what was committed.
        check_exactly_once(&config, &replies);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebalance_while_partitions_restore_decides_nothing_on_partial_state() {
        let config = common::kafka("drill-cmd-restore");
        bank_topics(&config).await;
        let url = "postgres://unused";
        let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
        let accounts: Vec<String> = (0..9).map(|i| format!("acct-{i}")).collect();
        // History: each account opened with a deposit of 100.
        let mut history: Vec<(uuid::Uuid, AccountCommand)> = Vec::new();
        for a in &accounts {
            history.push((uuid::Uuid::now_v7(), open(a)));
            history.push((uuid::Uuid::now_v7(), deposit(a, 100)));
        }
        let mut replies: HashMap<uuid::Uuid, Outcome> = HashMap::new();
        let first = drill(&config, url, &["process", "0", "3"], None);
        send_until_answered(&bus, &history, &mut replies, 10).await;
        stop(first);

        // Every restore now stalls 4 s; while instance 0 restores (it says so when the stall
        // starts), instance 1 joins, and the partitions move between them while (or right
        // after) they are being restored.
        let (a, a_restores) = drill_watched(
            &config,
            url,
            &["process", "0", "3"],
            Some("command.restore"),
            RESTORE_STALLS,
        );
        common::eventually("instance 0 restoring", Duration::from_secs(60), || {
            a_restores.load(Ordering::Acquire) > 0
        })
        .await;
        let (b, b_restores) = drill_watched(
            &config,
            url,
            &["process", "1", "3"],
            Some("command.restore"),
            RESTORE_STALLS,
        );
        // Withdrawals of 60 twice per account: only one of the two may pass (balance 100),
        // which holds only if every decision saw the fully restored state.
        let withdrawals: Vec<(uuid::Uuid, AccountCommand)> = accounts
            .iter()
            .flat_map(|a| {
                [
                    (uuid::Uuid::now_v7(), withdraw(a, 60)),
                    (uuid::Uuid::now_v7(), withdraw(a, 60)),
                ]
            })
            .collect();
        send_until_answered(&bus, &withdrawals, &mut replies, 30).await;
        // Instance 0 gives partitions to instance 1, which restores them (slowly); the same
        // race again on the moved partitions: 40 twice from 40.
        common::eventually(
            "instance 1 restoring the partitions it took over",
            Duration::from_secs(90),
            || b_restores.load(Ordering::Acquire) > 0,
        )
        .await;
        let rest: Vec<(uuid::Uuid, AccountCommand)> = accounts
            .iter()
            .flat_map(|a| {
                [
                    (uuid::Uuid::now_v7(), withdraw(a, 40)),
                    (uuid::Uuid::now_v7(), withdraw(a, 40)),
                ]
            })
            .collect();
        send_until_answered(&bus, &rest, &mut replies, 30).await;
        stop(a);
        stop(b);
        assert_eq!(
            replies.len(),
            history.len() + withdrawals.len() + rest.len(),
            "every command answered"
        );
        for pair in withdrawals.chunks(2).chain(rest.chunks(2)) {
            let passed = pair
                .iter()
                .filter(|(id, _)| matches!(replies[id], Outcome::Accepted { .. }))
                .count();
            assert_eq!(passed, 1, "exactly one of two racing withdrawals passes");
        }
        let balances = check_log(&crate::aggregates::committed_events(
            &config,
            accounts.len() * 4,
            true,
        ));
        assert!(
            balances.values().all(|&b| b == 0),
            "balances after 100 - 60 - 40: {balances:?}"
        );
        check_exactly_once(&config, &replies);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_processor_killed_before_the_kafka_commit_loses_and_duplicates_nothing() {
        killed_processor_recovers("drill-cmd-commit", "command.before_commit").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conflicting_withdrawals_while_a_processor_is_killed_and_partitions_move_keep_the_invariant()
     {
        let config = common::kafka("drill-conflict");
        bank_topics(&config).await;
        let url = "postgres://unused";
        let args = |ordinal: &'static str| ["process", ordinal, "3"];
        let mut a = drill(&config, url, &args("0"), None);
        let b = drill(&config, url, &args("1"), None);
        let bus = CommandBus::new(&config, "bank", 1).await.expect("bus");
        let accounts: Vec<String> = (0..5).map(|i| format!("acct-{i}")).collect();
        let mut setup: Vec<(uuid::Uuid, AccountCommand)> = Vec::new();
        for account in &accounts {
            setup.push((uuid::Uuid::now_v7(), open(account)));
            setup.push((uuid::Uuid::now_v7(), deposit(account, 100)));
        }
        let mut replies = HashMap::new();
        send_until_answered(&bus, &setup[..5.min(setup.len())], &mut replies, 30).await;
        send_until_answered(&bus, &setup, &mut replies, 30).await;
        assert_eq!(replies.len(), setup.len());
        // Eight clients' worth of withdrawals of 30: at most three per account can succeed.
        // Each client withdraws from every account in turn, one withdrawal after the other,
        // all of them at once.
        let withdrawals: Vec<(uuid::Uuid, AccountCommand)> = (0..40)
            .map(|i| {
                (
                    uuid::Uuid::now_v7(),
                    withdraw(&accounts[i % accounts.len()], 30),
                )
            })
            .collect();
        let answered = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = withdrawals
            .chunks(accounts.len())
            .map(|mine| {
                let (bus, mine, answered) = (bus.clone(), mine.to_vec(), Arc::clone(&answered));
                tokio::spawn(async move {
                    let mut replies = HashMap::new();
                    for withdrawal in &mine {
                        send_until_answered(
                            &bus,
                            std::slice::from_ref(withdrawal),
                            &mut replies,
                            40,
                        )
                        .await;
                        answered.fetch_add(1, Ordering::AcqRel);
                    }
                    replies
                })
            })
            .collect();
        // Killed as soon as the first withdrawal is answered: every client has more to send,
        // so the kill lands while they race, however fast the machine is.
        common::eventually(
            "the first withdrawal answered",
            Duration::from_secs(60),
            || answered.load(Ordering::Acquire) > 0,
        )
        .await;
        signal(&a, "KILL");
        let _ = a.wait();
        let restarted = drill(&config, url, &args("0"), None);
        let mut withdrawal_replies = HashMap::new();
        for client in clients {
            withdrawal_replies.extend(client.await.expect("client"));
        }
        assert_eq!(
            withdrawal_replies.len(),
            withdrawals.len(),
            "every withdrawal answered"
        );
        let mut per_account: BTreeMap<String, usize> = BTreeMap::new();
        for (id, command) in &withdrawals {
            if matches!(withdrawal_replies[id], Outcome::Accepted { .. })
                && let AccountCommand::Withdraw(w) = command
            {
                *per_account.entry(w.account.clone()).or_default() += 1;
            }
        }
        assert!(
            per_account.values().all(|&n| n <= 3),
            "never more than the balance allows: {per_account:?}"
        );
        let mut all = replies;
        all.extend(withdrawal_replies);
        check_exactly_once(&config, &all);
        stop(restarted);
        stop(b);
    }
}

mod publisher {
    //! A publisher whose producer raises a fatal error: the failed send is reported to its
    //! caller, the producer is replaced, and the same record sent again lands once.

    use std::collections::BTreeMap;
    use std::time::Duration;

    use crate::common;
    use rdkafka::message::OwnedMessage;

    use crate::process::{drill, stdout_of, wait_exit};
    use crate::projections::topics;

    /// How often each `ce_id` is in `records`; asserts there are `expected` ids, each once.
    fn ids_once(records: &[OwnedMessage], expected: usize) -> BTreeMap<String, usize> {
        let mut ids: BTreeMap<String, usize> = BTreeMap::new();
        for record in records {
            *ids.entry(common::header_map(record)["ce_id"].clone())
                .or_default() += 1;
        }
        assert_eq!(ids.len(), expected, "{ids:?}");
        assert!(ids.values().all(|n| *n == 1), "{ids:?}");
        ids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publish_retries_a_failed_send_itself_with_the_same_id() {
        let config = common::kafka("drill-publish-each");
        let topic = topics(&config, 2).await;
        // The 5th send of 20 fails as after a fatal idempotence error; `publish` sends it again.
        let mut child = drill(
            &config,
            "postgres://unused",
            &["publish-each", "20"],
            Some("publisher.fatal@5"),
        );
        let status = wait_exit(&mut child, Duration::from_secs(90));
        let out = stdout_of(child);
        assert!(status.success(), "{status}: {out}");
        assert!(
            out.contains("published 20; failed 0; producer replacements 1"),
            "{out}"
        );
        // Twenty ids, each once: the retry reused its id, so nothing is doubled.
        let records = common::read_all(&config, &topic, 20, Duration::from_secs(30), true);
        ids_once(&records, 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fatal_producer_error_fails_that_send_replaces_the_producer_and_loses_nothing() {
        let config = common::kafka("drill-publish");
        let topic = topics(&config, 2).await;
        // The 5th send of 20 fails as after a fatal idempotence error.
        let mut child = drill(
            &config,
            "postgres://unused",
            &["publish", "20"],
            Some("publisher.fatal@5"),
        );
        let status = wait_exit(&mut child, Duration::from_secs(90));
        let out = stdout_of(child);
        assert!(status.success(), "{status}: {out}");
        let failures: Vec<&str> = out.lines().filter(|l| l.starts_with("failed ")).collect();
        assert_eq!(failures.len(), 1, "{out}");
        assert!(
            failures[0].contains("retriable=true")
                && failures[0].contains("the producer was replaced"),
            "{out}"
        );
        let failed_id = failures[0].split(' ').nth(1).expect("id").to_owned();
        assert!(
            out.contains("sent 20; failed 1; resent 1; producer replacements 1"),
            "{out}"
        );

        // Every record in the log once, the failed one included (sent again with its id).
        let records = common::read_all(&config, &topic, 20, Duration::from_secs(30), true);
        let ids = ids_once(&records, 20);
        assert_eq!(ids.get(&failed_id), Some(&1));
    }
}
