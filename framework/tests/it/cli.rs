//! The generic `choreo` CLI, run as a process against the real Kafka and Postgres.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use choreo::kafka::DeadLetterWriter;
use choreo::{KafkaConfig, PostgresConfig, Publisher, TopicAdmin};
use chrono::Utc;
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common::{self, signup};

/// What a run of the binary left behind.
#[derive(Debug)]
pub(crate) struct Run {
    code: Option<i32>,
    pub(crate) stdout: String,
    stderr: String,
}

impl Run {
    pub(crate) fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "choreo failed: {self:#?}");
        self
    }

    fn assert_failed(&self) -> &Self {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "choreo should have failed: {self:#?}"
        );
        self
    }

    /// The cells of the table row whose first cell is `first`.
    fn row(&self, first: &str) -> Vec<String> {
        self.stdout
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|cells| cells.first().map(String::as_str) == Some(first))
            .unwrap_or_else(|| panic!("no row starting with {first:?} in:\n{}", self.stdout))
    }

    /// The value of a `  label  value` line.
    fn field(&self, label: &str) -> String {
        self.stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix("  ")
                    .and_then(|l| l.strip_prefix(label))
                    .filter(|rest| rest.starts_with(' '))
            })
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no field {label:?} in:\n{}", self.stdout))
    }
}

/// Runs the binary with `args` against the test broker; fails the test after 90 s.
pub(crate) fn choreo(config: &KafkaConfig, args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_choreo"))
        .args(args)
        .env("CHOREO_KAFKA_BROKERS", config.brokers())
        // Namespaces are passed as flags where a test needs one.
        .env_remove("CHOREO_TOPIC_NAMESPACE")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the choreo binary");
    // Drained on threads so a chatty child never blocks on a full pipe.
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for choreo") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("choreo {args:?} did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// The namespace `common::kafka` chose for this test.
fn namespace_of(config: &KafkaConfig) -> String {
    let probe = config.topic_name("x");
    probe.strip_suffix(".x").expect("a namespace").to_owned()
}

fn raw_producer(config: &KafkaConfig) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", config.brokers())
        .create()
        .expect("raw producer")
}

async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: OwnedHeaders,
) -> (i32, i64) {
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map(|delivery| (delivery.partition, delivery.offset))
        .map_err(|(e, _)| e)
        .expect("raw send")
}

/// `headers` without the one named `skip`.
fn without(headers: &OwnedHeaders, skip: &str) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    for h in headers.iter().filter(|h| h.key != skip) {
        out = out.insert(Header {
            key: h.key,
            value: h.value,
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_describe_and_list_round_trip() {
    let config = common::kafka("cli-topics");
    let ns = namespace_of(&config);
    let topic = config.topic_name("order.events");
    let create = ["--namespace", &ns, "topics", "create", "order"];
    let events = [&create[..], &["--kind", "events", "--partitions", "3"]].concat();

    let run = choreo(&config, &events);
    run.assert_ok();
    assert!(
        run.stdout
            .contains(&format!("topic {topic} created 3 partition(s)"))
            && run.stdout.contains("retention.ms=-1"),
        "{run:#?}"
    );
    let again = choreo(&config, &events);
    assert!(
        again
            .assert_ok()
            .stdout
            .contains("already exists and matches"),
        "{again:#?}"
    );
    // choreo never repartitions: a different count is an error naming both.
    let other_count = [&create[..], &["--kind", "events", "--partitions", "5"]].concat();
    let run = choreo(&config, &other_count);
    assert!(
        run.assert_failed().stderr.contains("it has 3 partitions"),
        "{run:#?}"
    );

    let described = choreo(&config, &["topics", "describe", &topic]);
    described.assert_ok();
    assert_eq!(described.field("partitions"), "3");
    assert_eq!(described.field("replication"), "1");
    assert_eq!(described.row("retention.ms"), ["retention.ms", "-1"]);
    assert_eq!(
        described.row("cleanup.policy"),
        ["cleanup.policy", "delete"]
    );
    assert_eq!(described.row("2")[..2], ["2", "1"], "partition 2, leader 1");

    let listed = choreo(&config, &["topics", "list"]);
    assert_eq!(listed.assert_ok().row(&topic), [topic.as_str(), "3", "1"]);

    // Group names already carry their namespace: a dlq is named after the group as given.
    let group = common::unique("cli-topics-group");
    let run = choreo(
        &config,
        &[
            "--namespace",
            &ns,
            "topics",
            "create",
            &group,
            "--kind",
            "dlq",
        ],
    );
    assert!(
        run.assert_ok()
            .stdout
            .contains(&format!("topic {group}.dlq created 1 partition(s)")),
        "{run:#?}"
    );

    let run = choreo(&config, &["topics", "create", &format!("{ns}.misc")]);
    assert!(
        run.assert_failed()
            .stderr
            .contains("--partitions is required"),
        "{run:#?}"
    );
    let run = choreo(&config, &["topics", "describe", &format!("{ns}.nothing")]);
    assert!(
        run.assert_failed().stderr.contains("does not exist"),
        "{run:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_events_with_their_envelope_and_records_that_do_not_decode() {
    let config = common::kafka("cli-tail");
    let topic = common::create_events_topic(&config, "user", 2).await;
    let publisher = Publisher::new(&config, "/cli-test").expect("publisher");
    publisher.publish(&signup(1)).await.expect("event 1");
    publisher.publish(&signup(2)).await.expect("event 2");
    let broken = publisher.prepare(&signup(3), None).expect("prepare");
    send_raw(
        &raw_producer(&config),
        &topic,
        &broken.key,
        &broken.payload,
        without(&broken.meta().to_headers(), "ce_id"),
    )
    .await;

    let run = choreo(&config, &["tail", &topic, "--from-beginning"]);
    run.assert_ok();
    for expected in [
        "v1.user.signedup",
        "user1@example.com",
        "user2@example.com",
        "/cli-test",
        "\"user_id\": \"u-1\"",
        "missing header ce_id",
        "user3@example.com",
    ] {
        assert!(run.stdout.contains(expected), "{expected}: {run:#?}");
    }
    assert_eq!(run.stdout.matches("── ").count(), 3, "{run:#?}");

    let run = choreo(
        &config,
        &[
            "tail",
            &topic,
            "--from-beginning",
            "--subject",
            "user2@example.com",
        ],
    );
    run.assert_ok();
    assert_eq!(run.field("subject"), "user2@example.com");
    assert!(!run.stdout.contains("user1@example.com"), "{run:#?}");

    let run = choreo(
        &config,
        &[
            "tail",
            &topic,
            "--from-beginning",
            "--type",
            "v2.user.signedup",
        ],
    );
    assert!(
        run.assert_ok().stderr.contains("no matching records"),
        "{run:#?}"
    );
    let run = choreo(
        &config,
        &["tail", &topic, "--from-beginning", "--limit", "1"],
    );
    assert_eq!(run.assert_ok().stdout.matches("── ").count(), 1, "{run:#?}");
    // From the end without --follow: nothing new, and it stops.
    let run = choreo(&config, &["tail", &topic]);
    assert_eq!(run.assert_ok().stdout, "", "{run:#?}");

    let run = choreo(&config, &["tail", &format!("{topic}-missing")]);
    assert!(
        run.assert_failed().stderr.contains("does not exist"),
        "{run:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_show_and_redrive_to_the_group_only() {
    let config = common::kafka("cli-dlq");
    let topic = common::create_events_topic(&config, "user", 1).await;
    let base = common::unique("cli-dlq-group");
    common::create_dlq(&config, &base).await;
    // The CLI names a group in full, namespace included, as the consumers' group id.
    let group = config.topic_name(&base);
    let publisher = Publisher::new(&config, "/cli-test").expect("publisher");
    let bad = publisher.prepare(&signup(7), None).expect("prepare");
    let payload = b"{\"user_id\": 12";
    let (_, origin_offset) = send_raw(
        &raw_producer(&config),
        &topic,
        &bad.key,
        payload,
        bad.meta().to_headers(),
    )
    .await;
    let records = common::read_all(&config, &topic, 1, Duration::from_secs(30), true);
    let raw = records.first().expect("the malformed record");
    let record =
        &choreo::kafka::Record::copy(raw, std::sync::Arc::from(rdkafka::Message::topic(raw)));
    let (_, dlq_offset) = DeadLetterWriter::new(&config, &group)
        .expect("writer")
        .write(record, "payload is not JSON: EOF while parsing", Utc::now())
        .await
        .expect("dead letter");
    let dlq_offset = dlq_offset.to_string();

    let run = choreo(&config, &["dlq", "list", &group]);
    let row = run.assert_ok().row(&dlq_offset);
    let origin = format!("{topic}[0]@{origin_offset}");
    for cell in [
        origin.as_str(),
        "v1.user.signedup",
        "user7@example.com",
        "payload",
    ] {
        assert!(row.iter().any(|c| c == cell), "{cell}: {row:?}");
    }

    let run = choreo(&config, &["dlq", "show", &group, &dlq_offset]);
    run.assert_ok();
    assert_eq!(run.field("origin"), origin);
    assert_eq!(run.field("error"), "payload is not JSON: EOF while parsing");
    assert_eq!(run.field("group"), group);
    assert!(
        run.stdout.contains(&format!("ce_id={}", bad.meta().id))
            && run.stdout.contains(r#"{\"user_id\": 12"#),
        "{run:#?}"
    );
    let run = choreo(&config, &["dlq", "show", &group, "99"]);
    assert!(
        run.assert_failed()
            .stderr
            .contains("has no record at offset 99"),
        "{run:#?}"
    );

    // Which letters must be said.
    choreo(&config, &["dlq", "redrive", &group]).assert_failed();
    let run = choreo(
        &config,
        &["dlq", "redrive", &group, "--offset", &dlq_offset],
    );
    let redrive = format!("{group}.redrive");
    assert!(
        run.assert_ok()
            .stdout
            .contains(&format!("to {redrive}[0]@0")),
        "{run:#?}"
    );

    let copies = common::read_all(&config, &redrive, 1, Duration::from_secs(30), true);
    let copy = copies.first().expect("the redriven record");
    assert_eq!(copy.payload(), Some(&payload[..]));
    assert_eq!(copy.key(), Some(bad.key.as_bytes()));
    let headers = common::header_map(copy);
    assert_eq!(
        headers.get("choreo_redrive_of"),
        Some(&format!("{topic}/0/{origin_offset}"))
    );
    assert_eq!(headers.get("ce_id"), Some(&bad.meta().id.to_string()));
    assert_eq!(
        headers.get("ce_type").map(String::as_str),
        Some("v1.user.signedup")
    );
    assert!(
        !headers.keys().any(|k| k.starts_with("choreo_dlq_")),
        "{headers:?}"
    );
    assert_eq!(
        headers.get("choreo_redriven_from"),
        Some(&format!("{group}.dlq/0/{dlq_offset}"))
    );
    // Nothing went back into the log of record (read to its end: the redrive has returned).
    let origin_records = common::read_all(&config, &topic, 1, Duration::from_secs(30), true);
    assert_eq!(origin_records.len(), 1);

    // A second redrive of the same letter would have it handled twice: refused, named.
    let run = choreo(
        &config,
        &["dlq", "redrive", &group, "--offset", &dlq_offset],
    );
    assert!(
        run.assert_failed().stderr.contains(&format!(
            "already redriven: dead letter {dlq_offset} (to {redrive}[0]@0)"
        )),
        "{run:#?}"
    );
    let run = choreo(&config, &["dlq", "redrive", &group, "--all"]);
    assert!(
        run.assert_ok().stdout.contains("nothing left to redrive"),
        "{run:#?}"
    );
    assert_eq!(
        common::read_all(&config, &redrive, 1, Duration::from_secs(30), true).len(),
        1,
        "nothing redriven twice without --again"
    );
    choreo(
        &config,
        &["dlq", "redrive", &group, "--offset", &dlq_offset, "--again"],
    )
    .assert_ok();
    assert_eq!(
        common::read_all(&config, &redrive, 2, Duration::from_secs(10), true).len(),
        2,
        "--again redrives it once more"
    );

    let described = TopicAdmin::new(&config)
        .expect("admin")
        .describe(&redrive)
        .await
        .expect("describe")
        .expect("the redrive topic exists");
    assert_eq!(described.partitions, 1);
    assert_eq!(
        described.configs.get("retention.ms").map(String::as_str),
        Some("604800000")
    );
}

#[test]
fn unreachable_services_are_clear_errors_and_fail_the_command() {
    let config = KafkaConfig::new("127.0.0.1:1");
    for args in [
        &["--brokers", "127.0.0.1:1", "topics", "list"][..],
        &["--brokers", "127.0.0.1:1", "tail", "user.events"][..],
    ] {
        let run = choreo(&config, args);
        run.assert_failed();
        assert!(
            run.stderr.contains("cannot reach Kafka at 127.0.0.1:1")
                && run.stderr.contains("scripts/dev-services up"),
            "{run:#?}"
        );
    }
    let run = choreo(
        &config,
        &[
            "--database-url",
            "postgres://choreo:secret-pw@127.0.0.1:1/choreo",
            "projections",
            "status",
        ],
    );
    run.assert_failed();
    assert!(
        run.stderr.contains("cannot reach PostgreSQL")
            && run.stderr.contains("scripts/dev-services up")
            && !run.stderr.contains("secret-pw"),
        "{run:#?}"
    );
}

/// A database of the test's own, dropped at the end.
struct TestDatabase {
    admin: sqlx::PgPool,
    name: String,
    url: String,
}

impl TestDatabase {
    async fn create(test: &str) -> Self {
        let base = common::postgres().await;
        let admin = choreo::postgres::connect(&base).await.expect("connect");
        let name = common::unique(test).replace('-', "_");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&admin)
            .await
            .expect("create database");
        let base_url = std::env::var("CHOREO_DATABASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| choreo::config::DEFAULT_DATABASE_URL.to_owned());
        let url = with_database(&base_url, &name);
        Self { admin, name, url }
    }

    async fn drop(self) {
        sqlx::query(&format!("DROP DATABASE \"{}\" WITH (FORCE)", self.name))
            .execute(&self.admin)
            .await
            .expect("drop database");
    }
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let prefix = base.rsplit_once('/').map_or(base, |(p, _)| p);
    match query {
        Some(q) => format!("{prefix}/{database}?{q}"),
        None => format!("{prefix}/{database}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_status_shows_checkpoints_end_offsets_and_lag() {
    let config = common::kafka("cli-status");
    let db = TestDatabase::create("cli_status").await;
    let status = ["--database-url", db.url.as_str(), "projections", "status"];

    let run = choreo(&config, &status);
    assert!(
        run.assert_ok()
            .stdout
            .contains("no projections have run yet"),
        "{run:#?}"
    );

    let pool = choreo::postgres::connect_and_migrate(&PostgresConfig::new(&db.url))
        .await
        .expect("choreo's tables");
    let run = choreo(&config, &status);
    assert!(
        run.assert_ok()
            .stdout
            .contains("no projections have run yet"),
        "{run:#?}"
    );

    let topic = common::create_events_topic(&config, "user", 1).await;
    let publisher = Publisher::new(&config, "/cli-test").expect("publisher");
    for i in 0..3 {
        publisher.publish(&signup(i)).await.expect("publish");
    }
    for (projection, slot, next_offset) in [
        ("users.v1", "live", 1_i64),
        ("users.v1", "shadow", 3),
        ("ghost.v1", "live", 10),
    ] {
        sqlx::query(
            "INSERT INTO choreo_meta.checkpoints (projection, slot, topic, partition, next_offset) \
             VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(projection)
        .bind(slot)
        .bind(&topic)
        .bind(next_offset)
        .execute(&pool)
        .await
        .expect("checkpoint");
    }
    pool.close().await;

    let run = choreo(&config, &status);
    run.assert_ok();
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let find = |projection: &str, slot: &str| {
        rows.iter()
            .find(|r| r.len() >= 7 && r[0] == projection && r[1] == slot)
            .unwrap_or_else(|| panic!("no row {projection} {slot}: {run:#?}"))
            .clone()
    };
    let topic = topic.as_str();
    assert_eq!(
        find("users.v1", "live"),
        ["users.v1", "live", topic, "0", "1", "3", "2"]
    );
    assert_eq!(
        find("users.v1", "shadow"),
        ["users.v1", "shadow", topic, "0", "3", "3", "0"]
    );
    assert_eq!(
        find("ghost.v1", "live")[..7],
        ["ghost.v1", "live", topic, "0", "10", "3", "-7"]
    );
    assert!(run.stdout.contains("beyond the end of the log"), "{run:#?}");

    db.drop().await;
}
