//! Watching an upstream answer go by: the LLM tokens it reports (input plus output) and the
//! tools the model calls, in a JSON body or in the server-sent events of a stream, in
//! OpenAI's, Anthropic's or Gemini's shape, each event parsed once; and, once it is over, the
//! call's audit line and its run's reservation settled. Chunks pass through untouched and
//! unbuffered.

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tailpass_verify::UnixTime;
use tailpass_verify::sse::{BOM, LineEnds};

use super::quota::Reservation;
use super::tools::CallScanner;
use crate::metrics::GatewayMetrics;

/// The most of a JSON answer kept to read its `usage`; past it the tokens go uncounted.
const MAX_JSON: usize = 4 * 1024 * 1024;
/// The longest server-sent event line kept.
const MAX_LINE: usize = 1024 * 1024;

/// One gateway call, as audited.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallRecord {
    /// When the call began.
    pub time: UnixTime,
    /// The token's run.
    pub run_id: Option<String>,
    /// The run charged.
    pub root_run_id: Option<String>,
    /// The token's subject.
    pub sub: String,
    /// The presenting node's stable id.
    pub node: Option<String>,
    /// The upstream's name (`[[upstream]]` `name`), for calls to a model API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The requested model.
    pub model: Option<String>,
    /// The tools the request offered the model (their names), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools_offered: Vec<String>,
    /// The tools the model's answer called, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools_called: Vec<String>,
    /// The MCP server's name (`[[mcp]]` `name`), for calls to an MCP server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_server: Option<String>,
    /// The MCP tool called (`tools/call`), or the JSON-RPC method for other MCP requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_tool: Option<String>,
    /// For an MCP `tools/call` the server answered: whether its result was an error
    /// (`isError`, or a JSON-RPC error); absent when no answer to it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_error: Option<bool>,
    /// LLM input tokens the upstream reported (prompt, cache reads and writes included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_in: Option<u64>,
    /// LLM output tokens the upstream reported (thinking included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_out: Option<u64>,
    /// LLM tokens the upstream reported, input plus output: what the run's budget is charged.
    pub tokens: Option<u64>,
    /// The status returned to the caller.
    pub status: u16,
    /// From the request's arrival to the answer's last byte, milliseconds.
    pub latency_ms: u64,
    /// Why the gateway refused, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The kind of refusal, a bounded label for metrics (`token`, `feed`, `endpoint`,
    /// `model`, `tool`, `quota`, `mcp`, `other`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reason: &'static str,
}

/// Where call records go: the log, the gateway's metrics, and a JSONL file (0600) when
/// configured.
#[derive(Debug, Clone, Default)]
pub struct CallLog {
    file: Option<Arc<Mutex<std::fs::File>>>,
    metrics: Arc<GatewayMetrics>,
}

impl CallLog {
    /// A log mirrored to `path` when given.
    pub fn open(path: Option<&Path>) -> std::io::Result<CallLog> {
        let file = match path {
            Some(path) => {
                use std::os::unix::fs::OpenOptionsExt as _;
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)?;
                Some(Arc::new(Mutex::new(file)))
            }
            None => None,
        };
        Ok(CallLog {
            file,
            metrics: Arc::default(),
        })
    }

    /// The counters behind the gateway's `/metrics`.
    pub fn metrics(&self) -> &Arc<GatewayMetrics> {
        &self.metrics
    }

    /// Records one call.
    pub fn record(&self, call: &CallRecord) {
        let refused = match (&call.refused, call.reason) {
            (None, _) => "",
            (Some(_), "") => "other",
            (Some(_), reason) => reason,
        };
        self.metrics.call(call.status, refused);
        self.metrics.tools(&call.tools_offered, &call.tools_called);
        tracing::info!(
            target: "tailpass::gateway::audit",
            run_id = call.run_id.as_deref().unwrap_or(""),
            node = call.node.as_deref().unwrap_or(""),
            model = call.model.as_deref().unwrap_or(""),
            mcp_server = call.mcp_server.as_deref().unwrap_or(""),
            mcp_tool = call.mcp_tool.as_deref().unwrap_or(""),
            tokens = call.tokens.unwrap_or(0),
            status = call.status,
            latency_ms = call.latency_ms,
            "gateway call"
        );
        if let Some(file) = &self.file
            && let Ok(mut line) = serde_json::to_vec(call)
        {
            line.push(b'\n');
            if let Ok(mut f) = file.lock()
                && let Err(e) = f.write_all(&line)
            {
                tracing::warn!(error = %e, "gateway audit file write failed");
            }
        }
    }
}

/// The LLM tokens an answer reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens.
    pub input: Option<u64>,
    /// Output tokens.
    pub output: Option<u64>,
    /// Input plus output (or the answer's own total when it gives only that).
    pub total: Option<u64>,
}

/// Reads an answer as it streams by: the LLM tokens it reports (the largest input and output
/// counts seen, as streams repeat cumulative counts, or a total when that is all there is)
/// and the tools the model calls ([`CallScanner`]), from one parse of each event. Its memory is
/// bounded: a JSON answer is kept up to 4 MiB, an event line up to 1 MiB, past which the
/// answer goes unread.
#[derive(Debug)]
pub struct AnswerScanner {
    event_stream: bool,
    /// Where the stream's lines end, across chunks.
    ends: LineEnds,
    /// Whether a line was read yet: a byte order mark before the first is no part of it, as
    /// an event-stream parser reads it.
    line_read: bool,
    pending: Vec<u8>,
    overflow: bool,
    input: Option<u64>,
    output: Option<u64>,
    total: Option<u64>,
    calls: CallScanner,
}

/// Where each API puts its usage in an answer or event.
const USAGE_AT: &[&[&str]] = &[
    &["usage"],
    &["message", "usage"],
    &["response", "usage"],
    &["usageMetadata"],
];
/// Input counts: OpenAI, Anthropic (with its cache reads and writes, counted apart), Gemini.
const INPUT: &[&str] = &[
    "prompt_tokens",
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "promptTokenCount",
];
/// Output counts: OpenAI and Anthropic, Gemini (with its thinking, counted apart).
const OUTPUT: &[&str] = &[
    "completion_tokens",
    "output_tokens",
    "candidatesTokenCount",
    "thoughtsTokenCount",
];
const TOTAL: &[&str] = &["total_tokens", "totalTokenCount"];

fn sum(usage: &serde_json::Value, fields: &[&str]) -> Option<u64> {
    fields
        .iter()
        .filter_map(|f| usage.get(f).and_then(serde_json::Value::as_u64))
        .reduce(u64::saturating_add)
}

fn keep_max(slot: &mut Option<u64>, seen: Option<u64>) {
    if let Some(seen) = seen {
        *slot = Some(slot.map_or(seen, |s| s.max(seen)));
    }
}

impl AnswerScanner {
    /// A scanner for a `text/event-stream` answer when `event_stream`, JSON otherwise.
    pub fn new(event_stream: bool) -> AnswerScanner {
        AnswerScanner {
            event_stream,
            ends: LineEnds::default(),
            line_read: false,
            pending: Vec::new(),
            overflow: false,
            input: None,
            output: None,
            total: None,
            calls: CallScanner::default(),
        }
    }

    fn see(&mut self, value: &serde_json::Value) {
        if let Some(items) = value.as_array() {
            // Gemini streams without `alt=sse` as one JSON array of answers.
            for item in items {
                self.see(item);
            }
            return;
        }
        for path in USAGE_AT {
            if let Some(usage) = path.iter().try_fold(value, |v, key| v.get(key)) {
                keep_max(&mut self.input, sum(usage, INPUT));
                keep_max(&mut self.output, sum(usage, OUTPUT));
                keep_max(&mut self.total, sum(usage, TOTAL));
            }
        }
        self.calls.see(value);
    }

    fn see_json(&mut self, json: &[u8]) {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) {
            self.see(&value);
        }
    }

    /// Sees one chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.overflow {
            return;
        }
        self.pending.extend_from_slice(chunk);
        if self.event_stream {
            // What was pending before this chunk holds no line end, so the search starts at
            // the chunk, and the lines it completes leave in one drain.
            let pending = std::mem::take(&mut self.pending);
            let from = pending.len().saturating_sub(chunk.len());
            let mut ends = std::mem::take(&mut self.ends);
            let mut line_read = self.line_read;
            let start = ends.split(&pending, from, |line| {
                let line = match std::mem::replace(&mut line_read, true) {
                    false => line.strip_prefix(BOM).unwrap_or(line),
                    true => line,
                };
                if let Some(data) = line.strip_prefix(b"data:") {
                    self.see_json(data.trim_ascii());
                }
            });
            self.ends = ends;
            self.line_read = line_read;
            self.pending = pending;
            self.pending.drain(..start);
            if self.pending.len() > MAX_LINE {
                self.overflow = true;
            }
        } else if self.pending.len() > MAX_JSON {
            self.overflow = true;
            self.pending = Vec::new();
        }
    }

    /// Reads a JSON answer, once, when it is complete.
    fn finish_json(&mut self) {
        if !self.event_stream && !self.overflow {
            let pending = std::mem::take(&mut self.pending);
            self.see_json(&pending);
        }
    }

    /// The tokens reported (input plus output), once the answer is complete.
    pub fn finish(&mut self) -> Option<u64> {
        self.finish_usage().total
    }

    /// The tokens reported, in and out and together, once the answer is complete.
    pub fn finish_usage(&mut self) -> Usage {
        self.finish_json();
        let total = match (self.input, self.output) {
            (None, None) => self.total,
            (input, output) => Some(input.unwrap_or(0).saturating_add(output.unwrap_or(0))),
        };
        Usage {
            input: self.input,
            output: self.output,
            total,
        }
    }

    /// The tools the answer called, in order (at most [`super::tools::MAX_NAMES`]), once it
    /// is complete.
    pub fn finish_calls(&mut self) -> Vec<String> {
        self.finish_json();
        self.calls.take()
    }
}

/// The end of a call: when dropped (the answer finished, or the caller went away) it settles
/// the run's reservation and writes the call's record. A successful answer that reported no
/// usage (cut short, or hidden from the gateway) is charged its whole reservation; an error
/// answer without usage is charged nothing, as upstreams bill no tokens for refusals.
#[derive(Debug)]
pub struct Meter {
    /// The record, filled as the call goes.
    pub record: CallRecord,
    /// The usage and tool calls seen so far.
    pub scanner: AnswerScanner,
    /// When the request arrived.
    pub started: Instant,
    /// The tokens held for this call, when its run has a token budget.
    pub reservation: Option<Reservation>,
    /// Where the record goes.
    pub log: CallLog,
}

impl Drop for Meter {
    fn drop(&mut self) {
        let usage = self.scanner.finish_usage();
        self.record.tokens_in = usage.input;
        self.record.tokens_out = usage.output;
        self.record.tokens = usage.total;
        self.record.tools_called = self.scanner.finish_calls();
        if let Some(reservation) = self.reservation.take() {
            let success = (200..300).contains(&self.record.status);
            match self.record.tokens {
                Some(used) => reservation.settle(used),
                None if !success => reservation.settle(0),
                None => drop(reservation),
            }
        }
        self.record.latency_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(0);
        self.log.record(&self.record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_found_in_a_stream_split_anywhere() {
        let stream = b"data: {\"choices\":[]}\n\ndata: {\"usage\":{\"total_tokens\":42}}\n\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut scanner = AnswerScanner::new(true);
            scanner.push(&stream[..split]);
            scanner.push(&stream[split..]);
            assert_eq!(scanner.finish(), Some(42), "split at {split}");
        }
    }

    #[test]
    fn a_stream_fed_a_byte_at_a_time_reads_as_it_does_whole() {
        let stream = b"event: message_start\r\ndata: {\"message\":{\"usage\":{\"input_tokens\":3}}}\r\n\r\ndata: {\"usage\":{\"output_tokens\":4}}\n\ndata: [DONE]\n\n";
        let mut scanner = AnswerScanner::new(true);
        for byte in stream {
            scanner.push(std::slice::from_ref(byte));
        }
        let expected = Usage {
            input: Some(3),
            output: Some(4),
            total: Some(7),
        };
        assert_eq!(scanner.finish_usage(), expected);
        assert!(scanner.pending.is_empty());
    }

    #[test]
    fn input_and_output_are_counted_in_each_apis_shape() {
        let anthropic = b"event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"usage\":{\"output_tokens\":15}}\n\n";
        let mut scanner = AnswerScanner::new(true);
        scanner.push(anthropic);
        assert_eq!(scanner.finish(), Some(30 + 15));
        let gemini = br#"[{"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":2}},
            {"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":9,"thoughtsTokenCount":4,"totalTokenCount":21}}]"#;
        let mut scanner = AnswerScanner::new(false);
        scanner.push(gemini);
        assert_eq!(scanner.finish(), Some(8 + 13));
        let openai = br#"{"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}"#;
        let mut scanner = AnswerScanner::new(false);
        scanner.push(openai);
        assert_eq!(scanner.finish(), Some(14));
    }

    #[test]
    fn usage_is_found_in_json_and_absent_usage_is_none() {
        let mut scanner = AnswerScanner::new(false);
        scanner.push(b"{\"usage\": {\"total_tokens\"");
        scanner.push(b": 7}}");
        assert_eq!(scanner.finish(), Some(7));
        let mut scanner = AnswerScanner::new(false);
        scanner.push(b"{\"error\": {}}");
        assert_eq!(scanner.finish(), None);
    }

    /// `stream`, split once at every byte boundary: each time, the usage and the calls read.
    fn split_everywhere(event_stream: bool, stream: &[u8]) -> (Usage, Vec<String>) {
        let mut whole = AnswerScanner::new(event_stream);
        whole.push(stream);
        let expected = (whole.finish_usage(), whole.finish_calls());
        for split in 1..stream.len() {
            let mut scanner = AnswerScanner::new(event_stream);
            scanner.push(&stream[..split]);
            scanner.push(&stream[split..]);
            let seen = (scanner.finish_usage(), scanner.finish_calls());
            assert_eq!(seen, expected, "split at {split}");
        }
        expected
    }

    #[test]
    fn a_stream_with_lone_cr_or_crlf_line_ends_is_read_the_same_split_anywhere() {
        let lf = "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":3}}}\n\ndata: {\"usage\":{\"output_tokens\":4}}\n\n";
        let (expected, _) = split_everywhere(true, lf.as_bytes());
        assert_eq!(expected.total, Some(7));
        for ends in ["\r", "\r\n"] {
            let stream = lf.replace('\n', ends);
            let (usage, _) = split_everywhere(true, stream.as_bytes());
            assert_eq!(usage, expected, "line ends {ends:?}");
        }
    }

    #[test]
    fn a_byte_order_mark_before_the_first_line_is_no_part_of_it_split_anywhere() {
        let plain = "data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n";
        let (expected, _) = split_everywhere(true, plain.as_bytes());
        assert_eq!(expected.total, Some(7));
        let marked = [BOM, plain.as_bytes()].concat();
        let (usage, _) = split_everywhere(true, &marked);
        assert_eq!(usage, expected);
        // Only the stream's first line may carry one.
        let later = format!("data: {{}}\n\n{}{plain}", String::from_utf8_lossy(BOM));
        let (usage, _) = split_everywhere(true, later.as_bytes());
        assert_eq!(usage.total, None);
    }

    #[test]
    fn openai_chat_stream_tool_calls_are_read_split_anywhere() {
        // Chat completions with `stream: true` and `stream_options.include_usage`: the name in
        // each call's first delta, its arguments in later ones, then the usage chunk.
        let stream = concat!(
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_abc\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_def\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":82,\"completion_tokens\":17,\"total_tokens\":99}}\n\n",
            "data: [DONE]\n\n",
        );
        let (usage, calls) = split_everywhere(true, stream.as_bytes());
        assert_eq!(usage.total, Some(99));
        assert_eq!(calls, ["get_weather", "get_time"]);
    }

    #[test]
    fn openai_responses_stream_tool_calls_are_read_split_anywhere() {
        // The Responses API's events: each output item added, then done, then the response
        // completed with every item again; each call is one call.
        let stream = concat!(
            "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"output\":[]}}\n\n",
            "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":1,\"output_index\":0,\"item\":{\"type\":\"web_search_call\",\"id\":\"ws_1\",\"status\":\"in_progress\"}}\n\n",
            "event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\",\"sequence_number\":2,\"output_index\":0,\"item\":{\"type\":\"web_search_call\",\"id\":\"ws_1\",\"status\":\"completed\",\"action\":{\"type\":\"search\",\"query\":\"weather\"}}}\n\n",
            "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":3,\"output_index\":1,\"item\":{\"type\":\"function_call\",\"id\":\"fc_1\",\"call_id\":\"call_1\",\"name\":\"get_weather\",\"arguments\":\"\",\"status\":\"in_progress\"}}\n\n",
            "event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"sequence_number\":4,\"item_id\":\"fc_1\",\"output_index\":1,\"delta\":\"{\\\"city\\\":\\\"Paris\\\"}\"}\n\n",
            "event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\",\"sequence_number\":5,\"output_index\":1,\"item\":{\"type\":\"function_call\",\"id\":\"fc_1\",\"call_id\":\"call_1\",\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\",\"status\":\"completed\"}}\n\n",
            "event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\",\"sequence_number\":6,\"output_index\":2,\"item\":{\"type\":\"mcp_call\",\"id\":\"mcp_1\",\"server_label\":\"deepwiki\",\"name\":\"ask_question\",\"arguments\":\"{}\"}}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":7,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"output\":[{\"type\":\"web_search_call\",\"id\":\"ws_1\"},{\"type\":\"function_call\",\"id\":\"fc_1\",\"name\":\"get_weather\"}],\"usage\":{\"input_tokens\":40,\"output_tokens\":12,\"total_tokens\":52}}}\n\n",
        );
        let (usage, calls) = split_everywhere(true, stream.as_bytes());
        assert_eq!(usage.total, Some(52));
        assert_eq!(calls, ["web_search_call", "get_weather", "ask_question"]);
    }

    #[test]
    fn anthropic_stream_tool_uses_are_read_split_anywhere() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"usage\":{\"input_tokens\":472,\"output_tokens\":2}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me check\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"server_tool_use\",\"id\":\"srvtoolu_1\",\"name\":\"web_search\",\"input\":{}}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"Paris\\\"}\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let (usage, calls) = split_everywhere(true, stream.as_bytes());
        assert_eq!(usage.total, Some(472 + 89));
        assert_eq!(calls, ["web_search", "get_weather"]);
    }

    #[test]
    fn gemini_function_calls_are_read_split_anywhere_as_sse_and_as_a_json_array() {
        let first = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":30,"candidatesTokenCount":5,"totalTokenCount":35},"modelVersion":"gemini-2.5-flash"}"#;
        let second = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_time","args":{}}}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":30,"candidatesTokenCount":9,"totalTokenCount":39}}"#;
        let sse = format!("data: {first}\r\n\r\ndata: {second}\r\n\r\n");
        let (usage, calls) = split_everywhere(true, sse.as_bytes());
        assert_eq!(
            (usage.total, calls.as_slice()),
            (
                Some(39),
                &["get_weather".to_owned(), "get_time".to_owned()][..]
            )
        );
        let array = format!("[{first},\n{second}]");
        let (usage, calls) = split_everywhere(false, array.as_bytes());
        assert_eq!(usage.total, Some(39));
        assert_eq!(calls, ["get_weather", "get_time"]);
    }

    #[test]
    fn tool_calls_in_a_json_answer_are_read() {
        let answer = br#"{"id":"chatcmpl-2","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        let mut scanner = AnswerScanner::new(false);
        scanner.push(answer);
        assert_eq!(scanner.finish_calls(), ["get_weather"]);
        assert_eq!(scanner.finish_usage().total, Some(7), "in either order");
        let mut scanner = AnswerScanner::new(false);
        scanner.push(&vec![b' '; MAX_JSON + 1]);
        scanner.push(answer);
        assert!(
            scanner.finish_calls().is_empty(),
            "past the bound, nothing is read"
        );
    }
}
