//! The settings every service needs, as clap arguments a service's CLI flattens in:
//!
//! ```no_run
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     kafka: choreo::args::KafkaArgs,
//!     #[command(flatten)]
//!     postgres: choreo::args::PostgresArgs,
//! }
//!
//! # fn main() -> choreo::Result<()> {
//! let cli = Cli::parse();
//! let kafka = cli.kafka.config()?;
//! let postgres = cli.postgres.config();
//! # Ok(())
//! # }
//! ```
//!
//! Each flag falls back to the same environment variable as [`KafkaConfig::from_env`] and
//! [`PostgresConfig::from_env`], so `--help` documents both, and a bad value is a parse error
//! naming the flag.

use std::fmt;
use std::path::PathBuf;

use crate::config::{
    DEFAULT_BROKERS, DEFAULT_DATABASE_URL, KafkaConfig, PostgresConfig, SaslMechanism,
    SecurityFlags, SecurityProtocol, is_secret_key, parse_property, redact_url,
};
use crate::error::Result;

const KAFKA: &str = "Kafka";
const POSTGRES: &str = "PostgreSQL";

/// How to reach Kafka: `--brokers`, `--namespace`, the security settings (`--kafka-security-protocol`,
/// `--kafka-ssl-ca-file`, `--kafka-sasl-mechanism`, ...), `--kafka-property KEY=VALUE`.
#[derive(Clone, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap servers: host:port, comma-separated.
    #[arg(long, global = true, env = "CHOREO_KAFKA_BROKERS", value_name = "HOSTS",
          default_value = DEFAULT_BROKERS, help_heading = KAFKA)]
    pub brokers: String,

    /// Prefix of every derived topic name (`{namespace}.user.events`).
    #[arg(long, global = true, env = "CHOREO_TOPIC_NAMESPACE", value_name = "NAME",
          help_heading = KAFKA)]
    pub namespace: Option<String>,

    /// plaintext, ssl, sasl_plaintext or sasl_ssl (librdkafka's security.protocol).
    #[arg(long, global = true, env = "CHOREO_KAFKA_SECURITY_PROTOCOL", value_name = "PROTOCOL",
          value_parser = parse_protocol, help_heading = KAFKA)]
    pub kafka_security_protocol: Option<SecurityProtocol>,

    /// PEM file of the CA(s) the brokers' certificates must chain to (default: the system's).
    #[arg(long, global = true, env = "CHOREO_KAFKA_SSL_CA_FILE", value_name = "FILE",
          help_heading = KAFKA)]
    pub kafka_ssl_ca_file: Option<PathBuf>,

    /// PEM client certificate, for mutual TLS (with --kafka-ssl-key-file).
    #[arg(long, global = true, env = "CHOREO_KAFKA_SSL_CERT_FILE", value_name = "FILE",
          help_heading = KAFKA)]
    pub kafka_ssl_cert_file: Option<PathBuf>,

    /// PEM private key of the client certificate, for mutual TLS.
    #[arg(long, global = true, env = "CHOREO_KAFKA_SSL_KEY_FILE", value_name = "FILE",
          help_heading = KAFKA)]
    pub kafka_ssl_key_file: Option<PathBuf>,

    /// PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI (with the gssapi feature) or OAUTHBEARER.
    #[arg(long, global = true, env = "CHOREO_KAFKA_SASL_MECHANISM", value_name = "MECHANISM",
          value_parser = parse_mechanism, help_heading = KAFKA)]
    pub kafka_sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name.
    #[arg(long, global = true, env = "CHOREO_KAFKA_SASL_USERNAME", value_name = "USER",
          help_heading = KAFKA)]
    pub kafka_sasl_username: Option<String>,

    /// File holding the SASL password (one trailing newline dropped). Or set
    /// CHOREO_KAFKA_SASL_PASSWORD; there is no flag for the password itself, as a command
    /// line is visible to every user of the machine.
    #[arg(long, global = true, env = "CHOREO_KAFKA_SASL_PASSWORD_FILE", value_name = "FILE",
          help_heading = KAFKA)]
    pub kafka_sasl_password_file: Option<PathBuf>,

    /// Java .properties file of raw librdkafka properties; CHOREO_KAFKA_PROPERTIES
    /// (key=value;key=value, `\;` for a `;` in a value) wins over it.
    #[arg(long, global = true, env = "CHOREO_KAFKA_PROPERTIES_FILE", value_name = "FILE",
          help_heading = KAFKA)]
    pub kafka_properties_file: Option<PathBuf>,

    /// A raw librdkafka property (repeatable); wins over `CHOREO_KAFKA_PROPERTIES`, which
    /// wins over the properties file, the typed settings above and choreo's own settings.
    #[arg(long = "kafka-property", global = true, value_name = "KEY=VALUE",
          value_parser = parse_property, help_heading = KAFKA)]
    pub properties: Vec<(String, String)>,
}

fn parse_protocol(raw: &str) -> std::result::Result<SecurityProtocol, String> {
    raw.parse()
}

fn parse_mechanism(raw: &str) -> std::result::Result<SaslMechanism, String> {
    raw.parse()
}

impl KafkaArgs {
    /// The Kafka settings: the flags, with `CHOREO_KAFKA_PROPERTIES` beneath the
    /// `--kafka-property` ones.
    pub fn config(&self) -> Result<KafkaConfig> {
        let flags = SecurityFlags {
            protocol: self.kafka_security_protocol,
            ca_file: self.kafka_ssl_ca_file.clone(),
            cert_file: self.kafka_ssl_cert_file.clone(),
            key_file: self.kafka_ssl_key_file.clone(),
            mechanism: self.kafka_sasl_mechanism,
            username: self.kafka_sasl_username.clone(),
            password_file: self.kafka_sasl_password_file.clone(),
        };
        let mut config = KafkaConfig::new(or_default(&self.brokers, DEFAULT_BROKERS))
            .env_security(&flags)?
            .env_properties_with(self.kafka_properties_file.as_deref())?;
        if let Some(namespace) = self.namespace.as_deref().map(str::trim)
            && !namespace.is_empty()
        {
            config = config.namespace(namespace);
        }
        for (key, value) in &self.properties {
            config = config.property(key, value);
        }
        Ok(config)
    }
}

impl fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret_key(k) { "***" } else { v }))
            .collect();
        f.debug_struct("KafkaArgs")
            .field("brokers", &self.brokers)
            .field("namespace", &self.namespace)
            .field("kafka_security_protocol", &self.kafka_security_protocol)
            .field("kafka_ssl_ca_file", &self.kafka_ssl_ca_file)
            .field("kafka_ssl_cert_file", &self.kafka_ssl_cert_file)
            .field("kafka_ssl_key_file", &self.kafka_ssl_key_file)
            .field("kafka_sasl_mechanism", &self.kafka_sasl_mechanism)
            .field("kafka_sasl_username", &self.kafka_sasl_username)
            .field("kafka_sasl_password_file", &self.kafka_sasl_password_file)
            .field("kafka_properties_file", &self.kafka_properties_file)
            .field("properties", &properties)
            .finish()
    }
}

/// How to reach PostgreSQL: `--database-url`, `--database-max-connections`.
#[derive(Clone, clap::Args)]
pub struct PostgresArgs {
    /// PostgreSQL URL (default: the database of scripts/dev-services).
    #[arg(long, global = true, env = "CHOREO_DATABASE_URL", value_name = "URL",
          default_value = DEFAULT_DATABASE_URL, hide_default_value = true,
          hide_env_values = true, help_heading = POSTGRES)]
    pub database_url: String,

    /// Connections in the pool.
    #[arg(long, global = true, env = "CHOREO_DATABASE_MAX_CONNECTIONS", value_name = "N",
          default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..),
          help_heading = POSTGRES)]
    pub database_max_connections: u32,
}

impl PostgresArgs {
    /// The PostgreSQL settings.
    pub fn config(&self) -> PostgresConfig {
        PostgresConfig::new(or_default(&self.database_url, DEFAULT_DATABASE_URL))
            .max_connections(self.database_max_connections)
    }
}

impl fmt::Debug for PostgresArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresArgs")
            .field("database_url", &redact_url(&self.database_url))
            .field("database_max_connections", &self.database_max_connections)
            .finish()
    }
}

/// An empty value (a variable set to nothing, as `from_env` reads it) means the default.
fn or_default<'a>(value: &'a str, default: &'a str) -> &'a str {
    match value.trim() {
        "" => default,
        value => value,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        postgres: PostgresArgs,
        #[command(subcommand)]
        command: Option<Command>,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Command {
        Run,
    }

    #[test]
    fn flags_become_settings_anywhere_on_the_line() {
        let cli = Cli::try_parse_from([
            "svc",
            "--brokers",
            "k1:9092,k2:9092",
            "run",
            "--namespace",
            "staging",
            "--kafka-property",
            "linger.ms=5",
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-sasl-mechanism",
            "scram-sha-512",
            "--kafka-sasl-username",
            "orders",
            "--kafka-ssl-ca-file",
            "/etc/ca.pem",
            "--kafka-property",
            "sasl.password = hunter2",
            "--database-url",
            "postgres://app:s3cr3t@db/app",
            "--database-max-connections",
            "3",
        ])
        .expect("parses");
        assert!(matches!(cli.command, Some(Command::Run)));
        let kafka = cli.kafka.config().expect("kafka settings");
        assert_eq!(kafka.brokers(), "k1:9092,k2:9092");
        assert_eq!(kafka.topic_name("user.events"), "staging.user.events");
        let client = kafka.client_config(&[("linger.ms", "100")]);
        assert_eq!(client.get("linger.ms"), Some("5"), "the flag wins");
        assert_eq!(client.get("sasl.password"), Some("hunter2"));
        assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(client.get("sasl.username"), Some("orders"));
        assert_eq!(client.get("ssl.ca.location"), Some("/etc/ca.pem"));
        let postgres = cli.postgres.config();
        assert_eq!(postgres.url_with_secret(), "postgres://app:s3cr3t@db/app");
        assert_eq!(postgres.max_connections_value(), 3);

        let shown = format!("{cli:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        assert!(shown.contains("linger.ms"), "{shown}");
    }

    #[test]
    fn empty_values_mean_the_defaults() {
        let cli =
            Cli::try_parse_from(["svc", "--brokers", " ", "--database-url", ""]).expect("parses");
        assert_eq!(
            cli.kafka.config().expect("kafka").brokers(),
            DEFAULT_BROKERS
        );
        assert_eq!(
            cli.postgres.config().url_with_secret(),
            DEFAULT_DATABASE_URL
        );
    }

    #[test]
    fn bad_values_are_parse_errors_that_name_the_flag() {
        let error =
            Cli::try_parse_from(["svc", "--kafka-property", "sasl.password"]).expect_err("no =");
        let text = error.to_string();
        assert!(text.contains("--kafka-property"), "{text}");
        assert!(text.contains("is not key=value"), "{text}");
        let error = Cli::try_parse_from(["svc", "--database-max-connections", "0"])
            .expect_err("zero connections");
        assert!(
            error.to_string().contains("--database-max-connections"),
            "{error}"
        );
        let error = Cli::try_parse_from(["svc", "--kafka-security-protocol", "tls"])
            .expect_err("not a protocol");
        assert!(
            error.to_string().contains("--kafka-security-protocol"),
            "{error}"
        );
        let error = Cli::try_parse_from(["svc", "--kafka-sasl-mechanism", "md5"])
            .expect_err("not a mechanism");
        assert!(error.to_string().contains("SCRAM-SHA-256"), "{error}");
    }

    #[test]
    fn help_lists_every_setting_under_its_service() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "Kafka:",
            "--brokers",
            "CHOREO_KAFKA_BROKERS",
            "--kafka-property",
            "--kafka-security-protocol",
            "CHOREO_KAFKA_SASL_PASSWORD_FILE",
            "CHOREO_KAFKA_SASL_PASSWORD",
            "--kafka-properties-file",
            "PostgreSQL:",
            "--database-url",
            "CHOREO_DATABASE_URL",
        ] {
            assert!(help.contains(needle), "{needle} missing from:\n{help}");
        }
        assert!(
            !help.contains("choreo:choreo"),
            "the default URL's password is hidden"
        );
    }
}
