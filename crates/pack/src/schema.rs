//! Validation of a manifest against the JSON Schema of format version 1.

use std::fmt;
use std::sync::LazyLock;

use serde_json::Value;

/// The JSON Schema (draft 2020-12) of a format version 1 manifest.
pub const MANIFEST_SCHEMA: &str = include_str!("../schema/manifest-v1.schema.json");

static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: Value =
        serde_json::from_str(MANIFEST_SCHEMA).expect("the embedded manifest schema is JSON");
    // Format assertions are on so that "date" and "date-time" reject impossible dates such as
    // 2026-02-30, which the patterns alone would let through.
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .expect("the embedded manifest schema is a valid draft 2020-12 schema")
});

/// One way in which a manifest breaks the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// The JSON pointer (RFC 6901) of the offending value, empty for the whole manifest.
    pub pointer: String,
    /// The validator's message about the value.
    pub message: String,
}

impl fmt::Display for SchemaViolation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "(the manifest)"
        } else {
            &self.pointer
        };
        write!(formatter, "{pointer}: {}", self.message)
    }
}

/// Returns every way in which `manifest` breaks the schema, or an empty list when it is valid.
pub(crate) fn schema_violations(manifest: &Value) -> Vec<SchemaViolation> {
    VALIDATOR
        .iter_errors(manifest)
        .map(|error| SchemaViolation {
            pointer: error.instance_path().as_str().to_owned(),
            message: error.to_string(),
        })
        .collect()
}
