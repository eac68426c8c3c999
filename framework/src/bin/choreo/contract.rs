//! `choreo contract check OLD NEW`: the versioning rule between two AsyncAPI documents of a
//! service (`choreo::asyncapi::check`). Needs no Kafka or Postgres.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

#[derive(Debug, Subcommand)]
pub enum ContractCommand {
    /// Compare two versions of a service's AsyncAPI document (as `<service> asyncapi` prints
    /// it): a breaking change to a message under the same v{N} name prints one line per
    /// problem (message, field, reason) and exits 1; additive changes are listed and pass.
    /// Exit 2: a document could not be read.
    Check {
        /// The published document.
        old: PathBuf,
        /// The new document.
        new: PathBuf,
    },
}

fn read(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn check(old: &Path, new: &Path) -> anyhow::Result<bool> {
    let (before, after) = (read(old)?, read(new)?);
    let report = choreo::asyncapi::check(&before, &after).map_err(anyhow::Error::msg)?;
    for note in &report.notes {
        println!("note: {note}");
    }
    for problem in &report.problems {
        println!("breaking: {problem}");
    }
    if report.passed() {
        println!(
            "contract check: {} keeps {} ({} note(s))",
            new.display(),
            old.display(),
            report.notes.len()
        );
    } else {
        println!(
            "contract check: {} breaking change(s) from {} to {}",
            report.problems.len(),
            old.display(),
            new.display()
        );
    }
    Ok(report.passed())
}

pub fn run(command: &ContractCommand) -> ExitCode {
    match command {
        ContractCommand::Check { old, new } => match check(old, new) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(2)
            }
        },
    }
}
