//! The parsers' fuzzing entry points: one function per parser of outside input, each taking
//! arbitrary bytes, for the `fuzz/` crate's cargo-fuzz targets (docs/fuzzing.md).
//!
//! Every function feeds its bytes to the real parser — nothing is copied here — and asserts,
//! beyond "does not panic", the cheap invariants the parser promises: what it accepts says the
//! same once written out again, an error is a client's error (never a 500), a value that
//! passed a check has what the check requires. A failed assertion is a crash to the fuzzer.
//! Built only for tests and with the `fuzzing` feature; the tests below replay each target's
//! checked-in corpus (`fuzz/corpus/TARGET/`), so `cargo test` runs every seed and every
//! regression input.

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;
use tailpass_verify::binding::Presenter;
use tailpass_verify::claims::LogoutClaims;
use tailpass_verify::dpop::{self, ProofRequest, ReplayCache};
use tailpass_verify::feed::{FeedEvent, RevocationList, Snapshot};
use tailpass_verify::remote;
use tailpass_verify::sse::SseParser;
use tailpass_verify::{AccessClaims, Alg, IdClaims, Jwk, JwkSet, Jws, KeySet, UnixTime, Verifier};

use crate::clients::metadata::{ClientMetadata, MetadataRules, Registrant};
use crate::clients::redirect::{self, RedirectRules};
use crate::clients::{AuthMethod, Client, ClientId, ClientOrigin};
use crate::config::file;
use crate::config::options::ServeOptions;
use crate::gateway::endpoints::{Api, Cost, Matched};
use crate::gateway::mcp::{answer, jsonrpc};
use crate::gateway::meter::AnswerScanner;
use crate::gateway::options::GatewayOptions;
use crate::gateway::{body, tools};
use crate::grant::ambient::TAILNET_PEER_TOKEN_TYPE;
use crate::grant::authorize::AuthorizeParams;
use crate::grant::exchange::{ACCESS_TOKEN_TYPE, JWT_TYPE};
use crate::grant::federated::Presentation;
use crate::identity::Identity;
use crate::identity::whois::WhoIsResponse;
use crate::oauth::client_auth::{self, Presented};
use crate::oauth::error::Error;
use crate::oauth::input::{GrantRequest, TokenRequest, parse_form};
use crate::policy::agent::{self, Ask, DEFAULT_CAPABILITY};
use crate::policy::file::PolicyFile;
use crate::policy::tsidp;

/// The issuer the fuzzed tokens name.
pub const ISSUER: &str = "https://idp.tail1234.ts.net";
/// The audience the fuzzed tokens are checked for.
pub const AUDIENCE: &str = "https://gateway.tail1234.ts.net";
/// The `kid` of the fuzzing key.
pub const KID: &str = "fuzz-ed25519";
/// The time every fuzzed check runs at (seeds are valid then).
pub const NOW: UnixTime = UnixTime(1_800_000_000);
/// The URL DPoP proofs are checked against.
pub const DPOP_URL: &str = "https://idp.tail1234.ts.net/token";
/// The request every fuzzed DPoP proof is checked for: `POST` [`DPOP_URL`] at [`NOW`], with
/// no access token.
fn proof_request() -> ProofRequest<'static> {
    ProofRequest {
        method: "POST",
        url: DPOP_URL,
        access_token: None,
        now: NOW,
        max_age: dpop::MAX_AGE,
        skew: dpop::SKEW,
    }
}
/// The fuzzing key's Ed25519 seed: a fixed, public test key, not a secret, so that the
/// checked-in seeds stay verifiable.
const KEY_SEED: [u8; 32] = [7; 32];

/// The fuzzing key's public JWK (EdDSA).
pub fn fuzz_jwk() -> Value {
    use ring::signature::KeyPair as _;
    let public = ring::signature::Ed25519KeyPair::from_seed_unchecked(&KEY_SEED)
        .map(|pair| URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()))
        .unwrap_or_default();
    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": public, "kid": KID, "use": "sig", "alg": "EdDSA"})
}

fn fuzz_keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| KeySet::from_jwks(&serde_json::json!({"keys": [fuzz_jwk()]})))
}

fn fuzz_verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| Verifier::new(ISSUER, AUDIENCE))
}

/// Signs `header`.`claims` with the fuzzing key: how the JWS and DPoP seeds are made.
pub fn sign_with_fuzz_key(header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = ring::signature::Ed25519KeyPair::from_seed_unchecked(&KEY_SEED)
        .map(|pair| URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes()).as_ref()))
        .unwrap_or_default();
    format!("{input}.{signature}")
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// An OAuth error for bad input is the client's (4xx), never the server's.
fn assert_client_error(error: &Error) {
    assert!(
        error.status().is_client_error(),
        "bad input answered {}: {:?}",
        error.status(),
        error.description()
    );
}

/// Splits `data` into chunks whose length its first byte picks, as a network would.
fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let stride = usize::from(data.first().copied().unwrap_or(0) % 13) + 1;
    data.chunks(stride)
}

/// A compact JWS and its claims (`tailpass-verify`): `Jws::parse`, the access, ID and logout
/// claim types read from its payload, and the whole offline check (`Verifier::verify`) with
/// the fuzzing key. Asserts that a token that verifies was signed by that key, names the
/// issuer, the audience and a lifetime the verifier accepts, and that the claims it verified
/// are the claims its payload parses to.
pub fn jws(data: &[u8]) {
    let Some(token) = text(data) else { return };
    let Ok(parsed) = Jws::parse(token) else {
        return;
    };
    let access = parsed.claims::<AccessClaims>();
    let _ = parsed.claims::<IdClaims>();
    let _ = parsed.claims::<LogoutClaims>();
    let presenter = Presenter {
        node: Some("nFuzzNode1CNTRL"),
        dpop_jkt: None,
    };
    if let Ok(claims) = fuzz_verifier().verify(fuzz_keys(), token, &presenter, NOW) {
        assert_eq!(parsed.header.kid.as_deref(), Some(KID));
        assert_eq!(parsed.alg, Alg::EdDSA);
        assert_eq!(claims.iss, ISSUER);
        assert!(claims.aud.contains(AUDIENCE));
        assert!(
            claims.exp.0.saturating_sub(claims.iat.0)
                <= fuzz_verifier().revocations().max_lifetime()
        );
        assert_eq!(access.ok(), Some(claims));
    }
}

/// A DPoP proof (RFC 9449, `tailpass-verify`'s `check_proof`) for `POST` [`DPOP_URL`] at
/// [`NOW`]. Asserts that an accepted proof's thumbprint is its header key's, its `jti` is
/// non-empty and bounded, its `iat` within the window, and that the replay cache takes it
/// once and refuses it the second time.
pub fn dpop_proof(data: &[u8]) {
    let Some(proof) = text(data) else { return };
    let request = proof_request();
    let Ok(checked) = dpop::check_proof(proof, &request) else {
        return;
    };
    let header_key = Jws::parse(proof)
        .ok()
        .and_then(|jws| jws.header.jwk)
        .and_then(|jwk| Jwk::parse_public(&jwk).ok());
    assert_eq!(
        header_key.map(|k| k.thumbprint()),
        Some(checked.jkt.clone())
    );
    assert!(!checked.jti.is_empty() && checked.jti.len() <= 128);
    assert!(checked.iat.0 >= NOW.0 - dpop::MAX_AGE && checked.iat.0 <= NOW.0 + dpop::SKEW);
    let replay = ReplayCache::new(16, dpop::MAX_AGE + dpop::SKEW);
    assert_eq!(replay.remember(&checked, NOW), Ok(()));
    assert_eq!(replay.remember(&checked, NOW), Err(dpop::DpopError::Replay));
}

/// A JWK set (RFC 7517): `JwkSet` and `Jwk::parse_public` with thumbprints, and `KeySet`'s
/// readings of the issuer's own set and of a federated issuer's. Asserts that a parsed set
/// written out parses to the same set, and that every key of the issuer's reading is in the
/// federated one (which only adds keys whose `alg` it infers).
pub fn jwks(data: &[u8]) {
    let Ok(document) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Some(keys) = document.get("keys").and_then(Value::as_array) {
        for key in keys {
            if let Ok(jwk) = Jwk::parse_public(key) {
                let _ = jwk.thumbprint();
            }
        }
    }
    if let Ok(set) = serde_json::from_value::<JwkSet>(document.clone()) {
        let again = serde_json::to_value(&set).and_then(serde_json::from_value::<JwkSet>);
        assert_eq!(again.ok().as_ref(), Some(&set));
    }
    let own = KeySet::from_jwks(&document);
    let external = KeySet::from_external_jwks(&document);
    assert!(own.len() <= external.len());
    let kids: Vec<&str> = document
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|key| key.get("kid").and_then(Value::as_str))
        .collect();
    for kid in &kids {
        // A `kid` used twice is the last usable key's in each reading, which may differ.
        if kids.iter().filter(|k| *k == kid).count() == 1
            && let Some(found) = own.get(kid)
        {
            assert!(external.get(kid).is_some_and(|e| e.alg() == found.alg()));
        }
    }
}

/// The form a parsed grant request is sent as.
fn token_form(request: &TokenRequest, grant: &GrantRequest) -> Vec<(&'static str, String)> {
    let mut form = vec![("grant_type", request.grant_type.as_str().to_owned())];
    let agent = |form: &mut Vec<(&'static str, String)>, a: &crate::grant::agent::AgentRequest| {
        form.extend(a.audiences.iter().map(|x| ("audience", x.clone())));
        form.extend(a.scope.clone().map(|s| ("scope", s)));
        form.extend(a.expires_in.map(|e| ("expires_in", e.to_string())));
        form.extend(a.run_label.clone().map(|l| ("run_label", l)));
    };
    match grant {
        GrantRequest::AuthorizationCode(code) => {
            form.push(("code", code.code.clone()));
            form.push(("redirect_uri", code.redirect_uri.clone()));
            form.extend(code.code_verifier.clone().map(|v| ("code_verifier", v)));
            form.extend(code.resources.iter().map(|r| ("resource", r.clone())));
        }
        GrantRequest::RefreshToken(refresh) => {
            form.push(("refresh_token", refresh.refresh_token.clone()));
            form.extend(refresh.scope.clone().map(|s| ("scope", s)));
            form.extend(refresh.resources.iter().map(|r| ("resource", r.clone())));
        }
        GrantRequest::ClientCredentials(a) => agent(&mut form, a),
        GrantRequest::TokenExchange(exchange) => {
            form.push(("subject_token", exchange.subject_token.clone()));
            form.push(("subject_token_type", ACCESS_TOKEN_TYPE.to_owned()));
            if let Some(actor) = &exchange.actor_token {
                form.push(("actor_token", actor.clone()));
                form.push(("actor_token_type", ACCESS_TOKEN_TYPE.to_owned()));
            }
            agent(&mut form, &exchange.child);
        }
        GrantRequest::PeerExchange(peer) => {
            form.push(("subject_token", peer.peer.to_string()));
            form.push(("subject_token_type", TAILNET_PEER_TOKEN_TYPE.to_owned()));
            form.push(("actor_token", peer.actor_token.clone()));
            form.push(("actor_token_type", ACCESS_TOKEN_TYPE.to_owned()));
            agent(&mut form, &peer.token);
        }
        GrantRequest::Federated(federated) => {
            match federated.presentation {
                Presentation::Exchange => {
                    form.push(("subject_token", federated.token.clone()));
                    form.push(("subject_token_type", JWT_TYPE.to_owned()));
                }
                Presentation::Assertion => form.push(("assertion", federated.token.clone())),
            }
            agent(&mut form, &federated.run);
        }
    }
    form.extend(request.client_id.clone().map(|c| ("client_id", c)));
    form.extend(request.client_secret.clone().map(|c| ("client_secret", c)));
    form
}

/// A `/token` request body (`TokenRequest::parse`: the form, then the grant's typed request
/// by `grant_type`). Asserts that every refusal is a 4xx OAuth error, and that an accepted
/// request, written out as a form again, parses to the same grant request.
pub fn token_request(data: &[u8]) {
    let request = match TokenRequest::parse(data) {
        Ok(request) => request,
        Err(e) => return assert_client_error(&e),
    };
    let grant = match &request.grant {
        Ok(grant) => grant,
        Err(e) => return assert_client_error(e),
    };
    let form = serde_html_form::to_string(token_form(&request, grant)).unwrap_or_default();
    let again = TokenRequest::parse(form.as_bytes());
    let again = again
        .as_ref()
        .map(|r| (&r.client_id, &r.client_secret, r.grant.as_ref().ok()));
    assert_eq!(
        again.ok(),
        Some((&request.client_id, &request.client_secret, Some(grant))),
        "{form}"
    );
}

/// An authorization request (`/authorize`'s query and form, and the consent form that carries
/// it: `AuthorizeParams`). Asserts that a refusal is a 4xx OAuth error and that the
/// parameters an accepted request carries through the consent form (`pairs`) parse back to
/// the same parameters.
pub fn authorize_request(data: &[u8]) {
    let params = match parse_form::<AuthorizeParams>(data) {
        Ok(params) => params,
        Err(e) => return assert_client_error(&e),
    };
    let pairs = params.pairs();
    let form = serde_html_form::to_string(&pairs).unwrap_or_default();
    let again = parse_form::<AuthorizeParams>(form.as_bytes()).map(|p| p.pairs());
    assert_eq!(again.ok(), Some(pairs), "{form}");
}

fn metadata_rules(registrant: Registrant) -> MetadataRules {
    MetadataRules {
        redirect: RedirectRules::default(),
        algs: [Alg::ES256, Alg::EdDSA, Alg::RS256].into_iter().collect(),
        registrant,
    }
}

/// A client registration (RFC 7591/7592 JSON: `ClientMetadata`, validated for a
/// self-registered client and for an operator). Asserts that what a self-registered client
/// may register an operator may too, identically, and that a registered client's metadata
/// view (what `/register` answers) validates to the same metadata.
pub fn registration_request(data: &[u8]) {
    let Ok(metadata) = serde_json::from_slice::<ClientMetadata>(data) else {
        return;
    };
    let operator = metadata
        .clone()
        .validate(&metadata_rules(Registrant::Operator));
    let Ok(valid) = metadata.validate(&metadata_rules(Registrant::SelfRegistered)) else {
        return;
    };
    assert_eq!(operator.as_ref().ok(), Some(&valid));
    let client = Client::from_metadata(
        ClientId("fuzz-client".into()),
        valid.clone(),
        ClientOrigin::Dynamic,
        NOW,
        None,
    );
    let view = client.metadata(Alg::RS256);
    let again = view.validate(&metadata_rules(Registrant::SelfRegistered));
    let mut expected = valid;
    expected.id_token_signed_response_alg =
        Some(expected.id_token_signed_response_alg.unwrap_or(Alg::RS256));
    assert_eq!(again.ok(), Some(expected));
}

/// An `Authorization` header at the token endpoint (HTTP Basic client authentication,
/// `client_auth::presented`). Asserts that a refusal is a 4xx OAuth error and that accepted
/// credentials, encoded again as RFC 6749 §2.3.1 says, present the same client and secret.
pub fn basic_auth(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value);
    let presented = match client_auth::presented(&headers, None, None) {
        Ok(presented) => presented,
        Err(e) => return assert_client_error(&e),
    };
    assert!(
        matches!(presented, Presented::Secret { .. }),
        "a Basic header presented {presented:?}"
    );
    if let Presented::Secret { id, secret } = &presented {
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let again = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
        );
        let again = HeaderValue::from_str(&again);
        assert!(
            again.is_ok(),
            "re-encoded credentials are not a header value"
        );
        if let Ok(again) = again {
            headers.insert(header::AUTHORIZATION, again);
        }
        assert_eq!(
            client_auth::presented(&headers, Some(id), None).ok(),
            Some(presented.clone())
        );
    }
}

/// A redirect URI, at registration and at use. The first line is the requested URI, each
/// other line (up to eight) a URI to register (`redirect::check`); the registered ones make a confidential
/// and a public client (`Client::allows_redirect`). Asserts that a URI registration accepts
/// is an absolute URL without fragment, whitespace or credentials, and that a requested URI
/// a client accepts is one of its registered URIs exactly — or, for the public client, an
/// `http` loopback URL that differs from one only by its port.
pub fn redirect_uri(data: &[u8]) {
    let Some(text) = text(data) else { return };
    // A client registers a few URIs; more lines would only make each input slower.
    let mut lines = text.split('\n').take(1 + MAX_REGISTERED);
    let requested = lines.next().unwrap_or_default();
    let mut registered = Vec::new();
    for uri in lines {
        for rules in [RedirectRules::default(), RedirectRules { allow_http: true }] {
            if redirect::check(uri, rules).is_ok() {
                assert!(!uri.chars().any(|c| c.is_whitespace() || c.is_control()));
                let parsed = url::Url::parse(uri);
                assert!(parsed.as_ref().is_ok_and(|u| u.fragment().is_none()
                    && u.username().is_empty()
                    && u.password().is_none()));
            }
        }
        if redirect::check(uri, RedirectRules::default()).is_ok() {
            registered.push(uri.to_owned());
        }
    }
    let Ok(valid) = ClientMetadata {
        redirect_uris: Some(registered.clone()),
        ..ClientMetadata::default()
    }
    .validate(&metadata_rules(Registrant::Operator)) else {
        return;
    };
    let mut client = Client::from_metadata(
        ClientId("fuzz-client".into()),
        valid,
        ClientOrigin::Config,
        NOW,
        None,
    );
    let exact = registered.iter().any(|r| r == requested);
    assert_eq!(client.allows_redirect(requested), exact);
    client.token_endpoint_auth_method = AuthMethod::None;
    if client.allows_redirect(requested) && !exact {
        let without_port = |uri: &str| {
            url::Url::parse(uri)
                .ok()
                .filter(|u| u.scheme() == "http")
                .map(|mut u| {
                    let _ = u.set_port(None);
                    u
                })
        };
        let asked = without_port(requested);
        assert!(
            asked.is_some(),
            "{requested:?} accepted but is not an http URL"
        );
        assert!(
            registered.iter().any(|r| without_port(r) == asked),
            "{requested:?} accepted for {registered:?}"
        );
    }
}

/// The most URIs [`redirect_uri`] registers from one input.
const MAX_REGISTERED: usize = 8;

/// tailscaled's WhoIs answer (`WhoIsResponse`, the LocalAPI's and the local table's JSON)
/// turned into an `Identity`, then its tsidp grants read. Asserts that a tagged node has no
/// user and an untagged one has one, and that the node's name has no trailing dot.
pub fn whois(data: &[u8]) {
    let Ok(answer) = serde_json::from_slice::<WhoIsResponse>(data) else {
        return;
    };
    let tagged = !answer.node.tags.is_empty();
    let Ok(identity) = answer.into_identity() else {
        return;
    };
    assert_eq!(identity.is_tagged(), tagged);
    assert!(!identity.node.name.ends_with('.'));
    assert!(!identity.node.stable_id.0.is_empty());
    let _ = tsidp::grants(&identity);
    let _ = tsidp::may_register(&identity);
    let _ = tsidp::may_administer(&identity);
}

fn tagged_identity() -> &'static Option<Identity> {
    static IDENTITY: OnceLock<Option<Identity>> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        let answer = serde_json::json!({
            "Node": {"ID": 7, "StableID": "nFuzzNode1CNTRL", "Name": "ci-runner.tail1234.ts.net.",
                     "Addresses": ["100.64.0.7/32"], "Tags": ["tag:ci"]},
            "UserProfile": {"ID": 1, "LoginName": "tagged-devices"},
            "CapMap": {}
        });
        serde_json::from_value::<WhoIsResponse>(answer)
            .ok()
            .and_then(|a| a.into_identity().ok())
    })
}

/// The policy file's TOML (`PolicyFile::parse`: `[groups]`, `[[rule]]` with their selectors,
/// `[[federation]]` tables, all checked), then `tailpass policy check`'s overlaps and an
/// agent decision for a tagged node. Asserts that a rule the decision picks is one of the
/// file's.
pub fn policy_toml(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(policy) = PolicyFile::parse(text) else {
        return;
    };
    let _ = policy.overlaps();
    let _ = policy.groups_of("alice@example.com");
    if let Some(identity) = tagged_identity() {
        let audiences = [AUDIENCE.to_owned()];
        for audiences in [&[][..], &audiences[..]] {
            let ask = Ask {
                audiences,
                scopes: None,
            };
            let _ = agent::decide(identity, &policy, DEFAULT_CAPABILITY, ask);
        }
    }
}

/// The `--config` file's TOML (`config::file::parse`) for `serve` and for `gateway`. Asserts
/// that a file one of them accepts has only keys of the global options and that command's.
pub fn config_toml(data: &[u8]) {
    let Some(text) = text(data) else { return };
    // Not TOML is refused by both alike; reading the table first keeps the target fast.
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return;
    };
    let keys = || table.keys().cloned().collect::<Vec<_>>();
    let global = file::keys_of::<crate::config::options::GlobalOptions>();
    if file::parse::<ServeOptions>(text, "fuzz.toml").is_ok() {
        let serve = file::keys_of::<ServeOptions>();
        assert!(
            keys()
                .iter()
                .all(|k| global.contains(&k.as_str()) || serve.contains(&k.as_str()))
        );
    }
    if file::parse::<GatewayOptions>(text, "fuzz.toml").is_ok() {
        let gateway = file::keys_of::<GatewayOptions>();
        assert!(
            keys()
                .iter()
                .all(|k| global.contains(&k.as_str()) || gateway.contains(&k.as_str()))
        );
    }
}

fn revoked_claims() -> &'static AccessClaims {
    static CLAIMS: OnceLock<AccessClaims> = OnceLock::new();
    CLAIMS.get_or_init(|| {
        serde_json::from_value(serde_json::json!({
            "iss": ISSUER, "sub": "node:nFuzzNode1CNTRL", "aud": AUDIENCE,
            "exp": NOW.0 + 300, "iat": NOW.0 - 10, "jti": "j1", "client_id": "agent",
            "run_id": "run_1", "root_run_id": "run_0",
            "cnf": {"tailnet_node": "nFuzzNode1CNTRL"}
        }))
        .unwrap_or_default()
    })
}

/// The revocation feed's event stream as a verifier follows it (`sse::SseParser`, then
/// `remote::apply_event` into a `RevocationList`, which then checks a token). Asserts that the
/// events read do not depend on how the stream was cut into chunks.
pub fn feed_sse(data: &[u8]) {
    let mut whole = SseParser::new(remote::MAX_EVENT);
    let Ok(events) = whole.push(data) else {
        return;
    };
    let mut pieces = SseParser::new(remote::MAX_EVENT);
    let mut again = Vec::new();
    for chunk in chunks(data) {
        let pushed = pieces.push(chunk);
        assert!(
            pushed.is_ok(),
            "a chunk failed where the whole stream did not: {pushed:?}"
        );
        again.extend(pushed.unwrap_or_default());
    }
    assert_eq!(again, events);
    let list = RevocationList::new();
    for event in &events {
        if remote::apply_event(&list, event).is_err() {
            break;
        }
    }
    let _ = list.check(revoked_claims(), Some(KID));
    list.forget_expired(NOW);
}

/// The revocation feed's JSON (`GET /revocations?since=`, a `Snapshot`, and one event, a
/// `FeedEvent`), applied to a `RevocationList`. Asserts that a snapshot written out parses
/// to the same snapshot, that applying it leaves the list at its `seq` holding at most its
/// events, and that a token revoked by jti after it was issued is refused.
pub fn feed_json(data: &[u8]) {
    if let Ok(snapshot) = serde_json::from_slice::<Snapshot>(data) {
        let again = serde_json::to_vec(&snapshot)
            .ok()
            .and_then(|json| serde_json::from_slice::<Snapshot>(&json).ok());
        assert_eq!(again.as_ref(), Some(&snapshot));
        let list = RevocationList::new();
        list.apply_snapshot(&snapshot);
        assert_eq!(list.seq(), snapshot.seq);
        assert!(list.len() <= snapshot.events.len());
        let _ = list.check(revoked_claims(), Some(KID));
        list.forget_expired(NOW);
    }
    if let Ok(event) = serde_json::from_slice::<FeedEvent>(data) {
        let list = RevocationList::new();
        list.apply(&event);
        let jti: FeedEvent = FeedEvent {
            seq: event.seq,
            kind: tailpass_verify::feed::FeedKind::Known(
                tailpass_verify::feed::RevocationKind::Jti,
            ),
            value: revoked_claims().jti.clone(),
            revoked_at: revoked_claims().iat,
            until: None,
        };
        list.apply(&jti);
        assert!(list.check(revoked_claims(), Some(KID)).is_err());
    }
}

/// Scans `data` as one answer, whole and in chunks; asserts both readings agree.
fn scan_answer(data: &[u8], event_stream: bool) {
    let mut whole = AnswerScanner::new(event_stream);
    whole.push(data);
    let usage = whole.finish_usage();
    let calls = whole.finish_calls();
    let mut pieces = AnswerScanner::new(event_stream);
    for chunk in chunks(data) {
        pieces.push(chunk);
    }
    assert_eq!(pieces.finish_usage(), usage);
    assert_eq!(pieces.finish_calls(), calls);
    assert!(calls.len() <= tools::MAX_NAMES);
    if usage.input.is_some() || usage.output.is_some() {
        let sum = usage
            .input
            .unwrap_or(0)
            .saturating_add(usage.output.unwrap_or(0));
        assert_eq!(usage.total, Some(sum));
    }
}

/// An upstream's streamed answer as the gateway meters it (`AnswerScanner` over
/// `text/event-stream`: usage and tool calls of OpenAI chat and Responses, Anthropic and
/// Gemini events). Asserts that the usage and calls read do not depend on how the stream was
/// cut into chunks, that calls are bounded, and that the total is input plus output.
pub fn gateway_answer_sse(data: &[u8]) {
    scan_answer(data, true);
}

/// An upstream's whole JSON answer as the gateway meters it (`AnswerScanner` on JSON, every
/// provider's shape, Gemini's array of answers included); the same assertions as
/// [`gateway_answer_sse`].
pub fn gateway_answer_json(data: &[u8]) {
    scan_answer(data, false);
}

/// A model call's request body as the gateway admits it (`body::shape` for each API: the
/// model, the reservation, the tools offered; `stream_options.include_usage` set on OpenAI
/// streams). Asserts that a body is admitted only as one JSON object that serde's lenient
/// reading reads the same, and that shaping is idempotent: the shaped body, shaped again, is
/// the same body, model and tools.
pub fn gateway_request(data: &[u8]) {
    for api in [Api::Openai, Api::Anthropic, Api::Gemini] {
        let matched = Matched {
            api,
            model: None,
            cost: Cost::Generation,
            usage_opt_in: api == Api::Openai,
            json_body: true,
        };
        let Ok(shaped) = body::shape(Bytes::copy_from_slice(data), &matched, 4096) else {
            continue;
        };
        assert!(!shaped.unread, "a built-in endpoint's body went unread");
        if !data.is_empty() {
            let lenient = serde_json::from_slice::<Value>(data);
            assert!(
                lenient.as_ref().is_ok_and(Value::is_object),
                "admitted a body serde does not read as an object"
            );
        }
        assert!(shaped.reservation >= (data.len() as u64).div_ceil(body::INPUT_BYTES_PER_TOKEN));
        let again = body::shape(shaped.body.clone(), &matched, 4096);
        assert!(
            again.is_ok(),
            "the shaped body is refused when shaped again"
        );
        let Ok(again) = again else {
            return;
        };
        if again.body != shaped.body {
            let json = |b: &[u8]| serde_json::from_slice::<Value>(b).ok();
            let (first, second) = (json(&shaped.body), json(&again.body));
            assert!(
                first.is_some() && second.is_some(),
                "shaping changed a body it did not read"
            );
            assert!(same_json(
                &first.unwrap_or_default(),
                &second.unwrap_or_default()
            ));
        }
        assert_eq!(again.model, shaped.model);
        assert_eq!(again.tools, shaped.tools);
    }
}

/// JSON equality, but for floats within a relative 1e-12: serde_json's default float parsing
/// may miss the nearest double by one ulp, so a float written out and read back may differ in
/// its last bit.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_json(v, w))
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        _ => a == b,
    }
}

/// The tools the fuzzed MCP token allows: those whose name begins with `search`.
fn fuzz_tool_allowed(name: &str) -> bool {
    name.starts_with("search")
}

/// Whether `message`, as a caller reads it, lists a tool the fuzzed token does not allow.
fn lists_a_forbidden_tool(message: &Value) -> bool {
    message
        .get("result")
        .and_then(|r| r.get("tools"))
        .and_then(Value::as_array)
        .is_some_and(|tools| {
            tools.iter().any(|tool| {
                !tool
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(fuzz_tool_allowed)
            })
        })
}

/// What a fresh watch passes of an answer arriving as `pieces`: for the fuzzed token when
/// `restricted`, else for one that allows every tool; `None` when the answer was cut.
fn watch_answer<'a>(
    sse: bool,
    restricted: bool,
    list: bool,
    pieces: impl Iterator<Item = &'a [u8]>,
) -> Option<Vec<u8>> {
    let allowed = restricted.then(|| Box::new(fuzz_tool_allowed) as answer::Allowed);
    let mut watch = answer::Watch::new(sse, allowed, None, list);
    let mut out = Vec::new();
    for piece in pieces {
        out.extend(watch.push(piece).ok()?);
    }
    out.extend(watch.finish());
    Some(out)
}

/// An MCP server's answer on its way back to the caller (`mcp::answer::Watch`), as an event
/// stream or as a JSON body (the first byte picks which, whether the request was
/// `tools/list`, and how the answer is cut into chunks), for a token that allows only the
/// tools named `search…` and for one that allows every tool. Asserts that an unrestricted
/// answer passes byte for byte, that a filtered answer does not depend on how it was cut, and
/// that a caller reading it — its events by the event-stream format (`sse::SseParser`), a
/// body as JSON, both decoded as UTF-8 with replacement characters — finds no listed tool
/// the token does not allow.
pub fn mcp_answer(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let (sse, list) = (mode & 1 == 1, mode & 2 == 2);
    let stride = usize::from(mode >> 2) % 13 + 1;
    let open = watch_answer(sse, false, list, std::iter::once(body));
    assert_eq!(
        open.as_deref(),
        Some(body),
        "an unrestricted answer changed"
    );
    let Some(filtered) = watch_answer(sse, true, list, std::iter::once(body)) else {
        return;
    };
    let cut = watch_answer(sse, true, list, body.chunks(stride));
    assert_eq!(
        cut.as_ref(),
        Some(&filtered),
        "the filter depends on the chunks"
    );
    let read = |text: &str| serde_json::from_str::<Value>(text).ok();
    if sse {
        let mut caller = SseParser::new(usize::MAX);
        for event in caller.push(&filtered).unwrap_or_default() {
            let message = read(&event.data);
            assert!(
                !message.as_ref().is_some_and(lists_a_forbidden_tool),
                "a forbidden tool reached the caller: {}",
                event.data
            );
        }
    } else if list {
        let text = String::from_utf8_lossy(&filtered);
        assert!(
            !read(&text).as_ref().is_some_and(lists_a_forbidden_tool),
            "a forbidden tool reached the caller: {text}"
        );
    }
}

/// A JSON value as a parser that keeps the first of two equal member names reads it (serde_json
/// keeps the last): what a server of that kind would see of the bytes the gateway forwards.
struct FirstWins(Value);

impl<'de> serde::Deserialize<'de> for FirstWins {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FirstWinsVisitor)
    }
}

struct FirstWinsVisitor;

impl<'de> serde::de::Visitor<'de> for FirstWinsVisitor {
    type Value = FirstWins;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<FirstWins, E> {
        Ok(FirstWins(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<FirstWins, E> {
        Ok(FirstWins(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<FirstWins, E> {
        Ok(FirstWins(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<FirstWins, E> {
        Ok(FirstWins(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<FirstWins, E> {
        Ok(FirstWins(Value::from(v)))
    }
    fn visit_unit<E>(self) -> Result<FirstWins, E> {
        Ok(FirstWins(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FirstWins, A::Error> {
        let mut items = Vec::new();
        while let Some(FirstWins(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(FirstWins(Value::Array(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FirstWins, A::Error> {
        let mut members = serde_json::Map::new();
        while let Some((name, FirstWins(value))) = map.next_entry::<String, FirstWins>()? {
            members.entry(name).or_insert(value);
        }
        Ok(FirstWins(Value::Object(members)))
    }
}

/// A caller's message to an MCP server through the gateway (`mcp::jsonrpc::Incoming::parse`:
/// its kind, method, id, and for `tools/call` the tool the gateway checks). Asserts that an
/// accepted message is one JSON object that a server reads the same, whole, whichever of two
/// equal names it keeps, and that the tool checked is the one it names.
pub fn mcp_request(data: &[u8]) {
    let Ok(incoming) = jsonrpc::Incoming::parse(data) else {
        return;
    };
    let last_wins = serde_json::from_slice::<Value>(data);
    let first_wins = serde_json::from_slice::<FirstWins>(data);
    assert!(
        matches!(last_wins, Ok(Value::Object(_))),
        "accepted a message that is not a JSON object"
    );
    assert!(
        first_wins.is_ok(),
        "accepted a message a first-wins reader cannot read"
    );
    let (Ok(Value::Object(message)), Ok(FirstWins(first))) = (last_wins, first_wins) else {
        return;
    };
    assert_eq!(
        first,
        Value::Object(message.clone()),
        "readers that keep the first or the last of two equal names read the message differently"
    );
    assert_eq!(message.get("jsonrpc"), Some(&Value::from("2.0")));
    match incoming {
        jsonrpc::Incoming::Request { method, id, tool } => {
            assert_eq!(message.get("method"), Some(&Value::from(method.as_str())));
            assert_eq!(message.get("id"), Some(&id));
            let named = message
                .get("params")
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str);
            if method == "tools/call" {
                assert_eq!(
                    tool.as_deref(),
                    named,
                    "checked a tool other than the one named"
                );
            } else {
                assert_eq!(tool, None);
            }
        }
        jsonrpc::Incoming::Notification { method } => {
            assert_eq!(message.get("method"), Some(&Value::from(method.as_str())));
            assert!(message.get("id").is_none_or(Value::is_null));
        }
        jsonrpc::Incoming::Response => {
            assert!(message.get("method").is_none());
            assert!(message.contains_key("result") || message.contains_key("error"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// Runs `target` on every file of `fuzz/corpus/NAME/`, failing when there is none.
    fn replay(name: &str, target: fn(&[u8])) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(name);
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        entries.sort();
        assert!(!entries.is_empty(), "{} has no corpus", dir.display());
        for path in entries {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", path.display());
        }
    }

    fn seed(target: &str, name: &str) -> String {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target)
            .join(name);
        std::fs::read_to_string(path).unwrap()
    }

    /// The signed seeds are signed with the fuzz key and valid at `NOW`, so the fuzzer starts
    /// from inputs that reach the claim checks (and the assertions on what verified).
    #[test]
    fn signed_seeds_reach_the_checks() {
        let presenter = Presenter {
            node: Some("nFuzzNode1CNTRL"),
            dpop_jkt: None,
        };
        for name in ["agent-token", "person-token", "exchanged-child-token"] {
            let token = seed("jws", name);
            let verified = fuzz_verifier().verify(fuzz_keys(), &token, &presenter, NOW);
            assert!(verified.is_ok(), "{name}: {verified:?}");
        }
        let refused =
            fuzz_verifier().verify(fuzz_keys(), &seed("jws", "expired-token"), &presenter, NOW);
        assert!(refused.is_err());
        let request = proof_request();
        for name in ["token-endpoint", "with-nonce-and-ath", "uppercase-host"] {
            let checked = dpop::check_proof(&seed("dpop_proof", name), &request);
            assert!(checked.is_ok(), "{name}: {checked:?}");
        }
        let token = sign_with_fuzz_key(
            &serde_json::json!({"alg": "EdDSA", "kid": KID, "typ": "at+jwt"}),
            &serde_json::json!({"iss": ISSUER}),
        );
        assert!(
            Jws::parse(&token).is_ok_and(|jws| jws.verify(fuzz_keys().get(KID).unwrap()).is_ok())
        );
    }

    macro_rules! corpus_tests {
        ($($name:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    replay(stringify!($name), super::$name);
                }
            )*
        };
    }

    corpus_tests!(
        jws,
        dpop_proof,
        jwks,
        token_request,
        authorize_request,
        registration_request,
        basic_auth,
        redirect_uri,
        whois,
        policy_toml,
        config_toml,
        feed_sse,
        feed_json,
        gateway_answer_sse,
        gateway_answer_json,
        gateway_request,
        mcp_answer,
        mcp_request,
    );
}
