//! Durations (`"250ms"`, `"30s"`, `"10m"`, `"1h"`) and sizes (`"16KiB"`, `"10MiB"`) as written in
//! the configuration.

use std::time::Duration;

use super::sources::Problems;

/// Parses a duration such as `"250ms"`, `"30s"`, `"10m"`, `"1h"` or `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    // A bare number is ambiguous (seconds? milliseconds?): ask for a unit rather than guess.
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{text}\" has no unit"));
    }
    humantime::parse_duration(text).map_err(|_| format!("\"{text}\" is not a duration"))
}

/// Parses a size such as `"512"`, `"16KiB"`, `"10MiB"`, `"1GiB"` or `"10MB"` into bytes (the
/// `parse-size` crate: binary units for `KiB`/`MiB`/`GiB`, decimal for `kB`/`MB`/`GB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse_size::parse_size(text.trim()).map_err(|_| format!("\"{}\" is not a size", text.trim()))
}

/// A positive duration at `key`, or `default` when unset (a problem when zero or unreadable).
pub(super) fn duration(p: &mut Problems<'_>, key: &str, value: Option<&str>, default: Duration) -> Duration {
    match value.map(parse_duration) {
        None => default,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            p.push(key, "is zero", "give a positive duration such as \"30s\"");
            default
        }
        Some(Err(e)) => {
            p.push(key, e, "give a duration such as \"250ms\", \"30s\", \"10m\" or \"1h\"");
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
