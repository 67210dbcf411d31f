//! Measuring, end to end over real parts: follow-ups sent by the worker to the SMTP test
//! sink, the tracked links in the received emails clicked over real HTTP with a fixed
//! (manual) clock, orders arriving by the API and by import afterwards, and the report
//! read back through the store, `GET /report` and `aftercart report --json`. Every
//! figure is worked out by hand below. Also: forged and altered tokens (404, no row),
//! the holdout over 5,000 customers, and the HTML report in headless Chromium.

mod common;

use common::browser::{chromium, non_blank_png};

use aftercart::config::Settings;
use aftercart::domain::{CustomerId, HoldoutShare, ProductId, Timestamp, parse_rfc3339};
use aftercart::import::{Kind, import_reader};
use aftercart::jobs::{Clock, Engine};
use aftercart::measure::in_holdout;
use aftercart::measure::token;
use aftercart::store::{FollowupRow, Store};
use aftercart_testkit::sink::SmtpSink;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

const TOKEN: &str = "t0ken";
const CAMPAIGN: &str = "complete_your_setup";
const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

fn at(t: Timestamp, ms: i64) -> Timestamp {
    Timestamp(t.0 + ms)
}

fn rfc(t: Timestamp) -> String {
    t.rfc3339()
}

async fn import_text(store: &Store, kind: Kind, lines: &[Value]) {
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    let report = import_reader(
        store,
        kind,
        text.join("\n").as_bytes(),
        false,
        &[],
        Timestamp::now(),
        |_| {},
    )
    .await
    .unwrap();
    assert!(report.bad.is_empty(), "{:?}", report.bad);
}

/// Customers M0001… split by the campaign's holdout at `share`: (recipients, held out).
fn split(share: HoldoutShare, n_in: usize, n_out: usize) -> (Vec<String>, Vec<String>) {
    let c = aftercart::domain::CampaignName::parse(CAMPAIGN).unwrap();
    let (mut rec, mut held) = (Vec::new(), Vec::new());
    for i in 1.. {
        let id = format!("M{i:04}");
        let held_out = in_holdout(&CustomerId::parse(&id).unwrap(), &c, share);
        match held_out {
            true if held.len() < n_out => held.push(id),
            false if rec.len() < n_in => rec.push(id),
            _ => {}
        }
        if rec.len() == n_in && held.len() == n_out {
            break;
        }
    }
    (rec, held)
}

fn customer(id: &str) -> Value {
    json!({"id": id, "email": format!("{}@example.com", id.to_lowercase()), "name": format!("Shopper {id}"),
           "timezone": "UTC", "locale": "en-US", "marketing_consent": true})
}

fn order(
    id: &str,
    customer: &str,
    placed: Timestamp,
    status: &str,
    items: Value,
    total: &str,
) -> Value {
    json!({"id": id, "customer_id": customer, "status": status, "created_at": rfc(placed),
           "completed_at": rfc(placed), "items": items, "total": total, "currency": "USD"})
}

struct World {
    addr: SocketAddr,
    engine: Engine,
    settings: Settings,
    clock: Clock,
    sink: SmtpSink,
    http: reqwest::Client,
    db: common::TestDb,
}

impl World {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    async fn hits(&self) -> i64 {
        self.engine
            .store
            .hit_counts()
            .await
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum()
    }
    /// A hit on `url` at `t` (the shared manual clock moves there first).
    async fn hit(&self, method: reqwest::Method, url: &str, t: Timestamp) -> reqwest::Response {
        self.clock.advance_to(t);
        self.http.request(method, url).send().await.unwrap()
    }
}

/// The sample catalog and its history (scheduling nothing), one campaign with the
/// given holdout share, and a server on 127.0.0.1:0 whose engine shares the manual
/// clock `start`.
async fn world(share: HoldoutShare, start: Timestamp) -> World {
    world_with(share, start, false).await
}

async fn world_with(share: HoldoutShare, start: Timestamp, open_pixel: bool) -> World {
    let db = common::fresh_db().await;
    let sink = SmtpSink::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let env = common::with(
        common::base_env(&db.url, &sink.url()),
        &[("AFTERCART__STORE__BASE_URL", &base)],
    );
    let mut s = common::settings(&env);
    s.campaigns.retain(|c| c.name.as_str() == CAMPAIGN);
    s.campaigns[0].holdout_share = share;
    s.attribution.open_pixel = open_pixel;
    let store = common::store(&s).await;
    for (kind, file) in [
        (Kind::Products, "products.jsonl"),
        (Kind::Customers, "customers.jsonl"),
        (Kind::Orders, "orders.jsonl"),
    ] {
        let f = std::io::BufReader::new(std::fs::File::open(common::sample(file)).unwrap());
        import_reader(&store, kind, f, false, &[], Timestamp::now(), |_| {})
            .await
            .unwrap();
    }
    let clock = Clock::manual(start);
    let engine = common::engine(s.clone(), store, clock.clone()).await;
    aftercart::http::start_on(engine.clone(), listener, std::future::pending()).unwrap();
    World {
        addr,
        engine,
        settings: s,
        clock,
        sink,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        db,
    }
}

/// The message to `email` as received by the sink, quoted-printable soft breaks undone.
fn received_body(sink: &SmtpSink, email: &str) -> String {
    let m = sink
        .received()
        .into_iter()
        .find(|m| m.to.iter().any(|t| t == email))
        .unwrap_or_else(|| panic!("no email to {email}"));
    m.raw.unwrap().replace("=\r\n", "").replace("=3D", "=")
}

fn row<'a>(rows: &'a [FollowupRow], customer: &str) -> &'a FollowupRow {
    rows.iter()
        .find(|r| r.customer_id == customer)
        .unwrap_or_else(|| panic!("no follow-up for {customer}: {rows:?}"))
}

#[tokio::test]
async fn the_report_adds_up_by_hand_through_the_store_http_and_cli() {
    // Five customers buy a camera at T0; the follow-up is due 3 days later at T. With a
    // holdout share of 0.5, R1–R3 are recipients and H1, H2 the control group.
    let share = HoldoutShare::parse(0.5).unwrap();
    let (rec, held) = split(share, 3, 2);
    let t0 = parse_rfc3339("2025-03-01T10:00:00Z").unwrap();
    let t = at(t0, 3 * DAY);
    let w = world(share, t).await;
    let store = &w.engine.store;
    let all: Vec<&String> = rec.iter().chain(&held).collect();
    import_text(
        store,
        Kind::Customers,
        &all.iter().map(|c| customer(c)).collect::<Vec<_>>(),
    )
    .await;
    let camera = json!([{"product_id": "P00015", "quantity": 1, "unit_price": "299.00"}]);
    let first: Vec<Value> = all
        .iter()
        .map(|c| {
            order(
                &format!("A-{c}"),
                c,
                t0,
                "completed",
                camera.clone(),
                "299.00",
            )
        })
        .collect();
    let text: Vec<String> = first.iter().map(Value::to_string).collect();
    let rules = aftercart::jobs::schedule_rules(&w.settings);
    import_reader(
        store,
        Kind::Orders,
        text.join("\n").as_bytes(),
        false,
        &rules,
        Timestamp::now(),
        |_| {},
    )
    .await
    .unwrap();

    let summary = common::run_until_idle(&w.settings, store, w.clock.clone()).await;
    assert_eq!((summary.sent, summary.skipped), (3, 2), "{summary:?}");
    let rows = store.followups(None, None, 100).await.unwrap();
    for c in &held {
        let r = row(&rows, c);
        assert_eq!(
            (r.state.as_str(), r.reason.as_deref()),
            ("skipped", Some("holdout")),
            "{r:?}"
        );
    }
    for c in &rec {
        let r = row(&rows, c);
        assert_eq!(r.state, "sent", "{r:?}");
        assert_eq!((r.due_at, r.sent_at), (t, Some(t)), "sent at the due time");
        assert!(!r.items.is_empty());
    }
    assert_eq!(w.sink.count(), 3, "no email to the holdout");

    // The links in the received emails are the signed /r/ links of each pick.
    let keys = w.engine.link_keys();
    let link = |c: &str, i: usize| {
        let r = row(&rows, c);
        let pid = ProductId::parse(&r.items[i]).unwrap();
        (
            token::link_url(&w.url(""), &token::sign(r.id, &pid, &keys)),
            pid,
        )
    };
    for c in &rec {
        let body = received_body(&w.sink, &format!("{}@example.com", c.to_lowercase()));
        for i in 0..row(&rows, c).items.len() {
            assert!(
                body.contains(&link(c, i).0),
                "{c}: pick {i} is a tracked link"
            );
        }
        assert!(!body.contains("/o/"), "no open pixel unless switched on");
    }
    let (r1_link, clicked) = link(&rec[0], 0);
    let (r2_link, _) = link(&rec[1], 0);

    // R1: a scanner's HEAD and a GET 1 s after delivery are prefetches; the person's
    // click an hour later counts, a second GET 30 s after it is a duplicate.
    // (The clock only moves forward, so the hits come in time order.)
    for (method, ms, _why) in [
        (reqwest::Method::GET, 1_000, "prefetch"),
        (reqwest::Method::HEAD, 10_000, "prefetch"),
        (reqwest::Method::GET, HOUR, "click"),
        (reqwest::Method::GET, HOUR + 30_000, "duplicate"),
    ] {
        let r = w.hit(method, &r1_link, at(t, ms)).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let product = w
            .engine
            .store
            .products()
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.id == clicked)
            .unwrap();
        let expected = token::redirect_location(
            product.url.as_deref().unwrap(),
            token::Utm {
                campaign: &w.settings.campaigns[0].name,
                product: &clicked,
            },
        )
        .unwrap();
        assert_eq!(location, expected);
        assert!(
            location
                .contains("utm_source=aftercart&utm_medium=email&utm_campaign=complete_your_setup"),
            "{location}"
        );
    }
    // R2 clicks two hours in; R3 never clicks.
    let r = w.hit(reqwest::Method::GET, &r2_link, at(t, 2 * HOUR)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(w.hits().await, 5);
    // R3 unsubscribes on day 4 (one-click, the signed link of the email).
    w.clock.advance_to(at(t, 4 * DAY));
    let unsub = w.engine.unsubscribe_url(&rec[2]);
    let r = w
        .http
        .post(&unsub)
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Orders arrive afterwards, by the API and by import; nothing is attributed on the way in.
    let other = json!([{"product_id": "P00001", "quantity": 1, "unit_price": "60.00"}]);
    let r1_items = json!([{"product_id": clicked.as_str(), "quantity": 1, "unit_price": "40.00"},
                          {"product_id": "P00001", "quantity": 1, "unit_price": "60.00"}]);
    let r = w
        .http
        .post(w.url("/v1/orders"))
        .bearer_auth(TOKEN)
        .json(&order(
            "B-R1",
            &rec[0],
            at(t, DAY),
            "completed",
            r1_items,
            "100.00",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    import_text(
        store,
        Kind::Orders,
        &[
            // R1 cancels another order: never revenue.
            order(
                "B-R1-X",
                &rec[0],
                at(t, 2 * DAY),
                "cancelled",
                other.clone(),
                "500.00",
            ),
            // R2 orders 1 s after the 5-day click window (RFC 3339 in whole seconds): not attributed, but converts.
            order(
                "B-R2",
                &rec[1],
                at(t, 2 * HOUR + 5 * DAY + 1000),
                "completed",
                json!([{"product_id": "P00001", "quantity": 1, "unit_price": "50.00"}]),
                "50.00",
            ),
            order(
                "B-R3",
                &rec[2],
                at(t, 3 * DAY),
                "delivered",
                json!([{"product_id": "P00001", "quantity": 1, "unit_price": "30.00"}]),
                "30.00",
            ),
            order(
                "B-H1",
                &held[0],
                at(t, 2 * DAY),
                "completed",
                json!([{"product_id": "P00001", "quantity": 1, "unit_price": "20.00"}]),
                "20.00",
            ),
            order(
                "B-H2",
                &held[1],
                at(t, DAY),
                "completed",
                json!([{"product_id": "P00001", "quantity": 1, "unit_price": "40.00"}]),
                "40.00",
            ),
            // After the 14-day conversion window: not counted.
            order(
                "B-H2-late",
                &held[1],
                at(t, 20 * DAY),
                "completed",
                json!([{"product_id": "P00001", "quantity": 1, "unit_price": "999.00"}]),
                "999.00",
            ),
        ],
    )
    .await;

    // By hand:
    // sent 3; clicks 2 (R1 at 1 h, R2 at 2 h), clicked 2 of 3 → 0.6667; prefetches 2
    // (R1's HEAD and 1 s GET); unsubscribes 1 (R3, blamed on its email); holdout 2.
    // Attributed: only B-R1 (100.00, 1 day after R1's click); its picked item 40.00.
    // Revenue per recipient 100.00 / 3 = 33.33.
    // Recipients' paid orders within 14 days of T: 100.00, 50.00, 30.00 → 3 orders,
    // 180.00, AOV 60.00, conversion 3/3 = 1. Control: 20.00, 40.00 → AOV 30.00, 2/2 = 1.
    // Welch: recipients mean 60, s² = (40² + 10² + 30²)/2 = 1300; control mean 30,
    // s² = (10² + 10²)/1 = 200; se² = 1300/3 + 200/2 = 533.33, se = 23.0940;
    // df = se⁴ / ((1300/3)²/2 + 100²/1) = 2.7380; t(0.975, 2.738) = 3.36188 (by
    // numerical integration of the t density); 30 ± 3.36188 × 23.0940 = [-47.64, 107.64].
    let picked_count = rows
        .iter()
        .filter(|r| r.state == "sent" && r.items.contains(&clicked.to_string()))
        .count();
    let expect = |v: &Value| {
        assert_eq!(v["sent"], 3, "{v}");
        assert_eq!(v["clicks"], 2, "{v}");
        assert_eq!(v["clicked"], 2, "{v}");
        assert_eq!(v["click_rate"], 0.6667, "{v}");
        assert_eq!(v["prefetches"], 2, "{v}");
        assert_eq!(v["unsubscribes"], 1, "{v}");
        assert_eq!(v["holdout"], 2, "{v}");
        assert_eq!(v["attributed_orders"], 1, "{v}");
        assert_eq!(v["attributed_revenue"], "100.00", "{v}");
        assert_eq!(v["recommended_revenue"], "40.00", "{v}");
        assert_eq!(v["revenue_per_recipient"], "33.33", "{v}");
        assert_eq!(
            v["recipients"],
            json!({"customers": 3, "orders": 3, "revenue": "180.00", "aov": "60.00", "conversion": 1.0}),
            "{v}"
        );
        assert_eq!(
            v["control"],
            json!({"customers": 2, "orders": 2, "revenue": "60.00", "aov": "30.00", "conversion": 1.0}),
            "{v}"
        );
        assert_eq!(v["uplift"]["aov_diff"], "30.00", "{v}");
        assert_eq!(
            v["uplift"]["aov_diff_ci95"],
            json!(["-47.64", "107.64"]),
            "{v}"
        );
        let bought = &v["picked_bought"][0];
        assert_eq!(bought["product_id"], clicked.as_str(), "{v}");
        assert_eq!(
            (bought["picked"].as_u64(), bought["clicks"].as_u64()),
            (Some(picked_count as u64), Some(2)),
            "{v}"
        );
        assert_eq!(
            (bought["orders"].as_u64(), bought["quantity"].as_u64()),
            (Some(1), Some(1)),
            "{v}"
        );
        assert_eq!(bought["revenue"], "40.00", "{v}");
    };
    let now = at(t, 25 * DAY);
    let since = Duration::from_secs(30 * 86_400);
    let report = aftercart::jobs::report(store, &w.settings, now, None, since)
        .await
        .unwrap();
    let doc = serde_json::to_value(&report).unwrap();
    assert_eq!(doc["campaigns"].as_array().unwrap().len(), 1);
    assert_eq!(doc["campaigns"][0]["name"], CAMPAIGN);
    expect(&doc["campaigns"][0]);
    expect(&doc["total"]);
    assert!(
        report.summary_line().starts_with("3 sent, 2 clicks"),
        "{}",
        report.summary_line()
    );

    // GET /report at the same moment gives the same document; /metrics the counters.
    w.clock.advance_to(now);
    let r = w
        .http
        .get(w.url("/report"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), doc);
    let metrics = w
        .http
        .get(w.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "aftercart_clicks_total{kind=\"click\"} 2",
        "aftercart_clicks_total{kind=\"prefetch\"} 2",
        "aftercart_clicks_total{kind=\"duplicate\"} 1",
        "aftercart_attributed_orders_total 1",
        "aftercart_attributed_revenue_total{currency=\"USD\"} 100.00",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // `aftercart report --json` (real clock: everything above is long past) has the
    // SPEC §8 shape and the same figures.
    let env = common::with(common::base_env(&w.db.url, &w.sink.url()), &[]);
    let (code, out, err) = common::run(
        &env,
        &[
            "report",
            "--json",
            "--since",
            "3650d",
            "--campaign",
            CAMPAIGN,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let cli: Value = serde_json::from_str(&out).unwrap();
    for key in [
        "name",
        "sent",
        "clicks",
        "holdout",
        "attributed_orders",
        "attributed_revenue",
        "revenue_per_recipient",
        "recipients",
        "control",
        "uplift",
    ] {
        assert!(cli["campaigns"][0].get(key).is_some(), "{key} in {cli}");
        assert!(
            key == "name" || cli["total"].get(key).is_some(),
            "total.{key} in {cli}"
        );
    }
    for group in ["recipients", "control"] {
        for key in ["customers", "orders", "aov", "conversion"] {
            assert!(cli["total"][group].get(key).is_some(), "{group}.{key}");
        }
    }
    assert!(cli["total"]["uplift"]["aov_diff_ci95"].is_array());
    expect(&cli["campaigns"][0]);
    expect(&cli["total"]);
    // Text by default, and the HTML page to a file.
    let html = tempfile::tempdir().unwrap();
    let file = html.path().join("report.html");
    let (code, out, err) = common::run(
        &env,
        &[
            "report",
            "--since",
            "3650d",
            "--html",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(CAMPAIGN), "{out}");
    let page = std::fs::read_to_string(&file).unwrap();
    assert!(
        page.contains("<svg") && !page.contains("<script"),
        "SVG charts, no scripts"
    );
    let (code, _, err) = common::run(&env, &["report", "--campaign", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope"), "{err}");
    let (code, _, err) = common::run(&env, &["report", "--since", "soon"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--since"), "{err}");
}

#[tokio::test]
async fn forged_altered_and_unknown_tokens_are_404_and_record_nothing() {
    let share = HoldoutShare::OFF;
    let (rec, _) = split(share, 1, 0);
    let t0 = parse_rfc3339("2025-03-01T10:00:00Z").unwrap();
    let t = at(t0, 3 * DAY);
    let w = world(share, t).await;
    let store = &w.engine.store;
    import_text(store, Kind::Customers, &[customer(&rec[0])]).await;
    let rules = aftercart::jobs::schedule_rules(&w.settings);
    let text = order(
        "A1",
        &rec[0],
        t0,
        "completed",
        json!([{"product_id": "P00015", "quantity": 1, "unit_price": "299.00"}]),
        "299.00",
    )
    .to_string();
    import_reader(
        store,
        Kind::Orders,
        text.as_bytes(),
        false,
        &rules,
        Timestamp::now(),
        |_| {},
    )
    .await
    .unwrap();
    common::run_until_idle(&w.settings, store, w.clock.clone()).await;
    let rows = store.followups(None, None, 10).await.unwrap();
    assert_eq!(rows[0].state, "sent", "{rows:?}");
    let pid = ProductId::parse(&rows[0].items[0]).unwrap();
    let keys = w.engine.link_keys();
    let good = token::sign(rows[0].id, &pid, &keys);
    let later = at(t, HOUR);

    let mut bad: Vec<String> = Vec::new();
    // Every character changed in turn, cut short, lengthened.
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for i in 0..good.len() {
        let c = good.as_bytes()[i] as char;
        let other = alphabet.chars().find(|x| *x != c).unwrap();
        let mut t = good.clone();
        t.replace_range(i..i + 1, &other.to_string());
        bad.push(t);
    }
    bad.push(good[..good.len() - 1].to_owned());
    bad.push(format!("{good}A"));
    // Signed with another key, for a follow-up that does not exist, of the pixel kind.
    let other_keys = token::LinkKeys::new(&aftercart::unsubscribe::Signer::new("another key"));
    bad.push(token::sign(rows[0].id, &pid, &other_keys));
    bad.push(token::sign(rows[0].id + 1000, &pid, &keys));
    bad.push(token::sign_open(rows[0].id, &keys));
    bad.push("not-a-token".into());
    for b in &bad {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let r = w
                .hit(method.clone(), &w.url(&format!("/r/{b}")), later)
                .await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {b}");
        }
    }
    // The open pixel is off: its route is a 404 even for a valid open token.
    let r = w
        .hit(
            reqwest::Method::GET,
            &w.url(&format!("/o/{}", token::sign_open(rows[0].id, &keys))),
            later,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(w.hits().await, 0, "nothing recorded");
    // The good one still works, and is the only row.
    let r = w
        .hit(reqwest::Method::GET, &w.url(&format!("/r/{good}")), later)
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(w.hits().await, 1);
    // Eight simultaneous clicks on it two minutes later count once (one click, seven
    // duplicates): the last-click read and the insert are one critical section.
    w.clock.advance_to(at(later, 120_000));
    let url = w.url(&format!("/r/{good}"));
    let all = (0..8).map(|_| {
        let (http, url) = (w.http.clone(), url.clone());
        tokio::spawn(async move { http.get(&url).send().await.unwrap().status() })
    });
    for h in all.collect::<Vec<_>>() {
        assert_eq!(h.await.unwrap(), StatusCode::SEE_OTHER);
    }
    let counts = store.hit_counts().await.unwrap();
    assert_eq!(
        counts,
        vec![("click".to_owned(), 2), ("duplicate".to_owned(), 7)]
    );
}

#[tokio::test]
async fn the_open_pixel_is_there_only_when_switched_on_and_counts_opens() {
    let share = HoldoutShare::OFF;
    let (rec, _) = split(share, 1, 0);
    let t0 = parse_rfc3339("2025-03-01T10:00:00Z").unwrap();
    let t = at(t0, 3 * DAY);
    let w = world_with(share, t, true).await;
    let store = &w.engine.store;
    import_text(store, Kind::Customers, &[customer(&rec[0])]).await;
    let rules = aftercart::jobs::schedule_rules(&w.settings);
    let text = order(
        "A1",
        &rec[0],
        t0,
        "completed",
        json!([{"product_id": "P00015", "quantity": 1, "unit_price": "299.00"}]),
        "299.00",
    )
    .to_string();
    import_reader(
        store,
        Kind::Orders,
        text.as_bytes(),
        false,
        &rules,
        Timestamp::now(),
        |_| {},
    )
    .await
    .unwrap();
    common::run_until_idle(&w.settings, store, w.clock.clone()).await;
    let rows = store.followups(None, None, 10).await.unwrap();
    assert_eq!(rows[0].state, "sent", "{rows:?}");
    let pixel = w.url(&format!(
        "/o/{}",
        token::sign_open(rows[0].id, &w.engine.link_keys())
    ));
    let body = received_body(&w.sink, &format!("{}@example.com", rec[0].to_lowercase()));
    assert!(
        body.contains(&format!("<img src=\"{pixel}\"")),
        "the pixel is in the HTML part"
    );
    // On arrival (a proxy fetching images) it is a prefetch; later an open, once a minute.
    for (ms, n) in [(500, 1), (HOUR, 2), (HOUR + 1_000, 3)] {
        let r = w.hit(reqwest::Method::GET, &pixel, at(t, ms)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "image/gif");
        assert_eq!(w.hits().await, n);
    }
    let counts = store.hit_counts().await.unwrap();
    assert_eq!(
        counts,
        vec![
            ("duplicate".to_owned(), 1),
            ("open".to_owned(), 1),
            ("prefetch".to_owned(), 1)
        ]
    );
    // Opens are not clicks: the report counts none.
    let report = aftercart::jobs::report(
        store,
        &w.settings,
        at(t, DAY),
        None,
        Duration::from_secs(30 * 86_400),
    )
    .await
    .unwrap();
    assert_eq!((report.total.sent, report.total.clicks), (1, 0));
}

#[tokio::test]
async fn the_report_needs_the_preview_auth_and_serves_html_to_browsers() {
    let w = world(HoldoutShare::DEFAULT, Timestamp::now()).await;
    for req in [
        w.http.get(w.url("/report")),
        w.http.get(w.url("/report")).bearer_auth("wrong"),
        w.http.get(w.url("/report?token=wrong")),
        w.http.get(w.url("/report")).basic_auth("x", Some("wrong")),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let ok = |req: reqwest::RequestBuilder| async move {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        (ct, r.text().await.unwrap())
    };
    let (ct, body) = ok(w.http.get(w.url("/report")).bearer_auth(TOKEN)).await;
    assert!(ct.starts_with("application/json"), "{ct}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["total"]["sent"], 0);
    let (ct, _) = ok(w
        .http
        .get(w.url("/report"))
        .basic_auth("marketing", Some(TOKEN)))
    .await;
    assert!(ct.starts_with("application/json"), "{ct}");
    let (ct, body) = ok(w
        .http
        .get(w.url(&format!("/report?format=html&token={TOKEN}"))))
    .await;
    assert!(ct.starts_with("text/html") && body.contains("<svg"), "{ct}");
    let (ct, _) = ok(w
        .http
        .get(w.url("/report?since=7d"))
        .bearer_auth(TOKEN)
        .header("accept", "text/html,*/*"))
    .await;
    assert!(ct.starts_with("text/html"), "{ct}");
    for (q, status) in [
        ("campaign=nope", StatusCode::NOT_FOUND),
        ("since=soon", StatusCode::BAD_REQUEST),
        ("format=pdf", StatusCode::BAD_REQUEST),
    ] {
        let r = w
            .http
            .get(w.url(&format!("/report?{q}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{q}");
    }
}

/// 5,000 customers through the worker: the held-out share is within 2 points of the
/// setting, the members are exactly those of the pure function (the same on every run),
/// and a second database with the same customers holds out the same ones.
#[tokio::test]
async fn the_holdout_share_holds_over_5000_customers_and_is_stable() {
    let share = HoldoutShare::parse(0.2).unwrap();
    let t0 = parse_rfc3339("2025-03-01T10:00:00Z").unwrap();
    let held_out = |n: usize| async move {
        // A catalog of the one product everybody bought: every customer not held out is
        // skipped as nothing_to_recommend, which keeps 5,000 follow-ups quick.
        let db = common::fresh_db().await;
        let sink = SmtpSink::start().await;
        let mut s = common::settings(&common::base_env(&db.url, &sink.url()));
        s.campaigns.retain(|c| c.name.as_str() == CAMPAIGN);
        s.campaigns[0].holdout_share = share;
        let store = common::store(&s).await;
        import_text(&store, Kind::Products, &[json!({"id": "P1", "title": "The only one", "price": "10.00", "currency": "USD", "in_stock": true})]).await;
        let ids: Vec<String> = (1..=n).map(|i| format!("H{i:05}")).collect();
        import_text(
            &store,
            Kind::Customers,
            &ids.iter().map(|c| customer(c)).collect::<Vec<_>>(),
        )
        .await;
        let orders: Vec<String> = ids
            .iter()
            .map(|c| {
                order(
                    &format!("O-{c}"),
                    c,
                    t0,
                    "completed",
                    json!([{"product_id": "P1", "quantity": 1, "unit_price": "10.00"}]),
                    "10.00",
                )
                .to_string()
            })
            .collect();
        let rules = aftercart::jobs::schedule_rules(&s);
        let r = import_reader(
            &store,
            Kind::Orders,
            orders.join("\n").as_bytes(),
            false,
            &rules,
            Timestamp::now(),
            |_| {},
        )
        .await
        .unwrap();
        assert!(r.bad.is_empty(), "{:?}", r.bad);
        let clock = common::clock_at_first_due(&store).await;
        let summary = common::run_until_idle(&s, &store, clock).await;
        assert_eq!(summary.skipped as usize, n, "{summary:?}");
        let rows = store.followups(None, None, i64::MAX).await.unwrap();
        assert_eq!(rows.len(), n);
        let mut held: Vec<String> = rows
            .into_iter()
            .filter(|r| r.reason.as_deref() == Some("holdout"))
            .map(|r| r.customer_id)
            .collect();
        held.sort();
        assert_eq!(sink.count(), 0);
        drop(db);
        (ids, held)
    };
    let (ids, held) = held_out(5000).await;
    let got = held.len() as f64 / 5000.0;
    assert!((got - 0.2).abs() <= 0.02, "{got}");
    let c = aftercart::domain::CampaignName::parse(CAMPAIGN).unwrap();
    let expected: Vec<String> = ids
        .iter()
        .filter(|id| in_holdout(&CustomerId::parse(id).unwrap(), &c, share))
        .cloned()
        .collect();
    assert_eq!(held, expected);
    let (_, again) = held_out(500).await;
    let first_500: Vec<String> = held
        .into_iter()
        .filter(|id| id.as_str() <= "H00500")
        .collect();
    assert_eq!(
        again, first_500,
        "the same customers on another run and database"
    );
}

#[tokio::test]
async fn the_html_report_in_a_real_browser() {
    // Some data to draw: the hand-made scene of the first test, shortened.
    let share = HoldoutShare::parse(0.5).unwrap();
    let (rec, held) = split(share, 3, 3);
    let t0 = Timestamp(Timestamp::now().0 - 20 * DAY);
    let t = at(t0, 3 * DAY);
    let w = world(share, t).await;
    let store = &w.engine.store;
    let all: Vec<&String> = rec.iter().chain(&held).collect();
    import_text(
        store,
        Kind::Customers,
        &all.iter().map(|c| customer(c)).collect::<Vec<_>>(),
    )
    .await;
    let camera = json!([{"product_id": "P00015", "quantity": 1, "unit_price": "299.00"}]);
    let rules = aftercart::jobs::schedule_rules(&w.settings);
    let text: Vec<String> = all
        .iter()
        .map(|c| {
            order(
                &format!("A-{c}"),
                c,
                t0,
                "completed",
                camera.clone(),
                "299.00",
            )
            .to_string()
        })
        .collect();
    import_reader(
        store,
        Kind::Orders,
        text.join("\n").as_bytes(),
        false,
        &rules,
        Timestamp::now(),
        |_| {},
    )
    .await
    .unwrap();
    common::run_until_idle(&w.settings, store, w.clock.clone()).await;
    let rows = store.followups(None, None, 100).await.unwrap();
    let keys = w.engine.link_keys();
    let mut later = Vec::new();
    for (i, c) in all.iter().enumerate() {
        let r = row(&rows, c);
        if r.state == "sent" {
            let pid = ProductId::parse(&r.items[0]).unwrap();
            let url = token::link_url(&w.url(""), &token::sign(r.id, &pid, &keys));
            w.hit(reqwest::Method::GET, &url, at(t, HOUR)).await;
        }
        let total = format!("{}.00", 20 + 15 * i);
        later.push(order(
            &format!("B-{c}"),
            c,
            at(t, DAY),
            "completed",
            json!([{"product_id": "P00001", "quantity": 1, "unit_price": total}]),
            &total,
        ));
    }
    import_text(store, Kind::Orders, &later).await;
    w.clock.advance_to(Timestamp::now());

    let url = w.url(&format!("/report?format=html&token={TOKEN}"));
    let dom_url = url.clone();
    let Some(dom) = tokio::task::spawn_blocking(move || chromium(&["--dump-dom"], &dom_url))
        .await
        .unwrap()
    else {
        return;
    };
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(dom.contains(CAMPAIGN) && dom.contains("<svg"), "{dom}");
    let shots = tempfile::tempdir().unwrap();
    let png = shots.path().join("report.png");
    let arg = format!("--screenshot={}", png.display());
    let shot = tokio::task::spawn_blocking(move || {
        chromium(
            &[
                &arg,
                "--window-size=1100,1700",
                "--virtual-time-budget=5000",
            ],
            &url,
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    assert!(non_blank_png(&png), "the screenshot shows something");
    if let Some(dir) = std::env::var_os("AFTERCART_SCREENSHOTS") {
        std::fs::copy(&png, std::path::Path::new(&dir).join("report.png")).unwrap();
    }
}
