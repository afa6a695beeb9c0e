//! The grants driven directly, with no HTTP: a temporary store, a local identity table and a
//! [`ManualClock`], so that expiry and lifetimes are tested by moving time, not by waiting.

use std::sync::Arc;

use clap::Parser as _;
use tailpass_verify::UnixTime;

use super::authorization_code::{self, AuthorizeParams, CodeRequest, Outcome};
use super::refresh::{self, RefreshRequest};
use crate::clients::Client;
use crate::clock::{Clock, ManualClock};
use crate::identity::Identity;
use crate::identity::local::LocalTable;
use crate::identity::whois::WhoIsResponse;
use crate::oauth::error::Code;
use crate::state::AppState;

const REDIRECT: &str = "https://app.example/cb";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

struct Fixture {
    _dir: tempfile::TempDir,
    state: AppState,
    clock: Arc<ManualClock>,
    client: Arc<Client>,
    alice: Arc<Identity>,
}

async fn fixture(extra: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let whois = include_str!("../../tests/fixtures/whois-user.json");
    let table = dir.path().join("peers.json");
    // Alice's node is found by its tailnet address, as a refresh looks it up again.
    std::fs::write(&table, format!("{{\"100.101.102.103\": {whois}}}")).unwrap();
    let mut argv: Vec<String> = [
        "tailpass",
        "--dev",
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
        "--keys-dir",
        dir.path().join("keys").to_str().unwrap(),
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--signing-alg",
        "ES256",
        "--no-rs256",
        "--identity-file",
        table.to_str().unwrap(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    argv.extend(extra.iter().map(|s| (*s).to_owned()));
    let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
    let crate::cli::Command::Serve(args) = cli.command else {
        unreachable!()
    };
    let settings = crate::config::resolve(&cli.global, &args).unwrap();
    let clock = Arc::new(ManualClock::new(UnixTime(1_800_000_000)));
    let identity = Arc::new(LocalTable::from_file(&table).unwrap());
    let issuer = crate::issuer::Issuer::new(&url::Url::parse("http://127.0.0.1:8765").unwrap());
    let (state, _tasks) =
        AppState::open(settings, issuer, identity, clock.clone() as Arc<dyn Clock>)
            .await
            .unwrap();
    let created = crate::admin::clients::create(
        &state,
        "test",
        crate::admin::NewClient {
            name: "app".into(),
            redirect_uris: vec![REDIRECT.into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let client = state
        .clients
        .get(&created.client_id)
        .await
        .unwrap()
        .unwrap();
    let alice = Arc::new(
        serde_json::from_str::<WhoIsResponse>(whois)
            .unwrap()
            .into_identity()
            .unwrap(),
    );
    Fixture {
        _dir: dir,
        state,
        clock,
        client,
        alice,
    }
}

impl Fixture {
    /// A code for Alice, as `/authorize` hands it out.
    async fn code(&self) -> String {
        let params = AuthorizeParams {
            response_type: Some("code".into()),
            client_id: Some(self.client.client_id.0.clone()),
            redirect_uri: Some(REDIRECT.into()),
            scope: Some("openid profile".into()),
            code_challenge: Some(CHALLENGE.into()),
            code_challenge_method: Some("S256".into()),
            ..Default::default()
        };
        match authorization_code::authorize(&self.state, Ok(self.alice.clone()), params, false)
            .await
        {
            Outcome::Redirect(to) => url::Url::parse(&to)
                .unwrap()
                .query_pairs()
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_else(|| panic!("no code in {to}")),
            _ => panic!("authorize did not redirect"),
        }
    }

    async fn redeem(&self, code: &str) -> Result<super::TokenResponse, crate::oauth::error::Error> {
        let request = CodeRequest {
            code: Some(code),
            redirect_uri: Some(REDIRECT),
            code_verifier: Some(VERIFIER),
            proof: None,
        };
        authorization_code::redeem(&self.state, &self.client, request).await
    }

    async fn refresh(
        &self,
        token: &str,
    ) -> Result<super::TokenResponse, crate::oauth::error::Error> {
        let request = RefreshRequest {
            refresh_token: Some(token),
            scope: None,
            resources: &[],
            proof: None,
        };
        refresh::refresh(&self.state, &self.client, request).await
    }
}

#[tokio::test]
async fn a_code_expires_after_sixty_seconds() {
    let f = fixture(&[]).await;
    let fresh = f.code().await;
    let stale = f.code().await;
    f.clock.advance(59);
    assert!(f.redeem(&fresh).await.is_ok(), "within its minute");
    f.clock.advance(2);
    let refused = f.redeem(&stale).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidGrant);
}

#[tokio::test]
async fn a_refresh_family_ends_at_its_absolute_lifetime() {
    let f = fixture(&["--refresh-lifetime", "1h"]).await;
    let code = f.code().await;
    let mut token = f.redeem(&code).await.unwrap().refresh_token.unwrap();
    // Rotating keeps the family alive, but never past its absolute lifetime.
    for _ in 0..3 {
        f.clock.advance(1_000);
        token = f.refresh(&token).await.unwrap().refresh_token.unwrap();
    }
    f.clock.advance(700);
    let refused = f.refresh(&token).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidGrant);
}

#[tokio::test]
async fn a_spent_refresh_token_used_again_ends_the_whole_family() {
    let f = fixture(&[]).await;
    let code = f.code().await;
    let first = f.redeem(&code).await.unwrap().refresh_token.unwrap();
    let second = f.refresh(&first).await.unwrap().refresh_token.unwrap();
    f.clock.advance(1);
    assert_eq!(
        f.refresh(&first).await.unwrap_err().code(),
        Code::InvalidGrant
    );
    assert_eq!(
        f.refresh(&second).await.unwrap_err().code(),
        Code::InvalidGrant,
        "the rotated token dies with its family"
    );
}
