//! Rate limits: a token bucket per key (a node's stable id, a client id, an unidentified
//! peer's address), refilled continuously. Time is the caller's `Clock` reading, so limits are
//! tested by moving a `ManualClock`; whole seconds are precise enough for per-minute rates.
//!
//! Buckets are spread over shards, each behind its own lock, so that requests from different
//! nodes rarely wait on each other. Memory is bounded: a shard that reaches its share of the
//! capacity drops its full (idle) buckets, and if all are busy, the oldest half.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::Mutex;

use tailpass_verify::UnixTime;

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: UnixTime,
}

/// Token buckets by key.
#[derive(Debug)]
pub struct RateLimiter {
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl RateLimiter {
    /// A limiter tracking at most about `capacity` keys.
    pub fn new(capacity: usize) -> RateLimiter {
        RateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (capacity / SHARDS).max(1),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Takes one token from `key`'s bucket, which holds `per_minute` tokens and refills at
    /// `per_minute` a minute. `Err` carries the seconds until a token is available.
    pub fn check(&self, key: &str, per_minute: u32, now: UnixTime) -> Result<(), u64> {
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
