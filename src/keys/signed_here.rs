//! The tokens this process signed lately to read back, remembered by digest, so that reading
//! one back (`/userinfo` right after a login) need not check a signature that this process made
//! itself. An ES256 check costs about three
//! signatures; a SHA-256 digest of the token and a set lookup cost a few percent of one.
//!
//! Sound because the digest is of the whole compact token: a token whose bytes hash to a
//! digest remembered here is, but for a SHA-256 collision, exactly a token this process
//! signed. Everything else about it — the key still being published, type, issuer, time,
//! revocation — is checked as for any other token. The set is bounded (the oldest digest is
//! forgotten first); a token not found in it, signed before a restart or by another replica,
//! gets the full check.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// How many digests are remembered: at a few thousand logins a second, the last few seconds,
/// which covers a login's `/userinfo` call; about 1.5 MiB, taken at start (see [`Remembered`]).
pub const REMEMBERED: usize = 14_000;

type Digest = [u8; 32];

/// A bounded set of digests of tokens signed here.
#[derive(Debug, Default)]
pub struct SignedHere {
    inner: Mutex<Remembered>,
}

/// The digests, and their order. Both are sized once, at start, and never grow, so that the
/// memory they take is fixed from the first minute: a set that forgets one digest for each it
/// learns fills with tombstones, and a hash table that runs out of room while more than half
/// full doubles rather than clearing them. Twice `REMEMBERED` of room keeps the set under
/// half full, so it only ever clears its tombstones in place; the table is reserved, not
/// touched, until the digests fill it.
#[derive(Debug)]
struct Remembered {
    set: HashSet<Digest>,
    order: VecDeque<Digest>,
}

impl Default for Remembered {
    fn default() -> Self {
        Remembered {
            set: HashSet::with_capacity(2 * REMEMBERED),
            order: VecDeque::with_capacity(REMEMBERED),
        }
    }
}

fn digest(token: &str) -> Option<Digest> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .try_into()
        .ok()
}

impl SignedHere {
    /// Remembers `token`, just signed here, forgetting the oldest one if the set is full.
    pub fn remember(&self, token: &str) {
        let Some(digest) = digest(token) else { return };
        let Ok(mut remembered) = self.inner.lock() else {
            return;
        };
        if !remembered.set.insert(digest) {
            return;
        }
        // The oldest goes before the new one is queued, so the order never outgrows its room.
        if remembered.order.len() >= REMEMBERED
            && let Some(oldest) = remembered.order.pop_front()
        {
            remembered.set.remove(&oldest);
        }
        remembered.order.push_back(digest);
    }

    /// Whether `token` is, byte for byte, one this process signed and still remembers.
    pub fn contains(&self, token: &str) -> bool {
        let Some(digest) = digest(token) else {
            return false;
        };
        self.inner
            .lock()
            .map(|remembered| remembered.set.contains(&digest))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_exact_tokens_only_and_forgets_the_oldest_past_the_bound() {
        let signed = SignedHere::default();
        signed.remember("header.payload.signature");
        assert!(signed.contains("header.payload.signature"));
        assert!(!signed.contains("header.payload.signaturf"));
        assert!(!signed.contains("header.payloaD.signature"));
        for i in 0..REMEMBERED {
            signed.remember(&format!("token-{i}"));
        }
        assert!(
            !signed.contains("header.payload.signature"),
            "the oldest is forgotten"
        );
        assert!(signed.contains("token-1"));
        assert!(signed.contains(&format!("token-{}", REMEMBERED - 1)));
        let remembered = signed.inner.lock().unwrap();
        assert_eq!(remembered.set.len(), REMEMBERED);
        assert_eq!(remembered.order.len(), REMEMBERED);
    }

    #[test]
    fn forgetting_and_learning_for_many_rounds_never_grows_the_memory_taken_at_start() {
        let signed = SignedHere::default();
        let at_start = {
            let remembered = signed.inner.lock().unwrap();
            (remembered.set.capacity(), remembered.order.capacity())
        };
        assert!(at_start.0 >= 2 * REMEMBERED && at_start.1 >= REMEMBERED);
        for i in 0..8 * REMEMBERED {
            signed.remember(&format!("token-{i}"));
        }
        let remembered = signed.inner.lock().unwrap();
        assert_eq!(remembered.set.len(), REMEMBERED);
        // A set's capacity is its digests and the room left, which tombstones eat into: it
        // can fall, and only a bigger table could raise it.
        assert!(
            remembered.set.capacity() <= at_start.0,
            "eight rounds of forgetting the oldest digest grew the set: {} > {}",
            remembered.set.capacity(),
            at_start.0
        );
        assert_eq!(remembered.order.capacity(), at_start.1);
    }
}
