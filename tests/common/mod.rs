//! Shared test helpers: a fresh database per test (a SQLite file in a temp dir, or a
//! fresh PostgreSQL database when `AFTERCART_TEST_DATABASE_URL` is set), settings
//! pointing at it and at a real SMTP server, the sample store, and the binary.
#![allow(dead_code)]

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
    match std::env::var("AFTERCART_TEST_DATABASE_URL") {
        Ok(admin) if !admin.is_empty() => {
            use sqlx::Connection;
            let name = format!(
                "aftercart_test_{}",
                &aftercart::unsubscribe::random_secret()[..16]
            );
            let mut conn = sqlx::PgConnection::connect(&admin)
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
            let mut url = url::Url::parse(&admin).expect("AFTERCART_TEST_DATABASE_URL is a URL");
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

/// The committed config.toml with `env` on top, templates from the repository.
pub fn settings(env: &[(String, String)]) -> Settings {
    let mut s =
        Settings::load_with_env(Some(&manifest().join("config.toml")), env).expect("test settings");
    s.templates_dir = manifest().join("templates");
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
    aftercart::cli::open_engine(s, store, clock)
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
    let rules = aftercart::cli::schedule_rules(s);
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
