//! The JSON-RPC 2.0 messages MCP's streamable HTTP carries, as far as the gateway reads them:
//! a caller's message parsed into a type (its kind, method, id, and the tool a `tools/call`
//! names), the JSON-RPC error the gateway answers with, and the `tools` array of a
//! `tools/list` result filtered to what a token may call.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::gateway::strict_json::{self, NotStrict};

/// JSON-RPC's "invalid request" code: a batch, or a message that is not one.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC's "parse error" code: a body that is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC's "invalid params" code, which the gateway answers a `tools/call` of a tool the
/// token does not allow with: what the MCP SDKs raise to the caller as a failed call (an
/// error result, not a transport failure), as servers do for an unknown tool.
pub const INVALID_PARAMS: i64 = -32602;

/// A message a caller sent, as the gateway reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A request (`method` and `id`): the server answers it.
    Request {
        /// Its method.
        method: String,
        /// Its id, echoed in the answer.
        id: Value,
        /// For `tools/call`, the tool named by `params.name`.
        tool: Option<String>,
    },
    /// A notification (`method`, no `id`).
    Notification {
        /// Its method.
        method: String,
    },
    /// A response to a request of the server's (sampling, elicitation, roots).
    Response,
}

/// Why a caller's body is not one JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Occurs when the body is not JSON.
    #[error("the body is not JSON")]
    NotJson,
    /// Occurs on a batch (an array), which only the 2025-03-26 revision had.
    #[error("JSON-RPC batches are not forwarded; send one message per request")]
    Batch,
    /// Occurs when the body is JSON but not a JSON-RPC 2.0 message.
    #[error("not a JSON-RPC 2.0 message: {0}")]
    NotMessage(&'static str),
}

impl Malformed {
    /// The JSON-RPC error code answering it.
    pub fn code(&self) -> i64 {
        match self {
            Malformed::NotJson => PARSE_ERROR,
            Malformed::Batch | Malformed::NotMessage(_) => INVALID_REQUEST,
        }
    }
}

/// The members of a message the gateway reads; the rest passes untouched. Read straight from
/// the bytes, once they read as strict JSON (no member named twice at any depth): the gateway
/// forwards the bytes as they came, and a server whose parser keeps the first of two `name`s
/// would otherwise run a tool other than the one checked.
#[derive(Deserialize)]
struct Wire<'a> {
    jsonrpc: Option<String>,
    method: Option<String>,
    /// `Some(Value::Null)` for `"id": null`, which is not an absent id.
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    result: Option<IgnoredAny>,
    error: Option<IgnoredAny>,
}

/// A member that is there, `null` included (a plain `Option` reads `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// MCP's ids: a string or an integer, never `null` (unlike plain JSON-RPC's).
fn is_mcp_id(id: &Value) -> bool {
    id.is_string() || id.is_i64() || id.is_u64()
}

/// MCP names every notification `notifications/…`. A message without an id under any other
/// method is a request missing its id, which a lenient server might still run: a `tools/call`
/// without one would otherwise pass unchecked.
const NOTIFICATIONS: &str = "notifications/";

/// `tools/call`'s params, as far as the gateway reads them.
#[derive(Deserialize)]
struct CallParams {
    name: String,
}

/// Whether `json` (valid JSON) is an object: a struct is read from an array too, by position,
/// which no JSON-RPC server would read the same way.
fn is_object(json: &[u8]) -> bool {
    json.trim_ascii_start().first() == Some(&b'{')
}

impl Incoming {
    /// Parses one message; batches are refused.
    pub fn parse(body: &[u8]) -> Result<Incoming, Malformed> {
        // Read strictly throughout, the members the gateway skips too: a strict server refuses
        // what does not decode, and two servers may read a member named twice two ways.
        let text = std::str::from_utf8(body).map_err(|_| Malformed::NotJson)?;
        strict_json::parse(body).map_err(|e| match e {
            NotStrict::Syntax(_) => Malformed::NotJson,
            NotStrict::Duplicate(_) => Malformed::NotMessage("a member is named twice"),
        })?;
        if !is_object(body) {
            return Err(match body.trim_ascii_start().first() {
                Some(b'[') => Malformed::Batch,
                _ => Malformed::NotMessage("not an object"),
            });
        }
        let wire: Wire<'_> = serde_json::from_str(text).map_err(|_| {
            Malformed::NotMessage("not an object with the members' types, each once")
        })?;
        if wire.jsonrpc.as_deref() != Some("2.0") {
            return Err(Malformed::NotMessage("jsonrpc must be \"2.0\""));
        }
        if wire.id.as_ref().is_some_and(|id| !is_mcp_id(id)) {
            return Err(Malformed::NotMessage("an id is a string or an integer"));
        }
        match (wire.method, wire.id) {
            (Some(method), Some(id)) => {
                let tool = if method == "tools/call" {
                    let params: CallParams = wire
                        .params
                        .filter(|p| is_object(p.get().as_bytes()))
                        .and_then(|p| serde_json::from_str(p.get()).ok())
                        .ok_or(Malformed::NotMessage("tools/call needs params.name, once"))?;
                    Some(params.name)
                } else {
                    None
                };
                Ok(Incoming::Request { method, id, tool })
            }
            (Some(method), None) if method.starts_with(NOTIFICATIONS) => {
                Ok(Incoming::Notification { method })
            }
            (Some(_), None) => Err(Malformed::NotMessage(
                "a request needs an id; only notifications/… go without one",
            )),
            (None, Some(_)) if wire.result.is_some() != wire.error.is_some() => {
                Ok(Incoming::Response)
            }
            _ => Err(Malformed::NotMessage(
                "neither a request, a notification nor a response",
            )),
        }
    }

    /// Its method, for a request or a notification.
    pub fn method(&self) -> Option<&str> {
        match self {
            Incoming::Request { method, .. } | Incoming::Notification { method } => Some(method),
            Incoming::Response => None,
        }
    }
}

/// A JSON-RPC error response to `id` (null when the request's id is unknown).
pub fn error(id: &Value, code: i64, message: &str) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// What a server's message said about a tool call: its result's `isError`, or a JSON-RPC
/// error (`true`); `None` when `message` is not the answer to `id`.
pub fn call_failed(message: &Value, id: &Value) -> Option<bool> {
    if message.get("id") != Some(id) {
        return None;
    }
    if message.get("error").is_some() {
        return Some(true);
    }
    let result = message.get("result")?;
    Some(
        result
            .get("isError")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    )
}

/// Keeps only the tools `allowed` lets through in `message`, when it is a result listing
/// tools (`result.tools`); whether it was one (and so may have changed).
pub fn filter_tools(message: &mut Value, allowed: &dyn Fn(&str) -> bool) -> bool {
    let Some(tools) = message
        .get_mut("result")
        .and_then(|r| r.get_mut("tools"))
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    tools.retain(|tool| {
        tool.get("name")
            .and_then(Value::as_str)
            .is_some_and(allowed)
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_are_told_apart_and_a_tool_call_names_its_tool() {
        let call = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{}}}"#;
        assert_eq!(
            Incoming::parse(call),
            Ok(Incoming::Request {
                method: "tools/call".into(),
                id: json!(7),
                tool: Some("search".into())
            })
        );
        let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert_eq!(
            Incoming::parse(note).unwrap().method(),
            Some("notifications/initialized")
        );
        let answer = br#"{"jsonrpc":"2.0","id":"s1","result":{}}"#;
        assert_eq!(Incoming::parse(answer), Ok(Incoming::Response));
        for (body, refused) in [
            (
                &b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]"[..],
                Malformed::Batch,
            ),
            (b"{nope", Malformed::NotJson),
            // Not JSON a strict server reads: a lone surrogate, even in a name the gateway
            // skips, and a number past f64.
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"na\ude005":1}}"#,
                Malformed::NotJson,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"n":1e400}}"#,
                Malformed::NotJson,
            ),
        ] {
            assert_eq!(Incoming::parse(body), Err(refused));
        }
        for body in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#,
            br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":1}"#,
            br#"{"jsonrpc":"2.0","method":7}"#,
            b"42",
            // A member twice: servers differ on which one counts.
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name":"delete"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"x"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
            // Positional params name no tool.
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["search"]}"#,
            // A request without an id is no notification: a lenient server may run it.
            br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete"}}"#,
            br#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"delete"}}"#,
            br#"{"jsonrpc":"2.0","method":"ping"}"#,
            // MCP's ids are strings or integers.
            br#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":true,"result":{}}"#,
        ] {
            assert!(
                matches!(Incoming::parse(body), Err(Malformed::NotMessage(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn only_allowed_tools_stay_listed_and_call_outcomes_are_read() {
        let mut listed = json!({"jsonrpc":"2.0","id":2,"result":{"tools":[
            {"name":"search"},{"name":"delete_everything"},{"title":"no name"}]}});
        assert!(filter_tools(&mut listed, &|name| name == "search"));
        assert_eq!(listed["result"]["tools"], json!([{"name":"search"}]));
        let mut other = json!({"jsonrpc":"2.0","id":3,"result":{"content":[]}});
        assert!(!filter_tools(&mut other, &|_| false));
        assert_eq!(other["result"]["content"], json!([]));

        let id = json!(9);
        let ok = json!({"jsonrpc":"2.0","id":9,"result":{"content":[],"isError":false}});
        let tool_error = json!({"jsonrpc":"2.0","id":9,"result":{"isError":true}});
        let rpc_error = json!({"jsonrpc":"2.0","id":9,"error":{"code":-32602,"message":"x"}});
        let progress = json!({"jsonrpc":"2.0","method":"notifications/progress"});
        assert_eq!(call_failed(&ok, &id), Some(false));
        assert_eq!(call_failed(&tool_error, &id), Some(true));
        assert_eq!(call_failed(&rpc_error, &id), Some(true));
        assert_eq!(call_failed(&progress, &id), None);
        assert_eq!(call_failed(&ok, &json!("9")), None);
    }
}
