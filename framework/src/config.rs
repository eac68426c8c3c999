//! Typed configuration. Defaults match the local services of `scripts/dev-services`; one
//! explicit [`KafkaConfig::from_env`] / [`PostgresConfig::from_env`] reads the environment.
//! Secrets never appear in `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::error::{Error, Result};

/// Default bootstrap servers: the broker of `scripts/dev-services`.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// Default database URL: the database of `scripts/dev-services`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://choreo:choreo@127.0.0.1:5432/choreo";

/// How to reach Kafka, plus raw librdkafka properties for everything else (tuning; TLS and SASL
/// are not compiled into librdkafka yet).
#[derive(Clone)]
pub struct KafkaConfig {
    brokers: String,
    namespace: Option<String>,
    client_id: Option<String>,
    properties: BTreeMap<String, String>,
    connect_timeout: Duration,
}

impl KafkaConfig {
    /// A config for the given bootstrap servers (`host:port[,host:port]`).
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            namespace: None,
            client_id: None,
            properties: BTreeMap::new(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Reads `CHOREO_KAFKA_BROKERS` and `CHOREO_KAFKA_PROPERTIES` (`key=value` pairs separated
    /// by `;`, passed straight to librdkafka, e.g. `security.protocol=SSL;ssl.ca.location=...`).
    pub fn from_env() -> Result<Self> {
        let mut config = Self::new(env_or("CHOREO_KAFKA_BROKERS", DEFAULT_BROKERS));
        if let Ok(namespace) = std::env::var("CHOREO_TOPIC_NAMESPACE")
            && !namespace.trim().is_empty()
        {
            config = config.namespace(namespace.trim());
        }
        config.env_properties()
    }

    /// Adds the raw properties of `CHOREO_KAFKA_PROPERTIES`, if set.
    pub(crate) fn env_properties(mut self) -> Result<Self> {
        if let Ok(raw) = std::env::var("CHOREO_KAFKA_PROPERTIES") {
            for pair in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                let (key, value) = parse_property(pair)
                    .map_err(|e| Error::Config(format!("CHOREO_KAFKA_PROPERTIES entry {e}")))?;
                self = self.property(key, value);
            }
        }
        Ok(self)
    }

    /// Prefixes every topic name choreo derives from a message name (`user.events` becomes
    /// `{namespace}.user.events`): one cluster for several environments, or one per test.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The namespace, if one is set.
    pub fn topic_namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The topic name for `base` under the namespace, if any.
    pub fn topic_name(&self, base: &str) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}.{base}"),
            None => base.to_owned(),
        }
    }

    /// Sets `client.id` (shows in broker logs and metrics).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Sets a raw librdkafka property; it overrides what choreo would set.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// How long start-up waits for the cluster before reporting it unreachable.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    pub(crate) fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    /// A librdkafka config with the brokers, then `defaults` (the settings for this kind of
    /// client), then the user's raw properties, which win: for a plain rdkafka client that
    /// must reach the cluster the way choreo's own clients do (TLS, SASL, tuning).
    ///
    /// With `group.protocol=consumer` (KIP-848) among the raw properties, choreo's classic
    /// group settings (`session.timeout.ms`, `heartbeat.interval.ms`,
    /// `partition.assignment.strategy`) are left out: the broker owns them under that
    /// protocol, and librdkafka rejects them.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        if let Some(id) = &self.client_id {
            config.set("client.id", id);
        }
        let consumer_protocol = self
            .properties
            .get("group.protocol")
            .is_some_and(|p| p.eq_ignore_ascii_case("consumer"));
        for (key, value) in defaults {
            if consumer_protocol && CLASSIC_GROUP_KEYS.contains(key) {
                continue;
            }
            config.set(*key, *value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// Group settings of the classic protocol that KIP-848's `group.protocol=consumer` forbids.
const CLASSIC_GROUP_KEYS: &[&str] = &[
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
];

impl Default for KafkaConfig {
    fn default() -> Self {
        Self::new(DEFAULT_BROKERS)
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_key(k) { "***" } else { v.as_str() },
                )
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("namespace", &self.namespace)
            .field("client_id", &self.client_id)
            .field("properties", &properties)
            .finish()
    }
}

/// `key=value` → (key, value), trimmed; the error names only the key (the value may be a
/// secret).
pub(crate) fn parse_property(pair: &str) -> std::result::Result<(String, String), String> {
    match pair.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!(
            "{:?} is not key=value",
            pair.split('=').next().unwrap_or_default()
        )),
    }
}

/// librdkafka keys whose values are secrets (passwords, private keys, tokens, JAAS-like configs).
pub(crate) fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key.pem",
        "private",
        "token",
        "sasl.oauthbearer.config",
        "sasl.jaas",
    ]
    .iter()
    .any(|needle| key.contains(needle))
}

/// How to reach PostgreSQL.
#[derive(Clone)]
pub struct PostgresConfig {
    url: String,
    max_connections: u32,
    connect_timeout: Duration,
}

impl PostgresConfig {
    /// A config for a `postgres://` URL (plain TCP: sqlx's TLS support is not compiled in yet,
    /// so `sslmode=require` fails to connect).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 10,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Reads `CHOREO_DATABASE_URL` and `CHOREO_DATABASE_MAX_CONNECTIONS`.
    pub fn from_env() -> Result<Self> {
        let mut config = Self::new(env_or("CHOREO_DATABASE_URL", DEFAULT_DATABASE_URL));
        if let Ok(raw) = std::env::var("CHOREO_DATABASE_MAX_CONNECTIONS") {
            config.max_connections = raw.parse().map_err(|_| {
                Error::Config(format!(
                    "CHOREO_DATABASE_MAX_CONNECTIONS={raw:?} is not a number"
                ))
            })?;
        }
        Ok(config)
    }

    /// The pool size.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// How long start-up waits for the database.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The URL, password included: pass it on (to a child process, say), never log it.
    pub fn url_with_secret(&self) -> &str {
        &self.url
    }

    /// The URL with any password replaced by `***`, safe to log.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn max_connections_value(&self) -> u32 {
        self.max_connections
    }

    pub(crate) fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self::new(DEFAULT_DATABASE_URL)
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// `scheme://user:secret@host/...` → `scheme://user:***@host/...`; also hides `password=`
/// query parameters.
pub(crate) fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find('/')
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    if let Some(pos) = out.find("password=") {
        let value_start = pos + "password=".len();
        let value_end = out[value_start..]
            .find('&')
            .map_or(out.len(), |i| value_start + i);
        out.replace_range(value_start..value_end, "***");
    }
    out
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_group_protocol_drops_classic_group_settings() {
        let defaults = [
            ("group.id", "g"),
            ("session.timeout.ms", "10000"),
            ("partition.assignment.strategy", "cooperative-sticky"),
        ];
        let classic = KafkaConfig::new("b:9092").client_config(&defaults);
        assert_eq!(classic.get("session.timeout.ms"), Some("10000"));
        let kip848 = KafkaConfig::new("b:9092")
            .property("group.protocol", "consumer")
            .client_config(&defaults);
        assert_eq!(kip848.get("session.timeout.ms"), None);
        assert_eq!(kip848.get("partition.assignment.strategy"), None);
        assert_eq!(kip848.get("group.id"), Some("g"));
        assert_eq!(kip848.get("group.protocol"), Some("consumer"));
    }

    #[test]
    fn debug_hides_secrets() {
        let kafka = KafkaConfig::new("b:9092")
            .property("sasl.password", "hunter2")
            .property("ssl.key.pem", "-----BEGIN PRIVATE KEY-----abc")
            .property("sasl.oauthbearer.config", "principal=x secret=y")
            .property("linger.ms", "5");
        let shown = format!("{kafka:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("BEGIN PRIVATE"), "{shown}");
        assert!(!shown.contains("secret=y"), "{shown}");
        assert!(shown.contains("linger.ms"), "{shown}");

        let pg =
            PostgresConfig::new("postgres://app:s3cr3t@db:5432/x?password=other&sslmode=require");
        let shown = format!("{pg:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("other"),
            "{shown}"
        );
        assert!(shown.contains("postgres://app:***@db:5432/x"), "{shown}");
    }

    #[test]
    fn user_properties_override_defaults() {
        let config = KafkaConfig::new("b:1")
            .property("acks", "1")
            .client_config(&[("acks", "all")]);
        assert_eq!(config.get("acks"), Some("1"));
        assert_eq!(config.get("bootstrap.servers"), Some("b:1"));
    }
}
