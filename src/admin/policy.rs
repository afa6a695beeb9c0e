//! The agent policy through the admin API: `POST /admin/api/policy/explain`, the decision the
//! token endpoint would make for a caller, with the live WhoIs of a peer address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::State;

use super::Admin;
use crate::identity::WhoisError;
use crate::oauth::error::Error;
use crate::oauth::input::Json;
use crate::policy::explain::{self, ExplainRequest, Explanation};
use crate::state::AppState;

/// Explains the agent decision for `request.caller`: a peer address is resolved through the
/// identity source as a connection from it would be; a selector gets a stand-in caller.
pub async fn explain(state: &AppState, request: &ExplainRequest) -> Result<Explanation, Error> {
    let address = request.caller.parse::<SocketAddr>().ok().or_else(|| {
        request
            .caller
            .parse::<IpAddr>()
            .ok()
            .map(|ip| (ip, 0).into())
    });
    let stand_in = match address {
        Some(addr) => explain::StandIn {
            identity: Some(
                state
                    .identity
                    .whois(addr)
                    .await
                    .map_err(|e| match e {
                        WhoisError::NotOnTailnet => Error::invalid_request(format!(
                            "{} is not on the tailnet",
                            request.caller
                        )),
                        other => Error::unavailable(other.to_string()),
                    })?
                    .as_ref()
                    .clone(),
            ),
            fed: None,
        },
        None => explain::stand_in(&request.caller).map_err(Error::invalid_request)?,
    };
    let settings = &state.settings;
    Ok(explain::explain(
        stand_in.caller(),
        &settings.policy,
        &settings.agent_capability,
        request,
        Some((settings.agent_token_lifetime, settings.max_token_lifetime)),
    ))
}

pub(super) async fn explain_policy(
    State(state): State<AppState>,
    _: Admin,
    Json(request): Json<ExplainRequest>,
) -> Result<axum::Json<Explanation>, Error> {
    explain(&state, &request).await.map(axum::Json)
}
