//! Parsing a signed JSON document (a manifest, a channel state): the structure is checked by
//! serde (the first error stops it, with its JSON path), unknown fields are collected, and the
//! caller then checks its rules between fields. One parser for every document kind.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How unknown fields are treated: the server refuses them (typos must not ship), agents
/// ignore them (old agents keep working with new servers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownFields {
    Reject,
    Ignore,
}

/// One broken rule, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// JSON path, e.g. `components[1].install_path`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a document's bytes did not give a value of its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseFailure {
    /// Not JSON at all, or trailing bytes.
    Syntax(String),
    /// A field has the wrong type or an invalid value.
    Structure { path: String, message: String },
    /// Fields the type does not know (only with [`UnknownFields::Reject`]).
    UnknownFields(Vec<String>),
}

/// Deserialises `bytes` as `T`, tracking the JSON path of the first error and the fields
/// that were ignored.
pub(crate) fn parse_json<T: DeserializeOwned>(
    bytes: &[u8],
    unknown: UnknownFields,
) -> Result<T, ParseFailure> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut ignored = Vec::new();
    let mut on_ignored = |path: serde_ignored::Path<'_>| ignored.push(path.to_string());
    let tracked = serde_ignored::Deserializer::new(&mut de, &mut on_ignored);
    let value: T = serde_path_to_error::deserialize(tracked).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ParseFailure::Syntax(inner.to_string())
        } else {
            ParseFailure::Structure {
                path,
                message: strip_position(&inner.to_string()),
            }
        }
    })?;
    de.end().map_err(|e| ParseFailure::Syntax(e.to_string()))?;
    if unknown == UnknownFields::Reject && !ignored.is_empty() {
        return Err(ParseFailure::UnknownFields(ignored));
    }
    Ok(value)
}

/// Pretty JSON with a trailing newline: the bytes that get signed.
pub(crate) fn to_signed_bytes(value: &impl serde::Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

/// A type's JSON Schema, pretty, with a trailing newline (the committed schema files).
pub(crate) fn schema_text(schema: &schemars::Schema) -> String {
    let mut out = serde_json::to_string_pretty(schema).unwrap_or_default();
    out.push('\n');
    out
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}
