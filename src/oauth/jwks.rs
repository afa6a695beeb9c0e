//! `GET /.well-known/jwks.json`: the active, next and still-valid retired public keys.

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::error::Error;
use crate::state::AppState;

/// Serves the key set. Public and cacheable for a few minutes: next keys are published well
/// before they sign, so a cached copy is never missing a key in use.
pub async fn jwks(State(state): State<AppState>) -> Response {
    match state.keys.jwks() {
        Ok(set) => super::public_document(&*set),
        Err(e) => Error::server_error(&e).into_response(),
    }
}
