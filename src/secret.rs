//! Bearer secrets the server hands out: client secrets, authorization codes, refresh tokens,
//! registration access tokens.
//!
//! They are random 256-bit values shown to their holder once. Only their SHA-256 is stored
//! ([`SecretHash`]), and a presented value is compared against it in constant time. Codes and
//! refresh tokens, of which a store keeps many, are ordered secrets: they begin with the
//! millisecond they were made, and so does the hash they are stored under
//! ([`Secret::ordered_hash`]). They are not passwords, so a fast hash is right: a slow one
//! would only cap throughput (docs/design.md "Tokens"). Neither type prints its value in
//! `Debug`, so a secret cannot reach a log through `{:?}`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

/// A freshly generated or presented secret value, in clear. Lives only in memory.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// A new random 256-bit secret, base64url-encoded (43 characters).
    pub fn generate() -> Secret {
        Secret(random_token(32))
    }

    /// Wraps a value a client presented.
    pub fn from_presented(value: &str) -> Secret {
        Secret(value.to_owned())
    }

    /// The clear value, for the single response that hands it to its holder.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash under which this secret is stored.
    pub fn hash(&self) -> SecretHash {
        SecretHash::of(&self.0)
    }

    /// A new ordered secret, for the kinds a store keeps many of and looks up by hash
    /// (authorization codes, refresh tokens): [`ordered_token`] of 256 random bits (55
    /// characters). Its [`Secret::ordered_hash`] begins with the same millisecond, so the
    /// index of a table of them is added to at its end, not at a random page per row.
    pub fn generate_ordered() -> Secret {
        Secret(ordered_token(32))
    }

    /// The hash under which an ordered secret is stored: the six bytes of its millisecond,
    /// then the first 26 bytes (208 bits) of its SHA-256. Any other value (one issued before
    /// codes and refresh tokens were ordered, or a forgery) gets its whole SHA-256, so an
    /// older token is still found, and a presented value still has to match a stored hash to
    /// be anything.
    pub fn ordered_hash(&self) -> SecretHash {
        let plain = SecretHash::of(&self.0);
        let Some(prefix) = ordered_prefix(&self.0) else {
            return plain;
        };
        let mut out = [0u8; 32];
        out[..ORDER_BYTES].copy_from_slice(&prefix);
        out[ORDER_BYTES..].copy_from_slice(&plain.0[..32 - ORDER_BYTES]);
        SecretHash(out)
    }
}

/// The current millisecond of the system's clock as twelve hex digits, then `bytes` random
/// bytes base64url-encoded: unguessable, and sorting in the order it was made. The time is
/// only where the value lands in an index (a clock stepping back costs locality, nothing
/// else), never read as a time; it is in the issued tokens' `iat` anyway.
pub fn ordered_token(bytes: usize) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // Six bytes: the twelve digits stay twelve until the year 10889.
    let millis = u64::try_from(millis).unwrap_or(u64::MAX) & 0xffff_ffff_ffff;
    format!("{millis:012x}{}", random_token(bytes))
}

/// The bytes of an ordered secret's millisecond (big-endian).
const ORDER_BYTES: usize = 6;

/// The issue time of an ordered secret, as the bytes that begin its hash; `None` unless
/// `value` has an ordered secret's shape (twelve lowercase hex digits, then 43 base64url
/// characters).
fn ordered_prefix(value: &str) -> Option<[u8; ORDER_BYTES]> {
    let digits = value.get(..2 * ORDER_BYTES)?;
    if value.len() != 2 * ORDER_BYTES + 43
        || !digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; ORDER_BYTES];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The SHA-256 of a secret, lowercase hex: what the store and config files hold.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    /// Hashes a clear value.
    pub fn of(value: &str) -> SecretHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        SecretHash(out)
    }

    /// Whether `presented` hashes to this value, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        SecretHash::of(presented).0.ct_eq(&self.0).into()
    }

    /// The lowercase hex form.
    pub fn to_hex(&self) -> String {
        // Store keys and code-derived ids are built from it on every code flow: a digit per
        // nibble, not a formatter call per byte.
        let digit = |n: u8| char::from(if n < 10 { b'0' + n } else { b'a' + (n - 10) });
        let mut hex = String::with_capacity(64);
        for b in self.0 {
            hex.push(digit(b >> 4));
            hex.push(digit(b & 0x0f));
        }
        hex
    }

    /// Parses the lowercase or uppercase hex form of a SHA-256.
    pub fn from_hex(hex: &str) -> Option<SecretHash> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2)?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(SecretHash(out))
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash of a 256-bit random value reveals nothing, but it is still a lookup key:
        // print a prefix only, enough to correlate log lines.
        let hex = self.to_hex();
        write!(f, "SecretHash({}…)", hex.get(..8).unwrap_or_default())
    }
}

impl TryFrom<String> for SecretHash {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        SecretHash::from_hex(&value).ok_or_else(|| "expected a SHA-256 as 64 hex digits".into())
    }
}

impl From<SecretHash> for String {
    fn from(value: SecretHash) -> Self {
        value.to_hex()
    }
}

/// `bytes` random bytes from the operating system's CSPRNG, base64url without padding. Used
/// for secrets and for identifiers that must be unguessable (client ids, jti).
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf);
    URL_SAFE_NO_PAD.encode(&buf)
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) {
    // SystemRandom reads getrandom(2); it fails only if the kernel cannot provide entropy, in
    // which case no secure identifier can be made. Never hand out a predictable buffer: retry
    // until it succeeds.
    while SystemRandom::new().fill(buf).is_err() {
        std::thread::yield_now();
    }
}

/// Bytes kept in each thread's reserve for [`fill_identifier`].
const RESERVE: usize = 4096;

thread_local! {
    static IDENTIFIER_RESERVE: std::cell::RefCell<([u8; RESERVE], usize)> =
        const { std::cell::RefCell::new(([0; RESERVE], RESERVE)) };
}

/// Fills `buf` with operating-system randomness for public identifiers (`jti`, run ids): as
/// unguessable as [`fill_random`], but drawn from a per-thread reserve refilled 4 KiB at a
/// time, so that minting a token does not cost a system call for its ids. Each reserve byte is
/// handed out once. Not for secrets: unused reserve bytes wait in memory.
pub fn fill_identifier(buf: &mut [u8]) {
    if buf.len() > RESERVE / 4 {
        return fill_random(buf);
    }
    IDENTIFIER_RESERVE.with_borrow_mut(|(reserve, used)| {
        if RESERVE - *used < buf.len() {
            fill_random(reserve);
            *used = 0;
        }
        let end = *used + buf.len();
        if let Some(bytes) = reserve.get(*used..end) {
            buf.copy_from_slice(bytes);
        }
        *used = end;
    });
}

/// A run id from 16 random bytes: 128 random bits (unguessable, never reused) after a
/// millisecond timestamp, all in lowercase Crockford base32 (36 characters). The timestamp
/// makes ids sort by creation, so the audit log's run index grows at its end rather than
/// touching random pages on every commit (the store's run zones are their first characters);
/// it says nothing a token's `iat` does not already say.
pub fn run_id(random: [u8; 16]) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let mut id = String::with_capacity(36);
    // 48 bits of time in 10 digits (50 bits), then 128 random bits in 26 digits (130 bits).
    push_base32(&mut id, millis & ((1 << 48) - 1), 10);
    push_base32(&mut id, u128::from_be_bytes(random), 26);
    id
}

/// Appends the low `digits * 5` bits of `value`, most significant first.
fn push_base32(out: &mut String, value: u128, digits: u32) {
    const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    for i in (0..digits).rev() {
        let index = usize::try_from((value >> (i * 5)) & 31).unwrap_or(0);
        out.push(char::from(CROCKFORD.get(index).copied().unwrap_or(b'0')));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_secrets_hash_in_issue_order_and_anything_else_hashes_plainly() {
        let made: Vec<Secret> = (0..50).map(|_| Secret::generate_ordered()).collect();
        for pair in made.windows(2) {
            let (a, b) = (
                pair[0].ordered_hash().to_hex(),
                pair[1].ordered_hash().to_hex(),
            );
            assert_ne!(a, b);
            if a[..12] != b[..12] {
                assert!(a < b, "made later, sorted earlier");
            }
        }
        let early = &made[0];
        assert_eq!(early.expose().len(), 55);
        assert_eq!(early.ordered_hash().to_hex()[..12], early.expose()[..12]);
        // The same value presented again finds the same row.
        let presented = Secret::from_presented(early.expose());
        assert_eq!(presented.ordered_hash(), early.ordered_hash());
        // The rest of the hash is the SHA-256's start.
        assert_eq!(
            early.ordered_hash().to_hex()[12..],
            early.hash().to_hex()[..52]
        );
        // A value of another shape keeps its whole SHA-256: one issued before ordering, a
        // client secret, or an uppercase or short forgery.
        for other in [
            Secret::generate().expose().to_owned(),
            format!("0193A1B2C3D4{}", random_token(32)),
            format!("0193a1b2c3{}", random_token(32)),
            "0193a1b2c3d4".to_owned(),
            String::new(),
        ] {
            let secret = Secret::from_presented(&other);
            assert_eq!(secret.ordered_hash(), secret.hash(), "{other}");
        }
    }

    #[test]
    fn identifier_bytes_are_never_handed_out_twice() {
        // Draws past several refills of the reserve, in sizes that do not divide it, and one
        // larger than the reserve takes: every draw differs from every other.
        let mut draws: Vec<Vec<u8>> = Vec::new();
        for size in [16usize, 32, 1000, 24, 5000, 16].iter().cycle().take(60) {
            let mut buf = vec![0u8; *size];
            fill_identifier(&mut buf);
            draws.push(buf);
        }
        let distinct: std::collections::HashSet<&Vec<u8>> = draws.iter().collect();
        assert_eq!(distinct.len(), draws.len());
        assert!(draws.iter().all(|d| d.iter().any(|b| *b != 0)));
    }

    #[test]
    fn generated_secrets_are_distinct_and_256_bit() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 43);
    }

    #[test]
    fn hash_matches_only_its_secret() {
        let s = Secret::generate();
        let h = s.hash();
        assert!(h.matches(s.expose()));
        assert!(!h.matches("something else"));
        assert!(!h.matches(""));
    }

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let h = SecretHash::of("x");
        assert_eq!(SecretHash::from_hex(&h.to_hex()), Some(h.clone()));
        assert_eq!(SecretHash::from_hex("zz"), None);
        assert_eq!(SecretHash::from_hex(&"g".repeat(64)), None);
        assert_eq!(SecretHash::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn debug_never_prints_the_value() {
        let s = Secret::from_presented("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        let h = s.hash();
        assert!(!format!("{h:?}").contains(&h.to_hex()));
    }

    #[test]
    fn sha256_of_known_value() {
        // SHA-256("abc") from FIPS 180-2 appendix B.1.
        assert_eq!(
            SecretHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
