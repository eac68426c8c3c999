//! The email service: a reactor on `v1.user.signedup` that sends the welcome email to the
//! mail sink (`SIGNUP_MAIL_DIR`, one `.eml` file per email) and announces `v1.email.sent`.
//!
//! ```text
//! email-service setup                  # its topics (idempotent)
//! email-service run --ordinal 0        # instances share user.events' partitions
//! email-service sent                   # list the mail sink
//! ```

use std::time::Duration;

use choreo::Shutdown;
use choreo::args::{KafkaArgs, PostgresArgs};
use choreo::reactor::{Inbox, Reactor, ReactorRunner};
use clap::{Parser, Subcommand};

use signup::contract;
use signup::email::{MailSink, WelcomeEmail};

const SERVICE: &str = "email-service";

#[derive(Parser)]
#[command(
    about = "The email service of the signup example: welcome emails, exactly once as far as anyone can tell"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    postgres: PostgresArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create (or check) the topics this service owns.
    Setup,
    /// Print this service's AsyncAPI 3.0 document (JSON): the topics it writes and reads, its
    /// messages and their payload schemas. Needs no Kafka.
    Asyncapi,
    /// Run an instance until SIGTERM / ctrl-c.
    Run {
        /// This instance's stable number (its transactional id).
        #[arg(long, env = "CHOREO_ORDINAL", default_value_t = 0)]
        ordinal: u32,
    },
    /// Print the emails in the mail sink.
    Sent,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    signup::init_tracing();
    let cli = Cli::parse();
    if matches!(cli.command, Cmd::Asyncapi) {
        return signup::asyncapi::print(SERVICE);
    }
    let kafka = cli.kafka.config()?;
    let postgres = cli.postgres.config();
    match cli.command {
        Cmd::Asyncapi => signup::asyncapi::print(SERVICE),
        Cmd::Setup => {
            let rf = contract::replication();
            contract::ensure_topics(&kafka, contract::email_service_topics(rf)?).await
        }
        Cmd::Run { ordinal } => {
            let shutdown = Shutdown::on_signals();
            let pool = choreo::postgres::connect_and_migrate(&postgres).await?;
            let sink = MailSink::from_env()?;
            println!(
                "email-service[{ordinal}] sending to {} (reactor {})",
                sink.dir().display(),
                WelcomeEmail::NAME
            );
            let reactor = WelcomeEmail {
                sink,
                inbox: Inbox::new(pool, WelcomeEmail::NAME),
            };
            let runner = ReactorRunner::new(reactor, SERVICE, ordinal);
            let status = runner.status();
            let watcher = tokio::spawn({
                let shutdown = shutdown.clone();
                async move {
                    let mut last = Vec::new();
                    while !shutdown.is_triggered() {
                        // The partitions of user.events (not of the group's redrive topic).
                        let now: Vec<i32> = status
                            .assigned()
                            .into_iter()
                            .filter(|(topic, _)| !topic.ends_with(".redrive"))
                            .map(|(_, p)| p)
                            .collect();
                        if now != last {
                            println!(
                                "email-service[{ordinal}] owns partitions {now:?} of user.events"
                            );
                            last = now;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            });
            let result = runner.run(&kafka, shutdown).await;
            watcher.abort();
            result?;
            Ok(())
        }
        Cmd::Sent => {
            let sink = MailSink::from_env()?;
            let mut files: Vec<_> = std::fs::read_dir(sink.dir())?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect();
            files.sort();
            for path in &files {
                let text = std::fs::read_to_string(path)?;
                let to = header(&text, "To");
                let subject = header(&text, "Subject");
                let id = header(&text, "Message-Id");
                println!("{id}  to {to:<32} {subject}");
            }
            println!("{} email(s) in {}", files.len(), sink.dir().display());
            Ok(())
        }
    }
}

fn header<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .unwrap_or("")
}
