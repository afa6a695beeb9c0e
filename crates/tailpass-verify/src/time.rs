//! Seconds since the Unix epoch, the unit of every JWT time claim (RFC 7519 §2 "NumericDate").

use serde::{Deserialize, Serialize};

/// A point in time as whole seconds since 1970-01-01T00:00:00Z.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixTime(pub u64);

impl UnixTime {
    /// The current system time; servers take time from a clock they are given instead, so
    /// that expiry can be tested without waiting.
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        UnixTime(secs)
    }

    /// This time plus `secs`, saturating rather than wrapping.
    pub fn plus(self, secs: u64) -> Self {
        UnixTime(self.0.saturating_add(secs))
    }

    /// This time minus `secs`, saturating at the epoch.
    pub fn minus(self, secs: u64) -> Self {
        UnixTime(self.0.saturating_sub(secs))
    }

    /// Seconds from `earlier` to `self`, or zero when `earlier` is later.
    pub fn since(self, earlier: UnixTime) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}
