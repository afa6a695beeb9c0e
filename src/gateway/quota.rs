//! Per-run budgets at the gateway (the `quota` claim): requests, and LLM tokens (input plus
//! output, as the upstream reports them). Budgets are charged to the run's root, so the
//! children a run exchanges share its budget. Kept in memory per gateway, bounded in entries;
//! an entry leaves once every token of its run has expired.
//!
//! A call's tokens are known only once its answer is over, so admission reserves an estimate
//! ([`super::body::Shaped::reservation`]) under the table's lock, and the call settles to its
//! actual usage when it ends; a call whose usage never arrives is charged its reservation.
//! Admission needs `used + reserved < tokens`: the call is refused only when the budget is
//! spent or spoken for, and a call whose reservation is larger than what is left still runs
//! (else a `max_tokens` above the remainder could never be served). Each admitted call thus
//! starts with the total below the budget, so concurrent calls together overshoot it by at
//! most one reservation (plus whatever the upstream reports beyond a call's reservation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tailpass_verify::UnixTime;
use tailpass_verify::claims::Quota;

/// Why a call was refused for its budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// Occurs when the run has made all the upstream requests its quota allows.
    #[error("run {run} has used its {limit} requests")]
    Requests {
        /// The run charged.
        run: String,
        /// Its request budget.
        limit: u64,
    },
    /// Occurs when the run's LLM tokens are all used or reserved by calls in flight.
    #[error("run {run} has used or reserved its {limit} tokens")]
    Tokens {
        /// The run charged.
        run: String,
        /// Its token budget.
        limit: u64,
    },
    /// Occurs when the table of runs is full of unexpired runs.
    #[error("too many runs are being metered; retry later")]
    Full,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    requests: u64,
    tokens: u64,
    reserved: u64,
    expires: UnixTime,
}

/// Usage by root run.
#[derive(Debug)]
pub struct Quotas {
    runs: Mutex<HashMap<String, Usage>>,
    capacity: usize,
}

/// LLM tokens held for one admitted call until it settles. Dropped unsettled (the usage never
/// arrived), it charges the whole reservation.
#[derive(Debug)]
pub struct Reservation {
    quotas: Arc<Quotas>,
    run: String,
    reserved: u64,
    settled: bool,
}

impl Reservation {
    /// The tokens held.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Ends the call: releases the reservation and charges `used` tokens instead.
    pub fn settle(mut self, used: u64) {
        self.settled = true;
        self.quotas.settle(&self.run, self.reserved, used);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.quotas.settle(&self.run, self.reserved, self.reserved);
        }
    }
}

impl Quotas {
    /// A table for at most `capacity` live runs.
    pub fn new(capacity: usize) -> Quotas {
        Quotas {
            runs: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Admits one request of `run` under `quota` (its token expiring at `expires`), counting
    /// it and reserving `reservation` LLM tokens when the quota limits tokens; refused when a
    /// budget is spent (or, for tokens, spoken for by calls in flight).
    pub fn admit(
        self: &Arc<Self>,
        run: &str,
        quota: Quota,
        reservation: u64,
        expires: UnixTime,
        now: UnixTime,
    ) -> Result<Reservation, QuotaError> {
        let mut runs = self.runs.lock().map_err(|_| QuotaError::Full)?;
        if !runs.contains_key(run) && runs.len() >= self.capacity {
            runs.retain(|_, u| u.expires > now);
            if runs.len() >= self.capacity {
                return Err(QuotaError::Full);
            }
        }
        let usage = runs.entry(run.to_owned()).or_insert(Usage {
            requests: 0,
            tokens: 0,
            reserved: 0,
            expires,
        });
        usage.expires = usage.expires.max(expires);
        if let Some(limit) = quota.tokens
            && usage.tokens.saturating_add(usage.reserved) >= limit
        {
            return Err(QuotaError::Tokens {
                run: run.to_owned(),
                limit,
            });
        }
        if let Some(limit) = quota.requests
            && usage.requests >= limit
        {
            return Err(QuotaError::Requests {
                run: run.to_owned(),
                limit,
            });
        }
        usage.requests += 1;
        let reserved = if quota.tokens.is_some() {
            reservation
        } else {
            0
        };
        usage.reserved = usage.reserved.saturating_add(reserved);
        Ok(Reservation {
            quotas: Arc::clone(self),
            run: run.to_owned(),
            reserved,
            settled: false,
        })
    }

    fn settle(&self, run: &str, reserved: u64, used: u64) {
        if let Ok(mut runs) = self.runs.lock()
            && let Some(usage) = runs.get_mut(run)
        {
            usage.reserved = usage.reserved.saturating_sub(reserved);
            usage.tokens = usage.tokens.saturating_add(used);
        }
    }

    /// `(requests, tokens)` used by `run`, tokens in flight not included.
    pub fn used(&self, run: &str) -> Option<(u64, u64)> {
        let runs = self.runs.lock().ok()?;
        runs.get(run).map(|u| (u.requests, u.tokens))
    }

    /// LLM tokens reserved by `run`'s calls in flight.
    pub fn reserved(&self, run: &str) -> Option<u64> {
        let runs = self.runs.lock().ok()?;
        runs.get(run).map(|u| u.reserved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATER: UnixTime = UnixTime(1_000);

    #[test]
    fn requests_and_tokens_run_out_per_run() {
        let quotas = Arc::new(Quotas::new(10));
        let quota = Quota {
            requests: Some(2),
            tokens: Some(100),
        };
        let now = UnixTime(1);
        assert!(quotas.admit("r1", quota, 0, LATER, now).is_ok());
        assert!(quotas.admit("r1", quota, 0, LATER, now).is_ok());
        assert!(matches!(
            quotas.admit("r1", quota, 0, LATER, now),
            Err(QuotaError::Requests { limit: 2, .. })
        ));
        let call = quotas.admit("r2", quota, 10, LATER, now).unwrap();
        call.settle(150);
        assert!(matches!(
            quotas.admit("r2", quota, 10, LATER, now),
            Err(QuotaError::Tokens { limit: 100, .. })
        ));
        assert_eq!(quotas.used("r2"), Some((1, 150)));
    }

    #[test]
    fn concurrent_calls_overshoot_the_token_budget_by_at_most_one_reservation() {
        let quotas = Arc::new(Quotas::new(10));
        let quota = Quota {
            requests: None,
            tokens: Some(100),
        };
        let now = UnixTime(1);
        let mut in_flight = Vec::new();
        while let Ok(call) = quotas.admit("r", quota, 30, LATER, now) {
            in_flight.push(call);
        }
        assert_eq!(
            in_flight.len(),
            4,
            "30 + 30 + 30 < 100, then 90 + 30 is the last"
        );
        assert_eq!(quotas.reserved("r"), Some(120));
        // Each call used its whole reservation: 20 over the budget, less than one call's 30.
        for call in in_flight {
            call.settle(30);
        }
        assert_eq!(
            (quotas.used("r"), quotas.reserved("r")),
            (Some((4, 120)), Some(0))
        );
    }

    #[test]
    fn a_call_whose_usage_never_arrives_is_charged_its_reservation() {
        let quotas = Arc::new(Quotas::new(10));
        let quota = Quota {
            requests: None,
            tokens: Some(1_000),
        };
        drop(quotas.admit("r", quota, 70, LATER, UnixTime(1)).unwrap());
        assert_eq!(quotas.used("r"), Some((1, 70)));
        quotas
            .admit("r", quota, 70, LATER, UnixTime(1))
            .unwrap()
            .settle(5);
        assert_eq!(
            (quotas.used("r"), quotas.reserved("r")),
            (Some((2, 75)), Some(0))
        );
    }

    #[test]
    fn the_table_is_bounded_and_forgets_expired_runs() {
        let quotas = Arc::new(Quotas::new(2));
        let quota = Quota::default();
        assert!(
            quotas
                .admit("a", quota, 0, UnixTime(10), UnixTime(1))
                .is_ok()
        );
        assert!(
            quotas
                .admit("b", quota, 0, UnixTime(10), UnixTime(1))
                .is_ok()
        );
        assert!(matches!(
            quotas.admit("c", quota, 0, UnixTime(10), UnixTime(5)),
            Err(QuotaError::Full)
        ));
        assert!(
            quotas
                .admit("c", quota, 0, UnixTime(20), UnixTime(11))
                .is_ok()
        );
        assert_eq!(quotas.used("a"), None);
    }
}
