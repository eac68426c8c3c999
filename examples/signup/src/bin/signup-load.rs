//! The load generator: many signups quickly, straight to `user.commands` through a
//! `CommandBus` (as another service would), each waiting for its reply. For rebuild demos
//! and benchmarks.
//!
//! ```text
//! signup-load --count 10000 --concurrency 256
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use choreo::KafkaConfig;
use choreo::aggregate::{CommandBus, Outcome, SendOptions};
use choreo::kafka::TopicSpec;
use clap::Parser;
use tokio::sync::Semaphore;
use uuid::Uuid;

use signup::contract::{self, SignUp, groups};

#[derive(Parser)]
#[command(about = "Creates many signups quickly (through user.commands, waiting for each reply)")]
struct Cli {
    /// Signups to send.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Signups in flight at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Email domains to spread the addresses over.
    #[arg(long, default_value_t = 7)]
    domains: u64,
    /// Tag in the addresses (default: random), so runs do not collide.
    #[arg(long)]
    tag: Option<String>,
}

const DOMAINS: [&str; 7] = [
    "example.com",
    "example.org",
    "example.net",
    "mail.test",
    "corp.test",
    "uni.test",
    "home.test",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    signup::init_tracing();
    let cli = Cli::parse();
    let kafka = KafkaConfig::from_env()?;
    let rf = contract::replication();
    contract::ensure_topics(&kafka, vec![TopicSpec::replies(groups::LOAD, 1, rf)?]).await?;
    let bus = CommandBus::new(&kafka, groups::LOAD, 0).await?;
    let tag = cli
        .tag
        .unwrap_or_else(|| Uuid::new_v4().simple().to_string()[..8].to_owned());
    let limit = Arc::new(Semaphore::new(cli.concurrency.max(1)));
    let (accepted, rejected, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(cli.count as usize);
    for i in 0..cli.count {
        let permit = Arc::clone(&limit).acquire_owned().await?;
        let (bus, accepted, rejected, failed) = (
            bus.clone(),
            Arc::clone(&accepted),
            Arc::clone(&rejected),
            Arc::clone(&failed),
        );
        let domain = DOMAINS[(i % cli.domains.clamp(1, DOMAINS.len() as u64)) as usize];
        let command = SignUp {
            user_id: Uuid::now_v7(),
            email: format!("load-{tag}-{i}@{domain}"),
            name: format!("Load {i}"),
        };
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            match bus
                .send_and_wait(&command, SendOptions::default(), signup::WAIT)
                .await
            {
                Ok(reply) => match reply.outcome {
                    Outcome::Accepted { .. } => accepted.fetch_add(1, Ordering::Relaxed),
                    Outcome::Rejected { .. } => rejected.fetch_add(1, Ordering::Relaxed),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "signup failed");
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }));
    }
    for task in tasks {
        task.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (a, r, f) = (
        accepted.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    println!(
        "signup-load: {a} accepted, {r} rejected, {f} failed in {seconds:.1}s ({:.0} signups/s)",
        (a + r) as f64 / seconds.max(1e-9)
    );
    if f > 0 {
        anyhow::bail!("{f} signups got no answer");
    }
    Ok(())
}
