//! Runs minted from external tokens, as recorded for the kill switch and the audit
//! (`tailpass revoke --fed NAME --claim K=V`, `tailpass audit --fed NAME --claim K=V`).
//!
//! Each federation grant records its run with the table matched and the `fed` claims its run
//! token carries ([`FederatedRun`]); the audit log's fields are cut at 256 bytes, so these
//! live in a store table of their own, kept until the run token expires. A [`RunMatch`]
//! selects runs by table and by claims compared as text (`run_id=123` matches the string
//! `"123"` and the number `123` alike), and the same selection, stored with an end
//! ([`FederationBlock`]), refuses new trades of matching external tokens until then.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tailpass_verify::UnixTime;

/// The most claims one selection may name.
pub const MAX_CLAIMS: usize = 16;
/// The most bytes of a claim name or value in a selection.
pub const MAX_CLAIM_LEN: usize = 512;

/// A run minted from an external token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedRun {
    /// The tailpass run id of the token minted.
    pub run_id: String,
    /// The `[[federation]]` table the external token matched.
    pub table: String,
    /// The run token's `fed` object: issuer, subject, table name and the profile's claims.
    pub claims: Map<String, Value>,
    /// When the run token was issued.
    pub iat: UnixTime,
    /// When it expires (the row may go then).
    pub exp: UnixTime,
}

/// Which federated runs, or which external tokens: a table and claims that must all equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMatch {
    /// The table's name (`fed:<name>` in policy).
    pub table: String,
    /// Claim name → value, compared with the recorded claim as text.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// Why a selection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    /// Occurs when the table name or a claim is empty, too long or holds control characters.
    #[error(
        "the table and each claim name and value must be 1 to {MAX_CLAIM_LEN} printable characters"
    )]
    Value,
    /// Occurs when no claim is named (a whole table is not revoked by accident) or too many.
    #[error("name 1 to {MAX_CLAIMS} claims (K=V)")]
    Claims,
}

fn printable(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_CLAIM_LEN && !text.chars().any(char::is_control)
}

/// A claim's value as text: a string as it is, anything else as its JSON text.
pub fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl RunMatch {
    /// Refuses an empty or oversized selection.
    pub fn check(&self) -> Result<(), MatchError> {
        if !printable(&self.table) {
            return Err(MatchError::Value);
        }
        if self.claims.is_empty() || self.claims.len() > MAX_CLAIMS {
            return Err(MatchError::Claims);
        }
        if self
            .claims
            .iter()
            .any(|(k, v)| !printable(k) || !printable(v))
        {
            return Err(MatchError::Value);
        }
        Ok(())
    }

    /// Whether a token of `table` whose `fed` claims are `claims` is selected: the same table,
    /// and every named claim present with that value as text.
    pub fn matches(&self, table: &str, claims: &Map<String, Value>) -> bool {
        self.table == table
            && self
                .claims
                .iter()
                .all(|(k, v)| claims.get(k).is_some_and(|c| as_text(c) == *v))
    }

    /// Parses `K=V` pairs (the CLI's `--claim`), the first `=` separating.
    pub fn parse_claims<'a>(
        pairs: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeMap<String, String>, String> {
        pairs
            .into_iter()
            .map(|pair| {
                pair.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| format!("expected K=V, got {pair:?}"))
            })
            .collect()
    }
}

/// A stored refusal of new trades: external tokens matching `selection` get no run token
/// until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationBlock {
    /// Which tokens.
    pub selection: RunMatch,
    /// When it was made.
    pub since: UnixTime,
    /// When trades are allowed again (the row may go then).
    pub until: UnixTime,
}

impl FederationBlock {
    /// Whether it refuses a token of `table` with `claims` at `now`.
    pub fn blocks(&self, table: &str, claims: &Map<String, Value>, now: UnixTime) -> bool {
        now < self.until && self.selection.matches(table, claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn selection(table: &str, pairs: &[&str]) -> RunMatch {
        RunMatch {
            table: table.into(),
            claims: RunMatch::parse_claims(pairs.iter().copied()).unwrap(),
        }
    }

    #[test]
    fn every_claim_must_equal_as_text() {
        let fed = claims(
            json!({"name": "github", "run_id": "123", "run_attempt": "2",
            "repository": "acme/app", "id": 7, "public": true}),
        );
        assert!(selection("github", &["run_id=123"]).matches("github", &fed));
        assert!(
            selection("github", &["run_id=123", "repository=acme/app"]).matches("github", &fed)
        );
        assert!(selection("github", &["id=7", "public=true"]).matches("github", &fed));
        assert!(!selection("github", &["run_id=12"]).matches("github", &fed));
        assert!(!selection("github", &["run_id=1234"]).matches("github", &fed));
        assert!(!selection("github", &["run_id=123", "run_attempt=1"]).matches("github", &fed));
        assert!(!selection("github", &["missing=123"]).matches("github", &fed));
        assert!(!selection("gitlab", &["run_id=123"]).matches("github", &fed));
    }

    #[test]
    fn a_value_may_hold_equals_signs_and_pairs_need_one() {
        let parsed = RunMatch::parse_claims(["ref=refs/heads/a=b"]).unwrap();
        assert_eq!(
            parsed.get("ref").map(String::as_str),
            Some("refs/heads/a=b")
        );
        assert!(RunMatch::parse_claims(["run_id"]).is_err());
    }

    #[test]
    fn selections_are_bounded_and_name_a_claim() {
        assert_eq!(selection("github", &[]).check(), Err(MatchError::Claims));
        assert_eq!(selection("", &["a=b"]).check(), Err(MatchError::Value));
        assert_eq!(selection("github", &["a="]).check(), Err(MatchError::Value));
        assert_eq!(
            selection("github", &["a=\u{7}"]).check(),
            Err(MatchError::Value)
        );
        let many: Vec<String> = (0..=MAX_CLAIMS).map(|i| format!("k{i}=v")).collect();
        let too_many = RunMatch {
            table: "github".into(),
            claims: RunMatch::parse_claims(many.iter().map(String::as_str)).unwrap(),
        };
        assert_eq!(too_many.check(), Err(MatchError::Claims));
        assert_eq!(selection("github", &["run_id=123"]).check(), Ok(()));
    }

    #[test]
    fn a_block_ends_at_until() {
        let fed = claims(json!({"run_id": "123"}));
        let block = FederationBlock {
            selection: selection("github", &["run_id=123"]),
            since: UnixTime(100),
            until: UnixTime(200),
        };
        assert!(block.blocks("github", &fed, UnixTime(199)));
        assert!(!block.blocks("github", &fed, UnixTime(200)));
        assert!(!block.blocks("github", &claims(json!({"run_id": "456"})), UnixTime(150)));
    }
}
