//! Avro events and schema evolution against the real Kafka and Postgres: JSON and Avro mixed
//! in one topic, old versions upcast during a live run and a rebuild, the schema store
//! (registration, compatibility, refresh), an unknown writer schema halting, bad input
//! dead-lettered with a precise reason.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo::codec::avro::{self, AvroSchema};
use choreo::event::Upcasters;
use choreo::kafka::SchemaStore;
use choreo::projection::{RebuildOptions, rebuild};
use choreo::{
    ApplyError, Error, Event, EventHandlers, HandlerError, KafkaConfig, Projection,
    ProjectionRunner, Publisher, Received,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::common;

const V1_SCHEMA: &str = r#"{"type":"record","name":"SignedUp","namespace":"test.user","fields":[
    {"name":"email","type":"string"}]}"#;
/// The first v2 schema.
const V2_OLD_SCHEMA: &str = r#"{"type":"record","name":"SignedUp","namespace":"test.user","fields":[
    {"name":"email","type":"string"},
    {"name":"plan","type":"string"}]}"#;
/// The current v2 schema: adds `referrer` with a default, so both directions stay compatible.
const V2_SCHEMA: &str = r#"{"type":"record","name":"SignedUp","namespace":"test.user","fields":[
    {"name":"email","type":"string"},
    {"name":"plan","type":"string"},
    {"name":"referrer","type":"string","default":"none"}]}"#;

/// v1, written as Avro.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SignedUpV1 {
    email: String,
}
impl Event for SignedUpV1 {
    const NAME: &'static str = "v1.user.signedup";
    const AVRO_SCHEMA: Option<&'static str> = Some(V1_SCHEMA);
    fn subject(&self) -> String {
        self.email.clone()
    }
}

/// v1, written as JSON by an older service.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SignedUpV1Json {
    email: String,
}
impl Event for SignedUpV1Json {
    const NAME: &'static str = "v1.user.signedup";
    fn subject(&self) -> String {
        self.email.clone()
    }
}

/// v2 with its first schema (a writer not yet upgraded).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SignedUpV2Old {
    email: String,
    plan: String,
}
impl Event for SignedUpV2Old {
    const NAME: &'static str = "v2.user.signedup";
    const AVRO_SCHEMA: Option<&'static str> = Some(V2_OLD_SCHEMA);
    fn subject(&self) -> String {
        self.email.clone()
    }
}

/// v2, written as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SignedUpV2Json {
    email: String,
    plan: String,
    referrer: String,
}
impl Event for SignedUpV2Json {
    const NAME: &'static str = "v2.user.signedup";
    fn subject(&self) -> String {
        self.email.clone()
    }
}

/// The newest version, the only one user code sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SignedUp {
    email: String,
    plan: String,
    referrer: String,
}
impl Event for SignedUp {
    const NAME: &'static str = "v2.user.signedup";
    const AVRO_SCHEMA: Option<&'static str> = Some(V2_SCHEMA);
    fn subject(&self) -> String {
        self.email.clone()
    }
    fn upcasters() -> Upcasters<Self> {
        Upcasters::new().from(upcast_v1)
    }
}

fn upcast_v1(old: SignedUpV1) -> SignedUp {
    SignedUp {
        email: old.email,
        plan: "legacy".into(),
        referrer: "none".into(),
    }
}

/// A view of the newest version: one row per user.
struct Signups;

impl Projection for Signups {
    type Events = SignedUp;
    const NAME: &'static str = "avro_signups";
    const VERSION: u32 = 1;

    fn schema_sql(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS signups (
             email text PRIMARY KEY,
             plan text NOT NULL,
             referrer text NOT NULL,
             written_as text NOT NULL
         );"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Received<SignedUp>],
    ) -> Result<(), ApplyError> {
        for e in events {
            sqlx::query(
                "INSERT INTO signups (email, plan, referrer, written_as) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (email) DO UPDATE SET plan = $2, referrer = $3, written_as = $4",
            )
            .bind(&e.payload.email)
            .bind(&e.payload.plan)
            .bind(&e.payload.referrer)
            .bind(format!("{} {}", e.meta.message_type, e.meta.content_type))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

type Rows = BTreeMap<String, (String, String, String)>;

async fn rows(pool: &PgPool, schema: &str) -> Rows {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(&format!(
        "SELECT email, plan, referrer, written_as FROM {schema}.signups"
    ))
    .fetch_all(pool)
    .await
    .expect("rows");
    rows.into_iter()
        .map(|(e, p, r, w)| (e, (p, r, w)))
        .collect()
}

async fn user_topics(config: &KafkaConfig, group: &str, partitions: i32) -> String {
    let topic = common::create_events_topic(config, "user", partitions).await;
    common::create_dlq(config, group).await;
    topic
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_avro_v1_and_v2_events_in_one_topic_rebuild_into_the_live_view() {
    let config = common::kafka("avro-mixed");
    let topic = user_topics(&config, "avro_signups.v1", 2).await;
    let (_, pool) = common::fresh_database("avro_mixed").await;
    let publisher = Publisher::new(&config, "/user-service").expect("publisher");
    let mut expected = Rows::new();
    for i in 0..20 {
        let email = |kind: &str| format!("{kind}{i}@example.com");
        let legacy = || ("legacy".to_owned(), "none".to_owned());
        let (plan, referrer) = legacy();
        publisher
            .publish(&SignedUpV1Json {
                email: email("v1json"),
            })
            .await
            .expect("v1 json");
        expected.insert(
            email("v1json"),
            (
                plan.clone(),
                referrer.clone(),
                "v1.user.signedup application/json".into(),
            ),
        );
        publisher
            .publish(&SignedUpV1 {
                email: email("v1avro"),
            })
            .await
            .expect("v1 avro");
        expected.insert(
            email("v1avro"),
            (plan, referrer, "v1.user.signedup application/avro".into()),
        );
        publisher
            .publish(&SignedUpV2Json {
                email: email("v2json"),
                plan: format!("p{i}"),
                referrer: "friend".into(),
            })
            .await
            .expect("v2 json");
        expected.insert(
            email("v2json"),
            (
                format!("p{i}"),
                "friend".into(),
                "v2.user.signedup application/json".into(),
            ),
        );
        // Written with the older v2 schema: the reader fills `referrer` from its default.
        publisher
            .publish(&SignedUpV2Old {
                email: email("v2old"),
                plan: format!("p{i}"),
            })
            .await
            .expect("v2 old avro");
        expected.insert(
            email("v2old"),
            (
                format!("p{i}"),
                "none".into(),
                "v2.user.signedup application/avro".into(),
            ),
        );
        publisher
            .publish(&SignedUp {
                email: email("v2avro"),
                plan: format!("p{i}"),
                referrer: "ad".into(),
            })
            .await
            .expect("v2 avro");
        expected.insert(
            email("v2avro"),
            (
                format!("p{i}"),
                "ad".into(),
                "v2.user.signedup application/avro".into(),
            ),
        );
    }
    // The raw log holds what each writer wrote: both content types, the Avro marker.
    let raw = common::read_all(&config, &topic, 100, Duration::from_secs(30), true);
    assert_eq!(raw.len(), 100);
    let avro_records = raw
        .iter()
        .filter(|m| {
            common::header_map(m)
                .get("content-type")
                .map(String::as_str)
                == Some("application/avro")
        })
        .count();
    assert_eq!(avro_records, 60);

    // Every Avro writer schema was registered before its first record.
    let stored = SchemaStore::new(&config).list().await.expect("store");
    let mut registered: Vec<(String, u64)> = stored
        .iter()
        .map(|s| (s.message_type.clone(), s.fingerprint()))
        .collect();
    registered.sort();
    let fp = |text: &str| AvroSchema::parse(text).expect("schema").fingerprint;
    let mut want = vec![
        ("v1.user.signedup".to_owned(), fp(V1_SCHEMA)),
        ("v2.user.signedup".to_owned(), fp(V2_OLD_SCHEMA)),
        ("v2.user.signedup".to_owned(), fp(V2_SCHEMA)),
    ];
    want.sort();
    assert_eq!(registered, want);

    // Live run.
    let projection =
        common::run_projection(&config, &pool, ProjectionRunner::new(Arc::new(Signups)));
    let status = projection.status().clone();
    common::wait_caught_up(
        &pool,
        &config,
        "avro_signups.v1",
        &topic,
        2,
        Duration::from_secs(60),
    )
    .await;
    let summary = projection.stop().await.expect("run");
    assert!(
        summary.halted.is_empty() && status.halted().is_empty(),
        "{:?}",
        summary.halted
    );
    let live = rows(&pool, "avro_signups_v1").await;
    assert_eq!(live, expected, "the live view holds every version, upcast");
    let dead: i64 =
        sqlx::query_scalar("SELECT count(*) FROM choreo_meta.dead_letters WHERE consumer = $1")
            .bind("avro_signups.v1")
            .fetch_one(&pool)
            .await
            .expect("dead letters");
    assert_eq!(dead, 0, "nothing was dead-lettered");

    // Rebuild from offset 0: the same view.
    let report = rebuild(
        Arc::new(Signups),
        &config,
        &pool,
        RebuildOptions {
            fresh: true,
            ..RebuildOptions::default()
        },
    )
    .await
    .expect("rebuild");
    assert_eq!(report.records, 100, "{report:?}");
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    assert_eq!(
        rows(&pool, "avro_signups_v1").await,
        live,
        "the rebuilt view equals the live one"
    );
}

/// A schema nobody else uses: a field named after a random id changes the canonical form (a
/// `doc` would not), so the fingerprint is unknown to this process until the store says.
fn unique_schema() -> String {
    let field = format!("x_{}", uuid::Uuid::new_v4().simple());
    format!(
        r#"{{"type":"record","name":"SignedUp","namespace":"test.user","fields":[
            {{"name":"email","type":"string"}},
            {{"name":"plan","type":"string"}},
            {{"name":"{field}","type":"long","default":0}}]}}"#
    )
}

fn raw_producer(config: &KafkaConfig) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", config.brokers())
        .create()
        .expect("raw producer")
}

/// Sends a record with choreo's envelope headers but a payload and content type of our own.
async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    message_type: &str,
    content_type: &str,
    payload: &[u8],
) {
    let id = uuid::Uuid::now_v7().to_string();
    let time = chrono::Utc::now().to_rfc3339();
    let mut headers = OwnedHeaders::new();
    for (k, v) in [
        ("ce_specversion", "1.0"),
        ("ce_id", id.as_str()),
        ("ce_type", message_type),
        ("ce_source", "/raw"),
        ("ce_time", time.as_str()),
        ("ce_subject", key),
        ("content-type", content_type),
        ("ce_correlationid", id.as_str()),
        ("ce_causationid", id.as_str()),
    ] {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("raw send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_writer_schema_refreshes_the_store_then_halts_never_dead_letters() {
    let config = common::kafka("avro-unknown");
    let group = common::unique("avro-unknown");
    let topic = common::create_events_topic(&config, "user", 1).await;
    let dlq = common::create_dlq(&config, &group).await;
    let producer = raw_producer(&config);

    // A newer writer registered its schema in the store (written with a plain producer, so
    // this process has never seen it) and wrote a record with it.
    let newer = AvroSchema::parse(&unique_schema()).expect("newer schema");
    let store = SchemaStore::new(&config);
    let value = serde_json::json!({
        "type": "v2.user.signedup",
        "fingerprint": format!("{:016x}", newer.fingerprint),
        "schema": newer.text,
    });
    // Creates the store topic through the library, then writes the newer schema raw.
    store
        .register("v1.user.signedup", V1_SCHEMA)
        .await
        .expect("register v1");
    producer
        .send(
            FutureRecord::to(store.topic())
                .key(&format!("v2.user.signedup/{:016x}", newer.fingerprint))
                .payload(&serde_json::to_vec(&value).expect("json")),
            Duration::from_secs(10),
        )
        .await
        .expect("raw schema registration");
    assert!(avro::known(newer.fingerprint).is_none());
    let payload = avro::encode(
        "v2.user.signedup",
        &newer,
        &serde_json::json!({"email": "new@example.com", "plan": "pro", newer_field(&newer): 7}),
    );
    // serde_json::Value maps onto a record by field name.
    let payload = payload.expect("encode with the newer schema");
    send_raw(
        &producer,
        &topic,
        "new@example.com",
        "v2.user.signedup",
        "application/avro",
        &payload,
    )
    .await;

    // Then a writer whose schema is in no store at all.
    let stranger = AvroSchema::parse(&unique_schema()).expect("stranger schema");
    let payload = avro::encode(
        "v2.user.signedup",
        &stranger,
        &serde_json::json!({"email": "ghost@example.com", "plan": "x", newer_field(&stranger): 1}),
    )
    .expect("encode");
    send_raw(
        &producer,
        &topic,
        "ghost@example.com",
        "v2.user.signedup",
        "application/avro",
        &payload,
    )
    .await;

    let seen = Arc::new(Mutex::new(Vec::<SignedUp>::new()));
    let handlers = {
        let seen = Arc::clone(&seen);
        EventHandlers::new(group.clone()).on(move |e: Received<SignedUp>| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().expect("lock").push(e.payload);
                Ok::<_, HandlerError>(())
            }
        })
    };
    let handlers = common::run_handlers(&config, handlers);
    let status = handlers.status().clone();
    common::eventually(
        "the partition to halt on the stranger",
        Duration::from_secs(60),
        || !status.halted().is_empty(),
    )
    .await;
    handlers.stop().await.expect("run");

    // The newer writer's record was read after a refresh, resolved to our schema.
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![SignedUp {
            email: "new@example.com".into(),
            plan: "pro".into(),
            referrer: "none".into(),
        }]
    );
    let halted = status.halted();
    let reason = &halted[0].2;
    assert!(
        reason.contains(&format!("{:016x}", stranger.fingerprint))
            && reason.contains("not in the schema store"),
        "{reason}"
    );
    // Halted, not skipped: nothing in the dead letters (read to its end: the handlers have
    // stopped, so whatever they wrote is there).
    let letters = common::read_all(&config, &dlq, 0, Duration::from_secs(30), false);
    assert!(letters.is_empty(), "{} dead letters", letters.len());
}

/// The name of the random field of a [`unique_schema`].
fn newer_field(schema: &AvroSchema) -> String {
    let start = schema.text.find("\"x_").expect("random field") + 1;
    let end = start + schema.text[start..].find('"').expect("end of name");
    schema.text[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_avro_input_is_dead_lettered_with_a_precise_reason() {
    let config = common::kafka("avro-bad");
    let group = common::unique("avro-bad");
    let topic = common::create_events_topic(&config, "user", 1).await;
    let dlq = common::create_dlq(&config, &group).await;
    let producer = raw_producer(&config);
    let schema = avro::declared("v2.user.signedup", V2_SCHEMA).expect("schema");
    let good = avro::encode(
        "v2.user.signedup",
        &schema,
        &SignedUp {
            email: "ok@example.com".into(),
            plan: "p".into(),
            referrer: "r".into(),
        },
    )
    .expect("encode");
    let mut corrupt = good.clone();
    corrupt.truncate(good.len() - 3);
    let json = br#"{"email":"a","plan":"b","referrer":"c"}"#;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "application/avro",
            good[..6].to_vec(),
            "truncated Avro single-object header",
        ),
        ("application/avro", corrupt, "cannot be decoded: Avro: "),
        (
            "application/avro",
            json.to_vec(),
            "not Avro single-object encoding",
        ),
        (
            "application/json",
            good.clone(),
            "content-type should be application/avro",
        ),
        (
            "text/plain",
            json.to_vec(),
            "content-type \"text/plain\" is not supported",
        ),
    ];
    for (i, (content_type, payload, _)) in cases.iter().enumerate() {
        send_raw(
            &producer,
            &topic,
            &format!("bad{i}@example.com"),
            "v2.user.signedup",
            content_type,
            payload,
        )
        .await;
    }
    send_raw(
        &producer,
        &topic,
        "ok@example.com",
        "v2.user.signedup",
        "application/avro",
        &good,
    )
    .await;

    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let handlers = {
        let seen = Arc::clone(&seen);
        EventHandlers::new(group.clone()).on(move |e: Received<SignedUp>| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().expect("lock").push(e.payload.email);
                Ok::<_, HandlerError>(())
            }
        })
    };
    let handlers = common::run_handlers(&config, handlers);
    let status = handlers.status().clone();
    common::eventually("the good record", Duration::from_secs(60), || {
        !seen.lock().expect("lock").is_empty()
    })
    .await;
    handlers.stop().await.expect("run");
    assert!(status.halted().is_empty(), "{:?}", status.halted());
    assert_eq!(
        *seen.lock().expect("lock"),
        vec!["ok@example.com".to_owned()]
    );

    let letters = common::read_all(&config, &dlq, cases.len(), Duration::from_secs(30), false);
    assert_eq!(letters.len(), cases.len());
    for (letter, (content_type, _, want)) in letters.iter().zip(&cases) {
        let error = common::header_map(letter)
            .get("choreo_dlq_error")
            .cloned()
            .unwrap_or_default();
        assert!(
            error.contains(want),
            "{content_type}: {error:?} lacks {want:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_refuses_an_incompatible_schema_naming_the_field_and_direction() {
    let config = common::kafka("avro-compat");
    let store = SchemaStore::new(&config);
    store
        .register("v2.user.signedup", V2_OLD_SCHEMA)
        .await
        .expect("first version");
    store
        .register("v2.user.signedup", V2_SCHEMA)
        .await
        .expect("a field with a default is compatible");
    // Registering again is a no-op.
    store
        .register("v2.user.signedup", V2_SCHEMA)
        .await
        .expect("idempotent");
    assert_eq!(store.list().await.expect("list").len(), 2);

    let no_default = V2_SCHEMA.replace(r#","default":"none""#, "");
    let problems = store
        .check("v2.user.signedup", &no_default)
        .await
        .expect("check");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field.as_deref(), Some("referrer"));
    assert_eq!(problems[0].direction, avro::Direction::Backward);

    let err = store
        .register("v2.user.signedup", &no_default)
        .await
        .expect_err("incompatible");
    let Error::SchemaIncompatible { problems, .. } = &err else {
        panic!("not SchemaIncompatible: {err}");
    };
    assert!(
        problems.len() == 1 && problems[0].contains("referrer") && problems[0].contains("Backward"),
        "{err}"
    );
    // Other types are not compared with it.
    assert!(
        store
            .check("v9.user.signedup", &no_default)
            .await
            .expect("check")
            .is_empty()
    );
}
