//! Human durations as written in the config: `200ms`, `1s`, `1.5s`, `2m`, `1h`.

use std::fmt;
use std::time::Duration;

/// Error returned for a malformed duration string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: expected a number followed by ms, s, m or h (e.g. \"200ms\", \"1s\")")]
pub struct DurationError {
    input: String,
}

/// Parses a duration such as `200ms`, `1s`, `1.5s`, `2m`, `1h`.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_string(),
    };
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(err());
    }
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(err()),
    };
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    let int: u64 = int_part.parse().map_err(|_| err())?;
    let mut millis = int.checked_mul(millis_per_unit).ok_or_else(err)?;
    if !frac_part.is_empty() {
        if frac_part.len() > 3 {
            return Err(err());
        }
        let frac: u64 = frac_part.parse().map_err(|_| err())?;
        let scale = 10u64.pow(frac_part.len() as u32);
        let extra = frac * millis_per_unit;
        if extra % scale != 0 {
            // Sub-millisecond precision is not meaningful for probe timers.
            return Err(err());
        }
        millis = millis.checked_add(extra / scale).ok_or_else(err)?;
    }
    Ok(Duration::from_millis(millis))
}

/// Formats a duration the way the config writes it (`200ms`, `1s`, `1500ms`).
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 3_600_000 == 0 && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 && ms > 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", "ms", "1", "1x", "1.s", ".5s", "1.0001s", "-1s", "1 s", "1ss",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formats_back() {
        assert_eq!(Human(Duration::from_millis(200)).to_string(), "200ms");
        assert_eq!(Human(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(Human(Duration::from_secs(2)).to_string(), "2s");
    }
}
