//! Fault drills: a projection process killed at failpoints (live and during a rebuild) and
//! a zombie paused past its session timeout. After each, the view must equal an independent
//! fold of the log, with every offset applied in exactly one committed batch.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use choreo::{KafkaConfig, Publisher};

use crate::common;
use crate::projections::{PROJECTION, fold, publish, topics, view};

/// Starts `choreo-drill` with the test's Kafka namespace and database.
fn drill(
    config: &KafkaConfig,
    database_url: &str,
    args: &[&str],
    failpoint: Option<&str>,
) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_choreo-drill"));
    command
        .args(args)
        .env("CHOREO_KAFKA_BROKERS", config.brokers())
        .env(
            "CHOREO_TOPIC_NAMESPACE",
            config.topic_namespace().expect("tests use a namespace"),
        )
        .env("CHOREO_DATABASE_URL", database_url)
        .env_remove("CHOREO_FAILPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(point) = failpoint {
        command.env("CHOREO_FAILPOINT", point);
    }
    command.spawn().expect("start choreo-drill")
}

/// Waits for the process to end; panics after `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("choreo-drill did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} failed");
}

/// Stops a drill process gracefully (SIGTERM) and checks it exited cleanly.
fn stop(mut child: Child) {
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "graceful stop: {status}");
}

fn stdout_of(child: Child) -> String {
    let output = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

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
        let mut doomed = drill(&config, &url, &["rebuild"], Some(failpoint));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_paused_past_its_session_timeout_never_double_applies() {
    let config = common::kafka("drill-zombie");
    let topic = topics(&config, 3).await;
    let (url, pool) = common::fresh_database("drill_zombie").await;
    let publisher = Publisher::new(&config, "/drill").expect("publisher");
    publish(&publisher, 0..1000).await;
    let zombie = drill(&config, &url, &["project"], None);
    common::wait_caught_up(
        &pool,
        &config,
        PROJECTION,
        &topic,
        3,
        Duration::from_secs(90),
    )
    .await;

    let producing = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            for round in 0..20 {
                publish(&publisher, 1000 + round * 100..1100 + round * 100).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    signal(&zombie, "STOP");
    let successor = drill(&config, &url, &["project"], None);
    // Past the 10 s session timeout: the group hands the zombie's partitions to the successor.
    tokio::time::sleep(Duration::from_secs(14)).await;
    signal(&zombie, "CONT");
    producing.await.expect("producer");
    common::wait_caught_up(
        &pool,
        &config,
        PROJECTION,
        &topic,
        3,
        Duration::from_secs(90),
    )
    .await;
    stop(zombie);
    stop(successor);
    assert_eq!(
        view(&pool, "counters_v1").await,
        fold(&config, &topic, 3000),
        "each offset in exactly one committed batch"
    );
}
