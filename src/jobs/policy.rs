//! Small, replaceable policies the worker applies: retry backoff, quiet hours, the
//! weekly cap. Each takes the clock's "now" as input so tests can fix it.

use crate::config::QuietHours;
use crate::domain::Timestamp;
use chrono::{TimeZone, Timelike};
use std::time::Duration;

/// Exponential backoff with ±20% jitter: base × 2^(attempt−1), capped at `max`.
/// `jitter` is a number in [0, 1) (random in production, fixed in tests).
pub fn backoff(attempt: i64, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = (attempt.clamp(1, 32) - 1) as u32;
    let raw = base.saturating_mul(2u32.saturating_pow(exp)).min(max);
    raw.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

/// When quiet hours cover `now` in `tz`, the first instant after they end.
pub fn quiet_until(q: &QuietHours, tz: chrono_tz::Tz, now: Timestamp) -> Option<Timestamp> {
    let local = tz.from_utc_datetime(&now.to_datetime().naive_utc());
    let t = local.time().with_nanosecond(0)?;
    if !q.contains(t) {
        return None;
    }
    // The end is today when it is later than now, else tomorrow.
    let mut date = local.date_naive();
    if q.end <= t {
        date = date.succ_opt()?;
    }
    let end = date.and_time(q.end);
    // A DST gap can skip the end time: take the first valid instant after it.
    let resolved = tz.from_local_datetime(&end).earliest().or_else(|| {
        tz.from_local_datetime(&(end + chrono::Duration::hours(1)))
            .earliest()
    })?;
    Some(Timestamp(resolved.timestamp_millis()))
}

/// With `sent` (this customer's sends in the last 7 days) at the cap, when the next one
/// is allowed.
pub fn cap_frees_at(sent: &[Timestamp], cap: u32, now: Timestamp) -> Option<Timestamp> {
    if (sent.len() as u64) < cap as u64 {
        return None;
    }
    let mut s = sent.to_vec();
    s.sort();
    // The oldest send that must leave the 7-day window for one more to fit.
    let idx = s.len() - cap as usize;
    Some(Timestamp(s[idx].0 + 7 * 86_400_000 + 1).max(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::parse_rfc3339;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_secs(60);
        let m = Duration::from_secs(3600);
        assert_eq!(backoff(1, b, m, 0.5), Duration::from_secs(60));
        assert_eq!(backoff(2, b, m, 0.5), Duration::from_secs(120));
        assert_eq!(backoff(10, b, m, 0.5), Duration::from_secs(3600));
        assert!(backoff(1, b, m, 0.0) >= Duration::from_secs(48));
        assert!(backoff(1, b, m, 0.999) <= Duration::from_secs(72));
    }

    #[test]
    fn quiet_hours_in_the_customers_zone() {
        let q = QuietHours::parse("21:00-08:00").unwrap().unwrap();
        // 02:00 UTC is 21:00 in New York (EST) → quiet until 08:00 EST = 13:00 UTC.
        let now = parse_rfc3339("2025-01-15T02:00:00Z").unwrap();
        let ny: chrono_tz::Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            quiet_until(&q, ny, now).unwrap().rfc3339(),
            "2025-01-15T13:00:00Z"
        );
        // The same instant is 07:45 in Kathmandu (+05:45) → quiet until 08:00 local.
        let ktm: chrono_tz::Tz = "Asia/Kathmandu".parse().unwrap();
        assert_eq!(
            quiet_until(&q, ktm, now).unwrap().rfc3339(),
            "2025-01-15T02:15:00Z"
        );
        // 15:00 UTC is 10:00 in New York: not quiet.
        assert!(quiet_until(&q, ny, parse_rfc3339("2025-01-15T15:00:00Z").unwrap()).is_none());
    }

    #[test]
    fn cap_frees_a_week_after_the_oldest_counted_send() {
        let day = 86_400_000;
        let now = Timestamp(10 * day);
        assert_eq!(cap_frees_at(&[Timestamp(5 * day)], 2, now), None);
        assert_eq!(
            cap_frees_at(&[Timestamp(5 * day), Timestamp(4 * day)], 2, now),
            Some(Timestamp(11 * day + 1))
        );
    }
}
