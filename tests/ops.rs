//! Production operations (issue 15) over real parts: a real HTTP server on 127.0.0.1:0, a
//! fresh database (SQLite file, or PostgreSQL with `AFTERCART_TEST_DATABASE_URL`), the
//! sample store loaded, the SMTP test sink, and the real binary for the CLI commands.

mod common;

use common::web::{self, App, SHOPIFY_SECRET, TOKEN};

use aftercart::config::Settings;
use aftercart::domain::Timestamp;
use aftercart::jobs::Clock;
use aftercart_testkit::sink::{FaultPlan, SessionFaults, SmtpSink};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;

async fn app_with(extra: &[(&str, &str)]) -> App {
    web::start(None, extra).await
}

async fn app() -> App {
    app_with(&[]).await
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

fn fields(body: &Value) -> Vec<(i64, String)> {
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors list: {body}"))
        .iter()
        .map(|e| {
            assert!(e["why"].is_string(), "{e}");
            (
                e["index"].as_i64().unwrap(),
                e["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn api_errors_list_every_problem_of_every_rejected_record() {
    let app = app().await;

    // Two bad customers in a batch of three: every field of both, nothing stored.
    let (st, body) = app
        .post_v1(
            "/v1/customers",
            &json!([
                {"id": "C910001", "email": "good@x.example"},
                {"id": "", "email": "not-an-email", "marketing_consent": "yes"},
                {"id": "C910003", "email": "c@x.example", "timezone": "Mars/Base"},
            ]),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        fields(&body),
        [
            (1, "id".to_owned()),
            (1, "email".to_owned()),
            (1, "marketing_consent".to_owned()),
            (2, "timezone".to_owned()),
        ]
    );
    // The single-error fields are those of the first problem.
    assert_eq!(body["index"], 1);
    assert_eq!(body["field"], "id");
    assert_eq!(body["why"], body["errors"][0]["why"]);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("customers[1].id: ")
    );
    assert!(
        app.engine
            .store
            .customer("C910001")
            .await
            .unwrap()
            .is_none()
    );

    // An unknown product no longer hides a garbage total: type and format errors first,
    // then the referential one.
    let mut bad = order("O910001", "C910001", 4);
    bad["items"][0]["product_id"] = json!("P99999");
    bad["items"][0]["quantity"] = json!(0);
    bad["total"] = json!("12,5 dollars");
    let (st, body) = app
        .post_v1("/v1/orders", &json!([order("O910002", "C910001", 4), bad]))
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        fields(&body),
        [
            (1, "items[0].quantity".to_owned()),
            (1, "total".to_owned()),
            (1, "items[0].product_id".to_owned()),
        ]
    );
    assert_eq!(body["field"], "items[0].quantity");
    assert!(
        body["errors"][2]["why"]
            .as_str()
            .unwrap()
            .contains("unknown product P99999"),
        "{body}"
    );
    assert!(app.engine.store.order("O910002").await.unwrap().is_none());

    // Products and events too.
    let (st, body) = app
        .post_v1(
            "/v1/products",
            &json!({"id": "P910001", "title": "", "price": "abc", "in_stock": 1, "tags": ["ok", 3]}),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        fields(&body),
        [
            (0, "title".to_owned()),
            (0, "price".to_owned()),
            (0, "in_stock".to_owned()),
            (0, "tags[1]".to_owned()),
        ]
    );
    let (st, body) = app
        .post_v1(
            "/v1/events",
            &json!([{"customer_id": "C1", "product_id": "P00001", "kind": "stare", "at": "yesterday"}]),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        fields(&body),
        [(0, "kind".to_owned()), (0, "at".to_owned())]
    );

    // A body that is no JSON: 400, its one problem in the list too.
    let r = app
        .http
        .post(app.url("/v1/products"))
        .bearer_auth(TOKEN)
        .body("{\"id\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("JSON"), "{body}");
    assert_eq!(body["errors"][0]["field"], "(body)");
    assert_eq!(body["errors"].as_array().unwrap().len(), 1);

    // A good batch still goes through.
    let (st, body) = app
        .post_v1("/v1/orders", &order("O910002", "C900001", 4))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn status_groups_failed_followups_by_smtp_reply() {
    let sink = SmtpSink::start().await;
    // The relay refuses some recipients at RCPT (naming them) and every other message
    // at the end of DATA: two groups, whoever the recipients are.
    sink.set_session_faults(SessionFaults::rcpt(|to| {
        (to.len() % 2 == 0).then(|| format!("550 5.1.1 <{to}>: user unknown"))
    }));
    sink.set_faults(FaultPlan::always("554 5.7.1 message refused as spam"));
    let db = common::fresh_db().await;
    let env = common::base_env(&db.url, &sink.url());
    let s = common::settings(&env);
    let store = common::store(&s).await;
    common::import_sample(&store, &s, Some(40)).await;
    common::run_until_idle(&s, &store, common::clock_at_first_due(&store).await).await;
    assert_eq!(sink.count(), 0);

    let rows = store
        .followups(None, Some(aftercart::store::FollowupState::Failed), 100_000)
        .await
        .unwrap();
    let (mut unknown, mut spam) = (0i64, 0i64);
    for r in &rows {
        match r.smtp_reply.as_deref() {
            Some(x) if x.starts_with("550 5.1.1") => unknown += 1,
            Some("554 5.7.1 message refused as spam") => spam += 1,
            other => panic!("unexpected reply {other:?}: {r:?}"),
        }
    }
    assert!(unknown > 0 && spam > 0, "{unknown} {spam}");

    let (code, out, err) = tokio::task::spawn_blocking({
        let env = env.clone();
        move || common::run(&env, &["status", "--json"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["failed_by_reply"],
        json!({"550 5.1.1 <address> user unknown": unknown, "554 5.7.1 message refused as spam": spam}),
        "{doc}"
    );
    assert_eq!(doc["followups"]["failed"], unknown + spam);
    assert!(!out.contains("@"), "an address in status: {out}");

    let (code, out, err) = tokio::task::spawn_blocking(move || common::run(&env, &["status"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let section = out
        .split("failed by reply:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no grouping in {out}"));
    let lines: Vec<&str> = section.lines().take(2).map(str::trim).collect();
    assert_eq!(
        lines,
        [
            format!("{unknown}  550 5.1.1 <address> user unknown"),
            format!("{spam}  554 5.7.1 message refused as spam"),
        ],
        "{out}"
    );
}

/// The SQLite database's bytes (main file and WAL), to look for what must be gone. Read
/// by a child process: closing a file descriptor of the database in this process would
/// drop this process's POSIX locks on it (SQLite's connections here would then look
/// gone to other processes, which may delete the WAL under them).
fn sqlite_bytes(url: &str) -> Option<Vec<u8>> {
    let path = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("cat \"$1\"; cat \"$1-wal\" 2>/dev/null; true")
        .arg("sh")
        .arg(path)
        .output()
        .unwrap();
    assert!(!out.stdout.is_empty(), "cannot read {path}");
    Some(out.stdout)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn cli(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let env = env.to_vec();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::run(&env, &args)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn forget_erases_the_customer_and_a_reimport_sends_them_nothing() {
    let sink = SmtpSink::start().await;
    let db = common::fresh_db().await;
    let env = common::base_env(&db.url, &sink.url());
    let s = common::settings(&env);
    let store = common::store(&s).await;
    common::import_sample(&store, &s, Some(40)).await;
    let before = store.followups(None, None, 100_000).await.unwrap();
    let who = before[0].customer_id.clone();
    let c = store.customer(&who).await.unwrap().unwrap().customer;
    let email = c.email.to_string();
    let name = c.name.clone().unwrap();
    let theirs = |rows: &[aftercart::store::FollowupRow]| {
        rows.iter()
            .filter(|r| r.customer_id == who)
            .map(|r| (r.order_id.clone(), r.campaign.clone()))
            .collect::<std::collections::BTreeSet<_>>()
    };
    let keys = theirs(&before);
    assert!(!keys.is_empty());
    if let Some(bytes) = sqlite_bytes(&db.url) {
        assert!(
            contains(&bytes, &email),
            "the test looks for the wrong bytes"
        );
    }

    // By email (upper case: addresses match whatever their case).
    let (code, out, err) = cli(&env, &["forget", &email.to_uppercase()]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("customer {who}: personal data erased")),
        "{out}"
    );
    let (code, _, err) = cli(&env, &["forget", "nobody@nowhere.example"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no customer"), "{err}");

    let (code, out, err) = cli(&env, &["export-customer", &who]).await;
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let me = &doc["customers"][0];
    assert_eq!(me["customer"]["id"], who.as_str());
    assert!(
        me["customer"]["email"].is_null() && me["customer"]["name"].is_null(),
        "{me}"
    );
    assert_eq!(me["customer"]["marketing_consent"], false);
    assert!(me["customer"]["forgotten_at"].is_string());
    assert_eq!(me["events"], json!([]));
    assert!(!me["orders"].as_array().unwrap().is_empty(), "{me}");
    assert!(
        me["followups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["state"] == "skipped" && f["reason"] == "forgotten"),
        "{me}"
    );
    assert!(!out.contains(&email) && !out.contains(&name), "{out}");

    // Their email and name are gone from the database files.
    if let Some(bytes) = sqlite_bytes(&db.url) {
        assert!(
            !contains(&bytes, &email),
            "the address is still in the database file"
        );
        assert!(
            !contains(&bytes, &name),
            "the name is still in the database file"
        );
    }

    // A replay: customers and the same orders imported again, then the worker runs.
    let dir = tempfile::tempdir().unwrap();
    let orders = dir.path().join("orders.jsonl");
    let text = std::fs::read_to_string(common::sample("orders.jsonl")).unwrap();
    std::fs::write(
        &orders,
        text.lines().take(40).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    let customers = common::sample("customers.jsonl");
    for (kind, file) in [
        ("customers", customers.as_path()),
        ("orders", orders.as_path()),
    ] {
        let (code, out, err) = cli(&env, &["import", kind, file.to_str().unwrap()]).await;
        assert_eq!(code, 0, "{kind}: {out}{err}");
    }
    let c = store.customer(&who).await.unwrap().unwrap().customer;
    assert!(c.email.to_string().is_empty() && c.name.is_none() && !c.marketing_consent);
    common::run_until_idle(&s, &store, common::clock_at_first_due(&store).await).await;
    assert!(sink.count() > 0, "the others get their emails");
    assert!(
        sink.received()
            .iter()
            .all(|m| !m.to.iter().any(|r| r.eq_ignore_ascii_case(&email))),
        "an email went to a forgotten customer"
    );
    let after = store.followups(None, None, 100_000).await.unwrap();
    assert_eq!(
        theirs(&after),
        keys,
        "the ledger keeps its keys, and gets no new ones"
    );
    assert!(
        after
            .iter()
            .filter(|r| r.customer_id == who)
            .all(|r| r.state == "skipped"),
        "{after:?}"
    );
    if let Some(bytes) = sqlite_bytes(&db.url) {
        assert!(
            !contains(&bytes, &email),
            "a re-import brought the address back"
        );
    }
}

impl App {
    /// A signed delivery to `POST /webhooks/shopify`.
    async fn shopify(&self, topic: &str, delivery: &str, body: &Value) -> (StatusCode, Value) {
        let raw = serde_json::to_vec(body).unwrap();
        let r = self
            .http
            .post(self.url("/webhooks/shopify"))
            .header("X-Shopify-Topic", topic)
            .header("X-Shopify-Webhook-Id", delivery)
            .header("X-Shopify-Hmac-Sha256", sign(&raw, SHOPIFY_SECRET))
            .header("Content-Type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// Shopify's documented `products/create` example (REST Admin API), trimmed of fields
/// aftercart does not read.
fn shopify_product(sku_small: &str, small: i64, medium: i64) -> Value {
    json!({
        "admin_graphql_api_id": "gid://shopify/Product/788032119674292922",
        "body_html": "An example T-Shirt", "created_at": null, "handle": "example-t-shirt",
        "id": 788032119674292922u64, "product_type": "Shirts", "published_at": "2021-12-31T19:00:00-05:00",
        "template_suffix": null, "title": "Example T-Shirt", "updated_at": "2021-12-31T19:00:00-05:00",
        "vendor": "Acme", "status": "active", "published_scope": "web", "tags": "example, mens, t-shirt",
        "variants": [
            {"admin_graphql_api_id": "gid://shopify/ProductVariant/642667041472713922", "barcode": null,
             "compare_at_price": "24.99", "created_at": null, "fulfillment_service": "manual",
             "id": 642667041472713922u64, "inventory_management": "shopify", "position": 0, "price": "19.99",
             "product_id": 788032119674292922u64, "sku": sku_small, "taxable": true, "title": "Small",
             "updated_at": null, "option1": "Small", "inventory_item_id": null,
             "inventory_quantity": small, "old_inventory_quantity": small, "requires_shipping": true},
            {"admin_graphql_api_id": "gid://shopify/ProductVariant/757650484644203962", "barcode": null,
             "compare_at_price": "24.99", "created_at": null, "fulfillment_service": "manual",
             "id": 757650484644203962u64, "inventory_management": "shopify", "position": 0, "price": "19.99",
             "product_id": 788032119674292922u64, "sku": "example-shirt-m", "taxable": true, "title": "Medium",
             "updated_at": null, "option1": "Medium", "inventory_item_id": null,
             "inventory_quantity": medium, "old_inventory_quantity": medium, "requires_shipping": true}
        ],
        "options": [], "images": [], "image": null
    })
}

fn shopify_order(id: u64, customer: u64, email: &str) -> Value {
    json!({
        "id": id, "name": "#1001", "email": email, "created_at": days_ago(5),
        "processed_at": days_ago(4), "total_price": "769.00", "currency": "USD", "financial_status": "paid",
        "customer": {"id": customer, "email": email, "first_name": "Sam", "last_name": "Buyer",
                     "email_marketing_consent": {"state": "subscribed"}},
        "line_items": [{"id": 1, "sku": "P00001", "product_id": 632_910_392_u64, "quantity": 1, "price": "769.00"}]
    })
}

#[tokio::test]
async fn shopify_topics_at_one_url() {
    let app = app().await;
    let store = &app.engine.store;
    let before = store.product("P00002").await.unwrap().unwrap();

    // Unsigned or forged: 401, nothing changes.
    let body = shopify_product("P00002", 0, 0);
    let r = app
        .http
        .post(app.url("/webhooks/shopify"))
        .header("X-Shopify-Topic", "products/update")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .http
        .post(app.url("/webhooks/shopify"))
        .header("X-Shopify-Topic", "products/update")
        .header("X-Shopify-Hmac-Sha256", sign(b"{}", SHOPIFY_SECRET))
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(store.product("P00002").await.unwrap().unwrap(), before);

    // A variant's sku names a catalog product: that one is updated; sold out everywhere.
    let (st, out) = app.shopify("products/update", "p1", &body).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    let p = store.product("P00002").await.unwrap().unwrap();
    assert_eq!(
        (p.title.as_str(), p.price.decimal().as_str(), p.in_stock),
        ("Example T-Shirt", "19.99", false)
    );
    assert_eq!(
        p.compatible_with, before.compatible_with,
        "fields Shopify does not know are kept"
    );
    assert_eq!(p.category, before.category);
    // Back in stock (another variant), then a replay of the sold-out delivery: no change.
    let (st, _) = app
        .shopify("products/update", "p2", &shopify_product("P00002", 0, 3))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(store.product("P00002").await.unwrap().unwrap().in_stock);
    let (st, out) = app.shopify("products/update", "p1", &body).await;
    assert_eq!((st, &out["duplicate"]), (StatusCode::OK, &json!(true)));
    assert!(store.product("P00002").await.unwrap().unwrap().in_stock);

    // No sku in the catalog: the product's id; untracked inventory is in stock.
    let mut created = shopify_product("example-shirt-s", 0, 0);
    created["variants"][1]["inventory_management"] = Value::Null;
    let (st, out) = app.shopify("products/create", "p3", &created).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    let p = store.product("788032119674292922").await.unwrap().unwrap();
    assert!(p.in_stock);
    assert_eq!(p.brand.as_deref(), Some("Acme"));
    assert_eq!(p.category.as_ref().map(|c| c.as_str()), Some("Shirts"));
    // A bad price is named by its payload field.
    let mut bad = created.clone();
    bad["variants"][0]["price"] = json!("free");
    let (st, out) = app.shopify("products/update", "p4", &bad).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{out}");
    assert_eq!(out["field"], "variants[0].price");

    // Orders at the shared URL too, then consent withdrawn by customers/update.
    let order = shopify_order(820_982_911, 7_001, "sam@buyer.example");
    let (st, out) = app.shopify("orders/paid", "o1", &order).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(out["scheduled"], 1, "{out}");
    let c = store.customer("7001").await.unwrap().unwrap().customer;
    assert!(c.marketing_consent);
    let update = json!({
        "id": 7_001, "email": "sam@buyer.example", "created_at": "2021-12-31T19:00:00-05:00",
        "updated_at": "2021-12-31T19:00:00-05:00", "first_name": "Sam", "last_name": "Buyer",
        "orders_count": 1, "state": "disabled", "total_spent": "0.00", "last_order_id": null,
        "note": null, "verified_email": true, "tax_exempt": false, "tags": "", "currency": "USD",
        "phone": null, "addresses": [], "tax_exemptions": [],
        "email_marketing_consent": {"state": "unsubscribed", "opt_in_level": "single_opt_in", "consent_updated_at": null},
        "sms_marketing_consent": null, "admin_graphql_api_id": "gid://shopify/Customer/7001"
    });
    let (st, out) = app.shopify("customers/update", "c1", &update).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert!(
        !store
            .customer("7001")
            .await
            .unwrap()
            .unwrap()
            .customer
            .marketing_consent
    );

    // customers/data_request (Shopify's example shape): recorded, 200.
    let request = json!({
        "shop_id": 954889, "shop_domain": "example.myshopify.com", "orders_requested": [820_982_911u64],
        "customer": {"id": 7_001, "email": "sam@buyer.example", "phone": "555-625-1199"},
        "data_request": {"id": 9999}
    });
    let (st, out) = app.shopify("customers/data_request", "d1", &request).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    let export = store.export_customer("7001").await.unwrap();
    assert_eq!(
        export[0]["data_requests"][0]["id"], "shopify:9999",
        "{export:?}"
    );
    assert_eq!(export[0]["customer"]["email"], "sam@buyer.example");
    assert_eq!(export[0]["orders"][0]["id"], "820982911");

    // customers/redact: erased; a replayed order (new delivery id) brings nothing back.
    let redact = json!({
        "shop_id": 954889, "shop_domain": "example.myshopify.com",
        "customer": {"id": 7_001, "email": "sam@buyer.example", "phone": "555-625-1199"},
        "orders_to_redact": [820_982_911u64]
    });
    let (st, out) = app.shopify("customers/redact", "r1", &redact).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(out["forgotten"], json!(["7001"]));
    let (st, out) = app.shopify("orders/paid", "o2", &order).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(out["scheduled"], 0, "{out}");
    let (st, _) = app.shopify("customers/update", "c2", &update).await;
    assert_eq!(st, StatusCode::OK);
    let c = store.customer("7001").await.unwrap().unwrap().customer;
    assert!(
        c.email.to_string().is_empty() && c.name.is_none() && !c.marketing_consent,
        "{c:?}"
    );
    let rows = store.followups(Some("820982911"), None, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].state.as_str(), rows[0].reason.as_deref()),
        ("skipped", Some("forgotten"))
    );

    // A topic we do not handle: 200, ignored. No topic: 400.
    let (st, out) = app.shopify("app/uninstalled", "u1", &json!({})).await;
    assert_eq!(
        (st, &out["ignored"]),
        (StatusCode::OK, &json!("app/uninstalled"))
    );
}

fn postmark_bounce(id: u64, kind: &str, email: &str) -> Value {
    // Postmark's documented bounce webhook example, with our recipient.
    json!({
        "RecordType": "Bounce", "MessageStream": "outbound", "ID": id, "Type": kind, "TypeCode": 1,
        "Name": "Hard bounce", "Tag": "Test", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"a_key": "a_value", "b_key": "b_value"}, "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "Test bounce details", "Email": email, "From": "sender@example.com",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z", "DumpAvailable": true, "Inactive": true,
        "CanActivate": true, "Subject": "Test subject", "Content": "<Full dump of bounce>"
    })
}

fn mailgun_event(key: &str, ts: i64, token: &str, event: Value) -> Value {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{ts}{token}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    json!({"signature": {"timestamp": ts.to_string(), "token": token, "signature": signature},
           "event-data": event})
}

/// Mailgun's documented "failed" (permanent) event, with our recipient and Message-ID.
fn mailgun_failed(email: &str, message_id: &str, severity: &str) -> Value {
    json!({
        "event": "failed", "id": "G9Bn5sl1TC6nu79C8C0bwg", "timestamp": 1529006854.329574,
        "log-level": "error", "severity": severity, "reason": "bounce", "recipient": email,
        "recipient-domain": "example.com", "envelope": {"sender": "bob@sandbox.mailgun.org", "transport": "smtp", "targets": email},
        "delivery-status": {"code": 550, "message": "5.1.1 The email account that you tried to reach does not exist",
                            "description": "", "attempt-no": 1},
        "message": {"headers": {"to": email, "message-id": message_id, "from": "Bob <bob@sandbox.mailgun.org>",
                                "subject": "Test permanent_fail webhook"}, "attachments": [], "size": 111},
        "flags": {"is-routed": false, "is-authenticated": true, "is-system-test": false, "is-test-mode": false},
        "tags": ["my_tag_1"], "user-variables": {"my_var_1": "Mailgun Variable #1"}
    })
}

impl App {
    /// Runs a worker with a manual clock (starting now) against the sink until idle.
    async fn run_worker(&self) {
        let mut engine = self.engine.clone();
        engine.clock = Clock::manual(Timestamp::now());
        let mailer = aftercart::mail::Mailer::connect(aftercart::mail::MailerConfig {
            url: self.sink.url(),
            pool_size: 2,
            timeout: std::time::Duration::from_secs(10),
            data_timeout: std::time::Duration::from_secs(600),
            probe_base: std::time::Duration::from_secs(1),
            probe_max: std::time::Duration::from_secs(300),
            username: None,
            password: None,
        })
        .await
        .unwrap();
        aftercart::jobs::Worker::new(
            engine,
            std::sync::Arc::new(mailer),
            aftercart::jobs::RunOptions::new(true),
        )
        .run(std::future::pending())
        .await
        .unwrap();
    }

    async fn bounce(
        &self,
        provider: &str,
        body: &Value,
        basic: Option<(&str, &str)>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(self.url(&format!("/webhooks/bounces/{provider}")))
            .json(body);
        if let Some((u, p)) = basic {
            req = req.basic_auth(u, Some(p));
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn suppression(&self, email: &str) -> Option<String> {
        self.engine
            .store
            .suppressions()
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.email == email)
            .map(|s| s.reason)
    }
}

#[tokio::test]
async fn bounce_webhooks_postmark_and_mailgun() {
    let app = app_with(&[
        ("AFTERCART__BOUNCES__WEBHOOK_SECRET", "pm-secret"),
        ("AFTERCART__BOUNCES__MAILGUN_SIGNING_KEY", "mg-key"),
    ])
    .await;

    // Postmark: Basic auth with the secret as password.
    let hard = postmark_bounce(4323372036854775807, "HardBounce", "gone@x.example");
    for auth in [None, Some(("postmark", "wrong")), Some(("pm-secret", ""))] {
        let (st, out) = app.bounce("postmark", &hard, auth).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{auth:?}: {out}");
    }
    assert_eq!(app.suppression("gone@x.example").await, None);
    let (st, out) = app
        .bounce("postmark", &hard, Some(("postmark", "pm-secret")))
        .await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(out["kind"], "hard_bounce");
    assert_eq!(
        app.suppression("gone@x.example").await.as_deref(),
        Some("hard_bounce")
    );
    let (st, out) = app
        .bounce("postmark", &hard, Some(("postmark", "pm-secret")))
        .await;
    assert_eq!((st, &out["duplicate"]), (StatusCode::OK, &json!(true)));

    let soft = postmark_bounce(43, "SoftBounce", "full@x.example");
    let (st, out) = app
        .bounce("postmark", &soft, Some(("u", "pm-secret")))
        .await;
    assert_eq!(
        (st, &out["kind"]),
        (StatusCode::OK, &json!("soft_bounce")),
        "{out}"
    );
    assert_eq!(app.suppression("full@x.example").await, None);

    let mut complaint = postmark_bounce(42, "SpamComplaint", "angry@x.example");
    complaint["RecordType"] = json!("SpamComplaint");
    complaint["TypeCode"] = json!(512);
    let (st, out) = app
        .bounce("postmark", &complaint, Some(("u", "pm-secret")))
        .await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(
        app.suppression("angry@x.example").await.as_deref(),
        Some("complaint")
    );

    // Mailgun: a signed permanent failure naming a follow-up's Message-ID.
    let (st, body) = app
        .post_v1("/v1/orders", &order("O920001", "C000001", 4))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    app.run_worker().await;
    let row = app
        .engine
        .store
        .followups(Some("O920001"), None, 10)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(row.state, "sent", "{row:?}");
    let message_id = row.message_id.clone().unwrap();
    let now = Timestamp::now().0 / 1000;
    let event = mailgun_failed("ava.schmidt@mail.example.com", &message_id, "permanent");
    let forged = mailgun_event("not-the-key", now, "tok1", event.clone());
    let (st, _) = app.bounce("mailgun", &forged, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let stale = mailgun_event("mg-key", now - 3600, "tok2", event.clone());
    let (st, _) = app.bounce("mailgun", &stale, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(app.suppression("ava.schmidt@mail.example.com").await, None);
    let good = mailgun_event("mg-key", now, "tok3", event);
    let (st, out) = app.bounce("mailgun", &good, None).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(out["kind"], "hard_bounce");
    assert_eq!(
        app.suppression("ava.schmidt@mail.example.com")
            .await
            .as_deref(),
        Some("hard_bounce")
    );
    assert_eq!(
        out["followups"], 1,
        "the follow-up records the outcome: {out}"
    );
    let export = app.engine.store.export_customer("C000001").await.unwrap();
    let f = export[0]["followups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["order_id"] == "O920001")
        .unwrap()
        .clone();
    assert_eq!(f["bounce"], "hard_bounce", "{f}");
    let (st, out) = app.bounce("mailgun", &good, None).await;
    assert_eq!(
        (st, &out["duplicate"]),
        (StatusCode::OK, &json!(true)),
        "a replayed token"
    );
    let temp = mailgun_event(
        "mg-key",
        now,
        "tok4",
        mailgun_failed("full@x.example", "<x@y>", "temporary"),
    );
    let (st, out) = app.bounce("mailgun", &temp, None).await;
    assert_eq!(
        (st, &out["kind"]),
        (StatusCode::OK, &json!("soft_bounce")),
        "{out}"
    );
    let complained = mailgun_event(
        "mg-key",
        now,
        "tok5",
        json!({"event": "complained", "recipient": "angry2@x.example",
        "timestamp": 1529006854.329574, "id": "-Agny091SquKnsrW2NEKUA", "message": {"headers": {"message-id": "<a@b>"}}}),
    );
    let (st, _) = app.bounce("mailgun", &complained, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        app.suppression("angry2@x.example").await.as_deref(),
        Some("complaint")
    );

    // Providers whose signatures are not verified yet are refused, unknown ones 404.
    let (st, _) = app
        .bounce("ses", &json!({"Type": "Notification"}), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = app
        .bounce("sendgrid", &json!([{"event": "bounce"}]), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = app.bounce("nope", &json!({}), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let counts = app.engine.store.bounce_counts().await.unwrap();
    assert_eq!(counts.get("postmark soft_bounce"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("mailgun hard_bounce"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("postmark hard_bounce"), Some(&1), "{counts:?}");
}

#[tokio::test]
async fn bounce_webhooks_sendgrid_signed_events() {
    use base64::engine::general_purpose::STANDARD;
    use p256::ecdsa::signature::Signer as _;
    let key = p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
    // SubjectPublicKeyInfo DER of a P-256 key: the fixed header, then the SEC1 point.
    let mut der = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    der.extend_from_slice(key.verifying_key().to_encoded_point(false).as_bytes());
    let public = STANDARD.encode(der);
    // A key that is not one is refused at start, naming the key.
    let env = [(
        "AFTERCART__BOUNCES__SENDGRID_PUBLIC_KEY".to_owned(),
        "bm90IGEga2V5".to_owned(),
    )];
    let err = Settings::load_with_env(None, &env).unwrap_err().to_string();
    assert!(err.contains("bounces.sendgrid_public_key"), "{err}");

    let app = app_with(&[("AFTERCART__BOUNCES__SENDGRID_PUBLIC_KEY", public.as_str())]).await;
    // SendGrid's documented event examples (bounce, blocked bounce, spam report, open).
    let events = json!([
        {"email": "gone@x.example", "timestamp": 1513299569, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "bounce", "category": "cat facts", "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
         "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0", "reason": "500 unknown recipient",
         "status": "5.0.0", "type": "bounce"},
        {"email": "busy@x.example", "timestamp": 1513299569, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "bounce", "sg_event_id": "7g4ZI7SA-xmRDv57GoPIPw==", "reason": "blocked", "status": "4.0.0", "type": "blocked"},
        {"email": "angry@x.example", "timestamp": 1513299569, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "spamreport", "sg_event_id": "8g4ZI7SA-xmRDv57GoPIPw==", "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001"},
        {"email": "fine@x.example", "timestamp": 1513299569, "event": "open", "sg_event_id": "9g4ZI7SA"}
    ]);
    let raw = serde_json::to_vec(&events).unwrap();
    let post = |ts: String, sig: Option<String>, raw: Vec<u8>| {
        let mut req = app
            .http
            .post(app.url("/webhooks/bounces/sendgrid"))
            .header("X-Twilio-Email-Event-Webhook-Timestamp", ts)
            .header("Content-Type", "application/json")
            .body(raw);
        if let Some(sig) = sig {
            req = req.header("X-Twilio-Email-Event-Webhook-Signature", sig);
        }
        req.send()
    };
    let sign = |ts: &str, raw: &[u8]| {
        let mut m = ts.as_bytes().to_vec();
        m.extend_from_slice(raw);
        let sig: p256::ecdsa::Signature = key.sign(&m);
        STANDARD.encode(sig.to_der().as_bytes())
    };
    let now = (Timestamp::now().0 / 1000).to_string();
    let r = post(now.clone(), None, raw.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Signed, then the body altered.
    let mut altered = raw.clone();
    altered[10] ^= 1;
    let r = post(now.clone(), Some(sign(&now, &raw)), altered)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let old = (Timestamp::now().0 / 1000 - 3600).to_string();
    let r = post(old.clone(), Some(sign(&old, &raw)), raw.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.suppression("gone@x.example").await, None);

    let r = post(now.clone(), Some(sign(&now, &raw)), raw.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let out: Value = r.json().await.unwrap();
    let kinds: Vec<&Value> = out["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["kind"])
        .collect();
    assert_eq!(
        kinds,
        [
            &json!("hard_bounce"),
            &json!("soft_bounce"),
            &json!("complaint"),
            &Value::Null
        ],
        "{out}"
    );
    assert_eq!(
        app.suppression("gone@x.example").await.as_deref(),
        Some("hard_bounce")
    );
    assert_eq!(app.suppression("busy@x.example").await, None);
    assert_eq!(
        app.suppression("angry@x.example").await.as_deref(),
        Some("complaint")
    );
    // A redelivery: each event once.
    let r = post(now.clone(), Some(sign(&now, &raw)), raw.clone())
        .await
        .unwrap();
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["events"][0]["duplicate"], true, "{out}");
    let counts = app.engine.store.bounce_counts().await.unwrap();
    assert_eq!(counts.get("sendgrid soft_bounce"), Some(&1), "{counts:?}");
}

/// An SNS notification carrying SES's documented bounce example.
fn ses_notification(id: &str, bounce_type: &str, email: &str) -> Value {
    let message = json!({
        "notificationType": "Bounce",
        "bounce": {"bounceType": bounce_type, "reportingMTA": "dns; email.example.com",
                   "bouncedRecipients": [{"emailAddress": email, "status": "5.1.1", "action": "failed",
                                          "diagnosticCode": "smtp; 550 5.1.1 <jane@example.com>... User"}],
                   "bounceSubType": "General", "timestamp": "2016-01-27T14:59:44.101Z",
                   "feedbackId": "00000138111222aa-44455566-cccc-cccc-cccc-ddddaaaa068a-000000"},
        "mail": {"timestamp": "2016-01-27T14:59:38.237Z", "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
                 "source": "john@example.com", "sourceArn": "arn:aws:ses:us-east-1:888888888888:identity/example.com",
                 "sendingAccountId": "123456789012", "destination": [email],
                 "headersTruncated": false, "headers": [{"name": "Message-ID", "value": "<abc@example.com>"}],
                 "commonHeaders": {"from": ["John Doe <john@example.com>"], "to": [email],
                                   "messageId": "<abc@example.com>", "subject": "Hello"}}
    });
    json!({
        "Type": "Notification", "MessageId": id,
        "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic", "Subject": "Amazon SES Email Event Notification",
        "Message": message.to_string(), "Timestamp": "2012-04-26T20:45:04.751Z", "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxYDVrY0Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=",
        "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
        "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-west-2:123456789012:MyTopic:c9135db0-26c4-47ec-8998-413945fb5a96"
    })
}

#[tokio::test]
async fn bounce_webhooks_ses_when_explicitly_allowed() {
    let app = app_with(&[("AFTERCART__BOUNCES__SES_ALLOW_UNVERIFIED", "true")]).await;
    // The subscription handshake: answered 200 with the URL to open.
    let confirm = json!({
        "Type": "SubscriptionConfirmation", "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37f", "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
        "Message": "You have chosen to subscribe to the topic arn:aws:sns:us-west-2:123456789012:MyTopic.",
        "SubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:123456789012:MyTopic&Token=2336412f37f",
        "Timestamp": "2012-04-26T20:45:04.751Z", "SignatureVersion": "1", "Signature": "EXAMPLE",
        "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
    });
    let (st, out) = app.bounce("ses", &confirm, None).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert!(
        out["subscribe_url"]
            .as_str()
            .unwrap()
            .contains("ConfirmSubscription")
    );

    let (st, out) = app
        .bounce(
            "ses",
            &ses_notification("m1", "Permanent", "gone@x.example"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(out["recipients"][0]["kind"], "hard_bounce");
    assert_eq!(
        app.suppression("gone@x.example").await.as_deref(),
        Some("hard_bounce")
    );
    let (st, out) = app
        .bounce(
            "ses",
            &ses_notification("m1", "Permanent", "gone@x.example"),
            None,
        )
        .await;
    assert_eq!(
        (st, &out["recipients"][0]["duplicate"]),
        (StatusCode::OK, &json!(true))
    );
    let (st, out) = app
        .bounce(
            "ses",
            &ses_notification("m2", "Transient", "full@x.example"),
            None,
        )
        .await;
    assert_eq!(
        (st, &out["recipients"][0]["kind"]),
        (StatusCode::OK, &json!("soft_bounce")),
        "{out}"
    );
    assert_eq!(app.suppression("full@x.example").await, None);

    let complaint = json!({"notificationType": "Complaint",
        "complaint": {"userAgent": "AnyCompany Feedback Loop (V0.01)", "complainedRecipients": [{"emailAddress": "angry@x.example"}],
                      "complaintFeedbackType": "abuse", "timestamp": "2016-01-27T14:59:38.237Z", "feedbackId": "000001378603177f"},
        "mail": {"messageId": "000001378603177f-7a5433e7", "commonHeaders": {"messageId": "<abc@example.com>"}}});
    let mut n = ses_notification("m3", "Permanent", "x@x.example");
    n["Message"] = json!(complaint.to_string());
    let (st, out) = app.bounce("ses", &n, None).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(
        app.suppression("angry@x.example").await.as_deref(),
        Some("complaint")
    );
}

/// Signs an SNS message as SNS does (canonical string, RSA PKCS#1 v1.5), with openssl.
fn sns_sign(msg: &mut Value, key: &Path, version: &str) {
    let keys: &[&str] = if msg["Type"] == "Notification" {
        &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]
    } else {
        &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
    };
    let mut canonical = String::new();
    for k in keys {
        if let Some(v) = msg[*k].as_str() {
            canonical.push_str(&format!("{k}\n{v}\n"));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, canonical).unwrap();
    let digest = if version == "1" { "-sha1" } else { "-sha256" };
    let out = std::process::Command::new("openssl")
        .args(["dgst", digest, "-sign"])
        .arg(key)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    msg["SignatureVersion"] = json!(version);
    msg["Signature"] = json!(base64::engine::general_purpose::STANDARD.encode(out.stdout));
}

#[tokio::test]
async fn bounce_webhooks_ses_signatures_verified_with_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=sns.test",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A file that is no certificate is refused at start, naming the key.
    let env = [(
        "AFTERCART__BOUNCES__SES_CERTIFICATE".to_owned(),
        key.display().to_string(),
    )];
    let err = Settings::load_with_env(None, &env).unwrap_err().to_string();
    assert!(err.contains("bounces.ses_certificate"), "{err}");

    let cert_path = cert.display().to_string();
    let app = app_with(&[("AFTERCART__BOUNCES__SES_CERTIFICATE", cert_path.as_str())]).await;
    let mut n = ses_notification("s1", "Permanent", "gone@x.example");
    // AWS's example signature is not ours: refused.
    let (st, _) = app.bounce("ses", &n, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    sns_sign(&mut n, &key, "2");
    let mut altered = n.clone();
    altered["Message"] = json!(
        altered["Message"]
            .as_str()
            .unwrap()
            .replace("gone@", "other@")
    );
    let (st, _) = app.bounce("ses", &altered, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(app.suppression("other@x.example").await, None);
    let (st, out) = app.bounce("ses", &n, None).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(
        app.suppression("gone@x.example").await.as_deref(),
        Some("hard_bounce")
    );
    // SignatureVersion 1 (SHA-1) too.
    let mut n1 = ses_notification("s2", "Permanent", "gone1@x.example");
    sns_sign(&mut n1, &key, "1");
    let (st, out) = app.bounce("ses", &n1, None).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(
        app.suppression("gone1@x.example").await.as_deref(),
        Some("hard_bounce")
    );
}

/// Shopify's documented `inventory_levels/update` example shape.
fn shopify_level(item: u64, location: u64, available: Option<i64>, at: &str) -> Value {
    json!({"inventory_item_id": item, "location_id": location, "available": available,
           "updated_at": at, "admin_graphql_api_id": format!("gid://shopify/InventoryLevel/{location}?inventory_item_id={item}")})
}

#[tokio::test]
async fn shopify_stock_changes_reach_picks_in_every_process() {
    let app = app().await;
    let e = &app.engine;
    let store = &e.store;
    let campaign = e
        .settings
        .campaigns
        .iter()
        .find(|c| c.name.as_str() == "complete_your_setup")
        .unwrap()
        .clone();
    let now = Timestamp::now();
    // An order with picks; its first pick is the product whose stock changes.
    let mut found = None;
    for o in store.recent_orders(500).await.unwrap() {
        let picks = e.picks(&o, &campaign, e.history(&o, now).await.unwrap());
        if let Some(p) = picks.first() {
            found = Some((o, p.product_id.clone()));
            break;
        }
    }
    let (order, pick) = found.expect("an order with picks");
    let picks_now = || async {
        let h = e.history(&order, Timestamp::now()).await.unwrap();
        e.picks(&order, &campaign, h)
            .into_iter()
            .map(|p| p.product_id)
            .collect::<Vec<_>>()
    };
    // Another worker process on the same database, with its own model.
    let other = common::engine((*e.settings).clone(), store.clone(), Clock::System).await;
    assert_eq!(other.model().in_stock(&pick), Some(true));

    // products/update: the variants' inventory items, both sold out.
    let mut product = shopify_product(pick.as_str(), 0, 0);
    product["variants"][0]["inventory_item_id"] = json!(49_148_385u64);
    product["variants"][1]["inventory_item_id"] = json!(49_148_386u64);
    let (st, out) = app.shopify("products/update", "p1", &product).await;
    assert_eq!(
        (st, &out["in_stock"]),
        (StatusCode::OK, &json!(false)),
        "{out}"
    );
    assert!(
        !picks_now().await.contains(&pick),
        "sold out: not picked here"
    );
    assert!(other.refresh_stock(Timestamp::now()).await.unwrap() >= 1);
    assert_eq!(other.model().in_stock(&pick), Some(false), "nor there");

    // Three arrive at one location: back in stock, here at once.
    let lvl = shopify_level(49_148_385, 24_826_418, Some(3), "2024-06-01T10:00:00-04:00");
    let (st, out) = app.shopify("inventory_levels/update", "l1", &lvl).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(
        (&out["product_id"], &out["in_stock"]),
        (&json!(pick.as_str()), &json!(true))
    );
    assert!(
        store
            .product(pick.as_str())
            .await
            .unwrap()
            .unwrap()
            .in_stock
    );
    assert!(
        picks_now().await.contains(&pick),
        "back in stock: picked again"
    );
    // The same delivery again, and an older one under a new id: nothing changes.
    let (_, out) = app.shopify("inventory_levels/update", "l1", &lvl).await;
    assert_eq!(out["duplicate"], true, "{out}");
    let older = shopify_level(49_148_385, 24_826_418, Some(0), "2024-06-01T09:00:00-04:00");
    let (st, out) = app.shopify("inventory_levels/update", "l2", &older).await;
    assert_eq!((st, &out["stale"]), (StatusCode::OK, &json!(true)), "{out}");
    assert!(
        store
            .product(pick.as_str())
            .await
            .unwrap()
            .unwrap()
            .in_stock
    );
    // A second location counts too: sold out at the first, 2 left at the second.
    let second = shopify_level(
        49_148_385,
        905_684_977,
        Some(2),
        "2024-06-01T11:00:00-04:00",
    );
    let (_, out) = app.shopify("inventory_levels/update", "l3", &second).await;
    assert_eq!(out["in_stock"], true, "{out}");
    let first_out = shopify_level(49_148_385, 24_826_418, Some(0), "2024-06-01T11:30:00-04:00");
    let (_, out) = app
        .shopify("inventory_levels/update", "l4", &first_out)
        .await;
    assert_eq!(
        out["in_stock"], true,
        "2 left at the second location: {out}"
    );
    let second_out = shopify_level(
        49_148_385,
        905_684_977,
        Some(0),
        "2024-06-01T12:00:00-04:00",
    );
    let (_, out) = app
        .shopify("inventory_levels/update", "l5", &second_out)
        .await;
    assert_eq!(out["in_stock"], false, "{out}");
    assert!(!picks_now().await.contains(&pick));
    // The other process follows, and keeps following.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    other.refresh_stock(Timestamp::now()).await.unwrap();
    assert_eq!(other.model().in_stock(&pick), Some(false));

    // An item no product delivery named: ignored, 200.
    let (st, out) = app
        .shopify(
            "inventory_levels/update",
            "l6",
            &shopify_level(777, 1, Some(9), "2024-06-01T12:00:00Z"),
        )
        .await;
    assert_eq!(
        (st, &out["ignored"]),
        (StatusCode::OK, &json!("unknown inventory_item_id")),
        "{out}"
    );
    // Bad payloads are named by field; nothing is stored, and the delivery id is free.
    for (bad, field) in [
        (
            json!({"location_id": 1, "available": 1, "updated_at": "2024-06-01T12:00:00Z"}),
            "inventory_item_id",
        ),
        (
            shopify_level(49_148_385, 1, Some(1), "yesterday"),
            "updated_at",
        ),
        (
            json!({"inventory_item_id": 49_148_385u64, "location_id": 1, "available": "lots", "updated_at": "2024-06-01T12:00:00Z"}),
            "available",
        ),
    ] {
        let (st, out) = app.shopify("inventory_levels/update", "l7", &bad).await;
        assert_eq!(
            (st, &out["field"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!(field)),
            "{out}"
        );
    }
    assert!(
        !store
            .product(pick.as_str())
            .await
            .unwrap()
            .unwrap()
            .in_stock
    );

    // A draft product is not for sale, whatever its levels say.
    product["status"] = json!("draft");
    product["variants"][0]["inventory_quantity"] = json!(5);
    let (_, out) = app.shopify("products/update", "p2", &product).await;
    assert_eq!(out["in_stock"], false, "{out}");
    let lvl = shopify_level(49_148_386, 24_826_418, Some(8), "2024-06-02T10:00:00-04:00");
    let (_, out) = app.shopify("inventory_levels/update", "l8", &lvl).await;
    assert_eq!(out["in_stock"], false, "{out}");
}
