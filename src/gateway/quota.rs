//! Per-run budgets at the gateway (the `quota` claim): requests, and LLM tokens counted from
//! the upstream's `usage`. Budgets are charged to the run's root, so the children a run
//! exchanges share its budget. Kept in memory per gateway, bounded in entries; an entry leaves
//! once every token of its run has expired.

use std::collections::HashMap;
use std::sync::Mutex;

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
    /// Occurs when the run has used all its LLM tokens.
    #[error("run {run} has used its {limit} tokens")]
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
    expires: UnixTime,
}

/// Usage by root run.
#[derive(Debug)]
pub struct Quotas {
    runs: Mutex<HashMap<String, Usage>>,
    capacity: usize,
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
    /// it; refused when a budget is spent.
    pub fn admit(
        &self,
        run: &str,
        quota: Quota,
        expires: UnixTime,
        now: UnixTime,
    ) -> Result<(), QuotaError> {
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
            expires,
        });
        usage.expires = usage.expires.max(expires);
        if let Some(limit) = quota.tokens
            && usage.tokens >= limit
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
        Ok(())
    }

    /// Charges `tokens` LLM tokens to `run` (after the upstream answered).
    pub fn charge_tokens(&self, run: &str, tokens: u64) {
        if let Ok(mut runs) = self.runs.lock()
            && let Some(usage) = runs.get_mut(run)
        {
            usage.tokens = usage.tokens.saturating_add(tokens);
        }
    }

    /// `(requests, tokens)` used by `run`.
    pub fn used(&self, run: &str) -> Option<(u64, u64)> {
        let runs = self.runs.lock().ok()?;
        runs.get(run).map(|u| (u.requests, u.tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATER: UnixTime = UnixTime(1_000);

    #[test]
    fn requests_and_tokens_run_out_per_run() {
        let quotas = Quotas::new(10);
        let quota = Quota {
            requests: Some(2),
            tokens: Some(100),
        };
        let now = UnixTime(1);
        assert!(quotas.admit("r1", quota, LATER, now).is_ok());
        assert!(quotas.admit("r1", quota, LATER, now).is_ok());
        assert!(matches!(
            quotas.admit("r1", quota, LATER, now),
            Err(QuotaError::Requests { limit: 2, .. })
        ));
        assert!(quotas.admit("r2", quota, LATER, now).is_ok());
        quotas.charge_tokens("r2", 150);
        assert!(matches!(
            quotas.admit("r2", quota, LATER, now),
            Err(QuotaError::Tokens { limit: 100, .. })
        ));
        assert_eq!(quotas.used("r2"), Some((1, 150)));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_expired_runs() {
        let quotas = Quotas::new(2);
        let quota = Quota::default();
        assert!(quotas.admit("a", quota, UnixTime(10), UnixTime(1)).is_ok());
        assert!(quotas.admit("b", quota, UnixTime(10), UnixTime(1)).is_ok());
        assert_eq!(
            quotas.admit("c", quota, UnixTime(10), UnixTime(5)),
            Err(QuotaError::Full)
        );
        assert!(quotas.admit("c", quota, UnixTime(20), UnixTime(11)).is_ok());
        assert_eq!(quotas.used("a"), None);
    }
}
