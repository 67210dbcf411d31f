//! Order states only move forward, whoever sends them: the Shopify webhook (with events
//! out of order and bodies replayed under another topic), the HTTP API and `import`.
//! Real HTTP against the real server, the real binary for the CLI, a fresh database per
//! test (SQLite, or PostgreSQL when `AFTERCART_TEST_DATABASE_URL` is set).

mod common;

use aftercart::domain::Timestamp;
use aftercart::jobs::{Clock, Engine};
use aftercart::store::FollowupRow;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::SocketAddr;

const SECRET: &str = "shopify-s3cret";
const TOKEN: &str = "t0ken";

struct App {
    addr: SocketAddr,
    engine: Engine,
    http: reqwest::Client,
    env: Vec<(String, String)>,
    _db: common::TestDb,
}

/// The server (no worker) on the committed config, with the sample catalog loaded.
async fn app() -> App {
    let db = common::fresh_db().await;
    let env = common::with(
        common::base_env(&db.url, "file://outbox"),
        &[("AFTERCART__SHOPIFY__WEBHOOK_SECRET", SECRET)],
    );
    let s = common::settings(&env);
    let store = common::store(&s).await;
    let report = common::import(&store, &s, "products", &common::sample("products.jsonl")).await;
    assert!(report.bad.is_empty());
    let engine = common::engine(s, store, Clock::System).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    aftercart::http::start_on(engine.clone(), listener, std::future::pending()).unwrap();
    App {
        addr,
        engine,
        http: reqwest::Client::new(),
        env,
        _db: db,
    }
}

impl App {
    /// One signed delivery of `body` (sent byte for byte) under `topic`.
    async fn deliver(&self, topic: &str, delivery: &str, body: &str) -> (StatusCode, Value) {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let r = self
            .http
            .post(format!("http://{}/webhooks/shopify/orders", self.addr))
            .header("X-Shopify-Topic", topic)
            .header("X-Shopify-Webhook-Id", delivery)
            .header("X-Shopify-Hmac-Sha256", sig)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn webhook(&self, topic: &str, delivery: &str, body: &Value) -> (StatusCode, Value) {
        self.deliver(topic, delivery, &body.to_string()).await
    }

    async fn post_orders(&self, body: &Value) -> (StatusCode, Value) {
        self.post_v1("orders", body).await
    }

    async fn post_v1(&self, kind: &str, body: &Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("http://{}/v1/{kind}", self.addr))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn status(&self, order: &str) -> Option<String> {
        let o = self.engine.store.order(order).await.unwrap();
        o.map(|o| o.status.as_str().to_owned())
    }

    async fn followups(&self, order: &str) -> Vec<FollowupRow> {
        let store = &self.engine.store;
        store.followups(Some(order), None, 100).await.unwrap()
    }
}

/// A follow-up still waiting to go out.
fn pending(rows: &[FollowupRow]) -> usize {
    rows.iter()
        .filter(|r| matches!(r.state.as_str(), "scheduled" | "deferred"))
        .count()
}

fn at(days_ago: i64, secs: i64) -> String {
    Timestamp(Timestamp::now().0 - days_ago * 86_400_000 + secs * 1000).rfc3339()
}

/// A Shopify order body as `orders/paid` sends it, changed at `updated`.
fn paid(id: u64, updated: &str) -> Value {
    json!({
        "id": id, "name": "#1001", "email": "sam@buyer.example", "created_at": at(5, 0),
        "processed_at": at(5, 60), "updated_at": updated, "cancelled_at": null,
        "financial_status": "paid", "fulfillment_status": null, "fulfillments": [],
        "total_price": "769.00", "currency": "USD",
        "customer": {"id": 7_001_u64, "email": "sam@buyer.example", "first_name": "Sam", "last_name": "Buyer",
                     "email_marketing_consent": {"state": "subscribed"}},
        "line_items": [{"id": 1, "sku": "P00001", "product_id": 632_910_392_u64, "quantity": 1, "price": "769.00"}]
    })
}

fn fulfilled(id: u64, updated: &str) -> Value {
    let mut v = paid(id, updated);
    v["fulfillment_status"] = json!("fulfilled");
    v["fulfillments"] = json!([{"id": 1, "status": "success", "created_at": at(3, 0)}]);
    v
}

fn cancelled(id: u64, updated: &str) -> Value {
    let mut v = paid(id, updated);
    v["cancelled_at"] = json!(updated);
    v["cancel_reason"] = json!("customer");
    v["financial_status"] = json!("refunded");
    v
}

#[tokio::test]
async fn a_cancelled_shopify_order_stays_cancelled() {
    let app = app().await;
    let (s, _) = app
        .webhook("orders/paid", "p1", &paid(5001, &at(5, 60)))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(pending(&app.followups("5001").await) >= 1);

    let (s, body) = app
        .webhook("orders/cancelled", "c1", &cancelled(5001, &at(4, 0)))
        .await;
    assert_eq!(
        (s, body["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    assert_eq!(pending(&app.followups("5001").await), 0);
    let rows_after_cancel = app.followups("5001").await.len();

    // A newer paid event (new delivery id) does not revive it: status is final.
    let (s, body) = app
        .webhook("orders/paid", "p2", &paid(5001, &at(3, 0)))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["scheduled"], 0);
    assert_eq!(body["warnings"][0]["field"], "status");
    assert_eq!(app.status("5001").await.as_deref(), Some("cancelled"));
    assert_eq!(pending(&app.followups("5001").await), 0);

    // Nor does a fulfilment: no upgrade email for a cancelled order.
    let (s, body) = app
        .webhook("orders/fulfilled", "f1", &fulfilled(5001, &at(2, 0)))
        .await;
    assert_eq!(
        (s, body["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    assert_eq!(app.status("5001").await.as_deref(), Some("cancelled"));
    let rows = app.followups("5001").await;
    assert_eq!(pending(&rows), 0);
    assert_eq!(rows.len(), rows_after_cancel, "nothing new scheduled");
    assert!(rows.iter().all(|r| r.campaign != "upgrade"));
    let o = app.engine.store.order("5001").await.unwrap().unwrap();
    assert_eq!(o.delivered_at, None, "the cancelled order's times stay");

    // A stale paid event (older than the cancel) changes nothing either.
    let (s, body) = app
        .webhook("orders/paid", "p3", &paid(5001, &at(5, 60)))
        .await;
    assert_eq!(
        (s, body["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    assert_eq!(body["warnings"][0]["field"], "updated_at");
    assert_eq!(app.status("5001").await.as_deref(), Some("cancelled"));
}

#[tokio::test]
async fn out_of_order_shopify_events_change_nothing_when_stale() {
    let app = app().await;
    let (s, _) = app
        .webhook("orders/paid", "p1", &paid(6001, &at(5, 60)))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .webhook("orders/fulfilled", "f1", &fulfilled(6001, &at(3, 0)))
        .await;
    assert_eq!(s, StatusCode::OK);
    let before = app.engine.store.order("6001").await.unwrap().unwrap();
    assert_eq!(before.status.as_str(), "delivered");
    let rows_before = app.followups("6001").await;
    assert!(rows_before.iter().any(|r| r.campaign == "upgrade"));

    // Shopify redelivers the older paid event late, with other values in it.
    let mut late = paid(6001, &at(5, 60));
    late["total_price"] = json!("1.00");
    late["line_items"][0]["price"] = json!("1.00");
    late["customer"]["first_name"] = json!("Stale");
    let (s, body) = app.webhook("orders/paid", "p-late", &late).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let after = app.engine.store.order("6001").await.unwrap().unwrap();
    assert_eq!(after, before, "a stale event changes nothing");
    let c = app.engine.store.customer("7001").await.unwrap().unwrap();
    assert_eq!(c.customer.name.as_deref(), Some("Sam Buyer"));
    assert_eq!(body["status"], "delivered");
    assert_eq!(body["warnings"][0]["field"], "updated_at");
    let rows_after = app.followups("6001").await;
    assert_eq!(rows_after.len(), rows_before.len());

    // Fulfilled before paid (a new order): the late paid event does not move it back.
    let (s, _) = app
        .webhook("orders/fulfilled", "f2", &fulfilled(6002, &at(3, 0)))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = app
        .webhook("orders/paid", "p2", &paid(6002, &at(5, 60)))
        .await;
    assert_eq!(
        (s, body["status"].as_str()),
        (StatusCode::OK, Some("delivered"))
    );
    assert_eq!(app.status("6002").await.as_deref(), Some("delivered"));

    // A newer event still applies: cancelling after delivery skips what is pending.
    let (s, _) = app
        .webhook("orders/cancelled", "c1", &cancelled(6001, &at(1, 0)))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(app.status("6001").await.as_deref(), Some("cancelled"));
    assert_eq!(pending(&app.followups("6001").await), 0);
}

#[tokio::test]
async fn the_topic_must_agree_with_the_body() {
    let app = app().await;
    let body = paid(7001, &at(5, 60));
    let (s, _) = app.webhook("orders/paid", "p1", &body).await;
    assert_eq!(s, StatusCode::OK);
    let stored = app.engine.store.order("7001").await.unwrap().unwrap();
    let scheduled = pending(&app.followups("7001").await);
    assert!(scheduled >= 1);

    // The captured paid body, re-sent as a cancel: refused, nothing changes.
    let (s, err) = app.webhook("orders/cancelled", "c1", &body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["field"], "cancelled_at");
    assert!(err["error"].as_str().unwrap().contains("cancelled_at"));
    assert_eq!(
        app.engine.store.order("7001").await.unwrap().unwrap(),
        stored
    );
    assert_eq!(pending(&app.followups("7001").await), scheduled);

    // … or as a fulfilment.
    let (s, err) = app.webhook("orders/fulfilled", "f1", &body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["field"], "fulfillment_status");
    assert_eq!(app.status("7001").await.as_deref(), Some("completed"));

    // A cancelled body is not a payment; an unpaid body is not one either.
    let (s, err) = app
        .webhook("orders/paid", "p2", &cancelled(7002, &at(4, 0)))
        .await;
    assert_eq!(
        (s, err["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("cancelled_at"))
    );
    let mut unpaid = paid(7003, &at(5, 60));
    unpaid["financial_status"] = json!("pending");
    let (s, err) = app.webhook("orders/paid", "p3", &unpaid).await;
    assert_eq!(
        (s, err["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("financial_status"))
    );
    assert_eq!(app.status("7002").await, None);
    assert_eq!(app.status("7003").await, None);

    // A refused delivery is not recorded: the right topic with that id is processed.
    let (s, body) = app
        .webhook("orders/cancelled", "c1", &cancelled(7001, &at(4, 0)))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["duplicate"], Value::Null, "{body}");
    assert_eq!(app.status("7001").await.as_deref(), Some("cancelled"));
}

#[tokio::test]
async fn shopify_ids_are_positive_integers() {
    let app = app().await;
    let template = paid(1, &at(5, 60)).to_string();
    let cases = [
        ("\"id\":1,", "1.5e20", "id"),
        ("\"id\":1,", "-5", "id"),
        ("\"id\":1,", "0", "id"),
        ("\"id\":1,", "1.5", "id"),
        ("\"id\":1,", "\"12a\"", "id"),
        ("\"id\":7001,", "-7001", "customer.id"),
        ("\"id\":7001,", "7.001e3", "customer.id"),
    ];
    for (i, (from, to, field)) in cases.iter().enumerate() {
        let key = from.split(':').next().unwrap();
        let body = template.replacen(from, &format!("{key}:{to},"), 1);
        assert_ne!(body, template, "{from}");
        let (s, err) = app.deliver("orders/paid", &format!("d{i}"), &body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{to}: {err}");
        assert_eq!(err["field"], *field, "{to}: {err}");
        assert!(err["why"].as_str().unwrap().contains("positive integer"));
    }
    let product = paid(8001, &at(5, 60)).to_string().replacen(
        "\"product_id\":632910392",
        "\"product_id\":-632910392",
        1,
    );
    let (s, err) = app.deliver("orders/paid", "dp", &product).await;
    assert_eq!(
        (s, err["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("line_items[0].product_id")
        )
    );
    // Nothing stored, under any spelling of those ids.
    for id in [
        "1.5e20",
        "1.5e+20",
        "150000000000000000000",
        "-5",
        "0",
        "1.5",
        "8001",
    ] {
        assert_eq!(app.status(id).await, None, "{id}");
    }
    assert!(app.engine.store.customer("7001").await.unwrap().is_none());
    assert!(app.engine.store.customer("-7001").await.unwrap().is_none());

    // Digit strings are ids too, in their canonical decimal form.
    let mut v = paid(1, &at(5, 60));
    v["id"] = json!("0009001");
    let (s, body) = app.webhook("orders/paid", "ds", &v).await;
    assert_eq!(
        (s, body["order_id"].as_str()),
        (StatusCode::OK, Some("9001"))
    );
    assert_eq!(app.status("9001").await.as_deref(), Some("completed"));
}

fn record(id: &str, status: &str) -> Value {
    let mut o = json!({"id": id, "customer_id": "C000001", "status": status, "created_at": at(6, 0),
        "items": [{"product_id": "P00001", "quantity": 1, "unit_price": "769.00"}], "total": "769.00", "currency": "USD"});
    if matches!(status, "completed" | "delivered" | "refunded") {
        o["completed_at"] = json!(at(5, 0));
    }
    if matches!(status, "delivered" | "refunded") {
        o["delivered_at"] = json!(at(4, 0));
    }
    o
}

#[tokio::test]
async fn the_api_moves_states_forward_only() {
    let app = app().await;
    let customer = json!({"id": "C000001", "email": "c1@example.com", "marketing_consent": true});
    let (s, _) = app.post_v1("customers", &customer).await;
    assert_eq!(s, StatusCode::ACCEPTED);

    // Forward: pending → completed → delivered, each step scheduling its campaigns.
    for status in ["pending", "completed", "delivered"] {
        let (s, body) = app.post_orders(&json!([record("A1", status)])).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        assert_eq!(app.status("A1").await.as_deref(), Some(status), "{body}");
    }
    let rows = app.followups("A1").await;
    assert!(rows.iter().any(|r| r.campaign == "upgrade"));

    // Backwards: delivered → completed keeps delivered; other fields update.
    let mut back = record("A1", "completed");
    back["total"] = json!("700.00");
    let (s, body) = app
        .post_orders(&json!([record("A2", "cancelled"), back]))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let o = app.engine.store.order("A1").await.unwrap().unwrap();
    assert_eq!(
        (o.status.as_str(), o.total.decimal()),
        ("delivered", "700.00".into())
    );
    assert!(o.delivered_at.is_some());
    assert_eq!(body["warnings"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["warnings"][0]["index"], 1);
    assert_eq!(body["warnings"][0]["field"], "status");
    assert!(
        body["warnings"][0]["why"]
            .as_str()
            .unwrap()
            .contains("delivered")
    );

    // Cancelled is final: completed afterwards keeps it cancelled and schedules nothing.
    let (s, body) = app.post_orders(&json!(record("A2", "completed"))).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(body["scheduled"], 0);
    assert_eq!(body["warnings"][0]["index"], 0);
    assert!(
        body["warnings"][0]["why"]
            .as_str()
            .unwrap()
            .contains("cancelled is final")
    );
    assert_eq!(app.status("A2").await.as_deref(), Some("cancelled"));
    assert!(app.followups("A2").await.is_empty());

    // Refunded after delivered is a move forward: pending follow-ups end skipped.
    let (s, body) = app.post_orders(&json!(record("A1", "refunded"))).await;
    assert_eq!(
        (s, body["warnings"].clone()),
        (StatusCode::ACCEPTED, json!([]))
    );
    assert_eq!(app.status("A1").await.as_deref(), Some("refunded"));
    assert_eq!(pending(&app.followups("A1").await), 0);
    // … and refunded is final too, even towards cancelled.
    let (_, body) = app.post_orders(&json!(record("A1", "cancelled"))).await;
    assert_eq!(body["warnings"][0]["field"], "status");
    assert_eq!(app.status("A1").await.as_deref(), Some("refunded"));
}

#[tokio::test]
async fn import_warns_about_lines_that_would_move_an_order_back() {
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let customers = dir.path().join("customers.jsonl");
    std::fs::write(
        &customers,
        r#"{"id":"C000001","email":"c1@example.com","marketing_consent":true}"#,
    )
    .unwrap();
    let (code, _, err) = common::run(
        &app.env,
        &["import", "customers", customers.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");

    let mut newer = record("I3", "completed");
    newer["updated_at"] = json!(at(2, 0));
    let first = dir.path().join("first.jsonl");
    let lines = [record("I1", "cancelled"), record("I2", "delivered"), newer];
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&first, text.join("\n")).unwrap();
    let (code, out, err) = common::run(&app.env, &["import", "orders", first.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");

    // Line 1 would revive a cancelled order, line 2 move a delivered one back, line 3
    // is older than the stored I3; line 5 would revive I4, cancelled on line 4.
    let second = dir.path().join("second.jsonl");
    let mut older = record("I3", "completed");
    older["updated_at"] = json!(at(3, 0));
    older["total"] = json!("1.00");
    let lines = [
        record("I1", "completed"),
        record("I2", "completed"),
        older,
        record("I4", "cancelled"),
        record("I4", "completed"),
    ];
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&second, text.join("\n")).unwrap();
    let name = second.to_str().unwrap();
    let (code, out, err) = common::run(&app.env, &["import", "orders", name]);
    assert_eq!(code, 0, "well-formed lines are not bad input: {out}{err}");
    assert_eq!(app.status("I4").await.as_deref(), Some("cancelled"));
    assert!(app.followups("I4").await.is_empty());
    assert_eq!(app.status("I1").await.as_deref(), Some("cancelled"));
    assert!(app.followups("I1").await.is_empty());
    assert_eq!(app.status("I2").await.as_deref(), Some("delivered"));
    let i3 = app.engine.store.order("I3").await.unwrap().unwrap();
    assert_eq!(
        i3.total.decimal(),
        "769.00",
        "the older line changed nothing"
    );
    for (line, field, says) in [
        (
            1,
            "status",
            "order stays cancelled (cancelled is final), not completed",
        ),
        (
            2,
            "status",
            "order stays delivered (states only move forward), not completed",
        ),
        (
            3,
            "updated_at",
            "is older than the stored order's; nothing changed",
        ),
        (5, "status", "order stays cancelled"),
    ] {
        let want = format!("{name}:{line}: warning: {field}: ");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&want) && l.contains(says)),
            "{want}…{says} in\n{err}"
        );
    }
    assert!(out.contains("4 warning(s)"), "{out}");
    assert!(out.contains("0 bad line(s)"), "{out}");
}
