//! What operators install (issue 15, item 6), on the real binary: `--version` names the
//! git revision it was built from, `completions` writes scripts the shells load, `backup`
//! copies a SQLite database (also while a worker writes to it) and refuses to overwrite
//! a file or to copy PostgreSQL, and the systemd units in `deploy/` pass
//! `.ci/check-deploy.sh` where `systemd-analyze` exists.

mod common;

use common::process::WorkerProcess;
use common::*;
use sqlx::Connection;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Safety net for waiting on the worker process (2 busy cores), never the thing under test.
const PATIENCE: Duration = Duration::from_secs(120);

/// The binary with no config and no test environment, run in an empty folder: what
/// `--version` and `completions` must do without an installation.
fn bare(args: &[&str]) -> (i32, String, String) {
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aftercart"))
        .args(args)
        .current_dir(cwd.path())
        .output()
        .expect("run aftercart");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One line of git's output in the repository, None without git or a checkout.
fn git(args: &[&str]) -> Option<String> {
    if !manifest().join(".git").exists() {
        return None;
    }
    let out = Command::new("git")
        .args(args)
        .current_dir(manifest())
        .output()
        .ok()?;
    let line = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !line.is_empty()).then_some(line)
}

#[test]
fn version_names_the_package_version_and_the_git_revision_of_head() {
    // What build.rs was told to use, else git's HEAD, else "unknown".
    let expected = std::env::var("AFTERCART_GIT_REV")
        .ok()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let want = format!("aftercart {} ({expected})", env!("CARGO_PKG_VERSION"));
    for flag in ["--version", "-V"] {
        let (code, out, err) = bare(&[flag]);
        assert_eq!(code, 0, "{flag}: {err}");
        assert_eq!(out.trim(), want, "{flag}");
    }
    if expected != "unknown" {
        assert_eq!(expected.len(), 12, "a 12-digit short revision: {expected}");
        assert!(
            expected.chars().all(|c| c.is_ascii_hexdigit()),
            "{expected}"
        );
    }
}

#[test]
fn completions_name_every_command_and_load_in_bash() {
    let names: Vec<String> = <aftercart::cli::Cli as clap::CommandFactory>::command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    for expected in [
        "backup",
        "completions",
        "worker",
        "serve",
        "export-customer",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = bare(&["completions", shell]);
        assert_eq!(code, 0, "completions {shell}: {err}");
        assert!(out.contains("aftercart"), "{shell}: {out}");
        for name in &names {
            assert!(out.contains(name.as_str()), "{shell} script lacks {name}");
        }
    }

    // The bash script defines the completion when sourced (where bash exists).
    let (_, script, _) = bare(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aftercart.bash");
    std::fs::write(&file, script).unwrap();
    if let Ok(out) = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p aftercart",
            file.display()
        ))
        .output()
    {
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains("aftercart"),
            "bash: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn completions_for_an_unknown_shell_are_refused_with_the_known_ones() {
    let (code, out, err) = bare(&["completions", "tcsh"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("tcsh"), "{err}");
    for shell in ["bash", "zsh", "fish"] {
        assert!(err.contains(shell), "{shell} offered: {err}");
    }
    let (code, _, err) = bare(&["completions"]);
    assert_eq!(code, 2, "{err}");
}

/// Rows of every table of the SQLite file at `path`, opened read-only.
async fn row_counts(path: &Path) -> BTreeMap<String, i64> {
    let url = format!("sqlite://{}?mode=ro", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{} does not open as SQLite: {e}", path.display()));
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut counts = BTreeMap::new();
    for t in tables {
        // The names come from sqlite_master of our own schema, quoted.
        let sql = format!("SELECT count(*) FROM \"{}\"", t.replace('"', "\"\""));
        let n: i64 = sqlx::query_scalar(&sql).fetch_one(&mut conn).await.unwrap();
        counts.insert(t, n);
    }
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(check, "ok", "{}", path.display());
    conn.close().await.unwrap();
    counts
}

/// Runs `backup FILE` and checks what it printed: the absolute path and the size.
fn backup(env: &[(String, String)], file: &Path) {
    let (code, out, err) = run(env, &["backup", file.to_str().unwrap()]);
    assert_eq!(code, 0, "backup: {out}{err}");
    let size = std::fs::metadata(file).unwrap().len();
    let abs = std::fs::canonicalize(file).unwrap();
    assert!(
        out.starts_with(&format!("backup written to {} (", abs.display()))
            && out.contains(&format!(", {size} bytes)")),
        "{out}"
    );
    let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup holds customers' addresses");
}

#[tokio::test]
async fn backup_of_a_sqlite_database_has_every_row_even_while_a_worker_sends() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("aftercart.db");
    let outbox = dir.path().join("outbox");
    let env = base_env(
        &format!("sqlite://{}", db.display()),
        &format!("file://{}", outbox.display()),
    );
    for kind in ["products", "customers", "orders", "events"] {
        let file = sample(&format!("{kind}.jsonl"));
        let (code, out, err) = run(&env, &["import", kind, file.to_str().unwrap()]);
        assert_eq!(code, 0, "import {kind}: {out}{err}");
    }

    let copy = dir.path().join("backups").join("first.db");
    std::fs::create_dir(copy.parent().unwrap()).unwrap();
    backup(&env, &copy);
    let (original, copied) = (row_counts(&db).await, row_counts(&copy).await);
    for table in ["products", "customers", "orders", "events", "followups"] {
        assert!(original[table] > 0, "{table} has rows: {original:?}");
    }
    assert_eq!(copied, original);

    // Online: a second copy while a worker claims and records sends.
    let mut worker = WorkerProcess::spawn(&env);
    let sending = wait_until(PATIENCE, || async {
        std::fs::read_dir(&outbox).is_ok_and(|d| d.count() > 0)
    })
    .await;
    assert!(sending, "the worker sent nothing: {}", worker.logs());
    let live = dir.path().join("backups").join("live.db");
    backup(&env, &live);
    let during = row_counts(&live).await;
    for table in ["products", "customers", "orders", "events", "followups"] {
        assert_eq!(during[table], original[table], "{table}");
    }
    worker.stop(PATIENCE).await;
}

#[tokio::test]
async fn backup_never_overwrites_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let env = base_env(
        &format!("sqlite://{}", dir.path().join("aftercart.db").display()),
        "file:///tmp/unused-outbox",
    );
    let (code, _, err) = run(&env, &["migrate"]);
    assert_eq!(code, 0, "{err}");
    let target = dir.path().join("precious.db");
    std::fs::write(&target, b"keep me").unwrap();
    let (code, out, err) = run(&env, &["backup", target.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!("{}: already exists", target.display())),
        "{err}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");

    // A folder that does not exist is a runtime error naming the file; nothing is left.
    let nowhere = dir.path().join("missing").join("copy.db");
    let (code, _, err) = run(&env, &["backup", nowhere.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&nowhere.display().to_string()), "{err}");

    // A database without the schema (a wrong database.url) is refused, not copied.
    let empty = base_env(
        &format!("sqlite://{}", dir.path().join("typo.db").display()),
        "file:///tmp/unused-outbox",
    );
    let copy = dir.path().join("copy.db");
    let (code, _, err) = run(&empty, &["backup", copy.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no aftercart schema"), "{err}");
    assert!(!copy.exists());
}

#[tokio::test]
async fn backup_on_postgresql_is_refused_pointing_at_pg_dump() {
    let Some(admin) = std::env::var("AFTERCART_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("skipped: AFTERCART_TEST_DATABASE_URL is not set");
        return;
    };
    let db = fresh_db_at(Some(&admin)).await;
    let env = base_env(&db.url, "file:///tmp/unused-outbox");
    let (code, _, err) = run(&env, &["migrate"]);
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("pg.db");
    let (code, out, err) = run(&env, &["backup", target.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("pg_dump"), "{err}");
    assert!(!target.exists(), "nothing written");
}

#[test]
fn the_systemd_units_pass_check_deploy_where_systemd_analyze_exists() {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: no systemd-analyze here (CI runs .ci/check-deploy.sh)");
        return;
    }
    let out = Command::new("bash")
        .arg(manifest().join(".ci").join("check-deploy.sh"))
        .output()
        .expect("run .ci/check-deploy.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("check-deploy: 2 units OK"), "{text}");
}
