//! The revocation feed's wire shapes and a verifier's copy of it (DESIGN "Contracts":
//! revocation feed).
//!
//! Tokens are checked offline, so "kill this run" reaches a resource server through the feed:
//! a snapshot, then one event per revocation. A token matching an entry's `kind`/`value` with
//! `iat <= revoked_at` is refused. [`candidates`] is the one definition of what a token can be
//! revoked by; the issuer uses it too, so both sides refuse the same tokens.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::{AccessClaims, UnixTime};

/// One event of the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// Its position in the feed.
    pub seq: u64,
    /// `run`, `node`, `user`, `jti` or `family`.
    pub kind: String,
    /// What it matches.
    pub value: String,
    /// Tokens with `iat <= revoked_at` are refused.
    pub revoked_at: UnixTime,
    /// For nodes and users: new tokens are refused until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<UnixTime>,
}

/// The feed's state at one moment: the first event of a stream, and the JSON answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The sequence number of the newest event included.
    pub seq: u64,
    /// Live revocations.
    pub events: Vec<FeedEvent>,
}

/// Every `(kind, value)` that revokes `claims`: its jti, its session, its run and every
/// ancestor run (parent, root, and each run in the `act` chain), its node and its user.
pub fn candidates(claims: &AccessClaims) -> Vec<(&'static str, &str)> {
    let mut out: Vec<(&'static str, &str)> = vec![("jti", &claims.jti)];
    if let Some(sid) = &claims.sid {
        out.push(("family", sid));
    }
    let run = &claims.run;
    for id in [&run.run_id, &run.parent_run_id, &run.root_run_id]
        .into_iter()
        .flatten()
    {
        out.push(("run", id));
    }
    let mut actor = run.act.as_ref();
    while let Some(a) = actor {
        if let Some(id) = &a.run_id {
            out.push(("run", id));
        }
        actor = a.act.as_deref();
    }
    if let Some(node) = claims.cnf.as_ref().and_then(|c| c.tailnet_node.as_deref()) {
        out.push(("node", node));
    }
    if let Some(login) = &claims.profile.preferred_username {
        out.push(("user", login));
    }
    out
}

/// Which revocation refused a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token's {kind} {value} was revoked")]
pub struct Revoked {
    /// The matching kind.
    pub kind: String,
    /// The matching value.
    pub value: String,
}

#[derive(Debug, Default)]
struct Entries {
    seq: u64,
    /// Kind → value → when. Two levels so that checking a token looks up borrowed strings and
    /// allocates nothing.
    revoked_at: HashMap<String, HashMap<String, UnixTime>>,
}

impl Entries {
    fn insert(&mut self, event: &FeedEvent) {
        let at = self
            .revoked_at
            .entry(event.kind.clone())
            .or_default()
            .entry(event.value.clone())
            .or_insert(event.revoked_at);
        *at = (*at).max(event.revoked_at);
    }

    fn get(&self, kind: &str, value: &str) -> Option<UnixTime> {
        self.revoked_at.get(kind)?.get(value).copied()
    }

    fn len(&self) -> usize {
        self.revoked_at.values().map(HashMap::len).sum()
    }
}

/// A verifier's copy of the feed: applied snapshots and events, queried per token.
///
/// Bounded by the issuer: entries leave the feed once no token they could match is valid, and
/// each snapshot replaces the whole copy.
#[derive(Debug)]
pub struct RevocationList {
    entries: RwLock<Entries>,
    changed: signal::Sender,
}

/// A tiny "the list changed" signal, so that code can wait for an event without polling.
mod signal {
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    /// Sequence numbers seen, with a condition variable for blocking waiters.
    #[derive(Debug, Default)]
    pub struct Sender {
        seq: Mutex<u64>,
        cv: Condvar,
    }

    impl Sender {
        pub fn publish(&self, seq: u64) {
            if let Ok(mut s) = self.seq.lock() {
                *s = seq;
                self.cv.notify_all();
            }
        }

        pub fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
            let Ok(guard) = self.seq.lock() else {
                return false;
            };
            self.cv
                .wait_timeout_while(guard, timeout, |s| *s < seq)
                .map(|(s, _)| *s >= seq)
                .unwrap_or(false)
        }
    }
}

impl Default for RevocationList {
    fn default() -> Self {
        RevocationList::new()
    }
}

impl RevocationList {
    /// An empty list (nothing revoked, sequence 0).
    pub fn new() -> RevocationList {
        RevocationList {
            entries: RwLock::new(Entries::default()),
            changed: signal::Sender::default(),
        }
    }

    /// Replaces the list with a snapshot.
    pub fn apply_snapshot(&self, snapshot: &Snapshot) {
        let seq = {
            let Ok(mut entries) = self.entries.write() else {
                return;
            };
            entries.revoked_at.clear();
            for event in &snapshot.events {
                entries.insert(event);
            }
            entries.seq = snapshot.seq;
            entries.seq
        };
        self.changed.publish(seq);
    }

    /// Adds one event.
    pub fn apply(&self, event: &FeedEvent) {
        let seq = {
            let Ok(mut entries) = self.entries.write() else {
                return;
            };
            entries.insert(event);
            entries.seq = entries.seq.max(event.seq);
            entries.seq
        };
        self.changed.publish(seq);
    }

    /// The newest sequence number applied: where a reconnecting subscriber resumes.
    pub fn seq(&self) -> u64 {
        self.entries.read().map(|e| e.seq).unwrap_or(0)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The revocation that refuses `claims`, if any. A poisoned lock refuses every token.
    pub fn check(&self, claims: &AccessClaims) -> Result<(), Revoked> {
        let Ok(entries) = self.entries.read() else {
            return Err(Revoked {
                kind: "list".into(),
                value: "unavailable".into(),
            });
        };
        if entries.revoked_at.is_empty() {
            return Ok(());
        }
        for (kind, value) in candidates(claims) {
            if entries.get(kind, value).is_some_and(|at| claims.iat <= at) {
                return Err(Revoked {
                    kind: kind.to_owned(),
                    value: value.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Blocks the calling thread until the list has applied sequence `seq`, or `timeout`
    /// passes; whether it got there. For tests and tools that must know an event arrived.
    pub fn wait_for_seq(&self, seq: u64, timeout: std::time::Duration) -> bool {
        self.changed.wait_for(seq, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{Actor, Confirmation, RunClaims};

    fn token(iat: u64) -> AccessClaims {
        AccessClaims {
            jti: "j1".into(),
            iat: UnixTime(iat),
            run: RunClaims {
                run_id: Some("child".into()),
                parent_run_id: Some("mid".into()),
                root_run_id: Some("root".into()),
                act: Some(Actor {
                    run_id: Some("mid".into()),
                    act: Some(Box::new(Actor {
                        run_id: Some("grand".into()),
                        ..Actor::default()
                    })),
                    ..Actor::default()
                }),
                ..RunClaims::default()
            },
            cnf: Some(Confirmation::node("nNode", None)),
            ..AccessClaims::default()
        }
    }

    fn event(seq: u64, kind: &str, value: &str, at: u64) -> FeedEvent {
        FeedEvent {
            seq,
            kind: kind.into(),
            value: value.into(),
            revoked_at: UnixTime(at),
            until: None,
        }
    }

    #[test]
    fn every_ancestor_run_and_the_node_revoke_but_only_older_tokens() {
        for (kind, value) in [
            ("run", "child"),
            ("run", "mid"),
            ("run", "root"),
            ("run", "grand"),
            ("node", "nNode"),
            ("jti", "j1"),
        ] {
            let list = RevocationList::new();
            list.apply(&event(1, kind, value, 100));
            assert_eq!(
                list.check(&token(100)).unwrap_err().value,
                value,
                "{kind} {value}"
            );
            assert!(list.check(&token(101)).is_ok(), "issued after: {kind}");
        }
        let list = RevocationList::new();
        list.apply(&event(1, "run", "unrelated", 100));
        assert!(list.check(&token(1)).is_ok());
    }

    #[test]
    fn a_snapshot_replaces_the_list_and_sets_the_sequence() {
        let list = RevocationList::new();
        list.apply(&event(3, "run", "child", 100));
        assert_eq!(list.seq(), 3);
        list.apply_snapshot(&Snapshot {
            seq: 9,
            events: vec![event(9, "node", "nOther", 100)],
        });
        assert_eq!((list.seq(), list.len()), (9, 1));
        assert!(list.check(&token(50)).is_ok());
        assert!(list.wait_for_seq(9, std::time::Duration::from_millis(1)));
        assert!(!list.wait_for_seq(10, std::time::Duration::from_millis(1)));
    }
}
