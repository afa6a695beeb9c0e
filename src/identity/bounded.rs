//! An identity source with a deadline and a bound on lookups in flight: one that does not
//! answer within `--identity-timeout` gives `temporarily_unavailable` (docs/design.md
//! "Contracts": health and unavailability), and so does every lookup past
//! `--identity-max-lookups` already waiting on it.
//!
//! Every WhoIs the server makes — the `Caller` extractor, `identify`, a refresh re-resolving
//! its person — goes through the state's one source, so wrapping it once bounds them all: a
//! hung tailscaled costs a request its deadline, never a worker forever, and a burst of
//! requests behind it is refused at once instead of queueing without limit (each waiting
//! lookup holds a request, a connection and a socket to tailscaled).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::{Arrival, Identity, IdentitySource, WhoisError};

/// Lookups in flight at once by default: far above what a healthy tailscaled has waiting (it
/// answers in microseconds), far below what would exhaust file descriptors while it stalls.
pub const DEFAULT_MAX_LOOKUPS: usize = 256;

/// `inner`, answering [`WhoisError::Unavailable`] when it takes longer than `limit`, or at
/// once when `max_in_flight` lookups are already waiting on it.
pub struct Bounded {
    inner: Arc<dyn IdentitySource>,
    limit: Duration,
    in_flight: Semaphore,
    max_in_flight: usize,
}

impl Bounded {
    /// `inner` with a deadline of `limit` per lookup and at most `max_in_flight` lookups
    /// waiting on it at once (at least one).
    pub fn new(inner: Arc<dyn IdentitySource>, limit: Duration, max_in_flight: usize) -> Bounded {
        let max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Bounded {
            inner,
            limit,
            in_flight: Semaphore::new(max_in_flight),
            max_in_flight,
        }
    }
}

#[async_trait::async_trait]
impl IdentitySource for Bounded {
    fn vouches_for(&self, arrival: Arrival) -> bool {
        self.inner.vouches_for(arrival)
    }

    async fn whois(&self, peer: SocketAddr) -> Result<Arc<Identity>, WhoisError> {
        // Never waits for a permit: a full semaphore means the source is not keeping up, and
        // a caller is better told so now than after everyone ahead of it timed out.
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(WhoisError::Unavailable(format!(
                "{} identity lookups already waiting",
                self.max_in_flight
            )));
        };
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
        let bounded = Bounded::new(Arc::new(NeverAnswers), Duration::from_millis(5), 8);
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
    async fn lookups_past_the_bound_are_refused_at_once_and_a_slot_frees_when_one_ends() {
        let bounded = Arc::new(Bounded::new(
            Arc::new(NeverAnswers),
            Duration::from_secs(3600),
            2,
        ));
        let peer: SocketAddr = "100.64.0.1:1".parse().unwrap();
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let bounded = bounded.clone();
                tokio::spawn(async move { bounded.whois(peer).await })
            })
            .collect();
        // Both have taken their slot once no permit is left.
        tokio::time::timeout(Duration::from_secs(10), async {
            while bounded.in_flight.available_permits() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let refused = bounded.whois(peer).await;
        assert!(
            matches!(&refused, Err(WhoisError::Unavailable(m)) if m.contains("2 identity lookups")),
            "{refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once, not after the deadline"
        );
        for task in &waiting {
            assert!(!task.is_finished(), "the two in flight still wait");
        }
        waiting[0].abort();
        tokio::time::timeout(Duration::from_secs(10), async {
            while bounded.in_flight.available_permits() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(
            bounded.in_flight.available_permits(),
            1,
            "an ended lookup gives its slot back"
        );
        waiting[1].abort();
    }

    #[tokio::test]
    async fn answers_within_the_deadline_pass_through() {
        let bounded = Bounded::new(Arc::new(LocalTable::default()), Duration::from_secs(60), 8);
        assert_eq!(
            bounded.whois("100.64.0.1:1".parse().unwrap()).await,
            Err(WhoisError::NotOnTailnet)
        );
    }

    #[tokio::test]
    async fn a_caller_behind_a_hung_source_is_unavailable() {
        use crate::identity::peer::{CallerError, Conn, Listener, identify};
        let bounded = Bounded::new(Arc::new(NeverAnswers), Duration::from_millis(5), 8);
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
