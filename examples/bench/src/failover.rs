//! `failover`: two command processor instances (child processes of this binary, ordinals 0
//! and 1, so their `transactional.id`s differ) share the partitions; the parent keeps a
//! steady open-loop load of `send_and_wait` on them, plus a probe: one command every 50 ms
//! for one fixed meter. After a steady period it `kill -9`s the instance that owns the probe
//! meter's partition and measures the seconds from the kill until a probe sent after the
//! kill is answered (by the surviving instance, after the group noticed the death and it
//! restored the partitions). No baseline: the target is the session timeout + 5 s.
//!
//! A child reports the partitions it has ready on its stdout (`ready 0,2,4`) whenever they
//! change, and stops when its stdin closes (the parent holding the pipe).

use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use choreo::aggregate::{CommandBus, Outcome, SendOptions};
use choreo::kafka::partition_for_key;
use choreo::{KafkaConfig, Shutdown};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use crate::cmd::{self, RecordReading, SERVICE, Topics};
use crate::data::Dataset;
use crate::latency;
use crate::{PARTITIONS, Setup};

/// `session.timeout.ms` of the processor's consumer (hard-coded in
/// framework/src/aggregate/processor/): how long the group waits for a member that died
/// without leaving (a static member never leaves).
pub const SESSION_TIMEOUT_S: u64 = 10;
/// How long one request may wait for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Steady load before the kill, and after the recovery.
const STEADY: Duration = Duration::from_secs(5);
/// Probes per second.
const PROBE_RATE: f64 = 20.0;

/// The hidden child: one processor instance until its stdin closes.
pub async fn child(brokers: &str, namespace: &str, ordinal: u32) -> anyhow::Result<()> {
    let config = KafkaConfig::new(brokers).namespace(namespace);
    let shutdown = Shutdown::new();
    let (task, status) = cmd::start_processor(&config, SERVICE, ordinal, &shutdown);
    {
        let shutdown = shutdown.clone();
        // Blocking read on a thread of its own: EOF (or an error) means the parent is done.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            shutdown.trigger();
        });
    }
    let mut reported: Option<Vec<i32>> = None;
    while !task.is_finished() {
        let ready = status.ready_partitions();
        if reported.as_ref() != Some(&ready) {
            let list: Vec<String> = ready.iter().map(i32::to_string).collect();
            let mut out = std::io::stdout().lock();
            writeln!(out, "ready {}", list.join(","))?;
            out.flush()?;
            reported = Some(ready);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.await
        .context("joining the processor")?
        .context("the command processor failed")
}

/// A child process and the partitions it last reported ready.
struct Instance {
    ordinal: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    ready: Arc<Mutex<Vec<i32>>>,
}

impl Instance {
    fn spawn(setup: &Setup, ordinal: u32) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut child = Command::new(exe)
            .args([
                "failover-child",
                "--brokers",
                &setup.brokers,
                "--namespace",
                &setup.namespace,
                "--ordinal",
                &ordinal.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a processor instance")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let ready = Arc::new(Mutex::new(Vec::new()));
        let thread_ready = Arc::clone(&ready);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some(list) = line.strip_prefix("ready ") else {
                    continue;
                };
                let partitions: Vec<i32> = list
                    .split(',')
                    .filter_map(|p| p.trim().parse().ok())
                    .collect();
                *thread_ready
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = partitions;
            }
        });
        Ok(Self {
            ordinal,
            stdin: child.stdin.take(),
            child,
            ready,
        })
    }

    fn ready(&self) -> Vec<i32> {
        self.ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Closes its stdin (it shuts down and leaves the group), waits up to 30 s, then kills.
    fn stop(&mut self) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Never leave a processor process behind, also after a failure.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One request of a steady load: when it was due, when it finished, whether it was answered.
#[derive(Debug, Clone, Copy)]
struct Sample {
    due: Instant,
    done: Instant,
    ok: bool,
}

/// Sends `make(i)` at `rate` until `stop`, every request waiting for its reply; reports each
/// finished request on `out`. Errors are samples, not failures: during the failover some
/// requests wait long.
async fn steady(
    bus: CommandBus,
    rate: f64,
    stop: Shutdown,
    make: impl Fn(u64) -> RecordReading,
    out: mpsc::UnboundedSender<Sample>,
) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut next = 0u64;
    loop {
        let due = start + period.mul_f64(next as f64);
        tokio::select! {
            biased;
            Some(sample) = inflight.next(), if !inflight.is_empty() => {
                let _ = out.send(sample);
            }
            _ = stop.wait() => break,
            _ = tokio::time::sleep_until(due.into()) => {
                let command = make(next);
                let bus = bus.clone();
                inflight.push(async move {
                    let reply = bus
                        .send_and_wait(&command, SendOptions::default(), REPLY_TIMEOUT)
                        .await;
                    let ok = matches!(reply, Ok(r) if matches!(r.outcome, Outcome::Accepted { .. }));
                    Sample { due, done: Instant::now(), ok }
                });
                next += 1;
            }
        }
    }
    while let Some(sample) = inflight.next().await {
        let _ = out.send(sample);
    }
}

pub async fn run(setup: &Setup, created: &mut Vec<String>, rate: f64) -> anyhow::Result<String> {
    let topics = Topics::new(&setup.namespace);
    topics
        .create(
            &setup.admin,
            &setup.namespace,
            &[SERVICE.to_owned()],
            created,
        )
        .await?;
    let dataset = Dataset::new()?;
    let probe = dataset.event(0).meter_id;
    let probe_partition = partition_for_key(probe.as_bytes(), PARTITIONS);
    println!(
        "  two processor instances (child processes), steady load of {rate:.0} send_and_wait/s, a probe on {probe} (partition {probe_partition}) every {} ms",
        (1000.0 / PROBE_RATE) as u64
    );

    let mut instances = vec![Instance::spawn(setup, 0)?, Instance::spawn(setup, 1)?];
    // Both own partitions, together all of them.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let sets: Vec<Vec<i32>> = instances.iter().map(Instance::ready).collect();
        let total: usize = sets.iter().map(Vec::len).sum();
        if total == PARTITIONS as usize && sets.iter().all(|s| !s.is_empty()) {
            println!(
                "  instances ready: 0 owns {:?}, 1 owns {:?}",
                sets[0], sets[1]
            );
            break;
        }
        for instance in &mut instances {
            if let Ok(Some(status)) = instance.child.try_wait() {
                anyhow::bail!("instance {} exited early: {status}", instance.ordinal);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the two instances did not share the partitions within 90 s: {sets:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let bus = CommandBus::new(&setup.config, cmd::REPLIES, 0)
        .await
        .context("creating the command bus")?;
    let stop = Shutdown::new();
    let (load_tx, mut load_rx) = mpsc::unbounded_channel();
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
    let load = {
        let (bus, stop, dataset) = (bus.clone(), stop.clone(), dataset.clone());
        // Keys 1.. of the dataset: every meter but the probe's.
        tokio::spawn(steady(
            bus,
            rate,
            stop,
            move |i| RecordReading::from(dataset.event(1 + i % 99_999)),
            load_tx,
        ))
    };
    let probes = {
        let (bus, stop, dataset) = (bus.clone(), stop.clone(), dataset.clone());
        tokio::spawn(steady(
            bus,
            PROBE_RATE,
            stop,
            move |i| {
                let mut command = RecordReading::from(dataset.event(0));
                command.seq = i;
                command
            },
            probe_tx,
        ))
    };

    let outcome = async {
        tokio::time::sleep(STEADY).await;
        let victim = instances
            .iter()
            .position(|i| i.ready().contains(&probe_partition))
            .context("no instance owns the probe's partition")?;
        let survivor = 1 - victim;
        let killed = Instant::now();
        instances[victim]
            .child
            .kill()
            .context("kill -9 of the probe's owner")?;
        let _ = instances[victim].child.wait();
        println!(
            "  killed instance {} (owning {:?}) with SIGKILL",
            instances[victim].ordinal,
            instances[victim].ready()
        );
        // The first probe sent after the kill that is answered.
        let limit = Duration::from_secs(SESSION_TIMEOUT_S * 6 + 60);
        let answered = loop {
            let sample = tokio::time::timeout(limit, probe_rx.recv())
                .await
                .context("no probe answered after the kill")?
                .context("the probes stopped")?;
            if sample.due >= killed && sample.ok {
                break sample.done;
            }
        };
        let failover = answered.saturating_duration_since(killed);
        let all = instances[survivor].ready();
        println!(
            "  a probe sent after the kill was answered {:.2} s after it; instance {} owns {all:?}",
            failover.as_secs_f64(),
            instances[survivor].ordinal
        );
        tokio::time::sleep(STEADY).await;
        anyhow::Ok(failover)
    }
    .await;
    stop.trigger();
    let _ = load.await;
    let _ = probes.await;
    let mut samples = Vec::new();
    while let Ok(sample) = load_rx.try_recv() {
        samples.push(sample);
    }
    for instance in &mut instances {
        instance.stop();
    }
    let failover = outcome?;
    let failed = samples.iter().filter(|s| !s.ok).count();
    let latencies: Vec<Duration> = samples
        .iter()
        .map(|s| s.done.saturating_duration_since(s.due))
        .collect();
    println!(
        "  steady load over the whole run: {}, {failed} not answered within {} s",
        latency::describe(&latencies),
        REPLY_TIMEOUT.as_secs()
    );
    Ok(format!(
        "failover: framework={:.1}s target<={}s",
        failover.as_secs_f64(),
        SESSION_TIMEOUT_S + 5
    ))
}
