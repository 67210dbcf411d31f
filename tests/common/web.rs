//! The app behind a real HTTP server on 127.0.0.1:0, over a fresh database with the
//! sample store loaded and the SMTP test sink, for the HTTP-facing test files.

use aftercart::app::{open_engine, open_store};
use aftercart::config::Settings;
use aftercart::domain::Timestamp;
use aftercart::import::{Kind, import_reader};
use aftercart::jobs::{Clock, Engine};
use aftercart_testkit::sink::SmtpSink;
use reqwest::StatusCode;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const TOKEN: &str = "t0ken";
pub const SHOPIFY_SECRET: &str = "s3cret";

pub struct App {
    pub addr: SocketAddr,
    pub engine: Engine,
    pub sink: SmtpSink,
    pub http: reqwest::Client,
    _db: super::TestDb,
}

/// Loads a sample file as history only (sample orders schedule nothing here).
async fn import(store: &aftercart::store::Store, kind: Kind, file: &str) {
    let f = std::fs::File::open(super::sample(file)).unwrap();
    let report = import_reader(
        store,
        kind,
        std::io::BufReader::new(f),
        false,
        &[],
        Timestamp::now(),
        |_| {},
    )
    .await
    .unwrap();
    assert!(report.bad.is_empty(), "{file}: {:?}", report.bad);
}

/// Starts the app; `templates` replaces the repository's, `extra` adds settings.
pub async fn start(templates: Option<PathBuf>, extra: &[(&str, &str)]) -> App {
    let db = super::fresh_db().await;
    let sink = SmtpSink::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let env: Vec<(String, String)> = [
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
    .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    .collect();
    let mut s = Settings::load_with_env(None, &env).unwrap();
    s.templates_dir = templates.unwrap_or_else(|| super::manifest().join("templates"));
    // These tests follow single orders to a send (C000001 is in the default holdout).
    for c in &mut s.campaigns {
        c.holdout_share = aftercart::domain::HoldoutShare::OFF;
    }
    let store = open_store(&s).await.unwrap();
    import(&store, Kind::Products, "products.jsonl").await;
    import(&store, Kind::Customers, "customers.jsonl").await;
    import(&store, Kind::Orders, "orders.jsonl").await;
    let engine = open_engine(s, store, Clock::System).await.unwrap();
    aftercart::http::start_on(engine.clone(), listener, std::future::pending()).unwrap();
    App {
        addr,
        engine,
        sink,
        http: reqwest::Client::new(),
        _db: db,
    }
}

impl App {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post_v1(&self, path: &str, body: &Value) -> (StatusCode, Value) {
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
