//! Tests of the shipped templates, error locations on broken copies, escaping, CSS
//! inlining, the generated text part and hot reload.

use super::*;
use std::path::{Path, PathBuf};

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")
}

fn campaigns() -> Vec<(String, String)> {
    vec![
        ("complete_your_setup".into(), "complements".into()),
        ("upgrade".into(), "upgrades".into()),
        ("enhance".into(), "enhance".into()),
    ]
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of the shipped tree in a temp dir; returns (guard, templates dir).
fn broken_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("templates");
    copy_tree(&shipped_dir(), &dir);
    (tmp, dir)
}

/// Replaces `from` (which must occur) by `to` in `dir/name`; returns the new source.
fn edit(dir: &Path, name: &str, from: &str, to: &str) -> String {
    let path = dir.join(name);
    let src = std::fs::read_to_string(&path).unwrap();
    assert!(src.contains(from), "{name} lacks {from:?}");
    let new = src.replacen(from, to, 1);
    std::fs::write(&path, &new).unwrap();
    new
}

fn pos_of(src: &str, needle: &str) -> (usize, usize) {
    problem::line_col(src, src.find(needle).unwrap())
}

fn only_problem(dir: &Path) -> Problem {
    let problems = check(dir, &campaigns());
    assert_eq!(problems.len(), 1, "{problems:#?}");
    problems.into_iter().next().unwrap()
}

fn expect_at(p: &Problem, dir: &Path, name: &str, (line, column): (usize, usize)) {
    assert_eq!(p.file, format!("{}/{name}", dir.display()), "{p}");
    assert_eq!((p.line, p.column), (line, column), "{p}");
}

#[test]
fn embedded_copies_equal_the_files_on_disk() {
    let root = shipped_dir();
    let on_disk = read_tree(&root, "templates").unwrap();
    let embedded: BTreeMap<String, String> = embedded::EMBEDDED
        .iter()
        .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
        .collect();
    assert_eq!(
        on_disk.keys().collect::<Vec<_>>(),
        embedded.keys().collect::<Vec<_>>(),
        "add new template files to src/render/embedded.rs"
    );
    for (name, src) in &on_disk {
        assert_eq!(
            src, &embedded[name],
            "{name} differs from its embedded copy"
        );
    }
}

#[test]
fn shipped_templates_check_clean() {
    assert_eq!(check(&shipped_dir(), &campaigns()), vec![]);
    assert_eq!(Templates::embedded().unwrap().check(&campaigns()), vec![]);
    let t = Templates::load_or_embedded(Path::new("/nonexistent/templates")).unwrap();
    assert_eq!(
        t.campaigns(),
        vec!["complete_your_setup", "enhance", "upgrade"]
    );
}

#[test]
fn unclosed_block_points_at_the_opening_tag() {
    let (_tmp, dir) = broken_copy();
    let src = edit(
        &dir,
        "upgrade/body.html",
        "<h1>Hi",
        "{% if customer.name %}<h1>Hi",
    );
    let p = only_problem(&dir);
    expect_at(
        &p,
        &dir,
        "upgrade/body.html",
        pos_of(&src, "{% if customer.name %}"),
    );
    assert!(p.message.contains("endif"), "{p}");
}

#[test]
fn unknown_variable_is_located_in_the_source() {
    let (_tmp, dir) = broken_copy();
    let src = edit(
        &dir,
        "upgrade/body.html",
        "<h1>Hi {{ customer.first_name }}",
        "<h1>Hi {{ customer.nmae }}",
    );
    let p = only_problem(&dir);
    expect_at(&p, &dir, "upgrade/body.html", pos_of(&src, "customer.nmae"));
    assert!(p.message.contains("customer.nmae"), "{p}");
    assert!(
        p.to_string()
            .starts_with(&format!("{}/upgrade/body.html:", dir.display()))
    );
}

#[test]
fn unknown_filter_is_located_in_the_partial() {
    let (_tmp, dir) = broken_copy();
    let src = edit(
        &dir,
        "partials/product_card.html",
        "{{ item.reason }}",
        "{{ item.reason | shout }}",
    );
    let problems = check(&dir, &campaigns());
    // Both campaigns include the card; each reports the same place.
    assert!(!problems.is_empty());
    for p in &problems {
        expect_at(p, &dir, "partials/product_card.html", pos_of(&src, "shout"));
        assert!(p.message.contains("shout"), "{p}");
    }
}

#[test]
fn syntax_error_in_a_partial_names_the_partial() {
    let (_tmp, dir) = broken_copy();
    let src = edit(
        &dir,
        "partials/footer.html",
        "{{ store.postal_address }}",
        "{{ store.postal_address | }}",
    );
    let p = only_problem(&dir);
    let (line, _) = pos_of(&src, "store.postal_address |");
    assert_eq!(
        p.file,
        format!("{}/partials/footer.html", dir.display()),
        "{p}"
    );
    assert_eq!(p.line, line, "{p}");
    // pest points just after the dangling `|`.
    let (_, col) = pos_of(&src, " }}</p>");
    assert_eq!(p.column, col + 1, "{p}");
}

#[test]
fn missing_folder_and_files_are_problems() {
    let (_tmp, dir) = broken_copy();
    std::fs::remove_file(dir.join("upgrade/subject.txt")).unwrap();
    let mut c = campaigns();
    c.push(("winback".into(), "complements".into()));
    let problems = check(&dir, &c);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert_eq!(
        problems[0].file,
        format!("{}/upgrade/subject.txt", dir.display())
    );
    assert_eq!(problems[1].file, format!("{}/winback", dir.display()));
}

#[test]
fn footer_is_required_in_both_parts() {
    let (_tmp, dir) = broken_copy();
    edit(
        &dir,
        "partials/footer.txt",
        "{{ store.postal_address }}",
        "",
    );
    let problems = check(&dir, &campaigns());
    // Every shipped campaign has its own body.txt.
    assert_eq!(problems.len(), 3, "{problems:#?}");
    for (p, campaign) in problems
        .iter()
        .zip(["complete_your_setup", "upgrade", "enhance"])
    {
        assert!(p.file.ends_with(&format!("{campaign}/body.txt")), "{p:?}");
    }
    assert!(
        problems
            .iter()
            .all(|p| p.message.contains("postal address"))
    );
}

#[test]
fn html_is_escaped_but_subject_and_text_are_not() {
    let t = Templates::load(&shipped_dir()).unwrap();
    let ctx = sample_context("complete_your_setup", "complements");
    let r = t.render("complete_your_setup", &ctx).unwrap();
    assert_eq!(
        r.subject,
        "Ada, complete your setup with Cable <USB-C> & more"
    );
    assert!(
        r.text.contains("* Cable <USB-C> & more - $19.99"),
        "{}",
        r.text
    );
    assert!(
        r.html.contains("Cable &lt;USB-C&gt; &amp; more"),
        "{}",
        r.html
    );
    // Attribute values may keep `<` (valid HTML); text nodes must not.
    assert!(!r.html.contains("><USB-C>") && !r.html.contains(">Cable <USB-C>"));
    assert!(
        r.html.contains("alt=\"Cable <USB-C> &amp; more\""),
        "{}",
        r.html
    );
    assert_eq!(
        r.preheader.as_deref(),
        Some("3 picks that go with your order O00001234.")
    );
    assert!(
        r.html
            .contains("3 picks that go with your order O00001234.")
    );
    // Local date in the customer's zone: 03:36 UTC on June 1 is May 31 in New York.
    assert!(r.text.contains("May 31, 2024"), "{}", r.text);
    assert!(
        r.text
            .contains("utm_source=aftercart&utm_medium=email&utm_campaign=complete_your_setup")
    );
}

#[test]
fn css_is_inlined() {
    let t = Templates::load(&shipped_dir()).unwrap();
    let r = t
        .render("upgrade", &sample_context("upgrade", "upgrades"))
        .unwrap();
    assert!(
        !r.html.contains("<style"),
        "style block should be moved inline"
    );
    let card = r.html.find("class=\"product\"").expect("a product card");
    let tag_start = r.html[..card].rfind('<').unwrap();
    let tag = &r.html[tag_start..tag_start + r.html[tag_start..].find('>').unwrap()];
    assert!(tag.contains("style=\"") && tag.contains("border:"), "{tag}");
}

#[test]
fn generated_text_part_has_titles_address_and_unsubscribe() {
    // A content team's campaign without body.txt or preheader.txt: the text part is
    // generated from the HTML.
    let (_tmp, dir) = broken_copy();
    std::fs::remove_file(dir.join("upgrade/body.txt")).unwrap();
    std::fs::remove_file(dir.join("upgrade/preheader.txt")).unwrap();
    let t = Templates::load(&dir).unwrap();
    let ctx = sample_context("upgrade", "upgrades");
    let r = t.render("upgrade", &ctx).unwrap();
    for item in &ctx.items {
        assert!(
            r.text.contains(&item.title),
            "{} missing:\n{}",
            item.title,
            r.text
        );
    }
    assert!(r.text.contains(&ctx.store.postal_address), "{}", r.text);
    assert!(r.text.contains(&ctx.unsubscribe_url), "{}", r.text);
    // Prose is wrapped; link-list lines keep their URL whole however long.
    assert!(
        r.text
            .lines()
            .all(|l| l.chars().count() <= TEXT_WIDTH || is_link_line(l)),
        "{}",
        r.text
    );
    let link = add_utm(&ctx.items[0].url, "upgrade").unwrap();
    assert!(r.text.lines().any(|l| l.ends_with(&link)), "{}", r.text);
    assert!(
        !r.text.contains("{"),
        "no CSS in the text part:\n{}",
        r.text
    );
    assert!(!r.subject.contains('\n'));
    assert_eq!(r.preheader, None);
}

#[test]
fn first_name_falls_back_in_templates() {
    let t = Templates::embedded().unwrap();
    let mut ctx = sample_context("upgrade", "upgrades");
    ctx.customer = CustomerInfo::new("C1", None, "x@example.com", "de-DE", "Europe/Berlin");
    let r = t.render("upgrade", &ctx).unwrap();
    assert!(r.subject.starts_with("there, "), "{}", r.subject);
    assert!(r.html.contains("Hi there"));
    assert!(
        r.html.contains("1.999,00&nbsp;$"),
        "locale-aware prices: {}",
        r.html
    );
}

#[test]
fn reload_keeps_last_good_and_picks_up_good_changes() {
    let (_tmp, dir) = broken_copy();
    let live = LiveTemplates::load(&dir, &campaigns()).unwrap();
    let ctx = sample_context("upgrade", "upgrades");
    let before = live.current().render("upgrade", &ctx).unwrap().subject;
    assert_eq!(live.reload(&campaigns()), Ok(false), "nothing changed yet");

    edit(
        &dir,
        "upgrade/body.html",
        "{{ customer.first_name }}",
        "{{ customer.nmae }}",
    );
    let problems = live.reload(&campaigns()).unwrap_err();
    assert!(
        problems[0].message.contains("customer.nmae"),
        "{problems:?}"
    );
    assert_eq!(live.last_problems(), problems);
    assert_eq!(
        live.current().render("upgrade", &ctx).unwrap().subject,
        before
    );
    assert_eq!(
        live.reload(&campaigns()),
        Ok(false),
        "a refused change is reported once"
    );

    edit(
        &dir,
        "upgrade/body.html",
        "{{ customer.nmae }}",
        "{{ customer.first_name }}",
    );
    edit(
        &dir,
        "upgrade/subject.txt",
        "ready for an upgrade?",
        "time to upgrade?",
    );
    edit(
        &dir,
        "upgrade/subject.txt",
        "customers like you",
        "people like you",
    );
    assert_eq!(live.reload(&campaigns()), Ok(true));
    assert!(live.last_problems().is_empty());
    let after = live
        .clone()
        .current()
        .render("upgrade", &ctx)
        .unwrap()
        .subject;
    assert!(
        after.starts_with("Ada, people like you upgraded to"),
        "{after}"
    );
}

/// Every line of the header block (bytes before the blank line) of the message the
/// mailer builds from `r`.
fn header_lines(r: Rendered) -> Vec<Vec<u8>> {
    let email = crate::mail::OutgoingEmail {
        from: "Shop <shop@example.com>".into(),
        to: "a@example.com".into(),
        subject: r.subject,
        html: r.html,
        text: r.text,
        message_id: "fu-1@example.com".into(),
        headers: vec![],
    };
    let raw = crate::mail::build_message(&email).unwrap().formatted();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    raw[..end]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
        .collect()
}

#[test]
fn a_huge_name_and_title_give_a_capped_subject_and_header_lines_within_998() {
    let t = Templates::load(&shipped_dir()).unwrap();
    for (name, title) in [
        ("A".repeat(100_000), "T".repeat(100_000)),
        ("Zoë😀".repeat(20_000), "Kamera ☕ ".repeat(20_000)),
    ] {
        let mut ctx = sample_context("upgrade", "upgrades");
        ctx.customer = CustomerInfo::new("C1", Some(name), "a@example.com", "en-US", "UTC");
        ctx.items[0].title = title;
        let r = t.render("upgrade", &ctx).unwrap();
        assert_eq!(
            r.subject.chars().count(),
            MAX_SUBJECT_CHARS,
            "{}",
            r.subject
        );
        assert!(r.subject.ends_with('…'));

        for line in header_lines(r) {
            assert!(line.len() <= 998, "a header line of {} bytes", line.len());
        }
    }
}

#[test]
fn control_characters_never_reach_the_subject() {
    let t = Templates::load(&shipped_dir()).unwrap();
    let mut ctx = sample_context("upgrade", "upgrades");
    ctx.customer = CustomerInfo::new(
        "C1",
        Some("Ada\0\u{1}\u{7f}\u{9b}".into()),
        "a@example.com",
        "en-US",
        "UTC",
    );
    ctx.items[0].title = "Lens\0 Cap\r\nBcc: x@evil.example".into();
    let r = t.render("upgrade", &ctx).unwrap();
    assert!(!r.subject.chars().any(char::is_control), "{:?}", r.subject);
    assert!(r.subject.starts_with("Ada, "), "{}", r.subject);
    assert!(
        r.subject.ends_with("Lens Cap Bcc: x@evil.example"),
        "{}",
        r.subject
    );

    for line in header_lines(r) {
        assert!(
            !line.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f),
            "{:?}",
            String::from_utf8_lossy(&line)
        );
        assert!(!line.starts_with(b"Bcc:"));
    }
}

#[test]
fn subjects_are_cut_on_a_character_boundary() {
    assert_eq!(capped("abc".into(), 3), "abc");
    assert_eq!(capped("abcd".into(), 3), "ab…");
    assert_eq!(capped("a ☕d".into(), 3), "a…");
    assert_eq!(one_line(" a\0b \n\u{1} c "), "ab c");
}

#[test]
fn upgrade_fallback_picks_are_not_sold_as_what_customers_did() {
    let t = Templates::load(&shipped_dir()).unwrap();
    let mut ctx = sample_context("upgrade", "upgrades");
    let mined = t.render("upgrade", &ctx).unwrap();
    assert!(mined.subject.contains("customers like you upgraded to"));
    // The sample's second item is a fallback: the body no longer claims upgrades.
    assert!(!mined.html.contains("later upgraded to"), "{}", mined.html);
    for item in &mut ctx.items {
        item.fallback = true;
    }
    let r = t.render("upgrade", &ctx).unwrap();
    assert_eq!(
        r.subject,
        "Ada, a step up from your Lumix G7 Mirrorless Camera: Lumix S5 II Mirrorless Camera"
    );
    assert!(!r.html.contains("later upgraded"), "{}", r.html);
    assert!(
        r.html.contains("A step up from your Lumix G7"),
        "{}",
        r.html
    );
    ctx.items.truncate(1);
    ctx.items[0].fallback = false;
    let r = t.render("upgrade", &ctx).unwrap();
    assert!(r.html.contains("later upgraded to 1 product"), "{}", r.html);
}

#[test]
fn shipped_text_parts_link_each_item_once() {
    let t = Templates::load(&shipped_dir()).unwrap();
    for (campaign, strategy) in campaigns() {
        let ctx = sample_context(&campaign, &strategy);
        let r = t.render(&campaign, &ctx).unwrap();
        for item in &ctx.items {
            let link = add_utm(&item.url, &campaign).unwrap();
            assert_eq!(
                r.text.matches(&link).count(),
                1,
                "{campaign}: {link} should appear once:\n{}",
                r.text
            );
        }
        // No html2text link list ("[2]: https://…") in a hand-written text part.
        assert!(!r.text.lines().any(is_link_line), "{campaign}:\n{}", r.text);
        assert!(r.preheader.is_some(), "{campaign} has a preheader");
    }
}

#[test]
fn upgrade_text_claims_customers_upgraded_only_for_mined_picks() {
    let t = Templates::load(&shipped_dir()).unwrap();
    let mut ctx = sample_context("upgrade", "upgrades");
    // The sample holds one mined pick and one fallback.
    let r = t.render("upgrade", &ctx).unwrap();
    assert!(r.text.contains("a step up from"), "{}", r.text);
    assert!(!r.text.contains("later upgraded"), "{}", r.text);
    assert!(!r.text.contains("other customers went next"), "{}", r.text);
    ctx.items.retain(|i| !i.fallback);
    let r = t.render("upgrade", &ctx).unwrap();
    assert!(r.text.contains("later upgraded to 1 product"), "{}", r.text);
    assert!(r.text.contains("other customers went next"), "{}", r.text);
    assert!(r.html.contains("other customers went next"), "{}", r.html);
}
