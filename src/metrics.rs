//! `/metrics` in the Prometheus text format: audit events by kind and outcome (tokens issued
//! by grant among them), denials by reason, request latency by endpoint, and gauges read at
//! scrape time (keys, revocations, feed subscribers).
//!
//! Label values are bounded: endpoints are route templates, and denial reasons are reduced to
//! their leading words (identifiers dropped) with at most [`MAX_SERIES`] distinct values, past
//! which they count as `other`. Hand-written: a dozen lines of exposition format do not need a
//! metrics framework.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::audit::{EventKind, Outcome};

/// Distinct label sets per metric, at most.
pub const MAX_SERIES: usize = 64;
/// Distinct tool names per gateway tool metric, at most; past it a name counts as `other`.
/// Tool names come from callers and models, so they are bounded like any other label.
pub const MAX_TOOL_SERIES: usize = 256;

/// Latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters by label values, bounded.
#[derive(Debug, Default)]
struct Counters(Mutex<BTreeMap<Vec<String>, u64>>);

impl Counters {
    fn add(&self, labels: Vec<String>, n: u64) {
        self.add_within(labels, n, MAX_SERIES);
    }

    /// Adds `n` to `labels`, or to `other` once `most` label sets are counted.
    fn add_within(&self, labels: Vec<String>, n: u64, most: usize) {
        let Ok(mut map) = self.0.lock() else { return };
        let key = if map.contains_key(&labels) || map.len() < most {
            labels
        } else {
            labels.iter().map(|_| "other".to_owned()).collect()
        };
        *map.entry(key).or_insert(0) += n;
    }

    fn snapshot(&self) -> Vec<(Vec<String>, u64)> {
        self.0
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Latency histograms by label, bounded.
#[derive(Debug, Default)]
struct Histograms(Mutex<BTreeMap<String, Histogram>>);

impl Histograms {
    fn observe(&self, label: &str, elapsed: Duration) {
        let Ok(mut map) = self.0.lock() else { return };
        let key = if map.contains_key(label) || map.len() < MAX_SERIES {
            label.to_owned()
        } else {
            "other".to_owned()
        };
        let h = map.entry(key).or_default();
        let secs = elapsed.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound
                && let Some(b) = h.buckets.get_mut(i)
            {
                *b += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    fn render(&self, out: &mut String, name: &str, label: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let Ok(map) = self.0.lock() else { return };
        for (value, h) in map.iter() {
            let value = escape(value);
            for (bound, n) in BUCKETS.iter().zip(h.buckets.iter()) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{label}=\"{value}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}\n{name}_sum{{{label}=\"{value}\"}} {}\n{name}_count{{{label}=\"{value}\"}} {}",
                h.count, h.sum, h.count
            );
        }
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Values read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Signing keys by state (`active`, `next`, `retired`).
    pub keys: Vec<(&'static str, u64)>,
    /// Revocations in the index.
    pub revocations: u64,
    /// Open revocation feed streams.
    pub feed_subscribers: u64,
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// By event and outcome: both enums, so the label sets are bounded by construction and
    /// counting allocates nothing (it runs for every committed event).
    events: Mutex<HashMap<(EventKind, Outcome), u64>>,
    denials: Counters,
    requests: Histograms,
}

impl Metrics {
    /// Counts one committed audit event; a denial by its refusal's label (`other` without one),
    /// which comes from a typed reason and so never carries an identifier.
    pub fn event(&self, event: EventKind, outcome: Outcome, refusal: Option<&str>) {
        if let Ok(mut events) = self.events.lock() {
            *events.entry((event, outcome)).or_insert(0) += 1;
        }
        if outcome == Outcome::Denied {
            self.denials.add(
                vec![
                    event.as_str().to_owned(),
                    refusal.unwrap_or("other").to_owned(),
                ],
                1,
            );
        }
    }

    /// Observes one request's latency at `endpoint` (a route template).
    pub fn request(&self, endpoint: &str, elapsed: Duration) {
        self.requests.observe(endpoint, elapsed);
    }

    /// The exposition text.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let mut events: Vec<(Vec<String>, u64)> = self
            .events
            .lock()
            .map(|m| {
                m.iter()
                    .map(|((e, o), n)| (vec![e.as_str().to_owned(), o.as_str().to_owned()], *n))
                    .collect()
            })
            .unwrap_or_default();
        events.sort();
        counters(
            &mut out,
            "tailpass_events_total",
            "Audit events committed, by event and outcome (tokens issued: outcome success).",
            &["event", "outcome"],
            &events,
        );
        counters(
            &mut out,
            "tailpass_denials_total",
            "Denied requests, by event and reason.",
            &["event", "reason"],
            &self.denials.snapshot(),
        );
        self.requests.render(
            &mut out,
            "tailpass_http_request_duration_seconds",
            "endpoint",
            "Request latency by endpoint.",
        );
        let _ = writeln!(
            out,
            "# HELP tailpass_signing_keys Published signing keys by state.\n# TYPE tailpass_signing_keys gauge"
        );
        for (state, n) in &gauges.keys {
            let _ = writeln!(
                out,
                "tailpass_signing_keys{{state=\"{}\"}} {n}",
                escape(state)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tailpass_revocations Revocations in force.\n# TYPE tailpass_revocations gauge\ntailpass_revocations {}",
            gauges.revocations
        );
        let _ = writeln!(
            out,
            "# HELP tailpass_feed_subscribers Open revocation feed streams.\n# TYPE tailpass_feed_subscribers gauge\ntailpass_feed_subscribers {}",
            gauges.feed_subscribers
        );
        out
    }
}

/// The gateway's counters.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    calls: Counters,
    mcp: Counters,
    upstream: Histograms,
    tools_offered: Counters,
    tool_calls: Counters,
    budget_flush_errors: std::sync::atomic::AtomicU64,
}

impl GatewayMetrics {
    /// Counts one call by its status and refusal (`token`, `feed`, `endpoint`, `model`, `tool`,
    /// `quota`, `other`, or none).
    pub fn call(&self, status: u16, refused: &str) {
        self.calls
            .add(vec![status.to_string(), refused.to_owned()], 1);
    }

    /// Counts the tools one call offered the model and the tools the model called, each
    /// occurrence once, by tool name (at most [`MAX_TOOL_SERIES`] names, then `other`).
    pub fn tools(&self, offered: &[String], called: &[String]) {
        for (counters, names) in [(&self.tools_offered, offered), (&self.tool_calls, called)] {
            for name in names {
                counters.add_within(vec![name.clone()], 1, MAX_TOOL_SERIES);
            }
        }
    }

    /// Counts one MCP `tools/call` by server (a configured name) and outcome (`ok`,
    /// `tool_error`, `unknown`, `refused`, `unavailable`).
    pub fn mcp_call(&self, server: &str, outcome: &str) {
        self.mcp.add(vec![server.to_owned(), outcome.to_owned()], 1);
    }

    /// Observes an MCP server's time to answer headers (`target="mcp"`).
    pub fn mcp_server(&self, elapsed: Duration) {
        self.upstream.observe("mcp", elapsed);
    }

    /// Observes the upstream's time to answer headers.
    pub fn upstream(&self, elapsed: Duration) {
        self.upstream.observe("upstream", elapsed);
    }

    /// Counts a flush of budget charges that the budget store refused or did not answer (the
    /// charges are kept for the next flush).
    pub fn budget_flush_error(&self) {
        self.budget_flush_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        counters(
            &mut out,
            "tailpass_gateway_calls_total",
            "Gateway calls by status and refusal.",
            &["status", "refused"],
            &self.calls.snapshot(),
        );
        counters(
            &mut out,
            "tailpass_gateway_tools_offered_total",
            "Tools offered to models in gateway calls, by tool name.",
            &["tool"],
            &self.tools_offered.snapshot(),
        );
        counters(
            &mut out,
            "tailpass_gateway_tool_calls_total",
            "Tool calls in models' answers through the gateway, by tool name.",
            &["tool"],
            &self.tool_calls.snapshot(),
        );
        counters(
            &mut out,
            "tailpass_gateway_mcp_calls_total",
            "MCP tool calls by server and outcome.",
            &["server", "outcome"],
            &self.mcp.snapshot(),
        );
        self.upstream.render(
            &mut out,
            "tailpass_gateway_upstream_seconds",
            "target",
            "Time to the upstream's (or an MCP server's) response headers.",
        );
        let _ = writeln!(
            out,
            "# HELP tailpass_gateway_budget_flush_errors_total Budget flushes that failed (charges kept in memory, retried).\n# TYPE tailpass_gateway_budget_flush_errors_total counter\ntailpass_gateway_budget_flush_errors_total {}",
            self.budget_flush_errors
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        out
    }
}

fn counters(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &[&str],
    values: &[(Vec<String>, u64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (values, n) in values {
        let pairs: Vec<String> = labels
            .iter()
            .zip(values)
            .map(|(l, v)| format!("{l}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(out, "{name}{{{}}} {n}", pairs.join(","));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_are_bounded() {
        let counters = Counters::default();
        for i in 0..(MAX_SERIES * 2) {
            counters.add(vec![format!("e{i}"), "success".into()], 1);
        }
        let mut text = String::new();
        counters_text(&mut text, &counters);
        let series = text
            .lines()
            .filter(|l| l.starts_with("tailpass_events_total{"))
            .count();
        assert_eq!(series, MAX_SERIES + 1, "the extra ones fold into `other`");
        assert!(text.contains("tailpass_events_total{event=\"other\",outcome=\"other\"} 64"));
    }

    fn counters_text(out: &mut String, c: &Counters) {
        counters(
            out,
            "tailpass_events_total",
            "",
            &["event", "outcome"],
            &c.snapshot(),
        );
    }

    #[test]
    fn events_are_counted_by_kind_and_outcome() {
        let m = Metrics::default();
        m.event(EventKind::AgentToken, Outcome::Success, None);
        m.event(EventKind::AgentToken, Outcome::Success, None);
        m.event(EventKind::AgentToken, Outcome::Denied, Some("no_rule"));
        m.event(EventKind::Refresh, Outcome::Denied, None);
        let text = m.render(&Gauges::default());
        assert!(
            text.contains("tailpass_events_total{event=\"agent_token\",outcome=\"success\"} 2")
        );
        assert!(
            text.contains("tailpass_denials_total{event=\"agent_token\",reason=\"no_rule\"} 1")
        );
        assert!(text.contains("tailpass_denials_total{event=\"refresh\",reason=\"other\"} 1"));
    }

    #[test]
    fn tool_names_are_bounded_and_escaped() {
        let m = GatewayMetrics::default();
        let offered: Vec<String> = (0..MAX_TOOL_SERIES + 10)
            .map(|i| format!("tool_{i}"))
            .collect();
        m.tools(
            &offered,
            &["a\"b\\c\nd".to_owned(), "get_weather".to_owned()],
        );
        m.tools(&["tool_0".to_owned()], &["get_weather".to_owned()]);
        let text = m.render();
        let offered_series = text
            .lines()
            .filter(|l| l.starts_with("tailpass_gateway_tools_offered_total{"))
            .count();
        assert_eq!(offered_series, MAX_TOOL_SERIES + 1);
        for line in [
            "tailpass_gateway_tools_offered_total{tool=\"tool_0\"} 2",
            "tailpass_gateway_tools_offered_total{tool=\"other\"} 10",
            "tailpass_gateway_tool_calls_total{tool=\"get_weather\"} 2",
            "tailpass_gateway_tool_calls_total{tool=\"a\\\"b\\\\c\\nd\"} 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn histograms_are_cumulative() {
        let m = Metrics::default();
        m.request("/token", Duration::from_micros(800));
        m.request("/token", Duration::from_millis(30));
        let text = m.render(&Gauges::default());
        assert!(text.contains("endpoint=\"/token\",le=\"0.001\"} 1"));
        assert!(text.contains("endpoint=\"/token\",le=\"0.05\"} 2"));
        assert!(
            text.contains("tailpass_http_request_duration_seconds_count{endpoint=\"/token\"} 2")
        );
    }
}
