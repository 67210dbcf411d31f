//! Instants and durations. Instants are milliseconds since the Unix epoch (UTC), which
//! both database engines store as BIGINT and compare cheaply.

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Self(Utc::now().timestamp_millis())
    }
    pub fn millis(self) -> i64 {
        self.0
    }
    pub fn plus(self, d: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }
    pub fn minus(self, d: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_sub(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }
    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.0).unwrap_or_default()
    }
    pub fn rfc3339(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Secs, true)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

/// RFC 3339 with an explicit offset ("2024-06-01T03:36:35Z", "…+05:45").
pub fn parse_rfc3339(raw: &str) -> Result<Timestamp, String> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| Timestamp(t.timestamp_millis()))
        .map_err(|e| format!("{} is not an RFC 3339 time ({e})", super::shown(raw)))
}

/// A humane duration: "0s", "15m", "3d", "90d", "1h 30m".
pub fn parse_duration(raw: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(raw.trim()).map_err(|e| {
        format!(
            "{} is not a duration like \"15m\" or \"3d\" ({e})",
            super::shown(raw)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_needs_offset_and_real_dates() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z").unwrap().0, 1000);
        assert_eq!(parse_rfc3339("1970-01-01T05:45:01+05:45").unwrap().0, 1000);
        assert!(parse_rfc3339("2024-06-01 10:00:00").is_err());
        assert!(parse_rfc3339("2024-06-01T10:00:00").is_err());
        assert!(parse_rfc3339("2024-02-30T10:00:00Z").is_err());
        assert!(parse_rfc3339("2024-02-01T25:00:00Z").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3d").unwrap().as_secs(), 3 * 86400);
        assert_eq!(parse_duration("0s").unwrap().as_secs(), 0);
        assert!(parse_duration("soon").is_err());
    }
}
