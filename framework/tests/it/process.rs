//! Processes the tests start: `choreo-drill` with the test's namespace and database, child
//! processes reaped on drop, their stderr watched for markers, signals and exits, and the
//! broker's view of a consumer group's members. Used by the drills and the reactor tests.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use choreo::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The command that starts `choreo-drill` with the test's Kafka namespace and database.
pub(crate) fn drill_command(
    config: &KafkaConfig,
    database_url: &str,
    args: &[&str],
    failpoint: Option<&str>,
) -> Command {
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
    command
}

/// Starts `choreo-drill` with the test's Kafka namespace and database.
pub(crate) fn drill(
    config: &KafkaConfig,
    database_url: &str,
    args: &[&str],
    failpoint: Option<&str>,
) -> Child {
    drill_command(config, database_url, args, failpoint)
        .spawn()
        .expect("start choreo-drill")
}

/// A child process killed and reaped when dropped, so a failing test leaves no drill running
/// (one that still holds the test's output pipe open would keep the test run from ending).
pub(crate) struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `choreo-drill` like [`drill`], passing its stderr on line by line and counting the
/// lines that contain `marker` (what a stall failpoint prints when it starts stalling): a
/// test waits for the count instead of guessing how long the process takes to get there.
pub(crate) fn drill_watched(
    config: &KafkaConfig,
    database_url: &str,
    args: &[&str],
    failpoint: Option<&str>,
    marker: &'static str,
) -> (Child, Arc<AtomicUsize>) {
    let command = drill_command(config, database_url, args, failpoint);
    let (child, mut seen) = spawn_watched(command, &[marker]);
    (child, seen.remove(0))
}

/// Spawns `command` with its stderr passed on line by line, counting for each of `markers`
/// the lines that contain it.
pub(crate) fn spawn_watched(
    mut command: Command,
    markers: &[&'static str],
) -> (Child, Vec<Arc<AtomicUsize>>) {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .expect("start choreo-drill");
    let stderr = child.stderr.take().expect("stderr");
    let seen: Vec<Arc<AtomicUsize>> = markers.iter().map(|_| Arc::default()).collect();
    std::thread::spawn({
        let seen = seen.clone();
        let markers = markers.to_vec();
        move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                for (marker, count) in markers.iter().zip(&seen) {
                    if line.contains(marker) {
                        count.fetch_add(1, Ordering::AcqRel);
                    }
                }
                eprintln!("{line}");
            }
        }
    });
    (child, seen)
}

/// The state of consumer group `group` and the ids of its members, as the broker describes
/// it.
pub(crate) fn group_members(admin: &BaseConsumer, group: &str) -> (String, Vec<String>) {
    admin
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .ok()
        .and_then(|list| {
            list.groups().first().map(|g| {
                (
                    g.state().to_owned(),
                    g.members().iter().map(|m| m.id().to_owned()).collect(),
                )
            })
        })
        .unwrap_or_default()
}

/// Waits for the process to end; panics after `timeout`.
pub(crate) fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
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

pub(crate) fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} failed");
}

/// Stops a drill process gracefully (SIGTERM) and checks it exited cleanly.
pub(crate) fn stop(mut child: Child) {
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "graceful stop: {status}");
}

pub(crate) fn stdout_of(child: Child) -> String {
    let output = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
