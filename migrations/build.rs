//! Rebuilds the crate when a migration file is added or changed: `sqlx::migrate!` embeds
//! `sql/` at compile time, and cargo does not watch that folder by itself.

fn main() {
    println!("cargo:rerun-if-changed=sql");
}
