//! An MCP server's answer on its way back to the caller: a JSON body or a stream of
//! server-sent events, each event carrying one JSON-RPC message in its `data`. Passed through
//! untouched unless something in it must be read: a `tools/list` result is rewritten to list
//! only the tools the token allows (on every stream, so a resumed or replayed stream cannot
//! show more), and a `tools/call`'s answer is read for its outcome. What is held to do so is
//! bounded: one event, or one JSON answer, at most [`MAX_HELD`]; an answer too large to filter
//! is cut rather than passed unfiltered.

use serde_json::Value;
use tailpass_verify::sse::{BOM, LineEnds};

use super::jsonrpc;

/// The most of one event, or of one JSON answer, held to read or rewrite it.
pub const MAX_HELD: usize = 4 * 1024 * 1024;

/// An answer that had to be filtered but exceeded [`MAX_HELD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an MCP answer held for filtering exceeded {MAX_HELD} bytes")]
pub struct TooLarge;

/// Whether a tool may be listed.
pub type Allowed = Box<dyn Fn(&str) -> bool + Send>;

/// What is done with the answer.
pub struct Watch {
    sse: bool,
    /// Whether a tool may be listed, when the token restricts them.
    allowed: Option<Allowed>,
    /// The id of the `tools/call` whose outcome is read.
    call: Option<Value>,
    /// Whether the request was `tools/list` (a JSON answer is then its result).
    list: bool,
    held: Vec<u8>,
    /// Nothing (more) to read: chunks pass as they come.
    passthrough: bool,
    /// No event read yet: the first may begin with a byte order mark.
    first: bool,
    /// The watched call's outcome: whether it failed (`isError`, or a JSON-RPC error).
    pub failed: Option<bool>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("sse", &self.sse)
            .field("restricted", &self.allowed.is_some())
            .field("call", &self.call)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Where the first event in `buf` ends (after the blank line closing it), if it is complete.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    let mut i = 0;
    while let Some(&b) = buf.get(i) {
        let terminator = match b {
            b'\n' => 1,
            b'\r' => match buf.get(i + 1) {
                Some(b'\n') => 2,
                Some(_) => 1,
                // A `\r` at the end may be the first half of `\r\n`.
                None => return None,
            },
            _ => {
                i += 1;
                continue;
            }
        };
        if i == line_start {
            return Some(i + terminator);
        }
        i += terminator;
        line_start = i;
    }
    None
}

impl Watch {
    /// A watch over a `text/event-stream` answer when `sse`, a JSON one otherwise; `allowed`
    /// filters listed tools, `call` is the `tools/call` id to read the outcome of, `list`
    /// whether the request was `tools/list`.
    pub fn new(sse: bool, allowed: Option<Allowed>, call: Option<Value>, list: bool) -> Watch {
        let passthrough = call.is_none() && (allowed.is_none() || (!sse && !list));
        Watch {
            sse,
            allowed,
            call,
            list,
            held: Vec::new(),
            passthrough,
            first: true,
            failed: None,
        }
    }

    /// Reads one message: its outcome, if it answers the watched call; its tools filtered.
    /// The message re-serialized when it changed.
    fn message(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        // Decoded as the caller will decode it (an event stream is UTF-8, read with
        // replacement characters, and so are JSON bodies in most clients): a listing the
        // caller can read must not pass unfiltered for a byte the gateway could not.
        let text = String::from_utf8_lossy(data);
        let mut message: Value = serde_json::from_str(&text).ok()?;
        if let Some(id) = &self.call
            && let Some(failed) = jsonrpc::call_failed(&message, id)
        {
            self.failed = Some(failed);
        }
        let allowed = self.allowed.as_ref()?;
        if jsonrpc::filter_tools(&mut message, allowed.as_ref()) {
            return serde_json::to_vec(&message).ok();
        }
        None
    }

    /// One complete event, rewritten when its message changed.
    fn event(&mut self, event: &[u8]) -> Vec<u8> {
        // Lines end as the event-stream format says (CRLF, LF or a lone CR), as the caller's
        // parser will split them: an event the filter reads otherwise would pass unfiltered.
        let mut data: Vec<&[u8]> = Vec::new();
        let mut other: Vec<&[u8]> = Vec::new();
        let lines = if std::mem::take(&mut self.first) {
            event.strip_prefix(BOM).unwrap_or(event)
        } else {
            event
        };
        LineEnds::default().split(lines, 0, |line| {
            if let Some(value) = line.strip_prefix(b"data:") {
                data.push(value.strip_prefix(b" ").unwrap_or(value));
            } else if !line.is_empty() {
                other.push(line);
            }
        });
        if data.is_empty() {
            return event.to_vec();
        }
        match self.message(&data.join(&b'\n')) {
            Some(rewritten) => {
                let mut out = Vec::with_capacity(rewritten.len() + 64);
                for line in other {
                    out.extend_from_slice(line);
                    out.push(b'\n');
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&rewritten);
                out.extend_from_slice(b"\n\n");
                out
            }
            None => event.to_vec(),
        }
    }

    /// Whether the answer must not pass unfiltered.
    fn must_filter(&self) -> bool {
        self.allowed.is_some() && (self.sse || self.list)
    }

    /// Sees one chunk; the bytes to send on now.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TooLarge> {
        if self.passthrough {
            return Ok(chunk.to_vec());
        }
        self.held.extend_from_slice(chunk);
        let mut out = Vec::new();
        if self.sse {
            while let Some(end) = event_end(&self.held) {
                let event: Vec<u8> = self.held.drain(..end).collect();
                out.extend(self.event(&event));
            }
        }
        if self.held.len() > MAX_HELD {
            if self.must_filter() {
                self.held = Vec::new();
                return Err(TooLarge);
            }
            // Only an outcome was to be read: give up on it, pass the rest as it comes.
            self.passthrough = true;
            out.append(&mut self.held);
        }
        Ok(out)
    }

    /// The answer ended; the bytes still held, read and filtered.
    pub fn finish(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        if self.passthrough || held.is_empty() {
            return held;
        }
        if self.sse {
            // An unterminated last event: its message is read like the others.
            return self.event(&held);
        }
        self.message(&held).unwrap_or(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_search() -> Option<Allowed> {
        Some(Box::new(|name: &str| name == "search"))
    }

    const LISTED: &str = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"search"},{"name":"delete_everything"}]}}"#;

    /// What a watch for a `search`-only token passes of event stream `stream` cut at `split`.
    fn filtered_split_at(stream: &[u8], split: usize) -> String {
        let mut watch = Watch::new(true, only_search(), None, false);
        let mut out = watch.push(&stream[..split]).unwrap();
        out.extend(watch.push(&stream[split..]).unwrap());
        out.extend(watch.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_listing_in_a_stream_is_filtered_however_the_stream_is_split() {
        let stream = format!(
            "event: message\r\nid: e1\r\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}}\r\n\r\nevent: message\r\ndata: {LISTED}\r\n\r\n"
        );
        let stream = stream.as_bytes();
        for split in 1..stream.len() {
            let out = filtered_split_at(stream, split);
            assert!(
                out.starts_with("event: message\r\nid: e1\r\ndata: {\"jsonrpc\""),
                "{out}"
            );
            assert!(out.contains("\"search\""), "split {split}: {out}");
            assert!(!out.contains("delete_everything"), "split {split}: {out}");
            assert!(out.ends_with("\n\n"));
        }
    }

    #[test]
    fn a_listing_with_lone_cr_line_ends_is_filtered_however_the_stream_is_split() {
        // `event:` and `data:` on lines a lone CR ends: the caller's parser reads one event
        // with the listing, so the filter must too.
        let stream = format!("event: message\rid: e2\rdata: {LISTED}\r\r");
        let stream = stream.as_bytes();
        for split in 1..stream.len() {
            let out = filtered_split_at(stream, split);
            assert!(out.contains("\"search\""), "split {split}: {out}");
            assert!(!out.contains("delete_everything"), "split {split}: {out}");
        }
    }

    #[test]
    fn a_listing_with_bytes_that_are_not_utf8_is_filtered_as_the_caller_reads_it() {
        // The caller decodes with replacement characters, so it would list this tool.
        let listed = b"{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"search\"},{\"name\":\"delete\xff\"}]}}";
        for sse in [false, true] {
            let body = if sse {
                [&b"data: "[..], listed, b"\n\n"].concat()
            } else {
                listed.to_vec()
            };
            let mut watch = Watch::new(sse, only_search(), None, true);
            let mut out = watch.push(&body).unwrap();
            out.extend(watch.finish());
            let out = String::from_utf8_lossy(&out);
            assert!(out.contains("\"search\""), "{out}");
            assert!(!out.contains("delete"), "{out}");
        }
    }

    #[test]
    fn a_json_listing_is_filtered_and_a_calls_outcome_read() {
        let mut watch = Watch::new(false, only_search(), None, true);
        let mut out = watch.push(&LISTED.as_bytes()[..10]).unwrap();
        assert!(out.is_empty(), "held until complete");
        out.extend(watch.push(&LISTED.as_bytes()[10..]).unwrap());
        out.extend(watch.finish());
        let listed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            listed["result"]["tools"],
            serde_json::json!([{"name": "search"}])
        );

        let answer = br#"{"jsonrpc":"2.0","id":"c1","result":{"content":[],"isError":true}}"#;
        let mut watch = Watch::new(false, None, Some(serde_json::json!("c1")), false);
        let mut out = watch.push(answer).unwrap();
        out.extend(watch.finish());
        assert_eq!(out, answer, "passed unchanged");
        assert_eq!(watch.failed, Some(true));
    }

    #[test]
    fn unrestricted_answers_pass_as_they_come_and_oversized_listings_are_cut() {
        let mut watch = Watch::new(true, None, None, true);
        assert_eq!(watch.push(b"data: {\"par").unwrap(), b"data: {\"par");
        let mut watch = Watch::new(true, only_search(), None, false);
        let huge = vec![b'x'; MAX_HELD + 1];
        assert_eq!(watch.push(b"data: "), Ok(Vec::new()));
        assert_eq!(watch.push(&huge), Err(TooLarge));
        // A call's outcome alone is given up on past the bound, never cut.
        let mut watch = Watch::new(false, None, Some(serde_json::json!(1)), false);
        assert_eq!(watch.push(&huge).map(|o| o.len()), Ok(huge.len()));
        assert_eq!(watch.failed, None);
    }
}
