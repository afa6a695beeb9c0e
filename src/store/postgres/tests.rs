//! The PostgreSQL test harness ([`TestDb`]: a fresh database per test on the cluster
//! `TAILPASS_TEST_POSTGRES` names) and what only PostgreSQL needs testing: replicas — several
//! pools on one database — racing for one code or one refresh token, and migrations applied
//! by one of several replicas starting together, beside a newer schema.

use std::sync::Arc;

use super::*;
use crate::secret::Secret;
use crate::store::tests::{Raw, c1, code, family};

/// The variable naming a throwaway cluster (a `postgres://` URL of a role that may create
/// databases).
const URL_VAR: &str = "TAILPASS_TEST_POSTGRES";
/// The variable that makes the PostgreSQL tests required (CI sets it).
const REQUIRE_VAR: &str = "TAILPASS_REQUIRE_POSTGRES";

/// The cluster to test against, or `None` (said on stderr) when none is configured.
pub(crate) fn cluster() -> Option<PostgresTarget> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(PostgresTarget::parse(&url).unwrap()),
        _ => {
            assert!(
                std::env::var(REQUIRE_VAR).as_deref() != Ok("1"),
                "{REQUIRE_VAR}=1 but {URL_VAR} is not set"
            );
            // Past the test harness's capture, so that a plain `cargo test` says what it skipped.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "skipped: {URL_VAR} not set");
            None
        }
    }
}

/// A database of its own for one test, dropped by [`TestDb::drop`].
pub(crate) struct TestDb {
    /// The store on it.
    pub store: PostgresStore,
    target: PostgresTarget,
    cluster: PostgresTarget,
    name: String,
}

impl TestDb {
    /// Creates `t_<random>` on the cluster and opens a store on it; `None` without a cluster.
    pub(crate) async fn create() -> Option<TestDb> {
        let cluster = cluster()?;
        let name = format!(
            "t_{}",
            Secret::generate().hash().to_hex().get(..16).unwrap()
        );
        admin(&cluster, &format!("CREATE DATABASE {name}")).await;
        let target = cluster.with_dbname(&name);
        let store = PostgresStore::open(&target, None, 8).await.unwrap();
        Some(TestDb {
            store,
            target,
            cluster,
            name,
        })
    }

    /// The database's `postgres://` URL (the cluster's, naming this database), for commands.
    pub(crate) fn url(&self) -> String {
        let cluster = std::env::var(URL_VAR).unwrap();
        let (base, query) = match cluster.split_once('?') {
            Some((base, query)) => (base.to_owned(), format!("?{query}")),
            None => (cluster.clone(), String::new()),
        };
        let (server, _) = base.rsplit_once('/').unwrap();
        format!("{server}/{}{query}", self.name)
    }

    /// Another replica: a store with its own pool on the same database.
    pub(crate) async fn replica(&self) -> PostgresStore {
        PostgresStore::open(&self.target, None, 8).await.unwrap()
    }

    /// Drops the database (its connections closed first).
    pub(crate) async fn drop(self) {
        self.store.pool.close();
        admin(
            &self.cluster,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .await;
    }
}

async fn admin(cluster: &PostgresTarget, sql: &str) {
    let pool = cluster.pool(None, 1).unwrap();
    pool.get().await.unwrap().batch_execute(sql).await.unwrap();
}

#[async_trait::async_trait]
impl Raw for PostgresStore {
    async fn execute(&self, sql: &str) -> Result<u64, StoreError> {
        Ok(self.conn().await?.execute(sql, &[]).await?)
    }

    async fn count(&self, table: &str) -> Result<i64, StoreError> {
        let row = self
            .conn()
            .await?
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?;
        get(&row, 0)
    }

    fn audit_tables(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Rounds of each race between two replicas.
const ROUNDS: usize = 100;

/// Stores a new code for round `round` (its own session id), returning its hash.
async fn issue_code(store: &PostgresStore, round: usize) -> (SecretHash, AuthCode) {
    let hash = Secret::generate().hash();
    let mut issued = code(160);
    issued.sid = format!("s{round}");
    store.insert_code(&hash, &issued).await.unwrap();
    (hash, issued)
}

#[tokio::test]
async fn two_replicas_redeeming_one_code_at_once_get_exactly_one_winner() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (a, b) = (&db.store, &db.replica().await);
    for round in 0..ROUNDS {
        let (hash, issued) = issue_code(a, round).await;
        // Each redemption brings the family it would create.
        let (ta, tb) = (Secret::generate().hash(), Secret::generate().hash());
        let (fa, fb) = (family(&issued.sid, 10_000), family(&issued.sid, 10_000));
        let (first, second) = tokio::join!(
            a.redeem_code(&hash, Some((&fa, &ta)), UnixTime(120)),
            b.redeem_code(&hash, Some((&fb, &tb)), UnixTime(120))
        );
        let outcomes = [first.unwrap(), second.unwrap()];
        let won = outcomes
            .iter()
            .filter(|o| matches!(o, Redemption::Redeemed))
            .count();
        let replayed = outcomes
            .iter()
            .filter(|o| matches!(o, Redemption::Replayed(_)))
            .count();
        assert_eq!((won, replayed), (1, 1), "round {round}");
        // The winner's family was created with its redemption; the loser, a replay, revoked
        // it and created none of its own.
        let (winner, loser) = if matches!(outcomes[0], Redemption::Redeemed) {
            (&ta, &tb)
        } else {
            (&tb, &ta)
        };
        let (born, _) = b.family_of(winner).await.unwrap().unwrap();
        assert!(!born.is_live(UnixTime(121)), "round {round}");
        assert!(a.family_of(loser).await.unwrap().is_none(), "round {round}");
    }
    db.drop().await;
}

#[tokio::test]
async fn two_replicas_rotating_one_refresh_token_at_once_get_exactly_one_winner() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (a, b) = (&db.store, &db.replica().await);
    for round in 0..ROUNDS {
        let t1 = Secret::generate().hash();
        let (ta, tb) = (Secret::generate().hash(), Secret::generate().hash());
        a.insert_family(&family(&format!("f{round}"), 10_000), &t1, UnixTime(100))
            .await
            .unwrap();
        let owner = c1();
        let (first, second) = tokio::join!(
            a.rotate_refresh(&t1, &ta, &owner, UnixTime(200)),
            b.rotate_refresh(&t1, &tb, &owner, UnixTime(200))
        );
        let outcomes = [first.unwrap(), second.unwrap()];
        let rotated = outcomes
            .iter()
            .filter(|o| matches!(o, Rotation::Rotated(_)))
            .count();
        let reused = outcomes
            .iter()
            .filter(|o| matches!(o, Rotation::Reused(_)))
            .count();
        assert_eq!((rotated, reused), (1, 1), "round {round}");
        // The loser's detection revoked the family: the winner's new token is dead too.
        for token in [&ta, &tb] {
            if let Some((f, _)) = a.family_of(token).await.unwrap() {
                assert_eq!(f.revoked_at, Some(UnixTime(200)), "round {round}");
            }
        }
    }
    db.drop().await;
}

#[tokio::test]
async fn revocation_and_audit_numbers_are_shared_by_replicas_without_gaps() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (a, b) = (&db.store, &db.replica().await);
    let inserts = (0..20).map(|i| {
        let store = if i % 2 == 0 { a } else { b };
        store.insert_revocation(RevocationKind::Run, "r", UnixTime(100), None)
    });
    let mut seqs: Vec<u64> = futures_util::future::join_all(inserts)
        .await
        .into_iter()
        .map(|r| r.unwrap().seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
    let batch = |t: u64| -> Arc<[AuditEvent]> {
        (0..10)
            .map(|_| {
                AuditEvent::new(
                    UnixTime(t),
                    crate::audit::EventKind::Logout,
                    crate::audit::Outcome::Success,
                )
            })
            .collect::<Vec<_>>()
            .into()
    };
    let (x, y) = tokio::join!(a.append_audit(batch(100)), b.append_audit(batch(100)));
    x.unwrap();
    y.unwrap();
    let all = a
        .audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..20).map(|i| 100_000_000 + i).collect::<Vec<u64>>());
    db.drop().await;
}

#[tokio::test]
async fn replicas_starting_together_migrate_once_and_a_newer_schema_is_tolerated() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let opened = futures_util::future::join_all((0..4).map(|_| db.replica())).await;
    assert_eq!(opened.len(), 4);
    let versions = db.store.count("schema_migrations").await.unwrap();
    assert_eq!(versions, i64::try_from(migrate::MIGRATIONS.len()).unwrap());
    // A newer replica migrated further (by adding only): this one still opens and works.
    db.store
        .execute("INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)")
        .await
        .unwrap();
    let older = db.replica().await;
    older
        .insert_revocation(RevocationKind::Jti, "j", UnixTime(1), None)
        .await
        .unwrap();
    db.drop().await;
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_not_a_crash() {
    // Nothing listens on port 1; the refusal comes at once, as `Unavailable`.
    let target = PostgresTarget::parse("postgres://u:p@127.0.0.1:1/d?sslmode=disable").unwrap();
    let refused = PostgresStore::open(&target, None, 2).await.unwrap_err();
    assert!(matches!(refused, StoreError::Unavailable(_)), "{refused}");
    assert!(!refused.to_string().contains(":p@"), "{refused}");
}

#[tokio::test]
async fn the_pool_recovers_when_its_connections_are_cut() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = &db.store;
    store.clients().await.unwrap();
    // Every connection of this database but the killer's is cut, as a restarted server would.
    db.replica()
        .await
        .execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    // A request may see the cut connection; the next ones get fresh ones.
    let _ = store.clients().await;
    let mut recovered = false;
    for _ in 0..20 {
        if store.clients().await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(recovered);
    db.drop().await;
}

#[tokio::test]
async fn a_manifest_written_by_one_replica_is_announced_to_the_others() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let other = db.replica().await;
    let mut changes = other.key_changes().unwrap();
    // The first change is the listener's own (LISTEN issued): from then on nothing is missed.
    tokio::time::timeout(std::time::Duration::from_secs(10), changes.changed())
        .await
        .unwrap()
        .unwrap();
    db.store.swap_key_manifest(None, 1, "[]").await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), changes.changed())
        .await
        .expect("the NOTIFY of the swap arrives")
        .unwrap();
    drop(changes);
    other.pool.close();
    db.drop().await;
}
