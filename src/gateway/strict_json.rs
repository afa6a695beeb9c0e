//! JSON read as the strictest upstream reads it, for the bodies the gateway checks and then
//! forwards as they came: UTF-8 with no byte order mark, every string and number decoding (no
//! lone surrogate escape, no number past `f64`), and no object naming a member twice.
//!
//! The gateway decides on what it reads (the model, the tools offered, the tool a `tools/call`
//! names) and the upstream acts on what it reads. Where two parsers could read one body two
//! ways (one keeping the first of two `tools`, the other the last; one skipping what the other
//! refuses), the check would pass on one request and the upstream run another, so such a body
//! is refused instead of guessed at.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The most characters of a member's name quoted in an error (names come from the caller).
const QUOTED: usize = 64;

/// Why a body is not strict JSON, with serde's message (line and column included).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotStrict {
    /// Occurs when the body is not JSON, or holds a string or number that does not decode.
    #[error("the body is not JSON: {0}")]
    Syntax(String),
    /// Occurs when an object names a member twice (JSON that parsers read differently).
    #[error("the body is not strict JSON: {0}")]
    Duplicate(String),
}

/// Reads `body` as one strict JSON value.
pub fn parse(body: &[u8]) -> Result<Value, NotStrict> {
    serde_json::from_slice::<Strict>(body)
        .map(|Strict(value)| value)
        .map_err(|e| match e.classify() {
            // The visitor takes every JSON value, so its only data error is its own.
            serde_json::error::Category::Data => NotStrict::Duplicate(e.to_string()),
            _ => NotStrict::Syntax(e.to_string()),
        })
}

/// A value whose objects each name their members once.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(b)))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(n)))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(n)))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(n)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(s)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict(Value::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                let quoted: String = name.chars().take(QUOTED).collect();
                return Err(de::Error::custom(format_args!(
                    "the member {quoted:?} is named twice in one object"
                )));
            }
            let Strict(value) = map.next_value()?;
            members.insert(name, value);
        }
        Ok(Strict(Value::Object(members)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_member_named_twice_at_any_depth_is_refused() {
        for body in [
            r#"{"model": "a", "model": "b"}"#,
            r#"{"tools": [{"function": {"name": "ok", "name": "rm_rf"}}]}"#,
            r#"[{"x": 1, "y": 2, "x": 1}]"#,
        ] {
            let error = parse(body.as_bytes()).expect_err(body);
            assert!(matches!(error, NotStrict::Duplicate(_)), "{error}");
            assert!(error.to_string().contains("named twice"), "{error}");
        }
        let long = "k".repeat(10_000);
        let error = parse(format!(r#"{{"{long}": 1, "{long}": 2}}"#).as_bytes()).unwrap_err();
        assert!(error.to_string().len() < 200, "the name is quoted cut");
    }

    #[test]
    fn what_a_strict_server_refuses_is_refused_and_the_rest_reads_as_serde_does() {
        for body in [
            &b"\xef\xbb\xbf{}"[..],
            br#"{"a": "\ud800"}"#,
            br#"{"a": 1e400}"#,
            b"{\"a\": \"\xff\"}",
            br#"{"a": NaN}"#,
            b"{} {}",
            b"",
        ] {
            assert!(
                matches!(parse(body), Err(NotStrict::Syntax(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let body = br#" {"a": [1, -2, 2.5, true, null, "\u00e9\ud83d\ude00"], "b": {"c": {}}} "#;
        assert_eq!(
            parse(body).unwrap(),
            serde_json::from_slice::<Value>(body).unwrap()
        );
        assert_eq!(
            parse(br#"{"a": {"x": 1}, "b": {"x": 1}}"#).unwrap(),
            json!({"a": {"x": 1}, "b": {"x": 1}})
        );
    }
}
