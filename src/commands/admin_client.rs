//! The CLI's side of the admin API.
//!
//! A command that changes state goes through the running server's admin socket, so the
//! server's caches and revocation feed see the change. When no server is running (no socket,
//! or nobody listening on it) the command opens the state itself and drives the very same
//! router in-process: one implementation of every admin operation, two ways in.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use tower::ServiceExt as _;
use url::Url;

use crate::clock::SystemClock;
use crate::config::{self, GlobalOptions, Paths};
use crate::identity::local::LocalTable;
use crate::identity::peer::{Conn, Listener};
use crate::state::AppState;
use crate::unix_http::{self, UnixHttpError, UnixRequest};

/// The largest admin answer read.
const MAX_ANSWER: usize = 16 << 20;
/// How long an admin call may take (key rotation generates RSA keys).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// Occurs when the socket exists but the exchange fails.
    #[error(transparent)]
    Socket(#[from] UnixHttpError),
    /// Occurs when, with no server running, the state cannot be opened.
    #[error("opening the state directly: {0}")]
    Offline(String),
}

/// A client of the admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    global: GlobalOptions,
    paths: Paths,
}

/// An admin answer.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Bytes,
    /// Whether it came from a running server (false: the state was opened directly).
    pub via_server: bool,
}

impl AdminClient {
    /// A client for the state directory the global flags name.
    pub fn new(global: &GlobalOptions) -> Result<AdminClient, config::ConfigError> {
        Ok(AdminClient {
            global: global.clone(),
            paths: config::resolve_paths(global)?,
        })
    }

    /// Calls `method path` with an optional JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        json: Option<serde_json::Value>,
    ) -> Result<Answer, AdminClientError> {
        let body = json.map(|j| j.to_string().into_bytes());
        let request = UnixRequest {
            method: method.clone(),
            path,
            host: "tailpass-admin",
            json: body.clone(),
            max_answer: MAX_ANSWER,
            timeout: CALL_TIMEOUT,
        };
        match unix_http::send(&self.paths.admin_socket(), request).await {
            Ok((status, body)) => Ok(Answer {
                status,
                body,
                via_server: true,
            }),
            // Nothing was sent, so doing it here instead cannot do it twice.
            Err(e) if e.is_not_running() => self.in_process(method, path, body).await,
            Err(e) => Err(e.into()),
        }
    }

    async fn in_process(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, AdminClientError> {
        let offline = |e: &dyn std::fmt::Display| AdminClientError::Offline(e.to_string());
        let settings = config::resolve_offline(&self.global).map_err(|e| offline(&e))?;
        let issuer = match &settings.issuer {
            Some(url) => url.clone(),
            None => Url::parse(&format!("http://{}", settings.listen)).map_err(|e| offline(&e))?,
        };
        let (state, background) = AppState::open(
            settings,
            crate::issuer::Issuer::new(&issuer),
            Arc::new(LocalTable::default()),
            Arc::new(SystemClock),
        )
        .await
        .map_err(|e| offline(&e))?;
        let router = crate::http::router::admin_socket_router(state);
        let mut request = Request::builder().method(method).uri(path);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let mut request = request
            .body(Body::from(body.unwrap_or_default()))
            .map_err(|e| offline(&e))?;
        request.extensions_mut().insert(Conn {
            remote: None,
            local: None,
            listener: Listener::AdminSocket,
        });
        let response = router.oneshot(request).await.map_err(|e| offline(&e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| offline(&e))?
            .to_bytes();
        // The router held the last state handle; the audit writer now drains and stops.
        background.finish().await;
        Ok(Answer {
            status,
            body,
            via_server: false,
        })
    }
}
