//! The content team's safety net: `templates check` with exact positions, hot reload
//! in a running worker (a good change is used by the next email, a broken one is
//! refused and shown), and no email from a template that fails to render.

mod common;

use aftercart::domain::{Order, OrderStatus, Timestamp};
use aftercart::jobs::{Clock, RunOptions, Worker, watch_templates};
use aftercart_testkit::sink::SmtpSink;
use common::*;
use std::path::Path;
use std::time::Duration;

fn copy_templates(to: &Path) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            let dest = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), dest).unwrap();
            }
        }
    }
    copy(&manifest().join("templates"), to);
}

fn edit(path: &Path, from: &str, to: &str) {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(s.contains(from), "{} lacks {from:?}", path.display());
    std::fs::write(path, s.replacen(from, to, 1)).unwrap();
}

#[test]
fn templates_check_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let env = base_env(
        &format!("sqlite://{}/x.db", dir.path().display()),
        "file:///tmp/x",
    );
    let (code, out, err) = run(&env, &["templates", "check"]);
    assert_eq!(code, 0, "shipped templates pass: {out}{err}");

    let cases = [
        (
            "upgrade/body.html",
            "{{ customer.first_name }}, ready",
            "{{ customer.nmae }}, ready",
            "upgrade/body.html:4:",
        ),
        (
            "upgrade/body.html",
            "{{ customer.first_name }}, ready",
            "{{ customer.first_name | shout }}, ready",
            "upgrade/body.html:4:",
        ),
        (
            "upgrade/body.html",
            "{% endfor %}",
            "",
            "upgrade/body.html:6:",
        ),
        (
            "partials/footer.html",
            "{{ store.postal_address }}",
            "{{ store.postal_address }",
            "partials/footer.html:4:",
        ),
    ];
    for (file, from, to, expected) in cases {
        let tdir = dir.path().join(format!("t{}", expected.len() + to.len()));
        copy_templates(&tdir);
        edit(&tdir.join(file), from, to);
        let env = with(
            env.clone(),
            &[("AFTERCART__TEMPLATES__DIR", tdir.to_str().unwrap())],
        );
        let (code, _, err) = run(&env, &["templates", "check"]);
        assert_eq!(code, 2, "{file}: {to}\n{err}");
        let line = err
            .lines()
            .find(|l| l.contains(expected))
            .unwrap_or_else(|| panic!("{expected} not in:\n{err}"));
        // FILE:LINE:COLUMN: message, with a real column number.
        let after = &line[line.find(expected).unwrap() + expected.len()..];
        let (col, msg) = after.split_once(": ").unwrap();
        assert!(col.parse::<usize>().unwrap() >= 1, "{line}");
        assert!(!msg.is_empty());
    }
}

/// Sample orders of consenting customers, cloned with new ids, completed 3 days ago
/// (the complete_your_setup delay), so they fall due now.
async fn fresh_orders(store: &aftercart::store::Store, tag: &str, n: usize) -> Vec<Order> {
    let mut out = Vec::new();
    let three_days = 3 * 86_400_000;
    for o in store.purchase_history().await.unwrap() {
        let c = store
            .customer(o.customer_id.as_str())
            .await
            .unwrap()
            .unwrap();
        if !c.customer.marketing_consent || o.items.len() != 1 {
            continue;
        }
        let now = Timestamp::now();
        let mut o = o.clone();
        o.id = aftercart::domain::OrderId::parse(&format!("{}-{tag}", o.id)).unwrap();
        o.status = OrderStatus::Completed;
        o.created_at = Timestamp(now.0 - three_days - 60_000);
        o.completed_at = Some(Timestamp(now.0 - three_days - 1000));
        o.delivered_at = None;
        out.push(o);
        if out.len() == n {
            break;
        }
    }
    out
}

async fn wait_until_nothing_due(store: &aftercart::store::Store) {
    for _ in 0..600 {
        // Due rows first, then rows in flight: a claim between the two reads shows up in
        // the second, so an idle answer is a true one.
        let due = store
            .next_wakeup()
            .await
            .unwrap()
            .is_some_and(|t| t <= Timestamp::now());
        let sending = store
            .status(Timestamp::now(), Timestamp::now())
            .await
            .unwrap()
            .followups["sending"];
        if !due && sending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("follow-ups still due after 30 s");
}

#[tokio::test]
async fn hot_reload_uses_good_changes_and_refuses_broken_ones() {
    let sink = SmtpSink::start().await;
    let db = fresh_db().await;
    let tdir = tempfile::tempdir().unwrap();
    copy_templates(tdir.path());
    let mut s = settings(&base_env(&db.url, &sink.url()));
    s.templates_dir = tdir.path().to_path_buf();
    let store = store(&s).await;
    import_sample(&store, &s, Some(600)).await;
    // Only the new orders below matter: finish the sample's own follow-ups first.
    let mailer = aftercart::app::mailer(&s).await.unwrap();
    let e = engine(s.clone(), store.clone(), clock_at_first_due(&store).await).await;
    Worker::new(e, mailer.clone(), RunOptions::new(true))
        .run(std::future::pending())
        .await
        .unwrap();
    sink.clear();

    let e = engine(s.clone(), store.clone(), Clock::System).await;
    let _watch = watch_templates(e.clone(), Duration::from_millis(100));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(
        Worker::new(e.clone(), mailer, RunOptions::new(false)).run(async {
            let _ = stop_rx.await;
        }),
    );
    let rules = aftercart::jobs::schedule_rules(&s);
    let subjects = |sink: &SmtpSink| -> Vec<String> {
        sink.received()
            .iter()
            .filter_map(|r| {
                r.raw
                    .as_deref()?
                    .lines()
                    .find(|l| l.starts_with("Subject:"))
                    .map(str::to_owned)
            })
            .collect()
    };

    store
        .upsert_orders(
            &fresh_orders(&store, "a", 40).await,
            &rules,
            Timestamp::now(),
        )
        .await
        .unwrap();
    wait_until_nothing_due(&store).await;
    let first = subjects(&sink);
    let states: Vec<_> = store
        .followups(None, None, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.order_id.ends_with("-a"))
        .map(|r| (r.state, r.reason))
        .collect();
    assert!(!first.is_empty(), "{states:?}");
    assert!(first.iter().all(|s| !s.contains("NEW")));

    // A good change: the next emails use it.
    edit(
        &tdir.path().join("complete_your_setup/subject.txt"),
        "{% if items %}",
        "NEW {% if items %}",
    );
    let sample = aftercart::render::sample_context("complete_your_setup", "complements");
    for _ in 0..100 {
        if e.templates
            .current()
            .render("complete_your_setup", &sample)
            .unwrap()
            .subject
            .starts_with("NEW")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sink.clear();
    store
        .upsert_orders(
            &fresh_orders(&store, "b", 40).await,
            &rules,
            Timestamp::now(),
        )
        .await
        .unwrap();
    wait_until_nothing_due(&store).await;
    let second = subjects(&sink);
    assert!(!second.is_empty());
    assert!(second.iter().all(|s| s.contains("NEW")), "{second:?}");

    // A broken change is refused: emails keep the last good version, status shows why.
    edit(
        &tdir.path().join("complete_your_setup/body.html"),
        "{% endblock content %}",
        "{% if items %}{% endblock content %}",
    );
    let mut shown = String::new();
    for _ in 0..100 {
        let r = store
            .status(Timestamp::now(), Timestamp::now())
            .await
            .unwrap();
        if let Some(p) = r.template_errors.get("(templates)") {
            shown = p.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        shown.contains("complete_your_setup/body.html:"),
        "status shows the refused change: {shown:?}"
    );
    let (code, out, _) = run(&base_env(&db.url, &sink.url()), &["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("template error") && out.contains("complete_your_setup/body.html:"),
        "{out}"
    );
    sink.clear();
    store
        .upsert_orders(
            &fresh_orders(&store, "c", 40).await,
            &rules,
            Timestamp::now(),
        )
        .await
        .unwrap();
    wait_until_nothing_due(&store).await;
    let third = subjects(&sink);
    assert!(
        !third.is_empty(),
        "sending goes on with the last good version"
    );
    assert!(third.iter().all(|s| s.contains("NEW")));

    let _ = stop_tx.send(());
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_template_that_fails_to_render_sends_nothing_and_keeps_the_followup() {
    let sink = SmtpSink::start().await;
    let db = fresh_db().await;
    let tdir = tempfile::tempdir().unwrap();
    copy_templates(tdir.path());
    // Passes the check (the sample has two picks) but fails for an email with one pick.
    std::fs::write(
        tdir.path().join("complete_your_setup/subject.txt"),
        "{{ items.0.title }} and {{ items.1.title }}",
    )
    .unwrap();
    let mut s = settings(&base_env(&db.url, &sink.url()));
    s.templates_dir = tdir.path().to_path_buf();
    let store = store(&s).await;
    import_sample(&store, &s, Some(400)).await;
    let mailer = aftercart::app::mailer(&s).await.unwrap();
    // Every sample follow-up is long due by the system clock.
    let e = engine(s.clone(), store.clone(), Clock::System).await;
    // Run a bounded while: rows with a template error come back every minute.
    let stop = tokio::time::sleep(Duration::from_secs(4));
    Worker::new(e, mailer, RunOptions::new(false))
        .run(stop)
        .await
        .unwrap();

    let rows = store.followups(None, None, 100_000).await.unwrap();
    let broken: Vec<_> = rows.iter().filter(|r| r.held.is_some()).collect();
    assert!(!broken.is_empty(), "some emails had a single pick");
    for r in &broken {
        assert_eq!(r.state, "scheduled", "{r:?}");
        assert!(r.message_id.is_none() && r.sent_at.is_none());
        assert!(
            r.held
                .as_deref()
                .unwrap()
                .contains("complete_your_setup/subject.txt"),
            "{r:?}"
        );
        // `followups` shows it as the last outcome too.
        assert!(
            r.smtp_reply
                .as_deref()
                .is_some_and(|x| x.starts_with("template error: ")),
            "{r:?}"
        );
    }
    let sent_ids: std::collections::HashSet<_> = sink.message_ids().into_iter().collect();
    for r in &broken {
        let id = aftercart::jobs::message_id(&r.order_id, &r.campaign, &s.smtp.from);
        assert!(!sent_ids.contains(&id), "nothing sent for {}", r.order_id);
    }
    let status = store
        .status(Timestamp::now(), Timestamp::now())
        .await
        .unwrap();
    assert!(
        status
            .template_errors
            .get("complete_your_setup")
            .is_some_and(|p| p.contains("subject.txt")),
        "{status:?}"
    );
}

/// docs/templates.md lists every variable the renderer really passes, and nothing else.
#[tokio::test]
async fn documented_variables_match_what_the_renderer_passes() {
    let db = fresh_db().await;
    let s = settings(&base_env(&db.url, "file:///tmp/x"));
    let store = store(&s).await;
    import_sample(&store, &s, Some(50)).await;
    let e = engine(s.clone(), store.clone(), Clock::System).await;
    let campaign = s.campaign("complete_your_setup").unwrap().clone();
    let ctx = store.order_context("O00000001").await.unwrap().unwrap();
    let picks = e.picks(&ctx.order, &campaign, Default::default());
    assert!(!picks.is_empty());
    let real = serde_json::to_value(e.context(
        &ctx.order,
        &ctx.customer.unwrap().customer,
        &campaign,
        &picks,
        "u".into(),
    ))
    .unwrap();

    fn leaves(v: &serde_json::Value, prefix: String, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    // Lists and values are documented; objects are only their fields.
                    if !v.is_object() {
                        out.insert(p.clone());
                    }
                    leaves(v, p, out);
                }
            }
            serde_json::Value::Array(a) => {
                if let Some(first) = a.first() {
                    leaves(first, format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }
    let mut passed = std::collections::BTreeSet::new();
    leaves(&real, String::new(), &mut passed);
    let docs = std::fs::read_to_string(manifest().join("docs/templates.md")).unwrap();
    let documented: std::collections::BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next().map(str::to_owned))
        .filter(|name| !name.contains('('))
        .collect();
    let missing: Vec<_> = documented.difference(&passed).collect();
    assert!(missing.is_empty(), "documented but not passed: {missing:?}");
    let undocumented: Vec<_> = passed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "passed but not documented: {undocumented:?}"
    );
}
