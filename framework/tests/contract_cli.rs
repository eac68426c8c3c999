//! `choreo contract check OLD NEW` as a process: exit codes and the lines it prints.

use std::path::PathBuf;
use std::process::{Command, Output};

use choreo::asyncapi::AsyncApi;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Shipped {
    order_id: String,
    carrier: String,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct ShippedWithoutCarrier {
    order_id: String,
    #[serde(default)]
    tracking: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct ShippedWithTracking {
    order_id: String,
    carrier: String,
    #[serde(default)]
    tracking: Option<String>,
}

macro_rules! shipped {
    ($($ty:ty),*) => {$(
        impl choreo::Event for $ty {
            const NAME: &'static str = "v1.order.shipped";
            fn subject(&self) -> String {
                self.order_id.clone()
            }
        }
    )*};
}
shipped!(Shipped, ShippedWithoutCarrier, ShippedWithTracking);

fn write<E: choreo::Event + schemars::JsonSchema>(dir: &std::path::Path, name: &str) -> PathBuf {
    let document = AsyncApi::new("shipping", "1.0.0")
        .event::<E>()
        .sends::<E>("shipping")
        .build()
        .expect("builds");
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(&document).expect("json")).expect("write");
    path
}

fn check(old: &PathBuf, new: &PathBuf) -> (Option<i32>, String) {
    let Output { status, stdout, .. } = Command::new(env!("CARGO_BIN_EXE_choreo"))
        .args(["contract", "check"])
        .arg(old)
        .arg(new)
        .output()
        .expect("choreo runs");
    (status.code(), String::from_utf8_lossy(&stdout).into_owned())
}

#[test]
fn a_breaking_change_fails_with_one_line_per_problem_and_an_addition_passes() {
    let dir = std::env::temp_dir().join(format!("choreo-contract-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    let old = write::<Shipped>(&dir, "old.json");
    let breaking = write::<ShippedWithoutCarrier>(&dir, "breaking.json");
    let additive = write::<ShippedWithTracking>(&dir, "additive.json");

    let (code, out) = check(&old, &breaking);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.lines().any(|l| l
            == "breaking: v1.order.shipped: field carrier: removed (or renamed): consumers not yet upgraded expect it, and the name cannot be reused; publish the change as v2.order.shipped instead"),
        "{out}"
    );

    let (code, out) = check(&old, &additive);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("note: v1.order.shipped: field tracking: optional field added"),
        "{out}"
    );

    let (code, _) = check(&old, &dir.join("missing.json"));
    assert_eq!(code, Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
