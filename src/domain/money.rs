//! Money in minor units (cents) of the store currency. Decimal strings in, exact
//! integers inside: no float ever touches a price.

use std::fmt;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    pub const fn from_minor(minor: i64) -> Self {
        Self(minor)
    }
    pub const fn minor(self) -> i64 {
        self.0
    }
    /// Parses a non-negative decimal string with at most two decimals ("24.99", "5",
    /// "0.5").
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        if s.starts_with('-') {
            return Err(format!("{s:?} is negative"));
        }
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !digits(whole)
            || !digits(frac)
            || (s.contains('.') && frac.is_empty())
        {
            return Err(format!("{s:?} is not a decimal"));
        }
        if frac.len() > 2 {
            return Err(format!("{s:?} has more than two decimals"));
        }
        let whole: i64 = whole
            .parse()
            .ok()
            .filter(|w: &i64| *w < 1_000_000_000_000)
            .ok_or_else(|| format!("{s:?} is too large"))?;
        let frac: i64 = format!("{frac:0<2}").parse().unwrap_or(0);
        Ok(Self(whole * 100 + frac))
    }
    pub fn times(self, n: i64) -> Self {
        Self(self.0.saturating_mul(n))
    }
    /// Decimal string with two decimals, the way it came in ("24.99").
    pub fn decimal(self) -> String {
        format!("{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.decimal())
    }
}

impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, o: Money) -> Money {
        Money(self.0.saturating_add(o.0))
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money(0), |a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_strings_exactly() {
        assert_eq!(Money::parse("24.99").unwrap().minor(), 2499);
        assert_eq!(Money::parse("5").unwrap().minor(), 500);
        assert_eq!(Money::parse("0.5").unwrap().minor(), 50);
        assert_eq!(Money::parse("299.00").unwrap().decimal(), "299.00");
    }

    #[test]
    fn refuses_bad_money() {
        for bad in ["abc", "-1.00", "", "1.234", "1.", ".5", "1e3", "1,00"] {
            assert!(Money::parse(bad).is_err(), "{bad}");
        }
    }
}
