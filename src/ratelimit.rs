//! Rate limits: a token bucket per key (a node's stable id, a client id, an unidentified
//! peer's address), refilled continuously. Time is the caller's `Clock` reading, so limits are
//! tested by moving a `ManualClock`; whole seconds are precise enough for per-minute rates.
//!
//! Buckets are spread over shards, each behind its own lock, so that requests from different
//! nodes rarely wait on each other. Memory is bounded: a shard that reaches its share of the
//! capacity drops its full (idle) buckets, and if all are busy, the oldest half.
//!
//! Replicas sharing a store (PostgreSQL) also share a budget per key and minute
//! ([`RateLimiter::with_shared_counts`]): besides its bucket, a request is admitted only while
//! the key's total for the current window, as last read back from the store, plus what this
//! replica admitted since, stays under the limit. Every [`FLUSH_EVERY`] a replica adds what it
//! admitted to the store's totals and reads them back ([`RateLimiter::flush`]), one statement
//! for all keys. What another replica admitted since its last flush is unknown here, so within
//! one window a key is admitted at most `limit + Σ` over the other replicas of what each
//! admitted for it within one flush interval (at most `limit` each): with `N` replicas and a
//! caller's requests reaching one replica at `c` a second, at most `limit × (1 + slack)` with
//! `slack = (N − 1) × min(1, c × FLUSH_EVERY / limit)` (docs/design.md, "State and
//! durability"). Unidentified peers' keys (`addr:`) stay local: a stranger causes no write.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::Mutex;
use std::time::Duration;

use tailpass_verify::UnixTime;

use crate::store::{RateCount, Store, StoreError};

/// How often a replica adds its admissions to the shared totals and reads them back.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The window of shared counts, seconds.
const WINDOW: u64 = 60;
/// Keys of unidentified peers: counted by each replica alone, never written to the store.
const LOCAL_ONLY: &str = "addr:";

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: UnixTime,
}

/// A key's count in the current shared window.
#[derive(Debug, Clone, Copy)]
struct Shared {
    /// The window (unix time / [`WINDOW`]).
    window: u64,
    /// Every replica's admissions, as last read back from the store.
    known: u64,
    /// This replica's admissions not yet added to the store's total.
    unflushed: u64,
}

/// Token buckets by key.
#[derive(Debug)]
pub struct RateLimiter {
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    /// Counts shared with other replicas, when the store is shared; at most `capacity` keys.
    shared: Option<Mutex<HashMap<String, Shared>>>,
    capacity: usize,
}

impl RateLimiter {
    /// A limiter tracking at most about `capacity` keys.
    pub fn new(capacity: usize) -> RateLimiter {
        RateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (capacity / SHARDS).max(1),
            hasher: std::collections::hash_map::RandomState::new(),
            shared: None,
            capacity: capacity.max(1),
        }
    }

    /// The same limiter, whose budgets are also shared with the other replicas of a store
    /// through [`RateLimiter::flush`].
    pub fn with_shared_counts(mut self) -> RateLimiter {
        self.shared = Some(Mutex::new(HashMap::new()));
        self
    }

    /// Whether budgets are shared with other replicas (so [`RateLimiter::flush`] matters).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Takes one request from `key`'s budget of `per_minute`: a token from its bucket (which
    /// holds `per_minute` tokens and refills at `per_minute` a minute) and, with shared counts,
    /// one from the replicas' shared count of the current minute. `Err` carries the seconds to
    /// wait.
    pub fn check(&self, key: &str, per_minute: u32, now: UnixTime) -> Result<(), u64> {
        self.take_token(key, per_minute, now)?;
        match &self.shared {
            Some(shared) if !key.starts_with(LOCAL_ONLY) => {
                self.take_shared(shared, key, per_minute, now)
            }
            _ => Ok(()),
        }
    }

    fn take_shared(
        &self,
        shared: &Mutex<HashMap<String, Shared>>,
        key: &str,
        per_minute: u32,
        now: UnixTime,
    ) -> Result<(), u64> {
        let window = now.0 / WINDOW;
        let until_next = (WINDOW - now.0 % WINDOW).max(1);
        let Ok(mut counts) = shared.lock() else {
            return Err(until_next);
        };
        if !counts.contains_key(key) && counts.len() >= self.capacity {
            counts.retain(|_, c| c.window >= window);
            if counts.len() >= self.capacity {
                // Full of this minute's keys: refusing is safer than forgetting a count.
                return Err(until_next);
            }
        }
        let count = counts.entry(key.to_owned()).or_insert(Shared {
            window,
            known: 0,
            unflushed: 0,
        });
        if count.window != window {
            *count = Shared {
                window,
                known: 0,
                unflushed: 0,
            };
        }
        if count.known.saturating_add(count.unflushed) < u64::from(per_minute) {
            count.unflushed += 1;
            Ok(())
        } else {
            Err(until_next)
        }
    }

    /// Adds this replica's admissions of the current window to the store's shared totals and
    /// reads the totals back, for every key counted in this window, in one call; forgets the
    /// counts of windows that have ended. On failure nothing is forgotten: the next flush
    /// sends the admissions again (meanwhile, admission goes by what was last read).
    pub async fn flush(&self, store: &dyn Store, now: UnixTime) -> Result<(), StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let window = now.0 / WINDOW;
        let deltas: Vec<RateCount> = match shared.lock() {
            Ok(mut counts) => {
                counts.retain(|_, c| c.window >= window);
                counts
                    .iter()
                    .map(|(key, c)| RateCount {
                        key: key.clone(),
                        window: c.window,
                        count: c.unflushed,
                    })
                    .collect()
            }
            Err(_) => return Ok(()),
        };
        if deltas.is_empty() {
            return Ok(());
        }
        let totals = store.add_rate_counts(&deltas).await?;
        let sent: HashMap<(&str, u64), u64> = deltas
            .iter()
            .map(|d| ((d.key.as_str(), d.window), d.count))
            .collect();
        if let Ok(mut counts) = shared.lock() {
            for total in totals {
                let Some(count) = counts.get_mut(&total.key) else {
                    continue;
                };
                if count.window != total.window {
                    continue;
                }
                let delta = sent
                    .get(&(total.key.as_str(), total.window))
                    .copied()
                    .unwrap_or(0);
                count.unflushed = count.unflushed.saturating_sub(delta);
                count.known = total.count;
            }
        }
        Ok(())
    }

    fn take_token(&self, key: &str, per_minute: u32, now: UnixTime) -> Result<(), u64> {
        if per_minute == 0 {
            return Err(60);
        }
        let capacity = f64::from(per_minute);
        let rate = capacity / 60.0;
        let shard = usize::try_from(self.hasher.hash_one(key)).unwrap_or(0) % SHARDS;
        let Some(lock) = self.shards.get(shard) else {
            return Ok(());
        };
        let Ok(mut buckets) = lock.lock() else {
            return Ok(());
        };
        if !buckets.contains_key(key) && buckets.len() >= self.per_shard {
            evict(&mut buckets, self.per_shard, now, rate, capacity);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let elapsed = now.since(bucket.last) as f64;
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - bucket.tokens) / rate).ceil();
            Err(if wait.is_finite() && wait >= 1.0 {
                wait as u64
            } else {
                1
            })
        }
    }
}

fn evict(
    buckets: &mut HashMap<String, Bucket>,
    limit: usize,
    now: UnixTime,
    rate: f64,
    capacity: f64,
) {
    // A bucket that has refilled is indistinguishable from a new one: dropping it loses nothing.
    buckets.retain(|_, b| b.tokens + now.since(b.last) as f64 * rate < capacity);
    if buckets.len() >= limit {
        let mut ages: Vec<(UnixTime, String)> =
            buckets.iter().map(|(k, b)| (b.last, k.clone())).collect();
        ages.sort();
        for (_, key) in ages.iter().take(ages.len() / 2) {
            buckets.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusal_then_refill() {
        let limiter = RateLimiter::new(1_000);
        let t0 = UnixTime(1_000);
        for _ in 0..3 {
            assert_eq!(limiter.check("n1", 3, t0), Ok(()));
        }
        assert_eq!(
            limiter.check("n1", 3, t0),
            Err(20),
            "3 a minute: one every 20 s"
        );
        assert_eq!(limiter.check("n2", 3, t0), Ok(()), "keys are independent");
        assert_eq!(limiter.check("n1", 3, t0.plus(20)), Ok(()));
    }

    /// Two replicas' limiters over one PostgreSQL database share a key's budget: each sees
    /// the 10 requests a second of its own caller, and flushes every second. Across both, at
    /// least the limit and at most the stated bound are admitted in the window: `limit +
    /// (N − 1) × what one replica admits in one flush interval`.
    #[tokio::test]
    async fn replicas_share_a_budget_within_the_stated_bound() {
        let Some(db) = crate::store::postgres::tests::TestDb::create().await else {
            return;
        };
        let stores = [db.replica().await, db.replica().await];
        let limiters = [
            RateLimiter::new(1_000).with_shared_counts(),
            RateLimiter::new(1_000).with_shared_counts(),
        ];
        let (limit, per_second) = (100_u32, 10_u64);
        let start = 60 * 1_000;
        let mut admitted = 0;
        for second in 0..60 {
            let now = UnixTime(start + second);
            for limiter in &limiters {
                for _ in 0..per_second {
                    admitted += u64::from(limiter.check("node:n1", limit, now).is_ok());
                }
            }
            for (limiter, store) in limiters.iter().zip(&stores) {
                limiter.flush(store, now).await.unwrap();
            }
        }
        let replicas = limiters.len() as u64;
        let bound = u64::from(limit) + (replicas - 1) * per_second;
        println!("admitted {admitted} of limit {limit}, bound {bound}");
        assert!(
            (u64::from(limit)..=bound).contains(&admitted),
            "{admitted} admitted, the bound is {bound}"
        );
        // The budget is spent for everyone until the next window, which starts afresh.
        for limiter in &limiters {
            assert_eq!(
                limiter.check("node:n1", limit, UnixTime(start + 59)),
                Err(1)
            );
            assert_eq!(
                limiter.check("node:n1", limit, UnixTime(start + 180)),
                Ok(())
            );
        }
        db.drop().await;
    }

    #[tokio::test]
    async fn a_budget_spent_at_one_replica_is_refused_at_the_other_after_a_flush() {
        let Some(db) = crate::store::postgres::tests::TestDb::create().await else {
            return;
        };
        let (a_store, b_store) = (db.replica().await, db.replica().await);
        let a = RateLimiter::new(1_000).with_shared_counts();
        let b = RateLimiter::new(1_000).with_shared_counts();
        let now = UnixTime(60 * 2_000 + 10);
        for _ in 0..5 {
            assert_eq!(a.check("client:c1", 5, now), Ok(()));
        }
        assert!(a.check("client:c1", 5, now).is_err(), "spent at A");
        // B counts the key too (it has seen one request), then both flush.
        assert_eq!(b.check("client:c1", 5, now), Ok(()));
        a.flush(&a_store, now).await.unwrap();
        b.flush(&b_store, now).await.unwrap();
        assert_eq!(
            b.check("client:c1", 5, now),
            Err(50),
            "A's five are known at B"
        );
        // An unidentified peer's budget stays with each replica: nothing written for it.
        assert_eq!(b.check("addr:192.0.2.1", 5, now), Ok(()));
        b.flush(&b_store, now).await.unwrap();
        use crate::store::tests::Raw as _;
        assert_eq!(db.store.count("rate_counts").await.unwrap(), 1, "c1's only");
        db.drop().await;
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = RateLimiter::new(64);
        let t0 = UnixTime(1_000);
        for i in 0..10_000 {
            let _ = limiter.check(&format!("peer{i}"), 10, t0);
        }
        let total: usize = limiter
            .shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(total <= 64 + SHARDS, "{total} keys kept");
    }
}
