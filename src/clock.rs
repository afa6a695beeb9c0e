//! Where the server gets the time from.
//!
//! Time is a parameter, never read ad hoc: expiry, rotation schedules and the revocation
//! feed's pruning are then testable by moving a [`ManualClock`] instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};

pub use tailpass_verify::UnixTime;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current time in whole seconds.
    fn now(&self) -> UnixTime;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        UnixTime::now()
    }
}

/// A clock that only moves when told to, for tests of anything time-dependent.
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: UnixTime) -> Self {
        ManualClock(AtomicU64::new(start.0))
    }

    /// Moves the clock forward by `secs`.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        UnixTime(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new(UnixTime(1_000));
        assert_eq!(clock.now(), UnixTime(1_000));
        clock.advance(61);
        assert_eq!(clock.now(), UnixTime(1_061));
    }
}
