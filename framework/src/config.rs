//! Typed configuration. Defaults match the local services of `scripts/dev-services`; one
//! explicit [`KafkaConfig::from_env`] / [`PostgresConfig::from_env`] reads the environment.
//! Secrets never appear in `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::error::{Error, Result};

/// Default bootstrap servers: the broker of `scripts/dev-services`.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// Default database URL: the database of `scripts/dev-services`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://choreo:choreo@127.0.0.1:5432/choreo";

/// How to reach Kafka: the brokers, typed security settings (TLS, mutual TLS, SASL), plus raw
/// librdkafka properties for everything else. librdkafka is built with OpenSSL, SASL/PLAIN and
/// SASL/SCRAM-SHA-256/512 (GSSAPI with the `gssapi` feature).
#[derive(Clone)]
pub struct KafkaConfig {
    brokers: String,
    namespace: Option<String>,
    client_id: Option<String>,
    security: Security,
    properties: BTreeMap<String, String>,
    connect_timeout: Duration,
}

/// The typed security settings; each maps to one librdkafka property.
#[derive(Clone, Default)]
struct Security {
    protocol: Option<SecurityProtocol>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    mechanism: Option<SaslMechanism>,
    username: Option<String>,
    password: Option<Secret>,
}

/// A secret string: `Debug` and `Display` show `***`.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How the clients talk to the brokers (librdkafka's `security.protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no authentication (the default).
    Plaintext,
    /// TLS; with a client certificate and key, mutual TLS.
    Ssl,
    /// SASL authentication without TLS (the password travels in the clear with PLAIN).
    SaslPlaintext,
    /// SASL authentication over TLS: what managed clusters use.
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
}

impl FromStr for SecurityProtocol {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "plaintext" => Ok(Self::Plaintext),
            "ssl" => Ok(Self::Ssl),
            "sasl_plaintext" => Ok(Self::SaslPlaintext),
            "sasl_ssl" => Ok(Self::SaslSsl),
            _ => Err(format!(
                "{s:?} is not a security protocol (plaintext, ssl, sasl_plaintext, sasl_ssl)"
            )),
        }
    }
}

/// The SASL mechanism (librdkafka's `sasl.mechanism`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    /// User and password sent as they are: only over TLS.
    Plain,
    /// SCRAM with SHA-256.
    ScramSha256,
    /// SCRAM with SHA-512.
    ScramSha512,
    /// Kerberos; needs the `gssapi` feature.
    Gssapi,
    /// OAuth bearer tokens (configure the token source with raw properties).
    OauthBearer,
}

impl SaslMechanism {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::Gssapi => "GSSAPI",
            Self::OauthBearer => "OAUTHBEARER",
        }
    }
}

impl FromStr for SaslMechanism {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_uppercase().replace('_', "-").as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            "GSSAPI" => Ok(Self::Gssapi),
            "OAUTHBEARER" => Ok(Self::OauthBearer),
            _ => Err(format!(
                "{s:?} is not a SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI, OAUTHBEARER)"
            )),
        }
    }
}

impl KafkaConfig {
    /// A config for the given bootstrap servers (`host:port[,host:port]`).
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            namespace: None,
            client_id: None,
            security: Security::default(),
            properties: BTreeMap::new(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Reads the environment:
    ///
    /// - `CHOREO_KAFKA_BROKERS`, `CHOREO_TOPIC_NAMESPACE`;
    /// - the typed security settings: `CHOREO_KAFKA_SECURITY_PROTOCOL`
    ///   (`plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`), `CHOREO_KAFKA_SSL_CA_FILE`,
    ///   `CHOREO_KAFKA_SSL_CERT_FILE` and `CHOREO_KAFKA_SSL_KEY_FILE` (mutual TLS),
    ///   `CHOREO_KAFKA_SASL_MECHANISM` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `GSSAPI`,
    ///   `OAUTHBEARER`), `CHOREO_KAFKA_SASL_USERNAME`, and the password from
    ///   `CHOREO_KAFKA_SASL_PASSWORD` or the file named by `CHOREO_KAFKA_SASL_PASSWORD_FILE`
    ///   (one trailing newline dropped);
    /// - raw librdkafka properties: `CHOREO_KAFKA_PROPERTIES_FILE` (a Java `.properties`
    ///   file), then `CHOREO_KAFKA_PROPERTIES` (`key=value;key=value`, where `\;` is a `;`
    ///   inside a value and `\\` a backslash), which win over the typed settings.
    pub fn from_env() -> Result<Self> {
        let mut config = Self::new(env_or("CHOREO_KAFKA_BROKERS", DEFAULT_BROKERS));
        if let Ok(namespace) = std::env::var("CHOREO_TOPIC_NAMESPACE")
            && !namespace.trim().is_empty()
        {
            config = config.namespace(namespace.trim());
        }
        config
            .env_security(&SecurityFlags::default())?
            .env_properties()
    }

    /// Applies the typed security settings: each flag's value if given, else its environment
    /// variable.
    pub(crate) fn env_security(mut self, flags: &SecurityFlags) -> Result<Self> {
        let protocol = match flags.protocol {
            Some(protocol) => Some(protocol),
            None => env_parsed("CHOREO_KAFKA_SECURITY_PROTOCOL")?,
        };
        if let Some(protocol) = protocol {
            self = self.security_protocol(protocol);
        }
        if let Some(path) = flags
            .ca_file
            .clone()
            .or_else(|| env_set("CHOREO_KAFKA_SSL_CA_FILE").map(PathBuf::from))
        {
            self = self.ssl_ca_file(path);
        }
        let cert = flags
            .cert_file
            .clone()
            .or_else(|| env_set("CHOREO_KAFKA_SSL_CERT_FILE").map(PathBuf::from));
        let key = flags
            .key_file
            .clone()
            .or_else(|| env_set("CHOREO_KAFKA_SSL_KEY_FILE").map(PathBuf::from));
        match (cert, key) {
            (Some(cert), Some(key)) => self = self.ssl_client_cert(cert, key),
            (None, None) => {}
            _ => {
                return Err(Error::Config(
                    "mutual TLS needs both CHOREO_KAFKA_SSL_CERT_FILE and CHOREO_KAFKA_SSL_KEY_FILE"
                        .into(),
                ));
            }
        }
        let mechanism = match flags.mechanism {
            Some(mechanism) => Some(mechanism),
            None => env_parsed("CHOREO_KAFKA_SASL_MECHANISM")?,
        };
        if let Some(mechanism) = mechanism {
            self = self.sasl_mechanism(mechanism);
        }
        if let Some(user) = flags
            .username
            .clone()
            .or_else(|| env_set("CHOREO_KAFKA_SASL_USERNAME"))
        {
            self.security.username = Some(user);
        }
        // A file given as a flag wins; from the environment, the password or its file, not both.
        let password = match &flags.password_file {
            Some(path) => Some(read_secret_file(path)?),
            None => match (
                env_set("CHOREO_KAFKA_SASL_PASSWORD"),
                env_set("CHOREO_KAFKA_SASL_PASSWORD_FILE"),
            ) {
                (Some(_), Some(_)) => {
                    return Err(Error::Config(
                        "both CHOREO_KAFKA_SASL_PASSWORD and CHOREO_KAFKA_SASL_PASSWORD_FILE are set: keep one"
                            .into(),
                    ));
                }
                (Some(password), None) => Some(password),
                (None, Some(path)) => Some(read_secret_file(Path::new(&path))?),
                (None, None) => None,
            },
        };
        if let Some(password) = password {
            self.security.password = Some(Secret(password));
        }
        Ok(self)
    }

    /// Adds the raw properties of `CHOREO_KAFKA_PROPERTIES_FILE`, then of
    /// `CHOREO_KAFKA_PROPERTIES`, if set.
    pub(crate) fn env_properties(self) -> Result<Self> {
        self.env_properties_with(None)
    }

    /// As [`Self::env_properties`], with a properties file given by a flag instead of the
    /// environment.
    pub(crate) fn env_properties_with(mut self, file: Option<&Path>) -> Result<Self> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env_set("CHOREO_KAFKA_PROPERTIES_FILE").map(PathBuf::from));
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::Config(format!(
                    "cannot read the Kafka properties file {}: {e}",
                    path.display()
                ))
            })?;
            for (key, value) in parse_properties_file(&text) {
                self = self.property(key, value);
            }
        }
        if let Ok(raw) = std::env::var("CHOREO_KAFKA_PROPERTIES") {
            for (key, value) in parse_property_list(&raw)
                .map_err(|e| Error::Config(format!("CHOREO_KAFKA_PROPERTIES entry {e}")))?
            {
                self = self.property(key, value);
            }
        }
        Ok(self)
    }

    /// Sets `security.protocol`.
    pub fn security_protocol(mut self, protocol: SecurityProtocol) -> Self {
        self.security.protocol = Some(protocol);
        self
    }

    /// The CA certificate(s), PEM, that the brokers' certificates must chain to
    /// (`ssl.ca.location`); without it, the system's trust store.
    pub fn ssl_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.security.ca_file = Some(path.into());
        self
    }

    /// A client certificate and its private key, PEM, for mutual TLS
    /// (`ssl.certificate.location`, `ssl.key.location`).
    pub fn ssl_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.security.cert_file = Some(cert.into());
        self.security.key_file = Some(key.into());
        self
    }

    /// Sets `sasl.mechanism`.
    pub fn sasl_mechanism(mut self, mechanism: SaslMechanism) -> Self {
        self.security.mechanism = Some(mechanism);
        self
    }

    /// SASL user and password (`sasl.username`, `sasl.password`); the password is never shown.
    pub fn sasl_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.security.username = Some(username.into());
        self.security.password = Some(Secret(password.into()));
        self
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
        self.security.apply(&mut config);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

impl Security {
    fn apply(&self, config: &mut ClientConfig) {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        if let Some(protocol) = self.protocol {
            config.set("security.protocol", protocol.as_str());
        }
        if let Some(ca) = &self.ca_file {
            config.set("ssl.ca.location", path(ca));
        }
        if let Some(cert) = &self.cert_file {
            config.set("ssl.certificate.location", path(cert));
        }
        if let Some(key) = &self.key_file {
            config.set("ssl.key.location", path(key));
        }
        if let Some(mechanism) = self.mechanism {
            config.set("sasl.mechanism", mechanism.as_str());
        }
        if let Some(user) = &self.username {
            config.set("sasl.username", user);
        }
        if let Some(password) = &self.password {
            config.set("sasl.password", &password.0);
        }
    }
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("protocol", &self.protocol)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// The security settings given as flags (`args.rs`); a `None` falls back to the environment.
#[derive(Clone, Debug, Default)]
pub(crate) struct SecurityFlags {
    pub(crate) protocol: Option<SecurityProtocol>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) mechanism: Option<SaslMechanism>,
    pub(crate) username: Option<String>,
    pub(crate) password_file: Option<PathBuf>,
}

/// Reads a secret from a file, dropping one trailing newline; the error names the file, never
/// its content.
fn read_secret_file(path: &Path) -> Result<String> {
    let mut text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "cannot read the SASL password file {}: {e}",
            path.display()
        ))
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(Error::Config(format!(
            "the SASL password file {} is empty",
            path.display()
        )));
    }
    Ok(text)
}

/// `key=value;key=value` → pairs; `\;` is a `;` and `\\` a `\` inside an entry (any other
/// backslash stays as it is). Entries are trimmed; empty ones are skipped.
pub(crate) fn parse_property_list(raw: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut entries = Vec::new();
    let mut current = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some(';' | '\\')) => {
                current.extend(chars.next());
            }
            ';' => entries.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    entries.push(current);
    entries
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(parse_property)
        .collect()
}

/// A Java `.properties` text → pairs, in order: `#` and `!` comment lines, `key=value`,
/// `key: value` or `key value`, a trailing `\` continuing the logical line, and the escapes
/// `\t \n \r \f \uXXXX` (any other escaped character stands for itself).
pub(crate) fn parse_properties_file(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut lines = text.lines();
    while let Some(first) = lines.next() {
        let first = first.trim_start();
        if first.is_empty() || first.starts_with('#') || first.starts_with('!') {
            continue;
        }
        let mut logical = String::new();
        let mut line = first.to_owned();
        loop {
            let trailing = line.chars().rev().take_while(|c| *c == '\\').count();
            if trailing % 2 == 1 {
                line.pop();
                logical.push_str(&line);
                match lines.next() {
                    Some(next) => line = next.trim_start().to_owned(),
                    None => break,
                }
            } else {
                logical.push_str(&line);
                break;
            }
        }
        pairs.push(split_properties_line(&logical));
    }
    pairs
}

/// One logical `.properties` line → (key, value), unescaped.
fn split_properties_line(line: &str) -> (String, String) {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    let mut key_end = chars.len();
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '=' | ':' | ' ' | '\t' | '\x0c' => {
                key_end = i;
                break;
            }
            _ => i += 1,
        }
    }
    let key_end = key_end.min(chars.len());
    let mut j = key_end;
    while j < chars.len() && matches!(chars[j], ' ' | '\t' | '\x0c') {
        j += 1;
    }
    if j < chars.len() && matches!(chars[j], '=' | ':') {
        j += 1;
        while j < chars.len() && matches!(chars[j], ' ' | '\t' | '\x0c') {
            j += 1;
        }
    }
    let key: String = chars[..key_end].iter().collect();
    let value: String = chars[j.min(chars.len())..].iter().collect();
    (unescape_properties(&key), unescape_properties(&value))
}

fn unescape_properties(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(c) if hex.len() == 4 => out.push(c),
                    _ => {
                        out.push_str("\\u");
                        out.push_str(&hex);
                    }
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
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
            .field("security", &self.security)
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
    /// A config for a `postgres://` URL. TLS (native-tls, the system's OpenSSL) follows the
    /// URL's `sslmode` (`disable`, `prefer` the default, `require`, `verify-ca`, `verify-full`)
    /// and `sslrootcert` (the CA file), as with libpq.
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

/// The variable's value, unless it is unset or blank.
fn env_set(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// The variable's value parsed, unless it is unset or blank; the error names the variable.
fn env_parsed<T: FromStr<Err = String>>(key: &str) -> Result<Option<T>> {
    env_set(key)
        .map(|raw| {
            raw.parse()
                .map_err(|e| Error::Config(format!("{key}: {e}")))
        })
        .transpose()
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
    fn a_property_list_carries_escaped_semicolons() {
        let pairs = parse_property_list(
            r"sasl.oauthbearer.config=a=1\;b=2; linger.ms = 5 ;;ssl.ca.location=C:\\ca.pem;x=a\b",
        )
        .expect("parses");
        assert_eq!(
            pairs,
            vec![
                ("sasl.oauthbearer.config".into(), "a=1;b=2".into()),
                ("linger.ms".into(), "5".into()),
                ("ssl.ca.location".into(), r"C:\ca.pem".into()),
                ("x".into(), r"a\b".into()),
            ]
        );
        let error = parse_property_list("linger.ms=5;sasl.password").expect_err("no =");
        assert!(error.contains("sasl.password"), "{error}");
        assert!(parse_property_list("").expect("empty").is_empty());
    }

    #[test]
    fn a_properties_file_reads_as_java_does() {
        let text = "# comment\n! also a comment\n\n  security.protocol = SASL_SSL\n\
                    sasl.mechanism:SCRAM-SHA-256\nsasl.username alice\n\
                    sasl.jaas.config=a;b\\\n    c\\=d\nkey\\ with\\ spaces=v\\u00e9\\t!\nempty=\n";
        let pairs = parse_properties_file(text);
        assert_eq!(
            pairs,
            vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "SCRAM-SHA-256".into()),
                ("sasl.username".into(), "alice".into()),
                ("sasl.jaas.config".into(), "a;bc=d".into()),
                ("key with spaces".into(), "v\u{e9}\t!".into()),
                ("empty".into(), String::new()),
            ]
        );
    }

    #[test]
    fn typed_security_settings_become_librdkafka_properties() {
        let config = KafkaConfig::new("b:9093")
            .security_protocol(SecurityProtocol::SaslSsl)
            .ssl_ca_file("/etc/ca.pem")
            .ssl_client_cert("/etc/client.pem", "/etc/client.key")
            .sasl_mechanism(SaslMechanism::ScramSha512)
            .sasl_credentials("orders", "hunter2");
        let client = config.client_config(&[]);
        assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(client.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(
            client.get("ssl.certificate.location"),
            Some("/etc/client.pem")
        );
        assert_eq!(client.get("ssl.key.location"), Some("/etc/client.key"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(client.get("sasl.username"), Some("orders"));
        assert_eq!(client.get("sasl.password"), Some("hunter2"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("orders") && shown.contains("ScramSha512"),
            "{shown}"
        );
        // A raw property wins over the typed one.
        let raw = config
            .property("sasl.mechanism", "PLAIN")
            .client_config(&[]);
        assert_eq!(raw.get("sasl.mechanism"), Some("PLAIN"));
    }

    #[test]
    fn protocol_and_mechanism_names_parse_in_any_case() {
        assert_eq!("SASL_SSL".parse(), Ok(SecurityProtocol::SaslSsl));
        assert_eq!(
            "sasl-plaintext".parse(),
            Ok(SecurityProtocol::SaslPlaintext)
        );
        assert_eq!("scram-sha-256".parse(), Ok(SaslMechanism::ScramSha256));
        assert_eq!("SCRAM_SHA_512".parse(), Ok(SaslMechanism::ScramSha512));
        assert!("tls".parse::<SecurityProtocol>().is_err());
        assert!("md5".parse::<SaslMechanism>().is_err());
    }

    #[test]
    fn the_password_file_is_read_and_its_content_never_shown() {
        let dir = std::env::temp_dir().join(format!("choreo-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("password");
        std::fs::write(&file, "s3cr3t;with=odd chars\n").expect("write");
        let flags = SecurityFlags {
            protocol: Some(SecurityProtocol::SaslSsl),
            mechanism: Some(SaslMechanism::ScramSha256),
            username: Some("orders".into()),
            password_file: Some(file.clone()),
            ..SecurityFlags::default()
        };
        let config = KafkaConfig::new("b:1")
            .env_security(&flags)
            .expect("settings");
        let client = config.client_config(&[]);
        assert_eq!(client.get("sasl.password"), Some("s3cr3t;with=odd chars"));
        assert!(!format!("{config:?}").contains("s3cr3t"));

        std::fs::write(&file, "").expect("write");
        let error = KafkaConfig::new("b:1")
            .env_security(&flags)
            .expect_err("empty file");
        assert!(error.to_string().contains("is empty"), "{error}");
        let missing = SecurityFlags {
            password_file: Some(dir.join("absent")),
            ..SecurityFlags::default()
        };
        let error = KafkaConfig::new("b:1")
            .env_security(&missing)
            .expect_err("no file");
        assert!(error.to_string().contains("absent"), "{error}");
        let half = SecurityFlags {
            cert_file: Some(dir.join("cert.pem")),
            ..SecurityFlags::default()
        };
        let error = KafkaConfig::new("b:1")
            .env_security(&half)
            .expect_err("no key");
        assert!(error.to_string().contains("KEY_FILE"), "{error}");
        std::fs::remove_dir_all(&dir).ok();
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
