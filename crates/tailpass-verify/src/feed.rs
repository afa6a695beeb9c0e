//! The revocation feed's wire shapes and a verifier's copy of it (docs/design.md "Contracts":
//! revocation feed).
//!
//! Tokens are checked offline, so "kill this run" reaches a resource server through the feed:
//! a snapshot, then one event per revocation. A token matching an entry's `kind`/`value` with
//! `iat <= revoked_at` is refused. [`candidates`] is the one definition of what a token can be
//! revoked by; the issuer uses it too, so both sides refuse the same tokens.
//!
//! The copy forgets an entry once no token it matches can still be accepted. The feed says
//! when a revocation happened (`revoked_at`) but not how long the issuer's tokens live, so the
//! copy has a lifetime of its own, [`RevocationList::max_lifetime`]: a verifier refuses tokens
//! valid for longer (`exp - iat`), and then a token matching an entry has
//! `exp <= iat + max_lifetime <= revoked_at + max_lifetime`, accepted at most [`MAX_LEEWAY`]
//! past that. An entry is dropped once `revoked_at + max_lifetime + MAX_LEEWAY` has passed.
//! `until` (how long a node or user may not get new tokens) only concerns the issuer, which
//! mints nothing for them meanwhile, so it does not keep an entry here.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::{AccessClaims, UnixTime};

/// The longest token lifetime a list accepts by default, seconds: the issuer's default
/// `max_token_lifetime` (24 h).
pub const DEFAULT_MAX_LIFETIME: u64 = 86_400;
/// The most clock skew a verifier may tolerate past a token's `exp`, seconds; entries are
/// kept this much longer than the tokens they match.
pub const MAX_LEEWAY: u64 = 300;

/// What a revocation matches (docs/design.md "Contracts": revocation feed): the kinds this
/// crate knows. Defined here, with the feed's shapes, so that the issuer stores, broadcasts and
/// checks revocations through the very type verifiers match tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationKind {
    /// A run id: the run and every run exchanged from it.
    Run,
    /// A node's stable id.
    Node,
    /// A user's login.
    User,
    /// One token's `jti`.
    Jti,
    /// A refresh family id (a token's `sid`).
    Family,
    /// A signing key's `kid`: every token it signed (emergency key revocation), known from the
    /// token's JWS header.
    Kid,
}

impl RevocationKind {
    /// Every kind.
    pub const ALL: [RevocationKind; 6] = [
        RevocationKind::Jti,
        RevocationKind::Family,
        RevocationKind::Run,
        RevocationKind::Node,
        RevocationKind::User,
        RevocationKind::Kid,
    ];

    /// The feed's name for the kind (its JSON value, and the store's column text).
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Run => "run",
            RevocationKind::Node => "node",
            RevocationKind::User => "user",
            RevocationKind::Jti => "jti",
            RevocationKind::Family => "family",
            RevocationKind::Kid => "kid",
        }
    }
}

impl std::fmt::Display for RevocationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the [`RevocationKind`]s this crate knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown revocation kind {0:?}")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for RevocationKind {
    type Err = UnknownKind;

    /// Parses the feed's name for a kind, exactly as [`RevocationKind::as_str`] writes it.
    fn from_str(name: &str) -> Result<RevocationKind, UnknownKind> {
        RevocationKind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| UnknownKind(name.to_owned()))
    }
}

/// An event's `kind` as it arrives: one this crate knows, or one a newer issuer added.
///
/// A verifier cannot tell which tokens an unknown kind revokes, so a list holding one refuses
/// every token until the verifier is upgraded (docs/design.md "Contracts": revocation feed);
/// keeping the name, rather than failing to parse the event, is what lets it do so. On the wire
/// it is the bare name (`"run"`, …), the same as [`RevocationKind`]'s.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FeedKind {
    /// A kind this crate knows.
    Known(RevocationKind),
    /// A kind this crate does not know, by its name.
    Unknown(String),
}

impl FeedKind {
    /// The kind a name on the feed means: known if this crate knows it.
    pub fn named(name: &str) -> FeedKind {
        match name.parse::<RevocationKind>() {
            Ok(kind) => FeedKind::Known(kind),
            Err(UnknownKind(name)) => FeedKind::Unknown(name),
        }
    }

    /// The feed's name for the kind.
    pub fn as_str(&self) -> &str {
        match self {
            FeedKind::Known(kind) => kind.as_str(),
            FeedKind::Unknown(name) => name,
        }
    }
}

impl From<RevocationKind> for FeedKind {
    fn from(kind: RevocationKind) -> FeedKind {
        FeedKind::Known(kind)
    }
}

impl std::fmt::Display for FeedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FeedKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FeedKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<FeedKind, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(FeedKind::named(&name))
    }
}

/// One event of the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// Its position in the feed.
    pub seq: u64,
    /// What it matches: `run`, `node`, `user`, `jti`, `family` or `kid`, or a kind a newer
    /// issuer added.
    pub kind: FeedKind,
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

/// Every `(kind, value)` that revokes a token with `claims` signed by the key `kid` (its JWS
/// header's): its jti, its session, its run and every ancestor run (parent, root, and each run
/// in the `act` chain), its node, its user and its signing key.
pub fn candidates<'a>(
    claims: &'a AccessClaims,
    kid: Option<&'a str>,
) -> Vec<(RevocationKind, &'a str)> {
    let mut out: Vec<(RevocationKind, &str)> = vec![(RevocationKind::Jti, &claims.jti)];
    if let Some(kid) = kid {
        out.push((RevocationKind::Kid, kid));
    }
    if let Some(sid) = &claims.sid {
        out.push((RevocationKind::Family, sid));
    }
    let run = &claims.run;
    for id in [&run.run_id, &run.parent_run_id, &run.root_run_id]
        .into_iter()
        .flatten()
    {
        out.push((RevocationKind::Run, id));
    }
    let mut actor = run.act.as_ref();
    while let Some(a) = actor {
        if let Some(id) = &a.run_id {
            out.push((RevocationKind::Run, id));
        }
        actor = a.act.as_deref();
    }
    if let Some(node) = claims.cnf.as_ref().and_then(|c| c.tailnet_node.as_deref()) {
        out.push((RevocationKind::Node, node));
    }
    if let Some(login) = &claims.profile.preferred_username {
        out.push((RevocationKind::User, login));
    }
    out
}

/// Why a verifier's copy of the feed refuses a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Revoked {
    /// Occurs when one of the token's [`candidates`] was revoked after it was issued.
    #[error("the token's {kind} {value} was revoked")]
    Matched {
        /// The matching kind.
        kind: RevocationKind,
        /// The matching value.
        value: String,
    },
    /// Occurs when the feed sent a kind this verifier does not know: it cannot tell which
    /// tokens that revokes, so it refuses them all until upgraded.
    #[error(
        "the revocation feed sent a kind this verifier does not know ({0:?}); every token is \
         refused until it is upgraded"
    )]
    UnknownKind(String),
    /// Occurs when the copy cannot be read (a thread panicked while changing it).
    #[error("the revocation list is unavailable")]
    Unavailable,
}

#[derive(Debug)]
struct Entries {
    seq: u64,
    /// How long past `revoked_at` an entry is kept: the longest lifetime plus leeway.
    retention: u64,
    /// The earliest time an entry can be forgotten (`None`: no entry).
    next_expiry: Option<UnixTime>,
    /// Kind → value → when. Two levels so that checking a token looks up borrowed strings and
    /// allocates nothing. Unknown kinds are kept too, by name, to refuse every token while
    /// they last.
    revoked_at: HashMap<FeedKind, HashMap<String, UnixTime>>,
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
        let expiry = event.revoked_at.plus(self.retention);
        self.next_expiry = Some(self.next_expiry.map_or(expiry, |e| e.min(expiry)));
    }

    /// Drops the entries no token can match any more at `now`.
    fn forget_expired(&mut self, now: UnixTime) {
        if self.next_expiry.is_none_or(|e| now < e) {
            return;
        }
        let retention = self.retention;
        let mut next: Option<UnixTime> = None;
        for values in self.revoked_at.values_mut() {
            values.retain(|_, at| {
                let expiry = at.plus(retention);
                let keep = now < expiry;
                if keep {
                    next = Some(next.map_or(expiry, |e| e.min(expiry)));
                }
                keep
            });
        }
        self.revoked_at.retain(|_, values| !values.is_empty());
        self.next_expiry = next;
    }

    fn get(&self, kind: RevocationKind, value: &str) -> Option<UnixTime> {
        self.revoked_at
            .get(&FeedKind::Known(kind))?
            .get(value)
            .copied()
    }

    /// A kind held that this crate does not know, if any.
    fn unknown_kind(&self) -> Option<&str> {
        self.revoked_at.keys().find_map(|kind| match kind {
            FeedKind::Unknown(name) => Some(name.as_str()),
            FeedKind::Known(_) => None,
        })
    }

    fn len(&self) -> usize {
        self.revoked_at.values().map(HashMap::len).sum()
    }
}

/// A verifier's copy of the feed: applied snapshots and events, queried per token.
///
/// Bounded: each snapshot replaces the whole copy (the issuer lists only live revocations),
/// and between snapshots entries are forgotten once no token they match can be accepted
/// ([`RevocationList::forget_expired`]).
#[derive(Debug)]
pub struct RevocationList {
    entries: RwLock<Entries>,
    max_lifetime: u64,
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
    /// An empty list (nothing revoked, sequence 0) for tokens living at most
    /// [`DEFAULT_MAX_LIFETIME`].
    pub fn new() -> RevocationList {
        RevocationList::with_max_lifetime(DEFAULT_MAX_LIFETIME)
    }

    /// An empty list for tokens living at most `max_lifetime` seconds (the issuer's
    /// `max_token_lifetime`): verifiers using it refuse longer-lived tokens, and entries are
    /// forgotten once every token they match has expired.
    pub fn with_max_lifetime(max_lifetime: u64) -> RevocationList {
        RevocationList {
            entries: RwLock::new(Entries {
                seq: 0,
                retention: max_lifetime.saturating_add(MAX_LEEWAY),
                next_expiry: None,
                revoked_at: HashMap::new(),
            }),
            max_lifetime,
            changed: signal::Sender::default(),
        }
    }

    /// The longest token lifetime (`exp - iat`) this list can vouch for, seconds.
    pub fn max_lifetime(&self) -> u64 {
        self.max_lifetime
    }

    /// Forgets the entries that no token still acceptable at `now` can match. Cheap when
    /// nothing has expired yet; the feed's follower calls it as events and keep-alives come.
    pub fn forget_expired(&self, now: UnixTime) {
        if let Ok(mut entries) = self.entries.write() {
            entries.forget_expired(now);
        }
    }

    /// Replaces the list with a snapshot.
    pub fn apply_snapshot(&self, snapshot: &Snapshot) {
        let seq = {
            let Ok(mut entries) = self.entries.write() else {
                return;
            };
            entries.revoked_at.clear();
            entries.next_expiry = None;
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

    /// The revocation that refuses a token with `claims` signed by `kid` (its header's), if
    /// any. A poisoned lock, or an entry of a kind this crate does not know, refuses every
    /// token.
    pub fn check(&self, claims: &AccessClaims, kid: Option<&str>) -> Result<(), Revoked> {
        let Ok(entries) = self.entries.read() else {
            return Err(Revoked::Unavailable);
        };
        if entries.revoked_at.is_empty() {
            return Ok(());
        }
        if let Some(name) = entries.unknown_kind() {
            return Err(Revoked::UnknownKind(name.to_owned()));
        }
        for (kind, value) in candidates(claims, kid) {
            if entries.get(kind, value).is_some_and(|at| claims.iat <= at) {
                return Err(Revoked::Matched {
                    kind,
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
            kind: FeedKind::named(kind),
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
                list.check(&token(100), None),
                Err(Revoked::Matched {
                    kind: kind.parse().unwrap(),
                    value: value.into()
                }),
                "{kind} {value}"
            );
            assert!(
                list.check(&token(101), None).is_ok(),
                "issued after: {kind}"
            );
        }
        let list = RevocationList::new();
        list.apply(&event(1, "run", "unrelated", 100));
        assert!(list.check(&token(1), None).is_ok());
    }

    #[test]
    fn a_kid_revokes_every_older_token_that_key_signed() {
        let list = RevocationList::new();
        list.apply(&event(1, "kid", "k1", 100));
        assert_eq!(
            list.check(&token(100), Some("k1")),
            Err(Revoked::Matched {
                kind: RevocationKind::Kid,
                value: "k1".into()
            })
        );
        assert!(list.check(&token(100), Some("k2")).is_ok(), "another key");
        assert!(list.check(&token(101), Some("k1")).is_ok(), "issued after");
        assert_eq!(FeedKind::named("kid"), FeedKind::Known(RevocationKind::Kid));
        assert_eq!("kid".parse(), Ok(RevocationKind::Kid));
    }

    #[test]
    fn the_verifiers_copy_forgets_a_revocation_once_no_token_it_matches_can_be_valid() {
        let list = RevocationList::with_max_lifetime(600);
        list.apply(&event(1, "run", "child", 1_000));
        list.apply(&event(2, "node", "nNode", 1_200));
        let old = token(1_000);
        list.forget_expired(UnixTime(1_000 + 600 + MAX_LEEWAY - 1));
        assert_eq!(list.len(), 2, "a token of the run may still be accepted");
        assert!(list.check(&old, None).is_err());
        list.forget_expired(UnixTime(1_000 + 600 + MAX_LEEWAY));
        assert_eq!(list.len(), 1, "every token of the run has expired");
        list.forget_expired(UnixTime(1_200 + 600 + MAX_LEEWAY));
        assert!(list.is_empty());
        assert_eq!(list.seq(), 2, "forgetting keeps the resume point");
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
        assert!(list.check(&token(50), None).is_ok());
        assert!(list.wait_for_seq(9, std::time::Duration::from_millis(1)));
        assert!(!list.wait_for_seq(10, std::time::Duration::from_millis(1)));
    }

    #[test]
    fn kinds_keep_their_wire_names_and_unknown_ones_survive_parsing() {
        for kind in RevocationKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::json!(kind.as_str()));
            assert_eq!(kind.as_str().parse::<RevocationKind>(), Ok(kind));
            assert_eq!(serde_json::to_value(FeedKind::from(kind)).unwrap(), json);
        }
        assert_eq!(
            "Run".parse::<RevocationKind>(),
            Err(UnknownKind("Run".into()))
        );
        let text = r#"{"seq":4,"kind":"client","value":"c1","revoked_at":100}"#;
        let event: FeedEvent = serde_json::from_str(text).unwrap();
        assert_eq!(event.kind, FeedKind::Unknown("client".into()));
        assert_eq!(serde_json::to_string(&event).unwrap(), text);
        let known: FeedEvent =
            serde_json::from_str(r#"{"seq":5,"kind":"run","value":"r1","revoked_at":100}"#)
                .unwrap();
        assert_eq!(known.kind, FeedKind::Known(RevocationKind::Run));
    }

    #[test]
    fn a_kind_this_verifier_does_not_know_refuses_every_token_until_it_is_gone() {
        let list = RevocationList::with_max_lifetime(600);
        let snapshot: Snapshot = serde_json::from_value(serde_json::json!({
            "seq": 2,
            "events": [
                {"seq": 1, "kind": "run", "value": "unrelated", "revoked_at": 100},
                {"seq": 2, "kind": "client", "value": "c1", "revoked_at": 100}
            ]
        }))
        .unwrap();
        list.apply_snapshot(&snapshot);
        assert_eq!(
            list.check(&token(5_000), None),
            Err(Revoked::UnknownKind("client".into())),
            "even a token issued later, matching nothing known"
        );
        list.apply_snapshot(&Snapshot {
            seq: 3,
            events: vec![event(1, "run", "unrelated", 100)],
        });
        assert!(
            list.check(&token(5_000), None).is_ok(),
            "a snapshot without it"
        );
        list.apply(&event(4, "audience", "gw", 1_000));
        assert!(
            list.check(&token(5_000), None).is_err(),
            "an event of one, too"
        );
        list.forget_expired(UnixTime(1_000 + 600 + MAX_LEEWAY));
        assert!(
            list.check(&token(5_000), None).is_ok(),
            "forgotten once no token it could match is valid"
        );
    }
}
