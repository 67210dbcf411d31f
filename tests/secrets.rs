//! Secrets stay secret (issue 10, cases 6 and 7), checked on the real binary with a real
//! environment and real files: environment values are parsed per key (a secret is a
//! string, taken verbatim, never echoed), a secret in the config file gets a warning,
//! the database and the outbox are owner-only whatever the umask, the generated signing
//! key has no world-readable copy, and a rotated unsubscribe key keeps old links working
//! until the configured end. The rotation test runs on PostgreSQL too when
//! `AFTERCART_TEST_DATABASE_URL` is set; the file tests are about SQLite files and the
//! outbox, so they always use SQLite.

mod common;

use aftercart::config::Settings;
use aftercart::domain::Timestamp;
use aftercart::unsubscribe::Signer;
use common::*;
use reqwest::StatusCode;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Safety net for waiting on other processes (2 busy cores), never the thing under test.
const PATIENCE: Duration = Duration::from_secs(120);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn assert_mode(path: &Path, expected: u32) {
    assert_eq!(
        mode(path),
        expected,
        "{}: mode {:o}, expected {expected:o}",
        path.display(),
        mode(path)
    );
}

fn without(mut env: Vec<(String, String)>, key: &str) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != key);
    env
}

/// The binary as `cmd` runs it, but started by a shell that first sets `umask`, so the
/// modes checked below are the program's doing, not the test runner's umask.
fn under_umask(umask: &str, env: &[(String, String)], dir: &Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("umask {umask} && exec \"$@\""))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_aftercart"))
        .arg("--config")
        .arg(manifest().join("config.toml"))
        .current_dir(dir)
        .env_remove("AFTERCART_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Runs a command to completion; (exit code, stdout + stderr).
fn output(c: &mut Command) -> (i32, String) {
    let out = c.output().expect("run aftercart");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A long-running `aftercart` (worker, serve) whose stderr goes to a file.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn spawn(mut c: Command, log: PathBuf) -> Running {
        let file = std::fs::File::create(&log).unwrap();
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn aftercart");
        Running { child, log }
    }

    fn logs(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// SIGTERM, then the exit code 0 the spec asks for.
    async fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child, not yet reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let mut status = None;
        let exited = wait_until(PATIENCE, || {
            status = self.child.try_wait().unwrap();
            std::future::ready(status.is_some())
        })
        .await;
        let logs = self.logs();
        assert!(
            exited && status.is_some_and(|s| s.success()),
            "no clean exit after SIGTERM: {status:?}\n{logs}"
        );
        logs
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed assertion must not leave a process behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `aftercart serve --no-worker` on a free port of 127.0.0.1.
struct Server {
    process: Running,
    base: String,
}

impl Server {
    async fn start(env: &[(String, String)], log: PathBuf) -> Server {
        let env = with(env.to_vec(), &[("AFTERCART__HTTP__BIND", "127.0.0.1:0")]);
        let mut c = cmd(&env);
        c.args(["serve", "--no-worker"]);
        let process = Running::spawn(c, log);
        let mut addr = None;
        let up = wait_until(PATIENCE, || {
            addr = process
                .logs()
                .lines()
                .find(|l| l.contains("listening"))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned);
            std::future::ready(addr.is_some())
        })
        .await;
        assert!(up, "serve did not start listening:\n{}", process.logs());
        Server {
            process,
            base: format!("http://{}", addr.unwrap()),
        }
    }

    async fn unsubscribe(&self, token: &str, one_click: bool) -> StatusCode {
        let url = format!("{}/unsubscribe/{token}", self.base);
        let http = reqwest::Client::new();
        let request = if one_click {
            http.post(url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body("List-Unsubscribe=One-Click")
        } else {
            http.get(url)
        };
        request.send().await.unwrap().status()
    }
}

/// Products, customers (all consenting) and the first `orders` sample orders, imported
/// with the binary.
fn import_small_store(env: &[(String, String)], orders: usize) {
    let dir = tempfile::tempdir().unwrap();
    let customers = dir.path().join("customers.jsonl");
    write_consenting_customers(&customers);
    let text = std::fs::read_to_string(sample("orders.jsonl")).unwrap();
    let first: Vec<&str> = text.lines().take(orders).collect();
    let orders = dir.path().join("orders.jsonl");
    std::fs::write(&orders, first.join("\n")).unwrap();
    let products = sample("products.jsonl");
    for (kind, file) in [
        ("products", &products),
        ("customers", &customers),
        ("orders", &orders),
    ] {
        let (code, out, err) = run(env, &["import", kind, file.to_str().unwrap()]);
        assert_eq!(code, 0, "import {kind}: {out}{err}");
    }
}

/// The token of the unsubscribe link in the email `preview` renders for `order`.
fn previewed_unsubscribe_token(env: &[(String, String)], order: &str) -> String {
    let (code, out, err) = run(
        env,
        &[
            "preview",
            "--campaign",
            "complete_your_setup",
            "--order",
            order,
        ],
    );
    assert_eq!(code, 0, "preview {order}: {err}");
    let at = out.find("/unsubscribe/").expect("an unsubscribe link") + "/unsubscribe/".len();
    out[at..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '>')
        .next()
        .unwrap()
        .to_owned()
}

async fn unsubscribed(s: &Settings, customer: &str) -> bool {
    let store = store(s).await;
    let c = store.customer(customer).await.unwrap().unwrap();
    store.close().await;
    c.unsubscribed
}

#[tokio::test]
async fn secrets_from_the_environment_are_strings_taken_verbatim() {
    let db = fresh_db().await;
    let env = base_env(&db.url, "file:///tmp/aftercart-unused-outbox");
    let (code, _, err) = run(&env, &["migrate"]);
    assert_eq!(code, 0, "{err}");
    // Each of these refused to start on TOML-parsed environments, blaming config.toml.
    for value in ["12345678", "0x1F", "true", "inf", "\"abc\"", "1e3", "[1]"] {
        let secrets = [
            ("AFTERCART__HTTP__API_TOKEN", value),
            ("AFTERCART__SMTP__USERNAME", value),
            ("AFTERCART__SMTP__PASSWORD", value),
            ("AFTERCART__SHOPIFY__WEBHOOK_SECRET", value),
            ("AFTERCART__UNSUBSCRIBE__SECRET", value),
        ];
        let (code, _, err) = run(&with(env.clone(), &secrets), &["status"]);
        assert_eq!(code, 0, "{value}: {err}");
        assert!(!err.contains("config.toml"), "{value}: {err}");
    }

    // The server compares the bearer token with exactly the string the variable held.
    let logs = tempfile::tempdir().unwrap();
    for (token, wrong) in [("12345678", "1234567"), ("\"abc\"", "abc")] {
        let env = with(env.clone(), &[("AFTERCART__HTTP__API_TOKEN", token)]);
        let server = Server::start(&env, logs.path().join("serve.log")).await;
        let post = |bearer: &str| {
            reqwest::Client::new()
                .post(format!("{}/v1/customers", server.base))
                .bearer_auth(bearer)
                .json(&serde_json::json!({"id": "C900001", "email": "new@example.com"}))
                .send()
        };
        assert_eq!(post(token).await.unwrap().status(), StatusCode::ACCEPTED);
        assert_eq!(
            post(wrong).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        server.process.stop().await;
    }
}

#[tokio::test]
async fn bad_environment_values_name_the_variable_and_never_echo_a_secret() {
    let db = fresh_db().await;
    const TOKEN: &str = "98765432109876";
    const PASSWORD: &str = "31415926535897";
    let env = with(
        base_env(&db.url, "file:///tmp/aftercart-unused-outbox"),
        &[
            ("AFTERCART__HTTP__API_TOKEN", TOKEN),
            ("AFTERCART__SMTP__USERNAME", "mailer"),
            ("AFTERCART__SMTP__PASSWORD", PASSWORD),
        ],
    );
    let cases = [
        (
            "AFTERCART__WORKER__CONCURRENCY",
            "lots",
            "AFTERCART__WORKER__CONCURRENCY: expected a whole number, got \"lots\"",
        ),
        (
            "AFTERCART__WORKER__CONCURRENCY",
            "0",
            "AFTERCART__WORKER__CONCURRENCY: must be at least 1",
        ),
        (
            "AFTERCART__WORKER__POLL_INTERVAL",
            "soon",
            "AFTERCART__WORKER__POLL_INTERVAL: \"soon\" is not a duration",
        ),
        (
            "AFTERCART__HTTP__MAX_BODY_BYTES",
            "2MiB",
            "AFTERCART__HTTP__MAX_BODY_BYTES: expected a whole number",
        ),
        // A misspelt secret: the key is named, its value is not.
        (
            "AFTERCART__HTTP__API_TOKN",
            TOKEN,
            "AFTERCART__HTTP__API_TOKN: unknown key http.api_tokn",
        ),
        (
            "AFTERCART__UNSUBSCRIBE__PREVIOUS_SECRET",
            PASSWORD,
            "AFTERCART__UNSUBSCRIBE__PREVIOUS_SECRET: needs unsubscribe.previous_secret_until",
        ),
    ];
    for (var, value, expected) in cases {
        let (code, out, err) = run(&with(env.clone(), &[(var, value)]), &["status"]);
        assert_eq!(code, 2, "{var}={value}: {err}");
        assert!(err.contains(expected), "{var}={value}: {err}");
        assert!(!err.contains("config.toml"), "blames the file: {err}");
        for secret in [TOKEN, PASSWORD] {
            assert!(!format!("{out}{err}").contains(secret), "echoed: {err}");
        }
    }
}

#[tokio::test]
async fn a_secret_in_the_config_file_is_warned_about_by_key_not_value() {
    let db = fresh_db().await;
    let env = base_env(&db.url, "file:///tmp/aftercart-unused-outbox");
    let (code, _, err) = run(&env, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("holds a secret"), "shipped config: {err}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("with-secrets.toml");
    let text = std::fs::read_to_string(manifest().join("config.toml"))
        .unwrap()
        .replace("[http]\n", "[http]\napi_token = \"file-token-5551212\"\n")
        .replace("[smtp]\n", "[smtp]\npassword = \"file-pw-5551212\"\n");
    std::fs::write(&config, text).unwrap();
    let out = cmd(&without(env, "AFTERCART__HTTP__API_TOKEN"))
        .args(["status", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{err}");
    for (key, var) in [
        ("http.api_token", "AFTERCART__HTTP__API_TOKEN"),
        ("smtp.password", "AFTERCART__SMTP__PASSWORD"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no warning about {key}: {err}"));
        assert!(line.contains("WARN") && line.contains(var), "{line}");
        assert!(line.contains("with-secrets.toml"), "names the file: {line}");
    }
    assert!(!err.contains("5551212"), "value echoed: {err}");
}

#[tokio::test]
async fn files_the_binary_creates_are_owner_only_whatever_the_umask() {
    let cwd = tempfile::tempdir().unwrap();
    let root = cwd.path();
    // Relative paths, folders that do not exist yet, and no configured signing key, so
    // one is generated and kept in the database.
    let env = without(
        base_env("sqlite://state/db/aftercart.db", "file://mail/outbox"),
        "AFTERCART__UNSUBSCRIBE__SECRET",
    );
    let mut printed = String::new();
    for args in [&["migrate"][..], &["status"]] {
        let (code, text) = output(under_umask("000", &env, root).args(args));
        assert_eq!(code, 0, "{args:?}: {text}");
        printed += &text;
    }
    let db = root.join("state/db/aftercart.db");
    for dir in ["state", "state/db"] {
        assert_mode(&root.join(dir), 0o700);
    }
    assert_mode(&db, 0o600);

    // Import as the test user, then a worker under umask 000 sends to the file outbox.
    let abs: Vec<(String, String)> = with(
        env.clone(),
        &[(
            "AFTERCART__DATABASE__URL",
            &format!("sqlite://{}", db.display()),
        )],
    );
    import_small_store(&abs, 200);
    let outbox = root.join("mail/outbox");
    let emls = || -> Vec<PathBuf> {
        std::fs::read_dir(&outbox)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    let mut c = under_umask("000", &env, root);
    // Our own debug logs too (dependencies' would only slow the run down).
    c.env("AFTERCART_LOG", "warn,aftercart=debug").arg("worker");
    let worker = Running::spawn(c, root.join("worker.log"));
    let wal = root.join("state/db/aftercart.db-wal");
    let shm = root.join("state/db/aftercart.db-shm");
    let sending = wait_until(PATIENCE, || {
        std::future::ready(
            wal.exists()
                && shm.exists()
                && emls()
                    .iter()
                    .any(|p| p.extension().is_some_and(|e| e == "eml")),
        )
    })
    .await;
    assert!(sending, "no email written:\n{}", worker.logs());
    // While the database is open: SQLite's own files are owner-only too.
    assert_mode(&wal, 0o600);
    assert_mode(&shm, 0o600);
    printed += &worker.stop().await;

    for dir in ["mail", "mail/outbox"] {
        assert_mode(&root.join(dir), 0o700);
    }
    let written = emls();
    assert!(!written.is_empty());
    for f in &written {
        assert!(
            f.extension().is_some_and(|e| e == "eml"),
            "left behind: {}",
            f.display()
        );
        assert_mode(f, 0o600);
    }

    // The generated key: in the owner-only database and in no other file (not the logs,
    // not the outbox, not a temporary file), nor ever printed.
    let s = settings(&abs);
    let store = store(&s).await;
    let key = store
        .meta_get_or_init("unsubscribe_secret", || "none".into())
        .await
        .unwrap();
    store.close().await;
    assert_eq!(key.len(), 64, "a generated key");
    assert!(!printed.contains(&key), "the key was printed");
    let database = db.file_name().unwrap().to_string_lossy().into_owned();
    let mut stack = vec![root.to_path_buf()];
    let mut searched = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if meta.is_dir() {
                stack.push(path);
            } else if name.starts_with(&database) {
                assert_mode(&path, 0o600);
            } else {
                let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
                assert!(!text.contains(&key), "{} holds the key", path.display());
                searched += 1;
            }
        }
    }
    assert!(
        searched > written.len(),
        "the outbox and the log were searched"
    );
}

#[tokio::test]
async fn an_existing_database_readable_by_others_is_made_private_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("aftercart.db");
    let env = base_env(
        &format!("sqlite://{}", db.display()),
        "file:///tmp/aftercart-unused-outbox",
    );
    let (code, _, err) = run(&env, &["migrate"]);
    assert_eq!(code, 0, "{err}");
    assert_mode(&db, 0o600);

    // As an earlier version (or a careless copy) left it.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run(&env, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert_mode(&db, 0o600);
    let err = strip_ansi(&err);
    let line = err
        .lines()
        .find(|l| l.contains("readable by other users"))
        .unwrap_or_else(|| panic!("no warning: {err}"));
    assert!(line.contains(&db.display().to_string()), "{line}");
    assert!(line.contains("644") && line.contains("600"), "{line}");

    let (code, _, err) = run(&env, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("readable by other users"), "{err}");
}

#[tokio::test]
async fn links_signed_with_the_previous_unsubscribe_key_work_until_the_rotation_ends() {
    const OLD: &str = "old-unsubscribe-key";
    const NEW: &str = "new-unsubscribe-key";
    let db = fresh_db().await;
    let logs = tempfile::tempdir().unwrap();
    let base = base_env(&db.url, "file:///tmp/aftercart-unused-outbox");
    let before = with(base.clone(), &[("AFTERCART__UNSUBSCRIBE__SECRET", OLD)]);
    import_small_store(&before, 3);
    let s = settings(&before);

    // Links in emails that went out before the rotation (orders 1 and 2: C000320, C000117).
    let sent_1 = previewed_unsubscribe_token(&before, "O00000001");
    let sent_2 = previewed_unsubscribe_token(&before, "O00000002");
    let now = Timestamp::now();
    assert!(Signer::new(OLD).verify(&sent_1, now).is_some());
    // Signed with a key that was never configured: refused before and after the end.
    let (payload, _) = sent_2.split_once('.').unwrap();
    let guessed = Signer::new("guess").token("C000117", "all");
    let forged = format!("{payload}.{}", guessed.split_once('.').unwrap().1);

    let rotated = |until: &str| {
        with(
            base.clone(),
            &[
                ("AFTERCART__UNSUBSCRIBE__SECRET", NEW),
                ("AFTERCART__UNSUBSCRIBE__PREVIOUS_SECRET", OLD),
                ("AFTERCART__UNSUBSCRIBE__PREVIOUS_SECRET_UNTIL", until),
            ],
        )
    };
    let day = Duration::from_secs(86_400);
    let within = rotated(&now.plus(30 * day).rfc3339());
    let after = rotated(&now.minus(day).rfc3339());

    // New links are signed with the new key only.
    let new_link = previewed_unsubscribe_token(&within, "O00000003");
    assert!(Signer::new(NEW).verify(&new_link, now).is_some());
    assert!(Signer::new(OLD).verify(&new_link, now).is_none());

    // Within the window: an old link still unsubscribes.
    let server = Server::start(&within, logs.path().join("within.log")).await;
    assert_eq!(server.unsubscribe(&sent_1, false).await, StatusCode::OK);
    assert_eq!(server.unsubscribe(&sent_1, true).await, StatusCode::OK);
    assert_eq!(server.unsubscribe(&new_link, false).await, StatusCode::OK);
    assert_eq!(
        server.unsubscribe(&forged, true).await,
        StatusCode::BAD_REQUEST
    );
    server.process.stop().await;
    assert!(unsubscribed(&s, "C000320").await);
    assert!(
        !unsubscribed(&s, "C000117").await,
        "a forged link did nothing"
    );

    // After the end: old links are refused and change nothing; new ones keep working.
    let server = Server::start(&after, logs.path().join("after.log")).await;
    assert_eq!(
        server.unsubscribe(&sent_2, false).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        server.unsubscribe(&sent_2, true).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        server.unsubscribe(&forged, true).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(server.unsubscribe(&new_link, false).await, StatusCode::OK);
    let logs = server.process.stop().await;
    assert!(
        logs.contains("unsubscribe.previous_secret has expired"),
        "{logs}"
    );
    assert!(!unsubscribed(&s, "C000117").await);
    assert!(!unsubscribed(&s, "C000231").await, "GET changes nothing");
}

#[test]
fn debug_output_of_settings_and_mailer_settings_shows_no_secret() {
    let env = with(
        base_env("postgres://app:db-SECRET-1@127.0.0.1/app", "file:///tmp/x"),
        &[
            ("AFTERCART__HTTP__API_TOKEN", "tok-SECRET-2"),
            ("AFTERCART__SMTP__USERNAME", "mailer"),
            ("AFTERCART__SMTP__PASSWORD", "pw-SECRET-3"),
            ("AFTERCART__SHOPIFY__WEBHOOK_SECRET", "shop-SECRET-4"),
            ("AFTERCART__UNSUBSCRIBE__SECRET", "unsub-SECRET-5"),
        ],
    );
    let s = settings(&env);
    let mailer = aftercart::mail::MailerConfig {
        url: "smtp://mailer:url-SECRET-6@127.0.0.1:2525".into(),
        pool_size: 1,
        timeout: Duration::from_secs(1),
        data_timeout: Duration::from_secs(600),
        probe_base: Duration::from_secs(1),
        probe_max: Duration::from_secs(300),
        username: Some("mailer".into()),
        password: s.smtp.password.as_ref().map(|p| p.expose().to_owned()),
    };
    let debug = format!("{s:?}\n{s:#?}\n{mailer:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
    assert!(debug.contains("mailer") && debug.contains("***"), "{debug}");
}
