//! What the audit log records: one [`AuditEvent`] for every issuance, exchange, refresh,
//! revocation, registration and denial, and the caps every stored field keeps.
//!
//! The events are plain values, apart from anything that writes them, so that the store,
//! which persists them, and the metrics, which count them, can use them while the writer
//! (`audit_log`) sits above both.
//!
//! This module does not decide what is worth recording — callers do, and every decision
//! that denies says why in [`AuditEvent::reason`]. Every stored field is capped in length
//! ([`MAX_FIELD`], [`MAX_ITEMS`]), so no caller can make the log grow by more than a bounded
//! amount per event.

use serde::{Deserialize, Serialize};
use tailpass_verify::UnixTime;

use crate::identity::Identity;

/// The longest stored text field, in bytes; longer values are cut at a character boundary.
pub const MAX_FIELD: usize = 256;
/// The most entries of a stored list (tags, audiences, scopes).
pub const MAX_ITEMS: usize = 32;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A client was registered (admin, CLI or RFC 7591).
    ClientRegistered,
    /// A client's metadata changed (RFC 7592 or admin).
    ClientUpdated,
    /// A client was deleted.
    ClientDeleted,
    /// Signing keys were rotated.
    KeysRotated,
    /// Signing keys were re-sealed under a new key-encryption key.
    KeysRewrapped,
    /// A request for an authorization code (`/authorize`).
    Authorize,
    /// A user approved a dynamically registered client.
    Consent,
    /// A token was issued by the authorization code grant.
    CodeExchanged,
    /// A refresh token was used.
    Refresh,
    /// An agent (or confidential client) used the client credentials grant.
    AgentToken,
    /// An RFC 8693 token exchange.
    TokenExchange,
    /// An external token (a `[[federation]]` table's) traded for a run token, by RFC 8693
    /// exchange or RFC 7523 assertion.
    FederatedToken,
    /// A token or refresh family was revoked (RFC 7009 or kill switch).
    Revocation,
    /// A revocation was lifted.
    RevocationLifted,
    /// A user's session ended (RP-initiated logout or admin).
    Logout,
    /// A call passed through the gateway.
    GatewayCall,
    /// Denials of callers with no tailnet identity in one minute, counted (`detail`).
    DeniedAggregate,
}

impl EventKind {
    /// The name in the log and in metrics (the serialized form).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ClientRegistered => "client_registered",
            EventKind::ClientUpdated => "client_updated",
            EventKind::ClientDeleted => "client_deleted",
            EventKind::KeysRotated => "keys_rotated",
            EventKind::KeysRewrapped => "keys_rewrapped",
            EventKind::Authorize => "authorize",
            EventKind::Consent => "consent",
            EventKind::CodeExchanged => "code_exchanged",
            EventKind::Refresh => "refresh",
            EventKind::AgentToken => "agent_token",
            EventKind::TokenExchange => "token_exchange",
            EventKind::FederatedToken => "federated_token",
            EventKind::Revocation => "revocation",
            EventKind::RevocationLifted => "revocation_lifted",
            EventKind::Logout => "logout",
            EventKind::GatewayCall => "gateway_call",
            EventKind::DeniedAggregate => "denied_aggregate",
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done as asked.
    Success,
    /// Refused by policy or validation; [`AuditEvent::reason`] says why.
    Denied,
    /// Failed on the server's side.
    Error,
}

impl Outcome {
    /// The name in the log and in metrics (the serialized form).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// A typed reason for refusing a request: its text is what the caller and the audit log are
/// told, and its label (`snake_case`, one of a fixed set per type) names it in metrics, so
/// that their label sets stay bounded and never carry identifiers.
pub trait Refusal: std::fmt::Display {
    /// The label.
    fn label(&self) -> &'static str;
}

/// One audit event. Never holds a secret or a token: only their identifiers (`jti`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it happened.
    pub time: UnixTime,
    /// What happened.
    pub event: EventKind,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it was denied or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The refusal's typed reason, a short `snake_case` label from a bounded set (see
    /// [`Refusal`]): what metrics count denials by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The user's login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The node's stable id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The node's tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The client involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The run's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_label: Option<String>,
    /// The parent run of an exchanged token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// The root run of an exchanged token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_run_id: Option<String>,
    /// The token's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The token's audiences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// The token's scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Anything else worth keeping (a key id, a revoked value…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEvent {
    /// An event with no subject yet.
    pub fn new(time: UnixTime, event: EventKind, outcome: Outcome) -> AuditEvent {
        AuditEvent {
            time,
            event,
            outcome,
            reason: None,
            refusal: None,
            user: None,
            node_id: None,
            node_name: None,
            tags: Vec::new(),
            client_id: None,
            run_id: None,
            run_label: None,
            parent_run_id: None,
            root_run_id: None,
            jti: None,
            audience: Vec::new(),
            scopes: Vec::new(),
            detail: None,
        }
    }

    /// Sets who acted: user, node and tags from a tailnet identity.
    pub fn by(mut self, identity: &Identity) -> AuditEvent {
        self.user = identity.user.as_ref().map(|u| u.login.clone());
        self.node_id = Some(identity.node.stable_id.0.clone());
        self.node_name = Some(identity.node.name.clone());
        self.tags = identity.node.tags.clone();
        self
    }

    /// Sets the reason.
    pub fn because(mut self, reason: impl Into<String>) -> AuditEvent {
        self.reason = Some(reason.into());
        self
    }

    /// Sets the reason from a typed refusal: its text, and its label.
    pub fn refused(mut self, refusal: &dyn Refusal) -> AuditEvent {
        self.reason = Some(refusal.to_string());
        self.refusal = Some(refusal.label().to_owned());
        self
    }

    /// Sets the client.
    pub fn client(mut self, client_id: impl Into<String>) -> AuditEvent {
        self.client_id = Some(client_id.into());
        self
    }

    /// Sets the free-form detail.
    pub fn detail(mut self, detail: impl Into<String>) -> AuditEvent {
        self.detail = Some(detail.into());
        self
    }

    /// Whether the event is a denial of a caller with no tailnet identity: one a stranger can
    /// cause at will, recorded only in aggregate.
    pub fn is_unidentified_denial(&self) -> bool {
        self.outcome == Outcome::Denied && self.node_id.is_none() && self.user.is_none()
    }

    /// Caps every text field at [`MAX_FIELD`] bytes and every list at [`MAX_ITEMS`] entries.
    pub fn bounded(mut self) -> AuditEvent {
        for field in [
            &mut self.reason,
            &mut self.refusal,
            &mut self.user,
            &mut self.node_id,
            &mut self.node_name,
            &mut self.client_id,
            &mut self.run_id,
            &mut self.run_label,
            &mut self.parent_run_id,
            &mut self.root_run_id,
            &mut self.jti,
            &mut self.detail,
        ]
        .into_iter()
        .flatten()
        {
            cap(field);
        }
        for list in [&mut self.tags, &mut self.audience, &mut self.scopes] {
            list.truncate(MAX_ITEMS);
            list.iter_mut().for_each(cap);
        }
        self
    }
}

/// Cuts `text` to at most [`MAX_FIELD`] bytes, at a character boundary, marking the cut.
fn cap(text: &mut String) {
    if text.len() <= MAX_FIELD {
        return;
    }
    let mut end = MAX_FIELD - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_fields_are_capped_at_a_character_boundary() {
        let mut event = AuditEvent::new(UnixTime(1), EventKind::Authorize, Outcome::Denied)
            .client("é".repeat(30_000))
            .because("x".repeat(10));
        event.scopes = vec!["s".repeat(1000); 100];
        let event = event.bounded();
        let client = event.client_id.unwrap();
        assert!(
            client.len() <= MAX_FIELD && client.ends_with('…'),
            "{}",
            client.len()
        );
        assert_eq!(event.reason.as_deref(), Some("xxxxxxxxxx"));
        assert_eq!(event.scopes.len(), MAX_ITEMS);
        assert!(event.scopes.iter().all(|s| s.len() <= MAX_FIELD));
    }

    #[test]
    fn names_are_the_serialized_forms() {
        use EventKind::*;
        for kind in [
            ClientRegistered,
            ClientUpdated,
            ClientDeleted,
            KeysRotated,
            KeysRewrapped,
            Authorize,
            Consent,
            CodeExchanged,
            Refresh,
            AgentToken,
            TokenExchange,
            Revocation,
            RevocationLifted,
            Logout,
            GatewayCall,
            DeniedAggregate,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for outcome in [Outcome::Success, Outcome::Denied, Outcome::Error] {
            assert_eq!(serde_json::to_value(outcome).unwrap(), outcome.as_str());
        }
    }
}
