//! JSON parsing without duplicate keys, and the RFC 8785 canonical form that is signed.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::PackError;

/// Serialises `value` in the JSON Canonicalization Scheme (RFC 8785): object members sorted by
/// the UTF-16 code units of their names, no whitespace, numbers written as ECMAScript writes
/// them and strings with the minimal escaping.
///
/// Returns the canonicaliser's error if it rejects the value. A `Value` cannot hold NaN or an
/// infinity, so this does not happen for values parsed from JSON text.
pub fn canonical_json(value: &Value) -> Result<Vec<u8>, PackError> {
    serde_json_canonicalizer::to_vec(value).map_err(|error| PackError::Canonicalization {
        reason: error.to_string(),
    })
}

/// Returns the bytes that the signature covers: the canonical form of `manifest` without its
/// top-level `signature` member.
pub(crate) fn signed_bytes(manifest: &Value) -> Result<Vec<u8>, PackError> {
    let mut unsigned = manifest.clone();
    if let Value::Object(members) = &mut unsigned {
        members.remove("signature");
    }
    canonical_json(&unsigned)
}

/// Parses JSON text, rejecting an object that has the same member name twice.
///
/// RFC 8785 requires I-JSON (RFC 7493), which forbids duplicate names. Rejecting them means
/// every reader sees the same manifest as the signer did, whether it keeps the first or the
/// last of two duplicates.
pub(crate) fn parse_json(text: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<UniqueKeys>(text).map(|parsed| parsed.0)
}

/// A JSON value whose objects have no duplicate member names.
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("the number {value} is not finite")))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = sequence.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                return Err(de::Error::custom(format!(
                    "the member name {name:?} appears twice in one object"
                )));
            }
            let UniqueKeys(value) = map.next_value()?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}
