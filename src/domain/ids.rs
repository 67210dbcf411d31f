//! Identifier and address newtypes, each with one `parse` constructor.

use super::shown;
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

/// An e-mail address the mailer will accept. Checked with lettre's mailbox parser, the
/// one `mail::build_message` runs on `To` at send time, so an address imported is an
/// address that can be sent to; on top of it the limits of RFC 5321 (254 bytes, 64 before
/// the `@`) and a host name with a dot. Quoted local parts are refused (lettre would send
/// to the unquoted form); an international domain is stored in its ASCII form
/// (`bücher.de` → `xn--bcher-kva.de`), which every relay accepts without SMTPUTF8.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

/// RFC 5321 §4.5.3.1: a path is at most 256 octets with its angle brackets.
const MAX_ADDRESS: usize = 254;
const MAX_LOCAL: usize = 64;

impl EmailAddress {
    /// Surrounding whitespace is trimmed; everything else must already be an address.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        if s.is_empty() {
            return Err("is empty".into());
        }
        let q = shown(s);
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{q} contains a space or a control character"));
        }
        let (local, domain) = match s.matches('@').count() {
            0 => return Err(format!("{q} has no @")),
            1 => s.split_once('@').unwrap_or_default(),
            _ => return Err(format!("{q} has more than one @")),
        };
        if local.is_empty() || domain.is_empty() {
            return Err(format!("{q} needs text on both sides of @"));
        }
        if local.contains('"') {
            return Err(format!(
                "{q} has a quoted local part, which is not accepted"
            ));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(format!(
                "{q}: the part before @ must not start or end with a dot or have two in a row"
            ));
        }
        if local.len() > MAX_LOCAL {
            return Err(format!(
                "{q}: the part before @ is {} bytes long; at most {MAX_LOCAL} are allowed",
                local.len()
            ));
        }
        let domain = host_name(domain).map_err(|why| format!("{q}: domain {why}"))?;
        let address = format!("{local}@{domain}");
        if address.len() > MAX_ADDRESS {
            return Err(format!(
                "{q} is {} bytes long; at most {MAX_ADDRESS} are allowed",
                address.len()
            ));
        }
        // The mailer's own parser has the last word (atext rules of RFC 5322).
        match address.parse::<lettre::message::Mailbox>() {
            Ok(m) if m.name.is_none() && m.email.to_string() == address => Ok(Self(address)),
            Ok(_) => Err(format!("{q} is not a plain address")),
            Err(e) => Err(format!(
                "{q} is refused by the mailer: {}",
                lettre_reason(e)
            )),
        }
    }

    /// A value this program stored itself, possibly under older, laxer rules: reading it
    /// back must not fail, and the mailer checks it again at send time (a refused address
    /// ends that follow-up `failed` with the reason, not the whole batch).
    pub fn stored(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The ASCII host name of an address's domain: IDNA for non-ASCII names, then letters,
/// digits and hyphens in at least two labels of 1–63 characters.
fn host_name(domain: &str) -> Result<String, String> {
    let ascii = if domain.is_ascii() {
        domain.to_owned()
    } else {
        idna::domain_to_ascii_strict(domain)
            .map_err(|_| "is not a valid international domain name".to_owned())?
    };
    let labels: Vec<&str> = ascii.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) || ascii.len() > 253 {
        return Err(
            "is not a host name: expected labels of letters, digits and hyphens \
             joined by dots, like example.com"
                .to_owned(),
        );
    }
    // RFC 3696 §2: a top-level domain is never all digits (that is an IP address, which
    // SMTP would want as a literal in brackets).
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("is not a host name: its last label cannot be all digits".to_owned());
    }
    Ok(ascii)
}

/// The domain is a checked host name by then, so a refusal is about the local part.
fn lettre_reason(e: lettre::address::AddressError) -> &'static str {
    match e {
        lettre::address::AddressError::InvalidDomain => "the domain is not valid",
        _ => {
            "the part before @ has a character an address cannot have \
             (letters, digits, dots and !#$%&'*+-/=?^_`{|}~ are allowed)"
        }
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
    fn email_agrees_with_the_mailer_and_rfc5321() {
        let ok = |a: &str| EmailAddress::parse(a).map(|e| e.0);
        assert_eq!(ok("user@bücher.de").unwrap(), "user@xn--bcher-kva.de");
        assert_eq!(
            ok(" o'brien+tag@Example.COM ").unwrap(),
            "o'brien+tag@Example.COM"
        );
        for (bad, why) in [
            ("a@b.c@example.com", "more than one @"),
            ("\"john\"@example.com", "quoted local part"),
            ("a.@example.com", "dot"),
            ("a@example.com.", "not a host name"),
            ("a@exa_mple.com", "not a host name"),
            ("a@1.2.3.4", "all digits"),
            ("a(b)@example.com", "a character an address cannot have"),
            ("Name <a@example.com>", "space"),
        ] {
            let e = EmailAddress::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(
            EmailAddress::parse(&long_local)
                .unwrap_err()
                .contains("at most 64")
        );
        let long = format!(
            "{}@{}.com",
            "a".repeat(60),
            vec!["b".repeat(60); 4].join(".")
        );
        assert!(
            EmailAddress::parse(&long)
                .unwrap_err()
                .contains("at most 254")
        );
        let huge = "a".repeat(100_000);
        assert!(EmailAddress::parse(&huge).unwrap_err().len() < 200);
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
