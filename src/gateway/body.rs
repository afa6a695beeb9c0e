//! What the gateway reads from, and changes in, a request body before it goes upstream: the
//! model the call is for, the LLM tokens it reserves against its run's budget, the tools it
//! offers the model (read by [`super::tools::offered`]), and for OpenAI
//! streams, usage reporting turned on (without `stream_options.include_usage` a streamed
//! answer reports no usage, and the call could not be charged what it cost). A built-in
//! endpoint's body is read as strict JSON ([`super::strict_json`]) or not forwarded: what the
//! gateway checks must be what the upstream reads.

use axum::body::Bytes;
use serde_json::Value;

use super::endpoints::{Cost, Matched};
use super::strict_json::{self, NotStrict};

/// Request bytes per LLM token in the input estimate: generous for English text and JSON,
/// which run nearer four characters per token.
pub const INPUT_BYTES_PER_TOKEN: u64 = 4;
/// The most completions one request may ask for that the reservation multiplies by.
const MAX_CHOICES: u64 = 128;

/// A request body as it will be sent, and what the gateway read from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shaped {
    /// The body to send.
    pub body: Bytes,
    /// The model the call is for: from the path when the endpoint names it there, else the
    /// body's `model`.
    pub model: Option<String>,
    /// The LLM tokens reserved at admission: the output limit (the body's `max_tokens` or the
    /// like, else `default_max_tokens`) times the completions asked for, plus the body's size
    /// over [`INPUT_BYTES_PER_TOKEN`]; an input estimate only for embeddings, none for free
    /// endpoints.
    pub reservation: u64,
    /// Every tool the body offers the model, in order and uncut (the `tools` claim is checked
    /// against each): bounded only by the body's size.
    pub tools: Vec<String>,
    /// Whether a body was there but not read: an opted-in endpoint's body that is not a
    /// strict JSON object (a file upload, say), in which no tool could be looked for.
    pub unread: bool,
}

/// Why a built-in endpoint's body is not forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// Occurs when the body is not strict JSON.
    #[error(transparent)]
    NotStrict(#[from] NotStrict),
    /// Occurs when the body is JSON but not an object.
    #[error("the body is JSON but not an object")]
    NotObject,
}

fn u64_at(value: &Value, path: &[&str]) -> Option<u64> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_u64)
}

fn output_limit(json: Option<&Value>, default_max_tokens: u64) -> u64 {
    let Some(json) = json else {
        return default_max_tokens;
    };
    let limit = [
        &["max_tokens"][..],
        &["max_completion_tokens"],
        &["max_output_tokens"],
        &["generationConfig", "maxOutputTokens"],
    ]
    .iter()
    .find_map(|path| u64_at(json, path))
    .unwrap_or(default_max_tokens);
    let choices = u64_at(json, &["n"])
        .or_else(|| u64_at(json, &["generationConfig", "candidateCount"]))
        .unwrap_or(1)
        .clamp(1, MAX_CHOICES);
    limit.saturating_mul(choices)
}

/// Reads `body` for an endpoint that matched as `matched`; turns on usage reporting in an
/// OpenAI stream request.
pub fn shape(
    body: Bytes,
    matched: &Matched,
    default_max_tokens: u64,
) -> Result<Shaped, Unreadable> {
    let mut json = if body.is_empty() {
        None
    } else {
        match strict_json::parse(&body) {
            Ok(value) if value.is_object() => Some(value),
            Ok(_) if matched.json_body => return Err(Unreadable::NotObject),
            Err(e) if matched.json_body => return Err(e.into()),
            _ => None,
        }
    };
    let unread = !body.is_empty() && json.is_none();
    let model = matched.model.clone().or_else(|| {
        json.as_ref()
            .and_then(|v| v.get("model"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let tools = json
        .as_ref()
        .map(|v| super::tools::offered(matched.api, v))
        .unwrap_or_default();
    let input = (body.len() as u64).div_ceil(INPUT_BYTES_PER_TOKEN);
    let reservation = match matched.cost {
        Cost::Generation => output_limit(json.as_ref(), default_max_tokens).saturating_add(input),
        Cost::Input => input,
        Cost::Free => 0,
    };
    let streamed = json
        .as_ref()
        .and_then(|v| v.get("stream"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let body = match json.as_mut() {
        Some(object) if matched.usage_opt_in && streamed => {
            let options = object
                .as_object_mut()
                .map(|o| o.entry("stream_options").or_insert(Value::Null));
            if let Some(options) = options {
                if !options.is_object() {
                    *options = Value::Object(serde_json::Map::new());
                }
                if let Some(o) = options.as_object_mut() {
                    o.insert("include_usage".into(), Value::Bool(true));
                }
            }
            serde_json::to_vec(object).map(Bytes::from).unwrap_or(body)
        }
        _ => body,
    };
    Ok(Shaped {
        body,
        model,
        reservation,
        tools,
        unread,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn matched(cost: Cost, usage_opt_in: bool) -> Matched {
        Matched {
            api: super::super::Api::Openai,
            model: None,
            cost,
            usage_opt_in,
            json_body: true,
        }
    }

    #[test]
    fn an_openai_stream_always_asks_for_its_usage() {
        let body = json!({"model": "m", "stream": true, "stream_options": {"include_usage": false, "x": 1}});
        let shaped = shape(
            Bytes::from(body.to_string()),
            &matched(Cost::Generation, true),
            100,
        )
        .unwrap();
        let sent: Value = serde_json::from_slice(&shaped.body).unwrap();
        assert_eq!(
            sent["stream_options"],
            json!({"include_usage": true, "x": 1})
        );
        let body = Bytes::from(json!({"stream": true, "stream_options": 3}).to_string());
        let sent: Value = serde_json::from_slice(
            &shape(body, &matched(Cost::Generation, true), 1)
                .unwrap()
                .body,
        )
        .unwrap();
        assert_eq!(sent["stream_options"], json!({"include_usage": true}));
        let unstreamed = Bytes::from_static(b"{\"model\": \"m\"}");
        assert_eq!(
            shape(unstreamed.clone(), &matched(Cost::Generation, true), 1)
                .unwrap()
                .body,
            unstreamed
        );
    }

    #[test]
    fn the_reservation_is_the_output_limit_plus_an_input_estimate() {
        let body = Bytes::from(json!({"model": "m", "max_tokens": 50, "n": 2}).to_string());
        let input = (body.len() as u64).div_ceil(4);
        let shaped = shape(body.clone(), &matched(Cost::Generation, false), 1_000).unwrap();
        assert_eq!(
            (shaped.reservation, shaped.model.as_deref()),
            (100 + input, Some("m"))
        );
        let gemini = Bytes::from(json!({"generationConfig": {"maxOutputTokens": 7}}).to_string());
        let gemini_input = (gemini.len() as u64).div_ceil(4);
        assert_eq!(
            shape(gemini, &matched(Cost::Generation, false), 1_000)
                .unwrap()
                .reservation,
            7 + gemini_input
        );
        assert_eq!(
            shape(Bytes::new(), &matched(Cost::Generation, false), 1_000)
                .unwrap()
                .reservation,
            1_000
        );
        let opted_in = Matched {
            json_body: false,
            ..matched(Cost::Generation, false)
        };
        assert_eq!(
            shape(Bytes::from_static(b"not json"), &opted_in, 1_000)
                .unwrap()
                .reservation,
            1_000 + 2
        );
        assert_eq!(
            shape(body.clone(), &matched(Cost::Input, false), 9)
                .unwrap()
                .reservation,
            input
        );
        assert_eq!(
            shape(body, &matched(Cost::Free, false), 9)
                .unwrap()
                .reservation,
            0
        );
    }

    #[test]
    fn the_tools_offered_are_read_in_the_upstreams_api() {
        let body = json!({"tools": [{"functionDeclarations": [{"name": "get_weather"}]}, {"googleSearch": {}}]});
        let gemini = Matched {
            api: super::super::Api::Gemini,
            ..matched(Cost::Generation, false)
        };
        let shaped = shape(Bytes::from(body.to_string()), &gemini, 1).unwrap();
        assert_eq!(shaped.tools, ["get_weather", "googleSearch"]);
        let openai = json!({"stream": true, "tools": [{"type": "function", "function": {"name": "get_weather"}}]});
        let shaped = shape(
            Bytes::from(openai.to_string()),
            &matched(Cost::Generation, true),
            1,
        )
        .unwrap();
        assert_eq!(shaped.tools, ["get_weather"]);
    }

    #[test]
    fn a_builtin_endpoints_body_is_a_strict_json_object_or_refused() {
        let gemini = Matched {
            api: super::super::Api::Gemini,
            ..matched(Cost::Generation, false)
        };
        let hidden = br#"{"tools": [{"functionDeclarations": [{"name": "ok", "name": "rm_rf"}]}]}"#;
        let bom = b"\xef\xbb\xbf{\"tools\": [{\"googleSearch\": {}}]}";
        for body in [&hidden[..], bom, br#"{"a": "\udc00"}"#, b"not json"] {
            assert!(
                matches!(
                    shape(Bytes::copy_from_slice(body), &gemini, 1),
                    Err(Unreadable::NotStrict(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            shape(Bytes::from_static(b"[1]"), &gemini, 1),
            Err(Unreadable::NotObject)
        );
        let opted_in = Matched {
            json_body: false,
            ..gemini.clone()
        };
        let upload = shape(Bytes::from_static(b"--boundary\r\n"), &opted_in, 1).unwrap();
        assert!(upload.unread && upload.tools.is_empty());
        let read = shape(Bytes::from_static(br#"{"tools": []}"#), &opted_in, 1).unwrap();
        assert!(!read.unread);
        assert!(!shape(Bytes::new(), &gemini, 1).unwrap().unread);
    }
}
