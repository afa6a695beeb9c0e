//! CSRF tokens for the admin UI's forms. The UI has no session: the caller's tailnet identity
//! is ambient, like a cookie, so every state-changing form carries a token bound to the
//! administrator and the hour (an HMAC under the forms' key: per process on one node, shared by
//! the replicas of one PostgreSQL database), on top of the Fetch-Metadata
//! and Origin checks that refuse cross-site requests outright.

use ring::hmac;
use tailpass_verify::UnixTime;

/// How long a token is accepted: its hour and the next.
const BUCKET: u64 = 3600;

fn tag(key: &hmac::Key, actor: &str, bucket: u64) -> hmac::Tag {
    hmac::sign(
        key,
        format!("tailpass-admin-csrf-v1|{actor}|{bucket}").as_bytes(),
    )
}

/// The token for `actor`'s forms now.
pub fn token(key: &hmac::Key, actor: &str, now: UnixTime) -> String {
    hex(tag(key, actor, now.0 / BUCKET).as_ref())
}

/// Whether `presented` is a token this process gave `actor` within the last hour or two.
pub fn verify(key: &hmac::Key, actor: &str, presented: &str, now: UnixTime) -> bool {
    let Some(bytes) = unhex(presented) else {
        return false;
    };
    let bucket = now.0 / BUCKET;
    [bucket, bucket.saturating_sub(1)].into_iter().any(|b| {
        hmac::verify(
            key,
            format!("tailpass-admin-csrf-v1|{actor}|{b}").as_bytes(),
            &bytes,
        )
        .is_ok()
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_the_admin_and_the_hour() {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).unwrap();
        let now = UnixTime(10 * BUCKET + 5);
        let t = token(&key, "alice@example.com", now);
        assert!(verify(&key, "alice@example.com", &t, now));
        assert!(verify(
            &key,
            "alice@example.com",
            &t,
            UnixTime(11 * BUCKET + 1)
        ));
        assert!(!verify(
            &key,
            "alice@example.com",
            &t,
            UnixTime(12 * BUCKET)
        ));
        assert!(!verify(&key, "bob@example.com", &t, now));
        assert!(!verify(&key, "alice@example.com", "zz", now));
        let other = hmac::Key::generate(hmac::HMAC_SHA256, &rng).unwrap();
        assert!(!verify(&other, "alice@example.com", &t, now));
    }
}
