//! Money in minor units (cents) of the store currency. Decimal strings in, exact
//! integers inside: no float ever touches a price.

use super::shown;
use std::fmt;

/// Prices are below a trillion units: far above any real price, and `times` and sums of
/// many stay far from `i64` overflow.
const MAX_WHOLE: i64 = 1_000_000_000_000;

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
    /// Parses a non-negative decimal string: digits, optionally a point and one or two
    /// more digits ("24.99", "5", "0.5"). Nothing else: no spaces, sign, exponent, hex,
    /// comma or thousands separator, so a malformed export is refused rather than guessed.
    pub fn parse(raw: &str) -> Result<Self, String> {
        const EXPECTED: &str =
            "expected digits with an optional point and one or two decimals, like \"24.99\"";
        let q = shown(raw);
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if raw.is_empty() {
            return Err(format!("is empty; {EXPECTED}"));
        }
        if raw.trim() != raw {
            return Err(format!("{q} has surrounding spaces; {EXPECTED}"));
        }
        let (whole, frac) = raw.split_once('.').unwrap_or((raw, "00"));
        if let Some(unsigned) = whole.strip_prefix('-') {
            return Err(if digits(unsigned) && digits(frac) {
                format!("{q} is negative; prices are 0 or more")
            } else {
                format!("{q} is not a decimal: {EXPECTED}")
            });
        }
        if whole.starts_with('+') {
            return Err(format!("{q} has a sign; {EXPECTED}"));
        }
        if !digits(whole) || !digits(frac) {
            return Err(format!("{q} is not a decimal: {EXPECTED}"));
        }
        if frac.len() > 2 {
            return Err(format!("{q} has more than two decimals"));
        }
        let whole: i64 = whole
            .parse()
            .ok()
            .filter(|w: &i64| *w < MAX_WHOLE)
            .ok_or_else(|| format!("{q} is too large; at most {}.99", MAX_WHOLE - 1))?;
        let frac: i64 = format!("{frac:0<2}").parse().unwrap_or(0);
        Ok(Self(whole * 100 + frac))
    }
    pub fn times(self, n: i64) -> Self {
        Self(self.0.saturating_mul(n))
    }
    /// Decimal string with two decimals, the way it came in ("24.99").
    pub fn decimal(self) -> String {
        // Sign first: `-150 % 100` is -50, which would print "-1.-50".
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        format!("{sign}{}.{:02}", a / 100, a % 100)
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
        assert_eq!(Money(-150).decimal(), "-1.50");
        assert_eq!(Money(-5).decimal(), "-0.05");
    }

    #[test]
    fn refuses_bad_money() {
        for bad in [
            "abc", "-1.00", "", "1.234", "1.", ".5", "1e3", "1,00", " 1.00", "1.00 ", "+1", "0x10",
            "1 000", "1_000", "١٢", "-", "--1", "1.-5", "NaN", "inf",
        ] {
            let why = Money::parse(bad).unwrap_err();
            assert!(why.len() < 200, "{why}");
        }
        assert!(Money::parse(" 1.00").unwrap_err().contains("spaces"));
        assert!(Money::parse("+1").unwrap_err().contains("sign"));
        assert!(Money::parse("-1.00").unwrap_err().contains("negative"));
        for why in ["1e3", "0x10", "1,00"].map(|b| Money::parse(b).unwrap_err()) {
            assert!(why.contains("is not a decimal: expected digits"), "{why}");
        }
        assert!(Money::parse("999999999999.99").is_ok());
        assert!(
            Money::parse("1000000000000")
                .unwrap_err()
                .contains("too large")
        );
        assert!(Money::parse(&"9".repeat(100_000)).unwrap_err().len() < 200);
    }
}
