//! The committed JSON Schemas must be what the types generate. Regenerate with
//! `UPDATE_SCHEMA=1 cargo test -p qx-core --test it schema_drift`.

use std::path::PathBuf;

fn check(file: &str, generated: String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../schema")
        .join(file);
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("write schema");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schema/{file} is out of date with the types; \
         run `UPDATE_SCHEMA=1 cargo test -p qx-core --test it schema_drift` and commit the result"
    );
}

#[test]
fn committed_schema_matches_types() {
    check("manifest.schema.json", qx_core::manifest::json_schema());
}

#[test]
fn committed_channel_schema_matches_types() {
    check("channel.schema.json", qx_core::channel::json_schema());
}
