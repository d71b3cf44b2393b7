//! The committed JSON Schema must be what the types generate. Regenerate with
//! `UPDATE_SCHEMA=1 cargo test -p qx-core --test it schema_drift`.

use std::path::PathBuf;

#[test]
fn committed_schema_matches_types() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schema/manifest.schema.json");
    let generated = qx_core::manifest::json_schema();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("write schema");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schema/manifest.schema.json is out of date with the manifest types; \
         run `UPDATE_SCHEMA=1 cargo test -p qx-core --test it schema_drift` and commit the result"
    );
}
