//! Topic declarations and the admin calls that create or verify them.
//!
//! An existing topic is verified, never changed: a different partition count would move keys
//! to other partitions (splitting aggregates), a different retention could delete the log of
//! record. Both are errors for an operator to resolve.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::RDKafkaErrorCode as Code;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::message::check_topic_name;
use crate::message::topics as names;

/// What a topic is for; it decides the settings choreo gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// `{entity}.events`: a log of record, kept forever.
    Events,
    /// `{entity}.commands`: requests, kept 7 days.
    Commands,
    /// `{service}.replies`: answers to commands, kept 1 day.
    Replies,
    /// `{group}.dlq`: dead letters, kept forever.
    DeadLetters,
    /// Anything else, with broker defaults.
    Other,
}

/// A declared topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name, as declared (`ensure` puts the namespace in front).
    pub name: String,
    /// The partition count; never changed once the topic exists.
    pub partitions: i32,
    /// The replication factor; a different one on an existing topic is only warned about.
    pub replication: i32,
    /// What the topic is for.
    pub kind: TopicKind,
    /// Topic configs set on creation and verified afterwards.
    pub configs: BTreeMap<String, String>,
}

impl TopicSpec {
    /// A topic with broker-default settings.
    pub fn new(name: impl Into<String>, partitions: i32, replication: i32) -> Result<Self> {
        let name = name.into();
        check_topic_name(&name)?;
        if partitions < 1 {
            return Err(Error::Config(format!(
                "topic {name}: partition count must be >= 1, not {partitions}"
            )));
        }
        if replication < 1 {
            return Err(Error::Config(format!(
                "topic {name}: replication factor must be >= 1, not {replication}"
            )));
        }
        Ok(Self {
            name,
            partitions,
            replication,
            kind: TopicKind::Other,
            configs: BTreeMap::new(),
        })
    }

    /// `{entity}.events`: `retention.ms=-1`, `cleanup.policy=delete`.
    pub fn events(entity: &str, partitions: i32, replication: i32) -> Result<Self> {
        Ok(Self::new(names::events(entity), partitions, replication)?
            .kind(TopicKind::Events)
            .config("retention.ms", "-1")
            .config("cleanup.policy", "delete"))
    }

    /// `{entity}.commands`: kept 7 days.
    pub fn commands(entity: &str, partitions: i32, replication: i32) -> Result<Self> {
        Ok(Self::new(names::commands(entity), partitions, replication)?
            .kind(TopicKind::Commands)
            .config("retention.ms", &(7 * 24 * 3600 * 1000_i64).to_string())
            .config("cleanup.policy", "delete"))
    }

    /// `{service}.replies`: kept 1 day.
    pub fn replies(service: &str, partitions: i32, replication: i32) -> Result<Self> {
        Ok(Self::new(names::replies(service), partitions, replication)?
            .kind(TopicKind::Replies)
            .config("retention.ms", &(24 * 3600 * 1000_i64).to_string())
            .config("cleanup.policy", "delete"))
    }

    /// `{group}.dlq`: kept forever; one partition is plenty for dead letters.
    pub fn dead_letters(group: &str, replication: i32) -> Result<Self> {
        Ok(Self::new(names::dead_letters(group), 1, replication)?
            .kind(TopicKind::DeadLetters)
            .config("retention.ms", "-1")
            .config("cleanup.policy", "delete"))
    }

    /// `{group}.redrive`: dead letters fed back to that group only (`choreo dlq redrive`);
    /// kept 7 days, long enough to investigate, not forever.
    pub fn redrive(group: &str, replication: i32) -> Result<Self> {
        Ok(Self::new(names::redrive(group), 1, replication)?
            .config("retention.ms", "604800000")
            .config("cleanup.policy", "delete"))
    }

    /// Sets a topic config.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.configs.insert(key.to_owned(), value.to_owned());
        self
    }

    fn kind(mut self, kind: TopicKind) -> Self {
        self.kind = kind;
        self
    }
}

/// What `ensure` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicState {
    /// The topic did not exist and was created.
    Created,
    /// The topic existed and matches its declaration (a different replication factor is only
    /// warned about).
    AlreadyMatching,
}

/// What the cluster says about a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// The topic's full name.
    pub name: String,
    /// The partition count.
    pub partitions: i32,
    /// The largest replica count among its partitions.
    pub replication: i32,
    /// Every topic config the broker reports a value for, defaults included.
    pub configs: BTreeMap<String, String>,
}

/// Creates, verifies, lists and deletes topics.
pub struct TopicAdmin {
    admin: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
    /// The config's namespace: `ensure` puts it in front of each declared name.
    namespace: Option<String>,
}

impl std::fmt::Debug for TopicAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicAdmin").finish_non_exhaustive()
    }
}

impl TopicAdmin {
    /// Connects; fails with a clear error when Kafka cannot be reached.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        super::check_reachable(config)?;
        let admin = super::client::base(config, &[])
            .create()
            .map_err(|e| Error::ClientCreate {
                client: "admin",
                source: e,
            })?;
        Ok(Self {
            admin: Arc::new(admin),
            timeout: Duration::from_secs(30),
            namespace: config.topic_namespace().map(str::to_owned),
        })
    }

    /// Creates each missing topic and verifies each existing one against its declaration.
    /// A declared name is a base name (`user.events`): the config's namespace goes in front
    /// (`staging.user.events`), unless the name already starts with it.
    pub async fn ensure(&self, specs: &[TopicSpec]) -> Result<Vec<TopicState>> {
        let mut states = Vec::with_capacity(specs.len());
        for spec in specs {
            let spec = TopicSpec {
                name: self.full_name(&spec.name),
                ..spec.clone()
            };
            states.push(self.ensure_one(&spec).await?);
        }
        Ok(states)
    }

    /// `name` in the namespace (the name as `ensure` creates it).
    pub fn full_name(&self, name: &str) -> String {
        match &self.namespace {
            Some(ns) if !name.starts_with(&format!("{ns}.")) => format!("{ns}.{name}"),
            _ => name.to_owned(),
        }
    }

    async fn ensure_one(&self, spec: &TopicSpec) -> Result<TopicState> {
        if let Some(existing) = self.describe(&spec.name).await? {
            verify(spec, &existing)?;
            return Ok(TopicState::AlreadyMatching);
        }
        let mut new = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(spec.replication),
        );
        for (key, value) in &spec.configs {
            new = new.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| Error::kafka("create topics", e))?;
        for result in results {
            match result {
                Ok(_) => {}
                // Someone else created it meanwhile: verify theirs.
                Err((_, Code::TopicAlreadyExists)) => {
                    let existing = self.wait_for_metadata(&spec.name).await?;
                    verify(spec, &existing)?;
                    return Ok(TopicState::AlreadyMatching);
                }
                Err((topic, code)) => {
                    return Err(Error::TopicRefused {
                        action: "create",
                        topic,
                        code,
                    });
                }
            }
        }
        self.wait_for_metadata(&spec.name).await?;
        Ok(TopicState::Created)
    }

    /// Metadata can lag behind a create; wait until the topic shows with all its partitions.
    async fn wait_for_metadata(&self, name: &str) -> Result<TopicDescription> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(found) = self.describe(name).await? {
                return Ok(found);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("topic {name} to appear"),
                    after: self.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Partition count, replication and configs of a topic, or `None` when it does not exist.
    pub async fn describe(&self, name: &str) -> Result<Option<TopicDescription>> {
        let metadata = self.metadata(Some(name)).await?;
        // Metadata holds raw pointers (not Send): read what we need before the next await.
        let (partitions, replication) = {
            let Some(topic) = metadata.topics().iter().find(|t| t.name() == name) else {
                return Ok(None);
            };
            match topic.error().map(RDKafkaErrorCode::from) {
                None => {}
                Some(Code::UnknownTopicOrPartition | Code::UnknownTopic) => return Ok(None),
                Some(code) => {
                    return Err(Error::TopicRefused {
                        action: "describe",
                        topic: name.to_owned(),
                        code,
                    });
                }
            }
            if topic.partitions().is_empty() {
                return Ok(None);
            }
            let replication = topic
                .partitions()
                .iter()
                .map(|p| p.replicas().len() as i32)
                .max()
                .unwrap_or(0);
            (topic.partitions().len() as i32, replication)
        };
        drop(metadata);
        let options = AdminOptions::new().request_timeout(Some(self.timeout));
        let resources = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(name)], &options)
            .await
            .map_err(|e| Error::kafka("describe configs", e))?;
        let mut configs = BTreeMap::new();
        for resource in resources {
            let resource = resource.map_err(|e| {
                Error::kafka("describe configs", rdkafka::error::KafkaError::AdminOp(e))
            })?;
            for entry in resource.entries {
                if let Some(value) = entry.value {
                    configs.insert(entry.name, value);
                }
            }
        }
        Ok(Some(TopicDescription {
            name: name.to_owned(),
            partitions,
            replication,
            configs,
        }))
    }

    /// `fetch_metadata` blocks: it runs on the blocking pool, off the async threads.
    async fn metadata(&self, topic: Option<&str>) -> Result<rdkafka::metadata::Metadata> {
        let admin = Arc::clone(&self.admin);
        let topic = topic.map(str::to_owned);
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(topic.as_deref(), timeout))
            .await
            .map_err(|e| Error::TaskFailed {
                task: "metadata task".into(),
                reason: e.to_string(),
            })?
            .map_err(|e| Error::kafka("fetch metadata", e))
    }

    /// Names of all topics (internal ones excluded).
    pub async fn list(&self) -> Result<Vec<String>> {
        let metadata = self.metadata(None).await?;
        let mut names: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|n| !n.starts_with("__"))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes topics (tests and development).
    pub async fn delete(&self, names: &[&str]) -> Result<()> {
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = self
            .admin
            .delete_topics(names, &options)
            .await
            .map_err(|e| Error::kafka("delete topics", e))?;
        for result in results {
            if let Err((topic, code)) = result
                && code != Code::UnknownTopicOrPartition
            {
                return Err(Error::TopicRefused {
                    action: "delete",
                    topic,
                    code,
                });
            }
        }
        Ok(())
    }
}

/// Compares an existing topic with its declaration.
fn verify(spec: &TopicSpec, existing: &TopicDescription) -> Result<()> {
    if existing.partitions != spec.partitions {
        return Err(Error::TopicMismatch {
            topic: spec.name.clone(),
            mismatch: format!(
                "it has {} partitions, the code declares {}; choreo never repartitions a topic \
                 (keys would move to other partitions): fix the declaration or migrate the topic",
                existing.partitions, spec.partitions
            ),
        });
    }
    for (key, want) in &spec.configs {
        let have = existing
            .configs
            .get(key)
            .map(String::as_str)
            .unwrap_or("<unset>");
        if have != want {
            return Err(Error::TopicMismatch {
                topic: spec.name.clone(),
                mismatch: format!(
                    "{key} is {have}, the code declares {want}; choreo does not change it"
                ),
            });
        }
    }
    if existing.replication != spec.replication {
        tracing::warn!(
            topic = %spec.name,
            existing = existing.replication,
            declared = spec.replication,
            "replication factor differs from the declaration"
        );
    }
    Ok(())
}
