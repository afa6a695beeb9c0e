//! An identity source with a deadline: one that does not answer within `--identity-timeout`
//! gives `temporarily_unavailable` (docs/design.md "Contracts": health and unavailability).
//!
//! Every WhoIs the server makes — the `Caller` extractor, `identify`, a refresh re-resolving
//! its person — goes through the state's one source, so wrapping it once bounds them all: a
//! hung tailscaled costs a request its deadline, never a worker forever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{Arrival, Identity, IdentitySource, WhoisError};

/// `inner`, answering [`WhoisError::Unavailable`] when it takes longer than `limit`.
pub struct Bounded {
    inner: Arc<dyn IdentitySource>,
    limit: Duration,
}

impl Bounded {
    /// `inner` with a deadline of `limit` per lookup.
    pub fn new(inner: Arc<dyn IdentitySource>, limit: Duration) -> Bounded {
        Bounded { inner, limit }
    }
}

#[async_trait::async_trait]
impl IdentitySource for Bounded {
    fn vouches_for(&self, arrival: Arrival) -> bool {
        self.inner.vouches_for(arrival)
    }

    async fn whois(&self, peer: SocketAddr) -> Result<Arc<Identity>, WhoisError> {
        tokio::time::timeout(self.limit, self.inner.whois(peer))
            .await
            .unwrap_or_else(|_| {
                Err(WhoisError::Unavailable(format!(
                    "no answer within {:?}",
                    self.limit
                )))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::local::LocalTable;

    /// A test double: an identity source that never answers, like a hung tailscaled.
    struct NeverAnswers;

    #[async_trait::async_trait]
    impl IdentitySource for NeverAnswers {
        fn vouches_for(&self, _: Arrival) -> bool {
            true
        }

        async fn whois(&self, _: SocketAddr) -> Result<Arc<Identity>, WhoisError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_source_that_never_answers_is_unavailable_after_the_deadline() {
        let bounded = Bounded::new(Arc::new(NeverAnswers), Duration::from_millis(5));
        let answer = bounded.whois("100.64.0.1:1".parse().unwrap()).await;
        assert!(
            matches!(answer, Err(WhoisError::Unavailable(_))),
            "{answer:?}"
        );
        assert!(
            bounded.vouches_for(Arrival::ServeProxy),
            "vouching is the inner source's"
        );
    }

    #[tokio::test]
    async fn answers_within_the_deadline_pass_through() {
        let bounded = Bounded::new(Arc::new(LocalTable::default()), Duration::from_secs(60));
        assert_eq!(
            bounded.whois("100.64.0.1:1".parse().unwrap()).await,
            Err(WhoisError::NotOnTailnet)
        );
    }

    #[tokio::test]
    async fn a_caller_behind_a_hung_source_is_unavailable() {
        use crate::identity::peer::{CallerError, Conn, Listener, identify};
        let bounded = Bounded::new(Arc::new(NeverAnswers), Duration::from_millis(5));
        let conn = Conn {
            remote: Some("100.64.0.1:5555".parse().unwrap()),
            local: Some("100.64.0.2:443".parse().unwrap()),
            listener: Listener::Main,
        };
        // Which the wire answers as 503 `temporarily_unavailable` (`oauth::error`).
        let refused = identify(&bounded, Some(&conn), &axum::http::HeaderMap::new()).await;
        assert!(
            matches!(refused, Err(CallerError::Unavailable)),
            "{refused:?}"
        );
    }
}
