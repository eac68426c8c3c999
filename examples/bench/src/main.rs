//! Run with: scripts/bench publish
//!
//! (or `scripts/bench consume`, `rebuild`, `rebuild-naive`, `codec`, `commands`, `send-wait`,
//! `restore`, `failover`, `e2e-latency`; `--quick` for a smoke run.) The benchmarks in the
//! README's Benchmarks section: the framework and a hand-written rdkafka baseline doing the
//! same work, in the same run, in interleaved rounds. The last line printed is
//! `<name>: framework=<rate>/s baseline=<rate>/s ratio=<framework/baseline>`, where each rate
//! is the side's events over the side's time, summed over its rounds; for the latency
//! benchmarks (`send-wait`, `e2e-latency`) it is
//! `<name>: framework_p99=<ms>ms baseline_p99=<ms>ms ratio=<f/b>`, and `failover`, which has
//! no baseline, ends with `failover: framework=<seconds>s target<=<session timeout + 5>s`.
//!
//! Each run works on a fresh namespace (`bench-<random>`: topic
//! `bench-<random>.reading.events`, 6 partitions, and whatever else the benchmark needs) and
//! deletes its topics at the end.

mod cmd;
mod codec;
mod commands;
mod consume;
mod data;
mod e2e;
mod failover;
mod latency;
mod offsets;
mod publish;
mod rebuild;
mod restore;
mod sendwait;

use std::time::Duration;

use anyhow::Context;
use choreo::kafka::{TopicAdmin, TopicSpec};
use choreo::{Event, KafkaConfig};
use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use crate::data::ReadingRecorded;

/// Partitions of the benchmark topic.
const PARTITIONS: i32 = 6;
/// Events per side with and without `--quick`.
const FULL_EVENTS: u64 = 1_000_000;
const QUICK_EVENTS: u64 = 100_000;

#[derive(Parser)]
#[command(about = "choreo benchmarks: the framework against a hand-written rdkafka baseline")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Publisher (idempotent, acks=all) against a raw FutureProducer with the same config.
    Publish(Opts),
    /// Event handlers (consume + decode) against a raw BaseConsumer on the same topic.
    Consume(Opts),
    /// `choreo::projection::rebuild` against a hand-written batch rebuild (UNNEST upsert and
    /// an offset row, one transaction per batch).
    Rebuild(Opts),
    /// The same framework rebuild against one Postgres transaction per event.
    RebuildNaive(Opts),
    /// The codec alone, in process: Avro (framework side) against JSON (baseline side),
    /// encode + decode per event.
    Codec(Opts),
    /// The command processor (EOS transaction per batch) against a hand-written
    /// transactional loop, both draining the same backlog of commands.
    Commands(Opts),
    /// p99 of `CommandBus::send_and_wait` at a fixed open-loop rate against a raw client of
    /// the hand-written loop.
    SendWait(Opts),
    /// A command processor from assignment to ready over the events of its partitions,
    /// against reading and decoding the same partitions raw.
    Restore(Opts),
    /// kill -9 of the command processor instance owning a probe key, under load: seconds
    /// until the other instance answers again.
    Failover(Opts),
    /// Publish -> read model committed (a NOTIFY inside the batch transaction), p99 at a
    /// fixed open-loop rate, against raw producer -> raw consumer -> UNNEST insert.
    E2eLatency(Opts),
    /// One processor instance of `failover` (started by it).
    #[command(hide = true)]
    FailoverChild(ChildOpts),
}

#[derive(Args, Debug, Clone)]
struct ChildOpts {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    namespace: String,
    #[arg(long)]
    ordinal: u32,
}

/// What `main` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Publish,
    Consume,
    Rebuild,
    RebuildNaive,
    Codec,
    Commands,
    SendWait,
    Restore,
    Failover,
    E2eLatency,
}

#[derive(Args, Debug, Clone)]
pub struct Opts {
    /// A smoke run: 100k events instead of 1M.
    #[arg(long)]
    quick: bool,
    /// Events per side (publish: split over the rounds; consume: the topic size, read in
    /// full by every round).
    #[arg(long)]
    events: Option<u64>,
    /// Rounds per side; the sides alternate.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Sends in flight at once (publish and the consume fill), on both sides.
    #[arg(long, default_value_t = 10_000)]
    window: usize,
    /// rebuild-naive: events the one-transaction-per-event baseline is timed over (the first
    /// ones of the topic).
    #[arg(long, default_value_t = 20_000)]
    sample: u64,
    /// send-wait and e2e-latency: requests per second of the open-loop load (default 500
    /// and 1000).
    #[arg(long)]
    rate: Option<f64>,
    /// send-wait and e2e-latency: seconds of load per round and side (default 30, 10 with
    /// --quick).
    #[arg(long)]
    seconds: Option<u64>,
}

/// What a benchmark ends with: timed rounds of both sides (summarised as rates), or its
/// own last line (latency and failover benchmarks).
enum Summary {
    Rates(Vec<Round>),
    Line(String),
}

/// What a benchmark works with.
#[derive(Debug)]
pub struct Setup {
    pub config: KafkaConfig,
    pub admin: TopicAdmin,
    pub brokers: String,
    pub namespace: String,
    /// The events topic, with the namespace.
    pub topic: String,
    pub events: u64,
    pub rounds: u32,
    pub window: usize,
}

/// Which side a round measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Framework,
    Baseline,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Framework => "framework",
            Side::Baseline => "baseline",
        }
    }

    /// The order of the sides in round `round` (0-based): F B, B F, F B, ... so neither side
    /// always runs on a warmer broker.
    pub fn order(round: u32) -> [Side; 2] {
        if round.is_multiple_of(2) {
            [Side::Framework, Side::Baseline]
        } else {
            [Side::Baseline, Side::Framework]
        }
    }
}

/// CPU time used by this whole process (all threads, user + system) since `start`: a
/// second, less noise-prone view of a round on a shared machine, where wall time also counts
/// what other processes take. Read from `/proc/self/stat` (10 ms resolution); `None` where that
/// is not available.
#[derive(Debug, Clone, Copy)]
pub struct CpuClock(Option<Duration>);

impl CpuClock {
    pub fn start() -> Self {
        Self(process_cpu())
    }

    pub fn used(&self) -> Option<Duration> {
        Some(process_cpu()?.saturating_sub(self.0?))
    }
}

fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15, in clock ticks (USER_HZ, 100 on Linux).
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// One timed round of one side.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub side: Side,
    pub events: u64,
    pub elapsed: Duration,
    /// CPU time of the process over the round (which may be a little longer than `elapsed`:
    /// the consume rounds include joining and leaving the group).
    pub cpu: Option<Duration>,
}

impl Round {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Prints the round (to stdout, before the summary).
    pub fn report(&self, round: u32) {
        let cpu = self.cpu.map_or_else(String::new, |cpu| {
            format!(
                ", cpu {:.2} us/event",
                cpu.as_secs_f64() * 1e6 / self.events as f64
            )
        });
        println!(
            "  round {}: {:<9} {:>9.0}/s  ({} events in {:.3} s{cpu})",
            round + 1,
            self.side.label(),
            self.rate(),
            self.events,
            self.elapsed.as_secs_f64()
        );
    }
}

/// Process CPU per event, over the rounds of one side.
fn cpu_per_event(rounds: &[Round], side: Side) -> Option<f64> {
    let mut events = 0u64;
    let mut cpu = Duration::ZERO;
    for round in rounds.iter().filter(|r| r.side == side) {
        events += round.events;
        cpu += round.cpu?;
    }
    Some(cpu.as_secs_f64() * 1e6 / events.max(1) as f64)
}

/// Events over time, summed over the rounds of one side.
fn total_rate(rounds: &[Round], side: Side) -> f64 {
    let (events, secs) = rounds
        .iter()
        .filter(|r| r.side == side)
        .fold((0u64, 0f64), |(e, s), r| {
            (e + r.events, s + r.elapsed.as_secs_f64())
        });
    events as f64 / secs.max(1e-9)
}

fn median_rate(rounds: &[Round], side: Side) -> f64 {
    let mut rates: Vec<f64> = rounds
        .iter()
        .filter(|r| r.side == side)
        .map(Round::rate)
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr: stdout carries the figures, the summary last.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    let (name, opts, kind) = match cli.bench {
        Bench::Publish(opts) => ("publish", opts, Kind::Publish),
        Bench::Consume(opts) => ("consume", opts, Kind::Consume),
        Bench::Rebuild(opts) => ("rebuild", opts, Kind::Rebuild),
        Bench::RebuildNaive(opts) => ("rebuild-naive", opts, Kind::RebuildNaive),
        Bench::Codec(opts) => ("codec", opts, Kind::Codec),
        Bench::Commands(opts) => ("commands", opts, Kind::Commands),
        Bench::SendWait(opts) => ("send-wait", opts, Kind::SendWait),
        Bench::Restore(opts) => ("restore", opts, Kind::Restore),
        Bench::Failover(opts) => ("failover", opts, Kind::Failover),
        Bench::E2eLatency(opts) => ("e2e-latency", opts, Kind::E2eLatency),
        Bench::FailoverChild(child) => {
            return failover::child(&child.brokers, &child.namespace, child.ordinal).await;
        }
    };
    anyhow::ensure!(opts.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!(opts.window >= 1, "--window must be at least 1");
    let events = opts.events.unwrap_or(if opts.quick {
        QUICK_EVENTS
    } else {
        FULL_EVENTS
    });
    anyhow::ensure!(
        events >= u64::from(opts.rounds),
        "--events must be at least --rounds"
    );

    if kind == Kind::Codec {
        // No Kafka: the codec alone.
        let rounds = codec::run(events, opts.rounds)?;
        summarize(name, &rounds);
        return Ok(());
    }

    // Only the brokers are taken from the environment, so both sides run with the same
    // client settings (CHOREO_KAFKA_PROPERTIES would reach the framework side only).
    let brokers =
        std::env::var("CHOREO_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let namespace = format!("bench-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let config = KafkaConfig::new(brokers.as_str()).namespace(namespace.as_str());
    let topic = config.topic_name(&ReadingRecorded::topic());
    let admin = TopicAdmin::new(&config).context("connecting to Kafka")?;
    let entity = ReadingRecorded::name().entity().to_owned();
    admin
        .ensure(&[TopicSpec::events(
            &format!("{namespace}.{entity}"),
            PARTITIONS,
            1,
        )?])
        .await
        .with_context(|| format!("creating {topic}"))?;
    // The latency and failover benchmarks size their load by rate and time, not --events.
    let size = match kind {
        Kind::SendWait | Kind::Failover | Kind::E2eLatency => "payloads".to_owned(),
        Kind::Commands => format!("{events} commands and events"),
        _ => format!("{events} events"),
    };
    println!(
        "{name}: {size} of ~{} bytes over {} keys, topic {topic} ({PARTITIONS} partitions), {} rounds per side",
        data::PAYLOAD_BYTES,
        data::AGGREGATES,
        opts.rounds
    );
    let setup = Setup {
        config,
        admin,
        brokers,
        namespace,
        topic: topic.clone(),
        events,
        rounds: opts.rounds,
        window: opts.window,
    };

    let seconds = opts.seconds.unwrap_or(if opts.quick { 10 } else { 30 });
    anyhow::ensure!(seconds >= 1, "--seconds must be at least 1");
    let mut created = vec![topic];
    let run = async {
        let rounds = match kind {
            Kind::Publish => publish::run(&setup).await,
            Kind::Consume => consume::run(&setup, &mut created).await,
            Kind::Rebuild => rebuild::run(&setup, false, opts.sample).await,
            Kind::RebuildNaive => rebuild::run(&setup, true, opts.sample).await,
            Kind::Codec => return Err(anyhow::anyhow!("the codec benchmark needs no topic")),
            Kind::Commands => commands::run(&setup, &mut created).await,
            Kind::Restore => restore::run(&setup, &mut created).await,
            Kind::SendWait => {
                let rate = opts.rate.unwrap_or(500.0);
                anyhow::ensure!(rate > 0.0, "--rate must be positive");
                return sendwait::run(&setup, &mut created, rate, seconds)
                    .await
                    .map(Summary::Line);
            }
            Kind::E2eLatency => {
                let rate = opts.rate.unwrap_or(1000.0);
                anyhow::ensure!(rate > 0.0, "--rate must be positive");
                return e2e::run(&setup, &mut created, rate, seconds)
                    .await
                    .map(Summary::Line);
            }
            Kind::Failover => {
                let rate = opts.rate.unwrap_or(200.0);
                anyhow::ensure!(rate > 0.0, "--rate must be positive");
                return failover::run(&setup, &mut created, rate)
                    .await
                    .map(Summary::Line);
            }
        };
        rounds.map(Summary::Rates)
    };
    let outcome = tokio::select! {
        outcome = run => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Always drop what the run created, also after a failure or ctrl-c, so the disk does not
    // fill.
    let names: Vec<&str> = created.iter().map(String::as_str).collect();
    if let Err(e) = setup.admin.delete(&names).await {
        eprintln!("warning: could not delete the benchmark topics {names:?}: {e}");
    }
    let rounds = match outcome? {
        Summary::Rates(rounds) => rounds,
        Summary::Line(line) => {
            println!("{line}");
            return Ok(());
        }
    };
    summarize(name, &rounds);
    Ok(())
}

/// The medians, CPU per event and the summary line (last).
fn summarize(name: &str, rounds: &[Round]) {
    let framework = total_rate(rounds, Side::Framework);
    let baseline = total_rate(rounds, Side::Baseline);
    println!(
        "  medians: framework {:.0}/s, baseline {:.0}/s",
        median_rate(rounds, Side::Framework),
        median_rate(rounds, Side::Baseline)
    );
    if let (Some(f), Some(b)) = (
        cpu_per_event(rounds, Side::Framework),
        cpu_per_event(rounds, Side::Baseline),
    ) {
        println!(
            "  process cpu per event: framework {f:.2} us, baseline {b:.2} us (baseline/framework {:.2})",
            b / f.max(1e-9)
        );
    }
    println!(
        "{name}: framework={framework:.0}/s baseline={baseline:.0}/s ratio={:.2}",
        framework / baseline.max(1e-9)
    );
}
