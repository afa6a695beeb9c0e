//! ring's raw ES256 signing rate on the calling thread: the figure the agent benchmarks are
//! read against, measured in the same run and on the same core as what they measure.

use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

/// The size of an agent token's signing input, about.
const MESSAGE: usize = 720;

/// Signs a message the size of an agent token's signing input for `seconds` with a fresh
/// P-256 key; signatures per second on this thread.
pub fn rate(seconds: u64) -> f64 {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let message = vec![b'e'; MESSAGE];
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < deadline {
        for _ in 0..64 {
            std::hint::black_box(key.sign(&rng, std::hint::black_box(&message)).unwrap());
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}
