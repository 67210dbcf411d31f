//! Free text of records (titles, names, brands, tags, URLs): printable characters only
//! and a length cap, so no NUL or line break reaches a Subject header or a page, and a
//! 100 KB name is refused at the edge instead of making a 100 KB Subject.

/// A customer's name, a brand, a category segment: characters (not bytes).
pub const MAX_NAME_CHARS: usize = 200;
/// A product's title, a whole category path.
pub const MAX_TITLE_CHARS: usize = 500;
/// One tag.
pub const MAX_TAG_CHARS: usize = 100;
/// A BCP 47 locale tag ("en-US"); 35 is the longest tag RFC 5646 asks software to keep.
pub const MAX_LOCALE_CHARS: usize = 35;
/// A product or image URL (the de-facto limit of browsers and mail clients).
pub const MAX_URL_CHARS: usize = 2048;

/// Text on one line: no control character (C0, DEL, C1) except, when `tab` is true, the
/// tab (harmless: subjects and pages collapse it to a space); at most `max` characters.
pub fn check_text(s: &str, max: usize, tab: bool) -> Result<(), String> {
    let bad = s
        .chars()
        .enumerate()
        .find(|&(_, c)| c.is_control() && !(tab && c == '\t'));
    if let Some((i, c)) = bad {
        let what = match c {
            '\n' | '\r' => "a line break",
            '\0' => "a NUL character",
            '\t' => "a tab",
            _ => "a control character",
        };
        return Err(format!(
            "contains {what} (U+{:04X}) at character {}; only printable text is allowed",
            c as u32,
            i + 1
        ));
    }
    // Counting stops early: a 100 MB value costs no more than a long one.
    let n = s.chars().take(max + 1).count();
    if n > max {
        return Err(format!(
            "is {} characters long; at most {max} are allowed",
            s.chars().count()
        ));
    }
    Ok(())
}

/// The URL without its password, for messages and logs (`postgres://u:***@host/db`).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_length() {
        assert!(check_text("Ada Lovelace", 200, true).is_ok());
        assert!(check_text("Zoë 😀\tx", 200, true).is_ok());
        assert!(
            check_text("a\tb", 200, false)
                .unwrap_err()
                .contains("a tab")
        );
        let e = check_text("Ada\0", 200, true).unwrap_err();
        assert!(e.contains("NUL") && e.contains("character 4"), "{e}");
        assert!(
            check_text("a\nb", 200, true)
                .unwrap_err()
                .contains("line break")
        );
        assert!(check_text("a\u{7f}", 200, true).is_err());
        assert!(check_text("a\u{85}", 200, true).is_err());
        assert!(check_text(&"é".repeat(200), 200, true).is_ok());
        let e = check_text(&"é".repeat(201), 200, true).unwrap_err();
        assert_eq!(e, "is 201 characters long; at most 200 are allowed");
    }
}
