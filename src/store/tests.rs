//! The store's tests, written once and run against both backends: each test below is a
//! function of any [`Store`] (with [`Raw`] access to its tables for tampering and counting),
//! and [`suite!`] makes a `#[tokio::test]` of it per backend — SQLite on a temporary
//! directory, PostgreSQL on a fresh database of the cluster `TAILPASS_TEST_POSTGRES` names
//! (skipped, and saying so, without it; required with `TAILPASS_REQUIRE_POSTGRES=1`). Tests of
//! one backend's internals stay beside it (`sqlite/tests.rs`, `postgres/tests.rs`).

use tailpass_verify::UnixTime;
use tailpass_verify::feed::RevocationKind;

use super::*;
use crate::audit::{EventKind, Outcome};
use crate::clients::{AuthMethod, ClientOrigin, GrantType};
use crate::identity::Identity;
use crate::identity::whois::WhoIsResponse;
use crate::secret::Secret;

/// What a test may do to a backend's tables beneath the trait.
#[async_trait::async_trait]
pub(crate) trait Raw: Store {
    /// Runs one statement, returning the rows it changed.
    async fn execute(&self, sql: &str) -> Result<u64, StoreError>;
    /// The rows of `table`.
    async fn count(&self, table: &str) -> Result<i64, StoreError>;
    /// The tables the backend's audit log keeps beside `audit` (append-only as well).
    fn audit_tables(&self) -> &'static [&'static str];
}

pub(crate) fn alice() -> Identity {
    let json = include_str!("../../tests/fixtures/whois-user.json");
    serde_json::from_str::<WhoIsResponse>(json)
        .unwrap()
        .into_identity()
        .unwrap()
}

pub(crate) fn client(id: &str) -> Client {
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

pub(crate) fn code(expires_at: u64) -> AuthCode {
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

pub(crate) fn c1() -> ClientId {
    ClientId("c1".into())
}

pub(crate) fn family(id: &str, expires_at: u64) -> RefreshFamily {
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

/// Appends one logout event at `t`, alone in its batch.
pub(crate) async fn append_logout(store: &dyn Store, t: u64) {
    let event = AuditEvent::new(UnixTime(t), EventKind::Logout, Outcome::Success);
    store.append_audit(vec![event].into()).await.unwrap();
}

/// The times of the events at or after `t`, in log order.
pub(crate) async fn times_since(store: &dyn Store, t: u64) -> Vec<u64> {
    let filter = AuditFilter {
        since: Some(UnixTime(t)),
        ..Default::default()
    };
    let listed = listed(store, filter).await;
    listed.iter().map(|r| r.event.time.0).collect()
}

/// Lists the audit events `filter` selects, at most ten.
pub(crate) async fn listed(store: &dyn Store, filter: AuditFilter) -> Vec<AuditRecord> {
    store
        .audit(&AuditFilter {
            limit: 10,
            ..filter
        })
        .await
        .unwrap()
}

/// An audit event with everything an event can carry, for round trips.
pub(crate) fn full_event(time: u64, run: &str) -> AuditEvent {
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

/// Fills `store` with a little of everything a snapshot copies: two clients, a consent, a code
/// redeemed and one replayed, two families (one rotated twice, one revoked by the replay),
/// three revocations of which one lifted, audit events (a first one purged), and shared keys.
pub(crate) async fn populate(store: &dyn Store) {
    store
        .insert_federated_run(&fed_run("fr1", "123", 1, 4_000_000_000))
        .await
        .unwrap();
    let block = FederationBlock {
        selection: fed_match("github", &["run_id=123"]),
        since: UnixTime(50),
        until: UnixTime(4_000_000_000),
    };
    store.insert_federation_block(&block).await.unwrap();
    store.insert_client(&client("c1")).await.unwrap();
    let mut c2 = client("c2");
    c2.created_at = UnixTime(5);
    store.insert_client(&c2).await.unwrap();
    let approved = Consent {
        scopes: vec!["openid".into()],
        resources: vec![],
        redirect_uris: vec!["https://grafana.example/cb".into()],
        client_version: 0,
    };
    store
        .insert_consent(&c1(), "alice", &approved, UnixTime(100))
        .await
        .unwrap();
    let (redeemed, replayed) = (Secret::generate().hash(), Secret::generate().hash());
    store.insert_code(&redeemed, &code(160)).await.unwrap();
    let mut second = code(160);
    second.sid = "s2".into();
    store.insert_code(&replayed, &second).await.unwrap();
    let (t1, t2, t3) = (
        Secret::generate().hash(),
        Secret::generate().hash(),
        Secret::generate().hash(),
    );
    assert!(matches!(
        store
            .redeem_code(&redeemed, Some((&family("s1", 10_000), &t1)), UnixTime(110))
            .await
            .unwrap(),
        Redemption::Redeemed
    ));
    for (from, to) in [(&t1, &t2), (&t2, &t3)] {
        assert!(matches!(
            store
                .rotate_refresh(from, to, &c1(), UnixTime(120))
                .await
                .unwrap(),
            Rotation::Rotated(_)
        ));
    }
    let f2 = Secret::generate().hash();
    store
        .redeem_code(&replayed, Some((&family("s2", 10_000), &f2)), UnixTime(111))
        .await
        .unwrap();
    store
        .redeem_code(&replayed, None, UnixTime(112))
        .await
        .unwrap();
    store
        .insert_revocation(RevocationKind::Node, "n1", UnixTime(130), None)
        .await
        .unwrap();
    store
        .insert_revocation(
            RevocationKind::User,
            "bob",
            UnixTime(131),
            Some(UnixTime(900)),
        )
        .await
        .unwrap();
    store
        .lift_revocations(RevocationKind::Node, "n1", UnixTime(132))
        .await
        .unwrap();
    store
        .insert_revocation(RevocationKind::Jti, "j1", UnixTime(133), None)
        .await
        .unwrap();
    append_logout(store, 10).await;
    assert_eq!(store.purge_audit_before(UnixTime(20)).await.unwrap(), 1);
    let events: Vec<AuditEvent> = vec![
        full_event(140, "1733000000001-a"),
        full_event(140, "1733000000001-b"),
        AuditEvent::new(UnixTime(141), EventKind::Logout, Outcome::Success).by(&alice()),
        full_event(139, "1733000000002-c"),
    ];
    store.append_audit(events.into()).await.unwrap();
    append_logout(store, 150).await;
    store
        .swap_key_manifest(None, 1, r#"{"keys":["k1"]}"#)
        .await
        .unwrap();
    store.insert_key_blob("k1", 1, b"sealed k1").await.unwrap();
    store
        .insert_shared_secret("forms", 1, b"sealed forms")
        .await
        .unwrap();
}

pub(crate) async fn a_code_is_redeemed_exactly_once_even_under_concurrency<S: Store + Raw>(
    store: &S,
) {
    let hash = Secret::generate().hash();
    store.insert_code(&hash, &code(160)).await.unwrap();
    let attempts = (0..16).map(|_| store.redeem_code(&hash, None, UnixTime(120)));
    let mut redeemed = 0;
    let mut replayed = 0;
    for outcome in futures_util::future::join_all(attempts).await {
        match outcome.unwrap() {
            Redemption::Redeemed => redeemed += 1,
            Redemption::Replayed(..) => replayed += 1,
            Redemption::Invalid => panic!("a known, unexpired code is never invalid"),
        }
    }
    assert_eq!((redeemed, replayed), (1, 15));
}

pub(crate) async fn clients_round_trip_and_conflict<S: Store + Raw>(store: &S) {
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

pub(crate) async fn replay_is_reported_and_expiry_is_enforced<S: Store + Raw>(store: &S) {
    let hash = Secret::generate().hash();
    store.insert_code(&hash, &code(160)).await.unwrap();
    assert_eq!(
        store.code_state(&hash, UnixTime(160)).await.unwrap(),
        CodeState::Unspent(Box::new(code(160))),
        "reading a code does not spend it"
    );
    assert!(matches!(
        store.redeem_code(&hash, None, UnixTime(160)).await.unwrap(),
        Redemption::Redeemed
    ));
    assert_eq!(
        store.code_state(&hash, UnixTime(160)).await.unwrap(),
        CodeState::Spent
    );
    assert_eq!(
        store.redeem_code(&hash, None, UnixTime(161)).await.unwrap(),
        Redemption::Replayed(Box::new(code(160))),
        "a second redemption learns it is a replay, and of which code"
    );
    let late = Secret::generate().hash();
    store.insert_code(&late, &code(160)).await.unwrap();
    assert_eq!(
        store.code_state(&late, UnixTime(161)).await.unwrap(),
        CodeState::Unknown
    );
    assert_eq!(
        store.redeem_code(&late, None, UnixTime(161)).await.unwrap(),
        Redemption::Invalid
    );
    let unknown = Secret::generate().hash();
    assert_eq!(
        store.code_state(&unknown, UnixTime(100)).await.unwrap(),
        CodeState::Unknown
    );
    assert_eq!(
        store
            .redeem_code(&unknown, None, UnixTime(100))
            .await
            .unwrap(),
        Redemption::Invalid
    );
}

pub(crate) async fn a_code_is_spent_with_its_family_and_a_replay_revokes_that_family<
    S: Store + Raw,
>(
    store: &S,
) {
    let hash = Secret::generate().hash();
    store.insert_code(&hash, &code(160)).await.unwrap();
    let token = Secret::generate().hash();
    let first = family("s1", 10_000);
    assert!(matches!(
        store
            .redeem_code(&hash, Some((&first, &token)), UnixTime(120))
            .await
            .unwrap(),
        Redemption::Redeemed
    ));
    assert!(
        store
            .family_of(&token)
            .await
            .unwrap()
            .unwrap()
            .0
            .is_live(UnixTime(121)),
        "the family is created in the redemption's own step"
    );
    // The replay's atomic step revokes it, and creates nothing of its own.
    let replay_token = Secret::generate().hash();
    assert!(matches!(
        store
            .redeem_code(
                &hash,
                Some((&family("s9", 10_000), &replay_token)),
                UnixTime(122)
            )
            .await
            .unwrap(),
        Redemption::Replayed(_)
    ));
    let (revoked, _) = store.family_of(&token).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(UnixTime(122)));
    assert!(store.family_of(&replay_token).await.unwrap().is_none());

    // An unknown or expired code creates no family.
    let unknown = Secret::generate().hash();
    let stray = Secret::generate().hash();
    assert_eq!(
        store
            .redeem_code(
                &unknown,
                Some((&family("s3", 10_000), &stray)),
                UnixTime(121)
            )
            .await
            .unwrap(),
        Redemption::Invalid
    );
    let expired = Secret::generate().hash();
    store.insert_code(&expired, &code(160)).await.unwrap();
    assert_eq!(
        store
            .redeem_code(
                &expired,
                Some((&family("s4", 10_000), &stray)),
                UnixTime(161)
            )
            .await
            .unwrap(),
        Redemption::Invalid
    );
    assert!(store.family_of(&stray).await.unwrap().is_none());
}

pub(crate) async fn refresh_rotation_and_reuse_revokes_the_family<S: Store + Raw>(store: &S) {
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

pub(crate) async fn another_clients_refresh_token_is_unknown_and_left_alone<S: Store + Raw>(
    store: &S,
) {
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

pub(crate) async fn a_family_ends_at_its_absolute_lifetime<S: Store + Raw>(store: &S) {
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

pub(crate) async fn families_of_a_user_or_node_are_revoked_together<S: Store + Raw>(store: &S) {
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

pub(crate) async fn revocations_are_sequenced_lifted_and_purged<S: Store + Raw>(store: &S) {
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

/// The feed's snapshot base reads only what may still be live: a revocation newer than the
/// token horizon, or a node or user revocation still refusing new tokens; what waits for the
/// next purge is left out.
pub(crate) async fn live_revocations_leave_out_what_no_token_can_match<S: Store + Raw>(store: &S) {
    let at = UnixTime(100);
    let old_run = store
        .insert_revocation(RevocationKind::Run, "r-old", at, None)
        .await
        .unwrap();
    let node = store
        .insert_revocation(RevocationKind::Node, "n-standing", at, None)
        .await
        .unwrap();
    store
        .insert_revocation(RevocationKind::Node, "n-ended", at, Some(UnixTime(300)))
        .await
        .unwrap();
    store
        .insert_revocation(RevocationKind::User, "u-lifted", at, None)
        .await
        .unwrap();
    store
        .lift_revocations(RevocationKind::User, "u-lifted", UnixTime(150))
        .await
        .unwrap();
    let recent = store
        .insert_revocation(RevocationKind::Jti, "j-new", UnixTime(1_000), None)
        .await
        .unwrap();
    let seqs = |rows: Vec<Revocation>| rows.into_iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(
            store
                .live_revocations(UnixTime(900), UnixTime(1_000))
                .await
                .unwrap()
        ),
        [node.seq, recent.seq],
        "the standing block and the recent one, in sequence order"
    );
    let all = store
        .live_revocations(UnixTime(100), UnixTime(200))
        .await
        .unwrap();
    assert_eq!(all.len(), 5, "at the horizon: all of them");
    assert_eq!(all[0], old_run);
    assert_eq!(
        all.iter()
            .find(|r| r.value == "u-lifted")
            .map(|r| r.lifted_at),
        Some(Some(UnixTime(150))),
        "each as it stands now"
    );
}

pub(crate) async fn a_lift_is_numbered_so_that_readers_after_it_learn_of_it<S: Store + Raw>(
    store: &S,
) {
    assert!(
        store
            .lift_revocations(RevocationKind::Node, "n1", UnixTime(90))
            .await
            .unwrap()
            .is_empty(),
        "nothing to lift takes no number"
    );
    let a = store
        .insert_revocation(RevocationKind::Node, "n1", UnixTime(100), None)
        .await
        .unwrap();
    let b = store
        .insert_revocation(RevocationKind::User, "u1", UnixTime(101), None)
        .await
        .unwrap();
    let lifted = store
        .lift_revocations(RevocationKind::Node, "n1", UnixTime(150))
        .await
        .unwrap();
    assert_eq!(lifted.len(), 1);
    let lift_seq = lifted[0].lift_seq.unwrap();
    assert!(lift_seq > b.seq, "numbered after what was before it");
    assert_eq!(lifted[0].position(), lift_seq);
    // A reader that had read up to b learns of the lift, and only of it.
    let since_b = store.revocations_since(b.seq).await.unwrap();
    assert_eq!(since_b, lifted);
    assert!(store.revocations_since(lift_seq).await.unwrap().is_empty());
    // A later revocation comes after the lift, in the order readers apply them.
    let c = store
        .insert_revocation(RevocationKind::Node, "n1", UnixTime(200), None)
        .await
        .unwrap();
    assert!(c.seq > lift_seq, "the sequence went past the lift");
    let all: Vec<_> = store
        .revocations_since(0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.lifted_at))
        .collect();
    assert_eq!(
        all,
        [(b.seq, None), (a.seq, Some(UnixTime(150))), (c.seq, None)],
        "by position: the lifted row where it was lifted"
    );
}

pub(crate) async fn an_unlifted_node_revocation_outlives_the_token_horizon<S: Store + Raw>(
    store: &S,
) {
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

pub(crate) async fn consent_records_what_was_approved<S: Store + Raw>(store: &S) {
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
        .execute(
            "INSERT INTO consents (client_id, user_key, granted_at) VALUES ('c1', 'userid:3', 1)",
        )
        .await
        .unwrap();
    assert_eq!(store.consent(&c, "userid:3").await.unwrap(), None);
}

pub(crate) async fn audit_is_queryable_by_run_and_append_only<S: Store + Raw>(store: &S) {
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
    let tamper = store.execute("DELETE FROM audit").await;
    assert!(tamper.unwrap_err().to_string().contains("append-only"));
    let tamper = store.execute("UPDATE audit SET outcome = 'denied'").await;
    assert!(tamper.is_err());
}

pub(crate) async fn audit_seq_follows_time_even_when_the_clock_steps_back<S: Store + Raw>(
    store: &S,
) {
    let times = [100u64, 50, 100, 200];
    let batch: Vec<AuditEvent> = times
        .iter()
        .map(|t| AuditEvent::new(UnixTime(*t), EventKind::Authorize, Outcome::Success))
        .collect();
    store.append_audit(batch.into()).await.unwrap();
    // A later batch whose time is behind the log's end still comes after it.
    append_logout(store, 150).await;
    let all = listed(store, AuditFilter::default()).await;
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
    let kept = times_since(store, 60).await;
    assert_eq!(kept, [100, 100, 200, 150], "time >= 60, in log order");
    // A clock far in the future cannot overflow the sequence.
    append_logout(store, u64::MAX).await;
    let future = listed(
        store,
        AuditFilter {
            since: Some(UnixTime(u64::MAX)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(future.len(), 1);
}

pub(crate) async fn runs_are_found_through_their_zones_and_nothing_else_is<S: Store + Raw>(
    store: &S,
) {
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
            store,
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
        store,
        AuditFilter {
            run: Some(stranger),
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty(), "same zone, another run: nothing");
}

pub(crate) async fn audit_retention_drops_whole_old_ranges_and_nothing_else<S: Store + Raw>(
    store: &S,
) {
    let mut events = Vec::new();
    for (i, t) in [100u64, 200, 300, 400].into_iter().enumerate() {
        let mut e = AuditEvent::new(UnixTime(t), EventKind::AgentToken, Outcome::Success)
            .detail(format!("context {i}"));
        e.run_id = Some(format!("{t:010}run"));
        events.push(e);
    }
    store.append_audit(events.into()).await.unwrap();
    let count = |table: &'static str| async move { store.count(table).await.unwrap() };
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
    for table in store.audit_tables() {
        // SQLite's contexts and run zones: those only the old events used went.
        assert_eq!(count(table).await, 2, "{table}");
    }
    // Above the horizon the log stays append-only, and the horizon never moves back.
    let beside = store
        .audit_tables()
        .iter()
        .map(|t| format!("DELETE FROM {t}"));
    let tampering: Vec<String> = ["DELETE FROM audit"]
        .into_iter()
        .map(str::to_owned)
        .chain(beside)
        .chain(
            [
                "UPDATE audit_horizon SET seq = 0",
                "DELETE FROM audit_horizon",
            ]
            .map(str::to_owned),
        )
        .collect();
    for tamper in &tampering {
        let refused = store.execute(tamper).await;
        assert!(refused.is_err(), "{tamper}");
    }
    assert_eq!(store.purge_audit_before(UnixTime(150)).await.unwrap(), 0);
    assert_eq!(count("audit").await, 2);
}

/// Makes a test per backend of each named function of this module.
/// The shared keys' manifest is compare-and-swap; blobs and secrets are insert-if-absent and
/// go by generation.
async fn shared_keys_manifest_is_compare_and_swap<S: Raw>(store: &S) {
    assert_eq!(store.key_manifest().await.unwrap(), None);
    assert_eq!(
        store.swap_key_manifest(None, 1, "[1]").await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store.swap_key_manifest(None, 1, "[lost]").await.unwrap(),
        None,
        "a second first write loses"
    );
    assert_eq!(
        store.swap_key_manifest(Some(1), 1, "[2]").await.unwrap(),
        Some(2)
    );
    assert_eq!(
        store
            .swap_key_manifest(Some(1), 1, "[stale]")
            .await
            .unwrap(),
        None,
        "a write from a stale version loses"
    );
    let manifest = store.key_manifest().await.unwrap().unwrap();
    assert_eq!((manifest.version, manifest.generation), (2, 1));
    assert_eq!(manifest.data, "[2]");

    store.insert_key_blob("k1", 1, b"first").await.unwrap();
    store.insert_key_blob("k1", 1, b"second").await.unwrap();
    store.insert_key_blob("k1", 7, b"rewrapped").await.unwrap();
    assert_eq!(
        store.key_blob("k1", 1).await.unwrap().as_deref(),
        Some(&b"first"[..]),
        "the same kid is the same key: the first blob stays"
    );
    assert_eq!(store.key_blob("k2", 1).await.unwrap(), None);
    let first = store
        .insert_shared_secret("consent", 1, b"a")
        .await
        .unwrap();
    let second = store
        .insert_shared_secret("consent", 1, b"b")
        .await
        .unwrap();
    assert_eq!(
        (first.as_slice(), second.as_slice()),
        (&b"a"[..], &b"a"[..])
    );
    store
        .insert_shared_secret("consent", 7, b"c")
        .await
        .unwrap();
    store.delete_key_generation(1).await.unwrap();
    assert_eq!(store.key_blob("k1", 1).await.unwrap(), None);
    assert_eq!(store.shared_secret("consent", 1).await.unwrap(), None);
    assert_eq!(
        store.shared_secret("consent", 7).await.unwrap().as_deref(),
        Some(&b"c"[..])
    );
    store.delete_key_blob("k1").await.unwrap();
    assert_eq!(store.key_blob("k1", 7).await.unwrap(), None);
}

pub(crate) async fn import_refuses_a_store_that_is_not_empty<S: Store + Raw>(store: &S) {
    let (_dir, source) = crate::store::sqlite::tests::store().await;
    populate(&source).await;
    let snapshot = source.export().await.unwrap();
    // Numbers once given are never given again: a store whose revocations were all purged
    // still refuses, or its next revocation would reuse an imported one's number.
    store
        .insert_revocation(RevocationKind::Jti, "j0", UnixTime(1), None)
        .await
        .unwrap();
    store.purge(UnixTime(10), 0, UnixTime(5)).await.unwrap();
    assert_eq!(store.count("revocations").await.unwrap(), 0);
    assert!(matches!(
        store.import(&snapshot).await,
        Err(StoreError::Conflict(_))
    ));
    store.insert_client(&client("other")).await.unwrap();
    assert!(matches!(
        store.import(&snapshot).await,
        Err(StoreError::Conflict(_))
    ));
    // Nothing of the refused import was written.
    assert_eq!(store.count("clients").await.unwrap(), 1);
    assert_eq!(store.count("audit").await.unwrap(), 0);
}

/// An external token is traded once: the second claim of its key is refused, whoever makes
/// it, until the token has expired and the purge has swept it.
pub(crate) async fn a_federated_token_is_claimed_once_until_it_expires<S: Raw>(store: &S) {
    assert!(
        store
            .claim_federated_token("k1", UnixTime(100))
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_federated_token("k1", UnixTime(100))
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_federated_token("k2", UnixTime(300))
            .await
            .unwrap()
    );
    assert_eq!(store.count("federation_replay").await.unwrap(), 2);
    store.purge(UnixTime(200), 0, UnixTime(0)).await.unwrap();
    assert_eq!(store.count("federation_replay").await.unwrap(), 1);
    assert!(
        !store
            .claim_federated_token("k2", UnixTime(300))
            .await
            .unwrap()
    );
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_dir, store) = crate::store::sqlite::tests::store().await;
                    super::$name(&store).await;
                }
            )*
        }

        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = crate::store::postgres::tests::TestDb::create().await else {
                        return;
                    };
                    super::$name(&db.store).await;
                    db.drop().await;
                }
            )*
        }
    };
}

fn fed_run(run_id: &str, run: &str, attempt: u32, exp: u64) -> FederatedRun {
    let claims = serde_json::json!({"name": "github", "iss": "https://token.actions.githubusercontent.com",
        "sub": "repo:acme/app:ref:refs/heads/main", "run_id": run, "run_attempt": attempt.to_string(),
        "repository": "acme/app"});
    FederatedRun {
        run_id: run_id.into(),
        table: "github".into(),
        claims: claims.as_object().cloned().unwrap_or_default(),
        iat: UnixTime(10),
        exp: UnixTime(exp),
    }
}

fn fed_match(table: &str, pairs: &[&str]) -> RunMatch {
    RunMatch {
        table: table.into(),
        claims: RunMatch::parse_claims(pairs.iter().copied()).unwrap(),
    }
}

/// Federated runs are found by table and every claim as text, and purged after `exp`; blocks
/// are answered per table while in force, and purged at `until`.
pub(crate) async fn federated_runs_are_selected_by_claims_and_purged<S: Raw>(store: &S) {
    store
        .insert_federated_run(&fed_run("r1", "123", 1, 100))
        .await
        .unwrap();
    store
        .insert_federated_run(&fed_run("r2", "123", 2, 300))
        .await
        .unwrap();
    store
        .insert_federated_run(&fed_run("r3", "456", 1, 300))
        .await
        .unwrap();
    assert!(
        store
            .insert_federated_run(&fed_run("r3", "456", 1, 300))
            .await
            .is_err()
    );
    let ids = |runs: Vec<FederatedRun>| runs.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
    let run_123 = fed_match("github", &["run_id=123"]);
    assert_eq!(
        ids(store.federated_runs(&run_123).await.unwrap()),
        ["r1", "r2"]
    );
    let found = store.federated_runs(&run_123).await.unwrap();
    assert_eq!(found.first(), Some(&fed_run("r1", "123", 1, 100)));
    assert_eq!(
        ids(store
            .federated_runs(&fed_match("github", &["run_id=123", "run_attempt=2"]))
            .await
            .unwrap()),
        ["r2"]
    );
    assert!(
        store
            .federated_runs(&fed_match("gitlab", &["run_id=123"]))
            .await
            .unwrap()
            .is_empty()
    );

    let block = FederationBlock {
        selection: run_123.clone(),
        since: UnixTime(50),
        until: UnixTime(250),
    };
    store.insert_federation_block(&block).await.unwrap();
    assert_eq!(
        store
            .federation_blocks("github", UnixTime(200))
            .await
            .unwrap(),
        [block]
    );
    assert!(
        store
            .federation_blocks("github", UnixTime(250))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .federation_blocks("gitlab", UnixTime(200))
            .await
            .unwrap()
            .is_empty()
    );

    store.purge(UnixTime(200), 0, UnixTime(0)).await.unwrap();
    assert_eq!(ids(store.federated_runs(&run_123).await.unwrap()), ["r2"]);
    assert_eq!(store.count("federation_blocks").await.unwrap(), 1);
    store.purge(UnixTime(250), 0, UnixTime(0)).await.unwrap();
    assert_eq!(store.count("federation_blocks").await.unwrap(), 0);
}

suite!(
    clients_round_trip_and_conflict,
    a_code_is_redeemed_exactly_once_even_under_concurrency,
    replay_is_reported_and_expiry_is_enforced,
    a_code_is_spent_with_its_family_and_a_replay_revokes_that_family,
    refresh_rotation_and_reuse_revokes_the_family,
    another_clients_refresh_token_is_unknown_and_left_alone,
    a_family_ends_at_its_absolute_lifetime,
    families_of_a_user_or_node_are_revoked_together,
    revocations_are_sequenced_lifted_and_purged,
    an_unlifted_node_revocation_outlives_the_token_horizon,
    a_lift_is_numbered_so_that_readers_after_it_learn_of_it,
    live_revocations_leave_out_what_no_token_can_match,
    consent_records_what_was_approved,
    audit_is_queryable_by_run_and_append_only,
    audit_seq_follows_time_even_when_the_clock_steps_back,
    runs_are_found_through_their_zones_and_nothing_else_is,
    audit_retention_drops_whole_old_ranges_and_nothing_else,
    shared_keys_manifest_is_compare_and_swap,
    import_refuses_a_store_that_is_not_empty,
    a_federated_token_is_claimed_once_until_it_expires,
    federated_runs_are_selected_by_claims_and_purged,
);

/// Whole-store copies between the backends ([`Store::export`], [`Store::import`]).
mod snapshots {
    use super::*;
    use crate::store::postgres::tests::TestDb;

    /// What a copy must keep beyond equal snapshots: the store answers as the source did, and
    /// its sequences go on after the imported numbers.
    async fn answers_like(copy: &dyn Store, source: &Snapshot) {
        let runs = copy
            .federated_runs(&fed_match("github", &["run_id=123"]))
            .await
            .unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(
            copy.federation_blocks("github", UnixTime(100))
                .await
                .unwrap()
                .len(),
            1
        );
        let revocations = copy.revocations_since(0).await.unwrap();
        assert_eq!(revocations.len(), 3);
        assert!(revocations.iter().any(|r| r.lift_seq.is_some()));
        let run = listed(
            copy,
            AuditFilter {
                run: Some("1733000000001-b".into()),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(run.len(), 1);
        let top = source.next_revocation_floor();
        let fresh = copy
            .insert_revocation(RevocationKind::Jti, "after", UnixTime(200), None)
            .await
            .unwrap();
        assert!(
            i64::try_from(fresh.seq).unwrap() > top,
            "{} <= {top}",
            fresh.seq
        );
        let last = source.audit.last().unwrap().seq;
        append_logout(copy, 1).await;
        let all = copy.export().await.unwrap().audit;
        assert!(all.last().unwrap().seq > last);
        assert_eq!(all.len(), source.audit.len() + 1);
    }

    #[tokio::test]
    async fn a_store_round_trips_sqlite_to_postgres_to_sqlite() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let (_a, first) = crate::store::sqlite::tests::store().await;
        populate(&first).await;
        let exported = first.export().await.unwrap();
        assert_eq!(exported.clients.len(), 2);
        assert_eq!(exported.consents.len(), 1);
        assert_eq!(exported.codes.len(), 2);
        assert_eq!(exported.families.len(), 2);
        assert_eq!(exported.tokens.len(), 4);
        assert_eq!(exported.revocations.len(), 3);
        assert_eq!(exported.revocation_seq, 4);
        assert_eq!(exported.audit.len(), 5);
        assert_eq!(exported.audit_horizon, 20_000_000);
        assert!(exported.key_manifest.is_some());
        assert_eq!(exported.federated_runs.len(), 1);
        assert_eq!(exported.federation_blocks.len(), 1);

        db.store.import(&exported).await.unwrap();
        let on_postgres = db.store.export().await.unwrap();
        assert_eq!(on_postgres, exported);

        let (_b, last) = crate::store::sqlite::tests::store().await;
        last.import(&on_postgres).await.unwrap();
        assert_eq!(last.export().await.unwrap(), exported);

        answers_like(&db.store, &exported).await;
        answers_like(&last, &exported).await;
        // The rotated tokens stay spent, the replayed code's family stays revoked.
        let copied = db.store.export().await.unwrap();
        assert_eq!(
            copied
                .tokens
                .iter()
                .filter(|t| t.spent_at.is_some())
                .count(),
            2
        );
        assert_eq!(
            copied
                .families
                .iter()
                .filter(|f| f.revoked_at.is_some())
                .count(),
            1
        );
        db.drop().await;
    }
}
