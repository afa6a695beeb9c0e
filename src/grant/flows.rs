//! The grants driven directly, with no HTTP and no server state: the parts a [`Context`]
//! borrows are opened on a temporary directory — store, keys, audit log, revocation index —
//! beside a local identity table and a [`ManualClock`], so that expiry and lifetimes are
//! tested by moving time, not by waiting.

use std::collections::BTreeSet;
use std::sync::Arc;

use tailpass_verify::{Alg, UnixTime};

use super::agent::{self, AgentRequest};
use super::authorization_code::{self, CodeRequest};
use super::authorize::{self, AuthorizeParams, Outcome};
use super::error::{AgentError, ExchangeError, RedeemError, RefreshError};
use super::exchange::{self, ExchangeRequest};
use super::refresh::{self, RefreshRequest};
use super::{Context, Lifetimes, Policy, Rate, Signing, TokenResponse};
use crate::audit_log::AuditLog;
use crate::backchannel::Backchannel;
use crate::client_registry::Clients;
use crate::clients::{AuthMethod, Client, ClientId, ClientOrigin, GrantType};
use crate::clock::{Clock, ManualClock};
use crate::identity::Identity;
use crate::identity::local::LocalTable;
use crate::identity::peer::CallerError;
use crate::identity::whois::WhoIsResponse;
use crate::issuer::Issuer;
use crate::keys::{KeyRing, KeySettings};
use crate::policy::agent::Denied;
use crate::policy::file::PolicyFile;
use crate::ratelimit::RateLimiter;
use crate::revocation::Revocations;
use crate::session;
use crate::store::Store;
use crate::store::sqlite::SqliteStore;

const REDIRECT: &str = "https://app.example/cb";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const GATEWAY: &str = "https://gateway.example";
const DOCS: &str = "https://docs.example";
const POLICY: &str = r#"
[[rule]]
src = ["tag:ci"]
audiences = ["https://gateway.example", "https://docs.example"]
scopes = ["llm:chat", "llm:embed"]
max_lifetime = 600
"#;

/// The parts a grant borrows, owned by the test.
struct Fixture {
    _dir: tempfile::TempDir,
    issuer: Issuer,
    keys: Arc<KeyRing>,
    store: Arc<dyn Store>,
    audit: AuditLog,
    revocations: Revocations,
    clock: Arc<ManualClock>,
    identity: LocalTable,
    clients: Clients,
    backchannel: Backchannel,
    rate: RateLimiter,
    policy: PolicyFile,
    lifetimes: Lifetimes,
    consent_key: ring::hmac::Key,
    client: Arc<Client>,
    alice: Arc<Identity>,
    ci: Arc<Identity>,
}

fn identity(whois: &str) -> Arc<Identity> {
    Arc::new(
        serde_json::from_str::<WhoIsResponse>(whois)
            .unwrap()
            .into_identity()
            .unwrap(),
    )
}

async fn fixture(lifetimes: Lifetimes) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let user = include_str!("../../tests/fixtures/whois-user.json");
    let tagged = include_str!("../../tests/fixtures/whois-tagged.json");
    let table = dir.path().join("peers.json");
    // Alice's node is found by its tailnet address, as a refresh looks it up again.
    std::fs::write(&table, format!("{{\"100.101.102.103\": {user}}}")).unwrap();
    let clock = Arc::new(ManualClock::new(UnixTime(1_800_000_000)));
    let keys = Arc::new(
        KeyRing::open(
            &dir.path().join("keys"),
            KeySettings {
                enabled: BTreeSet::from([Alg::ES256]),
                retire_after: lifetimes.max_token + 60,
                rotation_interval: None,
            },
            clock.clone() as Arc<dyn Clock>,
        )
        .unwrap(),
    );
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in(dir.path()).await.unwrap());
    let revocations = Revocations::load(store.as_ref()).await.unwrap();
    let (audit, _) = AuditLog::start(store.clone(), None, Arc::default());
    let issuer = Issuer::new(&url::Url::parse("http://127.0.0.1:8765").unwrap());
    let (backchannel, _) = Backchannel::start(
        keys.clone(),
        issuer.url().to_owned(),
        clock.clone() as Arc<dyn Clock>,
    )
    .unwrap();
    let client = Client {
        client_id: ClientId("app".into()),
        client_name: "app".into(),
        secret_sha256: None,
        token_endpoint_auth_method: AuthMethod::None,
        redirect_uris: vec![REDIRECT.into()],
        post_logout_redirect_uris: Vec::new(),
        grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
        id_token_signed_response_alg: None,
        resources: Vec::new(),
        users: Vec::new(),
        backchannel_logout_uri: None,
        backchannel_logout_session_required: false,
        origin: ClientOrigin::Config,
        registration_token_sha256: None,
        created_at: clock.now(),
        created_by: None,
        version: 1,
    };
    let clients = Clients::new(vec![client], store.clone());
    let client = clients.get("app").await.unwrap().unwrap();
    Fixture {
        issuer,
        keys,
        audit,
        revocations,
        identity: LocalTable::from_file(&table).unwrap(),
        clients,
        backchannel,
        rate: RateLimiter::new(1_000),
        policy: PolicyFile::parse(POLICY).unwrap(),
        lifetimes,
        consent_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"test consent key"),
        client,
        alice: identity(user),
        ci: identity(tagged),
        clock,
        store,
        _dir: dir,
    }
}

const LIFETIMES: Lifetimes = Lifetimes {
    token: 300,
    agent_token: 300,
    refresh: 30 * 24 * 3600,
    max_token: 3600,
};

impl Fixture {
    fn ctx(&self) -> Context<'_> {
        Context {
            issuer: &self.issuer,
            keys: &self.keys,
            store: self.store.as_ref(),
            audit: &self.audit,
            revocations: &self.revocations,
            clock: self.clock.as_ref(),
            identity: &self.identity,
            clients: &self.clients,
            rate: Rate {
                limiter: &self.rate,
                per_minute: 1_000,
            },
            policy: Policy {
                file: &self.policy,
                capability: "tailpass/cap/agent",
            },
            lifetimes: self.lifetimes,
            signing: Signing {
                access: Alg::ES256,
                id_token: Alg::ES256,
            },
            sessions: session::Ctx {
                store: self.store.as_ref(),
                revocations: &self.revocations,
                clients: &self.clients,
                backchannel: &self.backchannel,
                audit: &self.audit,
                default_alg: Alg::ES256,
            },
            consent_key: &self.consent_key,
        }
    }

    /// A code for Alice, as `/authorize` hands it out.
    async fn code(&self) -> String {
        let params = AuthorizeParams {
            response_type: Some("code".into()),
            client_id: Some(self.client.client_id.0.clone()),
            redirect_uri: Some(REDIRECT.into()),
            scope: Some("openid profile offline_access".into()),
            code_challenge: Some(CHALLENGE.into()),
            code_challenge_method: Some("S256".into()),
            ..Default::default()
        };
        match authorize::authorize(&self.ctx(), Ok(self.alice.clone()), params, false).await {
            Outcome::Code { redirect, code } => {
                assert_eq!(redirect.uri, REDIRECT);
                code.expose().to_owned()
            }
            other => panic!("authorize did not issue a code: {other:?}"),
        }
    }

    async fn redeem(&self, code: &str) -> Result<TokenResponse, RedeemError> {
        let request = CodeRequest {
            code: code.into(),
            redirect_uri: REDIRECT.into(),
            code_verifier: Some(VERIFIER.into()),
        };
        authorization_code::redeem(&self.ctx(), &self.client, &request, None).await
    }

    async fn refresh(&self, token: &str) -> Result<TokenResponse, RefreshError> {
        let request = RefreshRequest {
            refresh_token: token.into(),
            ..Default::default()
        };
        refresh::refresh(&self.ctx(), &self.client, &request, None).await
    }

    async fn agent(&self, audiences: &[&str]) -> Result<TokenResponse, AgentError> {
        let request = AgentRequest {
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        };
        agent::agent(&self.ctx(), Ok(self.ci.clone()), None, &request, None).await
    }

    async fn exchange(
        &self,
        parent: &str,
        audiences: &[&str],
    ) -> Result<TokenResponse, ExchangeError> {
        let request = ExchangeRequest {
            subject_token: parent.into(),
            actor_token: None,
            child: AgentRequest {
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
                ..Default::default()
            },
        };
        exchange::exchange(&self.ctx(), Ok(self.ci.clone()), &request, None).await
    }

    fn claims(&self, token: &str) -> tailpass_verify::AccessClaims {
        crate::tokens::read_access(
            token,
            &self.keys,
            &self.revocations,
            self.issuer.url(),
            self.clock.now(),
        )
        .unwrap()
    }
}

#[tokio::test]
async fn a_code_expires_after_sixty_seconds() {
    let f = fixture(LIFETIMES).await;
    let fresh = f.code().await;
    let stale = f.code().await;
    f.clock.advance(59);
    assert!(f.redeem(&fresh).await.is_ok(), "within its minute");
    f.clock.advance(2);
    let refused = f.redeem(&stale).await.unwrap_err();
    assert!(matches!(refused, RedeemError::Invalid), "{refused:?}");
}

#[tokio::test]
async fn a_code_redeemed_twice_revokes_what_it_issued() {
    let f = fixture(LIFETIMES).await;
    let code = f.code().await;
    let issued = f.redeem(&code).await.unwrap();
    let replayed = f.redeem(&code).await.unwrap_err();
    assert!(matches!(replayed, RedeemError::Replayed), "{replayed:?}");
    let refresh = f.refresh(&issued.refresh_token.unwrap()).await.unwrap_err();
    assert!(matches!(refresh, RefreshError::Inactive), "{refresh:?}");
    let read = crate::tokens::read_access(
        &issued.access_token,
        &f.keys,
        &f.revocations,
        f.issuer.url(),
        f.clock.now(),
    );
    assert!(read.is_err(), "the first access token is revoked too");
}

#[tokio::test]
async fn a_refresh_family_ends_at_its_absolute_lifetime() {
    let f = fixture(Lifetimes {
        refresh: 3600,
        ..LIFETIMES
    })
    .await;
    let code = f.code().await;
    let mut token = f.redeem(&code).await.unwrap().refresh_token.unwrap();
    // Rotating keeps the family alive, but never past its absolute lifetime.
    for _ in 0..3 {
        f.clock.advance(1_000);
        token = f.refresh(&token).await.unwrap().refresh_token.unwrap();
    }
    f.clock.advance(700);
    let refused = f.refresh(&token).await.unwrap_err();
    assert!(matches!(refused, RefreshError::Inactive), "{refused:?}");
}

#[tokio::test]
async fn a_spent_refresh_token_used_again_ends_the_whole_family() {
    let f = fixture(LIFETIMES).await;
    let code = f.code().await;
    let first = f.redeem(&code).await.unwrap().refresh_token.unwrap();
    let second = f.refresh(&first).await.unwrap().refresh_token.unwrap();
    f.clock.advance(1);
    let reused = f.refresh(&first).await.unwrap_err();
    assert!(matches!(reused, RefreshError::Reused), "{reused:?}");
    let rotated = f.refresh(&second).await.unwrap_err();
    assert!(
        matches!(rotated, RefreshError::Inactive),
        "the rotated token dies with its family: {rotated:?}"
    );
}

#[tokio::test]
async fn an_agent_token_is_capped_by_its_rule_and_bound_to_its_node() {
    let f = fixture(LIFETIMES).await;
    let issued = f.agent(&[GATEWAY]).await.unwrap();
    let claims = f.claims(&issued.access_token);
    assert_eq!(claims.aud.0, [GATEWAY]);
    assert_eq!(claims.sub, "node:nBuildBot42CNTRL");
    assert_eq!(
        claims.cnf.and_then(|c| c.tailnet_node).as_deref(),
        Some("nBuildBot42CNTRL")
    );
    assert!(claims.run.run_id.is_some());
    let asked = AgentRequest {
        audiences: vec![GATEWAY.into()],
        expires_in: Some(86_400),
        ..Default::default()
    };
    let long = agent::agent(&f.ctx(), Ok(f.ci.clone()), None, &asked, None)
        .await
        .unwrap();
    assert_eq!(long.expires_in, 600, "the rule's max_lifetime caps the ask");
}

#[tokio::test]
async fn an_agent_grant_refuses_strangers_and_audiences_outside_the_rule() {
    let f = fixture(LIFETIMES).await;
    let outside = f.agent(&["https://elsewhere.example"]).await.unwrap_err();
    assert!(
        matches!(outside, AgentError::Denied(Denied::Audience { .. })),
        "{outside:?}"
    );
    let request = AgentRequest::default();
    let stranger = agent::agent(
        &f.ctx(),
        Err(CallerError::NotOnTailnet),
        None,
        &request,
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(stranger, AgentError::NotOnTailnet), "{stranger:?}");
    let person = agent::agent(&f.ctx(), Ok(f.alice.clone()), None, &request, None)
        .await
        .unwrap_err();
    assert!(
        matches!(person, AgentError::Denied(Denied::NoRule(_))),
        "{person:?}"
    );
}

#[tokio::test]
async fn an_exchanged_child_narrows_and_never_outlives_its_parent() {
    let f = fixture(LIFETIMES).await;
    let parent = f.agent(&[GATEWAY, DOCS]).await.unwrap().access_token;
    let child = f.exchange(&parent, &[DOCS]).await.unwrap();
    let child_claims = f.claims(&child.access_token);
    let parent_claims = f.claims(&parent);
    assert_eq!(child_claims.aud.0, [DOCS]);
    assert_eq!(child_claims.run.parent_run_id, parent_claims.run.run_id);
    assert!(child_claims.exp <= parent_claims.exp);
    let wider = f
        .exchange(&child.access_token, &[GATEWAY])
        .await
        .unwrap_err();
    assert!(
        matches!(wider, ExchangeError::WiderAudience(ref a) if a == GATEWAY),
        "{wider:?}"
    );
    // Within the verifier's leeway the parent still reads, but has no time left to give.
    f.clock.advance(LIFETIMES.agent_token + 1);
    let spent = f.exchange(&parent, &[]).await.unwrap_err();
    assert!(matches!(spent, ExchangeError::ParentExpired), "{spent:?}");
    f.clock
        .advance(2 * tailpass_verify::verifier::DEFAULT_LEEWAY);
    let expired = f.exchange(&parent, &[]).await.unwrap_err();
    assert!(matches!(expired, ExchangeError::Subject(_)), "{expired:?}");
}

#[tokio::test]
async fn tokens_signed_before_a_rotation_still_verify_until_the_retired_key_is_dropped() {
    let f = fixture(LIFETIMES).await;
    let before = f.agent(&[GATEWAY]).await.unwrap().access_token;
    f.keys.rotate(None).unwrap();
    let after = f.agent(&[GATEWAY]).await.unwrap().access_token;
    let kid = |token: &str| tailpass_verify::jws::Jws::parse(token).unwrap().header.kid;
    assert_ne!(kid(&before), kid(&after), "the new key signs");
    // The overlap: a child can still be exchanged from the token the retired key signed.
    assert!(f.exchange(&before, &[]).await.is_ok());
    assert!(f.keys.published(&kid(&before).unwrap()).unwrap().is_some());
    // Once every token it signed has expired (plus leeway), the retired key goes.
    f.clock.advance(LIFETIMES.max_token + 61);
    f.keys.maintain().unwrap();
    assert!(f.keys.published(&kid(&before).unwrap()).unwrap().is_none());
}

#[tokio::test]
async fn a_refusal_is_audited_with_its_typed_label() {
    let f = fixture(LIFETIMES).await;
    f.agent(&["https://elsewhere.example"]).await.unwrap_err();
    let filter = crate::store::AuditFilter {
        node: Some("nBuildBot42CNTRL".into()),
        limit: 10,
        ..Default::default()
    };
    let events = f.store.audit(&filter).await.unwrap();
    let denied = events
        .iter()
        .map(|r| &r.event)
        .find(|e| e.outcome == crate::audit::Outcome::Denied)
        .expect("the refusal is recorded");
    assert_eq!(denied.refusal.as_deref(), Some("audience"));
    assert!(
        denied
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("https://elsewhere.example")),
        "{denied:?}"
    );
}

#[tokio::test]
async fn introspection_tells_a_client_only_of_its_own_tokens() {
    use super::introspect::{self, Asker, Introspection};
    let f = fixture(LIFETIMES).await;
    let code = f.code().await;
    let issued = f.redeem(&code).await.unwrap();
    let refresh = issued.refresh_token.unwrap();
    let ask = |asker, token: &str| {
        let ctx = f.ctx();
        let token = token.to_owned();
        async move {
            introspect::introspect(&ctx, asker, &token, None)
                .await
                .unwrap()
        }
    };
    assert!(matches!(
        ask(Asker::Client("app"), &issued.access_token).await,
        Introspection::Access(_)
    ));
    assert!(matches!(
        ask(Asker::Client("other"), &issued.access_token).await,
        Introspection::Inactive
    ));
    assert!(matches!(
        ask(Asker::Trusted, &refresh).await,
        Introspection::Refresh(ref family) if family.client_id.0 == "app"
    ));
    assert!(matches!(
        ask(Asker::Client("other"), &refresh).await,
        Introspection::Inactive
    ));
    assert!(
        !introspect::may_introspect(&f.ctx(), &f.ci),
        "no allow_introspect rule"
    );
}

#[tokio::test]
async fn a_client_revoking_its_refresh_token_ends_the_session_and_another_clients_cannot() {
    let f = fixture(LIFETIMES).await;
    let code = f.code().await;
    let issued = f.redeem(&code).await.unwrap();
    let refresh = issued.refresh_token.unwrap();
    let mut other = (*f.client).clone();
    other.client_id = ClientId("other".into());
    super::revoke::revoke(&f.ctx(), &other, &refresh)
        .await
        .unwrap();
    super::revoke::revoke(&f.ctx(), &other, &issued.access_token)
        .await
        .unwrap();
    f.claims(&issued.access_token);
    super::revoke::revoke(&f.ctx(), &f.client, &refresh)
        .await
        .unwrap();
    let refused = f.refresh(&refresh).await.unwrap_err();
    assert!(matches!(refused, RefreshError::Inactive), "{refused:?}");
    assert!(
        crate::tokens::read_access(
            &issued.access_token,
            &f.keys,
            &f.revocations,
            f.issuer.url(),
            f.clock.now(),
        )
        .is_err(),
        "the session's access token goes with it"
    );
}
