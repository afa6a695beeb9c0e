//! Checking what a token is bound to (`cnf`, RFC 7800) against whoever presents it.
//!
//! A tailpass agent token is bound to the node it was issued to (`cnf.tailnet_node`) and, when
//! it was requested with DPoP, to a key (`cnf.jkt`). A token replayed from another node, or
//! without its key, is refused; so is a token whose `cnf` has a member this version does not
//! understand (docs/design.md "Contracts": binding).

use crate::Thumbprint;
use crate::claims::Confirmation;

/// Who presents a token: the node the request came from, as the resource server's own
/// identity source says, and the key of a valid DPoP proof sent with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presenter<'a> {
    /// The presenting node's stable id, when known.
    pub node: Option<&'a str>,
    /// The thumbprint of the DPoP proof's key, when a valid proof came with the token.
    pub dpop_jkt: Option<&'a Thumbprint>,
}

/// Why a bound token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// Occurs when `cnf` carries a member this verifier does not know.
    #[error("the token is bound by {0:?}, which this verifier does not understand")]
    UnknownMember(String),
    /// Occurs when the token was issued to another node.
    #[error("the token is bound to node {bound}, not to the presenting node")]
    WrongNode {
        /// The node in `cnf`.
        bound: String,
    },
    /// Occurs when the presenting node cannot be identified.
    #[error("the token is bound to a node, and the presenter's node is unknown")]
    UnknownPresenter,
    /// Occurs when a DPoP-bound token comes without a valid proof.
    #[error("the token is DPoP-bound: a DPoP proof with its key is required")]
    ProofRequired,
    /// Occurs when the proof's key is not the one the token is bound to.
    #[error("the DPoP proof's key is not the token's")]
    WrongKey,
}

/// Checks every member of `cnf` against the presenter.
pub fn check(cnf: Option<&Confirmation>, presenter: &Presenter<'_>) -> Result<(), BindingError> {
    let Some(cnf) = cnf else {
        return Ok(());
    };
    if let Some(member) = cnf.unknown.keys().next() {
        return Err(BindingError::UnknownMember(member.clone()));
    }
    if let Some(bound) = &cnf.tailnet_node {
        match presenter.node {
            Some(node) if node == bound => {}
            Some(_) => {
                return Err(BindingError::WrongNode {
                    bound: bound.clone(),
                });
            }
            None => return Err(BindingError::UnknownPresenter),
        }
    }
    if let Some(jkt) = &cnf.jkt {
        match presenter.dpop_jkt {
            Some(presented) if presented.0 == *jkt => {}
            Some(_) => return Err(BindingError::WrongKey),
            None => return Err(BindingError::ProofRequired),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cnf(json: serde_json::Value) -> Confirmation {
        serde_json::from_value(json).unwrap_or_default()
    }

    #[test]
    fn node_and_key_are_both_checked() {
        let bound = cnf(serde_json::json!({"tailnet_node": "n1", "jkt": "k1"}));
        let key = Thumbprint("k1".into());
        let other = Thumbprint("k2".into());
        let ok = Presenter {
            node: Some("n1"),
            dpop_jkt: Some(&key),
        };
        assert_eq!(check(Some(&bound), &ok), Ok(()));
        let from_elsewhere = Presenter {
            node: Some("n2"),
            dpop_jkt: Some(&key),
        };
        assert!(matches!(
            check(Some(&bound), &from_elsewhere),
            Err(BindingError::WrongNode { .. })
        ));
        let without_key = Presenter {
            node: Some("n1"),
            dpop_jkt: None,
        };
        assert_eq!(
            check(Some(&bound), &without_key),
            Err(BindingError::ProofRequired)
        );
        let other_key = Presenter {
            node: Some("n1"),
            dpop_jkt: Some(&other),
        };
        assert_eq!(check(Some(&bound), &other_key), Err(BindingError::WrongKey));
        assert_eq!(
            check(None, &Presenter::default()),
            Ok(()),
            "an unbound token"
        );
    }

    #[test]
    fn unknown_members_are_refused() {
        let odd = cnf(serde_json::json!({"tailnet_node": "n1", "x5t#S256": "abc"}));
        let presenter = Presenter {
            node: Some("n1"),
            dpop_jkt: None,
        };
        assert_eq!(
            check(Some(&odd), &presenter),
            Err(BindingError::UnknownMember("x5t#S256".into()))
        );
    }
}
