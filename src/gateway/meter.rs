//! Watching an upstream answer go by: the LLM tokens it reports (`usage.total_tokens`, in a
//! JSON body or in a server-sent event of a stream) and, once it is over, the call's audit
//! line and the charge to its run. Chunks pass through untouched and unbuffered.

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tailpass_verify::UnixTime;

use super::quota::Quotas;
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
    /// The requested model.
    pub model: Option<String>,
    /// LLM tokens the upstream reported.
    pub tokens: Option<u64>,
    /// The status returned to the caller.
    pub status: u16,
    /// From the request's arrival to the answer's last byte, milliseconds.
    pub latency_ms: u64,
    /// Why the gateway refused, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
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
        let refused = match (&call.refused, call.status) {
            (None, _) => "",
            (Some(_), 401) => "token",
            (Some(_), 403) => "model",
            (Some(_), 429) => "quota",
            (Some(_), _) => "other",
        };
        self.metrics.call(call.status, refused);
        tracing::info!(
            target: "tailpass::gateway::audit",
            run_id = call.run_id.as_deref().unwrap_or(""),
            node = call.node.as_deref().unwrap_or(""),
            model = call.model.as_deref().unwrap_or(""),
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

/// Reads `usage.total_tokens` out of an answer as it streams by.
#[derive(Debug)]
pub struct UsageScanner {
    event_stream: bool,
    pending: Vec<u8>,
    overflow: bool,
    tokens: Option<u64>,
}

fn total_tokens(json: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    value.get("usage")?.get("total_tokens")?.as_u64()
}

impl UsageScanner {
    /// A scanner for a `text/event-stream` answer when `event_stream`, JSON otherwise.
    pub fn new(event_stream: bool) -> UsageScanner {
        UsageScanner {
            event_stream,
            pending: Vec::new(),
            overflow: false,
            tokens: None,
        }
    }

    /// Sees one chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.overflow {
            return;
        }
        self.pending.extend_from_slice(chunk);
        if self.event_stream {
            while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if let Some(data) = line.strip_prefix(b"data:")
                    && let Some(tokens) = total_tokens(data.trim_ascii())
                {
                    self.tokens = Some(tokens);
                }
            }
            if self.pending.len() > MAX_LINE {
                self.overflow = true;
            }
        } else if self.pending.len() > MAX_JSON {
            self.overflow = true;
            self.pending = Vec::new();
        }
    }

    /// The tokens reported, once the answer is complete.
    pub fn finish(&mut self) -> Option<u64> {
        if !self.event_stream && !self.overflow {
            self.tokens = total_tokens(&self.pending);
        }
        self.tokens
    }
}

/// The end of a call: when dropped (the answer finished, or the caller went away) it charges
/// the tokens to the run and writes the call's record.
#[derive(Debug)]
pub struct Meter {
    /// The record, filled as the call goes.
    pub record: CallRecord,
    /// The usage seen so far.
    pub scanner: UsageScanner,
    /// When the request arrived.
    pub started: Instant,
    /// Where the tokens are charged.
    pub quotas: Arc<Quotas>,
    /// Where the record goes.
    pub log: CallLog,
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.record.tokens = self.scanner.finish();
        if let (Some(run), Some(tokens)) = (&self.record.root_run_id, self.record.tokens) {
            self.quotas.charge_tokens(run, tokens);
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
            let mut scanner = UsageScanner::new(true);
            scanner.push(&stream[..split]);
            scanner.push(&stream[split..]);
            assert_eq!(scanner.finish(), Some(42), "split at {split}");
        }
    }

    #[test]
    fn usage_is_found_in_json_and_absent_usage_is_none() {
        let mut scanner = UsageScanner::new(false);
        scanner.push(b"{\"usage\": {\"total_tokens\"");
        scanner.push(b": 7}}");
        assert_eq!(scanner.finish(), Some(7));
        let mut scanner = UsageScanner::new(false);
        scanner.push(b"{\"error\": {}}");
        assert_eq!(scanner.finish(), None);
    }
}
