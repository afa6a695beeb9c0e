//! Federation: tokens other issuers signed traded for run tokens at `/token`, by RFC 8693
//! exchange and RFC 7523 assertion, against a test double of GitHub's OIDC issuer and of a
//! Kubernetes API server's (neither can be reached here): discovery and a JWKS on loopback,
//! tokens signed with a real RSA key in each platform's exact claim set.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tailpass::clock::Clock as _;
use tailpass::dpop::ProofKey;
use tailpass::keys::SigningKey;
use tailpass_verify::Alg;

use crate::agents::post_token;
use crate::authorize::claims;
use crate::support::{ALICE, CI, GATEWAY, GATEWAY_NODE, STRANGER, TestServer, admin, json as read};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The audience the tables expect external tokens to carry.
const AUDIENCE: &str = "https://idp.tail1234.ts.net";

/// A test double of an OIDC issuer: discovery and a JWKS on loopback, a real RS256 key.
struct Issuer {
    url: String,
    key: SigningKey,
}

async fn issuer() -> Issuer {
    let (key, _) = SigningKey::generate(Alg::RS256).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let jwks = json!({"keys": [key.jwk()]});
    let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/.well-known/jwks")});
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || async move { axum::Json(discovery) }),
        )
        .route(
            "/.well-known/jwks",
            axum::routing::get(move || async move { axum::Json(jwks) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Issuer { url, key }
}

/// GitHub Actions' claim set, for a push to main of octo-org/octo-repo, valid at `now`.
fn github_claims(issuer: &str, now: u64) -> Value {
    json!({
        "jti": tailpass::secret::random_token(12),
        "sub": "repo:octo-org/octo-repo:ref:refs/heads/main",
        "aud": AUDIENCE, "ref": "refs/heads/main", "sha": "abc123",
        "repository": "octo-org/octo-repo", "repository_owner": "octo-org",
        "repository_id": "74", "repository_owner_id": "65", "actor_id": "12",
        "run_id": "123", "run_number": "10", "run_attempt": "1",
        "repository_visibility": "private", "actor": "octocat",
        "workflow": "CI", "head_ref": "", "base_ref": "", "event_name": "push",
        "ref_type": "branch",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
        "runner_environment": "github-hosted", "environment": "prod",
        "iss": issuer, "nbf": now - 5, "exp": now + 300, "iat": now - 5
    })
}

/// A Kubernetes projected service-account token's claim set, valid at `now`.
fn k8s_claims(issuer: &str, now: u64) -> Value {
    json!({
        "aud": [AUDIENCE], "exp": now + 3600, "iat": now - 5, "nbf": now - 5,
        "iss": issuer, "jti": "7c1e4a52-1d7b-4c1b-9a53-0b0c4d1f6e2a",
        "kubernetes.io": {
            "namespace": "ci",
            "node": {"name": "worker-1", "uid": "0b1d"},
            "pod": {"name": "runner-7f9c", "uid": "5e2a"},
            "serviceaccount": {"name": "deployer", "uid": "9d3c"}
        },
        "sub": "system:serviceaccount:ci:deployer"
    })
}

fn policy(github: &str, k8s: &str) -> String {
    format!(
        r#"
[[federation]]
name = "github"
profile = "github"
issuer = "{github}"
audience = "{AUDIENCE}"
# Both of GitHub's subject forms: repo:octo-org/… and repo:octo-org@65/octo-repo@74:…;
# the repository claim pins the organisation.
subject = "repo:octo-org*"
claims = {{ repository = "octo-org/*" }}

[[federation]]
name = "k8s"
profile = "kubernetes"
issuer = "{k8s}"
audience = "{AUDIENCE}"
subject = "system:serviceaccount:ci:*"

[[rule]]
src = ["fed:github"]
audiences = ["{GATEWAY}"]
max_lifetime = 300
claims = {{ models = ["gpt-small"] }}

[[rule]]
src = ["tag:ci+fed:github"]
audiences = ["{GATEWAY}"]
max_lifetime = 600

[[rule]]
src = ["fed:k8s"]
audiences = ["{GATEWAY}"]
"#
    )
}

struct Setup {
    server: TestServer,
    github: Issuer,
    k8s: Issuer,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let (github, k8s) = (issuer().await, issuer().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy(&github.url, &k8s.url)).unwrap();
    let server = TestServer::with_args(&["--policy", path.to_str().unwrap()]).await;
    Setup {
        server,
        github,
        k8s,
        _dir: dir,
    }
}

impl Setup {
    fn now(&self) -> u64 {
        self.server.clock.now().0
    }

    fn github_token(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = github_claims(&self.github.url, self.now());
        edit(&mut claims);
        self.github.key.sign_jwt("JWT", &claims).unwrap()
    }

    fn proof(&self, key: &ProofKey) -> String {
        key.proof("POST", &self.server.url("/token"), None, None)
            .unwrap()
    }

    /// A federation request from peer `from`, with a DPoP proof by `key` when given.
    async fn trade(
        &self,
        from: u8,
        pairs: &[(&str, &str)],
        key: Option<&ProofKey>,
        funnel: bool,
    ) -> (u16, Value) {
        let mut request = self
            .server
            .peer(from)
            .post(self.server.url("/token"))
            .form(pairs);
        if let Some(key) = key {
            request = request.header("DPoP", self.proof(key));
        }
        if funnel {
            request = request.header("Tailscale-Funnel-Request", "?1");
        }
        read(request.send().await.unwrap()).await
    }

    async fn exchange(&self, from: u8, token: &str, key: Option<&ProofKey>) -> (u16, Value) {
        let pairs = [
            ("grant_type", EXCHANGE),
            ("subject_token", token),
            ("subject_token_type", ID_TOKEN_TYPE),
            ("audience", GATEWAY),
            ("expires_in", "3600"),
        ];
        self.trade(from, &pairs, key, false).await
    }

    async fn assertion(&self, from: u8, token: &str, key: Option<&ProofKey>) -> (u16, Value) {
        let pairs = [
            ("grant_type", JWT_BEARER),
            ("assertion", token),
            ("audience", GATEWAY),
        ];
        self.trade(from, &pairs, key, false).await
    }
}

fn lifetime(token: &Value) -> u64 {
    token["exp"].as_u64().unwrap() - token["iat"].as_u64().unwrap()
}

#[tokio::test]
async fn a_workflow_off_the_tailnet_gets_a_key_bound_run_token_carrying_its_github_claims() {
    let setup = setup().await;
    let key = ProofKey::generate().unwrap();
    let (status, body) = setup
        .exchange(STRANGER, &setup.github_token(|_| {}), Some(&key))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let token = claims(body["access_token"].as_str().unwrap());
    let subject = "fed:github:repo:octo-org/octo-repo:ref:refs/heads/main";
    assert_eq!(token["sub"], subject);
    assert_eq!(token["client_id"], subject);
    assert_eq!(
        token["cnf"],
        json!({"jkt": key.thumbprint().0}),
        "the key only"
    );
    assert_eq!(token["aud"], GATEWAY);
    assert_eq!(token["run_label"], "123/1");
    assert_eq!(
        token["models"],
        json!(["gpt-small"]),
        "the fed:github rule's"
    );
    assert_eq!(lifetime(&token), 300, "capped by the rule");
    assert!(token.get("nid").is_none() && token.get("tags").is_none());
    let fed = &token["fed"];
    for (claim, value) in [
        ("iss", setup.github.url.as_str()),
        ("sub", "repo:octo-org/octo-repo:ref:refs/heads/main"),
        ("name", "github"),
        ("repository", "octo-org/octo-repo"),
        ("repository_id", "74"),
        ("ref", "refs/heads/main"),
        ("workflow", "CI"),
        (
            "job_workflow_ref",
            "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
        ),
        ("run_id", "123"),
        ("run_attempt", "1"),
        ("actor", "octocat"),
        ("environment", "prod"),
        ("event_name", "push"),
    ] {
        assert_eq!(fed[claim], value, "fed.{claim}");
    }
    assert!(fed.get("sha").is_none(), "only the profile's claims");

    // The same token again: it was single-use.
    let again = setup.github_token(|_| {});
    let replayed = setup.exchange(STRANGER, &again, Some(&key)).await;
    assert_eq!(replayed.0, 200, "{}", replayed.1);
    let (status, body) = setup.exchange(STRANGER, &again, Some(&key)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{body}"
    );

    // RFC 7523, the immutable subject form, a label of the caller's own.
    let immutable = setup.github_token(|c| {
        c["sub"] = json!("repo:octo-org@65/octo-repo@74:ref:refs/heads/main");
    });
    let pairs = [
        ("grant_type", JWT_BEARER),
        ("assertion", immutable.as_str()),
        ("audience", GATEWAY),
        ("run_label", "deploy"),
    ];
    let (status, body) = setup.trade(STRANGER, &pairs, Some(&key), false).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("issued_token_type").is_none());
    let token = claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        token["sub"],
        "fed:github:repo:octo-org@65/octo-repo@74:ref:refs/heads/main"
    );
    assert_eq!(token["run_label"], "deploy");

    // Off the tailnet, no proof, no token: it would be a bearer token anyone could use.
    let (status, body) = setup
        .assertion(STRANGER, &setup.github_token(|_| {}), None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{body}"
    );

    // Discovery advertises the assertion grant, since tables are configured.
    let (_, metadata) = read(
        setup
            .server
            .peer(ALICE)
            .get(setup.server.url("/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        metadata["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(JWT_BEARER))
    );
}

#[tokio::test]
async fn a_tailnet_runner_keeps_its_node_subject_and_binding_and_the_best_selector_decides() {
    let setup = setup().await;
    // tag:ci + fed:github: the joined selector outranks fed:github alone.
    let (status, body) = setup.exchange(CI, &setup.github_token(|_| {}), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    let token = claims(body["access_token"].as_str().unwrap());
    assert_eq!(token["sub"], "node:nBuildBot42CNTRL");
    assert_eq!(token["cnf"], json!({"tailnet_node": "nBuildBot42CNTRL"}));
    assert_eq!(token["fed"]["repository"], "octo-org/octo-repo");
    assert_eq!(lifetime(&token), 600, "the tag:ci+fed:github rule's cap");
    assert!(
        token.get("models").is_none(),
        "not the fed:github rule's claims"
    );

    // With a proof, bound to the node and the key.
    let key = ProofKey::generate().unwrap();
    let (status, body) = setup
        .assertion(CI, &setup.github_token(|_| {}), Some(&key))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let token = claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        token["cnf"],
        json!({"tailnet_node": "nBuildBot42CNTRL", "jkt": key.thumbprint().0})
    );

    // A node without tag:ci is decided by fed:github, yet stays itself.
    let (status, body) = setup
        .exchange(GATEWAY_NODE, &setup.github_token(|_| {}), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let token = claims(body["access_token"].as_str().unwrap());
    assert_eq!(token["sub"], "node:nGateway8CNTRL");
    assert_eq!(lifetime(&token), 300);
    assert_eq!(token["models"], json!(["gpt-small"]));

    // The token alone does not make an agent grant of the runner's: no tag:ci rule.
    let (status, body) = post_token(
        &setup.server,
        CI,
        &[("grant_type", "client_credentials"), ("audience", GATEWAY)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
}

#[tokio::test]
async fn external_tokens_that_do_not_hold_are_refused_each_with_its_reason() {
    let setup = setup().await;
    let key = ProofKey::generate().unwrap();
    let now = setup.now();
    let header = |alg: &str| {
        URL_SAFE_NO_PAD.encode(format!(
            "{{\"alg\":\"{alg}\",\"kid\":\"{}\",\"typ\":\"JWT\"}}",
            setup.github.key.kid().0
        ))
    };
    // alg confusion: HS256, keyed with the issuer's published (public) key.
    let payload = URL_SAFE_NO_PAD.encode(github_claims(&setup.github.url, now).to_string());
    let input = format!("{}.{payload}", header("HS256"));
    let public = serde_json::to_vec(setup.github.key.jwk()).unwrap();
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public),
        input.as_bytes(),
    );
    let confused = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
    let (stranger, _) = SigningKey::generate(Alg::RS256).unwrap();
    let unknown = github_claims("https://token.evil.example", now);
    let cases = [
        (
            "another organisation's repository",
            setup.github_token(|c| c["repository"] = json!("evil-org/octo-repo")),
            "repository",
        ),
        (
            "another audience",
            setup.github_token(|c| c["aud"] = json!("https://elsewhere.example")),
            "audience",
        ),
        (
            "expired",
            setup.github_token(|c| {
                c["iat"] = json!(now - 900);
                c["nbf"] = json!(now - 900);
                c["exp"] = json!(now - 600);
            }),
            "expired",
        ),
        (
            "an issuer no table trusts",
            stranger.sign_jwt("JWT", &unknown).unwrap(),
            "not trusted",
        ),
        ("HS256 keyed with the public key", confused, "not a JWT"),
    ];
    for (case, token, says) in &cases {
        for (status, body) in [
            setup.exchange(STRANGER, token, Some(&key)).await,
            setup.assertion(CI, token, None).await,
        ] {
            assert_eq!(
                (status, body["error"].as_str()),
                (400, Some("invalid_grant")),
                "{case}: {body}"
            );
            let description = body["error_description"].as_str().unwrap();
            assert!(description.contains(says), "{case}: {description}");
        }
    }
    // Bad input of the form itself.
    let (status, body) = setup
        .trade(
            STRANGER,
            &[("grant_type", JWT_BEARER), ("audience", GATEWAY)],
            Some(&key),
            false,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );

    // Each refusal is counted by its bounded label; the tailnet caller's are in the log.
    let (_, metrics) = {
        let response = setup
            .server
            .peer(ALICE)
            .get(setup.server.url("/metrics"))
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    };
    for reason in ["mismatch", "audience", "lifetime", "issuer", "malformed"] {
        let line =
            format!("tailpass_denials_total{{event=\"federated_token\",reason=\"{reason}\"}} 2");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    let events = setup
        .server
        .state()
        .store
        .audit(&tailpass::store::AuditFilter {
            node: Some("nBuildBot42CNTRL".into()),
            event: Some(tailpass::audit::EventKind::FederatedToken),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    let labels: Vec<_> = events
        .iter()
        .filter_map(|e| e.event.refusal.as_deref())
        .collect();
    assert_eq!(
        labels,
        ["mismatch", "audience", "lifetime", "issuer", "malformed"]
    );
    assert!(
        events
            .iter()
            .all(|e| !e.event.reason.as_deref().unwrap_or("").contains(&payload)),
        "no token in the log"
    );
    let mismatch = &events[0].event;
    assert!(mismatch.reason.as_deref().unwrap().contains("repository"));
    assert_eq!(
        mismatch.detail.clone().unwrap(),
        format!(
            "unverified: iss {} sub repo:octo-org/octo-repo:ref:refs/heads/main",
            setup.github.url
        ),
        "what the token claims, marked as such"
    );

    // An issuance names its table, issuer, subject and run.
    let (status, body) = setup.exchange(CI, &setup.github_token(|_| {}), None).await;
    assert_eq!(status, 200, "{body}");
    let issued = setup
        .server
        .state()
        .store
        .audit(&tailpass::store::AuditFilter {
            node: Some("nBuildBot42CNTRL".into()),
            event: Some(tailpass::audit::EventKind::FederatedToken),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .pop()
        .unwrap()
        .event;
    assert_eq!(issued.outcome, tailpass::audit::Outcome::Success);
    assert_eq!(
        issued.detail.unwrap(),
        format!("fed:github iss {}; by policy rule 2", setup.github.url)
    );
    assert_eq!(issued.run_label.as_deref(), Some("123/1"));
}

#[tokio::test]
async fn over_funnel_only_the_federation_grants_are_served_and_always_with_a_key() {
    let setup = setup().await;
    let key = ProofKey::generate().unwrap();
    let (status, body) = setup
        .trade(
            CI,
            &[("grant_type", "client_credentials"), ("audience", GATEWAY)],
            None,
            true,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type")),
        "{body}"
    );
    let token = setup.github_token(|_| {});
    let pairs = [
        ("grant_type", JWT_BEARER),
        ("assertion", token.as_str()),
        ("audience", GATEWAY),
    ];
    // A tailnet node's own address counts for nothing over Funnel: no key, no token.
    let (status, body) = setup.trade(CI, &pairs, None, true).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof"))
    );
    let (status, body) = setup.trade(CI, &pairs, Some(&key), true).await;
    assert_eq!(status, 200, "{body}");
    let token = claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        token["sub"],
        "fed:github:repo:octo-org/octo-repo:ref:refs/heads/main"
    );
    assert_eq!(token["cnf"], json!({"jkt": key.thumbprint().0}));
}

#[tokio::test]
async fn a_kubernetes_service_account_token_is_reusable_and_labelled_by_its_pod() {
    let setup = setup().await;
    let key = ProofKey::generate().unwrap();
    let token = setup
        .k8s
        .key
        .sign_jwt("JWT", &k8s_claims(&setup.k8s.url, setup.now()))
        .unwrap();
    for _ in 0..2 {
        let pairs = [
            ("grant_type", EXCHANGE),
            ("subject_token", token.as_str()),
            ("subject_token_type", JWT_TYPE),
            ("audience", GATEWAY),
        ];
        let (status, body) = setup.trade(STRANGER, &pairs, Some(&key), false).await;
        assert_eq!(status, 200, "the kubelet reuses its token: {body}");
        let run = claims(body["access_token"].as_str().unwrap());
        assert_eq!(run["sub"], "fed:k8s:system:serviceaccount:ci:deployer");
        assert_eq!(run["run_label"], "runner-7f9c");
        assert_eq!(
            run["fed"],
            json!({
                "iss": setup.k8s.url, "sub": "system:serviceaccount:ci:deployer",
                "name": "k8s", "namespace": "ci", "service_account": "deployer",
                "pod": "runner-7f9c", "node": "worker-1"
            })
        );
    }
    // Another namespace's service account matches no table.
    let mut other = k8s_claims(&setup.k8s.url, setup.now());
    other["sub"] = json!("system:serviceaccount:prod:deployer");
    let token = setup.k8s.key.sign_jwt("JWT", &other).unwrap();
    let (status, body) = setup.assertion(STRANGER, &token, Some(&key)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(body["error_description"].as_str().unwrap().contains("sub"));
}

#[tokio::test]
async fn without_tables_the_assertion_grant_is_neither_served_nor_advertised() {
    let server = TestServer::start().await;
    let (_, metadata) = read(
        server
            .peer(ALICE)
            .get(server.url("/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        !metadata["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(JWT_BEARER))
    );
    let (status, body) = post_token(
        &server,
        CI,
        &[("grant_type", JWT_BEARER), ("assertion", "x.y.z")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
}

#[tokio::test]
async fn a_single_use_token_traded_many_times_at_once_is_traded_once() {
    let setup = setup().await;
    let key = ProofKey::generate().unwrap();
    let token = setup.github_token(|_| {});
    let attempts = (0..6).map(|_| setup.exchange(STRANGER, &token, Some(&key)));
    let answers = futures_util::future::join_all(attempts).await;
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .filter(|(status, _)| *status != 200)
            .all(|(_, body)| body["error"] == "invalid_grant"),
        "{answers:?}"
    );
}

/// `tailpass token --subject-token`, the real binary, as a CI job off the tailnet would run it
/// (it connects from 127.0.0.1, which is no tailnet peer here): the external token from a file
/// or standard input, a DPoP key of its own, a key-bound run token for the federated subject.
#[tokio::test]
async fn the_cli_trades_a_ci_token_for_a_key_bound_run_token_off_the_tailnet() {
    let setup = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let external = dir.path().join("github.jwt");
    std::fs::write(&external, format!("{}\n", setup.github_token(|_| {}))).unwrap();
    let key = dir.path().join("dpop.pem");
    let run = |subject: &str, with_key: bool, stdin: Option<String>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tailpass"));
        command.args([
            "token",
            "--issuer",
            &setup.server.url(""),
            "--audience",
            GATEWAY,
            "--subject-token",
            subject,
            "--json",
        ]);
        if with_key {
            command.arg("--dpop-key").arg(&key);
        }
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        async move {
            let mut child = command.spawn().unwrap();
            if let Some(text) = stdin {
                use tokio::io::AsyncWriteExt as _;
                let mut pipe = child.stdin.take().unwrap();
                pipe.write_all(text.as_bytes()).await.unwrap();
            }
            drop(child.stdin.take());
            let output =
                tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
                    .await
                    .unwrap()
                    .unwrap();
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
    };

    let (ok, stdout, stderr) = run(external.to_str().unwrap(), true, None).await;
    assert!(ok, "{stderr}");
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["token_type"], "DPoP");
    let token = claims(answer["access_token"].as_str().unwrap());
    assert_eq!(
        token["sub"],
        "fed:github:repo:octo-org/octo-repo:ref:refs/heads/main"
    );
    assert_eq!(token["fed"]["run_id"], "123");
    assert_eq!(token["run_label"], "123/1");
    assert!(token["cnf"]["jkt"].is_string() && token["cnf"].get("tailnet_node").is_none());

    // The same from standard input; the first token was single use, so this is a new one.
    let fresh = setup.github_token(|_| {});
    let (ok, stdout, stderr) = run("-", true, Some(fresh)).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("access_token"));

    // Off the tailnet, without a key, the issuer refuses and the CLI says why.
    std::fs::write(&external, setup.github_token(|_| {})).unwrap();
    let (ok, stdout, stderr) = run(external.to_str().unwrap(), false, None).await;
    assert!(!ok && stdout.is_empty());
    assert!(stderr.contains("invalid_dpop_proof"), "{stderr}");
    // A replayed token is refused with its reason.
    let (ok, _, stderr) = run("-", true, Some(std::fs::read_to_string(&external).unwrap())).await;
    assert!(ok, "the keyless attempt consumed nothing: {stderr}");
    let (ok, _, stderr) = run(external.to_str().unwrap(), true, None).await;
    assert!(!ok && stderr.contains("invalid_grant"), "{stderr}");
}

/// A federated token minted off the tailnet is accepted by a gateway (`tailpass-verify`) from a
/// presenter with no tailnet identity only with a DPoP proof by its key: without a proof, or
/// with another key's, it is refused and reaches no upstream.
#[tokio::test]
async fn a_gateway_accepts_an_off_tailnet_federated_token_only_with_its_key() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let setup = setup().await;
    let key = ProofKey::generate().unwrap();
    let (status, body) = setup
        .exchange(STRANGER, &setup.github_token(|_| {}), Some(&key))
        .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();

    // A test double of the paid API behind the gateway, counting what reaches it.
    let reached = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let app = axum::Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            axum::Json(
                json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("upstream.key");
    std::fs::write(&key_file, "sk-test").unwrap();
    let table = dir.path().join("peers.json");
    std::fs::write(&table, crate::support::peers_table().to_string()).unwrap();
    let identity =
        std::sync::Arc::new(tailpass::identity::local::LocalTable::from_file(&table).unwrap());
    let gateway = tailpass::gateway::start(
        tailpass::gateway::GatewaySettings {
            public_url: "http://gateway.invalid".into(),
            source_address: Some(crate::support::ip(GATEWAY_NODE)),
            ..tailpass::gateway::GatewaySettings::new(
                "127.0.0.1:0".parse().unwrap(),
                setup.server.url(""),
                GATEWAY,
                tailpass::gateway::UpstreamSettings::new(format!("http://{upstream}"), key_file),
            )
        },
        identity,
        setup.server.clock.clone() as std::sync::Arc<dyn tailpass::clock::Clock>,
    )
    .await
    .unwrap();
    let call = |proof: Option<String>| {
        let mut request = setup
            .server
            .peer(STRANGER)
            .post(format!("http://{}/v1/chat/completions", gateway.addr()))
            .header("authorization", format!("DPoP {token}"))
            .json(&json!({"model": "gpt-small", "messages": []}));
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let htu = "http://gateway.invalid/v1/chat/completions";
    assert_eq!(call(None).await, 401, "no proof");
    let other = ProofKey::generate().unwrap();
    let wrong = other.proof("POST", htu, Some(&token), None).unwrap();
    assert_eq!(call(Some(wrong)).await, 401, "another key's proof");
    assert_eq!(reached.load(Ordering::SeqCst), 0);
    let right = key.proof("POST", htu, Some(&token), None).unwrap();
    assert_eq!(call(Some(right)).await, 200, "its own key");
    assert_eq!(reached.load(Ordering::SeqCst), 1);
    gateway.shutdown().await;
}

/// A tailnet runner (tag:ci) trading a GitHub token for a run token for the gateway.
async fn trade_from_ci(server: &TestServer, external: &str) -> (u16, Value) {
    let pairs = [
        ("grant_type", EXCHANGE),
        ("subject_token", external),
        ("subject_token_type", JWT_TYPE),
        ("audience", GATEWAY),
    ];
    let request = server.peer(CI).post(server.url("/token")).form(&pairs);
    read(request.send().await.unwrap()).await
}

/// `tailpass revoke --fed github --claim run_id=123` (its admin API): both runs minted from
/// GitHub run 123's tokens (two attempts) are revoked as `run` entries on the feed, so the
/// gateway following it refuses them while run 456's token still works; a fresh token of run
/// 123 is refused with the reason until `until`, then traded again; `tailpass audit --fed`'s
/// listing names exactly the two runs, each with its issuance and its revocation.
#[tokio::test]
async fn revoking_by_external_claims_ends_the_matching_runs_at_the_gateway_and_blocks_new_trades() {
    let (github, k8s) = (issuer().await, issuer().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy(&github.url, &k8s.url)).unwrap();
    let server = TestServer::with_args(&["--policy", path.to_str().unwrap()]).await;
    // tag:ci+fed:github's run tokens carry no `models` claim.
    let setup =
        crate::gateway::Setup::in_front_of(server, dir, |s| s.allow_unrestricted = true).await;
    let server = &setup.server;
    let external = |run_id: &str, attempt: &str| {
        let mut claims = github_claims(&github.url, server.clock.now().0);
        claims["run_id"] = json!(run_id);
        claims["run_attempt"] = json!(attempt);
        github.key.sign_jwt("JWT", &claims).unwrap()
    };
    let mut minted = Vec::new();
    for (run_id, attempt) in [("123", "1"), ("123", "2"), ("456", "1")] {
        let (status, body) = trade_from_ci(server, &external(run_id, attempt)).await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap().to_owned();
        assert_eq!(claims(&token)["fed"]["run_id"], run_id);
        assert_eq!(setup.call(CI, &token, "gpt-small").await.0, 200);
        minted.push(token);
    }
    let run_of = |token: &str| claims(token)["run_id"].as_str().unwrap().to_owned();
    let run_123: Vec<String> = minted.iter().take(2).map(|t| run_of(t)).collect();

    let until = server.clock.now().0 + 120;
    let (status, report) = admin(
        server,
        axum::http::Method::POST,
        "/admin/api/revocations/federated",
        Some(json!({"table": "github", "claims": {"run_id": "123"}, "until": until})),
    )
    .await;
    assert_eq!(status, 201, "{report}");
    assert_eq!(report["until"], until);
    let revoked: Vec<(&str, &str)> = report["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["value"].as_str().unwrap()))
        .collect();
    assert_eq!(
        revoked,
        run_123
            .iter()
            .map(|r| ("run", r.as_str()))
            .collect::<Vec<_>>()
    );
    crate::gateway::feed_caught_up(&setup).await;
    for token in minted.iter().take(2) {
        let (status, _, body) = setup.call(CI, token, "gpt-small").await;
        assert_eq!(status, 401, "{body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("revoked"),
            "{body}"
        );
    }
    let (status, _, body) = setup.call(CI, &minted[2], "gpt-small").await;
    assert_eq!(status, 200, "run 456 is another run: {body}");

    // New trades of run 123's tokens are refused until `until`; run 456's are not.
    let (status, body) = trade_from_ci(server, &external("123", "3")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied")),
        "{body}"
    );
    let reason = body["error_description"].as_str().unwrap();
    assert!(
        reason.contains("fed:github with run_id=123 are revoked")
            && reason.contains(&until.to_string()),
        "{reason}"
    );
    assert_eq!(trade_from_ci(server, &external("456", "2")).await.0, 200);

    // What `tailpass audit --fed github --claim run_id=123` lists: exactly the two runs.
    let (status, runs) = admin(
        server,
        axum::http::Method::POST,
        "/admin/api/federated-runs",
        Some(json!({"table": "github", "claims": {"run_id": "123"}})),
    )
    .await;
    assert_eq!(status, 200, "{runs}");
    let listed: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        run_123.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for run in &run_123 {
        let (_, events) = admin(
            server,
            axum::http::Method::GET,
            &format!("/admin/api/audit?run={run}"),
            None,
        )
        .await;
        let kinds: Vec<&str> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["federated_token", "revocation"], "{events}");
    }
    // A selection naming no claim is refused, not taken for the whole table.
    let (status, body) = admin(
        server,
        axum::http::Method::POST,
        "/admin/api/revocations/federated",
        Some(json!({"table": "github", "claims": {}})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );

    // Past `until`, run 123's fresh tokens trade again (the revoked runs stay revoked).
    server.clock.advance(121);
    let (status, body) = trade_from_ci(server, &external("123", "4")).await;
    assert_eq!(status, 200, "{body}");
}

/// The same kill switch through the binary: `tailpass serve --dev` with the policy, the dev
/// caller (a tailnet node) trading GitHub tokens of runs 123 (two attempts) and 456, then
/// `tailpass revoke --fed github --claim run_id=123` over the admin socket and `tailpass
/// audit --fed github --claim run_id=123 --json`, which lists exactly the two runs.
#[tokio::test]
async fn the_cli_revokes_and_audits_by_external_claims() {
    let (github, k8s) = (issuer().await, issuer().await);
    let cwd = tempfile::tempdir().unwrap();
    let path = cwd.path().join("policy.toml");
    std::fs::write(&path, policy(&github.url, &k8s.url)).unwrap();
    let served = crate::binary::serve_dev_with(
        cwd.path(),
        "server.log",
        &["--policy", path.to_str().unwrap()],
    )
    .await;
    let http = reqwest::Client::new();
    let trade = |run_id: &str, attempt: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut claims = github_claims(&github.url, now);
        claims["run_id"] = json!(run_id);
        claims["run_attempt"] = json!(attempt);
        let external = github.key.sign_jwt("JWT", &claims).unwrap();
        let request = http.post(format!("{}/token", served.issuer)).form(&[
            ("grant_type", EXCHANGE),
            ("subject_token", external.as_str()),
            ("subject_token_type", JWT_TYPE),
            ("audience", GATEWAY),
        ]);
        async move { read(request.send().await.unwrap()).await }
    };
    let mut runs = Vec::new();
    for (run_id, attempt) in [("123", "1"), ("123", "2"), ("456", "1")] {
        let (status, body) = trade(run_id, attempt).await;
        assert_eq!(status, 200, "{body}");
        let token = claims(body["access_token"].as_str().unwrap());
        runs.push(token["run_id"].as_str().unwrap().to_owned());
    }
    let run_123: Vec<&str> = runs.iter().take(2).map(String::as_str).collect();

    let args = [
        "revoke",
        "--fed",
        "github",
        "--claim",
        "run_id=123",
        "--until",
        "1h",
    ];
    let (ok, stdout, stderr) = crate::binary::cli(cwd.path(), &args).await;
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let revoked: Vec<&str> = report["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(revoked, run_123);

    let (status, body) = trade("123", "3").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied")),
        "{body}"
    );
    assert_eq!(trade("456", "2").await.0, 200);

    let args = [
        "audit",
        "--fed",
        "github",
        "--claim",
        "run_id=123",
        "--json",
    ];
    let (ok, stdout, stderr) = crate::binary::cli(cwd.path(), &args).await;
    assert!(ok, "{stderr}");
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let issued: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "federated_token" && e["outcome"] == "success")
        .map(|e| e["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(issued, run_123);
    assert_eq!(
        events.iter().filter(|e| e["event"] == "revocation").count(),
        2,
        "each run's revocation: {stdout}"
    );
    // The whole table is never taken for a selection without claims.
    let (ok, _, _) = crate::binary::cli(cwd.path(), &["revoke", "--fed", "github"]).await;
    assert!(!ok);
    served.terminate().await;
}
