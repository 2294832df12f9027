//! Time arguments: `+30d` / `+12h` / `+90m` / `+45s` relative to now, RFC 3339, or unix seconds.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Parses a time argument to unix seconds, relative forms counted from `now`.
pub fn parse(text: &str, now: i64) -> Result<i64, String> {
    if let Some(rel) = text.strip_prefix('+') {
        let (num, unit) = rel.split_at(rel.len().saturating_sub(1));
        let n: i64 = num
            .parse()
            .map_err(|_| format!("{text:?}: expected +N followed by s, m, h or d"))?;
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(format!("{text:?}: unit must be s, m, h or d")),
        };
        return n
            .checked_mul(secs)
            .and_then(|d| now.checked_add(d))
            .ok_or_else(|| format!("{text:?} is out of range"));
    }
    if let Ok(unix) = text.parse::<i64>() {
        return Ok(unix);
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("{text:?} is neither +N[smhd], RFC 3339 nor unix seconds ({e})"))
}

/// Formats unix seconds as RFC 3339 (UTC), or the number itself if out of range.
pub fn format(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// The clock, unix seconds.
pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_absolute_and_garbage() {
        assert_eq!(parse("+30d", 1000), Ok(1000 + 30 * 86_400));
        assert_eq!(parse("+90m", 0), Ok(5400));
        assert_eq!(parse("2026-01-01T00:00:00Z", 0), Ok(1_767_225_600));
        assert_eq!(parse("1700000000", 0), Ok(1_700_000_000));
        assert!(parse("+30y", 0).unwrap_err().contains("unit"));
        assert!(parse("+9999999999999999d", 0)
            .unwrap_err()
            .contains("out of range"));
        assert!(parse("tomorrow", 0).unwrap_err().contains("neither"));
    }
}
