//! Identifier and address newtypes, each with one `parse` constructor.

use std::fmt;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $what:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl $name {
            /// Accepts a non-empty string of at most 255 characters without control
            /// characters or surrounding whitespace.
            pub fn parse(raw: &str) -> Result<Self, String> {
                parse_id(raw, $what).map(Self)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A catalog product's id ("P00001").
    ProductId,
    "product id"
);
id_type!(
    /// A customer's id ("C000001").
    CustomerId,
    "customer id"
);
id_type!(
    /// An order's id ("O00000001").
    OrderId,
    "order id"
);
id_type!(
    /// A campaign's name as written in the config ("complete_your_setup").
    CampaignName,
    "campaign name"
);

fn parse_id(raw: &str, what: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if raw.trim() != raw {
        return Err(format!("{what} has surrounding whitespace"));
    }
    if raw.chars().count() > 255 {
        return Err(format!("{what} is longer than 255 characters"));
    }
    if raw.chars().any(char::is_control) {
        return Err(format!("{what} contains a control character"));
    }
    Ok(raw.to_owned())
}

/// An e-mail address: one `@`, a non-empty local part, a domain with a dot, no spaces.
/// Deliberately lenient beyond that: the SMTP server is the final judge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        if s.is_empty() {
            return Err("is empty".into());
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(format!("{s:?} has no @"));
        };
        if local.is_empty() || domain.is_empty() {
            return Err(format!("{s:?} needs text on both sides of @"));
        }
        if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
            return Err(format!("{s:?} has no valid domain"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) || s.len() > 254 {
            return Err(format!("{s:?} contains spaces or is too long"));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_empty_and_padded() {
        assert!(ProductId::parse("P1").is_ok());
        assert!(ProductId::parse("").is_err());
        assert!(ProductId::parse(" P1").is_err());
        assert!(ProductId::parse("P\n1").is_err());
    }

    #[test]
    fn email_needs_at_and_domain() {
        assert!(EmailAddress::parse("a@example.com").is_ok());
        assert!(EmailAddress::parse("jack.nowak+shop@example.com").is_ok());
        for bad in [
            "",
            "a.example.com",
            "@example.com",
            "a@",
            "a@b",
            "a b@example.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
