//! What every service built on choreo gets: admin commands for the projections it holds.
//! Only the service's own binary has the projection code, so the rebuild runs there:
//!
//! ```text
//! my-service projections list
//! my-service projections rebuild signups [--fresh]
//! my-service projections reset signups --yes      # development only
//! ```
//!
//! Embed [`ProjectionCommand`] in the service's clap CLI and hand it to
//! [`ProjectionAdmin::run`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sqlx::PgPool;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::projection::{self, Projection, RebuildOptions, RebuildReport};

/// The projection admin commands (a clap subcommand).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ProjectionCommand {
    /// List the projections this service holds, with their schemas.
    List,
    /// Rebuild a projection's view from the beginning of the log, blue/green: the live view
    /// keeps serving until the rebuilt copy is swapped in.
    Rebuild {
        /// The projection's name.
        name: String,
        /// Discard a shadow left by an interrupted rebuild instead of resuming it.
        #[arg(long)]
        fresh: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Consumers (each with a Postgres connection) sharing the partitions; batches of
        /// different lanes apply concurrently.
        #[arg(long, default_value_t = RebuildOptions::default().lanes)]
        lanes: usize,
    },
    /// Drop and recreate a projection's view, empty (development only: stop the service's
    /// runners first).
    Reset {
        /// The projection's name.
        name: String,
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct Entry {
    name: &'static str,
    version: u32,
    rebuild: Box<
        dyn Fn(KafkaConfig, PgPool, RebuildOptions) -> BoxFuture<Result<RebuildReport>>
            + Send
            + Sync,
    >,
    reset: Box<dyn Fn(KafkaConfig, PgPool) -> BoxFuture<Result<()>> + Send + Sync>,
}

/// The projections a service holds, for its admin commands.
#[derive(Default)]
pub struct ProjectionAdmin {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for ProjectionAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|e| format!("{}.v{}", e.name, e.version)),
            )
            .finish()
    }
}

impl ProjectionAdmin {
    /// No projections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a projection.
    pub fn register<P: Projection>(mut self, projection: Arc<P>) -> Self {
        let for_rebuild = Arc::clone(&projection);
        self.entries.push(Entry {
            name: P::NAME,
            version: P::VERSION,
            rebuild: Box::new(move |kafka, pool, options| {
                let projection = Arc::clone(&for_rebuild);
                Box::pin(
                    async move { projection::rebuild(projection, &kafka, &pool, options).await },
                )
            }),
            reset: Box::new(move |kafka, pool| {
                let projection = Arc::clone(&projection);
                Box::pin(async move { projection::reset(&*projection, &pool, &kafka).await })
            }),
        });
        self
    }

    /// Runs an admin command; prints what it did to stdout.
    pub async fn run(
        &self,
        command: ProjectionCommand,
        kafka: &KafkaConfig,
        pool: &PgPool,
    ) -> Result<()> {
        match command {
            ProjectionCommand::List => {
                for entry in &self.entries {
                    println!(
                        "{}  version {}  schema {}_v{}",
                        entry.name, entry.version, entry.name, entry.version
                    );
                }
                Ok(())
            }
            ProjectionCommand::Rebuild {
                name,
                fresh,
                quiet,
                lanes,
            } => {
                let entry = self.find(&name)?;
                let options = RebuildOptions {
                    fresh,
                    progress: !quiet,
                    lanes,
                    ..RebuildOptions::default()
                };
                let report = (entry.rebuild)(kafka.clone(), pool.clone(), options).await?;
                println!("{report}");
                Ok(())
            }
            ProjectionCommand::Reset { name, yes } => {
                let entry = self.find(&name)?;
                if !yes {
                    return Err(Error::Config(format!(
                        "reset drops the view of {name} and its checkpoints; add --yes to confirm"
                    )));
                }
                (entry.reset)(kafka.clone(), pool.clone()).await?;
                println!(
                    "reset {name}: the view is empty and will be rebuilt from the beginning by the runners"
                );
                Ok(())
            }
        }
    }

    fn find(&self, name: &str) -> Result<&Entry> {
        self.entries.iter().find(|e| e.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.entries.iter().map(|e| e.name).collect();
            Error::Config(format!(
                "no projection named {name:?} in this service (it has: {})",
                known.join(", ")
            ))
        })
    }
}
