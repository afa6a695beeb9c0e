//! Replicas over one store: several key rings, each opened as a replica opens it, on SQLite
//! (one file) and on PostgreSQL (a pool each on a fresh database; skipped without
//! `TAILPASS_TEST_POSTGRES`, required with `TAILPASS_REQUIRE_POSTGRES=1`). Time is a
//! [`ManualClock`]; reloads are called where a replica's upkeep would call them.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use base64::Engine as _;
use tailpass_verify::{Alg, UnixTime};

use super::*;
use crate::clock::ManualClock;
use crate::keys::{KeyState, PUBLISH_DELAY};
use crate::store::postgres::tests::TestDb;

/// One database and the means to open replicas on it.
enum Db {
    Sqlite {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
    },
    Postgres(Box<TestDb>),
}

impl Db {
    async fn sqlite() -> Db {
        let (dir, store) = crate::store::sqlite::tests::store().await;
        Db::Sqlite {
            _dir: dir,
            store: Arc::new(store),
        }
    }

    async fn postgres() -> Option<Db> {
        TestDb::create().await.map(|db| Db::Postgres(Box::new(db)))
    }

    /// A replica's store: its own pool on PostgreSQL, the one file on SQLite.
    async fn replica(&self) -> Arc<dyn Store> {
        match self {
            Db::Sqlite { store, .. } => store.clone(),
            Db::Postgres(db) => Arc::new(db.replica().await),
        }
    }

    async fn close(self) {
        if let Db::Postgres(db) = self {
            (*db).drop().await;
        }
    }
}

/// A test run on both backends.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::Db::sqlite().await;
                    super::$name(&db).await;
                    db.close().await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::Db::postgres().await else {
                        return;
                    };
                    super::$name(&db).await;
                    db.close().await;
                }
            )*
        }
    };
}

fn settings() -> KeySettings {
    KeySettings {
        enabled: [Alg::ES256, Alg::EdDSA].into_iter().collect(),
        retire_after: 3_600,
        rotation_interval: Some(86_400),
    }
}

/// A key-encryption key file of `byte`s, mode 0600.
fn kek_file(dir: &Path, byte: u8) -> std::path::PathBuf {
    let path = dir.join(format!("kek-{byte}"));
    let line = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    std::fs::write(&path, format!("{line}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// What one replica has: its ring and secrets, and a directory of its own.
struct Replica {
    ring: Arc<KeyRing>,
    secrets: SharedSecrets,
    _dir: tempfile::TempDir,
}

async fn replica(db: &Db, kek: u8, clock: &Arc<ManualClock>) -> Result<Replica, KeyError> {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_file(dir.path(), kek);
    let (ring, secrets) = open(
        db.replica().await,
        &kek,
        &dir.path().join("keys"),
        settings(),
        clock.clone(),
    )
    .await?;
    Ok(Replica {
        ring: Arc::new(ring),
        secrets,
        _dir: dir,
    })
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(UnixTime(1_000_000)))
}

/// Runs a ring operation on a blocking thread, as the server does.
async fn blocking<T: Send + 'static>(
    ring: &Arc<KeyRing>,
    f: impl FnOnce(&KeyRing) -> T + Send + 'static,
) -> T {
    let ring = ring.clone();
    tokio::task::spawn_blocking(move || f(&ring)).await.unwrap()
}

fn published(ring: &KeyRing) -> Vec<String> {
    let mut kids: Vec<String> = ring
        .jwks()
        .unwrap()
        .keys
        .iter()
        .filter_map(|k| k.kid.clone())
        .collect();
    kids.sort();
    kids
}

/// The guarantee itself: whatever key any replica signs with, every replica publishes.
fn every_signing_key_is_published_everywhere(replicas: &[&Replica]) {
    for signer in replicas {
        for alg in signer.ring.enabled() {
            let kid = signer.ring.active(*alg).unwrap().kid().0.clone();
            for other in replicas {
                assert!(
                    other.ring.published(&kid).unwrap().is_some(),
                    "{kid} signs on one replica but another does not publish it"
                );
            }
        }
    }
}

fn next_of(ring: &KeyRing, alg: Alg) -> String {
    ring.list()
        .unwrap()
        .into_iter()
        .find(|k| k.entry.alg == alg && k.entry.state == KeyState::Next)
        .unwrap()
        .entry
        .kid
}

async fn replicas_publish_the_same_jwks_and_share_their_secrets(db: &Db) {
    let clock = clock();
    let a = replica(db, 1, &clock).await.unwrap();
    let b = replica(db, 1, &clock).await.unwrap();
    let c = replica(db, 1, &clock).await.unwrap();
    assert_eq!(published(&a.ring).len(), 4, "active and next per algorithm");
    assert_eq!(published(&a.ring), published(&b.ring));
    assert_eq!(published(&a.ring), published(&c.ring));
    for alg in [Alg::ES256, Alg::EdDSA] {
        assert_eq!(
            a.ring.active(alg).unwrap().kid(),
            c.ring.active(alg).unwrap().kid()
        );
    }
    let tag = |key: &ring::hmac::Key| ring::hmac::sign(key, b"form").as_ref().to_vec();
    assert_eq!(tag(&a.secrets.forms), tag(&c.secrets.forms));
    assert_eq!(tag(&a.secrets.dpop_nonce), tag(&b.secrets.dpop_nonce));
    assert_ne!(tag(&a.secrets.forms), tag(&a.secrets.dpop_nonce));
}

async fn a_next_key_is_published_by_every_replica_before_any_signs_with_it(db: &Db) {
    let clock = clock();
    let a = replica(db, 1, &clock).await.unwrap();
    let b = replica(db, 1, &clock).await.unwrap();
    let c = replica(db, 1, &clock).await.unwrap();
    let all = [&a, &b, &c];
    every_signing_key_is_published_everywhere(&all);

    // Keys created a moment ago: no replica may sign with the next one yet.
    let refused = blocking(&a.ring, |r| r.rotate(Some(Alg::ES256))).await;
    assert!(
        matches!(refused, Err(KeyError::TooSoon { .. })),
        "{refused:?}"
    );
    clock.advance(PUBLISH_DELAY);
    let promoted = next_of(&a.ring, Alg::ES256);
    blocking(&a.ring, |r| r.rotate(Some(Alg::ES256)))
        .await
        .unwrap();
    assert_eq!(a.ring.active(Alg::ES256).unwrap().kid().0, promoted);
    // B and C have not reloaded yet, and already publish what A signs with.
    every_signing_key_is_published_everywhere(&all);
    let new_next = next_of(&a.ring, Alg::ES256);
    assert!(b.ring.published(&new_next).unwrap().is_none());

    // The new next key is too young on every replica, whichever asks.
    for r in all {
        let refused = blocking(&r.ring, |r| r.rotate(Some(Alg::ES256))).await;
        assert!(
            matches!(refused, Err(KeyError::TooSoon { .. })),
            "{refused:?}"
        );
    }
    // Asking reloaded B and C; a reload does too.
    for r in all {
        blocking(&r.ring, KeyRing::reload).await.unwrap();
        assert_eq!(published(&r.ring), published(&a.ring));
    }
    every_signing_key_is_published_everywhere(&all);

    // Once published for the delay, C promotes it; the others still publish everything C signs.
    clock.advance(PUBLISH_DELAY);
    blocking(&c.ring, |r| r.rotate(Some(Alg::ES256)))
        .await
        .unwrap();
    assert_eq!(c.ring.active(Alg::ES256).unwrap().kid().0, new_next);
    every_signing_key_is_published_everywhere(&all);
}

async fn replicas_rotating_at_once_rotate_once(db: &Db) {
    let clock = clock();
    let a = replica(db, 1, &clock).await.unwrap();
    let b = replica(db, 1, &clock).await.unwrap();
    let before = published(&a.ring);
    clock.advance(86_400);
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let (first, second) = {
        let (ba, bb) = (barrier.clone(), barrier);
        tokio::join!(
            blocking(&a.ring, move |r| {
                ba.wait();
                r.maintain()
            }),
            blocking(&b.ring, move |r| {
                bb.wait();
                r.maintain()
            }),
        )
    };
    first.unwrap();
    second.unwrap();
    for r in [&a, &b] {
        blocking(&r.ring, KeyRing::reload).await.unwrap();
    }
    assert_eq!(a.ring.list().unwrap(), b.ring.list().unwrap());
    let list = a.ring.list().unwrap();
    for alg in [Alg::ES256, Alg::EdDSA] {
        let states: Vec<KeyState> = list
            .iter()
            .filter(|k| k.entry.alg == alg)
            .map(|k| k.entry.state)
            .collect();
        assert_eq!(
            states.len(),
            3,
            "one rotation: active, next, retired: {states:?}"
        );
        assert_eq!(
            states.iter().filter(|s| **s == KeyState::Retired).count(),
            1
        );
    }
    let new: Vec<_> = published(&a.ring)
        .into_iter()
        .filter(|k| !before.contains(k))
        .collect();
    assert_eq!(new.len(), 2, "one new next key per algorithm: {new:?}");
}

async fn a_key_revoked_on_one_replica_leaves_the_others_at_their_next_reload(db: &Db) {
    let clock = clock();
    let a = replica(db, 1, &clock).await.unwrap();
    let b = replica(db, 1, &clock).await.unwrap();
    let kid = a.ring.active(Alg::ES256).unwrap().kid().0.clone();
    let dropped = kid.clone();
    blocking(&a.ring, move |r| r.revoke(&dropped))
        .await
        .unwrap();
    assert!(a.ring.published(&kid).unwrap().is_none());
    assert!(blocking(&b.ring, KeyRing::reload).await.unwrap());
    assert!(b.ring.published(&kid).unwrap().is_none());
    assert!(b.ring.verifying_key(&kid).unwrap().is_none());
    assert_ne!(b.ring.active(Alg::ES256).unwrap().kid().0, kid);
    assert_eq!(published(&a.ring), published(&b.ring));
    // A replica opened afterwards never sees it.
    let c = replica(db, 1, &clock).await.unwrap();
    assert!(c.ring.published(&kid).unwrap().is_none());
}

async fn a_keys_directory_is_imported_into_an_empty_store(db: &Db) {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let kids = {
        let ring =
            KeyRing::open_in(open_dir(&keys, None).unwrap(), settings(), clock.clone()).unwrap();
        published(&ring)
    };
    let kek = kek_file(dir.path(), 1);
    let (first, _) = open(db.replica().await, &kek, &keys, settings(), clock.clone())
        .await
        .unwrap();
    assert_eq!(published(&first), kids, "the node's kid set is kept");
    let other = replica(db, 1, &clock).await.unwrap();
    assert_eq!(published(&other.ring), kids);
}

async fn a_rewrap_reseals_everything_and_a_replica_on_the_old_key_changes_nothing(db: &Db) {
    let clock = clock();
    let a = replica(db, 1, &clock).await.unwrap();
    let b = replica(db, 1, &clock).await.unwrap();
    let forms = ring::hmac::sign(&a.secrets.forms, b"form");
    blocking(&a.ring, |r| r.rewrap(Kek::from_bytes(&[2; 32]).unwrap()))
        .await
        .unwrap();
    // A seals under the new key from now on.
    clock.advance(PUBLISH_DELAY);
    blocking(&a.ring, |r| r.rotate(Some(Alg::ES256)))
        .await
        .unwrap();
    // B, on the old key, still serves what it has, but cannot load A's new key and refuses
    // to change anything: it must be restarted with the new key.
    let before = published(&b.ring);
    let reloaded = blocking(&b.ring, KeyRing::reload).await;
    assert!(
        matches!(reloaded, Err(KeyError::Sealing(_))),
        "{reloaded:?}"
    );
    assert_eq!(published(&b.ring), before);
    let refused = blocking(&b.ring, |r| r.rotate(Some(Alg::EdDSA))).await;
    assert!(matches!(refused, Err(KeyError::Sealing(_))), "{refused:?}");
    // A replica on the new key opens everything, secrets included; on the old one, nothing.
    let c = replica(db, 2, &clock).await.unwrap();
    assert_eq!(published(&c.ring), published(&a.ring));
    assert_eq!(
        ring::hmac::sign(&c.secrets.forms, b"form").as_ref(),
        forms.as_ref()
    );
    assert!(matches!(
        replica(db, 1, &clock).await.err(),
        Some(KeyError::Sealing(_))
    ));
}

on_both!(
    replicas_publish_the_same_jwks_and_share_their_secrets,
    a_next_key_is_published_by_every_replica_before_any_signs_with_it,
    replicas_rotating_at_once_rotate_once,
    a_key_revoked_on_one_replica_leaves_the_others_at_their_next_reload,
    a_keys_directory_is_imported_into_an_empty_store,
    a_rewrap_reseals_everything_and_a_replica_on_the_old_key_changes_nothing,
);
