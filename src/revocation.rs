//! Which tokens are revoked, answered from memory.
//!
//! Revocations are durable in the store and mirrored here, indexed by kind and value, so that
//! checking a token costs a few hash lookups. A revocation matches a token issued at or before
//! it (`iat <= revoked_at`): revoking is "kill what exists", and for nodes and users it also
//! refuses new tokens until lifted or until its `until` passes. Every change is broadcast for
//! the revocation feed. The index refreshes from the store, so replicas sharing a database
//! converge.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tailpass_verify::feed::RevocationKind;
use tailpass_verify::{AccessClaims, UnixTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

use crate::identity::Identity;
use crate::store::{Revocation, Store, StoreError};

/// How many feed events a slow subscriber may fall behind before it must resynchronize.
const FEED_BUFFER: usize = 1_024;
/// How often the server reads back revocations other replicas made.
pub const POLL_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// Own revocations remembered between two reads of the store; past it the oldest are
/// forgotten, at worst announced twice on the feed (a verifier applies an event idempotently).
const MAX_UNPOLLED: usize = 4_096;
/// Seconds a feed snapshot base is used before the store is read in full again: how late a
/// revocation that no longer matters may leave a new subscriber's snapshot.
pub const SNAPSHOT_BASE_AGE: u64 = 10;
/// Revocation feed streams served at once; past it, 503.
pub const MAX_SUBSCRIBERS: usize = 1_024;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The latest revocation's time: tokens issued at or before it are refused.
    revoked_at: UnixTime,
    /// Whether new tokens are refused, and until when (`Some(None)`: until lifted).
    blocks: Option<Option<UnixTime>>,
}

#[derive(Debug, Default)]
struct Index {
    last_seq: u64,
    /// The highest sequence number read back from the store by [`Revocations::refresh`]: the
    /// next read starts after it. Revocations this process made itself may be above it with
    /// others' still below (other replicas), so it is kept apart from `last_seq`.
    polled_seq: u64,
    /// Sequence numbers above `polled_seq` this process applied itself: a read that returns
    /// them again neither re-applies nor re-announces them. Bounded by [`MAX_UNPOLLED`].
    unpolled: BTreeSet<u64>,
    entries: HashMap<(RevocationKind, String), Entry>,
}

impl Index {
    fn apply(&mut self, r: &Revocation) {
        self.last_seq = self.last_seq.max(r.seq);
        let entry = self
            .entries
            .entry((r.kind, r.value.clone()))
            .or_insert(Entry {
                revoked_at: r.revoked_at,
                blocks: None,
            });
        entry.revoked_at = entry.revoked_at.max(r.revoked_at);
        // Only node and user revocations refuse new tokens; a lift ends that, and of two
        // blocks the longer wins (`None` inside meaning until lifted).
        if matches!(r.kind, RevocationKind::Node | RevocationKind::User) {
            entry.blocks = match (r.lifted_at, entry.blocks) {
                (Some(_), _) => None,
                (None, None) => Some(r.until),
                (None, Some(None)) => Some(None),
                (None, Some(Some(t))) => Some(r.until.map(|u| u.max(t))),
            };
        }
    }

    fn matches(&self, kind: RevocationKind, value: &str, iat: UnixTime) -> bool {
        self.entries
            .get(&(kind, value.to_owned()))
            .is_some_and(|e| iat <= e.revoked_at)
    }
}

/// Why a token or an issuance is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// What matched.
    pub kind: RevocationKind,
    /// The matched value.
    pub value: String,
}

impl std::fmt::Display for Hit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} is revoked", self.kind.as_str(), self.value)
    }
}

/// The revocation feed's snapshot base: the live revocations of one read of the store.
/// A feed snapshot is a base younger than [`SNAPSHOT_BASE_AGE`] plus the revocations stored
/// after its `seq`, so a subscriber connecting costs a read of the few recent rows, not of
/// every stored revocation — which, with subscribers coming and going, made the server's
/// memory grow with the number of revocations held.
#[derive(Debug)]
pub struct SnapshotBase {
    /// When the store was read.
    pub read_at: UnixTime,
    /// The highest sequence number the base accounts for: a row up to it is in the base if
    /// it was live when read; later rows are not.
    pub seq: u64,
    /// The live revocations read, in sequence order, as the comma-separated JSON members of
    /// a snapshot's `events`: serialized once, shared by every snapshot served from it.
    pub events: Bytes,
}

/// The revocation index.
#[derive(Debug)]
pub struct Revocations {
    index: RwLock<Index>,
    changes: broadcast::Sender<Revocation>,
    snapshot_base: Mutex<Option<Arc<SnapshotBase>>>,
}

impl Revocations {
    /// Revocations in the index.
    pub fn len(&self) -> usize {
        self.index.read().map(|i| i.entries.len()).unwrap_or(0)
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads every stored revocation.
    pub async fn load(store: &dyn Store) -> Result<Revocations, StoreError> {
        let (changes, _) = broadcast::channel(FEED_BUFFER);
        let list = Revocations {
            index: RwLock::new(Index::default()),
            changes,
            snapshot_base: Mutex::new(None),
        };
        list.refresh(store).await?;
        Ok(list)
    }

    /// Applies revocations stored or lifted since the last read (by another replica, say), and
    /// announces new revocations on the feed. The server calls it every [`POLL_EVERY`], so a
    /// revocation made, or lifted, by any replica reaches every replica's index (and a new
    /// one its feed) within about that.
    pub async fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        let since = self.index.read().map(|i| i.polled_seq).unwrap_or(0);
        let read = store.revocations_since(since).await?;
        let mut fresh = Vec::with_capacity(read.len());
        if let Ok(mut index) = self.index.write() {
            for r in read {
                index.polled_seq = index.polled_seq.max(r.position());
                let own = index.unpolled.remove(&r.seq);
                // The row as it stands now, lift included: applying it again is harmless, and
                // a lift made on another replica arrives this way. Only a revocation not yet
                // announced goes on the feed; a lift is no feed event (tokens it revoked stay
                // revoked).
                index.apply(&r);
                if !own && r.seq > since {
                    fresh.push(r);
                }
            }
            let polled = index.polled_seq;
            index.unpolled.retain(|seq| *seq > polled);
        }
        for r in fresh {
            let _ = self.changes.send(r);
        }
        Ok(())
    }

    /// The highest sequence number applied.
    pub fn last_seq(&self) -> u64 {
        self.index.read().map(|i| i.last_seq).unwrap_or(0)
    }

    /// Revokes `kind`/`value` now: durable first, then visible here and on the feed.
    pub async fn revoke(
        &self,
        store: &dyn Store,
        kind: RevocationKind,
        value: &str,
        now: UnixTime,
        until: Option<UnixTime>,
    ) -> Result<Revocation, StoreError> {
        let revocation = store.insert_revocation(kind, value, now, until).await?;
        if let Ok(mut index) = self.index.write() {
            index.apply(&revocation);
            if revocation.seq > index.polled_seq {
                index.unpolled.insert(revocation.seq);
                if index.unpolled.len() > MAX_UNPOLLED {
                    index.unpolled.pop_first();
                }
            }
        }
        let _ = self.changes.send(revocation.clone());
        Ok(revocation)
    }

    /// Allows new tokens for `kind`/`value` again; tokens already revoked stay revoked.
    pub async fn lift(
        &self,
        store: &dyn Store,
        kind: RevocationKind,
        value: &str,
        now: UnixTime,
    ) -> Result<Vec<Revocation>, StoreError> {
        let lifted = store.lift_revocations(kind, value, now).await?;
        if let Ok(mut index) = self.index.write() {
            for r in &lifted {
                index.apply(r);
            }
        }
        Ok(lifted)
    }

    /// Forgets the revocations no token can still match, as the store's purge does: those made
    /// before `horizon` (every token they could match has expired by then) that no longer
    /// refuse new tokens at `now`. Returns how many went; the index stays bounded by what can
    /// still matter.
    pub fn forget(&self, horizon: UnixTime, now: UnixTime) -> usize {
        let Ok(mut index) = self.index.write() else {
            return 0;
        };
        let before = index.entries.len();
        index.entries.retain(|_, e| {
            let blocking = e.blocks.is_some_and(|until| until.is_none_or(|t| now < t));
            e.revoked_at >= horizon || blocking
        });
        before - index.entries.len()
    }

    /// The feed's snapshot base, unless there is none read within [`SNAPSHOT_BASE_AGE`] before
    /// `now` (nor after it: a clock set back reads again).
    pub fn snapshot_base(&self, now: UnixTime) -> Option<Arc<SnapshotBase>> {
        let base = self.snapshot_base.lock().ok()?.clone()?;
        (base.read_at <= now && now < base.read_at.plus(SNAPSHOT_BASE_AGE)).then_some(base)
    }

    /// Keeps `base` as the feed's snapshot base.
    pub fn keep_snapshot_base(&self, base: Arc<SnapshotBase>) {
        if let Ok(mut kept) = self.snapshot_base.lock() {
            *kept = Some(base);
        }
    }

    /// Subscribes to revocations made from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.changes.subscribe()
    }

    /// Whether an access token with `claims`, signed by the key `kid` (its header's), is
    /// revoked, and by what.
    pub fn check(&self, claims: &AccessClaims, kid: Option<&str>) -> Option<Hit> {
        let index = self.index.read().ok()?;
        let iat = claims.iat;
        // One definition of what revokes a token, shared with every verifier.
        tailpass_verify::feed::candidates(claims, kid)
            .into_iter()
            .find(|(kind, value)| index.matches(*kind, value, iat))
            .map(|(kind, value)| Hit {
                kind,
                value: value.to_owned(),
            })
    }

    /// Whether a refresh family (by id) is revoked for tokens issued at `iat`.
    pub fn family_revoked(&self, family: &str, iat: UnixTime) -> bool {
        self.index
            .read()
            .map(|i| i.matches(RevocationKind::Family, family, iat))
            .unwrap_or(true)
    }

    /// Whether new tokens for this identity are refused (a revoked node or user).
    pub fn blocks_issuance(&self, identity: &Identity, now: UnixTime) -> Option<Hit> {
        let index = self.index.read().ok()?;
        let mut keys = vec![(RevocationKind::Node, identity.node.stable_id.0.as_str())];
        if let Some(user) = &identity.user {
            keys.push((RevocationKind::User, user.login.as_str()));
        }
        keys.into_iter()
            .find(|(kind, value)| {
                index
                    .entries
                    .get(&(*kind, (*value).to_owned()))
                    .and_then(|e| e.blocks)
                    .is_some_and(|until| until.is_none_or(|t| now < t))
            })
            .map(|(kind, value)| Hit {
                kind,
                value: value.to_owned(),
            })
    }
}

/// Shared handle.
pub type SharedRevocations = Arc<Revocations>;

/// The revocation feed's stream slots: [`MAX_SUBSCRIBERS`] in all, of which some are kept
/// for peers whose rule allows introspection (gateways), so any other tailnet peer opening
/// streams cannot leave a gateway without its feed.
#[derive(Debug, Clone)]
pub struct FeedSlots {
    open: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
}

impl FeedSlots {
    /// Slots with `reserved` of them kept for privileged peers.
    pub fn new(reserved: usize) -> FeedSlots {
        let reserved = reserved.min(MAX_SUBSCRIBERS);
        FeedSlots {
            open: Arc::new(Semaphore::new(MAX_SUBSCRIBERS - reserved)),
            reserved: Arc::new(Semaphore::new(reserved)),
        }
    }

    /// A slot for a subscriber: from the shared ones, then, for a privileged peer, from the
    /// reserved ones.
    pub fn acquire(&self, privileged: bool) -> Option<OwnedSemaphorePermit> {
        self.open.clone().try_acquire_owned().ok().or_else(|| {
            privileged
                .then(|| self.reserved.clone().try_acquire_owned().ok())
                .flatten()
        })
    }

    /// Streams being served.
    pub fn in_use(&self) -> usize {
        MAX_SUBSCRIBERS - self.open.available_permits() - self.reserved.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    fn claims(iat: u64) -> AccessClaims {
        serde_json::from_value(serde_json::json!({
            "iss": "i", "sub": "node:n1", "aud": "gw", "exp": iat + 100, "iat": iat, "jti": "j1",
            "client_id": "node:n1", "run_id": "r2", "parent_run_id": "r1", "root_run_id": "r0",
            "cnf": {"tailnet_node": "n1"}, "sid": "f1",
            "act": {"sub": "node:n1", "run_id": "r1", "act": {"sub": "node:n0", "run_id": "r0"}}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_snapshot_base_is_used_only_while_young() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).await.unwrap();
        let index = Revocations::load(&store).await.unwrap();
        let at = UnixTime(1_000);
        assert!(index.snapshot_base(at).is_none(), "none read yet");
        index.keep_snapshot_base(Arc::new(SnapshotBase {
            read_at: at,
            seq: 7,
            events: Bytes::new(),
        }));
        assert_eq!(index.snapshot_base(at).map(|b| b.seq), Some(7));
        let last = at.plus(SNAPSHOT_BASE_AGE - 1);
        assert_eq!(index.snapshot_base(last).map(|b| b.seq), Some(7));
        assert!(
            index.snapshot_base(at.plus(SNAPSHOT_BASE_AGE)).is_none(),
            "too old"
        );
        assert!(
            index.snapshot_base(UnixTime(999)).is_none(),
            "the clock went back"
        );
    }

    #[tokio::test]
    async fn a_replica_reads_back_what_others_revoked_once_whatever_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).await.unwrap();
        // Two replicas' indexes over one store.
        let a = Revocations::load(&store).await.unwrap();
        let b = Revocations::load(&store).await.unwrap();
        let mut a_feed = a.subscribe();
        let mut b_feed = b.subscribe();
        let at = UnixTime(1_000);
        a.revoke(&store, RevocationKind::Run, "r1", at, None)
            .await
            .unwrap();
        // B revokes after A, so its own revocation is above A's, which it has not read yet.
        b.revoke(&store, RevocationKind::Run, "r2", at, None)
            .await
            .unwrap();
        b.refresh(&store).await.unwrap();
        a.refresh(&store).await.unwrap();
        let mut seen_by_b = Vec::new();
        while let Ok(r) = b_feed.try_recv() {
            seen_by_b.push(r.value);
        }
        let mut seen_by_a = Vec::new();
        while let Ok(r) = a_feed.try_recv() {
            seen_by_a.push(r.value);
        }
        assert_eq!(
            seen_by_b,
            ["r2", "r1"],
            "each once: its own at once, A's when read"
        );
        assert_eq!(seen_by_a, ["r1", "r2"]);
        for list in [&a, &b] {
            for run in ["r1", "r2"] {
                let mut c = claims(1_000);
                c.run.run_id = Some(run.into());
                c.run.parent_run_id = None;
                c.run.root_run_id = None;
                c.run.act = None;
                assert!(list.check(&c, None).is_some(), "{run} refused everywhere");
            }
        }
    }

    /// Two replicas' indexes over one store: a node revoked, then lifted, at A; B refuses new
    /// tokens after reading back the revocation and allows them again after reading back the
    /// lift, while the tokens it revoked stay revoked and B's feed announces the revocation
    /// once, the lift never.
    async fn a_lift_at_one_replica_reaches_the_other(store: &dyn Store) {
        let identity = tagged();
        let node = identity.node.stable_id.0.clone();
        let a = Revocations::load(store).await.unwrap();
        let b = Revocations::load(store).await.unwrap();
        let mut b_feed = b.subscribe();
        a.revoke(store, RevocationKind::Node, &node, UnixTime(100), None)
            .await
            .unwrap();
        b.refresh(store).await.unwrap();
        assert!(b.blocks_issuance(&identity, UnixTime(150)).is_some());
        a.lift(store, RevocationKind::Node, &node, UnixTime(200))
            .await
            .unwrap();
        assert!(a.blocks_issuance(&identity, UnixTime(201)).is_none());
        b.refresh(store).await.unwrap();
        assert!(
            b.blocks_issuance(&identity, UnixTime(201)).is_none(),
            "the lift reached B"
        );
        let mut old = claims(100);
        old.cnf = Some(tailpass_verify::claims::Confirmation::node(&node, None));
        assert!(b.check(&old, None).is_some(), "lifting un-revokes nothing");
        let mut announced = Vec::new();
        while let Ok(r) = b_feed.try_recv() {
            announced.push(r.seq);
        }
        assert_eq!(announced.len(), 1, "the revocation once, the lift never");
        // Revoked again at B after the lift: A reads it back and refuses again.
        b.revoke(store, RevocationKind::Node, &node, UnixTime(300), None)
            .await
            .unwrap();
        a.refresh(store).await.unwrap();
        assert!(a.blocks_issuance(&identity, UnixTime(301)).is_some());
        // A replica starting now agrees.
        let c = Revocations::load(store).await.unwrap();
        assert!(c.blocks_issuance(&identity, UnixTime(301)).is_some());
    }

    #[tokio::test]
    async fn a_lift_at_one_replica_reaches_the_other_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).await.unwrap();
        a_lift_at_one_replica_reaches_the_other(&store).await;
    }

    #[tokio::test]
    async fn a_lift_at_one_replica_reaches_the_other_on_postgres() {
        let Some(db) = crate::store::postgres::tests::TestDb::create().await else {
            return;
        };
        a_lift_at_one_replica_reaches_the_other(&db.store).await;
        db.drop().await;
    }

    fn tagged() -> Identity {
        serde_json::from_str::<crate::identity::whois::WhoIsResponse>(include_str!(
            "../tests/fixtures/whois-tagged.json"
        ))
        .unwrap()
        .into_identity()
        .unwrap()
    }

    #[tokio::test]
    async fn a_kid_revokes_what_its_key_signed_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).await.unwrap();
        let list = Revocations::load(&store).await.unwrap();
        list.revoke(&store, RevocationKind::Kid, "k1", UnixTime(1_000), None)
            .await
            .unwrap();
        for list in [list, Revocations::load(&store).await.unwrap()] {
            assert_eq!(
                list.check(&claims(1_000), Some("k1")).map(|h| h.kind),
                Some(RevocationKind::Kid)
            );
            assert_eq!(list.check(&claims(1_000), Some("k2")), None, "another key");
            assert_eq!(list.check(&claims(1_001), Some("k1")), None, "signed after");
        }
    }

    #[tokio::test]
    async fn every_link_of_a_token_can_revoke_it_but_only_backwards_in_time() {
        for (kind, value) in [
            (RevocationKind::Jti, "j1"),
            (RevocationKind::Run, "r2"),
            (RevocationKind::Run, "r1"),
            (RevocationKind::Run, "r0"),
            (RevocationKind::Node, "n1"),
            (RevocationKind::Family, "f1"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open_in(dir.path()).await.unwrap();
            let list = Revocations::load(&store).await.unwrap();
            assert_eq!(list.check(&claims(1_000), None), None);
            list.revoke(&store, kind, value, UnixTime(1_000), None)
                .await
                .unwrap();
            assert_eq!(
                list.check(&claims(1_000), None).map(|h| h.kind),
                Some(kind),
                "{value}"
            );
            assert_eq!(
                list.check(&claims(1_001), None),
                None,
                "a token issued after is not matched"
            );
        }
    }

    #[tokio::test]
    async fn the_index_forgets_revocations_no_valid_token_can_match() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).await.unwrap();
        let list = Revocations::load(&store).await.unwrap();
        for i in 0..100 {
            list.revoke(
                &store,
                RevocationKind::Jti,
                &format!("j{i}"),
                UnixTime(1_000),
                None,
            )
            .await
            .unwrap();
        }
        list.revoke(
            &store,
            RevocationKind::Node,
            "n-blocked",
            UnixTime(1_000),
            None,
        )
        .await
        .unwrap();
        list.revoke(
            &store,
            RevocationKind::Run,
            "r-recent",
            UnixTime(5_000),
            None,
        )
        .await
        .unwrap();
        assert_eq!(list.len(), 102);
        // Every token issued by 1 000 has expired by 4 000 (the horizon).
        assert_eq!(list.forget(UnixTime(4_000), UnixTime(10_000)), 100);
        assert_eq!(list.len(), 2, "a standing node block and a recent run stay");
        let mut recent = claims(5_000);
        recent.run.run_id = Some("r-recent".into());
        assert!(list.check(&recent, None).is_some());
    }

    #[tokio::test]
    async fn node_revocation_blocks_issuance_until_lifted_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).await.unwrap();
        let list = Revocations::load(&store).await.unwrap();
        let identity: Identity = serde_json::from_str::<crate::identity::whois::WhoIsResponse>(
            include_str!("../tests/fixtures/whois-tagged.json"),
        )
        .unwrap()
        .into_identity()
        .unwrap();
        let node = identity.node.stable_id.0.clone();
        list.revoke(
            &store,
            RevocationKind::Node,
            &node,
            UnixTime(100),
            Some(UnixTime(200)),
        )
        .await
        .unwrap();
        assert!(list.blocks_issuance(&identity, UnixTime(150)).is_some());
        assert!(
            list.blocks_issuance(&identity, UnixTime(200)).is_none(),
            "until has passed"
        );
        list.revoke(&store, RevocationKind::Node, &node, UnixTime(300), None)
            .await
            .unwrap();
        assert!(list.blocks_issuance(&identity, UnixTime(10_000)).is_some());
        list.lift(&store, RevocationKind::Node, &node, UnixTime(400))
            .await
            .unwrap();
        assert!(list.blocks_issuance(&identity, UnixTime(401)).is_none());
        // A restart (a fresh index from the store) agrees.
        let reloaded = Revocations::load(&store).await.unwrap();
        assert!(reloaded.blocks_issuance(&identity, UnixTime(401)).is_none());
        assert_eq!(reloaded.last_seq(), list.last_seq());
    }

    #[test]
    fn reserved_slots_are_kept_for_privileged_peers() {
        let slots = FeedSlots::new(2);
        let taken: Vec<_> = std::iter::from_fn(|| slots.acquire(false)).collect();
        assert_eq!(
            taken.len(),
            MAX_SUBSCRIBERS - 2,
            "others fill only the shared slots"
        );
        assert!(slots.acquire(false).is_none());
        let gateway = [slots.acquire(true), slots.acquire(true)];
        assert!(gateway.iter().all(Option::is_some));
        assert!(slots.acquire(true).is_none());
        assert_eq!(slots.in_use(), MAX_SUBSCRIBERS);
        drop(taken);
        assert_eq!(slots.in_use(), 2);
    }
}
