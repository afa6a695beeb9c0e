//! How both backends write records and times: JSON beside the queried columns, seconds as
//! signed 64-bit integers, and the audit log's `seq` floor (an event's time in microseconds).

use serde::Serialize;
use serde::de::DeserializeOwned;
use tailpass_verify::UnixTime;

use super::StoreError;

/// The last second whose microseconds fit `seq` with room to spare (9999-12-31T23:59:59Z):
/// a clock gone wild cannot overflow the sequence.
const LAST_SECOND: i64 = 253_402_300_799;

/// A time as the database stores it (saturating).
pub(crate) fn time(t: UnixTime) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

/// A stored time read back (a negative one reads as the epoch).
pub(crate) fn from_time(t: i64) -> UnixTime {
    UnixTime(u64::try_from(t).unwrap_or(0))
}

/// A record as JSON.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A record read back from JSON; undecodable text is a corrupt row.
pub(crate) fn decode<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The least audit `seq` an event at `t` may have: every event's `seq` is at least its time
/// in microseconds and above the previous event's, so `time >= T` implies `seq >= T × 10⁶`
/// and a time range is a range of the key.
pub(crate) fn seq_floor(t: UnixTime) -> i64 {
    time(t).clamp(0, LAST_SECOND) * 1_000_000
}

/// The `seq` of the event at `t` written after `last`.
pub(crate) fn next_seq(t: UnixTime, last: i64) -> i64 {
    seq_floor(t).max(last.saturating_add(1))
}

/// A stored sequence number read back.
pub(crate) fn from_seq(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// A count, version or generation as the database stores it (saturating).
pub(crate) fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
