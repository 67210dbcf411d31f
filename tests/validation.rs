//! Input validation (issue 10, case 8): what `aftercart import` refuses and how it says
//! so, that the addresses it keeps are the ones the mailer sends to, that a Subject on
//! the wire is capped and clean, and a property-based suite ("fuzz target") over the
//! record parsers of JSON Lines and CSV.

mod common;

use aftercart::domain::FieldError;
use aftercart::import::{Batch, Kind, ParseContext, read_lines};
use aftercart::jobs::Clock;
use aftercart::mail::{OutgoingEmail, build_message};
use aftercart_testkit::sink::SmtpSink;
use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// `FILE:LINE: field: why` lines of an import's stderr, by line number.
fn reports(stderr: &str, file: &Path) -> BTreeMap<usize, (String, String)> {
    let prefix = format!("{}:", file.display());
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (line, rest) = rest.split_once(": ")?;
            let (field, why) = rest.split_once(": ")?;
            Some((line.parse().ok()?, (field.to_owned(), why.to_owned())))
        })
        .collect()
}

/// What a test of the whole flow starts from.
type World = (
    SmtpSink,
    TestDb,
    Vec<(String, String)>,
    aftercart::config::Settings,
    aftercart::store::Store,
    tempfile::TempDir,
);

/// A real SMTP server, a fresh database (keep it alive), settings pointing at both, the
/// store, a temp dir for input files and, when `catalog`, the sample products imported
/// by the binary.
async fn world(catalog: bool) -> World {
    let sink = SmtpSink::start().await;
    let db = fresh_db().await;
    let env = base_env(&db.url, &sink.url());
    let s = settings(&env);
    let store = store(&s).await;
    if catalog {
        import_file(&env, "products", &sample("products.jsonl"), 0);
    }
    (sink, db, env, s, store, tempfile::tempdir().unwrap())
}

/// Runs `aftercart import KIND FILE`, checks its exit code and returns its stderr.
fn import_file(env: &[(String, String)], kind: &str, file: &Path, code: i32) -> String {
    let (got, _, err) = run(env, &["import", kind, file.to_str().unwrap()]);
    assert_eq!(got, code, "import {kind} {}:\n{err}", file.display());
    err
}

fn write_lines(path: &Path, records: &[Value]) {
    let text: Vec<String> = records.iter().map(Value::to_string).collect();
    std::fs::write(path, text.join("\n") + "\n").unwrap();
}

/// A completed order of the sample camera, long enough ago that its follow-up is due.
fn camera_order(id: &str, customer: &str) -> Value {
    json!({"id": id, "customer_id": customer, "status": "completed",
        "created_at": "2024-06-01T00:00:00Z", "completed_at": "2024-06-01T00:00:00Z",
        "items": [{"product_id": "P00001", "quantity": 1, "unit_price": "769.00"}],
        "total": "769.00", "currency": "USD"})
}

fn outgoing(to: &str) -> OutgoingEmail {
    OutgoingEmail {
        from: "Shop <shop@example.com>".into(),
        to: to.into(),
        subject: "Hello".into(),
        html: "<p>Hello</p>".into(),
        text: "Hello".into(),
        message_id: "fu-1.test@example.com".into(),
        headers: vec![],
    }
}

/// Tricky addresses, each with whether import keeps it. Whatever import keeps must reach
/// the SMTP server; whatever the mailer refuses, import must refuse.
fn tricky_addresses() -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = [
        ("plain@example.com", true),
        ("o'brien+shop@mail.example.co.uk", true),
        ("user@bücher.de", true),
        ("jörg@example.com", true),
        ("  padded@example.com ", true),
        ("a@b.c@example.com", false),
        ("\"john doe\"@example.com", false),
        ("\"john\"@example.com", false),
        ("\"a@b\"@example.com", false),
        ("user@example.com.", false),
        ("user.@example.com", false),
        (".user@example.com", false),
        ("us..er@example.com", false),
        ("a b@example.com", false),
        ("user@exa mple.com", false),
        ("user@example..com", false),
        ("user@-example.com", false),
        ("user@exa_mple.com", false),
        ("user@localhost", false),
        ("user@[127.0.0.1]", false),
        ("user@127.0.0.1", false),
        ("Ann <ann@example.com>", false),
        ("a(comment)@example.com", false),
        ("a\\b@example.com", false),
        ("a\u{0}b@example.com", false),
        ("a\nb@example.com", false),
        ("", false),
    ]
    .iter()
    .map(|(a, ok)| (a.to_string(), *ok))
    .collect();
    v.push((format!("{}@example.com", "a".repeat(64)), true));
    v.push((format!("{}@example.com", "a".repeat(65)), false));
    v.push((
        format!(
            "{}@{}.com",
            "a".repeat(60),
            vec!["b".repeat(60); 4].join(".")
        ),
        false,
    ));
    v
}

#[tokio::test]
async fn email_addresses_kept_at_import_are_the_ones_the_mailer_sends_to() {
    let (sink, _db, env, s, store, dir) = world(true).await;

    let addresses = tricky_addresses();
    let customers: Vec<Value> = addresses
        .iter()
        .enumerate()
        .map(|(i, (a, _))| json!({"id": format!("CV{i}"), "email": a, "name": "Test Person", "marketing_consent": true}))
        .collect();
    let file = dir.path().join("customers.jsonl");
    write_lines(&file, &customers);
    let err = import_file(&env, "customers", &file, 2);
    let reported = reports(&err, &file);

    let mut refused_by_mailer = 0;
    let mut orders = Vec::new();
    for (i, (address, kept)) in addresses.iter().enumerate() {
        let line = i + 1;
        let stored = store.customer(&format!("CV{i}")).await.unwrap();
        assert_eq!(stored.is_some(), *kept, "{address:?}\n{err}");
        if *kept {
            assert!(!reported.contains_key(&line), "{address:?}: {err}");
            orders.push(camera_order(&format!("OV{i}"), &format!("CV{i}")));
        } else {
            let (field, why) = reported
                .get(&line)
                .unwrap_or_else(|| panic!("{address:?} is not reported\n{err}"));
            assert_eq!(field, "email", "{address:?}: {why}");
            assert!(!why.is_empty() && why.len() < 300, "{why}");
        }
        // One direction: the mailer's refusal is import's refusal.
        if build_message(&outgoing(address)).is_err() {
            refused_by_mailer += 1;
            assert!(
                !kept,
                "{address:?} is refused by the mailer but kept at import"
            );
        }
    }
    assert!(
        refused_by_mailer >= 10,
        "the list exercises the mailer's parser"
    );
    assert!(reported[&6].1.contains("more than one @"), "{err}");

    // The other direction: every address kept is delivered, to the address as stored.
    let file = dir.path().join("orders.jsonl");
    write_lines(&file, &orders);
    import_file(&env, "orders", &file, 0);
    let summary = run_until_idle(&s, &store, Clock::System).await;
    assert_eq!(summary.sent as usize, orders.len(), "{summary:?}");
    let rcpts: HashSet<String> = sink.received().into_iter().flat_map(|r| r.to).collect();
    for (i, (address, kept)) in addresses.iter().enumerate() {
        if *kept {
            let c = store.customer(&format!("CV{i}")).await.unwrap().unwrap();
            let to = c.customer.email.as_str();
            assert!(
                rcpts.contains(to),
                "{address:?} stored as {to:?}: {rcpts:?}"
            );
        }
    }
    // An international domain is kept in its ASCII form, which any relay accepts.
    assert!(rcpts.contains("user@xn--bcher-kva.de"), "{rcpts:?}");
    assert!(rcpts.contains("padded@example.com"), "{rcpts:?}");
}

#[tokio::test]
async fn prices_and_quantities_are_refused_saying_what_is_expected() {
    let (_sink, _db, env, _, store, dir) = world(false).await;

    let prices = [
        " 1.00", "1.00 ", "+1", "1e3", "1,00", "0x10", "1 000", "1.", ".5", "1.234", "-1.00", "NaN",
    ];
    let mut products: Vec<Value> = prices
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"id": format!("PV{i}"), "title": "Thing", "price": p}))
        .collect();
    products.push(json!({"id": "PVOK", "title": "Thing", "price": "0.5"}));
    products.push(json!({"id": "PVNUM", "title": "Thing", "price": 1.5}));
    let file = dir.path().join("products.jsonl");
    write_lines(&file, &products);
    let err = import_file(&env, "products", &file, 2);
    let reported = reports(&err, &file);
    assert_eq!(reported.len(), prices.len() + 1, "{err}");
    for (i, price) in prices.iter().enumerate() {
        let (field, why) = &reported[&(i + 1)];
        assert_eq!(field, "price", "{price:?}");
        let expected = match *price {
            "-1.00" => "is negative",
            "1.234" => "more than two decimals",
            _ => "expected digits with an optional point and one or two decimals",
        };
        assert!(why.contains(expected), "{price:?}: {why}");
    }
    assert!(reported[&1].1.contains("surrounding spaces"), "{err}");
    assert!(reported[&3].1.contains("sign"), "{err}");
    assert!(
        reported[&(prices.len() + 2)].1.contains("must be a string"),
        "{err}"
    );
    let kept: Vec<String> = store
        .products()
        .await
        .unwrap()
        .into_iter()
        .map(|p| format!("{} {}", p.id, p.price))
        .collect();
    assert_eq!(kept, ["PVOK 0.50"]);

    let quantities = [
        json!(4294967296u64),
        json!(18446744073709551615u64),
        json!(1e20),
        json!(-1),
        json!(0),
        json!(2.5),
        json!(2.0),
        json!("2"),
        json!(true),
    ];
    let mut orders: Vec<Value> = quantities
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let mut o = camera_order(&format!("OQ{i}"), "C1");
            o["items"][0]["quantity"] = q.clone();
            o
        })
        .collect();
    let mut ok = camera_order("OQOK", "C1");
    ok["items"][0]["quantity"] = json!(4294967295u64);
    ok.as_object_mut().unwrap().remove("total");
    orders.push(ok);
    // `18446744073709551616` does not fit any JSON number type serde reads exactly.
    let mut text: Vec<String> = orders.iter().map(Value::to_string).collect();
    text.push(
        camera_order("OQBIG", "C1")
            .to_string()
            .replace("\"quantity\":1", "\"quantity\":18446744073709551616"),
    );
    let products = dir.path().join("camera.jsonl");
    write_lines(
        &products,
        &[json!({"id": "P00001", "title": "Camera", "price": "769.00"})],
    );
    import_file(&env, "products", &products, 0);
    let file = dir.path().join("orders.jsonl");
    std::fs::write(&file, text.join("\n")).unwrap();
    let err = import_file(&env, "orders", &file, 2);
    let reported = reports(&err, &file);
    let range = "must be a whole number from 1 to 4294967295";
    for line in (1..=quantities.len()).chain([quantities.len() + 2]) {
        let (field, why) = reported
            .get(&line)
            .unwrap_or_else(|| panic!("line {line} not reported\n{err}"));
        assert_eq!(field, "items[0].quantity", "line {line}: {why}");
        assert!(why.starts_with(range), "line {line}: {why}");
    }
    assert!(reported[&1].1.ends_with("got 4294967296"), "{err}");
    assert!(reported[&7].1.contains("without a fraction"), "{err}");
    assert!(reported[&8].1.contains("the string \"2\""), "{err}");
    assert!(!reported.contains_key(&(quantities.len() + 1)), "{err}");
    let big = store.order("OQOK").await.unwrap().unwrap();
    assert_eq!(big.items[0].quantity, u32::MAX);
}

#[tokio::test]
async fn free_text_with_control_characters_or_over_the_cap_is_refused_by_field() {
    let (_sink, _db, env, _, store, dir) = world(false).await;

    let name = |n: Value| json!({"id": "C", "email": "a@example.com", "name": n});
    let customers = [
        (name(json!("Ada\u{0}Lovelace")), Some(("name", "NUL"))),
        (name(json!("Ada\nLovelace")), Some(("name", "line break"))),
        (
            name(json!("Ada\u{1b}[31m")),
            Some(("name", "control character")),
        ),
        (
            name(json!("A".repeat(100_000))),
            Some(("name", "is 100000 characters long; at most 200")),
        ),
        (name(json!("Ä".repeat(201))), Some(("name", "at most 200"))),
        (name(json!("Ä".repeat(200))), None),
        (name(json!("Ada\tLovelace")), None),
        (
            json!({"id": "C", "email": "a@example.com", "locale": "en\u{0}"}),
            Some(("locale", "NUL")),
        ),
    ];
    let products = [
        (
            json!({"id": "P", "title": "Lens\u{0}Cap", "price": "1"}),
            Some(("title", "NUL")),
        ),
        (
            json!({"id": "P", "title": "T".repeat(501), "price": "1"}),
            Some(("title", "at most 500")),
        ),
        (
            json!({"id": "P", "title": "T".repeat(500), "price": "1"}),
            None,
        ),
        (
            json!({"id": "P", "title": "x", "price": "1", "brand": "B\u{7f}"}),
            Some(("brand", "control")),
        ),
        (
            json!({"id": "P", "title": "x", "price": "1", "tags": ["ok", "a\tb"]}),
            Some(("tags[1]", "tab")),
        ),
        (
            json!({"id": "P", "title": "x", "price": "1", "url": "https://x.example/\r\nSet-Cookie: a"}),
            Some(("url", "line break")),
        ),
        (
            json!({"id": "P", "title": "x", "price": "1", "category": "A > B\u{0}"}),
            Some(("category", "NUL")),
        ),
    ];
    for (kind, cases) in [("customers", &customers[..]), ("products", &products[..])] {
        let records: Vec<Value> = cases
            .iter()
            .enumerate()
            .map(|(i, (r, _))| {
                let mut r = r.clone();
                r["id"] = json!(format!("{}{i}", r["id"].as_str().unwrap()));
                r
            })
            .collect();
        let file = dir.path().join(format!("{kind}.jsonl"));
        write_lines(&file, &records);
        let err = import_file(&env, kind, &file, 2);
        let reported = reports(&err, &file);
        for (i, (_, expected)) in cases.iter().enumerate() {
            let id = records[i]["id"].as_str().unwrap();
            match expected {
                Some((field, why)) => {
                    let (f, w) = reported
                        .get(&(i + 1))
                        .unwrap_or_else(|| panic!("{kind} line {} not reported\n{err}", i + 1));
                    assert_eq!(f, field, "{kind} line {}: {w}", i + 1);
                    assert!(w.contains(why), "{kind} line {}: {w}", i + 1);
                    assert!(w.len() < 200, "the error does not echo the value: {w}");
                }
                None => assert!(!reported.contains_key(&(i + 1)), "{kind} {id}: {err}"),
            }
        }
    }
    let c = store.customer("C5").await.unwrap().unwrap();
    assert_eq!(c.customer.name.as_deref(), Some("Ä".repeat(200).as_str()));
    assert!(store.customer("C0").await.unwrap().is_none());
    let titles: Vec<String> = store
        .products()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(titles, ["P2"]);

    // CSV goes through the same rules.
    let file = dir.path().join("customers.csv");
    let long = "B".repeat(201);
    std::fs::write(
        &file,
        format!(
            "id,email,name\nCSV1,a@example.com,\"Ada\u{0}\"\nCSV2,a@b.c@example.com,Ada\nCSV3,a@example.com,{long}\nCSV4,a@example.com,Ada\n"
        ),
    )
    .unwrap();
    let err = import_file(&env, "customers", &file, 2);
    let reported = reports(&err, &file);
    assert_eq!(reported[&2].0, "name", "{err}");
    assert_eq!(reported[&3].0, "email", "{err}");
    assert_eq!(reported[&4].0, "name", "{err}");
    assert_eq!(reported.len(), 3, "{err}");
    assert!(store.customer("CSV4").await.unwrap().is_some());
}

/// The Subject header of a raw message, unfolded, with RFC 2047 encoded words decoded.
fn subject_of(raw: &str) -> String {
    use base64::Engine;
    let head = raw.split("\r\n\r\n").next().unwrap();
    let mut value = String::new();
    let mut inside = false;
    for line in head.split("\r\n") {
        if let Some(v) = line.strip_prefix("Subject: ") {
            inside = true;
            value.push_str(v);
        } else if inside && line.starts_with([' ', '\t']) {
            value.push_str(line);
        } else {
            inside = false;
        }
    }
    // Adjacent encoded words join without the folding space between them (RFC 2047 §6.2).
    let mut out = String::new();
    let mut prev_encoded = None;
    for token in value.split([' ', '\t']).filter(|t| !t.is_empty()) {
        let decoded = token
            .get(..10)
            .filter(|p| p.eq_ignore_ascii_case("=?utf-8?b?"))
            .and_then(|_| token[10..].strip_suffix("?="))
            .map(|b64| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap();
                String::from_utf8(bytes).unwrap()
            });
        if let Some(prev) = prev_encoded
            && !(prev && decoded.is_some())
        {
            out.push(' ');
        }
        prev_encoded = Some(decoded.is_some());
        out.push_str(decoded.as_deref().unwrap_or(token));
    }
    out
}

#[tokio::test]
async fn the_subject_on_the_wire_is_capped_for_the_longest_name_and_title_allowed() {
    let (sink, _db, env, s, store, dir) = world(false).await;

    // Every catalog title at the 500-character cap, so whatever is picked is long.
    let text = std::fs::read_to_string(sample("products.jsonl")).unwrap();
    let products: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut p: Value = serde_json::from_str(l).unwrap();
            let title = format!("{} {}", p["title"].as_str().unwrap(), "Edition ".repeat(70));
            p["title"] = json!(title.chars().take(500).collect::<String>().trim_end());
            p
        })
        .collect();
    let file = dir.path().join("products.jsonl");
    write_lines(&file, &products);
    import_file(&env, "products", &file, 0);
    let first_name = "Maximiliana".repeat(17); // 187 characters, one word
    let customers = [
        json!({"id": "CL1", "email": "long1@example.com", "name": format!("{first_name} Smith"), "marketing_consent": true}),
        json!({"id": "CL2", "email": "long2@example.com", "name": format!("{}é Ø", "Zoë".repeat(60)), "marketing_consent": true}),
    ];
    let file = dir.path().join("customers.jsonl");
    write_lines(&file, &customers);
    import_file(&env, "customers", &file, 0);
    let file = dir.path().join("orders.jsonl");
    write_lines(
        &file,
        &[camera_order("OL1", "CL1"), camera_order("OL2", "CL2")],
    );
    import_file(&env, "orders", &file, 0);

    let summary = run_until_idle(&s, &store, Clock::System).await;
    assert_eq!(summary.sent, 2, "{summary:?}");
    for r in sink.received() {
        let raw = r.raw.as_deref().unwrap();
        let head = raw.split("\r\n\r\n").next().unwrap();
        for line in head.split("\r\n") {
            assert!(line.len() <= 998, "header line of {} bytes", line.len());
        }
        let subject = subject_of(raw);
        assert_eq!(subject.chars().count(), 250, "{subject}");
        assert!(subject.ends_with('…'), "{subject}");
        assert!(
            subject.starts_with(&first_name) || subject.starts_with("ZoëZoë"),
            "{subject}"
        );
    }
}

#[tokio::test]
async fn rows_stored_under_laxer_rules_neither_block_sends_nor_reach_a_header_raw() {
    let (sink, _db, env, s, store, dir) = world(true).await;
    let customers: Vec<Value> = (1..=3)
        .map(|i| json!({"id": format!("CO{i}"), "email": format!("old{i}@example.com"), "name": "Ada Lovelace", "marketing_consent": true}))
        .collect();
    let file = dir.path().join("customers.jsonl");
    write_lines(&file, &customers);
    import_file(&env, "customers", &file, 0);
    // What an earlier version accepted, written through the store as it was then: an
    // address the mailer refuses, a name with control characters (PostgreSQL cannot hold
    // NUL in text, so ESC and BEL stand in).
    let mut old = Vec::new();
    for (id, email, name) in [
        ("CO1", "a@b.c@example.com", "Ada Lovelace"),
        ("CO2", "old2@example.com", "Ada\u{1b}\u{7}X Lovelace"),
    ] {
        let mut c = store.customer(id).await.unwrap().unwrap().customer;
        c.email = aftercart::domain::EmailAddress::stored(email.to_owned());
        c.name = Some(name.to_owned());
        old.push(c);
    }
    store.upsert_customers(&old).await.unwrap();
    let file = dir.path().join("orders.jsonl");
    write_lines(
        &file,
        &(1..=3)
            .map(|i| camera_order(&format!("OO{i}"), &format!("CO{i}")))
            .collect::<Vec<_>>(),
    );
    import_file(&env, "orders", &file, 0);

    let summary = run_until_idle(&s, &store, Clock::System).await;
    assert_eq!(summary.sent, 2, "{summary:?}");
    let rows = store.followups(Some("OO1"), None, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, "failed", "{:?}", rows[0]);
    let reply = rows[0].smtp_reply.as_deref().unwrap_or_default();
    assert!(reply.contains("a@b.c@example.com"), "{reply}");

    let received = sink.received();
    let to_co2 = received
        .iter()
        .find(|r| r.to == ["old2@example.com"])
        .expect("CO2 got its email");
    let raw = to_co2.raw.as_deref().unwrap();
    let head = raw.split("\r\n\r\n").next().unwrap();
    assert!(
        !head
            .bytes()
            .any(|b| (b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n') || b == 0x7f),
        "{head}"
    );
    assert!(subject_of(raw).starts_with("AdaX, "), "{}", subject_of(raw));
}

// ---------------------------------------------------------------------------------------
// The fuzz target: property-based tests of the record parsers (JSON Lines for the four
// kinds, CSV for products and customers). Arbitrary bytes and mutations of real sample
// records never panic, every error names a field or the line in a short printable
// message, and every record accepted holds the rules (an accepted address is one the
// mailer takes). Case counts are fixed so `cargo test` stays quick; `PROPTEST_CASES=N`
// runs longer (CI, or by hand before a release).
// ---------------------------------------------------------------------------------------

const KINDS: [Kind; 4] = [Kind::Products, Kind::Customers, Kind::Orders, Kind::Events];

fn fields_of(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Products => &[
            "id",
            "title",
            "url",
            "image_url",
            "price",
            "currency",
            "category",
            "brand",
            "in_stock",
            "compatible_with",
            "tags",
        ],
        Kind::Customers => &[
            "id",
            "email",
            "name",
            "timezone",
            "locale",
            "marketing_consent",
        ],
        Kind::Orders => &[
            "id",
            "customer_id",
            "status",
            "created_at",
            "completed_at",
            "delivered_at",
            "items",
            "total",
            "currency",
        ],
        Kind::Events => &["customer_id", "product_id", "kind", "at"],
    }
}

/// The first records of each sample file: real, valid starting points for mutations.
fn samples(kind: Kind) -> &'static [Value] {
    static SAMPLES: std::sync::LazyLock<BTreeMap<&'static str, Vec<Value>>> =
        std::sync::LazyLock::new(|| {
            KINDS
                .iter()
                .map(|k| {
                    let text =
                        std::fs::read_to_string(sample(&format!("{}.jsonl", k.as_str()))).unwrap();
                    let v = text
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .take(60)
                        .map(|l| serde_json::from_str(l).unwrap())
                        .collect();
                    (k.as_str(), v)
                })
                .collect()
        });
    &SAMPLES[kind.as_str()]
}

fn context() -> ParseContext {
    let product_ids = samples(Kind::Products)
        .iter()
        .chain(std::iter::once(&json!({"id": "P00015"})))
        .filter_map(|p| aftercart::domain::ProductId::parse(p["id"].as_str()?).ok())
        .collect();
    ParseContext { product_ids }
}

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Strings that stress the parsers: decimals and near-decimals, dates, addresses, control
/// characters, padding, arbitrary Unicode, and very long runs.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,24}",
        "[-+ ]?[0-9]{0,22}([.,][0-9]{0,4})?[eExX ]?[0-9]{0,3}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?",
        "[a-zA-Z0-9.+_'\"()<>\\[\\]\\\\, ü-]{0,20}@[a-zA-Z0-9._ü-]{0,20}\\.?[a-z0-9]{0,4}\\.?",
        "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{2028}\\u{feff}]{1,3}",
        "(pending|completed|delivered|cancelled|refunded|view|add_to_cart|USD|Europe/Berlin)[ \\x00]?",
        (any::<char>(), 1usize..70_000).prop_map(|(c, n)| c.to_string().repeat(n)),
        Just(String::new()),
    ]
}

fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-3i64..5).prop_map(Value::from),
        Just(json!(4294967295u64)),
        Just(json!(4294967296u64)),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        json_number(),
        nasty_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,12}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// One change to a record: drop a field, set one (known, unknown or inside `items`).
#[derive(Debug, Clone)]
enum Mutation {
    Remove(prop::sample::Index),
    Set(prop::sample::Index, Value),
    SetItem(prop::sample::Index, Value),
    Unknown(String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Remove),
        (any::<prop::sample::Index>(), json_value()).prop_map(|(i, v)| Mutation::Set(i, v)),
        (any::<prop::sample::Index>(), json_value()).prop_map(|(i, v)| Mutation::SetItem(i, v)),
        ("[a-z_]{1,10}", json_value()).prop_map(|(k, v)| Mutation::Unknown(k, v)),
    ]
}

fn apply(kind: Kind, mut record: Value, mutations: &[Mutation]) -> Value {
    let fields = fields_of(kind);
    for m in mutations {
        let Some(obj) = record.as_object_mut() else {
            break;
        };
        match m {
            Mutation::Remove(i) => {
                obj.remove(*i.get(fields));
            }
            Mutation::Set(i, v) => {
                obj.insert(i.get(fields).to_string(), v.clone());
            }
            Mutation::SetItem(i, v) => {
                if let Some(item) = obj
                    .get_mut("items")
                    .and_then(|items| items.get_mut(0))
                    .and_then(Value::as_object_mut)
                {
                    let key = *i.get(&["product_id", "quantity", "unit_price"]);
                    item.insert(key.to_string(), v.clone());
                }
            }
            Mutation::Unknown(k, v) => {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    record
}

/// Damage to the bytes of a line: none, cut, an inserted run of bytes, one byte changed.
fn damage() -> impl Strategy<Value = (u8, prop::sample::Index, Vec<u8>)> {
    (
        0u8..4,
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 1..6),
    )
}

fn damaged(mut bytes: Vec<u8>, (how, at, with): &(u8, prop::sample::Index, Vec<u8>)) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    let i = at.index(bytes.len());
    match how {
        1 => bytes.truncate(i),
        2 => {
            bytes.splice(i..i, with.iter().copied());
        }
        3 => bytes[i] = with[0],
        _ => {}
    }
    bytes
}

/// The checks every error must pass: it names `(line)`, a field of the kind (a path such
/// as `items[0].quantity` counts by its first segment) or, for CSV, a column of the
/// input; its reason is short and printable (it goes to a terminal as is).
fn check_error(kind: Kind, e: &FieldError, columns: &[String]) -> Result<(), TestCaseError> {
    let root = e.field.split(['[', '.']).next().unwrap_or_default();
    prop_assert!(
        e.field == "(line)" || fields_of(kind).contains(&root) || columns.contains(&e.field),
        "{:?}: error names no field: {e}",
        kind
    );
    prop_assert!(!e.why.is_empty(), "{e:?}");
    prop_assert!(e.why.len() <= 600, "a {}-byte reason: {e}", e.why.len());
    prop_assert!(
        !e.why.chars().any(char::is_control),
        "raw control character: {e:?}"
    );
    Ok(())
}

/// What every accepted record must satisfy.
fn check_accepted(batch: &Batch) -> Result<(), TestCaseError> {
    use aftercart::domain::{MAX_NAME_CHARS, MAX_TITLE_CHARS};
    let printable = |s: &str| !s.chars().any(|c| c.is_control() && c != '\t');
    match batch {
        Batch::Products(v) => {
            for p in v {
                prop_assert!(printable(&p.title) && !p.title.trim().is_empty(), "{p:?}");
                prop_assert!(p.title.chars().count() <= MAX_TITLE_CHARS);
                prop_assert!(p.price.minor() >= 0);
            }
        }
        Batch::Customers(v) => {
            for c in v {
                let to = c.email.as_str();
                prop_assert!(
                    build_message(&outgoing(to)).is_ok(),
                    "kept {to:?}, mailer refuses"
                );
                prop_assert!(to.len() <= 254 && to.trim() == to);
                if let Some(n) = &c.name {
                    prop_assert!(printable(n) && n.chars().count() <= MAX_NAME_CHARS, "{n:?}");
                }
            }
        }
        Batch::Orders(v) => {
            for o in v {
                prop_assert!(o.items.iter().all(|i| i.quantity >= 1));
                prop_assert!(o.total.minor() >= 0);
            }
        }
        Batch::Events(_) => {}
    }
    Ok(())
}

/// Reads `input` as the import does and runs every check; `columns` are the CSV headers.
fn parse_all(kind: Kind, input: &[u8], csv: bool, columns: &[String]) -> Result<(), TestCaseError> {
    let ctx = context();
    let physical = input.split(|&b| b == b'\n').count();
    let mut batch = Batch::new(kind);
    for raw in read_lines(input, csv) {
        let raw = raw.expect("reading from memory cannot fail");
        prop_assert!(
            raw.line >= 1 && raw.line <= physical + 1,
            "line {} of {physical}",
            raw.line
        );
        match raw.value.and_then(|v| batch.push(&v, &ctx)) {
            Ok(()) => {}
            Err(e) => check_error(kind, &e, columns)?,
        }
    }
    check_accepted(&batch)
}

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(KINDS.to_vec())
}

/// A mutated sample record of `kind`, as the bytes of one line.
fn mutated_line(kind: Kind) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(samples(kind).to_vec()),
        prop::collection::vec(mutation(), 0..4),
        damage(),
    )
        .prop_map(move |(record, mutations, d)| {
            damaged(apply(kind, record, &mutations).to_string().into_bytes(), &d)
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn json_lines_of_mutated_records_never_panic_and_errors_name_a_field(
        (kind, lines) in kind().prop_flat_map(|k| (Just(k), prop::collection::vec(mutated_line(k), 1..5))),
        crlf in any::<bool>(),
    ) {
        let input = lines.join(if crlf { &b"\r\n"[..] } else { &b"\n"[..] });
        parse_all(kind, &input, false, &[])?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_in_either_format(
        kind in kind(),
        input in prop::collection::vec(any::<u8>(), 0..300),
        csv in any::<bool>(),
    ) {
        let columns = csv_columns(&input);
        parse_all(kind, &input, csv, &columns)?;
    }

    #[test]
    fn csv_of_mutated_records_never_panics_and_errors_name_a_column(
        (kind, records, extra, cells, d) in prop::sample::select(vec![Kind::Products, Kind::Customers])
            .prop_flat_map(|k| (
                Just(k),
                prop::collection::vec(prop::sample::select(samples(k).to_vec()), 1..5),
                prop::option::of("[a-z_ ]{0,8}"),
                prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), nasty_string()), 0..4),
                damage(),
            )),
    ) {
        let mut columns: Vec<String> = fields_of(kind).iter().map(|f| f.to_string()).collect();
        columns.extend(extra);
        let mut rows: Vec<Vec<String>> = records
            .iter()
            .map(|r| columns.iter().map(|c| csv_cell(&r[c.as_str()])).collect())
            .collect();
        for (row, col, value) in &cells {
            let row = row.get_mut(&mut rows);
            *col.get_mut(row) = value.clone();
        }
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&columns).unwrap();
        for row in &rows {
            w.write_record(row).unwrap();
        }
        let input = damaged(w.into_inner().unwrap(), &d);
        let headers = csv_columns(&input);
        parse_all(kind, &input, true, &headers)?;
    }
}

/// A JSON value as a CSV cell the way the import reads it back (`|` joins lists).
fn csv_cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join("|"),
        other => other.to_string(),
    }
}

/// The header row of `input` as the importer reads it (trimmed, lossy UTF-8).
fn csv_columns(input: &[u8]) -> Vec<String> {
    let mut rdr = csv::ReaderBuilder::new().flexible(false).from_reader(input);
    rdr.byte_headers()
        .map(|h| {
            h.iter()
                .map(|c| String::from_utf8_lossy(c).trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}
