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
//!
//! Durability is write-behind ([`super::budget_store`]): admission never waits for a
//! database. Each run's usage is what the store said at the last flush (`known`) plus what
//! this gateway charged since (`unflushed`); a reservation is charged as it is made and
//! corrected when the call settles, so a call in flight when the gateway dies stays charged
//! its reservation, and replicas sharing a store see each other's calls in flight.
//! [`Quotas::pending`] is what a flush sends, [`Quotas::absorb`] what it reads back.

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

/// What this gateway charged a run since its last flush: the change a flush adds to the
/// store's totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The root run charged.
    pub run: String,
    /// Requests admitted.
    pub requests: u64,
    /// LLM tokens charged: reservations made, plus each settled call's usage minus its
    /// reservation (so negative when calls used less than they reserved).
    pub tokens: i64,
    /// The latest expiry of the run's tokens seen here.
    pub expires: UnixTime,
}

/// A run's usage as a store holds it, summed over every gateway sharing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Total {
    /// The root run.
    pub run: String,
    /// Requests admitted.
    pub requests: u64,
    /// LLM tokens charged (calls in flight at their reservation).
    pub tokens: u64,
    /// The latest expiry of the run's tokens any gateway saw: once past, the row may go.
    pub expires: UnixTime,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    /// Requests and tokens the store held at the last flush that mentioned the run.
    known_requests: u64,
    known_tokens: u64,
    /// Charged here since, not yet flushed.
    unflushed_requests: u64,
    unflushed_tokens: i64,
    /// Tokens reserved by this gateway's calls in flight (already in the charges above).
    reserved: u64,
    expires: UnixTime,
}

impl Usage {
    fn new(expires: UnixTime) -> Usage {
        Usage {
            known_requests: 0,
            known_tokens: 0,
            unflushed_requests: 0,
            unflushed_tokens: 0,
            reserved: 0,
            expires,
        }
    }

    /// Whether anything charged here is not yet in the store.
    fn unflushed(&self) -> bool {
        self.unflushed_requests != 0 || self.unflushed_tokens != 0
    }

    fn requests(&self) -> u64 {
        self.known_requests.saturating_add(self.unflushed_requests)
    }

    /// Tokens charged, reservations included.
    fn charged(&self) -> u64 {
        let known = i64::try_from(self.known_tokens).unwrap_or(i64::MAX);
        u64::try_from(known.saturating_add(self.unflushed_tokens)).unwrap_or(0)
    }
}

/// A signed token count from an unsigned one, saturating.
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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
            // No token of an expired run can be admitted any more: its charges, flushed or
            // not, no longer matter.
            runs.retain(|_, u| u.expires > now);
            if runs.len() >= self.capacity {
                return Err(QuotaError::Full);
            }
        }
        let usage = runs
            .entry(run.to_owned())
            .or_insert_with(|| Usage::new(expires));
        usage.expires = usage.expires.max(expires);
        if let Some(limit) = quota.tokens
            && usage.charged() >= limit
        {
            return Err(QuotaError::Tokens {
                run: run.to_owned(),
                limit,
            });
        }
        if let Some(limit) = quota.requests
            && usage.requests() >= limit
        {
            return Err(QuotaError::Requests {
                run: run.to_owned(),
                limit,
            });
        }
        usage.unflushed_requests = usage.unflushed_requests.saturating_add(1);
        let reserved = if quota.tokens.is_some() {
            reservation
        } else {
            0
        };
        usage.reserved = usage.reserved.saturating_add(reserved);
        usage.unflushed_tokens = usage.unflushed_tokens.saturating_add(signed(reserved));
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
            usage.unflushed_tokens = usage
                .unflushed_tokens
                .saturating_add(signed(used))
                .saturating_sub(signed(reserved));
        }
    }

    /// `(requests, tokens)` used by `run`, this gateway's tokens in flight not included.
    pub fn used(&self, run: &str) -> Option<(u64, u64)> {
        let runs = self.runs.lock().ok()?;
        runs.get(run)
            .map(|u| (u.requests(), u.charged().saturating_sub(u.reserved)))
    }

    /// LLM tokens reserved by `run`'s calls in flight at this gateway.
    pub fn reserved(&self, run: &str) -> Option<u64> {
        let runs = self.runs.lock().ok()?;
        runs.get(run).map(|u| u.reserved)
    }

    /// What was charged since the last flush, per run with anything to add: what the next
    /// flush sends. Nothing changes until [`Quotas::absorb`] hears that it was stored.
    pub fn pending(&self) -> Vec<Delta> {
        let Ok(runs) = self.runs.lock() else {
            return Vec::new();
        };
        let mut deltas: Vec<Delta> = runs
            .iter()
            .filter(|(_, u)| u.unflushed())
            .map(|(run, u)| Delta {
                run: run.clone(),
                requests: u.unflushed_requests,
                tokens: u.unflushed_tokens,
                expires: u.expires,
            })
            .collect();
        // In run order, so that replicas flushing overlapping runs lock their rows in the
        // same order.
        deltas.sort_by(|a, b| a.run.cmp(&b.run));
        deltas
    }

    /// Takes in what a flush stored: `sent` (from [`Quotas::pending`]) is no longer
    /// unflushed, and each of `totals` (the store's sums, `sent` included, and on a shared
    /// store those other gateways changed) becomes what is known of its run. A run not in the
    /// table joins it while there is room (and it has not expired at `now`): that is how a
    /// gateway learns of runs first charged elsewhere, or before a restart.
    pub fn absorb(&self, sent: &[Delta], totals: Vec<Total>, now: UnixTime) {
        let Ok(mut runs) = self.runs.lock() else {
            return;
        };
        let sent: HashMap<&str, &Delta> = sent.iter().map(|d| (d.run.as_str(), d)).collect();
        for total in totals {
            let flushed = sent.get(total.run.as_str());
            let room = runs.len() < self.capacity;
            let usage = match runs.entry(total.run.clone()) {
                std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
                std::collections::hash_map::Entry::Vacant(new) if total.expires > now && room => {
                    new.insert(Usage::new(total.expires))
                }
                std::collections::hash_map::Entry::Vacant(_) => continue,
            };
            if let Some(delta) = flushed {
                usage.unflushed_requests = usage.unflushed_requests.saturating_sub(delta.requests);
                usage.unflushed_tokens = usage.unflushed_tokens.saturating_sub(delta.tokens);
            }
            usage.known_requests = total.requests;
            usage.known_tokens = total.tokens;
            usage.expires = usage.expires.max(total.expires);
        }
    }

    /// Forgets the runs whose every token had expired by `before` and that have nothing left
    /// to flush.
    pub fn forget_expired(&self, before: UnixTime) {
        if let Ok(mut runs) = self.runs.lock() {
            runs.retain(|_, u| u.expires > before || u.unflushed());
        }
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

    fn total(run: &str, requests: u64, tokens: u64) -> Total {
        Total {
            run: run.into(),
            requests,
            tokens,
            expires: LATER,
        }
    }

    #[test]
    fn a_flush_sends_what_was_charged_since_the_last_and_keeps_what_came_during_it() {
        let quotas = Arc::new(Quotas::new(10));
        let quota = Quota {
            requests: Some(10),
            tokens: Some(1_000),
        };
        let now = UnixTime(1);
        quotas.admit("r", quota, 50, LATER, now).unwrap().settle(20);
        let in_flight = quotas.admit("r", quota, 50, LATER, now).unwrap();
        let sent = quotas.pending();
        assert_eq!(
            sent,
            vec![Delta {
                run: "r".into(),
                requests: 2,
                tokens: 70,
                expires: LATER
            }],
            "two requests; 20 used, 50 reserved by the call in flight"
        );
        // Charged while the flush is on its way: not in what it sent.
        quotas.admit("r", quota, 0, LATER, now).unwrap().settle(5);
        // The store's total also holds another gateway's 3 requests and 100 tokens.
        quotas.absorb(&sent, vec![total("r", 5, 170)], now);
        assert_eq!(
            quotas.used("r"),
            Some((6, 125)),
            "5 + 1 requests; 170 + 5 tokens charged, less the 50 in flight here"
        );
        in_flight.settle(10);
        assert_eq!(
            quotas.pending(),
            vec![Delta {
                run: "r".into(),
                requests: 1,
                tokens: -35,
                expires: LATER
            }],
            "the later request, its 5 tokens, and the in-flight call's 40 not used"
        );
        assert_eq!(quotas.used("r"), Some((6, 135)));
    }

    #[test]
    fn an_unanswered_flush_keeps_every_charge_for_the_next() {
        let quotas = Arc::new(Quotas::new(10));
        let quota = Quota {
            requests: Some(3),
            tokens: None,
        };
        quotas.admit("r", quota, 0, LATER, UnixTime(1)).unwrap();
        let first = quotas.pending();
        // The store did not answer: nothing absorbed.
        quotas.admit("r", quota, 0, LATER, UnixTime(1)).unwrap();
        assert_eq!(quotas.pending().first().map(|d| d.requests), Some(2));
        assert_eq!(first.first().map(|d| d.requests), Some(1));
    }

    #[test]
    fn totals_read_back_teach_the_table_runs_charged_elsewhere_within_its_bound() {
        let quotas = Arc::new(Quotas::new(2));
        let quota = Quota {
            requests: Some(3),
            tokens: None,
        };
        let now = UnixTime(1);
        quotas.absorb(
            &[],
            vec![
                total("a", 3, 0),
                total("b", 1, 0),
                total("c", 1, 0),
                Total {
                    expires: UnixTime(1),
                    ..total("expired", 1, 0)
                },
            ],
            now,
        );
        assert!(matches!(
            quotas.admit("a", quota, 0, LATER, now),
            Err(QuotaError::Requests { limit: 3, .. })
        ));
        assert_eq!(quotas.used("b"), Some((1, 0)));
        assert_eq!((quotas.used("c"), quotas.used("expired")), (None, None));
        assert!(quotas.pending().is_empty(), "nothing charged here");
        quotas.forget_expired(UnixTime(2_000));
        assert_eq!(quotas.used("a"), None);
    }
}
