//! Production operations (issue 15) over real parts: a real HTTP server on 127.0.0.1:0, a
//! fresh database (SQLite file, or PostgreSQL with `AFTERCART_TEST_DATABASE_URL`), the
//! sample store loaded, the SMTP test sink, and the real binary for the CLI commands.

mod common;

use aftercart::app::{open_engine, open_store};
use aftercart::config::Settings;
use aftercart::domain::Timestamp;
use aftercart::import::{Kind, import_reader};
use aftercart::jobs::{Clock, Engine};
use aftercart_testkit::sink::{FaultPlan, SessionFaults, SmtpSink};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::SocketAddr;

const TOKEN: &str = "t0ken";
const SHOPIFY_SECRET: &str = "s3cret";

struct App {
    addr: SocketAddr,
    engine: Engine,
    env: Vec<(String, String)>,
    http: reqwest::Client,
    _sink: SmtpSink,
    _db: common::TestDb,
}

async fn import(store: &aftercart::store::Store, kind: Kind, file: &str) {
    let f = std::fs::File::open(common::sample(file)).unwrap();
    let report = import_reader(
        store,
        kind,
        std::io::BufReader::new(f),
        false,
        &[], // history only: sample orders schedule nothing here
        Timestamp::now(),
        |_| {},
    )
    .await
    .unwrap();
    assert!(report.bad.is_empty(), "{file}: {:?}", report.bad);
}

async fn app_with(extra: &[(&str, &str)]) -> App {
    let db = common::fresh_db().await;
    let sink = SmtpSink::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut env: Vec<(String, String)> = [
        ("AFTERCART__DATABASE__URL", db.url.clone()),
        ("AFTERCART__HTTP__API_TOKEN", TOKEN.into()),
        ("AFTERCART__SHOPIFY__WEBHOOK_SECRET", SHOPIFY_SECRET.into()),
        ("AFTERCART__UNSUBSCRIBE__SECRET", "u-key".into()),
        ("AFTERCART__SMTP__URL", sink.url()),
        ("AFTERCART__STORE__BASE_URL", format!("http://{addr}")),
        ("AFTERCART__LIMITS__QUIET_HOURS", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut s = Settings::load_with_env(None, &env).unwrap();
    s.templates_dir = common::manifest().join("templates");
    let store = open_store(&s).await.unwrap();
    import(&store, Kind::Products, "products.jsonl").await;
    import(&store, Kind::Customers, "customers.jsonl").await;
    import(&store, Kind::Orders, "orders.jsonl").await;
    let engine = open_engine(s, store, Clock::System).await.unwrap();
    aftercart::http::start_on(engine.clone(), listener, std::future::pending()).unwrap();
    App {
        addr,
        engine,
        env,
        http: reqwest::Client::new(),
        _sink: sink,
        _db: db,
    }
}

async fn app() -> App {
    app_with(&[]).await
}

impl App {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post_v1(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
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

#[allow(dead_code)]
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
    let _ = &app.env;
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
