//! The signup story end to end, against the real Kafka and Postgres: the three services run
//! as processes (two user-service and two email-service instances), in a topic namespace and
//! a database of their own.
//!
//! Checks: every accepted signup has exactly one welcome email and one committed
//! `v1.email.sent`; the metrics equal the accepted signups; duplicates are rejected; a retry
//! with the same Idempotency-Key gets the same answer; GET right after POST finds the user;
//! instances killed with SIGKILL are taken over; the rebuilt metrics view equals the live one;
//! records from other producers in `user.events` (a header name that is not UTF-8, a
//! structured-mode CloudEvent, a signup whose address is 2 MB) stop no service: the first is
//! dead-lettered, the second handled, the third counted by the metrics and dead-lettered by
//! the users view (its address is too large for the unique index) and by the email reactor
//! (its `v1.email.sent` is too large for Kafka).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use choreo::kafka::Record;
use choreo::testing::{brokers, create_database, eventually};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;

const HOW_TO_START: &str = "start them with `scripts/dev-services up` (or run `scripts/test`)";

/// One run of the stack: its namespace, database, mail sink and processes.
struct Stack {
    namespace: String,
    database_url: String,
    mail_dir: PathBuf,
    logs: PathBuf,
    children: HashMap<String, Child>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Stack {
    fn command(&self, bin: &str) -> Command {
        let mut command = Command::new(bin);
        command
            .env("CHOREO_KAFKA_BROKERS", brokers())
            .env("CHOREO_TOPIC_NAMESPACE", &self.namespace)
            .env("CHOREO_DATABASE_URL", &self.database_url)
            .env("SIGNUP_MAIL_DIR", &self.mail_dir)
            .env("RUST_LOG", "info,rdkafka=warn");
        command
    }

    /// Runs a one-shot command to its end; panics with its output when it fails.
    fn run(&self, bin: &str, args: &[&str]) -> String {
        let output = self.command(bin).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{bin} {args:?} failed: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Starts a long-running instance, logging to a file of its own.
    fn start(&mut self, name: &str, bin: &str, args: &[&str]) {
        let log = std::fs::File::create(self.logs.join(format!("{name}.log"))).unwrap();
        let child = self
            .command(bin)
            .args(args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.children.insert(name.to_owned(), child);
    }

    /// Whether the process `name` is still running.
    fn running(&mut self, name: &str) -> bool {
        self.children
            .get_mut(name)
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    fn kill(&mut self, name: &str) {
        let mut child = self.children.remove(name).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }
}

/// A minimal HTTP/1.1 exchange (`Connection: close`): (status, JSON body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(key) = key {
        request.push_str(&format!("Idempotency-Key: {key}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status: u16 = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let json = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

fn port_is_up(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Signs up `email` until it gets a final answer (201 or 409), retrying with the same key
/// through a takeover (503: no reply in time). Returns (status, body, attempts).
fn sign_up(port: u16, email: &str, name: &str, key: &str) -> (u16, Value, u32) {
    let body = serde_json::json!({ "email": email, "name": name }).to_string();
    for attempt in 1..=10 {
        let (status, json) = http(port, "POST", "/v1/users", Some(&body), Some(key));
        if status != 503 {
            return (status, json, attempt);
        }
    }
    panic!("no final answer for {email} after 10 attempts");
}

/// The mail sink: the `To:` of every email.
fn emails(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "eml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let to = text
                .lines()
                .find_map(|l| l.strip_prefix("To: "))
                .unwrap_or_default()
                .to_owned();
            out.push(to);
        }
    }
    out
}

/// A read_committed reader outside any group's offsets (nothing is committed).
fn reader(name: &str) -> BaseConsumer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{name}.e2e-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap()
}

/// Every committed record of `topic`, read to the end it had when called. Headers are read
/// through choreo's `Record` (names as bytes): dead letters keep header names that are not
/// UTF-8, on which rdkafka's own header reader panics.
/// Fails only when the end cannot be fetched (a topic being created has no leader yet).
fn read_all(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
) -> rdkafka::error::KafkaResult<Vec<Record>> {
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..partitions {
        let (_, end) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        ends.insert(p, end);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let shared: std::sync::Arc<str> = topic.into();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = (0..partitions).all(|p| {
            consumer
                .position()
                .ok()
                .and_then(|pos| pos.find_partition(topic, p).map(|e| e.offset()))
                .is_some_and(|o| matches!(o, Offset::Offset(o) if o >= ends[&p]) || ends[&p] == 0)
        });
        if done {
            return Ok(out);
        }
        assert!(
            Instant::now() < deadline,
            "could not read {topic} to its end"
        );
        if let Some(Ok(record)) = consumer.poll(Duration::from_millis(200)) {
            out.push(Record::copy(&record, shared.clone()));
        }
    }
}

/// A header's value as text ("" when absent).
fn header(record: &Record, name: &str) -> String {
    record
        .headers()
        .and_then(|h| h.last(name))
        .flatten()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// Every committed record of `topic`: (type, subject, id).
fn committed_records(topic: &str, partitions: i32) -> Vec<(String, String, String)> {
    read_all(&reader(topic), topic, partitions)
        .unwrap()
        .iter()
        .map(|r| {
            (
                header(r, "ce_type"),
                header(r, "ce_subject"),
                header(r, "ce_id"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signup_story() {
    let mut story = step_start_the_stack().await;
    step_sign_up_through_both_instances(&mut story);
    step_retries_duplicates_and_bad_requests(&story);
    step_records_from_other_producers(&mut story).await;
    let (email0_before_kill, huge) = step_kill_an_instance_of_each_group(&mut story).await;
    step_one_email_per_signup(&story, &huge).await;
    let live = step_metrics_equal_the_signups(&story, &huge).await;
    step_a_rebuilt_metrics_view_equals_the_live_one(&story, &live);
    step_the_survivors_take_over(&mut story, email0_before_kill).await;
    step_the_users_view_holds_every_signup(&story, &huge).await;
}

/// What the story's steps share: the stack, its ports, and the accepted signups.
struct Story {
    stack: Stack,
    namespace: String,
    user_a: u16,
    user_b: u16,
    metrics_port: u16,
    /// Address → user id of every accepted signup.
    accepted: BTreeMap<String, String>,
}

/// The signup with a 2 MB address from another producer: its address and payload size.
struct Huge {
    email: String,
    payload: usize,
}

/// Names the step in the test's output, so a failure says which step it was in.
fn step(name: &str) {
    eprintln!("== step: {name}");
}

fn user_bin() -> &'static str {
    env!("CARGO_BIN_EXE_user-service")
}

fn email_bin() -> &'static str {
    env!("CARGO_BIN_EXE_email-service")
}

fn metrics_bin() -> &'static str {
    env!("CARGO_BIN_EXE_metrics-service")
}

/// The metrics view, as the metrics service answers it.
fn metrics_total(port: u16) -> Value {
    let (status, view) = http(port, "GET", "/v1/metrics/signups", None, None);
    assert_eq!(status, 200, "{view}");
    view
}

async fn step_start_the_stack() -> Story {
    step("start the stack");
    let kafka = choreo::KafkaConfig::new(brokers());
    if let Err(e) = choreo::kafka::check_reachable(&kafka) {
        panic!("Kafka is not reachable ({e}): {HOW_TO_START}");
    }
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let namespace = format!("e2e{run}");
    let database_url = create_database(&format!("signup_e2e_{run}")).await;
    let base = std::env::temp_dir().join(format!("signup-e2e-{run}"));
    let mut stack = Stack {
        namespace: namespace.clone(),
        database_url,
        mail_dir: base.join("mail"),
        logs: base.clone(),
        children: HashMap::new(),
    };
    std::fs::create_dir_all(&stack.mail_dir).unwrap();
    let (user_bin, email_bin, metrics_bin) = (user_bin(), email_bin(), metrics_bin());
    for bin in [user_bin, email_bin, metrics_bin] {
        stack.run(bin, &["setup"]);
    }
    let (user_a, user_b, metrics_port) = (free_port(), free_port(), free_port());
    stack.start(
        "user-0",
        user_bin,
        &[
            "run",
            "--ordinal",
            "0",
            "--listen",
            &format!("127.0.0.1:{user_a}"),
        ],
    );
    stack.start(
        "user-1",
        user_bin,
        &[
            "run",
            "--ordinal",
            "1",
            "--listen",
            &format!("127.0.0.1:{user_b}"),
        ],
    );
    stack.start("email-0", email_bin, &["run", "--ordinal", "0"]);
    stack.start("email-1", email_bin, &["run", "--ordinal", "1"]);
    stack.start(
        "metrics",
        metrics_bin,
        &["run", "--listen", &format!("127.0.0.1:{metrics_port}")],
    );
    eventually("the HTTP ports", Duration::from_secs(60), || {
        port_is_up(user_a) && port_is_up(user_b) && port_is_up(metrics_port)
    })
    .await;
    Story {
        stack,
        namespace,
        user_a,
        user_b,
        metrics_port,
        accepted: BTreeMap::new(),
    }
}

/// Signups through both instances; each GET right after its POST finds the user.
fn step_sign_up_through_both_instances(story: &mut Story) {
    step("sign up through both instances");
    for i in 0..20 {
        let port = if i % 2 == 0 {
            story.user_a
        } else {
            story.user_b
        };
        let email = format!(
            "user{i}@{}",
            ["example.com", "example.org", "mail.test"][i % 3]
        );
        let (status, body, _) = sign_up(port, &email, &format!("User {i}"), &format!("key-{i}"));
        assert_eq!(status, 201, "signup {email}: {body}");
        let user_id = body["user_id"].as_str().unwrap().to_owned();
        let after = body["after"].as_str().unwrap();
        let (status, user) = http(
            port,
            "GET",
            &format!("/v1/users/{user_id}?after={after}"),
            None,
            None,
        );
        assert_eq!(status, 200, "GET right after POST: {user}");
        assert_eq!(user["email"], email.as_str());
        story.accepted.insert(email, user_id);
    }
}

fn step_retries_duplicates_and_bad_requests(story: &Story) {
    step("retries, duplicates and bad requests");
    let (user_a, user_b) = (story.user_a, story.user_b);
    // A retry with the same key: the same answer, no second user.
    let (status, again, _) = sign_up(user_b, "user0@example.com", "User 0", "key-0");
    assert_eq!(status, 201, "retry: {again}");
    assert_eq!(
        again["user_id"].as_str(),
        story.accepted.get("user0@example.com").map(String::as_str)
    );
    // The same address again, without the key: taken.
    let (status, taken) = http(
        user_a,
        "POST",
        "/v1/users",
        Some(r#"{"email":"USER1@example.org","name":"Impostor"}"#),
        None,
    );
    assert_eq!(status, 409, "duplicate email: {taken}");
    // Bad requests say what is wrong.
    let (status, bad) = http(
        user_a,
        "POST",
        "/v1/users",
        Some(r#"{"email":"not-an-address","name":"X"}"#),
        None,
    );
    assert_eq!(status, 400);
    assert!(bad["error"].as_str().unwrap().contains("no @"), "{bad}");
    let (status, bad) = http(user_a, "POST", "/v1/users", Some("{\"email\":"), None);
    assert_eq!(status, 400);
    assert!(bad["error"].as_str().unwrap().contains("JSON"), "{bad}");
    let (status, _) = http(
        user_a,
        "GET",
        &format!("/v1/users/{}", uuid::Uuid::new_v4()),
        None,
        None,
    );
    assert_eq!(status, 404);
}

/// Records from other producers in user.events: one whose header name is not UTF-8
/// (rdkafka's own reader panics on it: it once stopped all three services), and a
/// structured-mode CloudEvent with an id that is not a UUID. Every service goes on: the
/// first is dead-lettered, the second handled like any signup; the restores after the
/// kills below skip both (user-service did not write them).
async fn step_records_from_other_producers(story: &mut Story) {
    step("records from other producers");
    let foreign_user = uuid::Uuid::new_v4();
    send_foreign_records(&story.namespace, foreign_user).await;
    story
        .accepted
        .insert(FOREIGN_EMAIL.to_owned(), foreign_user.to_string());
}

/// Takes an instance of each group away (SIGKILL); the others take over their partitions.
/// Returns the length of email-0's log at the kill, and the 2 MB signup sent after it.
async fn step_kill_an_instance_of_each_group(story: &mut Story) -> (usize, Huge) {
    step("kill an instance of each group");
    let stack = &mut story.stack;
    // The email instance killed owns partitions by then (waited for, not assumed), and what
    // email-0 says from now on shows the takeover.
    eventually(
        "email-1 to own partitions of user.events",
        Duration::from_secs(60),
        || owns_some(&stack.log("email-1")),
    )
    .await;
    let email0_before_kill = stack.log("email-0").len();
    stack.kill("email-1");
    stack.kill("user-1");
    for i in 20..40 {
        let email = format!(
            "user{i}@{}",
            ["example.com", "example.org", "mail.test"][i % 3]
        );
        let (status, body, _) = sign_up(
            story.user_a,
            &email,
            &format!("User {i}"),
            &format!("key-{i}"),
        );
        assert_eq!(status, 201, "signup {email} after the kill: {body}");
        story
            .accepted
            .insert(email, body["user_id"].as_str().unwrap().to_owned());
    }
    // A signup with a 2 MB address from another producer, sent after the kills: its email
    // takes long enough to write that a SIGKILL in the middle would send it twice (the sink
    // is at-least-once), which is not what this part checks.
    let (email, payload) = send_huge_signup(&story.namespace).await;
    (email0_before_kill, Huge { email, payload })
}

/// Every accepted signup: exactly one committed v1.email.sent, one welcome email. Waited
/// for by the committed events, the positive sign that every signup was handled to the
/// end (takeover included); an email is written before its event commits, and a handled
/// signup is not handled again, so the mail sink is complete then too.
async fn step_one_email_per_signup(story: &Story, huge: &Huge) {
    step("one email per signup");
    let accepted = &story.accepted;
    let email_topic = format!("{}.email.events", story.namespace);
    eventually(
        "a v1.email.sent per signup",
        Duration::from_secs(90),
        || {
            let subjects: std::collections::BTreeSet<String> =
                committed_records(&email_topic, signup::contract::EMAIL_PARTITIONS)
                    .into_iter()
                    .map(|(_, subject, _)| subject)
                    .collect();
            accepted.keys().all(|email| subjects.contains(email))
        },
    )
    .await;
    let mut wanted: BTreeMap<String, usize> = accepted.keys().map(|e| (e.clone(), 1)).collect();
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    for (kind, subject, _) in committed_records(&email_topic, signup::contract::EMAIL_PARTITIONS) {
        assert_eq!(kind, "v1.email.sent");
        *sent.entry(subject).or_default() += 1;
    }
    assert_eq!(
        sent, wanted,
        "one committed v1.email.sent per accepted signup (none for the 2 MB address)"
    );
    // The 2 MB address got its email (the effect comes before the output), then its
    // v1.email.sent was refused as too large and the signup dead-lettered, once.
    eventually(
        "the email reactor to dead-letter the 2 MB signup",
        Duration::from_secs(60),
        || {
            dead_letters(&story.namespace)
                .iter()
                .any(|d| d.topic.contains("welcome-email") && d.payload_bytes == huge.payload)
        },
    )
    .await;
    wanted.insert(huge.email.clone(), 1);
    let mut per_address: BTreeMap<String, usize> = BTreeMap::new();
    for to in emails(&story.stack.mail_dir) {
        *per_address.entry(to).or_default() += 1;
    }
    let short = |a: &String| a.chars().take(40).collect::<String>();
    let differences: Vec<(String, Option<&usize>, Option<&usize>)> = per_address
        .keys()
        .chain(wanted.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|a| per_address.get(*a) != wanted.get(*a))
        .map(|a| (short(a), per_address.get(a), wanted.get(a)))
        .collect();
    assert!(
        differences.is_empty(),
        "one welcome email per accepted signup and one for the 2 MB address; \
         (address, emails, wanted) differ: {differences:?}"
    );
}

/// The metrics equal the accepted signups; returns the live view.
async fn step_metrics_equal_the_signups(story: &Story, huge: &Huge) -> Value {
    step("the metrics equal the signups");
    let expected = story.accepted.len();
    // The metrics count the 2 MB signup too: its domain is short.
    eventually(
        "the metrics to count every signup",
        Duration::from_secs(60),
        || metrics_total(story.metrics_port)["total"].as_i64() == Some(expected as i64 + 1),
    )
    .await;
    let live = metrics_total(story.metrics_port);
    let mut domains: BTreeMap<String, i64> = BTreeMap::new();
    for email in story.accepted.keys().chain([&huge.email]) {
        *domains
            .entry(email.rsplit_once('@').unwrap().1.to_owned())
            .or_default() += 1;
    }
    let reported: BTreeMap<String, i64> = live["per_domain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_owned(),
                pair[1].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(reported, domains);
    live
}

/// Replay: rebuild the metrics view from the log while the service runs; same view.
fn step_a_rebuilt_metrics_view_equals_the_live_one(story: &Story, live: &Value) {
    step("a rebuilt metrics view equals the live one");
    let report = story.stack.run(
        metrics_bin(),
        &["projections", "rebuild", "signup_metrics", "--quiet"],
    );
    assert!(
        report.contains("signup_metrics"),
        "rebuild report: {report}"
    );
    assert_eq!(
        &metrics_total(story.metrics_port),
        live,
        "the rebuilt view equals the live one"
    );
}

async fn step_the_survivors_take_over(story: &mut Story, email0_before_kill: usize) {
    step("the survivors take over");
    let stack = &mut story.stack;
    // Taken over once email-1's session timed out, whether or not a later signup needed it.
    eventually(
        "the surviving email instance to take over every partition",
        Duration::from_secs(90),
        || {
            stack.log("email-0")[email0_before_kill..]
                .contains("owns partitions [0, 1, 2, 3, 4, 5]")
        },
    )
    .await;
    for name in ["user-0", "email-0", "metrics"] {
        assert!(
            stack.running(name),
            "{name} still runs after the foreign records:\n{}",
            stack.log(name)
        );
    }
}

/// The users view holds every accepted signup (its partitions went on past the foreign
/// records), and dead-lettered the 2 MB address: over the unique index's row limit, an
/// error about the data (SQLSTATE 54000), not one to retry forever.
async fn step_the_users_view_holds_every_signup(story: &Story, huge: &Huge) {
    step("the users view holds every signup");
    for user_id in story.accepted.values() {
        let path = format!("/v1/users/{user_id}");
        eventually(
            &format!("the users view to hold {user_id}"),
            Duration::from_secs(60),
            || http(story.user_a, "GET", &path, None, None).0 == 200,
        )
        .await;
    }
    eventually(
        "the users view to dead-letter the 2 MB signup",
        Duration::from_secs(60),
        || {
            dead_letters(&story.namespace)
                .iter()
                .any(|d| d.topic.contains("users") && d.payload_bytes == huge.payload)
        },
    )
    .await;
    // Whichever user-service instance owned the record's partition dead-lettered it (user-1
    // may have, before it was killed; its log stays on disk).
    eventually(
        "user-service to dead-letter the record with the bad header name",
        Duration::from_secs(60),
        || {
            ["user-0", "user-1"]
                .iter()
                .any(|name| story.stack.log(name).contains("not UTF-8"))
        },
    )
    .await;
}

/// The address of the structured-mode signup another producer sends.
const FOREIGN_EMAIL: &str = "crm-import@elsewhere.test";

/// Writes to `{namespace}.user.events` as another client would: a signup with a header whose
/// name is the bytes `\xff\xfe`, then a structured-mode signup with only the required
/// attributes and a non-UUID id.
async fn send_foreign_records(namespace: &str, user_id: uuid::Uuid) {
    use choreo::kafka::RecordHeaders;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let topic = format!("{namespace}.user.events");
    let bad_key = "bad-header@elsewhere.test";
    let bad = serde_json::json!({"user_id": uuid::Uuid::new_v4(), "email": bad_key, "name": "Bad"});
    let id = uuid::Uuid::new_v4().to_string();
    let headers = RecordHeaders::from_pairs([
        (&b"ce_specversion"[..], Some(&b"1.0"[..])),
        (b"ce_id", Some(id.as_bytes())),
        (b"ce_source", Some(b"/other-client")),
        (b"ce_type", Some(b"v1.user.signedup")),
        (b"\xff\xfe", Some(b"foreign")),
    ])
    .to_owned_headers();
    producer
        .send(
            FutureRecord::to(&topic)
                .key(bad_key)
                .payload(&bad.to_string())
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let structured = serde_json::json!({
        "specversion": "1.0", "id": "crm-0001", "source": "urn:crm", "type": "v1.user.signedup",
        "data": {"user_id": user_id, "email": FOREIGN_EMAIL, "name": "From the CRM"}
    });
    let headers = RecordHeaders::from_pairs([(
        &b"content-type"[..],
        Some(&b"application/cloudevents+json"[..]),
    )])
    .to_owned_headers();
    producer
        .send(
            FutureRecord::to(&topic)
                .key(FOREIGN_EMAIL)
                .payload(&structured.to_string())
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

/// Whether the last ownership line of an email-service log names some partition.
fn owns_some(log: &str) -> bool {
    log.lines()
        .rev()
        .find(|l| l.contains("owns partitions"))
        .is_some_and(|l| !l.contains("owns partitions []"))
}

/// Writes to `{namespace}.user.events` a binary-mode signup whose address (and so its key,
/// subject and payload) is 2 MB, compressed so that the broker takes it as another client
/// would send it. Returns the address and the payload's length.
async fn send_huge_signup(namespace: &str) -> (String, usize) {
    use choreo::kafka::RecordHeaders;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("compression.type", "lz4")
        .set("message.max.bytes", "10000000")
        .set("batch.size", "10000000")
        .create()
        .unwrap();
    let email = format!("{}@huge.test", "x".repeat(2 * 1024 * 1024));
    let payload = serde_json::json!({
        "user_id": uuid::Uuid::new_v4(), "email": email, "name": "Huge"
    })
    .to_string();
    let id = uuid::Uuid::new_v4().to_string();
    let headers = RecordHeaders::from_pairs([
        (&b"ce_specversion"[..], Some(&b"1.0"[..])),
        (b"ce_id", Some(id.as_bytes())),
        (b"ce_source", Some(b"/bulk-import")),
        (b"ce_type", Some(b"v1.user.signedup")),
        (b"content-type", Some(b"application/json")),
    ])
    .to_owned_headers();
    producer
        .send(
            FutureRecord::to(&format!("{namespace}.user.events"))
                .key(&email)
                .payload(&payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    (email, payload.len())
}

/// One dead letter: the topic it is in and the payload length it reports.
#[derive(Debug)]
struct DeadLetter {
    topic: String,
    payload_bytes: usize,
}

/// Every dead letter in the namespace's `.dlq` topics. The payload length is the one the
/// dead letter says its original had (`choreo_dlq_payload_bytes`, on a dead letter cut to
/// fit), else its own payload's length.
fn dead_letters(namespace: &str) -> Vec<DeadLetter> {
    let consumer = reader(&format!("{namespace}.dlq"));
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let mut out = Vec::new();
    for topic in metadata.topics() {
        let name = topic.name();
        if !(name.starts_with(&format!("{namespace}.")) && name.ends_with(".dlq")) {
            continue;
        }
        let partitions = i32::try_from(topic.partitions().len()).unwrap();
        // A dead-letter topic just created may have no leader yet: read it on a later call.
        let Ok(records) = read_all(&consumer, name, partitions) else {
            continue;
        };
        for record in records {
            let cut_length = header(&record, "choreo_dlq_payload_bytes").parse().ok();
            out.push(DeadLetter {
                topic: name.to_owned(),
                payload_bytes: cut_length
                    .unwrap_or_else(|| record.payload().map_or(0, <[u8]>::len)),
            });
        }
    }
    out
}
