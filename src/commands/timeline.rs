//! One run's story across the issuer and its gateways, for `tailpass audit --gateway-log`:
//! the issuer's audit events and the gateways' call logs (JSONL, one [`CallRecord`] a line)
//! merged into one timeline, ordered by time — issuer events first on a tie (a token is
//! minted before it is spent), then by their order in the log or in the files as given — and
//! filtered to what the command asks for (a run and the runs exchanged from it, a node, a
//! user, a start).
//!
//! Call logs can be large: they are read line by line and only the newest `limit` entries
//! are kept, so memory is bounded by the limit, not the files. A line that is not a call
//! record (cut short by a crash, written by something else) is skipped and counted.
//!
//! [`CallRecord`]: crate::gateway::meter::CallRecord

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::io::BufRead;

use serde::{Deserialize, Serialize};
use tailpass_verify::UnixTime;

use crate::store::AuditRecord;

/// The longest call-log line read; a longer one is skipped as unreadable.
pub const MAX_LINE: usize = 1024 * 1024;
/// The most runs a run's tree is followed to (the run and its descendants).
pub const MAX_RUNS: usize = 1024;

/// One gateway call as its call log holds it: the fields [`CallRecord`] writes, read back,
/// and any others a newer gateway adds, passed through as they are.
///
/// [`CallRecord`]: crate::gateway::meter::CallRecord
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedCall {
    /// When the call began.
    pub time: UnixTime,
    /// The token's run.
    #[serde(default)]
    pub run_id: Option<String>,
    /// The run charged (the root of the token's chain).
    #[serde(default)]
    pub root_run_id: Option<String>,
    /// The token's subject (empty when no token verified).
    #[serde(default)]
    pub sub: String,
    /// The presenting node's stable id.
    #[serde(default)]
    pub node: Option<String>,
    /// The MCP server called, for calls to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_server: Option<String>,
    /// The status returned to the caller.
    #[serde(default)]
    pub status: u16,
    /// Why the gateway refused, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Every other field of the record (model, tools, tokens, latency…), as written.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

impl LoggedCall {
    /// The timeline's name for it: `gateway.tool_call` for a call to an MCP server,
    /// `gateway.call` for one to a model API.
    pub fn event(&self) -> &'static str {
        if self.mcp_server.is_some() {
            "gateway.tool_call"
        } else {
            "gateway.call"
        }
    }

    /// How it ended, in the audit log's words: refused by the gateway is `denied`, an error
    /// status from the upstream `error`.
    pub fn outcome(&self) -> &'static str {
        match (&self.refused, self.status) {
            (Some(_), _) => "denied",
            (None, 400..) => "error",
            (None, _) => "success",
        }
    }
}

/// An entry of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// An issuer audit event.
    Issuer(AuditRecord),
    /// A gateway call.
    Gateway(LoggedCall),
}

/// What entries to keep, as `tailpass audit`'s filters say. Every given filter must hold.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// A run: its calls and those of runs in `tree` (it and its descendants), and those
    /// charged to it as their root.
    pub run: Option<(String, BTreeSet<String>)>,
    /// A node's stable id.
    pub node: Option<String>,
    /// The runs of a user's issuer events (a call log names subjects, not logins).
    pub user_runs: Option<BTreeSet<String>>,
    /// A start, in Unix seconds.
    pub since: Option<u64>,
}

impl Selection {
    /// Whether `call` is selected.
    pub fn keeps(&self, call: &LoggedCall) -> bool {
        let in_run =
            |runs: &BTreeSet<String>| call.run_id.as_ref().is_some_and(|r| runs.contains(r));
        self.run.as_ref().is_none_or(|(run, tree)| {
            in_run(tree) || call.root_run_id.as_deref() == Some(run.as_str())
        }) && self
            .node
            .as_ref()
            .is_none_or(|node| call.node.as_deref() == Some(node.as_str()))
            && self.user_runs.as_ref().is_none_or(in_run)
            && self.since.is_none_or(|since| call.time.0 >= since)
    }
}

/// The runs of `root`'s tree that `records` show: `root` and, transitively, every run whose
/// event names a run of the tree as its parent or root. At most [`MAX_RUNS`].
pub fn run_tree<'a>(
    root: &str,
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> BTreeSet<String> {
    let links: Vec<(&str, Vec<&str>)> = records
        .into_iter()
        .filter_map(|r| {
            let e = &r.event;
            let run = e.run_id.as_deref()?;
            let above = [e.parent_run_id.as_deref(), e.root_run_id.as_deref()];
            Some((run, above.into_iter().flatten().collect()))
        })
        .collect();
    let mut tree = BTreeSet::from([root.to_owned()]);
    loop {
        let before = tree.len();
        for (run, above) in &links {
            if tree.len() >= MAX_RUNS {
                return tree;
            }
            if above.iter().any(|a| tree.contains(*a)) {
                tree.insert((*run).to_owned());
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

/// Where an entry sorts: time, then the issuer before the gateways, then its position (the
/// event's `seq`; the file's index and the line's number).
type Key = (u64, u8, u64, u64);

/// The newest `limit` entries, in order.
#[derive(Debug)]
pub struct Timeline {
    limit: usize,
    /// A min-heap of what is kept: the oldest on top, dropped when there is one too many.
    kept: BinaryHeap<Reverse<Keyed>>,
}

#[derive(Debug)]
struct Keyed(Key, Entry);

impl PartialEq for Keyed {
    fn eq(&self, other: &Keyed) -> bool {
        self.0 == other.0
    }
}
impl Eq for Keyed {}
impl PartialOrd for Keyed {
    fn partial_cmp(&self, other: &Keyed) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Keyed {
    fn cmp(&self, other: &Keyed) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl Timeline {
    /// An empty timeline keeping at most `limit` entries (at least one).
    pub fn new(limit: usize) -> Timeline {
        Timeline {
            limit: limit.max(1),
            kept: BinaryHeap::new(),
        }
    }

    fn push(&mut self, key: Key, entry: Entry) {
        self.kept.push(Reverse(Keyed(key, entry)));
        if self.kept.len() > self.limit {
            self.kept.pop();
        }
    }

    /// Adds an issuer event.
    pub fn issuer(&mut self, record: AuditRecord) {
        let key = (record.event.time.0, 0, record.seq, 0);
        self.push(key, Entry::Issuer(record));
    }

    /// Adds the calls of one call log that `selection` keeps, read line by line from
    /// `log`, the `file`-th given; answers how many lines were not call records.
    pub fn gateway_log(
        &mut self,
        file: u64,
        log: impl BufRead,
        selection: &Selection,
    ) -> std::io::Result<u64> {
        let mut bad = 0;
        let mut lines = Lines::new(log);
        let mut number = 0u64;
        while let Some(line) = lines.next_line()? {
            number += 1;
            let Some(line) = line else {
                bad += 1;
                continue;
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<LoggedCall>(line) {
                Ok(call) if selection.keeps(&call) => {
                    self.push((call.time.0, 1, file, number), Entry::Gateway(call));
                }
                Ok(_) => {}
                Err(_) => bad += 1,
            }
        }
        Ok(bad)
    }

    /// The entries kept, oldest first.
    pub fn into_entries(self) -> Vec<Entry> {
        let mut kept = self.kept.into_vec();
        kept.sort_by(|a, b| b.cmp(a));
        kept.into_iter().map(|Reverse(Keyed(_, e))| e).collect()
    }
}

/// Lines of at most [`MAX_LINE`] bytes, read into one reused buffer; a longer line is
/// skipped to its end and answered as `None`.
struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R) -> Lines<R> {
        Lines {
            reader,
            buf: Vec::new(),
        }
    }

    /// The next line without its newline (`Some(None)` for one too long), or `None` at the
    /// end.
    fn next_line(&mut self) -> std::io::Result<Option<Option<&[u8]>>> {
        use std::io::Read as _;
        self.buf.clear();
        let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX) + 1;
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf)?;
        if read == 0 {
            return Ok(None);
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            return Ok(Some(Some(&self.buf)));
        }
        if self.buf.len() <= MAX_LINE {
            // The last line, without a newline.
            return Ok(Some(Some(&self.buf)));
        }
        // Too long: skip the rest of it.
        loop {
            self.buf.clear();
            let read = (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut self.buf)?;
            if read == 0 || self.buf.last() == Some(&b'\n') {
                return Ok(Some(None));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, EventKind, Outcome};
    use crate::gateway::meter::CallRecord;

    fn event(seq: u64, time: u64, kind: EventKind, run: &str, parent: Option<&str>) -> AuditRecord {
        let mut event = AuditEvent::new(UnixTime(time), kind, Outcome::Success);
        event.run_id = Some(run.into());
        event.parent_run_id = parent.map(str::to_owned);
        event.root_run_id = parent.map(|_| "root".to_owned());
        AuditRecord { seq, event }
    }

    /// A call-log line as the gateway writes it: a [`CallRecord`] serialized.
    fn call(time: u64, run: &str, root: &str, model: &str) -> String {
        let record = CallRecord {
            time: UnixTime(time),
            run_id: Some(run.into()),
            root_run_id: Some(root.into()),
            sub: "node:nCi".into(),
            node: Some("nCi".into()),
            upstream: Some("openai".into()),
            model: Some(model.into()),
            tools_called: vec!["search".into()],
            tokens_in: Some(7),
            tokens_out: Some(3),
            tokens: Some(10),
            status: 200,
            latency_ms: 12,
            ..CallRecord::default()
        };
        serde_json::to_string(&record).unwrap()
    }

    fn names(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| match e {
                Entry::Issuer(r) => format!("{}@{}", r.event.event.as_str(), r.event.time.0),
                Entry::Gateway(c) => format!(
                    "{}:{}@{}",
                    c.event(),
                    c.rest["model"].as_str().unwrap_or("-"),
                    c.time.0
                ),
            })
            .collect()
    }

    #[test]
    fn a_run_tree_follows_parents_through_generations() {
        let records = [
            event(1, 10, EventKind::AgentToken, "root", None),
            event(2, 11, EventKind::TokenExchange, "child", Some("root")),
            event(3, 12, EventKind::TokenExchange, "grandchild", Some("child")),
            event(4, 13, EventKind::AgentToken, "stranger", None),
        ];
        let tree = |run| {
            run_tree(run, records.iter())
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(tree("root"), ["child", "grandchild", "root"]);
        // A middle run's tree is it and what was exchanged from it, not its parent.
        let mut middle = records.clone();
        middle[2].event.root_run_id = Some("root".into());
        assert_eq!(
            run_tree("child", middle.iter())
                .into_iter()
                .collect::<Vec<_>>(),
            ["child", "grandchild"]
        );
        assert_eq!(tree("stranger"), ["stranger"]);
    }

    #[test]
    fn issuer_events_and_calls_merge_by_time_issuer_first_then_file_order() {
        let records = [
            event(1, 100, EventKind::AgentToken, "root", None),
            event(2, 102, EventKind::TokenExchange, "child", Some("root")),
            event(3, 105, EventKind::Revocation, "root", None),
        ];
        let selection = Selection {
            run: Some(("root".into(), run_tree("root", records.iter()))),
            ..Selection::default()
        };
        let first = [
            call(101, "root", "root", "a"),
            call(100, "root", "root", "tie-issuer-first"),
            "{not json".to_owned(),
            call(103, "other", "other", "not-in-the-run"),
            String::new(),
            call(104, "child", "root", "tie-file-order-1"),
        ]
        .join("\n");
        let second = [
            call(104, "child", "root", "tie-file-order-2"),
            r#"{"time": "soon"}"#.to_owned(),
            call(102, "grandchild-unseen", "root", "charged-to-root"),
        ]
        .join("\n");
        let mut timeline = Timeline::new(100);
        for r in records {
            timeline.issuer(r);
        }
        assert_eq!(
            timeline
                .gateway_log(0, first.as_bytes(), &selection)
                .unwrap(),
            1
        );
        assert_eq!(
            timeline
                .gateway_log(1, second.as_bytes(), &selection)
                .unwrap(),
            1
        );
        let entries = timeline.into_entries();
        assert_eq!(
            names(&entries),
            [
                "agent_token@100",
                "gateway.call:tie-issuer-first@100",
                "gateway.call:a@101",
                "token_exchange@102",
                "gateway.call:charged-to-root@102",
                "gateway.call:tie-file-order-1@104",
                "gateway.call:tie-file-order-2@104",
                "revocation@105",
            ]
        );
        // Every field the gateway wrote comes through.
        let Entry::Gateway(c) = &entries[1] else {
            panic!()
        };
        assert_eq!(c.rest["tools_called"], serde_json::json!(["search"]));
        assert_eq!(c.rest["tokens"], 10);
        assert_eq!((c.status, c.outcome()), (200, "success"));
    }

    #[test]
    fn only_the_newest_entries_are_kept() {
        let mut timeline = Timeline::new(3);
        let log: String = (0..50)
            .rev()
            .map(|t| call(1000 + t, "r", "r", &t.to_string()) + "\n")
            .collect();
        timeline.issuer(event(1, 1048, EventKind::Revocation, "r", None));
        timeline
            .gateway_log(0, log.as_bytes(), &Selection::default())
            .unwrap();
        assert_eq!(
            names(&timeline.into_entries()),
            [
                "revocation@1048",
                "gateway.call:48@1048",
                "gateway.call:49@1049"
            ]
        );
    }

    #[test]
    fn filters_by_node_user_runs_and_time_and_names_tool_calls() {
        let line = |node: &str, time: u64, run: &str| {
            serde_json::json!({"time": time, "run_id": run, "root_run_id": run, "sub": "s",
                               "node": node, "mcp_server": "docs", "mcp_tool": "search",
                               "status": 403, "refused": "tool not allowed", "reason": "tool"})
            .to_string()
        };
        let log = [
            line("n1", 10, "r1"),
            line("n2", 20, "r2"),
            line("n1", 30, "r3"),
        ]
        .join("\n");
        let kept = |selection: Selection| {
            let mut timeline = Timeline::new(10);
            timeline.gateway_log(0, log.as_bytes(), &selection).unwrap();
            timeline
                .into_entries()
                .into_iter()
                .map(|e| match e {
                    Entry::Gateway(c) => {
                        assert_eq!((c.event(), c.outcome()), ("gateway.tool_call", "denied"));
                        c.time.0
                    }
                    Entry::Issuer(_) => unreachable!(),
                })
                .collect::<Vec<_>>()
        };
        let node = |n: &str| Some(n.to_owned());
        assert_eq!(
            kept(Selection {
                node: node("n1"),
                ..Selection::default()
            }),
            [10, 30]
        );
        assert_eq!(
            kept(Selection {
                node: node("n1"),
                since: Some(20),
                ..Selection::default()
            }),
            [30]
        );
        assert_eq!(
            kept(Selection {
                user_runs: Some(BTreeSet::from(["r2".to_owned(), "r3".to_owned()])),
                ..Selection::default()
            }),
            [20, 30]
        );
    }

    #[test]
    fn an_overlong_line_is_skipped_and_counted_and_reading_goes_on() {
        let long = format!(
            "{{\"time\": 1, \"pad\": \"{}\"}}",
            "x".repeat(MAX_LINE + 10)
        );
        let log = format!(
            "{long}\n{}\n{}",
            call(5, "r", "r", "after"),
            "x".repeat(MAX_LINE + 1)
        );
        let mut timeline = Timeline::new(10);
        let bad = timeline
            .gateway_log(
                0,
                std::io::BufReader::with_capacity(64, log.as_bytes()),
                &Selection::default(),
            )
            .unwrap();
        assert_eq!(bad, 2);
        assert_eq!(names(&timeline.into_entries()), ["gateway.call:after@5"]);
    }
}
