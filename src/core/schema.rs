//! The JSON Schema of a spec file, for editors (`# yaml-language-server:
//! $schema=…`), CI and the API. A committed copy lives in
//! `schema/extensions.schema.json`; a test keeps it equal to this output.

use crate::core::spec::SpecFile;
use schemars::generate::SchemaSettings;
use serde_json::Value;

/// Where the committed copy lives, relative to the repository root.
pub const SCHEMA_PATH: &str = "schema/extensions.schema.json";

/// The schema as a JSON value (draft-07, which every editor plugin reads).
pub fn spec_schema() -> Value {
    let generator = SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<SpecFile>();
    let mut value = schema.to_value();
    strip_null(&mut value);
    value
}

/// The schema as the pretty-printed text `schema` prints and the committed copy holds.
pub fn spec_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&spec_schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// Optional fields are written by leaving them out, never as `null`: drop
/// the `null` alternatives schemars adds for `Option<T>`, so an editor
/// flags `context: ~` as the loader does.
fn strip_null(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            for key in ["anyOf", "oneOf"] {
                if let Some(Value::Array(alts)) = map.get_mut(key) {
                    alts.retain(|a| a.get("type").is_none_or(|t| t != "null"));
                }
            }
            for (_, child) in map.iter_mut() {
                strip_null(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}
