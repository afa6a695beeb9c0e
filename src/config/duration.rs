//! Durations in settings: whole seconds (`900`) or a number with a unit (`30s`, `15m`, `2h`,
//! `7d`), the same on the command line, in the environment and in the TOML file (where an
//! integer is seconds too).

use std::fmt;
use std::str::FromStr;

/// A duration setting, whole seconds. Parsed from `900`, `30s`, `15m`, `2h` or `7d`; in TOML
/// from an integer or such a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seconds(pub u64);

/// Occurs when a duration setting is not one: its text, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Occurs when the number is missing or not a whole number.
    #[error("{0:?} is not a duration (e.g. 90s, 15m, 1h, 30d, or whole seconds)")]
    NotANumber(String),
    /// Occurs when the unit is none of `s`, `m`, `h`, `d`.
    #[error("{0:?}: unknown unit {1:?} (s, m, h, d)")]
    Unit(String, String),
    /// Occurs when the duration does not fit in 64 bits of seconds.
    #[error("{0:?} is too long")]
    TooLong(String),
    /// Occurs when a TOML integer is negative.
    #[error("{0} is negative; a duration is at least 0")]
    Negative(i64),
}

impl Seconds {
    /// `n` minutes.
    pub const fn minutes(n: u64) -> Seconds {
        Seconds(n * 60)
    }

    /// `n` hours.
    pub const fn hours(n: u64) -> Seconds {
        Seconds(n * 3_600)
    }

    /// `n` days.
    pub const fn days(n: u64) -> Seconds {
        Seconds(n * 86_400)
    }

    /// The whole seconds.
    pub const fn secs(self) -> u64 {
        self.0
    }
}

impl FromStr for Seconds {
    type Err = DurationError;

    fn from_str(value: &str) -> Result<Seconds, DurationError> {
        let value = value.trim();
        let (digits, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
            Some(at) => value.split_at(at),
            None => (value, "s"),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| DurationError::NotANumber(value.to_owned()))?;
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(DurationError::Unit(value.to_owned(), unit.to_owned())),
        };
        n.checked_mul(scale)
            .map(Seconds)
            .ok_or_else(|| DurationError::TooLong(value.to_owned()))
    }
}

/// The largest unit that states it exactly: `900` shows as `15m`.
impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        match [(86_400, "d"), (3_600, "h"), (60, "m")]
            .into_iter()
            .find(|(scale, _)| n > 0 && n.is_multiple_of(*scale))
        {
            Some((scale, unit)) => write!(f, "{}{unit}", n / scale),
            None => write!(f, "{n}s"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Seconds, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = Seconds;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration: whole seconds, or a string such as \"15m\"")
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Seconds, E> {
                Ok(Seconds(n))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Seconds, E> {
                u64::try_from(n)
                    .map(Seconds)
                    .map_err(|_| E::custom(DurationError::Negative(n)))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Seconds, E> {
                text.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_durations() {
        for (text, secs) in [
            ("3600", 3600),
            ("0", 0),
            ("90s", 90),
            ("30s", 30),
            ("15m", 900),
            ("1h", 3600),
            ("2h", 7200),
            ("7d", 604_800),
            ("30d", 2_592_000),
            (" 5m ", 300),
        ] {
            assert_eq!(text.parse(), Ok(Seconds(secs)), "{text}");
        }
    }

    #[test]
    fn bad_durations_are_errors_not_panics() {
        for bad in [
            "",
            "h",
            "1w",
            "-1",
            "1.5h",
            "15 m",
            "m15",
            "99999999999999999999d",
            "999999999999999999d",
        ] {
            assert!(bad.parse::<Seconds>().is_err(), "{bad}");
        }
        assert_eq!(
            "1w".parse::<Seconds>().unwrap_err().to_string(),
            "\"1w\": unknown unit \"w\" (s, m, h, d)"
        );
    }

    #[derive(Debug, serde::Deserialize)]
    struct File {
        token_lifetime: Seconds,
    }

    #[test]
    fn toml_takes_an_integer_or_a_string() {
        let read = |text: &str| toml::from_str::<File>(text).map(|f| f.token_lifetime);
        assert_eq!(read("token_lifetime = 900").unwrap(), Seconds(900));
        assert_eq!(read("token_lifetime = \"15m\"").unwrap(), Seconds(900));
        assert_eq!(read("token_lifetime = \"900\"").unwrap(), Seconds(900));
        for bad in [
            "token_lifetime = -5",
            "token_lifetime = \"1w\"",
            "token_lifetime = 1.5",
            "token_lifetime = true",
        ] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.contains("token_lifetime"), "names the setting: {err}");
        }
    }

    #[test]
    fn shown_in_the_largest_exact_unit() {
        for (secs, shown) in [
            (0, "0s"),
            (90, "90s"),
            (900, "15m"),
            (3600, "1h"),
            (86_400 * 30, "30d"),
        ] {
            assert_eq!(Seconds(secs).to_string(), shown);
        }
        assert_eq!(Seconds::minutes(15), Seconds(900));
        assert_eq!(Seconds::hours(2), Seconds(7200));
        assert_eq!(Seconds::days(7), Seconds(604_800));
    }
}
