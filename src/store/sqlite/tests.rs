//! Tests of the SQLite store through the `Store` trait.

use std::sync::Arc;

use super::*;
use crate::audit::{EventKind, Outcome};
use crate::clients::{AuthMethod, ClientOrigin, GrantType};
use crate::identity::Identity;
use crate::identity::whois::WhoIsResponse;
use crate::secret::Secret;
use rusqlite::params_from_iter;

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
        version: 0,
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
        jkt: None,
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
async fn a_code_replayed_while_its_first_redemption_is_in_flight_leaves_no_live_family() {
    let (_dir, store) = store().await;
    // The replay is detected before the first redemption creates its family: the creation is
    // refused, and nothing is left behind.
    let hash = Secret::generate().hash();
    store.insert_code(&hash, &code(160)).await.unwrap();
    assert!(matches!(
        store.redeem_code(&hash, UnixTime(120)).await.unwrap(),
        Redemption::Redeemed(_)
    ));
    assert!(matches!(
        store.redeem_code(&hash, UnixTime(121)).await.unwrap(),
        Redemption::Replayed(_)
    ));
    let token = Secret::generate().hash();
    let first = family("s1", 10_000);
    assert!(
        !store
            .complete_redemption(&hash, Some((&first, &token)), UnixTime(122))
            .await
            .unwrap(),
        "the in-flight redemption is refused"
    );
    assert_eq!(store.family_of(&token).await.unwrap(), None);
    assert!(
        !store
            .complete_redemption(&hash, None, UnixTime(122))
            .await
            .unwrap(),
        "also without a refresh family"
    );

    // The first redemption creates its family before the replay: the replay's own atomic
    // step revokes it, with nothing else having to run afterwards.
    let hash = Secret::generate().hash();
    let mut second_code = code(160);
    second_code.sid = "s2".into();
    store.insert_code(&hash, &second_code).await.unwrap();
    store.redeem_code(&hash, UnixTime(120)).await.unwrap();
    let token = Secret::generate().hash();
    let second = family("s2", 10_000);
    assert!(
        store
            .complete_redemption(&hash, Some((&second, &token)), UnixTime(121))
            .await
            .unwrap()
    );
    assert!(
        store
            .family_of(&token)
            .await
            .unwrap()
            .unwrap()
            .0
            .is_live(UnixTime(121))
    );
    store.redeem_code(&hash, UnixTime(122)).await.unwrap();
    let (revoked, _) = store.family_of(&token).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(UnixTime(122)));

    // An unknown or unredeemed code completes nothing.
    let unredeemed = Secret::generate().hash();
    store.insert_code(&unredeemed, &code(160)).await.unwrap();
    assert!(
        !store
            .complete_redemption(&unredeemed, None, UnixTime(121))
            .await
            .unwrap()
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
async fn consent_records_what_was_approved() {
    let (_dir, store) = store().await;
    let c = ClientId("c1".into());
    let approval = |scopes: &[&str], resources: &[&str], redirect: &str, version: u64| Consent {
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        resources: resources.iter().map(|s| s.to_string()).collect(),
        redirect_uris: vec![redirect.to_owned()],
        client_version: version,
    };
    assert_eq!(store.consent(&c, "userid:1").await.unwrap(), None);
    let first = approval(
        &["openid", "email"],
        &["https://gw.example"],
        "https://a.example/cb",
        1,
    );
    store
        .insert_consent(&c, "userid:1", &first, UnixTime(1))
        .await
        .unwrap();
    let stored = store.consent(&c, "userid:1").await.unwrap().unwrap();
    assert!(stored.covers(&first));
    assert!(stored.covers(&approval(&["openid"], &[], "https://a.example/cb", 1)));
    for more in [
        approval(&["openid", "groups"], &[], "https://a.example/cb", 1),
        approval(
            &["openid"],
            &["https://other.example"],
            "https://a.example/cb",
            1,
        ),
        approval(&["openid"], &[], "https://a.example/other", 1),
        approval(&["openid"], &[], "https://a.example/cb", 2),
    ] {
        assert!(!stored.covers(&more), "{more:?} asks again");
    }
    assert_eq!(
        store.consent(&c, "userid:2").await.unwrap(),
        None,
        "per user"
    );
    assert_eq!(
        store
            .consent(&ClientId("c2".into()), "userid:1")
            .await
            .unwrap(),
        None,
        "per client"
    );

    // A second approval adds to the first; one for a newer client version replaces it.
    let second = approval(&["groups"], &[], "https://a.example/other", 1);
    store
        .insert_consent(&c, "userid:1", &second, UnixTime(2))
        .await
        .unwrap();
    let joined = store.consent(&c, "userid:1").await.unwrap().unwrap();
    assert!(joined.covers(&first) && joined.covers(&second));
    let updated = approval(&["openid"], &[], "https://a.example/cb", 2);
    store
        .insert_consent(&c, "userid:1", &updated, UnixTime(3))
        .await
        .unwrap();
    assert_eq!(store.consent(&c, "userid:1").await.unwrap(), Some(updated));

    // A consent from before consents recorded anything approves nothing.
    store
        .worker
        .write(|c| {
            c.execute(
                "INSERT INTO consents (client_id, user_key, granted_at) VALUES ('c1', 'userid:3', 1)",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(store.consent(&c, "userid:3").await.unwrap(), None);
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

/// Appends one logout event at `t`, alone in its batch.
async fn append_logout(store: &SqliteStore, t: u64) {
    let event = AuditEvent::new(UnixTime(t), EventKind::Logout, Outcome::Success);
    store.append_audit(vec![event].into()).await.unwrap();
}

/// The times of the events at or after `t`, in log order.
async fn times_since(store: &SqliteStore, t: u64) -> Vec<u64> {
    let filter = AuditFilter {
        since: Some(UnixTime(t)),
        ..Default::default()
    };
    let listed = listed(store, filter).await;
    listed.iter().map(|r| r.event.time.0).collect()
}

/// Lists the audit events `filter` selects, at most ten.
async fn listed(store: &SqliteStore, filter: AuditFilter) -> Vec<AuditRecord> {
    store
        .audit(&AuditFilter {
            limit: 10,
            ..filter
        })
        .await
        .unwrap()
}

/// An audit event with everything an event can carry, for round trips.
fn full_event(time: u64, run: &str) -> AuditEvent {
    let mut e = AuditEvent::new(UnixTime(time), EventKind::AgentToken, Outcome::Success)
        .by(&alice())
        .detail("by rule 1");
    e.run_id = Some(run.into());
    e.run_label = Some(format!("label of {run}"));
    e.jti = Some(format!("jti-{run}"));
    e.audience = vec!["https://gateway.tail1234.ts.net".into()];
    e.scopes = vec!["llm:chat".into(), "files:read".into()];
    e
}

#[tokio::test]
async fn audit_rows_survive_the_migrations() {
    // A database left at schema version 1 by an older tailpass, holding audit events whose
    // times are not in seq order (the clock stepped back), and a run id with multi-byte
    // characters inside its zone prefix.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let mut old = vec![
        full_event(10, "old0"),
        full_event(12, "old1"),
        full_event(11, "ünïcödé-run-2"),
    ];
    old[2].outcome = Outcome::Denied;
    old[2].reason = Some("no rule allows node n1".into());
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "BEGIN; {}; PRAGMA user_version = 1; COMMIT;",
            MIGRATIONS[0]
        ))
        .unwrap();
        for e in &old {
            conn.execute(
                "INSERT INTO audit (time, event, outcome, user_login, node_id, run_id, jti, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    time(e.time),
                    e.event.as_str(),
                    e.outcome.as_str(),
                    e.user,
                    e.node_id,
                    e.run_id,
                    e.jti,
                    encode(e).unwrap()
                ],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let mut child = AuditEvent::new(UnixTime(20), EventKind::TokenExchange, Outcome::Success);
    child.run_id = Some("new".into());
    child.parent_run_id = Some("old1".into());
    child.root_run_id = Some("old1".into());
    store
        .append_audit(vec![child.clone()].into())
        .await
        .unwrap();
    let all = listed(
        &store,
        AuditFilter {
            ..Default::default()
        },
    )
    .await;
    let events: Vec<AuditEvent> = all.iter().map(|r| r.event.clone()).collect();
    let mut expected = old.clone();
    expected.push(child);
    assert_eq!(events, expected, "every field kept, in the original order");
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        [10_000_000, 12_000_000, 12_000_001, 20_000_000],
        "renumbered: increasing, and never below the event's time in microseconds"
    );
    let run = listed(
        &store,
        AuditFilter {
            run: Some("old1".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(run.len(), 2, "the run (through its zone) and its child");
    for id in ["ünïcödé-run-2", "old0"] {
        let found = listed(
            &store,
            AuditFilter {
                run: Some(id.into()),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(found.len(), 1, "{id}");
        assert_eq!(found[0].event.run_id.as_deref(), Some(id));
    }
    let by_node = listed(
        &store,
        AuditFilter {
            node: old[0].node_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_node.len(), 3, "the migrated contexts keep their node");
    let times = times_since(&store, 11).await;
    assert_eq!(times, [12, 11, 20]);
    for table in ["audit", "audit_context", "audit_run_zone"] {
        let tamper = store
            .worker
            .write(move |c| Ok(c.execute(&format!("DELETE FROM {table}"), [])?))
            .await;
        assert!(
            tamper.unwrap_err().to_string().contains("append-only"),
            "{table}"
        );
    }
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

#[tokio::test]
async fn audit_seq_follows_time_even_when_the_clock_steps_back() {
    let (_dir, store) = store().await;
    let times = [100u64, 50, 100, 200];
    let batch: Vec<AuditEvent> = times
        .iter()
        .map(|t| AuditEvent::new(UnixTime(*t), EventKind::Authorize, Outcome::Success))
        .collect();
    store.append_audit(batch.into()).await.unwrap();
    // A later batch whose time is behind the log's end still comes after it.
    append_logout(&store, 150).await;
    let all = listed(&store, AuditFilter::default()).await;
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        [
            100_000_000,
            100_000_001,
            100_000_002,
            200_000_000,
            200_000_001
        ]
    );
    for r in &all {
        assert!(r.seq >= r.event.time.0 * 1_000_000);
    }
    let kept = times_since(&store, 60).await;
    assert_eq!(kept, [100, 100, 200, 150], "time >= 60, in log order");
    // A clock far in the future cannot overflow the sequence.
    append_logout(&store, u64::MAX).await;
    let future = listed(
        &store,
        AuditFilter {
            since: Some(UnixTime(u64::MAX)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(future.len(), 1);
}

#[tokio::test]
async fn runs_are_found_through_their_zones_and_nothing_else_is() {
    let (_dir, store) = store().await;
    // Real run ids, minted together so that most share their zone prefix; each job writes its
    // zones, and a later job names one of the runs again (its revocation).
    let runs: Vec<String> = (0..300)
        .map(|_| {
            let mut random = [0u8; 16];
            crate::secret::fill_identifier(&mut random);
            crate::secret::run_id(random)
        })
        .collect();
    for chunk in runs.chunks(100) {
        let batch: Vec<AuditEvent> = chunk.iter().map(|r| full_event(1_000, r)).collect();
        store.append_audit(batch.into()).await.unwrap();
    }
    let mut revoked = AuditEvent::new(UnixTime(2_000), EventKind::Revocation, Outcome::Success);
    revoked.run_id = Some(runs[150].clone());
    store.append_audit(vec![revoked].into()).await.unwrap();
    for (i, run) in runs.iter().enumerate() {
        let found = listed(
            &store,
            AuditFilter {
                run: Some(run.clone()),
                ..Default::default()
            },
        )
        .await;
        let kinds: Vec<EventKind> = found.iter().map(|r| r.event.event).collect();
        let expected: &[EventKind] = if i == 150 {
            &[EventKind::AgentToken, EventKind::Revocation]
        } else {
            &[EventKind::AgentToken]
        };
        assert_eq!(kinds, expected, "run {i}");
        assert!(found.iter().all(|r| r.event.run_id.as_ref() == Some(run)));
    }
    let stranger = format!("{}zzzz", &runs[0][..30]);
    let none = listed(
        &store,
        AuditFilter {
            run: Some(stranger),
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty(), "same zone, another run: nothing");
    let zones: i64 = store
        .worker
        .read(|c| Ok(c.query_row("SELECT count(*) FROM audit_run_zone", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert!(
        zones < 300,
        "a zone per prefix and job, not per event: {zones}"
    );
}

#[tokio::test]
async fn audit_queries_never_scan_the_whole_log() {
    let (_dir, store) = store().await;
    let filters = [
        AuditFilter {
            run: Some("01jx".into()),
            limit: 10,
            ..Default::default()
        },
        AuditFilter {
            node: Some("nX".into()),
            limit: 10,
            ..Default::default()
        },
        AuditFilter {
            user: Some("alice@example.com".into()),
            event: Some(EventKind::AgentToken),
            limit: 10,
            ..Default::default()
        },
        AuditFilter {
            since: Some(UnixTime(1_000)),
            limit: 10,
            ..Default::default()
        },
    ];
    for filter in filters {
        let (sql, args) = audit::select(&filter);
        let plan: Vec<String> = store
            .worker
            .read(move |c| {
                let mut explain = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let rows = explain.query_map(params_from_iter(args), |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .unwrap();
        // A full pass over the events reads "SCAN a" or "SCAN e", with or without an index.
        let scans: Vec<&String> = plan
            .iter()
            .filter(|step| {
                ["SCAN a", "SCAN e"]
                    .iter()
                    .any(|s| *step == s || step.starts_with(&format!("{s} ")))
            })
            .collect();
        assert!(scans.is_empty(), "{filter:?}: {plan:#?}");
    }
}

/// A write job that stores a consent for `user` and then fails.
fn consent_then_fail(c: &Connection, user: &str) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO consents (client_id, user_key, granted_at) VALUES ('c1', ?1, 1)",
        [user],
    )?;
    Err(StoreError::Backend("refused after writing".into()))
}

async fn consents(store: &SqliteStore) -> i64 {
    store
        .worker
        .read(|c| Ok(c.query_row("SELECT count(*) FROM consents", [], |r| r.get(0))?))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_failed_write_leaves_nothing_behind_alone_or_batched() {
    let (_dir, store) = store().await;
    // Alone in its batch: the transaction is rolled back.
    let failed = store.worker.write(|c| consent_then_fail(c, "u1")).await;
    assert_eq!(
        failed.unwrap_err().to_string(),
        StoreError::Backend("refused after writing".into()).to_string()
    );
    assert_eq!(consents(&store).await, 0);
    // Beside other jobs (queued together, so usually one batch with savepoints; either way
    // only the failed job's write must go).
    let c = ClientId("c1".into());
    let approved = Consent::default();
    let (failed, kept, other) = tokio::join!(
        store.worker.write(|c| consent_then_fail(c, "u2")),
        store.insert_consent(&c, "u3", &approved, UnixTime(1)),
        store.insert_consent(&c, "u4", &approved, UnixTime(1)),
    );
    assert!(failed.is_err());
    kept.unwrap();
    other.unwrap();
    assert_eq!(consents(&store).await, 2);
    // The writer goes on.
    store.insert_client(&client("c1")).await.unwrap();
    assert!(store.consent(&c, "u3").await.unwrap().is_some());
    assert!(store.consent(&c, "u2").await.unwrap().is_none());
}

#[test]
fn answered_writes_are_synced_to_disk_not_only_to_the_os() {
    // `synchronous = NORMAL` in WAL mode leaves committed transactions in the OS page cache
    // until a checkpoint: a power loss loses writes that were already answered.
    let dir = tempfile::tempdir().unwrap();
    let conn = super::worker::open_writer(&dir.path().join("t.db")).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    let sync: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        (mode.as_str(), sync),
        ("wal", 2),
        "WAL with synchronous = FULL (2)"
    );
}

#[tokio::test]
async fn audit_retention_drops_whole_old_ranges_and_nothing_else() {
    let (_dir, store) = store().await;
    let mut events = Vec::new();
    for (i, t) in [100u64, 200, 300, 400].into_iter().enumerate() {
        let mut e = AuditEvent::new(UnixTime(t), EventKind::AgentToken, Outcome::Success)
            .detail(format!("context {i}"));
        e.run_id = Some(format!("{t:010}run"));
        events.push(e);
    }
    store.append_audit(events.into()).await.unwrap();
    let count = |table: &'static str| {
        let store = &store;
        async move {
            store
                .worker
                .read(move |c| {
                    Ok(
                        c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                            r.get::<_, i64>(0)
                        })?,
                    )
                })
                .await
                .unwrap()
        }
    };
    assert_eq!(store.purge_audit_before(UnixTime(250)).await.unwrap(), 2);
    let all = AuditFilter {
        limit: 100,
        ..Default::default()
    };
    let left: Vec<u64> = store
        .audit(&all)
        .await
        .unwrap()
        .iter()
        .map(|r| r.event.time.0)
        .collect();
    assert_eq!(left, [300, 400], "oldest first");
    assert_eq!(
        count("audit_context").await,
        2,
        "contexts only the old events used"
    );
    assert_eq!(count("audit_run_zone").await, 2);
    // Above the horizon the log stays append-only, and the horizon never moves back.
    for tamper in [
        "DELETE FROM audit",
        "DELETE FROM audit_context",
        "DELETE FROM audit_run_zone",
        "UPDATE audit_horizon SET seq = 0",
        "DELETE FROM audit_horizon",
    ] {
        let refused = store
            .worker
            .write(move |c| Ok(c.execute(tamper, [])?))
            .await;
        assert!(refused.is_err(), "{tamper}");
    }
    assert_eq!(store.purge_audit_before(UnixTime(150)).await.unwrap(), 0);
    assert_eq!(count("audit").await, 2);
}
