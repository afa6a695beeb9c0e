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
    trust: crate::federation::external::Trust,
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
        trust: crate::federation::external::Trust::default(),
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
                trust: &self.trust,
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
            resources: Vec::new(),
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

/// Ambient mode: a gateway obtains a tailnet peer's token by exchange (`grant::ambient`).
mod ambient_exchange {
    use super::*;
    use crate::grant::ambient::{self, PeerExchangeRequest};
    use tailpass_verify::feed::RevocationKind;

    /// CI's tailnet address, as its WhoIs lists it.
    const CI_ADDRESS: &str = "100.80.1.7";
    /// Alice's, who has no agent rule.
    const ALICE_ADDRESS: &str = "100.101.102.103";
    const GATEWAY_NODE: &str = "nGateway8CNTRL";

    fn gateway() -> Arc<Identity> {
        identity(&format!(
            r#"{{"Node": {{"ID": 1008, "StableID": "{GATEWAY_NODE}", "Name": "gw.tail1234.ts.net.",
                "User": 9000, "Addresses": ["100.64.0.8/32"], "Tags": ["tag:gateway"]}},
               "UserProfile": {{"ID": 9000, "LoginName": "tagged-devices", "DisplayName": "tagged devices"}},
               "CapMap": null}}"#
        ))
    }

    /// A fixture whose policy lets the gateway act for peers when `act_for_peers`, and whose
    /// identity table knows CI and Alice by their tailnet addresses.
    async fn ambient_fixture(act_for_peers: bool) -> Fixture {
        let mut f = fixture(LIFETIMES).await;
        f.policy = PolicyFile::parse(&format!(
            "{POLICY}\n[[rule]]\nsrc = [\"tag:gateway\"]\naudiences = [\"{GATEWAY}\"]\n\
             act_for_peers = {act_for_peers}\n"
        ))
        .unwrap();
        let table = f._dir.path().join("ambient-peers.json");
        let user = include_str!("../../tests/fixtures/whois-user.json");
        let tagged = include_str!("../../tests/fixtures/whois-tagged.json");
        std::fs::write(
            &table,
            format!("{{\"{ALICE_ADDRESS}\": {user}, \"{CI_ADDRESS}\": {tagged}}}"),
        )
        .unwrap();
        f.identity = LocalTable::from_file(&table).unwrap();
        f
    }

    impl Fixture {
        /// The gateway's own agent token for its audience.
        async fn gateway_token(&self) -> String {
            let request = AgentRequest {
                audiences: vec![GATEWAY.into()],
                ..Default::default()
            };
            agent::agent(&self.ctx(), Ok(gateway()), None, &request, None)
                .await
                .unwrap()
                .access_token
        }

        /// `requester` asks for the token of the peer at `peer`, presenting `actor_token`.
        async fn for_peer(
            &self,
            requester: Arc<Identity>,
            peer: &str,
            actor_token: &str,
        ) -> Result<TokenResponse, ExchangeError> {
            let request = PeerExchangeRequest {
                peer: ambient::parse_peer(peer).unwrap(),
                actor_token: actor_token.into(),
                token: AgentRequest {
                    audiences: vec![GATEWAY.into()],
                    expires_in: Some(3600),
                    ..Default::default()
                },
            };
            ambient::exchange(&self.ctx(), Ok(requester), &request, None).await
        }
    }

    #[tokio::test]
    async fn a_gateway_with_act_for_peers_gets_the_token_the_peer_would_get_itself() {
        let f = ambient_fixture(true).await;
        let own = f.gateway_token().await;
        let issued = f
            .for_peer(gateway(), &format!("{CI_ADDRESS}:41234"), &own)
            .await
            .unwrap();
        assert_eq!(issued.expires_in, 600, "the peer's rule caps the lifetime");
        let claims = f.claims(&issued.access_token);
        assert_eq!(claims.sub, "node:nBuildBot42CNTRL");
        assert_eq!(claims.aud.0, [GATEWAY]);
        assert_eq!(
            claims.cnf.as_ref().and_then(|c| c.tailnet_node.as_deref()),
            Some("nBuildBot42CNTRL")
        );
        assert_eq!(claims.scope.as_deref(), Some("llm:chat llm:embed"));
        let act = claims.run.act.clone().unwrap();
        assert_eq!(act.sub, format!("node:{GATEWAY_NODE}"));
        assert_eq!(act.nid.as_deref(), Some(GATEWAY_NODE));
        assert_eq!(act.run_id, f.claims(&own).run.run_id, "the gateway's run");
        assert_eq!(
            claims.run.run_label.as_deref(),
            Some("ambient via gw.tail1234.ts.net")
        );
        let again = f.for_peer(gateway(), CI_ADDRESS, &own).await.unwrap();
        assert_ne!(
            f.claims(&again.access_token).run.run_id,
            claims.run.run_id,
            "each exchange is a run of its own; the gateway caches one per peer"
        );

        let filter = crate::store::AuditFilter {
            node: Some("nBuildBot42CNTRL".into()),
            limit: 10,
            ..Default::default()
        };
        let events = f.store.audit(&filter).await.unwrap();
        let event = &events
            .iter()
            .find(|r| r.event.event == crate::audit::EventKind::TokenExchange)
            .expect("the exchange is audited under the peer")
            .event;
        assert_eq!(
            event.client_id.as_deref(),
            Some("node:nGateway8CNTRL"),
            "with the gateway as the actor"
        );
        assert!(
            event
                .detail
                .as_deref()
                .unwrap()
                .contains("act_for_peers by policy rule 2"),
            "{event:?}"
        );
    }

    #[tokio::test]
    async fn a_gateway_whose_rule_does_not_set_act_for_peers_is_refused() {
        let f = ambient_fixture(false).await;
        let own = f.gateway_token().await;
        let refused = f.for_peer(gateway(), CI_ADDRESS, &own).await.unwrap_err();
        assert!(
            matches!(&refused, ExchangeError::ActForPeers(why) if why.contains("policy rule 2")),
            "{refused:?}"
        );
        assert_eq!(crate::audit::Refusal::label(&refused), "act_for_peers");
        // Nor may a node that has no rule for the audience at all.
        let own = f.agent(&[GATEWAY]).await.unwrap().access_token;
        let refused = f.for_peer(f.ci.clone(), ALICE_ADDRESS, &own).await;
        assert!(
            matches!(refused, Err(ExchangeError::ActForPeers(_))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn an_address_off_the_tailnet_is_refused() {
        let f = ambient_fixture(true).await;
        let own = f.gateway_token().await;
        let refused = f.for_peer(gateway(), "100.99.9.9", &own).await.unwrap_err();
        assert!(
            matches!(refused, ExchangeError::PeerNotOnTailnet(ip) if ip.to_string() == "100.99.9.9"),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn an_actor_token_presented_by_another_node_is_refused() {
        let f = ambient_fixture(true).await;
        let own = f.gateway_token().await;
        // CI holding a copy of the gateway's token cannot act as the gateway.
        let refused = f
            .for_peer(f.ci.clone(), CI_ADDRESS, &own)
            .await
            .unwrap_err();
        assert!(matches!(refused, ExchangeError::Actor(_)), "{refused:?}");
        let refused = f
            .for_peer(gateway(), CI_ADDRESS, "not-a-token")
            .await
            .unwrap_err();
        assert!(matches!(refused, ExchangeError::Actor(_)), "{refused:?}");
    }

    #[tokio::test]
    async fn a_peer_without_a_rule_is_refused_by_its_own_rules() {
        let f = ambient_fixture(true).await;
        let own = f.gateway_token().await;
        let refused = f
            .for_peer(gateway(), ALICE_ADDRESS, &own)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, ExchangeError::Peer(Denied::NoRule(_))),
            "{refused:?}"
        );
        assert_eq!(crate::audit::Refusal::label(&refused), "peer_no_rule");
    }

    #[tokio::test]
    async fn a_revoked_peer_node_gets_nothing_and_a_revoked_gateway_run_acts_for_no_one() {
        let f = ambient_fixture(true).await;
        let own = f.gateway_token().await;
        f.revocations
            .revoke(
                f.store.as_ref(),
                RevocationKind::Node,
                "nBuildBot42CNTRL",
                f.clock.now(),
                None,
            )
            .await
            .unwrap();
        let refused = f.for_peer(gateway(), CI_ADDRESS, &own).await.unwrap_err();
        assert!(matches!(refused, ExchangeError::Revoked(_)), "{refused:?}");

        let f = ambient_fixture(true).await;
        let own = f.gateway_token().await;
        let issued = f.for_peer(gateway(), CI_ADDRESS, &own).await.unwrap();
        let run = f.claims(&own).run.run_id.unwrap();
        f.clock.advance(1);
        f.revocations
            .revoke(
                f.store.as_ref(),
                RevocationKind::Run,
                &run,
                f.clock.now(),
                None,
            )
            .await
            .unwrap();
        let read = crate::tokens::read_access(
            &issued.access_token,
            &f.keys,
            &f.revocations,
            f.issuer.url(),
            f.clock.now(),
        );
        assert!(
            read.is_err(),
            "the peer's token names the gateway's run in act"
        );
        let refused = f.for_peer(gateway(), CI_ADDRESS, &own).await.unwrap_err();
        assert!(matches!(refused, ExchangeError::Actor(_)), "{refused:?}");
    }
}
