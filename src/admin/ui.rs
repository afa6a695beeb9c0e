//! The admin UI: server-rendered pages under `/admin` over the same operations as the admin
//! API (clients, keys, the kill switch, the audit log). No script runs in it; every action is
//! a form.
//!
//! Access is the `allow_admin_ui` grant on a live WhoIs (or `--dev` loopback), never over
//! Funnel. Every state-changing request must be same-origin (Fetch-Metadata, else Origin) and
//! carry a CSRF token ([`csrf`](super::csrf)) bound to the administrator.

use askama::Template;
use axum::Router;
use axum::extract::{Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tailpass_verify::UnixTime;
use tailpass_verify::feed::RevocationKind;

use super::clients::{self, ClientEdit, ClientView, NewClient};
use super::csrf;
use crate::audit::EventKind;
use crate::killswitch::{self, Target};
use crate::oauth::caller::{Caller, is_same_origin};
use crate::oauth::error::Error;
use crate::oauth::input::Path;
use crate::pages;
use crate::policy::tsidp;
use crate::state::AppState;
use crate::store::{AuditFilter, AuditRecord};

/// The UI's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(overview))
        .route("/admin/clients", get(clients_page).post(create_client))
        .route("/admin/clients/{id}", get(client_page).post(edit_client))
        .route("/admin/clients/{id}/delete", post(delete_client))
        .route("/admin/clients/{id}/secret", post(regenerate_secret))
        .route("/admin/keys", get(keys_page))
        .route("/admin/keys/rotate", post(rotate_keys))
        .route("/admin/runs", get(runs_page))
        .route("/admin/revoke", post(revoke))
        .route("/admin/audit", get(audit_page))
}

fn refused(status: StatusCode, why: &str) -> Response {
    crate::oauth::page::message(status, "Administration", why, None)
}

fn failed(e: Error) -> Response {
    let why = e.description().unwrap_or("the request failed").to_owned();
    crate::oauth::page::message(e.status(), "Administration", &why, Some(e.code().as_str()))
}

/// An administrator using the UI, with the CSRF token for their forms.
#[derive(Debug, Clone)]
pub struct UiAdmin {
    actor: String,
    csrf: String,
}

impl FromRequestParts<AppState> for UiAdmin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let changes_state = !matches!(parts.method, Method::GET | Method::HEAD);
        if changes_state && !is_same_origin(&parts.headers, state.issuer.origin()) {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "Cross-site request refused.",
            ));
        }
        let Caller(caller) = Caller::from_request_parts(parts, state)
            .await
            .map_err(failed)?;
        if !tsidp::may_administer(&caller) {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "Your tailnet identity has no allow_admin_ui grant.",
            ));
        }
        let actor = caller
            .user
            .as_ref()
            .map(|u| u.login.clone())
            .unwrap_or_else(|| caller.node.name.clone());
        let csrf = csrf::token(&state.consent_key, &actor, state.now());
        Ok(UiAdmin { actor, csrf })
    }
}

/// A form posted by an administrator: same-origin (checked by [`UiAdmin`]), with this
/// administrator's CSRF token, and well-formed; otherwise a page saying what is wrong.
struct Posted<T> {
    admin: UiAdmin,
    form: T,
}

#[derive(Deserialize)]
struct WithToken<T> {
    csrf: String,
    #[serde(flatten)]
    form: T,
}

impl<T: serde::de::DeserializeOwned + Send> axum::extract::FromRequest<AppState> for Posted<T> {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let admin = UiAdmin::from_request_parts(&mut parts, state).await?;
        let request = axum::extract::Request::from_parts(parts, body);
        let Form(posted) = Form::<WithToken<T>>::from_request(request, state)
            .await
            .map_err(|e| refused(StatusCode::BAD_REQUEST, &e.body_text()))?;
        if !csrf::verify(&state.consent_key, &admin.actor, &posted.csrf, state.now()) {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "The form has expired or did not come from this page; reload and try again.",
            ));
        }
        Ok(Posted {
            admin,
            form: posted.form,
        })
    }
}

/// A form with nothing but its token.
#[derive(Debug, Default, Deserialize)]
struct Empty {}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

fn utc(t: UnixTime) -> String {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(t.0).unwrap_or(0))
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| t.0.to_string())
}

fn page(rendered: Result<String, askama::Error>) -> Response {
    crate::oauth::page::rendered(rendered.map(|body| pages::html(StatusCode::OK, body)))
}

#[derive(Template)]
#[template(path = "admin/overview.html")]
struct Overview<'a> {
    actor: &'a str,
    issuer: &'a str,
    endpoints: Vec<(&'static str, String)>,
}

async fn overview(State(state): State<AppState>, admin: UiAdmin) -> Response {
    let issuer = state.issuer.url();
    let endpoints = [
        ("Issuer", ""),
        ("Discovery", crate::oauth::paths::OPENID_CONFIGURATION),
        ("Authorization", crate::oauth::paths::AUTHORIZE),
        ("Token", crate::oauth::paths::TOKEN),
        ("Userinfo", crate::oauth::paths::USERINFO),
        ("JWKS", crate::oauth::paths::JWKS),
        ("Revocation feed", crate::oauth::paths::REVOCATIONS),
        ("End session", crate::oauth::paths::LOGOUT),
    ]
    .into_iter()
    .map(|(name, path)| (name, format!("{}{path}", issuer.trim_end_matches('/'))))
    .collect();
    page(
        Overview {
            actor: &admin.actor,
            issuer: issuer.trim_end_matches('/'),
            endpoints,
        }
        .render(),
    )
}

#[derive(Template)]
#[template(path = "admin/clients.html")]
struct ClientsPage<'a> {
    actor: &'a str,
    csrf: &'a str,
    clients: Vec<ClientView>,
}

async fn clients_page(State(state): State<AppState>, admin: UiAdmin) -> Response {
    match clients::list(&state).await {
        Ok(clients) => page(
            ClientsPage {
                actor: &admin.actor,
                csrf: &admin.csrf,
                clients,
            }
            .render(),
        ),
        Err(e) => failed(e),
    }
}

#[derive(Debug, Deserialize)]
struct CreateForm {
    name: String,
    redirect_uris: String,
    #[serde(default)]
    users: String,
    #[serde(default)]
    resources: String,
    #[serde(default)]
    public: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/secret.html")]
struct SecretPage<'a> {
    actor: &'a str,
    client_name: &'a str,
    client_id: &'a str,
    secret: Option<&'a str>,
}

fn secret_page(admin: &UiAdmin, created: &clients::CreatedClient) -> Response {
    page(
        SecretPage {
            actor: &admin.actor,
            client_name: &created.client.client_name,
            client_id: &created.client_id,
            secret: created.client_secret.as_deref(),
        }
        .render(),
    )
}

async fn create_client(
    State(state): State<AppState>,
    Posted { admin, form }: Posted<CreateForm>,
) -> Response {
    let new = NewClient {
        name: form.name,
        redirect_uris: words(&form.redirect_uris),
        public: form.public.is_some(),
        users: words(&form.users),
        resources: words(&form.resources),
        ..NewClient::default()
    };
    match clients::create(&state, &admin.actor, new).await {
        Ok(created) => secret_page(&admin, &created),
        Err(e) => failed(e),
    }
}

#[derive(Template)]
#[template(path = "admin/client.html")]
struct ClientPage<'a> {
    actor: &'a str,
    csrf: &'a str,
    client: ClientView,
    redirect_uris: String,
    users: String,
    resources: String,
}

async fn client_page(
    State(state): State<AppState>,
    admin: UiAdmin,
    Path(id): Path<String>,
) -> Response {
    let found = match clients::list(&state).await {
        Ok(list) => list.into_iter().find(|c| c.client_id == id),
        Err(e) => return failed(e),
    };
    let Some(client) = found else {
        return refused(StatusCode::NOT_FOUND, "No such client.");
    };
    page(
        ClientPage {
            actor: &admin.actor,
            csrf: &admin.csrf,
            redirect_uris: client.redirect_uris.join(" "),
            users: client.users.join(" "),
            resources: client.resources.join(" "),
            client,
        }
        .render(),
    )
}

#[derive(Debug, Deserialize)]
struct EditForm {
    name: String,
    redirect_uris: String,
    #[serde(default)]
    users: String,
    #[serde(default)]
    resources: String,
}

async fn edit_client(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { admin, form }: Posted<EditForm>,
) -> Response {
    let change = ClientEdit {
        name: form.name,
        redirect_uris: words(&form.redirect_uris),
        users: words(&form.users),
        resources: words(&form.resources),
    };
    match clients::edit(&state, &admin.actor, &id, change).await {
        Ok(_) => Redirect::to(&format!("/admin/clients/{id}")).into_response(),
        Err(e) => failed(e),
    }
}

async fn delete_client(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { admin, .. }: Posted<Empty>,
) -> Response {
    match clients::delete(&state, &admin.actor, &id).await {
        Ok(()) => Redirect::to("/admin/clients").into_response(),
        Err(e) => failed(e),
    }
}

async fn regenerate_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { admin, .. }: Posted<Empty>,
) -> Response {
    match clients::regenerate_secret(&state, &admin.actor, &id).await {
        Ok(created) => secret_page(&admin, &created),
        Err(e) => failed(e),
    }
}

struct KeyRow {
    alg: String,
    kid: String,
    state: &'static str,
    created: String,
}

#[derive(Template)]
#[template(path = "admin/keys.html")]
struct KeysPage<'a> {
    actor: &'a str,
    csrf: &'a str,
    keys: Vec<KeyRow>,
}

async fn keys_page(State(state): State<AppState>, admin: UiAdmin) -> Response {
    let keys = match state.keys.list() {
        Ok(keys) => keys,
        Err(e) => return failed(Error::from(e)),
    };
    let keys = keys
        .into_iter()
        .map(|k| KeyRow {
            alg: k.entry.alg.as_str().to_owned(),
            kid: k.entry.kid.clone(),
            state: k.entry.state.as_str(),
            created: utc(k.entry.created_at),
        })
        .collect();
    page(
        KeysPage {
            actor: &admin.actor,
            csrf: &admin.csrf,
            keys,
        }
        .render(),
    )
}

async fn rotate_keys(
    State(state): State<AppState>,
    Posted { admin, .. }: Posted<Empty>,
) -> Response {
    match super::keys::rotate(&state, &admin.actor, None).await {
        Ok(_) => Redirect::to("/admin/keys").into_response(),
        Err(e) => failed(e),
    }
}

struct RunRow {
    time: String,
    event: &'static str,
    user: String,
    node: String,
    run: String,
    label: String,
    targets: Vec<(RevocationKind, String)>,
}

#[derive(Template)]
#[template(path = "admin/runs.html")]
struct RunsPage<'a> {
    actor: &'a str,
    csrf: &'a str,
    notice: Option<&'a str>,
    rows: Vec<RunRow>,
}

async fn recent(state: &AppState, filter: AuditFilter) -> Result<Vec<AuditRecord>, Error> {
    let mut records = state.store.audit(&filter).await?;
    records.reverse();
    Ok(records)
}

async fn runs_page(State(state): State<AppState>, admin: UiAdmin) -> Response {
    let issued = [
        EventKind::AgentToken,
        EventKind::TokenExchange,
        EventKind::CodeExchanged,
        EventKind::Refresh,
    ];
    let records = match recent(
        &state,
        AuditFilter {
            limit: 1_000,
            ..AuditFilter::default()
        },
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let rows = records
        .into_iter()
        .filter(|r| {
            issued.contains(&r.event.event) && r.event.outcome == crate::audit::Outcome::Success
        })
        .take(100)
        .map(|r| {
            let e = r.event;
            let mut targets = Vec::new();
            if let Some(run) = &e.run_id {
                targets.push((RevocationKind::Run, run.clone()));
            }
            if let Some(node) = &e.node_id {
                targets.push((RevocationKind::Node, node.clone()));
            }
            if let Some(user) = &e.user {
                targets.push((RevocationKind::User, user.clone()));
            }
            RunRow {
                time: utc(e.time),
                event: e.event.as_str(),
                user: e.user.clone().unwrap_or_default(),
                node: e.node_id.clone().unwrap_or_default(),
                run: e.run_id.clone().unwrap_or_default(),
                label: e.run_label.clone().unwrap_or_default(),
                targets,
            }
        })
        .collect();
    page(
        RunsPage {
            actor: &admin.actor,
            csrf: &admin.csrf,
            notice: None,
            rows,
        }
        .render(),
    )
}

#[derive(Debug, Deserialize)]
struct RevokeForm {
    kind: String,
    value: String,
}

async fn revoke(
    State(state): State<AppState>,
    Posted { admin, form }: Posted<RevokeForm>,
) -> Response {
    let Some(kind) = form
        .kind
        .parse::<RevocationKind>()
        .ok()
        .filter(|k| !matches!(k, RevocationKind::Family | RevocationKind::Kid))
    else {
        return refused(StatusCode::BAD_REQUEST, "Unknown kind of revocation.");
    };
    let value = form.value.trim().to_owned();
    let target = Target {
        kind,
        value: value.clone(),
        until: None,
    };
    match killswitch::revoke(state.sessions(), &target, &admin.actor, state.now()).await {
        Ok(_) => {
            let filter = match kind {
                RevocationKind::Run => "run",
                RevocationKind::Node => "node",
                RevocationKind::User => "user",
                RevocationKind::Jti | RevocationKind::Family | RevocationKind::Kid => "",
            };
            let to = if filter.is_empty() {
                "/admin/audit".to_owned()
            } else {
                let mut url = url::form_urlencoded::Serializer::new(String::new());
                url.append_pair(filter, &value);
                format!("/admin/audit?{}", url.finish())
            };
            Redirect::to(&to).into_response()
        }
        Err(e) => failed(e.into()),
    }
}

#[derive(Debug, Default, Deserialize)]
struct AuditParams {
    #[serde(default)]
    run: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    user: String,
}

struct AuditRow {
    seq: u64,
    time: String,
    event: &'static str,
    outcome: &'static str,
    user: String,
    node: String,
    client: String,
    run: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "admin/audit.html")]
struct AuditPage<'a> {
    actor: &'a str,
    run: &'a str,
    node: &'a str,
    user: &'a str,
    events: Vec<AuditRow>,
}

async fn audit_page(
    State(state): State<AppState>,
    admin: UiAdmin,
    params: Result<axum::extract::Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = params.map(|q| q.0).unwrap_or_default();
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    let filter = AuditFilter {
        run: some(&params.run),
        node: some(&params.node),
        user: some(&params.user),
        limit: 500,
        ..AuditFilter::default()
    };
    let records = match recent(&state, filter).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let events = records
        .into_iter()
        .map(|r| {
            let e = r.event;
            AuditRow {
                seq: r.seq,
                time: utc(e.time),
                event: e.event.as_str(),
                outcome: e.outcome.as_str(),
                user: e.user.unwrap_or_default(),
                node: e.node_id.unwrap_or_default(),
                client: e.client_id.unwrap_or_default(),
                run: e.run_id.unwrap_or_default(),
                reason: e.reason.or(e.detail).unwrap_or_default(),
            }
        })
        .collect();
    page(
        AuditPage {
            actor: &admin.actor,
            run: &params.run,
            node: &params.node,
            user: &params.user,
            events,
        }
        .render(),
    )
}
