//! Tool calling as the gateway sees it: the tools a request offers the model, read from its
//! body in its API's shape (for the `tools` claim and the call log), and the tools the model's
//! answer calls, read from the answer or from each event of its stream (for the call log).
//!
//! A tool is known by the name a `tools` claim's globs match: a function's own name, a
//! provider's built-in tool by its type (OpenAI's `web_search`, Gemini's `googleSearch`), an
//! MCP server the provider is told to reach by its label. A tool the gateway cannot name is
//! named `""`, which only a claim allowing every tool (`*`) matches: a shape the gateway does
//! not understand is refused rather than waved through.
//!
//! The names kept for the call log are bounded ([`MAX_NAMES`] of [`MAX_NAME`] characters): an
//! answer must not grow a record without bound. The claim is checked against every tool the
//! request offers, uncut.

use serde_json::Value;

use super::endpoints::Api;

/// Tool names kept per call and list (offered, called); later ones are not recorded.
pub const MAX_NAMES: usize = 64;
/// Characters kept of a tool name in the call log.
pub const MAX_NAME: usize = 128;

/// The name of a tool whose shape names none.
const UNNAMED: &str = "";

/// `name`, cut to [`MAX_NAME`] characters.
fn cut(name: &str) -> &str {
    name.char_indices()
        .nth(MAX_NAME)
        .and_then(|(end, _)| name.get(..end))
        .unwrap_or(name)
}

/// Appends `name` (cut to [`MAX_NAME`] characters) unless `names` holds [`MAX_NAMES`] already;
/// whether it was kept.
pub fn keep(names: &mut Vec<String>, name: &str) -> bool {
    if names.len() >= MAX_NAMES {
        return false;
    }
    names.push(cut(name).to_owned());
    true
}

/// The first [`MAX_NAMES`] of `names`, each cut to [`MAX_NAME`]: what the call log keeps.
pub fn bounded(names: &[String]) -> Vec<String> {
    names
        .iter()
        .take(MAX_NAMES)
        .map(|n| cut(n).to_owned())
        .collect()
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

fn items(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Every entry of the request's `key` list, named by `name`; a `key` that is present but not
/// a list is one unnamed tool.
fn each(body: &Value, key: &str, out: &mut Vec<String>, name: impl Fn(&Value, &mut Vec<String>)) {
    match body.get(key) {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => list.iter().for_each(|item| name(item, out)),
        Some(_) => out.push(UNNAMED.to_owned()),
    }
}

fn push(out: &mut Vec<String>, name: Option<&str>) {
    out.push(name.unwrap_or(UNNAMED).to_owned());
}

/// The names a tool object gives itself at `paths`, every one of them: an upstream that reads
/// another field than the gateway expects must not run a tool the claim was never asked
/// about, so a tool naming itself twice is checked under both names. When it names itself
/// nowhere, its `type` (a built-in tool), unless the type needs a name (`needs_name`), which
/// makes it unnamed.
fn named(tool: &Value, paths: &[&[&str]], needs_name: &[&str], out: &mut Vec<String>) {
    let before = out.len();
    for path in paths {
        if let Some(name) = str_at(tool, path) {
            out.push(name.to_owned());
        }
    }
    if out.len() == before {
        let kind = str_at(tool, &["type"]).filter(|kind| !needs_name.contains(kind));
        push(out, kind);
    }
}

/// An OpenAI tool: chat completions' `function.name` (or `custom.name`), the Responses API's
/// `name`, an `mcp` tool's `server_label`, a built-in tool's `type`.
fn openai_tool(tool: &Value, out: &mut Vec<String>) {
    named(
        tool,
        &[
            &["function", "name"],
            &["custom", "name"],
            &["name"],
            &["server_label"],
        ],
        &["function", "custom", "mcp"],
        out,
    );
}

/// An Anthropic tool: its `name` (client tools, and server tools such as
/// `web_search_20250305`, named `web_search`), an MCP toolset's `mcp_server_name`, else its
/// `type`.
fn anthropic_tool(tool: &Value, out: &mut Vec<String>) {
    named(
        tool,
        &[&["name"], &["mcp_server_name"]],
        &["custom", "mcp_toolset"],
        out,
    );
}

/// `google_search` as `googleSearch`: Gemini takes both spellings of a field.
fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// A Gemini `Tool`: the names of its `functionDeclarations`, and each built-in it turns on
/// (`googleSearch`, `codeExecution`, `urlContext`, …) by its key.
fn gemini_tool(tool: &Value, out: &mut Vec<String>) {
    let Some(fields) = tool.as_object() else {
        return out.push(UNNAMED.to_owned());
    };
    for (key, value) in fields {
        let key = camel(key);
        if key == "functionDeclarations" {
            match value.as_array() {
                Some(declarations) => declarations
                    .iter()
                    .for_each(|d| push(out, str_at(d, &["name"]))),
                None => out.push(UNNAMED.to_owned()),
            }
        } else {
            out.push(key);
        }
    }
}

/// The tools a request `body` offers the model, every one of them in order, as `api` lays
/// them out: OpenAI's `tools` (chat completions and Responses) and legacy `functions`,
/// Anthropic's `tools` and `mcp_servers`, Gemini's `tools`. A request that brings tools the
/// gateway cannot see — a Responses stored `prompt`, a Gemini `cachedContent`, each of which
/// may hold tools of its own — offers an unnamed tool too.
pub fn offered(api: Api, body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match api {
        Api::Openai => {
            each(body, "tools", &mut out, openai_tool);
            each(body, "functions", &mut out, |f, out| {
                push(out, str_at(f, &["name"]));
            });
            // Completions' `prompt` is text; the Responses API's is a stored prompt's id.
            if body.get("prompt").is_some_and(Value::is_object) {
                out.push(UNNAMED.to_owned());
            }
        }
        Api::Anthropic => {
            each(body, "tools", &mut out, anthropic_tool);
            each(body, "mcp_servers", &mut out, |s, out| {
                push(out, str_at(s, &["name"]));
            });
        }
        Api::Gemini => {
            each(body, "tools", &mut out, gemini_tool);
            if body.get("cachedContent").is_some() || body.get("cached_content").is_some() {
                out.push(UNNAMED.to_owned());
            }
        }
    }
    out
}

/// The first of `offered` that no glob of `allowed` (a `tools` claim) matches.
pub fn first_refused<'a>(allowed: &[&str], offered: &'a [String]) -> Option<&'a str> {
    offered
        .iter()
        .map(String::as_str)
        .find(|name| !tailpass_verify::glob::any(allowed.iter().copied(), name))
}

/// Why a request's tools are refused, for its `error_description`.
pub fn refused_description(tool: &str) -> String {
    if tool.is_empty() {
        "the request offers a tool the gateway cannot name, which this token does not allow"
            .to_owned()
    } else {
        format!("tool {:?} is not allowed for this token", cut(tool))
    }
}

/// What a streamed call was already recorded as, so a stream repeating it (a chat delta
/// naming its function again, a Responses item's `.done` after its `.added`) counts it once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A chat completion stream's tool call, by choice and call index.
    Delta(u64, u64),
    /// A Responses API output item, by id.
    Item(String),
}

/// Responses API output items that are tool calls and are named by their `name`; every other
/// item type ending in `_call` (`web_search_call`, `code_interpreter_call`, …) is a built-in
/// tool's call, named by its type.
const NAMED_ITEMS: &[&str] = &["function_call", "custom_tool_call", "mcp_call"];
/// Anthropic content blocks that call a tool, named by their `name`.
const TOOL_BLOCKS: &[&str] = &["tool_use", "server_tool_use", "mcp_tool_use"];

/// The tools an answer calls, in order, read from whole answers and from stream events in
/// every API's shape (they do not overlap): OpenAI chat `choices[].message.tool_calls` and
/// streamed `choices[].delta.tool_calls` (named in their first delta), Responses `output[]`
/// items and streamed `response.output_item.added`/`.done`, Anthropic `content[]` blocks and
/// streamed `content_block_start`, Gemini `candidates[].content.parts[].functionCall` (and
/// `executableCode`, a call of `codeExecution`). At most [`MAX_NAMES`] are kept.
#[derive(Debug, Default)]
pub struct CallScanner {
    calls: Vec<String>,
    seen: Vec<Seen>,
}

impl CallScanner {
    fn call(&mut self, name: &str, seen: Option<Seen>) {
        if let Some(seen) = seen {
            if self.seen.contains(&seen) {
                return;
            }
            if keep(&mut self.calls, name) {
                self.seen.push(seen);
            }
        } else {
            keep(&mut self.calls, name);
        }
    }

    /// Sees one JSON answer or one stream event.
    pub fn see(&mut self, value: &Value) {
        if self.calls.len() >= MAX_NAMES {
            return;
        }
        if let Some(answers) = value.as_array() {
            // Gemini streams without `alt=sse` as one JSON array of answers.
            return answers.iter().for_each(|answer| self.see(answer));
        }
        for choice in items(value.get("choices")) {
            self.chat_choice(choice);
        }
        for item in items(value.get("output")) {
            self.response_item(item, false);
        }
        match str_at(value, &["type"]) {
            Some("response.output_item.added") => {
                if let Some(item) = value.get("item") {
                    self.response_item(item, false);
                }
            }
            Some("response.output_item.done") => {
                if let Some(item) = value.get("item") {
                    self.response_item(item, true);
                }
            }
            Some("content_block_start") => {
                if let Some(block) = value.get("content_block") {
                    self.content_block(block);
                }
            }
            _ => {}
        }
        for block in items(value.get("content")) {
            self.content_block(block);
        }
        for candidate in items(value.get("candidates")) {
            for part in items(candidate.get("content").and_then(|c| c.get("parts"))) {
                if let Some(name) = str_at(part, &["functionCall", "name"]) {
                    self.call(name, None);
                } else if part.get("executableCode").is_some() {
                    self.call("codeExecution", None);
                }
            }
        }
    }

    fn chat_choice(&mut self, choice: &Value) {
        if let Some(message) = choice.get("message") {
            for call in items(message.get("tool_calls")) {
                let name = str_at(call, &["function", "name"])
                    .or_else(|| str_at(call, &["custom", "name"]));
                self.call(name.unwrap_or(UNNAMED), None);
            }
            if let Some(name) = str_at(message, &["function_call", "name"]) {
                self.call(name, None);
            }
        }
        if let Some(delta) = choice.get("delta") {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            for call in items(delta.get("tool_calls")) {
                let name = str_at(call, &["function", "name"])
                    .or_else(|| str_at(call, &["custom", "name"]));
                if let Some(name) = name.filter(|n| !n.is_empty()) {
                    let seen = call
                        .get("index")
                        .and_then(Value::as_u64)
                        .map(|i| Seen::Delta(index, i));
                    self.call(name, seen);
                }
            }
            if let Some(name) = str_at(delta, &["function_call", "name"]).filter(|n| !n.is_empty())
            {
                // The legacy stream has one function call per choice.
                self.call(name, Some(Seen::Delta(index, u64::MAX)));
            }
        }
    }

    /// A Responses API output item; a `.done` one only when its `.added` went unseen.
    fn response_item(&mut self, item: &Value, done: bool) {
        let Some(kind) = str_at(item, &["type"]) else {
            return;
        };
        let name = if NAMED_ITEMS.contains(&kind) {
            str_at(item, &["name"]).unwrap_or(UNNAMED)
        } else if kind.ends_with("_call") {
            kind
        } else {
            return;
        };
        let seen = str_at(item, &["id"]).map(|id| Seen::Item(cut(id).to_owned()));
        if done && seen.is_none() {
            return;
        }
        self.call(name, seen);
    }

    fn content_block(&mut self, block: &Value) {
        if let Some(kind) = str_at(block, &["type"])
            && TOOL_BLOCKS.contains(&kind)
        {
            self.call(str_at(block, &["name"]).unwrap_or(UNNAMED), None);
        }
    }

    /// The calls seen, in order.
    pub fn calls(&self) -> &[String] {
        &self.calls
    }

    /// The calls seen, taken.
    pub fn take(&mut self) -> Vec<String> {
        self.seen.clear();
        std::mem::take(&mut self.calls)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn openai_chat_and_responses_tools_are_named_as_declared() {
        let chat = json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
                {"type": "custom", "custom": {"name": "code_exec", "format": {"type": "text"}}}
            ],
            "functions": [{"name": "legacy_lookup", "parameters": {}}]
        });
        assert_eq!(
            offered(Api::Openai, &chat),
            ["get_weather", "code_exec", "legacy_lookup"]
        );
        let responses = json!({
            "model": "gpt-4.1",
            "input": "hi",
            "tools": [
                {"type": "function", "name": "get_weather", "parameters": {}, "strict": true},
                {"type": "web_search"},
                {"type": "file_search", "vector_store_ids": ["vs_1"]},
                {"type": "code_interpreter", "container": {"type": "auto"}},
                {"type": "mcp", "server_label": "deepwiki", "server_url": "https://mcp.deepwiki.com/mcp", "require_approval": "never"},
                {"type": "mcp"},
                {"no": "type"},
                7
            ]
        });
        assert_eq!(
            offered(Api::Openai, &responses),
            [
                "get_weather",
                "web_search",
                "file_search",
                "code_interpreter",
                "deepwiki",
                "",
                "",
                ""
            ],
            "an MCP server without a label is no name a claim can allow"
        );
        assert!(offered(Api::Openai, &json!({"tools": null})).is_empty());
        let twice = json!({"tools": [{"type": "function", "name": "delete_repo", "function": {"name": "get_weather"}}]});
        assert_eq!(
            offered(Api::Openai, &twice),
            ["get_weather", "delete_repo"],
            "a tool naming itself twice is checked under both names"
        );
        let stored = json!({"prompt": {"id": "pmpt_1", "version": "2"}, "input": "hi"});
        assert_eq!(
            offered(Api::Openai, &stored),
            [""],
            "a stored prompt's tools are unseen"
        );
        assert!(offered(Api::Openai, &json!({"prompt": "Say hi"})).is_empty());
        assert_eq!(offered(Api::Openai, &json!({"tools": "x"})), [""]);
    }

    #[test]
    fn anthropic_and_gemini_tools_are_named_as_declared() {
        let anthropic = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "tools": [
                {"name": "get_weather", "description": "…", "input_schema": {"type": "object"}},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                {"type": "mcp_toolset", "mcp_server_name": "docs"}
            ],
            "mcp_servers": [{"type": "url", "url": "https://mcp.example/sse", "name": "example-mcp"}],
            "messages": []
        });
        assert_eq!(
            offered(Api::Anthropic, &anthropic),
            ["get_weather", "web_search", "docs", "example-mcp"]
        );
        let gemini = json!({
            "contents": [],
            "tools": [
                {"functionDeclarations": [{"name": "get_weather", "parameters": {}}, {"name": "find_movies"}]},
                {"function_declarations": [{"name": "snake_case"}]},
                {"googleSearch": {}},
                {"code_execution": {}},
                {"urlContext": {}}
            ]
        });
        assert_eq!(
            offered(Api::Gemini, &gemini),
            [
                "get_weather",
                "find_movies",
                "snake_case",
                "googleSearch",
                "codeExecution",
                "urlContext"
            ]
        );
        let cached = json!({"cachedContent": "cachedContents/abc", "contents": []});
        assert_eq!(
            offered(Api::Gemini, &cached),
            [""],
            "cached tools are unseen"
        );
        let custom = json!({"tools": [{"type": "custom", "input_schema": {}}]});
        assert_eq!(offered(Api::Anthropic, &custom), [""]);
    }

    #[test]
    fn the_claim_is_checked_against_every_tool_uncut() {
        let long = format!("read_{}", "x".repeat(300));
        let offered = vec!["read_file".to_owned(), long.clone(), "delete_repo".into()];
        assert_eq!(
            first_refused(&["read_*"], &offered),
            Some("delete_repo"),
            "a name past the cut is still checked"
        );
        assert_eq!(first_refused(&["read_*", "delete_repo"], &offered), None);
        assert_eq!(first_refused(&[], &offered), Some("read_file"));
        assert_eq!(first_refused(&["read_*"], &["".to_owned()]), Some(""));
        assert_eq!(first_refused(&["*"], &["".to_owned()]), None);
        let exact = "x".repeat(MAX_NAME);
        assert_eq!(
            first_refused(&[exact.as_str()], &[format!("{exact}y")]),
            Some(format!("{exact}y").as_str()),
            "a long name is not cut into an allowed one"
        );
        assert!(refused_description("delete_repo").contains("\"delete_repo\""));
        assert!(refused_description(&long).len() < 200);
    }

    #[test]
    fn what_is_kept_is_bounded() {
        let mut names = Vec::new();
        for i in 0..MAX_NAMES * 2 {
            keep(&mut names, &format!("{i}{}", "é".repeat(500)));
        }
        assert_eq!(names.len(), MAX_NAMES);
        assert!(names.iter().all(|n| n.chars().count() == MAX_NAME));
        let many: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        assert_eq!(bounded(&many).len(), MAX_NAMES);

        let mut scanner = CallScanner::default();
        let calls: Vec<Value> = (0..1000)
            .map(|i| json!({"type": "function", "function": {"name": format!("t{i}")}}))
            .collect();
        scanner.see(&json!({"choices": [{"message": {"tool_calls": calls}}]}));
        assert_eq!(scanner.calls().len(), MAX_NAMES);
        assert_eq!(scanner.calls().first().map(String::as_str), Some("t0"));
    }

    #[test]
    fn calls_in_whole_answers_are_read_in_each_apis_shape() {
        let mut scanner = CallScanner::default();
        scanner.see(&json!({
            "id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]}}]
        }));
        assert_eq!(
            scanner.take(),
            ["get_weather", "get_weather"],
            "not deduped"
        );
        scanner.see(&json!({
            "id": "resp_1", "object": "response", "status": "completed",
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                {"type": "mcp_list_tools", "id": "mcpl_1", "server_label": "deepwiki", "tools": []},
                {"type": "mcp_call", "id": "mcp_1", "server_label": "deepwiki", "name": "ask_question", "arguments": "{}"},
                {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                {"type": "message", "id": "msg_1", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]}
            ]
        }));
        assert_eq!(
            scanner.take(),
            ["web_search_call", "ask_question", "get_weather"]
        );
        scanner.see(&json!({
            "id": "msg_01", "type": "message", "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use"
        }));
        assert_eq!(scanner.take(), ["web_search", "get_weather"]);
        scanner.see(&json!([{
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "ok"},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"executableCode": {"language": "PYTHON", "code": "print(1)"}}
            ]}}]
        }]));
        assert_eq!(scanner.take(), ["get_weather", "codeExecution"]);
    }

    #[test]
    fn streamed_calls_are_counted_once_each() {
        let mut scanner = CallScanner::default();
        for event in [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}}]}),
            // Some compatible servers repeat the name: still one call.
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "get_weather", "arguments": "ty\"}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}]}),
            json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "function_call", "id": "fc_1", "name": "lookup", "arguments": ""}}),
            json!({"type": "response.function_call_arguments.delta", "item_id": "fc_1", "delta": "{}"}),
            json!({"type": "response.output_item.done", "output_index": 0, "item": {"type": "function_call", "id": "fc_1", "name": "lookup", "arguments": "{}"}}),
            json!({"type": "response.output_item.done", "output_index": 1, "item": {"type": "web_search_call", "id": "ws_9"}}),
            json!({"type": "response.completed", "response": {"output": [{"type": "function_call", "id": "fc_1", "name": "lookup"}]}}),
        ] {
            scanner.see(&event);
        }
        assert_eq!(
            scanner.take(),
            ["get_weather", "get_weather", "lookup", "web_search_call"]
        );
    }
}
