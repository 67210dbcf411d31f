//! Template filters and functions registered on every `Tera` instance: `money`,
//! `local_date`, `utm` and `pluralize`. Each is a plain function over `serde_json`
//! values so it can be unit-tested without a template.

use chrono::{DateTime, TimeZone, Utc};
use std::collections::HashMap;
use tera::{Error, Result, Tera, Value};

/// Registers every filter (and the `pluralize` function) on `tera`.
pub(crate) fn register(tera: &mut Tera) {
    tera.register_filter("money", money_filter);
    tera.register_filter("local_date", local_date_filter);
    tera.register_filter("utm", utm_filter);
    // Replaces Tera's built-in `pluralize` with the same semantics (so existing
    // templates keep working) but documented and tested here.
    tera.register_filter("pluralize", pluralize_filter);
    tera.register_function("pluralize", pluralize_function);
}

fn str_arg<'a>(
    args: &'a HashMap<String, Value>,
    filter: &str,
    name: &str,
) -> Result<Option<&'a str>> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::msg(format!(
            "Filter `{filter}`: argument `{name}` must be a string, got {other}"
        ))),
    }
}

// ---------------------------------------------------------------- money

/// `{{ item.price | money(currency=store.currency, locale=customer.locale) }}`:
/// minor units (2499) → "$24.99". Defaults: currency "USD", locale "en-US".
fn money_filter(value: &Value, args: &HashMap<String, Value>) -> Result<Value> {
    let minor = match value {
        Value::Number(n) => n.as_i64().ok_or_else(|| {
            Error::msg(format!(
                "Filter `money` expects minor units (an integer), got {n}"
            ))
        })?,
        other => {
            return Err(Error::msg(format!(
                "Filter `money` expects minor units (an integer), got {other}"
            )));
        }
    };
    let currency = str_arg(args, "money", "currency")?.unwrap_or("USD");
    let locale = str_arg(args, "money", "locale")?.unwrap_or("en-US");
    Ok(Value::String(format_money(minor, currency, locale)))
}

/// Formats minor units (always hundredths, as `domain::Money` stores them) for a
/// currency and a locale. Only the language part of the locale matters:
/// English-style ("$1,234.50") unless the language writes a decimal comma, in which
/// case the symbol follows ("1.234,50 €", "1 234,50 €").
pub fn format_money(minor: i64, currency: &str, locale: &str) -> String {
    const NBSP: char = '\u{a0}';
    let lang = locale
        .split(['-', '_'])
        .next()
        .unwrap_or("en")
        .to_ascii_lowercase();
    let (group, decimal) = match lang.as_str() {
        "de" | "es" | "it" | "nl" | "pt" | "da" | "id" | "tr" | "el" | "ro" | "hr" | "sl" => {
            ('.', ',')
        }
        "fr" | "ru" | "pl" | "cs" | "sk" | "sv" | "nb" | "no" | "fi" | "uk" | "hu" | "bg"
        | "lt" | "lv" | "et" => (NBSP, ','),
        _ => (',', '.'),
    };
    let code = currency.to_ascii_uppercase();
    let symbol = match code.as_str() {
        "USD" => "$".to_owned(),
        "EUR" => "€".to_owned(),
        "GBP" => "£".to_owned(),
        "JPY" | "CNY" => "¥".to_owned(),
        "INR" => "₹".to_owned(),
        "CAD" => "CA$".to_owned(),
        "AUD" => "A$".to_owned(),
        "NZD" => "NZ$".to_owned(),
        _ => code.clone(),
    };
    let abs = minor.unsigned_abs();
    let whole = (abs / 100).to_string();
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(group);
        }
        grouped.push(c);
    }
    let number = format!("{grouped}{decimal}{:02}", abs % 100);
    let sign = if minor < 0 { "-" } else { "" };
    if decimal == ',' {
        format!("{sign}{number}{NBSP}{symbol}")
    } else if symbol.len() == 3 && symbol.chars().all(|c| c.is_ascii_uppercase()) {
        // An ISO code, not a symbol: keep it apart from the digits ("CHF 12.00").
        format!("{sign}{symbol}{NBSP}{number}")
    } else {
        format!("{sign}{symbol}{number}")
    }
}

// ---------------------------------------------------------------- local_date

/// `{{ order.completed_at | local_date(tz=customer.timezone, format="%B %-d, %Y") }}`:
/// an instant (RFC 3339 string or milliseconds since the epoch) as a date in an IANA
/// time zone. Defaults: tz "UTC", format "%B %-d, %Y" ("June 1, 2024").
fn local_date_filter(value: &Value, args: &HashMap<String, Value>) -> Result<Value> {
    let tz = str_arg(args, "local_date", "tz")?.unwrap_or("UTC");
    let format = str_arg(args, "local_date", "format")?.unwrap_or("%B %-d, %Y");
    local_date(value, tz, format)
        .map(Value::String)
        .map_err(Error::msg)
}

/// The function behind the `local_date` filter.
pub fn local_date(value: &Value, tz: &str, format: &str) -> std::result::Result<String, String> {
    let instant: DateTime<Utc> = match value {
        Value::Number(n) => n
            .as_i64()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(|| format!("Filter `local_date`: {n} is not a time in milliseconds"))?,
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map_err(|e| format!("Filter `local_date`: {s:?} is not an RFC 3339 time ({e})"))?
            .with_timezone(&Utc),
        other => {
            return Err(format!(
                "Filter `local_date` expects a time (RFC 3339 string or milliseconds), got {other}"
            ));
        }
    };
    let zone: chrono_tz::Tz = tz
        .parse()
        .map_err(|_| format!("Filter `local_date`: {tz:?} is not an IANA time zone"))?;
    // Validate the format first: chrono panics/errs at Display time on bad specifiers.
    let items: Vec<_> = chrono::format::StrftimeItems::new(format).collect();
    if items
        .iter()
        .any(|i| matches!(i, chrono::format::Item::Error))
    {
        return Err(format!(
            "Filter `local_date`: {format:?} is not a valid strftime format"
        ));
    }
    Ok(zone
        .from_utc_datetime(&instant.naive_utc())
        .format_with_items(items.into_iter())
        .to_string())
}

// ---------------------------------------------------------------- utm

/// `{{ item.url | utm(campaign=campaign.name) }}`: adds utm_source=aftercart,
/// utm_medium=email and utm_campaign=NAME, keeping the rest of the query and the
/// fragment as written.
fn utm_filter(value: &Value, args: &HashMap<String, Value>) -> Result<Value> {
    let Value::String(url) = value else {
        return Err(Error::msg(format!(
            "Filter `utm` expects a URL string, got {value}"
        )));
    };
    let campaign = str_arg(args, "utm", "campaign")?
        .ok_or_else(|| Error::msg("Filter `utm` expected an arg called `campaign`"))?;
    add_utm(url, campaign)
        .map(Value::String)
        .map_err(Error::msg)
}

/// The function behind the `utm` filter.
pub fn add_utm(url: &str, campaign: &str) -> std::result::Result<String, String> {
    // Parse only to refuse relative or broken links; the output is built from the
    // original text so existing parameters are not re-encoded.
    url::Url::parse(url)
        .map_err(|e| format!("Filter `utm`: {url:?} is not an absolute URL ({e})"))?;
    let (rest, fragment) = match url.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (url, None),
    };
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let key = p.split('=').next().unwrap_or("");
            !matches!(key, "utm_source" | "utm_medium" | "utm_campaign")
        })
        .map(str::to_owned)
        .collect();
    let ours = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("utm_source", "aftercart")
        .append_pair("utm_medium", "email")
        .append_pair("utm_campaign", campaign)
        .finish();
    pairs.push(ours);
    let mut out = format!("{base}?{}", pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Ok(out)
}

// ---------------------------------------------------------------- pluralize

/// `{{ n | pluralize(singular="item", plural="items") }}` → "item" when n is 1 (or -1),
/// else "items". Defaults: singular "", plural "s" (Tera's own semantics).
fn pluralize_filter(value: &Value, args: &HashMap<String, Value>) -> Result<Value> {
    let n = value
        .as_f64()
        .ok_or_else(|| Error::msg(format!("Filter `pluralize` expects a number, got {value}")))?;
    let singular = str_arg(args, "pluralize", "singular")?.unwrap_or("");
    let plural = str_arg(args, "pluralize", "plural")?.unwrap_or("s");
    Ok(Value::String(pluralize(n, singular, plural).to_owned()))
}

/// `{{ pluralize(n=3, singular="item", plural="items") }}`: the function form.
fn pluralize_function(args: &HashMap<String, Value>) -> Result<Value> {
    let n = args
        .get("n")
        .ok_or_else(|| Error::msg("Function `pluralize` expected an arg called `n`"))?;
    pluralize_filter(n, args)
}

/// English rule: singular for exactly one, plural otherwise (0 items, 2 items).
pub fn pluralize<'a>(n: f64, singular: &'a str, plural: &'a str) -> &'a str {
    if (n.abs() - 1.0).abs() < f64::EPSILON {
        singular
    } else {
        plural
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(pairs: &[(&str, Value)]) -> HashMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn money_formats_per_currency_and_locale() {
        assert_eq!(format_money(123450, "USD", "en-US"), "$1,234.50");
        assert_eq!(format_money(2499, "usd", "en"), "$24.99");
        assert_eq!(format_money(5, "USD", "en-US"), "$0.05");
        assert_eq!(format_money(100000000, "GBP", "en-GB"), "£1,000,000.00");
        assert_eq!(format_money(123450, "EUR", "de-DE"), "1.234,50\u{a0}€");
        assert_eq!(format_money(123450, "EUR", "fr_FR"), "1\u{a0}234,50\u{a0}€");
        assert_eq!(format_money(1200, "CHF", "en"), "CHF\u{a0}12.00");
        assert_eq!(format_money(-250, "USD", "en"), "-$2.50");
        let out = money_filter(
            &json!(123450),
            &args(&[("currency", json!("USD")), ("locale", json!("en-US"))]),
        )
        .unwrap();
        assert_eq!(out, json!("$1,234.50"));
        assert_eq!(
            money_filter(&json!(99), &HashMap::new()).unwrap(),
            json!("$0.99")
        );
        assert!(money_filter(&json!("12.00"), &HashMap::new()).is_err());
        assert!(money_filter(&json!(1.5), &HashMap::new()).is_err());
    }

    #[test]
    fn local_date_converts_to_the_zone() {
        // 2024-06-01T03:30:00Z is still May 31 in New York.
        let t = json!("2024-06-01T03:30:00Z");
        let ny = args(&[("tz", json!("America/New_York"))]);
        assert_eq!(local_date_filter(&t, &ny).unwrap(), json!("May 31, 2024"));
        assert_eq!(
            local_date_filter(&t, &HashMap::new()).unwrap(),
            json!("June 1, 2024")
        );
        let ms = json!(1_717_212_600_000_i64); // the same instant in milliseconds
        let fmt = args(&[
            ("tz", json!("Asia/Kathmandu")),
            ("format", json!("%Y-%m-%d %H:%M")),
        ]);
        assert_eq!(
            local_date_filter(&ms, &fmt).unwrap(),
            json!("2024-06-01 09:15")
        );
        assert!(local_date_filter(&t, &args(&[("tz", json!("Mars/Base"))])).is_err());
        assert!(local_date_filter(&json!("yesterday"), &HashMap::new()).is_err());
        assert!(local_date_filter(&t, &args(&[("format", json!("%Q"))])).is_err());
    }

    #[test]
    fn utm_adds_parameters_and_keeps_query_and_fragment() {
        assert_eq!(
            add_utm("https://shop.example.com/p/1", "upgrade").unwrap(),
            "https://shop.example.com/p/1?utm_source=aftercart&utm_medium=email&utm_campaign=upgrade"
        );
        assert_eq!(
            add_utm(
                "https://shop.example.com/p/1?color=red%20blue&utm_source=x#specs",
                "a b"
            )
            .unwrap(),
            "https://shop.example.com/p/1?color=red%20blue&utm_source=aftercart&utm_medium=email&utm_campaign=a+b#specs"
        );
        let out = utm_filter(
            &json!("https://shop.example.com/"),
            &args(&[("campaign", json!("complete_your_setup"))]),
        )
        .unwrap();
        assert!(
            out.as_str()
                .unwrap()
                .ends_with("utm_campaign=complete_your_setup")
        );
        assert!(utm_filter(&json!("https://x.example"), &HashMap::new()).is_err());
        assert!(add_utm("/relative/path", "c").is_err());
    }

    #[test]
    fn pluralize_picks_the_form() {
        let a = args(&[("singular", json!("item")), ("plural", json!("items"))]);
        assert_eq!(pluralize_filter(&json!(1), &a).unwrap(), json!("item"));
        assert_eq!(pluralize_filter(&json!(0), &a).unwrap(), json!("items"));
        assert_eq!(pluralize_filter(&json!(3), &a).unwrap(), json!("items"));
        assert_eq!(
            pluralize_filter(&json!(2), &HashMap::new()).unwrap(),
            json!("s")
        );
        let f = args(&[
            ("n", json!(1)),
            ("singular", json!("pick")),
            ("plural", json!("picks")),
        ]);
        assert_eq!(pluralize_function(&f).unwrap(), json!("pick"));
        assert!(pluralize_filter(&json!("two"), &a).is_err());
    }
}
