//! Shared test helpers: a fresh database per test (a SQLite file in a temp dir, or a
//! fresh PostgreSQL database when `AFTERCART_TEST_DATABASE_URL` is set), settings
//! pointing at it and at a real SMTP server, the sample store, and the binary.
#![allow(dead_code)]

pub mod browser;
pub mod process;
pub mod web;

use aftercart::config::Settings;
use aftercart::jobs::{Clock, Engine};
use aftercart::store::Store;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn sample(file: &str) -> PathBuf {
    manifest().join("sample").join(file)
}

/// `../shared/data/…`, the project's shared fixtures (bad-input files).
pub fn shared(rel: &str) -> PathBuf {
    manifest().join("..").join("shared").join("data").join(rel)
}

/// A database no other test uses. Keep the `TestDb` alive for the test's duration.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

pub async fn fresh_db() -> TestDb {
    fresh_db_at(std::env::var("AFTERCART_TEST_DATABASE_URL").ok().as_deref()).await
}

/// A fresh database on the PostgreSQL server of `admin` (a URL to any database there), or
/// a SQLite file in a temp dir when `admin` is None or empty.
pub async fn fresh_db_at(admin: Option<&str>) -> TestDb {
    match admin {
        Some(admin) if !admin.is_empty() => {
            use sqlx::Connection;
            let name = format!(
                "aftercart_test_{}",
                &aftercart::unsubscribe::random_secret()[..16]
            );
            let mut conn = sqlx::PgConnection::connect(admin)
                .await
                .unwrap_or_else(|e| {
                    panic!("AFTERCART_TEST_DATABASE_URL is set but {admin} is unreachable: {e}")
                });
            // The name is generated hex, never input.
            let create = format!("CREATE DATABASE {name}");
            sqlx::query(&create)
                .execute(&mut conn)
                .await
                .expect("create test database");
            let mut url = url::Url::parse(admin).expect("AFTERCART_TEST_DATABASE_URL is a URL");
            url.set_path(&format!("/{name}"));
            TestDb {
                url: url.to_string(),
                _dir: None,
            }
        }
        _ => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("aftercart.db").display());
            TestDb {
                url,
                _dir: Some(dir),
            }
        }
    }
}

/// Environment overrides every test starts from: the test database, the given SMTP
/// URL, no quiet hours, a generous cap, short retries and leases.
pub fn base_env(db: &str, smtp: &str) -> Vec<(String, String)> {
    [
        ("AFTERCART__DATABASE__URL", db),
        ("AFTERCART__SMTP__URL", smtp),
        ("AFTERCART__SMTP__TIMEOUT", "5s"),
        ("AFTERCART__SMTP__RETRY_BASE", "1s"),
        ("AFTERCART__SMTP__RETRY_MAX", "4s"),
        ("AFTERCART__WORKER__POLL_INTERVAL", "20ms"),
        ("AFTERCART__WORKER__LEASE", "3s"),
        ("AFTERCART__WORKER__SHUTDOWN_TIMEOUT", "10s"),
        ("AFTERCART__WORKER__MODEL_REBUILD_INTERVAL", "0s"),
        ("AFTERCART__LIMITS__QUIET_HOURS", ""),
        (
            "AFTERCART__LIMITS__MAX_EMAILS_PER_CUSTOMER_PER_WEEK",
            "1000",
        ),
        ("AFTERCART__UNSUBSCRIBE__SECRET", "test-unsubscribe-key"),
        ("AFTERCART__HTTP__API_TOKEN", "t0ken"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The committed config.toml with `env` on top, templates from the repository, and no
/// holdout (tests count sends; tests/measure.rs switches it on where it is the subject).
pub fn settings(env: &[(String, String)]) -> Settings {
    let mut s =
        Settings::load_with_env(Some(&manifest().join("config.toml")), env).expect("test settings");
    s.templates_dir = manifest().join("templates");
    for c in &mut s.campaigns {
        c.holdout_share = aftercart::domain::HoldoutShare::OFF;
    }
    s
}

pub fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

pub async fn store(s: &Settings) -> Store {
    let store = Store::connect(&s.database.url, s.database.max_connections)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

pub async fn engine(s: Settings, store: Store, clock: Clock) -> Engine {
    aftercart::app::open_engine(s, store, clock)
        .await
        .expect("engine")
}

/// Imports a file through the same code path as `aftercart import`.
pub async fn import(
    store: &Store,
    s: &Settings,
    kind: &str,
    path: &Path,
) -> aftercart::import::ImportReport {
    let kind = aftercart::import::Kind::parse(kind).unwrap();
    let f = std::io::BufReader::new(std::fs::File::open(path).expect("open fixture"));
    let csv = path.extension().is_some_and(|e| e == "csv");
    let rules = aftercart::jobs::schedule_rules(s);
    aftercart::import::import_reader(
        store,
        kind,
        f,
        csv,
        &rules,
        aftercart::domain::Timestamp::now(),
        |_| {},
    )
    .await
    .expect("import")
}

/// Products, customers and events of the sample store, and its orders (or the first `n`).
pub async fn import_sample(store: &Store, s: &Settings, orders: Option<usize>) {
    for kind in ["products", "customers", "events"] {
        import(store, s, kind, &sample(&format!("{kind}.jsonl"))).await;
    }
    match orders {
        None => {
            import(store, s, "orders", &sample("orders.jsonl")).await;
        }
        Some(n) => {
            let text = std::fs::read_to_string(sample("orders.jsonl")).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("orders.jsonl");
            std::fs::write(&path, text.lines().take(n).collect::<Vec<_>>().join("\n")).unwrap();
            import(store, s, "orders", &path).await;
        }
    }
}

/// The binary, with the test's environment and `--config` set to the repository's.
pub fn cmd(env: &[(String, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_aftercart"));
    c.arg("--config").arg(manifest().join("config.toml"));
    c.env_remove("AFTERCART_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Runs the binary; (exit code, stdout, stderr).
pub fn run(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let out = cmd(env).args(args).output().expect("run aftercart");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A manual clock at the earliest due time, so a worker run with `until_idle` plays the
/// whole queue in order.
pub async fn clock_at_first_due(store: &Store) -> Clock {
    Clock::manual(
        store
            .next_wakeup()
            .await
            .unwrap()
            .unwrap_or_else(aftercart::domain::Timestamp::now),
    )
}

/// Writes `n` orders to `path`: the sample orders over and over, each pass after the first
/// with its ids suffixed ("O00000001-2"), so a test or benchmark gets as many distinct
/// orders (and follow-ups) as it needs with realistic contents.
pub fn write_orders(path: &Path, n: usize) {
    use std::io::Write;
    let text = std::fs::read_to_string(sample("orders.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        let mut o = lines[i % lines.len()].clone();
        let pass = i / lines.len();
        if pass > 0 {
            let id = format!("{}-{pass}", o["id"].as_str().unwrap());
            o["id"] = serde_json::Value::from(id);
        }
        writeln!(out, "{o}").unwrap();
    }
    out.flush().unwrap();
}

/// Writes the sample customers with every one consenting, so nearly every follow-up is a
/// send (crash and throughput tests want sends, not consent skips).
pub fn write_consenting_customers(path: &Path) {
    let text = std::fs::read_to_string(sample("customers.jsonl")).unwrap();
    let out: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut c: serde_json::Value = serde_json::from_str(l).unwrap();
            c["marketing_consent"] = serde_json::Value::Bool(true);
            c.to_string()
        })
        .collect();
    std::fs::write(path, out.join("\n")).unwrap();
}

/// The sample catalog and events, all customers consenting, and `n` orders from
/// [`write_orders`]: every follow-up of an order from the sample's past is due now.
pub async fn import_many(store: &Store, s: &Settings, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let customers = dir.path().join("customers.jsonl");
    let orders = dir.path().join("orders.jsonl");
    write_consenting_customers(&customers);
    write_orders(&orders, n);
    import(store, s, "products", &sample("products.jsonl")).await;
    import(store, s, "customers", &customers).await;
    import(store, s, "events", &sample("events.jsonl")).await;
    import(store, s, "orders", &orders).await;
}

/// Follow-ups per state (every state present, 0 when none).
pub async fn states(store: &Store) -> std::collections::BTreeMap<String, i64> {
    store
        .status(
            aftercart::domain::Timestamp::now(),
            aftercart::domain::Timestamp::now(),
        )
        .await
        .unwrap()
        .followups
}

/// Follow-ups not yet in a final state (scheduled, deferred, sending).
pub async fn unfinished(store: &Store) -> i64 {
    let s = states(store).await;
    s["scheduled"] + s["deferred"] + s["sending"]
}

/// Polls `check` every 50 ms until it holds; false after `timeout`. For waiting on other
/// processes only: the timeout is a safety net, never the thing under test.
pub async fn wait_until<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Runs one in-process worker until nothing is due or in flight.
pub async fn run_until_idle(
    s: &Settings,
    store: &Store,
    clock: Clock,
) -> aftercart::jobs::RunSummary {
    let engine = engine(s.clone(), store.clone(), clock).await;
    let mailer = aftercart::app::mailer(s).await.unwrap();
    aftercart::jobs::Worker::new(engine, mailer, aftercart::jobs::RunOptions::new(true))
        .run(std::future::pending())
        .await
        .unwrap()
}
