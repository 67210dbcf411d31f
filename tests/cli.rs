//! The command line as a user drives it (SPEC §4): imports with bad input, config
//! errors, and the JSON documents of `status`, `followups`, `recommend`, `evaluate`.

mod common;

use common::*;
use std::collections::BTreeSet;

/// Line numbers reported as `FILE:LINE: field: why` on stderr.
fn reported_lines(stderr: &str, file: &str) -> BTreeSet<usize> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{file}:")))
        .filter_map(|rest| rest.split(':').next()?.parse().ok())
        .collect()
}

fn field_of(stderr: &str, file: &str, line: usize) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{file}:{line}: ")))
        .map(|rest| rest.split(": ").next().unwrap_or("").to_owned())
        .unwrap_or_default()
}

/// (kind, bad lines, (line, field) pairs, ids that must be stored)
type Case = (
    &'static str,
    &'static [usize],
    &'static [(usize, &'static str)],
    &'static [&'static str],
);

#[tokio::test]
async fn bad_lines_are_reported_by_file_line_and_field_and_good_ones_stored() {
    let db = fresh_db().await;
    let env = base_env(&db.url, "file:///tmp/unused-outbox");
    for kind in ["products", "customers"] {
        let (code, _, err) = run(
            &env,
            &[
                "import",
                kind,
                sample(&format!("{kind}.jsonl")).to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{err}");
    }
    let cases: [Case; 4] = [
        (
            "products",
            &[3, 4, 5, 7, 9, 11, 12, 14, 15, 18],
            &[
                (4, "id"),
                (5, "price"),
                (7, "in_stock"),
                (11, "price"),
                (15, "compatible_with"),
                (18, "id"),
                (3, "(line)"),
                (9, "(line)"),
            ],
            &["P90001", "P90002", "P90004", "P90005", "P90006", "P90007"],
        ),
        (
            "customers",
            &[3, 4, 5, 6, 8, 9, 11, 13, 15],
            &[
                (3, "email"),
                (4, "id"),
                (6, "marketing_consent"),
                (8, "timezone"),
                (13, "email"),
                (15, "email"),
            ],
            &["C900001", "C900002", "C900003", "C900004"],
        ),
        (
            "orders",
            &[3, 4, 5, 6, 7, 8, 9, 11, 13, 14, 16, 18, 19],
            &[
                (5, "items[0].quantity"),
                (6, "status"),
                (7, "created_at"),
                (8, "completed_at"),
                (9, "items[0].product_id"),
                (13, "items[0].unit_price"),
                (16, "items[0].quantity"),
                (19, "items"),
            ],
            &[
                "O90000001",
                "O90000002",
                "O90000003",
                "O90000004",
                "O90000005",
            ],
        ),
        (
            "events",
            &[3, 4, 5, 6, 8, 9, 10, 12],
            &[
                (3, "kind"),
                (4, "customer_id"),
                (5, "at"),
                (10, "at"),
                (12, "product_id"),
            ],
            &[],
        ),
    ];
    let sample_before = {
        let s = settings(&env);
        let store = store(&s).await;
        (
            store.products().await.unwrap(),
            store.customer("C000001").await.unwrap().unwrap().customer,
        )
    };
    for (kind, bad, fields, stored) in cases {
        let path = shared(&format!("bad/{kind}.jsonl"));
        let file = path.to_str().unwrap();
        let (code, out, err) = run(&env, &["import", kind, file]);
        assert_eq!(code, 2, "{kind}: exit 2 when a line is bad\n{err}");
        assert_eq!(
            reported_lines(&err, file),
            bad.iter().copied().collect(),
            "{kind}:\n{err}"
        );
        for (line, field) in fields {
            assert_eq!(
                field_of(&err, file, *line),
                *field,
                "{kind} line {line}:\n{err}"
            );
        }
        assert!(out.contains("stored"), "a one-line summary: {out}");
        let s = settings(&env);
        let store = store(&s).await;
        match kind {
            "products" => {
                let ids: BTreeSet<String> = store
                    .products()
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|p| p.id.to_string())
                    .filter(|i| i.starts_with("P9"))
                    .collect();
                assert_eq!(ids, stored.iter().map(|s| s.to_string()).collect());
                let p1 = store
                    .products()
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|p| p.id.as_str() == "P90001")
                    .unwrap();
                assert_eq!(
                    p1.price.decimal(),
                    "21.99",
                    "the later line updates the record"
                );
            }
            "customers" => {
                for id in stored {
                    assert!(store.customer(id).await.unwrap().is_some(), "{id}");
                }
                let c = store.customer("C900001").await.unwrap().unwrap();
                assert_eq!(c.customer.name.as_deref(), Some("Anna Test-Renamed"));
            }
            "orders" => {
                for id in stored {
                    assert!(store.order(id).await.unwrap().is_some(), "{id}");
                }
                assert_eq!(
                    store
                        .order("O90000001")
                        .await
                        .unwrap()
                        .unwrap()
                        .status
                        .as_str(),
                    "refunded"
                );
                // The refunded order has no follow-up waiting to go out.
                let f = store.followups(Some("O90000001"), None, 10).await.unwrap();
                assert!(f.iter().all(|r| r.state == "skipped"), "{f:?}");
            }
            _ => {}
        }
    }
    // Nothing already stored was changed by the bad files.
    let s = settings(&env);
    let store = store(&s).await;
    let products: Vec<_> = store
        .products()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| !p.id.as_str().starts_with("P9"))
        .collect();
    assert_eq!(products, sample_before.0);
    assert_eq!(
        store.customer("C000001").await.unwrap().unwrap().customer,
        sample_before.1
    );
}

#[tokio::test]
async fn csv_and_jsonl_give_the_same_catalog_and_reimport_duplicates_nothing() {
    let db = fresh_db().await;
    let env = base_env(&db.url, "file:///tmp/unused-outbox");
    let s = settings(&env);
    let store = store(&s).await;
    import(
        &store,
        &s,
        "products",
        &sample("../../shared/data/sample/products.csv"),
    )
    .await;
    import(
        &store,
        &s,
        "customers",
        &sample("../../shared/data/sample/customers.csv"),
    )
    .await;
    let from_csv = store.products().await.unwrap();
    import(&store, &s, "products", &sample("products.jsonl")).await;
    assert_eq!(
        store.products().await.unwrap(),
        from_csv,
        "CSV and JSON Lines agree"
    );
    assert_eq!(from_csv.len(), 200);

    let (code, out, err) = run(
        &env,
        &["import", "orders", sample("orders.jsonl").to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3000 orders stored"), "{out}");
    let first = store.followups(None, None, 1_000_000).await.unwrap().len();
    assert!(first > 4000);
    let (code, _, _) = run(
        &env,
        &["import", "orders", sample("orders.jsonl").to_str().unwrap()],
    );
    assert_eq!(code, 0);
    assert_eq!(
        store.followups(None, None, 1_000_000).await.unwrap().len(),
        first,
        "re-import schedules nothing twice"
    );

    // Standard input works the same.
    let mut child = cmd(&env)
        .args(["import", "events", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(br#"{"customer_id":"C000001","product_id":"P00001","kind":"view","at":"2025-01-01T00:00:00Z"}"#).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 events stored"));
}

#[test]
fn bad_config_is_refused_with_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let env = base_env(
        &format!("sqlite://{}/x.db", dir.path().display()),
        "file:///tmp/x",
    );
    let cases = [
        (
            "AFTERCART__WORKER__POLL_INTERVAL",
            "soon",
            "worker.poll_interval",
        ),
        (
            "AFTERCART__DATABASE__URL",
            "mysql://localhost/x",
            "database.url",
        ),
        ("AFTERCART__SMTP__URL", "ftp://x", "smtp.url"),
        (
            "AFTERCART__LIMITS__QUIET_HOURS",
            "late",
            "limits.quiet_hours",
        ),
        ("AFTERCART__WORKER__CONCURENCY", "3", "concurency"),
    ];
    for (key, value, named) in cases {
        let (code, _, err) = run(&with(env.clone(), &[(key, value)]), &["status"]);
        assert_eq!(code, 2, "{key}={value}: {err}");
        assert!(err.contains(named), "{key}={value}: {err}");
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[store]\nname = 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aftercart"))
        .args(["status", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--config after the command");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));
}

#[tokio::test]
async fn status_followups_and_recommend_print_the_documented_json() {
    let db = fresh_db().await;
    let env = base_env(&db.url, "file:///tmp/unused-outbox");
    let s = settings(&env);
    let store = store(&s).await;
    import_sample(&store, &s, Some(500)).await;

    let (code, out, err) = run(&env, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for state in ["scheduled", "sending", "sent", "skipped", "failed"] {
        assert!(v["followups"][state].is_i64(), "{state}: {v}");
    }
    assert!(v["followups"]["scheduled"].as_i64().unwrap() > 0);
    assert!(v["skipped_by_reason"].is_object() && v["sent_last_24h"].is_i64());
    assert!(v["next_due"].as_str().unwrap().ends_with('Z'));

    let (code, out, _) = run(&env, &["followups", "--json", "--limit", "5"]);
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 5);
    for key in [
        "order_id",
        "campaign",
        "state",
        "reason",
        "due_at",
        "sent_at",
        "message_id",
        "smtp_reply",
        "attempts",
    ] {
        assert!(rows[0].get(key).is_some(), "{key}");
    }
    let (code, _, err) = run(&env, &["followups", "--state", "lost"]);
    assert_eq!(code, 2, "{err}");

    // O00000001 bought a camera body (P00015); the complements pick comes with reasons.
    let (code, out, err) = run(&env, &["recommend", "--order", "O00000001", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["order_id"], "O00000001");
    assert_eq!(v["campaign"], "complete_your_setup");
    let items = v["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{v}");
    for i in items {
        assert!(i["reason"].as_str().unwrap().len() > 10);
        assert!(i["price"].as_str().unwrap().contains('.'));
        assert_ne!(i["product_id"], "P00015", "never an item of the order");
    }
    let (code, _, err) = run(&env, &["recommend", "--order", "NOPE"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(
        &env,
        &["recommend", "--order", "O00000001", "--campaign", "nope"],
    );
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn evaluate_beats_popularity_and_refuses_bad_files() {
    let db = fresh_db().await;
    let env = base_env(&db.url, "file:///tmp/unused-outbox");
    let s = settings(&env);
    let store = store(&s).await;
    import(&store, &s, "products", &sample("products.jsonl")).await;
    let (code, out, err) = run(
        &env,
        &[
            "evaluate",
            "--orders",
            sample("orders.jsonl").to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["k"], 3);
    assert!(v["orders_tested"].as_u64().unwrap() > 50);
    let (rec, pop) = (
        v["recommender"]["hit_rate"].as_f64().unwrap(),
        v["popularity"]["hit_rate"].as_f64().unwrap(),
    );
    assert!(rec > pop, "recommender {rec} vs popularity {pop}");
    assert!(v["recommender"]["coverage"].as_f64().unwrap() > 0.0);

    let (code, _, err) = run(&env, &["evaluate", "--orders", "/nonexistent/orders.jsonl"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/orders.jsonl"), "{err}");
    let bad = shared("bad/orders.jsonl");
    let (code, _, err) = run(&env, &["evaluate", "--orders", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("{}:3:", bad.display())), "{err}");
    let (code, _, _) = run(
        &env,
        &[
            "evaluate",
            "--orders",
            sample("orders.jsonl").to_str().unwrap(),
            "--split-at",
            "yesterday",
        ],
    );
    assert_eq!(code, 2);
    // Three windows pooled; the SPEC fields stay, `splits` and `ranking` are added.
    let orders = sample("orders.jsonl");
    let (code, out, err) = run(
        &env,
        &[
            "evaluate",
            "--orders",
            orders.to_str().unwrap(),
            "--splits",
            "0.8,0.85,0.9",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["splits"].as_array().unwrap().len(), 3, "{v}");
    assert!(v["orders_tested"].as_u64().unwrap() > 300, "{v}");
    assert!(v["recommender"]["hit_rate"].is_number());
    assert!(v["ranking"]["popularity"]["10"]["mrr"].is_number());
    assert_eq!(v["ranking"]["hit_ratio_ci95"].as_array().unwrap().len(), 2);
    let (code, _, err) = run(
        &env,
        &[
            "evaluate",
            "--orders",
            orders.to_str().unwrap(),
            "--splits",
            "0.8,1.5",
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("--splits"), "{err}");
}

#[tokio::test]
async fn suppress_and_campaign_trigger_refuse_bad_input() {
    let db = fresh_db().await;
    let env = base_env(&db.url, "file:///tmp/unused-outbox");
    let s = settings(&env);
    let store = store(&s).await;
    import_sample(&store, &s, Some(50)).await;

    let (code, _, err) = run(&env, &["suppress", "add", "not-an-email"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("email"), "{err}");
    assert!(
        store.suppressions().await.unwrap().is_empty(),
        "nothing stored"
    );
    let (code, out, _) = run(
        &env,
        &[
            "suppress",
            "add",
            "Someone@Example.com",
            "--reason",
            "complaint",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        store.suppressions().await.unwrap()[0].email,
        "someone@example.com"
    );

    let before = store.followups(None, None, 1_000_000).await.unwrap().len();
    for (args, named) in [
        (vec!["campaign", "trigger", "nope"], "nope"),
        (
            vec!["campaign", "trigger", "upgrade", "--since", "soon"],
            "--since",
        ),
        (
            vec!["campaign", "trigger", "upgrade", "--bought", ""],
            "--bought",
        ),
    ] {
        let (code, _, err) = run(&env, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: {err}");
    }
    assert_eq!(
        store.followups(None, None, 1_000_000).await.unwrap().len(),
        before,
        "nothing scheduled"
    );
}
