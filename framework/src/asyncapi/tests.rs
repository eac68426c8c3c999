//! The document's shape for each declaration, and the errors of an incomplete one.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AsyncApi;
use crate::aggregate::{Aggregate, Rejection};
use crate::kafka::TopicSpec;

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Open {
    id: String,
}

impl crate::Command for Open {
    const NAME: &'static str = "v1.account.open";
    fn subject(&self) -> String {
        self.id.clone()
    }
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Opened {
    id: String,
}

impl crate::Event for Opened {
    const NAME: &'static str = "v1.account.opened";
    fn subject(&self) -> String {
        self.id.clone()
    }
}

#[derive(Default, Clone)]
struct Account;

impl Aggregate for Account {
    type Command = Open;
    type Event = Opened;
    fn decide(&self, command: &Open) -> Result<Vec<Opened>, Rejection> {
        Ok(vec![Opened {
            id: command.id.clone(),
        }])
    }
    fn apply(&mut self, _: &Opened) {}
}

struct Balances;

impl crate::Projection for Balances {
    type Events = Opened;
    const NAME: &'static str = "balances";
    const VERSION: u32 = 2;
    fn schema_sql(&self) -> &'static str {
        ""
    }
    async fn apply(
        &self,
        _: &mut sqlx::PgConnection,
        _: &[crate::Received<Opened>],
    ) -> Result<(), crate::ApplyError> {
        Ok(())
    }
}

fn bank() -> Value {
    AsyncApi::new("bank", "2.0.0")
        .description("accounts")
        .command::<Open>()
        .event::<Opened>()
        .topic(TopicSpec::commands("account", 3, 2).expect("spec"))
        .topic(TopicSpec::events("account", 3, 2).expect("spec"))
        .processor::<Account>("bank", "account")
        .command_bus::<Open>("teller")
        .projection::<Balances>()
        .build()
        .expect("builds")
}

#[test]
fn a_processor_receives_commands_in_its_group_writes_events_and_replies_where_asked() {
    let doc = bank();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "bank");
    let receive = &doc["operations"]["bank_receive_account_commands"];
    assert_eq!(receive["action"], "receive");
    assert_eq!(receive["channel"]["$ref"], "#/channels/account_commands");
    assert_eq!(
        receive["bindings"]["kafka"]["groupId"]["enum"],
        serde_json::json!(["bank"])
    );
    assert_eq!(
        receive["reply"]["address"]["location"],
        "$message.header#/ce_replyto"
    );
    assert_eq!(receive["reply"]["channel"]["$ref"], "#/channels/replies");
    assert_eq!(doc["channels"]["replies"]["address"], Value::Null);
    let send = &doc["operations"]["bank_send_account_events"];
    assert_eq!(send["action"], "send");
    assert_eq!(
        send["messages"][0]["$ref"],
        "#/channels/account_events/messages/v1_account_opened"
    );
    let channel = &doc["channels"]["account_events"];
    assert_eq!(channel["address"], "account.events");
    assert_eq!(channel["bindings"]["kafka"]["partitions"], 3);
    assert_eq!(channel["bindings"]["kafka"]["replicas"], 2);
}

#[test]
fn a_command_bus_sends_and_reads_its_replies_topic() {
    let doc = bank();
    let send = &doc["operations"]["teller_send_account_commands"];
    assert_eq!(send["action"], "send");
    assert_eq!(
        send["reply"]["channel"]["$ref"],
        "#/channels/teller_replies"
    );
    assert!(send["reply"].get("address").is_none());
    assert_eq!(
        doc["channels"]["teller_replies"]["address"],
        "teller.replies"
    );
    let reply = &doc["components"]["messages"]["v1_command_answered"];
    assert_eq!(reply["x-choreo-kind"], "reply");
    assert_eq!(reply["payload"]["oneOf"].as_array().map(Vec::len), Some(2));
}

#[test]
fn a_projection_reads_in_its_versioned_group_and_messages_carry_the_cloudevents_trait() {
    let doc = bank();
    let receive = &doc["operations"]["balances_v2_receive_account_events"];
    assert_eq!(
        receive["bindings"]["kafka"]["groupId"]["enum"],
        serde_json::json!(["balances.v2"])
    );
    let message = &doc["components"]["messages"]["v1_account_opened"];
    assert_eq!(message["name"], "v1.account.opened");
    assert_eq!(message["contentType"], "application/json");
    assert_eq!(message["x-choreo-kind"], "event");
    assert_eq!(
        message["traits"][0]["$ref"],
        "#/components/messageTraits/cloudEvents"
    );
    assert_eq!(message["bindings"]["kafka"]["key"]["type"], "string");
    assert_eq!(message["payload"]["properties"]["id"]["type"], "string");
    assert!(
        doc["components"]["messageTraits"]["cloudEvents"]["headers"]["properties"]
            .get("ce_sequence")
            .is_some()
    );
}

#[test]
fn a_message_without_a_schema_or_with_a_bad_one_fails_the_build() {
    let err = AsyncApi::new("bank", "1")
        .processor::<Account>("bank", "account")
        .build()
        .expect_err("no schemas");
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(
        err.to_string()
            .contains("message v1.account.open is used but has no schema")
    );
    let err = AsyncApi::new("bank", "1")
        .avro_event::<Opened>()
        .sends::<Opened>("bank")
        .build()
        .expect_err("not avro");
    assert!(err.to_string().contains("has no AVRO_SCHEMA"), "{err}");
}
