//! `commands`: `choreo::aggregate::CommandProcessor` (one EOS transaction per batch) against
//! the hand-written transactional loop of [`crate::cmd::BaselineLoop`], both draining the
//! same backlog of commands.
//!
//! Each round works in a namespace of its own (`<run>-r<round>`): its commands topic is
//! pre-loaded (not timed) with that round's share of the commands, then each side drains it
//! in its own consumer group, writing its own events topic (the processor restores from its
//! events topic, so it needs one the baseline never writes). A side's clock starts when it
//! owns every partition (the processor: all partitions restored, which is instant on an
//! empty log; the baseline: its assignment) and stops when its group's committed offsets
//! cover the backlog (polled every 10 ms on both sides), so the group join is not counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use choreo::{KafkaConfig, Shutdown};

use crate::cmd::{self, BaselineLoop, GroupProgress, RunningLoop, SERVICE, Topics};
use crate::data::Dataset;
use crate::{CpuClock, Round, Setup, Side};

pub async fn run(setup: &Setup, created: &mut Vec<String>) -> anyhow::Result<Vec<Round>> {
    let dataset = Dataset::new()?;
    let producer = cmd::command_producer(&setup.brokers)?;
    let rounds_n = u64::from(setup.rounds);
    println!(
        "  batches of at most {} commands per transaction on both sides, transactional producers with linger.ms={}",
        cmd::BATCH,
        cmd::TX_LINGER_MS
    );
    let mut rounds = Vec::new();
    for round in 0..setup.rounds {
        let r = u64::from(round);
        let range = setup.events * r / rounds_n..setup.events * (r + 1) / rounds_n;
        let commands = range.end - range.start;
        // Under the run's namespace (dot-separated), so the admin, whose config carries that
        // namespace, does not put it in front a second time.
        let namespace = format!("{}.r{round}", setup.namespace);
        let topics = Topics::new(&namespace);
        topics
            .create(&setup.admin, &namespace, &[SERVICE.to_owned()], created)
            .await?;
        let started = Instant::now();
        cmd::preload(&producer, &topics, &dataset, range, setup.window).await?;
        println!(
            "  round {}: pre-loaded {commands} commands into {} in {:.1} s",
            round + 1,
            topics.commands,
            started.elapsed().as_secs_f64()
        );
        // Generous: a side that stalls fails the run instead of hanging it.
        let limit = Duration::from_secs(120 + commands / 500);
        for side in Side::order(round) {
            let cpu = CpuClock::start();
            let elapsed = match side {
                Side::Framework => framework_round(setup, &namespace, &topics, commands, limit)
                    .await
                    .context("framework round")?,
                Side::Baseline => baseline_round(setup, &namespace, &topics, commands, limit)
                    .await
                    .context("baseline round")?,
            };
            let measured = Round {
                side,
                events: commands,
                elapsed,
                cpu: cpu.used(),
            };
            measured.report(round);
            rounds.push(measured);
        }
    }
    Ok(rounds)
}

async fn framework_round(
    setup: &Setup,
    namespace: &str,
    topics: &Topics,
    commands: u64,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let config = KafkaConfig::new(setup.brokers.as_str()).namespace(namespace);
    let group = format!("{namespace}.{SERVICE}");
    let watcher = Arc::new(GroupProgress::new(
        &setup.brokers,
        &group,
        &topics.commands,
    )?);
    let shutdown = Shutdown::new();
    let (task, status) = cmd::start_processor(&config, SERVICE, 0, &shutdown);
    let outcome = async {
        let start = cmd::wait_ready(&status, &task, Duration::from_secs(60)).await?;
        let end = watcher
            .wait_for(commands, limit, || {
                anyhow::ensure!(!task.is_finished(), "the processor stopped");
                let halted = status.halted();
                anyhow::ensure!(halted.is_empty(), "partitions halted: {halted:?}");
                Ok(())
            })
            .await?;
        anyhow::Ok(end - start)
    }
    .await;
    shutdown.trigger();
    let stopped = task.await.context("joining the processor")?;
    let elapsed = outcome?;
    stopped.context("the command processor failed")?;
    Ok(elapsed)
}

async fn baseline_round(
    setup: &Setup,
    namespace: &str,
    topics: &Topics,
    commands: u64,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let group = format!("{namespace}.baseline");
    let watcher = Arc::new(GroupProgress::new(
        &setup.brokers,
        &group,
        &topics.commands,
    )?);
    let running = RunningLoop::start(BaselineLoop {
        brokers: setup.brokers.clone(),
        group: group.clone(),
        commands_topic: topics.commands.clone(),
        events_topic: topics.baseline_events.clone(),
        transactional_id: format!("{group}-0"),
    })?;
    let outcome = async {
        let end = watcher
            .wait_for(commands, limit, || running.check())
            .await?;
        let start = running
            .assigned()
            .context("the baseline finished without reporting its assignment")?;
        anyhow::Ok(end - start)
    }
    .await;
    let stopped = running.stop().await;
    let elapsed = outcome?;
    stopped.context("the baseline loop failed")?;
    Ok(elapsed)
}
