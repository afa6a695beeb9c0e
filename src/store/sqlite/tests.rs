//! Tests of the SQLite store through the `Store` trait.

use std::sync::Arc;

use super::*;
use crate::audit::{EventKind, Outcome};
use crate::clients::{AuthMethod, ClientOrigin, GrantType};
use crate::identity::Identity;
use crate::identity::whois::WhoIsResponse;
use crate::secret::Secret;

fn alice() -> Identity {
    let json = include_str!("../../../tests/fixtures/whois-user.json");
    serde_json::from_str::<WhoIsResponse>(json)
        .unwrap()
        .into_identity()
        .unwrap()
}

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).await.unwrap();
    (dir, store)
}

fn client(id: &str) -> Client {
    Client {
        client_id: ClientId(id.into()),
        client_name: "Grafana".into(),
        secret_sha256: Some(Secret::generate().hash()),
        token_endpoint_auth_method: AuthMethod::ClientSecretBasic,
        redirect_uris: vec!["https://grafana.example/cb".into()],
        post_logout_redirect_uris: vec![],
        grant_types: vec![GrantType::AuthorizationCode],
        id_token_signed_response_alg: None,
        resources: vec![],
        users: vec![],
        backchannel_logout_uri: None,
        backchannel_logout_session_required: false,
        origin: ClientOrigin::Admin,
        registration_token_sha256: None,
        created_at: UnixTime(1),
        created_by: None,
    }
}

fn code(expires_at: u64) -> AuthCode {
    AuthCode {
        client_id: ClientId("c1".into()),
        redirect_uri: "https://grafana.example/cb".into(),
        scope: vec!["openid".into()],
        resources: vec![],
        nonce: Some("n".into()),
        pkce: None,
        identity: alice(),
        auth_time: UnixTime(100),
        sid: "s1".into(),
        expires_at: UnixTime(expires_at),
    }
}

fn c1() -> ClientId {
    ClientId("c1".into())
}

fn family(id: &str, expires_at: u64) -> RefreshFamily {
    RefreshFamily {
        id: id.into(),
        client_id: ClientId("c1".into()),
        identity: alice(),
        scope: vec!["openid".into(), "offline_access".into()],
        resources: vec![],
        auth_time: UnixTime(100),
        sid: "s1".into(),
        created_at: UnixTime(100),
        expires_at: UnixTime(expires_at),
        revoked_at: None,
    }
}

#[tokio::test]
async fn clients_round_trip_and_conflict() {
    let (_dir, store) = store().await;
    let c = client("c1");
    store.insert_client(&c).await.unwrap();
    assert!(matches!(
        store.insert_client(&c).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.client(&c.client_id).await.unwrap(), Some(c.clone()));
    let mut changed = c.clone();
    changed.client_name = "Grafana prod".into();
    assert!(store.update_client(&changed).await.unwrap());
    assert_eq!(store.clients().await.unwrap(), vec![changed]);
    assert!(store.delete_client(&c.client_id).await.unwrap());
    assert!(!store.delete_client(&c.client_id).await.unwrap());
    assert!(!store.update_client(&c).await.unwrap());
}

#[tokio::test]
async fn a_code_is_redeemed_exactly_once_even_under_concurrency() {
    let (_dir, store) = store().await;
    let store = Arc::new(store);
    let hash = Secret::generate().hash();
    store.insert_code(&hash, &code(160)).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (store, hash) = (store.clone(), hash.clone());
        tasks.push(tokio::spawn(async move {
            store.redeem_code(&hash, UnixTime(120)).await
        }));
    }
    let mut redeemed = 0;
    let mut replayed = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Redemption::Redeemed(c) => {
                assert_eq!(c, code(160));
                redeemed += 1;
            }
            Redemption::Replayed(..) => replayed += 1,
            Redemption::Invalid => panic!("a known, unexpired code is never invalid"),
        }
    }
    assert_eq!((redeemed, replayed), (1, 15));
}

#[tokio::test]
async fn replay_is_reported_and_expiry_is_enforced() {
    let (_dir, store) = store().await;
    let hash = Secret::generate().hash();
    store.insert_code(&hash, &code(160)).await.unwrap();
    assert!(matches!(
        store.redeem_code(&hash, UnixTime(160)).await.unwrap(),
        Redemption::Redeemed(_)
    ));
    assert_eq!(
        store.redeem_code(&hash, UnixTime(161)).await.unwrap(),
        Redemption::Replayed(code(160)),
        "a second redemption learns it is a replay, and of which code"
    );
    let late = Secret::generate().hash();
    store.insert_code(&late, &code(160)).await.unwrap();
    assert_eq!(
        store.redeem_code(&late, UnixTime(161)).await.unwrap(),
        Redemption::Invalid
    );
    let unknown = Secret::generate().hash();
    assert_eq!(
        store.redeem_code(&unknown, UnixTime(100)).await.unwrap(),
        Redemption::Invalid
    );
}

#[tokio::test]
async fn refresh_rotation_and_reuse_revokes_the_family() {
    let (_dir, store) = store().await;
    let (t1, t2, t3) = (
        Secret::generate().hash(),
        Secret::generate().hash(),
        Secret::generate().hash(),
    );
    store
        .insert_family(&family("f1", 10_000), &t1, UnixTime(100))
        .await
        .unwrap();
    assert!(matches!(
        store
            .rotate_refresh(&t1, &t2, &c1(), UnixTime(200))
            .await
            .unwrap(),
        Rotation::Rotated(_)
    ));
    // t1 is spent: presenting it again revokes the family, t2 included.
    match store
        .rotate_refresh(&t1, &t3, &c1(), UnixTime(300))
        .await
        .unwrap()
    {
        Rotation::Reused(f) => assert_eq!(f.revoked_at, Some(UnixTime(300))),
        other => panic!("expected reuse, got {other:?}"),
    }
    assert!(matches!(
        store
            .rotate_refresh(&t2, &t3, &c1(), UnixTime(301))
            .await
            .unwrap(),
        Rotation::Inactive(_)
    ));
    assert_eq!(
        store
            .rotate_refresh(&t3, &t1, &c1(), UnixTime(301))
            .await
            .unwrap(),
        Rotation::Unknown
    );
    let (family, spent) = store.family_of(&t2).await.unwrap().unwrap();
    assert_eq!((family.revoked_at, spent), (Some(UnixTime(300)), false));
    assert!(
        store.family_of(&t1).await.unwrap().unwrap().1,
        "t1 is spent"
    );
}

#[tokio::test]
async fn another_clients_refresh_token_is_unknown_and_left_alone() {
    let (_dir, store) = store().await;
    let (t1, t2) = (Secret::generate().hash(), Secret::generate().hash());
    store
        .insert_family(&family("f1", 10_000), &t1, UnixTime(100))
        .await
        .unwrap();
    let other = ClientId("c2".into());
    assert_eq!(
        store
            .rotate_refresh(&t1, &t2, &other, UnixTime(200))
            .await
            .unwrap(),
        Rotation::Unknown
    );
    assert!(matches!(
        store
            .rotate_refresh(&t1, &t2, &c1(), UnixTime(201))
            .await
            .unwrap(),
        Rotation::Rotated(_)
    ));
}

#[tokio::test]
async fn a_family_ends_at_its_absolute_lifetime() {
    let (_dir, store) = store().await;
    let (t1, t2) = (Secret::generate().hash(), Secret::generate().hash());
    store
        .insert_family(&family("f1", 1_000), &t1, UnixTime(100))
        .await
        .unwrap();
    assert!(matches!(
        store
            .rotate_refresh(&t1, &t2, &c1(), UnixTime(1_000))
            .await
            .unwrap(),
        Rotation::Inactive(_)
    ));
}

#[tokio::test]
async fn families_of_a_user_or_node_are_revoked_together() {
    let (_dir, store) = store().await;
    store
        .insert_family(
            &family("f1", 10_000),
            &Secret::generate().hash(),
            UnixTime(100),
        )
        .await
        .unwrap();
    store
        .insert_family(
            &family("f2", 10_000),
            &Secret::generate().hash(),
            UnixTime(100),
        )
        .await
        .unwrap();
    let gone = store
        .revoke_families_of(RevocationKind::User, "alice@example.com", UnixTime(200))
        .await
        .unwrap();
    assert_eq!(gone.len(), 2);
    let again = store
        .revoke_families_of(RevocationKind::Node, "nT2k5GQ8Zb11CNTRL", UnixTime(201))
        .await
        .unwrap();
    assert!(
        again.is_empty(),
        "already revoked families are not revoked twice"
    );
    assert!(!store.revoke_family("f1", UnixTime(202)).await.unwrap());
}

#[tokio::test]
async fn revocations_are_sequenced_lifted_and_purged() {
    let (_dir, store) = store().await;
    let a = store
        .insert_revocation(RevocationKind::Run, "r1", UnixTime(100), None)
        .await
        .unwrap();
    let b = store
        .insert_revocation(RevocationKind::Node, "n1", UnixTime(101), None)
        .await
        .unwrap();
    assert!(b.seq > a.seq);
    assert_eq!(
        store.revocations_since(a.seq).await.unwrap(),
        vec![b.clone()]
    );
    let lifted = store
        .lift_revocations(RevocationKind::Node, "n1", UnixTime(150))
        .await
        .unwrap();
    assert_eq!(lifted.len(), 1);
    assert_eq!(lifted[0].lifted_at, Some(UnixTime(150)));
    // Both are still needed while tokens issued before them may be valid…
    store.purge(UnixTime(200), 0, UnixTime(100)).await.unwrap();
    assert_eq!(store.revocations_since(0).await.unwrap().len(), 2);
    // …and gone once none can be.
    store
        .purge(UnixTime(5_000), 0, UnixTime(4_000))
        .await
        .unwrap();
    assert!(store.revocations_since(0).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_unlifted_node_revocation_outlives_the_token_horizon() {
    let (_dir, store) = store().await;
    store
        .insert_revocation(RevocationKind::Node, "n1", UnixTime(100), None)
        .await
        .unwrap();
    store
        .purge(UnixTime(5_000), 0, UnixTime(4_000))
        .await
        .unwrap();
    assert_eq!(
        store.revocations_since(0).await.unwrap().len(),
        1,
        "it still blocks new tokens"
    );
}

#[tokio::test]
async fn consent_is_per_client_and_user() {
    let (_dir, store) = store().await;
    let c = ClientId("c1".into());
    assert!(!store.has_consent(&c, "userid:1").await.unwrap());
    store
        .insert_consent(&c, "userid:1", UnixTime(1))
        .await
        .unwrap();
    store
        .insert_consent(&c, "userid:1", UnixTime(2))
        .await
        .unwrap();
    assert!(store.has_consent(&c, "userid:1").await.unwrap());
    assert!(!store.has_consent(&c, "userid:2").await.unwrap());
}

#[tokio::test]
async fn audit_is_queryable_by_run_and_append_only() {
    let (_dir, store) = store().await;
    let mut events = Vec::new();
    for i in 0..600u64 {
        let mut e = AuditEvent::new(UnixTime(1_000 + i), EventKind::AgentToken, Outcome::Success);
        e.run_id = Some(format!("run{}", i % 3));
        if i % 3 == 1 {
            e.parent_run_id = Some("run0".into());
            e.root_run_id = Some("run0".into());
        }
        events.push(e);
    }
    store.append_audit(events.into()).await.unwrap();
    let filter = AuditFilter {
        run: Some("run0".into()),
        limit: 1_000,
        ..Default::default()
    };
    assert_eq!(
        store.audit(&filter).await.unwrap().len(),
        400,
        "run0 and its children"
    );
    let newest = AuditFilter {
        limit: 5,
        ..Default::default()
    };
    let page = store.audit(&newest).await.unwrap();
    assert_eq!(page.len(), 5);
    assert_eq!(page[4].event.time, UnixTime(1_599), "newest last");
    let since = AuditFilter {
        since: Some(UnixTime(1_590)),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(store.audit(&since).await.unwrap().len(), 10);
    let after = AuditFilter {
        after_seq: Some(page[0].seq),
        limit: 2,
        ..Default::default()
    };
    assert_eq!(store.audit(&after).await.unwrap()[0].seq, page[1].seq);
    let tamper = store
        .worker
        .write(|c| Ok(c.execute("DELETE FROM audit", [])?))
        .await;
    assert!(tamper.unwrap_err().to_string().contains("append-only"));
    let tamper = store
        .worker
        .write(|c| Ok(c.execute("UPDATE audit SET outcome = 'denied'", [])?))
        .await;
    assert!(tamper.is_err());
}

#[tokio::test]
async fn database_file_is_private_and_reopens() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.insert_client(&client("c1")).await.unwrap();
    drop(store);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.clients().await.unwrap().len(), 1);
}

#[tokio::test]
async fn audit_rows_survive_the_lean_index_migration() {
    // A database left at schema version 1 by an older tailpass, holding audit events.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "BEGIN; {}; PRAGMA user_version = 1; COMMIT;",
            MIGRATIONS[0]
        ))
        .unwrap();
        for i in 0..3 {
            let mut e = AuditEvent::new(UnixTime(10 + i), EventKind::AgentToken, Outcome::Success);
            e.run_id = Some(format!("old{i}"));
            conn.execute(
                "INSERT INTO audit (time, event, outcome, run_id, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![time(e.time), "agent_token", "success", e.run_id, encode(&e).unwrap()],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let mut child = AuditEvent::new(UnixTime(20), EventKind::TokenExchange, Outcome::Success);
    child.run_id = Some("new".into());
    child.parent_run_id = Some("old1".into());
    child.root_run_id = Some("old1".into());
    store.append_audit(vec![child].into()).await.unwrap();
    let all = store
        .audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4], "old rows kept, numbering continues");
    let run = store
        .audit(&AuditFilter {
            run: Some("old1".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        run.len(),
        2,
        "the run and its child, through the partial indexes"
    );
    let tamper = store
        .worker
        .write(|c| Ok(c.execute("DELETE FROM audit WHERE seq = 1", [])?))
        .await;
    assert!(tamper.unwrap_err().to_string().contains("append-only"));
    let plan: String = store
        .worker
        .read(|c| {
            Ok(c.query_row(
                "EXPLAIN QUERY PLAN SELECT seq FROM audit WHERE parent_run_id = 'x'",
                [],
                |r| r.get(3),
            )?)
        })
        .await
        .unwrap();
    assert!(plan.contains("audit_parent_run"), "{plan}");
}
