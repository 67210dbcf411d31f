//! Parsed domain values. Raw input (JSON, CSV, HTTP bodies) becomes these types at the
//! edge; inside the crate a value of one of these types is known to be well formed.
//! Pure: no I/O, no dependency on other modules of the crate.

mod campaign;
mod followup;
mod ids;
mod money;
mod records;
mod text;
mod time;

pub use campaign::{CampaignKey, HoldoutShare, ScheduleRule, Strategy, Trigger};
pub use followup::{
    FollowupEvent, FollowupState, IllegalTransition, SkipReason, next as next_state,
    sources as legal_sources,
};
pub use ids::{CampaignName, CustomerId, EmailAddress, OrderId, ProductId};
pub use money::Money;
pub(crate) use records::kind as json_kind;
pub use records::{
    CategoryPath, Customer, Event, EventKind, FieldError, Order, OrderItem, OrderStatus, Product,
};
pub use text::redact;
pub use text::{MAX_LOCALE_CHARS, MAX_NAME_CHARS, MAX_TAG_CHARS, MAX_TITLE_CHARS, MAX_URL_CHARS};
pub use time::{Timestamp, parse_duration, parse_rfc3339};

/// A value quoted for an error message, escaped (no raw control character reaches a
/// terminal) and cut to about 60 bytes: a 100 KB input must not make a 100 KB message.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 60;
    let mut out = String::from('"');
    for c in s.chars() {
        let escaped: String = c.escape_debug().collect();
        if out.len() + escaped.len() > MAX {
            return format!("{out}\"… ({} characters)", s.chars().count());
        }
        out.push_str(&escaped);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn shown_values_are_escaped_and_short() {
        assert_eq!(super::shown("a\0b"), "\"a\\0b\"");
        let long = super::shown(&"\u{3347a}".repeat(1000));
        assert!(
            long.len() < 90 && long.ends_with("… (1000 characters)"),
            "{long}"
        );
        assert!(!long.chars().any(char::is_control));
    }
}
