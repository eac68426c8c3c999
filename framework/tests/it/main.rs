//! Integration tests against the real Kafka and PostgreSQL started by
//! `scripts/dev-services up` (the README's test command starts them). One test binary.

#[cfg(feature = "testing")]
mod aggregates;
mod avro;
#[cfg(feature = "testing")]
mod broker;
mod cli;
#[cfg(feature = "testing")]
mod cluster;
mod common;
#[cfg(all(feature = "failpoints", feature = "testing"))]
mod drills;
mod errors;
mod groups;
mod handlers;
#[cfg(feature = "testing")]
mod hostile;
mod interop;
#[cfg(all(feature = "failpoints", feature = "testing"))]
mod mechanisms;
mod migrations;
#[cfg(feature = "testing")]
mod outages;
#[cfg(all(feature = "failpoints", feature = "testing"))]
mod process;
#[cfg(feature = "testing")]
mod projections;
mod publish;
#[cfg(all(feature = "failpoints", feature = "testing"))]
mod reactors;
mod secure;
mod static_members;
mod topics;
