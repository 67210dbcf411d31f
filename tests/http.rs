//! The HTTP API over real HTTP: a server on 127.0.0.1:0 against a fresh database (a
//! SQLite file, or a new PostgreSQL database when `AFTERCART_TEST_DATABASE_URL` is set),
//! the sample store loaded, and the SMTP test sink where an email is sent.

mod common;

use common::web::{self, App, SHOPIFY_SECRET, TOKEN};

use common::browser::{chromium, non_blank_png};

use aftercart::domain::Timestamp;
use aftercart::jobs::{Clock, RunOptions, Worker};
use aftercart::mail::{Mailer, MailerConfig};
use aftercart::store::FollowupState;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

async fn app_with(templates: Option<PathBuf>) -> App {
    web::start(templates, &[]).await
}

async fn app() -> App {
    app_with(None).await
}

impl App {
    async fn followups(&self, order: &str) -> Vec<aftercart::store::FollowupRow> {
        self.engine
            .store
            .followups(Some(order), None, 100)
            .await
            .unwrap()
    }

    /// Runs a worker with a manual clock (starting now) against the sink until idle.
    async fn run_worker(&self) {
        let mut engine = self.engine.clone();
        engine.clock = Clock::manual(Timestamp::now());
        let mailer = Mailer::connect(MailerConfig {
            url: self.sink.url(),
            pool_size: 2,
            timeout: Duration::from_secs(10),
            data_timeout: Duration::from_secs(600),
            probe_base: Duration::from_secs(1),
            probe_max: Duration::from_secs(300),
            username: None,
            password: None,
        })
        .await
        .unwrap();
        Worker::new(engine, Arc::new(mailer), RunOptions::new(true))
            .run(std::future::pending())
            .await
            .unwrap();
    }

    async fn webhook(
        &self,
        topic: &str,
        delivery: &str,
        body: &[u8],
        sig: Option<String>,
    ) -> StatusCode {
        let mut req = self
            .http
            .post(self.url("/webhooks/shopify/orders"))
            .header("X-Shopify-Topic", topic)
            .header("X-Shopify-Webhook-Id", delivery)
            .header("Content-Type", "application/json")
            .body(body.to_vec());
        if let Some(sig) = sig {
            req = req.header("X-Shopify-Hmac-Sha256", sig);
        }
        req.send().await.unwrap().status()
    }
}

fn days_ago(d: i64) -> String {
    Timestamp(Timestamp::now().0 - d * 86_400_000).rfc3339()
}

fn order(id: &str, customer: &str, completed_days_ago: i64) -> Value {
    json!({"id": id, "customer_id": customer, "status": "completed", "created_at": days_ago(completed_days_ago + 1),
           "completed_at": days_ago(completed_days_ago), "items": [{"product_id": "P00001", "quantity": 1, "unit_price": "769.00"}],
           "total": "769.00", "currency": "USD"})
}

fn sign(body: &[u8], secret: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[tokio::test]
async fn v1_requires_the_token() {
    let app = app().await;
    let c = json!({"id": "C900001", "email": "x@y.example"});
    let r = app
        .http
        .post(app.url("/v1/customers"))
        .json(&c)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let r = app
        .http
        .post(app.url("/v1/customers"))
        .bearer_auth("wrong")
        .json(&c)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        app.engine
            .store
            .customer("C900001")
            .await
            .unwrap()
            .is_none()
    );

    // Beyond http.max_body_bytes: 413.
    let big = " ".repeat(app.engine.settings.http.max_body_bytes + 1);
    let r = app
        .http
        .post(app.url("/v1/customers"))
        .bearer_auth(TOKEN)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn records_in_one_or_many_all_or_nothing() {
    let app = app().await;
    let (st, body) = app
        .post_v1(
            "/v1/customers",
            &json!({"id": "C900001", "email": "a@x.example", "marketing_consent": true}),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["stored"], 1);
    let (st, body) = app
        .post_v1(
            "/v1/customers",
            &json!([{"id": "C900002", "email": "b@x.example"}, {"id": "C900003", "email": "c@x.example"}]),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["stored"], 2);
    assert!(
        app.engine
            .store
            .customer("C900003")
            .await
            .unwrap()
            .is_some()
    );

    // A bad record: 422 naming index and field, and nothing of the batch stored.
    let (st, body) = app
        .post_v1(
            "/v1/customers",
            &json!([{"id": "C900004", "email": "d@x.example"}, {"id": "C900005", "email": "not-an-email"}]),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["index"], 1);
    assert_eq!(body["field"], "email");
    assert!(body["why"].is_string() && body["error"].is_string());
    assert!(
        app.engine
            .store
            .customer("C900004")
            .await
            .unwrap()
            .is_none()
    );

    // Orders: an unknown product is named; a good one schedules its follow-up.
    let mut bad = order("O900001", "C900001", 4);
    bad["items"][0]["product_id"] = json!("P99999");
    let (st, body) = app
        .post_v1("/v1/orders", &json!([order("O900002", "C900001", 4), bad]))
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["index"], 1);
    assert_eq!(body["field"], "items[0].product_id");
    assert!(app.engine.store.order("O900002").await.unwrap().is_none());
    let (st, body) = app
        .post_v1("/v1/orders", &order("O900002", "C900001", 4))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["scheduled"], 1);
    assert_eq!(app.followups("O900002").await.len(), 1);

    let (st, _) = app
        .post_v1("/v1/events", &json!([{"customer_id": "C900001", "product_id": "P00002", "kind": "view", "at": days_ago(1)}]))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);

    // Invalid JSON → 400 with an error.
    let r = app
        .http
        .post(app.url("/v1/products"))
        .bearer_auth(TOKEN)
        .body("{\"id\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("JSON")
    );
}

fn shopify_order(id: u64) -> Value {
    json!({
        "id": id, "name": "#1001", "email": "shop@buyer.example", "created_at": days_ago(5),
        "processed_at": days_ago(4), "total_price": "769.00", "currency": "USD", "financial_status": "paid",
        "customer": {"id": 7_001_u64, "email": "shop@buyer.example", "first_name": "Sam", "last_name": "Buyer",
                     "email_marketing_consent": {"state": "subscribed"}},
        "line_items": [{"id": 1, "sku": "P00001", "product_id": 632_910_392_u64, "quantity": 1, "price": "769.00"}]
    })
}

#[tokio::test]
async fn shopify_webhook_is_signed_and_idempotent() {
    let app = app().await;
    let body = serde_json::to_vec(&shopify_order(820_982_911)).unwrap();
    assert_eq!(
        app.webhook("orders/paid", "d0", &body, None).await,
        StatusCode::UNAUTHORIZED
    );
    let forged = sign(&body, "not-the-secret");
    assert_eq!(
        app.webhook("orders/paid", "d0", &body, Some(forged)).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(app.engine.store.order("820982911").await.unwrap().is_none());

    let sig = sign(&body, SHOPIFY_SECRET);
    assert_eq!(
        app.webhook("orders/paid", "d1", &body, Some(sig.clone()))
            .await,
        StatusCode::OK
    );
    let o = app.engine.store.order("820982911").await.unwrap().unwrap();
    assert_eq!(o.status.as_str(), "completed");
    assert_eq!(o.customer_id.as_str(), "7001");
    let c = app.engine.store.customer("7001").await.unwrap().unwrap();
    assert!(c.customer.marketing_consent);
    assert_eq!(c.customer.name.as_deref(), Some("Sam Buyer"));
    let rows = app.followups("820982911").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].campaign, "complete_your_setup");

    // Replays (same delivery id) and redeliveries (new ids, same state): one follow-up.
    for i in 0..10 {
        assert_eq!(
            app.webhook("orders/paid", "d1", &body, Some(sig.clone()))
                .await,
            StatusCode::OK
        );
        assert_eq!(
            app.webhook("orders/paid", &format!("r{i}"), &body, Some(sig.clone()))
                .await,
            StatusCode::OK
        );
    }
    let after = app.followups("820982911").await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].due_at, rows[0].due_at);

    // Fulfilled → delivered, the upgrade campaign joins; completed_at is kept.
    let mut fulfilled = shopify_order(820_982_911);
    fulfilled["fulfillment_status"] = json!("fulfilled");
    let fulfilled = serde_json::to_vec(&fulfilled).unwrap();
    let fsig = sign(&fulfilled, SHOPIFY_SECRET);
    assert_eq!(
        app.webhook("orders/fulfilled", "d2", &fulfilled, Some(fsig))
            .await,
        StatusCode::OK
    );
    let o2 = app.engine.store.order("820982911").await.unwrap().unwrap();
    assert_eq!(o2.status.as_str(), "delivered");
    assert_eq!(o2.completed_at, o.completed_at);
    // complete_your_setup, upgrade and enhance.
    assert_eq!(app.followups("820982911").await.len(), 3);

    // A line item that matches no catalog product is named.
    let mut bad = shopify_order(820_982_912);
    bad["line_items"][0]["sku"] = json!("nope");
    let bad = serde_json::to_vec(&bad).unwrap();
    let r = app
        .http
        .post(app.url("/webhooks/shopify/orders"))
        .header("X-Shopify-Topic", "orders/paid")
        .header("X-Shopify-Hmac-Sha256", sign(&bad, SHOPIFY_SECRET))
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "line_items[0]");

    // Cancelled: pending follow-ups end skipped (order_cancelled).
    let mut cancelled = shopify_order(820_982_911);
    cancelled["cancelled_at"] = json!(days_ago(0));
    let cancelled = serde_json::to_vec(&cancelled).unwrap();
    let csig = sign(&cancelled, SHOPIFY_SECRET);
    assert_eq!(
        app.webhook("orders/cancelled", "d3", &cancelled, Some(csig))
            .await,
        StatusCode::OK
    );
    let rows = app.followups("820982911").await;
    assert!(
        rows.iter()
            .all(|r| r.state == "skipped" && r.reason.as_deref() == Some("order_cancelled"))
    );
}

#[tokio::test]
async fn campaign_trigger_dry_run_and_no_duplicates() {
    let app = app().await;
    let path = "/v1/campaigns/complete_your_setup/trigger";
    let total = |app: &App| {
        let store = app.engine.store.clone();
        async move { store.followups(None, None, 100_000).await.unwrap().len() }
    };
    let (st, body) = app
        .post_v1(
            path,
            &json!({"bought": "P00001", "since": "3650d", "dry_run": true}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["dry_run"], true);
    assert_eq!(body["scheduled"], 0);
    assert!(body["segment"].as_u64().unwrap() > 0);
    assert_eq!(total(&app).await, 0);

    let req = json!({"bought": "P00001", "since": "3650d", "trigger_id": "spring-1"});
    let (st, first) = app.post_v1(path, &req).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{first}");
    let n = first["scheduled"].as_u64().unwrap();
    assert!(n > 0);
    let (st, again) = app.post_v1(path, &req).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(again["scheduled"], 0);
    assert_eq!(again["already_scheduled"], n);
    assert_eq!(total(&app).await as u64, n);

    let (st, _) = app.post_v1("/v1/campaigns/nope/trigger", &json!({})).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, body) = app.post_v1(path, &json!({"since": "soon"})).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "since");
}

/// The URL inside `List-Unsubscribe: <…>` of a raw message (headers may be folded).
fn list_unsubscribe(raw: &str) -> String {
    let head = raw
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    let line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("list-unsubscribe:"))
        .expect("a List-Unsubscribe header");
    let start = line.find("<http").expect("an http link") + 1;
    let end = start + line[start..].find('>').unwrap();
    line[start..end].split_whitespace().collect()
}

#[tokio::test]
async fn one_click_unsubscribe_from_a_received_email() {
    let app = app().await;
    let (st, body) = app
        .post_v1("/v1/orders", &order("O910001", "C000001", 4))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    app.run_worker().await;
    let rows = app.followups("O910001").await;
    assert_eq!(rows[0].state, "sent", "{rows:?}");
    let msg = app.sink.received().into_iter().last().expect("an email");
    let url = list_unsubscribe(msg.raw.as_deref().unwrap());
    assert!(
        url.starts_with(&format!("http://{}/unsubscribe/", app.addr)),
        "{url}"
    );

    // The page shows a button and changes nothing by itself.
    let page = app.http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("<form method=\"post\">")
    );
    assert!(
        !app.engine
            .store
            .customer("C000001")
            .await
            .unwrap()
            .unwrap()
            .unsubscribed
    );

    let r = app
        .http
        .post(&url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        app.engine
            .store
            .customer("C000001")
            .await
            .unwrap()
            .unwrap()
            .unsubscribed
    );

    let (st, _) = app
        .post_v1("/v1/orders", &order("O910002", "C000001", 4))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    app.run_worker().await;
    let rows = app.followups("O910002").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, FollowupState::Skipped.as_str());
    assert_eq!(rows[0].reason.as_deref(), Some("unsubscribed"));
}

#[tokio::test]
async fn forged_unsubscribe_token_changes_nothing() {
    let app = app().await;
    let good = app.engine.signer.token("C000002", "all");
    let (_, sig) = good.split_once('.').unwrap();
    let other = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("C000003\nall");
    for token in [
        format!("{other}.{sig}"),
        format!("{good}x"),
        "garbage".to_owned(),
    ] {
        let r = app
            .http
            .post(app.url(&format!("/unsubscribe/{token}")))
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{token}");
        let r = app
            .http
            .get(app.url(&format!("/unsubscribe/{token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
    for c in ["C000002", "C000003"] {
        assert!(
            !app.engine
                .store
                .customer(c)
                .await
                .unwrap()
                .unwrap()
                .unsubscribed
        );
    }
}

/// A strict reading of the Prometheus text format: every sample is `name{labels} value`
/// and every metric family has HELP and TYPE before its samples.
fn check_exposition(text: &str) -> std::collections::BTreeMap<String, f64> {
    use std::collections::{BTreeMap, BTreeSet};
    let (mut help, mut types) = (BTreeSet::new(), BTreeMap::new());
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP name doc");
            assert!(!doc.is_empty());
            help.insert(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.trim().is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.ends_with('}'), "{line:?}");
            for pair in labels[1..labels.len() - 1]
                .split("\",")
                .filter(|p| !p.is_empty())
            {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line:?}"
                );
                assert!(!v.trim_end_matches('"').contains('"'), "{line:?}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            help.contains(family) && types.contains_key(family),
            "no HELP/TYPE for {family}"
        );
        samples.insert(series.to_owned(), v);
    }
    samples
}

#[tokio::test]
async fn health_and_metrics() {
    let app = app().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "ok");

    let (st, _) = app
        .post_v1("/v1/orders", &order("O920001", "C000001", 4))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    app.run_worker().await;
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let samples = check_exposition(&r.text().await.unwrap());
    assert_eq!(samples["aftercart_followups{state=\"sent\"}"], 1.0);
    assert_eq!(samples["aftercart_sends_total"], 1.0);
    assert_eq!(samples["aftercart_queue_depth"], 0.0);
    assert_eq!(samples["aftercart_job_latency_seconds_count"], 1.0);
    assert_eq!(
        samples["aftercart_job_latency_seconds_bucket{le=\"+Inf\"}"],
        1.0
    );
    assert!(samples.contains_key("aftercart_smtp_errors_total{class=\"5xx\"}"));
    // Every state and skip reason of the lifecycle is a series, 0 until it happens.
    for st in aftercart::domain::FollowupState::ALL {
        assert!(samples.contains_key(&format!("aftercart_followups{{state=\"{}\"}}", st.as_str())));
    }
    for r in aftercart::domain::SkipReason::ALL {
        let key = format!("aftercart_followups_skipped{{reason=\"{}\"}}", r.as_str());
        assert!(samples.contains_key(&key), "{key}");
    }
}

#[tokio::test]
async fn preview_pages_show_the_email() {
    let app = app().await;
    assert_eq!(
        app.http
            .get(app.url("/preview"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.http
            .get(app.url("/preview/complete_your_setup/O00000001"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let index = app
        .http
        .get(app.url("/preview"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    let index = index.text().await.unwrap();
    assert!(index.contains("complete_your_setup") && index.contains("/preview/upgrade/"));

    let campaign = app
        .engine
        .settings
        .campaign("complete_your_setup")
        .unwrap()
        .clone();
    let expected = app.engine.preview("O00000001", &campaign).await.unwrap();
    assert!(!expected.picks.is_empty());
    // Basic auth with the token as password, and ?token=, work too.
    let r = app
        .http
        .get(app.url("/preview/complete_your_setup/O00000001"))
        .basic_auth("editor", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(page.contains(&esc(&expected.email.subject)));
    for p in &expected.picks {
        assert!(page.contains(&esc(&p.title)), "{}", p.title);
        assert!(page.contains(&esc(&p.reason)), "{}", p.reason);
    }
    assert!(page.contains(&esc(&app.engine.settings.store.postal_address)));
    assert!(page.contains(&format!("http://{}/unsubscribe/", app.addr)));
    assert!(page.contains("<iframe") && page.contains("srcdoc=\""));

    let r = app
        .http
        .get(app.url(&format!("/preview/upgrade/O00000001?token={TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .http
        .get(app.url("/preview/complete_your_setup/NOPE"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn preview_shows_a_template_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("templates");
    copy_dir(&common::manifest().join("templates"), &dir);
    let app = app_with(Some(dir.clone())).await;
    // Broken after start: the running engine keeps its last good version, the preview
    // reads the files as the editor left them.
    let body = dir.join("upgrade/body.html");
    let text = std::fs::read_to_string(&body).unwrap();
    std::fs::write(&body, format!("{text}\n{{% if %}}\n")).unwrap();
    let r = app
        .http
        .get(app.url("/preview/upgrade/O00000001"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let page = r.text().await.unwrap();
    let at = page
        .find("upgrade/body.html:")
        .expect("the problem's location");
    let pos: String = page[at + "upgrade/body.html:".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ':')
        .collect();
    let parts: Vec<&str> = pos.trim_end_matches(':').split(':').collect();
    assert_eq!(parts.len(), 2, "{pos}");
    assert!(parts.iter().all(|p| p.parse::<usize>().is_ok()));
    let index = app
        .http
        .get(app.url("/preview"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(index.contains("upgrade/body.html:"));
}

#[tokio::test]
async fn preview_pages_in_a_real_browser() {
    let app = app().await;
    let order = "O00000001";
    let (addr, shots) = (app.addr, tempfile::tempdir().unwrap());
    // No upgrade for O00000001 (an entry compact camera whose pricier siblings are
    // sideways moves, not a step up): the enhance email instead.
    for campaign in ["complete_your_setup", "enhance"] {
        let url = format!("http://{addr}/preview/{campaign}/{order}?token={TOKEN}");
        let c = app.engine.settings.campaign(campaign).unwrap().clone();
        let expected = app.engine.preview(order, &c).await.unwrap();
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
        assert!(
            dom.contains(&esc(&expected.email.subject)),
            "subject in the DOM"
        );
        assert!(!expected.picks.is_empty());
        for p in &expected.picks {
            assert!(dom.contains(&esc(&p.title)), "{}", p.title);
            assert!(dom.contains(&esc(&p.reason)), "{}", p.reason);
        }
        assert!(dom.contains(&esc(&app.engine.settings.store.postal_address)));
        assert!(dom.contains(&format!("http://{addr}/unsubscribe/")));

        let png = shots.path().join(format!("{campaign}.png"));
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
        assert!(
            non_blank_png(&png),
            "{campaign}: the screenshot shows something"
        );
        // AFTERCART_SCREENSHOTS=docs/screenshots refreshes the pictures in the docs.
        if let Some(dir) = std::env::var_os("AFTERCART_SCREENSHOTS") {
            std::fs::copy(&png, Path::new(&dir).join(format!("{campaign}.png"))).unwrap();
        }
    }
    let index = format!("http://{addr}/preview?token={TOKEN}");
    let dom = tokio::task::spawn_blocking(move || chromium(&["--dump-dom"], &index))
        .await
        .unwrap()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.contains("complete_your_setup") && dom.contains("/preview/upgrade/"),
        "{dom}"
    );
}
