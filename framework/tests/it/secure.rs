//! The secure services of `scripts/dev-services up --secure`: a broker whose only listener is
//! SASL_SSL (SCRAM users, a self-signed CA, the StandardAuthorizer with ACLs per service
//! principal) and a PostgreSQL cluster that takes TLS connections only. Each test reads the
//! settings `scripts/dev-services env --secure` prints; when the secure services are not up the
//! tests say so and pass without checking anything, unless `CHOREO_SECURE_REQUIRED` is set (the
//! README's test command sets it and starts them).
//!
//! Principals: `admin` (super user), `bank` (its topics, groups and transactional ids start with
//! `bank.`), `ledger` (likewise `ledger.`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use choreo::aggregate::{CommandBus, Outcome, SendOptions};
use choreo::config::{SaslMechanism, SecurityProtocol};
use choreo::{
    EventHandlers, HandlerError, KafkaConfig, PostgresConfig, Publisher, Received, Shutdown,
};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::common::{self, UserSignedUp, signup};

/// What `scripts/dev-services env --secure` printed, for the principal asked.
struct Secure {
    vars: BTreeMap<String, String>,
}

impl Secure {
    /// The secure settings for `user`, or `None` (after saying why) when the secure services
    /// are not running and not required.
    fn for_user(user: &str) -> Option<Self> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/dev-services");
        let output = Command::new("bash")
            .arg(&script)
            .args(["env", "--secure", user])
            .output()
            .expect("run scripts/dev-services env --secure");
        assert!(
            output.status.success(),
            "scripts/dev-services env --secure {user}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let vars: BTreeMap<String, String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        let secure = Self { vars };
        let kafka = secure.var("CHOREO_KAFKA_BROKERS");
        // postgres://user:password@HOST:PORT/db?...
        let url = secure.var("CHOREO_DATABASE_URL");
        let postgres = url
            .split_once('@')
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(address, _)| address.to_owned())
            .expect("a host:port in the printed CHOREO_DATABASE_URL");
        let up = [kafka.as_str(), postgres.as_str()]
            .iter()
            .all(|addr| std::net::TcpStream::connect(addr).is_ok());
        if up {
            return Some(secure);
        }
        assert!(
            std::env::var_os("CHOREO_SECURE_REQUIRED").is_none(),
            "CHOREO_SECURE_REQUIRED is set but the secure services are not up on {kafka} and \
             {postgres}: start them with scripts/dev-services up --secure"
        );
        eprintln!(
            "SKIPPED: the secure services are not up ({kafka}, {postgres}); start them with \
             `scripts/dev-services up --secure` (scripts/test does)"
        );
        None
    }

    fn var(&self, key: &str) -> String {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("scripts/dev-services env --secure prints no {key}"))
            .clone()
    }

    fn file(&self, name: &str) -> PathBuf {
        PathBuf::from(self.var("CHOREO_SECURE_DIR")).join(name)
    }

    fn password(&self) -> String {
        std::fs::read_to_string(self.var("CHOREO_KAFKA_SASL_PASSWORD_FILE"))
            .expect("password file")
            .trim_end()
            .to_owned()
    }

    /// The principal's Kafka settings, built with the typed settings (SASL_SSL, SCRAM, the
    /// dev CA), in a namespace of the test's under `prefix`.
    fn kafka(&self, prefix: &str, test: &str) -> KafkaConfig {
        self.kafka_own()
            .namespace(format!("{prefix}{}", common::unique(test)))
    }

    /// The principal's Kafka settings with its own password and the dev CA, no namespace.
    fn kafka_own(&self) -> KafkaConfig {
        self.kafka_with(&self.password(), &self.var("CHOREO_KAFKA_SSL_CA_FILE"))
    }

    fn kafka_with(&self, password: &str, ca_file: &str) -> KafkaConfig {
        let brokers = self.var("CHOREO_KAFKA_BROKERS");
        assert!(brokers.starts_with("127."), "loopback only: {brokers}");
        let mechanism: SaslMechanism = self
            .var("CHOREO_KAFKA_SASL_MECHANISM")
            .parse()
            .expect("mechanism");
        KafkaConfig::new(brokers)
            .security_protocol(SecurityProtocol::SaslSsl)
            .ssl_ca_file(ca_file)
            .sasl_mechanism(mechanism)
            .sasl_credentials(self.var("CHOREO_KAFKA_SASL_USERNAME"), password)
            .connect_timeout(Duration::from_secs(10))
    }
}

/// TLS to `brokers` (loopback only) trusting `ca`, without a client certificate.
fn tls(brokers: &str, ca: &str) -> KafkaConfig {
    assert!(brokers.starts_with("127."), "loopback only: {brokers}");
    KafkaConfig::new(brokers)
        .security_protocol(SecurityProtocol::Ssl)
        .ssl_ca_file(ca)
        .connect_timeout(Duration::from_secs(10))
}

/// `check_reachable` on `config`, which must fail (`what` says why it should) within the
/// connect timeout.
fn refused_fast(config: &KafkaConfig, what: &str) -> choreo::Error {
    let started = Instant::now();
    let error = choreo::kafka::check_reachable(config).expect_err(what);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "fails within the connect timeout: {:?}",
        started.elapsed()
    );
    error
}

/// A connection to `url` that PostgreSQL must refuse (`what` says why it should).
async fn postgres_refused(url: &str, what: &str) -> choreo::Error {
    choreo::postgres::connect(&PostgresConfig::new(url).connect_timeout(Duration::from_secs(5)))
        .await
        .expect_err(what)
}

/// Reads `expected` records of `topic` (every partition from the start, read_committed) with
/// a plain rdkafka consumer on the config's security settings, or fails after `timeout`.
fn read_records(config: &KafkaConfig, topic: &str, partitions: i32, expected: usize) -> usize {
    let consumer: BaseConsumer = config
        .client_config(&[
            ("group.id", &format!("{topic}.checker")),
            ("enable.auto.commit", "false"),
            ("isolation.level", "read_committed"),
        ])
        .create()
        .expect("checker consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    while seen < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                assert!(message.payload().is_some(), "a record with a payload");
                seen += 1;
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_and_consumed_over_sasl_ssl_within_the_principals_acls() {
    let Some(secure) = Secure::for_user("bank") else {
        return;
    };
    let config = secure.kafka("bank.", "sec-events");
    // The principal creates its own topics (CREATE on its prefix).
    let topic = common::create_events_topic(&config, "user", 2).await;
    let group = common::unique("sec-group");
    common::create_dlq(&config, &group).await;

    let publisher = Publisher::new(&config, "/bank").expect("publisher");
    for i in 0..3 {
        publisher.publish(&signup(i)).await.expect("publish");
    }

    let seen: Arc<Mutex<Vec<Received<UserSignedUp>>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let handlers = common::run_handlers(
        &config,
        EventHandlers::new(group).on(move |e: Received<UserSignedUp>| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().expect("lock").push(e);
                Ok::<_, HandlerError>(())
            }
        }),
    );
    common::eventually(
        "the three events handled over SASL_SSL",
        Duration::from_secs(60),
        || seen.lock().expect("lock").len() >= 3,
    )
    .await;
    handlers.stop().await.expect("handlers ran and stopped");
    let mut emails: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .map(|r| r.payload.email.clone())
        .collect();
    emails.sort();
    let mut expected: Vec<String> = (0..3).map(|i| signup(i).email).collect();
    expected.sort();
    assert_eq!(emails, expected, "each event once, intact");
    assert_eq!(read_records(&config, &topic, 2, 3), 3);
}

#[cfg(feature = "testing")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_processed_in_a_transaction_and_replied_to_over_sasl_ssl() {
    use crate::aggregates;
    let Some(secure) = Secure::for_user("bank") else {
        return;
    };
    // Topics, the processor's group and transactional id, the bus's reader group: all
    // `bank.…`, which the ACLs give the bank principal (transactional id WRITE, idempotent
    // write included).
    let config = secure.kafka("bank.", "sec-agg");
    aggregates::bank_topics(&config).await;
    let processor = aggregates::start(&config, 0);
    aggregates::wait_ready(processor.status(), aggregates::PARTITIONS as usize).await;
    let bus = CommandBus::new(&config, "bank", 0).await.expect("bus");
    let wait = Duration::from_secs(30);
    let opened = bus
        .send_and_wait(&aggregates::open("ada"), SendOptions::default(), wait)
        .await
        .expect("reply");
    assert!(aggregates::accepted(&opened), "{opened:?}");
    let deposited = bus
        .send_and_wait(
            &aggregates::deposit("ada", 40),
            SendOptions::default(),
            wait,
        )
        .await
        .expect("reply");
    assert!(aggregates::accepted(&deposited), "{deposited:?}");
    let refused = bus
        .send_and_wait(
            &aggregates::withdraw("ada", 100),
            SendOptions::default(),
            wait,
        )
        .await
        .expect("reply");
    assert!(
        matches!(&refused.outcome, Outcome::Rejected { rejection } if rejection.code == "insufficient_funds"),
        "{refused:?}"
    );
    // The committed log holds exactly the two accepted commands' events.
    let events = config.topic_name("account.events");
    assert_eq!(
        read_records(&config, &events, aggregates::PARTITIONS, 2),
        2,
        "opened and deposited, committed"
    );
    processor.stop().await.expect("processor stopped cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_fast_naming_authentication_and_not_the_password() {
    let Some(secure) = Secure::for_user("bank") else {
        return;
    };
    let wrong = format!("not-the-password-{}", uuid::Uuid::new_v4().simple());
    let config = secure.kafka_with(&wrong, &secure.var("CHOREO_KAFKA_SSL_CA_FILE"));
    let error = refused_fast(&config, "a wrong password");
    let text = error.to_string();
    assert!(
        matches!(error, choreo::Error::KafkaRefused { .. })
            && text.to_ascii_lowercase().contains("authentication"),
        "names the cause: {text}"
    );
    assert!(
        !text.contains("scripts/dev-services up"),
        "no advice to start a broker that is running: {text}"
    );
    assert!(!text.contains(&wrong), "never prints the password: {text}");
    assert!(
        !format!("{config:?}").contains(&wrong),
        "nor does the config's Debug"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_ca_fails_fast_naming_the_certificate() {
    let Some(secure) = Secure::for_user("bank") else {
        return;
    };
    let other_ca = secure.file("other-ca.pem");
    let config = secure.kafka_with(&secure.password(), &other_ca.to_string_lossy());
    let error = refused_fast(&config, "an untrusted CA");
    let text = error.to_string();
    assert!(
        text.to_ascii_lowercase().contains("certificate"),
        "names the cause: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_cannot_write_or_read_another_services_topics() {
    let Some(bank) = Secure::for_user("bank") else {
        return;
    };
    let Some(ledger) = Secure::for_user("ledger") else {
        return;
    };
    let bank_config = bank.kafka("bank.", "sec-acl");
    let topic = common::create_events_topic(&bank_config, "user", 1).await;
    // The ledger principal aimed at the bank's namespace: its topics and groups are not
    // ledger's.
    let namespace = bank_config.topic_namespace().expect("namespace").to_owned();
    let intruder = ledger.kafka_own().namespace(namespace);

    let publisher = Publisher::new(&intruder, "/ledger").expect("publisher");
    let started = Instant::now();
    let error = publisher
        .publish(&signup(1))
        .await
        .expect_err("no WRITE on the bank's topic");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no retry storm: {:?}",
        started.elapsed()
    );
    assert!(!error.is_retriable(), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("Authorization") && text.contains(&topic),
        "names the operation's failure and the topic: {text}"
    );

    // Reading it with a group in the bank's namespace: the runtime stops with the reason.
    let group = common::unique("sec-intruder");
    let started = Instant::now();
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        EventHandlers::new(group)
            .on(|_: Received<UserSignedUp>| async { Ok::<_, HandlerError>(()) })
            .run(&intruder, Shutdown::new()),
    )
    .await
    .expect("the handlers stop by themselves instead of hanging");
    let error = run.expect_err("no READ on the bank's group or topic");
    // The topic check at start-up meets the authorization failure first.
    assert!(
        matches!(error, choreo::Error::TopicRefused { .. }),
        "refused by the brokers: {error:?}"
    );
    let text = error.to_string();
    assert!(
        text.to_ascii_lowercase().contains("authoriz"),
        "names authorization: {text} (after {:?})",
        started.elapsed()
    );
    // The bank's log holds nothing the ledger tried to write: its end offset is still 0.
    assert_eq!(common::end_offsets(&bank_config, &topic, 1), vec![0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_verify_full_uses_tls_and_plain_connections_are_refused() {
    let Some(secure) = Secure::for_user("bank") else {
        return;
    };
    let url = secure.var("CHOREO_DATABASE_URL");
    assert!(url.contains("sslmode=verify-full"), "{url}");
    let pool = choreo::postgres::connect(&PostgresConfig::new(&url).max_connections(1))
        .await
        .expect("connect with sslmode=verify-full and the dev CA");
    let (ssl, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("pg_stat_ssl");
    assert!(ssl, "the session is encrypted");
    assert!(
        version.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
        "{version:?}"
    );
    // The schema choreo needs comes up over TLS too.
    choreo::postgres::migrate(&pool)
        .await
        .expect("migrations over TLS");
    pool.close().await;

    // Without TLS the server refuses (hostnossl reject), and says so.
    let plain = url.replace("sslmode=verify-full", "sslmode=disable");
    let error = postgres_refused(&plain, "a plain connection").await;
    let text = error.to_string();
    assert!(text.contains("no encryption"), "{text}");
    assert!(
        !text.contains(":choreo@"),
        "the password stays hidden: {text}"
    );

    // A CA that did not sign the server's certificate: verify-full refuses the server.
    let other = url.replace(
        &secure.var("CHOREO_KAFKA_SSL_CA_FILE"),
        &secure.file("other-ca.pem").to_string_lossy(),
    );
    let error = postgres_refused(&other, "an untrusted server certificate").await;
    assert!(
        error
            .to_string()
            .to_ascii_lowercase()
            .contains("certificate"),
        "{error}"
    );
}

#[test]
fn the_cli_with_a_wrong_password_says_authentication_failed_and_never_prints_the_password() {
    let Some(secure) = Secure::for_user("bank") else {
        return;
    };
    let wrong = format!("cli-wrong-{}", uuid::Uuid::new_v4().simple());
    let mut command = Command::new(env!("CARGO_BIN_EXE_choreo"));
    for (key, value) in &secure.vars {
        command.env(key, value);
    }
    let started = Instant::now();
    let output = command
        .env_remove("CHOREO_KAFKA_SASL_PASSWORD_FILE")
        .env("CHOREO_KAFKA_SASL_PASSWORD", &wrong)
        .env_remove("CHOREO_KAFKA_PROPERTIES")
        .env_remove("CHOREO_TOPIC_NAMESPACE")
        .env("RUST_LOG", "debug")
        .args(["topics", "list"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run choreo");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("Authentication"), "{stderr}");
    assert!(
        !stdout.contains(&wrong) && !stderr.contains(&wrong),
        "the password is never printed, even at RUST_LOG=debug:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_authenticates_by_the_client_certificate_and_refuses_a_client_without_one() {
    let Some(secure) = Secure::for_user("bank") else {
        return;
    };
    let sasl = secure.kafka("bank.", "sec-mtls");
    let topic = common::create_events_topic(&sasl, "user", 1).await;
    let namespace = sasl.topic_namespace().expect("namespace").to_owned();
    let mtls_brokers = secure.var("CHOREO_SECURE_MTLS_BROKERS");
    let ca = secure.var("CHOREO_KAFKA_SSL_CA_FILE");
    // The certificate's CN=bank is the principal User:bank, with the bank's ACLs.
    let mtls = tls(&mtls_brokers, &ca)
        .ssl_client_cert(
            secure.file("bank-client.pem"),
            secure.file("bank-client.key"),
        )
        .namespace(namespace);
    let publisher = Publisher::new(&mtls, "/bank").expect("publisher over mutual TLS");
    publisher
        .publish(&signup(7))
        .await
        .expect("publish over mutual TLS");
    assert_eq!(common::end_offsets(&sasl, &topic, 1), vec![1]);

    // TLS alone, no client certificate: the broker refuses the connection.
    let anonymous = tls(&mtls_brokers, &ca);
    let error = refused_fast(&anonymous, "no client certificate");
    assert!(
        matches!(error, choreo::Error::KafkaRefused { .. })
            && error.to_string().contains("bad certificate"),
        "names the refused (missing) certificate: {error}"
    );
}
